"""Inspection of one hit: its micrograph box beside the template at its pose.

For a hit ``(x, y, phi, theta, psi, defocus)`` :class:`HitInspector` returns

* ``box``: the **whitened** micrograph (:func:`napari_2dtm.core.filters.prepare_image`,
  the image the search correlated) cut around the hit, the hit at pixel
  ``(d // 2, d // 2)``;
* ``model``: the template projected at the hit's pose, edge-mean subtracted, filtered
  by the hit's ``CTF x whitening`` and scaled to unit energy exactly as the engine
  does (shared code: :class:`napari_2dtm.hits.local.LocalScorer`), multiplied by the hit's
  correlation ``cc`` so that it is the part of the box the template explains;
* ``difference = box - model``, and the numbers: ``cc`` (on the search's scale: it
  equals the search MIP at that pixel when the pose is the search's), and the Pearson
  correlation of box and model over the shown box.

Projections follow the engine's convention (docs/conventions.md): the particle centre
is at the box centre, ``x`` = column, ``y`` = row, ZYZ Euler angles in degrees; the
correlation at a pixel is ``sum_u image(pixel + u) * template(u)``, so the template
drawn centred on the hit is what the search matched.

No Qt, no napari: the Hits widget draws these arrays; scripts can too. (The module is
``inspection``, not ``inspect``: that name shadowed the standard library's module.)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.core.pose_refine import extract_patch
from napari_2dtm.errors import InputError
from napari_2dtm.templates.load import load_template
from napari_2dtm.templates.template import Template

from .local import LocalScorer

__all__ = ["Inspection", "HitInspector", "cut_box", "template_for_result"]


def cut_box(image: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """``(size, size)`` float32 cut of ``image`` with pixel ``(row, col)`` at
    ``(size // 2, size // 2)``; parts outside the image are zero (the whitened
    micrograph's mean)."""
    return extract_patch(image, row, col, size, np.float32)


@dataclasses.dataclass
class Inspection:
    """One hit seen three ways (all ``(d, d)`` float32, hit at ``(d // 2, d // 2)``).

    box: whitened micrograph; model: template at the pose x CTF x whitening, scaled by
    ``cc``; difference: ``box - model``. cc: normalised cross-correlation at the hit
    (the search's scale); pearson: correlation coefficient of box and model over the
    ``(d, d)`` box; row, col: search-grid pixel; pixel_size_a: search pixel size.
    """

    box: np.ndarray
    model: np.ndarray
    difference: np.ndarray
    cc: float
    pearson: float
    row: int
    col: int
    pixel_size_a: float


class HitInspector:
    """Cuts boxes and projects the template for hits of one micrograph.

    image: ``(ny, nx)`` micrograph at ``pixel_size_a`` (input pixels); template: a
    :class:`~napari_2dtm.templates.template.Template`, map/model path or array (at the micrograph
    pixel size); ctf: the micrograph's :class:`~napari_2dtm.core.ctf.CTFParams` (defoci of
    hits are relative to its mean); high_res_limit_a: the search's (same search pixel
    size and whitening); view_px: side of the shown box in search pixels (default 1.25
    x the template box).
    """

    def __init__(self, image, pixel_size_a: float, template, ctf: CTFParams,
                 high_res_limit_a: float | None = None, view_px: int | None = None):
        self.scorer = LocalScorer(image, pixel_size_a, ctf, high_res_limit_a)
        self.template = load_template(template, pixel_size_a=pixel_size_a)
        self.ctf = ctf
        self._slot = self.scorer._slot(self.template)
        h = self._slot.box
        self.view_px = int(view_px or 2 * round(0.625 * h))

    @classmethod
    def for_result(cls, result, image, template=None, view_px: int | None = None) -> HitInspector:
        """Inspector with the CTF and resolution limit of a search result."""
        from napari_2dtm.search.results import ResultsFolder  # noqa: PLC0415

        view = ResultsFolder.of(result)
        if template is None:
            template = template_for_result(result)
        return cls(image, result.input_pixel_size_a, template, view.ctf,
                   view.high_res_limit_a, view_px)

    @property
    def whitened(self) -> np.ndarray:
        """``(ny, nx)`` whitened unit-variance micrograph at the search pixel size."""
        return self.scorer.image

    @property
    def pixel_size_a(self) -> float:
        """Search pixel size (Å)."""
        return self.scorer.pixel_size_a

    def template_at_pose(self, phi: float, theta: float, psi: float,
                         defocus_offset_a: float = 0.0) -> np.ndarray:
        """``(P, P)`` filtered unit-energy template, centre at ``P // 2`` (P: padded box
        holding the CTF delocalisation; the engine's normalisation)."""
        size = self.scorer._padded_size(self._slot.box, [defocus_offset_a])
        t = self.scorer._templates(self._slot, [[phi, theta, psi]], [defocus_offset_a], size)
        return t[0, 0]

    def inspect(self, hit) -> Inspection:
        """Inspect one hit: a mapping or row with ``x``, ``y`` (input pixels), ``phi``,
        ``theta``, ``psi`` (deg) and optionally ``defocus_a`` (absolute mean defocus, Å)."""
        get = hit.get if hasattr(hit, "get") else (lambda k, d=None: getattr(hit, k, d))
        try:
            x, y = float(get("x")), float(get("y"))
            phi, theta, psi = float(get("phi")), float(get("theta")), float(get("psi"))
        except (TypeError, ValueError):
            raise InputError("a hit needs x, y, phi, theta and psi") from None
        df = get("defocus_a", None)
        offset = float(df) - self.ctf.defocus_mean_a if df is not None and math.isfinite(
            float(df)) else 0.0
        row, col = self.scorer.search_position(x, y)
        t = self.template_at_pose(phi, theta, psi, offset)
        size = t.shape[0]
        patch = cut_box(self.whitened, row, col, size)
        cc = float(np.dot(t.ravel().astype(np.float64), patch.ravel().astype(np.float64)))
        d = min(self.view_px, size)
        o = size // 2 - d // 2
        box = patch[o : o + d, o : o + d]
        model = (cc * t[o : o + d, o : o + d]).astype(np.float32)
        b0, m0 = box - box.mean(), model - model.mean()
        den = float(np.sqrt(np.sum(b0 * b0) * np.sum(m0 * m0)))
        pearson = float(np.sum(b0 * m0) / den) if den > 0 else 0.0
        return Inspection(box=box, model=model, difference=(box - model).astype(np.float32),
                          cc=cc, pearson=pearson, row=row, col=col,
                          pixel_size_a=self.pixel_size_a)


def template_for_result(result) -> Template:
    """The search's template, rebuilt from ``search.json`` (a map file, or a model
    converted with the recorded parameters). Raises :class:`InputError` when the
    search used an in-memory array (open the template as a 3D layer instead)."""
    from napari_2dtm.search.results import ResultsFolder  # noqa: PLC0415

    info = ResultsFolder.of(result).template
    source = str(info.source or "")
    params = info.params
    if not info.is_file:
        raise InputError(
            f"template {source or '(unknown)'!r} of the search is not a file on this "
            "computer; give the template (a 3D image layer or a map/model file)"
        )
    px = float(info.pixel_size_a or params.get("pixel_size_a") or result.input_pixel_size_a)
    kwargs = {}
    if params.get("kind") == "atomic_model":
        for key in ("box", "bfactor_a2", "use_model_bfactors", "keep_hydrogens", "keep_waters",
                    "selection", "dose_e_per_a2", "voltage_kv"):
            if params.get(key) is not None:
                kwargs[key] = params[key]
        center = params.get("center")
        kwargs["center"] = center if isinstance(center, str) else params.get("center_a", "mass")
    elif params.get("map_pixel_size_a"):
        # the map's voxel size the search used (the header's or the user's override)
        kwargs["template_pixel_size_a"] = float(params["map_pixel_size_a"])
    return load_template(source, pixel_size_a=px, **kwargs)
