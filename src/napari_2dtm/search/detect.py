"""False-alarm threshold and peak extraction.

Rickgauer et al. (2017): under noise each of ``N_trials`` cross-correlations is N(0, 1);
the threshold with ``N_fp`` expected false positives is
``theta = sqrt(2) * erfcinv(2 * N_fp / N_trials)``.

Hits are taken by default on ``zbg`` (:mod:`napari_2dtm.search.background`) with this
threshold, outside contamination (the ``excluded`` map), and a peak that a stronger
neighbour's side lobes explain is dropped (:func:`explain_away`); ``zscore``, ``snr`` and
the p-value's ``neg_log_p`` stay available.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.special import erfc, erfcinv

__all__ = ["false_alarm_threshold", "expected_false_positives", "find_peaks", "extract_hits",
           "DEFAULT_METRIC", "default_metric", "explain_away", "hits_from_candidates",
           "CANDIDATE_METRICS"]

HIT_COLUMNS = ["x", "y", "phi", "theta", "psi", "defocus_a", "zscore", "snr", "mip"]

#: the statistic hits are detected on unless the user picks another
DEFAULT_METRIC = "zbg"


def default_metric(maps) -> str:
    """:data:`DEFAULT_METRIC` when ``maps`` has it, else ``zscore`` (results made before
    it existed, or by other programs)."""
    return DEFAULT_METRIC if DEFAULT_METRIC in maps else "zscore"


def false_alarm_threshold(n_trials: float, n_false_positives: float = 1.0) -> float:
    """``sqrt(2) * erfcinv(2 * N_fp / N_trials)``."""
    if n_trials <= 0:
        raise ValueError("n_trials must be > 0")
    return float(np.sqrt(2.0) * erfcinv(min(1.0, 2.0 * n_false_positives / n_trials)))


def expected_false_positives(threshold, n_trials: float):
    """Expected number of noise trials above ``threshold`` (Gaussian tail)."""
    return n_trials * 0.5 * erfc(np.asarray(threshold, dtype=np.float64) / np.sqrt(2.0))


def find_peaks(score: np.ndarray, threshold: float, radius_px: float = 10.0,
               mask: np.ndarray | None = None, max_peaks: int | None = None) -> np.ndarray:
    """Peaks of ``score`` above ``threshold``, at least ``radius_px`` apart.

    Returns ``(n, 2)`` integer ``(row, col)`` sorted by decreasing score. Candidates are
    local maxima within a disk (vectorised); the few survivors are then suppressed
    greedily, strongest first, so two peaks are never closer than the radius.
    """
    s = np.asarray(score, dtype=np.float32)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    radius_px = max(float(radius_px), 1.0)
    # A square inscribed in the disk gives a superset of the disk's local maxima with a
    # separable (fast) filter; the greedy pass below enforces the exact disk radius.
    half = max(1, int(np.floor(radius_px / np.sqrt(2.0))))
    mx = ndimage.maximum_filter(s, size=2 * half + 1, mode="constant", cval=-np.inf)
    cand = np.argwhere((s == mx) & (s >= threshold) & np.isfinite(s))
    if len(cand) == 0:
        return np.zeros((0, 2), int)
    order = np.argsort(-s[cand[:, 0], cand[:, 1]], kind="stable")
    cand = cand[order]
    tree = cKDTree(cand)
    keep = np.ones(len(cand), bool)
    for i in range(len(cand)):
        if not keep[i]:
            continue
        for j in tree.query_ball_point(cand[i], radius_px - 1e-9):
            if j > i:
                keep[j] = False
    out = cand[keep]
    return out[:max_peaks] if max_peaks else out


def explain_away(peaks: np.ndarray, height: np.ndarray, sigma: np.ndarray, lobe,
                 n_sigma: float = 3.0, significant: np.ndarray | None = None) -> np.ndarray:
    """Drop the peaks that a stronger neighbour's side lobes explain.

    peaks: ``(n, 2)`` (row, col); height: ``MIP - mean`` and sigma: the background spread,
    ``(ny, nx)`` maps; lobe: ``lobe[d]``, the side-lobe height at distance ``d`` px relative
    to the particle's own peak (:func:`napari_2dtm.search.self_match.self_inflation`).
    Strongest first, a peak is kept unless some kept peak ``k`` at distance ``d`` has
    ``h <= lobe[d] * h_k + n_sigma * sigma``. significant: ``(n,)`` bool, the peaks above
    the false-alarm threshold (default all): only those explain others or are explained
    (noise peaks explain nothing, and the ones below stay as the population a review's
    noise model is compared with). Returns the kept peaks in their input order.
    """
    lobe = np.asarray(lobe, np.float64)
    if len(peaks) < 2 or lobe.size < 2:
        return peaks
    h = height[peaks[:, 0], peaks[:, 1]].astype(np.float64)
    sg = sigma[peaks[:, 0], peaks[:, 1]].astype(np.float64)
    reach = len(lobe) - 1
    tree = cKDTree(peaks)
    near = tree.query_ball_point(peaks, reach - 1e-9)
    sig = np.ones(len(peaks), bool) if significant is None else np.asarray(significant, bool)
    kept = ~sig  # the others are left alone
    for i in np.argsort(-h, kind="stable"):
        if not sig[i]:
            continue
        j = np.asarray([k for k in near[i] if kept[k] and sig[k]], dtype=np.intp)
        if j.size:
            d = np.hypot(*(peaks[j] - peaks[i]).T)
            if np.any(h[i] <= lobe[np.rint(d).astype(int)] * h[j] + n_sigma * sg[i]):
                continue
        kept[i] = True
    return peaks[kept]


def extract_hits(result, metric: str | None = None, threshold: float | None = None,
                 radius_px: float | None = None, mask: np.ndarray | None = None,
                 ctf=None) -> pd.DataFrame:
    """Hits table from a :class:`~napari_2dtm.search.engine.SearchResult`.

    metric: a map name (default :func:`default_metric`: ``zbg``, where pixels with
    ``unexplained`` image energy >= ``u_max`` are left out; ``zscore``, ``snr``, ``mip``,
    or ``neg_log_p`` when present, see
    :func:`napari_2dtm.search.pvalue.add_neg_log_p`: hits are then taken from the p-value's
    population only; compute it with the same ``mask`` as here);
    threshold defaults to the false-alarm threshold of the search (for ``neg_log_p``:
    ``t = ln(N_population / N_fp)``, N_fp from the config); radius_px (search
    pixels) to the config's peak radius; mask: boolean map (True = allowed).
    Columns: x, y (input-micrograph pixels), phi, theta, psi (deg), defocus_a, zscore,
    snr, mip, plus defocus1_a, defocus2_a, astigmatism_angle_deg and x_search/y_search.
    """
    maps = result.maps
    if metric is None:
        metric = default_metric(maps)
    if getattr(result, "candidates", None) is not None:  # a fast search: refined candidates
        return hits_from_candidates(result, metric, threshold)
    if metric not in maps:
        raise ValueError(f"no map {metric!r} in the result (have {sorted(maps)})")
    thr = result.threshold if threshold is None else float(threshold)
    if radius_px is None:
        radius_px = (result.metadata.get("peak_radius_px")
                     or result.metadata.get("config", {}).get("peak_radius_px") or 10.0)
    valid = result.valid_mask
    m = valid if mask is None else (mask if valid is None else (mask & valid))
    detection = result.metadata.get("detection", {})
    clean = maps["excluded"] < 0.5 if metric == "zbg" and "excluded" in maps else None
    if clean is not None:
        m = clean if m is None else (m & clean)
    if metric == "neg_log_p":
        # -ln p is a calibrated p-value only on its ranked population (local maxima of
        # the z-score by default); other pixels of the map are a display interpolation.
        from .pvalue import pvalue_threshold, result_population_mask  # noqa: PLC0415

        pop = result_population_mask(result, mask)
        if pop is not None:
            m = pop
            if threshold is None:
                n_fp = result.metadata.get("config", {}).get("n_false_positives", 1.0)
                thr = pvalue_threshold(max(int(pop.sum()), 1), n_fp)
    if metric == "zbg" and detection.get("lobe") and {"mean", "sigma_bg"} <= set(maps):
        # Side lobes are explained by every strong peak, also one under the user's mask
        # (masking a particle must not turn its side lobes into hits): peaks first,
        # then the mask.
        base = valid if clean is None else (clean if valid is None else valid & clean)
        pk = find_peaks(maps[metric], thr, radius_px, mask=base)
        sig = maps[metric][pk[:, 0], pk[:, 1]] >= result.threshold
        pk = explain_away(pk, maps["mip"] - maps["mean"], maps["sigma_bg"], detection["lobe"],
                          detection.get("lobe_n_sigma", 3.0), significant=sig)
        if m is not None:
            pk = pk[m[pk[:, 0], pk[:, 1]]]
    else:
        pk = find_peaks(maps[metric], thr, radius_px, mask=m)
    rows, cols = pk[:, 0], pk[:, 1]
    scale = result.pixel_size_a / result.input_pixel_size_a
    df = pd.DataFrame({
        "x": cols * scale,
        "y": rows * scale,
        "phi": maps["phi"][rows, cols].astype(np.float64),
        "theta": maps["theta"][rows, cols].astype(np.float64),
        "psi": maps["psi"][rows, cols].astype(np.float64),
        "defocus_a": maps["defocus"][rows, cols].astype(np.float64),
    })
    for name in ("zbg", "zscore", "snr", "mip", "neg_log_p"):
        if name in maps:
            df[name] = maps[name][rows, cols].astype(np.float64)
    if "pixel_size" in maps:
        df["pixel_size_a"] = maps["pixel_size"][rows, cols].astype(np.float64)
    off = maps["defocus_offset"][rows, cols].astype(np.float64)
    if ctf is None:
        c = result.metadata.get("config", {}).get("ctf", {})
        d1, d2, ang = c.get("defocus1_a", np.nan), c.get("defocus2_a", np.nan), c.get(
            "astigmatism_angle_deg", 0.0)
    else:
        d1, d2, ang = ctf.defocus1_a, ctf.defocus2_a, ctf.astigmatism_angle_deg
    df["defocus1_a"] = d1 + off
    df["defocus2_a"] = d2 + off
    df["astigmatism_angle_deg"] = ang
    df["x_search"] = cols
    df["y_search"] = rows
    return df.reset_index(drop=True)


#: statistics a fast search's candidates carry (hits are detected on one of them)
CANDIDATE_METRICS = ("zbg", "zscore", "snr", "mip")


def hits_from_candidates(result, metric: str = "zbg", threshold: float | None = None) -> pd.DataFrame:
    """The hits of a fast search (:mod:`napari_2dtm.search.fast`): its refined candidates
    with ``metric >= threshold`` (default the exhaustive-equivalent false-alarm
    threshold), strongest first."""
    from napari_2dtm.errors import InputError  # noqa: PLC0415

    cand = result.candidates
    if metric not in CANDIDATE_METRICS:
        raise InputError(f"a fast search detects hits on {', '.join(CANDIDATE_METRICS)}, not "
                         f"{metric!r} (no p-value map: its local maxima would be the coarse "
                         "stage's)")
    thr = result.threshold if threshold is None else float(threshold)
    keep = cand[cand[metric] >= thr].sort_values(metric, ascending=False, kind="stable")
    return keep.drop(columns=["sigma_bg", "height"], errors="ignore").reset_index(drop=True)
