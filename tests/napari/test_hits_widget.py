"""The Hits widget in a real napari viewer: threshold, table <-> points, keys, curation.

Results come from the "2DTM demo" search (``helpers.review_data.demo_results``, run once per
process); each test opens its own copy of the folder with the plugin's reader, which
docks the widget.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import starfile
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest
from scipy.special import erfc

from helpers.review_data import copy_results, demo_results, noise_results
from napari_2dtm._napari._hits_views import STATUS_RGBA
from napari_2dtm.hits.review import REVIEW_DIR
from napari_2dtm.search.pvalue import neg_log_p_map

DOCK = "2DTM Hits (napari-2dtm)"
RELION_COLUMNS = {"rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnAngleRot",
                  "rlnAngleTilt", "rlnAnglePsi", "rlnDefocusU", "rlnDefocusV",
                  "rlnDefocusAngle", "rln2dtmZScore", "rln2dtmSNR"}


@pytest.fixture
def viewer(make_napari_viewer, monkeypatch):
    # Plugin widgets get a viewer proxy; this makes it refuse changes from other threads.
    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")
    return make_napari_viewer()


def _open(viewer, qtbot, folder):
    """Open a results folder with the plugin's reader; returns the docked Hits widget."""
    viewer.open(str(folder), plugin="napari-2dtm")
    qtbot.waitUntil(lambda: DOCK in viewer.window.dock_widgets
                    and viewer.window.dock_widgets[DOCK].review is not None
                    and viewer.window.dock_widgets[DOCK].review.folder == folder, timeout=20_000)
    return viewer.window.dock_widgets[DOCK]


def _gaussian_tail(t):
    _, result, _ = demo_results()
    return result.n_trials * 0.5 * erfc(t / math.sqrt(2.0))


def test_opening_results_docks_the_review_and_the_threshold_drives_the_points(
        viewer, qtbot, tmp_path):
    folder = copy_results(tmp_path)
    _, result, _ = demo_results()
    widget = _open(viewer, qtbot, folder)
    layer = widget.layer
    review = widget.review
    assert layer.name == "hits review [2DTM_demo]"
    assert not viewer.layers["hits [2DTM_demo]"].visible  # the search's layer, untouched
    assert len(layer.data) == len(review.table) > 2 * len(result.hits)  # every local maximum
    # at the search's threshold: its hits, 1 expected false positive
    assert int(layer.shown.sum()) == len(result.hits)
    assert widget.fp_label.text().startswith("Expected false positives: 1 (Gaussian tail")
    assert widget.model.rowCount() == len(result.hits)

    # the slider moves the threshold: points, table, label and histogram follow
    with qtbot.waitSignal(widget.threshold_applied) as moved:
        widget.slider.setValue(600)
    t = moved.args[0]
    assert t > result.threshold
    n_shown = int(np.sum(review.values >= t))
    assert 0 < n_shown < len(result.hits)
    np.testing.assert_array_equal(layer.shown, review.values >= t)
    # drawn: napari ignores `shown` in a 2D viewer, so hidden points also get size 0
    assert np.all(layer.size[~layer.shown] == 0) and np.all(layer.size[layer.shown] > 0)
    assert widget.model.rowCount() == n_shown
    assert widget.threshold_spin.value() == pytest.approx(t, abs=0.006)
    assert f"Expected false positives: {_gaussian_tail(t):.3g} " in widget.fp_label.text()
    assert f"hits {n_shown} of {len(review.table)} candidates" in widget.fp_label.text()
    assert list(widget.histogram.line.get_xdata()) == pytest.approx([t, t])

    # the spin box too, down to every candidate
    low = float(np.floor(review.values.min()))  # below every candidate
    widget.threshold_spin.setValue(low)
    assert layer.shown.all() and widget.model.rowCount() == len(review.table)
    assert f"Expected false positives: {_gaussian_tail(low):.3g} " in widget.fp_label.text()
    # "N false pos." sets the threshold back for 1 expected false positive
    widget.n_fp_spin.setValue(1.0)
    widget.set_threshold_for(1.0)
    assert widget.threshold_spin.value() == pytest.approx(result.threshold, abs=0.006)
    assert int(layer.shown.sum()) == len(result.hits)


def test_table_and_points_stay_in_sync_both_ways(viewer, qtbot, tmp_path):
    folder = copy_results(tmp_path)
    widget = _open(viewer, qtbot, folder)
    layer, model = widget.layer, widget.model
    camera = viewer.scene.camera

    # a table row selects its point, centres the view on it and inspects it
    with qtbot.waitSignal(widget.hit_inspected) as inspected:
        widget.table.selectRow(3)
    hit = int(model.rows[3])
    assert inspected.args == [hit]
    assert set(layer.selected_data) == {hit}
    world = layer.data_to_world(layer.data[hit])
    assert tuple(camera.center[-2:]) == pytest.approx(tuple(world[-2:]))
    row = widget.review.table.iloc[hit]
    assert widget.inspection.last.cc == pytest.approx(row.mip, rel=0.02)
    assert f"#{hit} " in widget.inspection.numbers.text()

    # a point selected in the layer highlights its row
    other = int(model.rows[6])
    layer.selected_data = {other}
    assert widget.selected_rows == [6]
    assert widget.current == other

    # still right after sorting by another column
    snr_col = next(i for i, c in enumerate(model.columns) if c[1] == "snr")
    widget.table.sortByColumn(snr_col, Qt.SortOrder.AscendingOrder)
    snr = widget.review.table.snr.to_numpy()[model.rows]
    assert np.all(np.diff(snr) >= 0)
    layer.selected_data = {other}
    assert widget.selected_rows == [int(model.pos[other])]
    widget.table.selectRow(0)
    assert set(layer.selected_data) == {int(model.rows[0])}


def test_keys_accept_reject_and_the_decisions_survive_reopening(
        make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)  # key presses go to a visible canvas
    folder = copy_results(tmp_path)
    widget = _open(viewer, qtbot, folder)
    layer, model = widget.layer, widget.model
    canvas = viewer.window._qt_viewer.canvas.native
    ids = [int(i) for i in model.rows[:5]]
    widget.select_hit(ids[0])

    def press(key):
        canvas.setFocus()
        QTest.keyClick(canvas, key)

    assert viewer.layers.selection.active.name == layer.name  # napari binds a, p on points
    press(Qt.Key.Key_A)  # accept #0, go to #1
    press(Qt.Key.Key_R)  # reject #1, go to #2
    press(Qt.Key.Key_N)  # skip #2, to #3
    press(Qt.Key.Key_P)  # back to #2
    assert widget.current == ids[2]
    press(Qt.Key.Key_N)  # to #3
    viewer.layers.selection.active = viewer.layers["2DTM_demo"]  # viewer-level keys
    press(Qt.Key.Key_A)  # accept #3
    status = widget.review.table.status
    assert [status[i] for i in ids[:5]] == ["accepted", "rejected", "unreviewed", "accepted",
                                             "unreviewed"]
    assert widget.current == ids[4]
    np.testing.assert_allclose(layer.border_color[ids[0]], STATUS_RGBA["accepted"])
    np.testing.assert_allclose(layer.border_color[ids[1]], STATUS_RGBA["rejected"])
    assert "accepted 2, rejected 1" in widget.fp_label.text()
    with qtbot.waitSignal(widget.saved, timeout=5_000):  # autosaved
        pass
    assert (folder / REVIEW_DIR / "curation.csv").is_file()

    # close everything, open the folder again: the decisions come back
    positions = {(float(layer.data[i][1]), float(layer.data[i][0])): status[i] for i in ids[:4]}
    viewer.layers.clear()
    widget = _open(viewer, qtbot, folder)
    t = widget.review.table
    back = {(x, y): s for x, y, s in zip(t.x, t.y, t.status) if (x, y) in positions}
    assert back == positions
    assert "accepted 2, rejected 1" in widget.fp_label.text()
    assert "3 decisions restored" in widget.status.text()
    np.testing.assert_allclose(widget.layer.border_color[t.index[t.status == "rejected"][0]],
                               STATUS_RGBA["rejected"])


def test_exclusion_shapes_remove_hits_and_export_reads_back(viewer, qtbot, tmp_path):
    folder = copy_results(tmp_path)
    widget = _open(viewer, qtbot, folder)
    before = widget.review.table[widget.review.shown()]
    # "ice" over the top half of the micrograph (drawn at the micrograph's scale)
    viewer.add_shapes([np.array([[-5, -5], [150, 330]])], shape_type="rectangle",
                      scale=(2.0, 2.0), name="ice", face_color="white", opacity=0.3)
    widget.mask_combo.setCurrentText("ice")
    widget.reextract()
    table = widget.review.table
    assert table.y.min() > 150 and len(table)
    after = table[widget.review.shown()]
    inside = before[before.y <= 150]
    assert len(inside) >= 3 and len(after) == len(before) - len(inside)
    assert not widget.layer.shown[(widget.layer.data[:, 0] <= 150)].any()
    assert "px excluded" in widget.status.text()
    widget.save()
    assert (folder / REVIEW_DIR / "exclusion_mask.mrc").is_file()

    # accept two hits, export all / accepted only, read back with starfile
    first, second = (int(i) for i in widget.model.rows[:2])
    widget.select_hit(first)
    widget.accept()
    widget.select_hit(second)
    widget.accept()
    all_hits = widget.export(tmp_path / "all.star", accepted_only=False)
    widget.export(tmp_path / "accepted.star", accepted_only=True)
    widget.export(tmp_path / "accepted.csv", accepted_only=True)
    parts = starfile.read(tmp_path / "all.star", always_dict=True)["particles"]
    assert RELION_COLUMNS <= set(parts.columns) and len(parts) == len(after) == len(all_hits)
    acc = starfile.read(tmp_path / "accepted.star", always_dict=True)["particles"]
    assert len(acc) == 2
    np.testing.assert_allclose(sorted(acc.rlnCoordinateX),
                               sorted(widget.review.table.x[[first, second]]))
    assert "2 hits written" in widget.status.text()


def test_threshold_follows_within_100_ms_on_10000_candidates(viewer, qtbot):
    folder, _ = noise_results()
    hits = viewer.add_points(np.zeros((0, 2)), name="hits [noise]", metadata={
        "napari_2dtm": {"kind": "hits", "results_folder": str(folder)}})
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Hits")
    widget.max_candidates = 10_000
    widget.set_source(hits)
    assert len(widget.layer.data) == 10_000
    times = []
    for t in np.linspace(3.0, 7.0, 15):
        t0 = time.perf_counter()
        widget.set_threshold(float(t))
        times.append(1e3 * (time.perf_counter() - t0))
        assert int(widget.layer.shown.sum()) == int(np.sum(widget.review.values >= t))
        assert widget.model.rowCount() == int(widget.layer.shown.sum())
    print(f"Hits widget threshold on 10,000 candidates: median {np.median(times):.1f} ms, "
          f"max {max(times):.1f} ms (points shown, table, label, histogram line)")
    assert np.median(times) < 100, times


def test_a_finished_search_docks_the_review_with_a_streamed_neg_log_p_layer(
        viewer, qtbot, tmp_path):
    viewer.open_sample("napari-2dtm", "demo")
    _, search = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Search")
    search.output_dir.setText(str(tmp_path / "results"))
    with qtbot.waitSignal(search.search_finished, timeout=300_000) as done:
        search.run()
    assert done.args == ["done"], search.status.text()
    # docked right after (deferred: the search's "done" is painted first)
    qtbot.waitUntil(lambda: DOCK in viewer.window.dock_widgets
                    and viewer.window.dock_widgets[DOCK].review is not None, timeout=20_000)
    widget = viewer.window.dock_widgets[DOCK]
    assert widget.review.folder == tmp_path / "results"
    result = search.result
    assert int(widget.layer.shown.sum()) == len(result.hits)
    # the inspection found the search's template among the layers (it was an array)
    hit = int(widget.model.rows[0])
    widget.select_hit(hit)
    assert widget.inspection.last is not None, widget.inspection.numbers.text()
    assert widget.inspection.last.cc == pytest.approx(widget.review.table.mip[hit], rel=0.02)
    name = "-ln p [2DTM demo]"
    qtbot.waitUntil(lambda: name in viewer.layers and search._live_p._pending is None
                    and not search._live_p._busy, timeout=30_000)
    assert search._live_p.n_shown >= 2  # streamed during the search, then the final maps
    final = neg_log_p_map(result.maps["zscore"], result.maps["snr"],
                          mask=result.maps["zscore"] != 0)
    np.testing.assert_allclose(viewer.layers[name].data, final, rtol=1e-5, atol=1e-5)
    # the new layers made the Search widget schedule a run-time estimate: let it finish
    # before the viewer closes (its result would reach a deleted label)
    qtbot.waitUntil(lambda: not search._estimate_timer.isActive() and (
        search._estimate_worker is None or not search._estimate_worker.is_running),
        timeout=60_000)
    qtbot.wait(200)
