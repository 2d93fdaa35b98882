"""Gradient refinement of hits: pose, sub-pixel position and defocus by L-BFGS.

Each hit's patch is scored by :class:`napari_2dtm.core.diffproj.PoseScore` (the engine's
normalised CC with its analytic gradient) and the pose is optimised continuously instead
of on nested local grids (:mod:`napari_2dtm.hits.refine`, "grid"). Two things make a
local optimiser safe from 3-5 degrees and a few pixels away:

* **Resolution continuation.** The first pass keeps frequencies up to 1/20 A only, where
  the score's basin around the true pose is several degrees wide (the angular width of a
  correlation peak is about resolution / particle diameter radians); each later pass
  halves the band (in Angstrom) up to the search's own resolution, starting from
  the previous optimum.
* **Integer shift first.** Before the first pass the best integer shift within
  ``max_shift_px`` comes from one correlation map at the start pose (one inverse FFT).

Variables (scaled to comparable steps): a left rotation increment ``omega`` in degrees
(``A = expm([omega]) A0``; its gradient through the SO(3) left Jacobian), the shift in
search pixels and the defocus offset in units of 100 A, each bounded (``angular_range_deg``,
``max_shift_px``, ``defocus_range_a``). Scores come out on the search's scale (cc, snr from
the search's global sigma, z-score from its per-pixel mean and SD), as the grid refinement's.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.core.diffproj import PoseScore, left_jacobian, rotvec_matrix
from napari_2dtm.core.geometry import angular_distance_deg, euler_to_matrix, matrix_to_euler
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.search.results import ResultsFolder

from .local import LocalScorer

__all__ = ["bands_for", "refine_hits_gradient", "refine_pose"]

#: the first band (A): wide basins, 3-5 degree starts still converge
FIRST_BAND_A = 20.0
#: each later band is this fraction of the previous one (A)
BAND_RATIO = 0.5
_DEG = math.pi / 180.0
_DF_UNIT_A = 100.0
_TRACE = None
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


def refine_pose(scores: list[PoseScore], rot0: np.ndarray, delta0_a: float, *,
                max_shift_px: float = 3.0, angular_range_deg: float = 10.0,
                defocus_range_a: float = 200.0, maxiter: int = 40) -> dict:
    """Maximise the score over pose, shift and defocus through the passes ``scores``
    (coarse band first) from rotation ``rot0`` and defocus offset ``delta0_a``.

    Returns ``rot (3, 3)``, ``shift_px (x, y)``, ``delta_a``, ``score`` (on the last
    pass's band) and ``n_evaluations``."""
    first = scores[0]
    m = first.correlation_map(rot0, delta0_a)
    p = first.size
    r = int(math.floor(max_shift_px))
    d = np.arange(-r, r + 1)
    window = m[np.ix_(d % p, d % p)]
    iy, ix = np.unravel_index(int(np.argmax(window)), window.shape)
    shift = np.array([float(d[ix]), float(d[iy])])
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
        if _TRACE is not None:
            _TRACE.append((sc.size, len(sc.kx), int(res.nfev), int(res.nit), -float(res.fun)))
        x = res.x
        rot = rotvec_matrix(x[:3] * _DEG) @ base
        shift = x[3:5].copy()
        delta = float(x[5] * _DF_UNIT_A)
        score = -float(res.fun)
    return {"rot": rot, "shift_px": shift, "delta_a": delta, "score": score,
            "n_evaluations": n_eval}


def _patch(image: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """``(size, size)`` patch with pixel ``(row, col)`` at ``(size // 2, size // 2)``,
    zero outside the image."""
    ny, nx = image.shape
    half = size // 2
    r0, c0 = row - half, col - half
    out = np.zeros((size, size), np.float64)
    ys, xs = max(r0, 0), max(c0, 0)
    ye, xe = min(r0 + size, ny), min(c0 + size, nx)
    if ye > ys and xe > xs:
        out[ys - r0 : ye - r0, xs - c0 : xe - c0] = image[ys:ye, xs:xe]
    return out


def refine_hits_gradient(image, pixel_size_a: float, template, hits: pd.DataFrame,
                         ctf: CTFParams, *, result=None, high_res_limit_a: float | None = None,
                         bands_a: tuple | None = None, max_shift_px: float = 3.0,
                         angular_range_deg: float = 10.0, defocus_range_a: float = 200.0,
                         progress: Callable[[int, int], None] | None = None,
                         cancel: threading.Event | None = None) -> pd.DataFrame:
    """Refine every hit by :func:`refine_pose`; the columns of
    :func:`napari_2dtm.hits.refine.refine_hits` (which calls this for ``method="gradient"``).

    image: ``(ny, nx)`` micrograph at ``pixel_size_a``; hits: x, y (input pixels), phi,
    theta, psi (deg), optionally defocus_a; bands_a: the passes' bands (default
    :func:`bands_for` the search pixel size); max_shift_px: in search pixels. A hit whose
    particle box lies wholly outside the micrograph is refused (InputError, naming it).
    """
    missing = [c for c in ("x", "y", "phi", "theta", "psi") if c not in hits.columns]
    if missing:
        raise InputError(f"hits table lacks columns {missing}")
    if not (max_shift_px >= 0 and angular_range_deg > 0 and defocus_range_a >= 0):
        raise InputError("refinement ranges must be >= 0 (angles > 0)")
    if result is not None and high_res_limit_a is None:
        high_res_limit_a = ResultsFolder.of(result).high_res_limit_a
    scorer = LocalScorer(image, pixel_size_a, ctf, high_res_limit_a)
    slot = scorer._slot(template)
    if not np.any(slot.fvol.data):
        raise InputError(f"{slot.template.source}: the template is empty (all zeros): "
                         "nothing to refine against")
    px = scorer.pixel_size_a
    bands = tuple(bands_for(px) if bands_a is None else bands_a)
    if not bands:
        raise InputError("no refinement bands given")
    size = scorer._padded_size(slot.box, [0.0, defocus_range_a])
    scale = slot.fvol.scale_for(slot.template.pixel_size_a, size, px)
    white = scorer.prepared.whitening.on_grid((size, size), px)
    gsig = maps = None
    if result is not None:
        gsig = ResultsFolder.of(result).cc_global_std
        maps = result.maps
    out = hits.copy().reset_index(drop=True)
    n = len(out)
    cols = {k: np.empty(n) for k in ("x", "y", "phi", "theta", "psi", "defocus_a", "cc",
                                      "snr", "zscore", "refine_shift_px", "refine_angle_deg")}
    t0 = time.perf_counter()
    ny, nx = scorer.image.shape
    rows = list(out.itertuples(index=False))
    for i, h in enumerate(rows):  # refuse before any work
        row, col = scorer.search_position(h.x, h.y)
        half = slot.box // 2
        if not (-half < row < ny + half and -half < col < nx + half):
            raise InputError(f"hit {i} at x={h.x:.1f}, y={h.y:.1f} px: its particle box lies "
                             f"outside the micrograph ({nx * scorer.binning:.0f} x "
                             f"{ny * scorer.binning:.0f} px)")

    def one(i):
        if cancel is not None and cancel.is_set():
            raise Cancelled("refinement cancelled")
        h = rows[i]
        row, col = scorer.search_position(h.x, h.y)
        patch = _patch(scorer.image, row, col, size)
        passes = PoseScore.passes(patch, white, slot.fvol, scale, ctf, px, bands)
        has_df = "defocus_a" in out.columns and np.isfinite(h.defocus_a)
        delta0 = float(h.defocus_a) - ctf.defocus_mean_a if has_df else 0.0
        a0 = euler_to_matrix(h.phi, h.theta, h.psi)
        got = refine_pose(passes, a0, delta0, max_shift_px=max_shift_px,
                          angular_range_deg=angular_range_deg, defocus_range_a=defocus_range_a)
        got.update(row=row, col=col, a0=a0)
        return got

    # One hit after another: the trilinear gathers are memory-bound, and two threads on
    # two cores measured slower than one (1BD2 at 1.5 A, 12 hits).
    n_eval = 0
    for i in range(n):
        got = one(i)
        h = rows[i]
        n_eval += got["n_evaluations"]
        sx, sy = got["shift_px"]
        ry, rx = got["row"] + sy, got["col"] + sx
        cols["x"][i], cols["y"][i] = rx * scorer.binning, ry * scorer.binning
        cols["phi"][i], cols["theta"][i], cols["psi"][i] = matrix_to_euler(got["rot"])
        cols["defocus_a"][i] = ctf.defocus_mean_a + got["delta_a"]
        best = got["score"]
        cols["cc"][i] = best
        cols["snr"][i] = best / gsig if gsig else best
        z = np.nan
        iy, ix = int(round(ry)), int(round(rx))
        if maps is not None and "mean" in maps and 0 <= iy < maps["mean"].shape[0] \
                and 0 <= ix < maps["mean"].shape[1]:
            sd = float(maps["std"][iy, ix])
            if sd > 0:
                z = (best - float(maps["mean"][iy, ix])) / sd
        cols["zscore"][i] = z
        cols["refine_shift_px"][i] = math.hypot(cols["x"][i] - h.x, cols["y"][i] - h.y)
        cols["refine_angle_deg"][i] = float(angular_distance_deg(got["a0"], got["rot"]))
        if progress is not None:
            progress(i + 1, n)
    for c in ("zscore", "snr"):
        if c in hits:
            out[f"{c}_search"] = hits[c].to_numpy()
    for k, v in cols.items():
        out[k] = v
    d_off = out["defocus_a"] - ctf.defocus_mean_a
    out["defocus1_a"] = ctf.defocus1_a + d_off
    out["defocus2_a"] = ctf.defocus2_a + d_off
    out["astigmatism_angle_deg"] = ctf.astigmatism_angle_deg
    out.attrs["refine_seconds"] = time.perf_counter() - t0
    out.attrs["refine_method"] = "gradient"
    out.attrs["refine_bands_a"] = [b for b in bands]
    out.attrs["refine_evaluations"] = n_eval
    return out
