"""Batch search: many micrographs, one template, one results folder each (no Qt).

Layout of a batch folder ``OUT/``::

    batch.json                 the settings (checked when the batch is run again)
    summary.csv summary.json   one row per micrograph: micrograph, name, status,
                               n_hits, error, time_s, results (rewritten as results come in)
    <name>/                    results folder of micrograph <name> (see results.py); it
                               appears complete or not at all, so it is the "done" marker
    <name>.checkpoint.npz      partial statistics of a search in progress / interrupted
    .<name>.shards/            partial statistics of an orientation-sharded search

Running a batch again skips micrographs whose results folder exists, resumes
interrupted ones from their checkpoints, and (unless ``retry_failed``) leaves failed
ones failed. A micrograph that cannot be read or searched is reported in the summary
with a one-line error; the batch goes on.

Work runs in this process (``workers=0``), on a dask.distributed ``LocalCluster``
(``workers=N`` processes) or on an existing cluster (``scheduler="tcp://host:8786"``;
see ``docs/batch.md`` for SLURM with dask-jobqueue and one worker per GPU). Each
micrograph is one task; with ``shards=K`` each search is split into K orientation
ranges (K tasks) whose partial statistics are merged by max and sums into the same
result as one run.

Per-micrograph CTF comes from a CTFFIND output file matched by name in a folder
(:class:`~napari_2dtm.io.micrographs.CTFSource` with ``ctffind_dir``) or a RELION STAR
file with ``rlnMicrographName`` and ``rlnDefocusU/V/Angle`` (``star``); the inputs
(:func:`~napari_2dtm.io.micrographs.find_micrographs`, :class:`CTFSource`) live in
:mod:`napari_2dtm.io.micrographs` and are re-exported here.

Each micrograph is searched by :func:`napari_2dtm.jobs.search.run_search` (sharded
searches end in its :func:`~napari_2dtm.jobs.search.save_results`), so its results
folder is the one ``napari-2dtm search`` writes. :func:`run_batch` follows the jobs'
protocol: ``progress`` gets each summary row as it is finished, ``cancel`` (an Event)
stops the batch between micrographs (the running search at its next orientation batch,
its checkpoint kept) and raises :class:`~napari_2dtm.errors.Cancelled`; it returns
``(summary, out_dir)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from napari_2dtm.errors import Cancelled, InputError, one_line
from napari_2dtm.io.micrographs import (
    MICROGRAPH_SUFFIXES,
    CTFSource,
    find_micrographs,
    micrograph_name,
)
from napari_2dtm.io.mrc import atomic_write_text, read_micrograph
from napari_2dtm.jobs.search import run_search, save_results
from napari_2dtm.search.checkpoint import (
    checkpoint_path_for,
    identity_difference,
    load_partial,
    merge_partials,
    shard_ranges,
)
from napari_2dtm.search.config import _RUNTIME_FIELDS, SearchConfig, orientation_list
from napari_2dtm.search.engine import Search
from napari_2dtm.search.results import MARKER, ResultsFolder
from napari_2dtm.templates.load import load_template
from napari_2dtm.templates.template import Template

__all__ = ["find_micrographs", "micrograph_name", "CTFSource", "BatchJob", "run_batch",
           "read_summary", "batch_status", "SUMMARY_COLUMNS", "MICROGRAPH_SUFFIXES"]

SUMMARY_COLUMNS = ["micrograph", "name", "status", "n_hits", "error", "time_s", "results"]


# ------------------------------------------------------------------ the jobs
@dataclasses.dataclass
class BatchJob:
    """One micrograph to search (picklable: sent to dask workers).

    template: loaded :class:`Template`, or a dask future of one; template_source and
    template_kwargs: to rebuild a model template at another pixel size.
    """

    micrograph: str
    name: str
    out_dir: str
    config: SearchConfig
    template: object
    pixel_size_a: float | None = None
    template_source: str | None = None
    template_kwargs: dict = dataclasses.field(default_factory=dict)
    error: str | None = None  # set when the job could not even be prepared
    metric: str = "zscore"  # hits detection (see jobs.search.detect_hits)
    threshold: float | None = None

    @property
    def results_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @property
    def checkpoint(self) -> Path:
        return checkpoint_path_for(self.results_dir)

    @property
    def shard_dir(self) -> Path:
        return Path(self.out_dir) / f".{self.name}.shards"


def _row(job: BatchJob, status, n_hits=None, error=None, time_s=None) -> dict:
    return {"micrograph": str(job.micrograph), "name": job.name, "status": status,
            "n_hits": n_hits, "error": error, "time_s": time_s,
            "results": str(job.results_dir) if status in ("done", "skipped") else None}


def _one_line(e: BaseException) -> str:
    """A summary row's error: the input error's line, else the exception type too (an
    unexpected failure should say what it was)."""
    return one_line(e) if isinstance(e, InputError) else f"{type(e).__name__}: {one_line(e)}"


def _load(job: BatchJob, template=None):
    image, px = read_micrograph(job.micrograph, job.pixel_size_a)
    tpl = job.template if template is None else template
    # A model template is computed at the micrograph pixel size; redo it if this
    # micrograph's pixel size differs from the one it was made for.
    if (job.template_source and isinstance(tpl, Template) and _is_model(job.template_source)
            and not math.isclose(tpl.pixel_size_a, px, rel_tol=1e-6)):
        tpl = load_template(job.template_source, pixel_size_a=px, **job.template_kwargs)
    return image, px, tpl


def _is_model(source: str) -> bool:
    from napari_2dtm.templates.load import _MODEL_SUFFIXES, template_suffix  # noqa: PLC0415

    return template_suffix(source) in _MODEL_SUFFIXES


def search_micrograph(job: BatchJob, template=None, cancel: threading.Event | None = None) -> dict:
    """Search one micrograph into its results folder; returns its summary row.

    template: overrides ``job.template`` (dask passes the scattered template here).
    Never raises for a bad micrograph: the row has ``status="failed"`` and the error;
    raises :class:`~napari_2dtm.errors.Cancelled` when ``cancel`` is set (the
    checkpoint is kept for the next run).
    """
    t0 = time.perf_counter()
    if job.error:
        return _row(job, "failed", error=job.error)
    try:
        image, px, tpl = _load(job, template)
        res, _ = run_search(image, px, tpl, job.config, job.results_dir,
                            micrograph_path=job.micrograph, metric=job.metric,
                            threshold=job.threshold, checkpoint=job.checkpoint, cancel=cancel)
        return _row(job, "done", n_hits=len(res.hits), time_s=time.perf_counter() - t0)
    except Cancelled:
        raise
    except Exception as e:  # the batch goes on; the row says why
        return _row(job, "failed", error=_one_line(e), time_s=time.perf_counter() - t0)


def search_shard(job: BatchJob, orientation_range, template=None) -> dict:
    """Search one orientation range of a micrograph; its partial statistics go to a file
    in the job's shard folder (which is also its checkpoint)."""
    t0 = time.perf_counter()
    a, b = orientation_range
    path = job.shard_dir / f"shard-{a:09d}-{b:09d}.npz"
    try:
        if job.error:
            raise InputError(job.error)
        image, px, tpl = _load(job, template)
        cfg = dataclasses.replace(job.config, orientation_range=(a, b))
        s = Search(image, px, tpl, cfg, checkpoint=path, micrograph_path=job.micrograph)
        if not (s._resume_state and s._resume_state["info"].get("complete")):
            for _ in s.run():
                pass
        return {"ok": True, "path": str(path), "time_s": time.perf_counter() - t0}
    except Exception as e:
        return {"ok": False, "error": _one_line(e), "time_s": time.perf_counter() - t0}


def merge_shards(job: BatchJob, shards: list, template=None) -> dict:
    """Merge the shard files of one micrograph (``shards``: the shard results) into its
    results folder."""
    t0 = time.perf_counter()
    failed = [s for s in shards if not s.get("ok")]
    spent = sum(s.get("time_s") or 0.0 for s in shards)
    if failed:
        return _row(job, "failed", error=failed[0]["error"], time_s=spent)
    try:
        merged = merge_partials([load_partial(s["path"]) for s in shards])
        image, px, tpl = _load(job, template)
        s = Search(image, px, tpl, job.config, micrograph_path=job.micrograph)
        res = s.result_from_partial(merged)
        save_results(res, job.results_dir, micrograph_path=job.micrograph, metric=job.metric,
                     threshold=job.threshold)
        shutil.rmtree(job.shard_dir, ignore_errors=True)
        return _row(job, "done", n_hits=len(res.hits), time_s=spent + time.perf_counter() - t0)
    except Exception as e:
        return _row(job, "failed", error=_one_line(e), time_s=spent + time.perf_counter() - t0)


# ------------------------------------------------------------------ summary
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
        if d.is_dir() and (d / MARKER).is_file() and not d.name.startswith("."):
            add(d.name)
        elif d.is_file() and d.name.endswith(".checkpoint.npz") and not d.name.startswith("."):
            add(d.name[: -len(".checkpoint.npz")])
        elif d.is_dir() and d.name.startswith(".") and d.name.endswith(".shards"):
            add(d.name[1: -len(".shards")])
    for name in list(order) if names is None else list(names):
        add(name)
        res = out_dir / name
        if (res / MARKER).is_file():
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
    """A finished micrograph's results folder (``search.json`` only), None if unreadable."""
    try:
        return ResultsFolder.open(folder, maps=False)
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


def _batch_identity(config: SearchConfig, template: Template, template_source) -> dict:
    d = config.to_dict()
    for k in _RUNTIME_FIELDS | {"ctf"}:
        d.pop(k, None)  # the CTF is per micrograph
    from napari_2dtm.search.checkpoint import array_digest  # noqa: PLC0415

    return {"config": json.loads(json.dumps(d, default=str)),
            "template": str(template_source) if template_source else array_digest(template.volume)}


# ------------------------------------------------------------------ the batch
def run_batch(
    micrographs: Iterable,
    out_dir,
    template,
    config: SearchConfig | None = None,
    ctf: CTFSource | None = None,
    pixel_size_a: float | None = None,
    template_kwargs: dict | None = None,
    retry_failed: bool = False,
    workers: int = 0,
    scheduler: str | None = None,
    threads_per_worker: int | None = None,
    shards: int = 1,
    metric: str = "zscore",
    threshold: float | None = None,
    progress: Callable[[dict], None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[pd.DataFrame, Path]:
    """Search every micrograph; returns (and writes) the summary table, and ``out_dir``.

    micrographs: paths (see :func:`find_micrographs`); out_dir: the batch folder;
    template: path or :class:`Template`; config: search settings (its CTF is the default
    for micrographs without one in ``ctf``); pixel_size_a: overrides the headers.
    workers: 0 = run here, one micrograph after the other; N >= 1 = a dask
    ``LocalCluster`` of N worker processes with ``threads_per_worker`` FFT threads each
    (default: the cores shared out). scheduler: address of a running dask scheduler
    (overrides ``workers``). shards: orientation ranges per micrograph (parallel tasks).
    metric, threshold: hits detection of every micrograph (see
    :func:`~napari_2dtm.jobs.search.detect_hits`). progress: called with each summary row
    as it is finished. cancel: stops the batch (:class:`~napari_2dtm.errors.Cancelled`).
    """
    config = config or SearchConfig()
    out_dir = Path(out_dir)
    mics = [Path(m) for m in micrographs]
    if not mics:
        raise InputError("no micrographs to search")
    ctf = ctf or CTFSource(default=config.ctf, default_pixel_size_a=pixel_size_a)
    tkw = dict(template_kwargs or {})
    tsrc = None if isinstance(template, (Template, np.ndarray)) else str(template)
    tpl = _initial_template(template, mics, ctf, pixel_size_a, tkw)

    # --- the batch folder and its settings ---
    out_dir.mkdir(parents=True, exist_ok=True)
    ident = _batch_identity(config, tpl, tsrc)
    old = _read_batch_json(out_dir)
    if old is not None:
        d = identity_difference(old.get("identity", {}), ident)
        if d:
            raise InputError(f"{out_dir}: this batch folder was made with other settings ({d}); "
                             "use another --out")
    names = [micrograph_name(m) for m in mics]
    listed = list(dict.fromkeys((old or {}).get("micrographs", []) + [str(m) for m in mics]))
    atomic_write_text(out_dir / "batch.json", json.dumps(
        {"identity": ident, "template": tsrc or "array", "micrographs": listed,
         "config": config.to_dict()}, indent=1, default=str))

    previous = {str(r["name"]): r for r in read_summary(out_dir).to_dict("records")}
    rows: dict[str, dict] = {}
    jobs: list[BatchJob] = []
    for mic, name in zip(mics, names):
        job = _make_job(mic, name, out_dir, config, tpl, tsrc, tkw, ctf, pixel_size_a)
        job.metric, job.threshold = metric, threshold
        if (job.results_dir / MARKER).is_file():
            done = _done_folder(job.results_dir)
            rows[name] = _row(job, "skipped", n_hits=done.n_hits if done else None)
        elif (not retry_failed and previous.get(name, {}).get("status") == "failed"
              and not job.checkpoint.exists()):
            prev = previous[name]
            rows[name] = {**_row(job, "failed", error=prev.get("error")), "time_s": None}
        else:
            jobs.append(job)
    for r in rows.values():
        if progress:
            progress(r)

    def finished(r):
        rows[r["name"]] = r
        _write_summary(out_dir, [rows[n] for n in names if n in rows])
        if progress:
            progress(r)

    _write_summary(out_dir, [rows[n] for n in names if n in rows])
    if jobs:
        if scheduler or workers:
            _run_dask(jobs, finished, scheduler, workers, threads_per_worker, shards, cancel)
        else:
            _run_here(jobs, finished, shards, cancel)
    return pd.DataFrame([rows[n] for n in names], columns=SUMMARY_COLUMNS), out_dir


def _initial_template(template, mics, ctf, pixel_size_a, tkw):
    """Load the template once (at the first readable micrograph's pixel size for models)."""
    if isinstance(template, Template):
        return template
    px = pixel_size_a
    if px is None and (_is_model(str(template)) if not isinstance(template, np.ndarray) else True):
        for m in mics:
            try:
                px = ctf.for_micrograph(m)[1] or read_micrograph(m)[1]
                break
            except InputError:
                continue
    return load_template(template, pixel_size_a=px, **tkw)


def _make_job(mic, name, out_dir, config, tpl, tsrc, tkw, ctf, pixel_size_a) -> BatchJob:
    job = BatchJob(micrograph=str(mic), name=name, out_dir=str(out_dir), config=config,
                   template=tpl, pixel_size_a=pixel_size_a, template_source=tsrc,
                   template_kwargs=tkw)
    try:
        params, px = ctf.for_micrograph(mic)
        job.config = dataclasses.replace(config, ctf=params)
        job.pixel_size_a = pixel_size_a or px
    except InputError as e:
        job.error = str(e)
    return job


def _shard_plan(job: BatchJob, shards: int):
    n = len(orientation_list(job.config))
    return shard_ranges(n, shards) if shards > 1 else None


def _check_cancel(cancel):
    if cancel is not None and cancel.is_set():
        raise Cancelled("batch cancelled")


def _run_here(jobs, finished, shards, cancel=None):
    for job in jobs:
        _check_cancel(cancel)
        plan = _shard_plan(job, shards)
        if plan is None:
            finished(search_micrograph(job, cancel=cancel))
        else:
            parts = []
            for r in plan:
                _check_cancel(cancel)
                parts.append(search_shard(job, r))
            finished(merge_shards(job, parts))


def _run_dask(jobs, finished, scheduler, workers, threads_per_worker, shards, cancel=None):
    try:
        from dask.distributed import Client, LocalCluster, as_completed  # noqa: PLC0415
    except ImportError:
        raise InputError("dask.distributed is not installed (pip install 'napari-2dtm[dask]'); "
                         "run with --workers 0 to search in this process") from None
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        ncpu = os.cpu_count() or 1
        threads = threads_per_worker or max(1, ncpu // max(1, workers))
        # One task at a time per worker process; the engine's own threads use the cores.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None,
                               env={"NAPARI_2DTM_WORKERS": str(threads)})
        client = Client(cluster)
    try:
        # The template goes to every worker once; jobs carry no copy of it. Futures are
        # resolved only as top-level (or list) arguments, hence the separate argument.
        [tpl_future] = client.scatter([jobs[0].template], broadcast=True)
        futures = []
        for job in jobs:
            job = dataclasses.replace(job, template=None)
            plan = _shard_plan(job, shards)
            if plan is None:
                futures.append(client.submit(search_micrograph, job, tpl_future,
                                             key=f"search-{job.name}", pure=False))
            else:
                parts = [client.submit(search_shard, job, r, tpl_future, pure=False,
                                       key=f"shard-{job.name}-{r[0]}") for r in plan]
                futures.append(client.submit(merge_shards, job, parts, tpl_future, pure=False,
                                             key=f"merge-{job.name}"))
        by_key = {f.key: job for f, job in zip(futures, jobs)}
        for fut in as_completed(futures):
            if cancel is not None and cancel.is_set():
                client.cancel(futures)  # running searches keep their checkpoints
                raise Cancelled("batch cancelled")
            try:
                row = fut.result()
            except Exception as e:  # a worker died (memory, segfault): report, go on
                row = _row(by_key[fut.key], "failed", error=f"worker failed: {_one_line(e)}")
            finished(row)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
