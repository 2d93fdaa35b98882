"""The :class:`Template`: a potential on a cubic grid with its pixel size, and reading one from a map.

The engine asks only for a :class:`Template`; where it came from is recorded in
``source`` (and, for computed templates, ``params``) for ``search.json``. Maps are read
here from MRC-style files; atomic models are converted by
:mod:`napari_2dtm.templates.model`, and :func:`napari_2dtm.templates.load.load_template`
picks between the two by file suffix. This module imports neither, so the class can be
used by every other templates module without an import circle.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import read_map

__all__ = ["Template", "template_from_map"]


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


def template_from_map(path, pixel_size_a: float | None = None) -> Template:
    """Read a cubic map file as a Template; ``pixel_size_a`` overrides the header's voxel size."""
    vol, px = read_map(path, pixel_size_a)
    return Template(vol, px, source=str(path))
