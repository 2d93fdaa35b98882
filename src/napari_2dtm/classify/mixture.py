"""The features and the Gaussian mixture of in situ classification (Lucas et al., eLife 2022).

For K templates and a reference template ``r`` each hit gets the (K-1)-vector of features

    x_i = [log2(SNR_i,r / SNR_i,k) for k != r]                     (E1 Eq. 2)

and a mixture of K full-covariance Gaussians, one per state, is fitted by EM (E1 Eqs.
3-9). The class priors are either learned or fixed by the user; scikit-learn's
``GaussianMixture`` cannot hold them fixed, hence the small EM here (its learned-prior
fits match scikit-learn's, tested). Each hit gets the posterior probability of every
class (:func:`mixture_posteriors`) and is assigned at a chosen confidence
(:func:`assign_classes`; the paper shows 50 % and 95 %).

Choices made here (see ``docs/classification.md``):

* EM starts from the "highest SNR wins" assignment (the paper's baseline,
  :func:`_initial_state`), so component k starts as the state of template k and the
  labels need no matching afterwards; the start, and hence the fit, is unchanged by the
  choice of reference template.
* :func:`_class_margins` measures how clearly each class's mean favours its own
  template (in standard errors); the model selection of
  :func:`napari_2dtm.classify.result.classify_scores` keeps only fits in which every class
  does.
* Component standard deviations are floored (``sd_floor``, default 0.01 in log2 units,
  i.e. a 0.7 % SNR ratio; real classes are 5-20x wider) so that no component collapses
  onto a couple of hits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy.special import logsumexp

from napari_2dtm.errors import InputError

__all__ = ["log_ratio_features", "MixtureFit", "fit_mixture", "mixture_posteriors",
           "assign_classes"]


def log_ratio_features(snr: np.ndarray, reference: int = 0) -> np.ndarray:
    """``(n, K)`` SNRs -> ``(n, K-1)`` features ``log2(SNR_ref / SNR_k)``, k != ref in order.

    Rows with a non-positive or non-finite SNR get NaN features.
    """
    s = np.asarray(snr, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise InputError(f"need SNRs of two or more templates per hit, got shape {s.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        lg = np.where(s > 0, np.log2(np.where(s > 0, s, 1.0)), np.nan)
    others = [k for k in range(s.shape[1]) if k != reference]
    return lg[:, [reference]] - lg[:, others]


@dataclasses.dataclass
class MixtureFit:
    """A fitted Gaussian mixture.

    means: ``(K, d)``; covariances: ``(K, d, d)``; weights: ``(K,)`` (priors, sum 1);
    log_likelihood: total log-likelihood of the data; mean_log_likelihood: per sample;
    n_iter; converged; weights_fixed: True when the priors were held fixed.
    """

    means: np.ndarray
    covariances: np.ndarray
    weights: np.ndarray
    log_likelihood: float
    mean_log_likelihood: float
    n_iter: int
    converged: bool
    weights_fixed: bool

    @property
    def n_parameters(self) -> int:
        k, d = self.means.shape
        return k * d + k * d * (d + 1) // 2 + (0 if self.weights_fixed else k - 1)

    def bic(self, n_samples: int) -> float:
        """Bayesian information criterion ``-2 log L + p ln n``."""
        return -2.0 * self.log_likelihood + self.n_parameters * math.log(max(n_samples, 1))

    def aic(self) -> float:
        """Akaike information criterion ``-2 log L + 2 p``."""
        return -2.0 * self.log_likelihood + 2.0 * self.n_parameters


def _log_gauss(x: np.ndarray, means: np.ndarray, covs: np.ndarray) -> np.ndarray:
    """``(n, K)`` log N(x_i; mean_k, cov_k) via Cholesky factors."""
    n, d = x.shape
    out = np.empty((n, len(means)))
    for k, (m, c) in enumerate(zip(means, covs)):
        try:
            chol = np.linalg.cholesky(c)
        except np.linalg.LinAlgError:
            raise InputError("a mixture component became singular; add hits or raise the SD floor") from None
        z = np.linalg.solve(chol, (x - m).T)
        out[:, k] = -0.5 * (z * z).sum(0) - np.log(np.diag(chol)).sum() - 0.5 * d * math.log(2 * math.pi)
    return out


def _m_step(x, resp, reg, floor_var, weights_fixed, weights):
    n, d = x.shape
    nk = resp.sum(0) + 10 * np.finfo(resp.dtype).eps
    means = (resp.T @ x) / nk[:, None]
    covs = np.empty((len(nk), d, d))
    for k in range(len(nk)):
        diff = x - means[k]
        c = (resp[:, k] * diff.T) @ diff / nk[k]
        c.flat[:: d + 1] += reg
        if floor_var > 0:
            w, v = np.linalg.eigh(c)
            if w.min() < floor_var:
                c = (v * np.maximum(w, floor_var)) @ v.T
        covs[k] = c
    new_w = weights if weights_fixed else nk / n
    return means, covs, new_w


def fit_mixture(
    x: np.ndarray,
    n_components: int | None = None,
    *,
    priors: Sequence[float] | None = None,
    means_init: np.ndarray | None = None,
    covariances_init: np.ndarray | None = None,
    weights_init: Sequence[float] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-8,
    reg_covar: float = 1e-6,
    sd_floor: float = 0.0,
    seed: int = 0,
) -> MixtureFit:
    """Fit a K-component full-covariance Gaussian mixture to ``x`` by EM.

    x: ``(n, d)`` (or ``(n,)``) features. priors: fixed class weights (normalised; the
    M-step leaves them unchanged); None learns them. Starting point: ``means_init``
    ``(K, d)``, ``covariances_init`` ``(K, d, d)``, ``weights_init`` ``(K,)``; missing parts
    from k-means (``seed``). Iterates like scikit-learn's ``GaussianMixture``: E-step,
    M-step (``reg_covar`` added to the diagonals), stop when the mean log-likelihood
    changes by less than ``tol``. ``sd_floor`` (feature units) floors every component's
    standard deviation along every direction.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise InputError("mixture features must be a finite (n, d) array")
    n, d = x.shape
    if priors is not None:
        p = np.asarray(priors, dtype=np.float64).ravel()
        if np.any(p <= 0) or not np.all(np.isfinite(p)):
            raise InputError(f"fixed priors must be positive, got {list(p)}")
        k = len(p) if n_components is None else int(n_components)
        if len(p) != k:
            raise InputError(f"{len(p)} priors for {k} classes")
        weights = p / p.sum()
    else:
        k = int(n_components) if n_components is not None else (
            len(means_init) if means_init is not None else 2)
        weights = None
    if n < k:
        raise InputError(f"{n} samples are too few to fit {k} classes")
    if means_init is None or covariances_init is None or (weights is None and weights_init is None):
        from scipy.cluster.vq import kmeans2  # noqa: PLC0415

        _, labels = kmeans2(x, k, minit="++", seed=seed)
        resp = np.eye(k)[labels]
        m0, c0, w0 = _m_step(x, resp, reg_covar, 0.0, False, None)
        means_init = m0 if means_init is None else means_init
        covariances_init = c0 if covariances_init is None else covariances_init
        weights_init = w0 if weights_init is None else weights_init
    means = np.asarray(means_init, dtype=np.float64).reshape(k, d).copy()
    covs = np.asarray(covariances_init, dtype=np.float64).reshape(k, d, d).copy()
    fixed = weights is not None
    if not fixed:
        weights = np.asarray(weights_init, dtype=np.float64).ravel()
        weights = weights / weights.sum()
    floor_var = float(sd_floor) ** 2
    lower = -np.inf
    converged = False
    n_iter = 0
    for it in range(1, int(max_iter) + 1):
        n_iter = it
        prev = lower
        with np.errstate(divide="ignore"):
            logp = _log_gauss(x, means, covs) + np.log(weights)
        lse = logsumexp(logp, axis=1)
        resp = np.exp(logp - lse[:, None])
        means, covs, weights = _m_step(x, resp, reg_covar, floor_var, fixed, weights)
        lower = float(lse.mean())
        if abs(lower - prev) < tol:
            converged = True
            break
    with np.errstate(divide="ignore"):
        lse = logsumexp(_log_gauss(x, means, covs) + np.log(weights), axis=1)
    return MixtureFit(means, covs, np.asarray(weights, dtype=np.float64), float(lse.sum()),
                      float(lse.mean()), n_iter, converged, fixed)


def mixture_posteriors(x: np.ndarray, fit: MixtureFit) -> np.ndarray:
    """``(n, K)`` posterior probabilities P(class k | x_i); rows sum to 1 (NaN rows stay NaN)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    out = np.full((len(x), len(fit.weights)), np.nan)
    ok = np.all(np.isfinite(x), axis=1)
    if ok.any():
        with np.errstate(divide="ignore"):
            logp = _log_gauss(x[ok], fit.means, fit.covariances) + np.log(fit.weights)
        out[ok] = np.exp(logp - logsumexp(logp, axis=1)[:, None])
    return out


def assign_classes(posteriors: np.ndarray, confidence: float = 0.5) -> np.ndarray:
    """Class index per hit: the most probable class if its posterior >= ``confidence``,
    else -1 (unassigned; also for NaN rows)."""
    p = np.asarray(posteriors, dtype=np.float64)
    out = np.full(len(p), -1, dtype=np.int64)
    ok = np.all(np.isfinite(p), axis=1)
    if ok.any():
        best = np.argmax(p[ok], axis=1)
        top = p[ok][np.arange(ok.sum()), best]
        out[np.flatnonzero(ok)] = np.where(top >= float(confidence), best, -1)
    return out


# --------------------------------------------------------------------------------------
# Starting points, class consistency and priors (for result.classify_scores)
# --------------------------------------------------------------------------------------


def _relative_log_snr(x: np.ndarray, reference: int, k: int) -> np.ndarray:
    """Features ``(n, K-1)`` -> log2 SNR relative to the reference ``(n, K)``."""
    rel = np.zeros((len(x), k))
    others = [j for j in range(k) if j != reference]
    rel[:, others] = -x
    return rel


def _class_margins(fit: MixtureFit, classes, reference: int, k: int, n: int) -> np.ndarray:
    """Per component: how clearly its mean favours its own template, in standard errors.

    For component c and every other template j, the contrast ``log2 SNR_c - log2 SNR_j``
    at the mean (a linear function of the features, whatever the reference) over its
    standard error ``sqrt(a' Sigma_c a / n_c)``, ``n_c = weight_c * n``; the smallest over
    j. A state is recognised by its own template fitting best, so a class whose mean does
    not clearly do so (margin below ~2) describes noise or half of another population.
    """
    others = [j for j in range(k) if j != reference]
    out = np.empty(len(classes))
    for i, c in enumerate(classes):
        n_c = max(float(fit.weights[i]) * n, 1.0)
        worst = np.inf
        for j in range(k):
            if j == c:
                continue
            a = np.zeros(k - 1)  # l_t = -x_t for t != reference, l_reference = 0
            if c != reference:
                a[others.index(c)] -= 1.0
            if j != reference:
                a[others.index(j)] += 1.0
            contrast = float(a @ fit.means[i])
            se = math.sqrt(max(float(a @ fit.covariances[i] @ a), 1e-300) / n_c)
            worst = min(worst, contrast / se)
        out[i] = worst
    return out


def _initial_state(x, reference, k, classes, reg, floor_var):
    """Means, shared covariance and weights from the "highest SNR wins" assignment,
    restricted to the states in ``classes``. Invariant to the choice of reference (the
    assignment and every statistic transform with the features)."""
    n, d = x.shape
    rel = _relative_log_snr(x, reference, k)
    labels = np.asarray(classes)[np.argmax(rel[:, classes], axis=1)]
    pooled = np.zeros((d, d))
    counts = np.array([(labels == c).sum() for c in classes])
    means = np.empty((len(classes), d))
    for i, c in enumerate(classes):
        sel = x[labels == c]
        if len(sel) >= d + 2:
            means[i] = sel.mean(0)
            pooled += (sel - means[i]).T @ (sel - means[i])
    dof = max(int(sum(cnt for cnt in counts if cnt >= d + 2)) - len(classes), 1)
    pooled = pooled / dof if pooled.any() else np.cov(x.T).reshape(d, d)
    # States with too few hits start where they would favour their template by the
    # typical margin of the others (a point defined in relative log-SNR, so it too
    # transforms with the reference).
    margin = np.sort(rel, axis=1)
    delta = float(np.median(margin[:, -1] - margin[:, -2])) if k >= 2 else 0.0
    for i, c in enumerate(classes):
        if counts[i] < d + 2:
            l_c = -delta / k * np.ones(k)
            l_c[c] += delta
            l_c -= l_c[reference]
            means[i] = -np.delete(l_c, reference)
    pooled.flat[:: d + 1] += reg
    w, v = np.linalg.eigh(pooled)
    pooled = (v * np.maximum(w, floor_var)) @ v.T
    covs = np.repeat(pooled[None], len(classes), axis=0)
    weights = np.maximum(counts, 1) / np.maximum(counts, 1).sum()
    return means, covs, weights


def _parse_priors(priors, k: int) -> np.ndarray | None:
    if priors is None or (isinstance(priors, str) and priors.strip().lower() in ("", "learn", "learned")):
        return None
    if isinstance(priors, str):
        if priors.strip().lower() in ("uniform", "equal"):
            return np.full(k, 1.0 / k)
        try:
            priors = [float(v) for v in priors.replace(";", ",").split(",")]
        except ValueError:
            raise InputError(f"priors must be 'learn', 'uniform' or {k} numbers, got {priors!r}") from None
    p = np.asarray(priors, dtype=np.float64).ravel()
    if len(p) != k or np.any(~np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise InputError(f"priors must be {k} non-negative numbers with a positive sum, got {list(p)}")
    return p / p.sum()
