"""Refinement of one particle's pose, position and defocus by L-BFGS on the
differentiable score (:class:`napari_2dtm.core.diffproj.PoseScore`).

Two things make a local optimiser safe from 3-5 degrees and a few pixels away:

* **Resolution continuation.** The first pass keeps frequencies up to 1/20 A only, where
  the score's basin around the true pose is several degrees wide (the angular width of a
  correlation peak is about resolution / particle diameter radians); each later pass
  halves the band (in Angstrom) down to the search's own resolution, starting from the
  previous optimum (:func:`bands_for`).
* **Integer shift first.** Before the first pass the best integer shift within
  ``max_shift_px`` comes from one correlation map at the start pose (one inverse FFT).

Variables (scaled to comparable steps): a left rotation increment ``omega`` in degrees
(``A = expm([omega]) A0``; its gradient through the SO(3) left Jacobian), the shift in
search pixels and the defocus offset in units of 100 A, each bounded.

:class:`PoseRefiner` holds what every particle of one micrograph shares (the whitened
image at the search pixel size, its whitening filter, the template's Fourier volume, the
patch size); the hits' refinement (:mod:`napari_2dtm.hits.gradient`) and the fast
search (:mod:`napari_2dtm.search.fast`) both use it.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft
from scipy.optimize import minimize

from napari_2dtm.core.ctf import CTFParams, wavelength_a
from napari_2dtm.core.diffproj import (
    PoseScore,
    left_jacobian,
    rotvec_matrix,
    slice_points,
    template_overlap,
)
from napari_2dtm.core.geometry import euler_to_matrix, local_grid, matrix_to_euler
from napari_2dtm.core.projection import FourierVolume

__all__ = ["bands_for", "refine_pose", "padded_box_size", "extract_patch", "PoseRefiner",
           "SEARCH_STARTS"]

#: starts of a refinement with a local grid search (the grid's best points; more
#: changed no outcome on the benchmark and test images and cost twice the time)
SEARCH_STARTS = 1
#: the local grid of a refinement with a search: step = search_deg / this (3 found the
#: same particles on the benchmark in 1.4x the refinement time)
GRID_DIVISIONS = 2.0

#: the first band (A): wide basins, 3-5 degree starts still converge
FIRST_BAND_A = 20.0
#: each later band is this fraction of the previous one (A)
BAND_RATIO = 0.5
_DEG = math.pi / 180.0
_DF_UNIT_A = 100.0
_GTOL, _FTOL = 1e-3, 1e-7  # per unit score; a pose to ~0.01 deg


def bands_for(pixel_size_a: float, first_band_a: float = FIRST_BAND_A) -> tuple:
    """Resolution bands (A) of the passes at a search pixel size: ``first_band_a`` down
    by :data:`BAND_RATIO` while coarser than 1.3 x Nyquist, then None (every frequency)."""
    nyq = 2.0 * float(pixel_size_a)
    out = []
    b = float(first_band_a)
    while b > 1.3 * nyq:
        out.append(round(b, 3))
        b *= BAND_RATIO
    return (*out, None)


def _best_integer_shift(score: PoseScore, rot, delta_a: float, max_shift_px: float):
    """``(dx, dy)``: the best integer shift within ``max_shift_px`` at one pose (one
    correlation map)."""
    m = score.correlation_map(rot, delta_a)
    p = score.size
    r = int(math.floor(max_shift_px))
    d = np.arange(-r, r + 1)
    window = m[np.ix_(d % p, d % p)]
    iy, ix = np.unravel_index(int(np.argmax(window)), window.shape)
    return np.array([float(d[ix]), float(d[iy])])


def refine_pose(scores: list[PoseScore], rot0: np.ndarray, delta0_a: float, *,
                max_shift_px: float = 3.0, angular_range_deg: float = 10.0,
                defocus_range_a: float = 200.0, maxiter: int = 40) -> dict:
    """Maximise the score over pose, shift and defocus through the passes ``scores``
    (coarse band first) from rotation ``rot0`` and defocus offset ``delta0_a``.

    Returns ``rot (3, 3)``, ``shift_px (x, y)``, ``delta_a``, ``score`` (on the last
    pass's band) and ``n_evaluations``."""
    shift = _best_integer_shift(scores[0], rot0, delta0_a, max_shift_px)
    rot, delta = np.asarray(rot0, np.float64), float(delta0_a)
    lo_df = (delta0_a - defocus_range_a) / _DF_UNIT_A
    hi_df = (delta0_a + defocus_range_a) / _DF_UNIT_A
    n_eval = 1
    for sc in scores:
        base = rot

        def fun(x, sc=sc, base=base):
            om = x[:3] * _DEG
            score, g_rot, g_s, g_d = sc.value_and_grad(rotvec_matrix(om) @ base, x[3:5],
                                                        x[5] * _DF_UNIT_A)
            g = np.concatenate([left_jacobian(om).T @ g_rot * _DEG, g_s, [g_d * _DF_UNIT_A]])
            return -score, -g

        x0 = np.array([0.0, 0.0, 0.0, shift[0], shift[1], delta / _DF_UNIT_A])
        bounds = [(-angular_range_deg, angular_range_deg)] * 3 + [
            (-max_shift_px, max_shift_px)] * 2 + [(lo_df, hi_df) if defocus_range_a > 0
                                                  else (x0[5], x0[5])]
        # Coarse passes only have to land in the next band's basin: loose tolerances.
        gtol, ftol = (_GTOL, _FTOL) if sc is scores[-1] else (10 * _GTOL, 100 * _FTOL)
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": maxiter, "gtol": gtol, "ftol": ftol})
        n_eval += int(res.nfev)
        x = res.x
        rot = rotvec_matrix(x[:3] * _DEG) @ base
        shift = x[3:5].copy()
        delta = float(x[5] * _DF_UNIT_A)
        score = -float(res.fun)
    return {"rot": rot, "shift_px": shift, "delta_a": delta, "score": score,
            "n_evaluations": n_eval}


def padded_box_size(box: int, ctf: CTFParams, defocus_offsets_a, pixel_size_a: float,
                    image_shape) -> int:
    """Side of a particle patch: the template box plus its CTF delocalisation at Nyquist
    (at least ``2 box``, at most ``4 box`` or twice the image), a fast FFT length, even."""
    df = abs(max(ctf.defocus1_a, ctf.defocus2_a)) + float(np.max(np.abs(defocus_offsets_a)))
    deloc_px = wavelength_a(ctf.voltage_kv) * df * (0.5 / pixel_size_a) / pixel_size_a
    size = max(2 * box, box + 2 * int(math.ceil(deloc_px)))
    size = min(size, 4 * box, 2 * max(image_shape))
    size = sfft.next_fast_len(size, real=True)
    return size + size % 2


def extract_patch(image: np.ndarray, row: int, col: int, size: int,
                  dtype=np.float64) -> np.ndarray:
    """``(size, size)`` patch with pixel ``(row, col)`` at ``(size // 2, size // 2)``,
    zero outside the image (the whitened micrograph's mean)."""
    ny, nx = image.shape
    half = size // 2
    r0, c0 = int(row) - half, int(col) - half
    out = np.zeros((size, size), dtype)
    ys, xs = max(r0, 0), max(c0, 0)
    ye, xe = min(r0 + size, ny), min(c0 + size, nx)
    if ye > ys and xe > xs:
        out[ys - r0 : ye - r0, xs - c0 : xe - c0] = image[ys:ye, xs:xe]
    return out


class PoseRefiner:
    """Refines particles of one whitened micrograph against one template.

    image: ``(ny, nx)`` whitened micrograph at ``pixel_size_a`` (the search pixel size);
    whitening: its filter (``on_grid(shape, pixel_size_a)``); fvol: the template's
    :class:`~napari_2dtm.core.projection.FourierVolume`; template_pixel_size_a, box: the
    template's voxel size and its box at the search pixel size; ctf: the micrograph's;
    defocus_range_a: the defocus bound (+-, around each start); bands_a: the passes
    (default :func:`bands_for`).
    """

    def __init__(self, image, whitening, pixel_size_a: float, fvol: FourierVolume,
                 template_pixel_size_a: float, box: int, ctf: CTFParams,
                 defocus_range_a: float = 200.0, bands_a=None):
        self.image = image
        self.pixel_size_a = px = float(pixel_size_a)
        self.fvol, self.ctf = fvol, ctf
        self.box = int(box)
        self.defocus_range_a = float(defocus_range_a)
        self.bands_a = tuple(bands_for(px) if bands_a is None else bands_a)
        self.size = padded_box_size(self.box, ctf, [0.0, defocus_range_a], px, image.shape)
        self.scale = fvol.scale_for(template_pixel_size_a, self.size, px)
        self.white = whitening.on_grid((self.size, self.size), px)
        self._sample: np.ndarray | None = None  # see set_orientation_sample

    def refine(self, row: int, col: int, rot0, delta0_a: float = 0.0, *,
               max_shift_px: float = 3.0, angular_range_deg: float = 10.0,
               search_deg: float | None = None, search_band_a: float | None = None) -> dict:
        """:func:`refine_pose` of the particle near search pixel ``(row, col)`` from
        rotation ``rot0`` and defocus offset ``delta0_a``; adds ``row``, ``col``.

        search_deg: first score a local grid of orientations within this angle of
        ``rot0`` (step ``search_deg /`` :data:`GRID_DIVISIONS`) on the coarsest band and
        start from the best: a start a whole coarse grid step away (the fast search's) can
        lie outside the basin of the right optimum, and on the coarsest band a grid point
        costs a few microseconds. The optimiser's bound then widens by ``search_deg``. search_band_a:
        score that grid on this band instead (the band the start was found on), and run
        only the passes finer than it."""
        patch = extract_patch(self.image, row, col, self.size)
        bands = self.bands_a
        if search_deg and search_band_a:
            bands = (search_band_a, *(b for b in bands if b is None or b < search_band_a))
        passes = PoseScore.passes(patch, self.white, self.fvol, self.scale, self.ctf,
                                  self.pixel_size_a, bands)
        n_grid = 0
        if search_deg:
            grid = local_grid(matrix_to_euler(np.asarray(rot0, np.float64)), search_deg,
                              search_deg / GRID_DIVISIONS)
            rots = euler_to_matrix(*grid.T)
            shift0 = _best_integer_shift(passes[0], rot0, delta0_a, max_shift_px)
            vals = np.array([passes[0].value(r, shift0, delta0_a) for r in rots])
            # the best few distinct grid points each start an optimisation: the coarse
            # band's ranking of nearby views is noisy
            starts = [rots[i] for i in np.argsort(-vals)[:SEARCH_STARTS]]
            n_grid = len(rots)
            angular_range_deg = angular_range_deg + search_deg
        else:
            starts = [rot0]
        got = None
        for r0 in starts:
            g = refine_pose(passes, r0, delta0_a, max_shift_px=max_shift_px,
                            angular_range_deg=angular_range_deg,
                            defocus_range_a=self.defocus_range_a)
            n_grid += g["n_evaluations"]
            if got is None or g["score"] > got["score"]:
                got = g
        got["n_evaluations"] = n_grid
        got.update(row=int(row), col=int(col))
        if self._sample is not None:
            got.update(self._sample_stats(passes[-1], got))
        return got

    def set_orientation_sample(self, rots: np.ndarray) -> None:
        """Keep the unit-energy filtered templates at rotations ``rots (n, 3, 3)`` (a
        uniform sample of SO(3)): :meth:`refine` then also returns, at the refined
        position, ``mean_cc`` and ``std_cc`` (the mean and SD of the correlation over the
        sample: an exhaustive search's per-pixel mean and SD at full resolution)."""
        probe = PoseScore(np.zeros((self.size, self.size)), self.white, self.fvol, self.scale,
                          self.ctf, self.pixel_size_a, None)
        f, _ = probe._filter(0.0)
        out = np.empty((len(rots), len(probe.kx)), np.complex64)
        for i, r in enumerate(np.asarray(rots, np.float64).reshape(-1, 3, 3)):
            sl, _ = slice_points(self.fvol, r, probe.kx, probe.ky, self.scale)
            t = sl * f
            e = float(np.sum(probe.w * (t.real**2 + t.imag**2)))
            out[i] = t / math.sqrt(e) if e > 0 else 0
        self._sample = out

    def _sample_stats(self, last: PoseScore, got: dict) -> dict:
        """The sample's statistics at a refined particle (:meth:`set_orientation_sample`);
        ``last``: the every-frequency pass of its patch."""
        v = last.w * last.img * last._phase(got["shift_px"])
        cc = (np.conj(self._sample) @ v.astype(np.complex64)).real.astype(np.float64)
        return {"mean_cc": float(cc.mean()), "std_cc": float(cc.std())}

    def overlap(self, a: dict, b: dict) -> float:
        """:func:`~napari_2dtm.core.diffproj.template_overlap` of two refined particles
        (:meth:`refine` results) at their positions."""
        dx = (b["col"] + b["shift_px"][0]) - (a["col"] + a["shift_px"][0])
        dy = (b["row"] + b["shift_px"][1]) - (a["row"] + a["shift_px"][1])
        return template_overlap(self.fvol, self.scale, self.size, self.white, self.ctf,
                                self.pixel_size_a, a["rot"], a["delta_a"], b["rot"],
                                b["delta_a"], (dx, dy))
