"""Template sources: a cubic 3D map, or anything a registered loader turns into one.

The engine asks only for a :class:`Template` (a potential on a cubic grid with its
pixel size). Maps come from MRC files or arrays; atomic models (PDB/mmCIF) are
converted by :mod:`napari_2dtm.templates.model`, registered here under their file suffixes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import read_map

__all__ = ["Template", "load_template", "register_template_loader", "template_suffix"]


@dataclasses.dataclass
class Template:
    """A 3D template.

    volume: ``(n, n, n)`` float32 potential, indexed ``[z, y, x]``, particle centre at
        voxel ``n // 2`` along each axis.
    pixel_size_a: voxel size in Angstrom.
    source: where it came from (file path or description), for ``search.json``.
    """

    volume: np.ndarray
    pixel_size_a: float
    source: str = "array"
    params: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        v = np.asarray(self.volume, dtype=np.float32)
        if v.ndim != 3 or len(set(v.shape)) != 1:
            raise InputError(f"{self.source}: template must be a cubic 3D map, got shape {v.shape}")
        if not np.all(np.isfinite(v)):
            raise InputError(f"{self.source}: template contains NaN or infinite values")
        if not (np.isfinite(self.pixel_size_a) and self.pixel_size_a > 0):
            raise InputError(f"{self.source}: template pixel size must be > 0, got {self.pixel_size_a}")
        self.volume = v

    @property
    def box(self) -> int:
        return self.volume.shape[0]


Loader = Callable[..., Template]
_LOADERS: dict[str, Loader] = {}


def register_template_loader(suffixes: tuple[str, ...], loader: Loader) -> None:
    """Register ``loader(path, pixel_size_a=None, **kwargs) -> Template`` for file suffixes."""
    for s in suffixes:
        _LOADERS[s.lower()] = loader


def template_suffix(path: str | Path) -> str:
    """File suffix used for loader lookup, gzip-aware ('.pdb.gz' -> '.pdb')."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix


def _load_map(path, pixel_size_a=None, **_ignored) -> Template:
    vol, px = read_map(path, pixel_size_a)
    return Template(vol, px, source=str(path))


register_template_loader((".mrc", ".map", ".mrcs", ".rec"), _load_map)
_MODEL_SUFFIXES = (".pdb", ".cif", ".mmcif", ".ent")


def load_template(source, pixel_size_a: float | None = None, **kwargs) -> Template:
    """Load a template from a map file, a model file, an array or a Template.

    For atomic models ``pixel_size_a`` is the grid spacing to compute the potential
    on (normally the micrograph pixel size); extra keyword arguments go to the model
    converter (``box``, ``bfactor_a2``, ``selection``...).
    """
    if isinstance(source, Template):
        return source
    if isinstance(source, np.ndarray):
        if pixel_size_a is None:
            raise InputError("template array given without pixel_size_a")
        return Template(source, float(pixel_size_a))
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: template file not found")
    suffix = template_suffix(path)
    if suffix in _MODEL_SUFFIXES and suffix not in _LOADERS:
        pass
    loader = _LOADERS.get(suffix)
    if loader is None:
        raise InputError(
            f"{path}: unknown template type {suffix!r} "
            f"(expected one of {sorted(set(_LOADERS) | set(_MODEL_SUFFIXES))})"
        )
    return loader(path, pixel_size_a=pixel_size_a, **kwargs)
