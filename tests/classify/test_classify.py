"""In situ classification: EM and model (reference tests 1-4 of section 2.4 of
pvalue-classification-reconstruction.md, Lucas et al. eLife 2022), scikit-learn parity,
template-set checks and the job folder.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from helpers.planting import structure_file
from napari_2dtm.classify.folder import read_classification, write_classification
from napari_2dtm.classify.mixture import (
    assign_classes,
    fit_mixture,
    log_ratio_features,
    mixture_posteriors,
)
from napari_2dtm.classify.result import classify_scores
from napari_2dtm.classify.templates import (
    TemplateSet,
    check_templates,
    load_template_set,
    template_alignment,
)
from napari_2dtm.errors import InputError
from napari_2dtm.io.star import read_hits
from napari_2dtm.templates.model import template_from_model
from napari_2dtm.templates.template import Template


def _snr_table(snr: np.ndarray, names) -> pd.DataFrame:
    return pd.DataFrame({f"snr_{n}": snr[:, i] for i, n in enumerate(names)})


def _two_template_snrs(scale=1.0, n=2000, props=(0.3, 0.7), seed=0, rho=0.8):
    """Test 2 generator: signal SNRs A = (12, 10), B = (10, 12), shared image noise."""
    rng = np.random.default_rng(seed)
    signal = np.array([[12.0, 10.0], [10.0, 12.0]]) * scale
    z = rng.choice(2, n, p=props)
    e = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], n)
    return signal[z] + e, z


def _three_template_snrs(n=3000, seed=3):
    """Test 3 generator: signal matrix rows [12,10,9], [10,12,10], [9,10,12]; rho 0.8."""
    rng = np.random.default_rng(seed)
    signal = np.array([[12, 10, 9], [10, 12, 10], [9, 10, 12]], float)
    z = rng.choice(3, n, p=[0.2, 0.3, 0.5])
    cov = np.full((3, 3), 0.8)
    np.fill_diagonal(cov, 1.0)
    return signal[z] + rng.multivariate_normal(np.zeros(3), cov, n), z


# ----------------------------------------------------------------------------- test 1


def test_em_recovers_a_known_1d_mixture_and_reaches_the_bayes_accuracy():
    pi, mu, sd, n = np.array([0.11, 0.89]), np.array([-0.026, 0.336]), np.array([0.12, 0.10]), 1531
    rng = np.random.default_rng(1)
    z = rng.choice(2, n, p=pi)
    x = rng.normal(mu[z], sd[z])
    fit = fit_mixture(x, 2)
    order = np.argsort(fit.means[:, 0])
    assert fit.converged
    np.testing.assert_allclose(fit.means[order, 0], mu, atol=0.02)
    np.testing.assert_allclose(fit.weights[order], pi, atol=0.02)
    np.testing.assert_allclose(np.sqrt(fit.covariances[order, 0, 0]), sd, atol=0.015)
    post = mixture_posteriors(x, fit)[:, order]
    np.testing.assert_allclose(post.sum(1), 1.0, atol=1e-12)
    bayes = np.mean(np.argmax(np.log(pi) + norm.logpdf(x[:, None], mu, sd), axis=1) == z)
    acc = np.mean(np.argmax(post, axis=1) == z)
    assert acc >= bayes - 0.01, (acc, bayes)

    # Fixed priors: the M-step leaves them exactly as given.
    fixed = fit_mixture(x, 2, priors=[0.11, 0.89], means_init=[[-0.1], [0.3]],
                        covariances_init=np.full((2, 1, 1), 0.01))
    assert fixed.weights_fixed
    np.testing.assert_array_equal(fixed.weights, [0.11, 0.89])
    np.testing.assert_allclose(fixed.means[:, 0], mu, atol=0.02)


def test_em_matches_scikit_learn_for_learned_priors():
    from sklearn.mixture import GaussianMixture

    snr, _ = _three_template_snrs(n=1500, seed=11)
    x = log_ratio_features(snr, 0)
    rng = np.random.default_rng(5)
    means0 = x[rng.choice(len(x), 3, replace=False)]
    covs0 = np.repeat(np.cov(x.T)[None], 3, axis=0)
    w0 = np.array([0.3, 0.3, 0.4])
    ours = fit_mixture(x, 3, means_init=means0, covariances_init=covs0, weights_init=w0,
                       tol=1e-10, reg_covar=1e-6, max_iter=2000)
    skl = GaussianMixture(3, covariance_type="full", tol=1e-10, reg_covar=1e-6, max_iter=2000,
                          means_init=means0, weights_init=w0,
                          precisions_init=np.linalg.inv(covs0)).fit(x)
    assert ours.converged and skl.converged_
    np.testing.assert_allclose(ours.means, skl.means_, atol=1e-6)
    np.testing.assert_allclose(ours.covariances, skl.covariances_, atol=1e-7)
    np.testing.assert_allclose(ours.weights, skl.weights_, atol=1e-6)
    np.testing.assert_allclose(ours.mean_log_likelihood, skl.score(x), atol=1e-8)
    np.testing.assert_allclose(mixture_posteriors(x, ours), skl.predict_proba(x), atol=1e-6)


# ----------------------------------------------------------------------------- test 2


def test_two_templates_generative_snr_model():
    snr, z = _two_template_snrs()
    res = classify_scores(_snr_table(snr, "AB"), ["A", "B"])
    ref = math.log2(1.2)
    np.testing.assert_allclose(res.means[:, 0], [ref, -ref], atol=0.015)
    emp = [res.features[z == c, 0].mean() for c in (0, 1)]
    np.testing.assert_allclose(res.means[:, 0], emp, atol=0.01)
    # per-class SD (1/ln 2) sqrt(s^2/S1^2 + s^2/S2^2 - 2 rho s^2/(S1 S2)) = 0.0867
    sd_expected = math.sqrt(1 / 144 + 1 / 100 - 2 * 0.8 / 120) / math.log(2)
    np.testing.assert_allclose(np.sqrt(res.covariances[:, 0, 0]), sd_expected, rtol=0.1)
    np.testing.assert_allclose(res.priors, [0.3, 0.7], atol=0.03)
    assert res.present.all() and not res.warnings
    assert np.mean(res.assign() == z) >= 0.99
    assert np.mean(res.posteriors.max(1) > 0.95) >= 0.98
    # class columns: 1-based class numbers and names
    assert set(res.hits["class"]) == {1, 2}
    assert (res.hits["class_name"] == np.where(res.assign() == 0, "A", "B")).all()


def test_scaling_the_signal_keeps_the_means_and_scales_the_sd():
    """Scaling every signal SNR by 0.6 or 1.5 leaves the class means unchanged (within
    0.01, averaged over 4 samples of N = 2000 to test the systematic effect rather than one
    sample's noise) and scales the class SD as 1/signal (within 10 %)."""
    shifts, sds = {0.6: [], 1.5: []}, {0.6: [], 1.0: [], 1.5: []}
    for seed in range(4):
        fits = {}
        for scale in (1.0, 0.6, 1.5):
            snr, _ = _two_template_snrs(scale, seed=seed)
            fits[scale] = classify_scores(_snr_table(snr, "AB"), ["A", "B"])
            sds[scale].append(np.sqrt(fits[scale].covariances[:, 0, 0]))
        for scale in (0.6, 1.5):
            shifts[scale].append(fits[scale].means[:, 0] - fits[1.0].means[:, 0])
    for scale in (0.6, 1.5):
        assert np.all(np.abs(np.mean(shifts[scale], axis=0)) < 0.01), (scale, shifts[scale])
        ratio = np.mean(sds[scale], axis=0) / np.mean(sds[1.0], axis=0)
        np.testing.assert_allclose(ratio, 1.0 / scale, rtol=0.1)


def test_negative_control_one_state_is_not_split():
    """Every hit is state A: the B class is dropped by BIC, >= 95 % go to A, also when
    the user fixes the priors at 0.5 / 0.5."""
    snr, _ = _two_template_snrs(props=(1.0, 0.0), n=400, seed=4)
    for priors in (None, "uniform"):
        res = classify_scores(_snr_table(snr, "AB"), ["A", "B"], priors=priors)
        assert res.counts(0.5)["A"] >= 0.95 * len(snr), (priors, res.counts(0.5), res.selection)
        assert not res.present[1] and any("no evidence for B" in w for w in res.warnings)


# ----------------------------------------------------------------------------- test 3


def test_three_templates_three_classes():
    snr, z = _three_template_snrs()
    res = classify_scores(_snr_table(snr, "ABC"), ["A", "B", "C"])
    emp = np.array([res.features[z == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(res.means, emp, atol=0.01)
    np.testing.assert_allclose(res.priors, [0.2, 0.3, 0.5], atol=0.02)
    assert np.mean(res.assign() == z) >= 0.99
    assert res.feature_names == ["log2_A_B", "log2_A_C"]

    fixed = classify_scores(_snr_table(snr, "ABC"), ["A", "B", "C"], priors=[2, 3, 5])
    np.testing.assert_array_equal(fixed.priors, [0.2, 0.3, 0.5])
    assert fixed.priors_fixed and np.mean(fixed.assign() == z) >= 0.99


# ----------------------------------------------------------------------------- test 4


def test_order_symmetry_swapping_the_reference():
    snr, _ = _two_template_snrs(seed=7)
    a = classify_scores(_snr_table(snr, "AB"), ["A", "B"], reference="A")
    b = classify_scores(_snr_table(snr, "AB"), ["A", "B"], reference="B")
    np.testing.assert_allclose(b.means, -a.means, atol=1e-10)
    np.testing.assert_allclose(b.posteriors, a.posteriors, atol=1e-10)
    np.testing.assert_allclose(b.priors, a.priors, atol=1e-10)

    snr3, _ = _three_template_snrs(n=1500, seed=8)
    a = classify_scores(_snr_table(snr3, "ABC"), ["A", "B", "C"], reference=0)
    b = classify_scores(_snr_table(snr3, "ABC"), ["A", "B", "C"], reference=1)
    # log2(B/A) = -log2(A/B); log2(B/C) = log2(A/C) - log2(A/B)
    np.testing.assert_allclose(b.means[:, 0], -a.means[:, 0], atol=1e-8)
    np.testing.assert_allclose(b.means[:, 1], a.means[:, 1] - a.means[:, 0], atol=1e-8)
    np.testing.assert_allclose(b.posteriors, a.posteriors, atol=1e-8)


# ----------------------------------------------------------------------------- small parts


def test_features_assignment_and_bad_input():
    snr = np.array([[10.0, 5.0, 20.0], [8.0, -1.0, 8.0]])
    x = log_ratio_features(snr, 0)
    np.testing.assert_allclose(x[0], [1.0, -1.0])
    assert np.isnan(x[1, 0]) and x[1, 1] == 0.0
    post = np.array([[0.6, 0.4], [0.97, 0.03], [np.nan, np.nan]])
    np.testing.assert_array_equal(assign_classes(post, 0.5), [0, 0, -1])
    np.testing.assert_array_equal(assign_classes(post, 0.95), [-1, 0, -1])
    table = _snr_table(np.abs(np.random.default_rng(0).normal(10, 1, (30, 2))), "AB")
    with pytest.raises(InputError, match="snr_C"):
        classify_scores(table, ["A", "C"])
    with pytest.raises(InputError, match="priors"):
        classify_scores(table, ["A", "B"], priors="0.5,x")
    with pytest.raises(InputError, match="two or more"):
        classify_scores(table, ["A"])


def test_template_set_from_one_model_shares_the_origin_and_checks_alignment():
    path = structure_file("1BD2.pdb.gz")
    ts = load_template_set([path, path], 2.0, names=["full", "no_b2m"],
                           selections=[None, "not chain B"])
    assert ts.templates[0].box == ts.templates[1].box
    assert ts.templates[0].params["center_a"] == ts.templates[1].params["center_a"]
    tab = template_alignment(ts).set_index("name")
    # beta-2-microglobulin is ~13 % of the potential; its removal moves the centre of
    # mass by several A, which the check attributes to the mass difference.
    assert 0.8 < tab.loc["no_b2m", "potential_ratio"] < 0.92
    assert tab.loc["no_b2m", "com_distance_a"] > 3.0
    assert tab.loc["no_b2m", "superposition_shift_a"] < 1.0
    assert check_templates(ts) == []

    # The same selection re-centred on its own centre of mass is misaligned: warned.
    moved = template_from_model(path, 2.0, selection="not chain B", center="mass",
                                box=ts.templates[0].box)
    bad = TemplateSet([ts.templates[0], moved], ["full", "recentred"])
    msgs = check_templates(bad)
    assert any("superposition" in m for m in msgs), msgs
    # Two equal-mass maps offset by 3 voxels: the centre-of-mass check fires too.
    vol = ts.templates[0].volume
    shifted = Template(np.roll(vol, 3, axis=2), 2.0, source="shifted.mrc")
    msgs = check_templates(TemplateSet([ts.templates[0], shifted], ["a", "b"]))
    assert any("centre of mass" in m for m in msgs) and any("superposition" in m for m in msgs)
    other_px = Template(vol, 2.1, source="other.mrc")
    msgs = check_templates(TemplateSet([ts.templates[0], other_px], ["a", "b"]))
    assert any("pixel size" in m for m in msgs)
    with pytest.raises(InputError, match="needs an atomic model"):
        load_template_set([path, "map.mrc"], 2.0, selections=[None, "chain A"])


def test_job_folder_round_trip(tmp_path):
    snr, z = _two_template_snrs(n=300, seed=9)
    table = _snr_table(snr, ["full", "no_b2m"])
    table.insert(0, "x", np.arange(300.0))
    table.insert(1, "y", np.arange(300.0) * 2)
    for c in ("phi", "theta", "psi"):
        table[c] = 10.0
    table["defocus_a"] = 9000.0
    res = classify_scores(table, ["full", "no_b2m"], confidence=0.95)
    out = write_classification(res, tmp_path / "cls", micrograph_name="mic.mrc",
                               pixel_size_a=1.5, ctf={"voltage_kv": 300.0})
    meta = json.loads((out / "classification.json").read_text())
    assert meta["counts"]["0.95"] == res.counts(0.95) and "0.5" in meta["counts"]
    for i, name in enumerate(res.names):
        star = read_hits(out / f"class_{i + 1}_{name}.star")
        assert len(star) == res.counts(0.95)[name]
        assert (star["class"] == i + 1).all()
        np.testing.assert_allclose(star["x"], res.class_hits(i)["x"])
    assert len(read_hits(out / "all_hits.star")) == 300
    back = read_classification(out)
    np.testing.assert_allclose(back.posteriors, res.posteriors)
    np.testing.assert_allclose(back.means, res.means)
    assert back.counts(0.95) == res.counts(0.95)
    with pytest.raises(InputError, match="exists"):
        write_classification(res, out)
