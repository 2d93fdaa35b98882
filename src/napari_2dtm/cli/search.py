"""``napari-2dtm search``: one micrograph, one template, results folder."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from pathlib import Path

from napari_2dtm.cli._options import add_ctf_options, ctf_from_args
from napari_2dtm.core.ctf import read_ctffind
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.io.micrographs import read_micrograph_with_ctf
from napari_2dtm.io.mrc import output_lock
from napari_2dtm.jobs.search import HITS_METRICS, SearchStarted, run_search
from napari_2dtm.search.checkpoint import checkpoint_path_for, read_state
from napari_2dtm.search.config import STRATEGIES, SearchConfig
from napari_2dtm.search.results import ResultsFolder, results_dir_problem


def add_search_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``search`` and ``batch``."""
    g = p.add_argument_group("template")
    g.add_argument("--template", "-t", required=True,
                   help="3D map (.mrc/.map) or atomic model (.pdb/.cif[.gz]) to search for")
    g.add_argument("--template-pixel-size", type=float, default=None, metavar="A",
                   help="template voxel size in Angstrom: overrides a map's header; the grid a "
                        "model is computed on (default: map header, model at the micrograph "
                        "pixel size); a template at another pixel size than the micrograph's "
                        "is resampled to it in Fourier space")
    g.add_argument("--bfactor", type=float, default=None, metavar="A2",
                   help="B-factor (A^2) added to all atoms when the template is a model")
    add_ctf_options(p, "CTF (cisTEM/RELION convention; positive defocus = underfocus)",
                    defocus1_a=10000.0,
                    ctffind_help="CTFFIND4/5 output .txt: defoci, astigmatism, phase shift, kV, "
                                 "Cs, AC")
    s = p.add_argument_group("search space")
    s.add_argument("--out-of-plane-step", type=float, default=2.5, metavar="DEG", help="theta/phi step in degrees (2.5)")
    s.add_argument("--in-plane-step", type=float, default=1.5, metavar="DEG", help="psi step in degrees (1.5)")
    s.add_argument("--symmetry", default="C1", help="template symmetry: C1, Cn, Dn, T, O, I (C1)")
    s.add_argument("--defocus-range", type=float, default=0.0, metavar="A",
                   help="search defocus offsets -R..+R in A (0 = no defocus search)")
    s.add_argument("--defocus-step", type=float, default=200.0, metavar="A", help="defocus step in A (200)")
    s.add_argument("--pixel-size-range", type=float, default=0.0, metavar="A", help="pixel-size offsets -R..+R in A (0 = off)")
    s.add_argument("--pixel-size-step", type=float, default=0.01, metavar="A", help="pixel-size step in A (0.01)")
    s.add_argument("--high-res-limit", type=float, default=None, metavar="A",
                   help="search resolution limit in A: Fourier-crops image and template to "
                        "pixel = limit/2 (the main speed lever; default: full resolution)")
    s.add_argument("--strategy", choices=list(STRATEGIES), default="exhaustive",
                   help="exhaustive: every orientation and defocus plane at full resolution; "
                        "fast: half resolution and twice the steps, then every candidate "
                        "refined by gradient at full resolution, with the exhaustive search's "
                        "threshold (docs/fast_search.md)")
    d = p.add_argument_group("detection and compute")
    d.add_argument("--n-false-positives", type=float, default=1.0, metavar="N",
                   help="expected false positives per micrograph for the threshold (1)")
    d.add_argument("--metric", choices=list(HITS_METRICS), default=None,
                   help="detection metric of the hits (default zbg: the z-score with the "
                        "particle's own spread removed, see docs/detection.md); neg_log_p = "
                        "2DTM p-value (Zhang et al. 2025) over the local maxima of the z-score")
    d.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="detection threshold (default: the zbg/z-score/SNR false-alarm threshold for "
                        "--n-false-positives; for neg_log_p t = ln(N_population / N_fp); "
                        "the authors' fixed cutoff is 8)")
    d.add_argument("--peak-radius", type=float, default=None, metavar="PX",
                   help="minimum distance between hits in search pixels "
                        "(default: 0.7 x the template's particle radius)")
    d.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto", help="compute device (auto)")
    d.add_argument("--batch-size", type=int, default=None, metavar="N", help="orientations per batch (auto)")
    d.add_argument("--checkpoint-interval", type=float, default=300.0, metavar="S",
                   help="save partial results every S seconds beside the results folder "
                        "(OUT.checkpoint.npz), so an interrupted search can be resumed; 0 = off")
    d.add_argument("--pixel-size", type=float, default=None, metavar="A",
                   help="micrograph pixel size in A (default: from the MRC header)")


def config_from_args(args) -> tuple[SearchConfig, float | None]:
    px_from_ctffind = None
    if args.ctffind is not None:
        ctf, px_from_ctffind = read_ctffind(args.ctffind)
    else:
        ctf = ctf_from_args(args)
    cfg = SearchConfig(
        ctf=ctf, out_of_plane_step_deg=args.out_of_plane_step, in_plane_step_deg=args.in_plane_step,
        symmetry=args.symmetry, defocus_range_a=args.defocus_range, defocus_step_a=args.defocus_step,
        pixel_size_range_a=args.pixel_size_range, pixel_size_step_a=args.pixel_size_step,
        high_res_limit_a=args.high_res_limit, n_false_positives=args.n_false_positives,
        peak_radius_px=args.peak_radius, device=args.device, batch_size=args.batch_size,
        checkpoint_interval_s=getattr(args, "checkpoint_interval", 300.0),
        strategy=getattr(args, "strategy", "exhaustive"),
    )
    return cfg, px_from_ctffind


def template_kwargs(args) -> dict:
    kw = {}
    if args.bfactor is not None:
        kw["bfactor_a2"] = args.bfactor
    if args.template_pixel_size is not None:
        kw["template_pixel_size_a"] = args.template_pixel_size
    return kw


def _progress_line(p) -> str:
    width = 30
    k = int(round(p.fraction * width))
    eta = "--" if p.eta_s == float("inf") else time.strftime("%H:%M:%S", time.gmtime(p.eta_s))
    return (f"\r[{'#' * k}{'.' * (width - k)}] {100 * p.fraction:5.1f}%  "
            f"{p.orientations_per_s:8.1f} orient/s  ETA {eta}  max z {p.zscore.max():5.2f}")


@contextlib.contextmanager
def cancel_on_signals(cancel: threading.Event):
    """Ctrl-C / SIGTERM (e.g. a batch system's time limit) set ``cancel``: the search
    stops at the next batch boundary, where its checkpoint is consistent, instead of
    being killed mid-batch."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = [signal.SIGINT, signal.SIGTERM]
    old = {sg: signal.getsignal(sg) for sg in sigs}
    for sg in sigs:
        signal.signal(sg, lambda *_: cancel.set())
    try:
        yield
    finally:
        for sg, h in old.items():
            signal.signal(sg, h)


def run(args) -> int:
    out = Path(args.out)
    problem = results_dir_problem(out, args.overwrite,
                                  inputs=(args.micrograph, args.template, args.ctffind))
    if problem:
        raise InputError(problem)
    # Held until the folder is written: a second search on this --out (which would share
    # the checkpoint and replace this folder) is refused in one line.
    with output_lock(out):
        return _run_locked(args, out)


def _run_locked(args, out: Path) -> int:
    ckpt = checkpoint_path_for(out)
    # Discarded by the job once the inputs are read and checked, not here.
    restart = ckpt.exists() and not args.resume
    if restart and not args.overwrite:
        raise InputError(f"{ckpt}: an interrupted search left this checkpoint; add --resume "
                         "to continue it, or --overwrite to start over")
    if args.resume and not ckpt.exists():
        print(f"no checkpoint {ckpt}: starting from the beginning", file=sys.stderr)
    cfg, px_ctf = config_from_args(args)
    # an explicit --pixel-size, even 0, is checked (refused), never skipped for the header;
    # a CTFFIND pixel size that disagrees with the header is refused (io/micrographs.py)
    image, px = read_micrograph_with_ctf(args.micrograph, args.pixel_size, px_ctf, args.ctffind)
    tpl = args.template
    use_ckpt = args.checkpoint_interval > 0 or (args.resume and ckpt.exists())
    tty = sys.stderr.isatty()

    def progress(p):
        if isinstance(p, SearchStarted):
            fft = p.search.frame_fft()  # the CPU's FFT library and its measured floor
            print(f"{args.micrograph}: {image.shape[1]} x {image.shape[0]} px at {px:.3f} A; "
                  f"search at {p.pixel_size_a:.3f} A, {p.n_orientations} orientations x "
                  f"{p.n_planes} planes = {p.n_cc_total} cross-correlations on "
                  f"{p.search.backend.description}"
                  + (f", {fft.describe()}" if fft is not None else ""), file=sys.stderr)
            if cfg.strategy == "fast":
                c = p.search.coarse.config
                print(f"strategy fast: this coarse stage at {c.high_res_limit_a:g} A resolution, "
                      f"{c.out_of_plane_step_deg:g} / {c.in_plane_step_deg:g} deg steps; then its "
                      "candidates refined by gradient at full resolution", file=sys.stderr)
            if args.resume and ckpt.exists():
                done = read_state(ckpt)["n_cc"] / max(1, p.n_cc_total)
                print(f"resuming from {ckpt}: {100 * done:.1f}% done", file=sys.stderr)
        elif tty or p.done:
            print(_progress_line(p), end="" if not p.done else "\n", file=sys.stderr, flush=True)

    cancel = threading.Event()
    try:
        with cancel_on_signals(cancel):
            res, _ = run_search(image, px, tpl, cfg, out, micrograph_path=args.micrograph,
                                overwrite=args.overwrite, metric=args.metric,
                                threshold=args.threshold, checkpoint=ckpt if use_ckpt else None,
                                restart=restart,
                                template_kwargs=template_kwargs(args), progress=progress,
                                cancel=cancel)
    except Cancelled:
        where = f"; progress saved in {ckpt}, continue with --resume" if use_ckpt else ""
        print(f"\nsearch interrupted{where}", file=sys.stderr)
        return 130
    if restart and not use_ckpt:  # started over without checkpoints: the old one is stale
        ckpt.unlink(missing_ok=True)
    view = ResultsFolder.of(res)
    meta = res.metadata
    if meta.get("cc_per_s"):  # the rate this run measured, and on what
        print(f"{meta['cc_per_s']:,.0f} cross-correlations/s on "
              f"{meta.get('device_name') or meta.get('device')}", file=sys.stderr)
    if meta.get("strategy") == "fast":
        f = meta["fast"]
        print(f"{f['n_candidates']} candidates refined in {f['refine_seconds']:.1f} s",
              file=sys.stderr)
    print(f"{len(res.hits)} hits with {view.hits_metric} >= {view.hits_threshold:.2f}; "
          f"results in {out}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "search", help="full-orientation 2DTM search of one micrograph",
        description="Search a micrograph for a template over all orientations and defocus "
                    "planes; write MIP, z-score, SNR and angle maps, hits.star/.csv and search.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("micrograph", type=Path, help="2D micrograph (MRC)")
    add_search_options(p)
    p.add_argument("--out", "-o", required=True, type=Path, help="results folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results folder")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted search from OUT.checkpoint.npz (same micrograph, "
                        "template and search settings; refused otherwise)")
    p.set_defaults(func=run)
