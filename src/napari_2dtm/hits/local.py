"""Local scoring: templates at given poses around given positions, on the search's scale.

Used by in situ classification (every template scored on the same local grid around
each hit) and by refinement. The score is the engine's normalised cross-correlation
(N(0, 1) at every pixel under white noise), computed from the same whitened
micrograph (:func:`~napari_2dtm.core.filters.prepare_image`) and the same ``CTF x whitening``
filter, so local scores, the search MIP and SNR are directly comparable.

How it differs from the engine, and why that is exact enough: the engine filters the
whole micrograph and normalises each template on the full search frame; here the
filter goes on the template (equivalent, the filter is real and even) on a padded
box of ``P >= 2h`` pixels that also holds the CTF delocalisation, and the correlation
at a handful of shifts is a dot product with image patches. The two agree to well
under 1% (tested against the search MIP).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import scipy.fft as sfft

from napari_2dtm.core.ctf import CTFParams, ctf_2d
from napari_2dtm.core.filters import prepare_image
from napari_2dtm.core.geometry import euler_to_matrix, local_grid
from napari_2dtm.core.pose_refine import padded_box_size
from napari_2dtm.core.projection import FourierVolume, extract_slices, subtract_edge_mean
from napari_2dtm.errors import InputError
from napari_2dtm.search.results import ResultsFolder
from napari_2dtm.templates.load import load_template
from napari_2dtm.templates.template import Template

__all__ = ["LocalScorer", "local_search", "search_zscore"]


class _TemplateSlot:
    """Per-template state at the search pixel size: Fourier volume, box, scale."""

    def __init__(self, template: Template, pixel_size_a: float):
        self.template = template
        box = int(math.ceil(template.box * template.pixel_size_a / pixel_size_a - 1e-6))
        self.box = box + box % 2
        self.fvol = FourierVolume(template.volume, pad=2)
        self.scale = self.fvol.scale_for(template.pixel_size_a, self.box, pixel_size_a)


class LocalScorer:
    """Normalised cross-correlations of templates at chosen poses near chosen positions.

    image: ``(ny, nx)`` micrograph at ``pixel_size_a`` (input pixels); ctf: the
    micrograph's CTF; high_res_limit_a: as in :class:`~napari_2dtm.search.engine.SearchConfig`
    (the same value gives the same search pixel size and whitening as the search).
    """

    def __init__(self, image, pixel_size_a: float, ctf: CTFParams,
                 high_res_limit_a: float | None = None):
        img = np.asarray(image)
        if img.ndim != 2:
            raise InputError(f"micrograph must be 2D, got shape {img.shape}")
        if not np.all(np.isfinite(img)):
            raise InputError("micrograph contains NaN or infinite values")
        if not (pixel_size_a and pixel_size_a > 0):
            raise InputError(f"micrograph pixel size must be > 0 Angstrom, got {pixel_size_a}")
        self.ctf = ctf
        self.input_pixel_size_a = float(pixel_size_a)
        self.prepared = prepare_image(img.astype(np.float32), pixel_size_a, high_res_limit_a)
        self.pixel_size_a = self.prepared.pixel_size_a
        self.image = self.prepared.image.astype(np.float32)
        self.binning = self.pixel_size_a / self.input_pixel_size_a
        self._slots: dict[int, _TemplateSlot] = {}
        self._filters: dict[tuple, np.ndarray] = {}

    # ----------------------------------------------------------------- helpers
    def _slot(self, template) -> _TemplateSlot:
        t = load_template(template, pixel_size_a=self.input_pixel_size_a)
        key = id(t.volume)
        if key not in self._slots:
            slot = _TemplateSlot(t, self.pixel_size_a)
            ny, nx = self.image.shape
            if slot.box > min(ny, nx):
                raise InputError(f"{t.source}: template ({slot.box} px at the search pixel "
                                 f"size) is larger than the micrograph ({ny} x {nx} px)")
            self._slots[key] = slot
        return self._slots[key]

    def _padded_size(self, box: int, defocus_offsets_a) -> int:
        """Padded box holding the template plus its CTF delocalisation at Nyquist."""
        return padded_box_size(box, self.ctf, defocus_offsets_a, self.pixel_size_a,
                               self.image.shape)

    def _filter(self, size: int, offset_a: float) -> np.ndarray:
        key = (size, round(float(offset_a), 3))
        f = self._filters.get(key)
        if f is None:
            px = self.pixel_size_a
            w = self.prepared.whitening.on_grid((size, size), px)
            f = (ctf_2d(self.ctf, (size, size), px, defocus_offset_a=offset_a) * w)
            self._filters[key] = f = f.astype(np.float32)
        return f

    def _templates(self, slot: _TemplateSlot, orientations_deg, offsets, size):
        """Filtered, normalised templates ``(n_or, n_df, size, size)``, centre at size//2."""
        h = slot.box
        rots = euler_to_matrix(*np.asarray(orientations_deg, np.float64).reshape(-1, 3).T)
        sl = extract_slices(slot.fvol, rots.reshape(-1, 3, 3), h, slot.scale)
        p = sfft.irfft2(sl, s=(h, h), axes=(-2, -1))
        subtract_edge_mean(p)
        e = h // 2
        big = np.zeros((len(p), size, size), np.float64)
        # Wrapped layout (centre at 0), as the engine's zero padding of the box.
        big[:, :e, :e] = p[:, :e, :e]
        big[:, :e, size - e:] = p[:, :e, e:]
        big[:, size - e:, :e] = p[:, e:, :e]
        big[:, size - e:, size - e:] = p[:, e:, e:]
        ft = sfft.rfft2(big, axes=(-2, -1))
        wts = np.full(size // 2 + 1, 2.0)
        wts[0] = wts[-1] = 1.0
        out = np.empty((len(p), len(offsets), size, size), np.float32)
        for j, off in enumerate(offsets):
            f = self._filter(size, off)
            g = ft * f
            energy = np.sum(wts * (g.real**2 + g.imag**2), axis=(-2, -1)) / (size * size)
            t = sfft.irfft2(g, s=(size, size), axes=(-2, -1))
            with np.errstate(divide="ignore", invalid="ignore"):
                t /= np.where(energy > 0, np.sqrt(energy), np.inf)[:, None, None]
            out[:, j] = np.fft.fftshift(t, axes=(-2, -1))
        return out

    def _patches(self, row: int, col: int, size: int, shift: int) -> np.ndarray:
        """Image patches ``(n_shift, size * size)`` for shifts ``-shift..shift`` (row-major)."""
        ny, nx = self.image.shape
        half = size // 2
        n = size + 2 * shift
        r0, c0 = row - shift - half, col - shift - half
        region = np.zeros((n, n), np.float32)
        ys, xs = max(r0, 0), max(c0, 0)
        ye, xe = min(r0 + n, ny), min(c0 + n, nx)
        if ye > ys and xe > xs:
            region[ys - r0 : ye - r0, xs - c0 : xe - c0] = self.image[ys:ye, xs:xe]
        k = 2 * shift + 1
        out = np.empty((k * k, size * size), np.float32)
        for i in range(k):
            for j in range(k):
                out[i * k + j] = region[i : i + size, j : j + size].ravel()
        return out

    # -------------------------------------------------------------------- API
    def search_position(self, x: float, y: float) -> tuple[int, int]:
        """Nearest search-grid pixel ``(row, col)`` of an input-pixel position."""
        return int(round(y / self.binning)), int(round(x / self.binning))

    def score(self, template, x: float, y: float, orientations_deg,
              defocus_offsets_a=(0.0,), shift_px: int = 1) -> np.ndarray:
        """Normalised CC ``(n_orient, n_defocus, 2*shift_px+1, 2*shift_px+1)`` (float64).

        x, y: input-micrograph pixels (0-based particle centre); orientations_deg:
        ``(n, 3)`` ZYZ phi, theta, psi; defocus_offsets_a: relative to the CTF's
        defocus; the last two axes are row and column shifts in search pixels.
        """
        slot = self._slot(template)
        offsets = np.atleast_1d(np.asarray(defocus_offsets_a, np.float64))
        ori = np.asarray(orientations_deg, np.float64).reshape(-1, 3)
        size = self._padded_size(slot.box, offsets)
        row, col = self.search_position(x, y)
        shift = int(shift_px)
        q = self._patches(row, col, size, shift)
        k = 2 * shift + 1
        out = np.empty((len(ori), len(offsets), k, k))
        chunk = max(1, int(2**26 // (size * size * len(offsets) * 4)))
        for i0 in range(0, len(ori), chunk):
            t = self._templates(slot, ori[i0 : i0 + chunk], offsets, size)
            cc = t.reshape(-1, size * size) @ q.T
            out[i0 : i0 + chunk] = cc.reshape(len(t), len(offsets), k, k)
        return out


def _subpixel(m: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """Parabolic peak offset ``(dy, dx)`` from a 2D map's maximum at ``(i, j)``."""

    def one(a, b, c):
        den = a - 2 * b + c
        return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5)) if den < 0 else 0.0

    dy = one(m[i - 1, j], m[i, j], m[i + 1, j]) if 0 < i < m.shape[0] - 1 else 0.0
    dx = one(m[i, j - 1], m[i, j], m[i, j + 1]) if 0 < j < m.shape[1] - 1 else 0.0
    return dy, dx


def search_zscore(maps: dict | None, row: int, col: int, cc: float) -> float:
    """``(cc - mean) / std`` with a search's per-pixel maps at search pixel ``(row, col)``;
    NaN without maps, outside them, or where the SD is 0."""
    if maps is None or "mean" not in maps or not (0 <= row < maps["mean"].shape[0]
                                                  and 0 <= col < maps["mean"].shape[1]):
        return np.nan
    sd = float(maps["std"][row, col])
    return (cc - float(maps["mean"][row, col])) / sd if sd > 0 else np.nan


def local_search(image, pixel_size_a: float, template, hits: pd.DataFrame, ctf: CTFParams, *,
                 angular_range_deg: float = 2.0, angular_step_deg: float = 1.0,
                 in_plane_range_deg: float | None = None,
                 in_plane_step_deg: float | None = None, shift_px: int = 1,
                 defocus_range_a: float = 0.0, defocus_step_a: float = 100.0,
                 result=None, high_res_limit_a: float | None = None,
                 scorer: LocalScorer | None = None,
                 progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Best score of ``template`` on a local grid around each hit.

    hits: DataFrame with x, y (input pixels), phi, theta, psi (deg) and optionally
    defocus_a (absolute mean defocus, A). The grid is :func:`geometry.local_grid`
    around the pose (``angular_range_deg`` half-range, ``angular_step_deg`` step; the
    in-plane ones default to the same), ``+-shift_px`` search pixels, and defocus
    offsets ``-range..range`` step ``defocus_step_a`` around the hit's defocus.

    Returns a copy of ``hits`` with x, y (sub-pixel), phi, theta, psi, defocus_a,
    defocus1_a, defocus2_a updated and columns cc (normalised CC), snr (cc over the
    search's global noise sigma when ``result`` is given, else cc) and zscore
    ((cc - mean) / std from the result's maps at the pixel; NaN without a result).
    Pass the same grid for several templates to compare them without favouring one.
    """
    from napari_2dtm.search.config import defocus_offsets  # noqa: PLC0415 (keeps hits free of search at import)

    if scorer is None:
        if result is not None and high_res_limit_a is None:
            high_res_limit_a = ResultsFolder.of(result).high_res_limit_a
        scorer = LocalScorer(image, pixel_size_a, ctf, high_res_limit_a)
    missing = [c for c in ("x", "y", "phi", "theta", "psi") if c not in hits.columns]
    if missing:
        raise InputError(f"hits table lacks columns {missing}")
    out = hits.copy().reset_index(drop=True)
    local_offsets = defocus_offsets(defocus_range_a, defocus_step_a)
    gsig = None
    maps = None
    if result is not None:
        gsig = ResultsFolder.of(result).cc_global_std
        maps = result.maps
    n = len(out)
    cols = {k: np.empty(n) for k in ("x", "y", "phi", "theta", "psi", "defocus_a", "cc",
                                      "snr", "zscore")}
    for i, h in enumerate(out.itertuples(index=False)):
        pose = (h.phi, h.theta, h.psi)
        grid = local_grid(pose, angular_range_deg, angular_step_deg, in_plane_range_deg,
                          in_plane_step_deg)
        base = (float(h.defocus_a) - ctf.defocus_mean_a) if (
            "defocus_a" in out.columns and np.isfinite(h.defocus_a)) else 0.0
        offs = base + local_offsets
        cc = scorer.score(template, h.x, h.y, grid, offs, shift_px)
        io, idf, iy, ix = np.unravel_index(int(np.argmax(cc)), cc.shape)
        dy, dx = _subpixel(cc[io, idf], iy, ix)
        row, col = scorer.search_position(h.x, h.y)
        best = float(cc[io, idf, iy, ix])
        ry, rx = row + iy - shift_px, col + ix - shift_px
        cols["x"][i] = (rx + dx) * scorer.binning
        cols["y"][i] = (ry + dy) * scorer.binning
        cols["phi"][i], cols["theta"][i], cols["psi"][i] = grid[io]
        cols["defocus_a"][i] = ctf.defocus_mean_a + offs[idf]
        cols["cc"][i] = best
        cols["snr"][i] = best / gsig if gsig else best
        cols["zscore"][i] = search_zscore(maps, ry, rx, best)
        if progress is not None:
            progress(i + 1, n)
    for k, v in cols.items():
        out[k] = v
    d_off = out["defocus_a"] - ctf.defocus_mean_a
    out["defocus1_a"] = ctf.defocus1_a + d_off
    out["defocus2_a"] = ctf.defocus2_a + d_off
    out["astigmatism_angle_deg"] = ctf.astigmatism_angle_deg
    return out
