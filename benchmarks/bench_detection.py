"""Detection statistics side by side: recall, precision and false positives per image.

The suite (several seeds each, all 1BD2 targets at 2 A per pixel, 10000 A defocus):

* ``single``: well separated particles in stationary noise;
* ``crowded``: close-packed particles (footprints may touch), like the demo but denser;
* ``lamella``: targets among non-target proteins (1A28, 4E43 and their chains), an
  edge-on lipid bilayer, an ice-contamination blob, a thickness gradient (noise sigma and
  transmission) and hot pixels (:func:`napari_2dtm.scenes.lamella_scene`);
* ``noise``: white Gaussian noise only.

Each image is searched once (the engine, the same code as the CLI) and its maps are cached
under ``--cache``; every metric then takes its hits at its own default threshold for
``N_fp = 1``: ``zbg`` (the default), ``zscore`` and ``snr`` at the Gaussian false-alarm
threshold, ``neg_log_p`` at ``ln(N_population)``. A hit within ``--match`` px of a target
is a true positive (one per target); on the lamella, false hits on the membrane or the
contamination are counted apart.

Usage::

    python benchmarks/bench_detection.py [--size 512] [--step 6] [--seeds 3] [--noise-seeds 8]
        [--cache build/bench_detection] [--out docs/images/detection_benchmark.png] [--redetect]

Prints a markdown table (one row per image kind and metric) and writes a figure.
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

from helpers.planting import structure  # noqa: E402
from napari_2dtm import CTFParams, SearchConfig, search  # noqa: E402
from napari_2dtm.search.detect import extract_hits  # noqa: E402
from napari_2dtm.search.pvalue import add_neg_log_p  # noqa: E402

METRICS = ("zbg", "zscore", "snr", "neg_log_p")
#: the figure of docs/detection.md (``--out``)
FIGURE = ROOT / "docs" / "images" / "detection_benchmark.png"
CTF = CTFParams(defocus1_a=10000.0, defocus2_a=10000.0)
PX = 2.0


def make_image(kind: str, seed: int, size: int):
    """``(image, truth (n, 2) x/y, snr_matched, scene)`` of one suite image."""
    from napari_2dtm.scenes import lamella_scene  # noqa: PLC0415
    from napari_2dtm.simulate import simulate_micrograph  # noqa: PLC0415

    area = (size / 512.0) ** 2
    target = structure("1BD2")
    scene = {}
    if kind == "noise":
        img = np.random.default_rng(1000 + seed).normal(size=(size, size)).astype(np.float32)
        return img, np.zeros((0, 2)), np.zeros(0), scene
    if kind == "lamella":
        r = lamella_scene(target, max(1, round(8 * area)), clutter=[structure("1A28"), structure("4E43")],
                          n_clutter=round(27 * area), shape=(size, size), pixel_size_a=PX, ctf=CTF,
                          snr=0.035, seed=seed)
        sc = r.params["scene"]
        scene = {"membrane": sc["membrane"], "contamination": sc["contamination"]}
    elif kind == "single":
        r = simulate_micrograph([target], max(1, round(8 * area)), shape=(size, size), pixel_size_a=PX,
                                ctf=CTF, snr=0.05, seed=seed, min_distance_px=40)
    elif kind == "crowded":
        r = simulate_micrograph([target], max(1, round(24 * area)), shape=(size, size), pixel_size_a=PX,
                                ctf=CTF, snr=0.1, seed=seed)
    else:
        raise ValueError(kind)
    return r.image, r.truth[["x", "y"]].to_numpy(float), r.truth["snr_matched"].to_numpy(), scene


def redetect(res, img):
    """Remake a cached result's detection maps with this checkout's code (the search's
    mip/mean/std and its recorded self-match), so a change of the detection rule needs no
    new search."""
    from napari_2dtm.core.filters import prepare_image  # noqa: PLC0415
    from napari_2dtm.search.background import detection_maps  # noqa: PLC0415

    meta = res.metadata
    prepared = prepare_image(img, PX, meta["config"].get("high_res_limit_a"))
    maps, record = detection_maps(res.maps, res.valid_mask, meta["detection"],
                                  meta["particle_radius_px"], prepared.image)
    res.maps.update(maps)
    meta["detection"] = {**meta["detection"], **record}
    res.maps.pop("neg_log_p", None)


def searched(kind: str, seed: int, size: int, step: float, cache: Path, again: bool = False):
    """The search result of one suite image (cached) and its truth."""
    from napari_2dtm.search.results import ResultsFolder, write_results  # noqa: PLC0415

    folder = cache / f"{kind}_{seed}_{size}_{step:g}"
    img, truth, snr_m, scene = make_image(kind, seed, size)
    if (folder / "search.json").exists():
        res = ResultsFolder.open(folder).result
        if again:
            redetect(res, img)
    else:
        cfg = SearchConfig(ctf=CTF, out_of_plane_step_deg=step, in_plane_step_deg=step)
        t0 = time.perf_counter()
        res = search(img, PX, structure("1BD2"), cfg)
        print(f"  searched {folder.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        write_results(res, folder, overwrite=True)
    return res, truth, snr_m, scene


def score(res, metric: str, truth: np.ndarray, scene: dict, match_px: float) -> dict:
    """Recall inputs for one metric: true, false, false on membrane/contamination."""
    if metric == "neg_log_p" and "neg_log_p" not in res.maps:
        add_neg_log_p(res)
    hits = extract_hits(res, metric)
    xy = hits[["x", "y"]].to_numpy(float) if len(hits) else np.zeros((0, 2))
    found = np.zeros(len(truth), bool)
    false = []
    for p in xy:
        if len(truth):
            d = np.hypot(*(truth - p).T)
            i = int(np.argmin(d))
            if d[i] <= match_px and not found[i]:
                found[i] = True
                continue
        false.append(p)
    on = {k: int(sum(bool(m[int(round(y)), int(round(x))]) for x, y in false)) for k, m in scene.items()}
    return {"tp": int(found.sum()), "n": len(truth), "fp": len(false), **on}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--step", type=float, default=6.0, help="angular step (deg), in and out of plane")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--noise-seeds", type=int, default=8)
    ap.add_argument("--kinds", default="single,crowded,lamella,noise")
    ap.add_argument("--match", type=float, default=8.0, help="match distance (px)")
    ap.add_argument("--cache", default=str(ROOT / "build" / "bench_detection"))
    ap.add_argument("--out", default=None,
                    help=f"figure (PNG) of recall and false positives (the docs': {FIGURE})")
    ap.add_argument("--json", default=None)
    ap.add_argument("--redetect", action="store_true",
                    help="remake the detection maps of cached searches with the current code")
    a = ap.parse_args(argv)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in a.kinds.split(","):
        seeds = range(a.noise_seeds if kind == "noise" else a.seeds)
        tot = {m: {"tp": 0, "n": 0, "fp": 0, "membrane": 0, "contamination": 0} for m in METRICS}
        snrs = []
        for seed in seeds:
            res, truth, snr_m, scene = searched(kind, seed, a.size, a.step, cache, a.redetect)
            snrs.extend(snr_m.tolist())
            for m in METRICS:
                s = score(res, m, truth, scene, a.match)
                for k, v in s.items():
                    tot[m][k] += v
        for m in METRICS:
            t = tot[m]
            rows.append({"kind": kind, "metric": m, "images": len(seeds), "targets": t["n"],
                         "recall": t["tp"] / t["n"] if t["n"] else float("nan"),
                         "precision": t["tp"] / (t["tp"] + t["fp"]) if t["tp"] + t["fp"] else float("nan"),
                         "fp_per_image": t["fp"] / len(seeds), "fp_membrane": t["membrane"],
                         "fp_contamination": t["contamination"],
                         "median_snr": float(np.median(snrs)) if snrs else float("nan")})
    print(f"\n{a.size}^2 px at {PX} A, 1BD2 targets, grid {a.step:g} deg in and out of plane, one "
          f"defocus plane, N_fp = 1, match within {a.match:g} px\n")
    print("| image | metric | images | targets (median SNR) | recall | precision | false per image "
          "| on membrane / contamination |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        tgt = f"{r['targets']} ({r['median_snr']:.1f})" if r["targets"] else "0"
        print(f"| {r['kind']} | {r['metric']} | {r['images']} | {tgt} | {r['recall']:.2f} | "
              f"{r['precision']:.2f} | {r['fp_per_image']:.2f} | "
              f"{r['fp_membrane']} / {r['fp_contamination']} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    if a.out:
        plot(rows, a.out)


def plot(rows, out):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    w = 0.8 / len(METRICS)
    for j, m in enumerate(METRICS):
        rec = [next(r["recall"] for r in rows if r["kind"] == k and r["metric"] == m) for k in kinds]
        fp = [next(r["fp_per_image"] for r in rows if r["kind"] == k and r["metric"] == m) for k in kinds]
        x = np.arange(len(kinds)) + (j - (len(METRICS) - 1) / 2) * w
        ax[0].bar(x, np.nan_to_num(rec), w, label=m)
        ax[1].bar(x, fp, w, label=m)
    for a_, title in zip(ax, ("recall", "false positives per image")):
        a_.set_xticks(range(len(kinds)), kinds)
        a_.set_title(title)
    ax[1].axhline(1.0, color="k", lw=0.8, ls="--")
    ax[1].set_yscale("symlog", linthresh=1)
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
