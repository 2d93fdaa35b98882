"""The 2DTM search: every orientation x defocus (x pixel size) plane, per-pixel statistics.

Pipeline per batch of orientations (one code path for NumPy and CuPy):

1. Fourier slices of the template (:mod:`napari_2dtm.projection`), inverse FFT to
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
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.fft as sfft
from numba.typed import List as NumbaList

from . import _kernels
from .backend import get_backend, to_numpy
from .ctf import CTFParams, ctf_2d
from .errors import InputError, SearchCancelled
from .filters import prepare_image
from .geometry import euler_to_matrix, so3_grid
from .projection import FourierVolume, extract_slices, subtract_edge_mean
from .template import Template, load_template

__all__ = ["SearchConfig", "Search", "SearchProgress", "SearchResult", "search", "defocus_offsets"]


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

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ctf"] = self.ctf.to_dict()
        if self.orientations is not None:
            d["orientations"] = f"explicit list of {len(np.asarray(self.orientations))}"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchConfig:
        d = dict(d)
        d["ctf"] = CTFParams(**d.get("ctf", {}))
        if isinstance(d.get("orientations"), str):
            d["orientations"] = None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


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
    template: :class:`~napari_2dtm.template.Template`, a map/model path or a cubic
    array (at ``pixel_size_a``).
    """

    def __init__(self, image, pixel_size_a: float, template, config: SearchConfig | None = None,
                 template_kwargs: dict | None = None):
        self.config = cfg = config or SearchConfig()
        img = np.asarray(image)
        if img.ndim != 2:
            raise InputError(f"micrograph must be 2D, got shape {img.shape}")
        if not np.all(np.isfinite(img)):
            raise InputError("micrograph contains NaN or infinite values")
        if not (pixel_size_a and np.isfinite(pixel_size_a) and pixel_size_a > 0):
            raise InputError(f"micrograph pixel size must be > 0 Angstrom, got {pixel_size_a}")
        self.input_shape = img.shape
        self.input_pixel_size_a = float(pixel_size_a)
        self.template = load_template(template, pixel_size_a=pixel_size_a, **(template_kwargs or {}))
        self.backend = get_backend(cfg.device)
        self._cancel = threading.Event()
        self.result: SearchResult | None = None

        # --- image ---
        prep = prepare_image(img.astype(np.float32), pixel_size_a, cfg.high_res_limit_a)
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
        if cfg.orientations is not None:
            ori = np.asarray(cfg.orientations, dtype=np.float64).reshape(-1, 3)
        else:
            ori = so3_grid(cfg.out_of_plane_step_deg, cfg.in_plane_step_deg, cfg.symmetry)
        self.orientations = ori
        self.defocus_offsets_a = defocus_offsets(cfg.defocus_range_a, cfg.defocus_step_a)
        self.pixel_offsets_a = defocus_offsets(cfg.pixel_size_range_a, cfg.pixel_size_step_a)
        self.n_orientations = len(ori)
        self.n_planes = len(self.defocus_offsets_a) * len(self.pixel_offsets_a)
        self.n_cc_total = self.n_orientations * self.n_planes
        if self.n_cc_total >= 2**31:
            raise InputError(f"search too large ({self.n_cc_total} cross-correlations > 2^31)")

        # --- search frame (zero padding to an FFT-friendly size) ---
        self.frame = (sfft.next_fast_len(ny, real=True), sfft.next_fast_len(nx, real=True))
        if self.frame[1] % 2:
            self.frame = (self.frame[0], sfft.next_fast_len(self.frame[1] + 1, real=True))
        self._prepared_device = False

    # ------------------------------------------------------------------ set-up
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
        self._img_ft = xp.asarray(sfft.rfft2(frame, workers=-1).astype(np.complex64))
        wgrid = self.prepared.whitening.on_grid((hs, ws), self.pixel_size_a)
        filts = []
        for dpx in self.pixel_offsets_a:
            for ddf in self.defocus_offsets_a:
                c = ctf_2d(cfg.ctf, (hs, ws), self.pixel_size_a + dpx, defocus_offset_a=ddf)
                filts.append(c * wgrid)
        self._filters = xp.asarray(np.stack(filts).astype(np.float32))
        wts = np.full(ws // 2 + 1, 2.0, np.float32)
        wts[0] = 1.0
        wts[-1] = 1.0
        self._wts = xp.asarray(wts)
        pad = cfg.template_pad or (2 if self.template.box <= 256 else 1)
        self._fvol = FourierVolume(self.template.volume, pad=pad, xp=xp)
        self._mip = xp.full((hs, ws), -np.inf, np.float32)
        self._best = xp.zeros((hs, ws), np.int32)
        self._s1 = xp.zeros((hs, ws), np.float64)
        self._s2 = xp.zeros((hs, ws), np.float64)
        self._n_done = 0
        self._rots = euler_to_matrix(*self.orientations.T)
        self._prepared_device = True

    def _batch_size(self) -> int:
        """Orientations per batch: all their defocus planes' maps fit the working budget.

        Small frames are batched so per-call overheads vanish; large frames go one
        orientation at a time so the correlation maps stay in cache.
        """
        if self.config.batch_size:
            return int(self.config.batch_size)
        hs, ws = self.frame
        per = hs * (ws // 2 + 1) * 8 * self.n_planes
        budget = (1 << 30) if self.backend.is_gpu else (16 << 20)
        return int(max(1, min(64, budget // per)))

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
        big = xp.zeros((nb, hs, ws // 2 + 1), xp.complex64)
        big[:, :e] = r[:, :e]
        big[:, hs - e :] = r[:, e:]
        if b.is_gpu:
            return b.fft.fft(big, axis=1, overwrite_x=True)
        self._map_threads(lambda i: big.__setitem__(i, sfft.fft(big[i], axis=0, workers=1,
                                                                  overwrite_x=True)), nb)
        return big

    def run(self) -> Iterator[SearchProgress]:
        """Run the search, yielding progress snapshots; sets :attr:`result` at the end.

        Raises :class:`~napari_2dtm.errors.SearchCancelled` if :meth:`cancel` was called.
        """
        self._setup_device()
        cfg = self.config
        hs, ws = self.frame
        ny, nx = self.image_shape
        n_or = self.n_orientations
        n_df = len(self.defocus_offsets_a)
        bs = self._batch_size()
        t_start = time.perf_counter()
        t_last = t_start
        self._timing = {"projection_s": 0.0, "forward_s": 0.0, "correlate_s": 0.0, "stats_s": 0.0}
        tm = self._timing
        done = 0
        total = self.n_cc_total
        for ip, dpx in enumerate(self.pixel_offsets_a):
            scale = self._fvol.scale_for(self.template.pixel_size_a, self.box, self.pixel_size_a + dpx)
            for o0 in range(0, n_or, bs):
                if self._cancel.is_set():
                    raise SearchCancelled("search cancelled")
                o1 = min(n_or, o0 + bs)
                t0 = time.perf_counter()
                proj = self._projections(self._rots[o0:o1], scale)
                t1 = time.perf_counter()
                pft = self._padded_ft(proj)
                t2 = time.perf_counter()
                tm["projection_s"] += t1 - t0
                tm["forward_s"] += t2 - t1
                t3 = time.perf_counter()
                ccs, scales, gidx = self._correlate(pft, ip, o0)
                t4 = time.perf_counter()
                self._update(ccs, scales, gidx)
                t5 = time.perf_counter()
                tm["correlate_s"] += t4 - t3
                tm["stats_s"] += t5 - t4
                done += (o1 - o0) * n_df
                self._n_done = done
                now = time.perf_counter()
                if now - t_last >= cfg.progress_interval_s and done < total:
                    t_last = now
                    yield self._snapshot(done, total, now - t_start)
        elapsed = time.perf_counter() - t_start
        self.result = self._finish(elapsed)
        yield self._snapshot(done, total, elapsed, done_flag=True)

    def _correlate(self, pft, ip, o0):
        """Correlation maps for orientations ``o0 ..`` of ``pft`` x all defocus planes.

        Returns raw maps ``(M, Hs, Ws)``, their normalisation factors and global indices.
        """
        b = self.backend
        xp = b.xp
        hs, ws = self.frame
        n_df = len(self.defocus_offsets_a)
        n_or = self.n_orientations
        nb = pft.shape[0]
        m = nb * n_df
        pidx = np.repeat(np.arange(nb), n_df).astype(np.int64)
        didx = np.tile(np.arange(n_df), nb).astype(np.int64)
        fidx = didx + ip * n_df
        gidx = (o0 + pidx + n_or * (didx + n_df * ip)).astype(np.int32)
        if b.is_gpu:
            prods, energy = [], []
            for i in range(m):
                pr, e = _kernels.multiply_energy_reference(
                    self._img_ft, self._filters[fidx[i]], pft[pidx[i]], self._wts, xp=xp)
                prods.append(pr)
                energy.append(float(e))
            prod = xp.stack(prods)
            energy = np.asarray(energy)
        else:
            prod = np.empty((m, hs, ws // 2 + 1), np.complex64)
            energy = np.empty(m)
            nt = min(m, 4 * self.backend.fft_kw["workers"])
            edges = np.linspace(0, m, nt + 1).astype(int)
            self._map_threads(lambda k: _kernels.multiply_energy_batch(
                self._img_ft, self._filters, fidx, pft, pidx, self._wts, prod, energy,
                edges[k], edges[k + 1]), nt)
        if b.is_gpu:
            ccs = b.fft.irfft2(prod, s=(hs, ws), axes=(-2, -1), overwrite_x=True)
        else:
            outs = [None] * m
            # pocketfft is faster one map at a time than batched (cache), and threads
            # over maps scale better than threads inside one FFT. The maps go to the
            # statistics kernel as a typed list: no copy into a stack.
            self._map_threads(lambda i: outs.__setitem__(i, sfft.irfft2(
                prod[i], s=(hs, ws), workers=1, overwrite_x=True)), m)
            ccs = NumbaList(outs)
        # Parseval: sum_x t(x)^2 = (1/N) sum_k |T(k)|^2 over the full spectrum.
        with np.errstate(divide="ignore"):
            scales = np.where(energy > 0, 1.0 / np.sqrt(energy / (hs * ws)), 0.0).astype(np.float32)
        return ccs, scales, gidx

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

    # ------------------------------------------------------------- statistics
    def _moments(self, n):
        ny, nx = self.image_shape
        xp = self.backend.xp
        s1 = self._s1[:ny, :nx]
        s2 = self._s2[:ny, :nx]
        mean = s1 / n
        var = xp.maximum(s2 / n - mean * mean, 0.0)
        return mean, var

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

    def _maps(self, n):
        ny, nx = self.image_shape
        mean, var = self._moments(n)
        std = self.backend.xp.sqrt(var)
        mip = self._mip[:ny, :nx]
        mean, std, mip = to_numpy(mean), to_numpy(std), to_numpy(mip).astype(np.float64)
        valid = self.valid_mask()
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where((std > 0) & valid, (mip - mean) / std, 0.0)
        tot1 = float(to_numpy(self._s1[:ny, :nx])[valid].sum())
        tot2 = float(to_numpy(self._s2[:ny, :nx])[valid].sum())
        cnt = n * max(1, int(valid.sum()))
        gmean = tot1 / cnt
        gsig = math.sqrt(max(tot2 / cnt - gmean * gmean, 1e-30))
        snr = np.where(valid, mip / gsig, 0.0)
        mip = np.where(valid, mip, 0.0)
        return {
            "mip": mip.astype(np.float32),
            "zscore": z.astype(np.float32),
            "snr": snr.astype(np.float32),
            "mean": mean.astype(np.float32),
            "std": std.astype(np.float32),
        }, gmean, gsig, valid

    def _snapshot(self, done, total, elapsed, done_flag=False):
        n_df_px = self.n_planes
        n = max(1, done)
        maps, _, _, _ = self._maps(n)
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
        best = to_numpy(self._best[: self.image_shape[0], : self.image_shape[1]])
        n_or = self.n_orientations
        n_df = len(self.defocus_offsets_a)
        o = best % n_or
        rest = best // n_or
        d = rest % n_df
        p = rest // n_df
        ang = self.orientations[o]
        for i, name in enumerate(("phi", "theta", "psi")):
            maps[name] = np.where(valid, ang[..., i], 0.0).astype(np.float32)
        maps["defocus_offset"] = self.defocus_offsets_a[d].astype(np.float32)
        maps["defocus"] = (self.config.ctf.defocus_mean_a + maps["defocus_offset"]).astype(np.float32)
        if len(self.pixel_offsets_a) > 1:
            maps["pixel_size"] = (self.pixel_size_a + self.pixel_offsets_a[p]).astype(np.float32)
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
           **kwargs) -> SearchResult:
    """Run a whole search and return its :class:`SearchResult`."""
    s = Search(image, pixel_size_a, template, config, **kwargs)
    for _ in s.run():
        pass
    return s.result
