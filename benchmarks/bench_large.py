"""A K3-size micrograph (5760 x 4092) searched on the CPU: peak memory and time per CC.

Prints, from one run on this machine: the search frame, the peak resident memory of
the whole process (``ru_maxrss``: includes reading, preparing, searching, finishing the
maps and picking hits), the engine's time per cross-correlation (the search loop only;
set-up and finishing reported apart), the time of one bare ``scipy.fft.irfft2`` of the
same frame with the same threads (the floor: every CC needs one), their ratio, and the
time to write one checkpoint of this size. Usage::

    python benchmarks/bench_large.py [--orientations 200] [--defocus-planes 1] [--checkpoint]

The micrograph is white noise at 1.0 A/pixel (speed and memory do not depend on its
content); the template is the 84 kDa TCR-MHC model (1BD2) at the same pixel size.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from napari_2dtm import CTFParams, Search, SearchConfig
from napari_2dtm.core.backend import cpu_workers
from napari_2dtm.core.geometry import so3_grid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import floor_seconds, template_volume  # noqa: E402

K3 = (4092, 5760)  # (ny, nx)


class PeakRSS:
    """Sampled resident memory (MiB) of this process, every 20 ms, in a thread."""

    def __init__(self):
        import psutil

        self._proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.02)

    def mib(self) -> float:
        return self.peak / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orientations", type=int, default=200)
    ap.add_argument("--defocus-planes", type=int, default=1)
    ap.add_argument("--pixel-size", type=float, default=1.0)
    ap.add_argument("--checkpoint", action="store_true", help="also time one checkpoint write")
    a = ap.parse_args()
    rss = PeakRSS()
    t0 = time.perf_counter()
    img = np.random.default_rng(0).standard_normal(K3).astype(np.float32)
    tpl = template_volume(a.pixel_size)
    ori = so3_grid(2.5, 1.5)[:: max(1, 1_584_000 // a.orientations)][: a.orientations]
    cfg = SearchConfig(ctf=CTFParams(defocus1_a=10000), orientations=ori,
                       defocus_range_a=(a.defocus_planes // 2) * 200.0, defocus_step_a=200.0,
                       device="cpu", progress_interval_s=1.0)
    s = Search(img, a.pixel_size, tpl, cfg)
    t_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    s._setup_device()
    t_setup = time.perf_counter() - t0
    # numba compile / FFT plans on a tiny search first, so they are not in the timing
    warm = Search(img[:512, :512], a.pixel_size, tpl,
                  SearchConfig(ctf=cfg.ctf, orientations=ori[:2], device="cpu"))
    for _ in warm.run():
        pass
    del warm
    t0 = time.perf_counter()
    n_snap = sum(1 for _ in s.run())
    total = time.perf_counter() - t0
    tm = s.result.metadata["timing"]
    loop = sum(tm.values())
    per_cc = loop / s.n_cc_total
    fl = floor_seconds(s.frame, s.backend, reps=5)
    t_ckpt = None
    if a.checkpoint:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            s.save_checkpoint(Path(d) / "c.npz")
            t_ckpt = time.perf_counter() - t0
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"micrograph {K3[1]} x {K3[0]} at {a.pixel_size} A, frame {s.frame}, template box "
          f"{s.box}, {len(ori)} orientations x {s.n_planes} planes = {s.n_cc_total} CCs, "
          f"{cpu_workers()} threads")
    print(f"init {t_init:.1f} s, device set-up {t_setup:.1f} s, search loop {loop:.1f} s, "
          f"finish (maps + hits) {total - loop:.1f} s, {n_snap} progress snapshots")
    print(f"time per CC {per_cc * 1e3:.1f} ms | floor irfft2 {fl * 1e3:.1f} ms | ratio "
          f"{per_cc / fl:.2f} | shares " + ", ".join(f"{k} {v / loop:.2f}" for k, v in tm.items()))
    if t_ckpt is not None:
        print(f"checkpoint write {t_ckpt:.1f} s")
    print(f"peak RSS {maxrss:.0f} MiB (sampled {rss.mib():.0f} MiB)")


if __name__ == "__main__":
    main()
