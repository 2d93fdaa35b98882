"""Choosing the hits a job works on: a points layer and its micrograph layer.

:class:`HitsPicker` is the "Input" box of a job widget that starts from reviewed hits
(the Refine Model widget's; the Reconstruct and Classify widgets keep their own copy of
the same rules for now). The rules: a hits layer is a points layer whose features carry
``x, y, phi, theta, psi``; the Hits widget's review layer is preferred when there is one;
the micrograph is the 2D image layer named in the hits layer's name
(``hits [<micrograph>]``) or its recorded micrograph name. :meth:`HitsPicker.job_inputs`
reads what every job of :mod:`napari_2dtm.jobs` needs from the layers (the image, pixel
size, hits, micrograph name, CTF and results folder), in the main thread, so the worker
never touches a layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from napari_2dtm._napari._layers import hits_from_layer
from napari_2dtm.errors import InputError

HIT_COLUMNS = {"x", "y", "phi", "theta", "psi"}


def file_row(parent, placeholder: str, caption: str, filters: str):
    """``(line edit, row widget)``: a path field with a browse button."""
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    browse = QPushButton("…")
    browse.setMaximumWidth(30)

    def pick():
        path, _ = QFileDialog.getOpenFileName(parent, caption, "", filters)
        if path:
            edit.setText(path)

    browse.clicked.connect(pick)
    row.addWidget(edit)
    row.addWidget(browse)
    holder = QWidget()
    holder.setLayout(row)
    return edit, holder


class HitsPicker(QGroupBox):
    """Hits and micrograph combo boxes kept in step with the viewer's layers; ``form`` takes
    the widget's further input rows. ``changed`` is emitted when the hits layer changes."""

    changed = Signal()

    def __init__(self, viewer, title: str = "Input", purpose: str = "to work on"):
        super().__init__(title)
        self.viewer = viewer
        self.purpose = purpose
        self.form = QFormLayout(self)
        self.hits_combo = QComboBox()
        self.hits_combo.currentIndexChanged.connect(self._on_hits_changed)
        self.form.addRow("Hits", self.hits_combo)
        self.micrograph_combo = QComboBox()
        self.form.addRow("Micrograph", self.micrograph_combo)
        self.hits_info = QLabel("")
        self.hits_info.setWordWrap(True)
        self.form.addRow("", self.hits_info)
        events = viewer.layers.events
        events.inserted.connect(self.refresh)
        events.removed.connect(self.refresh)

    def _points_layers(self):
        from napari.layers import Points

        return [ly for ly in self.viewer.layers if isinstance(ly, Points)
                and HIT_COLUMNS <= set(pd.DataFrame(ly.features).columns)]

    def _image_layers(self):
        from napari.layers import Image

        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and ly.ndim == 2
                and not ly.rgb and ly.metadata.get("napari_2dtm", {}).get("kind") != "map"]

    def refresh(self, *_):
        for combo, names in ((self.hits_combo, [ly.name for ly in self._points_layers()]),
                             (self.micrograph_combo, [ly.name for ly in self._image_layers()])):
            cur = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if cur in names:
                combo.setCurrentText(cur)
            combo.blockSignals(False)
        if not self.hits_combo.currentText().startswith("hits review ["):
            for i in range(self.hits_combo.count()):
                if self.hits_combo.itemText(i).startswith("hits review ["):
                    self.hits_combo.setCurrentIndex(i)
                    break
        self._on_hits_changed()

    def _layer(self, combo):
        name = combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def hits_layer(self):
        return self._layer(self.hits_combo)

    def micrograph_layer(self):
        return self._layer(self.micrograph_combo)

    def info(self) -> dict:
        """The hits layer's ``napari_2dtm`` metadata (empty without a layer)."""
        layer = self.hits_layer()
        return layer.metadata.get("napari_2dtm", {}) if layer is not None else {}

    def _on_hits_changed(self, *_):
        layer = self.hits_layer()
        if layer is None:
            self.hits_info.setText("no hits layer: run a search or open a results folder")
        else:
            mic = self.info().get("micrograph_name")
            name = layer.name
            inner = name[name.find("[") + 1: name.rfind("]")] if "[" in name else None
            mics = [self.micrograph_combo.itemText(i) for i in range(self.micrograph_combo.count())]
            for cand in (inner, Path(mic).stem if mic else None, mic):
                if cand and cand in mics:
                    self.micrograph_combo.setCurrentText(cand)
                    break
            self.hits_info.setText(f"{len(hits_from_layer(layer))} hits {self.purpose} "
                                   f"from {name}")
        self.changed.emit()

    def job_inputs(self) -> dict:
        """``image, pixel_size_a, hits, micrograph_name, ctf, results_folder`` from the
        layers (:class:`InputError` when something is missing)."""
        layer = self.hits_layer()
        if layer is None:
            raise InputError("no hits layer (points with x, y, phi, theta, psi features)")
        hits = hits_from_layer(layer)
        if len(hits) == 0:
            raise InputError(f"{layer.name}: no hits")
        mic = self.micrograph_layer()
        if mic is None:
            raise InputError("no micrograph layer")
        info = self.info()
        px = info.get("pixel_size_a") or mic.metadata.get("napari_2dtm", {}).get("pixel_size_a")
        if not px:
            raise InputError(f"{layer.name}: pixel size unknown")
        return {"image": np.asarray(mic.data, dtype=np.float32), "pixel_size_a": float(px),
                "hits": hits, "micrograph_name": info.get("micrograph_name") or f"{mic.name}.mrc",
                "ctf": info.get("ctf"), "results_folder": info.get("results_folder")}
