"""Leopard-EM's files: the ``match_template`` maps and particle CSV, ``refine_template``'s CSV.

Read from Leopard-EM's source and docs (GitHub Lucaslab-Berkeley/Leopard-EM, main at
56b4c36c, 2026-07-28, tags up to v1.2; ``docs/data_formats.md``,
``src/leopard_em/pydantic_models/formats.py``, ``.../managers/match_template_manager.py``,
``.../managers/refine_template_manager.py``). Nothing here is copied from it; the file
layout and the column names are facts of the format.

* **Maps** (MRC, one per statistic, paths chosen by the user in the YAML config): MIP,
  scaled MIP (per-pixel z-score), correlation average, correlation "variance" (the
  square root is applied before saving: it is the standard deviation), best phi, theta,
  psi (deg) and relative defocus (A). Saved "valid"-cropped by default: shape
  ``(H - h + 1, W - w + 1)`` for an ``H x W`` micrograph and an ``h x w`` template, map
  pixel ``(i, j)`` = the template's **top-left corner**; the particle centre is at
  micrograph pixel ``(i + h // 2, j + h // 2)``.
* **Particle CSV** (``DataFrame.to_csv(index=True)``: a first unnamed index column),
  columns :data:`MATCH_COLUMNS`; ``pos_x_img``/``pos_y_img`` are particle centres in
  0-based micrograph pixels (``pos_x + h // 2``). ``refine_template`` adds
  :data:`REFINED_COLUMNS` (``refined_*``: to be preferred when present).
* **Angles**: ZYZ ``(phi, theta, psi)`` in degrees, turned into a matrix by roma's
  ``euler_to_rotmat("ZYZ", ...)`` = ``Rz(phi) Ry(theta) Rz(psi)`` (upper case: intrinsic),
  with which torch-fourier-slice samples the template's transform at ``R k`` for slice
  frequency ``k``. That is the matrix our convention samples at (``A.T k`` with RELION's
  ``A``): the angles are RELION's, unchanged (tested against the elementary rotations).
* **CTF**: ``defocus_u``/``defocus_v`` (A, positive = underfocus), ``astigmatism_angle``
  (deg), ``voltage`` (kV), ``spherical_aberration`` (mm), ``amplitude_contrast_ratio``,
  ``phase_shift`` (deg), ``ctf_B_factor`` (A^2): cisTEM/RELION meanings.

Functions here read and write tables and arrays only (no search imports): the search
layer (:mod:`napari_2dtm.search.foreign`) turns them into a results folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import atomic_path

__all__ = ["MATCH_COLUMNS", "REFINED_COLUMNS", "MAP_ROLES", "MAP_NAMES", "CSV_REQUIRED",
           "read_particles", "particles_to_hits", "hits_to_particles", "write_particles",
           "is_particles_csv"]

#: the match_template DataFrame's columns, in Leopard-EM's order
MATCH_COLUMNS = [
    "particle_index", "mip", "scaled_mip", "correlation_mean", "correlation_variance",
    "total_correlations", "pos_x", "pos_y", "pos_x_img", "pos_y_img", "pos_x_img_angstrom",
    "pos_y_img_angstrom", "phi", "theta", "psi", "relative_defocus", "defocus_u", "defocus_v",
    "astigmatism_angle", "pixel_size", "refined_pixel_size", "voltage", "spherical_aberration",
    "amplitude_contrast_ratio", "phase_shift", "ctf_B_factor", "even_zernikes", "odd_zernikes",
    "mag_matrix", "micrograph_path", "template_path", "mip_path", "scaled_mip_path",
    "psi_path", "theta_path", "phi_path", "defocus_path", "correlation_average_path",
    "correlation_variance_path",
]

#: the columns refine_template adds
REFINED_COLUMNS = [
    "refined_mip", "refined_scaled_mip", "refined_pos_x", "refined_pos_y", "refined_pos_x_img",
    "refined_pos_y_img", "refined_pos_x_img_angstrom", "refined_pos_y_img_angstrom",
    "refined_phi", "refined_theta", "refined_psi", "refined_relative_defocus",
]

#: the columns without which a CSV is not a Leopard-EM particle table
CSV_REQUIRED = ("pos_x_img", "pos_y_img", "phi", "theta", "psi", "scaled_mip")

#: our map name -> (the CSV column holding its path, names of the example config)
MAP_ROLES = {
    "mip": "mip_path",
    "zscore": "scaled_mip_path",
    "mean": "correlation_average_path",
    "std": "correlation_variance_path",
    "phi": "phi_path",
    "theta": "theta_path",
    "psi": "psi_path",
    "defocus_offset": "defocus_path",
}

#: our map name -> file-name stems Leopard-EM's example config and docs use
MAP_NAMES = {
    "mip": ("output_mip", "mip"),
    "zscore": ("output_scaled_mip", "scaled_mip"),
    "mean": ("output_correlation_average", "correlation_average"),
    "std": ("output_correlation_variance", "correlation_variance"),
    "phi": ("output_orientation_phi", "orientation_phi"),
    "theta": ("output_orientation_theta", "orientation_theta"),
    "psi": ("output_orientation_psi", "orientation_psi"),
    "defocus_offset": ("output_relative_defocus", "relative_defocus"),
}


def is_particles_csv(path) -> bool:
    """True when ``path`` is a CSV whose header has Leopard-EM's particle columns."""
    path = Path(path)
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline()
    except OSError:
        return False
    cols = {c.strip().strip('"') for c in header.split(",")}
    return all(c in cols for c in CSV_REQUIRED)


def read_particles(path) -> pd.DataFrame:
    """A Leopard-EM particle CSV (match_template or refine_template) as written by pandas.

    Refused in one line naming the file (:class:`InputError`) when it is not a CSV, lacks
    one of :data:`CSV_REQUIRED` or holds a non-numeric position or angle.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(f"{path}: Leopard-EM particle CSV not found") from None
    except Exception as e:  # pandas raises many kinds on junk
        raise InputError(f"{path}: not a readable CSV ({type(e).__name__})") from None
    first = str(df.columns[0]) if len(df.columns) else ""
    if first == "" or first.startswith("Unnamed"):
        df = df.drop(columns=df.columns[0])  # to_csv(index=True)'s index column
    missing = [c for c in CSV_REQUIRED if c not in df]
    if missing:
        raise InputError(f"{path}: not a Leopard-EM particle CSV (no {', '.join(missing)} column)")
    for c in ("pos_x_img", "pos_y_img", "phi", "theta", "psi"):
        col = _refined(df, c)
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
        if (~np.isfinite(v)).any():
            row = int(np.argmax(~np.isfinite(v))) + 1
            raise InputError(f"{path}: {col} of particle row {row} is not a finite number")
    return df.reset_index(drop=True)


def _refined(df: pd.DataFrame, col: str) -> str:
    """``refined_<col>`` when refine_template wrote it (and it is filled), else ``col``."""
    r = f"refined_{col}"
    if r in df and pd.to_numeric(df[r], errors="coerce").notna().all():
        return r
    return col


def _num(df: pd.DataFrame, col: str, default=np.nan) -> np.ndarray:
    if col not in df:
        return np.full(len(df), default, np.float64)
    return pd.to_numeric(df[col], errors="coerce").fillna(default).to_numpy(np.float64)


def particles_to_hits(df: pd.DataFrame) -> pd.DataFrame:
    """Our hits table (``x, y, phi, theta, psi, defocus_a, zscore, mip`` + per-hit defoci)
    from Leopard-EM particle rows; the refined values when refine_template wrote them.

    Positions: ``pos_*_img`` are particle centres in 0-based micrograph pixels, ours too
    (identity). Angles: identical convention (identity). ``defocus_a`` is the mean of
    ``defocus_u + relative_defocus`` and ``defocus_v + relative_defocus``.
    """
    rel = _num(df, _refined(df, "relative_defocus"), 0.0)
    du, dv = _num(df, "defocus_u"), _num(df, "defocus_v")
    hits = pd.DataFrame({
        "x": _num(df, _refined(df, "pos_x_img")),
        "y": _num(df, _refined(df, "pos_y_img")),
        "phi": _num(df, _refined(df, "phi")),
        "theta": _num(df, _refined(df, "theta")),
        "psi": _num(df, _refined(df, "psi")),
        "defocus_a": (du + dv) / 2 + rel,
        "zscore": _num(df, _refined(df, "scaled_mip")),
        "mip": _num(df, _refined(df, "mip")),
        "defocus1_a": du + rel,
        "defocus2_a": dv + rel,
        "astigmatism_angle_deg": _num(df, "astigmatism_angle", 0.0),
    })
    return hits


def hits_to_particles(hits: pd.DataFrame, *, template_box: int, pixel_size_a: float,
                      ctf: dict, micrograph_path: str = "", template_path: str = "",
                      total_correlations: float | None = None, map_paths: dict | None = None,
                      ) -> pd.DataFrame:
    """Leopard-EM match_template rows (:data:`MATCH_COLUMNS`) for our hits table.

    ``x, y`` (0-based centres) become ``pos_*_img``; ``pos_* = pos_*_img - template_box // 2``
    (the template corner, Leopard-EM's map index). ``relative_defocus`` is the hit's
    defocus minus the micrograph's mean defocus (``ctf``: a :class:`CTFParams` dict).
    """
    n = len(hits)
    x = hits["x"].to_numpy(np.float64)
    y = hits["y"].to_numpy(np.float64)
    half = int(template_box) // 2
    d1 = float(ctf.get("defocus1_a", np.nan))
    d2 = float(ctf.get("defocus2_a") if ctf.get("defocus2_a") is not None else d1)
    if "defocus_a" in hits:
        rel = hits["defocus_a"].to_numpy(np.float64) - (d1 + d2) / 2
    else:
        rel = np.zeros(n)

    def col(name, default=np.nan):
        return hits[name].to_numpy(np.float64) if name in hits else np.full(n, default)

    xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
    paths = {v: "" for v in MAP_ROLES.values()}
    paths.update(map_paths or {})
    out = pd.DataFrame({
        "particle_index": np.arange(n),
        "mip": col("mip"),
        "scaled_mip": col("zscore"),
        "correlation_mean": col("mean"),
        "correlation_variance": col("std"),
        "total_correlations": np.full(n, total_correlations if total_correlations else np.nan),
        "pos_x": xi - half,
        "pos_y": yi - half,
        "pos_x_img": xi,
        "pos_y_img": yi,
        "pos_x_img_angstrom": xi * float(pixel_size_a),
        "pos_y_img_angstrom": yi * float(pixel_size_a),
        "phi": col("phi"),
        "theta": col("theta"),
        "psi": col("psi"),
        "relative_defocus": rel,
        "defocus_u": d1,
        "defocus_v": d2,
        "astigmatism_angle": float(ctf.get("astigmatism_angle_deg", 0.0)),
        "pixel_size": float(pixel_size_a),
        "refined_pixel_size": float(pixel_size_a),
        "voltage": float(ctf.get("voltage_kv", 300.0)),
        "spherical_aberration": float(ctf.get("cs_mm", 2.7)),
        "amplitude_contrast_ratio": float(ctf.get("amplitude_contrast", 0.07)),
        "phase_shift": float(ctf.get("phase_shift_deg", 0.0)),
        "ctf_B_factor": float(ctf.get("bfactor_a2", 0.0)),
        "even_zernikes": json.dumps({}),
        "odd_zernikes": json.dumps({}),
        "mag_matrix": str([[1.0, 0.0], [0.0, 1.0]]),
        "micrograph_path": str(micrograph_path),
        "template_path": str(template_path),
        **{k: str(v) for k, v in paths.items()},
    })
    return out.reindex(columns=MATCH_COLUMNS)


def write_particles(rows: pd.DataFrame, path, overwrite: bool = True) -> Path:
    """Write Leopard-EM particle rows as its programs do (pandas, index column first),
    atomically; refuses to replace an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists; refusing to overwrite")
    with atomic_path(path) as tmp:
        rows.to_csv(tmp, index=True)
    return path
