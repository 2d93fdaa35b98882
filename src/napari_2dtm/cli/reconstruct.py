"""``napari-2dtm reconstruct``: refine hits, box particles, reconstruct, FSC, template bias."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from napari_2dtm.errors import InputError


def _stage(text: str):
    from napari_2dtm.hits.refine import RefineStage

    try:
        v = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad stage {text!r}") from None
    if len(v) not in (4, 6):
        raise argparse.ArgumentTypeError(
            f"stage {text!r}: give OOP_RANGE,OOP_STEP,IP_RANGE,IP_STEP[,DF_RANGE,DF_STEP]")
    return RefineStage(*v)


def register(sub) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="3D reconstruction from 2DTM hits (refinement, particles, FSC, template bias)",
        description=(
            "Refine 2DTM hits locally (pose, defocus, sub-pixel position), cut particles "
            "into an MRC stack with a RELION 5 STAR file, reconstruct by direct Fourier "
            "inversion with CTF Wiener weighting, and report half-map FSC curves. With "
            "--omit-template the hits are refined with it too and the template-bias metric "
            "Omega (Lucas et al. 2023) is reported for the omitted region. NOTE: the FSC is "
            "not gold-standard, as the poses come from the template."
        ),
    )
    src = p.add_argument_group("input (results folders, or a hits STAR with micrographs)")
    src.add_argument("--results", "-r", nargs="+", type=Path, default=[], metavar="DIR",
                     help="results folders of 'napari-2dtm search' (hits, CTF, micrograph)")
    src.add_argument("--hits", type=Path, default=None, metavar="STAR",
                     help="hits STAR file (RELION 5 names), instead of --results")
    src.add_argument("--micrograph", "-m", nargs="+", type=Path, default=None, metavar="MRC",
                     help="micrograph(s), one per results folder / per micrograph in the STAR "
                          "(default: as recorded)")
    src.add_argument("--pixel-size", type=float, default=None, metavar="A",
                     help="micrograph pixel size in A (default: from the MRC header)")
    src.add_argument("--template", "-t", type=Path, default=None,
                     help="template map/model the hits belong to (default: the search's)")
    src.add_argument("--template-pixel-size", type=float, default=None, metavar="A",
                     help="voxel size of --template / --omit-template in A: overrides a map's "
                          "header (default: the header); a template at another pixel size "
                          "than the micrographs' is resampled to it in Fourier space")
    src.add_argument("--omit-template", type=Path, default=None, metavar="PATH",
                     help="the template with a region removed (e.g. the model without its "
                          "ligand, same grid): bias check by Omega")
    src.add_argument("--selection", default=None,
                     help="atom selection for a model --template (e.g. 'all but resname STR')")
    src.add_argument("--omit-selection", default=None,
                     help="atom selection making the omit template from the --template model "
                          "(instead of --omit-template)")
    src.add_argument("--min-score", type=float, default=None, metavar="Z",
                     help="keep hits with at least this score (column --score, default zscore)")
    src.add_argument("--score", default="zscore", help="score column for --min-score")
    r = p.add_argument_group("refinement")
    r.add_argument("--no-refine", action="store_true", help="use the hits' poses as they are")
    r.add_argument("--stage", action="append", type=_stage, default=None, metavar="SPEC",
                   help="a refinement stage OOP_RANGE,OOP_STEP,IP_RANGE,IP_STEP[,DF_RANGE,DF_STEP] "
                        "(deg, A; repeat for coarse-to-fine; default: 2.5/1.25 ... 0.2 deg out "
                        "of plane, 0.1 deg in plane, defocus +-200 A to 10 A steps)")
    c = p.add_argument_group("reconstruction")
    c.add_argument("--box", type=int, default=None, metavar="PX",
                   help="particle box in pixels (default 1.25 x the template box)")
    c.add_argument("--symmetry", default="C1", help="point group Cn or Dn (C1)")
    c.add_argument("--pad", type=int, default=2, help="Fourier padding factor (2)")
    c.add_argument("--ssnr", type=float, default=None,
                   help="constant per-particle SSNR for the Wiener filter (default: from the FSC)")
    c.add_argument("--mask", choices=["auto", "template", "none"], default="auto",
                   help="soft mask for the masked FSC: from the map (auto), the template, or none")
    c.add_argument("--omit-divisor", type=float, default=10.0,
                   help="Omega mask: T_full - T_omit > mean(top 100) / divisor (10)")
    o = p.add_argument_group("output")
    o.add_argument("--out", "-o", type=Path, required=True, help="job folder to write")
    o.add_argument("--overwrite", action="store_true", help="replace an existing job folder")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def _templates(args, first):
    """``(template, omit template or None)``: --template (None: the job takes the search's
    from search.json) and --omit-template / --omit-selection."""
    from napari_2dtm.templates.load import _MODEL_SUFFIXES, load_template, template_suffix

    px = first.pixel_size_a
    if args.template is None:
        if args.selection or args.omit_selection:
            raise InputError("--selection / --omit-selection need a model --template")
        template = None
    else:
        kw = {}
        is_model = template_suffix(args.template) in _MODEL_SUFFIXES
        if (args.selection or args.omit_selection) and not is_model:
            raise InputError(f"{args.template}: --selection / --omit-selection need an atomic model")
        if args.selection:
            kw["selection"] = args.selection
        if args.omit_selection:
            kw["center"] = "model"  # both templates on one grid, one origin
        template = load_template(args.template, pixel_size_a=px,
                                 template_pixel_size_a=args.template_pixel_size, **kw)
    omit = None
    if args.omit_template is not None:
        omit = load_template(args.omit_template, pixel_size_a=px,
                             template_pixel_size_a=args.template_pixel_size)
    elif args.omit_selection:
        omit = load_template(args.template, pixel_size_a=px, selection=args.omit_selection,
                             center="model", template_pixel_size_a=args.template_pixel_size)
    return template, omit


def run(args) -> int:
    from napari_2dtm.io.mrc import check_output, output_lock

    t0 = time.perf_counter()
    if bool(args.results) == bool(args.hits):
        raise InputError("give either --results DIR [DIR ...] or --hits STAR")
    # Before any input is read: never replace a folder the project did not write, or one
    # holding an input; the lock (held to the end) refuses a second run on this --out.
    check_output(args.out, overwrite=args.overwrite, marker="reconstruct.json",
                 what="reconstruction folder",
                 inputs=[*args.results, args.hits, *(args.micrograph or []), args.template,
                         args.omit_template])
    with output_lock(args.out):
        return _run_locked(args, t0)


def _run_locked(args, t0: float) -> int:
    from napari_2dtm.jobs.reconstruct import (
        JobSettings,
        micrograph_from_results,
        micrographs_from_star,
        run_reconstruct,
    )

    if args.results:
        mics_given = args.micrograph or [None] * len(args.results)
        if len(mics_given) != len(args.results):
            raise InputError(f"{len(args.results)} results folders but {len(mics_given)} micrographs")
        mics = [micrograph_from_results(r, m) for r, m in zip(args.results, mics_given)]
    else:
        mics = micrographs_from_star(args.hits, args.micrograph, args.pixel_size)
    template, omit = _templates(args, mics[0])
    settings = JobSettings(
        box=args.box, refine=not args.no_refine, stages=tuple(args.stage) if args.stage else None,
        min_score=args.min_score, score_column=args.score, symmetry=args.symmetry, pad=args.pad,
        ssnr=args.ssnr, mask=None if args.mask == "none" else args.mask,
        omit_divisor=args.omit_divisor,
    )
    state = {"last": -1.0, "t": 0.0}

    def progress(p):
        if args.quiet:
            return
        now = time.perf_counter()
        if p.fraction >= 1.0 or p.fraction - state["last"] >= 0.02 or now - state["t"] > 5:
            state["last"], state["t"] = p.fraction, now
            print(f"[{100 * p.fraction:5.1f}%] {p.message}", flush=True)

    n_hits = sum(len(m.hits) for m in mics)
    name = Path(str(template.source)).name if template is not None else "of the search"
    print(f"napari-2dtm reconstruct: {n_hits} hits on {len(mics)} micrograph(s), "
          f"template {name}", flush=True)
    res, folder = run_reconstruct(mics, template, args.out, settings, omit_template=omit,
                                  overwrite=args.overwrite, progress=progress)
    s = res.summary
    m = s["map"]
    print(f"particles: {s['n_particles']} ({s['n_dropped_at_edges']} dropped at the edges), "
          f"box {s['box']} px at {s['pixel_size_a']:g} A")
    from napari_2dtm.reconstruct.fsc import resolution_text  # noqa: PLC0415

    masked = (f", masked {resolution_text(m['resolution_masked_a'])}"
              if m["resolution_masked_a"] else "")
    print(f"resolution at FSC 0.143: unmasked {resolution_text(m['resolution_a'])}{masked}")
    if res.bias is not None:
        b = res.bias
        dens = s["omitted_region_density_sigma"]
        print(f"template bias: Omega = {b.omega:.3f} in the omitted region "
              f"({b.n_mask_voxels} voxels, divisor {b.divisor:g}); density there "
              f"{dens['omit_map']:.1f} sigma of the solvent in the omit-template map, "
              f"{dens['map']:.1f} in the template map")
    print(f"NOTE: {s['fsc_note']}")
    print(f"job folder: {folder} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from .main import main

    sys.exit(main(["reconstruct", *sys.argv[1:]]))
