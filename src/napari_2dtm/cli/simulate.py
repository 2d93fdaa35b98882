"""``napari-2dtm simulate``: a micrograph with known particles (ground truth)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.errors import InputError
from napari_2dtm.simulate import simulate_micrograph, write_simulation
from napari_2dtm.templates.model import DEFAULT_BFACTOR_A2

#: largest micrograph simulated (pixels): 16384^2, 1 GiB per float32 copy; a larger
#: --shape is a typo that would end in a MemoryError after minutes
MAX_PIXELS = 16384 * 16384


def _check_values(args) -> None:
    """Refuse before any work what would fail late or allocate without bound."""
    ny, nx = args.shape
    if min(ny, nx) < 16:
        raise InputError(f"--shape {ny} {nx}: each side must be >= 16 pixels")
    if ny * nx > MAX_PIXELS:
        raise InputError(f"--shape {ny} {nx}: {ny * nx} pixels is more than the limit "
                         f"{MAX_PIXELS} (16384 x 16384)")
    if not (math.isfinite(args.pixel_size) and args.pixel_size > 0):
        raise InputError(f"--pixel-size must be > 0 Angstrom, got {args.pixel_size}")
    if args.n_particles < 0:
        raise InputError(f"--n-particles must be >= 0, got {args.n_particles}")


def run(args) -> int:
    out = Path(args.out)
    _check_values(args)
    ctf = CTFParams(
        defocus1_a=args.defocus,
        defocus2_a=args.defocus2,
        astigmatism_angle_deg=args.astigmatism_angle,
        voltage_kv=args.voltage,
        cs_mm=args.cs,
        amplitude_contrast=args.amplitude_contrast,
    )
    if args.class_fractions is not None and len(args.class_fractions) != len(args.structure):
        raise InputError(
            f"--class-fractions needs {len(args.structure)} values (one per --structure), "
            f"got {len(args.class_fractions)}"
        )
    for s in args.structure:
        if not Path(s).exists():
            raise InputError(f"{s}: structure file not found")
    # Refuse to overwrite before spending time on the simulation.
    mic = out if out.suffix.lower() == ".mrc" else out / "micrograph.mrc"
    if mic.exists() and not args.overwrite:
        raise InputError(f"{mic}: exists; refusing to overwrite (use --overwrite)")
    t0 = time.perf_counter()
    res = simulate_micrograph(
        [str(s) for s in args.structure],
        args.n_particles,
        shape=tuple(args.shape),
        pixel_size_a=args.pixel_size,
        ctf=ctf,
        exposure_e_per_a2=args.exposure,
        snr=args.snr,
        seed=args.seed,
        class_fractions=args.class_fractions,
        min_distance_px=args.min_distance,
        background="ice" if args.ice else None,
        ice_strength=args.ice if args.ice else 0.0,
        thickness_gradient=args.gradient,
        edge_margin_px=args.edge_margin,
        bfactor_a2=args.bfactor,
        return_clean=args.clean,
    )
    paths = write_simulation(res, out, overwrite=args.overwrite, write_templates=not args.no_templates)
    noise = (
        f"exposure {args.exposure:g} e/A^2" if args.exposure is not None
        else f"SNR {args.snr:g}" if args.snr is not None else "no noise"
    )
    med = res.truth["snr_matched"].median() if len(res.truth) else float("nan")
    print(
        f"{paths['micrograph']}: {len(res.truth)} particles in {res.image.shape[1]} x "
        f"{res.image.shape[0]} px at {res.pixel_size_a:g} A/px, defocus {ctf.defocus_mean_a:g} A, "
        f"{noise} (median matched-filter SNR {med:.1f}); truth in {paths['truth'].name}; "
        f"{time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a micrograph with known particle positions and orientations",
        description=(
            "Simulate a micrograph of randomly placed and oriented particles of one or more "
            "atomic models (one class each) with a CTF and noise, and write micrograph.mrc, "
            "truth.csv (x, y in pixels; phi, theta, psi in degrees, ZYZ; defocus_a; class), "
            "the class templates (template_<i>_<name>.mrc) and simulation.json into --out."
        ),
    )
    p.add_argument("--structure", "-s", action="append", required=True, metavar="MODEL",
                   help="atomic model (.pdb/.cif[.gz]); repeat for several classes")
    p.add_argument("--n-particles", "-n", type=int, required=True, metavar="N",
                   help="total number of particles")
    p.add_argument("--shape", type=int, nargs=2, default=[512, 512], metavar=("NY", "NX"),
                   help="micrograph size in pixels, rows then columns (default: 512 512)")
    p.add_argument("--pixel-size", type=float, default=1.0, metavar="A", help="pixel size in Angstrom (default: 1.0)")
    c = p.add_argument_group("CTF (positive defocus = underfocus)")
    c.add_argument("--defocus", "--defocus1", type=float, default=10000.0, metavar="A", help="defocus in Angstrom, underfocus positive (default: 10000)")
    c.add_argument("--defocus2", type=float, default=None, metavar="A",
                   help="second defocus in Angstrom for astigmatism (default: = --defocus)")
    c.add_argument("--astigmatism-angle", type=float, default=0.0, metavar="DEG",
                   help="astigmatism azimuth in degrees (default: 0)")
    c.add_argument("--voltage", type=float, default=300.0, metavar="KV", help="acceleration voltage in kV (default: 300)")
    c.add_argument("--cs", type=float, default=2.7, metavar="MM", help="spherical aberration in mm (default: 2.7)")
    c.add_argument("--amplitude-contrast", type=float, default=0.07, metavar="FRAC",
                   help="amplitude contrast fraction (default: 0.07)")
    n = p.add_argument_group("noise (give at most one; none = noise-free image)")
    g = n.add_mutually_exclusive_group()
    g.add_argument("--exposure", type=float, default=None, metavar="E_PER_A2",
                   help="total exposure in e/A^2: Poisson counts, image in electrons per pixel")
    g.add_argument("--snr", type=float, default=None, metavar="S",
                   help="per-pixel SNR: variance of the noise-free particle contrast inside the "
                        "particle boxes / Gaussian noise variance (typical 0.005-0.1)")
    b = p.add_argument_group("background and placement")
    b.add_argument("--ice", type=float, nargs="?", const=0.5, default=None, metavar="STRENGTH",
                   help="add ice texture (low-pass noise, 20 A correlation length) with RMS "
                        "STRENGTH x the RMS particle phase (0.5 if given without a value)")
    b.add_argument("--gradient", type=float, nargs="?", const=0.2, default=None, metavar="FRAC",
                   help="linear thickness gradient: relative change of the mean intensity "
                        "across the image along x (0.2 if given without a value)")
    b.add_argument("--min-distance", type=float, default=None, metavar="PX",
                   help="least distance between particle centres in pixels (projections never overlap anyway)")
    b.add_argument("--edge-margin", type=int, default=None, metavar="PX",
                   help="least distance of a particle centre from the edge in pixels (default: half the template box)")
    b.add_argument("--class-fractions", type=float, nargs="+", default=None, metavar="F",
                   help="relative abundance of each --structure (default: equal)")
    p.add_argument("--bfactor", type=float, default=DEFAULT_BFACTOR_A2, metavar="A2",
                   help=f"B-factor in A^2 of all atoms, particles and templates alike (default: {DEFAULT_BFACTOR_A2:g})")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same micrograph (default: 0)")
    p.add_argument("--clean", action="store_true", help="also write the noise-free image (clean.mrc)")
    p.add_argument("--no-templates", action="store_true", help="do not write the class templates")
    p.add_argument("--out", "-o", required=True, type=Path,
                   help="output folder (or a micrograph path ending in .mrc)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)
