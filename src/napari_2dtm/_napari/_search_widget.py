"""The "2DTM Search" dock widget: set up a search, watch its maps grow, get the hits.

The widget is a thin shell over the public API that the CLI uses
(:class:`napari_2dtm.Search`, :func:`napari_2dtm.write_results`): it gathers the
parameters into a :class:`napari_2dtm.SearchConfig`, runs ``Search.run()`` in a
worker thread and, in main-thread slots only, turns the yielded progress snapshots
into live z-score and SNR layers, and the final result into map and hits layers.
The results folder it writes is the one ``napari-2dtm search`` writes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_2dtm.jobs.search import estimate_job, one_line, search_job

from ._layers import full_limits, hits_layer_name, map_layer, result_layers

if TYPE_CHECKING:
    import napari

FROM_FILE = "From file…"
SYMMETRIES = ["C1", "C2", "C3", "C4", "C6", "D2", "D3", "D7", "T", "O", "I"]
DEVICES = {"auto": "auto", "CPU": "cpu", "GPU": "gpu"}
LIVE_MAPS = ("zscore", "snr")
LIVE_INTERVAL_S = 0.5  # seconds between live map updates


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = max(0.0, float(s))
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _layer_pixel_size(layer) -> float | None:
    """Pixel size in Å of a layer: from our metadata, else its scale (None if unknown)."""
    info = layer.metadata.get("napari_2dtm", {})
    if "pixel_size_a" in info:
        return info["pixel_size_a"]  # None: the file had no pixel size
    scale = float(layer.scale[-1])
    unit = str(layer.units[-1])
    if unit == "angstrom" or (unit == "pixel" and scale != 1.0):
        return scale
    if unit == "nanometer":
        return scale * 10.0
    return None


def _grid(box: QGroupBox, rows) -> QGridLayout:
    """Lay out ``rows`` of ``(label, widget)`` pairs; a ``None`` label spans the row."""
    grid = QGridLayout(box)
    grid.setHorizontalSpacing(6)
    grid.setVerticalSpacing(3)
    for r, row in enumerate(rows):
        if len(row) == 1 and row[0][0] is None:
            grid.addWidget(row[0][1], r, 0, 1, 4)
            continue
        for c, (label, widget) in enumerate(row):
            if label is None:
                grid.addWidget(widget, r, 2 * c, 1, 2)
            else:
                grid.addWidget(QLabel(label), r, 2 * c)
                grid.addWidget(widget, r, 2 * c + 1)
    grid.setColumnStretch(1, 1)
    grid.setColumnStretch(3, 1)
    return grid


def _spin(lo, hi, value, step=1.0, decimals=1, suffix="", special=None) -> QDoubleSpinBox:
    w = QDoubleSpinBox()
    w.setRange(lo, hi)
    w.setDecimals(decimals)
    w.setSingleStep(step)
    w.setValue(value)
    if suffix:
        w.setSuffix(suffix)
    if special:
        w.setSpecialValueText(special)
    w.setKeyboardTracking(False)
    return w


class SearchWidget(QWidget):
    """Dock widget running a 2DTM search on a micrograph layer.

    Signals ``search_started``, ``progress_shown(SearchProgress)`` (after the live
    layers were updated), ``search_finished(str)`` with ``"done"``, ``"cancelled"``
    or ``"error"``, and ``estimate_ready(str)`` let tests and other widgets follow.
    """

    search_started = Signal()
    progress_shown = Signal(object)
    search_finished = Signal(str)
    estimate_ready = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self._search = None
        self._cancel_requested = False
        self._live_layers: dict = {}
        self._estimate_worker = None
        self._estimate_generation = 0
        self.result = None
        self.results_folder: Path | None = None
        self.n_updates = 0
        self._finished_state = None
        self._mic_name = ""
        self._mic_units = ("angstrom", "angstrom")

        layout = QVBoxLayout(self)
        layout.addWidget(self._build_input_box())
        layout.addWidget(self._build_ctf_box())
        layout.addWidget(self._build_search_box())
        layout.addWidget(self._build_output_box())
        layout.addWidget(self._build_run_box())
        layout.addStretch(1)

        self._estimate_timer = QTimer(self)
        self._estimate_timer.setSingleShot(True)
        self._estimate_timer.setInterval(400)
        self._estimate_timer.timeout.connect(self.update_estimate)

        events = self.viewer.layers.events
        events.inserted.connect(self._refresh_layer_choices)
        events.removed.connect(self._refresh_layer_choices)
        events.reordered.connect(self._refresh_layer_choices)
        self._refresh_layer_choices()
        self._connect_estimate_triggers()
        self._show_device()
        self._schedule_estimate()

    # ------------------------------------------------------------------ layout
    def _build_input_box(self) -> QGroupBox:
        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.micrograph_combo = QComboBox()
        self.micrograph_combo.currentIndexChanged.connect(self._on_micrograph_changed)
        form.addRow("Micrograph", self.micrograph_combo)
        self.pixel_size = _spin(0.0, 100.0, 1.0, 0.01, 4, " Å", special="unknown")
        form.addRow("Pixel size", self.pixel_size)
        self.template_combo = QComboBox()
        self.template_combo.currentIndexChanged.connect(self._on_template_source_changed)
        form.addRow("Template", self.template_combo)
        row = QHBoxLayout()
        self.template_path = QLineEdit()
        self.template_path.setPlaceholderText("map (.mrc/.map) or model (.pdb/.cif)")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_template)
        row.addWidget(self.template_path)
        row.addWidget(browse)
        self._template_file_row = QWidget()
        self._template_file_row.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        form.addRow("Template file", self._template_file_row)
        return box

    def _build_ctf_box(self) -> QGroupBox:
        box = QGroupBox("CTF")
        self.defocus1 = _spin(-100000, 200000, 10000, 500, 0, " Å")
        self.defocus2 = _spin(-100000, 200000, 10000, 500, 0, " Å")
        self.astig_angle = _spin(-360, 360, 0, 5, 1, "°")
        self.voltage = _spin(1, 1000, 300, 100, 0, " kV")
        self.cs = _spin(0, 20, 2.7, 0.1, 2, " mm")
        self.amp_contrast = _spin(0, 0.99, 0.07, 0.01, 3)
        self.phase_shift = _spin(-180, 180, 0, 5, 1, "°")
        load = QPushButton("Load CTFFIND…")
        load.clicked.connect(self._browse_ctffind)
        self.ctf_source = QLabel("")
        _grid(box, [
            [("Defocus 1", self.defocus1), ("Defocus 2", self.defocus2)],
            [("Astig. angle", self.astig_angle), ("Phase shift", self.phase_shift)],
            [("Voltage", self.voltage), ("Cs", self.cs)],
            [("Ampl. contrast", self.amp_contrast), (None, load)],
            [(None, self.ctf_source)],
        ])
        return box

    def _build_search_box(self) -> QGroupBox:
        box = QGroupBox("Search")
        self.out_of_plane = _spin(0.1, 90, 2.5, 0.5, 2, "°")
        self.in_plane = _spin(0.1, 180, 1.5, 0.5, 2, "°")
        self.symmetry = QComboBox()
        self.symmetry.setEditable(True)
        self.symmetry.addItems(SYMMETRIES)
        self.defocus_range = _spin(0, 20000, 0, 100, 0, " Å", special="±0")
        self.defocus_step = _spin(1, 10000, 200, 50, 0, " Å")
        self.high_res = _spin(0, 100, 0, 0.5, 2, " Å", special="Nyquist")
        self.n_fp = _spin(0.001, 1000, 1.0, 0.5, 3)
        self.device = QComboBox()
        self.device.addItems(list(DEVICES))
        self.device_info = QLabel("")
        self.estimate_label = QLabel("")
        self.estimate_label.setWordWrap(True)
        _grid(box, [
            [("Out-of-plane", self.out_of_plane), ("In-plane", self.in_plane)],
            [("Defocus ±", self.defocus_range), ("step", self.defocus_step)],
            [("High-res limit", self.high_res), ("Symmetry", self.symmetry)],
            [("N false pos.", self.n_fp), ("Device", self.device)],
            [(None, self.device_info)],
            [(None, self.estimate_label)],
        ])
        for w, tip in [
            (self.out_of_plane, "Out-of-plane angular step (theta, phi)"),
            (self.in_plane, "In-plane angular step (psi)"),
            (self.defocus_range, "Search defocus offsets from -range to +range"),
            (self.high_res, "High-resolution limit of the search (0 = Nyquist)"),
            (self.n_fp, "Expected false positives per micrograph at the threshold"),
        ]:
            w.setToolTip(tip)
        return box

    def _build_output_box(self) -> QGroupBox:
        box = QGroupBox("Results folder")
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
        self.teaching = QCheckBox("Teaching mode: slow, each step shown and explained")
        self.teaching.setToolTip("Runs the same search at a watchable pace and shows, beside "
                                 "the micrograph, each orientation's projection with its CTF, "
                                 "its cross-correlation, the MIP building up and (with a "
                                 "ground truth) live precision and recall")
        self.teaching_pace: dict | None = None  # overrides _teaching.PACE (tests)
        self._teaching_view = None
        v.addWidget(self.teaching)
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        v.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        v.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        v.addWidget(self.status)
        return holder

    # ------------------------------------------------------------ layer lists
    def _image_layers(self, ndim: int):
        from napari.layers import Image

        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image) and layer.ndim == ndim and not layer.rgb
            and (layer.metadata.get("napari_2dtm", {}).get("kind") != "map")
        ]

    def _refresh_layer_choices(self, *_):
        mic = self.micrograph_combo.currentText()
        tmpl = self.template_combo.currentText()
        for combo, names, current in (
            (self.micrograph_combo, [ly.name for ly in self._image_layers(2)], mic),
            (self.template_combo, [FROM_FILE] + [ly.name for ly in self._image_layers(3)], tmpl),
        ):
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        if self.micrograph_combo.currentText() != mic:
            self._on_micrograph_changed()
        self._on_template_source_changed()

    def micrograph_layer(self):
        name = self.micrograph_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _on_micrograph_changed(self, *_):
        layer = self.micrograph_layer()
        if layer is None:
            return
        info = layer.metadata.get("napari_2dtm", {})
        self.pixel_size.setValue(_layer_pixel_size(layer) or 0.0)
        sample = info.get("search_defaults")
        if sample:
            self.apply_settings(sample)
        self._suggest_output_dir()
        self._schedule_estimate()

    def _on_template_source_changed(self, *_):
        self._template_file_row.setEnabled(self.template_combo.currentText() == FROM_FILE)
        self._schedule_estimate()

    def _suggest_output_dir(self):
        layer = self.micrograph_layer()
        if layer is None:
            return
        src = getattr(layer.source, "path", None)
        base = Path(src).with_name(f"{Path(src).stem}_2dtm") if src else (
            Path.cwd() / "2dtm_results" / layer.name.replace(" ", "_")
        )
        folder, i = base, 1
        while folder.exists():
            i += 1
            folder = base.with_name(f"{base.name}_{i}")
        self.output_dir.setText(str(folder))

    # ------------------------------------------------------------ parameters
    def apply_settings(self, settings: dict):
        """Set fields from a dict (keys as :class:`SearchConfig`, CTF keys at top level)."""
        spins = {
            "defocus1_a": self.defocus1,
            "defocus2_a": self.defocus2,
            "astigmatism_angle_deg": self.astig_angle,
            "voltage_kv": self.voltage,
            "cs_mm": self.cs,
            "amplitude_contrast": self.amp_contrast,
            "phase_shift_deg": self.phase_shift,
            "out_of_plane_step_deg": self.out_of_plane,
            "in_plane_step_deg": self.in_plane,
            "defocus_range_a": self.defocus_range,
            "defocus_step_a": self.defocus_step,
            "high_res_limit_a": self.high_res,
            "n_false_positives": self.n_fp,
        }
        for key, value in settings.items():
            if key in spins:
                spins[key].setValue(float(value or 0.0))
            elif key == "symmetry":
                self.symmetry.setCurrentText(str(value))
            elif key == "device":
                self.device.setCurrentText({v: k for k, v in DEVICES.items()}.get(value, "auto"))
            elif key == "template_path":
                self.template_combo.setCurrentText(FROM_FILE)
                self.template_path.setText(str(value))
            elif key == "template_layer" and value in self.viewer.layers:
                self.template_combo.setCurrentText(value)
        self._schedule_estimate()

    def ctf_params(self):
        from napari_2dtm import CTFParams

        return CTFParams(
            defocus1_a=self.defocus1.value(),
            defocus2_a=self.defocus2.value(),
            astigmatism_angle_deg=self.astig_angle.value(),
            voltage_kv=self.voltage.value(),
            cs_mm=self.cs.value(),
            amplitude_contrast=self.amp_contrast.value(),
            phase_shift_deg=self.phase_shift.value(),
        )

    def search_config(self, **overrides):
        """The :class:`~napari_2dtm.SearchConfig` the fields describe."""
        from napari_2dtm import SearchConfig

        kwargs = dict(
            ctf=self.ctf_params(),
            out_of_plane_step_deg=self.out_of_plane.value(),
            in_plane_step_deg=self.in_plane.value(),
            symmetry=self.symmetry.currentText().strip() or "C1",
            defocus_range_a=self.defocus_range.value(),
            defocus_step_a=self.defocus_step.value(),
            high_res_limit_a=self.high_res.value() or None,
            n_false_positives=self.n_fp.value(),
            device=DEVICES[self.device.currentText()],
            progress_interval_s=LIVE_INTERVAL_S,
        )
        kwargs.update(overrides)
        return SearchConfig(**kwargs)

    def _inputs(self):
        """``(image, pixel_size_a, template, micrograph_path)``; raises InputError."""
        from napari_2dtm import load_template
        from napari_2dtm.errors import InputError

        layer = self.micrograph_layer()
        if layer is None:
            raise InputError("no micrograph: open a 2D image (or File > Open Sample > 2DTM demo)")
        px = self.pixel_size.value()
        if px <= 0:
            raise InputError(f"{layer.name}: pixel size unknown; enter it in Å")
        image = np.asarray(layer.data, dtype=np.float32)
        source = self.template_combo.currentText()
        if source == FROM_FILE:
            path = self.template_path.text().strip()
            if not path:
                raise InputError("no template: choose a map or model file, or a 3D image layer")
            if not Path(path).is_file():
                raise InputError(f"{path}: template file not found")
            template = path  # loaded (a model converted) in the worker thread
        else:
            tl = self.viewer.layers[source]
            tpx = _layer_pixel_size(tl) or px
            template = load_template(np.asarray(tl.data, dtype=np.float32), pixel_size_a=tpx)
        mic_path = getattr(layer.source, "path", None)
        return image, px, template, mic_path

    # --------------------------------------------------------------- estimate
    def _connect_estimate_triggers(self):
        for w in (
            self.out_of_plane, self.in_plane, self.defocus_range, self.defocus_step,
            self.high_res, self.pixel_size,
        ):
            w.valueChanged.connect(self._schedule_estimate)
        self.symmetry.currentTextChanged.connect(self._schedule_estimate)
        self.device.currentTextChanged.connect(self._schedule_estimate)
        self.device.currentTextChanged.connect(self._show_device)
        self.template_path.editingFinished.connect(self._schedule_estimate)

    def _schedule_estimate(self, *_):
        self._estimate_timer.start()

    def update_estimate(self):
        """Count orientations and time a probe in a worker; shows the result when ready."""
        from napari.qt.threading import create_worker

        if self.running:
            return  # the estimate competes with the search for the CPU
        self._estimate_generation += 1
        gen = self._estimate_generation
        try:
            image, px, template, _ = self._inputs()
            config = self.search_config()
        except Exception as e:
            self._show_estimate(gen, f"— ({one_line(e)})")
            return
        self.estimate_label.setText("Estimate: timing a probe…")
        worker = create_worker(estimate_job, image, px, template, config, _ignore_errors=True)
        worker.returned.connect(lambda r, g=gen: self._on_estimate(g, r))
        worker.errored.connect(lambda e, g=gen: self._show_estimate(g, f"— ({one_line(e)})"))
        self._estimate_worker = worker
        worker.start()

    def _on_estimate(self, gen, r):
        n_orient, n_planes, n_cc, seconds = r
        planes = f" × {n_planes} defocus planes" if n_planes > 1 else ""
        self._show_estimate(
            gen, f"{n_orient:,} orientations{planes} = {n_cc:,} CCs, about {_fmt_seconds(seconds)}"
        )

    def _show_estimate(self, gen, text):
        if gen != self._estimate_generation:
            return  # a newer estimate is on its way
        try:
            self.estimate_label.setText(f"Estimate: {text}")
            self.estimate_ready.emit(text)
        except RuntimeError:  # the widget was closed while the estimate ran
            pass

    def _show_device(self, *_):
        from napari_2dtm import gpu_info

        info = gpu_info()
        if info.get("available"):
            text = f"GPU found: {info.get('name')}, {info.get('memory_gb') or 0:.0f} GB"
            tip = text
        else:
            reason = str(info.get("reason") or "unknown reason")
            text = "No usable GPU: " + reason.split(";")[0].split(" (")[0]
            tip = reason
        if self.device.currentText() != "GPU" and not info.get("available"):
            text += " (runs on the CPU)"
        self.device_info.setText(text)
        self.device_info.setToolTip(tip)
        self.gpu = info

    # ------------------------------------------------------------ file dialogs
    def _browse_template(self):
        path, _ = QFileDialog.getOpenFileName(
            self, "Template map or model", "",
            "Maps and models (*.mrc *.map *.mrcs *.pdb *.cif *.mmcif *.ent *.gz);;All files (*)",
        )
        if path:
            self.template_combo.setCurrentText(FROM_FILE)
            self.template_path.setText(path)
            self._schedule_estimate()

    def _browse_ctffind(self):
        path, _ = QFileDialog.getOpenFileName(self, "CTFFIND output", "", "Text (*.txt);;All (*)")
        if path:
            self.load_ctffind(path)

    def _browse_output(self):
        path = QFileDialog.getExistingDirectory(self, "Results folder")
        if path:
            self.output_dir.setText(path)

    def load_ctffind(self, path):
        """Fill the CTF fields from a CTFFIND4/5 output file."""
        from napari_2dtm import read_ctffind

        try:
            ctf, ctf_px = read_ctffind(path)
        except Exception as e:
            self._set_status(f"CTF not loaded: {one_line(e)}", error=True)
            return
        self.apply_settings({k: getattr(ctf, k) for k in (
            "defocus1_a", "defocus2_a", "astigmatism_angle_deg", "voltage_kv", "cs_mm",
            "amplitude_contrast", "phase_shift_deg")})
        note = f"from {Path(path).name}"
        px = self.pixel_size.value()
        if ctf_px and px and abs(ctf_px - px) > 1e-3 * px:
            note += f" (its pixel size {ctf_px:g} Å differs from {px:g} Å)"
        self.ctf_source.setText(note)

    # -------------------------------------------------------------- run/cancel
    @property
    def running(self) -> bool:
        return self._worker is not None

    def run(self):
        """Start the search in a worker thread (no-op while one runs)."""
        from napari.qt.threading import create_worker

        if self.running:
            return
        try:
            image, px, template, mic_path = self._inputs()
            config = self.search_config()
            out = self.output_dir.text().strip()
            if not out:
                raise ValueError("no results folder given")
            if Path(out).exists() and not self.overwrite.isChecked():
                raise ValueError(f"{out}: exists; tick 'replace' or choose another folder")
        except Exception as e:
            self._set_status(f"Cannot start: {one_line(e)}", error=True)
            self.search_finished.emit("error")
            return
        self._mic_name = self.micrograph_layer().name
        self._mic_units = tuple(str(u) for u in self.micrograph_layer().units[-2:])
        self._search = None
        self._cancel_requested = False
        self.result = None
        self.n_updates = 0
        job, extra = search_job, {}
        if self.teaching.isChecked():
            from ._teaching_widget import TeachingView, teaching_job, truth_table

            self._teaching_view = TeachingView(self.viewer, self._mic_name)
            job = teaching_job
            extra = dict(truth=truth_table(self.viewer, self._mic_name), pace=self.teaching_pace)
        worker = create_worker(
            job, image, px, template, config, out, mic_path, self._mic_name,
            self.overwrite.isChecked(), _ignore_errors=True, **extra,
        )
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.progress.setFormat("preparing…")
        self._set_status("Preparing the search…")
        self.search_started.emit()
        worker.start()

    def cancel(self):
        """Ask the running search to stop (it stops between orientation batches)."""
        if not self.running:
            return
        self._cancel_requested = True
        self.cancel_button.setEnabled(False)
        self._set_status("Cancelling…")
        if self._search is not None:
            self._search.cancel()
        self._worker.quit()

    # Everything below runs in the main thread (Qt queued signals from the worker).
    def _on_yielded(self, item):
        kind, value = item
        if kind == "search":
            self._search = value
            if self._cancel_requested:
                value.cancel()
                return
            zeros = np.zeros(value.image_shape, np.float32)
            for key in LIVE_MAPS:
                self._show_map(key, zeros, value.pixel_size_a)
            self.progress.setFormat(f"0% · {value.n_orientations:,} orientations")
            self._set_status(f"Searching on {value.backend.name}…")
            from ._hits_widget import LiveNegLogP  # -ln p from the partial maps, throttled

            self._live_p = LiveNegLogP(lambda m, px: self._show_map("neg_log_p", m, px))
            return
        if kind == "teach":  # teaching mode: its layers, then the usual progress display
            self._teaching_view.show(value)
            if value.stage != "search":
                return
            value = value.progress
        p = value
        for key in LIVE_MAPS:
            self._show_map(key, getattr(p, key), p.pixel_size_a)
        if getattr(self, "_live_p", None) is not None:
            self._live_p.update(p)
        self.n_updates += 1
        self.progress.setValue(int(round(1000 * p.fraction)))
        self.progress.setFormat(
            f"{100 * p.fraction:.0f}% · ETA {_fmt_seconds(p.eta_s)} · "
            f"{p.orientations_per_s:,.0f} orientations/s"
        )
        self.progress_shown.emit(p)

    def _show_map(self, key, data, pixel_size_a):
        layer = self._live_layers.get(key)
        lo, hi = full_limits(data)
        if layer is None or layer not in self.viewer.layers:
            ld, kwargs, _ = map_layer(key, data, pixel_size_a, self._mic_name)
            kwargs["units"] = self._mic_units
            existing = kwargs["name"]
            if existing in self.viewer.layers:
                self.viewer.layers.remove(existing)
            self._live_layers[key] = self.viewer.add_image(ld, **kwargs)
            return
        layer.data = np.asarray(data, dtype=np.float32)
        layer.contrast_limits_range = (lo, hi)
        layer.contrast_limits = (lo, hi)

    def _on_returned(self, value):
        if value is None:  # cancelled between batches
            self._on_aborted()
            return
        result, folder = value
        self.result = result
        self.results_folder = Path(folder)
        for ld, kwargs, kind in result_layers(result, self._mic_name, folder):
            kwargs["units"] = self._mic_units
            name = kwargs["name"]
            if kind == "image" and name in self.viewer.layers:
                layer = self.viewer.layers[name]
                layer.data = ld
                layer.contrast_limits_range = kwargs["contrast_limits"]
                layer.contrast_limits = kwargs["contrast_limits"]
                continue
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            getattr(self.viewer, f"add_{kind}")(ld, **kwargs)
        n = 0 if result.hits is None else len(result.hits)
        self.progress.setValue(1000)
        self.progress.setFormat(f"done in {_fmt_seconds(result.metadata.get('elapsed_s', 0))}")
        self._set_status(
            f"{n} hits above the threshold {result.threshold:.2f}; saved to {folder}"
        )
        self._finished_state = "done"
        from ._hits_widget import review_when_finished  # docks the Hits widget afterwards

        review_when_finished(self, hits_layer_name(self._mic_name), result, folder)

    def _on_errored(self, exc):
        from napari_2dtm.errors import SearchCancelled

        if isinstance(exc, SearchCancelled) or self._cancel_requested:
            self._on_aborted()
            return
        self._set_status(f"Search failed: {one_line(exc)}", error=True)
        self.progress.setFormat("failed")
        self._finished_state = "error"

    def _on_aborted(self):
        self._finished_state = "cancelled"

    def _on_worker_finished(self):
        state = getattr(self, "_finished_state", None) or (
            "cancelled" if self._cancel_requested else "done"
        )
        self._finished_state = None
        self._worker = None
        self._search = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if state == "done":
            self._suggest_output_dir()
        elif state == "cancelled":
            self.progress.setFormat("cancelled")
            self._set_status("Search cancelled; partial maps are kept, nothing was saved.")
        self.search_finished.emit(state)

    def _set_status(self, text, error=False):
        self.status.setText(text)
        self.status.setStyleSheet("color: #ff6b6b;" if error else "")

    def closeEvent(self, event):  # noqa: N802 (Qt name)
        self.cancel()
        super().closeEvent(event)
