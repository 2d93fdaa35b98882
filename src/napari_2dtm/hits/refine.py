"""Local refinement of hits: pose, defocus and sub-pixel position, coarse to fine.

:func:`refine_hits` refines by gradient (:mod:`napari_2dtm.hits.gradient`, the default)
or on the nested local grids described here (``method="grid"``).

Each stage is one :func:`napari_2dtm.hits.local.local_search` around the previous stage's
best pose, defocus and position, so scores stay on the search's scale (normalised CC;
z-score from the search's per-pixel mean and SD; SNR over its global sigma). The default
schedule reaches the precision of cisTEM's refine_template (0.2 deg out of plane,
0.1 deg in plane, defocus in 10 A steps over +-200 A) with about 320 scored poses per
hit instead of a full fine grid (hundreds of thousands). Pose and defocus are refined
in alternation (their errors are nearly independent for small offsets), which costs
about a fifth of refining them jointly:

=====  =================  ================  =============
stage  out of plane        in plane          defocus
=====  =================  ================  =============
1      +-2.5 deg, 1.0      +-1.5 deg, 0.6    kept
2      +-1.0, 0.4          +-0.6, 0.24       kept
3      pose kept           pose kept         +-200 A, 50
4      +-0.4, 0.2          +-0.24, 0.1       kept
5      pose kept           pose kept         +-40 A, 10
=====  =================  ================  =============

Positions are refined in every stage (+-1 search pixel, parabolic sub-pixel peak).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.search.results import ResultsFolder

from .local import LocalScorer, local_search

__all__ = ["RefineStage", "DEFAULT_STAGES", "METHODS", "refine_hits", "stages_from"]


@dataclasses.dataclass(frozen=True)
class RefineStage:
    """One local grid: half-ranges and steps (deg, A); 0 range keeps that parameter."""

    angular_range_deg: float
    angular_step_deg: float
    in_plane_range_deg: float
    in_plane_step_deg: float
    defocus_range_a: float = 0.0
    defocus_step_a: float = 10.0
    shift_px: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_STAGES: tuple[RefineStage, ...] = (
    RefineStage(2.5, 1.0, 1.5, 0.6),
    RefineStage(1.0, 0.4, 0.6, 0.24),
    RefineStage(0.0, 1.0, 0.0, 1.0, 200.0, 50.0),
    RefineStage(0.4, 0.2, 0.24, 0.1),
    RefineStage(0.0, 1.0, 0.0, 1.0, 40.0, 10.0),
)


def stages_from(out_of_plane_step_deg: float = 2.5, in_plane_step_deg: float = 1.5,
                final_out_of_plane_deg: float = 0.2, final_in_plane_deg: float = 0.1,
                defocus_range_a: float = 200.0, final_defocus_step_a: float = 10.0
                ) -> tuple[RefineStage, ...]:
    """A coarse-to-fine schedule from the search's steps down to the final steps.

    Pose stages search +-one previous step with a step about 2.5x finer (the last one
    exactly the final steps); defocus is refined in pose-fixed stages: +-defocus_range_a
    in quarter steps after the second pose stage, +-4 final steps at the end.
     :data:`DEFAULT_STAGES` is ``stages_from()``.
    """
    if min(out_of_plane_step_deg, in_plane_step_deg, final_out_of_plane_deg,
           final_in_plane_deg) <= 0:
        raise InputError("refinement angular steps must be > 0 degrees")
    poses = []
    r_o, r_i = float(out_of_plane_step_deg), float(in_plane_step_deg)
    while len(poses) < 8:
        s_o = max(final_out_of_plane_deg, r_o / 2.5)
        s_i = max(final_in_plane_deg, r_i / 2.5)
        # a step within 10% of the final one is the final one
        s_o = final_out_of_plane_deg if s_o < 1.1 * final_out_of_plane_deg else s_o
        s_i = final_in_plane_deg if s_i < 1.1 * final_in_plane_deg else s_i
        poses.append(RefineStage(round(r_o, 6), round(s_o, 6), round(r_i, 6), round(s_i, 6)))
        if s_o <= final_out_of_plane_deg and s_i <= final_in_plane_deg:
            break
        r_o, r_i = s_o, s_i
    if defocus_range_a <= 0:
        return tuple(poses)
    coarse = RefineStage(0.0, 1.0, 0.0, 1.0, float(defocus_range_a),
                         max(float(final_defocus_step_a), defocus_range_a / 4.0))
    fine = RefineStage(0.0, 1.0, 0.0, 1.0, 4.0 * final_defocus_step_a, float(final_defocus_step_a))
    k = min(2, len(poses))
    return tuple(poses[:k]) + (coarse,) + tuple(poses[k:]) + (fine,)


#: refinement methods: ``gradient`` (L-BFGS on the differentiable score,
#: :mod:`napari_2dtm.hits.gradient`) and ``grid`` (the nested local grids above)
METHODS = ("gradient", "grid")


def refine_hits(image, pixel_size_a: float, template, hits: pd.DataFrame, ctf: CTFParams, *,
                method: str | None = None, stages: Sequence[RefineStage] | None = None,
                result=None, high_res_limit_a: float | None = None,
                progress: Callable[[int, int], None] | None = None,
                cancel: threading.Event | None = None) -> pd.DataFrame:
    """Refine every hit's pose, defocus and position.

    method: ``gradient`` (the default without ``stages``: from 3-5 degrees and a few
    pixels away to the score's optimum, see :mod:`napari_2dtm.hits.gradient`) or ``grid``
    (through ``stages``; the default when they are given).
    The columns below are the same for both.

    image: ``(ny, nx)`` micrograph at ``pixel_size_a``; template: Template, path or
    array; hits: DataFrame with x, y (micrograph pixels), phi, theta, psi (deg) and
    optionally defocus_a; result: the :class:`~napari_2dtm.search.engine.SearchResult` the
    hits came from (its maps put the refined z-score on the search's scale; its
    ``high_res_limit_a`` is used). progress(done, total) counts hit x stage steps;
    setting ``cancel`` stops with :class:`~napari_2dtm.errors.Cancelled`.

    Returns a copy of ``hits`` with x, y (sub-pixel), phi, theta, psi, defocus_a,
    defocus1_a, defocus2_a, cc, snr, zscore refined, the search's values kept as
    ``zscore_search`` / ``snr_search`` (when present), and ``refine_shift_px`` /
    ``refine_angle_deg`` (how far the refinement moved each hit).
    """
    from napari_2dtm.core.geometry import angular_distance_deg, euler_to_matrix  # noqa: PLC0415

    if method is None:
        method = "grid" if stages else "gradient"
    if method not in METHODS:
        raise InputError(f"refinement method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "gradient":
        if stages:
            raise InputError("refinement stages are grid steps: use method='grid' with them")
        from .gradient import refine_hits_gradient  # noqa: PLC0415

        return refine_hits_gradient(image, pixel_size_a, template, hits, ctf, result=result,
                                    high_res_limit_a=high_res_limit_a, progress=progress,
                                    cancel=cancel)
    stages = tuple(DEFAULT_STAGES if stages is None else stages)
    if not stages:
        raise InputError("no refinement stages given")
    if result is not None and high_res_limit_a is None:
        high_res_limit_a = ResultsFolder.of(result).high_res_limit_a
    scorer = LocalScorer(image, pixel_size_a, ctf, high_res_limit_a)
    cur = hits.copy().reset_index(drop=True)
    start = cur[["x", "y", "phi", "theta", "psi"]].to_numpy(np.float64).copy()
    n = len(cur)
    total = n * len(stages)
    t0 = time.perf_counter()

    for k, st in enumerate(stages):
        def prog(i, _n, k=k):
            if cancel is not None and cancel.is_set():
                raise Cancelled("refinement cancelled")
            if progress is not None:
                progress(k * n + i, total)

        out = local_search(
            image, pixel_size_a, template, cur, ctf,
            angular_range_deg=st.angular_range_deg, angular_step_deg=st.angular_step_deg,
            in_plane_range_deg=st.in_plane_range_deg, in_plane_step_deg=st.in_plane_step_deg,
            shift_px=st.shift_px, defocus_range_a=st.defocus_range_a,
            defocus_step_a=st.defocus_step_a, result=result, scorer=scorer, progress=prog,
        )
        if k == 0:
            for c in ("zscore", "snr"):
                if c in hits:
                    out[f"{c}_search"] = hits[c].to_numpy()
        cur = out
    cur["refine_shift_px"] = np.hypot(cur["x"].to_numpy() - start[:, 0],
                                      cur["y"].to_numpy() - start[:, 1])
    a0 = euler_to_matrix(start[:, 2], start[:, 3], start[:, 4])
    a1 = euler_to_matrix(*cur[["phi", "theta", "psi"]].to_numpy(np.float64).T)
    cur["refine_angle_deg"] = angular_distance_deg(a0, a1)
    cur.attrs["refine_seconds"] = time.perf_counter() - t0
    cur.attrs["refine_stages"] = [s.to_dict() for s in stages]
    cur.attrs["refine_method"] = "grid"
    return cur
