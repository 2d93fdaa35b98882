"""Gradient refinement against the grid refinement, on the same hits, in one run.

1BD2 (84 kDa) hits on a simulated 1024^2 micrograph at 1.5 A (the simulator's own
atomic potential, not the template: an independent image), started 3-5 deg (each hit
turned about a random axis) and 2 px from the truth, 100 A off in defocus. Both methods
refine the same hits in this process, one after the other; the table gives seconds per
hit (marginal: a one-hit call, i.e. the set-up, is timed and taken off), the whole call,
their ratio, score evaluations (gradient) and the pose, position and defocus errors
against the truth. A second SNR shows where the data, not the optimiser, limit the pose.

Usage::

    python benchmarks/bench_refine.py [--hits 16] [--snr 0.05 0.2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _errors(df, truth):
    from napari_2dtm.core.geometry import angular_distance_deg, euler_to_matrix

    ang = angular_distance_deg(euler_to_matrix(*df[["phi", "theta", "psi"]].to_numpy(float).T),
                               euler_to_matrix(*truth[["phi", "theta", "psi"]].to_numpy(float).T))
    pos = np.hypot(df["x"].to_numpy() - truth["x"].to_numpy(),
                   df["y"].to_numpy() - truth["y"].to_numpy())
    ddf = np.abs(df["defocus_a"].to_numpy() - truth["defocus_a"].to_numpy())
    return np.asarray(ang), pos, ddf


def run(n_hits: int, snr: float, seed: int = 1) -> dict:
    from napari_2dtm.core.ctf import CTFParams
    from napari_2dtm.core.geometry import rotate_about_random_axes
    from napari_2dtm.hits.refine import refine_hits
    from napari_2dtm.simulate import simulate_micrograph
    from napari_2dtm.templates.model import template_from_model

    path = ROOT / "src" / "napari_2dtm" / "data" / "1BD2.pdb.gz"
    px = 1.5
    tpl = template_from_model(path, px)
    ctf = CTFParams(defocus1_a=12000, defocus2_a=11600, astigmatism_angle_deg=30)
    sim = simulate_micrograph([path], n_hits, shape=(1024, 1024), pixel_size_a=px, ctf=ctf,
                              snr=snr, seed=seed)
    truth = sim.truth.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    start = truth.copy()
    ang = truth[["phi", "theta", "psi"]].to_numpy(float)
    start[["phi", "theta", "psi"]] = np.concatenate(
        [rotate_about_random_axes(a[None], float(rng.uniform(3, 5)), rng) for a in ang])
    t = rng.uniform(0, 2 * np.pi, len(start))
    start["x"] = start["x"] + 2 * np.cos(t)
    start["y"] = start["y"] + 2 * np.sin(t)
    start["defocus_a"] = start["defocus_a"] + 100.0
    # compile and warm both paths on one hit
    refine_hits(sim.image, px, tpl, start.iloc[:1], ctf, method="gradient")
    out = {"snr": snr, "hits": len(start), "pixel_size_a": px, "template_box": tpl.box,
           "start_angle_deg": float(np.median(_errors(start, truth)[0]))}
    for method in ("grid", "gradient"):
        # the set-up (whitened micrograph, the template's 3D transform) is paid once per
        # call: timed with one hit and taken off, so the per-hit cost is the marginal one
        t0 = time.perf_counter()
        refine_hits(sim.image, px, tpl, start.iloc[:1], ctf, method=method)
        t_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = refine_hits(sim.image, px, tpl, start, ctf, method=method)
        dt = time.perf_counter() - t0
        a, p, d = _errors(r, truth)
        out[method] = {"s_per_hit": (dt - t_one) / (len(r) - 1), "s_total": dt,
                       "s_setup_and_one_hit": t_one, "angle_median_deg": float(np.median(a)),
                       "angle_max_deg": float(a.max()), "position_median_px": float(np.median(p)),
                       "position_max_px": float(p.max()), "defocus_median_a": float(np.median(d)),
                       "mean_cc": float(r["cc"].mean()),
                       "evaluations_per_hit": (r.attrs.get("refine_evaluations", np.nan)
                                               / len(r))}
    out["speedup"] = out["grid"]["s_per_hit"] / out["gradient"]["s_per_hit"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hits", type=int, default=16)
    ap.add_argument("--snr", type=float, nargs="+", default=[0.05, 0.2],
                    help="simulator SNR (its definition: per-pixel signal to noise variance)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    print(f"CPU cores: {os.cpu_count()}; both methods on the same hits, one after the other")
    rows = [run(a.hits, s) for s in a.snr]
    print(f"{'snr':>5} {'method':>9} {'s/hit':>7} {'total s':>8} {'evals/hit':>9} "
          f"{'angle med/max deg':>18} {'pos med/max px':>15} {'dfocus med A':>12} {'mean cc':>8}")
    for r in rows:
        for m in ("grid", "gradient"):
            x = r[m]
            print(f"{r['snr']:>5} {m:>9} {x['s_per_hit']:7.3f} {x['s_total']:8.2f} "
                  f"{x['evaluations_per_hit']:9.0f} "
                  f"{x['angle_median_deg']:8.2f} / {x['angle_max_deg']:5.2f}    "
                  f"{x['position_median_px']:6.2f} / {x['position_max_px']:4.2f} "
                  f"{x['defocus_median_a']:12.0f} {x['mean_cc']:8.2f}")
        tot = r["grid"]["s_total"] / r["gradient"]["s_total"]
        print(f"{r['snr']:>5} gradient is {r['speedup']:.1f}x faster than grid per hit "
              f"({tot:.1f}x for the whole call with its set-up) "
              f"(start: median {r['start_angle_deg']:.1f} deg, 2 px, 100 A off); "
              f"5,000 hits EXTRAPOLATED: grid {r['grid']['s_per_hit'] * 5000 / 60:.1f} min, "
              f"gradient {r['gradient']['s_per_hit'] * 5000 / 60:.1f} min")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
