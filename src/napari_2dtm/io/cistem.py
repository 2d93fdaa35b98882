"""cisTEM's template-matching files: ``match_template`` maps and histogram,
``make_template_result``'s ``coordinates.txt`` and the cisTEM STAR of template matches.

Read from cisTEM's source (GitHub timothygrant80/cisTEM, master at 1a39ccbb, 2025-10-02:
``src/programs/match_template/match_template.cpp``,
``src/programs/make_template_result/make_template_result.cpp``,
``src/programs/refine_template/refine_template.cpp``, ``src/core/numeric_text_file.cpp``,
``src/core/cistem_parameters.cpp`` ``WriteTocisTEMStarFile``,
``src/gui/NewTemplateMatchesPackageWizard.cpp``, ``src/core/matrix.cpp``). Nothing is
copied; names, units and layouts are facts of the format.

* **Maps** (MRC, names typed at the prompts, defaults in :data:`MAP_NAMES`): ``mip.mrc``
  (MIP rescaled by the global mean and std of all correlations), ``mip_scaled.mrc``
  (per-pixel z-score), ``psi/theta/phi.mrc`` (deg), ``defocus.mrc`` and
  ``pixel_size.mrc`` (offsets from the nominal values, A), ``corr_average.mrc``,
  ``corr_stddev.mrc``; ``refine_template`` writes the same maps as ``out_*.mrc``
  (``out_scaled_mip.mrc``). The header carries the search pixel size; map pixel
  ``(i, j)`` is the particle **centre** (the image's quadrants are swapped before the
  correlation), 0-based.
* ``histogram.txt``: comment ``# Expected threshold = <t>`` then four numeric columns (bin
  centre, count, survival count, expected survival count).
* ``coordinates.txt`` (NumericTextFile: ``#`` comments, ``%14.5f`` columns): ``Psi Theta
  Phi X Y Z PixelSize Peak``; X, Y in A = 0-based pixel index x the pixel size given,
  Z = the defocus offset (A), Peak = the map value (scaled MIP by default).
* **cisTEM STAR** (``WriteTocisTEMStarFile``: ``data_``, ``loop_``, ``_cisTEM<Label> #n``
  lines, a ``#`` line of short column names, whitespace rows, file names in single
  quotes). A template-matches package fills ``_cisTEMOriginalXPosition/YPosition``
  (peak centre, A), the angles, ``_cisTEMDefocus1/2`` (absolute: nominal + offset),
  ``_cisTEMScore`` (peak height) and the optics columns.
* **Angles**: cisTEM's ``RotationMatrix::SetToEulerRotation(phi, theta, psi)`` is
  ``Rz(phi) Ry(theta) Rz(psi)``, applied to the slice coordinates (``RotateCoords``), i.e.
  RELION's ``A.T``: the angles are ours unchanged.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd

from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import atomic_path

__all__ = ["MAP_NAMES", "COORDINATE_COLUMNS", "STAR_LABELS", "read_histogram",
           "read_coordinates", "coordinates_to_hits", "read_cistem_star", "star_to_hits",
           "hits_to_star_rows", "write_cistem_star", "is_cistem_star", "is_coordinates"]

#: our map name -> cisTEM's default file stems (match_template, then refine_template)
MAP_NAMES = {
    "mip": ("mip", "out_mip"),
    "zscore": ("mip_scaled", "scaled_mip", "out_scaled_mip"),
    "phi": ("phi", "out_phi"),
    "theta": ("theta", "out_theta"),
    "psi": ("psi", "out_psi"),
    "defocus_offset": ("defocus", "out_defocus"),
    "pixel_size_offset": ("pixel_size", "out_pixel_size"),
    "mean": ("corr_average",),
    "std": ("corr_stddev",),
}

#: make_template_result's coordinates.txt columns
COORDINATE_COLUMNS = ["psi", "theta", "phi", "x_a", "y_a", "defocus_offset_a",
                      "pixel_size_a", "peak"]

#: cisTEM STAR label -> (short name in the ``#`` line, printf format)
STAR_LABELS = {
    "cisTEMAnglePsi": ("PSI", "%7.2f"),
    "cisTEMAngleTheta": ("THETA", "%7.2f"),
    "cisTEMAnglePhi": ("PHI", "%7.2f"),
    "cisTEMDefocus1": ("DF1", "%8.1f"),
    "cisTEMDefocus2": ("DF2", "%8.1f"),
    "cisTEMDefocusAngle": ("ANGAST", "%7.2f"),
    "cisTEMPhaseShift": ("PSHIFT", "%7.2f"),
    "cisTEMScore": ("SCORE", "%7.2f"),
    "cisTEMPixelSize": ("PSIZE", "%8.5f"),
    "cisTEMMicroscopeVoltagekV": ("VOLT", "%7.2f"),
    "cisTEMMicroscopeCsMM": ("Cs", "%7.2f"),
    "cisTEMAmplitudeContrast": ("AmpC", "%7.4f"),
    "cisTEMOriginalImageFilename": ("ORIGINAL_IMAGE_FILENAME", "%50s"),
    "cisTEMOriginalXPosition": ("ORIGX", "%8.2f"),
    "cisTEMOriginalYPosition": ("ORIGY", "%8.2f"),
}

_THRESHOLD = re.compile(r"expected threshold\s*=\s*([-+0-9.eE]+)", re.I)


def _numeric_rows(path: Path, n_columns: int, what: str) -> tuple[np.ndarray, list[str]]:
    """``(rows, comment lines)`` of a NumericTextFile; InputError naming the file if a row
    is not ``n_columns`` numbers."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"{path}: {what} not readable ({e.strerror or e})") from None
    rows, comments = [], []
    for k, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith(("#", "C")):
            comments.append(s)
            continue
        try:
            vals = [float(t) for t in s.split()]
        except ValueError:
            raise InputError(f"{path}: line {k} of the {what} is not numbers") from None
        if len(vals) != n_columns:
            raise InputError(f"{path}: line {k} of the {what} has {len(vals)} values, "
                             f"expected {n_columns}")
        rows.append(vals)
    return np.asarray(rows, np.float64).reshape(-1, n_columns), comments


def read_histogram(path) -> tuple[float | None, pd.DataFrame]:
    """``(expected threshold or None, table)`` of match_template's ``histogram.txt``;
    table columns ``snr, count, survival, expected_survival``."""
    path = Path(path)
    rows, comments = _numeric_rows(path, 4, "cisTEM histogram")
    thr = None
    for c in comments:
        m = _THRESHOLD.search(c)
        if m:
            thr = float(m.group(1))
    return thr, pd.DataFrame(rows, columns=["snr", "count", "survival", "expected_survival"])


def is_coordinates(path) -> bool:
    """True for a make_template_result ``coordinates.txt`` (its header comment)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.readline()
    except OSError:
        return False
    words = head.lstrip("#").split()
    return words[:5] == ["Psi", "Theta", "Phi", "X", "Y"]


def read_coordinates(path) -> pd.DataFrame:
    """make_template_result's ``coordinates.txt`` (:data:`COORDINATE_COLUMNS`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: cisTEM coordinates file not found")
    rows, _ = _numeric_rows(path, 8, "cisTEM coordinates file")
    return pd.DataFrame(rows, columns=COORDINATE_COLUMNS)


def coordinates_to_hits(coords: pd.DataFrame, pixel_size_a: float, ctf: dict) -> pd.DataFrame:
    """Our hits from ``coordinates.txt`` rows: ``x = X / pixel_size`` (A to 0-based
    pixels; the pixel size given to make_template_result), angles unchanged, defoci =
    the CTF's plus the offset Z, ``zscore`` = Peak (the map searched: the scaled MIP)."""
    d1 = float(ctf.get("defocus1_a", np.nan))
    d2 = float(ctf.get("defocus2_a") if ctf.get("defocus2_a") is not None else d1)
    off = coords["defocus_offset_a"].to_numpy(np.float64)
    return pd.DataFrame({
        "x": coords["x_a"].to_numpy(np.float64) / pixel_size_a,
        "y": coords["y_a"].to_numpy(np.float64) / pixel_size_a,
        "phi": coords["phi"].to_numpy(np.float64),
        "theta": coords["theta"].to_numpy(np.float64),
        "psi": coords["psi"].to_numpy(np.float64),
        "defocus_a": (d1 + d2) / 2 + off,
        "zscore": coords["peak"].to_numpy(np.float64),
        "defocus1_a": d1 + off,
        "defocus2_a": d2 + off,
        "astigmatism_angle_deg": float(ctf.get("astigmatism_angle_deg", 0.0)),
    })


# ------------------------------------------------------------------ cisTEM STAR
def is_cistem_star(path) -> bool:
    """True for a STAR file with ``_cisTEM`` labels (cisTEM's own STAR dialect)."""
    path = Path(path)
    if path.suffix.lower() != ".star" or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    return "_cisTEMAnglePsi" in head


def read_cistem_star(path) -> pd.DataFrame:
    """A cisTEM STAR file as a table whose columns are its labels without ``_``
    (``cisTEMAnglePsi``...). InputError naming the file when it is not one."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise InputError(f"{path}: cisTEM STAR file not readable ({e.strerror or e})") from None
    labels, rows, in_loop = [], [], False
    for k, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s == "loop_":
            in_loop = True
            continue
        if s.startswith("data_"):
            continue
        if s.startswith("_"):
            labels.append(s.split()[0][1:])
            continue
        if not in_loop or not labels:
            raise InputError(f"{path}: line {k} comes before any column label")
        try:
            tokens = shlex.split(s)
        except ValueError:
            raise InputError(f"{path}: line {k} has an unbalanced quote") from None
        if len(tokens) != len(labels):
            raise InputError(f"{path}: line {k} has {len(tokens)} values for {len(labels)} "
                             "columns")
        rows.append(tokens)
    if "cisTEMAnglePsi" not in labels:
        raise InputError(f"{path}: not a cisTEM STAR file (no _cisTEMAnglePsi column)")
    df = pd.DataFrame(rows, columns=labels)
    for c in df:
        if c not in ("cisTEMOriginalImageFilename", "cisTEMStackFilename",
                     "cisTEMReference3DFilename"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def star_to_hits(df: pd.DataFrame, pixel_size_a: float | None = None, source=None) -> pd.DataFrame:
    """Our hits from cisTEM STAR rows: ``x = ORIGX / pixel size`` (A to 0-based input
    pixels; ``_cisTEMPixelSize`` unless ``pixel_size_a`` is given), angles unchanged,
    ``_cisTEMDefocus1/2`` absolute, ``zscore`` = ``_cisTEMScore``."""
    for c in ("cisTEMOriginalXPosition", "cisTEMOriginalYPosition", "cisTEMAnglePhi",
              "cisTEMAngleTheta", "cisTEMAnglePsi"):
        if c not in df:
            raise InputError(f"{source or 'cisTEM STAR'}: no _{c} column")
    px = (np.full(len(df), float(pixel_size_a)) if pixel_size_a
          else df.get("cisTEMPixelSize", pd.Series(np.nan, index=df.index)).to_numpy(np.float64))
    if not np.all(np.isfinite(px) & (px > 0)):
        raise InputError(f"{source or 'cisTEM STAR'}: no pixel size (_cisTEMPixelSize) to turn "
                         "positions in A into pixels; give it")

    def num(c, default=np.nan):
        return df[c].to_numpy(np.float64) if c in df else np.full(len(df), default)

    d1, d2 = num("cisTEMDefocus1"), num("cisTEMDefocus2")
    hits = pd.DataFrame({
        "x": num("cisTEMOriginalXPosition") / px,
        "y": num("cisTEMOriginalYPosition") / px,
        "phi": num("cisTEMAnglePhi"),
        "theta": num("cisTEMAngleTheta"),
        "psi": num("cisTEMAnglePsi"),
        "defocus_a": (d1 + d2) / 2,
        "zscore": num("cisTEMScore"),
        "defocus1_a": d1,
        "defocus2_a": d2,
        "astigmatism_angle_deg": num("cisTEMDefocusAngle", 0.0),
    })
    bad = ~np.isfinite(hits[["x", "y", "phi", "theta", "psi"]].to_numpy()).all(1)
    if bad.any():
        raise InputError(f"{source or 'cisTEM STAR'}: particle row {int(np.argmax(bad)) + 1} "
                         "has a position or angle that is not a number")
    return hits


def hits_to_star_rows(hits: pd.DataFrame, *, pixel_size_a: float, ctf: dict,
                      micrograph_path: str = "") -> pd.DataFrame:
    """cisTEM STAR rows (a template-matches package's columns) for our hits table:
    positions in A (``x * pixel_size``), absolute defoci, ``_cisTEMScore`` = z-score."""
    n = len(hits)
    d1 = float(ctf.get("defocus1_a", np.nan))
    d2 = float(ctf.get("defocus2_a") if ctf.get("defocus2_a") is not None else d1)
    if "defocus1_a" in hits and "defocus2_a" in hits:
        df1, df2 = hits["defocus1_a"].to_numpy(np.float64), hits["defocus2_a"].to_numpy(np.float64)
    elif "defocus_a" in hits:
        off = hits["defocus_a"].to_numpy(np.float64) - (d1 + d2) / 2
        df1, df2 = d1 + off, d2 + off
    else:
        df1, df2 = np.full(n, d1), np.full(n, d2)
    score = hits["zscore"].to_numpy(np.float64) if "zscore" in hits else np.zeros(n)
    return pd.DataFrame({
        "cisTEMAnglePsi": hits["psi"].to_numpy(np.float64),
        "cisTEMAngleTheta": hits["theta"].to_numpy(np.float64),
        "cisTEMAnglePhi": hits["phi"].to_numpy(np.float64),
        "cisTEMDefocus1": df1,
        "cisTEMDefocus2": df2,
        "cisTEMDefocusAngle": float(ctf.get("astigmatism_angle_deg", 0.0)),
        "cisTEMPhaseShift": float(ctf.get("phase_shift_deg", 0.0)),
        "cisTEMScore": score,
        "cisTEMPixelSize": float(pixel_size_a),
        "cisTEMMicroscopeVoltagekV": float(ctf.get("voltage_kv", 300.0)),
        "cisTEMMicroscopeCsMM": float(ctf.get("cs_mm", 2.7)),
        "cisTEMAmplitudeContrast": float(ctf.get("amplitude_contrast", 0.07)),
        "cisTEMOriginalImageFilename": str(micrograph_path),
        "cisTEMOriginalXPosition": hits["x"].to_numpy(np.float64) * pixel_size_a,
        "cisTEMOriginalYPosition": hits["y"].to_numpy(np.float64) * pixel_size_a,
    })


def write_cistem_star(rows: pd.DataFrame, path, overwrite: bool = True,
                      version: str = "napari-2dtm") -> Path:
    """Write cisTEM STAR rows in ``WriteTocisTEMStarFile``'s layout (its column order and
    printf widths, so that cisTEM reads it back), atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists; refusing to overwrite")
    labels = [c for c in STAR_LABELS if c in rows]
    out = [f"# Written by {version}", " ", "data_", " ", "loop_"]
    out += [f"_{c} #{i}" for i, c in enumerate(labels, 1)]
    header = "".join(f"{STAR_LABELS[c][0]:>{_width(STAR_LABELS[c][1])}} " for c in labels)
    out.append("#" + header[1:])
    for rec in rows[labels].itertuples(index=False):
        parts = []
        for c, v in zip(labels, rec):
            fmt = STAR_LABELS[c][1]
            parts.append(fmt % (f"'{v}'" if fmt.endswith("s") else float(v)))
        out.append(" ".join(parts) + " ")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(out) + "\n")
    return path


def _width(fmt: str) -> int:
    return int(re.match(r"%(\d+)", fmt).group(1))
