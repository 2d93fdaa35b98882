"""The "2DTM Search" dock widget: set up a search, watch its maps grow, get the hits.

A thin shell over the search job the CLI runs: the fields (:class:`~._search_form.SearchForm`)
give a :class:`napari_2dtm.SearchConfig` and the inputs, the shared
:class:`~._job_panel.JobPanel` runs :func:`napari_2dtm.jobs.search.run_search` (or, in
teaching mode, :func:`napari_2dtm.jobs.teaching.run_teaching`) in a worker thread, and
main-thread slots turn its progress records into live z-score, SNR and -ln p layers and
the final result into map and hits layers. The results folder is the one
``napari-2dtm search`` writes (an in-memory micrograph is saved in it under ``input/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QCheckBox, QVBoxLayout, QWidget

from napari_2dtm.errors import one_line
from napari_2dtm.jobs.search import SearchStarted, estimate_job, run_search
from napari_2dtm.jobs.teaching import TeachingStep, run_teaching

from ._job_panel import JobPanel
from ._layers import full_limits, hits_layer_name, map_layer, result_layers
from ._search_form import SearchForm, _fmt_seconds

if TYPE_CHECKING:
    import napari

LIVE_MAPS = ("zbg", "zscore", "snr")


class SearchWidget(SearchForm, QWidget):
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
        self._live_layers: dict = {}
        self._live_p = None
        self._estimate_worker = None
        self._estimate_generation = 0
        self.result = None
        self.results_folder: Path | None = None
        self.n_updates = 0
        self.gpu: dict = {}
        self._mic_name = ""
        self._mic_units = ("angstrom", "angstrom")
        self.teaching_pace: dict | None = None  # overrides jobs.teaching.PACE (tests)
        self._teaching_view = None

        self.panel = JobPanel("Results folder", "Run", verb="Search")
        self.panel.expose_on(self)  # output_dir, overwrite, run_button, ..., status; Run -> self.run
        self.teaching = QCheckBox("Teaching mode: slow, each step shown and explained")
        self.teaching.setToolTip("Runs the same search at a watchable pace and shows, beside "
                                 "the micrograph, each orientation's projection with its CTF, "
                                 "its cross-correlation, the MIP building up and (with a "
                                 "ground truth) live precision and recall")
        self.panel.options.addWidget(self.teaching)
        self.panel.started.connect(self.search_started)
        self.panel.progressed.connect(self._on_progress)
        self.panel.returned.connect(self._on_returned)
        self.panel.finished.connect(self._on_finished)

        self._estimate_timer = QTimer(self)
        self._estimate_timer.setSingleShot(True)
        self._estimate_timer.setInterval(400)
        self._estimate_timer.timeout.connect(self.update_estimate)

        layout = QVBoxLayout(self)
        layout.addWidget(self._build_input_box())
        layout.addWidget(self._build_ctf_box())
        layout.addWidget(self._build_search_box())
        layout.addWidget(self.panel)
        layout.addStretch(1)

        events = self.viewer.layers.events
        events.inserted.connect(self._refresh_layer_choices)
        events.removed.connect(self._refresh_layer_choices)
        events.reordered.connect(self._refresh_layer_choices)
        self._refresh_layer_choices()
        self._connect_estimate_triggers()
        self._show_device()
        self._schedule_estimate()

    def _suggest_output_dir(self):
        layer = self.micrograph_layer()
        if layer is None:
            return
        src = getattr(layer.source, "path", None)
        self.panel.suggest_output(
            Path(src).with_name(f"{Path(src).stem}_2dtm") if src
            else Path.cwd() / "2dtm_results" / layer.name.replace(" ", "_"))

    # --------------------------------------------------------------- estimate
    def _connect_estimate_triggers(self):
        for w in (
            self.out_of_plane, self.in_plane, self.defocus_range, self.defocus_step,
            self.high_res, self.pixel_size,
        ):
            w.valueChanged.connect(self._schedule_estimate)
        self.symmetry.currentTextChanged.connect(self._schedule_estimate)
        self.device.currentTextChanged.connect(self._schedule_estimate)
        self.strategy.currentTextChanged.connect(self._schedule_estimate)
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

    # -------------------------------------------------------------- run/cancel
    @property
    def running(self) -> bool:
        return self.panel.running

    def run(self):
        """Start the search in a worker thread (no-op while one runs)."""
        if self.running:
            return
        try:
            image, px, template, mic_path = self._inputs()
            config = self.search_config()
            # what needs the micrograph (Nyquist, pixel-size planes, the template box) is
            # refused here too, before a job starts
            box = getattr(template, "box", None)
            config.check_against(px, box * template.pixel_size_a if box else None)
            out = self.panel.out_dir()
        except Exception as e:
            self.panel.refuse(e)
            return
        layer = self.micrograph_layer()
        self._mic_name = layer.name
        self._mic_units = tuple(str(u) for u in layer.units[-2:])
        self._live_p = None
        self.result = None
        self.n_updates = 0
        job, extra = run_search, {}
        if self.teaching.isChecked():
            from ._teaching_widget import TeachingView, truth_table

            self._teaching_view = TeachingView(self.viewer, self._mic_name)
            job = run_teaching
            extra = dict(truth=truth_table(self.viewer, self._mic_name), pace=self.teaching_pace)
        self.panel.start(job, image, px, template, config, out, micrograph_path=mic_path,
                         micrograph_name=self._mic_name, overwrite=self.overwrite.isChecked(),
                         status="Preparing the search…", **extra)

    def cancel(self):
        """Ask the running search to stop (it stops between orientation batches)."""
        self.panel.cancel()

    # Everything below runs in the main thread (queued signals from the worker).
    def _on_progress(self, record):
        if isinstance(record, SearchStarted):
            zeros = np.zeros(record.image_shape, np.float32)
            for key in LIVE_MAPS:
                self._show_map(key, zeros, record.pixel_size_a)
            self.panel.set_progress(0.0, f"0% · {record.n_orientations:,} orientations")
            self.panel.set_status(f"Searching on {record.search.backend.description}…")
            from ._live_pvalue import LiveNegLogP  # -ln p from the partial maps, throttled

            self._live_p = LiveNegLogP(lambda m, px: self._show_map("neg_log_p", m, px))
            return
        if isinstance(record, TeachingStep):  # its layers, then the usual progress display
            self._teaching_view.show(record)
            if record.stage != "search":
                return
            record = record.progress
        p = record
        for key in LIVE_MAPS:
            self._show_map(key, getattr(p, key), p.pixel_size_a)
        if self._live_p is not None:
            self._live_p.update(p)
        self.n_updates += 1
        self.panel.set_progress(p.fraction, f"{100 * p.fraction:.0f}% · ETA {_fmt_seconds(p.eta_s)} · "
                                f"{p.orientations_per_s:,.0f} orientations/s")
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
        from napari_2dtm.search.results import ResultsFolder

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
        view = ResultsFolder.of(result, folder)
        self.panel.set_progress(1.0, f"done in {_fmt_seconds(view.elapsed_s)}")
        meta = result.metadata  # the device line: what ran, at the rate measured
        if meta.get("cc_per_s"):
            self.device_info.setText(f"{meta.get('device_name') or meta.get('device')}: "
                                     f"{meta['cc_per_s']:,.0f} cross-correlations/s measured")
        self.panel.set_status(f"{len(view.hits)} hits above the threshold "
                              f"{view.hits_threshold:.2f}; saved to {folder}")
        from ._hits_dock import review_when_finished  # docks the Hits widget afterwards

        review_when_finished(self, hits_layer_name(self._mic_name), result, folder)

    def _on_finished(self, outcome: str):
        if outcome != "done" and self._live_p is not None:
            self._live_p.stop()
        if outcome == "done":
            self._suggest_output_dir()
        elif outcome == "cancelled":
            self.panel.set_status("Search cancelled; partial maps are kept, nothing was saved.")
        self.search_finished.emit(outcome)

    def closeEvent(self, event):  # noqa: N802 (Qt name)
        if self._live_p is not None:
            self._live_p.stop()
        self.cancel()
        super().closeEvent(event)
