"""CuPy kernels for the search hot loop (imported only when a GPU is used).

Each function here has a NumPy definition it must match (the test oracle):

- :func:`extract_slices` -- ``projection.extract_slices_reference`` (trilinear
  Fourier-slice lookup, Friedel symmetry, DC set to zero), one thread per sample.
- :func:`multiply_energy` -- ``_kernels.multiply_energy_reference`` over a batch:
  ``out[b, d] = img * filt[d] * conj(proj[b])`` in one broadcast elementwise kernel;
  the energies ``sum_k w_k filt[d]^2 |proj[b]|^2`` are one matrix product
  ``|P|^2 (B, K) @ (filt^2)^T (K, D)`` (cuBLAS).
- :func:`update_stats` -- ``_kernels.update_stats_reference``: one fused kernel per
  batch reads every correlation value once and updates MIP, best index and the
  float64 sums (one thread per pixel, the batch loop inside).

Kernels are compiled on first use and cached by CuPy.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["extract_slices", "multiply_energy", "update_stats", "batch_size_for",
           "free_memory_bytes"]

_SLICE_SRC = r"""
#include <cupy/complex.cuh>
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
"""

_STATS_SRC = r"""
extern "C" __global__
void stats(const float* ccs, const float* scales, const int* gidx, const int nb,
           const int hs, const int ws, const int ny, const int nx,
           float* mip, int* best, double* s1, double* s2) {
    const long long t = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (t >= (long long)ny * nx) return;
    const int y = t / nx, x = t % nx;
    const long long p = (long long)y * ws + x;
    const long long plane = (long long)hs * ws;
    float m = mip[p];
    int bi = best[p];
    double a = 0.0, q = 0.0;
    for (int b = 0; b < nb; ++b) {
        const float v = ccs[b * plane + p] * scales[b];
        a += (double)v;
        q += (double)v * (double)v;
        if (v > m) { m = v; bi = gidx[b]; }
    }
    mip[p] = m; best[p] = bi; s1[p] += a; s2[p] += q;
}
"""


@functools.cache
def _kernels():
    import cupy as cp  # noqa: PLC0415

    slices = cp.RawKernel(_SLICE_SRC, "slices")
    stats = cp.RawKernel(_STATS_SRC, "stats")
    mult = cp.ElementwiseKernel(
        "complex64 img, float32 filt, complex64 proj", "complex64 out",
        "out = img * (filt * conj(proj))", "napari_2dtm_multiply")
    return slices, stats, mult


def free_memory_bytes() -> int:
    """Free device memory plus what CuPy's pool holds but does not use."""
    import cupy as cp  # noqa: PLC0415

    free, _ = cp.cuda.Device().mem_info
    pool = cp.get_default_memory_pool()
    return int(free + pool.free_bytes())


def batch_size_for(frame: tuple[int, int], n_planes: int, fraction: float = 0.5,
                   max_batch: int = 64) -> int:
    """Orientations per batch so the batch's buffers use ``fraction`` of free memory.

    Per orientation and plane: the product spectrum (complex64), the correlation map
    (float32) and cuFFT's work area (about one more spectrum).
    """
    hs, ws = frame
    per_map = hs * (ws // 2 + 1) * 8 * 2 + hs * ws * 4
    per_orientation = per_map * n_planes + hs * (ws // 2 + 1) * 8
    return int(max(1, min(max_batch, fraction * free_memory_bytes() // per_orientation)))


def extract_slices(vol, rots, box: int, scale: float):
    """Central slices ``(B, box, box // 2 + 1)`` complex64 of the Fourier volume ``vol``."""
    import cupy as cp  # noqa: PLC0415

    slices, _, _ = _kernels()
    rots = cp.ascontiguousarray(cp.asarray(rots, dtype=cp.float64))
    nb = int(rots.shape[0])
    out = cp.empty((nb, box, box // 2 + 1), cp.complex64)
    n = out.size
    threads = 256
    slices(((n + threads - 1) // threads,), (threads,),
           (vol, rots, np.int32(vol.shape[0]), np.int32(box), np.int32(nb), np.float64(scale), out))
    return out


def multiply_energy(img, filters, fidx, projs, pidx, wts):
    """Products ``(M, Hs, Wk)`` complex64 and energies ``(M,)`` float64 for all
    (projection, filter) pairs ``(pidx[i], fidx[i])``.

    The engine orders maps projection-major (``i = b * D + d``); when ``pidx``/``fidx``
    have that form the product is one broadcast kernel over ``(B, D, Hs, Wk)``.
    """
    import cupy as cp  # noqa: PLC0415

    _, _, mult = _kernels()
    pidx = np.asarray(pidx)
    fidx = np.asarray(fidx)
    b_idx = np.unique(pidx)
    f_idx = np.unique(fidx)
    nb, nd = len(b_idx), len(f_idx)
    grid_form = (len(pidx) == nb * nd and np.array_equal(pidx, np.repeat(b_idx, nd))
                 and np.array_equal(fidx, np.tile(f_idx, nb)))
    p = projs[cp.asarray(b_idx)] if not np.array_equal(b_idx, np.arange(len(projs))) else projs
    f = filters[cp.asarray(f_idx)] if not np.array_equal(f_idx, np.arange(len(filters))) else filters
    hs, wk = img.shape
    if grid_form:
        out = mult(img[None, None], f[None], p[:, None])
        out = out.reshape(nb * nd, hs, wk)
    else:
        out = mult(img[None], filters[cp.asarray(fidx)], projs[cp.asarray(pidx)])
    # Energies: (B, K) @ (K, D) -- one GEMM instead of M reductions.
    p2 = (p.real * p.real + p.imag * p.imag) * wts[None, None, :]
    e = p2.reshape(nb, -1) @ (f * f).reshape(nd, -1).T
    e = cp.asnumpy(e).astype(np.float64)
    bpos = {int(v): k for k, v in enumerate(b_idx)}
    fpos = {int(v): k for k, v in enumerate(f_idx)}
    energy = np.array([e[bpos[int(pi)], fpos[int(fi)]] for pi, fi in zip(pidx, fidx)])
    return out, energy


def update_stats(ccs, scales, gidx, mip, best, s1, s2, ny: int, nx: int):
    """Fold correlation maps ``(M, Hs, Ws)`` float32 into the running statistics."""
    import cupy as cp  # noqa: PLC0415

    _, stats, _ = _kernels()
    ccs = cp.ascontiguousarray(ccs, dtype=cp.float32)
    m, hs, ws = ccs.shape
    sc = cp.asarray(scales, dtype=cp.float32)
    gi = cp.asarray(gidx, dtype=cp.int32)
    n = ny * nx
    threads = 256
    stats(((n + threads - 1) // threads,), (threads,),
          (ccs, sc, gi, np.int32(m), np.int32(hs), np.int32(ws), np.int32(ny), np.int32(nx),
           mip, best, s1, s2))
