"""Local scoring reproduces the search's scale and recovers poses near a known one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from helpers.planting import plant, structure
from napari_2dtm import CTFParams, SearchConfig, search
from napari_2dtm.core.geometry import angular_distance_deg, euler_to_matrix, matrix_to_euler
from napari_2dtm.hits.local import LocalScorer, local_search

PX = 4.0
CTF = CTFParams(defocus1_a=10000, defocus2_a=9600, astigmatism_angle_deg=30)


@pytest.fixture(scope="module")
def planted():
    from napari_2dtm.templates.model import template_from_model

    tpl = template_from_model(structure("1BD2"), PX)
    img, truth = plant(tpl, (160, 160), 5, CTF, target_snr=14.0, seed=3)
    return tpl, img, truth


def test_scores_equal_the_search_mip(planted):
    """At each hit's own pose, pixel and defocus the local CC is the search's MIP."""
    tpl, img, truth = planted
    cfg = SearchConfig(ctf=CTF, out_of_plane_step_deg=10, in_plane_step_deg=10,
                       defocus_range_a=400, defocus_step_a=400, device="cpu",
                       progress_interval_s=1e9)
    r = search(img, PX, tpl, cfg)
    assert len(r.hits) >= 4
    scorer = LocalScorer(img, PX, CTF)
    for h in r.hits.itertuples():
        cc = scorer.score(tpl, h.x, h.y, [(h.phi, h.theta, h.psi)],
                          [h.defocus_a - CTF.defocus_mean_a], shift_px=1)
        # The centre of the 3 x 3 shift window is the hit pixel itself.
        assert cc[0, 0, 1, 1] == pytest.approx(h.mip, rel=0.01)
        # The hit is a local maximum of the MIP, so no neighbour beats it at this pose.
        assert cc[0, 0].max() <= h.mip * 1.01
    out = local_search(img, PX, tpl, r.hits, CTF, angular_range_deg=0.0, shift_px=0,
                       result=r)
    # Same pose, same pixel: cc, snr and z-score are the search's values.
    np.testing.assert_allclose(out["cc"], r.hits["mip"], rtol=0.01)
    np.testing.assert_allclose(out["snr"], r.hits["snr"], rtol=0.01)
    np.testing.assert_allclose(out["zscore"], r.hits["zscore"], rtol=0.02)


def test_local_search_recovers_the_true_pose(planted):
    """Poses 4 degrees off the truth and 1 px off: a local grid brings them back."""
    tpl, img, truth = planted
    rng = np.random.default_rng(0)
    rows = []
    for x, y, *ang in truth:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        off = Rotation.from_rotvec(np.radians(4.0) * axis).as_matrix()
        pert = matrix_to_euler(off @ euler_to_matrix(*ang))
        rows.append(dict(x=x + 1, y=y - 1, phi=pert[0], theta=pert[1], psi=pert[2],
                         defocus_a=CTF.defocus_mean_a))
    hits = pd.DataFrame(rows)
    before = local_search(img, PX, tpl, hits, CTF, angular_range_deg=0.0, shift_px=0)
    after = local_search(img, PX, tpl, hits, CTF, angular_range_deg=6.0, angular_step_deg=2.0,
                         shift_px=2)
    assert (after["cc"] > before["cc"]).all()
    err_before, err_after, pos_err = [], [], []
    for t, b, a in zip(truth, before.itertuples(), after.itertuples()):
        r_true = euler_to_matrix(*t[2:])
        err_before.append(float(angular_distance_deg(euler_to_matrix(b.phi, b.theta, b.psi),
                                                     r_true)))
        err_after.append(float(angular_distance_deg(euler_to_matrix(a.phi, a.theta, a.psi),
                                                    r_true)))
        pos_err.append(np.hypot(a.x - t[0], a.y - t[1]))
    assert np.median(err_after) < 0.6 * np.median(err_before), (err_before, err_after)
    assert max(pos_err) <= 0.75, pos_err


def test_noise_scores_are_unit_normal():
    """Pure white noise: local CCs at arbitrary poses are N(0, 1)."""
    from napari_2dtm.templates.model import template_from_model

    tpl = template_from_model(structure("1BD2"), PX)
    img = np.random.default_rng(5).standard_normal((192, 192)).astype(np.float32)
    scorer = LocalScorer(img, PX, CTF)
    rng = np.random.default_rng(1)
    vals = []
    for _ in range(12):
        x, y = rng.uniform(40, 150, 2)
        ori = rng.uniform([0, 0, 0], [360, 180, 360], (4, 3))
        vals.append(scorer.score(tpl, x, y, ori, [0.0], shift_px=2).ravel())
    v = np.concatenate(vals)
    assert abs(v.mean()) < 0.15
    assert abs(v.std() - 1.0) < 0.15
