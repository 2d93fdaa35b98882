"""What the "2DTM Project" widget reads from a batch folder (no Qt).

A batch folder is read with :func:`napari_2dtm.jobs.batch.batch_status` (one row per
micrograph: status, hit count, error, results folder, fraction done), to which
:func:`read_project` adds the hits per class of any classification job folder found
for the micrograph (:func:`class_counts`). Reading never writes: the widget can follow
a batch that is still running.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pandas as pd

from napari_2dtm.jobs.batch import batch_status

#: the columns of an empty project (before a folder was read)
PROJECT_COLUMNS = ["name", "micrograph", "status", "n_hits", "error", "results", "fraction",
                   "classes"]


def class_counts(batch_dir, name: str) -> dict | None:
    """Hits per class of micrograph ``name`` from a classification job folder, if any.

    Looked for in ``<batch>/<name>/classification*/``, ``<batch>/<name>.classification*/``
    and ``<batch>/classification*/<name>/`` (a folder with ``classification.json``);
    the counts at the job's confidence level, without the unassigned ones.
    """
    batch_dir = Path(batch_dir)
    esc = glob.escape(name)
    cands = [*sorted((batch_dir / name).glob("classification*/classification.json")),
             *sorted(batch_dir.glob(f"{esc}.classification*/classification.json")),
             *sorted(batch_dir.glob(f"classification*/{esc}/classification.json"))]
    for p in cands:
        try:
            meta = json.loads(p.read_text())
            counts = meta["counts"]
            conf = meta.get("confidence")
            key = f"{conf:g}" if isinstance(conf, (int, float)) else None
            c = counts.get(key) if key in counts else next(iter(counts.values()))
            return {k: int(v) for k, v in c.items() if k != "unassigned"}
        except (OSError, ValueError, KeyError, TypeError, StopIteration):
            continue
    return None


def read_project(folder: Path) -> pd.DataFrame:
    """The batch status of ``folder`` with a ``classes`` column (dict or None per row)."""
    data = batch_status(folder)
    data["classes"] = [class_counts(folder, n) for n in data["name"]]
    return data.reset_index(drop=True)


def project_summary(data: pd.DataFrame) -> str:
    """One line: micrographs per status and hits in all."""
    counts = data["status"].value_counts().to_dict()
    n_hits = pd.to_numeric(data["n_hits"], errors="coerce").fillna(0).sum()
    parts = [f"{counts[s]} {s}" for s in ("done", "interrupted", "pending", "failed")
             if s in counts]
    return f"{len(data)} micrographs: {', '.join(parts)}; {int(n_hits)} hits in all."
