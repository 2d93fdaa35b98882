"""napari writer: a points layer (hits) to a STAR or CSV file.

Point positions are taken from the layer (so moved, added or deleted points are
saved as shown); every other column comes from the layer's ``features`` table.
Coordinates are micrograph pixels, 0-based, ``x`` = column and ``y`` = row, the
same convention as ``hits.csv``/``hits.star`` in a results folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def hits_table(data, attributes: dict) -> pd.DataFrame:
    """The table to save: features with ``x``/``y`` from the current point positions."""
    coords = np.asarray(data, dtype=float).reshape(-1, np.shape(data)[-1] if np.ndim(data) else 2)
    features = attributes.get("features")
    table = pd.DataFrame(features).reset_index(drop=True) if features is not None else pd.DataFrame()
    if len(table) != len(coords):
        table = pd.DataFrame(index=range(len(coords)))
    table = table.drop(columns=[c for c in ("x", "y") if c in table.columns])
    table.insert(0, "y", coords[:, -2] if len(coords) else [])
    table.insert(0, "x", coords[:, -1] if len(coords) else [])
    return table


def write_hits(path: str, data, attributes: dict) -> list[str]:
    """npe2 single-layer writer for points: ``.star`` or ``.csv`` by extension.

    Files are written by :func:`napari_2dtm.io.star.write_hits`, exactly as in a
    results folder; the STAR optics block takes the pixel size from the layer scale
    and the CTF from the layer metadata when the layer came from a search.
    """
    from napari_2dtm.io.star import write_hits as write_table

    info = (attributes.get("metadata") or {}).get("napari_2dtm", {})
    scale = attributes.get("scale")
    pixel = info.get("pixel_size_a") or (float(scale[-1]) if scale is not None else None)
    out = Path(path)
    write_table(
        hits_table(data, attributes),
        out,
        micrograph_name=info.get("micrograph_name") or "micrograph.mrc",
        pixel_size_a=pixel,
        ctf=info.get("ctf"),
    )
    return [str(out)]
