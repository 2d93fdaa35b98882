"""``napari-2dtm classify``: in situ classification of hits with several templates."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from napari_2dtm.classify.mixture import (
    check_templates,
    classify_scores,
    load_template_set,
    score_hits,
    write_classification,
)
from napari_2dtm.core.ctf import CTFParams, read_ctffind
from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import read_micrograph


def _micrograph_of(folder: Path, meta: dict) -> Path:
    """The micrograph a results folder was searched on (as recorded, or next to it)."""
    rec = meta.get("micrograph")
    if not rec:
        raise InputError(f"{folder}: search.json names no micrograph; give --micrograph")
    p = Path(rec)
    for cand in (p, folder / p, folder.parent / p, folder / "input" / p.name):
        if cand.is_file():
            return cand
    raise InputError(f"{folder}: micrograph {rec} not found; give --micrograph")


def _inputs(args) -> list[dict]:
    """One dict per micrograph: image, pixel_size_a, hits, ctf, result, name."""
    from napari_2dtm.search.results import read_hits, read_results  # noqa: PLC0415

    jobs = []
    if args.results:
        if args.hits is not None:
            raise InputError("give results folders or --micrograph with --hits, not both")
        if args.micrograph is not None and len(args.results) > 1:
            raise InputError("--micrograph can only replace the micrograph of one results folder")
        for folder in args.results:
            folder = Path(folder)
            res = read_results(folder)
            mic = Path(args.micrograph) if args.micrograph else _micrograph_of(folder, res.metadata)
            image, px = read_micrograph(mic, args.pixel_size or res.input_pixel_size_a)
            ctf = _ctf(args) if _ctf_given(args) else CTFParams(**res.metadata.get("config", {}).get("ctf", {}))
            jobs.append(dict(image=image, pixel_size_a=px, hits=res.hits, ctf=ctf, result=res,
                             name=mic.name, source=str(folder)))
    else:
        if args.micrograph is None or args.hits is None:
            raise InputError("give one or more results folders, or --micrograph and --hits")
        image, px = read_micrograph(args.micrograph, args.pixel_size or _ctffind_px(args))
        hits_path = Path(args.hits)
        if not hits_path.is_file():
            raise InputError(f"{hits_path}: hits file not found")
        hits = read_hits(hits_path)
        jobs.append(dict(image=image, pixel_size_a=px, hits=hits, ctf=_ctf(args), result=None,
                         name=Path(args.micrograph).name, source=str(hits_path)))
    for j in jobs:
        h = pd.DataFrame(j["hits"])
        if args.min_zscore is not None:
            if "zscore" not in h:
                raise InputError(f"{j['source']}: hits have no z-score column for --min-zscore")
            h = h[h["zscore"] >= args.min_zscore]
        j["hits"] = h.reset_index(drop=True)
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
    return CTFParams(defocus1_a=args.defocus1, defocus2_a=args.defocus2,
                     astigmatism_angle_deg=args.astigmatism_angle, voltage_kv=args.voltage,
                     cs_mm=args.cs, amplitude_contrast=args.amplitude_contrast,
                     phase_shift_deg=args.phase_shift)


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


def run(args) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out}: classification folder exists; use --overwrite to replace it")
    if len(args.template) < 2:
        raise InputError("give two or more --template (one per state)")
    jobs = _inputs(args)
    px = float(args.template_pixel_size or jobs[0]["pixel_size_a"])
    ts = load_template_set(args.template, px, names=args.name or None,
                           selections=_selections(args, len(args.template)),
                           reference=args.reference, bfactor_a2=args.bfactor)
    template_warnings = check_templates(ts)
    for w in template_warnings:
        print(f"warning: {w}", file=sys.stderr)
    n_total = sum(len(j["hits"]) for j in jobs)
    print(f"{n_total} hits in {len(jobs)} micrograph(s); templates "
          + ", ".join(f"{n} ({t.box}^3 at {t.pixel_size_a:g} A)" for n, t in zip(ts.names, ts.templates))
          + f"; reference {ts.names[ts.reference]}", file=sys.stderr)
    grid = dict(angular_step_deg=args.angular_step, angular_range_deg=args.angular_range,
                shift_px=args.shift, defocus_range_a=args.defocus_range,
                defocus_step_a=args.defocus_step, high_res_limit_a=args.high_res_limit)
    tty = sys.stderr.isatty()
    tables, done_before = [], 0
    t0 = time.perf_counter()
    for j in jobs:
        if len(j["hits"]) == 0:
            continue

        def progress(done, total, base=done_before):
            if tty or base + done == n_total * len(ts):
                end = "\n" if base + done == n_total * len(ts) else ""
                print(_bar(base + done, n_total * len(ts)), end=end, file=sys.stderr, flush=True)

        scored = score_hits(j["image"], j["pixel_size_a"], ts, j["hits"], j["ctf"],
                            result=j["result"], progress=progress, **grid)
        scored.insert(0, "micrograph", j["name"])
        tables.append(scored)
        done_before += len(j["hits"]) * len(ts)
    if not tables:
        raise InputError("no hits to classify")
    table = pd.concat(tables, ignore_index=True)
    res = classify_scores(table, ts.names, ts.reference, priors=args.priors,
                          confidence=args.confidence, select_classes=not args.keep_all_classes)
    res.warnings[:0] = template_warnings
    res.params.update(
        scoring=grid, pixel_size_a=px, inputs=[j["source"] for j in jobs],
        template_sources=[str(t) for t in args.template],
        template_selections=_selections(args, len(args.template)),
        elapsed_s=round(time.perf_counter() - t0, 2),
    )
    ctf = jobs[0]["ctf"]
    write_classification(res, out, overwrite=args.overwrite,
                         micrograph_name=jobs[0]["name"], pixel_size_a=jobs[0]["pixel_size_a"],
                         ctf=ctf.to_dict())
    for w in res.warnings[len(template_warnings):]:
        print(f"note: {w}", file=sys.stderr)
    print(res.summary(), file=sys.stderr)
    print(f"classification in {out}", file=sys.stderr)
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
    c = p.add_argument_group("CTF (only with --micrograph/--hits, or to override a results folder's)")
    c.add_argument("--ctffind", type=Path, default=None, metavar="FILE", help="CTFFIND4/5 output .txt")
    c.add_argument("--defocus1", type=float, default=None, metavar="A", help="defocus 1 in A")
    c.add_argument("--defocus2", type=float, default=None, metavar="A", help="defocus 2 in A (default = defocus 1)")
    c.add_argument("--astigmatism-angle", type=float, default=0.0, metavar="DEG", help="astigmatism azimuth in degrees (default: 0)")
    c.add_argument("--voltage", type=float, default=300.0, metavar="KV", help="acceleration voltage in kV (default: 300)")
    c.add_argument("--cs", type=float, default=2.7, metavar="MM", help="spherical aberration in mm (default: 2.7)")
    c.add_argument("--amplitude-contrast", type=float, default=0.07, metavar="FRAC", help="amplitude contrast (default: 0.07)")
    c.add_argument("--phase-shift", type=float, default=0.0, metavar="DEG", help="additional phase shift in degrees (default: 0)")
    p.add_argument("--out", "-o", required=True, type=Path, help="classification folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing classification folder")
    p.set_defaults(func=run)

