"""In situ classification of 2DTM hits with several templates (Lucas et al., eLife 2022).

Every detected target is scored with each state's template at its pose, with the same
small local search for every template (:func:`napari_2dtm.hits.local.local_search`), so the
SNRs share one scale and no template is favoured. For K templates and a reference
template ``r`` each hit gets the (K-1)-vector of features

    x_i = [log2(SNR_i,r / SNR_i,k) for k != r]                     (E1 Eq. 2)

and a mixture of K full-covariance Gaussians, one per state, is fitted by EM (E1 Eqs.
3-9). The class priors are either learned or fixed by the user; scikit-learn's
``GaussianMixture`` cannot hold them fixed, hence the small EM here (its learned-prior
fits match scikit-learn's, tested). Each hit gets the posterior probability of every
class and is assigned at a chosen confidence (the paper shows 50 % and 95 %).

Choices made here (see ``docs/classification.md``):

* EM starts from the "highest SNR wins" assignment (the paper's baseline), so component
  k starts as the state of template k and the labels need no matching afterwards; the
  start, and hence the fit, is unchanged by the choice of reference template.
* States the data do not support are dropped: mixtures on every non-empty subset of the
  states are fitted; among those in which every class's mean clearly favours its own
  template (by >= 2 standard errors: a state is recognised by its own template fitting
  best) the lowest AIC wins. Without this a sample of one state is split in two and part
  of it "assigned" to an absent state; and a single class centred between two
  populations does not pass for one state. (AIC rather than BIC: with the consistency
  rule guarding against splits, BIC's larger penalty mostly costs real classes in
  samples of 40-100 hits; simulated.)
* Component standard deviations are floored (``sd_floor``, default 0.01 in log2 units,
  i.e. a 0.7 % SNR ratio; real classes are 5-20x wider) so that no component collapses
  onto a couple of hits.

Templates must share one origin: models converted with ``center="model"`` (two
selections of one file lie on one grid) or maps the user declares aligned.
:func:`check_templates` warns when pixel sizes, the best superposition or the centres of
mass disagree.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from napari_2dtm.errors import InputError, SearchCancelled
from napari_2dtm.templates.template import Template, load_template, template_suffix

__all__ = [
    "TemplateSet",
    "load_template_set",
    "check_templates",
    "template_alignment",
    "score_hits",
    "score_hits_iter",
    "log_ratio_features",
    "MixtureFit",
    "fit_mixture",
    "mixture_posteriors",
    "assign_classes",
    "ClassificationResult",
    "classify_scores",
    "classify",
    "write_classification",
    "read_classification",
    "ClassificationCancelled",
    "CONFIDENCE_LEVELS",
    "CLASS_COLORS",
    "draw_features",
    "write_class_stars",
]

#: Confidence levels reported for every classification (E1 Fig. 3).
CONFIDENCE_LEVELS = (0.5, 0.95)

#: Class colours (class k uses entry k modulo the length), shared by plots and layers.
CLASS_COLORS = ("#ff9f1c", "#2ec4b6", "#e71d36", "#a06cd5", "#8ac926", "#1982c4")
UNASSIGNED_COLOR = "#9a9a9a"

_MODEL_SUFFIXES = (".pdb", ".cif", ".mmcif", ".ent")


class ClassificationCancelled(SearchCancelled):
    """Raised inside a classification job when the user cancelled it."""


# --------------------------------------------------------------------------------------
# Template sets
# --------------------------------------------------------------------------------------


def _safe_name(text: str) -> str:
    s = re.sub(r"[^\w.-]+", "_", str(text)).strip("._")
    return s or "template"


@dataclasses.dataclass
class TemplateSet:
    """Two or more templates sharing one origin.

    templates: :class:`~napari_2dtm.Template` per state (cubic volumes, particle centre at
        voxel ``n // 2``, same pixel size).
    names: one short unique name per template (used in column names: ``snr_<name>``).
    reference: index of the reference template (numerator of the log-ratios).
    """

    templates: list
    names: list
    reference: int = 0

    def __post_init__(self):
        if len(self.templates) < 2:
            raise InputError(f"classification needs two or more templates, got {len(self.templates)}")
        if len(self.names) != len(self.templates):
            raise InputError(f"{len(self.names)} names for {len(self.templates)} templates")
        self.names = [_safe_name(n) for n in self.names]
        if len(set(self.names)) != len(self.names):
            raise InputError(f"template names must be unique, got {self.names}")
        self.reference = _reference_index(self.reference, self.names)

    def __len__(self) -> int:
        return len(self.templates)

    @property
    def pixel_size_a(self) -> float:
        return float(self.templates[0].pixel_size_a)


def _reference_index(reference, names: Sequence[str]) -> int:
    if isinstance(reference, str) and not reference.lstrip("-").isdigit():
        key = _safe_name(reference)
        if key not in names:
            raise InputError(f"reference {reference!r} is not one of the templates {list(names)}")
        return list(names).index(key)
    r = int(reference)
    if not 0 <= r < len(names):
        raise InputError(f"reference index {r} out of range for {len(names)} templates")
    return r


def _default_name(source, selection) -> str:
    if isinstance(source, Template):
        base = Path(str(source.source)).name if source.source not in (None, "", "array") else "template"
    else:
        base = Path(str(source)).name
    low = base.lower()
    for suf in (".gz", ".pdb", ".ent", ".cif", ".mmcif", ".mrc", ".map", ".mrcs"):
        if low.endswith(suf):
            base, low = base[: -len(suf)], low[: -len(suf)]
    if selection:
        base += "_" + selection
    return _safe_name(base)


def load_template_set(
    sources: Sequence,
    pixel_size_a: float,
    names: Sequence[str] | None = None,
    selections: Sequence[str | None] | None = None,
    reference=0,
    bfactor_a2: float | None = None,
    box: int | None = None,
) -> TemplateSet:
    """Load templates that share one origin.

    sources: per template a model file (``.pdb/.cif[.gz]``), a map file (``.mrc``, assumed
        aligned with the others by the user), or a :class:`Template`.
    pixel_size_a: Angstrom per voxel for models (maps keep their header pixel size).
    selections: per template an atom selection for models (``"not chain B"``) or None.
    Models are converted with ``center="model"``: the grid is fixed in model coordinates
    and sized from the whole model, so selections of one file share the origin exactly.
    If any model is given, all models get the same box (the largest automatic one).
    """
    sources = list(sources)
    n = len(sources)
    selections = list(selections) if selections is not None else [None] * n
    if len(selections) != n:
        raise InputError(f"{len(selections)} selections for {n} templates")
    selections = [s.strip() if isinstance(s, str) and s.strip() else None for s in selections]
    for src, sel in zip(sources, selections):
        if sel and not _is_model(src):
            raise InputError(f"{src}: an atom selection needs an atomic model (.pdb/.cif), not a map")
    kw = {} if bfactor_a2 is None else {"bfactor_a2": float(bfactor_a2)}
    if box is None:
        boxes = []
        for src, sel in zip(sources, selections):
            if _is_model(src):
                boxes.append(load_template(src, pixel_size_a, selection=sel, center="model", **kw).box)
        box = max(boxes) if boxes else None
    templates = []
    for src, sel in zip(sources, selections):
        if _is_model(src):
            templates.append(load_template(src, pixel_size_a, selection=sel, center="model",
                                           box=box, **kw))
        else:
            templates.append(load_template(src))
    if names is None:
        names = [_default_name(s, sel) for s, sel in zip(sources, selections)]
        if len(set(names)) != len(names):
            names = [f"{nm}_{i + 1}" for i, nm in enumerate(names)]
    return TemplateSet(templates, list(names), reference)


def _is_model(src) -> bool:
    if isinstance(src, (Template, np.ndarray)):
        return False
    return template_suffix(src) in _MODEL_SUFFIXES


def _center_of_mass_a(t: Template) -> np.ndarray:
    """Potential-weighted centre (x, y, z) in Angstrom relative to voxel n // 2."""
    v = np.clip(np.asarray(t.volume, np.float64), 0.0, None)
    s = v.sum()
    if not s > 0:
        return np.zeros(3)
    c = t.box // 2
    zs, ys, xs = (np.arange(t.box) - c for _ in range(3))
    com = np.array([(v.sum((0, 1)) * xs).sum(), (v.sum((0, 2)) * ys).sum(), (v.sum((1, 2)) * zs).sum()])
    return com / s * t.pixel_size_a


def _radius_a(t: Template) -> float:
    """Radius (Angstrom) holding 99 % of the positive potential around voxel n // 2."""
    v = np.clip(np.asarray(t.volume, np.float64), 0.0, None)
    c = t.box // 2
    g = np.arange(t.box) - c
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2).ravel()
    order = np.argsort(r)
    cum = np.cumsum(v.ravel()[order])
    if not cum[-1] > 0:
        return 0.0
    return float(r[order][np.searchsorted(cum, 0.99 * cum[-1])]) * t.pixel_size_a


def _superposition_shift_a(a: Template, b: Template) -> np.ndarray:
    """Shift (x, y, z) in Angstrom that best superimposes ``b`` on ``a`` (3D cross-
    correlation peak, parabolic sub-voxel refinement). Zero for aligned templates, also
    when one lacks a subunit, since the shared part dominates the overlap."""
    n = max(a.box, b.box)

    def pad(v):
        out = np.zeros((n, n, n), np.float64)
        o = n // 2 - v.shape[0] // 2
        out[o : o + v.shape[0], o : o + v.shape[0], o : o + v.shape[0]] = v
        return out - out.mean()

    fa, fb = np.fft.rfftn(pad(a.volume)), np.fft.rfftn(pad(b.volume))
    cc = np.fft.irfftn(fa * np.conj(fb), s=(n, n, n))
    idx = np.unravel_index(int(np.argmax(cc)), cc.shape)
    shift = []
    for ax, i in enumerate(idx):
        m, p = list(idx), list(idx)
        m[ax], p[ax] = (i - 1) % n, (i + 1) % n
        c0, cm, cp = cc[idx], cc[tuple(m)], cc[tuple(p)]
        den = cm - 2 * c0 + cp
        frac = 0.5 * (cm - cp) / den if den < 0 else 0.0
        s = i if i <= n // 2 else i - n
        shift.append(s + frac)
    z, y, x = shift  # b moved by +shift lands on a
    return np.array([x, y, z]) * a.pixel_size_a


def template_alignment(ts: TemplateSet) -> pd.DataFrame:
    """Per template, relative to the reference: pixel size, box, integrated potential
    ratio, centre-of-mass distance (A), the distance a removed part could explain (A),
    and the superposition shift (A). One row per template."""
    ref = ts.templates[ts.reference]
    ref_com, ref_mass = _center_of_mass_a(ref), float(np.clip(ref.volume, 0, None).sum()) * ref.pixel_size_a**3
    radius = max(_radius_a(t) for t in ts.templates)
    rows = []
    for name, t in zip(ts.names, ts.templates):
        mass = float(np.clip(t.volume, 0, None).sum()) * t.pixel_size_a**3
        ratio = mass / ref_mass if ref_mass > 0 else float("nan")
        frac = abs(1.0 - min(ratio, 1.0 / ratio)) if ratio > 0 else 1.0
        # A part with mass fraction f removed from within radius R moves the centre of mass
        # by at most f / (1 - f) * R.
        explained = frac / max(1.0 - frac, 1e-6) * radius
        same_px = abs(t.pixel_size_a - ref.pixel_size_a) <= 1e-3 * ref.pixel_size_a
        shift = _superposition_shift_a(ref, t) if same_px else np.full(3, np.nan)
        rows.append({
            "name": name,
            "pixel_size_a": float(t.pixel_size_a),
            "box": int(t.box),
            "potential_ratio": ratio,
            "com_distance_a": float(np.linalg.norm(_center_of_mass_a(t) - ref_com)),
            "com_explained_a": explained,
            "superposition_shift_a": float(np.linalg.norm(shift)),
        })
    return pd.DataFrame(rows)


def check_templates(ts: TemplateSet, tolerance_px: float = 1.0) -> list[str]:
    """Warnings (one line each) when the templates do not look aligned.

    Checks: equal pixel sizes (0.1 %); the best superposition needs no shift beyond
    ``tolerance_px`` voxels; the centres of mass differ by no more than a removed or added
    part of the mass difference could explain (plus ``tolerance_px``). An empty list means
    nothing suspicious. The potential's overall scale does not matter (scores are
    normalised cross-correlations).
    """
    tab = template_alignment(ts)
    px = ts.pixel_size_a
    ref = ts.names[ts.reference]
    out = []
    for _, r in tab.iterrows():
        if r["name"] == ref:
            continue
        if abs(r["pixel_size_a"] - px) > 1e-3 * px:
            out.append(f"{r['name']}: pixel size {r['pixel_size_a']:g} A differs from "
                       f"{ref}'s {px:g} A; resample the maps to one pixel size")
            continue
        if r["superposition_shift_a"] > tolerance_px * px:
            out.append(f"{r['name']}: best superposition on {ref} needs a shift of "
                       f"{r['superposition_shift_a']:.1f} A; the templates do not share one origin")
        if r["com_distance_a"] > r["com_explained_a"] + tolerance_px * px:
            out.append(f"{r['name']}: centre of mass {r['com_distance_a']:.1f} A from {ref}'s, more "
                       f"than its {100 * abs(1 - r['potential_ratio']):.0f} % mass difference explains "
                       f"({r['com_explained_a']:.1f} A); check the alignment")
    return out


# --------------------------------------------------------------------------------------
# Scoring every hit with every template
# --------------------------------------------------------------------------------------

#: pose columns taken from the reference template's local search
_POSE_COLUMNS = ("x", "y", "phi", "theta", "psi", "defocus_a", "defocus1_a", "defocus2_a")


def score_hits_iter(
    image: np.ndarray,
    pixel_size_a: float,
    templates: TemplateSet,
    hits: pd.DataFrame,
    ctf,
    *,
    angular_step_deg: float = 1.5,
    angular_range_deg: float | None = None,
    in_plane_step_deg: float | None = None,
    in_plane_range_deg: float | None = None,
    shift_px: int = 1,
    defocus_range_a: float = 0.0,
    defocus_step_a: float = 100.0,
    result=None,
    high_res_limit_a: float | None = None,
    chunk: int = 16,
) -> Iterator[tuple[int, int]]:
    """Generator form of :func:`score_hits`: yields ``(done, total)`` hit-template pairs
    after every chunk of hits (a place to cancel); returns the scored table."""
    from napari_2dtm.hits.local import LocalScorer, local_search  # noqa: PLC0415

    if not isinstance(templates, TemplateSet):
        raise InputError("templates must be a TemplateSet (see load_template_set)")
    hits = pd.DataFrame(hits).reset_index(drop=True)
    for col in ("x", "y", "phi", "theta", "psi"):
        if col not in hits:
            raise InputError(f"hits table has no {col!r} column (need x, y, phi, theta, psi)")
    if len(hits) == 0:
        raise InputError("no hits to classify")
    ar = angular_step_deg if angular_range_deg is None else angular_range_deg
    grid = dict(
        angular_range_deg=float(ar), angular_step_deg=float(angular_step_deg),
        in_plane_range_deg=in_plane_range_deg, in_plane_step_deg=in_plane_step_deg,
        shift_px=int(shift_px), defocus_range_a=float(defocus_range_a),
        defocus_step_a=float(defocus_step_a),
    )
    if result is not None and high_res_limit_a is None:
        # the search's resolution limit gives the search's pixel size and whitening
        high_res_limit_a = result.metadata.get("config", {}).get("high_res_limit_a")
    scorer = LocalScorer(image, pixel_size_a, ctf, high_res_limit_a=high_res_limit_a)
    n, k = len(hits), len(templates)
    total = n * k
    out = hits.copy()
    yield (0, total)
    for ti, (name, tpl) in enumerate(zip(templates.names, templates.templates)):
        parts = []
        for start in range(0, n, max(1, int(chunk))):
            sub = hits.iloc[start : start + chunk]
            parts.append(local_search(image, pixel_size_a, tpl, sub, ctf, result=result,
                                      scorer=scorer, **grid))
            yield (ti * n + start + len(sub), total)
        scored = pd.concat(parts, ignore_index=True)
        out[f"cc_{name}"] = scored["cc"].to_numpy(np.float64)
        out[f"snr_{name}"] = scored["snr"].to_numpy(np.float64)
        if ti == templates.reference:
            for col in _POSE_COLUMNS:
                if col in scored:
                    out[col] = scored[col].to_numpy()
            if "zscore" not in out and "zscore" in scored:
                out["zscore"] = scored["zscore"].to_numpy(np.float64)
    return out


def score_hits(image, pixel_size_a, templates: TemplateSet, hits, ctf, *, progress=None,
               cancel: Callable[[], bool] | None = None, **kwargs) -> pd.DataFrame:
    """Score every hit with every template, with one local grid for all.

    image: ``(ny, nx)`` micrograph; pixel_size_a: its pixel size (A); hits: table with x, y
    (input pixels), phi, theta, psi (deg), optional defocus_a; ctf: :class:`CTFParams`.
    Grid (identical for every template, so none is favoured): out-of-plane offsets within
    ``angular_range_deg`` (default one step) in ``angular_step_deg`` steps, psi likewise,
    ``+-shift_px`` pixels, defocus offsets ``-defocus_range_a..+defocus_range_a`` (A).
    result: the search's :class:`SearchResult` (SNR on the search's scale, z-scores).
    progress(done, total) per chunk of hits; cancel() -> True stops with
    :class:`ClassificationCancelled`.

    Returns a copy of ``hits`` with ``cc_<name>`` and ``snr_<name>`` per template, the
    pose refined with the reference template (x, y, angles, defocus), other columns kept.
    """
    gen = score_hits_iter(image, pixel_size_a, templates, hits, ctf, **kwargs)
    while True:
        try:
            done, total = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(done, total)
        if cancel is not None and cancel():
            gen.close()
            raise ClassificationCancelled("classification cancelled")


# --------------------------------------------------------------------------------------
# Features and the Gaussian mixture
# --------------------------------------------------------------------------------------


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
# Classification
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


@dataclasses.dataclass
class ClassificationResult:
    """The outcome of a classification.

    hits: input table plus ``snr_<name>`` (and ``cc_<name>``) per template, the features
        ``log2_<ref>_<name>``, posteriors ``p_<name>``, ``posterior`` (the largest),
        ``class`` (1-based class number at ``confidence``, RELION's rlnClassNumber; 0 =
        unassigned) and ``class_name`` ("" when unassigned).
    names: template (= class) names; reference: index of the reference template.
    features: ``(n, K-1)`` log2 ratios (NaN where an SNR was <= 0).
    posteriors: ``(n, K)``; classes dropped by model selection have posterior 0.
    means: ``(K, K-1)``; covariances: ``(K, K-1, K-1)``; priors: ``(K,)`` (NaN / 0 for
        dropped classes); present: ``(K,)`` bool, the classes the data support.
    priors_fixed: True when the priors were given.
    confidence: the assignment confidence of ``hits['class']``.
    selection: per subset of classes tried (``"A+B"``): its ``aic``, ``bic``,
        ``log_likelihood``, ``margin_se`` (per class: how many standard errors its mean
        favours its own template by) and ``consistent`` (all margins >= ``min_margin_se``).
    """

    hits: pd.DataFrame
    names: list
    reference: int
    features: np.ndarray
    posteriors: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    priors: np.ndarray
    present: np.ndarray
    priors_fixed: bool
    confidence: float
    selection: dict
    log_likelihood: float
    converged: bool
    warnings: list = dataclasses.field(default_factory=list)
    params: dict = dataclasses.field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        ref = self.names[self.reference]
        return [f"log2_{ref}_{nm}" for i, nm in enumerate(self.names) if i != self.reference]

    def assign(self, confidence: float | None = None) -> np.ndarray:
        """Class index (0-based, -1 unassigned) per hit at ``confidence``."""
        return assign_classes(self.posteriors, self.confidence if confidence is None else confidence)

    def counts(self, confidence: float | None = None) -> dict:
        """``{name: n_hits, ..., "unassigned": n}`` at ``confidence``."""
        a = self.assign(confidence)
        out = {nm: int((a == i).sum()) for i, nm in enumerate(self.names)}
        out["unassigned"] = int((a < 0).sum())
        return out

    def class_hits(self, k: int, confidence: float | None = None) -> pd.DataFrame:
        """Hits assigned to class ``k`` (0-based) at ``confidence``."""
        return self.hits[self.assign(confidence) == k].reset_index(drop=True)

    def summary(self) -> str:
        ref = self.names[self.reference]
        lines = [f"{len(self.hits)} hits, {len(self.names)} templates, reference {ref}; priors "
                 + ("fixed" if self.priors_fixed else "learned")]
        for i, nm in enumerate(self.names):
            if not self.present[i]:
                lines.append(f"  {nm}: not supported by the data (dropped by model selection)")
                continue
            mean = ", ".join(f"{v:+.3f}" for v in self.means[i])
            sd = ", ".join(f"{v:.3f}" for v in np.sqrt(np.diag(self.covariances[i])))
            lines.append(f"  {nm}: prior {self.priors[i]:.3f}, mean [{mean}], SD [{sd}]")
        for c in sorted(set(CONFIDENCE_LEVELS) | {self.confidence}):
            cnt = self.counts(c)
            lines.append(f"  at {100 * c:g} %: " + ", ".join(f"{k} {v}" for k, v in cnt.items()))
        return "\n".join(lines)


def classify_scores(
    table: pd.DataFrame,
    names: Sequence[str],
    reference=0,
    priors=None,
    confidence: float = 0.5,
    select_classes: bool = True,
    sd_floor: float = 0.01,
    min_margin_se: float = 2.0,
    max_iter: int = 1000,
    tol: float = 1e-9,
) -> ClassificationResult:
    """Fit the mixture to a scored hits table (``snr_<name>`` columns) and assign classes.

    names: template names in class order; reference: index or name; priors: None or
    "learn" (learned), "uniform", or K numbers (fixed, normalised); confidence: posterior
    needed for an assignment (0.5-1); select_classes: drop states the data do not
    support: among the mixtures on every non-empty subset of states in which each
    class's mean favours its own template by at least ``min_margin_se`` standard errors
    (:func:`_class_margins`), the lowest AIC wins; sd_floor: least class SD
    in log2 units.
    """
    names = [_safe_name(n) for n in names]
    k = len(names)
    if k < 2:
        raise InputError(f"classification needs two or more templates, got {k}")
    ref = _reference_index(reference, names)
    if not 0 < float(confidence) <= 1:
        raise InputError(f"confidence must be in (0, 1], got {confidence}")
    missing = [f"snr_{n}" for n in names if f"snr_{n}" not in table]
    if missing:
        raise InputError(f"hits table has no {', '.join(missing)} column(s): score the hits first")
    table = pd.DataFrame(table).reset_index(drop=True)
    fixed = _parse_priors(priors, k)
    snr = table[[f"snr_{n}" for n in names]].to_numpy(np.float64)
    x = log_ratio_features(snr, ref)
    ok = np.all(np.isfinite(x), axis=1)
    warn = []
    if (~ok).any():
        warn.append(f"{int((~ok).sum())} hits with a non-positive SNR for some template are left unassigned")
    xv = x[ok]
    d = k - 1
    if len(xv) < 3 * k:
        raise InputError(f"{len(xv)} hits with positive SNRs are too few to fit {k} classes (need {3 * k})")
    floor_var = float(sd_floor) ** 2
    reg = 0.0  # the SD floor guards against singular classes; no bias from a fixed ridge
    candidates = [tuple(range(k))]
    if select_classes:
        candidates = [c for r in range(1, k + 1) for c in itertools.combinations(range(k), r)]
    if fixed is not None:
        candidates = [c for c in candidates if all(fixed[i] > 0 for i in c)] or [
            tuple(i for i in range(k) if fixed[i] > 0)]
    fits, selection = {}, {}
    full = tuple(range(k))
    for cls in candidates:
        m0, c0, w0 = _initial_state(xv, ref, k, list(cls), reg, floor_var)
        pri = None if (fixed is None or len(cls) == 1) else fixed[list(cls)]
        fit = fit_mixture(xv, len(cls), priors=pri, means_init=m0, covariances_init=c0,
                          weights_init=w0, max_iter=max_iter, tol=tol, reg_covar=reg,
                          sd_floor=sd_floor)
        if len(cls) == 1:
            fit.weights_fixed = True  # one class: no prior to learn
        fits[cls] = fit
        margins = _class_margins(fit, cls, ref, k, len(xv))
        selection["+".join(names[i] for i in cls)] = {
            "aic": fit.aic(), "bic": fit.bic(len(xv)),
            "margin_se": [float(m) for m in margins],
            "consistent": bool(np.all(margins >= min_margin_se)),
            "log_likelihood": fit.log_likelihood}
    if select_classes:
        ok_models = [c for c in fits if selection["+".join(names[i] for i in c)]["consistent"]]
        if not ok_models:
            warn.append("no set of classes is clearly supported (every fit has a class whose "
                        "mean does not favour its own template); all classes kept")
        best = min(ok_models, key=lambda c: fits[c].aic()) if ok_models else full
    else:
        best = full if full in fits else max(fits, key=len)
    fit = fits[best]
    if best != full:
        dropped = [names[i] for i in range(k) if i not in best]
        warn.append(f"no evidence for {', '.join(dropped)}: the model without "
                    f"{'it' if len(dropped) == 1 else 'them'} is preferred (AIC, classes "
                    "favouring their own template); posteriors 0")
    means = np.full((k, d), np.nan)
    covs = np.full((k, d, d), np.nan)
    pri = np.zeros(k)
    present = np.zeros(k, bool)
    for j, c in enumerate(best):
        means[c], covs[c], pri[c], present[c] = fit.means[j], fit.covariances[j], fit.weights[j], True
    post = np.full((len(x), k), np.nan)
    post[ok] = 0.0
    post[np.ix_(np.flatnonzero(ok), list(best))] = mixture_posteriors(xv, fit)
    for j, c in enumerate(best):
        rel = _relative_log_snr(fit.means[j][None], ref, k)[0]
        if len(best) > 1 and int(np.argmax(rel)) != c:
            warn.append(f"the class fitted for {names[c]} has a mean favouring "
                        f"{names[int(np.argmax(rel))]}: check templates and priors")
    if not fit.converged:
        warn.append(f"EM did not converge in {max_iter} iterations")

    out = table.copy()
    fnames = [f"log2_{names[ref]}_{nm}" for i, nm in enumerate(names) if i != ref]
    for j, fn in enumerate(fnames):
        out[fn] = x[:, j]
    for i, nm in enumerate(names):
        out[f"p_{nm}"] = post[:, i]
    out["posterior"] = np.nanmax(np.where(np.isfinite(post), post, -np.inf), axis=1)
    out.loc[~ok, "posterior"] = np.nan
    res = ClassificationResult(
        hits=out, names=names, reference=ref, features=x, posteriors=post, means=means,
        covariances=covs, priors=pri, present=present, priors_fixed=fixed is not None,
        confidence=float(confidence), selection=selection, log_likelihood=fit.log_likelihood,
        converged=fit.converged, warnings=warn,
        params={"priors": None if fixed is None else [float(v) for v in fixed],
                "select_classes": bool(select_classes), "sd_floor": float(sd_floor),
                "min_margin_se": float(min_margin_se),
                "confidence": float(confidence), "reference": names[ref], "templates": names},
    )
    _set_class_columns(res)
    return res


def _set_class_columns(res: ClassificationResult) -> None:
    a = res.assign()
    res.hits["class"] = np.where(a >= 0, a + 1, 0).astype(np.int64)
    res.hits["class_name"] = [res.names[i] if i >= 0 else "" for i in a]


def classify(
    image: np.ndarray,
    pixel_size_a: float,
    templates: TemplateSet,
    hits: pd.DataFrame,
    ctf,
    *,
    priors=None,
    confidence: float = 0.5,
    select_classes: bool = True,
    progress=None,
    cancel=None,
    **score_kwargs,
) -> ClassificationResult:
    """Score ``hits`` with every template (:func:`score_hits`) and classify them
    (:func:`classify_scores`). Template-alignment warnings are added to the result's."""
    warn = check_templates(templates)
    scored = score_hits(image, pixel_size_a, templates, hits, ctf, progress=progress,
                        cancel=cancel, **score_kwargs)
    res = classify_scores(scored, templates.names, templates.reference, priors=priors,
                          confidence=confidence, select_classes=select_classes)
    res.warnings[:0] = warn
    res.params["scoring"] = {k: v for k, v in score_kwargs.items() if k != "result"}
    res.params["pixel_size_a"] = float(pixel_size_a)
    res.params["ctf"] = ctf.to_dict() if hasattr(ctf, "to_dict") else ctf
    res.params["template_sources"] = [str(t.source) for t in templates.templates]
    res.params["template_selections"] = [t.params.get("selection") for t in templates.templates]
    return res


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _write_star(hits: pd.DataFrame, path: Path, micrograph_name, pixel_size_a, ctf) -> None:
    """RELION STAR of hits; a ``micrograph`` column (pooled micrographs) names each row's."""
    from napari_2dtm.search.results import hits_to_star, write_hits  # noqa: PLC0415

    if "micrograph" not in hits:
        write_hits(hits, path, micrograph_name, pixel_size_a, ctf)
        return
    import starfile  # noqa: PLC0415

    from napari_2dtm.io.mrc import atomic_path  # noqa: PLC0415

    blocks = hits_to_star(hits, micrograph_name, pixel_size_a, ctf)
    blocks["particles"]["rlnMicrographName"] = hits["micrograph"].astype(str).to_numpy()
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, overwrite=True)


def write_class_stars(res: ClassificationResult, folder, confidence: float | None = None,
                      micrograph_name: str = "micrograph.mrc", pixel_size_a: float | None = None,
                      ctf: dict | None = None, overwrite: bool = False) -> list[Path]:
    """Write ``class_<k>_<name>.star`` (hits assigned to class k at ``confidence``) into
    ``folder``; each file atomically, none replaced unless ``overwrite``. Returns paths."""
    folder = Path(folder)
    conf = res.confidence if confidence is None else float(confidence)
    paths = [folder / f"class_{i + 1}_{nm}.star" for i, nm in enumerate(res.names)]
    if not overwrite:
        for p in paths:
            if p.exists():
                raise InputError(f"{p}: exists; refusing to overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    px = pixel_size_a or res.params.get("pixel_size_a")
    ctf = ctf if ctf is not None else res.params.get("ctf")
    for i, p in enumerate(paths):
        _write_star(res.class_hits(i, conf), p, micrograph_name, px, ctf)
    return paths


def draw_features(ax, res: ClassificationResult, confidence: float | None = None,
                  text_color: str | None = None) -> None:
    """Draw the log2 ratios with the fitted Gaussians on a matplotlib axes.

    One feature: histogram (density) of the hits, each class's ``prior * N(mean, SD)``
    and their sum. Two or more: scatter of the first two features coloured by the most
    probable class (grey below ``confidence``), with 1 and 2 SD ellipses per class.
    """
    conf = res.confidence if confidence is None else float(confidence)
    x = res.features
    ok = np.all(np.isfinite(x), axis=1)
    ref = res.names[res.reference]
    labels = [f"log2(SNR {ref} / SNR {nm})" for i, nm in enumerate(res.names) if i != res.reference]
    a = res.assign(conf)
    best = res.assign(0.0)
    colors = [CLASS_COLORS[i % len(CLASS_COLORS)] for i in range(len(res.names))]
    if x.shape[1] == 1:
        v = x[ok, 0]
        lo, hi = (float(v.min()), float(v.max())) if v.size else (-0.5, 0.5)
        pad = 0.15 * max(hi - lo, 0.1)
        bins = np.histogram_bin_edges(v, bins="auto", range=(lo - pad, hi + pad)) if v.size else 20
        ax.hist(v, bins=bins, density=True, color="#8d99ae", alpha=0.55, label=f"{len(v)} hits")
        grid = np.linspace(lo - pad, hi + pad, 400)
        total = np.zeros_like(grid)
        for i, nm in enumerate(res.names):
            if not res.present[i]:
                continue
            sd = math.sqrt(res.covariances[i, 0, 0])
            y = res.priors[i] * np.exp(-0.5 * ((grid - res.means[i, 0]) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
            total += y
            ax.plot(grid, y, color=colors[i], lw=2,
                    label=f"{nm}: {res.means[i, 0]:+.3f} ± {sd:.3f} ({(a == i).sum()})")
        ax.plot(grid, total, color="#f1faee" if text_color else "black", lw=1, ls="--", label="mixture")
        ax.axvline(0.0, color="gray", lw=0.8, ls=":")
        ax.set_xlabel(labels[0])
        ax.set_ylabel("density")
    else:
        i0, i1 = 0, 1
        pt_colors = np.array([colors[b] if (b >= 0 and a[j] >= 0) else UNASSIGNED_COLOR
                              for j, b in enumerate(best)])
        ax.scatter(x[ok, i0], x[ok, i1], s=10, c=pt_colors[ok], alpha=0.8, linewidths=0)
        t = np.linspace(0, 2 * math.pi, 200)
        circle = np.stack([np.cos(t), np.sin(t)])
        for i, nm in enumerate(res.names):
            if not res.present[i]:
                continue
            cov = res.covariances[i][np.ix_([i0, i1], [i0, i1])]
            w, vecs = np.linalg.eigh(cov)
            for k, ls in ((1, "-"), (2, "--")):
                e = vecs @ (k * np.sqrt(np.maximum(w, 0))[:, None] * circle)
                ax.plot(res.means[i, i0] + e[0], res.means[i, i1] + e[1], color=colors[i], lw=1.5,
                        ls=ls, label=f"{nm} ({(a == i).sum()})" if k == 1 else None)
        ax.axhline(0.0, color="gray", lw=0.8, ls=":")
        ax.axvline(0.0, color="gray", lw=0.8, ls=":")
        ax.set_xlabel(labels[i0])
        ax.set_ylabel(labels[i1])
    ax.set_title(f"classes at {100 * conf:g} % confidence", fontsize=9)
    ax.legend(fontsize=7, loc="best")


def _save_plot(res: ClassificationResult, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(5, 3.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    draw_features(fig.add_subplot(111), res)
    fig.savefig(path)


def write_classification(
    res: ClassificationResult,
    out_dir,
    overwrite: bool = False,
    micrograph_name: str = "micrograph.mrc",
    pixel_size_a: float | None = None,
    ctf: dict | None = None,
) -> Path:
    """Write a job folder, atomically (temporary sibling, then moved into place)::

        classification.csv        every hit: scores, features, posteriors, class
        classification.json       parameters, fitted means/covariances/priors, counts at
                                  50 % and 95 %, AIC/BIC per class subset, warnings
        all_hits.star             every hit with rlnClassNumber (0 = unassigned)
        class_<k>_<name>.star     hits assigned to class k at the chosen confidence
        features.png              the log2 ratios with the fitted Gaussians

    An existing folder is replaced only with ``overwrite=True``.
    """
    from napari_2dtm.io.mrc import replace_dir  # noqa: PLC0415
    from napari_2dtm.search.results import _versions  # noqa: PLC0415

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise InputError(f"{out_dir}: classification folder exists; use --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    px = pixel_size_a or res.params.get("pixel_size_a")
    ctf = ctf if ctf is not None else res.params.get("ctf")
    try:
        res.hits.to_csv(tmp / "classification.csv", index=False)
        _write_star(res.hits, tmp / "all_hits.star", micrograph_name, px, ctf)
        files = {"table": "classification.csv", "all": "all_hits.star", "classes": {}}
        for i, nm in enumerate(res.names):
            fn = f"class_{i + 1}_{nm}.star"
            _write_star(res.class_hits(i), tmp / fn, micrograph_name, px, ctf)
            files["classes"][nm] = fn
        meta = {
            "method": "in situ classification, Lucas et al. eLife 2022 (log2 SNR ratios, "
                      "Gaussian mixture by EM)",
            "templates": res.names,
            "reference": res.names[res.reference],
            "feature_names": res.feature_names,
            "confidence": res.confidence,
            "priors_fixed": res.priors_fixed,
            "priors": res.priors,
            "present": res.present,
            "means": res.means,
            "covariances": res.covariances,
            "selection": res.selection,
            "log_likelihood": res.log_likelihood,
            "converged": res.converged,
            "counts": {f"{c:g}": res.counts(c) for c in sorted(set(CONFIDENCE_LEVELS) | {res.confidence})},
            "n_hits": len(res.hits),
            "warnings": res.warnings,
            "params": res.params,
            "files": files,
            "versions": _versions(),
        }
        _save_plot(res, tmp / "features.png")
        files["plot"] = "features.png"
        (tmp / "classification.json").write_text(
            json.dumps(meta, indent=2, default=_json_default, allow_nan=True) + "\n")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_classification(out_dir) -> ClassificationResult:
    """Load a folder written by :func:`write_classification`."""
    out_dir = Path(out_dir)
    meta_path = out_dir / "classification.json"
    if not meta_path.exists():
        raise InputError(f"{out_dir}: not a classification folder (no classification.json)")
    meta = json.loads(meta_path.read_text())
    hits = pd.read_csv(out_dir / "classification.csv", keep_default_na=False, na_values=["", "NaN", "nan"])
    names = list(meta["templates"])
    ref = names.index(meta["reference"])
    k = len(names)
    x = hits[meta["feature_names"]].to_numpy(np.float64)
    post = hits[[f"p_{n}" for n in names]].to_numpy(np.float64)
    if "class_name" in hits:
        hits["class_name"] = hits["class_name"].astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        means = np.asarray(meta["means"], dtype=np.float64).reshape(k, k - 1)
        covs = np.asarray(meta["covariances"], dtype=np.float64).reshape(k, k - 1, k - 1)
    return ClassificationResult(
        hits=hits, names=names, reference=ref, features=x, posteriors=post, means=means,
        covariances=covs, priors=np.asarray(meta["priors"], dtype=np.float64),
        present=np.asarray(meta["present"], dtype=bool), priors_fixed=bool(meta["priors_fixed"]),
        confidence=float(meta["confidence"]), selection=dict(meta["selection"]),
        log_likelihood=float(meta["log_likelihood"]), converged=bool(meta["converged"]),
        warnings=list(meta.get("warnings", [])), params=dict(meta.get("params", {})),
    )
