"""The GPU correlation plan: device buffers allocated once, cuFFT plans cached, fused passes.

A :class:`GpuPlan` computes what :class:`napari_2dtm.search._correlate.CpuCorrelator`
computes (the same maps and normalisation factors, to float32 rounding), with a fixed
number of passes per batch of ``B`` orientations and ``k`` maps and no Python loop over
maps or orientations:

1. :meth:`GpuPlan.projections`: one Fourier-slice kernel for the batch, one batched
   cuFFT C2R of the ``h x h`` slices, one kernel for the FFT normalisation, the edge-mean
   subtraction and the scatter of each box into the zero search frame (the zeros are
   written once, when the buffer is made; the kernel only writes the boxes).
2. :meth:`GpuPlan.padded_spectra`: one batched cuFFT R2C of the padded frames.
3. :meth:`GpuPlan.correlate`: one fused kernel makes the ``k`` products ``image x
   CTF.whitening x conj(projection)`` and their energies; one batched cuFFT C2R makes
   the ``k`` maps (unnormalised: the ``1 / (Hs Ws)`` is folded into the per-map
   factors, saving a pass over the maps).
4. The engine's :class:`~napari_2dtm.search.statistics.RunningStats` folds the maps in
   with one fused kernel (:func:`napari_2dtm.core._gpu.update_stats`).

The CTF x whitening filter is applied on the full frame after padding, as on the CPU,
so a projection cannot be filtered in its box: the per-(orientation, defocus) work is
the multiply pass and the C2R.

Buffers: image spectrum and filters (fixed inputs), slices/box ``(B, h, ...)``, padded
frames ``(B, Hs, Ws)``, their spectra ``(B, Hs, Ws//2+1)``, products ``(k, Hs, Ws//2+1)``,
maps ``(k, Hs, Ws)``; plus the cuFFT work areas. :func:`work_sizes` picks ``B`` and
``k`` from the free device memory. cuFFT plans are made with
``cupyx.scipy.fft.get_fft_plan`` for the exact batch shapes and kept (the last batch of
a search, when shorter, gets its own plan).

``storage="float16"`` keeps the image spectrum, the filters and the projection spectra
in half precision (the products, FFTs and sums stay float32/float64): less memory and
less traffic in the multiply pass. Projections are scaled to unit L2 norm and the image
spectrum by ``1 / sqrt(Hs Ws)`` first so every stored value is in half range; the map
normalisation cancels both. It is off by default: ``scripts/gpu_check.sh`` measures how
far its maps are from float32 (the target is 1e-3 relative).

With ``xp=numpy`` the same plan runs the NumPy references of the kernels
(:data:`napari_2dtm.core._gpu.REFERENCES`) and scipy's FFTs: that is how the plan's
orchestration is tested without a device.
"""

from __future__ import annotations

import math
import os

import numpy as np
import scipy.fft as sfft

from napari_2dtm.core import _gpu

__all__ = ["GpuPlan", "work_sizes", "chunk_size", "bytes_per_map", "bytes_per_orientation",
           "storage_from_env", "STORAGES"]

STORAGES = ("float32", "float16")

#: fraction of the free device memory the plan's batch buffers may take
MEMORY_FRACTION = 0.5


def storage_from_env() -> str:
    """Storage precision of the GPU plan: ``NAPARI_2DTM_GPU_STORAGE`` (float32 default)."""
    s = os.environ.get("NAPARI_2DTM_GPU_STORAGE", "float32").strip().lower() or "float32"
    if s not in STORAGES:
        raise ValueError(f"NAPARI_2DTM_GPU_STORAGE must be one of {STORAGES}, got {s!r}")
    return s


def _spectrum_bytes(frame: tuple[int, int]) -> int:
    hs, ws = frame
    return hs * (ws // 2 + 1) * 8


def bytes_per_map(frame: tuple[int, int]) -> int:
    """Device bytes per correlation map of a chunk: product spectrum, real map and the
    C2R work area (about one more spectrum)."""
    hs, ws = frame
    return 2 * _spectrum_bytes(frame) + hs * ws * 4


def bytes_per_orientation(frame: tuple[int, int], box: int = 0, storage: str = "float32") -> int:
    """Device bytes per orientation of a batch: padded frame, its spectrum, the R2C work
    area, the fp16 copy of the spectrum (half storage) and the box-sized buffers."""
    hs, ws = frame
    spec = _spectrum_bytes(frame)
    half = spec // 2 if storage == "float16" else 0
    return hs * ws * 4 + 2 * spec + half + 3 * box * box * 8


def work_sizes(frame: tuple[int, int], n_defocus: int, free_bytes: int, box: int = 0,
               batch: int | None = None, storage: str = "float32",
               fraction: float = MEMORY_FRACTION) -> tuple[int, int]:
    """``(orientations per batch, maps per chunk)`` for ``fraction`` of ``free_bytes``.

    The batch (1 to 64, unless given) holds all its ``B x n_defocus`` maps in one chunk
    when they fit; with huge frames and many planes a batch of one orientation is
    correlated in chunks of the maps that fit.
    """
    budget = fraction * max(0, int(free_bytes))
    per_o = bytes_per_orientation(frame, box, storage)
    per_m = bytes_per_map(frame)
    if batch is None:
        batch = int(max(1, min(64, budget // (per_o + n_defocus * per_m))))
    chunk = int(max(1, min(batch * n_defocus, (budget - batch * per_o) // per_m)))
    return int(batch), chunk


def chunk_size(frame: tuple[int, int], n_maps: int, free_bytes: int,
               fraction: float = MEMORY_FRACTION) -> int:
    """Maps per chunk (at most ``n_maps``) once a plan's batch buffers are allocated:
    as many as fit in ``fraction`` of what is free then."""
    return int(max(1, min(n_maps, fraction * max(0, int(free_bytes)) // bytes_per_map(frame))))


class _NumpyFft:
    """Unnormalised FFTs with scipy (the reference path)."""

    def c2r(self, x, out, shape):
        out[...] = sfft.irfft2(x, s=shape, axes=(-2, -1), norm="forward", workers=-1)

    def r2c(self, x, out):
        out[...] = sfft.rfft2(x, axes=(-2, -1), workers=-1)


class _CupyFft:
    """Unnormalised batched cuFFT transforms into preallocated arrays, one plan per
    (kind, batch shape), kept for the plan's life (at most a few: full and last batch)."""

    def __init__(self):
        from cupy.cuda import cufft  # noqa: PLC0415
        from cupyx.scipy.fft import get_fft_plan  # noqa: PLC0415

        self._cufft = cufft
        self._get = get_fft_plan
        self._plans: dict = {}

    def _plan(self, kind: str, x, shape):
        key = (kind, x.shape)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 8:  # a resumed or unusual run: drop the oldest
                self._plans.pop(next(iter(self._plans)))
            plan = self._plans[key] = self._get(x, shape=shape, axes=(-2, -1), value_type=kind)
        return plan

    def c2r(self, x, out, shape):
        # cuFFT C2R overwrites its input: x is scratch here
        self._plan("C2R", x, shape).fft(x, out, self._cufft.CUFFT_INVERSE)

    def r2c(self, x, out):
        self._plan("R2C", x, None).fft(x, out, self._cufft.CUFFT_FORWARD)


class GpuPlan:
    """One search's GPU correlation work on the frame ``(Hs, Ws)``; see the module notes.

    xp: cupy (kernels, cuFFT) or numpy (references, scipy). fvol_data: the template's
    Fourier volume ``(N, N, N//2+1)`` complex64; image_ft ``(Hs, Ws//2+1)`` complex64,
    filters ``(n_planes, Hs, Ws//2+1)`` float32, wts ``(Ws//2+1,)``: the fixed inputs of
    :class:`~napari_2dtm.search._correlate.Correlator`; box: projection size ``h``;
    batch: orientations per batch; chunk: maps per chunk (or None: :meth:`set_chunk`
    later, once the batch buffers exist and the free memory can be measured); storage:
    ``"float32"`` or ``"float16"``. Returned arrays are views of the plan's buffers,
    valid until the next call.
    """

    def __init__(self, xp, frame: tuple[int, int], box: int, fvol_data, image_ft, filters,
                 wts, batch: int, chunk: int | None = None, storage: str = "float32"):
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.xp = xp
        self.gpu = xp is not np
        self.ops = _gpu.KERNELS if self.gpu else _gpu.REFERENCES
        self.fft = _CupyFft() if self.gpu else _NumpyFft()
        self.frame = hs, ws = tuple(int(v) for v in frame)
        self.box = h = int(box)
        self.batch = int(batch)
        self.chunk: int | None = None
        self.storage = storage
        self.n_frame = n = hs * ws
        wk = ws // 2 + 1
        self.vol = fvol_data
        self.wts = xp.asarray(wts, dtype=xp.float32)
        self.half = storage == "float16"
        if self.half:
            # |image spectrum| ~ sqrt(N) for a unit-variance image: scaled into fp16 range;
            # the factor returns in the map normalisation
            self.img = _gpu.to_half((image_ft * np.float32(1 / math.sqrt(n))).astype(xp.complex64),
                                    xp)
            self.filters = filters.astype(xp.float16)
            self.factor = 1.0 / math.sqrt(n)
        else:
            self.img = image_ft
            self.filters = filters
            self.factor = 1.0 / n  # cuFFT's C2R is unnormalised
        b = self.batch
        self._slices = xp.empty((b, h, h // 2 + 1), xp.complex64)
        self._raw = xp.empty((b, h, h), xp.float32)
        self._padded = xp.zeros((b, hs, ws), xp.float32)  # zeros outside the boxes, for good
        self._pft = xp.empty((b, hs, wk), xp.complex64)
        self._pft_half = xp.empty((b, hs, 2 * wk), xp.float16) if self.half else None
        self._prod = self._maps = self._partial = None
        if chunk is not None:
            self.set_chunk(chunk)

    def set_chunk(self, chunk: int):
        """Allocate the product, map and energy buffers for ``chunk`` maps at once."""
        xp = self.xp
        hs, ws = self.frame
        self._prod = self._maps = self._partial = None  # free the old ones first
        self.chunk = k = int(chunk)
        self._prod = xp.empty((k, hs, ws // 2 + 1), xp.complex64)
        self._maps = xp.empty((k, hs, ws), xp.float32)
        self._partial = xp.empty(k * _gpu.energy_blocks(hs), xp.float64)

    def _sync(self):
        # Stage boundaries: the engine times its stages on the host clock.
        if self.gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def projections(self, rots, scale: float):
        """Edge-mean-subtracted projections ``(B, h, h)`` for rotations ``(B, 3, 3)``,
        placed in the zero frame: ``(B, Hs, Ws)`` float32 (a buffer view)."""
        nb = len(rots)
        if nb > self.batch:
            raise ValueError(f"{nb} orientations in a plan made for batches of {self.batch}")
        h = self.box
        sl = self.ops.extract_slices(self.vol, rots, h, scale, self._slices)
        raw = self._raw[:nb]
        self.fft.c2r(sl, raw, (h, h))
        self.ops.box_to_frame(raw, 1.0 / (h * h), self.frame, self.half, self._padded)
        self._sync()
        return self._padded[:nb]

    def padded_spectra(self, padded):
        """Forward FFT ``(B, Hs, Ws//2+1)`` complex64 of :meth:`projections`' frames (in
        fp16 pairs ``(B, Hs, 2 (Ws//2+1))`` with half storage)."""
        nb = len(padded)
        self.fft.r2c(padded, self._pft[:nb])
        out = self._pft[:nb]
        if self.half:
            self._pft_half[:nb] = out.view(self.xp.float32)
            out = self._pft_half[:nb]
        self._sync()
        return out

    def correlate(self, pft, fidx, pidx):
        """Raw maps ``(k, Hs, Ws)`` float32 of pairs ``(pft[pidx[i]], filters[fidx[i]])`` and
        their factors ``(k,)`` float32 on the device: ``maps x factors`` are the
        normalised cross-correlations (the CPU path's ``ccs x scales``)."""
        k = len(fidx)
        if self.chunk is None or k > self.chunk:
            raise ValueError(f"{k} maps in a plan made for chunks of {self.chunk}")
        energy = self.ops.multiply_energy(self.img, self.filters, fidx, pft, pidx, self.wts,
                                          self._prod, self._partial)
        maps = self._maps[:k]
        self.fft.c2r(self._prod[:k], maps, self.frame)
        scales = self.ops.map_scales(energy, self.n_frame, self.factor)
        self._sync()
        return maps, scales

    def nbytes(self) -> int:
        """Bytes of the plan's batch buffers (not the fixed inputs or cuFFT work areas)."""
        bufs = (self._slices, self._raw, self._padded, self._pft, self._pft_half, self._prod,
                self._maps, self._partial)
        return int(sum(b.nbytes for b in bufs if b is not None))
