"""``napari-2dtm batch``: many micrographs, one template, a batch folder of results."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from napari_2dtm.errors import Cancelled
from napari_2dtm.jobs.batch import CTFSource, find_micrographs, run_batch

from .search import add_search_options, cancel_on_signals, config_from_args, template_kwargs


def _print_row(r: dict) -> None:
    if r["status"] == "failed":
        print(f"  {r['name']}: FAILED: {r['error']}", file=sys.stderr, flush=True)
    elif r["status"] == "skipped":
        print(f"  {r['name']}: done earlier ({r['n_hits']} hits), skipped", file=sys.stderr, flush=True)
    else:
        print(f"  {r['name']}: {r['n_hits']} hits in {r['time_s']:.1f} s", file=sys.stderr, flush=True)


def run(args) -> int:
    inputs = list(args.micrographs)
    ctf_star = args.ctf_star
    cfg, px_ctf = config_from_args(args)
    source = CTFSource(ctffind_dir=args.ctffind_dir, star=ctf_star, default=cfg.ctf,
                       default_pixel_size_a=px_ctf, default_source=args.ctffind)
    if not inputs and ctf_star is not None:
        # the micrographs of the STAR file, paths relative to the current (project) folder
        inputs = source.star_micrographs
    mics = find_micrographs(inputs)
    if not mics:
        print("napari-2dtm batch: no micrographs given", file=sys.stderr)
        return 2
    where = (f"scheduler {args.scheduler}" if args.scheduler else
             f"a local dask cluster of {args.workers} worker(s)" if args.workers else "this process")
    # on stdout: a refusal (a bad value, an unreachable scheduler) is then the one line
    # on stderr
    print(f"{len(mics)} micrographs -> {args.out} on {where}"
          + (f", {args.shards} orientation shards each" if args.shards > 1 else ""), flush=True)
    tpl = args.template
    cancel = threading.Event()
    try:
        with cancel_on_signals(cancel):
            summary, _ = run_batch(
                mics, args.out, tpl, cfg, ctf=source, pixel_size_a=args.pixel_size,
                template_kwargs=template_kwargs(args), retry_failed=args.retry_failed,
                workers=args.workers, scheduler=args.scheduler,
                threads_per_worker=args.threads_per_worker, shards=args.shards,
                metric=args.metric, threshold=args.threshold, progress=_print_row,
                cancel=cancel)
    except Cancelled:
        print(f"\nbatch interrupted; run the same command again to continue "
              f"(summary in {Path(args.out) / 'summary.csv'})", file=sys.stderr)
        return 130
    counts = summary["status"].value_counts().to_dict()
    print(f"batch: {counts.get('done', 0)} done, {counts.get('skipped', 0)} skipped (done earlier), "
          f"{counts.get('failed', 0)} failed; summary in {Path(args.out) / 'summary.csv'}",
          file=sys.stderr)
    return 1 if counts.get("failed", 0) else 0


def register(sub) -> None:
    p = sub.add_parser(
        "batch", help="search many micrographs (folder, glob or list), locally or on dask",
        description="Search every micrograph for one template; one results folder per "
                    "micrograph in OUT, a summary table (OUT/summary.csv and .json), "
                    "checkpoints so that an interrupted batch continues where it stopped. "
                    "Micrographs already done are skipped; failed ones are retried with "
                    "--retry-failed. Exit code 1 if any micrograph failed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("micrographs", nargs="*",
                   help="micrograph files, folders (their *.mrc), glob patterns ('mics/*.mrc') "
                        "or .txt lists; default with --ctf-star: the micrographs it lists")
    add_search_options(p)
    b = p.add_argument_group("batch")
    b.add_argument("--out", "-o", required=True, type=Path, help="batch folder")
    b.add_argument("--ctffind-dir", type=Path, default=None, metavar="DIR",
                   help="folder of CTFFIND outputs: NAME.txt or NAME_*.txt for micrograph NAME.mrc")
    b.add_argument("--ctf-star", type=Path, default=None, metavar="STAR",
                   help="RELION micrographs STAR file with rlnMicrographName, rlnDefocusU/V/Angle")
    b.add_argument("--retry-failed", action="store_true",
                   help="search again the micrographs that failed in an earlier run")
    b.add_argument("--workers", type=int, default=1, metavar="N",
                   help="dask LocalCluster worker processes (0 = no dask: one micrograph after "
                        "the other in this process)")
    b.add_argument("--threads-per-worker", type=int, default=None, metavar="T",
                   help="FFT threads of each worker (default: the cores shared out)")
    b.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="use a running dask cluster (e.g. tcp://host:8786, from dask-jobqueue "
                        "on SLURM) instead of a LocalCluster")
    b.add_argument("--shards", type=int, default=1, metavar="K",
                   help="split each search into K orientation ranges run as parallel tasks "
                        "and merged (for few, very large searches)")
    p.set_defaults(func=run)
