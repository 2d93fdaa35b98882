"""Docking the "2DTM Hits" widget: the doors that lead to a review, and its layer names.

A review opens three ways, all ending in :func:`review_hits`: a search finished in the
Search widget (:func:`review_when_finished`), a results folder opened by the reader
(:func:`dock_after_open`, scheduled because the reader has no viewer), and a micrograph
opened from the Project widget. None of them imports the widget class: napari docks it
by its manifest name, so there is one widget per viewer whichever door was used.

Layer names: a search shows its hits as ``hits [<micrograph>]``; the review's own
points layer is ``hits review [<micrograph>]`` (:func:`review_layer_name`).
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QTimer

from napari_2dtm.errors import one_line


def review_layer_name(micrograph_name: str) -> str:
    return f"hits review [{micrograph_name}]"


def micrograph_name_of(hits_layer_name: str) -> str:
    """The micrograph's name in a ``hits [...]`` or ``hits review [...]`` layer name."""
    name = hits_layer_name
    for prefix in ("hits review [", "hits ["):
        if name.startswith(prefix) and name.endswith("]"):
            return name[len(prefix):-1]
    return name


def review_hits(viewer, hits_layer_name: str, result=None, folder=None, template=None):
    """Dock the Hits widget (or reuse it) and review ``hits_layer_name``; returns it."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Hits")
    widget.refresh_layer_choices()
    widget.set_source(viewer.layers[hits_layer_name], result=result, folder=folder,
                      template=template)
    return widget


def review_when_finished(search_widget, hits_layer_name: str, result, folder) -> None:
    """Dock the Hits widget on a search's results once its ``search_finished`` has fired.

    Deferred by a tenth of a second, so that the search's "done" state is painted
    before the review's one-off set-up (first matplotlib import, layers, histogram:
    about a second) runs; nothing happens if the viewer was closed meanwhile. A failure is
    appended to the Search widget's status line (the search itself succeeded).
    """
    viewer = search_widget.viewer

    def _dock():
        if hits_layer_name not in viewer.layers:
            return
        try:
            review_hits(viewer, hits_layer_name, result=result, folder=folder)
        except Exception as e:
            panel = search_widget.panel
            try:
                panel.set_status(f"{panel.status.text()} (review not opened: {one_line(e)})",
                                 error=True)
            except RuntimeError:  # the Search widget was closed meanwhile
                pass

    def _on_finished(state):
        search_widget.search_finished.disconnect(_on_finished)
        if state == "done":
            QTimer.singleShot(100, _dock)

    search_widget.search_finished.connect(_on_finished)


def dock_after_open(folder, hits_layer_name: str) -> None:
    """Once napari has added a results folder's layers, dock the Hits widget on them.

    Scheduled by the reader (which has no viewer): runs at the next event-loop turn
    in the current viewer; does nothing without one or when the layer is gone.
    """

    def _dock():
        import napari

        viewer = napari.current_viewer()
        if viewer is None or hits_layer_name not in viewer.layers:
            return
        info = viewer.layers[hits_layer_name].metadata.get("napari_2dtm", {})
        if Path(info.get("results_folder") or "") != Path(folder):
            return
        review_hits(viewer, hits_layer_name)

    QTimer.singleShot(0, _dock)
