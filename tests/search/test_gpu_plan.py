"""The GPU plan (:mod:`napari_2dtm.search._gpu_plan`) against the CPU engine.

CI: the plan's orchestration (buffers, padding, pairs, chunks, the folded FFT
normalisation, fp16 storage) runs with ``xp=numpy`` on the kernels' NumPy references
and must give the CPU correlator's maps and the CPU search's statistics. GPU twins
(skipped without a usable device): the CuPy plan against the NumPy plan, a whole GPU
search against the CPU search, and a planted-particle search on the GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_2dtm import CTFParams, Search, SearchConfig, gpu_info
from napari_2dtm.core.geometry import euler_to_matrix, so3_grid
from napari_2dtm.search import _gpu_plan
from napari_2dtm.search.statistics import RunningStats
from napari_2dtm.templates.template import Template

PX = 4.0


@pytest.fixture(scope="module")
def cp():
    if not gpu_info()["available"]:
        pytest.skip(f"no usable GPU: {gpu_info()['reason']}")
    import cupy

    return cupy


def _template(n=20):
    """A lumpy, asymmetric particle (distinct projections for distinct orientations)."""
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32) - n // 2
    vol = np.zeros((n, n, n), np.float32)
    for cz, cy, cx, s in ((0, 0, 0, 3.0), (3, -2, 1, 1.5), (-2, 3, -3, 1.2), (1, 2, 4, 1.0)):
        vol += np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s))
    return Template(vol, PX, source="lumps")


def _search(device="cpu", n_orient=12, batch_size=5, shape=(70, 84), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.standard_normal(shape).astype(np.float32)
    cfg = SearchConfig(ctf=CTFParams(defocus1_a=10000), orientations=so3_grid(20, 20)[:n_orient],
                       defocus_range_a=400.0, defocus_step_a=400.0, device=device,
                       batch_size=batch_size, progress_interval_s=1e9, checkpoint_interval_s=0)
    return Search(img, PX, _template(), cfg)


def _plan(s: Search, xp, batch, chunk, storage="float32"):
    c = s._corr
    to = xp.asarray
    return _gpu_plan.GpuPlan(xp, s.frame, s.box, to(c.fvol.data), to(c.image_ft), to(c.filters),
                             to(c.wts), batch, chunk, storage)


def _plan_maps(plan, rots, scale, fidx, pidx):
    padded = plan.projections(rots, scale)
    pft = plan.padded_spectra(padded)
    maps, scales = plan.correlate(pft, fidx, pidx)
    return _np(maps) * _np(scales)[:, None, None]


def _np(a):
    return a if isinstance(a, np.ndarray) else a.get()


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _cpu_maps(s: Search, rots, scale, fidx, pidx):
    c = s._corr
    pft = c.padded_spectra(c.projections(rots, scale))
    ccs, scales = c.correlate(pft, fidx, pidx)
    return np.array(ccs) * np.asarray(scales)[:, None, None]


def _pairs(nb, n_df):
    return np.tile(np.arange(n_df), nb), np.repeat(np.arange(nb), n_df)


def _plan_statistics(s: Search, plan) -> RunningStats:
    """The engine's batches and (orientation, defocus) map order, through the plan."""
    n_df = len(s.defocus_offsets_a)
    stats = RunningStats(s.image_shape, plan.xp)
    ny, nx = s.image_shape
    for ip, o0, o1 in s._batches(s._batch_size()):
        scale = s._corr.fvol.scale_for(s.template.pixel_size_a, s.box,
                                       s.pixel_size_a + s.pixel_offsets_a[ip])
        pft = plan.padded_spectra(plan.projections(s._rots[o0:o1], scale))
        fidx, pidx = _pairs(o1 - o0, n_df)
        fidx = fidx + ip * n_df
        gidx = (o0 + pidx + s.n_orientations_total * fidx).astype(np.int32)
        for c0 in range(0, len(fidx), plan.chunk):
            c1 = c0 + plan.chunk
            maps, scales = plan.correlate(pft, fidx[c0:c1], pidx[c0:c1])
            plan.ops.update_stats(maps, scales, gidx[c0:c1], stats.mip, stats.best, stats.s1,
                                  stats.s2, ny, nx)
    return stats


def _assert_same_statistics(got, ref, rtol):
    np.testing.assert_allclose(_np(got.mip), ref.mip, rtol=rtol, atol=rtol)
    # near-ties may resolve differently under float32 rounding; almost all must agree
    assert np.mean(_np(got.best) == ref.best) > 0.99
    sd = np.sqrt(ref.s2)
    assert np.abs(_np(got.s1) - ref.s1).max() <= rtol * sd.max()
    np.testing.assert_allclose(_np(got.s2), ref.s2, rtol=rtol)


# ------------------------------------------------------------------------ CI
@pytest.mark.parametrize("storage, tol", [("float32", 2e-5), ("float16", 1e-3)])
def test_reference_plan_gives_the_cpu_correlators_maps(storage, tol):
    s = _search()
    s._setup_device()
    rots = s._rots[:5]
    scale = s._corr.fvol.scale_for(PX, s.box, s.pixel_size_a)
    fidx, pidx = _pairs(5, 3)
    ref = _cpu_maps(s, rots, scale, fidx, pidx)
    got = _plan_maps(_plan(s, np, 5, 15, storage), rots, scale, fidx, pidx)
    err = _rel(got, ref)
    assert err < tol
    if storage == "float16":
        assert err > 1e-6  # really stored in half precision


def test_reference_plan_statistics_equal_the_cpu_search():
    """12 orientations in batches of 5 (5, 5, 2) x 3 defocus planes, chunks of 4 maps
    (chunk edges cut batches and orientations): the CPU search's MIP, best index and sums."""
    s = _search()
    for _ in s.run():
        pass
    plan = _plan(s, np, 5, 4)
    _assert_same_statistics(_plan_statistics(s, plan), s.stats, 2e-5)


def test_work_sizes_fit_the_budget_and_keep_a_batch_in_one_chunk():
    frame = (4096, 4096)
    per_o = _gpu_plan.bytes_per_orientation(frame, 512)
    per_m = _gpu_plan.bytes_per_map(frame)
    for free, n_df in ((140 << 30, 13), (80 << 30, 41), (24 << 30, 13), (2 << 30, 41)):
        b, c = _gpu_plan.work_sizes(frame, n_df, free, box=512)
        assert 1 <= b <= 64
        if b > 1:  # a batch's maps in one chunk, all in half the free memory
            assert c == b * n_df
            assert b * per_o + c * per_m <= 0.5 * free
        else:  # one orientation: its maps in chunks of what fits
            assert 1 <= c <= n_df
    assert _gpu_plan.work_sizes((1024, 1024), 13, 140 << 30)[0] == 64


# ---------------------------------------------------------------- GPU twins
@pytest.mark.gpu
@pytest.mark.parametrize("storage, tol", [("float32", 1e-4), ("float16", 1e-3)])
def test_gpu_plan_maps_match_the_reference_plan(cp, storage, tol):
    s = _search()
    s._setup_device()
    rots = s._rots[:5]
    scale = s._corr.fvol.scale_for(PX, s.box, s.pixel_size_a)
    fidx, pidx = _pairs(5, 3)
    ref = _plan_maps(_plan(s, np, 5, 15), rots, scale, fidx, pidx)
    got = _plan_maps(_plan(s, cp, 5, 15, storage), rots, scale, fidx, pidx)
    assert _rel(got, ref) < tol


@pytest.mark.gpu
def test_gpu_search_equals_the_cpu_search(cp):
    """The engine's GPU branch end to end (plan, chunks, fused statistics) against the CPU
    engine: maps to 1e-4 relative, best indices, and the same hits."""
    cpu = _search("cpu", n_orient=24, batch_size=7)
    for _ in cpu.run():
        pass
    gpu = _search("gpu", n_orient=24, batch_size=7)
    for _ in gpu.run():
        pass
    _assert_same_statistics(gpu.stats, cpu.stats, 1e-4)
    for key in ("mip", "zscore", "snr"):
        a, b = gpu.result.maps[key], cpu.result.maps[key]
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), key
    assert gpu.result.metadata["device_name"].startswith("GPU")


@pytest.mark.gpu
def test_gpu_search_finds_planted_particles(cp):
    from helpers.planting import match, plant, structure
    from napari_2dtm import search
    from napari_2dtm.core.geometry import angular_distance_deg
    from napari_2dtm.templates.model import template_from_model

    tpl = template_from_model(structure("1BD2"), PX)
    ctf = CTFParams(defocus1_a=10000, defocus2_a=9600, astigmatism_angle_deg=30)
    cfg = SearchConfig(ctf=ctf, out_of_plane_step_deg=8.0, in_plane_step_deg=8.0,
                       defocus_range_a=500.0, defocus_step_a=500.0, device="gpu",
                       progress_interval_s=1e9)
    img, truth = plant(tpl, (176, 176), 8, ctf, target_snr=18.0, seed=0, defocus_shift_a=300.0)
    r = search(img, PX, tpl, cfg)
    pairs = match(r.hits, truth, 3.0)
    assert len(pairs) >= 7
    assert len(r.hits) - len(pairs) <= 1
    ang = [float(angular_distance_deg(
        euler_to_matrix(r.hits.iloc[j].phi, r.hits.iloc[j].theta, r.hits.iloc[j].psi),
        euler_to_matrix(*truth[i, 2:]))) for i, j in pairs]
    assert np.median(ang) <= 8.0
