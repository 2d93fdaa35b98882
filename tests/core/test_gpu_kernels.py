"""The GPU kernels' NumPy references against the CPU kernels (CI), and each CuPy kernel
against its reference (GPU twins: skipped, not faked, without a usable device).

The references (:mod:`napari_2dtm.core._gpu`, ``*_reference``) are what the GPU plan
runs with ``xp=numpy``; the CPU numba kernels and the CPU correlator's padding are
independent implementations of the same definitions.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft

from napari_2dtm import gpu_info
from napari_2dtm.core import _gpu, _kernels
from napari_2dtm.core.geometry import euler_to_matrix, so3_grid
from napari_2dtm.core.projection import (
    FourierVolume,
    extract_slices,
    extract_slices_reference,
    subtract_edge_mean,
)


@pytest.fixture(scope="module")
def cp():
    if not gpu_info()["available"]:
        pytest.skip(f"no usable GPU: {gpu_info()['reason']}")
    import cupy

    return cupy


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _cplx(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


# ------------------------------------------------------------------ shared inputs
def _slice_inputs():
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((32, 32, 32)).astype(np.float32)
    fv = FourierVolume(vol, pad=2)
    rots = euler_to_matrix(*so3_grid(30, 30)[:17].T)
    return fv, rots, fv.scale_for(1.0, 32, 1.0)


def _box_inputs(h=24, nb=3, frame=(40, 50)):
    """Unnormalised inverse FFTs of random Hermitian box spectra ``(nb, h, h)``."""
    rng = np.random.default_rng(3)
    p = rng.standard_normal((nb, h, h)).astype(np.float32) + 0.3
    raw = (p * (h * h)).astype(np.float32)  # what an unnormalised C2R returns
    return p, raw, frame


def _multiply_inputs(hs=64, wk=33, nb=3, n_filters=5):
    rng = np.random.default_rng(1)
    img = _cplx(rng, (hs, wk))
    filt = rng.uniform(-1, 1, (n_filters, hs, wk)).astype(np.float32)
    pft = _cplx(rng, (nb, hs, wk))
    wts = np.full(wk, 2.0, np.float32)
    wts[0] = wts[-1] = 1.0
    # pairs in an order the engine never uses, with repeats: the kernel takes any pairs
    pidx = np.array([0, 2, 1, 1, 0, 2, 2], np.int32)
    fidx = np.array([4, 0, 3, 3, 1, 2, 0], np.int32)
    return img, filt, pft, wts, fidx, pidx


def _stats_inputs():
    rng = np.random.default_rng(2)
    m, hs, ws, ny, nx = 6, 40, 48, 37, 45
    # quarter-integer values and scales of 1 or 2: exact ties between maps, so the
    # strict > rule (first map wins) is exercised
    ccs = (rng.integers(-8, 9, (m, hs, ws)) / 4).astype(np.float32)
    scales = np.array([1, 2, 1, 1, 2, 1], np.float32)
    gidx = np.arange(10, 10 + m, dtype=np.int32)
    start = [np.full((ny, nx), -np.inf, np.float32), np.zeros((ny, nx), np.int32),
             np.zeros((ny, nx)), np.zeros((ny, nx))]
    # a second round starting from non-trivial statistics
    return ccs, scales, gidx, start, ny, nx


# ------------------------------------------------------------- references (CI)
def test_slice_reference_matches_the_numba_kernel():
    fv, rots, scale = _slice_inputs()
    out = np.empty((len(rots), 32, 17), np.complex64)
    ref = _gpu.REFERENCES.extract_slices(fv.data, rots, 32, scale, out)
    cpu = extract_slices(fv, rots, 32, scale)
    assert _rel(ref, cpu) < 1e-5
    assert np.all(ref[:, 0, 0] == 0)


@pytest.mark.parametrize("h, frame", [(24, (40, 50)), (16, (16, 30))])
def test_box_to_frame_reference_equals_the_cpu_padding(h, frame):
    """Edge mean, normalisation and placement: the rfft2 of the frame equals the CPU's
    row-then-column padded spectra of the edge-mean-subtracted projection."""
    from napari_2dtm.search._correlate import padded_spectra_reference

    p, raw, _ = _box_inputs(h=h)
    out = np.zeros((4, *frame), np.float32)  # one spare: the kernel writes only B frames
    _gpu.box_to_frame_reference(raw, 1.0 / (h * h), frame, False, out)
    assert np.all(out[3] == 0)
    cpu = padded_spectra_reference(subtract_edge_mean(p.copy()), frame)
    assert _rel(sfft.rfft2(out[:3]), cpu) < 1e-5
    # unit norm (fp16 storage): the same frames scaled to sum of squares 1
    unit = np.zeros_like(out)
    _gpu.box_to_frame_reference(raw, 1.0 / (h * h), frame, True, unit)
    ss = (unit[:3].astype(np.float64) ** 2).sum(axis=(1, 2))
    np.testing.assert_allclose(ss, 1.0, rtol=1e-5)
    np.testing.assert_allclose(unit[:3] * np.sqrt((out[:3].astype(np.float64) ** 2)
                                                  .sum(axis=(1, 2)))[:, None, None],
                               out[:3], rtol=1e-4, atol=1e-5)


def test_multiply_energy_reference_matches_the_numba_kernel():
    img, filt, pft, wts, fidx, pidx = _multiply_inputs()
    k = len(fidx)
    out = np.empty((k, *img.shape), np.complex64)
    energy = _gpu.multiply_energy_reference(img, filt, fidx, pft, pidx, wts, out)
    cpu = np.empty_like(out)
    e_cpu = np.empty(k)
    _kernels.multiply_energy_batch(img, filt, fidx.astype(np.int64), pft, pidx.astype(np.int64),
                                   wts, cpu, e_cpu, 0, k)
    assert _rel(out, cpu) < 1e-6
    np.testing.assert_allclose(energy, e_cpu, rtol=1e-6)


def test_half_storage_keeps_products_within_1e_3():
    """fp16 storage of image, filters and projection spectra (fp32 maths): products and
    energies stay within 1e-3 of float32 (values in half range, as the plan scales them)."""
    img, filt, pft, wts, fidx, pidx = _multiply_inputs()
    k = len(fidx)
    full = np.empty((k, *img.shape), np.complex64)
    e_full = _gpu.multiply_energy_reference(img, filt, fidx, pft, pidx, wts, full)
    half = np.empty_like(full)
    e_half = _gpu.multiply_energy_reference(_gpu.to_half(img), _gpu.to_half(filt), fidx,
                                            _gpu.to_half(pft), pidx, wts, half)
    assert _rel(half, full) < 1e-3
    np.testing.assert_allclose(e_half, e_full, rtol=1e-3)
    maps_full = sfft.irfft2(full, s=(64, 64))
    maps_half = sfft.irfft2(half, s=(64, 64))
    assert 1e-6 < _rel(maps_half, maps_full) < 1e-3  # fp16 is measurably not fp32


def test_map_scales_reference_equals_energy_scales():
    from napari_2dtm.search._correlate import energy_scales

    energy = np.array([0.0, 1.0, 37.5, 1e9])
    frame = (40, 50)
    np.testing.assert_array_equal(_gpu.map_scales_reference(energy, 2000, 1.0),
                                  energy_scales(energy, frame))
    # an unnormalised inverse FFT's 1/N folded into the factor
    np.testing.assert_allclose(_gpu.map_scales_reference(energy, 2000, 1 / 2000),
                               energy_scales(energy, frame) / 2000, rtol=1e-6)


def test_update_stats_reference_equals_the_numba_kernel_exactly():
    ccs, scales, gidx, start, ny, nx = _stats_inputs()
    ref = [a.copy() for a in start]
    cpu = [a.copy() for a in start]
    for _ in range(2):  # and again from the accumulated state
        _gpu.update_stats_reference(ccs, scales, gidx, *ref, ny, nx)
        _kernels.update_stats(ccs, scales, gidx, *cpu, ny, nx)
    for a, b in zip(ref, cpu):
        np.testing.assert_array_equal(a, b)
    # ties keep the first map: the best index of a pixel is the first map reaching its MIP
    v = ccs[:, :ny, :nx] * scales[:, None, None]
    np.testing.assert_array_equal(ref[1], gidx[np.argmax(v == v.max(0), axis=0)])


# ---------------------------------------------------------------- GPU twins
@pytest.mark.gpu
def test_gpu_slices_match_the_reference(cp):
    fv, rots, scale = _slice_inputs()
    out = cp.empty((len(rots), 32, 17), cp.complex64)
    got = _gpu.extract_slices(cp.asarray(fv.data), rots, 32, scale, out)
    assert _rel(cp.asnumpy(got), extract_slices_reference(fv.data, rots, 32, scale)) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("unit_norm", [False, True])
def test_gpu_box_to_frame_matches_the_reference(cp, unit_norm):
    h = 24
    _, raw, frame = _box_inputs(h=h)
    ref = np.zeros((4, *frame), np.float32)
    _gpu.box_to_frame_reference(raw, 1.0 / (h * h), frame, unit_norm, ref)
    got = cp.zeros((4, *frame), cp.float32)
    _gpu.box_to_frame(cp.asarray(raw), 1.0 / (h * h), frame, unit_norm, got)
    np.testing.assert_allclose(cp.asnumpy(got), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("half", [False, True])
def test_gpu_multiply_energy_matches_the_reference(cp, half):
    img, filt, pft, wts, fidx, pidx = _multiply_inputs()
    if half:
        img, filt, pft = _gpu.to_half(img), _gpu.to_half(filt), _gpu.to_half(pft)
    k = len(fidx)
    hs, wk = filt.shape[1:]
    ref = np.empty((k, hs, wk), np.complex64)
    e_ref = _gpu.multiply_energy_reference(img, filt, fidx, pft, pidx, wts, ref)
    out = cp.empty((k, hs, wk), cp.complex64)
    partial = cp.empty(k * _gpu.energy_blocks(hs), cp.float64)
    energy = _gpu.multiply_energy(cp.asarray(img), cp.asarray(filt), fidx, cp.asarray(pft),
                                  pidx, cp.asarray(wts), out, partial)
    assert _rel(cp.asnumpy(out), ref) < 1e-6
    np.testing.assert_allclose(cp.asnumpy(energy), e_ref, rtol=1e-6)


@pytest.mark.gpu
def test_gpu_fused_stats_equal_the_reference(cp):
    ccs, scales, gidx, start, ny, nx = _stats_inputs()
    ref = [a.copy() for a in start]
    got = [cp.asarray(a) for a in start]
    for _ in range(2):
        _gpu.update_stats_reference(ccs, scales, gidx, *ref, ny, nx)
        _gpu.update_stats(cp.asarray(ccs), cp.asarray(scales), gidx, *got, ny, nx)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(cp.asnumpy(a), b)  # same float ops in the same order


@pytest.mark.gpu
def test_gpu_map_scales_match_the_reference(cp):
    energy = np.array([0.0, 1.0, 37.5, 1e9])
    np.testing.assert_allclose(cp.asnumpy(_gpu.map_scales(cp.asarray(energy), 2000, 1 / 2000)),
                               _gpu.map_scales_reference(energy, 2000, 1 / 2000), rtol=1e-7)
