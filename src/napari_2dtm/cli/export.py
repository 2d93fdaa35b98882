"""``napari-2dtm export``: a results folder's hits as a Leopard-EM particle CSV or a cisTEM
STAR, so curated hits go on in that program's pipeline.

The folder is ours or a cisTEM / Leopard-EM one (:mod:`napari_2dtm.search.foreign`);
``--hits`` exports a curated table instead of the folder's hits (our CSV, or a RELION
STAR as the Hits widget exports it).
"""

from __future__ import annotations

from pathlib import Path

from napari_2dtm.errors import InputError


def run(args) -> int:
    from napari_2dtm.io.star import HIT_POSE_COLUMNS, read_hits  # noqa: PLC0415
    from napari_2dtm.search.foreign import export_result, open_results  # noqa: PLC0415

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out}: exists; refusing to overwrite (use --overwrite)")
    view = open_results(args.results)
    spec = view.metadata.get("foreign") or {}
    theirs = [Path(args.results, f).resolve() for f in (spec.get("files") or {}).values()]
    if out.resolve() in theirs:  # never replace the other program's own files
        raise InputError(f"{out}: is one of the search's own files; write to another name")
    hits = read_hits(args.hits, HIT_POSE_COLUMNS) if args.hits else view.hits
    if len(hits) == 0:
        raise InputError(f"{args.hits or args.results}: no hits to export")
    export_result(view, hits, out, args.format, overwrite=args.overwrite)
    print(f"{len(hits)} hits written to {out} ({args.format})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="write hits as a Leopard-EM particle CSV or a cisTEM STAR",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, metavar="DIR",
                   help="results folder (napari-2dtm, cisTEM or Leopard-EM)")
    p.add_argument("--format", "-f", required=True, choices=("leopard", "cistem"),
                   help="leopard: match_template particle CSV; cistem: cisTEM STAR "
                        "(template-matches package columns)")
    p.add_argument("--out", "-o", required=True, type=Path, help="file to write (.csv / .star)")
    p.add_argument("--hits", type=Path, default=None,
                   help="curated hits (our CSV or RELION STAR) instead of the folder's hits")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)
