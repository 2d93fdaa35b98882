"""The "2DTM Classify" dock widget: in situ classification of hits with several templates.

A thin shell over :mod:`napari_2dtm.classify.mixture` (the API ``napari-2dtm classify`` uses):
it gathers a hits points layer (features x, y, phi, theta, psi, defocus), the
micrograph layer, a table of templates (map or model file, atom selection, prior) with a
reference, the local grid and a confidence; runs scoring and the mixture fit in a worker
thread with progress and cancel; and, in main-thread slots only, shows the hits as a
points layer coloured by class (points below the posterior threshold hidden), the
log2-ratio histogram or scatter with the fitted Gaussians (a matplotlib canvas), the
counts per class, and exports per-class STAR files. The job folder is the CLI's.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_2dtm.jobs.search import one_line

if TYPE_CHECKING:
    import napari

PRIOR_MODES = {"learned from the data": "learn", "uniform (fixed)": "uniform",
               "fixed (table)": "table"}
TEMPLATE_COLUMNS = ("Name", "File", "Selection", "Prior")
_COL = {c: i for i, c in enumerate(TEMPLATE_COLUMNS)}


class ClassifyError(Exception):
    """A job failed (message: one line). Not a RuntimeError: see ``_jobs.search_job``."""


def _hits_table(layer) -> pd.DataFrame:
    """The hits of a points layer: those shown (and not rejected in a review)."""
    t = pd.DataFrame(layer.features).reset_index(drop=True)
    keep = np.ones(len(t), bool)
    shown = np.asarray(getattr(layer, "shown", np.ones(len(t), bool)), bool)
    if len(shown) == len(t) and shown.any():
        keep &= shown
    if "status" in t:
        st = t["status"].astype(str).to_numpy()
        keep = (st == "accepted") if (st == "accepted").any() else keep & (st != "rejected")
    return t[keep].reset_index(drop=True)


def _job(inputs: dict, cancel: threading.Event, emit):
    """Worker body (no Qt): templates, scores, fit, job folder. None when cancelled."""
    from napari_2dtm.classify.mixture import (
        ClassificationCancelled,
        check_templates,
        classify_scores,
        load_template_set,
        score_hits,
        write_classification,
    )
    from napari_2dtm.core.ctf import CTFParams

    try:
        result = None
        folder = inputs.get("results_folder")
        if folder and Path(folder, "search.json").exists():
            from napari_2dtm.search.results import read_results

            result = read_results(folder)
        ctf = inputs["ctf"]
        if not ctf and result is not None:
            ctf = result.metadata.get("config", {}).get("ctf")
        if not ctf:
            raise ClassifyError("the hits layer records no CTF (open a search's results folder)")
        ctf = CTFParams(**ctf)
        t = inputs["templates"]
        emit(("templates", 0, 1))
        ts = load_template_set(t["files"], inputs["pixel_size_a"], names=t["names"],
                               selections=t["selections"], reference=t["reference"])
        warnings = check_templates(ts)
        scored = score_hits(inputs["image"], inputs["pixel_size_a"], ts, inputs["hits"], ctf,
                            result=result, progress=lambda d, n: emit(("score", d, n)),
                            cancel=cancel.is_set, **inputs["grid"])
        res = classify_scores(scored, ts.names, ts.reference, priors=inputs["priors"],
                              confidence=inputs["confidence"])
        res.warnings[:0] = warnings
        res.params.update(scoring=inputs["grid"], pixel_size_a=inputs["pixel_size_a"],
                          ctf=ctf.to_dict(), template_sources=[str(f) for f in t["files"]],
                          template_selections=t["selections"], hits_layer=inputs["layer_name"])
        if cancel.is_set():
            return None
        out = write_classification(res, inputs["out_dir"], overwrite=inputs["overwrite"],
                                   micrograph_name=inputs["micrograph_name"],
                                   pixel_size_a=inputs["pixel_size_a"], ctf=ctf.to_dict())
        return res, out
    except ClassificationCancelled:
        return None
    except ClassifyError:
        raise
    except Exception as e:  # one line for the status label, never a RuntimeError
        raise ClassifyError(one_line(e)) from e


class FeaturePlot(QWidget):
    """A matplotlib canvas: log2 ratios with the fitted Gaussians (dark theme)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.2, 3.0), dpi=100, facecolor="#262930")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(230)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.ax = None

    def show_result(self, res, confidence: float):
        from napari_2dtm.classify.mixture import draw_features

        self.figure.clear()
        ax = self.figure.add_subplot(111, facecolor="#262930")
        draw_features(ax, res, confidence, text_color="#d6d6d6")
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


class ClassifyWidget(QWidget):
    """Dock widget running an in situ classification of a hits layer.

    Signals ``job_started``, ``progress_shown((stage, done, total))`` and
    ``job_finished(str)`` (``"done"``, ``"cancelled"`` or ``"error"``) let tests and
    other widgets follow. After a job, ``result`` is the
    :class:`~napari_2dtm.classify.mixture.ClassificationResult`, ``classes_layer`` the points.
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
        self.job_folder: Path | None = None
        self.classes_layer = None
        self._layer_info: dict = {}
        self._progress.connect(self._on_progress)

        layout = QVBoxLayout(self)
        layout.addWidget(self._build_input_box())
        layout.addWidget(self._build_templates_box())
        layout.addWidget(self._build_grid_box())
        layout.addWidget(self._build_output_box())
        layout.addWidget(self._build_run_box())
        layout.addWidget(self._build_results_box())
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

    def _build_templates_box(self) -> QGroupBox:
        box = QGroupBox("Templates (one per state, sharing one origin)")
        v = QVBoxLayout(box)
        self.templates = QTableWidget(0, len(TEMPLATE_COLUMNS))
        self.templates.setHorizontalHeaderLabels(list(TEMPLATE_COLUMNS))
        hdr = self.templates.horizontalHeader()
        hdr.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        hdr.setSectionResizeMode(_COL["File"], QHeaderView.ResizeMode.Stretch)
        self.templates.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.templates.verticalHeader().setVisible(False)
        self.templates.setMinimumHeight(90)
        self.templates.setToolTip(
            "Models (.pdb/.cif) are converted with the model origin kept, so selections of "
            "one file share it ('not chain B'); maps must be aligned. Prior: used when the "
            "priors are fixed (table).")
        self.templates.itemChanged.connect(self._refresh_reference)
        v.addWidget(self.templates)
        row = QHBoxLayout()
        add = QPushButton("Add…")
        add.clicked.connect(self._browse_template)
        remove = QPushButton("Remove")
        remove.clicked.connect(self._remove_template)
        row.addWidget(add)
        row.addWidget(remove)
        row.addStretch(1)
        v.addLayout(row)
        form = QFormLayout()
        self.reference = QComboBox()
        self.reference.setToolTip("Reference template: numerator of log2(SNR_ref / SNR_k)")
        form.addRow("Reference", self.reference)
        self.prior_mode = QComboBox()
        self.prior_mode.addItems(list(PRIOR_MODES))
        form.addRow("Priors", self.prior_mode)
        v.addLayout(form)
        return box

    def _build_grid_box(self) -> QGroupBox:
        box = QGroupBox("Local scoring grid (the same for every template)")
        form = QFormLayout(box)
        self.angular_step = QDoubleSpinBox()
        self.angular_step.setRange(0.1, 20.0)
        self.angular_step.setDecimals(2)
        self.angular_step.setValue(1.5)
        self.angular_step.setSuffix("°")
        self.angular_step.setToolTip("Angular step; offsets within one step around each pose")
        form.addRow("Angular step", self.angular_step)
        self.shift = QSpinBox()
        self.shift.setRange(0, 5)
        self.shift.setValue(1)
        self.shift.setPrefix("± ")
        self.shift.setSuffix(" px")
        form.addRow("Position", self.shift)
        self.defocus_range = QDoubleSpinBox()
        self.defocus_range.setRange(0, 5000)
        self.defocus_range.setDecimals(0)
        self.defocus_range.setSingleStep(50)
        self.defocus_range.setValue(100)
        self.defocus_range.setPrefix("± ")
        self.defocus_range.setSuffix(" Å")
        self.defocus_range.setSpecialValueText("none")
        form.addRow("Defocus", self.defocus_range)
        self.defocus_step = QDoubleSpinBox()
        self.defocus_step.setRange(1, 2000)
        self.defocus_step.setDecimals(0)
        self.defocus_step.setValue(100)
        self.defocus_step.setSuffix(" Å")
        form.addRow("Defocus step", self.defocus_step)
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
        self.run_button = QPushButton("Classify")
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

    def _build_results_box(self) -> QGroupBox:
        box = QGroupBox("Classes")
        v = QVBoxLayout(box)
        row = QHBoxLayout()
        row.addWidget(QLabel("Posterior ≥"))
        self.confidence = QDoubleSpinBox()
        self.confidence.setRange(0.5, 1.0)
        self.confidence.setDecimals(3)
        self.confidence.setSingleStep(0.01)
        self.confidence.setValue(0.5)
        self.confidence.setKeyboardTracking(False)
        self.confidence.setToolTip("Hits whose most probable class has a lower posterior are "
                                   "hidden and left unassigned")
        self.confidence.valueChanged.connect(self._apply_threshold)
        row.addWidget(self.confidence)
        for level in (0.5, 0.95):
            b = QPushButton(f"{100 * level:g} %")
            b.setMaximumWidth(52)
            b.clicked.connect(lambda _=False, lv=level: self.confidence.setValue(lv))
            row.addWidget(b)
        row.addStretch(1)
        v.addLayout(row)
        self.counts_label = QLabel("")
        self.counts_label.setWordWrap(True)
        self.counts_label.setTextFormat(Qt.TextFormat.RichText)
        v.addWidget(self.counts_label)
        self.plot = FeaturePlot()
        v.addWidget(self.plot)
        self.export_button = QPushButton("Export per-class STAR…")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self._browse_export)
        v.addWidget(self.export_button)
        return box

    # ------------------------------------------------------------ templates
    def add_template(self, path, selection: str = "", name: str | None = None,
                     prior: float | None = None):
        """Append a template row (file, atom selection, name, prior for fixed priors)."""
        from napari_2dtm.classify.mixture import _default_name

        r = self.templates.rowCount()
        self.templates.blockSignals(True)
        self.templates.insertRow(r)
        values = {"Name": name or _default_name(path, selection or None), "File": str(path),
                  "Selection": selection or "", "Prior": "" if prior is None else f"{prior:g}"}
        for col, val in values.items():
            self.templates.setItem(r, _COL[col], QTableWidgetItem(val))
        self.templates.blockSignals(False)
        self._refresh_reference()

    def set_templates(self, rows):
        """Replace the table by rows of ``(path, selection, name, prior)`` (last ones optional)."""
        self.templates.setRowCount(0)
        for row in rows:
            row = list(row) + [None] * (4 - len(row))
            self.add_template(row[0], row[1] or "", row[2], row[3])

    def _browse_template(self):
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Template maps or models", "",
            "Maps and models (*.mrc *.map *.pdb *.cif *.mmcif *.ent *.gz);;All files (*)")
        for p in paths:
            self.add_template(p)

    def _remove_template(self):
        rows = sorted({i.row() for i in self.templates.selectedIndexes()}, reverse=True)
        for r in rows or [self.templates.rowCount() - 1]:
            if r >= 0:
                self.templates.removeRow(r)
        self._refresh_reference()

    def _cell(self, r: int, col: str) -> str:
        item = self.templates.item(r, _COL[col])
        return item.text().strip() if item is not None else ""

    def _refresh_reference(self, *_):
        cur = self.reference.currentText()
        names = [self._cell(r, "Name") for r in range(self.templates.rowCount())]
        self.reference.blockSignals(True)
        self.reference.clear()
        self.reference.addItems(names)
        if cur in names:
            self.reference.setCurrentText(cur)
        self.reference.blockSignals(False)

    def template_rows(self) -> dict:
        """Files, selections, names, reference and fixed priors from the table."""
        from napari_2dtm.errors import InputError

        n = self.templates.rowCount()
        if n < 2:
            raise InputError("add two or more templates (one per state)")
        files = [self._cell(r, "File") for r in range(n)]
        for f in files:
            if not f or not Path(f).is_file():
                raise InputError(f"{f or '(empty)'}: template file not found")
        names = [self._cell(r, "Name") or f"template{r + 1}" for r in range(n)]
        sel = [self._cell(r, "Selection") or None for r in range(n)]
        mode = PRIOR_MODES[self.prior_mode.currentText()]
        priors = mode
        if mode == "table":
            try:
                priors = [float(self._cell(r, "Prior")) for r in range(n)]
            except ValueError:
                raise InputError("fixed priors: give a number in the Prior column of every "
                                 "template") from None
        ref = self.reference.currentIndex()
        return {"files": files, "names": names, "selections": sel,
                "reference": max(ref, 0), "priors": priors}

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
        self.hits_info.setText(f"{len(_hits_table(layer))} hits from {name}")
        folder = layer.metadata.get("napari_2dtm", {}).get("results_folder")
        if folder and not self.output_dir.text():
            base = Path(folder).with_name(f"{Path(folder).name}_classification")
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
    def _inputs(self) -> dict:
        from napari_2dtm.errors import InputError

        layer = self.hits_layer()
        if layer is None:
            raise InputError("no hits layer (points with x, y, phi, theta, psi features)")
        hits = _hits_table(layer)
        if len(hits) == 0:
            raise InputError(f"{layer.name}: no hits to classify")
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
        t = self.template_rows()
        return {
            "image": np.asarray(mic.data, dtype=np.float32),
            "pixel_size_a": float(px),
            "hits": hits,
            "ctf": info.get("ctf"),
            "micrograph_name": info.get("micrograph_name") or f"{mic.name}.mrc",
            "results_folder": info.get("results_folder"),
            "templates": t,
            "priors": t["priors"],
            "confidence": float(self.confidence.value()),
            "grid": dict(angular_step_deg=self.angular_step.value(), shift_px=self.shift.value(),
                         defocus_range_a=self.defocus_range.value(),
                         defocus_step_a=self.defocus_step.value()),
            "out_dir": out,
            "overwrite": self.overwrite.isChecked(),
            "layer_name": layer.name,
            "layer_scale": tuple(float(s) for s in layer.scale[-2:]),
            "layer_units": tuple(str(u) for u in layer.units[-2:]),
            "micrograph_layer": mic.name,
            "marker_size": float(np.mean(layer.size)) if len(layer.data) else 30.0,
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
        self._layer_info = {k: inputs[k] for k in ("layer_scale", "layer_units", "micrograph_layer",
                                                    "marker_size", "micrograph_name", "pixel_size_a",
                                                    "ctf")}
        worker = create_worker(_job, inputs, self._cancel, self._progress.emit,
                               _ignore_errors=True)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.progress.setFormat("preparing templates…")
        self._set_status(f"Scoring {len(inputs['hits'])} hits with "
                         f"{len(inputs['templates']['files'])} templates…")
        self.job_started.emit()
        worker.start()

    def cancel(self):
        """Ask the job to stop (between chunks of hits); nothing is written."""
        if not self.running:
            return
        self._cancel.set()
        self.cancel_button.setEnabled(False)
        self._set_status("Cancelling…")

    # Everything below runs in the main thread.
    def _on_progress(self, p):
        if not self.running:
            return
        stage, done, total = p
        if stage == "score":
            self.progress.setValue(int(round(1000 * done / max(total, 1))))
            self.progress.setFormat(f"{100 * done / max(total, 1):.0f}% · {done}/{total} scores")
        self.progress_shown.emit(p)

    def _on_returned(self, value):
        if value is None:
            self._state = "cancelled"
            return
        res, folder = value
        self.result = res
        self.job_folder = Path(folder)
        self.confidence.blockSignals(True)
        self.confidence.setValue(res.confidence)
        self.confidence.blockSignals(False)
        self._show_classes(res)
        self.progress.setValue(1000)
        self.progress.setFormat("done")
        self.export_button.setEnabled(True)
        note = f" Note: {res.warnings[0]}" if res.warnings else ""
        self._set_status(f"Saved to {folder}.{note}")
        self._state = "done"

    def _class_colors(self, res, confidence: float) -> np.ndarray:
        from matplotlib.colors import to_rgba

        from napari_2dtm.classify.mixture import CLASS_COLORS, UNASSIGNED_COLOR

        best = res.assign(0.0)
        palette = [to_rgba(CLASS_COLORS[i % len(CLASS_COLORS)]) for i in range(len(res.names))]
        grey = to_rgba(UNASSIGNED_COLOR)
        return np.array([palette[b] if b >= 0 else grey for b in best], dtype=float)

    def _show_classes(self, res):
        info = self._layer_info
        name = f"classes [{info.get('micrograph_layer', 'micrograph')}]"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        table = res.hits.copy()
        best = res.assign(0.0)
        table["best_class"] = [res.names[b] if b >= 0 else "" for b in best]
        coords = table[["y", "x"]].to_numpy(float) if len(table) else np.zeros((0, 2))
        colors = self._class_colors(res, res.confidence)
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
        self._show_counts(conf)
        self.plot.show_result(res, conf)

    def _show_counts(self, conf: float):
        from napari_2dtm.classify.mixture import CLASS_COLORS

        res = self.result
        parts = []
        for level in sorted({0.5, 0.95, conf}):
            cnt = res.counts(level)
            items = [f"<span style='color:{CLASS_COLORS[i % len(CLASS_COLORS)]}'>{nm}</span> "
                     f"{cnt[nm]}" for i, nm in enumerate(res.names)]
            bold = ("<b>", "</b>") if abs(level - conf) < 1e-9 else ("", "")
            parts.append(f"{bold[0]}at {100 * level:g} %: " + ", ".join(items)
                         + f", unassigned {cnt['unassigned']}{bold[1]}")
        self.counts_label.setText("<br>".join(parts))

    def export_stars(self, folder, overwrite: bool = False) -> list[Path]:
        """Write ``class_<k>_<name>.star`` at the current threshold into ``folder``."""
        from napari_2dtm.classify.mixture import write_class_stars

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
            self._set_status(f"Export failed: {one_line(e)}", error=True)
            return
        self._set_status(f"Wrote {len(paths)} STAR files to {path}")

    def _on_errored(self, exc):
        self._set_status(f"Classification failed: {one_line(exc)}", error=True)
        self.progress.setFormat("failed")
        self._state = "error"

    def _on_finished(self):
        state = self._state or ("cancelled" if self._cancel.is_set() else "error")
        self._worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if state == "cancelled":
            self.progress.setFormat("cancelled")
            self._set_status("Classification cancelled; nothing was written.")
        self.job_finished.emit(state)

    def _set_status(self, text, error=False):
        self.status.setText(text)
        self.status.setStyleSheet("color: #ff6b6b;" if error else "")

    def closeEvent(self, event):  # noqa: N802 (Qt name)
        self.cancel()
        super().closeEvent(event)
