"""Results folder: MRC maps, hits (STAR + CSV) and ``search.json``.

Layout of ``OUT/``::

    mip.mrc zscore.mrc snr.mrc mean.mrc std.mrc phi.mrc theta.mrc psi.mrc
    defocus.mrc defocus_offset.mrc [pixel_size.mrc] valid_mask.mrc
    hits.star hits.csv search.json

Maps carry the search pixel size in their header. The folder is written to a temporary
sibling and moved into place, so a crash never leaves half a result; an existing folder
is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from importlib import metadata as im
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import atomic_path, read_mrc, replace_dir, write_mrc

__all__ = ["write_results", "read_results", "hits_to_star", "write_hits", "read_hits", "STAR_COLUMNS"]

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


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("napari-2dtm", "numpy", "scipy", "numba", "mrcfile", "gemmi", "starfile", "pandas", "cupy"):
        try:
            out[pkg] = im.version(pkg)
        except im.PackageNotFoundError:
            pass
    return out


def hits_to_star(hits: pd.DataFrame, micrograph_name: str = "micrograph.mrc",
                 pixel_size_a: float | None = None, ctf: dict | None = None) -> dict:
    """RELION-5 style blocks ``{"optics": df, "particles": df}`` for a hits table."""
    parts = pd.DataFrame({STAR_COLUMNS[c]: hits[c].to_numpy() for c in STAR_COLUMNS if c in hits})
    if "defocus1_a" not in hits and "defocus_a" in hits:
        parts["rlnDefocusU"] = hits["defocus_a"].to_numpy()
        parts["rlnDefocusV"] = hits["defocus_a"].to_numpy()
        parts["rlnDefocusAngle"] = 0.0
    parts.insert(0, "rlnMicrographName", micrograph_name)
    parts["rlnOpticsGroup"] = 1
    for extra in ("accepted",):
        if extra in hits:
            parts["rln2dtmAccepted"] = hits[extra].astype(int).to_numpy()
    ctf = ctf or {}
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1],
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnMicrographPixelSize": [float(pixel_size_a) if pixel_size_a else 1.0],
        "rlnVoltage": [float(ctf.get("voltage_kv", 300.0))],
        "rlnSphericalAberration": [float(ctf.get("cs_mm", 2.7))],
        "rlnAmplitudeContrast": [float(ctf.get("amplitude_contrast", 0.07))],
    })
    return {"optics": optics, "particles": parts}


def write_hits(hits: pd.DataFrame, path, micrograph_name="micrograph.mrc", pixel_size_a=None,
               ctf=None, overwrite: bool = True):
    """Write hits to ``.star`` (RELION names) or ``.csv`` (our names), atomically."""
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


def read_hits(path) -> pd.DataFrame:
    """Read hits from our CSV or a STAR file (RELION names mapped back)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    data = starfile.read(path, always_dict=True)
    df = data.get("particles", next(iter(data.values())))
    inv = {v: k for k, v in STAR_COLUMNS.items()}
    return df.rename(columns=inv)


def write_results(result, out_dir, overwrite: bool = False, micrograph_path=None) -> Path:
    """Write a :class:`~napari_2dtm.search.engine.SearchResult` into ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise InputError(f"{out_dir}: results folder exists; use --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        px = result.pixel_size_a
        for name, arr in result.maps.items():
            write_mrc(tmp / f"{name}.mrc", np.asarray(arr, np.float32), px)
        if result.valid_mask is not None:
            write_mrc(tmp / "valid_mask.mrc", result.valid_mask.astype(np.int8), px)
        mic_name = Path(micrograph_path).name if micrograph_path else "micrograph.mrc"
        ctf = result.metadata.get("config", {}).get("ctf", {})
        hits = result.hits if result.hits is not None else pd.DataFrame()
        write_hits(hits, tmp / "hits.star", mic_name, result.input_pixel_size_a, ctf)
        write_hits(hits, tmp / "hits.csv")
        meta = dict(result.metadata)
        meta["micrograph"] = str(micrograph_path) if micrograph_path else None
        meta["versions"] = _versions()
        meta["n_hits"] = len(hits)
        (tmp / "search.json").write_text(json.dumps(meta, indent=2, default=_json_default))
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def read_results(out_dir):
    """Load a results folder back into a :class:`~napari_2dtm.search.engine.SearchResult`."""
    from .engine import SearchResult  # noqa: PLC0415

    out_dir = Path(out_dir)
    meta_path = out_dir / "search.json"
    if not meta_path.exists():
        raise InputError(f"{out_dir}: not a napari-2dtm results folder (no search.json)")
    meta = json.loads(meta_path.read_text())
    maps = {}
    for p in sorted(out_dir.glob("*.mrc")):
        if p.stem == "valid_mask":
            continue
        maps[p.stem] = read_mrc(p)[0]
    valid = None
    if (out_dir / "valid_mask.mrc").exists():
        valid = read_mrc(out_dir / "valid_mask.mrc")[0].astype(bool)
    hits_csv = out_dir / "hits.csv"
    hits = pd.read_csv(hits_csv) if hits_csv.exists() and hits_csv.stat().st_size > 1 else pd.DataFrame()
    return SearchResult(maps=maps, pixel_size_a=meta["search_pixel_size_a"],
                        input_pixel_size_a=meta["input_pixel_size_a"], threshold=meta["threshold"],
                        n_trials=meta["n_trials"], hits=hits, metadata=meta, valid_mask=valid)
