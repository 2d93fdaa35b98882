"""Fast against exhaustive search, side by side on the same micrographs, in one run.

Images (4E43, 23 kDa, at 4 A per pixel, 10000 A defocus; both strategies at the same
requested steps, by default the resolution's own step for this particle, 7 deg, and
defocus +-400 A in 200 A steps):

* ``single``: separated particles in stationary noise (the simulator's own potential;
  its SNR set for true-pose correlations near 12: the simulator's ``snr_matched`` is
  about twice the correlation the whitened template reaches at 4 A);
* ``lamella``: targets among non-target proteins (1A28, 1BD2 and their chains), an
  edge-on bilayer, an ice blob, a thickness gradient and hot pixels
  (:func:`napari_2dtm.scenes.lamella_scene`);
* ``noise``: white Gaussian noise only.

For each image and strategy: cross-correlations per pixel of the work done, wall time,
hits, recall, precision and false positives (a hit within ``--match`` px of a target is a
true positive, one per target), and the median angular and position errors of the found
targets. The fast search's recall is also given against the exhaustive search's own true
positives. Exhaustive results are cached (``--cache``); both strategies are timed in this
run unless a cached exhaustive result is used (its recorded time is reported then).

Usage::

    python benchmarks/bench_fast.py [--size 384] [--seeds 2] [--noise-seeds 4] [--step 7]
        [--cache build/bench_fast] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.planting import structure  # noqa: E402
from napari_2dtm import CTFParams, SearchConfig  # noqa: E402

PX = 4.0
CTF = CTFParams(defocus1_a=10000.0)


def make_image(kind: str, seed: int, size: int):
    """``(image, truth DataFrame or None)``."""
    from napari_2dtm.scenes import lamella_scene  # noqa: PLC0415
    from napari_2dtm.simulate import simulate_micrograph  # noqa: PLC0415

    area = (size / 384.0) ** 2
    target = structure("4E43")
    if kind == "noise":
        return np.random.default_rng(5000 + seed).normal(size=(size, size)).astype(np.float32), None
    if kind == "single":
        r = simulate_micrograph([target], max(1, round(12 * area)), shape=(size, size),
                                pixel_size_a=PX, ctf=CTF, snr=1.4, seed=seed,
                                min_distance_px=24)
    elif kind == "lamella":
        r = lamella_scene(target, max(1, round(12 * area)),
                          clutter=[structure("1A28"), structure("1BD2")],
                          n_clutter=round(30 * area), shape=(size, size), pixel_size_a=PX,
                          ctf=CTF, snr=1.6, seed=seed)
    else:
        raise ValueError(kind)
    return r.image, r.truth


def _match(hits, truth, px):
    """``[(truth_row, hit_row)]``: greedy, strongest hit first, one per target."""
    if truth is None or len(hits) == 0 or len(truth) == 0:
        return []
    from scipy.spatial import cKDTree  # noqa: PLC0415

    t = truth[["x", "y"]].to_numpy(float)
    tree = cKDTree(t)
    used, pairs = set(), []
    for j, (x, y) in enumerate(hits[["x", "y"]].to_numpy(float)):
        for i in tree.query_ball_point((x, y), px):
            if i not in used:
                used.add(i)
                pairs.append((i, j))
                break
    return pairs


def _errors(hits, truth, pairs):
    from napari_2dtm.core.geometry import angular_distance_deg, euler_to_matrix  # noqa: PLC0415

    if not pairs:
        return float("nan"), float("nan")
    ti = [i for i, _ in pairs]
    hj = [j for _, j in pairs]
    t, h = truth.iloc[ti], hits.iloc[hj]
    ang = angular_distance_deg(euler_to_matrix(*h[["phi", "theta", "psi"]].to_numpy(float).T),
                               euler_to_matrix(*t[["phi", "theta", "psi"]].to_numpy(float).T))
    pos = np.hypot(h["x"].to_numpy() - t["x"].to_numpy(), h["y"].to_numpy() - t["y"].to_numpy())
    return float(np.median(ang)), float(np.median(pos))


def run_one(kind, seed, size, step, cache: Path, match_px: float) -> dict:
    from napari_2dtm.search.fast import make_search  # noqa: PLC0415
    from napari_2dtm.search.results import ResultsFolder, write_results  # noqa: PLC0415

    img, truth = make_image(kind, seed, size)
    cfg = SearchConfig(ctf=CTF, out_of_plane_step_deg=step, in_plane_step_deg=step,
                       defocus_range_a=400, defocus_step_a=200, device="cpu",
                       progress_interval_s=1e9)
    tpl = structure("4E43")
    out = {"kind": kind, "seed": seed, "n_targets": 0 if truth is None else len(truth)}
    runs = {}
    folder = cache / f"{kind}_{seed}_{size}_{step:g}"
    if (folder / "search.json").exists():
        res = ResultsFolder.open(folder).result
        runs["exhaustive"] = (res, float(res.metadata["elapsed_s"]), True)
    for strategy in ("exhaustive", "fast"):
        if strategy in runs:
            continue
        t0 = time.perf_counter()
        s = make_search(img, PX, tpl, dataclasses.replace(cfg, strategy=strategy))
        for _ in s.run():
            pass
        runs[strategy] = (s.result, time.perf_counter() - t0, False)
        if strategy == "exhaustive":
            write_results(s.result, folder, overwrite=True)
    tp_ex = set()
    for strategy, (res, secs, cached) in runs.items():
        hits = res.hits
        pairs = _match(hits, truth, match_px)
        ang, pos = _errors(hits, truth, pairs)
        meta = res.metadata
        n_cc = (meta["fast"]["coarse_cc_per_pixel"] * float(res.valid_mask.sum())
                if strategy == "fast" else meta["n_cc_per_pixel"] * float(res.valid_mask.sum()))
        out[strategy] = {"seconds": secs, "cached": cached, "cc_pixels": n_cc,
                         "hits": len(hits), "tp": len(pairs), "fp": len(hits) - len(pairs),
                         "angle_median_deg": ang, "position_median_px": pos,
                         "threshold": float(res.threshold)}
        if strategy == "exhaustive":
            tp_ex = {i for i, _ in pairs}
        else:
            tp_fast = {i for i, _ in pairs}
            out["fast"]["recall_of_exhaustive_tp"] = (len(tp_ex & tp_fast) / len(tp_ex)
                                                      if tp_ex else float("nan"))
            out["fast"]["candidates"] = meta["fast"]["n_candidates"]
            out["fast"]["coarse_seconds"] = meta["fast"]["coarse_seconds"]
            out["fast"]["refine_seconds"] = meta["fast"]["refine_seconds"]
    out["speedup"] = out["exhaustive"]["seconds"] / out["fast"]["seconds"]
    out["work_ratio"] = out["exhaustive"]["cc_pixels"] / out["fast"]["cc_pixels"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--step", type=float, default=7.0)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--noise-seeds", type=int, default=4)
    ap.add_argument("--match", type=float, default=5.0,
                    help="match radius, px (20 A: under the particle radius, 33 A)")
    ap.add_argument("--kinds", nargs="+", default=["single", "lamella", "noise"])
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / "bench_fast")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    a.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| image | seed | targets | strategy | s | CC-pixels | hits | TP | FP | recall | "
          "angle med (deg) | pos med (px) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in a.kinds:
        for seed in range(a.noise_seeds if kind == "noise" else a.seeds):
            r = run_one(kind, seed, a.size, a.step, a.cache, a.match)
            rows.append(r)
            for st in ("exhaustive", "fast"):
                x = r[st]
                rec = x["tp"] / r["n_targets"] if r["n_targets"] else float("nan")
                print(f"| {kind} | {seed} | {r['n_targets']} | {st} | {x['seconds']:.1f}"
                      f"{' (cached)' if x['cached'] else ''} | {x['cc_pixels']:.3g} | "
                      f"{x['hits']} | {x['tp']} | {x['fp']} | {rec:.2f} | "
                      f"{x['angle_median_deg']:.2f} | {x['position_median_px']:.2f} |", flush=True)
            print(f"|  |  |  | fast/exhaustive | {1 / r['speedup']:.3f} (x{r['speedup']:.1f}) | "
                  f"x{r['work_ratio']:.1f} less | | | | "
                  f"{r['fast'].get('recall_of_exhaustive_tp', float('nan')):.2f} of exh. TP | "
                  f"| |", flush=True)
    for kind in a.kinds:
        sel = [r for r in rows if r["kind"] == kind]
        fp = {st: np.mean([r[st]["fp"] for r in sel]) for st in ("exhaustive", "fast")}
        sp = np.median([r["speedup"] for r in sel])
        print(f"{kind}: median speed-up x{sp:.1f}; false positives per image: exhaustive "
              f"{fp['exhaustive']:.2f}, fast {fp['fast']:.2f} (requested 1)")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
