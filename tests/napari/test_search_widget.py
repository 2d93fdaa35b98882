"""The Search widget in a real napari viewer: live maps, hits, cancel, errors.

Searches run on the "2DTM demo" sample (320 x 320 px) with the coarse grid its
metadata suggests, so each takes well under a minute on 2 cores.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from qtpy.QtCore import QThreadPool, QTimer

from napari_2dtm import read_results

SEARCH_TIMEOUT_MS = 300_000


@pytest.fixture
def viewer(make_napari_viewer, monkeypatch):
    # Plugin widgets get a viewer proxy; this makes it refuse changes from other threads.
    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")
    return make_napari_viewer()


def _add_layers(viewer, layer_data):
    for data, kwargs, kind in layer_data:
        getattr(viewer, f"add_{kind}")(data, **kwargs)


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Search")
    return widget


def _recall(hits, truth, tol_px=4.0) -> float:
    found = 0
    for _, t in truth.iterrows():
        d = np.hypot(hits["x"] - t["x"], hits["y"] - t["y"])
        found += bool(len(d) and d.min() <= tol_px)
    return found / len(truth)


def test_demo_search_streams_live_maps_and_finds_the_particles(viewer, qtbot, tmp_path):
    viewer.open_sample("napari-2dtm", "demo")
    widget = _dock(viewer)
    # the sample's suggested settings were applied, the template layer picked
    assert widget.micrograph_combo.currentText() == "2DTM demo"
    assert widget.template_combo.currentText() == "template 1BD2"
    assert widget.out_of_plane.value() == 15.0
    assert "GPU" in widget.device_info.text()
    with qtbot.waitSignal(widget.estimate_ready, timeout=60_000) as est:
        widget.update_estimate()
    assert "orientations" in est.args[0] and "about" in est.args[0]

    widget.output_dir.setText(str(tmp_path / "results"))
    updates, slot_threads = [], []

    def on_progress(p):
        slot_threads.append(threading.current_thread())
        z = viewer.layers["z-score [2DTM demo]"]
        updates.append((time.perf_counter(), p.fraction, tuple(z.contrast_limits), z.data.copy()))

    widget.progress_shown.connect(on_progress)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(50)
    with qtbot.waitSignal(widget.search_finished, timeout=SEARCH_TIMEOUT_MS) as done:
        widget.run()
        # the live layers appear at once, before the first progress update
        qtbot.waitUntil(lambda: "SNR [2DTM demo]" in viewer.layers, timeout=30_000)
    timer.stop()
    assert done.args == ["done"], widget.status.text()

    # streamed: >= 3 updates, at most ~2 s apart, full-range contrast, main thread only
    assert len(updates) >= 3
    gaps = np.diff([u[0] for u in updates])
    assert gaps.max() < 2.5, gaps
    assert all(t is threading.main_thread() for t in slot_threads)
    partial = [u for u in updates if 0 < u[1] < 1]
    assert len(partial) >= 2
    for _, _, limits, data in partial:
        assert limits == pytest.approx((float(data.min()), float(data.max())), rel=1e-5)
    # the UI kept running: the 50 ms timer was never starved for long
    assert np.diff(ticks).max() < 1.5, np.diff(ticks).max()

    # final layers: maps at the search pixel size, hits with a features table
    hits_layer = viewer.layers["hits [2DTM demo]"]
    for name in ("z-score", "SNR", "phi", "theta", "psi", "defocus"):
        layer = viewer.layers[f"{name} [2DTM demo]"]
        assert layer.scale[-1] == pytest.approx(widget.result.pixel_size_a)
    assert viewer.layers["SNR [2DTM demo]"].colormap.name == "inferno"
    features = hits_layer.features
    assert {"x", "y", "phi", "theta", "psi", "defocus_a", "zscore", "snr"} <= set(features)
    np.testing.assert_allclose(hits_layer.data[:, 1], features["x"])
    truth = viewer.layers["ground truth [2DTM demo]"]
    assert not truth.visible
    recall = _recall(features, truth.features)
    assert recall >= 0.9, (recall, widget.status.text())

    # everything saved as the CLI writes it, and the folder opens again in napari
    folder = widget.results_folder
    for name in ("search.json", "hits.star", "hits.csv", "zscore.mrc", "snr.mrc", "psi.mrc",
                 "defocus.mrc", "input/2DTM_demo.mrc"):
        assert (folder / name).is_file(), name
    saved = read_results(folder)
    np.testing.assert_allclose(saved.hits["x"], features["x"])
    n_before = len(viewer.layers)
    viewer.open(str(folder), plugin="napari-2dtm")
    added = [layer.name for layer in viewer.layers][n_before:]
    assert added[0] == "2DTM_demo"  # the in-memory micrograph was saved with the results
    assert "hits [2DTM_demo]" in added and "SNR [2DTM_demo]" in added
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_cancel_midway_stops_the_thread_and_leaves_a_usable_ui(
    viewer, qtbot, tmp_path, demo_sample
):
    _add_layers(viewer, demo_sample)
    widget = _dock(viewer)
    widget.output_dir.setText(str(tmp_path / "cancelled"))
    widget.apply_settings({"out_of_plane_step_deg": 4.0, "in_plane_step_deg": 4.0})
    with qtbot.waitSignal(widget.progress_shown, timeout=120_000):
        widget.run()
    assert widget.running and not widget.run_button.isEnabled()
    with qtbot.waitSignal(widget.search_finished, timeout=30_000) as finished:
        widget.cancel()
    assert finished.args == ["cancelled"]
    assert QThreadPool.globalInstance().waitForDone(5_000)
    assert QThreadPool.globalInstance().activeThreadCount() == 0
    assert not widget.running
    assert "cancelled" in widget.status.text()
    assert not (tmp_path / "cancelled").exists()
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert "z-score [2DTM demo]" in viewer.layers  # partial maps stay

    # the UI is usable: a quick search runs to the end afterwards
    widget.apply_settings({"out_of_plane_step_deg": 30.0, "in_plane_step_deg": 30.0})
    widget.output_dir.setText(str(tmp_path / "again"))
    with qtbot.waitSignal(widget.search_finished, timeout=SEARCH_TIMEOUT_MS) as again:
        widget.run()
    assert again.args == ["done"]
    assert (tmp_path / "again" / "search.json").is_file()


def test_bad_input_gives_one_clear_line(viewer, qtbot, tmp_path, demo_sample):
    _add_layers(viewer, demo_sample)
    widget = _dock(viewer)
    widget.template_combo.setCurrentText("From file…")
    widget.template_path.setText(str(tmp_path / "nope.mrc"))
    with qtbot.waitSignal(widget.search_finished, timeout=5_000) as finished:
        widget.run()
    assert finished.args == ["error"]
    text = widget.status.text()
    assert text.startswith("Cannot start:") and "nope.mrc" in text and "\n" not in text
    assert widget.run_button.isEnabled() and not widget.running

    widget.template_combo.setCurrentText("template 1BD2")
    widget.output_dir.setText(str(tmp_path))  # exists
    widget.run()
    assert "exists" in widget.status.text()
    assert not widget.running


def test_ctffind_file_fills_the_ctf_fields(viewer, tmp_path, demo_sample):
    _add_layers(viewer, demo_sample)
    widget = _dock(viewer)
    ctffind = tmp_path / "diag.txt"
    ctffind.write_text(
        "# Output from CTFFIND version 4.1.14\n"
        "# Pixel size: 2.000 Angstroms ; acceleration voltage: 200.0 keV ; "
        "spherical aberration: 2.70 mm ; amplitude contrast: 0.10\n"
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; ...\n"
        "1.000000 12345.6 11800.0 35.0 0.0 -0.02 4.1\n"
    )
    widget.load_ctffind(str(ctffind))
    assert widget.defocus1.value() == pytest.approx(12346, abs=1)
    assert widget.defocus2.value() == pytest.approx(11800)
    assert widget.astig_angle.value() == pytest.approx(35.0)
    assert widget.voltage.value() == pytest.approx(200.0)
    assert widget.amp_contrast.value() == pytest.approx(0.10)
    assert "diag.txt" in widget.ctf_source.text()
    config = widget.search_config()
    assert config.ctf.voltage_kv == pytest.approx(200.0)


def test_bad_value_is_refused_by_the_config_before_any_job(viewer, qtbot, tmp_path, demo_sample,
                                                          monkeypatch):
    """The widget builds the same SearchConfig as the CLI: its refusal, word for word, is
    the status line, and no job starts (issue 16: one place for validation)."""
    from napari_2dtm.errors import InputError
    from napari_2dtm.search.config import SearchConfig

    _add_layers(viewer, demo_sample)
    widget = _dock(viewer)
    started = []
    monkeypatch.setattr(widget.panel, "start", lambda *a, **k: started.append(a))
    widget.output_dir.setText(str(tmp_path / "results"))
    widget.defocus_range.setValue(20000)  # +-20000 A in 1 A steps: 40001 planes
    widget.defocus_step.setValue(1)
    with pytest.raises(InputError) as expected:
        SearchConfig(defocus_range_a=20000, defocus_step_a=1)
    with qtbot.waitSignal(widget.search_finished, timeout=5_000) as finished:
        widget.run()
    assert finished.args == ["error"]
    assert widget.status.text() == f"Cannot start: {expected.value}"
    assert "--defocus-range" in widget.status.text()
    assert started == [] and not widget.running
    assert not (tmp_path / "results").exists()


def test_fast_strategy_from_the_widget_writes_a_fast_folder(viewer, qtbot, tmp_path):
    """The Strategy choice runs the coarse-to-fine search through the same job: live maps
    during the coarse stage, hits refined at full resolution, the folder says so."""
    viewer.open_sample("napari-2dtm", "demo")
    widget = _dock(viewer)
    widget.strategy.setCurrentText("fast")
    assert widget.search_config().strategy == "fast"
    widget.output_dir.setText(str(tmp_path / "fast"))
    fractions = []
    widget.progress_shown.connect(lambda p: fractions.append(p.fraction))
    with qtbot.waitSignal(widget.search_finished, timeout=SEARCH_TIMEOUT_MS) as done:
        widget.run()
    assert done.args == ["done"], widget.status.text()
    assert fractions and fractions[-1] == 1.0
    res = widget.result
    assert res.metadata["strategy"] == "fast" and res.candidates is not None
    # maps at the coarse stage's pixel size, hits from the refined candidates
    assert viewer.layers["SNR [2DTM demo]"].scale[-1] == pytest.approx(res.pixel_size_a)
    assert res.pixel_size_a > res.input_pixel_size_a
    hits = viewer.layers["hits [2DTM demo]"].features
    assert len(hits) == len(res.hits) and (hits["zbg"] >= res.threshold).all()
    truth = viewer.layers["ground truth [2DTM demo]"].features
    assert _recall(hits, truth, tol_px=3.0) >= 0.75
    assert (widget.results_folder / "candidates.csv").is_file()
