"""Time model -> template conversion and micrograph simulation (prints the times).

    python benchmarks/bench_template.py [MODEL]

Target: 1BD2 at 1.0 A/px in a 160^3 box in < 2 s on one core (the process is pinned to
one CPU where the OS allows). The template cache is bypassed (``cache=False``) so every
repeat is a full conversion including reading the file.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CANDIDATES = [
    HERE.parent.parent / "shared" / "data" / "structures" / "1BD2.pdb.gz",
    HERE.parent / "src" / "napari_2dtm" / "data" / "1BD2.pdb.gz",
]


def _pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        try:
            cpu = min(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpu})
            return f"pinned to CPU {cpu}"
        except OSError:
            pass
    return "not pinned"


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str]) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pin = _pin_one_core()
    model = Path(argv[1]) if len(argv) > 1 else next((p for p in CANDIDATES if p.exists()), None)
    if model is None or not model.exists():
        print("no 1BD2 model found; pass a PDB/mmCIF path", file=sys.stderr)
        return 2

    from napari_2dtm.core.ctf import CTFParams
    from napari_2dtm.simulate import simulate_micrograph
    from napari_2dtm.templates import model as mdl

    print(f"model: {model} ({pin})")
    mdl.clear_cache()
    first = _time(lambda: mdl.template_from_model(model, 1.0, box=160, cache=False), 1)[0]
    times = _time(lambda: (mdl.clear_cache(), mdl.template_from_model(model, 1.0, box=160, cache=False)), 5)
    print(f"template 1.0 A/px, 160^3, cold (file read + conversion): first {first:.3f} s, "
          f"median {statistics.median(times):.3f} s, max {max(times):.3f} s  (target < 2 s)")
    warm = _time(lambda: mdl.template_from_model(model, 1.0, box=160, cache=False), 5)
    print(f"template 1.0 A/px, 160^3, atoms already parsed:       median {statistics.median(warm):.3f} s")
    mdl.template_from_model(model, 1.0, box=160, cache="memory")
    hit = _time(lambda: mdl.template_from_model(model, 1.0, box=160, cache="memory"), 5)
    print(f"template from the memory cache:                        median {statistics.median(hit) * 1e3:.1f} ms")
    t = mdl.template_from_model(model, 0.8, cache=False)
    dt = _time(lambda: mdl.template_from_model(model, 0.8, cache=False), 3)
    print(f"template 0.8 A/px, auto box {t.box}^3:                   median {statistics.median(dt):.3f} s")

    ctf = CTFParams(defocus1_a=12000)
    simulate_micrograph([model], 2, shape=(256, 256), ctf=ctf, snr=0.02, seed=0)  # numba compile
    st = _time(lambda: simulate_micrograph([model], 20, shape=(512, 512), ctf=ctf, snr=0.02, seed=1), 3)
    print(f"simulate 512^2, 20 x 1BD2, 1.0 A/px:                     median {statistics.median(st):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
