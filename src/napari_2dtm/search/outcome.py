"""What a search gives back: live :class:`SearchProgress` snapshots and the final
:class:`SearchResult` (maps, hits, the ``search.json`` metadata).

:func:`snapshot` and :func:`finish` read a :class:`~napari_2dtm.search.engine.Search`'s
statistics; the detection maps (``zbg``, its background and the contamination mask) come
from :mod:`napari_2dtm.search.background`, with the template's self-match
(:mod:`napari_2dtm.search.self_match`) computed once per search and shared by the live
snapshots and the final maps.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from napari_2dtm.core.fft import record_of

from .background import live_zbg, search_detection_maps
from .statistics import parameter_maps, score_maps

__all__ = ["SearchProgress", "SearchResult", "snapshot", "finish"]


@dataclasses.dataclass
class SearchProgress:
    """A snapshot of a running search; maps are NumPy arrays at the search pixel size."""

    fraction: float
    n_done: int
    n_total: int
    elapsed_s: float
    orientations_per_s: float
    eta_s: float
    mip: np.ndarray
    zscore: np.ndarray
    snr: np.ndarray
    pixel_size_a: float
    done: bool = False
    #: the default detection statistic so far (None before the template's self-match)
    zbg: np.ndarray | None = None


@dataclasses.dataclass
class SearchResult:
    """Final maps, hits and metadata of one search.

    maps: name -> ``(ny, nx)`` float32 at ``pixel_size_a`` (the search pixel size):
    mip, zscore, snr, mean, std, phi, theta, psi (deg), defocus (absolute mean defocus,
    A), defocus_offset, pixel_size (A, when pixel-size planes were searched), zbg,
    sigma_bg and excluded (:mod:`napari_2dtm.search.background`).
    hits: DataFrame with x, y in input-micrograph pixels (0-based particle centres).
    """

    maps: dict
    pixel_size_a: float
    input_pixel_size_a: float
    threshold: float
    n_trials: float
    hits: Any
    metadata: dict
    valid_mask: np.ndarray | None = None
    #: a fast search's refined candidates (every statistic; hits are those above the
    #: threshold: :func:`napari_2dtm.search.fast.hits_from_candidates`); None otherwise
    candidates: Any = None

    @property
    def binning(self) -> float:
        return self.pixel_size_a / self.input_pixel_size_a


def snapshot(search, done, total, elapsed, done_flag=False) -> SearchProgress:
    """A :class:`SearchProgress` of ``search`` (a running
    :class:`~napari_2dtm.search.engine.Search`) after ``done`` CCs per pixel."""
    n_df_px = search.n_planes
    n = max(1, done)
    valid = search.valid_mask()
    if done_flag and search.result is not None:
        maps = search.result.maps
        zbg = maps.get("zbg")
    else:
        maps, _, _ = score_maps(search.stats, n, valid, full=True)
        zbg = live_zbg(search, maps, valid)
    rate = (done / n_df_px) / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / n_df_px / rate if rate > 0 else float("inf")
    return SearchProgress(
        fraction=done / total, n_done=done, n_total=total, elapsed_s=elapsed,
        orientations_per_s=rate, eta_s=eta, mip=maps["mip"], zscore=maps["zscore"],
        snr=maps["snr"], pixel_size_a=search.pixel_size_a, done=done_flag, zbg=zbg,
    )


def finish(search, elapsed) -> SearchResult:
    """The :class:`SearchResult` of a finished search: maps, metadata, hits."""
    from .detect import extract_hits, false_alarm_threshold  # noqa: PLC0415

    n = search.n_cc_total
    valid = search.valid_mask()
    maps, gmean, gsig = score_maps(search.stats, n, valid)
    maps.update(parameter_maps(search.stats.best, valid, search.orientations,
                               search.defocus_offsets_a, search.pixel_size_a + search.pixel_offsets_a))
    maps["defocus"] = (search.config.ctf.defocus_mean_a + maps["defocus_offset"]).astype(np.float32)
    n_valid = int(valid.sum())
    n_trials = float(n_valid) * n
    thr = false_alarm_threshold(n_trials, search.config.n_false_positives)
    det_maps, detection = search_detection_maps(search, maps, valid)
    maps.update(det_maps)
    meta = {
        "config": search.config.to_dict(),
        "input_shape": list(search.input_shape),
        "input_pixel_size_a": search.input_pixel_size_a,
        "search_pixel_size_a": search.pixel_size_a,
        "search_shape": list(search.image_shape),
        "binning": list(search.prepared.binning),
        "frame_shape": list(search.frame),
        "template": {"source": search.template.source, "box": search.template.box,
                     "pixel_size_a": search.template.pixel_size_a,
                     "search_box": search.box, "params": _jsonable(search.template.params)},
        "n_orientations": search.n_orientations,
        "n_orientations_total": search.n_orientations_total,
        "orientation_range": list(search.orientation_range),
        "defocus_offsets_a": search.defocus_offsets_a.tolist(),
        "pixel_size_offsets_a": search.pixel_offsets_a.tolist(),
        "n_cc_per_pixel": n,
        "n_valid_pixels": n_valid,
        "n_trials": n_trials,
        "threshold": thr,
        "border_px": search.border_px,
        "particle_radius_px": search.particle_radius_px,
        "peak_radius_px": search.peak_radius_px,
        "cc_global_mean": gmean,
        "cc_global_std": gsig,
        "detection": detection,
        "device": search.backend.name,
        "device_name": search.backend.description,
        "fft": record_of(search._fft, search._restored_fft),
        "elapsed_s": elapsed,
        "timing": {**search._timing, "self_match_s": search._self_match_s},
        "cc_per_s": n / elapsed if elapsed > 0 else None,
        "identity": search.identity(),
        "resumed_from_cc": int(search._resumed_from),
        "euler_convention": "ZYZ (RELION/cisTEM), degrees",
        "pixel_origin": "0-based pixel centres; x = column, y = row",
    }
    res = SearchResult(maps=maps, pixel_size_a=search.pixel_size_a,
                       input_pixel_size_a=search.input_pixel_size_a, threshold=thr,
                       n_trials=n_trials, hits=None, metadata=meta, valid_mask=valid)
    res.hits = extract_hits(res, ctf=search.config.ctf)
    return res


def _jsonable(d):
    try:
        json.dumps(d)
        return d
    except TypeError:
        return {k: str(v) for k, v in dict(d).items()}

