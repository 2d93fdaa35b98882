"""The "2DTM Reconstruct" dock widget: from reviewed hits to a 3D map, FSC and bias check.

A thin shell over :func:`napari_2dtm.jobs.reconstruct.run_job`, the job that
``napari-2dtm reconstruct`` runs: it gathers the hits (a points layer whose features
are the hits table: the search's ``hits [...]`` layer or the Hits widget's review
layer, accepted hits when any, else those shown and not rejected), the micrograph
layer, templates and settings; runs the job in a worker thread with progress and
cancel; and, in main-thread slots only, adds the map as a 3D image layer and docks the
FSC plot (a matplotlib canvas). The job folder is the CLI's.
"""

from __future__ import annotations

import threading
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
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_2dtm.jobs.search import one_line

if TYPE_CHECKING:
    import napari

FROM_SEARCH = "the search's template"
REFINE_MODES = {
    "full (to 0.2° / 0.1°, defocus 10 Å)": "full",
    "quick (one stage, 1.25° / 0.75°)": "quick",
    "none (poses as found)": "none",
}
SYMMETRIES = ["C1", "C2", "C3", "C4", "C6", "D2", "D3", "D7"]


class ReconstructError(Exception):
    """A job failed (message: one line). Not a RuntimeError: see ``_jobs.search_job``."""


def hits_from_layer(layer) -> pd.DataFrame:
    """The hits a points layer holds: accepted ones if any were accepted, else every
    point shown and not rejected."""
    t = pd.DataFrame(layer.features).reset_index(drop=True)
    keep = np.ones(len(t), bool)
    shown = np.asarray(getattr(layer, "shown", np.ones(len(t), bool)), bool)
    if len(shown) == len(t) and shown.any():
        keep &= shown
    if "status" in t:
        status = t["status"].astype(str).to_numpy()
        if (status == "accepted").any():
            keep = status == "accepted"
        else:
            keep &= status != "rejected"
    return t[keep].reset_index(drop=True)


def _job(inputs: dict, cancel: threading.Event, emit):
    """Worker body (no Qt): build the inputs, run the job; None when cancelled."""
    from napari_2dtm.core.ctf import CTFParams
    from napari_2dtm.jobs.reconstruct import JobCancelled, MicrographInput, run_job
    from napari_2dtm.search.results import read_results

    try:
        result = None
        folder = inputs.get("results_folder")
        if folder and Path(folder, "search.json").exists():
            result = read_results(folder)
        template = inputs["template"]
        if template is None:
            if result is None:
                raise ReconstructError("no template: choose a map or model file")
            from napari_2dtm.hits.inspection import template_for_result

            template = template_for_result(result)
        ctf = inputs["ctf"]
        if ctf is None and result is not None:
            ctf = result.metadata.get("config", {}).get("ctf")
        if not ctf:
            raise ReconstructError("the hits layer records no CTF (open a results folder)")
        mic = MicrographInput(inputs["image"], inputs["pixel_size_a"], CTFParams(**ctf),
                              inputs["hits"], inputs["micrograph_name"], result)
        return run_job([mic], template, inputs["out_dir"], inputs["settings"],
                       omit_template=inputs["omit_template"], overwrite=inputs["overwrite"],
                       progress=emit, cancel=cancel)
    except JobCancelled:
        return None
    except ReconstructError:
        raise
    except Exception as e:  # one line for the status label, never a RuntimeError
        raise ReconstructError(one_line(e)) from e


class FSCPlot(QWidget):
    """A docked matplotlib canvas with the FSC curves of a job."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.2, 3.0), dpi=100, facecolor="#262930")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.canvas)
        self.ax = None

    def show_result(self, job_result):
        from napari_2dtm.jobs.reconstruct import draw_fsc

        self.figure.clear()
        ax = self.figure.add_subplot(111, facecolor="#262930")
        draw_fsc(ax, job_result.reconstruction, job_result.omit_reconstruction)
        for item in [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(),
                     *ax.get_yticklabels()]:
            item.set_color("#d6d6d6")
        for sp in ax.spines.values():
            sp.set_color("#888888")
        ax.tick_params(colors="#d6d6d6")
        leg = ax.get_legend()
        if leg is not None:
            leg.get_frame().set_facecolor("#3b3f4a")
            for text in leg.get_texts():
                text.set_color("#e8e8e8")
        self.figure.tight_layout()
        self.canvas.draw()
        self.ax = ax


class ReconstructWidget(QWidget):
    """Dock widget launching a reconstruction job from a hits points layer.

    Signals ``job_started``, ``progress_shown(JobProgress)`` and ``job_finished(str)``
    (``"done"``, ``"cancelled"`` or ``"error"``) let tests and other widgets follow.
    """

    job_started = Signal()
    progress_shown = Signal(object)
    job_finished = Signal(str)
    _progress = Signal(object)  # emitted from the worker thread, delivered queued

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self._cancel = threading.Event()
        self._state = None
        self.result = None
        self.fsc_plot: FSCPlot | None = None
        self.map_layer = None
        self._progress.connect(self._on_progress)

        layout = QVBoxLayout(self)
        layout.addWidget(self._build_input_box())
        layout.addWidget(self._build_settings_box())
        layout.addWidget(self._build_output_box())
        layout.addWidget(self._build_run_box())
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

    def _build_output_box(self) -> QGroupBox:
        box = QGroupBox("Job folder")
        form = QFormLayout(box)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        self.output_dir = QLineEdit()
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_output)
        row.addWidget(self.output_dir)
        row.addWidget(browse)
        holder = QWidget()
        holder.setLayout(row)
        form.addRow("Folder", holder)
        self.overwrite = QCheckBox("replace an existing folder")
        form.addRow("", self.overwrite)
        return box

    def _build_run_box(self) -> QWidget:
        holder = QWidget()
        v = QVBoxLayout(holder)
        v.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.run_button = QPushButton("Reconstruct")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        v.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        v.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        v.addWidget(self.status)
        return holder

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
            base = Path(folder).with_name(f"{Path(folder).name}_reconstruct")
            out, i = base, 1
            while out.exists():
                i += 1
                out = base.with_name(f"{base.name}_{i}")
            self.output_dir.setText(str(out))

    def _browse_output(self):
        path = QFileDialog.getExistingDirectory(self, "Job folder")
        if path:
            self.output_dir.setText(path)

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
        from napari_2dtm.errors import InputError

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
        out = self.output_dir.text().strip()
        if not out:
            raise InputError("no job folder given")
        if Path(out).exists() and not self.overwrite.isChecked():
            raise InputError(f"{out}: exists; tick 'replace' or choose another folder")
        tmpl = self.template_path.text().strip() or None
        omit = self.omit_path.text().strip() or None
        for p in (tmpl, omit):
            if p and not Path(p).is_file():
                raise InputError(f"{p}: template file not found")
        return {
            "image": np.asarray(mic.data, dtype=np.float32),
            "pixel_size_a": float(px),
            "hits": hits,
            "ctf": info.get("ctf"),
            "micrograph_name": info.get("micrograph_name") or f"{mic.name}.mrc",
            "results_folder": info.get("results_folder"),
            "template": tmpl,
            "omit_template": omit,
            "out_dir": out,
            "overwrite": self.overwrite.isChecked(),
            "settings": self.settings(),
        }

    # -------------------------------------------------------------- run/cancel
    @property
    def running(self) -> bool:
        return self._worker is not None

    def run(self):
        """Start the job in a worker thread (no-op while one runs)."""
        from napari.qt.threading import create_worker

        if self.running:
            return
        try:
            inputs = self._inputs()
        except Exception as e:
            self._set_status(f"Cannot start: {one_line(e)}", error=True)
            self.job_finished.emit("error")
            return
        self._cancel = threading.Event()
        self._state = None
        self.result = None
        worker = create_worker(_job, inputs, self._cancel, self._progress.emit,
                               _ignore_errors=True)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self._set_status(f"Reconstructing from {len(inputs['hits'])} hits…")
        self.job_started.emit()
        worker.start()

    def cancel(self):
        """Ask the job to stop (between hits / particle batches); nothing is written."""
        if not self.running:
            return
        self._cancel.set()
        self.cancel_button.setEnabled(False)
        self._set_status("Cancelling…")

    # Everything below runs in the main thread.
    def _on_progress(self, p):
        if not self.running:
            return
        self.progress.setValue(int(round(1000 * p.fraction)))
        self.progress.setFormat(f"{100 * p.fraction:.0f}% · {p.step}")
        self._set_status(p.message)
        self.progress_shown.emit(p)

    def _on_returned(self, value):
        if value is None:
            self._state = "cancelled"
            return
        self.result = value
        self._show_result(value)
        s = value.summary
        m = s["map"]
        text = (f"{s['n_particles']} particles; FSC 0.143: {m['resolution_a']:.1f} Å unmasked"
                + (f", {m['resolution_masked_a']:.1f} Å masked" if m["resolution_masked_a"] else "")
                + " (not gold-standard: poses from the template)")
        if value.bias is not None:
            text += f"; template bias Ω = {value.bias.omega:.2f}"
        self._set_status(f"{text}. Saved to {value.folder}")
        self.progress.setValue(1000)
        self.progress.setFormat("done")
        self._state = "done"

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

    def _on_errored(self, exc):
        self._set_status(f"Reconstruction failed: {one_line(exc)}", error=True)
        self.progress.setFormat("failed")
        self._state = "error"

    def _on_finished(self):
        state = self._state or ("cancelled" if self._cancel.is_set() else "error")
        self._worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if state == "cancelled":
            self.progress.setFormat("cancelled")
            self._set_status("Reconstruction cancelled; nothing was written.")
        self.job_finished.emit(state)

    def _set_status(self, text, error=False):
        self.status.setText(text)
        self.status.setStyleSheet("color: #ff6b6b;" if error else "")

    def closeEvent(self, event):  # noqa: N802 (Qt name)
        self.cancel()
        super().closeEvent(event)
