"""``napari-2dtm classify``: in situ classification of hits with several templates.

A door to :func:`napari_2dtm.jobs.classify.run_classify` (the widget's too): it reads
results folders (or a micrograph with a hits file and a CTF) into
:class:`~napari_2dtm.jobs.classify.ClassifyInput`, prints the template check and a
progress bar on stderr, and the summary at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from napari_2dtm.classify.folder import MARKER, WHAT
from napari_2dtm.cli._options import add_ctf_options, ctf_from_args
from napari_2dtm.core.ctf import CTFParams, read_ctffind
from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import check_output, output_lock, read_micrograph
from napari_2dtm.jobs.classify import ClassifyInput, run_classify


def _inputs(args) -> list[ClassifyInput]:
    """One input per micrograph (a results folder's CTF unless one is given)."""
    from napari_2dtm.io.star import HIT_POSE_COLUMNS, read_hits  # noqa: PLC0415
    from napari_2dtm.search.foreign import open_results  # noqa: PLC0415

    jobs = []
    if args.results:
        if args.hits is not None:
            raise InputError("give results folders or --micrograph with --hits, not both")
        if args.micrograph is not None and len(args.results) > 1:
            raise InputError("--micrograph can only replace the micrograph of one results folder")
        for folder in args.results:
            rf = open_results(folder)  # ours, or a cisTEM / Leopard-EM folder
            if args.micrograph:
                mic = Path(args.micrograph)
                image, px = read_micrograph(mic, rf.input_pixel_size_a if args.pixel_size is None
                                            else args.pixel_size)
            else:
                image, px = rf.read_micrograph(args.pixel_size)
                mic = rf.micrograph_path()
            jobs.append(ClassifyInput(image, px, rf.hits, _ctf(args) if _ctf_given(args) else rf.ctf,
                                      name=mic.name, result=rf.result, source=str(folder)))
    else:
        if args.micrograph is None or args.hits is None:
            raise InputError("give one or more results folders, or --micrograph and --hits")
        image, px = read_micrograph(args.micrograph, _ctffind_px(args) if args.pixel_size is None
                                    else args.pixel_size)
        hits_path = Path(args.hits)
        if not hits_path.is_file():
            raise InputError(f"{hits_path}: hits file not found")
        jobs.append(ClassifyInput(image, px, read_hits(hits_path, HIT_POSE_COLUMNS), _ctf(args),
                                  name=Path(args.micrograph).name, source=str(hits_path)))
    for j in jobs:
        h = pd.DataFrame(j.hits)
        if args.min_zscore is not None:
            if "zscore" not in h:
                raise InputError(f"{j.source}: hits have no z-score column for --min-zscore")
            h = h[h["zscore"] >= args.min_zscore]
        j.hits = h.reset_index(drop=True)
    return jobs


def _ctf_given(args) -> bool:
    return args.ctffind is not None or args.defocus1 is not None


def _ctffind_px(args):
    return read_ctffind(args.ctffind)[1] if args.ctffind is not None else None


def _ctf(args) -> CTFParams:
    if args.ctffind is not None:
        return read_ctffind(args.ctffind)[0]
    if args.defocus1 is None:
        raise InputError("no CTF: give --defocus1 (A) or --ctffind FILE (a results folder "
                         "carries its own)")
    return ctf_from_args(args)


def _selections(args, n: int) -> list:
    sel = list(args.selection or [])
    if len(sel) > n:
        raise InputError(f"{len(sel)} --selection values for {n} templates")
    sel += [None] * (n - len(sel))
    return [None if s is None or s.strip().lower() in ("", "all", "-") else s for s in sel]


def _bar(done: int, total: int) -> str:
    width = 30
    f = done / max(total, 1)
    k = int(round(f * width))
    return f"\r[{'#' * k}{'.' * (width - k)}] {100 * f:5.1f}%  {done}/{total} hit x template scores"


def _printer(template_warnings: list):
    """The job's progress on stderr: the template check (its warnings also appended to
    ``template_warnings``), then a bar (redrawn on a terminal, else printed at the end)."""
    tty = sys.stderr.isatty()

    def show(p):
        if p.stage == "templates" and p.done == p.total:
            template_warnings.extend(p.warnings)
            for w in p.warnings:
                print(f"warning: {w}", file=sys.stderr)
            print(p.message, file=sys.stderr)
        elif p.stage == "score" and (tty or p.done == p.total):
            end = "\n" if p.done == p.total else ""
            print(_bar(p.done, p.total), end=end, file=sys.stderr, flush=True)

    return show


def run(args) -> int:
    if len(args.template) < 2:
        raise InputError("give two or more --template (one per state)")
    # Before any input is read: never replace a folder the project did not write, or one
    # holding an input; the lock (held to the end) refuses a second run on this --out.
    check_output(args.out, overwrite=args.overwrite, marker=MARKER, what=WHAT,
                 inputs=[*args.results, args.micrograph, args.hits, args.ctffind, *args.template])
    with output_lock(args.out):
        return _run_locked(args)


def _run_locked(args) -> int:
    template_warnings = []
    res, folder = run_classify(
        _inputs(args), args.template, Path(args.out), names=args.name or None,
        selections=_selections(args, len(args.template)), reference=args.reference,
        template_pixel_size_a=args.template_pixel_size, bfactor_a2=args.bfactor,
        priors=args.priors, confidence=args.confidence,
        select_classes=not args.keep_all_classes,
        grid=dict(angular_step_deg=args.angular_step, angular_range_deg=args.angular_range,
                  shift_px=args.shift, defocus_range_a=args.defocus_range,
                  defocus_step_a=args.defocus_step, high_res_limit_a=args.high_res_limit),
        overwrite=args.overwrite, progress=_printer(template_warnings))
    for w in res.warnings[len(template_warnings):]:
        print(f"note: {w}", file=sys.stderr)
    print(res.summary(), file=sys.stderr)
    print(f"classification in {folder}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "classify",
        help="classify hits by scoring them with several templates (Lucas et al. 2022)",
        description=(
            "In situ classification: score every hit with each template on the same local "
            "grid (one angular step and +-1 px around the pose, and defocus), form "
            "x = log2(SNR_ref / SNR_k), fit a K-class Gaussian mixture by EM and assign each "
            "hit at a posterior confidence. Writes classification.csv (scores, features, "
            "posteriors), classification.json (fit, counts at 50 % and 95 %), all_hits.star "
            "and one class_<k>_<name>.star per class."
        ),
    )
    p.add_argument("results", nargs="*", type=Path,
                   help="results folder(s) of 'napari-2dtm search' (hits, CTF, micrograph); "
                        "several are pooled into one fit")
    i = p.add_argument_group("hits without a results folder")
    i.add_argument("--micrograph", type=Path, default=None, help="micrograph MRC")
    i.add_argument("--hits", type=Path, default=None, help="hits .star or .csv (x, y in pixels, angles in deg)")
    i.add_argument("--pixel-size", type=float, default=None, metavar="A",
                   help="micrograph pixel size in A (default: from the MRC header)")
    i.add_argument("--min-zscore", type=float, default=None, metavar="Z",
                   help="classify only hits with z-score >= Z (default: all)")
    t = p.add_argument_group("templates (one per state, sharing one origin)")
    t.add_argument("--template", "-t", action="append", required=True, metavar="FILE",
                   help="a model (.pdb/.cif[.gz], converted with the model origin kept) or a "
                        "map aligned with the others; repeat for each state")
    t.add_argument("--selection", action="append", default=None, metavar="SEL",
                   help="atom selection for the template in the same position, e.g. "
                        "'not chain B' ('all' = whole model); repeat in template order")
    t.add_argument("--name", action="append", default=None, metavar="NAME",
                   help="class name for the template in the same position (default: from the file)")
    t.add_argument("--reference", default="0", metavar="NAME|INDEX",
                   help="reference template: numerator of the log2 ratios (default: the first)")
    t.add_argument("--template-pixel-size", type=float, default=None, metavar="A",
                   help="voxel size for models in A (default: the micrograph pixel size)")
    t.add_argument("--bfactor", type=float, default=None, metavar="A2",
                   help="B-factor in A^2 for models (default: the model converter's)")
    m = p.add_argument_group("model")
    m.add_argument("--priors", default="learn", metavar="P",
                   help="class priors: 'learn', 'uniform', or fixed numbers in template order, "
                        "e.g. 0.11,0.89 (default: learn)")
    m.add_argument("--confidence", type=float, default=0.5, metavar="P",
                   help="posterior needed to assign a hit (0.5-1; counts at 0.5 and 0.95 are always reported; default 0.5)")
    m.add_argument("--keep-all-classes", action="store_true",
                   help="fit all K classes even when the data support fewer")
    g = p.add_argument_group("local scoring grid (the same for every template)")
    g.add_argument("--angular-step", type=float, default=1.5, metavar="DEG", help="angular step in degrees (default: 1.5)")
    g.add_argument("--angular-range", type=float, default=None, metavar="DEG",
                   help="half-range of angular offsets in degrees (default: one step)")
    g.add_argument("--shift", type=int, default=1, metavar="PX", help="position offsets +-PX search pixels (default: 1)")
    g.add_argument("--defocus-range", type=float, default=100.0, metavar="A",
                   help="defocus offsets -R..+R in A around each hit's defocus (0 = none; default: 100)")
    g.add_argument("--defocus-step", type=float, default=100.0, metavar="A", help="defocus step in A (default: 100)")
    g.add_argument("--high-res-limit", type=float, default=None, metavar="A",
                   help="resolution limit in A (default: the search's)")
    add_ctf_options(p, "CTF (only with --micrograph/--hits, or to override a results folder's)")
    p.add_argument("--out", "-o", required=True, type=Path, help="classification folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing classification folder")
    p.set_defaults(func=run)

