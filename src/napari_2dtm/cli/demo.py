"""``napari-2dtm demo``: the demo sample, searched in napari or headless.

With a display: opens napari with the "2DTM demo" sample (a simulated micrograph
with planted 1BD2 particles), the Search widget docked, and starts the search.
Without one (no ``$DISPLAY``, or ``--headless``): runs the same search with the same
settings through the search job the widget runs, saves the results folder, and a
screenshot of it opened in napari under Xvfb (or, if Xvfb is missing, a matplotlib
figure).

This module imports neither napari nor Qt, nor ``napari_2dtm._napari`` (the CLI and the
GUI are separate layers): the window is a separate process, ``python -m
napari_2dtm._napari._demo launch ...``, as the screenshot is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from napari_2dtm.errors import InputError
from napari_2dtm.search.results import ResultsFolder, results_dir_problem


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="open napari with the demo sample and the Search widget (headless without a display)",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("--out", type=Path, default=Path("2dtm_demo"), metavar="DIR",
                   help="demo folder: results in DIR/results, screenshot DIR/screenshot.png "
                        "(default ./2dtm_demo)")
    p.add_argument("--headless", action="store_true",
                   help="run without a window even if a display is available")
    p.add_argument("--no-run", action="store_true",
                   help="with a display: open napari but do not start the search")
    p.add_argument("--teaching", action="store_true",
                   help="with a display: run the search in teaching mode (slow, each step "
                        "shown beside the micrograph and explained)")
    p.add_argument("--screenshot", type=Path, default=None, metavar="PNG",
                   help="headless: where to save the screenshot (default DIR/screenshot.png)")
    p.set_defaults(func=run_demo)


def has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _results_dir(out: Path) -> Path:
    """``out/results``; an existing folder is replaced only if it is a results folder."""
    folder = out / "results"
    problem = results_dir_problem(folder, overwrite=True)
    if problem:
        raise InputError(problem)
    return folder


def run_demo(args: argparse.Namespace) -> int:
    folder = _results_dir(args.out)
    if has_display() and not args.headless:
        return launch_gui(folder, run=not args.no_run, teaching=args.teaching)
    return run_headless(folder, args.screenshot or args.out / "screenshot.png")


def launch_gui(folder: Path, run: bool = True, teaching: bool = False) -> int:
    """napari with the demo, in its own process; returns its exit code."""
    cmd = [sys.executable, "-m", "napari_2dtm._napari._demo", "launch", str(folder),
           "--overwrite"]
    cmd += [] if run else ["--no-run"]
    cmd += ["--teaching"] if teaching else []
    try:
        return subprocess.run(cmd).returncode
    except KeyboardInterrupt:
        return 130


def run_headless(folder: Path, png: Path) -> int:
    import numpy as np

    from napari_2dtm.jobs.search import SearchStarted, run_search
    from napari_2dtm.samples import DEMO, sample_config, simulate_sample

    t0 = time.perf_counter()
    sim = simulate_sample(DEMO)
    print(f"demo: simulated {DEMO['shape'][1]} x {DEMO['shape'][0]} px micrograph at "
          f"{sim.pixel_size_a:g} A/px with {len(sim.truth)} planted 1BD2 particles "
          f"({time.perf_counter() - t0:.1f} s)")

    def progress(p):
        if isinstance(p, SearchStarted):
            print(f"demo: searching {p.n_orientations:,} orientations on "
                  f"{p.device} (about {p.search.estimate_seconds():.0f} s)")
        else:
            print(f"  {100 * p.fraction:5.1f}%  ETA {p.eta_s:5.0f} s  "
                  f"{p.orientations_per_s:7.0f} orientations/s", flush=True)

    result, folder = run_search(sim.image, sim.pixel_size_a, sim.templates[0],
                                sample_config(DEMO), folder, micrograph_name=DEMO["name"],
                                overwrite=True, progress=progress)
    hits, truth = result.hits, sim.truth
    found = sum(
        bool(len(hits)) and float(np.hypot(hits.x - x, hits.y - y).min()) <= 4.0
        for x, y in zip(truth.x, truth.y)
    )
    print(f"demo: {len(hits)} hits above the threshold {result.threshold:.2f}; "
          f"{found} of {len(truth)} planted particles found")
    print(f"demo: results saved in {folder}")
    png.parent.mkdir(parents=True, exist_ok=True)
    how = screenshot(folder, png)
    print(f"demo: screenshot ({how}) saved as {png}")
    return 0


def screenshot(folder: Path, png: Path) -> str:
    """Render the results folder: napari under Xvfb if possible, else matplotlib."""
    xvfb_run = shutil.which("xvfb-run")
    if xvfb_run:
        cmd = [xvfb_run, "-a", "-s", "-screen 0 1600x1100x24", sys.executable, "-m",
               "napari_2dtm._napari._demo", "screenshot", str(folder), str(png)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode == 0 and png.is_file():
            return "napari under Xvfb"
        print("demo: napari screenshot under Xvfb failed; drawing with matplotlib instead",
              file=sys.stderr)
    _matplotlib_figure(folder, png)
    return "matplotlib"


def _matplotlib_figure(folder: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    view = ResultsFolder.open(folder)
    res = view.result
    image, _ = view.read_micrograph()
    fig, axes = plt.subplots(1, 2, figsize=(12, 6), constrained_layout=True)
    lo, hi = (float(v) for v in np.percentile(image, [0.5, 99.5]))
    axes[0].imshow(image, cmap="gray", vmin=lo, vmax=hi)
    axes[0].scatter(res.hits.x, res.hits.y, s=300, facecolors="none", edgecolors="lime")
    axes[0].set_title(f"micrograph with {len(res.hits)} hits")
    im = axes[1].imshow(res.maps["snr"], cmap="inferno")
    axes[1].set_title("SNR map")
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    for ax in axes:
        ax.set_axis_off()
    fig.savefig(png, dpi=100)
    plt.close(fig)
