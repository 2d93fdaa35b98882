"""Fourier-slice projection of a 3D template (trilinear interpolation).

The template volume ``(n, n, n)`` (indexed ``[z, y, x]``, centre at voxel ``n // 2``) is
zero-padded to ``N = pad * n``, its centre moved to the origin and transformed with
``rfftn``; the z and y axes are then ``fftshift``-ed so a frequency index ``k`` lives at
array index ``k + N // 2``. Layout of :attr:`FourierVolume.data`: ``(N, N, N // 2 + 1)``.

A slice for rotation ``A`` (see :mod:`napari_2dtm.core.geometry`) on the ``rfft2`` grid of an
``h x h`` box samples the volume transform at ``scale * (kx * A[0] + ky * A[1])`` (in
volume index units) with Friedel symmetry for negative x. Its ``irfft2`` is the
projection with the particle centre at pixel ``(0, 0)`` (wrap-around layout);
``numpy.fft.fftshift`` moves it to ``(h // 2, h // 2)``.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["FourierVolume", "extract_slices", "extract_slices_reference", "project",
           "subtract_edge_mean"]


class FourierVolume:
    """Padded, centred 3D transform of a template, ready for slicing.

    volume: ``(n, n, n)`` float array. pad: oversampling factor (2 gives accurate
    trilinear interpolation; 1 saves memory for large boxes).
    """

    def __init__(self, volume: np.ndarray, pad: int = 2, xp=np):
        vol = np.asarray(volume, dtype=np.float32)
        n = vol.shape[0]
        big = n * pad
        padded = np.zeros((big, big, big), np.float32)
        o = big // 2 - n // 2
        padded[o : o + n, o : o + n, o : o + n] = vol
        ft = np.fft.rfftn(np.fft.ifftshift(padded))
        ft = np.fft.fftshift(ft, axes=(0, 1)).astype(np.complex64)
        self.n = n
        self.size = big
        self.pad = pad
        self.data = xp.asarray(ft)
        self.xp = xp

    def scale_for(self, template_pixel_a: float, box: int, search_pixel_a: float) -> float:
        """Index scale mapping an ``box``-grid frequency at ``search_pixel_a`` into the volume."""
        return self.size * template_pixel_a / (box * search_pixel_a)


@numba.njit(nogil=True, fastmath=True, cache=True)
def _slices_numba(vol, rots, box, scale, out):
    big = vol.shape[0]
    half = big // 2
    nkx = box // 2 + 1
    rmax2 = (half - 1.0) ** 2
    nb = rots.shape[0]
    for t in range(nb * box):
        b = t // box
        i = t % box
        ky = i if i < box - box // 2 else i - box
        for j in range(nkx):
            kx = j
            x = scale * (kx * rots[b, 0, 0] + ky * rots[b, 1, 0])
            y = scale * (kx * rots[b, 0, 1] + ky * rots[b, 1, 1])
            z = scale * (kx * rots[b, 0, 2] + ky * rots[b, 1, 2])
            if x * x + y * y + z * z > rmax2:
                out[b, i, j] = 0
                continue
            conj = False
            if x < 0:
                x, y, z = -x, -y, -z
                conj = True
            y += half
            z += half
            x0 = int(np.floor(x))
            y0 = int(np.floor(y))
            z0 = int(np.floor(z))
            fx = x - x0
            fy = y - y0
            fz = z - z0
            c000 = vol[z0, y0, x0]
            c001 = vol[z0, y0, x0 + 1]
            c010 = vol[z0, y0 + 1, x0]
            c011 = vol[z0, y0 + 1, x0 + 1]
            c100 = vol[z0 + 1, y0, x0]
            c101 = vol[z0 + 1, y0, x0 + 1]
            c110 = vol[z0 + 1, y0 + 1, x0]
            c111 = vol[z0 + 1, y0 + 1, x0 + 1]
            c00 = c000 + fx * (c001 - c000)
            c01 = c010 + fx * (c011 - c010)
            c10 = c100 + fx * (c101 - c100)
            c11 = c110 + fx * (c111 - c110)
            c0 = c00 + fy * (c01 - c00)
            c1 = c10 + fy * (c11 - c10)
            v = c0 + fz * (c1 - c0)
            out[b, i, j] = np.conj(v) if conj else v
        if i == 0:
            out[b, 0, 0] = 0


def extract_slices_reference(vol, rots, box: int, scale: float, xp=np):
    """Array-module implementation of :func:`extract_slices` (GPU path and test oracle)."""
    rots = xp.asarray(rots, dtype=xp.float64)
    big = vol.shape[0]
    half = big // 2
    ky = xp.fft.fftfreq(box, 1.0 / box)[:, None]
    kx = xp.arange(box // 2 + 1, dtype=xp.float64)[None, :]
    # (B, box, nkx) sample coordinates in volume index units
    x = scale * (kx * rots[:, 0, 0, None, None] + ky * rots[:, 1, 0, None, None])
    y = scale * (kx * rots[:, 0, 1, None, None] + ky * rots[:, 1, 1, None, None])
    z = scale * (kx * rots[:, 0, 2, None, None] + ky * rots[:, 1, 2, None, None])
    inside = x * x + y * y + z * z <= (half - 1.0) ** 2
    neg = x < 0
    sgn = xp.where(neg, -1.0, 1.0)
    x, y, z = x * sgn, y * sgn + half, z * sgn + half
    x = xp.where(inside, x, 0.0)
    y = xp.where(inside, y, half)
    z = xp.where(inside, z, half)
    x0, y0, z0 = (xp.floor(a).astype(xp.int64) for a in (x, y, z))
    fx, fy, fz = ((a - a0).astype(xp.float32) for a, a0 in ((x, x0), (y, y0), (z, z0)))
    out = 0
    for dz in (0, 1):
        wz = fz if dz else 1 - fz
        for dy in (0, 1):
            wy = fy if dy else 1 - fy
            for dx in (0, 1):
                wx = fx if dx else 1 - fx
                out = out + (wz * wy * wx) * vol[z0 + dz, y0 + dy, x0 + dx]
    out = xp.where(neg, xp.conj(out), out)
    out = xp.where(inside, out, 0).astype(xp.complex64)
    out[:, 0, 0] = 0
    return out


def extract_slices(fvol: FourierVolume, rots, box: int, scale: float, out=None, run=None):
    """Central slices ``(B, box, box // 2 + 1)`` complex64 for rotations ``(B, 3, 3)``.

    The DC term is set to zero. On the CPU this runs a parallel numba kernel; on a GPU
    the array-module reference implementation. ``run(fn, n)``, if given, runs
    ``fn(0..n-1)`` in threads (the kernel releases the GIL).
    """
    xp = fvol.xp
    if xp is not np:
        return extract_slices_reference(fvol.data, rots, box, scale, xp=xp)
    rots = np.ascontiguousarray(rots, dtype=np.float64)
    if out is None:
        out = np.empty((len(rots), box, box // 2 + 1), np.complex64)
    if run is None or len(rots) < 2:
        _slices_numba(fvol.data, rots, box, float(scale), out)
    else:
        n = min(len(rots), 8)
        e = np.linspace(0, len(rots), n + 1).astype(int)
        run(lambda k: _slices_numba(fvol.data, rots[e[k]:e[k + 1]], box, float(scale),
                                    out[e[k]:e[k + 1]]), n)
    return out


def project(fvol: FourierVolume, rots, box: int, scale: float = None, centered: bool = True):
    """Real-space projections ``(B, box, box)``; particle centre at ``box // 2`` if centered."""
    if scale is None:
        scale = fvol.size / box
    s = extract_slices(fvol, rots, box, scale)
    p = np.fft.irfft2(s, s=(box, box), axes=(-2, -1))
    return np.fft.fftshift(p, axes=(-2, -1)) if centered else p


def subtract_edge_mean(p, xp=np):
    """Subtract from each wrapped-layout projection ``(B, h, h)`` the mean of its box edge.

    In the wrap-around layout (centre at pixel 0) the box edges are rows/columns
    ``h/2 - 1`` and ``h/2``. Works in place for float arrays and returns ``p``.
    """
    h = p.shape[-1]
    e = h // 2
    edge = (p[:, e - 1, :].sum(-1) + p[:, e, :].sum(-1)
            + p[:, :, e - 1].sum(-1) + p[:, :, e].sum(-1)
            - p[:, e - 1, e - 1] - p[:, e - 1, e] - p[:, e, e - 1] - p[:, e, e])
    p -= (edge / (4 * h - 4))[:, None, None]
    return p
