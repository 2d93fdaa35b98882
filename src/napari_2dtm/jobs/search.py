"""The search job: one micrograph, one template, one complete results folder.

Every door runs a search through :func:`run_search` (or, for a result made elsewhere,
through its last step :func:`save_results`): ``napari-2dtm search``, each micrograph of
``napari-2dtm batch`` (in this process or on dask workers), the Search widget and the
headless demo. So one door or another the same folder comes out: the engine's maps, the
-ln p map of the 2DTM p-value (Zhang et al. 2025) when it can be fitted, hits detected
on the chosen metric (``hits_metric`` / ``hits_threshold`` in ``search.json``), and,
for an in-memory micrograph, its copy under ``input/``.

Protocol (see :mod:`napari_2dtm.jobs`): ``progress`` is called in the job's thread,
first with one :class:`SearchStarted` (the search's size and device, before any work),
then with each :class:`~napari_2dtm.search.engine.SearchProgress` snapshot; setting
``cancel`` stops the search at its next orientation batch (a checkpoint, if any, is
saved) and raises :class:`~napari_2dtm.errors.Cancelled`; nothing is written then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path

from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.io.mrc import output_lock
from napari_2dtm.search.config import check_threshold
from napari_2dtm.search.engine import Search
from napari_2dtm.search.fast import make_search
from napari_2dtm.search.results import results_dir_problem, write_results

__all__ = ["run_search", "save_results", "detect_hits", "SearchStarted", "estimate_job",
           "HITS_METRICS"]

#: maps hits can be detected on
HITS_METRICS = ("zbg", "zscore", "snr", "neg_log_p")


@dataclasses.dataclass
class SearchStarted:
    """The first progress record of a search job: what is about to run.

    search: the :class:`~napari_2dtm.search.engine.Search` itself, for callers that need
    more (e.g. ``estimate_seconds()``); read it from the progress callback only.
    """

    n_orientations: int
    n_planes: int
    n_cc_total: int
    pixel_size_a: float
    image_shape: tuple[int, int]
    device: str
    search: Search

    @classmethod
    def of(cls, search: Search) -> SearchStarted:
        """The record of a :class:`~napari_2dtm.search.engine.Search` about to run."""
        return cls(search.n_orientations, search.n_planes, search.n_cc_total,
                   search.pixel_size_a, tuple(search.image_shape), search.backend.name, search)


@contextlib.contextmanager
def linked_cancel(cancel: threading.Event | None, stop: Callable[[], None]):
    """Call ``stop()`` as soon as ``cancel`` is set, while the block runs.

    The engine checks its own flag between orientation batches; a small watcher thread
    forwards the job's Event to it, so a cancel does not wait for the next progress record.
    """
    if cancel is None:
        yield
        return
    done = threading.Event()

    def watch():
        while not done.wait(0.05):
            if cancel.is_set():
                stop()
                return

    watcher = threading.Thread(target=watch, name="napari-2dtm cancel link", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def detect_hits(result, metric: str | None = None, threshold: float | None = None,
                source: str | None = None) -> float:
    """Add the -ln p map (and column) to ``result`` and re-extract its hits on ``metric``.

    threshold: default the false-alarm threshold of the search (z-score, SNR), or
    ``ln(N_population / N_fp)`` for ``neg_log_p``. Records ``hits_metric`` and
    ``hits_threshold`` in the metadata; returns the threshold. The p-value needs enough
    local maxima: on a tiny image it is left out (an :class:`InputError` if it was the
    metric asked for; ``source`` names the micrograph in that message).
    """
    from napari_2dtm.search.detect import default_metric, extract_hits  # noqa: PLC0415
    from napari_2dtm.search.pvalue import add_neg_log_p  # noqa: PLC0415
    from napari_2dtm.search.results import ResultsFolder  # noqa: PLC0415

    metric = metric or default_metric(result.maps)
    if metric not in HITS_METRICS:
        raise InputError(f"hits metric must be one of {', '.join(HITS_METRICS)}, got {metric!r}")
    view = ResultsFolder.of(result)
    fit = None
    if result.candidates is not None:  # a fast search: no p-value (see search.fast)
        if metric == "neg_log_p":
            raise InputError(f"{source or 'micrograph'}: a fast search has no 2DTM p-value "
                             "(its maps are the coarse stage's): use zbg, zscore or snr")
    else:
        try:
            fit = add_neg_log_p(result)
        except ValueError as e:  # too few local maxima in a tiny image
            if metric == "neg_log_p":
                raise InputError(f"{source or 'micrograph'}: no 2DTM p-value: {e}") from None
    if threshold is None:
        threshold = (fit.threshold(view.config.n_false_positives) if metric == "neg_log_p"
                     else result.threshold)
    result.hits = extract_hits(result, metric=metric, threshold=threshold, ctf=view.ctf)
    result.metadata["hits_metric"] = metric
    result.metadata["hits_threshold"] = float(threshold)
    return float(threshold)


def save_results(result, out_dir, image=None, micrograph_path=None,
                 micrograph_name="micrograph", overwrite=False, *, metric: str | None = None,
                 threshold: float | None = None) -> Path:
    """The last step of every search job: detect the hits, write the results folder.

    With no ``micrograph_path`` the ``image`` is saved in the folder as
    ``input/<micrograph_name>.mrc`` (recorded in ``search.json``), so the folder opens
    complete in napari.
    """
    detect_hits(result, metric, threshold, source=str(micrograph_path or micrograph_name))
    if micrograph_path:
        return write_results(result, out_dir, overwrite=overwrite, micrograph_path=micrograph_path)
    return write_results(result, out_dir, overwrite=overwrite, micrograph_image=image,
                         micrograph_name=micrograph_name)


def run_search(image, pixel_size_a: float, template, config, out_dir, *,
               micrograph_path=None, micrograph_name: str = "micrograph",
               overwrite: bool = False, metric: str | None = None,
               threshold: float | None = None, checkpoint=None,
               restart: bool = False,
               template_kwargs: dict | None = None,
               progress: Callable | None = None,
               cancel: threading.Event | None = None):
    """Search ``image`` for ``template`` and write the results folder ``out_dir``.

    image, pixel_size_a, template, config: as for :class:`~napari_2dtm.search.engine.Search`;
    micrograph_path: the file ``image`` was read from (recorded; without it the image is
    saved in the folder under the name ``micrograph_name``); metric, threshold: how the
    hits are detected (:func:`detect_hits`); checkpoint: ``.npz`` path to save partial
    statistics to and resume from (deleted once the folder is written); restart: start
    over, discarding an existing checkpoint, but only once the inputs are read and
    checked (a typo in a file name must not cost an interrupted search).

    The output's lock (:func:`~napari_2dtm.io.mrc.output_lock`) is held from before the
    search until the folder is in place: a second search on the same ``out_dir`` is
    refused. Returns ``(SearchResult, folder)``. Raises :class:`InputError` for bad
    input, another run on ``out_dir``, an existing ``out_dir`` without ``overwrite`` or
    one that holds the micrograph or template (checked before the search starts), and
    :class:`~napari_2dtm.errors.Cancelled` when ``cancel`` was set.
    """
    if metric is not None and metric not in HITS_METRICS:
        raise InputError(f"hits metric must be one of {', '.join(HITS_METRICS)}, got {metric!r}")
    threshold = check_threshold(threshold)
    with output_lock(out_dir):
        return _run_search_locked(image, pixel_size_a, template, config, out_dir,
                                  micrograph_path, micrograph_name, overwrite, metric, threshold,
                                  checkpoint, restart, template_kwargs, progress, cancel)


def _run_search_locked(image, pixel_size_a, template, config, out_dir, micrograph_path,
                       micrograph_name, overwrite, metric, threshold, checkpoint, restart,
                       template_kwargs, progress, cancel):
    template_file = template if isinstance(template, (str, Path)) else None
    problem = results_dir_problem(out_dir, overwrite, inputs=(micrograph_path, template_file))
    if problem:
        raise InputError(problem)
    if cancel is not None and cancel.is_set():
        raise Cancelled("search cancelled")
    search = make_search(image, pixel_size_a, template, config, template_kwargs=template_kwargs,
                         checkpoint=None if restart else checkpoint,
                         micrograph_path=micrograph_path)
    if restart and checkpoint is not None:
        # The inputs are good: only now is the interrupted search given up.
        Path(checkpoint).unlink(missing_ok=True)
        search.checkpoint_path = Path(checkpoint)
    if progress is not None:
        progress(SearchStarted.of(search))
    with linked_cancel(cancel, search.cancel):
        for record in search.run():
            if progress is not None:
                progress(record)
    if cancel is not None and cancel.is_set():
        raise Cancelled("search cancelled")  # set during the last batch: keep nothing
    folder = save_results(search.result, out_dir, image, micrograph_path, micrograph_name,
                          overwrite, metric=metric, threshold=threshold)
    search.remove_checkpoint()
    return search.result, Path(folder)


def estimate_job(image, pixel_size_a, template, config):
    """``(n_orientations, n_planes, n_cc_total, estimated_seconds)`` of a search."""
    search = make_search(image, pixel_size_a, template, config)
    return search.n_orientations, search.n_planes, search.n_cc_total, search.estimate_seconds()
