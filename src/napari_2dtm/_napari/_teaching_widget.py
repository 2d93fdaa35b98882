"""Teaching mode in napari: the layers and caption of :mod:`napari_2dtm.jobs.teaching`.

The Search widget runs :func:`napari_2dtm.jobs.teaching.run_teaching` (which saves the
same results folder as a normal search); :class:`TeachingView` turns each
:class:`~napari_2dtm.jobs.teaching.TeachingStep` into layers laid out beside the
micrograph, in Angstrom (a 2 x 2 grid, which suits the canvas beside a dock)::

    [ micrograph, live hits ]                [ CC of this orientation ]
    [ projection | CTF x whitening | filtered ] [ MIP so far ]

and the step's caption as the canvas text overlay. The projection strip is magnified
to the micrograph's width. Layer names start with ``teaching:``. Main thread only.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from ._layers import full_limits

LAYERS = {
    "whitened": "teaching: whitened micrograph",
    "projection": "teaching: projection | CTF x whitening | filtered",
    "cc": "teaching: cross-correlation, this orientation",
    "mip": "teaching: MIP so far",
    "hits": "teaching: hits so far",
    "labels": "teaching: labels",
}


def truth_table(viewer, micrograph_name: str) -> pd.DataFrame | None:
    """The ground truth of a sample (its hidden points layer), or None."""
    name = f"ground truth [{micrograph_name}]"
    if name not in viewer.layers:
        return None
    feats = viewer.layers[name].features
    return pd.DataFrame(feats) if {"x", "y"} <= set(feats.columns) and len(feats) else None


def _unit(a: np.ndarray) -> np.ndarray:
    """Scaled to max |a| = 1, so three different quantities share one gray scale."""
    m = float(np.max(np.abs(a))) if a.size else 0.0
    return (a / m if m > 0 else a).astype(np.float32)


class TeachingView:
    """Shows teaching steps in ``viewer`` beside the micrograph layer ``micrograph_name``."""

    def __init__(self, viewer, micrograph_name: str):
        self.viewer = viewer
        self.mic_name = micrograph_name
        mic = viewer.layers[micrograph_name]
        ny, nx = mic.data.shape[-2:]
        self.mic_px = float(mic.scale[-1])
        self.width_a = nx * self.mic_px
        self.height_a = ny * self.mic_px
        self.gap_a = 0.06 * self.width_a
        self.layers: dict = {}
        self.n_shown = 0
        self._fitted = False

    # ----------------------------------------------------------------- layout
    def _origin(self, panel: str) -> tuple[float, float]:
        right = self.width_a + self.gap_a
        below = self.height_a + self.gap_a
        return {
            "whitened": (0.0, 0.0),
            "cc": (0.0, right),
            "mip": (below, right),
            "projection": (below, 0.0),
        }[panel]

    def _image(self, key: str, data: np.ndarray, px: float, colormap: str, limits=None):
        data = np.asarray(data, np.float32)
        lo, hi = limits or full_limits(data)
        layer = self.layers.get(key)
        if layer is None or layer not in self.viewer.layers:
            name = LAYERS[key]
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            layer = self.viewer.add_image(
                data, name=name, scale=(px, px), translate=self._origin(key),
                units=("angstrom", "angstrom"), colormap=colormap, contrast_limits=(lo, hi),
                metadata={"napari_2dtm": {"kind": "teaching", "pixel_size_a": px}},
            )
            self.layers[key] = layer
            self._raise_labels()
            return layer
        layer.data = data
        layer.contrast_limits_range = (lo, hi)
        layer.contrast_limits = (lo, hi)
        return layer

    def _raise_labels(self):
        """Keep the titles above panels created after them."""
        layer = self.layers.get("labels")
        if layer is not None and layer in self.viewer.layers:
            layers = self.viewer.layers
            layers.move(layers.index(layer), len(layers))

    def _labels(self):
        """Titles above each panel (a points layer's text)."""
        if "labels" in self.layers:
            return
        rows = [("whitened", "micrograph"), ("cc", "CC of this orientation"),
                ("projection", "projection | CTF | filtered"), ("mip", "MIP so far")]
        coords = np.array([self._origin(k) for k, _ in rows]) - [0.005 * self.height_a, 0.0]
        self.layers["labels"] = self.viewer.add_points(
            coords, name=LAYERS["labels"], size=0.0, face_color="transparent",
            border_width=0, features={"label": [r[1] for r in rows]},
            text={"string": "{label}", "anchor": "upper_left", "color": "white", "size": 8},
            units=("angstrom", "angstrom"),
        )

    def _hits(self, hits: pd.DataFrame | None):
        coords = (np.zeros((0, 2)) if hits is None or not len(hits)
                  else hits[["y", "x"]].to_numpy(float))
        layer = self.layers.get("hits")
        if layer is None or layer not in self.viewer.layers:
            self.layers["hits"] = self.viewer.add_points(
                coords, name=LAYERS["hits"], scale=(self.mic_px, self.mic_px),
                units=("angstrom", "angstrom"), size=0.15 * self.width_a / self.mic_px,
                symbol="disc", face_color="transparent", border_color="#00ff66",
                border_width=0.1,
            )
        else:
            layer.data = coords

    def caption(self, text: str):
        overlay = self.viewer.text_overlay
        overlay.text = "\n".join(textwrap.fill(p, 72) for p in text.splitlines())
        overlay.position = "top_left"
        overlay.font_size = 8
        overlay.box = True
        overlay.visible = True

    def _fit(self):
        """Fit all panels, leaving room at the top for the caption."""
        self.viewer.reset_view()
        self.viewer.camera.zoom *= 0.85
        c = self.viewer.camera.center
        self.viewer.camera.center = (*c[:-2], c[-2] - 0.08 * self.height_a, c[-1])

    # ------------------------------------------------------------------- show
    def show(self, step):
        """Update the layers and the caption for one :class:`TeachingStep`."""
        px = step.pixel_size_a
        if step.whitened is not None:
            self._image("whitened", step.whitened, px, "gray",
                        limits=tuple(np.percentile(step.whitened, [0.5, 99.5])))
        if step.projection is not None:
            h = step.projection.shape[0]
            sep = np.zeros((h, max(2, h // 16)), np.float32)
            montage = np.hstack([_unit(step.projection), sep, _unit(step.ctf), sep,
                                 _unit(step.filtered)])
            # magnified to the micrograph's width (its own panel: nothing to overlay)
            self._image("projection", montage, self.width_a / montage.shape[1], "gray",
                        limits=(-1.0, 1.0))
            self._labels()
        if step.cc is not None:
            self._image("cc", step.cc, px, "magma")
        if step.mip is not None:
            self._image("mip", step.mip, px, "viridis")
        if step.stage in ("search", "done"):
            if "whitened" in self.layers:
                self.layers["whitened"].visible = False  # the micrograph panel shows the hits
            self._hits(step.hits)
        self.caption(step.caption)
        self.n_shown += 1
        if not self._fitted and "mip" in self.layers:
            self._fitted = True
            self._fit()
        elif self.n_shown == 1:
            self.viewer.reset_view()
