"""The "2DTM Hits" dock widget: threshold, table, histogram, inspection, curation, export.

A thin shell over :class:`napari_2dtm.hits.review.Review` (candidates, thresholds, expected
false positives, decisions, saving, export) and :class:`napari_2dtm.hits.inspection.HitInspector`
(box beside the template at the hit's pose). It docks itself when a search finishes
(:func:`review_hits`, called by the Search widget) or a results folder is opened
(:func:`dock_after_open`, scheduled by the reader).

The review owns one points layer, ``hits review [<micrograph>]``: every candidate
(all local maxima above a floor, extracted once), of which the threshold only toggles
``shown``, so the layer follows the slider at once. Border colours give the status
(cyan unreviewed, green accepted, red rejected). The search's own ``hits [...]``
layer is hidden, not changed.

Keys (on the viewer; ``a`` and ``p`` also on the review layer, where napari uses them
for "select all" and "add points"): ``n`` / ``p`` next / previous hit in table order,
``a`` accept, ``r`` reject, ``u`` back to unreviewed (then on to the next hit).
Decisions are saved (debounced) in ``<results>/review/`` and restored on reopening.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import (
    QItemSelection,
    QItemSelectionModel,
    Qt,
    QTimer,
    Signal,
)
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSlider,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from napari_2dtm.hits.review import MAX_CANDIDATES, METRICS, Review, available_metrics, sample_mask
from napari_2dtm.jobs.search import one_line

from ._hits_views import STATUS_RGBA, HistogramPlot, HitsTableModel, InspectionPanel
from ._layers import hit_marker_size_px

if TYPE_CHECKING:
    import napari

SLIDER_STEPS = 1000
BORDER_WIDTH = 0.07  # of the marker size
NO_MASK = "(none)"
KEYS = {"n": "next_hit", "p": "previous_hit", "a": "accept", "r": "reject", "u": "unreview"}
LAYER_KEYS = ("a", "p")  # napari's points layer binds these itself


def review_layer_name(micrograph_name: str) -> str:
    return f"hits review [{micrograph_name}]"


def _micrograph_name(hits_layer_name: str) -> str:
    name = hits_layer_name
    for prefix in ("hits review [", "hits ["):
        if name.startswith(prefix) and name.endswith("]"):
            return name[len(prefix):-1]
    return name


# ------------------------------------------------------------------ widget


def _spin(lo, hi, value, step, decimals, special=None, suffix="") -> QDoubleSpinBox:
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


class HitsWidget(QWidget):
    """Dock widget reviewing the hits of one search result (see the module docstring).

    Signals: ``review_loaded`` (after a review was (re)built), ``threshold_applied(float)``
    (after the points, table and labels follow a new threshold), ``hit_inspected(int)``
    (candidate id), ``saved(str)`` (review folder).
    """

    review_loaded = Signal()
    threshold_applied = Signal(float)
    hit_inspected = Signal(int)
    saved = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.review: Review | None = None
        self.layer = None
        self.source_layer_name: str | None = None
        self.current: int | None = None
        self.inspector = None
        self._inspector_error: str | None = None
        self._template = None
        self._syncing = False
        self._center_request = None
        self._updating_threshold = False
        self._setting_size = False  # the widget itself is resizing the markers
        self._marker_size = 0.0  # px, of shown hits
        self._rgba = np.zeros((0, 4))  # border colour of each candidate, from its status
        self.last_threshold_ms = float("nan")
        self.max_candidates = MAX_CANDIDATES

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self._build_source_row())
        layout.addWidget(self._build_threshold_box())
        self.histogram = HistogramPlot()
        layout.addWidget(self.histogram.canvas, 2)
        layout.addWidget(self._build_extract_box())
        layout.addWidget(self._build_table(), 3)
        self.inspection = InspectionPanel()
        layout.addWidget(self.inspection, 2)
        layout.addWidget(self._build_curation_row())

        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(500)
        self._save_timer.timeout.connect(self.save)

        events = self.viewer.layers.events
        events.inserted.connect(self._refresh_layer_choices)
        events.removed.connect(self._refresh_layer_choices)
        events.removed.connect(self._on_layer_removed)
        self._refresh_layer_choices()
        self._bind_keys()
        self._set_enabled(False)

    # ---------------------------------------------------------------- layout
    def _build_source_row(self) -> QWidget:
        w = QWidget()
        row = QHBoxLayout(w)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Hits of"))
        self.source_combo = QComboBox()
        self.source_combo.setToolTip("Hits layer of a search (a results folder)")
        self.source_combo.activated.connect(self._on_source_chosen)
        row.addWidget(self.source_combo, 1)
        return w

    def _build_threshold_box(self) -> QGroupBox:
        box = QGroupBox("Detection")
        g = QGridLayout(box)
        g.setVerticalSpacing(2)
        self.metric_combo = QComboBox()
        self.metric_combo.currentIndexChanged.connect(self._on_metric_changed)
        g.addWidget(QLabel("Metric"), 0, 0)
        g.addWidget(self.metric_combo, 0, 1)
        self.threshold_spin = _spin(-1e6, 1e6, 0.0, 0.1, 2)
        self.threshold_spin.valueChanged.connect(self._on_spin)
        g.addWidget(QLabel("Threshold"), 0, 2)
        g.addWidget(self.threshold_spin, 0, 3)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.valueChanged.connect(self._on_slider)
        g.addWidget(self.slider, 1, 0, 1, 4)
        self.n_fp_spin = _spin(0.001, 1e6, 1.0, 0.5, 3)
        self.n_fp_spin.setToolTip("Expected noise peaks per micrograph")
        set_fp = QPushButton("Set")
        set_fp.setToolTip("Threshold with this many expected false positives")
        set_fp.clicked.connect(lambda: self.set_threshold_for(self.n_fp_spin.value()))
        self.fixed_button = QPushButton("8 (fixed)")
        self.fixed_button.setToolTip("The authors' fixed -ln p cutoff (N_pop·e^-8 noise peaks)")
        self.fixed_button.clicked.connect(self._set_fixed)
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
        return box

    def _build_extract_box(self) -> QGroupBox:
        box = QGroupBox("Extraction")
        g = QGridLayout(box)
        g.setVerticalSpacing(2)
        self.radius_spin = _spin(0.0, 1000.0, 0.0, 1.0, 1, special="default", suffix=" px")
        self.radius_spin.setToolTip("Minimum distance between peaks, search pixels")
        self.floor_spin = _spin(-1.0, 1e4, -1.0, 0.5, 2, special="all maxima")
        self.floor_spin.setToolTip("Lowest metric value of a candidate (all local maxima: "
                                   "the histogram shows the noise too)")
        self.mask_combo = QComboBox()
        self.mask_combo.setToolTip("Shapes or Labels layer: no hits inside (ice, outside the lamella)")
        self.extract_button = QPushButton("Re-extract")
        self.extract_button.clicked.connect(self.reextract)
        g.addWidget(QLabel("Radius"), 0, 0)
        g.addWidget(self.radius_spin, 0, 1)
        g.addWidget(QLabel("Floor"), 0, 2)
        g.addWidget(self.floor_spin, 0, 3)
        g.addWidget(QLabel("Exclude"), 1, 0)
        g.addWidget(self.mask_combo, 1, 1, 1, 2)
        g.addWidget(self.extract_button, 1, 3)
        g.setColumnStretch(1, 1)
        g.setColumnStretch(3, 1)
        return box

    def _build_table(self) -> QTableView:
        self.model = HitsTableModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(18)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        header.setResizeContentsPrecision(50)  # sample rows: fast on 10,000
        self.table.horizontalHeader().setSortIndicator(2, Qt.SortOrder.DescendingOrder)
        self.table.setSortingEnabled(True)
        self.table.setMinimumHeight(120)
        self.table.selectionModel().selectionChanged.connect(self._on_table_selection)
        return self.table

    def _build_curation_row(self) -> QWidget:
        w = QWidget()
        v = QVBoxLayout(w)
        v.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        for text, slot, tip in (
            ("◀ p", self.previous_hit, "Previous hit (p)"),
            ("n ▶", self.next_hit, "Next hit (n)"),
            ("Accept (a)", self.accept, "Accept the selected hit(s)"),
            ("Reject (r)", self.reject, "Reject the selected hit(s)"),
        ):
            b = QPushButton(text)
            b.setToolTip(tip)
            b.clicked.connect(slot)
            row.addWidget(b)
        v.addLayout(row)
        row2 = QHBoxLayout()
        self.accepted_only = QCheckBox("accepted only")
        self.accepted_only.setToolTip("Export accepted hits only (else every hit above the "
                                      "threshold that is not rejected)")
        export = QPushButton("Export STAR/CSV…")
        export.clicked.connect(self._export_dialog)
        row2.addWidget(self.accepted_only)
        row2.addWidget(export)
        v.addLayout(row2)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        v.addWidget(self.status)
        return w

    def _set_enabled(self, on: bool):
        for w in (self.metric_combo, self.threshold_spin, self.slider, self.n_fp_spin,
                  self.extract_button, self.table):
            w.setEnabled(on)

    # ---------------------------------------------------------- layer lists
    def _hits_layers(self):
        from napari.layers import Points

        return [ly for ly in self.viewer.layers if isinstance(ly, Points)
                and ly.metadata.get("napari_2dtm", {}).get("kind") == "hits"
                and ly.metadata.get("napari_2dtm", {}).get("results_folder")]

    def _refresh_layer_choices(self, *_):
        from napari.layers import Labels, Shapes

        current = self.source_combo.currentText()
        names = [ly.name for ly in self._hits_layers()]
        self.source_combo.blockSignals(True)
        self.source_combo.clear()
        self.source_combo.addItems(names)
        if self.source_layer_name in names:
            self.source_combo.setCurrentText(self.source_layer_name)
        elif current in names:
            self.source_combo.setCurrentText(current)
        self.source_combo.blockSignals(False)
        mask = self.mask_combo.currentText()
        masks = [NO_MASK] + [ly.name for ly in self.viewer.layers
                             if isinstance(ly, (Shapes, Labels)) and ly.ndim == 2]
        self.mask_combo.blockSignals(True)
        self.mask_combo.clear()
        self.mask_combo.addItems(masks)
        if mask in masks:
            self.mask_combo.setCurrentText(mask)
        self.mask_combo.blockSignals(False)

    def _on_source_chosen(self, *_):
        name = self.source_combo.currentText()
        if name and name in self.viewer.layers and name != self.source_layer_name:
            self.set_source(self.viewer.layers[name])

    def _on_layer_removed(self, event):
        if self.layer is not None and event.value is self.layer:
            self._disconnect_layer()
            self.layer = None
            self.review = None
            self._set_enabled(False)

    # --------------------------------------------------------------- source
    def set_source(self, hits_layer, result=None, folder=None, template=None):
        """Review the hits of ``hits_layer`` (a search's points layer).

        result: the in-memory :class:`~napari_2dtm.SearchResult` (else read from the
        results folder in the layer's metadata); template: the search's template
        (else rebuilt from ``search.json`` or found among the 3D image layers).
        Saved decisions in ``<folder>/review/`` are restored.
        """
        info = hits_layer.metadata.get("napari_2dtm", {})
        folder = Path(folder or info.get("results_folder") or "")
        if not (folder / "search.json").is_file():
            self._set_status(f"{hits_layer.name}: no results folder to review", error=True)
            return
        try:
            review = Review.open(folder, result=result, max_candidates=self.max_candidates)
        except Exception as e:
            self._set_status(f"Cannot review {folder.name}: {one_line(e)}", error=True)
            return
        self._template = template
        self.inspector = None
        self._inspector_error = None
        self.source_layer_name = hits_layer.name
        self.review = review
        hits_layer.visible = False
        self._ensure_layer(hits_layer)
        if review.exclusion is not None:
            self._show_saved_mask()
        self._refresh_layer_choices()
        self.metric_combo.blockSignals(True)
        self.metric_combo.clear()
        for m in available_metrics(review.result):
            self.metric_combo.addItem(METRICS[m], m)
        self.metric_combo.setCurrentIndex(max(0, self.metric_combo.findData(review.metric)))
        self.metric_combo.blockSignals(False)
        self.radius_spin.setValue(review.radius_px or 0.0)
        self.floor_spin.setValue(-1.0 if review.floor is None else review.floor)
        self.n_fp_spin.setValue(review.n_false_positives)
        self._set_enabled(True)
        self._apply_review()
        n = review.counts()
        restored = n["accepted"] + n["rejected"]
        self._set_status(f"{n['candidates']} candidates from {folder.name}"
                         + (f"; {restored} decisions restored" if restored else ""))

    @property
    def micrograph_name(self) -> str:
        return _micrograph_name(self.source_layer_name or "")

    def _ensure_layer(self, hits_layer):
        """The review's points layer (created beside the search's hits layer)."""
        name = review_layer_name(self.micrograph_name)
        self._disconnect_layer()
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        info = dict(hits_layer.metadata.get("napari_2dtm", {}))
        info["kind"] = "review"
        self.layer = self.viewer.add_points(
            np.zeros((0, 2)), name=name, scale=tuple(hits_layer.scale[-2:]),
            units=tuple(str(u) for u in hits_layer.units[-2:]),
            size=hit_marker_size_px(self.review.result), symbol="disc",
            face_color="transparent", border_color="#00e5ff", border_width=BORDER_WIDTH,
            opacity=0.95, metadata={"napari_2dtm": info},
        )
        self._marker_size = float(hit_marker_size_px(self.review.result))
        self.layer.selected_data.events.items_changed.connect(self._on_points_selection)
        self.layer.events.size.connect(self._on_size_changed)
        for key in LAYER_KEYS:
            self.layer.bind_key(key, getattr(self, f"_key_{key}"), overwrite=True)

    def _disconnect_layer(self):
        if self.layer is not None:
            try:
                self.layer.selected_data.events.items_changed.disconnect(self._on_points_selection)
            except (TypeError, ValueError, RuntimeError):
                pass

    def _show_saved_mask(self):
        from napari.layers import Labels

        name = f"exclusion [{self.micrograph_name}]"
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            self.viewer.layers[name].data = self.review.exclusion.astype(np.uint8)
        else:
            px = self.review.result.pixel_size_a
            self.viewer.add_labels(self.review.exclusion.astype(np.uint8), name=name,
                                   scale=(px, px), opacity=0.35)
        self._refresh_layer_choices()
        self.mask_combo.setCurrentText(name)

    def _apply_review(self):
        """Push the review's candidates into the layer, table and plots."""
        rv = self.review
        t = rv.table
        self.current = None
        self._syncing = True
        try:
            self.layer.selected_data = set()
            coords = t[["y", "x"]].to_numpy(float) if len(t) else np.zeros((0, 2))
            self.layer.data = coords
            self.layer.features = t
            self._rgba = self._colors(t["status"].to_numpy(object))
            self._paint()
            self.model.set_table(t, [m for m in METRICS if m in t.columns])
            self.table.resizeColumnsToContents()
        finally:
            self._syncing = False
        self.histogram.set_review(rv)
        self._set_threshold_range()
        self.fixed_button.setVisible(rv.metric == "neg_log_p")
        self.set_threshold(rv.threshold)
        self.review_loaded.emit()
        if len(self.model.rows):
            self.select_hit(int(self.model.rows[0]), center=False)

    @staticmethod
    def _colors(status: np.ndarray) -> np.ndarray:
        out = np.empty((len(status), 4), np.float32)
        for s, rgba in STATUS_RGBA.items():
            out[status == s] = rgba
        return out

    # ------------------------------------------------------------- threshold
    def _set_threshold_range(self):
        v = self.review.values
        v = v[np.isfinite(v)]
        lo = float(v.min()) if v.size else 0.0
        hi = float(v.max()) if v.size else 1.0
        lo, hi = min(lo, self.review.threshold), max(hi, self.review.threshold)
        if hi <= lo:
            hi = lo + 1.0
        self._range = (lo, hi)
        self.threshold_spin.blockSignals(True)
        self.threshold_spin.setRange(lo - 1.0, hi + 1.0)
        self.threshold_spin.blockSignals(False)

    def set_threshold(self, t: float):
        """Apply a threshold: points' ``shown``, table rows, labels, histogram line."""
        if self.review is None:
            return
        t0 = time.perf_counter()
        shown = self.review.set_threshold(t)
        self._show_points(shown)
        self.model.set_shown(shown)
        self._update_labels()
        self._updating_threshold = True
        try:
            self.threshold_spin.setValue(t)
            lo, hi = self._range
            self.slider.setValue(int(round(SLIDER_STEPS * (t - lo) / (hi - lo))))
        finally:
            self._updating_threshold = False
        self.histogram.set_threshold(t)
        self.last_threshold_ms = 1e3 * (time.perf_counter() - t0)
        self._save_timer.start()
        self.threshold_applied.emit(float(t))

    def _show_points(self, shown: np.ndarray):
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

    def _paint(self):
        """Border colours from the statuses."""
        self.layer.border_color = self._rgba

    def _on_size_changed(self, *_):
        if self._setting_size or self.review is None:
            return
        sizes = np.asarray(self.layer.size, float)
        if sizes.size and sizes.max() > 0:  # the user changed the marker size
            self._marker_size = float(sizes.max())
            self._show_points(self.review.shown())

    def _on_spin(self, value):
        if not self._updating_threshold:
            self.set_threshold(float(value))

    def _on_slider(self, step):
        if self._updating_threshold or self.review is None:
            return
        lo, hi = self._range
        self.set_threshold(lo + (hi - lo) * step / SLIDER_STEPS)

    def set_threshold_for(self, n_false_positives: float):
        """Threshold with ``n_false_positives`` expected noise peaks."""
        if self.review is not None:
            self.set_threshold(self.review.set_threshold_for(n_false_positives))

    def _set_fixed(self):
        from napari_2dtm.search.pvalue import FIXED_THRESHOLD

        self.set_threshold(FIXED_THRESHOLD)

    def _update_labels(self):
        rv = self.review
        n = rv.counts()
        self.fp_label.setText(
            f"Expected false positives: {rv.expected_false_positives:.3g} "
            f"({rv.noise.description}) · hits {n['hits']} of {n['candidates']} candidates · "
            f"accepted {n['accepted']}, rejected {n['rejected']}"
        )

    @property
    def expected_false_positives_text(self) -> str:
        return self.fp_label.text()

    # ------------------------------------------------------------ extraction
    def _on_metric_changed(self, *_):
        metric = self.metric_combo.currentData()
        if self.review is not None and metric and metric != self.review.metric:
            self.reextract()

    def exclusion_from_layer(self, layer) -> np.ndarray:
        """``(ny, nx)`` bool on the search grid: True inside the Shapes/Labels ``layer``."""
        from napari.layers import Shapes

        res = self.review.result
        shape = res.maps["zscore"].shape
        px = res.pixel_size_a
        scale = np.asarray(layer.scale[-2:], float)
        translate = np.asarray(layer.translate[-2:], float)
        if isinstance(layer, Shapes):
            far = (np.asarray(shape) * px - translate) / scale
            labels = layer.to_labels(labels_shape=np.maximum(np.ceil(far).astype(int) + 1, 1))
        else:
            labels = np.asarray(layer.data)
        return sample_mask(labels, scale, translate, shape, px)

    def reextract(self):
        """Extract again with the metric, radius, floor and mask shown in the widget."""
        if self.review is None:
            return
        mask_name = self.mask_combo.currentText()
        exclusion = None
        try:
            if mask_name and mask_name != NO_MASK and mask_name in self.viewer.layers:
                exclusion = self.exclusion_from_layer(self.viewer.layers[mask_name])
            radius = self.radius_spin.value() or None
            floor = None if self.floor_spin.value() <= self.floor_spin.minimum() else (
                self.floor_spin.value())
            self.review.extract(self.metric_combo.currentData() or self.review.metric,
                                radius_px=radius, floor=floor, exclusion=exclusion)
        except Exception as e:
            self._set_status(f"Extraction failed: {one_line(e)}", error=True)
            return
        self._apply_review()
        n_ex = 0 if exclusion is None else int(exclusion.sum())
        self._set_status(f"{len(self.review.table)} candidates ({METRICS[self.review.metric]}"
                         + (f", {n_ex} px excluded" if n_ex else "") + ")")
        self._save_timer.start()

    # ------------------------------------------------------------- selection
    def select_hit(self, hit_id: int, center: bool = True):
        """Make a candidate the current hit: table row, point selection, inspection."""
        if self.review is None or not 0 <= hit_id < len(self.review.table):
            return
        row = int(self.model.pos[hit_id])
        if row >= 0 and self.selected_rows != [row]:
            self._center_request = center
            try:
                self.table.selectRow(row)  # -> _on_table_selection
            finally:
                self._center_request = None
            self.table.scrollTo(self.model.index(row, 0))
        else:
            self._syncing = True
            try:
                self.layer.selected_data = {hit_id}
            finally:
                self._syncing = False
            self._set_current(hit_id, center)

    def _on_table_selection(self, *_):
        if self._syncing or self.review is None:
            return
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        ids = [int(self.model.rows[r]) for r in rows]
        self._syncing = True
        try:
            self.layer.selected_data = set(ids)
        finally:
            self._syncing = False
        cur = self.table.selectionModel().currentIndex()
        current = int(self.model.rows[cur.row()]) if cur.isValid() and cur.row() in rows else (
            ids[-1] if ids else None)
        if current is not None:
            center = self._center_request if self._center_request is not None else len(ids) == 1
            self._set_current(current, center=center)

    def _on_points_selection(self, *_):
        if self._syncing or self.review is None:
            return
        ids = sorted(int(i) for i in self.layer.selected_data)
        rows = [int(self.model.pos[i]) for i in ids if self.model.pos[i] >= 0]
        self._syncing = True
        try:
            sel = QItemSelection()
            last = self.model.columnCount() - 1
            for r in rows:
                sel.select(self.model.index(r, 0), self.model.index(r, last))
            flags = (QItemSelectionModel.SelectionFlag.ClearAndSelect
                     | QItemSelectionModel.SelectionFlag.Rows)
            self.table.selectionModel().select(sel, flags)
            if rows:
                self.table.scrollTo(self.model.index(rows[-1], 0))
        finally:
            self._syncing = False
        if ids:
            current = self.current if self.current in ids else ids[-1]
            self._set_current(current, center=False)

    def _set_current(self, hit_id: int, center: bool):
        self.current = int(hit_id)
        if center:
            self._center_on(hit_id)
        self.inspect(hit_id)

    def _center_on(self, hit_id: int):
        world = self.layer.data_to_world(self.layer.data[hit_id])
        camera = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera
        camera.center = tuple(float(v) for v in world[-2:])

    @property
    def selected_rows(self) -> list[int]:
        return sorted({i.row() for i in self.table.selectionModel().selectedRows()})

    def selected_ids(self) -> list[int]:
        """Ids of the selected candidates (the current hit when nothing is selected)."""
        ids = sorted(int(i) for i in self.layer.selected_data) if self.layer is not None else []
        return ids or ([self.current] if self.current is not None else [])

    def _step(self, delta: int):
        rows = self.model.rows
        if self.review is None or not len(rows):
            return
        pos = self.model.pos[self.current] if self.current is not None else -1
        nxt = 0 if pos < 0 else int(np.clip(pos + delta, 0, len(rows) - 1))
        self.select_hit(int(rows[nxt]))

    def next_hit(self, *_):
        """Select the next hit in table order (key ``n``)."""
        self._step(1)

    def previous_hit(self, *_):
        """Select the previous hit in table order (key ``p``)."""
        self._step(-1)

    # ------------------------------------------------------------- inspection
    def _micrograph(self):
        from napari_2dtm.io.mrc import read_micrograph

        rv = self.review
        name = self.micrograph_name
        shape = tuple(rv.metadata.get("input_shape") or ())
        if name in self.viewer.layers:
            data = np.asarray(self.viewer.layers[name].data)
            if data.ndim == 2 and (not shape or data.shape == shape):
                return data
        mic = rv.metadata.get("micrograph")
        if mic and Path(mic).is_file():
            return read_micrograph(mic, rv.result.input_pixel_size_a)[0]
        raise ValueError(f"micrograph {name!r} is neither a layer nor a file")

    def _find_template(self):
        from napari.layers import Image

        from napari_2dtm.hits.inspection import template_for_result
        from napari_2dtm.templates.template import Template

        if self._template is not None:
            return self._template
        try:
            return template_for_result(self.review.result)
        except Exception as first:
            info = dict(self.review.metadata.get("template") or {})
            box, tpx = info.get("box"), info.get("pixel_size_a")
            for layer in self.viewer.layers:
                if isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb:
                    data = np.asarray(layer.data)
                    lpx = layer.metadata.get("napari_2dtm", {}).get("pixel_size_a") or float(
                        layer.scale[-1])
                    if len(set(data.shape)) == 1 and data.shape[0] == box and tpx and abs(
                            float(lpx) - float(tpx)) < 1e-3 * float(tpx):
                        return Template(data.astype(np.float32), float(tpx), source=layer.name)
            raise first

    def _get_inspector(self):
        from napari_2dtm.hits.inspection import HitInspector

        if self.inspector is None and self._inspector_error is None:
            try:
                self.inspector = HitInspector.for_result(
                    self.review.result, self._micrograph(), self._find_template())
            except Exception as e:
                self._inspector_error = one_line(e)
        return self.inspector

    def inspect(self, hit_id: int):
        """Show the inspection of a candidate (box, template at pose, difference)."""
        rv = self.review
        row = rv.table.iloc[int(hit_id)]
        text = self._numbers(row)
        ins = self._get_inspector()
        if ins is None:
            self.inspection.show_message(f"{text}\nNo inspection: {self._inspector_error}")
        else:
            try:
                r = ins.inspect(row)
                self.inspection.show_inspection(
                    r, f"{text}\nCC {r.cc:.2f} at this pose · box/model correlation "
                       f"{r.pearson:.2f} · box {r.box.shape[0]} px of {r.pixel_size_a:.2f} Å")
            except Exception as e:
                self.inspection.show_message(f"{text}\nNo inspection: {one_line(e)}")
        self.hit_inspected.emit(int(hit_id))

    @staticmethod
    def _numbers(row) -> str:
        parts = [f"#{int(row['id'])} {row['status']}", f"x {row['x']:.0f}, y {row['y']:.0f} px"]
        for key in METRICS:
            if key in row.index:
                parts.append(f"{METRICS[key]} {row[key]:.2f}")
        parts.append(f"φ θ ψ {row['phi']:.1f} {row['theta']:.1f} {row['psi']:.1f}°")
        if "defocus_a" in row.index:
            parts.append(f"defocus {row['defocus_a']:.0f} Å")
        return " · ".join(parts)

    # --------------------------------------------------------------- curation
    def set_status(self, ids, status: str, advance: bool = True):
        """Set the status of candidates; colours, table and labels follow; autosaved."""
        if self.review is None:
            return
        ids = [int(i) for i in ids if i is not None]
        if not ids:
            return
        self.review.set_status(ids, status)
        self._rgba[ids] = STATUS_RGBA[status]
        self._paint()
        self.model.set_status(ids, status)
        self._update_labels()
        self._save_timer.start()
        if self.current in ids:
            row = self.review.table.iloc[self.current]
            self.inspection.numbers.setText(
                self._numbers(row) + "\n" + self.inspection.numbers.text().split("\n", 1)[-1])
        if advance and len(ids) == 1:
            self.next_hit()

    def accept(self, *_):
        """Accept the selected hit(s) (key ``a``), then go to the next one."""
        self.set_status(self.selected_ids(), "accepted")

    def reject(self, *_):
        """Reject the selected hit(s) (key ``r``), then go to the next one."""
        self.set_status(self.selected_ids(), "rejected")

    def unreview(self, *_):
        """Mark the selected hit(s) unreviewed again (key ``u``)."""
        self.set_status(self.selected_ids(), "unreviewed")

    def save(self):
        """Write the review into ``<results folder>/review/`` (atomic)."""
        if self.review is None or self.review.folder is None:
            return None
        self._save_timer.stop()
        try:
            out = self.review.save()
        except Exception as e:
            self._set_status(f"Review not saved: {one_line(e)}", error=True)
            return None
        self.saved.emit(str(out))
        return out

    # ----------------------------------------------------------------- export
    def export(self, path, accepted_only: bool | None = None):
        """Write STAR (RELION 5) or CSV of every hit above the threshold that is not
        rejected, or of the accepted hits only."""
        if self.review is None:
            return None
        if accepted_only is None:
            accepted_only = self.accepted_only.isChecked()
        try:
            table = self.review.export(path, "accepted" if accepted_only else "all")
        except Exception as e:
            self._set_status(f"Export failed: {one_line(e)}", error=True)
            return None
        self._set_status(f"{len(table)} hits written to {path}")
        return table

    def _export_dialog(self):
        if self.review is None:
            return
        start = str((self.review.folder or Path.cwd()) / "hits_reviewed.star")
        path, _ = QFileDialog.getSaveFileName(self, "Export hits", start,
                                              "STAR (*.star);;CSV (*.csv)")
        if path:
            self.export(path)

    # ------------------------------------------------------------------- keys
    def _bind_keys(self):
        for key in KEYS:
            self.viewer.bind_key(key, getattr(self, f"_key_{key}"), overwrite=True)

    def _unbind_keys(self):
        for key in KEYS:
            try:
                self.viewer.bind_key(key, None, overwrite=True)
            except (TypeError, ValueError, KeyError):
                pass

    def _key_n(self, *_):
        self.next_hit()

    def _key_p(self, *_):
        self.previous_hit()

    def _key_a(self, *_):
        self.accept()

    def _key_r(self, *_):
        self.reject()

    def _key_u(self, *_):
        self.unreview()

    def _set_status(self, text, error=False):
        self.status.setText(text)
        self.status.setStyleSheet("color: #ff6b6b;" if error else "")

    def closeEvent(self, event):  # noqa: N802 (Qt name)
        self.save()
        self._unbind_keys()
        super().closeEvent(event)


# ------------------------------------------------------------- entry points


def review_hits(viewer, hits_layer_name: str, result=None, folder=None, template=None):
    """Dock the Hits widget (or reuse it) and review ``hits_layer_name``; returns it."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Hits")
    widget._refresh_layer_choices()
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
            try:
                search_widget._set_status(
                    f"{search_widget.status.text()} (review not opened: {one_line(e)})", error=True)
            except RuntimeError:
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


def _live_neg_log_p(zscore, snr):
    """-ln p map of partial maps (None while the population is too small)."""
    from napari_2dtm.search.pvalue import neg_log_p_map

    try:
        return neg_log_p_map(zscore, snr, mask=zscore != 0)
    except ValueError:
        return None


class LiveNegLogP:
    """-ln p recomputed from a running search's partial maps, off the main thread.

    ``update(progress)`` starts a worker unless one is running or the last started
    less than ``interval_s`` ago (at least 5 x its compute time, so large maps do not
    load the CPU the search needs); the final snapshot is always computed.
    ``show(map, pixel_size_a)`` runs in the main thread with each new map.
    """

    def __init__(self, show, interval_s: float = 2.0):
        self.show = show
        self.interval_s = interval_s
        self._busy = False
        self._pending = None
        self._last = -np.inf
        self._cost = 0.0
        self.n_shown = 0

    def update(self, progress):
        from napari_2dtm.hits.review import pvalue_available

        if not pvalue_available():
            return
        if self._busy:
            if progress.done:
                self._pending = progress
            return
        wait = max(self.interval_s, 5.0 * self._cost)
        if not progress.done and time.perf_counter() - self._last < wait:
            return
        self._start(progress)

    def _start(self, progress):
        from napari.qt.threading import create_worker

        self._busy = True
        self._last = time.perf_counter()
        worker = create_worker(_live_neg_log_p, progress.zscore, progress.snr,
                               _ignore_errors=True)
        px = progress.pixel_size_a
        worker.returned.connect(lambda m: self._returned(m, px))
        worker.finished.connect(self._finished)
        worker.start()

    def _returned(self, nlp, px):
        self._cost = time.perf_counter() - self._last
        if nlp is not None:
            try:
                self.show(nlp, px)
            except RuntimeError:  # the viewer or widget was closed meanwhile
                return
            self.n_shown += 1

    def _finished(self):
        self._busy = False
        if self._pending is not None:
            p, self._pending = self._pending, None
            self._start(p)
