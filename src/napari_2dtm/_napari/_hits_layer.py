"""The layers of a hits review: the review's points layer and exclusion masks.

:class:`ReviewPoints` owns the points layer ``hits review [<micrograph>]``: every
candidate, extracted once; the threshold only toggles which are drawn, so the layer
follows the slider at once. Border colours give the status (``STATUS_RGBA``).

Exclusion masks are drawn by the user as Shapes or Labels at any scale and translation;
:func:`exclusion_from_layer` samples them onto the search grid, the grid the review's
candidates and saved mask live on.
"""

from __future__ import annotations

import numpy as np

from napari_2dtm.hits.review import sample_mask

from ._hits_views import STATUS_RGBA

BORDER_WIDTH = 0.07  # of the marker size


def status_colors(status: np.ndarray) -> np.ndarray:
    """``(n, 4)`` RGBA border colour of each candidate from its status."""
    out = np.empty((len(status), 4), np.float32)
    for s, rgba in STATUS_RGBA.items():
        out[status == s] = rgba
    return out


class ReviewPoints:
    """The review's points layer, added beside the search's ``hits_layer``.

    ``shown`` is the review's ``shown()`` (candidates at or above the threshold): when the
    user resizes the markers, the hidden ones must stay hidden.
    """

    def __init__(self, viewer, hits_layer, name: str, marker_size_px: float, shown):
        if name in viewer.layers:
            viewer.layers.remove(name)
        info = dict(hits_layer.metadata.get("napari_2dtm", {}))
        info["kind"] = "review"
        self.layer = viewer.add_points(
            np.zeros((0, 2)), name=name, scale=tuple(hits_layer.scale[-2:]),
            units=tuple(str(u) for u in hits_layer.units[-2:]),
            size=marker_size_px, symbol="disc",
            face_color="transparent", border_color="#00e5ff", border_width=BORDER_WIDTH,
            opacity=0.95, metadata={"napari_2dtm": info},
        )
        self._shown = shown
        self._marker_size = float(marker_size_px)  # px, of shown hits
        self._rgba = np.zeros((0, 4))  # border colour of each candidate, from its status
        self._setting_size = False  # this object itself is resizing the markers
        self.layer.events.size.connect(self._on_size_changed)

    def detach(self):
        """Stop following the layer's events (it was removed or replaced)."""
        try:
            self.layer.events.size.disconnect(self._on_size_changed)
        except (TypeError, ValueError, RuntimeError):
            pass

    def set_candidates(self, table):
        """Every candidate of ``table`` as a point, coloured by its status."""
        coords = table[["y", "x"]].to_numpy(float) if len(table) else np.zeros((0, 2))
        self.layer.data = coords
        self.layer.features = table
        self._rgba = status_colors(table["status"].to_numpy(object))
        self.layer.border_color = self._rgba

    def set_status(self, ids: list[int], status: str):
        self._rgba[ids] = STATUS_RGBA[status]
        self.layer.border_color = self._rgba

    def show(self, shown: np.ndarray):
        """Hide points below the threshold: ``shown``, and size 0.

        napari (0.9) ignores ``shown`` when every axis of the points is displayed (a
        2D viewer: its slicing fast path returns all indices), so hidden candidates
        also get size 0 and no border, which removes them from the drawing and from
        mouse picking.
        """
        self._setting_size = True
        try:
            self.layer.shown = shown
            self.layer.size = np.where(shown, self._marker_size, 0.0)
            self.layer.border_width = np.where(shown, BORDER_WIDTH, 0.0)
        finally:
            self._setting_size = False

    def center_view(self, viewer, hit_id: int):
        """Centre the viewer's camera on candidate ``hit_id``."""
        world = self.layer.data_to_world(self.layer.data[hit_id])
        camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
        camera.center = tuple(float(v) for v in world[-2:])

    def _on_size_changed(self, *_):
        if self._setting_size:
            return
        sizes = np.asarray(self.layer.size, float)
        if sizes.size and sizes.max() > 0:  # the user changed the marker size
            self._marker_size = float(sizes.max())
            self.show(self._shown())


def show_exclusion(viewer, exclusion: np.ndarray, micrograph_name: str,
                   pixel_size_a: float) -> str:
    """Show a saved exclusion mask (search grid) as a Labels layer; returns its name."""
    from napari.layers import Labels

    name = f"exclusion [{micrograph_name}]"
    if name in viewer.layers and isinstance(viewer.layers[name], Labels):
        viewer.layers[name].data = exclusion.astype(np.uint8)
    else:
        viewer.add_labels(exclusion.astype(np.uint8), name=name,
                          scale=(pixel_size_a, pixel_size_a), opacity=0.35)
    return name


def exclusion_from_layer(layer, result) -> np.ndarray:
    """``(ny, nx)`` bool on ``result``'s search grid: True inside the Shapes/Labels ``layer``."""
    from napari.layers import Shapes

    shape = result.maps["zscore"].shape
    px = result.pixel_size_a
    scale = np.asarray(layer.scale[-2:], float)
    translate = np.asarray(layer.translate[-2:], float)
    if isinstance(layer, Shapes):
        far = (np.asarray(shape) * px - translate) / scale
        labels = layer.to_labels(labels_shape=np.maximum(np.ceil(far).astype(int) + 1, 1))
    else:
        labels = np.asarray(layer.data)
    return sample_mask(labels, scale, translate, shape, px)


def hits_layer_names(viewer) -> list[str]:
    """Names of the viewer's search hits layers (points that know their results folder)."""
    from napari.layers import Points

    return [ly.name for ly in viewer.layers if isinstance(ly, Points)
            and ly.metadata.get("napari_2dtm", {}).get("kind") == "hits"
            and ly.metadata.get("napari_2dtm", {}).get("results_folder")]


def mask_layer_names(viewer) -> list[str]:
    """Names of the viewer's 2D Shapes and Labels layers (exclusion masks to choose from)."""
    from napari.layers import Labels, Shapes

    return [ly.name for ly in viewer.layers if isinstance(ly, (Shapes, Labels)) and ly.ndim == 2]
