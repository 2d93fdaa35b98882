"""Search throughput vs the bare inverse-FFT floor, in one run on this machine.

Prints cross-correlations per second of the full engine and, on the CPU, the floor of
every installed FFT library (:mod:`napari_2dtm.core.fft`) measured as the engine uses
it: one inverse ``irfft2`` of the search frame per thread, all threads busy, seconds per
map at full throughput (:func:`~napari_2dtm.core.fft.throughput_seconds`). The ratio is
the engine's time per CC over the fastest library's floor (on a GPU: one cupy
``irfft2``). Sizes: ``1024`` (square) or ``k3`` (a 5760 x 4092 K3 frame). Usage::

    python benchmarks/bench_search.py [--size 1024 k3] [--defocus-planes 1 13] [--device cpu]

``NAPARI_2DTM_FFT=pocketfft`` (or fftw, mkl) makes the engine use that library.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from napari_2dtm import CTFParams, Search, SearchConfig
from napari_2dtm.core import fft as fftlib
from napari_2dtm.core.backend import cpu_workers, get_backend
from napari_2dtm.core.geometry import so3_grid

_LIBS: dict = {}  # (library, frame) -> FrameFFT, planned once


def cpu_floors(frame, workers) -> dict[str, float]:
    """Seconds per map at full throughput of every installed library on ``frame``."""
    out = {}
    for lib in fftlib.installed():
        f = _LIBS.get((lib, frame))
        if f is None:
            f = _LIBS[(lib, frame)] = fftlib.make(lib, frame, workers)
        out[lib] = fftlib.throughput_seconds(f, budget_s=0.2)
    return out


def floor_seconds(frame, backend, reps=20) -> dict[str, float]:
    hs, ws = frame
    if not backend.is_gpu:
        return cpu_floors(frame, cpu_workers())
    import cupy as cp

    x = cp.zeros((hs, ws // 2 + 1), cp.complex64)
    cp.fft.irfft2(x, s=(hs, ws))
    cp.cuda.Device().synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        cp.fft.irfft2(x, s=(hs, ws))
    cp.cuda.Device().synchronize()
    return {"cufft": (time.perf_counter() - t) / reps}


def template_volume(px: float):
    try:
        from pathlib import Path

        from napari_2dtm.templates.model import template_from_model

        p = Path(__file__).resolve().parents[1] / "src/napari_2dtm/data/1BD2.pdb.gz"
        return template_from_model(p, px)
    except Exception:  # model support absent: a blob of the same size
        from napari_2dtm.templates.template import Template

        n = int(160 / px) // 2 * 2
        z, y, x = np.mgrid[:n, :n, :n] - n // 2
        return Template(np.exp(-(x * x + y * y + z * z) / (2 * (20 / px) ** 2)).astype(np.float32), px)


def run(size: str, n_df: int, n_orient: int, device: str, px: float = 1.0, rounds: int = 3,
        batch_size: int | None = None):
    rng = np.random.default_rng(0)
    shape = (4092, 5760) if size.lower() == "k3" else (int(size), int(size))
    img = rng.standard_normal(shape).astype(np.float32)
    tpl = template_volume(px)
    ori = so3_grid(2.5, 1.5)[:: max(1, 1_584_000 // n_orient)][:n_orient]
    cfg = SearchConfig(ctf=CTFParams(defocus1_a=10000), orientations=ori,
                       defocus_range_a=(n_df // 2) * 200.0, defocus_step_a=200.0,
                       device=device, progress_interval_s=1e9, batch_size=batch_size)
    # warm-up (numba compile, FFT plans)
    warm = Search(img, px, tpl, SearchConfig(ctf=cfg.ctf, orientations=ori[:2], device=device,
                                             defocus_range_a=cfg.defocus_range_a))
    for _ in warm.run():
        pass
    # The machine is shared and the floor drifts by tens of percent between seconds:
    # each round times the engine between two floor measurements and takes its own ratio.
    ratios, own, rates, floors = [], [], [], []
    for _ in range(rounds):
        s = Search(img, px, tpl, cfg)
        s._setup_device()
        f0 = floor_seconds(s.frame, s.backend)
        t = time.perf_counter()
        for _ in s.run():
            pass
        total = time.perf_counter() - t
        f1 = floor_seconds(s.frame, s.backend)
        tm = s.result.metadata["timing"]
        # the search loop; map finishing, the template's self-match (once per search, for
        # the detection statistic) and peak picking are reported apart
        el = sum(v for k, v in tm.items() if k != "self_match_s")
        per_cc = el / s.n_cc_total
        fl = {k: 0.5 * (f0[k] + f1[k]) for k in f0}
        used = (s.result.metadata.get("fft") or {}).get("library", "cufft")
        ratios.append(per_cc / min(fl.values()))
        own.append(per_cc / fl.get(used, min(fl.values())))
        rates.append(1 / per_cc)
        floors.append(fl)
    share = {k.removesuffix("_s"): f"{v / el:.2f}" for k, v in tm.items() if k != "self_match_s"}
    r = float(np.median(ratios))
    med = {k: float(np.median([f[k] for f in floors])) for k in floors[0]}
    fastest = min(med, key=med.get)
    fl_txt = ", ".join(f"{k} {v * 1e3:.2f}" for k, v in sorted(med.items(), key=lambda kv: kv[1]))
    print(f"| {size} | {s.frame[0]}x{s.frame[1]} | {n_df} | {n_orient} | {s._batch_size_used} | "
          f"{used} | {np.median(rates):.1f} | {1e3 / np.median(rates):.2f} | {fl_txt} | "
          f"{r:.2f} vs {fastest} ({', '.join(f'{x:.2f}' for x in ratios)}) | "
          f"{float(np.median(own)):.2f} | {share} | {total - el:.2f} |", flush=True)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", nargs="+", default=["1024"], help="1024 (square) or k3")
    ap.add_argument("--defocus-planes", type=int, nargs="+", default=[1, 13])
    ap.add_argument("--orientations", type=int, default=48)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3, help="engine runs, each between two floors")
    ap.add_argument("--batch-size", type=int, default=None, help="orientations per batch (default: the engine's choice)")
    a = ap.parse_args()
    b = get_backend(a.device)
    print(f"device {b.name}, workers {cpu_workers()}, FFT libraries installed "
          f"{', '.join(fftlib.installed())}, engine's: {fftlib.requested()}")
    print("| size | frame | planes | orientations | batch | engine FFT | CC/s | ms/CC | "
          "floors ms/map (one map per thread, all threads) | ratio to fastest (rounds) | "
          "ratio to own | time shares | finish s |")
    print("|" + "---|" * 13)
    for size in a.size:
        for n_df in a.defocus_planes:
            run(size, n_df, a.orientations, a.device, rounds=a.rounds, batch_size=a.batch_size)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
