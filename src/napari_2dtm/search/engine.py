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
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft as sfft

from napari_2dtm.core import _kernels
from napari_2dtm.core.backend import get_backend, to_numpy
from napari_2dtm.core.ctf import CTFParams, ctf_2d
from napari_2dtm.core.filters import prepare_image
from napari_2dtm.core.geometry import euler_to_matrix, so3_grid
from napari_2dtm.core.projection import FourierVolume, extract_slices, subtract_edge_mean
from napari_2dtm.errors import InputError, SearchCancelled
from napari_2dtm.templates.template import Template, load_template

from .checkpoint import (
    SearchPartial,
    array_digest,
    identity_difference,
    load_partial,
    read_state,
    save_partial,
)

__all__ = ["SearchConfig", "Search", "SearchProgress", "SearchResult", "search", "defocus_offsets",
           "orientation_list"]

#: config entries that do not change the scores: free to differ between a checkpoint and
#: the search resuming it, and between orientation shards
_RUNTIME_FIELDS = {"device", "batch_size", "progress_interval_s", "checkpoint_interval_s",
                   "orientation_range", "n_false_positives", "peak_radius_px"}


@dataclasses.dataclass
class SearchConfig:
    """Everything that defines a search. Lengths in Angstrom, angles in degrees."""

    ctf: CTFParams = dataclasses.field(default_factory=CTFParams)
    out_of_plane_step_deg: float = 2.5
    in_plane_step_deg: float = 1.5
    symmetry: str = "C1"
    defocus_range_a: float = 0.0
    defocus_step_a: float = 200.0
    pixel_size_range_a: float = 0.0
    pixel_size_step_a: float = 0.01
    high_res_limit_a: float | None = None
    n_false_positives: float = 1.0
    peak_radius_px: float | None = None  # None: 0.7 x the particle radius
    device: str = "auto"
    batch_size: int | None = None
    progress_interval_s: float = 1.0
    template_pad: int | None = None
    orientations: Any = None  # optional (n, 3) ZYZ degrees overriding the grid
    #: ``(start, stop)``: search only orientations ``start..stop-1`` of the list (one
    #: shard of a split search; merge shards with ``checkpoint.merge_partials``)
    orientation_range: tuple[int, int] | None = None
    #: seconds between checkpoints of a search that has a checkpoint path (0: only at
    #: cancel and at the end)
    checkpoint_interval_s: float = 300.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ctf"] = self.ctf.to_dict()
        if self.orientations is not None:
            d["orientations"] = f"explicit list of {len(np.asarray(self.orientations))}"
        if self.orientation_range is not None:
            d["orientation_range"] = [int(v) for v in self.orientation_range]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchConfig:
        d = dict(d)
        d["ctf"] = CTFParams(**d.get("ctf", {}))
        if isinstance(d.get("orientations"), str):
            d["orientations"] = None
        if d.get("orientation_range") is not None:
            d["orientation_range"] = tuple(int(v) for v in d["orientation_range"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def orientation_list(config: SearchConfig) -> np.ndarray:
    """``(n, 3)`` ZYZ Euler angles (deg) of a config: its explicit list or the SO(3) grid."""
    if config.orientations is not None:
        return np.asarray(config.orientations, dtype=np.float64).reshape(-1, 3)
    return so3_grid(config.out_of_plane_step_deg, config.in_plane_step_deg, config.symmetry)


def defocus_offsets(range_a: float, step_a: float) -> np.ndarray:
    """Symmetric offsets ``-n*step ... +n*step`` (0 always included), in Angstrom."""
    if range_a <= 0 or step_a <= 0:
        return np.zeros(1)
    n = int(math.floor(range_a / step_a + 1e-9))
    return np.arange(-n, n + 1) * float(step_a)


@dataclasses.dataclass
class SearchProgress:
    """A snapshot of a running search; maps are NumPy arrays at the search pixel size."""

    fraction: float
    n_done: int
    n_total: int
    elapsed_s: float
    orientations_per_s: float
    eta_s: float
    mip: np.ndarray
    zscore: np.ndarray
    snr: np.ndarray
    pixel_size_a: float
    done: bool = False


@dataclasses.dataclass
class SearchResult:
    """Final maps, hits and metadata of one search.

    maps: name -> ``(ny, nx)`` float32 at ``pixel_size_a`` (the search pixel size):
    mip, zscore, snr, mean, std, phi, theta, psi (deg), defocus (absolute mean defocus,
    A), defocus_offset, pixel_size (A, when pixel-size planes were searched).
    hits: DataFrame with x, y in input-micrograph pixels (0-based particle centres).
    """

    maps: dict
    pixel_size_a: float
    input_pixel_size_a: float
    threshold: float
    n_trials: float
    hits: Any
    metadata: dict
    valid_mask: np.ndarray | None = None

    @property
    def binning(self) -> float:
        return self.pixel_size_a / self.input_pixel_size_a


class Search:
    """One micrograph x one template search. Iterate :meth:`run`; read :attr:`result`.

    image: ``(ny, nx)`` micrograph (any real dtype); pixel_size_a: its pixel size;
    template: :class:`~napari_2dtm.templates.template.Template`, a map/model path or a cubic
    array (at ``pixel_size_a``).

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
        img = np.asarray(image)
        if img.ndim != 2:
            raise InputError(f"micrograph must be 2D, got shape {img.shape}")
        img = np.asarray(img, np.float32)  # no copy when already float32
        if not np.all(np.isfinite(img)):
            raise InputError("micrograph contains NaN or infinite values")
        if not (pixel_size_a and np.isfinite(pixel_size_a) and pixel_size_a > 0):
            raise InputError(f"micrograph pixel size must be > 0 Angstrom, got {pixel_size_a}")
        self.input_shape = img.shape
        self.input_pixel_size_a = float(pixel_size_a)
        self.micrograph_path = str(micrograph_path) if micrograph_path else None
        self.template = load_template(template, pixel_size_a=pixel_size_a, **(template_kwargs or {}))
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
        self.particle_radius_px = _template_radius(t) * t.pixel_size_a / px
        self.border_px = min(box // 2, int(math.ceil(self.particle_radius_px)) + 1)
        self.peak_radius_px = (float(cfg.peak_radius_px) if cfg.peak_radius_px
                               else max(3.0, 0.7 * self.particle_radius_px))

        # --- search space ---
        ori = orientation_list(cfg)
        self.orientations = ori
        self.defocus_offsets_a = defocus_offsets(cfg.defocus_range_a, cfg.defocus_step_a)
        self.pixel_offsets_a = defocus_offsets(cfg.pixel_size_range_a, cfg.pixel_size_step_a)
        self.n_orientations_total = n_all = len(ori)
        if n_all < 1:
            raise InputError("the orientation list is empty")
        a, b = (0, n_all) if cfg.orientation_range is None else (int(v) for v in cfg.orientation_range)
        if not 0 <= a < b <= n_all:
            raise InputError(f"orientation range {a}..{b} is not inside the {n_all} orientations "
                             "of the search (need 0 <= start < stop <= n)")
        self.orientation_range = (a, b)
        #: orientations this search covers (all, or one shard's range)
        self.n_orientations = b - a
        self.n_planes = len(self.defocus_offsets_a) * len(self.pixel_offsets_a)
        self.n_cc_total = self.n_orientations * self.n_planes
        if n_all * self.n_planes >= 2**31:
            raise InputError(f"search too large ({n_all * self.n_planes} cross-correlations > 2^31)")

        # --- search frame (zero padding to an FFT-friendly size) ---
        self.frame = (sfft.next_fast_len(ny, real=True), sfft.next_fast_len(nx, real=True))
        if self.frame[1] % 2:
            self.frame = (self.frame[0], sfft.next_fast_len(self.frame[1] + 1, real=True))
        self._prepared_device = False
        self._state_ready = False
        self._elapsed_before = 0.0
        self._fixed_batch_size = None

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
        cfgd = self.config.to_dict()
        for k in _RUNTIME_FIELDS:
            cfgd.pop(k, None)
        if self.config.orientations is not None:
            cfgd["orientations"] = array_digest(np.asarray(self.orientations, np.float64))
        return {
            "micrograph": self._input_digest,
            "input_shape": list(self.input_shape),
            "input_pixel_size_a": self.input_pixel_size_a,
            "template": array_digest(self.template.volume),
            "template_pixel_size_a": float(self.template.pixel_size_a),
            "config": json.loads(json.dumps(cfgd, default=str)),
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
    def _alloc_state(self):
        """Running statistics on the search grid ``(ny, nx)`` (the kernels touch only it)."""
        if self._state_ready:
            return
        xp = self.backend.xp
        ny, nx = self.image_shape
        self._mip = xp.full((ny, nx), -np.inf, np.float32)
        self._best = xp.zeros((ny, nx), np.int32)
        self._s1 = xp.zeros((ny, nx), np.float64)
        self._s2 = xp.zeros((ny, nx), np.float64)
        self._n_done = 0
        self._done: dict[int, list] = {}
        self._state_ready = True

    def _setup_device(self):
        if self._prepared_device:
            return
        b = self.backend
        xp = b.xp
        cfg = self.config
        hs, ws = self.frame
        ny, nx = self.image_shape
        frame = np.zeros((hs, ws), np.float32)
        frame[:ny, :nx] = self.prepared.image
        self._img_ft = xp.asarray(sfft.rfft2(frame, workers=-1).astype(np.complex64, copy=False))
        del frame
        wgrid = self.prepared.whitening.on_grid((hs, ws), self.pixel_size_a)
        # Filled plane by plane: a stack of float64 temporaries would cost n_planes x 2
        # full-frame arrays on large micrographs.
        filts = np.empty((self.n_planes, hs, ws // 2 + 1), np.float32)
        k = 0
        for dpx in self.pixel_offsets_a:
            for ddf in self.defocus_offsets_a:
                np.multiply(ctf_2d(cfg.ctf, (hs, ws), self.pixel_size_a + dpx, defocus_offset_a=ddf),
                            wgrid, out=filts[k])
                k += 1
        del wgrid
        self._filters = xp.asarray(filts)
        wts = np.full(ws // 2 + 1, 2.0, np.float32)
        wts[0] = 1.0
        wts[-1] = 1.0
        self._wts = xp.asarray(wts)
        pad = cfg.template_pad or (2 if self.template.box <= 256 else 1)
        self._fvol = FourierVolume(self.template.volume, pad=pad, xp=xp)
        self._rots = euler_to_matrix(*self.orientations.T)
        self._alloc_state()
        if self._resume_state is not None:
            self._restore(load_partial(self.checkpoint_path))
            self._resume_state = None
        self._prepared_device = True

    def _restore(self, p: SearchPartial):
        """Load accumulated statistics (a checkpoint, or a complete partial to finish)."""
        xp = self.backend.xp
        if p.mip.shape != self.image_shape:
            raise InputError(f"partial statistics of shape {p.mip.shape} do not fit the search "
                             f"grid {self.image_shape}")
        self._mip[...] = xp.asarray(p.mip)
        self._best[...] = xp.asarray(p.best)
        self._s1[...] = xp.asarray(p.s1)
        self._s2[...] = xp.asarray(p.s2)
        self._n_done = int(p.n_cc)
        self._done = p.done_by_plane()
        self._elapsed_before = float(p.info.get("elapsed_s", 0.0))
        if p.info.get("batch_size"):
            # The batch boundaries of the interrupted run, so the remaining batches are
            # exactly the ones it had not added yet.
            self._fixed_batch_size = int(p.info["batch_size"])

    def _batch_size(self) -> int:
        """Orientations per batch.

        CPU: small frames are batched so per-call overheads vanish; large frames go one
        orientation at a time so the correlation maps stay in cache. GPU: as many as fit
        in 40% of the free device memory (the state is already allocated).
        """
        if self._fixed_batch_size:
            return self._fixed_batch_size
        if self.config.batch_size:
            return int(self.config.batch_size)
        hs, ws = self.frame
        n_df = len(self.defocus_offsets_a)
        if self.backend.is_gpu:
            spec = hs * (ws // 2 + 1) * 8
            # padded spectrum + its FFT output, and per defocus plane the product, the
            # cuFFT work area and the real map
            per = 2 * spec + n_df * self._gpu_bytes_per_map()
            return int(max(1, min(64, 0.4 * self._gpu_free_bytes() // per)))
        per = hs * (ws // 2 + 1) * 8 * n_df
        return int(max(1, min(64, (16 << 20) // per)))

    def _gpu_bytes_per_map(self) -> int:
        hs, ws = self.frame
        return 2 * hs * (ws // 2 + 1) * 8 + hs * ws * 4

    def _gpu_free_bytes(self) -> int:
        cp = self.backend.xp
        free, _total = cp.cuda.Device().mem_info
        return int(free + cp.get_default_memory_pool().free_bytes())

    def _map_chunk(self, m: int) -> int:
        """Correlation maps computed at once, so memory stays bounded with many planes."""
        hs, ws = self.frame
        if self.backend.is_gpu:
            ny, nx = self.image_shape
            spare = 0.4 * self._gpu_free_bytes() - 13 * ny * nx  # update temporaries
            return int(max(1, min(m, spare // self._gpu_bytes_per_map())))
        per = hs * (ws // 2 + 1) * 8 + hs * ws * 4  # spectrum product + real map
        w = self.backend.fft_kw["workers"]
        return int(max(1, min(m, max(w, (256 << 20) // per))))

    # ---------------------------------------------------------------- the loop
    def cancel(self):
        """Ask a running search to stop after the current batch (thread-safe)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def estimate_seconds(self) -> float:
        """Rough run time: timed inverse FFTs of the search frame x CCs x overhead."""
        hs, ws = self.frame
        x = np.zeros((hs, ws // 2 + 1), np.complex64)
        b = self.backend
        if b.is_gpu:
            return self.n_cc_total * hs * ws * 2e-11
        sfft.irfft2(x, s=(hs, ws), **b.fft_kw)
        t0 = time.perf_counter()
        for _ in range(3):
            sfft.irfft2(x, s=(hs, ws), **b.fft_kw)
        per = (time.perf_counter() - t0) / 3
        return self.n_cc_total * per * 1.4

    def _projections(self, rots, scale):
        """Edge-mean-subtracted real projections ``(B, h, h)``, centre at pixel 0."""
        b = self.backend
        xp = b.xp
        h = self.box
        sl = extract_slices(self._fvol, rots, h, scale,
                            run=None if b.is_gpu else self._map_threads)
        p = b.fft.irfft2(sl, s=(h, h), axes=(-2, -1), **b.fft_kw)
        subtract_edge_mean(p, xp=xp)
        return p.astype(xp.float32)

    def _padded_ft(self, proj):
        """Forward FFT of projections zero-padded to the frame: ``(B, Hs, Ws//2+1)``."""
        b = self.backend
        xp = b.xp
        nb, h, _ = proj.shape
        hs, ws = self.frame
        e = h // 2
        rows = xp.zeros((nb, h, ws), xp.float32)
        rows[:, :, :e] = proj[:, :, :e]
        rows[:, :, ws - e :] = proj[:, :, e:]
        r = b.fft.rfft(rows, axis=-1, **b.fft_kw)
        if b.is_gpu:
            big = xp.zeros((nb, hs, ws // 2 + 1), xp.complex64)
            big[:, :e] = r[:, :e]
            big[:, hs - e :] = r[:, e:]
            return b.fft.fft(big, axis=1, overwrite_x=True)
        buf = getattr(self, "_pft_buf", None)
        if buf is None or buf.shape[0] < nb:
            buf = self._pft_buf = np.empty((nb, hs, ws // 2 + 1), np.complex64)
        big = buf[:nb]  # reused: no page faults for a fresh frame-sized array per batch
        big[:, :e] = r[:, :e]
        big[:, e : hs - e] = 0
        big[:, hs - e :] = r[:, e:]
        w = b.fft_kw["workers"]
        if nb < w:  # few large frames: threads inside each FFT
            return sfft.fft(big, axis=1, workers=w, overwrite_x=True)

        def column_pass(i):
            col = sfft.fft(big[i], axis=0, workers=1, overwrite_x=True)  # in place in practice
            if not np.may_share_memory(col, big[i]):
                big[i] = col

        self._map_threads(column_pass, nb)
        return big

    def _batches(self, bs: int) -> list[tuple[int, int, int]]:
        """All ``(pixel_plane, o_start, o_stop)`` batches of this search, in order.

        Boundaries depend only on the orientation range and the batch size, so an
        interrupted and a resumed run cut the work identically.
        """
        a, b = self.orientation_range
        return [(ip, o0, min(b, o0 + bs)) for ip in range(len(self.pixel_offsets_a))
                for o0 in range(a, b, bs)]

    def _is_done(self, ip, o0, o1) -> bool:
        return any(a <= o0 and o1 <= b for a, b in self._done.get(ip, []))

    def _mark_done(self, ip, o0, o1):
        iv = self._done.setdefault(ip, [])
        if iv and iv[-1][1] == o0:
            iv[-1][1] = o1
        else:
            iv.append([o0, o1])
            iv.sort()

    def run(self) -> Iterator[SearchProgress]:
        """Run the search, yielding progress snapshots; sets :attr:`result` at the end.

        Raises :class:`~napari_2dtm.errors.SearchCancelled` if :meth:`cancel` was called
        (after saving a checkpoint, when the search has one).
        """
        self._setup_device()
        cfg = self.config
        n_df = len(self.defocus_offsets_a)
        bs = self._batch_size()
        self._batch_size_used = bs
        todo = [t for t in self._batches(bs) if not self._is_done(*t)]
        t_start = time.perf_counter()
        t_last = t_ckpt = t_start
        snap_wait = cfg.progress_interval_s
        self._timing = {"projection_s": 0.0, "forward_s": 0.0, "correlate_s": 0.0,
                        "stats_s": 0.0, "checkpoint_s": 0.0}
        tm = self._timing
        self._session_start = t_start
        done = self._n_done
        self._resumed_from = done
        done_at_ckpt = done
        total = self.n_cc_total
        interval = cfg.checkpoint_interval_s
        scales = {}
        for ip, o0, o1 in todo:
            if self._cancel.is_set():
                if self.checkpoint_path is not None and done > done_at_ckpt:
                    self.save_checkpoint()
                raise SearchCancelled("search cancelled")
            if ip not in scales:
                scales[ip] = self._fvol.scale_for(self.template.pixel_size_a, self.box,
                                                  self.pixel_size_a + self.pixel_offsets_a[ip])
            t0 = time.perf_counter()
            proj = self._projections(self._rots[o0:o1], scales[ip])
            t1 = time.perf_counter()
            pft = self._padded_ft(proj)
            t2 = time.perf_counter()
            tm["projection_s"] += t1 - t0
            tm["forward_s"] += t2 - t1
            self._correlate_update(pft, ip, o0)
            del pft
            self._mark_done(ip, o0, o1)
            done += (o1 - o0) * n_df
            self._n_done = done
            now = time.perf_counter()
            if (self.checkpoint_path is not None and interval and interval > 0
                    and now - t_ckpt >= interval and done < total):
                self.save_checkpoint()
                t_ckpt = time.perf_counter()
                tm["checkpoint_s"] += t_ckpt - now
                done_at_ckpt = done
            if now - t_last >= snap_wait and done < total:
                snap = self._snapshot(done, total, self._elapsed(now))
                t_last = time.perf_counter()
                # Snapshots of large maps cost ~1 s: keep them under ~10% of the time.
                snap_wait = max(cfg.progress_interval_s, 10.0 * (t_last - now))
                yield snap
        # full-frame buffers: not needed for the maps
        self._prod_buf = self._cc_buf = self._pft_buf = None
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
        cm = self._map_chunk(m)
        for c0 in range(0, m, cm):
            c1 = min(m, c0 + cm)
            t3 = time.perf_counter()
            ccs, scales = self._correlate(pft, fidx[c0:c1], pidx[c0:c1])
            t4 = time.perf_counter()
            self._update(ccs, scales, gidx[c0:c1])
            del ccs
            t5 = time.perf_counter()
            tm["correlate_s"] += t4 - t3
            tm["stats_s"] += t5 - t4

    def _correlate(self, pft, fidx, pidx):
        """Raw correlation maps ``pft[pidx[i]] x filters[fidx[i]] x image`` ``(k, Hs, Ws)``
        and their normalisation factors ``(k,)``."""
        b = self.backend
        xp = b.xp
        hs, ws = self.frame
        k = len(fidx)
        if b.is_gpu:
            prod = xp.empty((k, hs, ws // 2 + 1), xp.complex64)
            energy_d = xp.empty(k, xp.float64)
            for i in range(k):
                prod[i], energy_d[i] = _kernels.multiply_energy_reference(
                    self._img_ft, self._filters[int(fidx[i])], pft[int(pidx[i])], self._wts, xp=xp)
            energy = to_numpy(energy_d)
            ccs = b.fft.irfft2(prod, s=(hs, ws), axes=(-2, -1), overwrite_x=True)
            del prod
        else:
            buf = getattr(self, "_prod_buf", None)
            if buf is None or buf.shape[0] < k:
                # Reused across batches: a fresh large array each time costs page faults
                # (a third of the run time on K3 frames).
                buf = self._prod_buf = np.empty((k, hs, ws // 2 + 1), np.complex64)
                self._cc_buf = np.empty((k, hs, ws), np.float32)
            prod = buf[:k]
            ccs = self._cc_buf[:k]
            energy = np.empty(k)
            nt = min(k, 4 * self.backend.fft_kw["workers"])
            edges = np.linspace(0, k, nt + 1).astype(int)
            fidx = np.ascontiguousarray(fidx)
            pidx = np.ascontiguousarray(pidx)
            self._map_threads(lambda j: _kernels.multiply_energy_batch(
                self._img_ft, self._filters, fidx, pft, pidx, self._wts, prod, energy,
                edges[j], edges[j + 1]), nt)

            def inverse(i):
                # One map per thread (threads over maps scale better than threads inside
                # one FFT, and pocketfft is faster one map at a time than batched), in
                # two passes into preallocated memory: the column pass in place (scipy),
                # the row pass into the reused map buffer (numpy.fft has out=). Both are
                # pocketfft: the maps equal scipy.fft.irfft2's.
                col = sfft.ifft(prod[i], axis=0, workers=1, overwrite_x=True)
                np.fft.irfft(col, n=ws, axis=1, out=ccs[i])

            self._map_threads(inverse, k)
        # Parseval: sum_x t(x)^2 = (1/N) sum_k |T(k)|^2 over the full spectrum.
        with np.errstate(divide="ignore"):
            scales = np.where(energy > 0, 1.0 / np.sqrt(energy / (hs * ws)), 0.0).astype(np.float32)
        return ccs, scales

    def _map_threads(self, fn, n):
        pool = getattr(self, "_pool", None)
        if pool is None:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

            pool = self._pool = ThreadPoolExecutor(self.backend.fft_kw.get("workers", 1))
        list(pool.map(fn, range(n)))

    def _update(self, ccs, scales, gidx):
        b = self.backend
        ny, nx = self.image_shape
        if b.is_gpu:
            xp = b.xp
            _kernels.update_stats_reference(ccs, xp.asarray(scales), xp.asarray(gidx),
                                            self._mip, self._best, self._s1, self._s2, ny, nx, xp=xp)
        else:
            _kernels.update_stats(ccs, scales, gidx, self._mip, self._best,
                                  self._s1, self._s2, ny, nx, run=self._map_threads)

    # ------------------------------------------------- checkpoints and partials
    def partial(self) -> SearchPartial:
        """The statistics accumulated so far (NumPy views on the CPU, copies from a GPU)."""
        self._alloc_state()
        cfg = self.config
        a, b = self.orientation_range
        done = [[ip, o0, o1] for ip, iv in sorted(self._done.items()) for o0, o1 in iv]
        now = time.perf_counter()
        elapsed = self._elapsed(now) if hasattr(self, "_session_start") else self._elapsed_before
        info = {
            "config": cfg.to_dict(),
            "n_orientations_total": self.n_orientations_total,
            "n_defocus": len(self.defocus_offsets_a),
            "n_pixel_planes": len(self.pixel_offsets_a),
            "orientation_range": [a, b],
            "batch_size": getattr(self, "_batch_size_used", None) or self._fixed_batch_size,
            "elapsed_s": elapsed,
            "complete": self._n_done >= self.n_cc_total,
            "search_shape": list(self.image_shape),
            "search_pixel_size_a": self.pixel_size_a,
            "input_shape": list(self.input_shape),
            "input_pixel_size_a": self.input_pixel_size_a,
            "micrograph_path": self.micrograph_path,
            "template": {"source": self.template.source, "pixel_size_a": self.template.pixel_size_a,
                         "params": _jsonable(self.template.params)},
        }
        return SearchPartial(
            mip=to_numpy(self._mip), best=to_numpy(self._best), s1=to_numpy(self._s1),
            s2=to_numpy(self._s2), done=done, n_cc=int(self._n_done), identity=self.identity(),
            info=info, template_volume=self.template.volume,
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

    # ------------------------------------------------------------- statistics
    def valid_mask(self) -> np.ndarray:
        """Pixels where the whole particle lies inside the micrograph (search px grid)."""
        ny, nx = self.image_shape
        a, c = self.prepared.binning
        # Image content ends where the (unpadded) input ends.
        hy = int(math.floor(self.input_shape[0] * c / a))
        hx = int(math.floor(self.input_shape[1] * c / a))
        m = np.zeros((ny, nx), bool)
        r = self.border_px
        m[r : max(r, hy - r), r : max(r, hx - r)] = True
        return m

    def _maps(self, n, full=True):
        """Score maps from the statistics after ``n`` CCs per pixel, in row blocks so that
        float64 temporaries stay small on large micrographs.

        Returns ``(maps, global_mean, global_std, valid)``; maps are float32 ``(ny, nx)``:
        mip, zscore, snr, and with ``full`` also mean and std.
        """
        ny, nx = self.image_shape
        valid = self.valid_mask()
        out = {k: np.empty((ny, nx), np.float32)
               for k in (("mip", "zscore", "snr", "mean", "std") if full else ("mip", "zscore", "snr"))}
        tot1 = tot2 = 0.0
        step = max(1, (4 << 20) // max(1, nx))  # ~32 MB float64 blocks
        blocks = [(y0, min(ny, y0 + step)) for y0 in range(0, ny, step)]
        for y0, y1 in blocks:
            s1 = to_numpy(self._s1[y0:y1])
            s2 = to_numpy(self._s2[y0:y1])
            mip = to_numpy(self._mip[y0:y1]).astype(np.float64)
            v = valid[y0:y1]
            mean = s1 / n
            std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
            with np.errstate(divide="ignore", invalid="ignore"):
                out["zscore"][y0:y1] = np.where((std > 0) & v, (mip - mean) / std, 0.0)
            if full:
                out["mean"][y0:y1] = mean
                out["std"][y0:y1] = std
            out["mip"][y0:y1] = np.where(v, mip, 0.0)
            tot1 += float(s1[v].sum())
            tot2 += float(s2[v].sum())
        cnt = n * max(1, int(valid.sum()))
        gmean = tot1 / cnt
        gsig = math.sqrt(max(tot2 / cnt - gmean * gmean, 1e-30))
        for y0, y1 in blocks:
            out["snr"][y0:y1] = out["mip"][y0:y1].astype(np.float64) / gsig
        return out, gmean, gsig, valid

    def _snapshot(self, done, total, elapsed, done_flag=False):
        n_df_px = self.n_planes
        n = max(1, done)
        if done_flag and self.result is not None:
            maps = self.result.maps
        else:
            maps, _, _, _ = self._maps(n, full=False)
        rate = (done / n_df_px) / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / n_df_px / rate if rate > 0 else float("inf")
        return SearchProgress(
            fraction=done / total, n_done=done, n_total=total, elapsed_s=elapsed,
            orientations_per_s=rate, eta_s=eta, mip=maps["mip"], zscore=maps["zscore"],
            snr=maps["snr"], pixel_size_a=self.pixel_size_a, done=done_flag,
        )

    def _finish(self, elapsed) -> SearchResult:
        from .detect import extract_hits, false_alarm_threshold  # noqa: PLC0415

        n = self.n_cc_total
        maps, gmean, gsig, valid = self._maps(n)
        ny, nx = self.image_shape
        n_or = self.n_orientations_total
        n_df = len(self.defocus_offsets_a)
        ori32 = self.orientations.astype(np.float32)
        df32 = self.defocus_offsets_a.astype(np.float32)
        px32 = (self.pixel_size_a + self.pixel_offsets_a).astype(np.float32)
        names = ["phi", "theta", "psi", "defocus_offset"]
        if len(self.pixel_offsets_a) > 1:
            names.append("pixel_size")
        for name in names:
            maps[name] = np.empty((ny, nx), np.float32)
        step = max(1, (4 << 20) // max(1, nx))
        for y0 in range(0, ny, step):
            y1 = min(ny, y0 + step)
            best = to_numpy(self._best[y0:y1])
            v = valid[y0:y1]
            o = best % n_or
            rest = best // n_or
            for i, name in enumerate(("phi", "theta", "psi")):
                maps[name][y0:y1] = np.where(v, ori32[o, i], 0.0)
            maps["defocus_offset"][y0:y1] = df32[rest % n_df]
            if "pixel_size" in maps:
                maps["pixel_size"][y0:y1] = px32[rest // n_df]
        maps["defocus"] = (self.config.ctf.defocus_mean_a + maps["defocus_offset"]).astype(np.float32)
        n_valid = int(valid.sum())
        n_trials = float(n_valid) * n
        thr = false_alarm_threshold(n_trials, self.config.n_false_positives)
        meta = {
            "config": self.config.to_dict(),
            "input_shape": list(self.input_shape),
            "input_pixel_size_a": self.input_pixel_size_a,
            "search_pixel_size_a": self.pixel_size_a,
            "search_shape": list(self.image_shape),
            "binning": list(self.prepared.binning),
            "frame_shape": list(self.frame),
            "template": {"source": self.template.source, "box": self.template.box,
                         "pixel_size_a": self.template.pixel_size_a,
                         "search_box": self.box, "params": _jsonable(self.template.params)},
            "n_orientations": self.n_orientations,
            "n_orientations_total": self.n_orientations_total,
            "orientation_range": list(self.orientation_range),
            "defocus_offsets_a": self.defocus_offsets_a.tolist(),
            "pixel_size_offsets_a": self.pixel_offsets_a.tolist(),
            "n_cc_per_pixel": n,
            "n_valid_pixels": n_valid,
            "n_trials": n_trials,
            "threshold": thr,
            "border_px": self.border_px,
            "particle_radius_px": self.particle_radius_px,
            "peak_radius_px": self.peak_radius_px,
            "cc_global_mean": gmean,
            "cc_global_std": gsig,
            "device": self.backend.name,
            "elapsed_s": elapsed,
            "timing": dict(getattr(self, "_timing", {})),
            "cc_per_s": n / elapsed if elapsed > 0 else None,
            "identity": self.identity(),
            "resumed_from_cc": int(getattr(self, "_resumed_from", 0)),
            "euler_convention": "ZYZ (RELION/cisTEM), degrees",
            "pixel_origin": "0-based pixel centres; x = column, y = row",
        }
        res = SearchResult(maps=maps, pixel_size_a=self.pixel_size_a,
                           input_pixel_size_a=self.input_pixel_size_a, threshold=thr,
                           n_trials=n_trials, hits=None, metadata=meta, valid_mask=valid)
        res.hits = extract_hits(res, ctf=self.config.ctf)
        return res


def _template_radius(t: Template) -> float:
    """Radius (template px) of the sphere holding 99% of the template's |potential|.

    An integral criterion: a max-fraction cut would pick up the flat low tail of
    B-factor-blurred atoms and overestimate the particle.
    """
    v = np.abs(t.volume).astype(np.float64)
    tot = v.sum()
    n = t.box
    if tot <= 0:
        return n / 2
    c = n // 2
    z, y, x = np.indices(v.shape)
    r = np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2).ravel()
    order = np.argsort(r)
    cum = np.cumsum(v.ravel()[order]) / tot
    r99 = r[order][np.searchsorted(cum, 0.99)]
    return float(min(r99 + 1.0, n / 2))


def _jsonable(d):
    try:
        json.dumps(d)
        return d
    except TypeError:
        return {k: str(v) for k, v in dict(d).items()}


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
