"""``napari-2dtm refine-model``: refine an atomic model against the particle images of hits."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from napari_2dtm.errors import InputError


def register(sub) -> None:
    p = sub.add_parser(
        "refine-model",
        help="refine an atomic model against the hits' particle images (rigid groups, B-factors)",
        description=(
            "Refine an atomic model directly against the particle images a search found, "
            "without a 3D map: groups of atoms (chains, or --group selections) move as rigid "
            "bodies and/or change their B-factor, the particles' poses are refined in "
            "alternation. Particles alternate into a work half (fitted) and a free half "
            "(scored only); refinement stops when the free-half CC stops rising. Writes the "
            "refined model (mmCIF and PDB), both templates, per-group motions and per-cycle "
            "CCs."
        ),
    )
    p.add_argument("model", type=Path, help="the atomic model (PDB / mmCIF) the template was made from")
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
    src.add_argument("--min-score", type=float, default=None, metavar="Z",
                     help="keep hits with at least this score (column --score, default zscore)")
    src.add_argument("--score", default="zscore", help="score column for --min-score")
    r = p.add_argument_group("what is refined")
    r.add_argument("--group", "-g", action="append", default=None, metavar="SELECTION",
                   help="a rigid group, as a template selection ('chain A', 'chain B and "
                        "resid 1-120', ...); repeat per group (default: one group per chain)")
    r.add_argument("--refine", default="rigid", metavar="WHAT",
                   help="comma list of rigid (rotation + translation per group) and bfactor "
                        "(a B-factor change per group); default rigid")
    r.add_argument("--fixed-poses", action="store_true",
                   help="keep the hits' poses (default: refine them in alternation)")
    r.add_argument("--cycles", type=int, default=5, help="most cycles (5); stops earlier when "
                   "the free-half CC stops rising")
    r.add_argument("--bfactor", type=float, default=None, metavar="A2",
                   help="B-factor of every atom in the predicted images (default: the search "
                        "template's, else 30)")
    r.add_argument("--high-res", type=float, default=None, metavar="A",
                   help="high-resolution limit (default: the search's)")
    o = p.add_argument_group("output")
    o.add_argument("--out", "-o", type=Path, required=True, help="job folder to write")
    o.add_argument("--overwrite", action="store_true", help="replace an existing job folder")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def _what(text: str) -> tuple[bool, bool]:
    words = {w.strip().lower() for w in str(text).split(",") if w.strip()}
    bad = words - {"rigid", "bfactor", "b"}
    if bad or not words:
        raise InputError(f"--refine {text!r}: give rigid, bfactor or rigid,bfactor")
    return "rigid" in words, bool(words & {"bfactor", "b"})


def run(args) -> int:
    from napari_2dtm.io.mrc import check_output, output_lock

    t0 = time.perf_counter()
    if bool(args.results) == bool(args.hits):
        raise InputError("give either --results DIR [DIR ...] or --hits STAR")
    rigid, bfac = _what(args.refine)
    if not args.model.exists():
        raise InputError(f"{args.model}: model file not found")
    check_output(args.out, overwrite=args.overwrite, marker="model_refine.json",
                 what="model refinement folder",
                 inputs=[*args.results, args.hits, *(args.micrograph or []), args.model])
    with output_lock(args.out):
        return _run_locked(args, rigid, bfac, t0)


def _run_locked(args, rigid: bool, bfac: bool, t0: float) -> int:
    from napari_2dtm.jobs.model_refine import ModelRefineSettings, run_model_refine
    from napari_2dtm.jobs.reconstruct import micrograph_from_results, micrographs_from_star

    if args.results:
        mics_given = args.micrograph or [None] * len(args.results)
        if len(mics_given) != len(args.results):
            raise InputError(f"{len(args.results)} results folders but {len(mics_given)} micrographs")
        mics = [micrograph_from_results(r, m) for r, m in zip(args.results, mics_given)]
    else:
        mics = micrographs_from_star(args.hits, args.micrograph, args.pixel_size)
    settings = ModelRefineSettings(
        groups=tuple(args.group) if args.group else None, rigid=rigid, bfactor=bfac,
        poses=not args.fixed_poses, max_cycles=args.cycles, bfactor_a2=args.bfactor,
        high_res_limit_a=args.high_res, min_score=args.min_score, score_column=args.score)
    state = {"last": -1.0, "t": 0.0}

    def progress(p):
        if args.quiet:
            return
        now = time.perf_counter()
        if p.fraction >= 1.0 or p.fraction - state["last"] >= 0.05 or now - state["t"] > 5 \
                or p.step == "cycle":
            state["last"], state["t"] = p.fraction, now
            print(f"[{100 * p.fraction:5.1f}%] {p.message}", flush=True)

    n_hits = sum(len(m.hits) for m in mics)
    print(f"napari-2dtm refine-model: {args.model.name} against {n_hits} hits on {len(mics)} "
          f"micrograph(s)", flush=True)
    res, folder = run_model_refine(mics, args.model, args.out, settings,
                                   overwrite=args.overwrite, progress=progress)
    s = res.summary
    print(f"particles: {s['n_particles']} ({s['n_work']} work, {s['n_free']} free), "
          f"{s['n_parameters']} parameters, pixel {s['pixel_size_a']:g} A")
    for g in s["groups"]:
        print(f"  {g['group']:<24} rotation {g['rotation_deg']:6.2f} deg  shift "
              f"{g['shift_a']:5.2f} A  RMSD {g['rmsd_a']:5.2f} A  B {g['delta_b_a2']:+7.1f} A^2")
    print(f"free-half CC {s['free_cc_start']:.4f} -> {s['free_cc_refined']:.4f} (cycle "
          f"{s['best_cycle']}, stopped: {s['stopped']}); work-half CC {s['work_cc_start']:.4f} "
          f"-> {s['work_cc_refined']:.4f}")
    print(f"job folder: {folder} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from .main import main

    sys.exit(main(["refine-model", *sys.argv[1:]]))
