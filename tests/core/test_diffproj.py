"""The differentiable projection-matching score: its gradient against finite differences,
its fused kernel against the NumPy formulas, its value against the local scorer."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.planting import plant, structure
from napari_2dtm import CTFParams
from napari_2dtm.core.diffproj import (
    PoseScore,
    left_jacobian,
    rotvec_matrix,
    slice_points,
    slice_points_reference,
)
from napari_2dtm.core.filters import prepare_image
from napari_2dtm.core.geometry import euler_to_matrix
from napari_2dtm.core.projection import FourierVolume
from napari_2dtm.errors import InputError
from napari_2dtm.hits.local import LocalScorer

PX = 2.0
CTF = CTFParams(defocus1_a=10000, defocus2_a=9600, astigmatism_angle_deg=30, bfactor_a2=20)


@pytest.fixture(scope="module")
def case():
    from napari_2dtm.templates.model import template_from_model

    tpl = template_from_model(structure("1BD2"), PX)
    img, truth = plant(tpl, (224, 224), 1, CTF, target_snr=14.0, seed=3)
    prep = prepare_image(img, PX, None)
    fv = FourierVolume(tpl.volume, pad=2)
    p = 2 * tpl.box
    scale = fv.scale_for(tpl.pixel_size_a, p, prep.pixel_size_a)
    x, y, *ang = truth[0]
    r, c = int(round(y)), int(round(x))
    im = np.pad(prep.image, p)
    patch = im[r + p - p // 2 : r + p + p // 2, c + p - p // 2 : c + p + p // 2].astype(float)
    white = prep.whitening.on_grid((p, p), prep.pixel_size_a)
    return dict(tpl=tpl, img=img, truth=truth[0], fv=fv, scale=scale, patch=patch, white=white,
                px=prep.pixel_size_a)


def _fd(f, x0, h):
    return (f(x0 + h) - f(x0 - h)) / (2 * h)


@pytest.mark.parametrize("band", [None, 8.0])
def test_gradient_matches_finite_differences(case, band):
    ps = PoseScore(case["patch"], case["white"], case["fv"], case["scale"], CTF, case["px"], band)
    rng = np.random.default_rng(0)
    a_true = euler_to_matrix(*case["truth"][2:])
    for _ in range(5):  # random poses near and away from the optimum
        a0 = rotvec_matrix(rng.normal(size=3) * 0.05) @ a_true
        s0, d0 = rng.normal(size=2), float(rng.normal() * 150)
        score, g_rot, g_s, g_d = ps.value_and_grad(a0, s0, d0)
        assert score == pytest.approx(ps.value(a0, s0, d0), rel=1e-12)
        # The trilinear gradient jumps across voxel faces: of a few step sizes the
        # smallest error counts (a face crossed by one step is missed by another).
        errs = []
        for h in (1e-7, 3e-8):
            fd_r = np.array([_fd(lambda t, e=e, a0=a0, s0=s0, d0=d0:
                                 ps.value(rotvec_matrix(t * e) @ a0, s0, d0), 0.0, h)
                             for e in np.eye(3)])
            errs.append(np.abs(fd_r - g_rot).max() / np.abs(fd_r).max())
        assert min(errs) < 1e-3, errs
        fd_s = np.array([_fd(lambda t, e=e, a0=a0, s0=s0, d0=d0: ps.value(a0, s0 + t * e, d0),
                             0.0, 1e-6) for e in np.eye(2)])
        np.testing.assert_allclose(g_s, fd_s, rtol=1e-3, atol=1e-3 * np.abs(fd_s).max())
        fd_d = _fd(lambda t, a0=a0, s0=s0, d0=d0: ps.value(a0, s0, d0 + t), 0.0, 1e-3)
        assert g_d == pytest.approx(fd_d, rel=1e-3, abs=1e-3 * abs(fd_d) + 1e-9)


def test_fused_kernel_equals_the_numpy_formulas(case):
    ps = PoseScore(case["patch"], case["white"], case["fv"], case["scale"], CTF, case["px"])
    a0 = rotvec_matrix([0.02, -0.01, 0.03]) @ euler_to_matrix(*case["truth"][2:])
    got = ps.value_and_grad(a0, (0.3, -0.7), 55.0)
    ref = ps.value_and_grad_reference(a0, (0.3, -0.7), 55.0)
    assert got[0] == pytest.approx(ref[0], rel=1e-7)
    for a, b in zip(got[1:], ref[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.max(np.abs(b)))
    s, ds = slice_points(case["fv"], a0, ps.kx, ps.ky, case["scale"])
    s2, ds2 = slice_points_reference(case["fv"].data, a0, ps.kx, ps.ky, case["scale"])
    np.testing.assert_allclose(s, s2, rtol=1e-6, atol=1e-6 * np.abs(s2).max())
    np.testing.assert_allclose(ds, ds2, rtol=1e-6, atol=1e-6 * np.abs(ds2).max())


def test_score_is_the_local_scorers_and_peaks_at_the_truth(case):
    """At the planted pose the score is the engine's normalised CC (LocalScorer, which
    equals the search MIP), and the correlation map peaks at zero shift."""
    ps = PoseScore(case["patch"], case["white"], case["fv"], case["scale"], CTF, case["px"])
    x, y, *ang = case["truth"]
    a = euler_to_matrix(*ang)
    local = LocalScorer(case["img"], PX, CTF).score(case["tpl"], x, y, [ang], [0.0], 0)
    assert ps.value(a) == pytest.approx(float(local[0, 0, 0, 0]), rel=0.01)
    cc = ps.correlation_map(a)
    assert np.unravel_index(int(np.argmax(cc)), cc.shape) == (0, 0)
    assert cc[0, 0] == pytest.approx(ps.value(a), rel=1e-9)
    # a degree away in any direction scores less
    for e in np.eye(3):
        assert ps.value(rotvec_matrix(np.radians(1.0) * e) @ a) < ps.value(a)


def test_left_jacobian_chains_rotation_increments():
    rng = np.random.default_rng(1)
    w, d = rng.normal(size=3) * 0.4, rng.normal(size=3) * 1e-6
    lhs = rotvec_matrix(w + d)
    rhs = rotvec_matrix(left_jacobian(w) @ d) @ rotvec_matrix(w)
    np.testing.assert_allclose(lhs, rhs, atol=1e-11)


def test_bad_patches_are_refused(case):
    args = (case["white"], case["fv"], case["scale"], CTF, case["px"])
    with pytest.raises(InputError, match="square with an even side"):
        PoseScore(case["patch"][:, :-2], *args)
    bad = case["patch"].copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        PoseScore(bad, *args)
