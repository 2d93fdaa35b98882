"""The "2DTM Hits" dock widget: threshold, table, histogram, inspection, curation, export.

A thin shell over :class:`napari_2dtm.hits.review.Review` (candidates, thresholds, expected
false positives, decisions, saving, export) and :class:`napari_2dtm.hits.inspection.HitInspector`
(box beside the template at the hit's pose). It docks itself when a search finishes
or a results folder is opened (:mod:`._hits_dock`).

The review owns one points layer, ``hits review [<micrograph>]``: every candidate
(all local maxima above a floor, extracted once), of which the threshold only toggles
``shown``, so the layer follows the slider at once (:class:`._hits_layer.ReviewPoints`).
Border colours give the status (cyan unreviewed, green accepted, red rejected). The
search's own ``hits [...]`` layer is hidden, not changed.

Built from parts that hold no review state: the detection, extraction and curation boxes
(:mod:`._hits_controls`), the table (:mod:`._hits_table`), the histogram and inspection
plots (:mod:`._hits_views`), and the lookup of micrograph and template for inspection
(:mod:`._hits_inspect`). This class holds the review and is the one path by which a
control, a key or a script changes it (``set_threshold``, ``reextract``, ``set_status``);
table and points layer select the same hits both ways (``_syncing`` stops the echo).

Keys (on the viewer; ``a`` and ``p`` also on the review layer, where napari uses them
for "select all" and "add points"): ``n`` / ``p`` next / previous hit in table order,
``a`` accept, ``r`` reject, ``u`` back to unreviewed (then on to the next hit).
Decisions are saved (debounced) in ``<results>/review/`` and restored on reopening.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_2dtm.errors import one_line
from napari_2dtm.hits.review import MAX_CANDIDATES, METRICS, Review, available_metrics
from napari_2dtm.search.foreign import export_result, is_results_folder, open_results

from ._hits_controls import CurationBar, DetectionBox, ExtractionBox, SourceRow
from ._hits_dock import micrograph_name_of, review_layer_name
from ._hits_inspect import HitInspection, hit_numbers
from ._hits_layer import (
    ReviewPoints,
    exclusion_from_layer,
    hits_layer_names,
    mask_layer_names,
    show_exclusion,
)
from ._hits_selection import HitSelection
from ._hits_table import HitsTable
from ._hits_views import HistogramPlot, InspectionPanel
from ._layers import hit_marker_size_px

if TYPE_CHECKING:
    import napari

KEYS = {"n": "next_hit", "p": "previous_hit", "a": "accept", "r": "reject", "u": "unreview"}
LAYER_KEYS = ("a", "p")  # napari's points layer binds these itself


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
        self.points: ReviewPoints | None = None
        self.source_layer_name: str | None = None
        self._inspection = HitInspection(napari_viewer)
        self.last_threshold_ms = float("nan")
        self.max_candidates = MAX_CANDIDATES

        self.source_row = SourceRow()
        self.source_combo = self.source_row.combo
        self.detection = DetectionBox()
        self.histogram = HistogramPlot()
        self.extraction = ExtractionBox()
        self.table = HitsTable()
        self.model = self.table.hits_model
        self.selection = HitSelection(self.table, self._show_current)
        self.inspection = InspectionPanel()
        self.curation = CurationBar()
        # the controls scripts and tests use, under the widget's names of 0.1.0
        d, x = self.detection, self.extraction
        self.metric_combo, self.threshold_spin = d.metric_combo, d.threshold_spin
        self.slider, self.n_fp_spin, self.fp_label = d.slider, d.n_fp_spin, d.fp_label
        self.mask_combo, self.status = x.mask_combo, self.curation.status

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.source_row)
        layout.addWidget(self.detection)
        layout.addWidget(self.histogram.canvas, 2)
        layout.addWidget(self.extraction)
        layout.addWidget(self.table, 3)
        layout.addWidget(self.inspection, 2)
        layout.addWidget(self.curation)

        self.source_combo.activated.connect(self._on_source_chosen)
        d.metric_chosen.connect(self._on_metric_chosen)
        d.threshold_requested.connect(self.set_threshold)
        d.false_positives_requested.connect(self.set_threshold_for)
        x.extract_button.clicked.connect(self.reextract)
        for name, button in self.curation.buttons.items():
            button.clicked.connect(getattr(self, name))
        self.curation.export_button.clicked.connect(self._export_dialog)

        self._save_timer = QTimer(self)  # debounces autosaving
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(500)
        self._save_timer.timeout.connect(self.save)

        events = self.viewer.layers.events
        events.inserted.connect(self.refresh_layer_choices)
        events.removed.connect(self.refresh_layer_choices)
        events.removed.connect(self._on_layer_removed)
        self.refresh_layer_choices()
        # key -> what napari calls on the key press (with the viewer or layer: dropped)
        self._key_bindings = {key: (lambda *_, a=action: getattr(self, a)())
                              for key, action in KEYS.items()}
        for key, binding in self._key_bindings.items():
            self.viewer.bind_key(key, binding, overwrite=True)
        self._set_enabled(False)

    @property
    def layer(self):
        """The review's points layer (None without a review)."""
        return None if self.points is None else self.points.layer

    @property
    def current(self) -> int | None:
        """Id of the candidate inspected (None before one is selected)."""
        return self.selection.current

    @property
    def micrograph_name(self) -> str:
        return micrograph_name_of(self.source_layer_name or "")

    def _set_enabled(self, on: bool):
        self.detection.set_active(on)
        self.extraction.extract_button.setEnabled(on)
        self.table.setEnabled(on)

    # ---------------------------------------------------------- layer lists
    def refresh_layer_choices(self, *_):
        """List the viewer's search hits layers and (2D) Shapes/Labels exclusion layers."""
        self.source_row.set_choices(hits_layer_names(self.viewer), self.source_layer_name)
        self.extraction.set_mask_choices(mask_layer_names(self.viewer))

    def _on_source_chosen(self, *_):
        name = self.source_combo.currentText()
        if name and name in self.viewer.layers and name != self.source_layer_name:
            self.set_source(self.viewer.layers[name])

    def _on_layer_removed(self, event):
        if self.points is not None and event.value is self.points.layer:
            self._detach_points()
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
        if not is_results_folder(folder):  # ours, or cisTEM's / Leopard-EM's
            self.curation.set_status(f"{hits_layer.name}: no results folder to review", error=True)
            return
        try:
            result = result if result is not None else open_results(folder).result
            review = Review.open(folder, result=result, max_candidates=self.max_candidates)
        except Exception as e:
            self.curation.set_status(f"Cannot review {folder.name}: {one_line(e)}", error=True)
            return
        self._inspection.reset(review, micrograph_name_of(hits_layer.name), template)
        self.source_layer_name = hits_layer.name
        self.review = review
        hits_layer.visible = False
        self._ensure_layer(hits_layer)
        exclusion = None if review.exclusion is None else show_exclusion(
            self.viewer, review.exclusion, self.micrograph_name, review.result.pixel_size_a)
        self.refresh_layer_choices()
        if exclusion is not None:
            self.mask_combo.setCurrentText(exclusion)
        self.detection.set_metrics(available_metrics(review.result), review.metric)
        self.extraction.show_settings(review.radius_px, review.floor)
        self.n_fp_spin.setValue(review.n_false_positives)
        self._set_enabled(True)
        self._apply_review()
        n = review.counts()
        restored = n["accepted"] + n["rejected"]
        self.curation.set_status(f"{n['candidates']} candidates from {folder.name}"
                         + (f"; {restored} decisions restored" if restored else ""))

    def _ensure_layer(self, hits_layer):
        """The review's points layer (created beside the search's hits layer)."""
        self._detach_points()  # before a layer of the same name is replaced
        self.points = ReviewPoints(
            self.viewer, hits_layer, review_layer_name(self.micrograph_name),
            hit_marker_size_px(self.review.result), self.review.shown)
        self.selection.attach(self.points.layer)
        for key in LAYER_KEYS:
            self.points.layer.bind_key(key, self._key_bindings[key], overwrite=True)

    def _detach_points(self):
        if self.points is not None:
            self.selection.detach()
            self.points.detach()
            self.points = None

    def _apply_review(self):
        """Push the review's candidates into the layer, table and plots."""
        rv = self.review
        with self.selection.quiet():
            self.selection.clear()
            self.points.set_candidates(rv.table)
            self.table.show_table(rv.table, [m for m in METRICS if m in rv.table.columns])
        self.histogram.set_review(rv)
        self.detection.set_range(rv.values, rv.threshold)
        self.detection.fixed_button.setVisible(rv.metric == "neg_log_p")
        self.set_threshold(rv.threshold)
        self.review_loaded.emit()
        if len(self.model.rows):
            self.select_hit(int(self.model.rows[0]), center=False)

    # ------------------------------------------------------------- threshold
    def set_threshold(self, t: float):
        """Apply a threshold: points' ``shown``, table rows, labels, histogram line."""
        if self.review is None:
            return
        t0 = time.perf_counter()
        shown = self.review.set_threshold(t)
        self.points.show(shown)
        self.model.set_shown(shown)
        self.detection.show_counts(self.review)
        self.detection.show_threshold(t)
        self.histogram.set_threshold(t)
        self.last_threshold_ms = 1e3 * (time.perf_counter() - t0)
        self._save_timer.start()
        self.threshold_applied.emit(float(t))

    def set_threshold_for(self, n_false_positives: float):
        """Threshold with ``n_false_positives`` expected noise peaks."""
        if self.review is not None:
            self.set_threshold(self.review.set_threshold_for(n_false_positives))

    # ------------------------------------------------------------ extraction
    def _on_metric_chosen(self, metric: str):
        if self.review is not None and metric != self.review.metric:
            self.reextract()

    def reextract(self):
        """Extract again with the metric, radius, floor and mask shown in the widget."""
        if self.review is None:
            return
        mask_name = self.extraction.mask_name()
        exclusion = None
        try:
            if mask_name and mask_name in self.viewer.layers:
                exclusion = exclusion_from_layer(self.viewer.layers[mask_name],
                                                 self.review.result)
            self.review.extract(self.metric_combo.currentData() or self.review.metric,
                                radius_px=self.extraction.radius_px(),
                                floor=self.extraction.floor(), exclusion=exclusion)
        except Exception as e:
            self.curation.set_status(f"Extraction failed: {one_line(e)}", error=True)
            return
        self._apply_review()
        n_ex = 0 if exclusion is None else int(exclusion.sum())
        metric = METRICS[self.review.metric]
        self.curation.set_status(f"{len(self.review.table)} candidates ({metric}"
                                 + (f", {n_ex} px excluded" if n_ex else "") + ")")
        self._save_timer.start()

    # ------------------------------------------------------------- selection
    def select_hit(self, hit_id: int, center: bool = True):
        """Make a candidate the current hit: table row, point selection, inspection."""
        if self.review is not None and 0 <= hit_id < len(self.review.table):
            self.selection.select(hit_id, center)

    def _show_current(self, hit_id: int, center: bool):
        if center:
            self.points.center_view(self.viewer, hit_id)
        self.inspect(hit_id)

    @property
    def selected_rows(self) -> list[int]:
        return self.table.selected_rows()

    def selected_ids(self) -> list[int]:
        """Ids of the selected candidates (the current hit when nothing is selected)."""
        return self.selection.selected_ids()

    def next_hit(self, *_):
        """Select the next hit in table order (key ``n``)."""
        self.selection.step(1)

    def previous_hit(self, *_):
        """Select the previous hit in table order (key ``p``)."""
        self.selection.step(-1)

    def inspect(self, hit_id: int):
        """Show the inspection of a candidate (box, template at pose, difference)."""
        self._inspection.show(self.inspection, hit_id)
        self.hit_inspected.emit(int(hit_id))

    # --------------------------------------------------------------- curation
    def set_status(self, ids, status: str, advance: bool = True):
        """Set the status of candidates; colours, table and labels follow; autosaved."""
        if self.review is None:
            return
        ids = [int(i) for i in ids if i is not None]
        if not ids:
            return
        self.review.set_status(ids, status)
        self.points.set_status(ids, status)
        self.model.set_status(ids, status)
        self.detection.show_counts(self.review)
        self._save_timer.start()
        if self.current in ids:
            numbers = self.inspection.numbers
            row = self.review.table.iloc[self.current]
            numbers.setText(hit_numbers(row) + "\n" + numbers.text().split("\n", 1)[-1])
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
            self.curation.set_status(f"Review not saved: {one_line(e)}", error=True)
            return None
        self.saved.emit(str(out))
        return out

    def export(self, path, accepted_only: bool | None = None, fmt: str | None = None):
        """Write the hits shown (or accepted): STAR/CSV, or fmt "leopard"/"cistem"."""
        if self.review is None:
            return None
        which = "accepted" if (self.curation.accepted_only.isChecked() if accepted_only is None
                               else accepted_only) else "all"
        try:
            table = (export_result(self.review.results, self.review.selection(which), path, fmt)
                     if fmt else self.review.export(path, which))
        except Exception as e:
            self.curation.set_status(f"Export failed: {one_line(e)}", error=True)
            return None
        self.curation.set_status(f"{len(table)} hits written to {path}")
        return table

    def _export_dialog(self):
        if self.review is None:
            return
        path, fmt = self.curation.ask_export_path(
            str((self.review.folder or Path.cwd()) / "hits_reviewed.star"))
        if path:
            self.export(path, fmt=fmt)

    def closeEvent(self, event):  # noqa: N802 (Qt name)
        self.save()
        for key in KEYS:
            try:
                self.viewer.bind_key(key, None, overwrite=True)
            except (TypeError, ValueError, KeyError):
                pass
        super().closeEvent(event)
