import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_2dtm.core.geometry import (
    angular_distance_deg,
    euler_to_matrix,
    local_grid,
    matrix_to_euler,
    so3_grid,
    symmetry_ranges,
)


def test_matrix_matches_scipy_intrinsic_zyz():
    ang = np.random.default_rng(0).uniform([0, 0, 0], [360, 180, 360], (50, 3))
    a = euler_to_matrix(*ang.T)
    ref = Rotation.from_euler("ZYZ", ang, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(a, ref, atol=1e-12)


def test_euler_round_trip_including_poles():
    ang = np.random.default_rng(1).uniform([0, 0, 0], [360, 180, 360], (200, 3))
    ang = np.concatenate([ang, [[10, 0, 20], [300, 180, 40]]])
    back = matrix_to_euler(euler_to_matrix(*ang.T))
    d = angular_distance_deg(euler_to_matrix(*back.T), euler_to_matrix(*ang.T))
    assert d.max() < 1e-5


def test_grid_counts_match_published_sizes():
    # torch-so3 / Leopard-EM ring grid: 825,480 at 3.0/2.0 and 310,320 at 4.0/3.0 (C1).
    assert len(so3_grid(3.0, 2.0)) == 825_480
    assert len(so3_grid(4.0, 3.0)) == 310_320
    g = so3_grid(2.5, 1.5)
    assert abs(len(g) - 1_584_480) / 1_584_480 < 1e-3
    assert g[:, 2].max() < 360.0  # psi end-exclusive: no 0/360 duplicate


def test_grid_covers_so3_uniformly():
    # Every random rotation is within about one step of a grid point.
    g = so3_grid(10.0, 10.0)
    rg = euler_to_matrix(*g.T)
    rnd = Rotation.random(200, random_state=2).as_matrix().transpose(0, 2, 1)
    dmin = np.array([angular_distance_deg(rg, r[None]).min() for r in rnd])
    assert dmin.max() < 10.0
    assert np.median(dmin) < 6.0


@pytest.mark.parametrize("sym,expect", [("C1", (360, 180)), ("C4", (90, 180)), ("D2", (180, 90)),
                                        ("O", (90, 54.7356)), ("I", (180, 31.7175))])
def test_symmetry_ranges(sym, expect):
    assert symmetry_ranges(sym) == pytest.approx(expect, abs=1e-3)


def test_symmetry_reduces_grid():
    assert len(so3_grid(5, 5, "C2")) == pytest.approx(len(so3_grid(5, 5)) / 2, rel=0.02)
    with pytest.raises(ValueError, match="unknown symmetry"):
        symmetry_ranges("X5")


def test_local_grid_stays_near_centre():
    c = [40.0, 70.0, 200.0]
    g = local_grid(c, 3.0, 1.0)
    d = angular_distance_deg(euler_to_matrix(*g.T), euler_to_matrix(*c))
    assert d.min() < 1e-4 and d.max() < 3.0 * np.sqrt(2) + 0.1


def test_rotate_about_random_axes_turns_by_exactly_the_angle():
    from napari_2dtm.core.geometry import rotate_about_random_axes

    rng = np.random.default_rng(4)
    a = so3_grid(30.0, 30.0)[::7]
    b = rotate_about_random_axes(a, 2.5, rng)
    d = angular_distance_deg(euler_to_matrix(*a.T), euler_to_matrix(*b.T))
    np.testing.assert_allclose(d, 2.5, atol=1e-6)
    # the axes differ: the turned orientations are not all moved the same way
    assert np.ptp(b - a, axis=0).max() > 1.0
