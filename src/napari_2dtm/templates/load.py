"""Load a template from whatever the user gave: a Template, an array, a map file or a model file.

The kind of file is decided by its suffix (gzip-aware, so ``x.pdb.gz`` is a model):
maps go to :func:`napari_2dtm.templates.template.template_from_map`, atomic models to
:func:`napari_2dtm.templates.model.template_from_model`. The dispatch is a plain table
here rather than loaders registered by the modules themselves, so that loading a
``.pdb`` does not depend on which module happened to be imported first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_2dtm.errors import InputError

from .model import template_from_model
from .template import Template, template_from_map

__all__ = ["load_template", "template_suffix"]

_MAP_SUFFIXES = (".mrc", ".map", ".mrcs", ".rec")
_MODEL_SUFFIXES = (".pdb", ".cif", ".mmcif", ".ent")


def template_suffix(path: str | Path) -> str:
    """File suffix used to pick the reader, gzip-aware ('.pdb.gz' -> '.pdb')."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix


def load_template(source, pixel_size_a: float | None = None, **kwargs) -> Template:
    """Load a template from a map file, a model file, an array or a Template.

    For atomic models ``pixel_size_a`` is the grid spacing to compute the potential
    on (normally the micrograph pixel size); extra keyword arguments go to the model
    converter (``box``, ``bfactor_a2``, ``selection``...). For maps ``pixel_size_a``
    overrides the header and extra keyword arguments are ignored.
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
    if suffix in _MAP_SUFFIXES:
        return template_from_map(path, pixel_size_a)
    if suffix in _MODEL_SUFFIXES:
        if pixel_size_a is None:
            raise InputError(
                f"{path}: an atomic model needs a pixel size to compute the template on "
                "(give --pixel-size or pixel_size_a)"
            )
        return template_from_model(path, pixel_size_a, **kwargs)
    raise InputError(
        f"{path}: unknown template type {suffix!r} "
        f"(expected one of {sorted(_MAP_SUFFIXES + _MODEL_SUFFIXES)})"
    )
