"""Validation of a reconstruction: Fourier shell correlation, resolution, masks, low-pass.

Shells: a voxel of an ``n^3`` map's transform belongs to shell ``k`` when its frequency
radius, in index units, rounds to ``k`` (``k = 0 .. n // 2``); shell ``k`` is the spatial
frequency ``k / (n * pixel)`` (:func:`shell_frequencies`). The FSC of two maps is the
normalised cross power per shell (:func:`fsc`); the resolution is where it first drops
below 0.143 (:data:`FSC_THRESHOLD`, Rosenthal & Henderson 2003), interpolated linearly
between shells (:func:`fsc_resolution`). An FSC already below 0.143 at the first shell
past the origin (the crossing would lie at a period longer than the box) has no
resolution: ``inf``, written "worse than the box (FSC does not cross 0.143)" by
:func:`resolution_text`, never a number of 10^8 A. A soft mask (:func:`soft_mask` from a map,
:func:`spherical_mask`) removes solvent noise before the masked FSC.

The FSC between half maps is NOT gold-standard when the poses come from template
matching: both halves were aligned to the same template, so they share its bias and
the resolution is over-estimated (:data:`FSC_NOTE`, written beside every FSC).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

__all__ = [
    "fsc",
    "fsc_resolution",
    "resolution_text",
    "fsc_crossing_shell",
    "shell_frequencies",
    "lowpass",
    "soft_mask",
    "spherical_mask",
    "FSC_NOTE",
    "FSC_THRESHOLD",
]

FSC_THRESHOLD = 0.143
FSC_NOTE = (
    "This FSC is NOT gold-standard: the particle poses come from template matching "
    "against the template (not from independent half-set refinement), so both half "
    "maps share the template's bias and the resolution is over-estimated."
)


def _rfft_radius(n: int) -> np.ndarray:
    """Radius (in frequency index units) of every ``rfftn`` voxel of an ``n^3`` map."""
    k = np.fft.fftfreq(n, 1.0 / n)
    kx = np.arange(n // 2 + 1, dtype=np.float64)
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)


def shell_frequencies(n: int, pixel_size_a: float) -> np.ndarray:
    """Spatial frequency (1/A) of FSC shells ``0..n//2`` of an ``n^3`` map."""
    return np.arange(n // 2 + 1) / (n * float(pixel_size_a))


def fsc(map1: np.ndarray, map2: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Fourier shell correlation ``(n//2 + 1,)`` of two ``(n, n, n)`` maps (shell k =
    frequencies rounding to k, in index units), optionally after multiplying by ``mask``."""
    a = np.asarray(map1, np.float64)
    b = np.asarray(map2, np.float64)
    if mask is not None:
        a = a * mask
        b = b * mask
    n = a.shape[0]
    fa = sfft.rfftn(a, workers=-1)
    fb = sfft.rfftn(b, workers=-1)
    shells = np.rint(_rfft_radius(n)).astype(np.int64)
    # rfft stores one of each Friedel pair except on the kx = 0 / Nyquist planes
    w = np.full(n // 2 + 1, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    w = np.broadcast_to(w, shells.shape)
    keep = shells <= n // 2
    s = shells[keep]
    ww = w[keep]
    cross = np.bincount(s, ww * (fa[keep] * np.conj(fb[keep])).real, n // 2 + 1)
    pa = np.bincount(s, ww * np.abs(fa[keep]) ** 2, n // 2 + 1)
    pb = np.bincount(s, ww * np.abs(fb[keep]) ** 2, n // 2 + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = cross / np.sqrt(pa * pb)
    out[~np.isfinite(out)] = 0.0
    return out


def fsc_resolution(curve, n: int, pixel_size_a: float, threshold: float = FSC_THRESHOLD) -> float:
    """Resolution (A) where ``curve`` first drops below ``threshold`` (after shell 0),
    interpolated linearly between shells; Nyquist (``2 * pixel``) if it never does;
    ``inf`` when it is below at shell 1 (no shell inside the box correlates)."""
    c = np.asarray(curve, np.float64)
    for k in range(1, len(c)):
        if c[k] < threshold:
            if k == 1:
                return math.inf
            k0 = k - 1
            denom = c[k0] - c[k]
            t = (c[k0] - threshold) / denom if denom > 0 else 0.0
            return float(n * pixel_size_a / (k0 + t))
    return float(2.0 * pixel_size_a)


def resolution_text(resolution_a: float | None, digits: int = 2) -> str:
    """``"7.35 A"``, or ``"worse than the box (FSC does not cross 0.143)"`` for ``inf``."""
    if resolution_a is None or not math.isfinite(resolution_a):
        return f"worse than the box (FSC does not cross {FSC_THRESHOLD})"
    return f"{resolution_a:.{digits}f} A"


def fsc_crossing_shell(curve, threshold: float) -> float:
    """Shell index (fractional) where ``curve`` first drops below ``threshold``."""
    c = np.asarray(curve, np.float64)
    for k in range(1, len(c)):
        if c[k] < threshold:
            denom = c[k - 1] - c[k]
            return float(k - 1 + ((c[k - 1] - threshold) / denom if denom > 0 else 0.0))
    return float(len(c) - 1)


def lowpass(volume: np.ndarray, pixel_size_a: float, resolution_a: float,
            edge_shells: float = 2.0) -> np.ndarray:
    """Low-pass a cubic map at ``resolution_a`` with a raised-cosine edge ``edge_shells`` wide."""
    v = np.asarray(volume, np.float64)
    n = v.shape[0]
    kc = n * pixel_size_a / float(resolution_a)
    r = _rfft_radius(n)
    f = np.clip((kc + edge_shells / 2 - r) / edge_shells, 0.0, 1.0)
    f = 0.5 - 0.5 * np.cos(np.pi * f)
    return sfft.irfftn(sfft.rfftn(v, workers=-1) * f, s=v.shape, workers=-1)


def spherical_mask(n: int, radius_px: float, edge_px: float = 5.0) -> np.ndarray:
    """Soft sphere ``(n, n, n)`` float32 centred at voxel ``n // 2``: 1 inside
    ``radius_px``, raised-cosine fall-off to 0 over ``edge_px``."""
    g = np.arange(n) - n // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    t = np.clip((r - radius_px) / max(edge_px, 1e-6), 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def soft_mask(volume: np.ndarray, pixel_size_a: float, threshold: float | None = None,
              lowpass_a: float = 15.0, extend_px: int = 3, edge_px: float = 5.0) -> np.ndarray:
    """Soft mask ``(n, n, n)`` float32 from a map (a reconstruction or a template).

    The map is low-passed to ``lowpass_a``, thresholded (default: 10% of its maximum),
    the largest connected region kept, dilated by ``extend_px`` voxels and given a
    raised-cosine edge ``edge_px`` voxels wide.
    """
    v = np.asarray(volume, np.float64)
    lp = lowpass(v, pixel_size_a, max(float(lowpass_a), 2.0 * pixel_size_a))
    thr = 0.1 * float(lp.max()) if threshold is None else float(threshold)
    binary = lp > thr
    if not binary.any():
        return np.ones(v.shape, np.float32)
    lab, nlab = ndimage.label(binary)
    if nlab > 1:
        sizes = ndimage.sum(binary, lab, range(1, nlab + 1))
        binary = lab == (1 + int(np.argmax(sizes)))
    if extend_px > 0:
        binary = ndimage.binary_dilation(binary, iterations=int(extend_px))
    dist = ndimage.distance_transform_edt(~binary)
    t = np.clip(dist / max(edge_px, 1e-6), 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)
