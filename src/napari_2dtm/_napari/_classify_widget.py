"""The "2DTM Classify" dock widget: in situ classification of hits with several templates.

A door to :func:`napari_2dtm.jobs.classify.run_classify` (the CLI's job, so the same
folder comes out): it gathers a hits points layer (features x, y, phi, theta, psi,
defocus) and the micrograph layer, a table of templates with a reference and the priors
(:class:`~napari_2dtm._napari._classify_templates.TemplateTable`), the local grid and a
confidence; a :class:`~napari_2dtm._napari._job_panel.JobPanel` runs the job with
progress and cancel. In main-thread slots only, it shows the hits as a points layer
coloured by class (points below the posterior threshold hidden), the log2-ratio
histogram or scatter with the fitted Gaussians
(:class:`~napari_2dtm._napari._classify_classes.ClassesBox`), the counts per class, and
exports per-class STAR files at the threshold shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_2dtm._napari._classify_classes import ClassesBox
from napari_2dtm._napari._classify_templates import TemplateTable
from napari_2dtm._napari._job_panel import JobPanel
from napari_2dtm._napari._layers import hits_from_layer
from napari_2dtm.classify.folder import write_class_stars
from napari_2dtm.errors import InputError, one_line
from napari_2dtm.jobs.classify import ClassifyInput, run_classify
from napari_2dtm.plots import CLASS_COLORS, UNASSIGNED_COLOR

if TYPE_CHECKING:
    import napari


def _spin(box, lo, hi, value, decimals=None, prefix="", suffix=""):
    """A spin box with its range, value, decimals, prefix and suffix set."""
    box.setRange(lo, hi)
    if decimals is not None:
        box.setDecimals(decimals)
    box.setValue(value)
    box.setPrefix(prefix)
    box.setSuffix(suffix)
    return box


def _class_colors(res) -> np.ndarray:
    """RGBA per hit: the palette colour of its most probable class (grey for none)."""
    from matplotlib.colors import to_rgba

    palette = [to_rgba(CLASS_COLORS[i % len(CLASS_COLORS)]) for i in range(len(res.names))]
    grey = to_rgba(UNASSIGNED_COLOR)
    return np.array([palette[b] if b >= 0 else grey for b in res.assign(0.0)], dtype=float)


class ClassifyWidget(QWidget):
    """Dock widget running an in situ classification of a hits layer.

    Signals ``job_started``, ``progress_shown(ClassifyProgress)`` (a tuple ``(stage,
    done, total, ...)``) and ``job_finished(str)`` (``"done"``, ``"cancelled"`` or
    ``"error"``) let tests and other widgets follow. After a job, ``result`` is the
    :class:`~napari_2dtm.classify.result.ClassificationResult`, ``job_folder`` its
    folder and ``classes_layer`` the points.
    """

    job_started = Signal()
    progress_shown = Signal(object)
    job_finished = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result = None
        self.job_folder: Path | None = None
        self.classes_layer = None
        self._layer_info: dict = {}

        self.template_table = TemplateTable()
        t = self.template_table
        self.templates, self.reference, self.prior_mode = t.templates, t.reference, t.prior_mode
        self.add_template, self.set_templates = t.add_template, t.set_templates
        self.template_rows = t.template_rows
        self.panel = JobPanel(title="Job folder", run_text="Classify", verb="Classification")
        p = self.panel
        p.expose_on(self)  # output_dir, overwrite, run_button, ..., status; Run -> self.run
        p.started.connect(self.job_started.emit)
        p.progressed.connect(self._on_progress)
        p.returned.connect(self._on_returned)
        p.finished.connect(self.job_finished.emit)
        self.classes_box = c = ClassesBox()
        self.confidence, self.counts_label, self.plot = c.confidence, c.counts_label, c.plot
        self.export_button = c.export_button
        self.confidence.valueChanged.connect(self._apply_threshold)
        self.export_button.clicked.connect(self._browse_export)

        layout = QVBoxLayout(self)
        layout.addWidget(self._build_input_box())
        layout.addWidget(self.template_table)
        layout.addWidget(self._build_grid_box())
        layout.addWidget(self.panel)
        layout.addWidget(self.classes_box)
        layout.addStretch(1)
        events = self.viewer.layers.events
        events.inserted.connect(self._refresh_layers)
        events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ layout
    def _build_input_box(self) -> QGroupBox:
        box = QGroupBox("Hits")
        form = QFormLayout(box)
        self.hits_combo = QComboBox()
        self.hits_combo.currentIndexChanged.connect(self._on_hits_changed)
        form.addRow("Hits", self.hits_combo)
        self.micrograph_combo = QComboBox()
        form.addRow("Micrograph", self.micrograph_combo)
        self.hits_info = QLabel("")
        self.hits_info.setWordWrap(True)
        form.addRow("", self.hits_info)
        return box

    def _build_grid_box(self) -> QGroupBox:
        box = QGroupBox("Local scoring grid (the same for every template)")
        form = QFormLayout(box)
        self.angular_step = _spin(QDoubleSpinBox(), 0.1, 20.0, 1.5, 2, suffix="°")
        self.angular_step.setToolTip("Angular step; offsets within one step around each pose")
        form.addRow("Angular step", self.angular_step)
        self.shift = _spin(QSpinBox(), 0, 5, 1, prefix="± ", suffix=" px")
        form.addRow("Position", self.shift)
        self.defocus_range = _spin(QDoubleSpinBox(), 0, 5000, 100, 0, prefix="± ", suffix=" Å")
        self.defocus_range.setSingleStep(50)
        self.defocus_range.setSpecialValueText("none")
        form.addRow("Defocus", self.defocus_range)
        self.defocus_step = _spin(QDoubleSpinBox(), 1, 2000, 100, 0, suffix=" Å")
        form.addRow("Defocus step", self.defocus_step)
        return box

    # ------------------------------------------------------------ layer lists
    def _points_layers(self):
        from napari.layers import Points

        out = []
        for ly in self.viewer.layers:
            if isinstance(ly, Points) and ly.metadata.get("napari_2dtm", {}).get("kind") != "classes":
                cols = set(pd.DataFrame(ly.features).columns)
                if {"x", "y", "phi", "theta", "psi"} <= cols:
                    out.append(ly)
        return out

    def _image_layers(self):
        from napari.layers import Image

        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and ly.ndim == 2
                and not ly.rgb and ly.metadata.get("napari_2dtm", {}).get("kind") != "map"]

    def _refresh_layers(self, *_):
        for combo, names in ((self.hits_combo, [ly.name for ly in self._points_layers()]),
                             (self.micrograph_combo, [ly.name for ly in self._image_layers()])):
            cur = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if cur in names:
                combo.setCurrentText(cur)
            combo.blockSignals(False)
        self._on_hits_changed()

    def hits_layer(self):
        name = self.hits_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def micrograph_layer(self):
        name = self.micrograph_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _on_hits_changed(self, *_):
        layer = self.hits_layer()
        if layer is None:
            self.hits_info.setText("no hits layer: run a search or open a results folder")
            return
        name = layer.name
        inner = name[name.find("[") + 1: name.rfind("]")] if "[" in name else None
        mics = [self.micrograph_combo.itemText(i) for i in range(self.micrograph_combo.count())]
        if inner in mics:
            self.micrograph_combo.setCurrentText(inner)
        self.hits_info.setText(f"{len(hits_from_layer(layer))} hits from {name}")
        folder = layer.metadata.get("napari_2dtm", {}).get("results_folder")
        if folder and not self.output_dir.text():
            self.panel.suggest_output(Path(folder).with_name(f"{Path(folder).name}_classification"))

    # ------------------------------------------------------------- parameters
    def _inputs(self) -> tuple[ClassifyInput, dict, dict]:
        """The job's micrograph and keyword arguments, and what the classes layer needs
        (read in the main thread)."""
        layer = self.hits_layer()
        if layer is None:
            raise InputError("no hits layer (points with x, y, phi, theta, psi features)")
        hits = hits_from_layer(layer)
        if len(hits) == 0:
            raise InputError(f"{layer.name}: no hits to classify")
        mic = self.micrograph_layer()
        if mic is None:
            raise InputError("no micrograph layer")
        info = layer.metadata.get("napari_2dtm", {})
        px = info.get("pixel_size_a") or mic.metadata.get("napari_2dtm", {}).get("pixel_size_a")
        if not px:
            raise InputError(f"{layer.name}: pixel size unknown")
        out = self.panel.out_dir()
        folder = info.get("results_folder")
        name = info.get("micrograph_name") or f"{mic.name}.mrc"
        micrograph = ClassifyInput(np.asarray(mic.data, dtype=np.float32), float(px), hits,
                                   info.get("ctf"), name=name, result=folder,
                                   source=str(folder) if folder else layer.name)
        kwargs = dict(self.template_rows(), out_dir=out, overwrite=self.overwrite.isChecked(),
                      confidence=float(self.confidence.value()),
                      grid=dict(angular_step_deg=self.angular_step.value(),
                                shift_px=self.shift.value(),
                                defocus_range_a=self.defocus_range.value(),
                                defocus_step_a=self.defocus_step.value()),
                      params={"hits_layer": layer.name})
        layer_info = {
            "layer_scale": tuple(float(s) for s in layer.scale[-2:]),
            "layer_units": tuple(str(u) for u in layer.units[-2:]),
            "micrograph_layer": mic.name, "micrograph_name": name, "pixel_size_a": float(px),
            "ctf": info.get("ctf"),
            "marker_size": float(np.mean(layer.size)) if len(layer.data) else 30.0,
        }
        return micrograph, kwargs, layer_info

    # -------------------------------------------------------------- run/cancel
    @property
    def running(self) -> bool:
        return self.panel.running

    def run(self):
        """Start the job in a worker thread (no-op while one runs)."""
        if self.running:
            return
        try:
            micrograph, kwargs, layer_info = self._inputs()
        except Exception as e:
            self.panel.refuse(e)
            return
        status = f"Scoring {len(micrograph.hits)} hits with {len(kwargs['templates'])} templates…"
        if self.panel.start(run_classify, micrograph, status=status, **kwargs):
            self._layer_info = layer_info

    def cancel(self):
        """Ask the job to stop (between chunks of hits); nothing is written."""
        self.panel.cancel()

    # Everything below runs in the main thread.
    def _on_progress(self, p):
        if p.stage == "score":
            f = p.done / max(p.total, 1)
            self.panel.set_progress(f, f"{100 * f:.0f}% · {p.done}/{p.total} scores")
        elif p.stage == "templates":
            self.panel.set_progress(0.0, "preparing templates…" if p.done < p.total else "scoring…")
            if p.warnings:
                self.panel.set_status(f"Note: {p.warnings[0]}")
        self.progress_shown.emit(p)

    def _on_returned(self, value):
        res, folder = value
        self.result = res
        self.job_folder = Path(folder)
        self.confidence.blockSignals(True)
        self.confidence.setValue(res.confidence)
        self.confidence.blockSignals(False)
        self._show_classes(res)
        self.panel.set_progress(1.0, "done")
        self.export_button.setEnabled(True)
        note = f" Note: {res.warnings[0]}" if res.warnings else ""
        self.panel.set_status(f"Saved to {folder}.{note}")

    def _show_classes(self, res):
        info = self._layer_info
        name = f"classes [{info.get('micrograph_layer', 'micrograph')}]"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        table = res.hits.copy()
        best = res.assign(0.0)
        table["best_class"] = [res.names[b] if b >= 0 else "" for b in best]
        coords = table[["y", "x"]].to_numpy(float) if len(table) else np.zeros((0, 2))
        colors = _class_colors(res)
        meta = {"kind": "classes", "pixel_size_a": info.get("pixel_size_a"),
                "micrograph_name": info.get("micrograph_name"), "ctf": info.get("ctf"),
                "job_folder": str(self.job_folder), "classes": list(res.names)}
        self.classes_layer = self.viewer.add_points(
            coords, name=name, scale=info.get("layer_scale", (1.0, 1.0)),
            units=info.get("layer_units", ("pixel", "pixel")), features=table,
            size=info.get("marker_size", 30.0), symbol="disc", face_color="transparent",
            border_color=colors, border_width=0.14, opacity=0.95,
            metadata={"napari_2dtm": meta},
        )
        self._apply_threshold()

    def _apply_threshold(self, *_):
        res = self.result
        if res is None:
            return
        conf = float(self.confidence.value())
        layer = self.classes_layer
        if layer is not None and layer.name in self.viewer.layers:
            post = res.hits["posterior"].to_numpy(float)
            layer.shown = np.nan_to_num(post, nan=-1.0) >= conf - 1e-12
            a = res.assign(conf)
            layer.features["class"] = np.where(a >= 0, a + 1, 0)
            layer.features["class_name"] = [res.names[i] if i >= 0 else "" for i in a]
        self.classes_box.show_result(res, conf)

    def export_stars(self, folder, overwrite: bool = False) -> list[Path]:
        """Write ``class_<k>_<name>.star`` at the current threshold into ``folder``."""
        info = self._layer_info
        return write_class_stars(self.result, folder, float(self.confidence.value()),
                                 micrograph_name=info.get("micrograph_name") or "micrograph.mrc",
                                 pixel_size_a=info.get("pixel_size_a"), ctf=info.get("ctf"),
                                 overwrite=overwrite)

    def _browse_export(self):
        if self.result is None:
            return
        path = QFileDialog.getExistingDirectory(self, "Folder for the per-class STAR files")
        if not path:
            return
        try:
            paths = self.export_stars(path)
        except Exception as e:
            self.panel.set_status(f"Export failed: {one_line(e)}", error=True)
            return
        self.panel.set_status(f"Wrote {len(paths)} STAR files to {path}")

    def closeEvent(self, event):  # noqa: N802 (Qt name)
        self.cancel()
        super().closeEvent(event)
