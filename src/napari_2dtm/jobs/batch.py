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
ones failed. One batch runs on a folder at a time (its lock,
:func:`~napari_2dtm.io.mrc.output_lock`), and a folder without ``batch.json`` that
holds a ``summary.csv``/``summary.json`` of someone else's is refused. The summary and
:func:`batch_status` live in :mod:`napari_2dtm.jobs.batch_folder` (re-exported here). A micrograph that cannot be read or searched is reported in the summary
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
its checkpoint saved, also on dask workers, which see it through a
``distributed.Event``) and raises :class:`~napari_2dtm.errors.Cancelled`; it returns
``(summary, out_dir)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import threading
import time
import uuid
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
    read_micrograph_with_ctf,
)
from napari_2dtm.io.mrc import atomic_write_text, output_lock, read_micrograph
from napari_2dtm.jobs.batch_folder import (
    SUMMARY_COLUMNS,
    _done_folder,
    _read_batch_json,
    _write_summary,
    batch_status,
    read_summary,
)
from napari_2dtm.jobs.search import linked_cancel, run_search, save_results
from napari_2dtm.search.checkpoint import (
    array_digest,
    checkpoint_path_for,
    identity_difference,
    load_partial,
    merge_partials,
    shard_ranges,
)
from napari_2dtm.search.config import (
    _RUNTIME_FIELDS,
    SearchConfig,
    check_threshold,
    orientation_list,
)
from napari_2dtm.search.engine import Search
from napari_2dtm.search.results import MARKER
from napari_2dtm.templates.load import load_template
from napari_2dtm.templates.template import Template

__all__ = ["find_micrographs", "micrograph_name", "CTFSource", "BatchJob", "run_batch",
           "read_summary", "batch_status", "SUMMARY_COLUMNS", "MICROGRAPH_SUFFIXES"]


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
    pixel_size_a: float | None = None  # the user's (--pixel-size): wins over the header
    #: the CTF file's pixel size and the file: checked against the header when read
    ctf_pixel_size_a: float | None = None
    ctf_file: str | None = None
    template_source: str | None = None
    template_kwargs: dict = dataclasses.field(default_factory=dict)
    error: str | None = None  # set when the job could not even be prepared
    metric: str | None = None  # hits detection (see jobs.search.detect_hits; None: zbg)
    threshold: float | None = None
    #: name of the dask ``distributed.Event`` that cancels the batch (on dask workers,
    #: where the caller's threading.Event cannot reach)
    cancel_event: str | None = None

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
    image, px = read_micrograph_with_ctf(job.micrograph, job.pixel_size_a,
                                         job.ctf_pixel_size_a, job.ctf_file)
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
    with _dask_cancel(job.cancel_event, cancel) as cancel:
        try:
            image, px, tpl = _load(job, template)
            res, _ = run_search(image, px, tpl, job.config, job.results_dir,
                                micrograph_path=job.micrograph, metric=job.metric,
                                threshold=job.threshold, checkpoint=job.checkpoint,
                                cancel=cancel)
            return _row(job, "done", n_hits=len(res.hits), time_s=time.perf_counter() - t0)
        except Cancelled:
            raise
        except Exception as e:  # the batch goes on; the row says why
            return _row(job, "failed", error=_one_line(e), time_s=time.perf_counter() - t0)


@contextlib.contextmanager
def _dask_cancel(name: str | None, cancel: threading.Event | None):
    """On a dask worker, a threading.Event set when the batch's ``distributed.Event``
    ``name`` is: the search then stops at its next orientation batch and saves its
    checkpoint, as it does in one process. Yields ``cancel`` itself when given or when
    there is no such event."""
    if cancel is not None or not name:
        yield cancel
        return
    from distributed import Event  # noqa: PLC0415

    remote = Event(name)
    local = threading.Event()
    done = threading.Event()
    if remote.is_set():  # cancelled before this task started: do no work
        local.set()

    def watch():
        while not done.is_set() and not local.is_set():
            try:
                if remote.wait(timeout=0.2):
                    local.set()
            except Exception:  # the scheduler is gone: the worker goes with it
                return

    watcher = threading.Thread(target=watch, name="napari-2dtm batch cancel", daemon=True)
    watcher.start()
    try:
        yield local
    finally:
        done.set()
        watcher.join(2.0)


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


def _batch_identity(config: SearchConfig, template: Template, template_source) -> dict:
    d = config.to_dict()
    for k in _RUNTIME_FIELDS | {"ctf"}:
        d.pop(k, None)  # the CTF is per micrograph
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
    metric: str | None = None,
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
    _check_run_settings(workers, threads_per_worker, shards)
    if shards > 1 and config is not None and config.strategy == "fast":
        raise InputError("--shards: the fast strategy runs each micrograph whole (its coarse "
                         "stage is small); use --shards 1 or the exhaustive strategy")
    if pixel_size_a is not None and not (math.isfinite(pixel_size_a) and pixel_size_a > 0):
        raise InputError(f"--pixel-size must be > 0 Angstrom, got {pixel_size_a}")
    threshold = check_threshold(threshold)
    _check_batch_folder(out_dir)
    # One batch per folder at a time: two would search the same micrographs into the
    # same results folders and checkpoints.
    with output_lock(out_dir):
        return _run_batch_locked(mics, out_dir, template, config, ctf, pixel_size_a,
                                 template_kwargs, retry_failed, workers, scheduler,
                                 threads_per_worker, shards, metric, threshold, progress, cancel)


def _check_run_settings(workers, threads_per_worker, shards) -> None:
    """Refuse, before any micrograph, counts that would fail in dask or search nothing."""
    for name, value, least in (("--workers", workers, 0), ("--shards", shards, 1),
                               ("--threads-per-worker", threads_per_worker, 1)):
        if value is not None and int(value) < least:
            raise InputError(f"{name} must be >= {least}, got {value}")


def _check_batch_folder(out_dir: Path) -> None:
    """Refuse an output the batch would damage: a file, or a folder that is not a batch
    folder (no ``batch.json``) but holds a file of the names a batch writes."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; choose another batch folder")
    if out_dir.is_dir() and not (out_dir / "batch.json").is_file():
        for name in ("summary.csv", "summary.json"):
            if (out_dir / name).exists():
                raise InputError(f"{out_dir}: not a napari-2dtm batch folder (no batch.json) "
                                 f"but holds {name}; refusing to replace it, choose another "
                                 "batch folder")


def _run_batch_locked(mics, out_dir, template, config, ctf, pixel_size_a, template_kwargs,
                      retry_failed, workers, scheduler, threads_per_worker, shards, metric,
                      threshold, progress, cancel):
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
    if px is None and (isinstance(template, np.ndarray) or _is_model(str(template))):
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
        job.ctf_pixel_size_a, job.ctf_file = px, ctf.source_file(mic)
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


#: seconds to wait for a dask scheduler (``--scheduler``) before giving up in one line
SCHEDULER_TIMEOUT_S = 20


def _run_dask(jobs, finished, scheduler, workers, threads_per_worker, shards, cancel=None):
    try:
        from dask.distributed import (  # noqa: PLC0415
            Client,
            Event,
            LocalCluster,
            as_completed,
            wait,
        )
    except ImportError:
        raise InputError("dask.distributed is not installed (pip install 'napari-2dtm[dask]'); "
                         "run with --workers 0 to search in this process") from None
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, ValueError, TypeError) as e:  # unreachable, refused, bad address
            raise InputError(f"--scheduler {scheduler}: cannot connect to a dask scheduler "
                             f"there ({type(e).__name__}: {one_line(e)})") from None
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
        stop_name = f"napari-2dtm-cancel-{uuid.uuid4().hex}"
        futures = []
        for job in jobs:
            job = dataclasses.replace(job, template=None, cancel_event=stop_name)
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
        # the main thread waits on results meanwhile: a watcher forwards the cancel
        with linked_cancel(cancel, _set_quietly(Event(stop_name, client=client))):
            for fut in as_completed(futures):
                if cancel is not None and cancel.is_set():
                    # The running searches saw the event: let them save their checkpoints
                    # (the next orientation batch) before the workers are stopped.
                    with contextlib.suppress(Exception):
                        wait(futures, timeout=CANCEL_GRACE_S)
                    client.cancel(futures)
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


#: how long a cancelled dask batch waits for its running searches to save checkpoints
#: (a batch system's grace period after SIGTERM is often 30-60 s)
CANCEL_GRACE_S = 25.0


def _set_quietly(remote_event):
    """``remote_event.set`` that never raises: the cluster may already be gone."""
    def set_it():
        with contextlib.suppress(Exception):
            remote_event.set()
    return set_it
