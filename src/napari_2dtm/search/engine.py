"""The 2DTM search: every orientation x defocus (x pixel size) plane, per-pixel statistics.

Pipeline per batch of orientations (one code path for NumPy and CuPy):

1. Fourier slices of the template (:mod:`napari_2dtm.core.projection`), inverse FFT to
   ``h x h`` projections with the particle centre at pixel 0, edge mean subtracted.
2. Zero-padded forward FFT to the search frame, rows first (only the ``h`` box rows are
   non-zero) then columns: once per orientation, shared by all defocus planes.
3. Per defocus plane: multiply by the whitened image spectrum and the plane's
   ``CTF x whitening`` filter (applied on the full frame, so CTF delocalisation is not
   wrapped inside the template box), accumulating the filtered template's energy
   (Parseval) in the same pass; inverse FFT; scale by ``1 / sqrt(energy)`` so the
   correlation of white unit-variance noise is N(0, 1) at every pixel.
4. One fused pass per batch updates MIP, best global index (int32), and float64 sums.

The global index is ``orientation + n_orient * (defocus + n_defocus * pixel_plane)``.

Memory is bounded on large micrographs (K3, 5760 x 4092): the statistics live on the
search grid, correlation maps are made a few at a time, and the score maps are
computed in row blocks. A search can checkpoint its statistics and resume, or be split
into orientation shards merged by :func:`napari_2dtm.search.checkpoint.merge_partials`.

Where the parts live: the search space in :mod:`napari_2dtm.search.config`, steps 1-3
(and the work sizes) in :mod:`napari_2dtm.search._correlate`, step 4 and the final maps in
:mod:`napari_2dtm.search.statistics`. This module is the orchestrator: :class:`Search`
checks the inputs, builds the fixed inputs once, cuts the search space into batches
with fixed boundaries, runs them (progress, checkpoints, cancel) and makes the
:class:`SearchResult`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from napari_2dtm.core.backend import get_backend, to_numpy
from napari_2dtm.core.fft import FrameFFT, frame_fft, frame_fft_from_record, record_of
from napari_2dtm.core.filters import prepare_image
from napari_2dtm.core.geometry import euler_to_matrix
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.templates.load import template_at
from napari_2dtm.templates.template import Template

from . import _correlate
from .checkpoint import (
    SearchPartial,
    array_digest,
    identity_difference,
    load_partial,
    read_state,
    save_partial,
)
from .config import (
    _RUNTIME_FIELDS,
    SearchConfig,
    checked_micrograph,
    defocus_offsets,
    orientation_list,
    orientation_span,
    scoring_config,
)
from .outcome import SearchProgress, SearchResult, _jsonable, finish, snapshot
from .statistics import RunningStats, template_radius
from .statistics import valid_mask as _valid_mask

__all__ = ["Search", "SearchProgress", "SearchResult", "search"]


class Search:
    """One micrograph x one template search. Iterate :meth:`run`; read :attr:`result`.

    image: ``(ny, nx)`` micrograph (any real dtype); pixel_size_a: its pixel size;
    template: :class:`~napari_2dtm.templates.template.Template`, a map/model path or a cubic
    array, brought to ``pixel_size_a`` (the rule: :mod:`napari_2dtm.templates.load`).

    checkpoint: optional ``.npz`` path. The search saves its partial statistics there
    every ``config.checkpoint_interval_s`` seconds, when cancelled and when done (atomic
    writes); if the file exists when the search is built, the search continues from it
    (after checking it belongs to the same micrograph, template and search space:
    :class:`~napari_2dtm.errors.InputError` otherwise). Orientation batches have fixed
    boundaries and every batch is added exactly once, so a resumed search gives the
    same maps as an uninterrupted one. micrograph_path: where ``image`` came from,
    recorded in the checkpoint so that :meth:`resume` can reload it.
    """

    def __init__(self, image, pixel_size_a: float, template, config: SearchConfig | None = None,
                 template_kwargs: dict | None = None, checkpoint=None, micrograph_path=None):
        self.config = cfg = config or SearchConfig()
        if cfg.strategy != "exhaustive":  # the fast strategy is another object: not silently this
            raise InputError(f"Search runs the exhaustive strategy, not {cfg.strategy!r}: use "
                             "napari_2dtm.search() or search.fast.make_search()")
        img = checked_micrograph(image, pixel_size_a, micrograph_path)
        self.input_shape = img.shape
        self.input_pixel_size_a = float(pixel_size_a)
        self.micrograph_path = str(micrograph_path) if micrograph_path else None
        self.template = template_at(template, pixel_size_a, **(template_kwargs or {}))
        if not np.any(self.template.volume):  # nothing to match: refuse before any work
            raise InputError(f"{self.template.source or 'template'}: the template is all zero")
        cfg.check_against(pixel_size_a, self.template.box * self.template.pixel_size_a)
        self.backend = get_backend(cfg.device)
        self._cancel = threading.Event()
        self.result: SearchResult | None = None
        self._input_digest = array_digest(img)

        # --- image ---
        prep = prepare_image(img, pixel_size_a, cfg.high_res_limit_a)
        del img
        self.prepared = prep
        self.pixel_size_a = px = prep.pixel_size_a
        self.image_shape = ny, nx = prep.image.shape

        # --- template geometry at the search pixel size ---
        t = self.template
        box = int(math.ceil(t.box * t.pixel_size_a / px - 1e-6))
        box += box % 2
        if box > min(ny, nx):
            raise InputError(
                f"template ({t.box} px at {t.pixel_size_a:.3f} A = {box} px at the search "
                f"pixel size {px:.3f} A) is larger than the micrograph ({ny} x {nx} px)"
            )
        self.box = box
        self.particle_radius_px = template_radius(t.volume) * t.pixel_size_a / px
        self.border_px = min(box // 2, int(math.ceil(self.particle_radius_px)) + 1)
        self.peak_radius_px = (float(cfg.peak_radius_px) if cfg.peak_radius_px
                               else max(3.0, 0.7 * self.particle_radius_px))

        # --- search space ---
        self.orientations = orientation_list(cfg)
        self.defocus_offsets_a = defocus_offsets(cfg.defocus_range_a, cfg.defocus_step_a)
        self.pixel_offsets_a = defocus_offsets(cfg.pixel_size_range_a, cfg.pixel_size_step_a)
        self.n_orientations_total = n_all = len(self.orientations)
        self.orientation_range = a, b = orientation_span(cfg, n_all)
        #: orientations this search covers (all, or one shard's range)
        self.n_orientations = b - a
        self.n_planes = len(self.defocus_offsets_a) * len(self.pixel_offsets_a)
        self.n_cc_total = self.n_orientations * self.n_planes
        if n_all * self.n_planes >= 2**31:
            raise InputError(f"search too large ({n_all * self.n_planes} cross-correlations > 2^31)")

        self.frame = _correlate.search_frame(self.image_shape)

        # --- made when first needed: frame-sized device arrays that a search built only
        # to estimate its run time never needs ---
        self._prepared_device = False
        self._corr: _correlate.Correlator | None = None  # fixed inputs, per-batch work
        self._fft: FrameFFT | None = None  # the CPU's FFT library (see frame_fft())
        self._restored_fft: dict | None = None  # a restored partial's FFT record
        self._rots: np.ndarray | None = None  # (n_orientations_total, 3, 3)
        self.stats: RunningStats | None = None  # see _alloc_state
        # Threads over maps and rows (none starts before the first task). The correlator
        # gets a runner on the pool, not a bound method: no reference cycle then keeps
        # its frame-sized buffers alive after the search is dropped.
        self._pool = ThreadPoolExecutor(self.backend.fft_kw.get("workers", 1))
        self._run_threads = _correlate.thread_runner(self._pool)

        # --- run bookkeeping (run() and checkpoints) ---
        self._elapsed_before = 0.0  # seconds spent by the runs this one resumes
        self._fixed_batch_size: int | None = None  # a resumed run's batch size
        self._batch_size_used: int | None = None
        self._session_start: float | None = None  # perf_counter() when run() started
        self._resumed_from = 0  # CCs per pixel already done when run() started
        self._timing: dict[str, float] = {}  # seconds per loop stage, filled by run()
        # the template's self-match and its seconds (search.background.search_self_match)
        self._self_match: dict | None = None
        self._self_match_s = 0.0

        # --- checkpoint: check now (before any work) that it belongs to this search ---
        self.checkpoint_path = Path(checkpoint) if checkpoint else None
        self._resume_state = None
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            state = read_state(self.checkpoint_path)
            self._check_compatible(state, self.checkpoint_path, "checkpoint")
            self._resume_state = state

    # ---------------------------------------------------------------- identity
    def identity(self) -> dict:
        """What a checkpoint or shard must share with this search to be combined with it:
        content hashes of the micrograph and template, pixel sizes, and the config
        entries that define the scores (not device, batch size, intervals or detection)."""
        return {
            "micrograph": self._input_digest,
            "input_shape": list(self.input_shape),
            "input_pixel_size_a": self.input_pixel_size_a,
            "template": array_digest(self.template.volume),
            "template_pixel_size_a": float(self.template.pixel_size_a),
            "config": scoring_config(self.config),
        }

    def _check_compatible(self, state: dict, path, what: str):
        d = identity_difference(state["identity"], self.identity())
        if d:
            raise InputError(f"{path}: {what} belongs to a different search ({d}); delete it "
                             "to start over")
        rng = state["info"].get("orientation_range")
        if what == "checkpoint" and rng is not None and tuple(rng) != self.orientation_range:
            raise InputError(f"{path}: checkpoint covers orientations {rng[0]}..{rng[1]}, this "
                             f"search {self.orientation_range[0]}..{self.orientation_range[1]}")

    # ------------------------------------------------------------------ set-up
    def _alloc_state(self) -> RunningStats:
        """Running statistics on the search grid ``(ny, nx)`` (the kernels touch only it)."""
        if self.stats is None:
            self.stats = RunningStats(self.image_shape, self.backend.xp)
        return self.stats

    def _setup_device(self):
        if self._prepared_device:
            return
        cfg = self.config
        pad = cfg.template_pad or (2 if self.template.box <= 256 else 1)
        self._corr = _correlate.Correlator.build(
            self.backend, self.prepared, cfg.ctf, self.frame, self.pixel_offsets_a,
            self.defocus_offsets_a, self.template.volume, pad, self.box,
            self._run_threads, self.frame_fft())
        self._rots = euler_to_matrix(*self.orientations.T)
        self._alloc_state()
        if self._resume_state is not None:
            self._restore(load_partial(self.checkpoint_path))
            self._resume_state = None
        self._prepared_device = True

    def _restore(self, p: SearchPartial):
        """Load accumulated statistics (a checkpoint, or a complete partial to finish)."""
        self.stats.restore(p)
        self._restored_fft = p.info.get("fft")
        self._elapsed_before = float(p.info.get("elapsed_s", 0.0))
        if p.info.get("batch_size"):
            # The batch boundaries of the interrupted run, so the remaining batches are
            # exactly the ones it had not added yet.
            self._fixed_batch_size = int(p.info["batch_size"])

    def frame_fft(self) -> FrameFFT | None:
        """The CPU's frame FFTs (None on a GPU), chosen on the first call: a resumed
        checkpoint's (:func:`~napari_2dtm.core.fft.frame_fft_from_record`), else the fastest."""
        if self._fft is None and not self.backend.is_gpu:
            rs = self._resume_state
            self._fft = (frame_fft_from_record(self.frame, self.backend.fft_kw["workers"],
                                               rs["info"].get("fft")) if rs is not None
                         else frame_fft(self.frame, self.backend.fft_kw["workers"]))
        return self._fft

    def _gpu_free_bytes(self) -> int | None:
        return _correlate.gpu_free_bytes(self.backend.xp) if self.backend.is_gpu else None

    def _batch_size(self) -> int:
        """Orientations per batch: a resumed run's, the config's, or what fits
        (:func:`napari_2dtm.search._correlate.batch_size`)."""
        if self._fixed_batch_size:
            return self._fixed_batch_size
        if self.config.batch_size:
            return int(self.config.batch_size)
        return _correlate.batch_size(self.frame, len(self.defocus_offsets_a), self._gpu_free_bytes())

    # ---------------------------------------------------------------- the loop
    def cancel(self):
        """Ask a running search to stop after the current batch (thread-safe)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def estimate_seconds(self) -> float:
        """Rough run time: timed inverse FFTs of the search frame x CCs x overhead."""
        return _correlate.estimate_seconds(self.frame, self.n_cc_total, self.backend, self.frame_fft())

    def _batches(self, bs: int) -> list[tuple[int, int, int]]:
        """All ``(pixel_plane, o_start, o_stop)`` batches of this search, in order.

        Boundaries depend only on the orientation range and the batch size, so an
        interrupted and a resumed run cut the work identically.
        """
        a, b = self.orientation_range
        return [(ip, o0, min(b, o0 + bs)) for ip in range(len(self.pixel_offsets_a))
                for o0 in range(a, b, bs)]

    def run(self) -> Iterator[SearchProgress]:
        """Run the search, yielding progress snapshots; sets :attr:`result` at the end.

        Raises :class:`~napari_2dtm.errors.Cancelled` (alias ``SearchCancelled``) if
        :meth:`cancel` was called (after saving a checkpoint, when the search has one).
        """
        self._setup_device()
        stats = self.stats
        cfg = self.config
        n_df = len(self.defocus_offsets_a)
        bs = self._batch_size()
        self._batch_size_used = bs
        todo = [t for t in self._batches(bs) if not stats.is_done(*t)]
        t_start = time.perf_counter()
        t_last = t_ckpt = t_start
        snap_wait = cfg.progress_interval_s
        self._timing = {"projection_s": 0.0, "forward_s": 0.0, "correlate_s": 0.0,
                        "stats_s": 0.0, "checkpoint_s": 0.0}
        tm = self._timing
        self._session_start = t_start
        done = stats.n_cc
        self._resumed_from = done
        done_at_ckpt = done
        total = self.n_cc_total
        interval = cfg.checkpoint_interval_s
        scales = {}
        for ip, o0, o1 in todo:
            if self._cancel.is_set():
                if self.checkpoint_path is not None and done > done_at_ckpt:
                    self.save_checkpoint()
                raise Cancelled("search cancelled")
            if ip not in scales:
                scales[ip] = self._corr.fvol.scale_for(
                    self.template.pixel_size_a, self.box, self.pixel_size_a + self.pixel_offsets_a[ip])
            t0 = time.perf_counter()
            proj = self._corr.projections(self._rots[o0:o1], scales[ip])
            t1 = time.perf_counter()
            pft = self._corr.padded_spectra(proj)
            t2 = time.perf_counter()
            tm["projection_s"] += t1 - t0
            tm["forward_s"] += t2 - t1
            self._correlate_update(pft, ip, o0)
            del pft
            stats.mark_done(ip, o0, o1, (o1 - o0) * n_df)
            done = stats.n_cc
            now = time.perf_counter()
            if (self.checkpoint_path is not None and interval and interval > 0
                    and now - t_ckpt >= interval and done < total):
                self.save_checkpoint()
                t_ckpt = time.perf_counter()
                tm["checkpoint_s"] += t_ckpt - now
                done_at_ckpt = done
            if now - t_last >= snap_wait and done < total:
                first = self._self_match is None
                try:
                    snap = self._snapshot(done, total, self._elapsed(now))
                except Cancelled:  # during the self-match: keep the work done so far
                    if self.checkpoint_path is not None and done > done_at_ckpt:
                        self.save_checkpoint()
                    raise
                t_last = time.perf_counter()
                # Snapshots of large maps cost ~1 s: keep them under ~10% of the time (the
                # template's self-match, made once at the first one, does not count). An
                # interval of 0 asks for every batch (a paced consumer: teaching mode).
                cost = t_last - now - (self._self_match_s if first else 0.0)
                snap_wait = (max(cfg.progress_interval_s, 10.0 * cost)
                             if cfg.progress_interval_s > 0 else 0.0)
                yield snap
        self._corr.release()  # full-frame buffers: not needed for the maps
        if self.checkpoint_path is not None and done > done_at_ckpt:
            t0 = time.perf_counter()
            self.save_checkpoint()
            tm["checkpoint_s"] += time.perf_counter() - t0
        elapsed = self._elapsed(time.perf_counter())
        self.result = self._finish(elapsed)
        yield self._snapshot(done, total, elapsed, done_flag=True)

    def _elapsed(self, now) -> float:
        return self._elapsed_before + (now - self._session_start)

    def _correlate_update(self, pft, ip, o0):
        """Correlate orientations ``o0 ..`` of ``pft`` with all defocus planes of pixel
        plane ``ip`` and fold the maps into the statistics, a bounded chunk at a time.

        Maps are added in (orientation, defocus) order whatever the chunking, so the
        float64 sums do not depend on batch or chunk sizes.
        """
        tm = self._timing
        n_df = len(self.defocus_offsets_a)
        n_or = self.n_orientations_total
        nb = pft.shape[0]
        m = nb * n_df
        pidx = np.repeat(np.arange(nb), n_df).astype(np.int64)
        didx = np.tile(np.arange(n_df), nb).astype(np.int64)
        fidx = didx + ip * n_df
        gidx = (o0 + pidx + n_or * (didx + n_df * ip)).astype(np.int32)
        # a bounded number of maps at once, so memory stays bounded with many planes
        if self.backend.is_gpu:
            # GPU: all the batch's maps in one chunk when they fit (the plan's buffers); each
            # chunk is one fused multiply, one batched C2R and one fused statistics kernel
            cm = self._corr.gpu_maps_per_chunk(m)
        else:
            cm = _correlate.map_chunk(m, self.frame, self.image_shape,
                                      self.backend.fft_kw.get("workers", 1), None)
        for c0 in range(0, m, cm):
            c1 = min(m, c0 + cm)
            t3 = time.perf_counter()
            ccs, scales = self._corr.correlate(pft, fidx[c0:c1], pidx[c0:c1])
            t4 = time.perf_counter()
            self.stats.update(ccs, scales, gidx[c0:c1], run=self._run_threads)
            del ccs
            t5 = time.perf_counter()
            tm["correlate_s"] += t4 - t3
            tm["stats_s"] += t5 - t4

    # ------------------------------------------------- checkpoints and partials
    def partial(self) -> SearchPartial:
        """The statistics accumulated so far (NumPy views on the CPU, copies from a GPU)."""
        stats = self._alloc_state()
        cfg = self.config
        a, b = self.orientation_range
        now = time.perf_counter()
        elapsed = self._elapsed(now) if self._session_start is not None else self._elapsed_before
        info = {
            "config": cfg.to_dict(),
            "n_orientations_total": self.n_orientations_total,
            "n_defocus": len(self.defocus_offsets_a),
            "n_pixel_planes": len(self.pixel_offsets_a),
            "orientation_range": [a, b],
            "batch_size": self._batch_size_used or self._fixed_batch_size,
            "fft": record_of(self._fft, self._restored_fft, wisdom=True),  # for a resume
            "elapsed_s": elapsed,
            "complete": stats.n_cc >= self.n_cc_total,
            "search_shape": list(self.image_shape),
            "search_pixel_size_a": self.pixel_size_a,
            "input_shape": list(self.input_shape),
            "input_pixel_size_a": self.input_pixel_size_a,
            "micrograph_path": self.micrograph_path,
            "template": {"source": self.template.source, "pixel_size_a": self.template.pixel_size_a,
                         "params": _jsonable(self.template.params)},
        }
        return SearchPartial(
            mip=to_numpy(stats.mip), best=to_numpy(stats.best), s1=to_numpy(stats.s1),
            s2=to_numpy(stats.s2), done=stats.done_list(), n_cc=int(stats.n_cc),
            identity=self.identity(), info=info, template_volume=self.template.volume,
            orientations=(None if cfg.orientations is None
                          else np.asarray(self.orientations, np.float64)))

    def save_checkpoint(self, path=None) -> Path:
        """Write :meth:`partial` atomically to ``path`` (default: the search's checkpoint)."""
        path = Path(path) if path else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path given")
        return save_partial(self.partial(), path)

    def remove_checkpoint(self):
        """Delete the checkpoint file (once the results are safely written)."""
        if self.checkpoint_path is not None:
            self.checkpoint_path.unlink(missing_ok=True)

    def result_from_partial(self, partial: SearchPartial | str | Path) -> SearchResult:
        """The final result from complete partial statistics (merged shards or a finished
        checkpoint) of this search: identical to what :meth:`run` would have produced."""
        if not isinstance(partial, SearchPartial):
            partial = load_partial(partial)
        self._check_compatible({"identity": partial.identity, "info": partial.info},
                               "partial statistics", "partial")
        a, b = self.orientation_range
        if not partial.covers(a, b) or partial.n_cc != self.n_cc_total:
            raise InputError(f"partial statistics are incomplete: {partial.n_cc} of "
                             f"{self.n_cc_total} cross-correlations per pixel (done ranges "
                             f"{partial.done})")
        self._alloc_state()
        self._restore(partial)
        self.result = self._finish(self._elapsed_before)
        return self.result

    @classmethod
    def resume(cls, checkpoint, image=None, pixel_size_a: float | None = None,
               **config_changes) -> Search:
        """A search continuing from ``checkpoint``, with its saved config and template.

        The micrograph is read from the path recorded in the checkpoint unless ``image``
        is given. ``config_changes`` may change run-time settings only (``device``,
        ``progress_interval_s``, ``checkpoint_interval_s``; ``batch_size`` is kept).
        """
        from napari_2dtm.io.mrc import read_micrograph  # noqa: PLC0415

        path = Path(checkpoint)
        state = read_state(path)
        info = state["info"]
        bad = set(config_changes) - (_RUNTIME_FIELDS - {"orientation_range"})
        if bad:
            raise InputError(f"{path}: cannot change {sorted(bad)} when resuming a search")
        cfg = SearchConfig.from_dict(info["config"])
        with np.load(path, allow_pickle=False) as z:
            vol = z["template_volume"]
            if "orientations" in z.files:
                cfg.orientations = z["orientations"]
        cfg = dataclasses.replace(cfg, **config_changes)
        t = info["template"]
        tpl = Template(vol, float(t["pixel_size_a"]), source=t.get("source") or "checkpoint",
                       params=t.get("params") or {})
        mic = info.get("micrograph_path")
        if image is None:
            if not mic:
                raise InputError(f"{path}: the checkpoint does not name its micrograph file; "
                                 "pass the image to Search.resume(path, image=...)")
            image, _ = read_micrograph(mic, info["input_pixel_size_a"])
        return cls(image, pixel_size_a or info["input_pixel_size_a"], tpl, cfg,
                   checkpoint=path, micrograph_path=mic)

    # ------------------------------------------------------------------- maps
    def valid_mask(self) -> np.ndarray:
        """Pixels where the whole particle lies inside the micrograph (search px grid)."""
        return _valid_mask(self.image_shape, self.input_shape, self.prepared.binning,
                           self.border_px)

    def _snapshot(self, done, total, elapsed, done_flag=False) -> SearchProgress:
        return snapshot(self, done, total, elapsed, done_flag)

    def _finish(self, elapsed) -> SearchResult:
        return finish(self, elapsed)


def search(image, pixel_size_a: float, template, config: SearchConfig | None = None,
           checkpoint=None, **kwargs) -> SearchResult:
    """Run a whole search and return its :class:`SearchResult`.

    With ``checkpoint`` (an ``.npz`` path) the search saves its progress there and, if
    the file exists, continues from it; the file is deleted once the result is made.
    """
    s = Search(image, pixel_size_a, template, config, checkpoint=checkpoint, **kwargs)
    for _ in s.run():
        pass
    s.remove_checkpoint()
    return s.result
