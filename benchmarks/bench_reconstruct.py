"""Refinement and reconstruction time for N particles in 128 px boxes on the CPU.

* Reconstruction: N particles (default 5,000) of 128 x 128 px with random poses and
  per-particle CTFs, inserted into 2x padded half-volumes (256^3 grid) by the numba
  kernel, then half maps, FSC and the filtered map: timed in full.
* Refinement: the default coarse-to-fine schedule (down to 0.2 / 0.1 deg and 10 A)
  of 1BD2 hits (84 kDa, 1.5 A pixels: a 104 px
  template in a 128 px particle box) on a simulated micrograph, about 320 scored
  poses per hit; a subset of hits is timed and the time for N hits is EXTRAPOLATED linearly (each hit is independent),
  which is stated in the output. The one-stage "quick" schedule is timed too.

Usage::

    python benchmarks/bench_reconstruct.py [--particles 5000] [--refine-hits 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def bench_reconstruction(n: int, box: int, px: float, seed: int = 0) -> dict:
    from scipy.spatial.transform import Rotation

    from napari_2dtm.core.geometry import matrix_to_euler
    from napari_2dtm.reconstruct.reconstructor import Reconstructor, ctf_table

    rng = np.random.default_rng(seed)
    ang = matrix_to_euler(Rotation.random(n, random_state=seed).as_matrix())
    df = rng.uniform(5000, 25000, n)
    table = pd.DataFrame(ang, columns=["phi", "theta", "psi"])
    table["defocus1_a"], table["defocus2_a"] = df, 0.97 * df
    table["astigmatism_angle_deg"] = rng.uniform(0, 180, n)
    ctfs = ctf_table(table)
    batch = 256
    # warm the numba kernel (compile or load its cache) outside the timing
    with Reconstructor(box, px) as warm:
        warm.insert(rng.standard_normal((2, box, box)).astype(np.float32), ang[:2], [1, 2], ctfs[:2])
    rec = Reconstructor(box, px)
    t_gen = 0.0
    t0 = time.perf_counter()
    for i0 in range(0, n, batch):
        i1 = min(n, i0 + batch)
        tg = time.perf_counter()
        images = rng.standard_normal((i1 - i0, box, box)).astype(np.float32)
        t_gen += time.perf_counter() - tg
        rec.insert(images, ang[i0:i1], 1 + (np.arange(i0, i1) % 2), ctfs[i0:i1])
    t_insert = time.perf_counter() - t0 - t_gen
    t1 = time.perf_counter()
    out = rec.finish()
    t_finish = time.perf_counter() - t1
    rec.close()
    return {"particles": n, "box": box, "pad": 2, "insert_s": t_insert, "finish_s": t_finish,
            "total_s": t_insert + t_finish, "insert_ms_per_particle": 1e3 * t_insert / n,
            "resolution_a_of_noise": out.resolution_a}


def bench_refinement(n_hits: int, n_total: int, seed: int = 1) -> dict:
    from napari_2dtm.core.ctf import CTFParams
    from napari_2dtm.hits.refine import DEFAULT_STAGES, RefineStage, refine_hits
    from napari_2dtm.simulate import simulate_micrograph
    from napari_2dtm.templates.model import template_from_model

    path = ROOT / "src" / "napari_2dtm" / "data" / "1BD2.pdb.gz"
    px = 1.5
    t = template_from_model(path, px)
    ctf = CTFParams(defocus1_a=12000, defocus2_a=11600, astigmatism_angle_deg=30)
    sim = simulate_micrograph([path], n_hits, shape=(1024, 1024), pixel_size_a=px, ctf=ctf,
                              snr=0.05, seed=seed)
    hits = sim.truth.copy()
    rng = np.random.default_rng(seed)
    hits["psi"] = (hits["psi"] + rng.choice([-1.5, 1.5], len(hits))) % 360  # one grid step off
    hits["x"] = hits["x"] + 1
    res = {"template_box": t.box, "particle_box": 128, "pixel_size_a": px, "timed_hits": len(hits)}
    refine_hits(sim.image, px, t, hits.iloc[:1], ctf, stages=(RefineStage(0.5, 0.5, 0.5, 0.5),))
    for name, stages in (("default", DEFAULT_STAGES), ("quick", (RefineStage(2.5, 1.25, 1.5, 0.75),))):
        t0 = time.perf_counter()
        refine_hits(sim.image, px, t, hits, ctf, stages=stages)
        dt = time.perf_counter() - t0
        res[f"{name}_s_per_hit"] = dt / len(hits)
        res[f"{name}_s_for_{n_total}_extrapolated"] = dt / len(hits) * n_total
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--particles", type=int, default=5000)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--refine-hits", type=int, default=12, help="hits timed for the extrapolation")
    ap.add_argument("--skip-refine", action="store_true")
    ap.add_argument("--skip-reconstruct", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    print(f"CPU cores: {os.cpu_count()}; numba threads: the two half maps fill in two threads")
    out = {}
    if not a.skip_reconstruct:
        rec = bench_reconstruction(a.particles, a.box, 1.5)
        print(f"reconstruction, {rec['particles']} particles, {rec['box']} px box (2x padded): "
              f"insertion {rec['insert_s']:.1f} s ({rec['insert_ms_per_particle']:.2f} ms/particle), "
              f"half maps + FSC + filtered map {rec['finish_s']:.1f} s, total {rec['total_s']:.1f} s")
        out["reconstruction"] = rec
    if not a.skip_refine:
        ref = bench_refinement(a.refine_hits, a.particles)
        print(f"refinement (1BD2, {ref['template_box']} px template at {ref['pixel_size_a']} A), "
              f"timed on {ref['timed_hits']} hits, EXTRAPOLATED to {a.particles}:")
        for name in ("default", "quick"):
            s = ref[f"{name}_s_per_hit"]
            tot = ref[f"{name}_s_for_{a.particles}_extrapolated"]
            print(f"  {name:8s}: {s:.2f} s per hit -> {tot / 60:.1f} min for {a.particles} hits")
        out["refinement"] = ref
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: {peak:.0f} MB")
    out["peak_memory_mb"] = peak
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
