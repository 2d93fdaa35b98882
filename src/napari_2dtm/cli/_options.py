"""Options shared by several sub-commands (one definition, one reading).

:func:`add_ctf_options` adds the CTF group (a CTFFIND file or the fields of
:class:`~napari_2dtm.core.ctf.CTFParams`); :func:`ctf_from_args` reads it back.
"""

from __future__ import annotations

from pathlib import Path

from napari_2dtm.core.ctf import CTFParams


def add_ctf_options(parser, title: str, defocus1_a: float | None = None,
                    ctffind_help: str = "CTFFIND4/5 output .txt") -> None:
    """The CTF option group. defocus1_a: the default of ``--defocus1`` (None: no CTF
    unless given, for commands whose input usually carries its own). Help texts name
    their defaults with ``%(default)s``, which argparse's ArgumentDefaultsHelpFormatter
    (search, batch) then does not repeat."""
    c = parser.add_argument_group(title)
    c.add_argument("--ctffind", type=Path, default=None, metavar="FILE", help=ctffind_help)
    c.add_argument("--defocus1", type=float, default=defocus1_a, metavar="A",
                   help="defocus 1 in A" + (" (default: %(default)s)" if defocus1_a else ""))
    c.add_argument("--defocus2", type=float, default=None, metavar="A",
                   help="defocus 2 in A (default = defocus 1)")
    c.add_argument("--astigmatism-angle", type=float, default=0.0, metavar="DEG",
                   help="astigmatism azimuth in degrees (default: %(default)s)")
    c.add_argument("--voltage", type=float, default=300.0, metavar="KV",
                   help="acceleration voltage in kV (default: %(default)s)")
    c.add_argument("--cs", type=float, default=2.7, metavar="MM",
                   help="spherical aberration in mm (default: %(default)s)")
    c.add_argument("--amplitude-contrast", type=float, default=0.07, metavar="FRAC",
                   help="amplitude contrast (default: %(default)s)")
    c.add_argument("--phase-shift", type=float, default=0.0, metavar="DEG",
                   help="additional phase shift in degrees (default: %(default)s)")


def ctf_from_args(args) -> CTFParams:
    """The CTF the fields of :func:`add_ctf_options` give (``--ctffind`` is read by the
    caller, which also needs its pixel size)."""
    return CTFParams(defocus1_a=args.defocus1, defocus2_a=args.defocus2,
                     astigmatism_angle_deg=args.astigmatism_angle, voltage_kv=args.voltage,
                     cs_mm=args.cs, amplitude_contrast=args.amplitude_contrast,
                     phase_shift_deg=args.phase_shift)
