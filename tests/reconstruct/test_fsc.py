"""FSC, resolution and masks (napari_2dtm.reconstruct.fsc) on small hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_2dtm.reconstruct.fsc import fsc, fsc_resolution, shell_frequencies, spherical_mask


def test_fsc_resolution_interpolates():
    curve = np.array([1.0, 0.9, 0.5, 0.2, 0.1, 0.0])
    # crossing between shells 3 (0.2) and 4 (0.1) at 3.57; box 10, pixel 2 A
    assert fsc_resolution(curve, 10, 2.0) == pytest.approx(20.0 / (3 + 0.057 / 0.1), rel=1e-6)
    assert fsc_resolution(np.ones(6), 10, 2.0) == 4.0  # never crosses: Nyquist


def test_fsc_of_a_map_with_itself_and_with_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 16, 16))
    assert fsc(a, a) == pytest.approx(np.ones(9))
    assert fsc(a, -a) == pytest.approx(-np.ones(9))
    # independent noise: near zero in the well-sampled shells
    assert np.abs(fsc(a, rng.normal(size=a.shape))[3:]).max() < 0.35
    assert shell_frequencies(16, 2.0)[-1] == pytest.approx(0.25)  # Nyquist of 2 A pixels


def test_spherical_mask_is_one_inside_and_zero_outside():
    m = spherical_mask(32, 10, 4)
    assert m.dtype == np.float32 and m.shape == (32, 32, 32)
    assert m[16, 16, 16] == 1.0 and m[16, 16, 16 + 10] == 1.0
    assert m[16, 16, 16 + 14] == pytest.approx(0.0, abs=1e-6) and m[0, 0, 0] == 0.0
