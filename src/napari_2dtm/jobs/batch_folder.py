"""The batch folder as a reader sees it: the summary table and each micrograph's status.

Split from :mod:`napari_2dtm.jobs.batch` (which writes the folder; its layout is
described there): :func:`read_summary` and :func:`batch_status` only read, so the
project widget and ``batch`` itself share one view of a folder that may be in use.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from napari_2dtm.errors import InputError
from napari_2dtm.io.micrographs import micrograph_name
from napari_2dtm.io.mrc import atomic_write_text
from napari_2dtm.search.checkpoint import checkpoint_path_for
from napari_2dtm.search.foreign import is_results_folder, open_results
from napari_2dtm.search.results import ResultsFolder

__all__ = ["SUMMARY_COLUMNS", "read_summary", "batch_status"]

SUMMARY_COLUMNS = ["micrograph", "name", "status", "n_hits", "error", "time_s", "results"]


def read_summary(out_dir) -> pd.DataFrame:
    """The batch summary table (empty with the summary columns if there is none yet)."""
    p = Path(out_dir) / "summary.csv"
    if not p.is_file():
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    return pd.read_csv(p, keep_default_na=False, na_values=[""])


def _write_summary(out_dir: Path, rows: list[dict]):
    df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    atomic_write_text(out_dir / "summary.csv", df.to_csv(index=False))
    recs = json.loads(df.to_json(orient="records"))
    atomic_write_text(out_dir / "summary.json", json.dumps(recs, indent=1))


def batch_status(out_dir, names: Iterable[str] | None = None) -> pd.DataFrame:
    """Status of each micrograph of a batch folder, from the folder itself.

    Columns: name, micrograph, status (``done``, ``running/interrupted`` = a checkpoint
    or shard files, ``failed``, ``pending``), n_hits, error, results, fraction (of the
    search done, for checkpoints). Micrographs come from the summary, batch.json and the
    results folders present.
    """
    from napari_2dtm.search.checkpoint import read_state  # noqa: PLC0415

    out_dir = Path(out_dir)
    summ = read_summary(out_dir)
    rows: dict[str, dict] = {}
    order: list[str] = []

    def add(name, **kw):
        if name not in rows:
            rows[name] = {"name": name, "micrograph": None, "status": "pending", "n_hits": None,
                          "error": None, "results": None, "fraction": None}
            order.append(name)
        rows[name].update({k: v for k, v in kw.items() if v is not None})

    meta = _read_batch_json(out_dir)
    for m in (meta or {}).get("micrographs", []):
        add(micrograph_name(m), micrograph=m)
    for r in summ.to_dict("records"):
        add(str(r["name"]), micrograph=r.get("micrograph"))
        if r.get("status") == "failed":
            add(str(r["name"]), status="failed", error=r.get("error"))
    for d in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        if d.is_dir() and is_results_folder(d) and not d.name.startswith("."):
            add(d.name)
        elif d.is_file() and d.name.endswith(".checkpoint.npz") and not d.name.startswith("."):
            add(d.name[: -len(".checkpoint.npz")])
        elif d.is_dir() and d.name.startswith(".") and d.name.endswith(".shards"):
            add(d.name[1: -len(".shards")])
    for name in list(order) if names is None else list(names):
        add(name)
        res = out_dir / name
        if is_results_folder(res):  # ours, or a cisTEM / Leopard-EM search put here
            done = _done_folder(res)
            rows[name].update(status="done", error=None, results=str(res),
                              n_hits=done.n_hits if done else None)
            rows[name]["micrograph"] = rows[name]["micrograph"] or (
                str(done.micrograph_path() or done.recorded_micrograph) if done else None)
            continue
        ck = checkpoint_path_for(res)
        shards = out_dir / f".{name}.shards"
        if ck.is_file() or shards.is_dir():
            frac = None
            try:
                if ck.is_file():
                    st = read_state(ck)
                    info = st["info"]
                    tot = (info["orientation_range"][1] - info["orientation_range"][0]) \
                        * info["n_defocus"] * info["n_pixel_planes"]
                    frac = st["n_cc"] / tot if tot else None
            except InputError:
                pass
            rows[name].update(status="interrupted", fraction=frac)
    names_out = order if names is None else list(names)
    return pd.DataFrame([rows[n] for n in names_out],
                        columns=["name", "micrograph", "status", "n_hits", "error", "results",
                                 "fraction"])


def _done_folder(folder: Path) -> ResultsFolder | None:
    """A finished micrograph's results folder (``search.json`` only; a foreign one is read
    whole), None if unreadable."""
    try:
        return open_results(folder, maps=False)
    except InputError:
        return None


def _read_batch_json(out_dir: Path) -> dict | None:
    p = out_dir / "batch.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None
