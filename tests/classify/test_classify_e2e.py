"""In situ classification end to end on simulated micrographs (issue #6 acceptance).

Two states that differ by beta-2-microglobulin (chain B of 1BD2, ~13 % of the
potential): "full" = 1BD2, "no_b2m" = 1BD2 without chain B. Particles are projected
analytically from the atoms (:func:`simulate_micrograph`), independently of the local
scorer's Fourier slices. Templates come from one model file with the model origin kept
(``center="model"``), so both share one origin.

To stay fast most hits start at the true poses perturbed by one grid step (rotation of
1.5 deg about a random axis, position rounded to a whole pixel); the local scoring must
recover them. One small genuine search (explicit orientations) shows the whole path:
search, results folder, ``napari-2dtm classify``, job folder.

"z-score" of a hit that did not come from a search: its normalised cross-correlation with
the reference template, which is N(0, 1) under noise (the same scale as the search's).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from helpers.classify_sim import (
    CTF,
    GRID,
    NAMES,
    PX,
    _start_hits,
    _truth_at_model_origin,
    make_models,
    make_templates,
)
from napari_2dtm import SearchConfig, extract_hits, search, write_results
from napari_2dtm.classify.folder import read_classification
from napari_2dtm.classify.result import classify_scores
from napari_2dtm.classify.scoring import score_hits
from napari_2dtm.classify.templates import check_templates
from napari_2dtm.cli.main import main
from napari_2dtm.core.geometry import matrix_to_euler
from napari_2dtm.io.mrc import write_mrc
from napari_2dtm.io.star import read_hits
from napari_2dtm.simulate import simulate_micrograph


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def templates(models):
    return make_templates(models[0])


def _scored(ts, structures, fractions, seed, n=70, shape=(768, 768), snr=0.09):
    sim = simulate_micrograph(structures, n, shape=shape, pixel_size_a=PX, ctf=CTF, snr=snr,
                              seed=seed, class_fractions=fractions)
    hits = _start_hits(_truth_at_model_origin(sim, ts), np.random.default_rng(seed))
    return score_hits(sim.image, PX, ts, hits, CTF, **GRID)


def test_two_states_differing_by_b2m_are_told_apart(templates, models):
    ts = templates
    assert check_templates(ts) == []
    table = pd.concat([_scored(ts, list(models), [0.5, 0.5], seed) for seed in (10, 11)],
                      ignore_index=True)
    # the local search recovered the perturbed poses: within a pixel of the truth
    err = np.hypot(table["x"] - table["x_true"], table["y"] - table["y_true"])
    assert np.median(err) < 0.6 and np.mean(err < 1.5) > 0.95
    res = classify_scores(table, NAMES)
    h = res.hits
    z = h["cc_full"]  # normalised CC with the reference = z-score on the search's scale
    strong = z >= 10
    acc_strong = float(np.mean(h.loc[strong, "class_name"] == h.loc[strong, "true_name"]))
    acc_all = float(np.mean(h["class_name"] == h["true_name"]))
    print(f"\ntwo states: {len(h)} hits, {int(strong.sum())} with z >= 10; accuracy "
          f"{acc_strong:.3f} (z >= 10), {acc_all:.3f} (all); means {res.means[:, 0]}, "
          f"SD {np.sqrt(res.covariances[:, 0, 0])}, priors {res.priors}; "
          f"counts 50 % {res.counts(0.5)}, 95 % {res.counts(0.95)}")
    assert res.present.all()
    assert strong.sum() >= 40
    assert acc_strong >= 0.9
    # full particles favour the full template, b2m-less ones the smaller one
    assert res.means[0, 0] > 0.05 and res.means[1, 0] < -0.05
    # at 95 % confidence fewer hits are assigned, and those more accurately
    a95 = res.assign(0.95)
    sure = a95 >= 0
    assert sure.sum() < len(h)
    assert np.mean(np.array(NAMES)[a95[sure]] == h.loc[sure, "true_name"]) >= acc_all


def test_negative_control_every_particle_full(templates, models):
    full, _ = models
    table = _scored(templates, [full], None, 12)
    res = classify_scores(table, NAMES)
    h = res.hits
    strong = h["cc_full"] >= 10
    frac_all = float(np.mean(h["class_name"] == "full"))
    frac_strong = float(np.mean(h.loc[strong, "class_name"] == "full"))
    print(f"\nnegative control: {len(h)} hits ({int(strong.sum())} with z >= 10): "
          f"{frac_all:.3f} assigned to full ({frac_strong:.3f} at z >= 10); {res.warnings}")
    assert frac_all >= 0.95 and frac_strong >= 0.95
    # fixed (wrong) priors 0.5 / 0.5 do not make the absent state appear either
    fixed = classify_scores(table, NAMES, priors="uniform")
    assert np.mean(fixed.hits["class_name"] == "full") >= 0.95


def test_search_then_classify_from_the_command_line(templates, models, tmp_path):
    full, no_b = models
    sim = simulate_micrograph([full, no_b], 14, shape=(384, 384), pixel_size_a=PX, ctf=CTF,
                              snr=0.09, seed=5)
    truth = _truth_at_model_origin(sim, templates)
    mic = tmp_path / "mic.mrc"
    write_mrc(mic, sim.image, PX)
    # A genuine search over an explicit orientation list: the true poses (each perturbed
    # by 2 deg) among 200 random decoys, at every pixel, with the engine's statistics.
    rng = np.random.default_rng(0)
    near = _start_hits(truth, rng)[["phi", "theta", "psi"]].to_numpy()
    decoys = matrix_to_euler(Rotation.random(200, random_state=1).as_matrix())
    cfg = SearchConfig(ctf=CTF, orientations=np.vstack([near, decoys]), device="cpu")
    res = search(sim.image, PX, full, cfg)
    # With ~200 orientations per pixel the per-pixel z-score is weak; pick hits by SNR.
    res.hits = extract_hits(res, metric="snr", threshold=8.0)
    folder = write_results(res, tmp_path / "results", micrograph_path=mic)
    assert len(res.hits) >= 10

    out = tmp_path / "classes"
    argv = ["classify", str(folder), "-t", str(full), "-t", str(full), "--selection", "all",
            "--selection", "not chain B", "--name", "full", "--name", "no_b2m",
            "--angular-step", "2", "--out", str(out)]
    assert main(argv) == 0
    cls = read_classification(out)
    h = cls.hits
    assert len(h) == len(res.hits)
    # match hits to particles (within 3 px of the model origin)
    names = []
    for _, r in h.iterrows():
        d = np.hypot(truth["x_true"] - r.x, truth["y_true"] - r.y)
        names.append(truth["true_name"].iloc[int(np.argmin(d))] if d.min() <= 3 else None)
    h["true_name"] = names
    matched = h["true_name"].notna()
    acc = float(np.mean(h.loc[matched, "class_name"] == h.loc[matched, "true_name"]))
    print(f"\nsearch + CLI: {len(h)} hits, {int(matched.sum())} on particles, accuracy {acc:.3f}; "
          f"counts {cls.counts()}")
    assert matched.sum() >= 10 and acc >= 0.8
    for i, name in enumerate(cls.names):
        star = read_hits(out / f"class_{i + 1}_{name}.star")
        assert len(star) == cls.counts()[name]
        assert (star["rlnMicrographName"] == "mic.mrc").all()
    assert main(argv) == 2  # refuses to overwrite
