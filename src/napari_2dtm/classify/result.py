"""The outcome of a classification, and the two calls that produce it.

:func:`classify_scores` fits the mixture (:mod:`napari_2dtm.classify.mixture`) to a
scored hits table (``snr_<name>`` columns, :mod:`napari_2dtm.classify.scoring`) and
assigns every hit; :func:`classify` scores one micrograph's hits and classifies them.
Both return a :class:`ClassificationResult`; :mod:`napari_2dtm.classify.folder` writes
and reads it. (A job folder from one or several micrographs is written by
:func:`napari_2dtm.jobs.classify.run_classify`, the door of the CLI and the widget.)

Model selection: states the data do not support are dropped. Mixtures on every
non-empty subset of the states are fitted; among those in which every class's mean
clearly favours its own template (by >= 2 standard errors: a state is recognised by its
own template fitting best) the lowest AIC wins. Without this a sample of one state is
split in two and part of it "assigned" to an absent state; and a single class centred
between two populations does not pass for one state. (AIC rather than BIC: with the
consistency rule guarding against splits, BIC's larger penalty mostly costs real classes
in samples of 40-100 hits; simulated.)
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Sequence

import numpy as np
import pandas as pd

from napari_2dtm.classify.mixture import (
    _class_margins,
    _initial_state,
    _parse_priors,
    _relative_log_snr,
    assign_classes,
    fit_mixture,
    log_ratio_features,
    mixture_posteriors,
)
from napari_2dtm.classify.scoring import score_hits
from napari_2dtm.classify.templates import (
    TemplateSet,
    _reference_index,
    _safe_name,
    check_templates,
)
from napari_2dtm.errors import InputError

__all__ = ["ClassificationResult", "classify_scores", "classify", "CONFIDENCE_LEVELS"]

#: Confidence levels reported for every classification (E1 Fig. 3).
CONFIDENCE_LEVELS = (0.5, 0.95)


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
    cancel: threading.Event | None = None,
    **score_kwargs,
) -> ClassificationResult:
    """Score one micrograph's ``hits`` with every template
    (:func:`~napari_2dtm.classify.scoring.score_hits`: ``progress(done, total)``, a set
    ``cancel`` raises :class:`~napari_2dtm.errors.Cancelled`) and classify them
    (:func:`classify_scores`); no folder is written (that is
    :func:`napari_2dtm.jobs.classify.run_classify`). Template-alignment warnings are
    added to the result's."""
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
