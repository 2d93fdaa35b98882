"""Controls of the Hits widget: source, detection, extraction and curation boxes.

Sub-widgets without review state: they show what the Hits widget gives them and say
what the user asked for (signals, or buttons the widget connects), so that every change
of the review goes through the widget's one path (``set_threshold``, ``reextract``,
``set_status``) whichever control, key or script asked for it.

:class:`DetectionBox` maps its slider (``SLIDER_STEPS`` steps) linearly onto the range
of the candidates' metric values, and moves spin box and slider together without
echoing the move back as a new request.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_2dtm.hits.review import METRICS
from napari_2dtm.search.pvalue import FIXED_THRESHOLD

from ._job_panel import ERROR_STYLE

SLIDER_STEPS = 1000
NO_MASK = "(none)"


def spin_box(lo, hi, value, step, decimals, special=None, suffix="") -> QDoubleSpinBox:
    """A spin box that reports a value once it is typed in full (no keyboard tracking)."""
    w = QDoubleSpinBox()
    w.setRange(lo, hi)
    w.setDecimals(decimals)
    w.setSingleStep(step)
    w.setValue(value)
    w.setKeyboardTracking(False)
    if special:
        w.setSpecialValueText(special)
    if suffix:
        w.setSuffix(suffix)
    return w


class SourceRow(QWidget):
    """"Hits of": the search hits layer to review (``combo``)."""

    def __init__(self):
        super().__init__()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Hits of"))
        self.combo = QComboBox()
        self.combo.setToolTip("Hits layer of a search (a results folder)")
        row.addWidget(self.combo, 1)

    def set_choices(self, names: list[str], reviewed: str | None):
        """Offer ``names``, showing the layer under review, else keeping the choice."""
        current = self.combo.currentText()
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItems(names)
        if reviewed in names:
            self.combo.setCurrentText(reviewed)
        elif current in names:
            self.combo.setCurrentText(current)
        self.combo.blockSignals(False)


class DetectionBox(QGroupBox):
    """Metric, threshold (spin box + slider), expected false positives and their label.

    Signals: ``metric_chosen(str)`` (a metric key), ``threshold_requested(float)``
    (spin box, slider or the fixed -ln p cutoff), ``false_positives_requested(float)``.
    """

    metric_chosen = Signal(str)
    threshold_requested = Signal(float)
    false_positives_requested = Signal(float)

    def __init__(self):
        super().__init__("Detection")
        self._range = (0.0, 1.0)  # metric values at the slider's ends
        self._updating = False  # the box itself is moving spin box and slider
        g = QGridLayout(self)
        g.setVerticalSpacing(2)
        self.metric_combo = QComboBox()
        self.metric_combo.currentIndexChanged.connect(self._on_metric)
        g.addWidget(QLabel("Metric"), 0, 0)
        g.addWidget(self.metric_combo, 0, 1)
        self.threshold_spin = spin_box(-1e6, 1e6, 0.0, 0.1, 2)
        self.threshold_spin.valueChanged.connect(self._on_spin)
        g.addWidget(QLabel("Threshold"), 0, 2)
        g.addWidget(self.threshold_spin, 0, 3)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.valueChanged.connect(self._on_slider)
        g.addWidget(self.slider, 1, 0, 1, 4)
        self.n_fp_spin = spin_box(0.001, 1e6, 1.0, 0.5, 3)
        self.n_fp_spin.setToolTip("Expected noise peaks per micrograph")
        set_fp = QPushButton("Set")
        set_fp.setToolTip("Threshold with this many expected false positives")
        set_fp.clicked.connect(
            lambda: self.false_positives_requested.emit(self.n_fp_spin.value()))
        self.fixed_button = QPushButton("8 (fixed)")
        self.fixed_button.setToolTip("The authors' fixed -ln p cutoff (N_pop·e^-8 noise peaks)")
        self.fixed_button.clicked.connect(
            lambda: self.threshold_requested.emit(float(FIXED_THRESHOLD)))
        g.addWidget(QLabel("N false pos."), 2, 0)
        g.addWidget(self.n_fp_spin, 2, 1)
        h = QHBoxLayout()
        h.addWidget(set_fp)
        h.addWidget(self.fixed_button)
        g.addLayout(h, 2, 2, 1, 2)
        self.fp_label = QLabel("")
        self.fp_label.setWordWrap(True)
        g.addWidget(self.fp_label, 3, 0, 1, 4)
        g.setColumnStretch(1, 1)
        g.setColumnStretch(3, 1)

    def set_active(self, on: bool):
        for w in (self.metric_combo, self.threshold_spin, self.slider, self.n_fp_spin):
            w.setEnabled(on)

    def set_metrics(self, metrics: list[str], current: str):
        """Offer ``metrics`` (keys of ``METRICS``) with ``current`` chosen, silently."""
        self.metric_combo.blockSignals(True)
        self.metric_combo.clear()
        for m in metrics:
            self.metric_combo.addItem(METRICS[m], m)
        self.metric_combo.setCurrentIndex(max(0, self.metric_combo.findData(current)))
        self.metric_combo.blockSignals(False)

    def show_counts(self, review):
        """Expected false positives at the threshold, hits, candidates and decisions."""
        n = review.counts()
        self.fp_label.setText(
            f"Expected false positives: {review.expected_false_positives:.3g} "
            f"({review.noise.description}) · hits {n['hits']} of {n['candidates']} candidates · "
            f"accepted {n['accepted']}, rejected {n['rejected']}"
        )

    def set_range(self, values: np.ndarray, threshold: float):
        """Span the slider over the finite ``values`` and ``threshold``."""
        v = values[np.isfinite(values)]
        lo = float(v.min()) if v.size else 0.0
        hi = float(v.max()) if v.size else 1.0
        lo, hi = min(lo, threshold), max(hi, threshold)
        if hi <= lo:
            hi = lo + 1.0
        self._range = (lo, hi)
        self.threshold_spin.blockSignals(True)
        self.threshold_spin.setRange(lo - 1.0, hi + 1.0)
        self.threshold_spin.blockSignals(False)

    def show_threshold(self, t: float):
        """Move spin box and slider to ``t`` without requesting it again."""
        self._updating = True
        try:
            self.threshold_spin.setValue(t)
            lo, hi = self._range
            self.slider.setValue(int(round(SLIDER_STEPS * (t - lo) / (hi - lo))))
        finally:
            self._updating = False

    def _on_metric(self, *_):
        metric = self.metric_combo.currentData()
        if metric:
            self.metric_chosen.emit(metric)

    def _on_spin(self, value):
        if not self._updating:
            self.threshold_requested.emit(float(value))

    def _on_slider(self, step):
        if not self._updating:
            lo, hi = self._range
            self.threshold_requested.emit(lo + (hi - lo) * step / SLIDER_STEPS)


class ExtractionBox(QGroupBox):
    """Peak radius, floor and exclusion layer of the candidates; ``extract_button``."""

    def __init__(self):
        super().__init__("Extraction")
        g = QGridLayout(self)
        g.setVerticalSpacing(2)
        self.radius_spin = spin_box(0.0, 1000.0, 0.0, 1.0, 1, special="default", suffix=" px")
        self.radius_spin.setToolTip("Minimum distance between peaks, search pixels")
        self.floor_spin = spin_box(-1.0, 1e4, -1.0, 0.5, 2, special="all maxima")
        self.floor_spin.setToolTip("Lowest metric value of a candidate (all local maxima: "
                                   "the histogram shows the noise too)")
        self.mask_combo = QComboBox()
        self.mask_combo.setToolTip("Shapes or Labels layer: no hits inside (ice, outside the lamella)")
        self.extract_button = QPushButton("Re-extract")
        g.addWidget(QLabel("Radius"), 0, 0)
        g.addWidget(self.radius_spin, 0, 1)
        g.addWidget(QLabel("Floor"), 0, 2)
        g.addWidget(self.floor_spin, 0, 3)
        g.addWidget(QLabel("Exclude"), 1, 0)
        g.addWidget(self.mask_combo, 1, 1, 1, 2)
        g.addWidget(self.extract_button, 1, 3)
        g.setColumnStretch(1, 1)
        g.setColumnStretch(3, 1)

    def show_settings(self, radius_px: float | None, floor: float | None):
        self.radius_spin.setValue(radius_px or 0.0)
        self.floor_spin.setValue(-1.0 if floor is None else floor)

    def radius_px(self) -> float | None:
        """The peak radius asked for (None: the review's default)."""
        return self.radius_spin.value() or None

    def floor(self) -> float | None:
        """The lowest candidate value asked for (None: every local maximum)."""
        value = self.floor_spin.value()
        return None if value <= self.floor_spin.minimum() else value

    def mask_name(self) -> str | None:
        name = self.mask_combo.currentText()
        return name if name and name != NO_MASK else None

    def set_mask_choices(self, layer_names: list[str]):
        """Offer these layers as exclusion masks, keeping the current choice."""
        mask = self.mask_combo.currentText()
        masks = [NO_MASK, *layer_names]
        self.mask_combo.blockSignals(True)
        self.mask_combo.clear()
        self.mask_combo.addItems(masks)
        if mask in masks:
            self.mask_combo.setCurrentText(mask)
        self.mask_combo.blockSignals(False)


#: file-dialog filter -> export format (None: RELION STAR or our CSV by the suffix)
EXPORT_FILTERS = {"RELION STAR (*.star)": None, "CSV (*.csv)": None,
                  "Leopard-EM particle CSV (*.csv)": "leopard", "cisTEM STAR (*.star)": "cistem"}


class CurationBar(QWidget):
    """Previous / next / accept / reject buttons, export, and the widget's status line."""

    def __init__(self):
        super().__init__()
        v = QVBoxLayout(self)
        v.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.buttons = {}  # action name -> button; the Hits widget connects them
        for name, text, tip in (
            ("previous_hit", "◀ p", "Previous hit (p)"),
            ("next_hit", "n ▶", "Next hit (n)"),
            ("accept", "Accept (a)", "Accept the selected hit(s)"),
            ("reject", "Reject (r)", "Reject the selected hit(s)"),
        ):
            b = QPushButton(text)
            b.setToolTip(tip)
            self.buttons[name] = b
            row.addWidget(b)
        v.addLayout(row)
        row2 = QHBoxLayout()
        self.accepted_only = QCheckBox("accepted only")
        self.accepted_only.setToolTip("Export accepted hits only (else every hit above the "
                                      "threshold that is not rejected)")
        self.export_button = QPushButton("Export STAR/CSV…")
        self.export_button.setToolTip("RELION STAR, CSV, Leopard-EM particle CSV or cisTEM STAR")
        row2.addWidget(self.accepted_only)
        row2.addWidget(self.export_button)
        v.addLayout(row2)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        v.addWidget(self.status)

    def set_status(self, text: str, error: bool = False):
        self.status.setText(text)
        self.status.setStyleSheet(ERROR_STYLE if error else "")

    def ask_export_path(self, start: str) -> tuple[str, str | None]:
        """``(file, format)`` to export to: format None (RELION STAR or our CSV, by the
        suffix), "leopard" (Leopard-EM particle CSV) or "cistem" (cisTEM STAR); ``""``
        as file when the user cancelled."""
        path, chosen = QFileDialog.getSaveFileName(self, "Export hits", start, ";;".join(
            EXPORT_FILTERS))
        return path, EXPORT_FILTERS.get(chosen)
