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

Every value is checked when a config is made (:meth:`SearchConfig.validate`, run by
``__post_init__``), so the command line, the Python API, batch and the widgets, which all
build one, refuse a bad value before any work starts, with one line naming the field and
the command-line option (:data:`OPTION_NAMES`), e.g. ``defocus_step_a (--defocus-step)``.
What needs the micrograph (pixel sizes of the planes, the Nyquist limit, the template
box) is checked by :meth:`SearchConfig.check_against`, which the engine calls before it
prepares the image.

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
from napari_2dtm.core.geometry import so3_grid, symmetry_ranges
from napari_2dtm.errors import InputError

from .checkpoint import array_digest

__all__ = ["SearchConfig", "orientation_list", "defocus_offsets", "orientation_span",
           "scoring_config", "check_threshold", "OPTION_NAMES", "MAX_PLANES", "STRATEGIES"]

#: config entries that do not change the scores: free to differ between a checkpoint and
#: the search resuming it, and between orientation shards
_RUNTIME_FIELDS = {"device", "batch_size", "progress_interval_s", "checkpoint_interval_s",
                   "orientation_range", "n_false_positives", "peak_radius_px"}

#: config field -> the command-line option a user knows it by (named in every refusal)
OPTION_NAMES = {
    "out_of_plane_step_deg": "--out-of-plane-step", "in_plane_step_deg": "--in-plane-step",
    "symmetry": "--symmetry", "defocus_range_a": "--defocus-range",
    "defocus_step_a": "--defocus-step", "pixel_size_range_a": "--pixel-size-range",
    "pixel_size_step_a": "--pixel-size-step", "high_res_limit_a": "--high-res-limit",
    "n_false_positives": "--n-false-positives", "peak_radius_px": "--peak-radius",
    "device": "--device", "batch_size": "--batch-size",
    "checkpoint_interval_s": "--checkpoint-interval", "strategy": "--strategy",
}

#: most planes (defocus x pixel size) of one search: a range/step that asks for more is a
#: typo (the usual search has 1-30 planes), and its offsets would not fit in memory
MAX_PLANES = 1000

#: coarsest out-of-plane step (deg): beyond 90 the grid is one theta ring, one orientation
MAX_OUT_OF_PLANE_STEP_DEG = 90.0

_DEVICES = ("auto", "cpu", "gpu")

#: search strategies (:mod:`napari_2dtm.search.fast` for ``fast``)
STRATEGIES = ("exhaustive", "fast")


def _label(field: str) -> str:
    """``field (--option)``: the API user's name and the command line's, in one."""
    opt = OPTION_NAMES.get(field)
    return f"{field} ({opt})" if opt else field


def _number(field: str, value, *, minimum: float | None = None, above: float | None = None,
            maximum: float | None = None) -> float:
    """``value`` as a finite float in range, or an :class:`InputError` naming the field."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{_label(field)} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{_label(field)} must be a finite number, got {value!r}")
    if above is not None and not v > above:
        raise InputError(f"{_label(field)} must be > {above:g}, got {v:g}")
    if minimum is not None and v < minimum:
        raise InputError(f"{_label(field)} must be >= {minimum:g}, got {v:g}")
    if maximum is not None and v > maximum:
        raise InputError(f"{_label(field)} must be <= {maximum:g}, got {v:g}")
    return v


def _count(field: str, value, minimum: int) -> int:
    """``value`` as a whole number >= ``minimum`` (booleans and fractions refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if not (isinstance(value, (float, np.floating)) and float(value).is_integer()):
            raise InputError(f"{_label(field)} must be a whole number, got {value!r}")
    if int(value) < minimum:
        raise InputError(f"{_label(field)} must be >= {minimum}, got {int(value)}")
    return int(value)


def _n_offsets(range_a: float, step_a: float) -> int:
    """How many planes :func:`defocus_offsets` makes, counted without making them."""
    if range_a <= 0:
        return 1
    return 2 * int(math.floor(range_a / step_a + 1e-9)) + 1


def check_threshold(threshold) -> float | None:
    """A detection threshold given by the user (``--threshold``): None or a finite number."""
    if threshold is None:
        return None
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise InputError(f"threshold (--threshold) must be a number, got {threshold!r}") from None
    if not math.isfinite(t):
        raise InputError(f"threshold (--threshold) must be a finite number, got {threshold!r}")
    return t


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
    #: ``exhaustive`` (every orientation and plane at full resolution) or ``fast``
    #: (coarse-to-fine with gradient refinement: :mod:`napari_2dtm.search.fast`)
    strategy: str = "exhaustive"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Refuse a bad value (:class:`InputError` naming the field and its option).

        Ranges are >= 0 and need a step > 0 when > 0; steps, limits, counts and the
        expected number of false positives are > 0; nothing is NaN or infinite; at most
        :data:`MAX_PLANES` planes; an out-of-plane step of at most 90 deg (one
        orientation otherwise); a known symmetry and device.
        """
        if not isinstance(self.ctf, CTFParams):
            raise InputError(f"ctf must be a CTFParams, got {type(self.ctf).__name__}")
        _number("out_of_plane_step_deg", self.out_of_plane_step_deg, above=0,
                maximum=MAX_OUT_OF_PLANE_STEP_DEG)
        _number("in_plane_step_deg", self.in_plane_step_deg, above=0, maximum=360)
        try:
            symmetry_ranges(self.symmetry)
        except (ValueError, TypeError, IndexError) as e:
            raise InputError(f"{_label('symmetry')}: {e}") from None
        planes = 1
        for rng, step in (("defocus_range_a", "defocus_step_a"),
                          ("pixel_size_range_a", "pixel_size_step_a")):
            r = _number(rng, getattr(self, rng), minimum=0)
            st = _number(step, getattr(self, step))
            if r > 0 and st <= 0:
                raise InputError(f"{_label(step)} must be > 0 with a {_label(rng)} of {r:g}, "
                                 f"got {st:g}")
            planes *= _n_offsets(r, st)
        if planes > MAX_PLANES:
            raise InputError(
                f"{_label('defocus_range_a')} / {_label('pixel_size_range_a')} and their steps "
                f"give {planes} planes, more than {MAX_PLANES}: use a smaller range or a larger step")
        if self.high_res_limit_a is not None:
            _number("high_res_limit_a", self.high_res_limit_a, above=0)
        _number("n_false_positives", self.n_false_positives, above=0)
        if self.peak_radius_px is not None:
            _number("peak_radius_px", self.peak_radius_px, above=0)
        if str(self.device).lower() not in _DEVICES:
            raise InputError(f"{_label('device')} must be one of {', '.join(_DEVICES)}, "
                             f"got {self.device!r}")
        if self.batch_size is not None:
            _count("batch_size", self.batch_size, 1)
        _number("progress_interval_s", self.progress_interval_s, minimum=0)
        if self.template_pad is not None:
            _count("template_pad", self.template_pad, 1)
        _number("checkpoint_interval_s", self.checkpoint_interval_s, minimum=0)
        if self.strategy not in STRATEGIES:
            raise InputError(f"{_label('strategy')} must be one of {', '.join(STRATEGIES)}, "
                             f"got {self.strategy!r}")
        if self.orientations is not None:
            try:
                ori = np.asarray(self.orientations, dtype=np.float64)
            except (TypeError, ValueError):
                raise InputError(f"{_label('orientations')} must be numbers (n, 3) in degrees") from None
            if ori.size == 0 or ori.size % 3 or not np.all(np.isfinite(ori)):
                raise InputError(f"{_label('orientations')} must be a non-empty (n, 3) array of "
                                 "finite ZYZ angles in degrees")
        if self.orientation_range is not None:
            try:
                a, b = (int(v) for v in self.orientation_range)
            except (TypeError, ValueError):
                raise InputError(f"{_label('orientation_range')} must be (start, stop), got "
                                 f"{self.orientation_range!r}") from None
            if not 0 <= a < b:
                raise InputError(f"{_label('orientation_range')} must have 0 <= start < stop, "
                                 f"got {a}..{b}")

    def check_against(self, pixel_size_a: float, template_box_a: float | None = None) -> None:
        """What needs the micrograph: every searched pixel size > 0, a resolution limit no
        finer than Nyquist (``2 x pixel_size_a``) and no coarser than the template box.

        Called by the engine before it prepares the image, so a bad value costs no search.
        """
        px = float(pixel_size_a)
        n = _n_offsets(self.pixel_size_range_a, self.pixel_size_step_a) // 2
        smallest = px - n * float(self.pixel_size_step_a)
        if smallest <= 0:
            raise InputError(
                f"{_label('pixel_size_range_a')} {self.pixel_size_range_a:g} with "
                f"{_label('pixel_size_step_a')} {self.pixel_size_step_a:g} searches pixel sizes "
                f"down to {smallest:g} A (<= 0) around {px:g} A: use a range below the pixel size")
        lim = self.high_res_limit_a
        if lim is None:
            return
        if lim < 2.0 * px * (1 - 1e-6):
            raise InputError(f"{_label('high_res_limit_a')} {lim:g} A is finer than Nyquist "
                             f"(2 x the pixel size {px:g} A = {2 * px:g} A)")
        if template_box_a is not None and lim > template_box_a:
            raise InputError(f"{_label('high_res_limit_a')} {lim:g} A is larger than the "
                             f"template box ({template_box_a:g} A): nothing left to match")

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
    if d.get("strategy") == "exhaustive":
        d.pop("strategy")  # the identity of every search made before strategies existed
    if config.orientations is not None:
        d["orientations"] = array_digest(orientation_list(config))
    return json.loads(json.dumps(d, default=str))


def checked_micrograph(image, pixel_size_a: float, source=None) -> np.ndarray:
    """The micrograph as float32 ``(ny, nx)``, or one :class:`InputError` naming
    ``source`` (the file, when known): not 2D, complex (float32 would drop the imaginary
    part without a word), NaN or infinite values, a pixel size that is not > 0 A, or a
    blank image (every pixel equal: nothing to search)."""
    name = source or "micrograph"
    img = np.asarray(image)
    if img.ndim != 2:
        raise InputError(f"{name}: micrograph must be 2D, got shape {img.shape}")
    if np.iscomplexobj(img):
        raise InputError(f"{name}: micrograph is complex-valued; give a real image")
    img = np.asarray(img, np.float32)  # no copy when already float32
    if not np.all(np.isfinite(img)):
        raise InputError(f"{name}: micrograph contains NaN or infinite values")
    if not (pixel_size_a and np.isfinite(pixel_size_a) and pixel_size_a > 0):
        raise InputError(f"{name}: micrograph pixel size must be > 0 Angstrom, got {pixel_size_a}")
    if float(img.min()) == float(img.max()):
        raise InputError(f"{name}: every pixel is {float(img.min()):g}; nothing to search")
    return img
