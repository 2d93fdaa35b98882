"""Fused CPU kernels (numba) for the search hot loop, with array-module references.

Each ``*_reference`` function is the plain NumPy/CuPy definition of what the numba
kernel computes; tests compare the two and the GPU path uses the reference form.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, fastmath=True, cache=True)
def multiply_energy(img, filt, proj, wts, out):
    """``out = img * filt * conj(proj)``; returns ``sum(wts * filt^2 * |proj|^2)``.

    img, proj, out: ``(ny, nkx)`` complex64; filt: ``(ny, nkx)`` float32; wts: ``(nkx,)``
    Hermitian weights (1 on the kx = 0 and Nyquist columns, 2 elsewhere).
    """
    ny, nkx = img.shape
    part = np.zeros(ny)
    for y in numba.prange(ny):
        acc = 0.0
        for x in range(nkx):
            f = filt[y, x]
            p = proj[y, x]
            out[y, x] = img[y, x] * (f * np.conj(p))
            acc += wts[x] * f * f * (p.real * p.real + p.imag * p.imag)
        part[y] = acc
    return part.sum()


def multiply_energy_reference(img, filt, proj, wts, xp=np):
    out = img * (filt * xp.conj(proj))
    energy = xp.sum(wts[None, :] * filt * filt * (proj.real**2 + proj.imag**2), dtype=xp.float64)
    return out.astype(xp.complex64), energy


@numba.njit(parallel=True, fastmath=False, cache=True)
def update_stats(ccs, scales, gidx, mip, best, s1, s2, ny, nx):
    """Fold ``B`` correlation maps into the running statistics, reading each map once.

    ccs: ``(B, Hs, Ws)`` float32 raw maps; scales: ``(B,)`` normalisation factors;
    gidx: ``(B,)`` int32 global search indices. Only the ``[:ny, :nx]`` region is
    updated. mip float32, best int32, s1/s2 float64 (no precision loss over millions
    of terms).
    """
    nb = ccs.shape[0]
    for y in numba.prange(ny):
        m = mip[y]
        bi = best[y]
        a = s1[y]
        q = s2[y]
        for b in range(nb):
            row = ccs[b, y]
            sc = scales[b]
            g = gidx[b]
            for x in range(nx):
                v = row[x] * sc
                a[x] += v
                q[x] += v * v
                if v > m[x]:
                    m[x] = v
                    bi[x] = g


def update_stats_reference(ccs, scales, gidx, mip, best, s1, s2, ny, nx, xp=np):
    for b in range(ccs.shape[0]):
        v = ccs[b, :ny, :nx] * scales[b]
        better = v > mip[:ny, :nx]
        mip[:ny, :nx] = xp.where(better, v, mip[:ny, :nx])
        best[:ny, :nx] = xp.where(better, gidx[b], best[:ny, :nx])
        s1[:ny, :nx] += v
        s2[:ny, :nx] += v.astype(xp.float64) ** 2
