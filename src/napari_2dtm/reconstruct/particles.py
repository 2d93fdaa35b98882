"""Particle stacks: boxes cut at (refined) hit positions, with a RELION 5 STAR file.

Boxes are centred on the integer pixel nearest each particle centre; the sub-pixel rest
goes into ``rlnOriginXAngst / rlnOriginYAngst`` with RELION's sign (the particle centre
in the micrograph is ``rlnCoordinateX - rlnOriginXAngst / pixel``; in the box it sits at
pixel ``box // 2 - origin / pixel``). Images are written RELION-style: protein white
(contrast inverted; the CTF convention of :mod:`napari_2dtm.reconstruct.reconstructor`), normalised to
zero mean and unit standard deviation outside a background circle.

STAR layout (``starfile``): ``data_optics`` (one group per micrograph pixel size and
voltage / Cs / amplitude contrast: ``rlnOpticsGroup, rlnOpticsGroupName,
rlnAmplitudeContrast, rlnSphericalAberration, rlnVoltage, rlnImagePixelSize,
rlnMicrographOriginalPixelSize, rlnImageSize, rlnImageDimensionality``) and
``data_particles`` (``rlnImageName`` ``000001@particles.mrcs``, micrograph name,
coordinates, ZYZ angles, origins, ``rlnDefocusU/V/Angle``, ``rlnPhaseShift``,
``rlnCtfBFactor``, ``rlnRandomSubset`` (the half set), ``rlnOpticsGroup`` and the
scores ``rln2dtmZScore``, ``rln2dtmSNR``, ``rln2dtmCC`` ...).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import atomic_path, read_mrc, write_mrc
from napari_2dtm.io.star import OPTICS_CTF, optics_columns, read_star

__all__ = ["ParticleSet", "extract_particles", "concat_particles", "write_particles",
           "read_particles", "PARTICLE_STAR_COLUMNS"]

#: our column -> RELION label in ``data_particles``
PARTICLE_STAR_COLUMNS = {
    "micrograph": "rlnMicrographName",
    "coord_x": "rlnCoordinateX",
    "coord_y": "rlnCoordinateY",
    "phi": "rlnAngleRot",
    "theta": "rlnAngleTilt",
    "psi": "rlnAnglePsi",
    "origin_x_a": "rlnOriginXAngst",
    "origin_y_a": "rlnOriginYAngst",
    "defocus1_a": "rlnDefocusU",
    "defocus2_a": "rlnDefocusV",
    "astigmatism_angle_deg": "rlnDefocusAngle",
    "phase_shift_deg": "rlnPhaseShift",
    "bfactor_a2": "rlnCtfBFactor",
    "half": "rlnRandomSubset",
    "zscore": "rln2dtmZScore",
    "snr": "rln2dtmSNR",
    "mip": "rln2dtmMIP",
    "cc": "rln2dtmCC",
    "neg_log_p": "rln2dtmNegLogP",
    "zscore_search": "rln2dtmSearchZScore",
    "snr_search": "rln2dtmSearchSNR",
}


@dataclasses.dataclass
class ParticleSet:
    """A particle stack and its table.

    images: ``(N, box, box)`` float32, protein white, normalised; table: one row per
    image with ``micrograph, x, y`` (refined centre, micrograph pixels), ``coord_x,
    coord_y`` (box centre, integer), ``origin_x_a, origin_y_a``, ``phi, theta, psi``,
    the CTF columns of :class:`~napari_2dtm.core.ctf.CTFParams` (``defocus1_a`` ...
    ``bfactor_a2``), ``half`` (1/2) and any score columns of the hits;
    pixel_size_a: image pixel size; dropped: hits whose box left the micrograph.
    """

    images: np.ndarray
    table: pd.DataFrame
    pixel_size_a: float
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.table)


def _background(box: int, radius_px: float) -> np.ndarray:
    g = np.arange(box) - box // 2
    return (g[:, None] ** 2 + g[None, :] ** 2) > radius_px**2


def extract_particles(image: np.ndarray, pixel_size_a: float, hits: pd.DataFrame, box: int,
                      ctf: CTFParams, micrograph: str = "micrograph.mrc", *,
                      invert: bool = True, normalize: bool = True,
                      background_radius_px: float | None = None) -> ParticleSet:
    """Cut ``box x box`` particles at the hits' positions.

    hits: x, y (particle centres, micrograph pixels, sub-pixel allowed), phi, theta,
    psi, and the defocus as ``defocus1_a``/``defocus2_a`` (per particle, astigmatism
    angle from ``astigmatism_angle_deg`` or the CTF) or ``defocus_a`` (mean; the CTF's
    astigmatism kept); other columns (scores) are carried along. invert: protein white
    (RELION; our micrographs have it dark). normalize: zero mean, unit SD of the
    pixels outside ``background_radius_px`` (default 0.375 box, RELION's default).
    Boxes not fully inside the micrograph are dropped (counted in ``dropped``).
    """
    img = np.asarray(image, np.float32)
    if img.ndim != 2:
        raise InputError(f"{micrograph}: expected a 2D micrograph, got shape {img.shape}")
    box = int(box)
    if box < 8 or box % 2:
        raise InputError(f"particle box must be even and >= 8 pixels, got {box}")
    if box > min(img.shape):
        raise InputError(f"{micrograph}: box {box} px is larger than the micrograph {img.shape}")
    missing = [c for c in ("x", "y", "phi", "theta", "psi") if c not in hits]
    if missing:
        raise InputError(f"{micrograph}: hits lack the columns {missing}")
    px = float(pixel_size_a)
    h = box // 2
    ny, nx = img.shape
    x = hits["x"].to_numpy(np.float64)
    y = hits["y"].to_numpy(np.float64)
    cx = np.rint(x).astype(np.int64)
    cy = np.rint(y).astype(np.int64)
    inside = (cx - h >= 0) & (cy - h >= 0) & (cx - h + box <= nx) & (cy - h + box <= ny)
    idx = np.flatnonzero(inside)
    bg = _background(box, 0.375 * box if background_radius_px is None else background_radius_px)
    if not bg.any():
        raise InputError(f"background radius {background_radius_px} px leaves no background "
                         f"pixels in a {box} px box")
    stack = np.empty((len(idx), box, box), np.float32)
    for k, i in enumerate(idx):
        b = img[cy[i] - h: cy[i] - h + box, cx[i] - h: cx[i] - h + box].astype(np.float64)
        if invert:
            b = -b
        if normalize:
            sd = b[bg].std()
            b = (b - b[bg].mean()) / (sd if sd > 0 else 1.0)
        stack[k] = b
    src = hits.iloc[idx].reset_index(drop=True)
    t = pd.DataFrame({"micrograph": str(micrograph), "x": x[idx], "y": y[idx],
                      "coord_x": cx[idx].astype(np.float64), "coord_y": cy[idx].astype(np.float64)})
    # RELION: true centre = coordinate - origin / pixel
    t["origin_x_a"] = (cx[idx] - x[idx]) * px
    t["origin_y_a"] = (cy[idx] - y[idx]) * px
    for c in ("phi", "theta", "psi"):
        t[c] = src[c].to_numpy(np.float64)
    if "defocus1_a" in src and "defocus2_a" in src:
        t["defocus1_a"] = src["defocus1_a"].to_numpy(np.float64)
        t["defocus2_a"] = src["defocus2_a"].to_numpy(np.float64)
    elif "defocus_a" in src:
        off = src["defocus_a"].to_numpy(np.float64) - ctf.defocus_mean_a
        t["defocus1_a"] = ctf.defocus1_a + off
        t["defocus2_a"] = ctf.defocus2_a + off
    else:
        t["defocus1_a"] = ctf.defocus1_a
        t["defocus2_a"] = ctf.defocus2_a
    t["astigmatism_angle_deg"] = (src["astigmatism_angle_deg"].to_numpy(np.float64)
                                  if "astigmatism_angle_deg" in src else ctf.astigmatism_angle_deg)
    for c in ("voltage_kv", "cs_mm", "amplitude_contrast", "phase_shift_deg", "bfactor_a2"):
        t[c] = float(getattr(ctf, c))
    t["pixel_size_a"] = px
    skip = set(t.columns) | {"x_search", "y_search", "defocus_a", "defocus_offset"}
    for c in src.columns:
        if c not in skip and pd.api.types.is_numeric_dtype(src[c]):
            t[c] = src[c].to_numpy()
    t["half"] = 1 + (np.arange(len(t)) % 2)
    return ParticleSet(stack, t, px, dropped=int((~inside).sum()))


def concat_particles(sets: Sequence[ParticleSet]) -> ParticleSet:
    """One set from several (e.g. micrographs); half sets re-assigned even/odd overall."""
    sets = [s for s in sets if len(s)]
    if not sets:
        raise InputError("no particles to combine")
    boxes = {s.images.shape[1] for s in sets}
    pxs = {round(s.pixel_size_a, 6) for s in sets}
    if len(boxes) > 1 or len(pxs) > 1:
        raise InputError(f"particle sets differ in box {sorted(boxes)} or pixel size {sorted(pxs)}")
    table = pd.concat([s.table for s in sets], ignore_index=True)
    table["half"] = 1 + (np.arange(len(table)) % 2)
    return ParticleSet(np.concatenate([s.images for s in sets]), table, sets[0].pixel_size_a,
                       dropped=sum(s.dropped for s in sets))


def _optics(table: pd.DataFrame, box: int) -> tuple[pd.DataFrame, np.ndarray]:
    keys = ["pixel_size_a", "voltage_kv", "cs_mm", "amplitude_contrast"]
    groups = table[keys].round(6).drop_duplicates().reset_index(drop=True)
    rows = []
    labels = np.zeros(len(table), np.int64)
    for g, r in groups.iterrows():
        sel = np.all([np.isclose(table[k].to_numpy(np.float64), r[k], atol=1e-6) for k in keys], axis=0)
        labels[sel] = g + 1
        rows.append({
            "rlnOpticsGroup": g + 1,
            "rlnOpticsGroupName": f"opticsGroup{g + 1}",
            **optics_columns({f: r[f] for f in OPTICS_CTF}),
            "rlnImagePixelSize": float(r["pixel_size_a"]),
            "rlnMicrographOriginalPixelSize": float(r["pixel_size_a"]),
            "rlnImageSize": int(box),
            "rlnImageDimensionality": 2,
            "rlnCtfDataAreCtfPremultiplied": 0,
        })
    return pd.DataFrame(rows), labels


def particles_to_star(ps: ParticleSet, stack_name: str) -> dict:
    """``{"optics": df, "particles": df}`` for a particle set stored in ``stack_name``."""
    t = ps.table
    optics, labels = _optics(t, ps.images.shape[1])
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{stack_name}" for i in range(len(t))]})
    for c, label in PARTICLE_STAR_COLUMNS.items():
        if c in t:
            parts[label] = t[c].to_numpy()
    parts["rlnOpticsGroup"] = labels
    return {"optics": optics, "particles": parts}


def write_particles(ps: ParticleSet, star_path, stack_name: str | None = None,
                    overwrite: bool = False) -> tuple[Path, Path]:
    """Write the stack (MRC, ``.mrcs``) beside the STAR file, both atomically.

    rlnImageName holds the stack's file name (relative: run RELION from the STAR
    file's folder, or prefix the names). Returns ``(star_path, stack_path)``.
    """
    star_path = Path(star_path)
    if star_path.suffix.lower() != ".star":
        raise InputError(f"{star_path}: the particle file must end in .star")
    stack_name = stack_name or f"{star_path.stem}.mrcs"
    stack_path = star_path.parent / stack_name
    if not overwrite:
        for p in (star_path, stack_path):
            if p.exists():
                raise InputError(f"{p}: exists; refusing to overwrite")
    if not len(ps):
        raise InputError(f"{star_path}: no particles to write")
    write_mrc(stack_path, ps.images.astype(np.float32), ps.pixel_size_a, overwrite=True)
    with atomic_path(star_path) as tmp:
        starfile.write(particles_to_star(ps, stack_name), tmp, overwrite=True)
    return star_path, stack_path


def read_particles(star_path) -> ParticleSet:
    """Read a particle STAR (this module's or RELION's) and the images it names."""
    star_path = Path(star_path)
    data = read_star(star_path)
    parts = data.get("particles")
    if parts is None or "rlnImageName" not in parts:
        raise InputError(f"{star_path}: no data_particles block with rlnImageName")
    optics = data.get("optics")
    inv = {v: k for k, v in PARTICLE_STAR_COLUMNS.items()}
    t = parts.rename(columns=inv).copy()
    if optics is not None and "rlnOpticsGroup" in parts:
        o = optics.set_index("rlnOpticsGroup")
        g = parts["rlnOpticsGroup"].to_numpy()
        for col, label in {**OPTICS_CTF, "pixel_size_a": "rlnImagePixelSize"}.items():
            if label in o:
                t[col] = o.loc[g, label].to_numpy(np.float64)
    names = parts["rlnImageName"].astype(str).to_numpy()
    stacks: dict[str, np.ndarray] = {}
    images = []
    for name in names:
        try:
            num, fname = name.split("@", 1)
            i = int(num) - 1
        except ValueError:
            raise InputError(f"{star_path}: bad rlnImageName {name!r} (expected N@stack.mrcs)") from None
        if fname not in stacks:
            p = Path(fname)
            if not p.is_absolute():
                p = star_path.parent / p
            arr, _ = read_mrc(p)
            stacks[fname] = arr if arr.ndim == 3 else arr[None]
        st = stacks[fname]
        if not 0 <= i < len(st):
            raise InputError(f"{star_path}: {name} is outside its stack of {len(st)} images")
        images.append(st[i])
    px = float(t["pixel_size_a"].iloc[0]) if "pixel_size_a" in t and len(t) else math.nan
    if {"coord_x", "coord_y"} <= set(t.columns) and math.isfinite(px):
        ox = t["origin_x_a"] if "origin_x_a" in t else 0.0
        oy = t["origin_y_a"] if "origin_y_a" in t else 0.0
        t["x"] = t["coord_x"] - ox / px
        t["y"] = t["coord_y"] - oy / px
    return ParticleSet(np.stack(images).astype(np.float32), t.reset_index(drop=True), px)
