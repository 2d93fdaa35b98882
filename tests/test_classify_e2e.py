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

from _planting import structure_file
from napari_2dtm import CTFParams, SearchConfig, extract_hits, search, write_results
from napari_2dtm.classify import (
    check_templates,
    classify_scores,
    load_template_set,
    read_classification,
    score_hits,
)
from napari_2dtm.cli import main
from napari_2dtm.geometry import euler_to_matrix, matrix_to_euler
from napari_2dtm.io import write_mrc
from napari_2dtm.results import read_hits
from napari_2dtm.simulate import simulate_micrograph

PX = 3.0  # A/px: b2m's 12 kDa is a low-resolution difference
CTF = CTFParams(defocus1_a=10000.0)
STEP = 1.5  # deg, the local grid's angular step
NAMES = ["full", "no_b2m"]
GRID = dict(angular_step_deg=STEP, shift_px=1, defocus_range_a=100.0, defocus_step_a=100.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import gemmi

    full = structure_file("1BD2.pdb.gz")
    st = gemmi.read_structure(str(full))
    st[0].remove_chain("B")
    no_b = tmp_path_factory.mktemp("models") / "1BD2_no_b2m.pdb"
    st.write_pdb(str(no_b))
    return full, no_b


@pytest.fixture(scope="module")
def templates(models):
    full, _ = models
    return load_template_set([full, full], PX, names=NAMES, selections=[None, "not chain B"])


def _truth_at_model_origin(sim, ts) -> pd.DataFrame:
    """Truth positions of the shared model origin (the simulator centres each class on
    its own centre of mass: atom r lands at A (r - c_k) + position)."""
    origin = np.asarray(ts.templates[0].params["center_a"])
    t = sim.truth.copy()
    xs, ys = [], []
    for _, r in t.iterrows():
        c_k = np.asarray(sim.templates[int(r["class"])].params["center_a"])
        d = euler_to_matrix(r.phi, r.theta, r.psi) @ (origin - c_k) / PX
        xs.append(r.x + d[0])
        ys.append(r.y + d[1])
    t["x_true"], t["y_true"] = xs, ys
    t["true_name"] = np.where(t["class_name"] == "1BD2", NAMES[0], NAMES[1])
    return t


def _start_hits(truth: pd.DataFrame, rng) -> pd.DataFrame:
    """True poses perturbed by one grid step; positions rounded to whole pixels."""
    rows = []
    for _, r in truth.iterrows():
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        tilt = Rotation.from_rotvec(np.radians(STEP) * axis).as_matrix()
        phi, theta, psi = matrix_to_euler(tilt @ euler_to_matrix(r.phi, r.theta, r.psi))
        rows.append(dict(x=float(np.round(r.x_true + rng.uniform(-0.5, 0.5))),
                         y=float(np.round(r.y_true + rng.uniform(-0.5, 0.5))),
                         phi=phi, theta=theta, psi=psi, defocus_a=CTF.defocus_mean_a,
                         x_true=r.x_true, y_true=r.y_true, true_name=r.true_name))
    return pd.DataFrame(rows)


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
