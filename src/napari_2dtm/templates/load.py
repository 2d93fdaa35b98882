"""Load a template from whatever the user gave: a Template, an array, a map file or a model file.

The kind of file is decided by its suffix (gzip-aware, so ``x.pdb.gz`` is a model):
maps go to :func:`napari_2dtm.templates.template.template_from_map`, atomic models to
:func:`napari_2dtm.templates.model.template_from_model`. The dispatch is a plain table
here rather than loaders registered by the modules themselves, so that loading a
``.pdb`` does not depend on which module happened to be imported first.

Pixel sizes, one rule for every door (search, batch, reconstruct, classify, the API and
the widgets): ``pixel_size_a`` is the pixel size the caller works at (the
micrograph's); ``template_pixel_size_a`` is the user's ``--template-pixel-size``. A map
keeps its header voxel size unless ``template_pixel_size_a`` is given; a model is
computed at ``template_pixel_size_a`` or else ``pixel_size_a``; an array is at
``template_pixel_size_a`` or else ``pixel_size_a``. The template is then resampled in
Fourier space to ``pixel_size_a`` when its voxel size differs
(:func:`napari_2dtm.templates.template.resample_template`). A :class:`Template` object
is returned as it is by :func:`load_template` (a cache may key on it) and resampled by
:func:`template_at`, which the search engine and the reconstruction use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_2dtm.errors import InputError

from .model import template_from_model
from .template import Template, resample_template, template_from_map

__all__ = ["load_template", "template_at", "template_suffix"]

_MAP_SUFFIXES = (".mrc", ".map", ".mrcs", ".rec")
_MODEL_SUFFIXES = (".pdb", ".cif", ".mmcif", ".ent")


def template_suffix(path: str | Path) -> str:
    """File suffix used to pick the reader, gzip-aware ('.pdb.gz' -> '.pdb')."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix


def load_template(source, pixel_size_a: float | None = None, *,
                  template_pixel_size_a: float | None = None, **kwargs) -> Template:
    """Load a template from a map file, a model file, an array or a Template.

    pixel_size_a: the pixel size to bring the template to (normally the micrograph's);
    None keeps a map's or an array's own. template_pixel_size_a: the template's own
    voxel size: it overrides a map's header and is the grid a model is computed on
    (default ``pixel_size_a``). Extra keyword arguments go to the model converter
    (``box``, ``bfactor_a2``, ``selection``...) and are ignored for maps. See the module
    notes for the rule.
    """
    if isinstance(source, Template):
        return source
    own = template_pixel_size_a
    if own is not None and not (np.isfinite(own) and own > 0):
        raise InputError(f"--template-pixel-size must be > 0 Angstrom, got {own}")
    if isinstance(source, np.ndarray):
        if pixel_size_a is None and own is None:
            raise InputError("template array given without pixel_size_a")
        return _at(Template(source, float(own or pixel_size_a)), pixel_size_a)
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: template file not found")
    suffix = template_suffix(path)
    if suffix in _MAP_SUFFIXES:
        return _at(template_from_map(path, own), pixel_size_a)
    if suffix in _MODEL_SUFFIXES:
        if pixel_size_a is None and own is None:
            raise InputError(
                f"{path}: an atomic model needs a pixel size to compute the template on "
                "(give --pixel-size or pixel_size_a)"
            )
        return _at(template_from_model(path, own or pixel_size_a, **kwargs), pixel_size_a)
    raise InputError(
        f"{path}: unknown template type {suffix!r} "
        f"(expected one of {sorted(_MAP_SUFFIXES + _MODEL_SUFFIXES)})"
    )


def _at(template: Template, pixel_size_a: float | None) -> Template:
    return template if pixel_size_a is None else resample_template(template, pixel_size_a)


def template_at(source, pixel_size_a: float, **kwargs) -> Template:
    """:func:`load_template`, a :class:`Template` object resampled too: the template at
    ``pixel_size_a`` whatever it was given as."""
    return resample_template(load_template(source, pixel_size_a, **kwargs), pixel_size_a)
