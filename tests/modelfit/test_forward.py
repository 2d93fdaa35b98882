"""The forward model from atoms in groups: equal to the template's projection when
nothing moves and to the moved atoms' template when groups move; its gradient equals
the NumPy oracle and finite differences."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from helpers.model_sim import simulated_hits
from helpers.planting import structure
from napari_2dtm.core.diffproj import PoseScore, rotvec_matrix
from napari_2dtm.core.projection import FourierVolume
from napari_2dtm.modelfit.forward import (
    GroupVolumes,
    gridding_corrected,
    score_particles,
    score_particles_reference,
)
from napari_2dtm.modelfit.groups import GroupMotion, make_groups
from napari_2dtm.modelfit.particles import prepare_particles
from napari_2dtm.modelfit.refine import model_potential
from napari_2dtm.simulate import _atom_class, project_atoms
from napari_2dtm.templates.atoms import read_atoms
from napari_2dtm.templates.model import _auto_box, template_from_model

PX = 1.5


@pytest.fixture(scope="module")
def setup():
    src = structure("1A28")
    mics = simulated_hits(src, 6, pixel_size_a=PX, per_micrograph=6, shape=(384, 384), seed=3)
    atoms = read_atoms(src)
    groups = make_groups(atoms)  # one group per chain
    tpl = template_from_model(src, PX)
    c0 = np.asarray(tpl.params["center_a"])
    vols = GroupVolumes(groups, PX, 30.0)
    box = _auto_box(groups.atoms, c0, PX)
    data = prepare_particles(mics, box, vols.size, None)
    return groups, vols, data, c0, box, mics


#: the oracle's band: atoms point-sampled on 1.5 A pixels (the simulator's projection, and
#: gemmi's grid) alias from beyond Nyquist, ~1 % of the CC at 4 A and a few % at 3 A
ORACLE_BAND_A = 6.0


def _analytic_scores(data, groups, motion, c0):
    """The oracle: each particle's CC with the moved atoms projected analytically in real
    space (the simulator's Gaussian line integrals), transformed, shifted and filtered, on
    frequencies up to ``ORACLE_BAND_A``; returns ``(oracle, ours)``."""
    atoms = groups.atoms
    db = motion.atom_b(groups.masks)
    moved = dataclasses.replace(atoms, xyz=motion.apply(atoms.xyz, groups.masks, groups.centers_a),
                                b_iso=db - db.min())
    ac = _atom_class(moved, c0, 30.0 + db.min(), use_model_bfactors=True)
    b = data.batch.band(ORACLE_BAND_A)
    p_ = b.size
    out = []
    for p in range(len(b)):
        # the shift moves the atoms (a phase shift of a pixel-sampled image would alias)
        s3 = b.rot[p].T @ np.array([b.shift_px[p, 0] * PX, b.shift_px[p, 1] * PX, 0.0])
        shifted = dataclasses.replace(ac, rel_xyz=ac.rel_xyz + s3)
        proj = project_atoms(shifted, b.rot[p], p_, PX)
        t = b.filt[p] * np.fft.rfft2(np.fft.ifftshift(proj)).ravel()[b.grid_idx]
        out.append(np.sum(b.w * (np.conj(t) * b.img[p]).real) / np.sqrt(np.sum(b.w * np.abs(t) ** 2)))
    ours = score_particles(b, GroupVolumes(groups, PX, 30.0), motion, c0, want_grad=False).cc
    return np.array(out), ours


def test_unmoved_groups_give_the_models_template(setup):
    groups, vols, data, c0, box, _ = setup
    m = GroupMotion.zero(len(groups))
    ref, cc = _analytic_scores(data, groups, m, c0)
    np.testing.assert_allclose(cc, ref, rtol=0.015)
    assert np.all(cc > 5)  # real particles, not noise
    # the whole-model template (the pose step's) agrees too
    fv = FourierVolume(gridding_corrected(model_potential(groups, m, c0, box, PX, 30.0)), pad=2)
    b = data.batch
    scale = fv.scale_for(PX, b.size, PX)
    pose = [PoseScore(data.patches[p], data.whitening[data.mic[p]], fv, scale,
                      data.ctfs[data.mic[p]], PX, ORACLE_BAND_A).value(b.rot[p], b.shift_px[p],
                                                                       data.delta_a[p])
            for p in range(len(b))]
    np.testing.assert_allclose(pose, cc, rtol=0.01)


def test_moved_groups_give_the_moved_atoms_template(setup):
    groups, vols, data, c0, box, _ = setup
    m = GroupMotion.zero(len(groups))
    m.rotvec[1] = np.deg2rad(6.0) * np.array([0.0, 0.6, 0.8])
    m.shift_a[1] = [1.5, -2.0, 1.0]
    m.delta_b_a2[0] = 25.0
    ref, cc = _analytic_scores(data, groups, m, c0)
    np.testing.assert_allclose(cc, ref, rtol=0.015)
    unmoved = _analytic_scores(data, groups, GroupMotion.zero(len(groups)), c0)[1]
    # the motion changes the images (least where it is along the beam)
    assert np.mean(np.abs(cc - unmoved)) > 0.03 * np.mean(unmoved)


def test_kernel_equals_numpy_oracle(setup):
    groups, vols, data, c0, _, _ = setup
    rng = np.random.default_rng(1)
    g = len(groups)
    m = GroupMotion(rng.normal(0, 0.03, (g, 3)), rng.normal(0, 0.7, (g, 3)), rng.normal(0, 8, g))
    sub = data.batch.take(np.arange(3))
    a = score_particles(sub, vols, m, c0)
    b = score_particles_reference(sub, vols, m, c0)
    np.testing.assert_allclose(a.cc, b.cc, rtol=1e-9)
    for x, y in ((a.rotvec, b.rotvec), (a.shift_a, b.shift_a), (a.delta_b, b.delta_b)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8 * np.abs(y).max())


def test_gradient_equals_finite_differences(setup):
    groups, vols, data, c0, _, _ = setup
    rng = np.random.default_rng(2)
    g = len(groups)
    m = GroupMotion(rng.normal(0, 0.03, (g, 3)), rng.normal(0, 0.7, (g, 3)), rng.normal(0, 8, g))
    sub = data.batch.take(np.arange(3)).band(6.0)
    grad = score_particles(sub, vols, m, c0)

    def total(mm):
        return score_particles(sub, vols, mm, c0, want_grad=False).cc.sum()

    for k in range(g):
        for j in range(3):
            lo, hi = m.copy(), m.copy()
            hi.shift_a[k, j] += 1e-4
            lo.shift_a[k, j] -= 1e-4
            assert (total(hi) - total(lo)) / 2e-4 == pytest.approx(grad.shift_a[k, j], rel=1e-4,
                                                                    abs=1e-4)
            d = np.zeros(3)
            d[j] = 1e-5
            vals = []
            for sgn in (1, -1):
                mm = m.copy()
                mm.rotvec[k] = Rotation.from_matrix(
                    rotvec_matrix(sgn * d) @ rotvec_matrix(m.rotvec[k])).as_rotvec()
                vals.append(total(mm))
            # trilinear interpolation: exact inside voxels, kinks at faces
            scale = np.abs(grad.rotvec[k]).max()
            assert (vals[0] - vals[1]) / 2e-5 == pytest.approx(grad.rotvec[k, j], abs=0.01 * scale)
        lo, hi = m.copy(), m.copy()
        hi.delta_b_a2[k] += 1e-2
        lo.delta_b_a2[k] -= 1e-2
        assert (total(hi) - total(lo)) / 2e-2 == pytest.approx(grad.delta_b[k], rel=1e-4, abs=1e-7)
