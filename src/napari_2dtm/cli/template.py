"""``napari-2dtm template``: atomic model (PDB/mmCIF) to a 3D template MRC."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from napari_2dtm.errors import InputError
from napari_2dtm.templates.model import DEFAULT_BFACTOR_A2, template_from_model, write_template_mrc

#: largest template box (voxels per side): 1024^3 float32 is 4 GiB; a larger --box is a
#: typo that would end in a MemoryError
MAX_BOX = 1024


def run(args) -> int:
    out = Path(args.out)
    if args.box is not None and args.box > MAX_BOX:
        raise InputError(f"{args.model}: --box {args.box} is larger than {MAX_BOX} voxels per "
                         "side (the limit, 4 GiB as float32)")
    if out.exists() and not args.overwrite:
        raise InputError(f"{out}: exists; refusing to overwrite (use --overwrite)")
    center = tuple(args.origin) if args.origin is not None else args.center
    t0 = time.perf_counter()
    t = template_from_model(
        args.model,
        args.pixel_size,
        box=args.box,
        bfactor_a2=args.bfactor,
        keep_hydrogens=args.keep_hydrogens,
        keep_waters=args.keep_waters,
        selection=args.select,
        center=center,
        dose_e_per_a2=args.dose,
        voltage_kv=args.voltage,
        use_model_bfactors=args.model_bfactors,
        cache=not args.no_cache,
    )
    write_template_mrc(out, t, overwrite=args.overwrite)
    c = t.params.get("center_a", [float("nan")] * 3)
    print(
        f"{out}: {t.box}^3 voxels at {t.pixel_size_a:g} A/px from {t.params.get('n_atoms')} atoms of "
        f"{args.model}; box centre at model ({c[0]:.2f}, {c[1]:.2f}, {c[2]:.2f}) A; potential in volts; "
        f"{time.perf_counter() - t0:.2f} s",
        file=sys.stderr,
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "template",
        help="compute a 3D template (potential in volts) from an atomic model",
        description=(
            "Compute the Coulomb potential of a PDB/mmCIF model (first model only) on a cubic "
            "grid with gemmi's electron scattering factors and write it as MRC. Values are "
            "volts at the voxel centres; the MRC header origin places the map on the model."
        ),
    )
    p.add_argument("model", type=Path, help="atomic model: .pdb, .ent, .cif or .mmcif, optionally .gz")
    p.add_argument("--pixel-size", type=float, required=True, metavar="A",
                   help="voxel size in Angstrom (normally the micrograph pixel size)")
    p.add_argument("--box", type=int, default=None, metavar="N",
                   help="cube edge in voxels (default: smallest even box holding the model in any "
                        "orientation, with a 5 A margin)")
    p.add_argument("--bfactor", type=float, default=DEFAULT_BFACTOR_A2, metavar="A2",
                   help=f"B-factor in A^2 given to every atom (default: {DEFAULT_BFACTOR_A2:g})")
    p.add_argument("--model-bfactors", action="store_true",
                   help="add the model's own per-atom B-factors to --bfactor")
    p.add_argument("--select", default=None, metavar="SEL",
                   help="atoms to keep, e.g. 'chain A,B', 'not chain B', 'all but resname STR', "
                        "'chain A and resid 10-50', or a gemmi CID such as '/1/A/10-50' (default: all)")
    p.add_argument("--center", choices=["mass", "model"], default="mass",
                   help="box centre: 'mass' = potential-weighted centre of the selected atoms; "
                        "'model' = grid fixed in model coordinates (voxels at multiples of the "
                        "pixel size), independent of --select: omit templates share the grid (default: mass)")
    p.add_argument("--origin", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="put the box centre (voxel N//2) at this model coordinate in Angstrom "
                        "(overrides --center)")
    p.add_argument("--keep-hydrogens", action="store_true", help="keep hydrogen atoms (removed by default)")
    p.add_argument("--keep-waters", action="store_true", help="keep water molecules (removed by default)")
    p.add_argument("--dose", type=float, default=None, metavar="E_PER_A2",
                   help="apply the exposure-averaged dose filter (Grant & Grigorieff 2015) for "
                        "this total exposure in e/A^2 (default: no dose filter)")
    p.add_argument("--voltage", type=float, default=300.0, metavar="KV",
                   help="acceleration voltage in kV, for the dose filter (default: 300)")
    p.add_argument("--no-cache", action="store_true", help="recompute instead of using the template cache")
    p.add_argument("--out", "-o", required=True, type=Path, help="output MRC file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)
