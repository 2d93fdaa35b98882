"""Atomic model refinement against particle images: the issue's figures in one run.

1BD2 (TCR-pMHC, five chains, 84 kDa) particles simulated by the project's simulator (atoms
projected analytically, Poisson noise at 40 e/A^2, 0.8 um defocus, 1.5 A pixels, 100 per
1024^2 micrograph); the hits are the truth turned 1 degree about a random axis and moved
0.5 px. Groups: one per chain. Scenarios:

* ``moved``: chain D (TCR alpha) turned 5 degrees about a fixed axis through its centre
  and shifted 2 A; refined from the unmoved model. Figures: each chain's RMSD to the
  truth, how far the unmoved chains moved, the free-half CC before and after.
* ``unchanged``: particles of the starting model itself; the largest RMSD any chain moved
  in any cycle, and the free CC.
* ``bfactor``: chain D's atoms at B + 40 A^2; B-factor refinement (no rigid motion); the
  recovered difference of chain D to the mean of the others.
* SNR: one micrograph of ``moved`` searched (its particles' true views and 200 random
  ones) with the starting and with the refined template; the hits' SNR ratio.

Time per particle per cycle is the refinement's wall time over particles x cycles (cycle 0,
the poses alone, included). Usage::

    python benchmarks/bench_model_refine.py [--particles 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PX = 1.5
SHIFT = np.array([1.2, -1.0, 1.2]) / np.linalg.norm([1.2, -1.0, 1.2]) * 2.0


def _setup(model_for_particles, n, seed, use_model_bfactors=False):
    from helpers.model_sim import simulated_hits  # noqa: PLC0415
    from napari_2dtm.modelfit.forward import GroupVolumes
    from napari_2dtm.modelfit.groups import make_groups
    from napari_2dtm.modelfit.particles import prepare_particles
    from napari_2dtm.templates.atoms import read_atoms
    from napari_2dtm.templates.model import _auto_box

    src = ROOT / "tests" / "data" / "structures" / "1BD2.pdb.gz"
    mics, truths = simulated_hits(model_for_particles, n, pixel_size_a=PX, per_micrograph=100,
                                  shape=(1024, 1024), seed=seed, with_truth=True,
                                  use_model_bfactors=use_model_bfactors)
    groups = make_groups(read_atoms(src))
    c0 = groups.atoms.weighted_center()
    vols = GroupVolumes(groups, PX, 30.0)
    box = _auto_box(groups.atoms, c0, PX)
    data = prepare_particles(mics, box, vols.size, None)
    return groups, data, c0, box, mics, truths


def _refine(groups, data, c0, box, options):
    from napari_2dtm.modelfit.refine import refine_model

    t0 = time.perf_counter()
    fit = refine_model(groups, data, c0, options=options, model_box=box,
                       progress=lambda s, f, m: print("   ", m, flush=True) if s == "cycle" else None)
    sec = time.perf_counter() - t0
    return fit, sec, sec / len(data.batch) / len(fit.cycles)


def _cycles(fit):
    return [{"cycle": c.cycle, "work_cc": c.work_cc, "free_cc": c.free_cc, "seconds": c.seconds,
             "evaluations": c.evaluations} for c in fit.cycles]


def moved(n, tmp):
    from helpers.model_sim import changed_model  # noqa: PLC0415
    from napari_2dtm.modelfit.refine import RefineOptions
    from napari_2dtm.templates.atoms import read_atoms

    src = ROOT / "tests" / "data" / "structures" / "1BD2.pdb.gz"
    out = changed_model(src, tmp / "moved.pdb", "chain D", angle_deg=5.0, shift_a=SHIFT)
    groups, data, c0, box, mics, truths = _setup(out, n, seed=100)
    fit, sec, per = _refine(groups, data, c0, box, RefineOptions(max_cycles=5))
    truth = read_atoms(out).xyz
    refined = fit.motion.apply(groups.atoms.xyz, groups.masks, groups.centers_a)
    err = {groups.names[g]: float(np.sqrt(((refined[m] - truth[m]) ** 2).sum(1).mean()))
           for g, m in enumerate(groups.masks)}
    moved_by = dict(zip(groups.names, fit.motion.rmsd_a(groups).tolist()))
    best = next(c for c in fit.cycles if c.cycle == fit.best_cycle)
    snr = _snr_gain(groups, fit, mics[0], truths[0], c0, box)
    return {"particles": len(data.batch), "rmsd_to_truth_a": err, "moved_a": moved_by,
            "free_cc_start": fit.cycles[0].free_cc, "free_cc_refined": best.free_cc,
            "best_cycle": fit.best_cycle, "stopped": fit.stopped, "cycles": _cycles(fit),
            "seconds": sec, "s_per_particle_per_cycle": per, "snr": snr}


def _snr_gain(groups, fit, mic, truth, c0, box):
    from napari_2dtm.modelfit.groups import GroupMotion
    from napari_2dtm.modelfit.refine import model_potential
    from napari_2dtm.search.config import SearchConfig
    from napari_2dtm.search.engine import search
    from napari_2dtm.templates.template import Template

    rng = np.random.default_rng(0)
    views = np.concatenate([truth[["phi", "theta", "psi"]].to_numpy(float),
                            np.column_stack([rng.uniform(0, 360, 200),
                                             np.rad2deg(np.arccos(rng.uniform(-1, 1, 200))),
                                             rng.uniform(0, 360, 200)])])
    out = []
    for m in (GroupMotion.zero(len(groups)), fit.motion):
        t = Template(model_potential(groups, m, c0, box, PX, 30.0), PX)
        res = search(mic.image, PX, t, SearchConfig(orientations=views, ctf=mic.ctf))
        s = res.maps["snr"]
        out.append(np.array([s[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].max()
                             for x, y in zip(truth["x"], truth["y"])]))
    return {"start_median": float(np.median(out[0])), "refined_median": float(np.median(out[1])),
            "median_ratio": float(np.median(out[1] / out[0])),
            "fraction_higher": float(np.mean(out[1] > out[0]))}


def unchanged(n):
    from napari_2dtm.modelfit.refine import RefineOptions

    src = ROOT / "tests" / "data" / "structures" / "1BD2.pdb.gz"
    groups, data, c0, box, _, _ = _setup(src, n, seed=200)
    fit, sec, per = _refine(groups, data, c0, box, RefineOptions(max_cycles=5))
    best = next(c for c in fit.cycles if c.cycle == fit.best_cycle)
    return {"particles": len(data.batch),
            "max_moved_any_cycle_a": float(max(c.motion.rmsd_a(groups).max() for c in fit.cycles)),
            "max_moved_kept_a": float(fit.motion.rmsd_a(groups).max()),
            "free_cc_start": fit.cycles[0].free_cc, "free_cc_refined": best.free_cc,
            "best_cycle": fit.best_cycle, "cycles": _cycles(fit), "seconds": sec,
            "s_per_particle_per_cycle": per}


def bfactor(n, tmp):
    from helpers.model_sim import changed_model  # noqa: PLC0415
    from napari_2dtm.modelfit.refine import RefineOptions

    src = ROOT / "tests" / "data" / "structures" / "1BD2.pdb.gz"
    out = changed_model(src, tmp / "bfac.pdb", bfactor={"chain D": 40.0})
    groups, data, c0, box, _, _ = _setup(out, n, seed=300, use_model_bfactors=True)
    fit, sec, per = _refine(groups, data, c0, box,
                            RefineOptions(rigid=False, bfactor=True, max_cycles=4))
    db = dict(zip(groups.names, fit.motion.delta_b_a2.tolist()))
    others = [v for k, v in db.items() if k != "chain D"]
    return {"particles": len(data.batch), "delta_b_a2": db,
            "recovered_difference_a2": db["chain D"] - float(np.mean(others)),
            "cycles": _cycles(fit), "seconds": sec, "s_per_particle_per_cycle": per}


def main(argv=None) -> int:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--particles", type=int, default=1000)
    p.add_argument("--only", choices=["moved", "unchanged", "bfactor"], nargs="+",
                   default=["moved", "unchanged", "bfactor"])
    p.add_argument("--json", type=Path, default=ROOT / "build" / "bench_model_refine.json")
    a = p.parse_args(argv)
    out = {"particles": a.particles, "pixel_size_a": PX}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in a.only:
            print(f"== {name} ({a.particles} particles)", flush=True)
            t0 = time.perf_counter()
            r = moved(a.particles, tmp) if name == "moved" else (
                unchanged(a.particles) if name == "unchanged" else bfactor(a.particles, tmp))
            r["wall_s"] = time.perf_counter() - t0
            out[name] = r
            print(json.dumps({k: v for k, v in r.items() if k != "cycles"}, indent=1), flush=True)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=2))
    print("| scenario | figure | value |\n|---|---|---|")
    if "moved" in out:
        m = out["moved"]
        print(f"| moved | chain D RMSD to truth | {m['rmsd_to_truth_a']['chain D']:.3f} A |")
        print(f"| moved | largest move of another chain | "
              f"{max(v for k, v in m['moved_a'].items() if k != 'chain D'):.3f} A |")
        print(f"| moved | free CC | {m['free_cc_start']:.3f} -> {m['free_cc_refined']:.3f} |")
        print(f"| moved | re-search SNR, median ratio | {m['snr']['median_ratio']:.3f} "
              f"({100 * m['snr']['fraction_higher']:.0f} % of particles higher) |")
        print(f"| moved | s per particle per cycle | {m['s_per_particle_per_cycle']:.4f} |")
    if "unchanged" in out:
        u = out["unchanged"]
        print(f"| unchanged | largest move, any cycle | {u['max_moved_any_cycle_a']:.3f} A |")
        print(f"| unchanged | free CC | {u['free_cc_start']:.3f} -> {u['free_cc_refined']:.3f} |")
    if "bfactor" in out:
        b = out["bfactor"]
        print(f"| bfactor | recovered chain D - others (true 40) | "
              f"{b['recovered_difference_a2']:.1f} A^2 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
