"""The 2DTM p-value: a joint detection statistic from the z-score and the SNR.

Zhang, Cossio, Rangan, Lucas & Grigorieff, *IUCrJ* 12 (2025), as released by the authors
(see ``shared/reference/pvalue-classification-reconstruction.md`` section 1). For a
population of ``N`` candidates from **one image** with z-scores ``z_i`` and SNRs ``s_i``:

1. **Rank-probit transform**, each metric separately: ordinal ranks ``r = 1..N`` (ties
   broken by order), ``u = (r - 1/2) / N``, ``a = Phi^-1(u)``. Each probit has an almost
   exactly standard-normal marginal whatever the raw scale, so the statistic depends on
   the ranks only.
2. **Null fit**: a zero-mean anisotropic 2-D Gaussian whose covariance is the (not
   mean-subtracted) second-moment matrix ``C = (1/N) sum [a_z, a_s]^T [a_z, a_s]``,
   eigenvalues ``A^2 >= B^2``, major axis at angle ``w``. Targets are rare, so this is in
   effect a fit to the noise.
3. **One-quadrant tail**: for ``a_z > 0`` and ``a_s > 0``, rotate by ``-w``, scale by
   ``1/A, 1/B`` and take ``r^2`` (equivalently the Mahalanobis radius
   ``a^T C^-1 a``); ``p = exp(-r^2/2) * gamma / (2 pi)`` with
   ``gamma = atan2(1, sin(2w) (B/A - A/B) / 2)``, the opening angle of the whitened first
   quadrant. Points outside the first quadrant get ``p = 1``. The output is ``-ln p``.

Under the null, ``P(-ln p >= t) = exp(-t)`` for ``t >= ln(2 pi / gamma)`` (``gamma/(2 pi)``
is the orthant probability ``1/4 + arcsin(rho)/(2 pi)``). So ``N * exp(-t)`` candidates of
a pure-noise population pass ``t``: the fixed cutoff :data:`FIXED_THRESHOLD` = 8 of the
authors' tools lets ``3.4e-4 * N`` noise candidates through (34 for 10^5 local maxima);
:func:`pvalue_threshold` ``t = ln(N / N_fp)`` targets ``N_fp`` false positives per image.

Population. The default, as in the authors' tool, is the **local maxima of the z-score
map** (maximum of a ``(2 d + 1)^2`` window, ``d = min_distance_px = 10``, z > 0, inside the
mask); ``population="all"`` ranks every allowed pixel (as Leopard-EM does). The two give
different ``-ln p`` scales for the same cutoff, which is why the threshold rule uses
``N_population``.

When it helps and when it does not (note section 1.4, simulated populations):

* It wins when targets are raised on **both** axes and the noise correlation ``rho``
  between z-score and SNR is low or moderate: ``rho = 0``, shift (3, 3): 92 targets of
  200 at 10 allowed false positives, against 23 (z only) and 16 (SNR only).
* A single metric wins when the target direction lines up with that metric alone, or when
  ``rho`` is high: ``rho = 0.8``, shift (4.5, 2.5): 27 against 118 for the z-score.
* It is rank-based and *relative* to each image: a candidate's probit cannot exceed
  ``Phi^-1(1 - 1/(2N))``, so with a small population, strongly correlated z-score and SNR
  (white noise, many orientations) or many targets per image (they take the top ranks
  and each other's significance), it can detect less than the z-score at its false-alarm
  threshold. It is a combination of two imperfect metrics, not a uniformly more powerful
  test. Use it on large images with rare targets and with a non-uniform background (where
  the z-score and SNR disagree on noise), and compare with the z-score.
* Measured on simulated 1BD2 micrographs (320^2 at 3 A, 15 degree grid,
  ``benchmarks/bench_pvalue.py``), each metric at one expected false positive: 2 particles
  per image, recall -ln p 9/16 vs z-score 6/16 (SNR 16/16); 6 per image, 4/18 vs 9/18.
  Pure noise: 1.06 candidates per image at ``t = ln(N_pop)`` (16 images, N_pop ~ 175).

Nothing here imports Qt or napari; the Hits widget and the CLI call these functions.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage
from scipy.special import ndtri

__all__ = [
    "FIXED_THRESHOLD", "PValueFit", "fit_neg_log_p", "neg_log_p", "fit_neg_log_p_map",
    "neg_log_p_map", "population_mask", "population_size", "pvalue_threshold",
    "expected_false_positives_pvalue", "add_neg_log_p",
]

#: The fixed ``-ln p`` cutoff of the authors' tools (2DTM_postprocess_tool, Leopard-EM).
FIXED_THRESHOLD = 8.0

POPULATIONS = ("local_maxima", "all")


@dataclasses.dataclass
class PValueFit:
    """The fitted null and the ``-ln p`` values of one population.

    neg_log_p: ``(N,)`` float64 per candidate (:func:`fit_neg_log_p`) or a ``(ny, nx)``
        float32 map (:func:`fit_neg_log_p_map`).
    covariance: ``(2, 2)`` second-moment matrix of the probits, order (z-score, SNR).
    n_population: number of candidates ``N`` that were ranked.
    gamma: opening angle (radians) of the whitened first quadrant; ``gamma / (2 pi)`` is
        the null probability of the first quadrant.
    population: ``"local_maxima"``, ``"all"`` or ``"samples"`` (1-D input).
    min_distance_px: the local-maximum window half-width (maps, local maxima only).
    population_mask: ``(ny, nx)`` bool, True at the ranked pixels (maps only).
    quadrants: 1 (both probits > 0) or 3 (either > 0, as released by the authors).
    """

    neg_log_p: np.ndarray
    covariance: np.ndarray
    n_population: int
    gamma: float
    population: str = "samples"
    min_distance_px: float | None = None
    population_mask: np.ndarray | None = None
    quadrants: int = 1

    @property
    def rho(self) -> float:
        """Correlation of the probits (the fitted noise correlation of z-score and SNR)."""
        c = self.covariance
        return float(c[0, 1] / math.sqrt(c[0, 0] * c[1, 1]))

    @property
    def major_axis_deg(self) -> float:
        """Angle ``w`` of the major axis from the z-score axis, degrees in (-90, 90]."""
        c = self.covariance
        return float(np.degrees(0.5 * math.atan2(2.0 * c[0, 1], c[0, 0] - c[1, 1])))

    @property
    def orthant_probability(self) -> float:
        """``gamma / (2 pi)``: null probability that both probits are positive."""
        return self.gamma / (2.0 * math.pi)

    def threshold(self, n_false_positives: float = 1.0) -> float:
        """``t = ln(N / N_fp)`` for this population."""
        return pvalue_threshold(self.n_population, n_false_positives)

    def expected_false_positives(self, t):
        """Null candidates expected at ``-ln p >= t`` in this population."""
        return expected_false_positives_pvalue(t, self.n_population, self.gamma)

    def to_dict(self) -> dict:
        """JSON-friendly summary (no arrays), stored as ``metadata["neg_log_p"]``."""
        return {
            "population": self.population,
            "min_distance_px": self.min_distance_px,
            "n_population": int(self.n_population),
            "covariance": self.covariance.tolist(),
            "rho": self.rho,
            "gamma_rad": self.gamma,
            "major_axis_deg": self.major_axis_deg,
            "quadrants": self.quadrants,
            "threshold_ln_n_population": self.threshold(1.0),
            "fixed_threshold": FIXED_THRESHOLD,
        }


def _probits(x: np.ndarray) -> np.ndarray:
    """Ordinal ranks (ties by order of appearance) -> ``Phi^-1((r - 1/2) / N)``."""
    n = x.size
    order = np.argsort(x, kind="stable")
    grid = ndtri((np.arange(1, n + 1) - 0.5) / n)
    out = np.empty(n)
    out[order] = grid
    return out


def _fit(az: np.ndarray, as_: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Second-moment matrix, its determinant and ``gamma``.

    ``math.fsum`` is exactly rounded, so ``C`` does not depend on the order of the
    candidates (``-ln p`` is bit-identical under permutation); the closed-form 2x2
    eigen-quantities are symmetric in the two metrics (bit-identical when swapped).
    """
    n = az.size
    czz = math.fsum((az * az).tolist()) / n
    css = math.fsum((as_ * as_).tolist()) / n
    czs = math.fsum((az * as_).tolist()) / n
    det = czz * css - czs * czs
    half_diff = math.hypot(0.5 * (czz - css), czs)
    lam_max = 0.5 * (czz + css) + half_diff
    lam_min = 0.5 * (czz + css) - half_diff
    if not (lam_min > 1e-12 * lam_max and det > 0):
        raise ValueError("z-score and SNR rank in the same order over the whole population: "
                         "their joint p-value is undefined (use one metric)")
    a, b = math.sqrt(lam_max), math.sqrt(lam_min)
    # sin(2w) of the major axis: tan(2w) = 2 czs / (czz - css); 0 for an isotropic fit,
    # where B/A - A/B = 0 anyway. Independent of the eigenvector's sign.
    sin2w = 2.0 * czs / (lam_max - lam_min) if lam_max > lam_min else 0.0
    gamma = math.atan2(1.0, 0.5 * sin2w * (b / a - a / b))
    cov = np.array([[czz, czs], [czs, css]])
    return cov, det, gamma


def _neg_log_p_from(az, as_, cov, det, gamma, quadrants: int) -> np.ndarray:
    """``-ln p`` of probit pairs given the fitted null (``r^2 = a^T C^-1 a``)."""
    czz, czs, css = cov[0, 0], cov[0, 1], cov[1, 1]
    cross = az * as_  # computed first: keeps the result symmetric under swapping
    r2 = (css * (az * az) + czz * (as_ * as_) - (2.0 * czs) * cross) / det
    out = 0.5 * r2 - math.log(gamma / (2.0 * math.pi))
    inside = (az > 0) & (as_ > 0) if quadrants == 1 else (az > 0) | (as_ > 0)
    return np.where(inside, out, 0.0)


def _check_quadrants(quadrants):
    if quadrants not in (1, 3):
        raise ValueError(f"quadrants must be 1 or 3, got {quadrants!r}")


def fit_neg_log_p(zscore, snr, quadrants: int = 1) -> PValueFit:
    """Rank-probit transform, null fit and ``-ln p`` of a population of candidates.

    zscore, snr: ``(N,)`` arrays (any shape, flattened), the population itself (e.g. the
    values at the local maxima of one image). quadrants: 1 (default: both probits > 0)
    or 3 (either > 0; the authors' option for small particles, which reuses the
    one-quadrant ``gamma``, so it is not an exact three-quadrant probability).
    Returns a :class:`PValueFit` whose ``neg_log_p`` is ``(N,)`` float64, 0 outside the
    accepted quadrant(s).
    """
    _check_quadrants(quadrants)
    z = np.asarray(zscore, dtype=np.float64).ravel()
    s = np.asarray(snr, dtype=np.float64).ravel()
    if z.shape != s.shape:
        raise ValueError(f"zscore and snr differ in size: {z.size} vs {s.size}")
    if z.size < 3:
        raise ValueError(f"the p-value needs a population of at least 3 candidates, got {z.size}")
    if not (np.all(np.isfinite(z)) and np.all(np.isfinite(s))):
        raise ValueError("zscore and snr must be finite")
    az, as_ = _probits(z), _probits(s)
    cov, det, gamma = _fit(az, as_)
    nlp = _neg_log_p_from(az, as_, cov, det, gamma, quadrants)
    return PValueFit(neg_log_p=nlp, covariance=cov, n_population=z.size, gamma=gamma,
                     population="samples", quadrants=quadrants)


def neg_log_p(zscore, snr, quadrants: int = 1) -> np.ndarray:
    """``-ln p`` per candidate of a population: ``(N,)`` float64 (see :func:`fit_neg_log_p`)."""
    return fit_neg_log_p(zscore, snr, quadrants).neg_log_p


def _allowed(zscore_map, mask) -> np.ndarray:
    ok = np.isfinite(zscore_map)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != zscore_map.shape:
            raise ValueError(f"mask shape {m.shape} differs from the map shape {zscore_map.shape}")
        ok &= m
    return ok


def population_mask(zscore_map, population: str = "local_maxima", min_distance_px: float = 10,
                    mask=None) -> np.ndarray:
    """``(ny, nx)`` bool: the pixels ranked by the p-value.

    ``"local_maxima"``: pixels equal to the maximum of the z-score over the
    ``(2 d + 1)^2`` window around them (``d = round(min_distance_px)``, pixels outside
    ``mask`` ignored), with z > 0 (as the authors' ``peak_local_max`` call), inside
    ``mask``; of a plateau of equal neighbours one pixel is kept. ``"all"``: every
    finite pixel inside ``mask``. mask: ``(ny, nx)`` bool, True = allowed (pass the
    search's valid region, combined with any exclusion mask).
    """
    z = np.asarray(zscore_map, dtype=np.float32)
    if z.ndim != 2:
        raise ValueError(f"zscore_map must be 2D, got shape {z.shape}")
    if population not in POPULATIONS:
        raise ValueError(f"population must be one of {POPULATIONS}, got {population!r}")
    ok = _allowed(z, mask)
    if population == "all":
        return ok
    d = int(round(float(min_distance_px)))
    if d < 1:
        raise ValueError(f"min_distance_px must be >= 1, got {min_distance_px}")
    zm = np.where(ok, z, -np.inf)
    mx = ndimage.maximum_filter(zm, size=2 * d + 1, mode="constant", cval=-np.inf)
    peaks = ok & (zm == mx) & (zm > 0)
    # Exactly equal neighbours (a flat top) would count one peak several times.
    lab, n = ndimage.label(peaks, structure=np.ones((3, 3), bool))
    if n < peaks.sum():
        first = ndimage.minimum(np.arange(lab.size).reshape(lab.shape), lab, np.arange(1, n + 1))
        peaks = np.zeros_like(peaks)
        peaks.flat[np.asarray(first, dtype=np.int64)] = True
    return peaks


def population_size(zscore_map, population: str = "local_maxima", min_distance_px: float = 10,
                    mask=None) -> int:
    """Number of candidates ``N_population`` that :func:`neg_log_p_map` ranks."""
    return int(population_mask(zscore_map, population, min_distance_px, mask).sum())


def fit_neg_log_p_map(zscore_map, snr_map, population: str = "local_maxima",
                      min_distance_px: float = 10, mask=None, fill: str = "disk",
                      quadrants: int = 1) -> PValueFit:
    """``-ln p`` map of one image, with the fit and the population.

    zscore_map, snr_map: ``(ny, nx)`` maps of one search (partial maps of a running search
    work too: pass the search's valid region as ``mask``, e.g. ``Search.valid_mask()``).
    population, min_distance_px, mask: see :func:`population_mask`.

    The population pixels get their exact ``-ln p``. With the local-maxima population
    the other pixels (``fill``) get:

    * ``"disk"`` (default): the value of the candidate within ``d // 2`` pixels (a disk;
      candidates are more than ``d`` apart, so disks do not overlap), so that each
      candidate shows as a spot at any zoom; 0 elsewhere. Only the centre pixel is the
      candidate: ``extract_hits(result, metric="neg_log_p")`` detects on population
      pixels only.
    * ``"zero"``: 0 (p = 1).

    (A per-pixel extension by rank interpolation was tried: it is 0 almost everywhere,
    because local maxima lie in the upper tail of the pixel values.) Pixels outside
    ``mask`` (or non-finite) are 0. Returns a :class:`PValueFit` with a ``(ny, nx)``
    float32 ``neg_log_p`` map and ``population_mask``.
    """
    _check_quadrants(quadrants)
    if fill not in ("disk", "zero"):
        raise ValueError(f"fill must be 'disk' or 'zero', got {fill!r}")
    z = np.asarray(zscore_map, dtype=np.float32)
    s = np.asarray(snr_map, dtype=np.float32)
    if z.shape != s.shape:
        raise ValueError(f"zscore and SNR maps differ in shape: {z.shape} vs {s.shape}")
    ok = _allowed(z, mask) & np.isfinite(s)
    pop = population_mask(z, population, min_distance_px, ok)
    n = int(pop.sum())
    if n < 3:
        raise ValueError(f"the p-value needs at least 3 candidates, the population has {n} "
                         f"({population}, min distance {min_distance_px} px)")
    ys, xs = np.nonzero(pop)
    fit = fit_neg_log_p(z[ys, xs].astype(np.float64), s[ys, xs].astype(np.float64), quadrants)
    vals = fit.neg_log_p.astype(np.float32)
    out = np.zeros(z.shape, np.float32)
    r = int(round(float(min_distance_px))) // 2
    if fill == "disk" and population == "local_maxima" and r >= 1:
        sig = vals > 0
        oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
        disk = oy**2 + ox**2 <= r * r
        yy = (ys[sig, None] + oy[disk][None]).ravel()
        xx = (xs[sig, None] + ox[disk][None]).ravel()
        vv = np.repeat(vals[sig], int(disk.sum()))
        inside = (yy >= 0) & (yy < z.shape[0]) & (xx >= 0) & (xx < z.shape[1])
        yy, xx, vv = yy[inside], xx[inside], vv[inside]
        keep = ok[yy, xx]
        np.maximum.at(out, (yy[keep], xx[keep]), vv[keep])
    out[ys, xs] = vals
    fit.neg_log_p = out
    fit.population = population
    fit.min_distance_px = float(min_distance_px) if population == "local_maxima" else None
    fit.population_mask = pop
    return fit


def neg_log_p_map(zscore_map, snr_map, population: str = "local_maxima",
                  min_distance_px: float = 10, mask=None, fill: str = "disk",
                  quadrants: int = 1) -> np.ndarray:
    """``(ny, nx)`` float32 ``-ln p`` map; see :func:`fit_neg_log_p_map` (which also returns
    ``n_population``, the fit and the population mask)."""
    return fit_neg_log_p_map(zscore_map, snr_map, population, min_distance_px, mask, fill,
                             quadrants).neg_log_p


def pvalue_threshold(n_population: float, n_false_positives: float = 1.0) -> float:
    """``t = ln(N_population / N_fp)``: ``-ln p`` cutoff for ``N_fp`` expected noise hits."""
    if n_population <= 0 or n_false_positives <= 0:
        raise ValueError("n_population and n_false_positives must be > 0")
    return float(math.log(n_population / n_false_positives))


def expected_false_positives_pvalue(t, n_population: float, gamma: float | None = None):
    """Null candidates expected at ``-ln p >= t``: ``N * exp(-t)``.

    Exact for ``t >= ln(2 pi / gamma)``; below it every first-quadrant candidate passes, so
    with ``gamma`` given the count is capped at ``N * gamma / (2 pi)`` (and is ``N`` for
    ``t <= 0``). Without ``gamma`` the cap is ``N``. Works on arrays of ``t``.
    """
    t = np.asarray(t, dtype=np.float64)
    e = n_population * np.exp(-np.maximum(t, 0.0))
    if gamma is not None:
        e = np.where(t > 0, np.minimum(e, n_population * gamma / (2.0 * math.pi)), n_population)
    return float(e) if e.ndim == 0 else e


def add_neg_log_p(result, population: str = "local_maxima", min_distance_px: float = 10,
                  mask=None, quadrants: int = 1) -> PValueFit:
    """Add ``maps["neg_log_p"]`` to a :class:`~napari_2dtm.search.engine.SearchResult`.

    The population is ranked inside ``result.valid_mask`` (and ``mask``, True = allowed,
    at the search pixel size). Also stores the fit summary as ``metadata["neg_log_p"]``
    (written to ``search.json`` by :func:`~napari_2dtm.search.results.write_results`, which writes
    the map as ``neg_log_p.mrc``) and, when the result has hits, their ``neg_log_p``
    column. Returns the :class:`PValueFit`.
    """
    valid = result.valid_mask
    m = valid if mask is None else (np.asarray(mask, bool) if valid is None else (mask & valid))
    fit = fit_neg_log_p_map(result.maps["zscore"], result.maps["snr"], population,
                            min_distance_px, m, quadrants=quadrants)
    result.maps["neg_log_p"] = fit.neg_log_p
    meta = fit.to_dict()
    meta["exclusion_mask"] = mask is not None
    result.metadata["neg_log_p"] = meta
    hits = result.hits
    if hits is not None and len(hits) and {"x_search", "y_search"} <= set(hits.columns):
        hits["neg_log_p"] = fit.neg_log_p[hits["y_search"].to_numpy(int),
                                          hits["x_search"].to_numpy(int)].astype(np.float64)
    return fit


def result_population_mask(result, mask=None) -> np.ndarray | None:
    """The population of ``result.maps["neg_log_p"]`` recomputed from its z-score map.

    Uses ``metadata["neg_log_p"]`` (population kind and min distance), the valid region and
    ``mask``. None when the result has no p-value map.
    """
    meta = result.metadata.get("neg_log_p")
    if "neg_log_p" not in result.maps or not meta:
        return None
    valid = result.valid_mask
    m = valid if mask is None else (np.asarray(mask, bool) if valid is None else (mask & valid))
    return population_mask(result.maps["zscore"], meta.get("population", "local_maxima"),
                           meta.get("min_distance_px") or 10, m)
