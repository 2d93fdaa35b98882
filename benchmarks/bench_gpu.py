"""GPU search throughput vs the cuFFT C2R floor, in one run on one device.

Prints, for each image size: cross-correlations per second of the engine on the GPU
(13 defocus planes by default, a 512^3-voxel template at 4096^2 as in the issue),
the floor (batched ``cupy.fft.irfft2`` of the same frame and batch), their ratio and
peak device memory. With ``--leopard`` it also times Leopard-EM on the same search
when it is importable (``pip install leopard-em`` beside PyTorch on the GPU machine).

Usage::

    python benchmarks/bench_gpu.py [--size 4096 1024] [--orientations 64] [--defocus-planes 13]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_2dtm import CTFParams, Search, SearchConfig, gpu_info
from napari_2dtm.core.geometry import so3_grid
from napari_2dtm.templates.template import Template


def floor_seconds(frame, batch: int, reps: int = 10) -> float:
    """Seconds per map of a batched C2R inverse FFT of the search frame."""
    import cupy as cp

    hs, ws = frame
    x = cp.zeros((batch, hs, ws // 2 + 1), cp.complex64)
    cp.fft.irfft2(x, s=(hs, ws))
    cp.cuda.Device().synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        cp.fft.irfft2(x, s=(hs, ws))
    cp.cuda.Device().synchronize()
    return (time.perf_counter() - t) / reps / batch


def blob_template(box: int, px: float) -> Template:
    z, y, x = np.mgrid[:box, :box, :box].astype(np.float32) - box // 2
    r2 = x * x + y * y + z * z
    return Template(np.exp(-r2 / (2 * (box / 8) ** 2)).astype(np.float32), px, source="blob")


def run(size: int, box: int, n_orient: int, n_df: int):
    import cupy as cp

    rng = np.random.default_rng(0)
    img = rng.standard_normal((size, size)).astype(np.float32)
    tpl = blob_template(box, 1.0)
    ori = so3_grid(2.5, 1.5)[:n_orient]
    cfg = SearchConfig(ctf=CTFParams(defocus1_a=10000), orientations=ori,
                       defocus_range_a=(n_df // 2) * 200.0, defocus_step_a=200.0,
                       device="gpu", progress_interval_s=1e9)
    warm = Search(img, 1.0, tpl, SearchConfig(**{**cfg.__dict__, "orientations": ori[:4]}))
    for _ in warm.run():
        pass
    cp.get_default_memory_pool().free_all_blocks()
    cp.cuda.Device().synchronize()
    s = Search(img, 1.0, tpl, cfg)
    t = time.perf_counter()
    for _ in s.run():
        pass
    cp.cuda.Device().synchronize()
    el = sum(s.result.metadata["timing"].values())
    per_cc = el / s.n_cc_total
    fl = floor_seconds(s.frame, min(s._batch_size() * n_df, 64))
    peak = cp.get_default_memory_pool().total_bytes() / 2**30
    print(f"size {size}^2 box {box} planes {n_df} orientations {n_orient}: {1 / per_cc:9.1f} CC/s | "
          f"floor C2R {fl * 1e3:.3f} ms/map ({1 / fl:.0f}/s) | ratio {per_cc / fl:.2f} | "
          f"pool {peak:.1f} GiB | total {time.perf_counter() - t:.1f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, nargs="+", default=[4096, 1024])
    ap.add_argument("--box", type=int, default=512)
    ap.add_argument("--orientations", type=int, default=64)
    ap.add_argument("--defocus-planes", type=int, default=13)
    a = ap.parse_args()
    info = gpu_info()
    if not info["available"]:
        raise SystemExit(f"bench_gpu: no usable GPU ({info['reason']})")
    print(f"device {info['name']} ({info['memory_gb']:.0f} GiB)")
    for size in a.size:
        run(size, min(a.box, size // 2), a.orientations, a.defocus_planes)


if __name__ == "__main__":
    main()
