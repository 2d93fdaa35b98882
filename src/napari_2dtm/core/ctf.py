"""Contrast transfer function (cisTEM / RELION convention) and CTFFIND file reading.

``chi(k) = pi * lambda * k^2 * (df(alpha) - 0.5 * lambda^2 * k^2 * Cs) + phase_shift + w``,
``CTF = -sin(chi)``, with ``w = atan(A / sqrt(1 - A^2))`` for amplitude contrast A and
``df(alpha) = 0.5 * (df1 + df2 + (df1 - df2) * cos(2 * (alpha - astig_angle)))``.
Positive defocus is under-focus; low-frequency contrast of a protein is then negative
(dark particles), and a template filtered by the same CTF correlates positively.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np

from napari_2dtm.errors import InputError

__all__ = ["CTFParams", "wavelength_a", "ctf_2d", "ctf_at", "read_ctffind", "frequency_grid"]


def wavelength_a(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Angstrom for an acceleration voltage in kV."""
    v = voltage_kv * 1e3
    return 12.2643247 / math.sqrt(v * (1.0 + 0.978466e-6 * v))


#: CTF field -> the command-line option a user knows it by (named in every refusal)
CTF_OPTIONS = {"defocus1_a": "--defocus1", "defocus2_a": "--defocus2",
               "astigmatism_angle_deg": "--astigmatism-angle", "voltage_kv": "--voltage",
               "cs_mm": "--cs", "amplitude_contrast": "--amplitude-contrast",
               "phase_shift_deg": "--phase-shift", "bfactor_a2": "--bfactor"}


@dataclasses.dataclass(frozen=True)
class CTFParams:
    """CTF of one micrograph. Lengths in Angstrom, angles in degrees."""

    defocus1_a: float = 10000.0
    defocus2_a: float | None = None
    astigmatism_angle_deg: float = 0.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    phase_shift_deg: float = 0.0
    bfactor_a2: float = 0.0

    def __post_init__(self):
        if self.defocus2_a is None:
            object.__setattr__(self, "defocus2_a", self.defocus1_a)
        # A NaN or infinite value would give a NaN CTF, hence NaN maps and no hits: refuse
        # it here, where every door (options, CTFFIND, STAR, widgets) builds its CTF.
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            label = f"{f.name} ({CTF_OPTIONS[f.name]})" if f.name in CTF_OPTIONS else f.name
            try:
                ok = math.isfinite(float(v))
            except (TypeError, ValueError):
                raise InputError(f"CTF {label} must be a number, got {v!r}") from None
            if not ok:
                raise InputError(f"CTF {label} must be a finite number, got {v!r}")
        if self.voltage_kv <= 0:
            raise InputError(f"CTF voltage_kv (--voltage) must be > 0 kV, got {self.voltage_kv}")
        if not 0 <= self.amplitude_contrast < 1:
            raise InputError("CTF amplitude_contrast (--amplitude-contrast) must be in [0, 1), "
                             f"got {self.amplitude_contrast}")

    @property
    def defocus_mean_a(self) -> float:
        return 0.5 * (self.defocus1_a + self.defocus2_a)

    def shifted(self, offset_a: float) -> CTFParams:
        """The same CTF with both defoci moved by ``offset_a`` (astigmatism kept)."""
        return dataclasses.replace(
            self, defocus1_a=self.defocus1_a + offset_a, defocus2_a=self.defocus2_a + offset_a
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def frequency_grid(shape: tuple[int, int], pixel_size_a: float, rfft: bool = True, xp=np):
    """Spatial frequencies ``(ky, kx)`` in 1/Angstrom for an image ``shape = (ny, nx)``.

    With ``rfft=True`` the grid is that of ``rfft2`` output ``(ny, nx // 2 + 1)``.
    """
    ny, nx = shape
    ky = xp.fft.fftfreq(ny, d=pixel_size_a).astype(xp.float32)
    kx = (xp.fft.rfftfreq if rfft else xp.fft.fftfreq)(nx, d=pixel_size_a).astype(xp.float32)
    return ky[:, None], kx[None, :]


def _chi(params: CTFParams, ky, kx, defocus_offset_a: float, xp=np):
    """The phase ``chi`` of the module's formula and ``k^2`` at frequencies ``(ky, kx)``
    (1/Angstrom, broadcastable)."""
    k2 = kx * kx + ky * ky
    ang = xp.arctan2(ky, kx)
    lam = wavelength_a(params.voltage_kv)
    cs_a = params.cs_mm * 1e7
    d1 = params.defocus1_a + defocus_offset_a
    d2 = params.defocus2_a + defocus_offset_a
    df = 0.5 * (d1 + d2 + (d1 - d2) * xp.cos(2.0 * (ang - math.radians(params.astigmatism_angle_deg))))
    ac = params.amplitude_contrast
    w = math.atan2(ac, math.sqrt(1.0 - ac * ac))
    chi = math.pi * lam * k2 * (df - 0.5 * lam * lam * k2 * cs_a) + math.radians(params.phase_shift_deg) + w
    return chi, k2


def ctf_2d(
    params: CTFParams,
    shape: tuple[int, int],
    pixel_size_a: float,
    defocus_offset_a: float = 0.0,
    rfft: bool = True,
    xp=np,
):
    """CTF on the (r)fft2 grid of an image ``shape = (ny, nx)``; float32 ``(ny, nx//2+1)``."""
    ky, kx = frequency_grid(shape, pixel_size_a, rfft=rfft, xp=xp)
    chi, k2 = _chi(params, ky, kx, defocus_offset_a, xp)
    c = -xp.sin(chi)
    if params.bfactor_a2:
        c = c * xp.exp(-params.bfactor_a2 * k2 / 4.0)
    return c.astype(xp.float32)


def ctf_at(params: CTFParams, ky_a, kx_a, defocus_offset_a: float = 0.0):
    """CTF and its derivative with respect to defocus (per Angstrom) at frequencies
    ``(ky_a, kx_a)`` (1/Angstrom, any matching shapes), float64: the formula of
    :func:`ctf_2d` at arbitrary points, for gradient-based refinement.
    ``d CTF / d defocus = -cos(chi) * pi * lambda * k^2`` (times the B-factor envelope)."""
    chi, k2 = _chi(params, np.asarray(ky_a, np.float64), np.asarray(kx_a, np.float64),
                   defocus_offset_a, np)
    lam = wavelength_a(params.voltage_kv)
    env = np.exp(-params.bfactor_a2 * k2 / 4.0) if params.bfactor_a2 else 1.0
    return -np.sin(chi) * env, -np.cos(chi) * (math.pi * lam * k2) * env


_HEADER_PATTERNS = {
    "pixel_size_a": r"Pixel size:\s*([-\d.eE+]+)",
    "voltage_kv": r"acceleration voltage:\s*([-\d.eE+]+)",
    "cs_mm": r"spherical aberration:\s*([-\d.eE+]+)",
    "amplitude_contrast": r"amplitude contrast:\s*([-\d.eE+]+)",
}


def read_ctffind(path: str | Path, micrograph_index: int = 0) -> tuple[CTFParams, float | None]:
    """Read a CTFFIND4/5 output text file.

    Returns ``(CTFParams, pixel_size_a or None)``. Data columns: 1 micrograph number,
    2 defocus 1 (A), 3 defocus 2 (A), 4 astigmatism azimuth (deg), 5 additional phase
    shift (rad), ... (CTFFIND5 appends more columns, which are ignored).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read CTFFIND file ({e})") from None
    header = {}
    for key, pat in _HEADER_PATTERNS.items():
        m = re.search(pat, text, flags=re.IGNORECASE)
        if m:
            header[key] = float(m.group(1))
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            raise InputError(f"{path}: not a CTFFIND output file (bad line {line[:40]!r})") from None
    if not rows or len(rows[0]) < 5:
        raise InputError(f"{path}: no CTFFIND result lines (need >= 5 numeric columns)")
    if micrograph_index >= len(rows):
        raise InputError(f"{path}: has {len(rows)} result lines, asked for #{micrograph_index + 1}")
    r = rows[micrograph_index]
    try:
        params = CTFParams(
            defocus1_a=r[1],
            defocus2_a=r[2],
            astigmatism_angle_deg=r[3],
            phase_shift_deg=math.degrees(r[4]),
            voltage_kv=header.get("voltage_kv", 300.0),
            cs_mm=header.get("cs_mm", 2.7),
            amplitude_contrast=header.get("amplitude_contrast", 0.07),
        )
    except InputError as e:  # e.g. a "nan" defocus: name the file, not an option
        raise InputError(f"{path}: result line {micrograph_index + 1}: {e}") from None
    px = header.get("pixel_size_a")
    if px is not None and not (math.isfinite(px) and px > 0):
        # CTFFIND fitted the defoci at this pixel size: a zero makes the whole file suspect.
        raise InputError(f"{path}: CTFFIND pixel size must be > 0 Angstrom, got {px:g}")
    return params, px
