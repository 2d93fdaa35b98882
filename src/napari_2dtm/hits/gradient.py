"""Gradient refinement of hits: pose, sub-pixel position and defocus by L-BFGS.

Each hit is refined by :class:`napari_2dtm.core.pose_refine.PoseRefiner` (the engine's
normalised CC made differentiable, :mod:`napari_2dtm.core.diffproj`, optimised with
resolution continuation from an integer-shift start) instead of on nested local grids
(:mod:`napari_2dtm.hits.refine`, "grid"). This module brings the hits table in and out:
micrograph pixels to search pixels and back, and scores on the search's scale (cc, snr
from the search's global sigma, z-score from its per-pixel mean and SD), as the grid
refinement's.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.core.geometry import angular_distance_deg, euler_to_matrix, matrix_to_euler
from napari_2dtm.core.pose_refine import PoseRefiner, bands_for
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.search.results import ResultsFolder

from .local import LocalScorer, search_zscore

__all__ = ["bands_for", "refine_hits_gradient"]


def refine_hits_gradient(image, pixel_size_a: float, template, hits: pd.DataFrame,
                         ctf: CTFParams, *, result=None, high_res_limit_a: float | None = None,
                         bands_a: tuple | None = None, max_shift_px: float = 3.0,
                         angular_range_deg: float = 10.0, defocus_range_a: float = 200.0,
                         progress: Callable[[int, int], None] | None = None,
                         cancel: threading.Event | None = None) -> pd.DataFrame:
    """Refine every hit by :class:`~napari_2dtm.core.pose_refine.PoseRefiner`; the columns of
    :func:`napari_2dtm.hits.refine.refine_hits` (which calls this for ``method="gradient"``).

    image: ``(ny, nx)`` micrograph at ``pixel_size_a``; hits: x, y (input pixels), phi,
    theta, psi (deg), optionally defocus_a; bands_a: the passes' bands (default
    :func:`~napari_2dtm.core.pose_refine.bands_for` the search pixel size); max_shift_px: in search pixels. A hit whose
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
    if bands_a is not None and not tuple(bands_a):
        raise InputError("no refinement bands given")
    refiner = PoseRefiner(scorer.image, scorer.prepared.whitening, px, slot.fvol,
                          slot.template.pixel_size_a, slot.box, ctf, defocus_range_a, bands_a)
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
        has_df = "defocus_a" in out.columns and np.isfinite(h.defocus_a)
        delta0 = float(h.defocus_a) - ctf.defocus_mean_a if has_df else 0.0
        a0 = euler_to_matrix(h.phi, h.theta, h.psi)
        got = refiner.refine(row, col, a0, delta0, max_shift_px=max_shift_px,
                             angular_range_deg=angular_range_deg)
        got["a0"] = a0
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
        cols["zscore"][i] = search_zscore(maps, int(round(ry)), int(round(rx)), best)
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
    out.attrs["refine_bands_a"] = list(refiner.bands_a)
    out.attrs["refine_evaluations"] = n_eval
    return out
