"""RELION STAR files: hits tables, and the one mapping between RELION optics and CTF.

Two conversions live here and nowhere else:

* **hits <-> STAR** (:data:`STAR_COLUMNS`, :func:`hits_to_star`, :func:`write_hits`,
  :func:`read_hits`): a results folder's ``hits.star`` is RELION-5 style, a
  ``data_optics`` block with one group and a ``data_particles`` block with
  ``rlnMicrographName``, coordinates (0-based input-micrograph pixels), ZYZ angles,
  per-hit defoci and the scores (``rln2dtmZScore``, ``rln2dtmSNR``, ...).
* **optics <-> CTF** (:data:`OPTICS_CTF`, :data:`DEFOCUS_COLUMNS`, :func:`optics_columns`,
  :func:`optics_ctf`, :func:`ctf_from_star`): voltage (kV), Cs (mm) and amplitude contrast are per optics
  group; defocus U/V (Angstrom, positive = underfocus), astigmatism angle and phase
  shift (degrees) are per micrograph or particle. Missing or NaN values take the
  :class:`~napari_2dtm.core.ctf.CTFParams` defaults (300 kV, 2.7 mm, 0.07).

Particle stacks (``reconstruct.particles``), class STAR files (``classify``), the batch's
``micrographs_ctf.star`` input and the reconstruction's STAR input all use these.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import atomic_path

__all__ = ["STAR_COLUMNS", "OPTICS_CTF", "DEFOCUS_COLUMNS", "hits_to_star", "write_hits",
           "read_hits", "check_hits", "HIT_POSE_COLUMNS", "read_star", "star_value",
           "optics_columns", "optics_ctf", "ctf_from_star",
           "pixel_size_from_star", "join_optics"]

#: our hits column -> RELION label in ``data_particles``
STAR_COLUMNS = {
    "x": "rlnCoordinateX",
    "y": "rlnCoordinateY",
    "phi": "rlnAngleRot",
    "theta": "rlnAngleTilt",
    "psi": "rlnAnglePsi",
    "defocus1_a": "rlnDefocusU",
    "defocus2_a": "rlnDefocusV",
    "astigmatism_angle_deg": "rlnDefocusAngle",
    "zscore": "rln2dtmZScore",
    "snr": "rln2dtmSNR",
    "mip": "rln2dtmMIP",
    "neg_log_p": "rln2dtmNegLogP",
    "class": "rlnClassNumber",
}

#: :class:`CTFParams` field -> RELION label of the optics group
OPTICS_CTF = {"voltage_kv": "rlnVoltage", "cs_mm": "rlnSphericalAberration",
              "amplitude_contrast": "rlnAmplitudeContrast"}

#: :class:`CTFParams` field -> RELION label of a micrograph or particle row
DEFOCUS_COLUMNS = {"defocus1_a": "rlnDefocusU", "defocus2_a": "rlnDefocusV",
                   "astigmatism_angle_deg": "rlnDefocusAngle", "phase_shift_deg": "rlnPhaseShift"}


# ------------------------------------------------------------------ optics <-> CTF
def star_value(row, label: str, default: float | None = None) -> float | None:
    """``float(row[label])``, or ``default`` when the label is missing, empty or NaN.

    row: a pandas row (Series), a dict, or anything indexable by label.
    """
    try:
        v = float(row[label])
    except (KeyError, IndexError, TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def optics_columns(ctf: CTFParams | dict | None) -> dict:
    """RELION optics labels and values (voltage, Cs, amplitude contrast) of a CTF.

    ctf: :class:`CTFParams`, its ``to_dict()`` (as stored in ``search.json``) or None
    (the defaults).
    """
    if ctf is None:
        ctf = CTFParams()
    d = ctf.to_dict() if isinstance(ctf, CTFParams) else dict(ctf)
    defaults = CTFParams()
    return {label: float(d.get(field, getattr(defaults, field)))
            for field, label in OPTICS_CTF.items()}


def optics_ctf(row, default: CTFParams | None = None) -> dict:
    """The :class:`CTFParams` fields an optics group holds (voltage_kv, cs_mm,
    amplitude_contrast) read from a row; missing values from ``default``."""
    default = default or CTFParams()
    return {f: star_value(row, label, getattr(default, f)) for f, label in OPTICS_CTF.items()}


def ctf_from_star(row, default: CTFParams | None = None, source=None) -> CTFParams:
    """The :class:`CTFParams` of one STAR row (micrograph or particle, with its optics
    columns joined, see :func:`join_optics`); missing values come from ``default``.

    Defocus V defaults to defocus U when only U is given. A defocus U column that is
    there but empty or not a number in this row is refused (:class:`InputError` naming
    ``source``, the STAR file): taking the default would search at a defocus nobody gave.
    """
    default = default or CTFParams()
    where = f"{source}: " if source else ""
    label = DEFOCUS_COLUMNS["defocus1_a"]
    raw = _raw_value(row, label)
    if raw is not None and star_value(row, label) is None:
        name = _raw_value(row, "rlnMicrographName")
        raise InputError(f"{where}{label} is empty or not a number"
                         + (f" for {name}" if name is not None else "") + f" (got {raw!r})")
    values = {f: star_value(row, label, getattr(default, f))
              for f, label in DEFOCUS_COLUMNS.items()}
    values.update(optics_ctf(row, default))
    if star_value(row, DEFOCUS_COLUMNS["defocus2_a"]) is None:
        values["defocus2_a"] = values["defocus1_a"]  # no astigmatism given
    try:
        return dataclasses.replace(default, **values)
    except InputError as e:
        raise InputError(f"{where}{e}") from None


def _raw_value(row, label: str):
    """``row[label]`` as read, or None when the row has no such label."""
    try:
        return row[label]
    except (KeyError, IndexError, TypeError):
        return None


def pixel_size_from_star(row, labels=("rlnMicrographPixelSize", "rlnImagePixelSize")) -> float | None:
    """The first positive pixel size (Angstrom) among ``labels`` of a row, or None."""
    for label in labels:
        v = star_value(row, label)
        if v:
            return v
    return None


def join_optics(table: pd.DataFrame, optics: pd.DataFrame | None) -> pd.DataFrame:
    """``table`` with its optics group's columns added (by ``rlnOpticsGroup``); columns
    the table has already are kept. Without groups on both sides the table is returned."""
    if not (isinstance(optics, pd.DataFrame) and "rlnOpticsGroup" in optics.columns
            and "rlnOpticsGroup" in table.columns):
        return table
    extra = [c for c in optics.columns if c not in table.columns or c == "rlnOpticsGroup"]
    return table.merge(optics[extra], on="rlnOpticsGroup", how="left")


def read_star(path) -> dict:
    """All blocks of a STAR file (``{name: DataFrame}``); :class:`InputError` if unreadable."""
    import starfile  # noqa: PLC0415 (slow import, only where STAR files are read)

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: STAR file not found")
    try:
        return starfile.read(path, always_dict=True)
    except Exception as e:  # the parser raises many kinds on junk
        raise InputError(f"{path}: not a readable STAR file ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------ hits <-> STAR
def hits_to_star(hits: pd.DataFrame, micrograph_name: str = "micrograph.mrc",
                 pixel_size_a: float | None = None, ctf: CTFParams | dict | None = None) -> dict:
    """RELION-5 style blocks ``{"optics": df, "particles": df}`` for a hits table."""
    parts = pd.DataFrame({STAR_COLUMNS[c]: hits[c].to_numpy() for c in STAR_COLUMNS if c in hits})
    if "defocus1_a" not in hits and "defocus_a" in hits:
        parts["rlnDefocusU"] = hits["defocus_a"].to_numpy()
        parts["rlnDefocusV"] = hits["defocus_a"].to_numpy()
        parts["rlnDefocusAngle"] = 0.0
    parts.insert(0, "rlnMicrographName", micrograph_name)
    parts["rlnOpticsGroup"] = 1
    if "accepted" in hits:
        parts["rln2dtmAccepted"] = hits["accepted"].astype(int).to_numpy()
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1],
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnMicrographPixelSize": [float(pixel_size_a) if pixel_size_a else 1.0],
        **{label: [v] for label, v in optics_columns(ctf).items()},
    })
    return {"optics": optics, "particles": parts}


def write_hits(hits: pd.DataFrame, path, micrograph_name="micrograph.mrc", pixel_size_a=None,
               ctf=None, overwrite: bool = True):
    """Write hits to ``.star`` (RELION names) or ``.csv`` (our names), atomically."""
    import starfile  # noqa: PLC0415

    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists; refusing to overwrite")
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".star":
            starfile.write(hits_to_star(hits, micrograph_name, pixel_size_a, ctf), tmp,
                           overwrite=True)
        elif path.suffix.lower() == ".csv":
            hits.to_csv(tmp, index=False)
        else:
            raise InputError(f"{path}: hits can be written as .star or .csv")


#: the columns a hit needs to be re-scored or back-projected: position and pose
HIT_POSE_COLUMNS = ("x", "y", "phi", "theta", "psi")


def check_hits(hits: pd.DataFrame, source, columns=HIT_POSE_COLUMNS) -> pd.DataFrame:
    """Refuse a hits table that has no rows, lacks one of ``columns`` (our names) or
    holds a value there that is not a finite number: one line naming ``source``."""
    if not isinstance(hits, pd.DataFrame) or hits.empty:
        raise InputError(f"{source}: no hits in the file")
    for c in columns:
        if c not in hits:
            raise InputError(f"{source}: no {c} column ({STAR_COLUMNS.get(c, c)} in a STAR file)")
        v = pd.to_numeric(hits[c], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(v)
        if bad.any():
            raise InputError(f"{source}: {int(bad.sum())} hit(s) with a {c} value that is not a "
                             f"finite number (first: row {int(np.argmax(bad)) + 1}, "
                             f"{hits[c].iloc[int(np.argmax(bad))]!r})")
    return hits


def read_hits(path, required=()) -> pd.DataFrame:
    """Read hits from our CSV or a STAR file (RELION names mapped back).

    A file that is not a table, or (with ``required``, e.g. :data:`HIT_POSE_COLUMNS`)
    one without hits or with a non-numeric value in those columns, is refused in one
    line naming it (:func:`check_hits`).
    """
    import starfile  # noqa: PLC0415

    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            df = pd.read_csv(path)
        else:
            data = starfile.read(path, always_dict=True)
            df = data.get("particles", next(iter(data.values()), None))
    except FileNotFoundError:
        raise InputError(f"{path}: hits file not found") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the hits file is empty") from None
    except Exception as e:  # parser errors vary with the junk
        raise InputError(f"{path}: not a readable hits table ({type(e).__name__})") from None
    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame()
    df = df.rename(columns={v: k for k, v in STAR_COLUMNS.items()})
    return check_hits(df, path, required) if required else df
