"""The fused numba kernels against their plain NumPy definitions."""

import numpy as np

from napari_2dtm.core import _kernels
from napari_2dtm.core.geometry import euler_to_matrix
from napari_2dtm.core.projection import FourierVolume, extract_slices, extract_slices_reference


def test_multiply_energy_matches_reference():
    rng = np.random.default_rng(0)
    a, p = ((rng.standard_normal((64, 33)) + 1j * rng.standard_normal((64, 33))).astype(np.complex64)
            for _ in range(2))
    f = rng.random((64, 33)).astype(np.float32)
    w = np.full(33, 2, np.float32)
    w[[0, -1]] = 1
    out = np.empty_like(a)
    e = _kernels.multiply_energy(a, f, p, w, out)
    o2, e2 = _kernels.multiply_energy_reference(a, f, p, w)
    np.testing.assert_allclose(out, o2, rtol=1e-5, atol=1e-5)
    assert abs(e - e2) / e2 < 1e-6


def test_update_stats_matches_reference():
    rng = np.random.default_rng(1)
    state = [np.full((40, 50), -np.inf, np.float32), np.zeros((40, 50), np.int32),
             np.zeros((40, 50)), np.zeros((40, 50))]
    ref = [s.copy() for s in state]
    for it in range(3):
        ccs = rng.standard_normal((4, 40, 50)).astype(np.float32)
        sc = rng.random(4).astype(np.float32) + 0.5
        g = np.arange(4, dtype=np.int32) + 4 * it
        _kernels.update_stats(ccs, sc, g, *state, 30, 45)
        _kernels.update_stats_reference(ccs, sc, g, *ref, 30, 45)
    for a, b in zip(state, ref):
        np.testing.assert_allclose(a[:30, :45], b[:30, :45], rtol=1e-5)
    assert np.all(np.isneginf(state[0][30:]))  # outside the image region untouched


def test_sums_are_precise_over_many_terms():
    # 2e5 additions of 0.1 in float32 would drift by ~1e-3 relative; float64 does not.
    state = [np.full((2, 8), -np.inf, np.float32), np.zeros((2, 8), np.int32),
             np.zeros((2, 8)), np.zeros((2, 8))]
    ccs = np.full((1000, 2, 8), 0.1, np.float32)
    sc = np.ones(1000, np.float32)
    g = np.zeros(1000, np.int32)
    for _ in range(200):
        _kernels.update_stats(ccs, sc, g, *state, 2, 8)
    assert abs(state[2][0, 0] / (2e5 * float(np.float32(0.1))) - 1) < 1e-12


def test_numba_slices_match_reference():
    rng = np.random.default_rng(2)
    vol = rng.standard_normal((24, 24, 24)).astype(np.float32)
    fv = FourierVolume(vol, pad=2)
    rots = euler_to_matrix(*rng.uniform([0, 0, 0], [360, 180, 360], (5, 3)).T)
    a = extract_slices(fv, rots, 24, 1.7)
    b = extract_slices_reference(fv.data, rots, 24, 1.7)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def _stats_sequential(ccs, sc, g, mip, best, s1, s2, ny, nx):
    """The statistics update one map after another in plain NumPy: float32 scores, float64
    sums of ``v`` and of the float32 ``v * v``, a later map wins only when strictly larger."""
    for b in range(len(ccs)):
        v = ccs[b, :ny, :nx] * sc[b]
        s1[:ny, :nx] += v
        s2[:ny, :nx] += v * v
        up = v > mip[:ny, :nx]
        mip[:ny, :nx][up] = v[up]
        best[:ny, :nx][up] = g[b]


def test_update_stats_is_bit_identical_to_one_map_at_a_time_whatever_the_chunks():
    # Resume and shard merging rely on the sums not depending on how maps are grouped.
    rng = np.random.default_rng(3)
    ccs = rng.standard_normal((7, 33, 41)).astype(np.float32)
    ccs[3, :5] = ccs[1, :5]  # exact ties: the first map met keeps the pixel
    sc = (rng.random(7) + 0.5).astype(np.float32)
    sc[3] = sc[1]
    g = np.arange(7, dtype=np.int32) * 5
    fresh = [np.full((33, 41), -np.inf, np.float32), np.zeros((33, 41), np.int32),
             np.zeros((33, 41)), np.zeros((33, 41))]
    ref = [a.copy() for a in fresh]
    _stats_sequential(ccs, sc, g, *ref, 30, 40)
    for chunks in ([7], [3, 4], [1] * 7):
        got = [a.copy() for a in fresh]
        i = 0
        for n in chunks:
            _kernels.update_stats(ccs[i:i + n], sc[i:i + n], g[i:i + n], *got, 30, 40,
                                  run=lambda fn, k: [fn(j) for j in range(k)])
            i += n
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)
    assert np.all(ref[1][:5, :40] != g[3])  # the tie went to map 1, not map 3
