"""Layer data for micrographs, score maps and hits, shared by reader, samples and widget.

Functions here return napari ``LayerData`` tuples ``(data, kwargs, layer_type)`` and
import nothing from napari, so they can be used (and tested) without a viewer.
All layers are scaled in Angstrom: a micrograph with scale = its pixel size, maps
with scale = the search pixel size, points in micrograph pixel coordinates
(row = y, column = x) with the micrograph's scale, so that everything overlays.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

UNITS_2D = ("angstrom", "angstrom")

#: colormap and default visibility of every map a search produces
MAP_STYLE = {
    "zbg": ("inferno", True),
    "zscore": ("magma", False),
    "snr": ("inferno", False),
    "sigma_bg": ("gray", False),
    "excluded": ("gray", False),
    "mip": ("viridis", False),
    "mean": ("gray", False),
    "std": ("gray", False),
    "phi": ("twilight", False),
    "theta": ("twilight", False),
    "psi": ("twilight", False),
    "defocus": ("coolwarm", False),
    "neg_log_p": ("viridis", False),
}

#: display names of the maps in layer names
MAP_LABEL = {"zbg": "zbg", "zscore": "z-score", "snr": "SNR", "mip": "MIP", "defocus": "defocus",
             "neg_log_p": "-ln p"}


def robust_limits(data: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Percentile contrast limits on a subsample (fast for large images/stacks)."""
    a = np.asarray(data)
    step = max(1, int(a.size // 2_000_000))
    flat = a.reshape(-1)[::step]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(flat, [low, high]))
    if not hi > lo:
        lo, hi = float(flat.min()), float(flat.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def full_limits(data: np.ndarray) -> tuple[float, float]:
    """Full data range (ignoring NaN), widened if flat: score maps show every peak."""
    a = np.asarray(data)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def micrograph_layer(image: np.ndarray, pixel_size_a: float | None, name: str, **extra):
    """Image layer data for a 2D micrograph (gray, percentile contrast)."""
    px = float(pixel_size_a) if pixel_size_a else 1.0
    kwargs = dict(
        name=name,
        scale=(px, px),
        units=UNITS_2D if pixel_size_a else ("pixel", "pixel"),
        colormap="gray",
        contrast_limits=robust_limits(image),
        metadata={"napari_2dtm": {"kind": "micrograph", "pixel_size_a": pixel_size_a}},
    )
    kwargs.update(extra)
    return (image, kwargs, "image")


def map_layer_name(key: str, micrograph_name: str) -> str:
    return f"{MAP_LABEL.get(key, key)} [{micrograph_name}]"


def map_layer(key: str, data: np.ndarray, pixel_size_a: float, micrograph_name: str, **extra):
    """Image layer data for one result map (``key`` in :data:`MAP_STYLE`)."""
    cmap, visible = MAP_STYLE.get(key, ("gray", False))
    px = float(pixel_size_a)
    kwargs = dict(
        name=map_layer_name(key, micrograph_name),
        scale=(px, px),
        units=UNITS_2D,
        colormap=cmap,
        contrast_limits=full_limits(data),
        blending="additive",
        opacity=0.7,
        visible=visible,
        metadata={"napari_2dtm": {"kind": "map", "map": key, "pixel_size_a": px}},
    )
    kwargs.update(extra)
    return (np.asarray(data, dtype=np.float32), kwargs, "image")


def hits_layer_name(micrograph_name: str) -> str:
    return f"hits [{micrograph_name}]"


def hits_from_layer(layer) -> pd.DataFrame:
    """The hits a points layer holds (the Reconstruct and Classify widgets' input): the
    accepted ones if any were accepted, else every point shown and not rejected."""
    t = pd.DataFrame(layer.features).reset_index(drop=True)
    keep = np.ones(len(t), bool)
    shown = np.asarray(getattr(layer, "shown", np.ones(len(t), bool)), bool)
    if len(shown) == len(t) and shown.any():
        keep &= shown
    if "status" in t:
        status = t["status"].astype(str).to_numpy()
        if (status == "accepted").any():
            keep = status == "accepted"
        else:
            keep &= status != "rejected"
    return t[keep].reset_index(drop=True)


def points_layer(
    table: pd.DataFrame,
    pixel_size_a: float | None,
    name: str,
    size_px: float = 30.0,
    color_by: str | None = "snr",
    **extra,
):
    """Points layer data from a table with ``x``, ``y`` columns (micrograph pixels).

    The whole table becomes the layer's ``features``; points are rings of
    ``size_px`` micrograph pixels, coloured by ``color_by`` when that column exists.
    """
    table = pd.DataFrame(table).reset_index(drop=True)
    coords = (
        table[["y", "x"]].to_numpy(dtype=float)
        if len(table)
        else np.zeros((0, 2), dtype=float)
    )
    px = float(pixel_size_a) if pixel_size_a else 1.0
    kwargs = dict(
        name=name,
        scale=(px, px),
        units=UNITS_2D if pixel_size_a else ("pixel", "pixel"),
        features=table,
        size=float(size_px),
        symbol="disc",
        face_color="transparent",
        border_color="#00ff66",
        border_width=0.08,
        opacity=0.9,
        metadata={"napari_2dtm": {"kind": "points", "pixel_size_a": pixel_size_a}},
    )
    if color_by and color_by in table.columns and len(table) > 1:
        kwargs["border_color"] = color_by
        kwargs["border_colormap"] = "turbo"
    kwargs.update(extra)
    return (coords, kwargs, "points")


def hit_marker_size_px(res) -> float:
    """Marker diameter in micrograph pixels: about the particle diameter."""
    from napari_2dtm.search.results import ResultsFolder

    t = ResultsFolder.of(res).template
    if t.box and t.pixel_size_a:
        return float(t.box) * float(t.pixel_size_a) * 0.6 / float(res.input_pixel_size_a)
    return 30.0


def result_layers(res, micrograph_name: str, results_folder=None) -> list:
    """Layer data for a :class:`~napari_2dtm.SearchResult`: every map, then the hits.

    Maps are ordered as in :data:`MAP_STYLE` (z-score and SNR shown, the rest hidden);
    the hits layer carries the hits table as ``features`` and, in its metadata, what
    the STAR writer needs (micrograph name, pixel size, CTF).
    """
    from napari_2dtm.search.results import ResultsFolder

    layers = []
    keys = [k for k in MAP_STYLE if k in res.maps]
    keys += [k for k in res.maps if k not in MAP_STYLE and k != "defocus_offset"]
    for key in keys:
        layers.append(map_layer(key, res.maps[key], res.pixel_size_a, micrograph_name))
    view = ResultsFolder.of(res, results_folder)
    info = {
        "kind": "hits",
        "pixel_size_a": res.input_pixel_size_a,
        "micrograph_name": view.micrograph_name if view.recorded_micrograph else None,
        "ctf": view.ctf.to_dict() if (res.metadata or {}).get("config") else None,
        "threshold": res.threshold,
        "results_folder": str(results_folder) if results_folder else None,
    }
    hits = res.hits if res.hits is not None else pd.DataFrame(columns=["x", "y"])
    layers.append(
        points_layer(
            hits,
            res.input_pixel_size_a,
            hits_layer_name(micrograph_name),
            size_px=hit_marker_size_px(res),
            metadata={"napari_2dtm": info},
        )
    )
    return layers
