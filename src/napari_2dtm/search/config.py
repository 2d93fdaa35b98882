"""What a search is: :class:`SearchConfig` and the search space it defines.

A config names the scoring parameters (CTF, angular steps, symmetry, defocus and
pixel-size planes, resolution limit, template padding, explicit orientations) and the
run-time settings (device, batch size, reporting and checkpoint intervals, the
orientation shard, detection). Only the scoring parameters enter a search's identity:
a checkpoint or an orientation shard may be combined with a search whose run-time
settings differ (:data:`_RUNTIME_FIELDS`).

The search space is ``orientations x defocus planes x pixel-size planes``; the planes
are symmetric offsets around the nominal value (:func:`defocus_offsets`), so 0 is
always searched.

This module is light (no FFT, no numba): code that only needs the search space imports
it without the engine.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.core.geometry import so3_grid
from napari_2dtm.errors import InputError

from .checkpoint import array_digest

__all__ = ["SearchConfig", "orientation_list", "defocus_offsets", "orientation_span",
           "scoring_config"]

#: config entries that do not change the scores: free to differ between a checkpoint and
#: the search resuming it, and between orientation shards
_RUNTIME_FIELDS = {"device", "batch_size", "progress_interval_s", "checkpoint_interval_s",
                   "orientation_range", "n_false_positives", "peak_radius_px"}


@dataclasses.dataclass
class SearchConfig:
    """Everything that defines a search. Lengths in Angstrom, angles in degrees."""

    ctf: CTFParams = dataclasses.field(default_factory=CTFParams)
    out_of_plane_step_deg: float = 2.5
    in_plane_step_deg: float = 1.5
    symmetry: str = "C1"
    defocus_range_a: float = 0.0
    defocus_step_a: float = 200.0
    pixel_size_range_a: float = 0.0
    pixel_size_step_a: float = 0.01
    high_res_limit_a: float | None = None
    n_false_positives: float = 1.0
    peak_radius_px: float | None = None  # None: 0.7 x the particle radius
    device: str = "auto"
    batch_size: int | None = None
    progress_interval_s: float = 1.0
    template_pad: int | None = None
    orientations: Any = None  # optional (n, 3) ZYZ degrees overriding the grid
    #: ``(start, stop)``: search only orientations ``start..stop-1`` of the list (one
    #: shard of a split search; merge shards with ``checkpoint.merge_partials``)
    orientation_range: tuple[int, int] | None = None
    #: seconds between checkpoints of a search that has a checkpoint path (0: only at
    #: cancel and at the end)
    checkpoint_interval_s: float = 300.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ctf"] = self.ctf.to_dict()
        if self.orientations is not None:
            d["orientations"] = f"explicit list of {len(np.asarray(self.orientations))}"
        if self.orientation_range is not None:
            d["orientation_range"] = [int(v) for v in self.orientation_range]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchConfig:
        d = dict(d)
        d["ctf"] = CTFParams(**d.get("ctf", {}))
        if isinstance(d.get("orientations"), str):
            d["orientations"] = None
        if d.get("orientation_range") is not None:
            d["orientation_range"] = tuple(int(v) for v in d["orientation_range"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def orientation_list(config: SearchConfig) -> np.ndarray:
    """``(n, 3)`` ZYZ Euler angles (deg) of a config: its explicit list or the SO(3) grid."""
    if config.orientations is not None:
        return np.asarray(config.orientations, dtype=np.float64).reshape(-1, 3)
    return so3_grid(config.out_of_plane_step_deg, config.in_plane_step_deg, config.symmetry)


def defocus_offsets(range_a: float, step_a: float) -> np.ndarray:
    """Symmetric offsets ``-n*step ... +n*step`` (0 always included), in Angstrom."""
    if range_a <= 0 or step_a <= 0:
        return np.zeros(1)
    n = int(math.floor(range_a / step_a + 1e-9))
    return np.arange(-n, n + 1) * float(step_a)


def orientation_span(config: SearchConfig, n_orientations: int) -> tuple[int, int]:
    """``(start, stop)`` of the orientations a config covers out of ``n_orientations``:
    all of them, or its ``orientation_range`` shard (checked to lie inside the list)."""
    if n_orientations < 1:
        raise InputError("the orientation list is empty")
    a, b = ((0, n_orientations) if config.orientation_range is None
            else (int(v) for v in config.orientation_range))
    if not 0 <= a < b <= n_orientations:
        raise InputError(f"orientation range {a}..{b} is not inside the {n_orientations} "
                         "orientations of the search (need 0 <= start < stop <= n)")
    return a, b


def scoring_config(config: SearchConfig) -> dict:
    """The config entries that define the scores, as JSON values (the ``config`` part of a
    search's identity): all but :data:`_RUNTIME_FIELDS`, an explicit orientation list
    replaced by the content hash of its ``(n, 3)`` float64 array."""
    d = config.to_dict()
    for k in _RUNTIME_FIELDS:
        d.pop(k, None)
    if config.orientations is not None:
        d["orientations"] = array_digest(orientation_list(config))
    return json.loads(json.dumps(d, default=str))
