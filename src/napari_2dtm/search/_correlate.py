"""Correlation of template projections with the micrograph, one batch at a time.

The fixed inputs (made once per search, on the zero-padded search frame ``(Hs, Ws)``):

* the image spectrum ``rfft2(image)`` (:func:`image_spectrum`);
* one ``CTF x whitening`` filter per (pixel-size, defocus) plane (:func:`plane_filters`),
  applied on the full frame so that CTF delocalisation is not wrapped inside the
  template box;
* the Hermitian weights of the half spectrum (:func:`hermitian_weights`), with which
  the filtered template's energy is summed in the multiply pass (Parseval) instead of
  in a second pass over the map.

Per batch of ``B`` projections ``(B, h, h)`` (centre at pixel 0):

1. :meth:`CpuCorrelator.padded_spectra`: zero-padded forward FFT to the frame, rows
   first (only the ``h`` box rows are non-zero, so the row pass is ``h / Hs`` of a full
   one) then columns; shared by all defocus planes of an orientation.
2. :meth:`CpuCorrelator.correlate`: for each requested (projection, filter) pair,
   ``image x filter x conj(projection)`` and its energy (one fused numba pass), then
   the inverse FFT to a real ``(Hs, Ws)`` map, and the factor ``1 / sqrt(energy)``
   (:func:`energy_scales`) that makes the correlation of white unit-variance noise
   N(0, 1) at every pixel.

The CPU path reuses its frame-sized buffers across batches (fresh arrays of that size
cost page faults: a third of the run time on K3 frames) and spreads maps over threads. Its
frame FFTs (the column pass of step 1, the inverse of step 2) come from
:mod:`napari_2dtm.core.fft`: the fastest library installed, chosen by timing (FFTW, MKL or
pocketfft, whose maps are bit for bit the engine's before that layer existed).
:func:`padded_spectra_reference` and :func:`correlate_reference` are the plain
array-module definitions of the same computation (the GPU path runs them with CuPy);
with NumPy they give the CPU path's maps up to float32 rounding of the fused multiply.

:class:`Correlator` is what the engine holds: one search's fixed inputs on its backend
and the per-batch steps (projections of the template, then the two above), running
:class:`CpuCorrelator` on the CPU and a :class:`~napari_2dtm.search._gpu_plan.GpuPlan`
(fused CuPy kernels, cached cuFFT plans) on a GPU. The work sizes
(orientations per batch, maps per chunk) are chosen here too, from the frame size and
the free memory.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.fft as sfft

from napari_2dtm.core import _kernels
from napari_2dtm.core.backend import to_numpy
from napari_2dtm.core.ctf import CTFParams, ctf_2d
from napari_2dtm.core.fft import FrameFFT, frame_fft
from napari_2dtm.core.projection import FourierVolume, extract_slices, subtract_edge_mean

from . import _gpu_plan

__all__ = ["Correlator", "CpuCorrelator", "thread_runner", "search_frame", "image_spectrum",
           "plane_filters", "hermitian_weights", "energy_scales", "padded_spectra_reference",
           "correlate_reference", "batch_size", "map_chunk", "estimate_seconds"]

#: ``run(fn, n)`` calls ``fn(0), ..., fn(n - 1)`` (in threads) and returns when all are done
Runner = Callable[[Callable[[int], object], int], object]


def thread_runner(pool: ThreadPoolExecutor) -> Runner:
    """A :data:`Runner` on the pool's threads."""
    def run(fn, n):
        list(pool.map(fn, range(n)))

    return run


# ------------------------------------------------------------------ fixed inputs
def search_frame(shape: tuple[int, int]) -> tuple[int, int]:
    """The frame ``(Hs, Ws)`` a search grid ``shape`` is zero-padded to: FFT-friendly sizes
    (scipy's ``next_fast_len``), with an even width so the half spectrum has a Nyquist
    column (:func:`hermitian_weights`)."""
    ny, nx = shape
    hs, ws = sfft.next_fast_len(ny, real=True), sfft.next_fast_len(nx, real=True)
    if ws % 2:
        ws = sfft.next_fast_len(ws + 1, real=True)
    return hs, ws


def image_spectrum(image: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """``rfft2`` (complex64) of ``image`` zero-padded to ``frame`` at its top-left corner."""
    hs, ws = frame
    ny, nx = image.shape
    padded = np.zeros((hs, ws), np.float32)
    padded[:ny, :nx] = image
    return sfft.rfft2(padded, workers=-1).astype(np.complex64, copy=False)


def plane_filters(ctf: CTFParams, whitening: np.ndarray, frame: tuple[int, int],
                  pixel_size_a: float, pixel_offsets_a, defocus_offsets_a) -> np.ndarray:
    """``CTF x whitening`` half-spectrum filters ``(n_pixel x n_defocus, Hs, Ws//2+1)``
    float32, defocus planes fastest (the plane order of the global index)."""
    hs, ws = frame
    # Filled plane by plane: a stack of float64 temporaries would cost n_planes x 2
    # full-frame arrays on large micrographs.
    out = np.empty((len(pixel_offsets_a) * len(defocus_offsets_a), hs, ws // 2 + 1), np.float32)
    k = 0
    for dpx in pixel_offsets_a:
        for ddf in defocus_offsets_a:
            np.multiply(ctf_2d(ctf, (hs, ws), pixel_size_a + dpx, defocus_offset_a=ddf),
                        whitening, out=out[k])
            k += 1
    return out


def hermitian_weights(ws: int) -> np.ndarray:
    """Weights ``(Ws//2+1,)`` float32 of half-spectrum columns in a full-spectrum sum: 1 on
    the kx = 0 and Nyquist columns (stored once), 2 elsewhere (they stand for a pair)."""
    wts = np.full(ws // 2 + 1, 2.0, np.float32)
    wts[0] = 1.0
    wts[-1] = 1.0
    return wts


def energy_scales(energy: np.ndarray, frame: tuple[int, int], factor: float = 1.0) -> np.ndarray:
    """Normalisation ``factor / sqrt(sum_x t(x)^2)`` (float32; 0 for an empty template) of
    maps whose filtered templates have half-spectrum energies ``energy`` (Hermitian-weighted);
    factor: what the inverse FFT left out (:attr:`~napari_2dtm.core.fft.FrameFFT.inverse_scale`)."""
    hs, ws = frame
    # Parseval: sum_x t(x)^2 = (1/N) sum_k |T(k)|^2 over the full spectrum.
    with np.errstate(divide="ignore"):
        return np.where(energy > 0, factor / np.sqrt(energy / (hs * ws)), 0.0).astype(np.float32)


def _row_pass(proj, ws: int, xp, fft, fft_kw: dict):
    """Row FFT ``(B, h, Ws//2+1)`` of projections zero-padded to width ``ws``, the centre
    (pixel 0) kept at column 0: the left half of the box wraps to the right edge."""
    nb, h, _ = proj.shape
    e = h // 2
    rows = xp.zeros((nb, h, ws), xp.float32)
    rows[:, :, :e] = proj[:, :, :e]
    rows[:, :, ws - e :] = proj[:, :, e:]
    return fft.rfft(rows, axis=-1, **fft_kw)


# -------------------------------------------------------------------- references
def padded_spectra_reference(proj, frame: tuple[int, int], xp=np, fft=sfft,
                             fft_kw: dict | None = None):
    """Spectra ``(B, Hs, Ws//2+1)`` complex64 of projections ``(B, h, h)`` zero-padded to
    the frame (what :meth:`CpuCorrelator.padded_spectra` computes), with any array module."""
    hs, ws = frame
    e = proj.shape[1] // 2
    r = _row_pass(proj, ws, xp, fft, fft_kw or {})
    big = xp.zeros((proj.shape[0], hs, ws // 2 + 1), xp.complex64)
    big[:, :e] = r[:, :e]
    big[:, hs - e :] = r[:, e:]
    return fft.fft(big, axis=1, overwrite_x=True)


def correlate_reference(img_ft, filters, wts, pft, fidx, pidx, frame: tuple[int, int],
                        xp=np, fft=sfft):
    """Raw maps ``irfft2(img_ft x filters[fidx[i]] x conj(pft[pidx[i]]))`` ``(k, Hs, Ws)``
    and their normalisation factors ``(k,)`` (always NumPy), with any array module: what
    :meth:`CpuCorrelator.correlate` computes."""
    hs, ws = frame
    k = len(fidx)
    prod = xp.empty((k, hs, ws // 2 + 1), xp.complex64)
    energy_d = xp.empty(k, xp.float64)
    for i in range(k):
        prod[i], energy_d[i] = _kernels.multiply_energy_reference(
            img_ft, filters[int(fidx[i])], pft[int(pidx[i])], wts, xp=xp)
    energy = to_numpy(energy_d)
    ccs = fft.irfft2(prod, s=(hs, ws), axes=(-2, -1), overwrite_x=True)
    del prod
    return ccs, energy_scales(energy, frame)


# --------------------------------------------------------------------- work sizes
def _spectrum_bytes(frame: tuple[int, int]) -> int:
    hs, ws = frame
    return hs * (ws // 2 + 1) * 8


def gpu_bytes_per_map(frame: tuple[int, int]) -> int:
    """Device bytes per correlation map: the spectrum product, the cuFFT work area (about
    one more spectrum) and the real float32 map (:func:`_gpu_plan.bytes_per_map`)."""
    return _gpu_plan.bytes_per_map(frame)


def gpu_free_bytes(cp) -> int:
    """Free device memory, counting the CuPy pool's cached blocks as free."""
    free, _total = cp.cuda.Device().mem_info
    return int(free + cp.get_default_memory_pool().free_bytes())


def batch_size(frame: tuple[int, int], n_defocus: int, gpu_free: int | None = None) -> int:
    """Orientations per batch (1 to 64).

    CPU (``gpu_free`` None): small frames are batched so per-call overheads vanish; large
    frames go one orientation at a time so the correlation maps stay in cache. GPU: as
    many as fit, with all their maps, in half of ``gpu_free`` bytes (the statistics are
    already allocated; :func:`napari_2dtm.search._gpu_plan.work_sizes`).
    """
    if gpu_free is not None:
        return _gpu_plan.work_sizes(frame, n_defocus, gpu_free,
                                    storage=_gpu_plan.storage_from_env())[0]
    per = _spectrum_bytes(frame) * n_defocus
    return int(max(1, min(64, (16 << 20) // per)))


def map_chunk(m: int, frame: tuple[int, int], search_shape: tuple[int, int], workers: int,
              gpu_free: int | None = None) -> int:
    """Correlation maps made at once out of ``m`` (so memory stays bounded with many
    planes): about 256 MB on the CPU (at least one per thread), 40% of ``gpu_free``."""
    hs, ws = frame
    if gpu_free is not None:
        ny, nx = search_shape
        spare = 0.4 * gpu_free - 13 * ny * nx  # temporaries of the statistics update
        return int(max(1, min(m, spare // gpu_bytes_per_map(frame))))
    per = _spectrum_bytes(frame) + hs * ws * 4  # spectrum product + real map
    return int(max(1, min(m, max(workers, (256 << 20) // per))))


def estimate_seconds(frame: tuple[int, int], n_cc: int, backend,
                     fft: FrameFFT | None = None) -> float:
    """Rough run time of ``n_cc`` correlations: the CPU FFT library's measured inverse
    FFT throughput on the frame (``fft``, default :func:`~napari_2dtm.core.fft.frame_fft`'s
    choice) x 1.4 (the rest of the loop), or a throughput guess on a GPU."""
    hs, ws = frame
    if backend.is_gpu:
        return n_cc * hs * ws * 2e-11
    fft = fft or frame_fft(frame, backend.fft_kw["workers"])
    return n_cc * fft.floor_s * 1.4


# ---------------------------------------------------------------------- CPU path
class CpuCorrelator:
    """The CPU per-batch work on the search frame ``(Hs, Ws)``, into reused buffers.

    workers: threads per FFT and number of map threads; run: the thread runner (see
    :data:`Runner`); fft: the frame FFTs (default: :func:`~napari_2dtm.core.fft.frame_fft`'s
    choice of library). Arrays returned are views of the buffers, valid until the next call.
    """

    def __init__(self, frame: tuple[int, int], workers: int, run: Runner,
                 fft: FrameFFT | None = None):
        self.frame = frame
        self.workers = workers
        self.run = run
        self.fft = fft or frame_fft(frame, workers)
        self._pft_buf: np.ndarray | None = None  # (B, Hs, Ws//2+1) padded spectra
        self._prod_buf: np.ndarray | None = None  # (k, Hs, Ws//2+1) spectrum products
        self._cc_buf: np.ndarray | None = None  # (k, Hs, Ws) real maps

    def release(self):
        """Drop the frame-sized buffers (they are not needed to make the score maps)."""
        self._prod_buf = self._cc_buf = self._pft_buf = None

    def padded_spectra(self, proj: np.ndarray) -> np.ndarray:
        """Forward FFT of projections ``(B, h, h)`` zero-padded to the frame:
        ``(B, Hs, Ws//2+1)`` complex64 (equal to :func:`padded_spectra_reference`)."""
        nb, h, _ = proj.shape
        hs, ws = self.frame
        e = h // 2
        w = self.workers
        r = _row_pass(proj, ws, np, sfft, {"workers": w})
        buf = self._pft_buf
        if buf is None or buf.shape[0] < nb:
            buf = self._pft_buf = self.fft.empty((nb, hs, ws // 2 + 1), np.complex64)
        big = buf[:nb]  # reused: no page faults for a fresh frame-sized array per batch
        big[:, :e] = r[:, :e]
        big[:, e : hs - e] = 0
        big[:, hs - e :] = r[:, e:]
        if nb < w:  # few large frames: threads inside each FFT (pocketfft's)
            return sfft.fft(big, axis=1, workers=w, overwrite_x=True)
        self.run(lambda i: self.fft.columns(big[i]), nb)
        return big

    def correlate(self, img_ft, filters, wts, pft, fidx, pidx) -> tuple[np.ndarray, np.ndarray]:
        """Raw correlation maps ``pft[pidx[i]] x filters[fidx[i]] x img_ft`` ``(k, Hs, Ws)``
        float32 and their normalisation factors ``(k,)`` (as :func:`correlate_reference`)."""
        hs, ws = self.frame
        k = len(fidx)
        buf = self._prod_buf
        if buf is None or buf.shape[0] < k:
            # Reused across batches: a fresh large array each time costs page faults
            # (a third of the run time on K3 frames).
            buf = self._prod_buf = self.fft.empty((k, hs, ws // 2 + 1), np.complex64)
            self._cc_buf = self.fft.empty((k, hs, ws), np.float32)
        prod = buf[:k]
        ccs = self._cc_buf[:k]
        energy = np.empty(k)
        nt = min(k, 4 * self.workers)
        edges = np.linspace(0, k, nt + 1).astype(int)
        fidx = np.ascontiguousarray(fidx)
        pidx = np.ascontiguousarray(pidx)
        self.run(lambda j: _kernels.multiply_energy_batch(
            img_ft, filters, fidx, pft, pidx, wts, prod, energy, edges[j], edges[j + 1]), nt)

        # One map per thread: threads over maps scale better than threads inside one
        # FFT, and every library is faster one map at a time than batched.
        self.run(lambda i: self.fft.inverse(prod[i], ccs[i]), k)
        return ccs, energy_scales(energy, self.frame, self.fft.inverse_scale)


# ------------------------------------------------------------------ the facade
class Correlator:
    """One search's correlation work on its backend: fixed inputs and per-batch steps.

    image_ft, filters, wts: :func:`image_spectrum`, :func:`plane_filters`,
    :func:`hermitian_weights` on the device; fvol: the template's Fourier volume; box:
    the projection size ``h`` (search pixels); run: thread runner for the CPU kernels;
    fft: the CPU's frame FFTs (default: :func:`~napari_2dtm.core.fft.frame_fft`'s choice).
    """

    def __init__(self, backend, frame: tuple[int, int], box: int, image_ft, filters, wts,
                 fvol: FourierVolume, run: Runner, fft: FrameFFT | None = None):
        self.backend = backend
        self.frame = frame
        self.box = box
        self.image_ft = image_ft
        self.filters = filters
        self.wts = wts
        self.fvol = fvol
        self.run = run
        self.cpu = (None if backend.is_gpu
                    else CpuCorrelator(frame, backend.fft_kw["workers"], run, fft))
        #: the GPU's buffers, cuFFT plans and kernels (made at the first batch)
        self.gpu_plan: _gpu_plan.GpuPlan | None = None
        self.gpu_chunk: int | None = None  # maps per chunk the GPU plan used

    @classmethod
    def build(cls, backend, prepared, ctf: CTFParams, frame: tuple[int, int], pixel_offsets_a,
              defocus_offsets_a, volume: np.ndarray, pad: int, box: int, run: Runner,
              fft: FrameFFT | None = None) -> Correlator:
        """The fixed inputs of a search of ``prepared`` (a
        :class:`~napari_2dtm.core.filters.PreparedImage`) with template ``volume``."""
        xp = backend.xp
        px = prepared.pixel_size_a
        image_ft = xp.asarray(image_spectrum(prepared.image, frame))
        wgrid = prepared.whitening.on_grid(frame, px)
        filters = xp.asarray(plane_filters(ctf, wgrid, frame, px, pixel_offsets_a,
                                           defocus_offsets_a))
        del wgrid
        wts = xp.asarray(hermitian_weights(frame[1]))
        fvol = FourierVolume(volume, pad=pad, xp=xp)
        return cls(backend, frame, box, image_ft, filters, wts, fvol, run, fft)

    def release(self):
        """Drop the CPU's frame-sized work buffers (not needed to make the score maps)."""
        if self.cpu is not None:
            self.cpu.release()
        self.gpu_plan = None  # its device buffers and cuFFT work areas go back to the pool

    def _gpu(self, nb: int) -> _gpu_plan.GpuPlan:
        """The GPU plan, made (or remade, for a larger batch) for batches of ``nb``."""
        plan = self.gpu_plan
        if plan is None or plan.batch < nb:
            self.gpu_plan = None  # free the old buffers before sizing the new ones
            self.gpu_plan = _gpu_plan.GpuPlan(
                self.backend.xp, self.frame, self.box, self.fvol.data, self.image_ft,
                self.filters, self.wts, nb, storage=_gpu_plan.storage_from_env())
        return self.gpu_plan

    def gpu_maps_per_chunk(self, n_maps: int) -> int:
        """Maps the GPU plan correlates at once (at most ``n_maps``; fixed at the first call
        from the memory free once the batch buffers exist)."""
        plan = self.gpu_plan
        if plan.chunk is None:
            free = gpu_free_bytes(self.backend.xp)
            plan.set_chunk(_gpu_plan.chunk_size(self.frame, n_maps, free))
        self.gpu_chunk = plan.chunk
        return plan.chunk

    def projections(self, rots, scale: float):
        """Edge-mean-subtracted real projections ``(B, h, h)`` float32, centre at pixel 0,
        for rotations ``(B, 3, 3)``; scale: :meth:`FourierVolume.scale_for` of the plane."""
        b = self.backend
        if b.is_gpu:  # placed in the zero frame already: (B, Hs, Ws)
            return self._gpu(len(rots)).projections(rots, scale)
        xp = b.xp
        h = self.box
        sl = extract_slices(self.fvol, rots, h, scale, run=None if b.is_gpu else self.run)
        p = b.fft.irfft2(sl, s=(h, h), axes=(-2, -1), **b.fft_kw)
        subtract_edge_mean(p, xp=xp)
        return p.astype(xp.float32)

    def padded_spectra(self, proj):
        """Forward FFT of projections zero-padded to the frame: ``(B, Hs, Ws//2+1)``."""
        b = self.backend
        if b.is_gpu:
            return self.gpu_plan.padded_spectra(proj)
        return self.cpu.padded_spectra(proj)

    def correlate(self, pft, fidx, pidx):
        """Raw correlation maps ``pft[pidx[i]] x filters[fidx[i]] x image`` ``(k, Hs, Ws)``
        and their normalisation factors ``(k,)``."""
        b = self.backend
        if b.is_gpu:  # maps and factors stay on the device
            return self.gpu_plan.correlate(pft, fidx, pidx)
        return self.cpu.correlate(self.image_ft, self.filters, self.wts, pft, fidx, pidx)
