"""CuPy kernels of the GPU search loop, each beside the NumPy definition it must match.

The GPU path (:mod:`napari_2dtm.search._gpu_plan`) computes what the CPU path computes
(:mod:`napari_2dtm.search._correlate`, :mod:`napari_2dtm.core._kernels`), in a few fused
passes per batch instead of one call per map. Every kernel here has a ``*_reference``
twin written with an array module ``xp``: with ``xp=numpy`` the references are the test
oracle that runs in CI (checked against the CPU kernels, an independent computation),
and the GPU tests compare each kernel with its reference on the same inputs. Kernels and
references share signatures (inputs, then preallocated outputs), so the plan runs
either set: :data:`KERNELS` or :data:`REFERENCES`.

The kernels, per batch of ``B`` orientations and ``k`` correlation maps:

- :func:`extract_slices` -- trilinear Fourier-slice lookup with Friedel symmetry and DC
  set to zero, one thread per sample (reference
  :func:`napari_2dtm.core.projection.extract_slices_reference`).
- :func:`box_to_frame` -- after the batched inverse FFT of the slices (unnormalised,
  cuFFT), one block per projection: the ``1/h^2`` FFT normalisation, the box-edge
  mean subtraction of :func:`napari_2dtm.core.projection.subtract_edge_mean`, and the
  scatter of the ``h x h`` box into the zero frame ``(Hs, Ws)`` with the centre at
  pixel 0 (what the CPU's row-then-column padded FFT transforms). Optionally scales
  each projection to unit L2 norm (fp16 storage: keeps its spectrum in half range;
  the energy normalisation cancels the factor).
- :func:`multiply_energy` -- for each map ``i``: ``img x filters[fidx[i]] x
  conj(pft[pidx[i]])`` into the product batch and, in the same pass, the Hermitian-
  weighted energy ``sum w filt^2 |pft|^2`` in float64, as per-block partial sums
  (added in a fixed order afterwards, so the result does not depend on scheduling).
  Inputs float32/complex64, or float16 pairs (``half``): fp16 *storage*, fp32 maths.
- :func:`update_stats` -- one thread per search pixel reads each map once and
  updates MIP (float32), best index (int32, strict ``>``: the first of equal values
  wins) and the float64 sums, maps in order; ``v = cc x scale`` and ``v x v`` are
  rounded in float32 before the float64 additions, exactly as the numba kernel does.

Kernels are compiled by NVRTC on first use (CuPy caches them on disk); CuPy is imported
only when a kernel runs.
"""

from __future__ import annotations

import functools
import types

import numpy as np

from .projection import extract_slices_reference

__all__ = ["extract_slices", "box_to_frame", "multiply_energy", "map_scales", "update_stats",
           "box_to_frame_reference", "multiply_energy_reference", "map_scales_reference",
           "update_stats_reference", "energy_blocks", "to_half", "KERNELS", "REFERENCES",
           "KERNEL_SOURCE"]

#: threads per block of the reduction kernels (a power of two, see ``block_sum``)
_THREADS = 256

KERNEL_SOURCE = r"""
#include <cupy/complex.cuh>

// fp16 -> fp32 without cuda_fp16.h (NVRTC then needs no CUDA headers)
__device__ __forceinline__ float h2f(const unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Sum of v over the block (blockDim.x a power of two <= 256), returned to every thread.
__device__ double block_sum(double v, double* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    const double r = sh[0];
    __syncthreads();
    return r;
}

extern "C" __global__
void slices(const complex<float>* vol, const double* rots, const int big, const int box,
            const int nb, const double scale, complex<float>* out) {
    const int nkx = box / 2 + 1;
    const long long n = (long long)nb * box * nkx;
    const long long t = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (t >= n) return;
    const int j = t % nkx;
    const int i = (t / nkx) % box;
    const int b = t / ((long long)nkx * box);
    const int half = big / 2;
    const int nvx = big / 2 + 1;
    const double ky = (i < box - box / 2) ? i : i - box;
    const double kx = j;
    const double* r = rots + 9 * b;
    double x = scale * (kx * r[0] + ky * r[3]);
    double y = scale * (kx * r[1] + ky * r[4]);
    double z = scale * (kx * r[2] + ky * r[5]);
    if (x * x + y * y + z * z > (half - 1.0) * (half - 1.0) || (i == 0 && j == 0)) {
        out[t] = complex<float>(0.f, 0.f);
        return;
    }
    bool conj_ = false;
    if (x < 0) { x = -x; y = -y; z = -z; conj_ = true; }
    y += half; z += half;
    const int x0 = (int)floor(x), y0 = (int)floor(y), z0 = (int)floor(z);
    const float fx = (float)(x - x0), fy = (float)(y - y0), fz = (float)(z - z0);
    #define V(zz, yy, xx) vol[((long long)(zz) * big + (yy)) * nvx + (xx)]
    const complex<float> c00 = V(z0, y0, x0) + fx * (V(z0, y0, x0 + 1) - V(z0, y0, x0));
    const complex<float> c01 = V(z0, y0 + 1, x0) + fx * (V(z0, y0 + 1, x0 + 1) - V(z0, y0 + 1, x0));
    const complex<float> c10 = V(z0 + 1, y0, x0) + fx * (V(z0 + 1, y0, x0 + 1) - V(z0 + 1, y0, x0));
    const complex<float> c11 = V(z0 + 1, y0 + 1, x0) + fx * (V(z0 + 1, y0 + 1, x0 + 1) - V(z0 + 1, y0 + 1, x0));
    #undef V
    const complex<float> c0 = c00 + fy * (c01 - c00);
    const complex<float> c1 = c10 + fy * (c11 - c10);
    const complex<float> v = c0 + fz * (c1 - c0);
    out[t] = conj_ ? conj(v) : v;
}

// One block per projection: raw (B, h, h) unnormalised inverse FFTs -> frame (B, hs, ws),
// p = raw * inv_n - edge mean (times 1/||p|| when unit_norm), box corners at the frame
// corners (centre at pixel 0). Frame pixels outside the box are never written.
extern "C" __global__
void box_to_frame(const float* raw, const float inv_n, const int h, const int hs,
                  const int ws, const int unit_norm, float* frame) {
    __shared__ double sh[256];
    const int b = blockIdx.x;
    const float* p = raw + (long long)b * h * h;
    const int e = h / 2;
    double acc = 0.0;
    for (int t = threadIdx.x; t < 4 * h; t += blockDim.x) {
        const int side = t / h, k = t % h;
        int y, x;
        if (side < 2) { y = e - 1 + side; x = k; }
        else {
            if (k == e - 1 || k == e) continue;  // corners: counted with the rows
            y = k; x = e - 1 + (side - 2);
        }
        acc += (double)(p[y * h + x] * inv_n);
    }
    const float mean = (float)(block_sum(acc, sh) / (4.0 * h - 4.0));
    float f = 1.f;
    if (unit_norm) {
        double q = 0.0;
        for (int t = threadIdx.x; t < h * h; t += blockDim.x) {
            const float v = p[t] * inv_n - mean;
            q += (double)v * (double)v;
        }
        const double ss = block_sum(q, sh);
        f = ss > 0.0 ? (float)(1.0 / sqrt(ss)) : 0.f;
    }
    float* out = frame + (long long)b * hs * ws;
    for (int t = threadIdx.x; t < h * h; t += blockDim.x) {
        const int y = t / h, x = t % h;
        const int yy = y < e ? y : hs - h + y;
        const int xx = x < e ? x : ws - h + x;
        out[(long long)yy * ws + xx] = (p[t] * inv_n - mean) * f;
    }
}

// grid (G, k): block (g, i) does rows g, g + G, ... of map i. Inputs are complex64 /
// float32, or (half != 0) interleaved fp16 pairs / fp16. Writes the product of map i
// and the block's partial energy partial[i * G + g] (float64).
extern "C" __global__
void multiply_energy(const void* img, const void* filt, const void* pft, const float* wts,
                     const int* fidx, const int* pidx, const int hs, const int wk,
                     const int half, complex<float>* prod, double* partial) {
    __shared__ double sh[256];
    const int i = blockIdx.y;
    const long long k = (long long)hs * wk;
    const long long fo = (long long)fidx[i] * k, po = (long long)pidx[i] * k;
    complex<float>* out = prod + (long long)i * k;
    double acc = 0.0;
    for (int y = blockIdx.x; y < hs; y += gridDim.x) {
        for (int x = threadIdx.x; x < wk; x += blockDim.x) {
            const long long t = (long long)y * wk + x;
            complex<float> a, q;
            float f;
            if (half) {
                const unsigned short* ih = (const unsigned short*)img;
                const unsigned short* fh = (const unsigned short*)filt;
                const unsigned short* ph = (const unsigned short*)pft;
                a = complex<float>(h2f(ih[2 * t]), h2f(ih[2 * t + 1]));
                f = h2f(fh[fo + t]);
                q = complex<float>(h2f(ph[2 * (po + t)]), h2f(ph[2 * (po + t) + 1]));
            } else {
                a = ((const complex<float>*)img)[t];
                f = ((const float*)filt)[fo + t];
                q = ((const complex<float>*)pft)[po + t];
            }
            out[t] = a * complex<float>(f * q.real(), -f * q.imag());
            acc += (double)(wts[x] * f * f * (q.real() * q.real() + q.imag() * q.imag()));
        }
    }
    const double s = block_sum(acc, sh);
    if (threadIdx.x == 0) partial[(long long)i * gridDim.x + blockIdx.x] = s;
}

// One thread per search pixel (ny, nx); maps (k, hs, ws) in order, each value read once.
extern "C" __global__
void update_stats(const float* maps, const float* scales, const int* gidx, const int nmaps,
                  const int hs, const int ws, const int ny, const int nx,
                  float* mip, int* best, double* s1, double* s2) {
    const long long t = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (t >= (long long)ny * nx) return;
    const long long p = (t / nx) * (long long)ws + t % nx;
    const long long plane = (long long)hs * ws;
    float m = mip[t];
    int bi = best[t];
    double a = s1[t], q = s2[t];
    for (int i = 0; i < nmaps; ++i) {
        const float v = __fmul_rn(maps[i * plane + p], scales[i]);
        a += (double)v;
        q += (double)__fmul_rn(v, v);
        if (v > m) { m = v; bi = gidx[i]; }
    }
    mip[t] = m; best[t] = bi; s1[t] = a; s2[t] = q;
}
"""

_KERNEL_NAMES = ("slices", "box_to_frame", "multiply_energy", "update_stats")


@functools.cache
def _module():
    """The compiled kernels (NVRTC on first call; CuPy's disk cache afterwards)."""
    import cupy as cp  # noqa: PLC0415

    mod = cp.RawModule(code=KERNEL_SOURCE, options=("--std=c++17",))
    return {name: mod.get_function(name) for name in _KERNEL_NAMES}


def _blocks(n: int, threads: int = _THREADS) -> tuple[int]:
    return ((n + threads - 1) // threads,)


def energy_blocks(hs: int) -> int:
    """Row blocks per map of :func:`multiply_energy` (and partial sums per map)."""
    return int(max(1, min(128, hs // 8)))


# ------------------------------------------------------------------------ kernels
def extract_slices(vol, rots, box: int, scale: float, out):
    """Central slices ``(B, box, box // 2 + 1)`` complex64 of the Fourier volume ``vol``
    (:class:`~napari_2dtm.core.projection.FourierVolume` data) for rotations
    ``(B, 3, 3)`` into ``out``."""
    import cupy as cp  # noqa: PLC0415

    rots = cp.ascontiguousarray(cp.asarray(rots, dtype=cp.float64))
    nb = int(rots.shape[0])
    _module()["slices"](_blocks(out[:nb].size), (_THREADS,),
                        (vol, rots, np.int32(vol.shape[0]), np.int32(box), np.int32(nb),
                         np.float64(scale), out))
    return out[:nb]


def box_to_frame(raw, inv_n: float, frame: tuple[int, int], unit_norm: bool, out):
    """Edge-mean-subtracted projections ``raw * inv_n`` ``(B, h, h)`` into the zero frame
    ``out`` ``(>= B, Hs, Ws)`` float32, centre at pixel 0 (see the module notes)."""
    nb, h, _ = raw.shape
    hs, ws = frame
    _module()["box_to_frame"]((nb,), (_THREADS,),
                              (raw, np.float32(inv_n), np.int32(h), np.int32(hs), np.int32(ws),
                               np.int32(bool(unit_norm)), out))


def multiply_energy(img, filters, fidx, pft, pidx, wts, out, partial):
    """Products ``out[i] = img x filters[fidx[i]] x conj(pft[pidx[i]])`` and energies
    ``(k,)`` float64 for ``k = len(fidx)`` maps; ``partial``: ``(>= k x G)`` float64 work
    (G = :func:`energy_blocks`). Inputs complex64/float32 or fp16 (:func:`to_half`)."""
    import cupy as cp  # noqa: PLC0415

    k = len(fidx)
    hs = filters.shape[1]
    half = filters.dtype == np.float16
    wk = filters.shape[2]
    g = energy_blocks(hs)
    fi = cp.asarray(np.asarray(fidx, np.int32))
    pi = cp.asarray(np.asarray(pidx, np.int32))
    _module()["multiply_energy"]((g, k), (_THREADS,),
                                 (img, filters, pft, wts, fi, pi, np.int32(hs), np.int32(wk),
                                  np.int32(half), out, partial))
    # fixed-order sum of the per-block partials: independent of the scheduling
    return partial[: k * g].reshape(k, g).sum(axis=1)


def map_scales(energy, n_frame: int, factor: float):
    """See :func:`map_scales_reference` (the same expression on the device)."""
    import cupy as cp  # noqa: PLC0415

    return map_scales_reference(energy, n_frame, factor, xp=cp)


def update_stats(maps, scales, gidx, mip, best, s1, s2, ny: int, nx: int):
    """Fold maps ``(k, Hs, Ws)`` times ``scales`` ``(k,)`` with global indices ``gidx``
    ``(k,)`` into ``mip``, ``best``, ``s1``, ``s2`` ``(ny, nx)`` (C-contiguous)."""
    import cupy as cp  # noqa: PLC0415

    k, hs, ws = maps.shape
    sc = cp.asarray(scales, dtype=cp.float32)
    gi = cp.asarray(np.asarray(gidx, np.int32) if not isinstance(gidx, cp.ndarray) else gidx,
                    dtype=cp.int32)
    _module()["update_stats"](_blocks(ny * nx), (_THREADS,),
                              (maps, sc, gi, np.int32(k), np.int32(hs), np.int32(ws),
                               np.int32(ny), np.int32(nx), mip, best, s1, s2))


# --------------------------------------------------------------------- references
def _slices_reference(vol, rots, box: int, scale: float, out):
    xp = _xp_of(out)
    nb = len(rots)
    out[:nb] = extract_slices_reference(vol, rots, box, scale, xp=xp)
    return out[:nb]


def box_to_frame_reference(raw, inv_n: float, frame: tuple[int, int], unit_norm: bool, out):
    """Array-module definition of :func:`box_to_frame` (the frame outside the boxes is
    left as it is: zero in the plan's buffer)."""
    xp = _xp_of(out)
    nb, h, _ = raw.shape
    hs, ws = frame
    e = h // 2
    p = raw.astype(xp.float32) * xp.float32(inv_n)
    edge = (p[:, e - 1, :].sum(-1, dtype=xp.float64) + p[:, e, :].sum(-1, dtype=xp.float64)
            + p[:, :, e - 1].sum(-1, dtype=xp.float64) + p[:, :, e].sum(-1, dtype=xp.float64)
            - p[:, e - 1, e - 1] - p[:, e - 1, e] - p[:, e, e - 1] - p[:, e, e])
    p -= (edge / (4 * h - 4)).astype(xp.float32)[:, None, None]
    if unit_norm:
        ss = (p.astype(xp.float64) ** 2).sum(axis=(1, 2))
        f = xp.where(ss > 0, 1.0 / xp.sqrt(xp.maximum(ss, 1e-300)), 0.0).astype(xp.float32)
        p *= f[:, None, None]
    out[:nb, :e, :e] = p[:, :e, :e]
    out[:nb, :e, ws - e:] = p[:, :e, e:]
    out[:nb, hs - e:, :e] = p[:, e:, :e]
    out[:nb, hs - e:, ws - e:] = p[:, e:, e:]


def _as_complex(a, xp):
    """complex64 view of a complex64 array, or of fp16 pairs (:func:`to_half`)."""
    if a.dtype == np.float16:
        return a.astype(xp.float32).view(xp.complex64)
    return a


def multiply_energy_reference(img, filters, fidx, pft, pidx, wts, out, partial=None):
    """Array-module definition of :func:`multiply_energy`; returns the energies ``(k,)``
    float64 (``partial`` is not needed)."""
    xp = _xp_of(out)
    k = len(fidx)
    fidx = np.asarray(fidx)
    pidx = np.asarray(pidx)
    a = _as_complex(img, xp)
    f = filters[fidx].astype(xp.float32)
    p = _as_complex(pft[pidx], xp)
    out[:k] = a[None] * (f * xp.conj(p))
    e = wts[None, None, :] * f * f * (p.real * p.real + p.imag * p.imag)
    return e.sum(axis=(1, 2), dtype=xp.float64)


def map_scales_reference(energy, n_frame: int, factor: float, xp=np):
    """Map normalisation ``factor / sqrt(energy / n_frame)`` ``(k,)`` float32 (0 for an
    empty template): ``1 / sqrt(sum_x t(x)^2)`` by Parseval times ``factor``, the FFT
    and storage scale the plan folds in (``1 / n_frame`` for unnormalised inverse FFTs)."""
    e = xp.asarray(energy, dtype=xp.float64)
    s = factor / xp.sqrt(xp.maximum(e, 1e-300) / n_frame)
    return xp.where(e > 0, s, 0.0).astype(xp.float32)


def update_stats_reference(maps, scales, gidx, mip, best, s1, s2, ny: int, nx: int):
    """Array-module definition of :func:`update_stats` (and of the CPU numba kernel)."""
    xp = _xp_of(mip)
    sc = xp.asarray(scales, dtype=xp.float32)
    gi = xp.asarray(gidx, dtype=xp.int32)
    for i in range(maps.shape[0]):  # the oracle goes map by map; the kernel does not
        v = maps[i, :ny, :nx] * sc[i]
        better = v > mip
        mip[...] = xp.where(better, v, mip)
        best[...] = xp.where(better, gi[i], best)
        s1 += v
        s2 += v * v


def to_half(a, xp=np):
    """fp16 storage of a float32 array, or of a complex64 one as interleaved pairs
    (last axis doubled)."""
    if a.dtype == np.complex64:
        a = a.view(xp.float32)
    return a.astype(xp.float16)


def _xp_of(a):
    if isinstance(a, np.ndarray):
        return np
    import cupy as cp  # noqa: PLC0415

    return cp


def _map_scales_np(energy, n_frame: int, factor: float):
    return map_scales_reference(energy, n_frame, factor, xp=np)


#: the kernels and their references under the same names and signatures
KERNELS = types.SimpleNamespace(
    extract_slices=extract_slices, box_to_frame=box_to_frame, multiply_energy=multiply_energy,
    map_scales=map_scales, update_stats=update_stats)
REFERENCES = types.SimpleNamespace(
    extract_slices=_slices_reference, box_to_frame=box_to_frame_reference,
    multiply_energy=multiply_energy_reference, map_scales=_map_scales_np,
    update_stats=update_stats_reference)
