"""The parameter half of the "2DTM Search" widget: input, CTF and search-space fields.

:class:`SearchForm` is a mixin of :class:`~._search_widget.SearchWidget` (which sets the
state it uses in its ``__init__``): it builds the Input, CTF and Search group boxes,
keeps the layer choices up to date, and turns the fields into a
:class:`~napari_2dtm.search.config.SearchConfig` and the job's inputs. The run half
(estimate, job panel, live maps, results) is in ``_search_widget.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from napari_2dtm.errors import one_line
from napari_2dtm.search.config import STRATEGIES

FROM_FILE = "From file…"
SYMMETRIES = ["C1", "C2", "C3", "C4", "C6", "D2", "D3", "D7", "T", "O", "I"]
DEVICES = {"auto": "auto", "CPU": "cpu", "GPU": "gpu"}
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


class SearchForm:
    """Input, CTF and search fields of the Search widget (a mixin of a ``QWidget`` that
    sets ``viewer`` and ``panel`` in its ``__init__`` and has ``_schedule_estimate`` and
    ``_suggest_output_dir``)."""

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
        self.strategy = QComboBox()
        self.strategy.addItems(list(STRATEGIES))
        self.device_info = QLabel("")
        self.estimate_label = QLabel("")
        self.estimate_label.setWordWrap(True)
        _grid(box, [
            [("Out-of-plane", self.out_of_plane), ("In-plane", self.in_plane)],
            [("Defocus ±", self.defocus_range), ("step", self.defocus_step)],
            [("High-res limit", self.high_res), ("Symmetry", self.symmetry)],
            [("N false pos.", self.n_fp), ("Device", self.device)],
            [("Strategy", self.strategy)],
            [(None, self.device_info)],
            [(None, self.estimate_label)],
        ])
        for w, tip in [
            (self.out_of_plane, "Out-of-plane angular step (theta, phi)"),
            (self.in_plane, "In-plane angular step (psi)"),
            (self.defocus_range, "Search defocus offsets from -range to +range"),
            (self.high_res, "High-resolution limit of the search (0 = Nyquist)"),
            (self.n_fp, "Expected false positives per micrograph at the threshold"),
            (self.strategy, "exhaustive: every orientation and defocus plane at full "
                            "resolution; fast: a coarse search (1.5x the resolution limit, 2x "
                            "the steps), then every candidate refined by gradient at full "
                            "resolution (docs: Fast search)"),
        ]:
            w.setToolTip(tip)
        return box

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
            elif key == "strategy":
                self.strategy.setCurrentText(str(value))
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
            strategy=self.strategy.currentText(),
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

    def load_ctffind(self, path):
        """Fill the CTF fields from a CTFFIND4/5 output file."""
        from napari_2dtm import read_ctffind

        try:
            ctf, ctf_px = read_ctffind(path)
        except Exception as e:
            self.panel.set_status(f"CTF not loaded: {one_line(e)}", error=True)
            return
        self.apply_settings({k: getattr(ctf, k) for k in (
            "defocus1_a", "defocus2_a", "astigmatism_angle_deg", "voltage_kv", "cs_mm",
            "amplitude_contrast", "phase_shift_deg")})
        note = f"from {Path(path).name}"
        px = self.pixel_size.value()
        if ctf_px and px and abs(ctf_px - px) > 1e-3 * px:
            note += f" (its pixel size {ctf_px:g} Å differs from {px:g} Å)"
        self.ctf_source.setText(note)
