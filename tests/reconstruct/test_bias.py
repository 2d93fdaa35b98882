"""Template-bias metric Omega (napari_2dtm.reconstruct.bias): reference tests 3-4 of the method note
(section 3.4): unit tests, and the Einstein-from-noise / baited reconstruction toy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.toy_volumes import add_noise, atoms_volume, project_all, random_atoms, random_poses
from napari_2dtm.core.geometry import angular_distance_deg, euler_to_matrix
from napari_2dtm.errors import InputError
from napari_2dtm.reconstruct.bias import difference_mask, fit_to_box, omega, template_bias
from napari_2dtm.reconstruct.reconstructor import reconstruct

N = 32


@pytest.fixture(scope="module")
def baited():
    """32^3 volume of 150 atoms; the omit template lacks the 13 atoms within 4 voxels of
    one atom (the note's toy)."""
    atoms = random_atoms(150, 11, seed=7)
    d = np.linalg.norm(atoms[:, None] - atoms[None], axis=-1)
    counts = (d <= 4.0).sum(1)
    centre = atoms[int(np.argmin(np.abs(counts - 13)))]
    keep = np.linalg.norm(atoms - centre, axis=1) > 4.0
    assert (~keep).sum() == 13
    return atoms, keep, atoms_volume(atoms, N), atoms_volume(atoms[keep], N)


def test_omega_is_zero_for_identical_maps(baited):
    _, _, tf, to = baited
    rng = np.random.default_rng(0)
    rho = tf + rng.normal(0, 0.01 * tf.std(), tf.shape)
    rep = template_bias(rho, rho.copy(), tf, to)
    assert rep.omega == pytest.approx(0.0, abs=1e-12)
    assert rep.scale == pytest.approx(1.0)


@pytest.mark.parametrize("f", [0.0, 0.3, 0.75, 1.4])
def test_omega_is_one_minus_the_masked_scale(baited, f):
    _, _, tf, to = baited
    rng = np.random.default_rng(1)
    rho_full = tf + rng.normal(0, 0.02 * tf.std(), tf.shape)
    mask = difference_mask(tf, to)
    rho_omit = rho_full.copy()
    rho_omit[mask] *= f
    assert omega(rho_full, rho_omit, mask) == pytest.approx(1.0 - f, abs=1e-12)
    # the scale match outside the mask leaves this exact case unchanged
    assert template_bias(rho_full, rho_omit, tf, to).omega == pytest.approx(1.0 - f, abs=1e-9)
    # and cancels a global rescaling of the omit reconstruction
    assert template_bias(rho_full, 2.5 * rho_omit, tf, to).omega == pytest.approx(1.0 - f, abs=1e-9)


def test_mask_follows_the_divisor_rule(baited):
    _, _, tf, to = baited
    d = tf - to
    level = np.sort(d.ravel())[-100:].mean()
    prev = prev_mask = None
    for divisor in (3.0, 5.0, 10.0, 20.0):
        m = difference_mask(tf, to, divisor=divisor)
        assert m.sum() == int((d > level / divisor).sum())
        assert m.sum() >= 13  # at least the omitted atoms' centre voxels
        if prev is not None:
            assert m.sum() > prev  # a larger divisor gives a looser mask
            assert (m | prev_mask).sum() == m.sum()  # and contains the tighter one
        prev, prev_mask = int(m.sum()), m
    rep = template_bias(tf, to, tf, to, divisor=10.0)
    assert rep.n_mask_voxels == int((d > level / 10).sum())
    assert rep.mask_level == pytest.approx(level / 10)
    with pytest.raises(InputError):
        difference_mask(tf, tf)
    with pytest.raises(InputError):
        difference_mask(tf, to[:-1])


def test_fit_to_box_keeps_the_centre():
    v = np.zeros((9, 9, 9))
    v[4, 4, 4] = 1
    assert fit_to_box(v, 16)[8, 8, 8] == 1
    w = np.zeros((16, 16, 16))
    w[8, 8, 8] = 1
    assert fit_to_box(w, 10)[5, 5, 5] == 1


def _poses_by_max_correlation(images, refs, ref_images):
    p = ref_images.reshape(len(refs), -1)
    p = p - p.mean(1, keepdims=True)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    return refs[np.argmax(images.reshape(len(images), -1) @ p.T, axis=1)]


def test_einstein_from_noise_vs_true_particles(baited):
    """Poses by maximum correlation over 4000 random orientations, found with the full and
    with the omit template; 3000 centred images per case. Noise only: the omitted density
    appears only with the full template (Omega >= 0.8); true particles at per-pixel SNR
    1: it is there with both (Omega <= 0.15)."""
    atoms, keep, tf, to = baited
    refs = random_poses(4000, seed=11)
    ref_f = project_all(atoms, refs, N)
    ref_o = project_all(atoms[keep], refs, N)
    n_img = 3000

    def bias(images):
        maps = []
        for ref in (ref_f, ref_o):
            poses = _poses_by_max_correlation(images, refs, ref)
            table = pd.DataFrame(poses, columns=["phi", "theta", "psi"])
            maps.append(reconstruct(images, 1.0, table, use_ctf=False, mask=None).full)
        return template_bias(maps[0], maps[1], tf, to), poses

    noise = np.random.default_rng(1).normal(size=(n_img, N, N))
    rep_noise, _ = bias(noise)
    assert rep_noise.omega >= 0.8, rep_noise

    true = random_poses(n_img, seed=12)
    images, _ = add_noise(project_all(atoms, true, N), 1.0, seed=4)
    rep_true, poses = bias(images)
    assert rep_true.omega <= 0.15, rep_true
    err = angular_distance_deg(euler_to_matrix(*poses.T), euler_to_matrix(*true.T))
    assert np.median(err) < 15  # the 4000-orientation grid is coarse (the note: 9 deg)

