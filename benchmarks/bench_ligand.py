"""The full ligand scenario of issue #7 (the test suite runs a reduced version).

Particles are simulated from the FULL 1A28 model (progesterone receptor with
progesterone, resname STR) in several micrographs. The template for search and
refinement is the model WITHOUT STR (same grid: ``center="model"``). Hits: micrograph 0
is searched for real (orientation grids of +-4 deg around each true pose: the peak
positions, poses and scores come from the search); on the others the true poses are
moved by one search grid step (2.5 deg about a random axis, 1 px, +100 A defocus).
All hits are refined with the default coarse-to-fine schedule (to 0.2 / 0.1 deg, 10 A)
with the omit template and, for Omega, with the full template, then reconstructed.

Reports the ligand density in the omit-template map (sigma of the solvent), Omega
(Lucas et al. 2023), the FSC resolutions (not gold-standard) and the pose errors and
timings. Usage::

    python benchmarks/bench_ligand.py [--micrographs 6] [--particles 80] [--out JOB]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

STRUCTURES = Path(__file__).resolve().parents[1] / "tests" / "data" / "structures"


def main() -> int:
    from napari_2dtm import CTFParams, Search, SearchConfig, extract_hits
    from napari_2dtm.core.geometry import angular_distance_deg, euler_to_matrix, local_grid
    from napari_2dtm.jobs.reconstruct import JobSettings, MicrographInput, run_reconstruct
    from napari_2dtm.simulate import perturbed_hits, simulate_micrograph
    from napari_2dtm.templates.model import template_from_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micrographs", type=int, default=6)
    ap.add_argument("--particles", type=int, default=80, help="per micrograph")
    ap.add_argument("--size", type=int, default=1024, help="micrograph edge (px)")
    ap.add_argument("--pixel-size", type=float, default=2.0)
    ap.add_argument("--snr", type=float, default=0.05, help="simulator per-pixel SNR")
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="one refinement stage instead of five")
    ap.add_argument("--out", type=Path, default=None, help="keep the job folder here")
    a = ap.parse_args()

    path = STRUCTURES / "1A28.pdb.gz"
    px = a.pixel_size
    full = template_from_model(path, px, center="model")
    omit = template_from_model(path, px, center="model", selection="all but resname STR")
    mics, truths = [], []
    t0 = time.perf_counter()
    search_s = 0.0
    for i in range(a.micrographs):
        ctf = CTFParams(defocus1_a=7000 + 1500 * i, defocus2_a=6700 + 1500 * i,
                        astigmatism_angle_deg=25.0 * i)
        sim = simulate_micrograph([path], a.particles, shape=(a.size, a.size), pixel_size_a=px,
                                  ctf=ctf, snr=a.snr, seed=100 + i)
        truths.append(sim.truth)
        if i == 0:
            ts = time.perf_counter()
            ori = np.concatenate([local_grid(r[["phi", "theta", "psi"]].to_numpy(float), 4.0, 2.0)
                                  for _, r in sim.truth.iterrows()])
            s = Search(sim.image, px, omit, SearchConfig(ctf=ctf, orientations=ori, device="cpu"))
            for _ in s.run():
                pass
            # local grids make the per-pixel z-score meaningless: select by SNR
            s.result.hits = extract_hits(s.result, metric="snr", threshold=7.0)
            search_s = time.perf_counter() - ts
            mics.append(MicrographInput(sim.image, px, ctf, s.result.hits, "mic0.mrc", s.result))
            print(f"micrograph 0: search of {len(ori)} orientations in {search_s:.0f} s, "
                  f"{len(s.result.hits)} hits (SNR >= 7) for {len(sim.truth)} particles")
        else:
            mics.append(MicrographInput(sim.image, px, ctf, perturbed_hits(sim.truth, 2.5, 1.0, 100.0, i),
                                        f"mic{i}.mrc"))
    print(f"simulated {a.micrographs} micrographs ({time.perf_counter() - t0:.0f} s)")

    from napari_2dtm.hits.refine import RefineStage

    stages = (RefineStage(2.5, 1.25, 1.5, 0.75),) if a.quick else None
    tmp = Path(tempfile.mkdtemp(prefix="bench_ligand_"))
    out_dir = a.out or tmp / "job"

    def progress(p):
        if int(100 * p.fraction) % 10 == 0:
            print(f"  [{100 * p.fraction:3.0f}%] {p.message}", flush=True)

    t1 = time.perf_counter()
    res, _ = run_reconstruct(mics, full, out_dir, JobSettings(box=a.box, stages=stages),
                             omit_template=omit, overwrite=True, progress=progress)
    job_s = time.perf_counter() - t1
    s = res.summary
    refined = pd.read_csv(res.folder / "omit_refined_hits.csv")
    errs = []
    for k, t in enumerate(truths[1:], start=1):
        r = refined[refined["micrograph"] == f"mic{k}.mrc"].reset_index(drop=True)
        errs.append(angular_distance_deg(
            euler_to_matrix(*r[["phi", "theta", "psi"]].to_numpy(float).T),
            euler_to_matrix(*t[["phi", "theta", "psi"]].to_numpy(float).T)))
    errs = np.concatenate(errs) if errs else np.zeros(0)
    dens = s["omitted_region_density_sigma"]
    m, o = s["map"], s["omit_map"]
    print(f"particles: {s['n_particles']} in {a.micrographs} micrographs at {px} A, box {a.box}")
    if len(errs):
        print(f"pose error after refinement (start 2.5 deg): median {np.median(errs):.2f} deg, "
              f"90th percentile {np.percentile(errs, 90):.2f} deg")
    print(f"ligand density: {dens['omit_map']:.1f} sigma of the solvent in the omit-template "
          f"map, {dens['map']:.1f} in the full-template map")
    print(f"Omega (ligand region, {res.bias.n_mask_voxels} voxels): {res.bias.omega:.3f}")
    print(f"resolution (FSC 0.143, NOT gold-standard): map {m['resolution_a']:.1f} A unmasked, "
          f"{m['resolution_masked_a']:.1f} A masked; omit map {o['resolution_masked_a']:.1f} A masked")
    tm = s["timings"]
    print(f"timings: refinement {tm['refine_s']:.0f} s (both templates), reconstruction "
          f"{tm['reconstruct_s']:.1f} + {tm['omit_reconstruct_s']:.1f} s, job {job_s:.0f} s")
    if a.out is None:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"job folder: {res.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
