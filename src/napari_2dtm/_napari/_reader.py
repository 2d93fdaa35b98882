"""napari reader: MRC images, stacks and maps, and 2DTM results folders.

``get_reader(path)`` decides quickly and never raises: it returns ``None`` for
anything it cannot read (wrong suffix, broken or truncated header, complex data,
a folder that is not a results folder), so napari can try another reader.

* a 2D image (``.mrc``, or a stack of one) becomes a gray image layer scaled in
  Angstrom with percentile contrast;
* an image stack (``.mrcs``, or MRC space group 0 that is not cubic) opens with a
  slider over images;
* a 3D map or tomogram (``.map``, ``.rec``, cubic ``.mrc``) opens as a volume;
* a results folder (one with ``search.json``, as written by ``napari-2dtm search``)
  opens as the micrograph (found by :meth:`ResultsFolder.micrograph_path
  <napari_2dtm.search.results.ResultsFolder.micrograph_path>`) plus every map and the hits;
  in a running napari the "2DTM Hits" widget then docks to review them (with any
  decisions saved in the folder's ``review/``);
* a cisTEM or Leopard-EM results folder (:mod:`napari_2dtm.search.foreign`) opens the
  same way; the first time, a small dialog (:mod:`._foreign_dialog`) asks for what its
  files do not say and stores the answers beside them.

A zero or missing pixel size gives a layer in pixel units.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from ._layers import micrograph_layer, result_layers

MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".rec")
# MRC modes with real-valued data napari can show (3 and 4 are complex)
_READABLE_MODES = {0, 1, 2, 6, 12, 101}


def get_reader(path):
    """Return a reader function for ``path`` (str, Path or list of them), or ``None``."""
    if isinstance(path, (list, tuple)):
        readers = [get_reader(p) for p in path]
        if not readers or any(r is None for r in readers):
            return None
        return lambda _paths: [ld for r, p in zip(readers, path) for ld in r(p)]
    try:
        p = Path(path)
        if p.is_dir():
            return _results_reader(p)
        if p.suffix.lower() in MRC_SUFFIXES and p.is_file():
            info = _mrc_info(p)
            if info is not None:
                return lambda _path: [_mrc_layer(p, info)]
    except Exception:  # a reader must never crash napari: decline instead
        return None
    return None


# ---------------------------------------------------------------- MRC files


# bytes per voxel of the readable modes (101: 4-bit, two voxels a byte)
_MODE_BYTES = {0: 1.0, 1: 2.0, 2: 4.0, 6: 2.0, 12: 2.0, 101: 0.5}


def _plausible_header(path: Path) -> bool:
    """Cheap check of the 1024-byte header against the file size.

    Junk with a huge claimed size can keep mrcfile busy for seconds; this rejects it,
    and truncated files, before mrcfile looks at the data.
    """
    size = path.stat().st_size
    if size < 1024:
        return False
    with open(path, "rb") as f:
        head = f.read(1024)
    for order in "<>":
        words = np.frombuffer(head, dtype=f"{order}i4", count=25)
        nx, ny, nz, mode = (int(v) for v in words[:4])
        nsymbt = int(words[23])
        if mode in _MODE_BYTES and min(nx, ny, nz) > 0 and 0 <= nsymbt < size:
            return size >= 1024 + nsymbt + int(nx * ny * nz * _MODE_BYTES[mode])
    return False


def _mrc_info(path: Path) -> dict | None:
    """Header facts needed to build the layer, or ``None`` if the file is unreadable."""
    import mrcfile

    if not _plausible_header(path):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.mmap(path, mode="r", permissive=True) as m:
                if m.data is None or int(m.header.mode) not in _READABLE_MODES:
                    return None
                shape = tuple(int(s) for s in m.data.shape)
                if any(s == 0 for s in shape) or not 2 <= len(shape) <= 3:
                    return None
                vs = float(m.voxel_size.x)
                ispg = int(m.header.ispg)
    except Exception:
        return None
    px = vs if np.isfinite(vs) and vs > 0 else None
    if len(shape) == 3 and shape[0] == 1:
        kind = "image"
    elif len(shape) == 2:
        kind = "image"
    elif path.suffix.lower() == ".mrcs" or (ispg == 0 and len(set(shape)) != 1):
        kind = "stack"
    else:
        kind = "volume"
    return {"shape": shape, "pixel_size_a": px, "kind": kind}


def _mrc_layer(path: Path, info: dict):
    from napari_2dtm.io.mrc import read_mrc

    data, px = read_mrc(path)
    name = path.stem
    if info["kind"] == "image":
        return micrograph_layer(data.reshape(data.shape[-2:]), px, name)
    from ._layers import robust_limits

    unit = "angstrom" if px else "pixel"
    s = px or 1.0
    if info["kind"] == "stack":
        scale, units, labels = (1.0, s, s), ("pixel", unit, unit), ("image", "y", "x")
    else:
        scale, units, labels = (s, s, s), (unit, unit, unit), ("z", "y", "x")
    kwargs = dict(
        name=name,
        scale=scale,
        units=units,
        axis_labels=labels,
        colormap="gray",
        contrast_limits=robust_limits(data),
        metadata={"napari_2dtm": {"kind": info["kind"], "pixel_size_a": px}},
    )
    return (data, kwargs, "image")


# ---------------------------------------------------------------- results folders


def _results_reader(folder: Path):
    if not (folder / "search.json").is_file():
        from napari_2dtm.search.foreign import detect

        return (lambda _path: _open_foreign(folder)) if detect(folder) else None
    try:
        json.loads((folder / "search.json").read_text())
    except (OSError, ValueError):
        return None
    return lambda _path: _open_results(folder)


def _open_results(folder: Path) -> list:
    layers = results_layers(folder)
    _schedule_review(folder, layers)
    return layers


def _open_foreign(folder: Path) -> list:
    """A foreign folder: ask once (when Qt runs and nothing is stored), then open it."""
    from napari_2dtm.errors import InputError
    from napari_2dtm.search.foreign import load_spec

    if load_spec(folder) is None and _qt_running():
        from ._foreign_dialog import confirm_spec

        if confirm_spec(folder) is None:
            raise InputError(f"{folder}: opening cancelled")
    return _open_results(folder)


def _qt_running() -> bool:
    try:
        from qtpy.QtWidgets import QApplication
    except ImportError:
        return False
    return QApplication.instance() is not None


def _schedule_review(folder: Path, layers: list) -> None:
    """Dock the Hits widget on the opened hits once napari has added the layers."""
    try:
        from qtpy.QtWidgets import QApplication
    except ImportError:  # no Qt: layers only
        return
    if QApplication.instance() is None:
        return
    hits = [kw["name"] for _, kw, kind in layers
            if kind == "points" and kw.get("metadata", {}).get("napari_2dtm", {}).get("kind") == "hits"]
    if hits:
        from ._hits_dock import dock_after_open

        dock_after_open(folder, hits[0])


def results_layers(folder: str | Path) -> list:
    """Layers for a results folder (ours, cisTEM's or Leopard-EM's): the micrograph (if
    its file is found), maps, hits."""
    from napari_2dtm.search.foreign import open_results

    view = open_results(folder)
    layers = []
    mic_path = view.micrograph_path()
    mic_name = mic_path.stem if mic_path is not None else view.path.name
    if mic_path is not None:
        try:
            image, px = view.read_micrograph()
            layers.append(micrograph_layer(image, px, mic_name))
        except Exception:  # the micrograph changed (unreadable): show the results anyway
            pass
    return layers + result_layers(view.result, mic_name, view.path)
