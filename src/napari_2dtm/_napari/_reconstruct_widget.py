"""The "2DTM Reconstruct" dock widget: from reviewed hits to a 3D map, FSC and bias check.

A thin shell over :func:`napari_2dtm.jobs.reconstruct.run_reconstruct_from_hits`, the
job that ``napari-2dtm reconstruct`` runs: it gathers the hits (a points layer whose
features are the hits table: the search's ``hits [...]`` layer or the Hits widget's
review layer, accepted hits when any, else those shown and not rejected), the
micrograph layer, templates and settings; a :class:`~napari_2dtm._napari._job_panel.JobPanel`
runs the job in a worker thread with progress and cancel (the job reads the results
folder, the search's template and CTF there); and, in main-thread slots only, the
widget adds the map as a 3D image layer and docks the FSC plot
(:class:`~napari_2dtm._napari._plot_canvas.FSCPlot`). The job folder is the CLI's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_2dtm._napari._job_panel import JobPanel
from napari_2dtm._napari._layers import hits_from_layer
from napari_2dtm._napari._plot_canvas import FSCPlot
from napari_2dtm.errors import InputError
from napari_2dtm.reconstruct.fsc import resolution_text

if TYPE_CHECKING:
    import napari

FROM_SEARCH = "the search's template"
REFINE_MODES = {
    "full (to 0.2° / 0.1°, defocus 10 Å)": "full",
    "quick (one stage, 1.25° / 0.75°)": "quick",
    "none (poses as found)": "none",
}
SYMMETRIES = ["C1", "C2", "C3", "C4", "C6", "D2", "D3", "D7"]


class ReconstructWidget(QWidget):
    """Dock widget launching a reconstruction job from a hits points layer.

    Signals ``job_started``, ``progress_shown(JobProgress)`` and ``job_finished(str)``
    (``"done"``, ``"cancelled"`` or ``"error"``) let tests and other widgets follow.
    """

    job_started = Signal()
    progress_shown = Signal(object)
    job_finished = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result = None  # the last JobResult
        self.fsc_plot: FSCPlot | None = None
        self.map_layer = None

        self.panel = JobPanel(title="Job folder", run_text="Reconstruct", verb="Reconstruction")
        self.panel.expose_on(self)  # output_dir, overwrite, run_button, ..., status; Run -> self.run
        self.panel.started.connect(self.job_started)
        self.panel.progressed.connect(self._on_progress)
        self.panel.returned.connect(self._on_returned)
        self.panel.finished.connect(self.job_finished)

        layout = QVBoxLayout(self)
        layout.addWidget(self._build_input_box())
        layout.addWidget(self._build_settings_box())
        layout.addWidget(self.panel)
        layout.addStretch(1)
        events = self.viewer.layers.events
        events.inserted.connect(self._refresh_layers)
        events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ layout
    def _file_row(self, placeholder: str, caption: str):
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        edit = QLineEdit()
        edit.setPlaceholderText(placeholder)
        browse = QPushButton("…")
        browse.setMaximumWidth(30)

        def pick():
            path, _ = QFileDialog.getOpenFileName(
                self, caption, "", "Maps and models (*.mrc *.map *.pdb *.cif *.mmcif *.gz);;All (*)")
            if path:
                edit.setText(path)

        browse.clicked.connect(pick)
        row.addWidget(edit)
        row.addWidget(browse)
        holder = QWidget()
        holder.setLayout(row)
        return edit, holder

    def _build_input_box(self) -> QGroupBox:
        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.hits_combo = QComboBox()
        self.hits_combo.currentIndexChanged.connect(self._on_hits_changed)
        form.addRow("Hits", self.hits_combo)
        self.micrograph_combo = QComboBox()
        form.addRow("Micrograph", self.micrograph_combo)
        self.template_path, row = self._file_row(f"empty: {FROM_SEARCH}", "Template")
        form.addRow("Template", row)
        self.omit_path, row = self._file_row("optional: template without a region", "Omit template")
        form.addRow("Omit template", row)
        self.hits_info = QLabel("")
        self.hits_info.setWordWrap(True)
        form.addRow("", self.hits_info)
        return box

    def _build_settings_box(self) -> QGroupBox:
        box = QGroupBox("Refinement and reconstruction")
        form = QFormLayout(box)
        self.refine_mode = QComboBox()
        self.refine_mode.addItems(list(REFINE_MODES))
        form.addRow("Refinement", self.refine_mode)
        self.box_size = QSpinBox()
        self.box_size.setRange(0, 1024)
        self.box_size.setSingleStep(2)
        self.box_size.setSpecialValueText("auto (1.25 × template)")
        self.box_size.setSuffix(" px")
        form.addRow("Box", self.box_size)
        self.symmetry = QComboBox()
        self.symmetry.setEditable(True)
        self.symmetry.addItems(SYMMETRIES)
        form.addRow("Symmetry", self.symmetry)
        self.mask_mode = QComboBox()
        self.mask_mode.addItems(["auto", "template", "none"])
        self.mask_mode.setToolTip("Soft mask for the masked FSC: from the map, the template, or none")
        form.addRow("FSC mask", self.mask_mode)
        self.show_3d = QCheckBox("show the map alone in 3D when done")
        self.show_3d.setChecked(True)
        form.addRow("", self.show_3d)
        return box

    # ------------------------------------------------------------ layer lists
    def _points_layers(self):
        from napari.layers import Points

        out = []
        for ly in self.viewer.layers:
            if isinstance(ly, Points):
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
        # prefer the Hits widget's review layer, when there is one
        for i in range(self.hits_combo.count()):
            name = self.hits_combo.itemText(i)
            if name.startswith("hits review [") and not self.hits_combo.currentText().startswith(
                    "hits review ["):
                self.hits_combo.setCurrentIndex(i)
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
        info = layer.metadata.get("napari_2dtm", {})
        mic = info.get("micrograph_name")
        stem = Path(mic).stem if mic else None
        # the micrograph layer named in the hits layer's name: "hits [<micrograph>]"
        name = layer.name
        inner = name[name.find("[") + 1: name.rfind("]")] if "[" in name else None
        for cand in (inner, stem, mic):
            if cand and cand in self.viewer.layers and cand in [
                    self.micrograph_combo.itemText(i) for i in range(self.micrograph_combo.count())]:
                self.micrograph_combo.setCurrentText(cand)
                break
        n = len(hits_from_layer(layer))
        self.hits_info.setText(f"{n} hits to reconstruct from {layer.name}")
        folder = info.get("results_folder")
        if folder and not self.output_dir.text():
            self.panel.suggest_output(Path(folder).with_name(f"{Path(folder).name}_reconstruct"))

    # ------------------------------------------------------------- parameters
    def settings(self):
        from napari_2dtm.hits.refine import RefineStage
        from napari_2dtm.jobs.reconstruct import JobSettings

        mode = REFINE_MODES[self.refine_mode.currentText()]
        stages = (RefineStage(2.5, 1.25, 1.5, 0.75),) if mode == "quick" else None
        mask = self.mask_mode.currentText()
        return JobSettings(box=self.box_size.value() or None, refine=mode != "none",
                           stages=stages, symmetry=self.symmetry.currentText().strip() or "C1",
                           mask=None if mask == "none" else mask)

    def _inputs(self) -> dict:
        """Keyword arguments of :func:`~napari_2dtm.jobs.reconstruct.run_reconstruct_from_hits`
        from the layers and fields (:class:`InputError` when something is missing)."""
        layer = self.hits_layer()
        if layer is None:
            raise InputError("no hits layer (points with phi/theta/psi features)")
        hits = hits_from_layer(layer)
        if len(hits) == 0:
            raise InputError(f"{layer.name}: no hits to reconstruct")
        mic = self.micrograph_layer()
        if mic is None:
            raise InputError("no micrograph layer")
        info = layer.metadata.get("napari_2dtm", {})
        px = info.get("pixel_size_a") or mic.metadata.get("napari_2dtm", {}).get("pixel_size_a")
        if not px:
            raise InputError(f"{layer.name}: pixel size unknown")
        out = self.panel.out_dir()
        tmpl = self.template_path.text().strip() or None
        omit = self.omit_path.text().strip() or None
        for p in (tmpl, omit):
            if p and not Path(p).is_file():
                raise InputError(f"{p}: template file not found")
        return {
            "image": np.asarray(mic.data, dtype=np.float32),
            "pixel_size_a": float(px),
            "hits": hits,
            "out_dir": out,
            "micrograph_name": info.get("micrograph_name") or f"{mic.name}.mrc",
            "ctf": info.get("ctf"),
            "results_folder": info.get("results_folder"),
            "template": tmpl,
            "omit_template": omit,
            "settings": self.settings(),
            "overwrite": self.overwrite.isChecked(),
        }

    # -------------------------------------------------------------- run/cancel
    @property
    def running(self) -> bool:
        return self.panel.running

    def run(self):
        """Start the job in a worker thread (no-op while one runs)."""
        from napari_2dtm.jobs.reconstruct import run_reconstruct_from_hits

        if self.running:
            return
        try:
            kwargs = self._inputs()
        except Exception as e:  # any input problem is one line in the status
            self.panel.refuse(e)
            return
        self.result = None
        self.panel.start(run_reconstruct_from_hits,
                         status=f"Reconstructing from {len(kwargs['hits'])} hits…", **kwargs)

    def cancel(self):
        """Ask the job to stop (between hits / particle batches); nothing is written."""
        self.panel.cancel()

    # Everything below runs in the main thread.
    def _on_progress(self, p):
        self.panel.set_progress(p.fraction, f"{100 * p.fraction:.0f}% · {p.step}")
        self.panel.set_status(p.message)
        self.progress_shown.emit(p)

    def _on_returned(self, value):
        job, folder = value
        self.result = job
        self._show_result(job)
        s = job.summary
        m = s["map"]
        text = (f"{s['n_particles']} particles; FSC 0.143: "
                f"{resolution_text(m['resolution_a'], 1)} unmasked"
                + (f", {resolution_text(m['resolution_masked_a'], 1)} masked"
                   if m["resolution_masked_a"] else "")
                + " (not gold-standard: poses from the template)")
        if job.bias is not None:
            text += f"; template bias Ω = {job.bias.omega:.2f}"
        self.panel.set_status(f"{text}. Saved to {folder}")
        self.panel.set_progress(1.0, "done")

    def _show_result(self, res):
        px = res.reconstruction.pixel_size_a
        name = f"map [{Path(res.folder).name}]"
        layers = [(name, res.reconstruction.filtered, "bop orange")]
        if res.omit_reconstruction is not None:
            layers.append((f"omit map [{Path(res.folder).name}]",
                           res.omit_reconstruction.filtered, "bop blue"))
        for i, (lname, data, cmap) in enumerate(layers):
            if lname in self.viewer.layers:
                self.viewer.layers.remove(lname)
            data = np.asarray(data, np.float32)
            lo, hi = float(data.min()), float(data.max())
            layer = self.viewer.add_image(
                data, name=lname, scale=(px, px, px), units=("angstrom",) * 3, colormap=cmap,
                rendering="iso", iso_threshold=lo + 0.35 * (hi - lo), contrast_limits=(lo, hi),
                blending="translucent" if i == 0 else "additive", visible=i == 0,
                metadata={"napari_2dtm": {"kind": "reconstruction", "pixel_size_a": px,
                                          "job_folder": str(res.folder)}},
            )
            if i == 0:
                self.map_layer = layer
        self.viewer.layers.selection.active = self.map_layer
        if self.show_3d.isChecked():
            for ly in self.viewer.layers:
                if ly.ndim < 3:
                    ly.visible = False
            self.viewer.dims.ndisplay = 3
            try:  # fit the map, not the (hidden) micrograph around it
                self.viewer.reset_view(layers=[self.map_layer])
            except TypeError:  # napari < 0.7: no layers argument
                self.viewer.reset_view()
        self._dock_fsc(res)

    def _dock_fsc(self, res):
        if self.fsc_plot is None:
            self.fsc_plot = FSCPlot()
            self.viewer.window.add_dock_widget(self.fsc_plot, name="FSC (2DTM reconstruction)",
                                               area="right")
        self.fsc_plot.show_result(res)

    def closeEvent(self, event):  # noqa: N802 (Qt name)
        self.cancel()
        super().closeEvent(event)
