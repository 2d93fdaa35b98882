"""CuPy kernels against their NumPy definitions (skipped, not faked, without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_2dtm import gpu_info
from napari_2dtm.core import _kernels
from napari_2dtm.core.geometry import euler_to_matrix, so3_grid
from napari_2dtm.core.projection import FourierVolume, extract_slices_reference

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    if not gpu_info()["available"]:
        pytest.skip(f"no usable GPU: {gpu_info()['reason']}")
    import cupy

    return cupy


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_slices_match_the_reference(cp):
    from napari_2dtm.core import _gpu

    rng = np.random.default_rng(0)
    vol = rng.standard_normal((32, 32, 32)).astype(np.float32)
    fv = FourierVolume(vol, pad=2)
    rots = euler_to_matrix(*so3_grid(30, 30)[:17].T)
    ref = extract_slices_reference(fv.data, rots, 32, fv.scale_for(1.0, 32, 1.0))
    got = _gpu.extract_slices(cp.asarray(fv.data), cp.asarray(rots), 32,
                              fv.scale_for(1.0, 32, 1.0))
    assert _rel(cp.asnumpy(got), ref) < 1e-5


def test_multiply_energy_matches_the_reference(cp):
    from napari_2dtm.core import _gpu

    rng = np.random.default_rng(1)
    hs, wk, nb, nd = 64, 33, 3, 4
    img = (rng.standard_normal((hs, wk)) + 1j * rng.standard_normal((hs, wk))).astype(np.complex64)
    filt = rng.standard_normal((nd, hs, wk)).astype(np.float32)
    proj = (rng.standard_normal((nb, hs, wk)) + 1j * rng.standard_normal((nb, hs, wk))).astype(
        np.complex64)
    wts = np.full(wk, 2.0, np.float32)
    wts[0] = wts[-1] = 1.0
    pidx = np.repeat(np.arange(nb), nd)
    fidx = np.tile(np.arange(nd), nb)
    out, energy = _gpu.multiply_energy(cp.asarray(img), cp.asarray(filt), fidx, cp.asarray(proj),
                                       pidx, cp.asarray(wts))
    for i in range(nb * nd):
        r, e = _kernels.multiply_energy_reference(img, filt[fidx[i]], proj[pidx[i]], wts)
        assert _rel(cp.asnumpy(out[i]), r) < 1e-6
        assert energy[i] == pytest.approx(float(e), rel=1e-4)


def test_fused_stats_match_the_reference(cp):
    from napari_2dtm.core import _gpu

    rng = np.random.default_rng(2)
    m, hs, ws, ny, nx = 5, 40, 48, 37, 45
    ccs = rng.standard_normal((m, hs, ws)).astype(np.float32)
    scales = rng.uniform(0.5, 2, m).astype(np.float32)
    gidx = np.arange(10, 10 + m, dtype=np.int32)
    ref = [np.full((hs, ws), -np.inf, np.float32), np.zeros((hs, ws), np.int32),
           np.zeros((hs, ws)), np.zeros((hs, ws))]
    _kernels.update_stats_reference(ccs, scales, gidx, *ref, ny, nx)
    got = [cp.asarray(a) for a in (np.full((hs, ws), -np.inf, np.float32),
                                   np.zeros((hs, ws), np.int32), np.zeros((hs, ws)),
                                   np.zeros((hs, ws)))]
    _gpu.update_stats(cp.asarray(ccs), scales, gidx, *got, ny, nx)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(cp.asnumpy(a), b, rtol=1e-6, atol=1e-6)
