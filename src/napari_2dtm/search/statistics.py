"""Per-pixel statistics of a search: the running accumulation and the final maps.

:class:`RunningStats` holds, on the search grid ``(ny, nx)`` (NumPy, or CuPy on a GPU):

* ``mip`` float32: the maximum normalised cross-correlation (CC) so far;
* ``best`` int32: the global index of that CC,
  ``orientation + n_orient * (defocus + n_defocus * pixel_plane)`` (a later CC replaces
  it only when strictly larger, so ties keep the first one met);
* ``s1``, ``s2`` float64: plain sums of the CCs and of their squares. float64 because
  a search adds millions of terms per pixel; the maps are added in a fixed
  (orientation, defocus) order whatever the batch and chunk sizes, so the sums, and
  the maps made from them, do not depend on how the work was cut;
* which orientation ranges of which pixel-size planes are done (for checkpoints).

One pass per chunk of maps updates all four arrays, reading each map once
(:func:`napari_2dtm.core._kernels.update_stats`; on a GPU the fused kernel of
:mod:`napari_2dtm.core._gpu`, whose NumPy reference is the same computation).

From ``n`` CCs per pixel, :func:`score_maps` makes ``mean = s1 / n``,
``std = sqrt(s2 / n - mean^2)``, ``zscore = (mip - mean) / std`` and
``snr = mip / sigma``, where sigma is the standard deviation of all CCs over the valid
pixels (:func:`valid_mask`: the whole particle inside the micrograph); outside them the
MIP, z-score and angles are 0. :func:`parameter_maps` decodes ``best`` into angle,
defocus and pixel-size maps. Both work in row blocks so that float64 temporaries stay
near 32 MB on large micrographs.
"""

from __future__ import annotations

import math

import numpy as np

from napari_2dtm.core import _kernels
from napari_2dtm.core.backend import to_numpy
from napari_2dtm.errors import InputError

from .checkpoint import SearchPartial

__all__ = ["RunningStats", "score_maps", "parameter_maps", "valid_mask", "template_radius"]

#: float64 elements per row block of the map computations (4 Mi x 8 B = 32 MB)
_BLOCK_ELEMENTS = 4 << 20


def _row_blocks(ny: int, nx: int) -> list[tuple[int, int]]:
    step = max(1, _BLOCK_ELEMENTS // max(1, nx))
    return [(y0, min(ny, y0 + step)) for y0 in range(0, ny, step)]


class RunningStats:
    """MIP, best index and float64 sums on the search grid ``shape`` (array module ``xp``)."""

    def __init__(self, shape: tuple[int, int], xp=np):
        ny, nx = shape
        self.shape = (ny, nx)
        self.xp = xp
        self.mip = xp.full((ny, nx), -np.inf, np.float32)
        self.best = xp.zeros((ny, nx), np.int32)
        self.s1 = xp.zeros((ny, nx), np.float64)
        self.s2 = xp.zeros((ny, nx), np.float64)
        #: CCs per pixel folded in so far
        self.n_cc = 0
        #: pixel plane -> sorted ``[o_start, o_stop]`` orientation ranges folded in
        self.done: dict[int, list] = {}

    def update(self, ccs, scales, gidx, run=None):
        """Fold raw maps ``ccs`` ``(k, Hs, Ws)`` times ``scales`` ``(k,)`` with global indices
        ``gidx`` ``(k,)`` int32 into the statistics (only the ``[:ny, :nx]`` corner counts).

        run: thread runner for the CPU kernel (rows split across threads)."""
        ny, nx = self.shape
        xp = self.xp
        if xp is not np:  # one fused kernel reads each map once (same sums as the CPU's)
            from napari_2dtm.core import _gpu  # noqa: PLC0415

            _gpu.update_stats(ccs, scales, gidx, self.mip, self.best, self.s1, self.s2, ny, nx)
        else:
            _kernels.update_stats(ccs, scales, gidx, self.mip, self.best, self.s1, self.s2,
                                  ny, nx, run=run)

    def is_done(self, ip: int, o0: int, o1: int) -> bool:
        """Whether orientations ``o0..o1-1`` of pixel plane ``ip`` are already folded in."""
        return any(a <= o0 and o1 <= b for a, b in self.done.get(ip, []))

    def mark_done(self, ip: int, o0: int, o1: int, n_cc: int):
        """Record orientations ``o0..o1-1`` of pixel plane ``ip`` (``n_cc`` CCs per pixel)."""
        iv = self.done.setdefault(ip, [])
        if iv and iv[-1][1] == o0:
            iv[-1][1] = o1
        else:
            iv.append([o0, o1])
            iv.sort()
        self.n_cc += n_cc

    def done_list(self) -> list[list[int]]:
        """Done ranges as ``[[pixel_plane, o_start, o_stop], ...]`` (the checkpoint form)."""
        return [[ip, o0, o1] for ip, iv in sorted(self.done.items()) for o0, o1 in iv]

    def restore(self, p: SearchPartial):
        """Replace the statistics by those of a partial (a checkpoint, or complete shards)."""
        xp = self.xp
        if p.mip.shape != self.shape:
            raise InputError(f"partial statistics of shape {p.mip.shape} do not fit the search "
                             f"grid {self.shape}")
        self.mip[...] = xp.asarray(p.mip)
        self.best[...] = xp.asarray(p.best)
        self.s1[...] = xp.asarray(p.s1)
        self.s2[...] = xp.asarray(p.s2)
        self.n_cc = int(p.n_cc)
        self.done = p.done_by_plane()


def template_radius(volume: np.ndarray) -> float:
    """Radius (template px) of the sphere holding 99% of a cubic template's |potential|:
    the particle's extent, which sets the border of :func:`valid_mask`.

    An integral criterion: a max-fraction cut would pick up the flat low tail of
    B-factor-blurred atoms and overestimate the particle.
    """
    v = np.abs(volume).astype(np.float64)
    tot = v.sum()
    n = v.shape[0]
    if tot <= 0:
        return n / 2
    c = n // 2
    z, y, x = np.indices(v.shape)
    r = np.sqrt((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2).ravel()
    order = np.argsort(r)
    cum = np.cumsum(v.ravel()[order]) / tot
    r99 = r[order][np.searchsorted(cum, 0.99)]
    return float(min(r99 + 1.0, n / 2))


def valid_mask(search_shape: tuple[int, int], input_shape: tuple[int, int],
               binning: tuple[int, int], border_px: int) -> np.ndarray:
    """Pixels of the search grid where the whole particle lies inside the micrograph.

    binning: ``(a, c)``, a search pixel is ``a / c`` input pixels
    (:attr:`napari_2dtm.core.filters.PreparedImage.binning`); border_px: the particle's
    half-extent in search pixels."""
    ny, nx = search_shape
    a, c = binning
    # Image content ends where the (unpadded) input ends.
    hy = int(math.floor(input_shape[0] * c / a))
    hx = int(math.floor(input_shape[1] * c / a))
    m = np.zeros((ny, nx), bool)
    r = border_px
    m[r : max(r, hy - r), r : max(r, hx - r)] = True
    return m


def score_maps(stats: RunningStats, n_cc: int, valid: np.ndarray, full: bool = True):
    """Score maps from the statistics after ``n_cc`` CCs per pixel.

    Returns ``(maps, global_mean, global_std)``; maps are float32 ``(ny, nx)``: mip,
    zscore, snr, and with ``full`` also mean and std.
    """
    ny, nx = stats.shape
    n = n_cc
    out = {k: np.empty((ny, nx), np.float32)
           for k in (("mip", "zscore", "snr", "mean", "std") if full else ("mip", "zscore", "snr"))}
    tot1 = tot2 = 0.0
    blocks = _row_blocks(ny, nx)
    for y0, y1 in blocks:
        s1 = to_numpy(stats.s1[y0:y1])
        s2 = to_numpy(stats.s2[y0:y1])
        mip = to_numpy(stats.mip[y0:y1]).astype(np.float64)
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
    # floor: a constant (all-zero) search has no noise, and the SNR divides by sigma
    gsig = math.sqrt(max(tot2 / cnt - gmean * gmean, 1e-30))
    for y0, y1 in blocks:
        out["snr"][y0:y1] = out["mip"][y0:y1].astype(np.float64) / gsig
    return out, gmean, gsig


def parameter_maps(best, valid: np.ndarray, orientations_deg: np.ndarray,
                   defocus_offsets_a: np.ndarray, pixel_sizes_a: np.ndarray) -> dict:
    """Decode the best global indices ``best`` ``(ny, nx)`` into float32 maps phi, theta,
    psi (deg, 0 outside ``valid``), defocus_offset (A) and, when more than one pixel-size
    plane was searched, pixel_size (A; ``pixel_sizes_a``: the planes' pixel sizes)."""
    ny, nx = best.shape
    n_or = len(orientations_deg)
    n_df = len(defocus_offsets_a)
    ori32 = orientations_deg.astype(np.float32)
    df32 = defocus_offsets_a.astype(np.float32)
    px32 = pixel_sizes_a.astype(np.float32)
    names = ["phi", "theta", "psi", "defocus_offset"]
    if len(pixel_sizes_a) > 1:
        names.append("pixel_size")
    maps = {name: np.empty((ny, nx), np.float32) for name in names}
    for y0, y1 in _row_blocks(ny, nx):
        b = to_numpy(best[y0:y1])
        v = valid[y0:y1]
        o = b % n_or
        rest = b // n_or
        for i, name in enumerate(("phi", "theta", "psi")):
            maps[name][y0:y1] = np.where(v, ori32[o, i], 0.0)
        maps["defocus_offset"][y0:y1] = df32[rest % n_df]
        if "pixel_size" in maps:
            maps["pixel_size"][y0:y1] = px32[rest // n_df]
    return maps
