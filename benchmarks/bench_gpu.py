"""GPU search throughput vs the batched cuFFT C2R floor, in one run on one device.

For each micrograph size (default 4096^2 and 1024^2, 13 defocus planes, white noise):

* the engine's rate (cross-correlations per second over the search loop, stages timed
  on the host clock at synchronised stage boundaries) with the batch size it picks from
  the free memory, and its orientations a whole number of batches;
* the floor: a bare batched ``cupy.fft.irfft2`` of the same frame and batch (the C2R the
  engine cannot avoid, plus CuPy's normalisation pass) and the raw cuFFT C2R alone,
  both in seconds per map, in the same run; the ratio engine time per CC / floor;
* the pool's peak device memory over the search;
* fp16 storage against float32: the largest deviation of the normalised maps of one
  batch relative to the maps' largest value (target: within 1e-3), and its rate.

Template: a 384^3 box at 4096^2 (a ~400 A particle, e.g. a ribosomal subunit, at
~1 A pixels; ``--box``), 128^3 at 1024^2 (``--box-small``); a smooth asymmetric blob,
which costs the same as an atomic model of that box.

Usage (writes ``bench_gpu.json`` and ``bench_gpu.txt`` into ``--out``)::

    python benchmarks/bench_gpu.py [--size 4096 1024] [--box 384] [--box-small 128]
        [--defocus-planes 13] [--batches 3] [--out gpu_check_out]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from napari_2dtm import CTFParams, Search, SearchConfig, gpu_info
from napari_2dtm.core.geometry import so3_grid
from napari_2dtm.search import _correlate, _gpu_plan
from napari_2dtm.templates.template import Template


def blob_template(box: int, px: float) -> Template:
    """Three overlapping Gaussians (asymmetric: projections differ with orientation)."""
    ax = np.arange(box, dtype=np.float32) - box // 2
    vol = np.zeros((box, box, box), np.float32)
    for (cz, cy, cx), s in (((0, 0, 0), box / 8), ((box / 10, -box / 12, 0), box / 14),
                            ((-box / 12, box / 9, box / 10), box / 16)):
        gz = np.exp(-((ax - cz) ** 2) / (2 * s * s))
        gy = np.exp(-((ax - cy) ** 2) / (2 * s * s))
        gx = np.exp(-((ax - cx) ** 2) / (2 * s * s))
        vol += gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    return Template(vol, px, source=f"blob{box}")


def _sync():
    import cupy as cp

    cp.cuda.get_current_stream().synchronize()


def floor_seconds(frame, batch: int, reps: int = 5) -> dict:
    """Seconds per map of a batched C2R of the frame: ``cupy.fft.irfft2`` (normalised,
    CuPy's plan cache) and the raw cuFFT plan execution (what the engine runs)."""
    import cupy as cp
    from cupy.cuda import cufft
    from cupyx.scipy.fft import get_fft_plan

    hs, ws = frame
    x = cp.zeros((batch, hs, ws // 2 + 1), cp.complex64)
    cp.fft.irfft2(x, s=(hs, ws))
    _sync()
    t = time.perf_counter()
    for _ in range(reps):
        y = cp.fft.irfft2(x, s=(hs, ws))
        del y
    _sync()
    irfft2 = (time.perf_counter() - t) / reps / batch
    out = cp.empty((batch, hs, ws), cp.float32)
    plan = get_fft_plan(x, shape=(hs, ws), axes=(-2, -1), value_type="C2R")
    plan.fft(x, out, cufft.CUFFT_INVERSE)
    _sync()
    t = time.perf_counter()
    for _ in range(reps):
        plan.fft(x, out, cufft.CUFFT_INVERSE)
    _sync()
    raw = (time.perf_counter() - t) / reps / batch
    del x, out, plan
    cp.get_default_memory_pool().free_all_blocks()
    return {"irfft2_s_per_map": irfft2, "cufft_c2r_s_per_map": raw}


def _config(ori, n_df, batch, device="gpu"):
    return SearchConfig(ctf=CTFParams(defocus1_a=10000), orientations=ori,
                        defocus_range_a=(n_df // 2) * 200.0, defocus_step_a=200.0,
                        device=device, batch_size=batch, progress_interval_s=1e9,
                        checkpoint_interval_s=0)


def fp16_deviation(s: Search, batch: int) -> float:
    """Max |fp16 - fp32| / max |fp32| of the normalised maps of one batch of ``s``."""
    import cupy as cp

    c = s._corr
    n_df = len(s.defocus_offsets_a)
    nb = min(batch, max(1, 64 // n_df), s.n_orientations)
    fidx = np.tile(np.arange(n_df), nb)
    pidx = np.repeat(np.arange(nb), n_df)
    scale = c.fvol.scale_for(s.template.pixel_size_a, s.box, s.pixel_size_a)
    maps = {}
    for storage in _gpu_plan.STORAGES:
        plan = _gpu_plan.GpuPlan(cp, s.frame, s.box, c.fvol.data, c.image_ft, c.filters, c.wts,
                                 nb, nb * n_df, storage)
        pft = plan.padded_spectra(plan.projections(s._rots[:nb], scale))
        m, sc = plan.correlate(pft, fidx, pidx)
        maps[storage] = m * sc[:, None, None]
        del plan, pft, m, sc
    a, b = maps["float16"], maps["float32"]
    return float(cp.abs(a - b).max() / cp.abs(b).max())


def run(size: int, box: int, n_df: int, n_batches: int, storage: str = "float32") -> dict:
    import cupy as cp

    os.environ["NAPARI_2DTM_GPU_STORAGE"] = storage
    rng = np.random.default_rng(0)
    img = rng.standard_normal((size, size)).astype(np.float32)
    tpl = blob_template(box, 1.0)
    grid = so3_grid(2.5, 1.5)
    pool = cp.get_default_memory_pool()
    # The batch the engine would pick: its orientations a whole number of batches, so no
    # short last batch skews the rate.
    frame = _correlate.search_frame((size, size))
    stats_bytes = size * size * (4 + 4 + 8 + 8)
    batch = _correlate.batch_size(frame, n_df, _correlate.gpu_free_bytes(cp) - stats_bytes)
    n_orient = batch * n_batches
    ori = grid[:: max(1, len(grid) // n_orient)][:n_orient]
    t_build = time.perf_counter()
    s = Search(img, 1.0, tpl, _config(ori, n_df, batch))
    s._setup_device()
    _sync()
    t_build = time.perf_counter() - t_build
    pool.free_all_blocks()
    base = pool.total_bytes()
    t = time.perf_counter()
    for _ in s.run():
        pass
    _sync()
    wall = time.perf_counter() - t
    tm = s.result.metadata["timing"]
    loop = sum(v for k, v in tm.items() if k != "checkpoint_s")
    per_cc = loop / s.n_cc_total
    peak = pool.total_bytes()  # the pool keeps what the run used (and frees nothing)
    fixed = {"size": size, "frame": list(s.frame), "box": s.box, "defocus_planes": n_df,
             "orientations": s.n_orientations, "batch": s._batch_size_used,
             "maps_per_chunk": s._corr.gpu_chunk,
             "storage": storage, "cc_per_s": 1.0 / per_cc, "s_per_cc": per_cc,
             "loop_s": loop, "search_wall_s": wall, "setup_s": t_build,
             "stage_s": {k: round(v, 4) for k, v in tm.items()},
             "peak_pool_gib": peak / 2**30, "pool_before_run_gib": base / 2**30}
    if storage == "float32":  # on this search's fixed inputs, its own plan released
        fixed["fp16_max_rel_deviation"] = fp16_deviation(s, batch)
    del s
    pool.free_all_blocks()
    if storage == "float32":
        fl = floor_seconds(frame, min(64, batch * n_df))
        fixed.update(fl)
        fixed["ratio_to_irfft2"] = per_cc / fl["irfft2_s_per_map"]
        fixed["ratio_to_cufft_c2r"] = per_cc / fl["cufft_c2r_s_per_map"]
    return fixed


def _line(r: dict) -> str:
    txt = (f"{r['size']}^2 (frame {r['frame'][0]}x{r['frame'][1]}) box {r['box']} "
           f"planes {r['defocus_planes']} orientations {r['orientations']} batch {r['batch']} "
           f"{r['storage']}: {r['cc_per_s']:,.0f} CC/s ({r['s_per_cc'] * 1e3:.3f} ms/CC)")
    if "irfft2_s_per_map" in r:
        txt += (f" | floor irfft2 {r['irfft2_s_per_map'] * 1e3:.3f} ms/map, cuFFT C2R "
                f"{r['cufft_c2r_s_per_map'] * 1e3:.3f} ms/map | ratio {r['ratio_to_irfft2']:.2f} "
                f"(to raw C2R {r['ratio_to_cufft_c2r']:.2f}) | fp16 max rel dev "
                f"{r['fp16_max_rel_deviation']:.2e}")
    return txt + f" | peak pool {r['peak_pool_gib']:.1f} GiB | stages {r['stage_s']}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, nargs="+", default=[4096, 1024])
    ap.add_argument("--box", type=int, default=384, help="template box at the largest size")
    ap.add_argument("--box-small", type=int, default=128, help="template box at 1024^2 and below")
    ap.add_argument("--defocus-planes", type=int, default=13)
    ap.add_argument("--batches", type=int, default=3, help="whole batches per search")
    ap.add_argument("--no-fp16-rate", action="store_true", help="skip the fp16-storage rate")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    a = ap.parse_args()
    info = gpu_info()
    if not info["available"]:
        raise SystemExit(f"bench_gpu: no usable GPU ({info['reason']})")
    import cupy as cp

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    head = {"device": info, "cupy": cp.__version__,
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "driver": cp.cuda.runtime.driverGetVersion(), "python": platform.python_version()}
    lines = [f"device {info['name']} ({info['memory_gb']:.0f} GiB), CuPy {cp.__version__}, "
             f"CUDA runtime {head['cuda_runtime']}, driver {head['driver']}"]
    print(lines[0], flush=True)
    results = []
    for size in a.size:
        box = a.box if size > 1024 else a.box_small
        storages = ["float32"] if a.no_fp16_rate else ["float32", "float16"]
        for storage in storages:
            r = run(size, box, a.defocus_planes, a.batches, storage)
            results.append(r)
            lines.append(_line(r))
            print(lines[-1], flush=True)
            # written after every run: a run cut short by the time budget keeps the others
            (out / "bench_gpu.json").write_text(json.dumps({**head, "results": results},
                                                           indent=1, default=str))
            (out / "bench_gpu.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
