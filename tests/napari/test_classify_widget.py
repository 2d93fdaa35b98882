"""The Classify widget in a real napari viewer: a background job colours hits by class.

A small simulated micrograph (384 x 384 px at 3 A, 14 particles of 1BD2 with and
without beta-2-microglobulin) with hits at the true poses perturbed by one grid step.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from qtpy.QtCore import QThreadPool

from helpers.classify_sim import (
    CTF,
    NAMES,
    PX,
    _start_hits,
    _truth_at_model_origin,
    make_models,
    make_templates,
)
from napari_2dtm._napari._layers import micrograph_layer, points_layer
from napari_2dtm.classify.folder import read_classification
from napari_2dtm.io.star import read_hits
from napari_2dtm.plots import CLASS_COLORS
from napari_2dtm.simulate import simulate_micrograph

JOB_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    full, no_b = make_models(tmp_path_factory.mktemp("models"))
    sim = simulate_micrograph([full, no_b], 14, shape=(384, 384), pixel_size_a=PX, ctf=CTF,
                              snr=0.09, seed=5)
    ts = make_templates(full)
    truth = _truth_at_model_origin(sim, ts)
    hits = _start_hits(truth, np.random.default_rng(3))
    return full, sim, hits


@pytest.fixture
def viewer(make_napari_viewer, monkeypatch):
    # Plugin widgets get a viewer proxy; this makes it refuse changes from other threads.
    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")
    return make_napari_viewer()


def _setup(viewer, scene, hits=None):
    full, sim, start = scene
    hits = start if hits is None else hits
    data, kw, _ = micrograph_layer(sim.image, PX, "mic")
    viewer.add_image(data, **kw)
    meta = {"napari_2dtm": {"kind": "hits", "pixel_size_a": PX, "micrograph_name": "mic.mrc",
                            "ctf": CTF.to_dict()}}
    data, kw, _ = points_layer(hits, PX, "hits [mic]", metadata=meta)
    viewer.add_points(data, **kw)
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Classify")
    widget.set_templates([(full, "", "full"), (full, "not chain B", "no_b2m")])
    return widget


def test_widget_runs_a_job_and_colours_points_by_class(viewer, qtbot, scene, tmp_path):
    widget = _setup(viewer, scene)
    assert widget.hits_combo.currentText() == "hits [mic]"
    assert widget.micrograph_combo.currentText() == "mic"
    assert widget.reference.currentText() == "full"
    widget.output_dir.setText(str(tmp_path / "job"))
    slot_threads, stages = [], []

    def on_progress(p):
        slot_threads.append(threading.current_thread())
        stages.append(p)

    widget.progress_shown.connect(on_progress)
    with qtbot.waitSignal(widget.job_finished, timeout=JOB_TIMEOUT_MS) as done:
        widget.run()
    assert done.args == ["done"], widget.status.text()
    assert stages and all(t is threading.main_thread() for t in slot_threads)
    assert stages[-1][1] == stages[-1][2] == 2 * len(scene[2])  # every hit x template scored

    res = widget.result
    layer = viewer.layers["classes [mic]"]
    assert widget.classes_layer.name == layer.name
    assert len(layer.data) == len(scene[2]), (len(layer.data), len(scene[2]), widget.status.text())
    # colours: the palette colour of each point's most probable class
    best = res.assign(0.0)
    expected = np.array([to_rgba(CLASS_COLORS[b]) for b in best])
    np.testing.assert_allclose(layer.border_color, expected, atol=1e-6)
    truth = scene[2]["true_name"].to_numpy()
    acc = np.mean(np.array(NAMES)[best] == truth)
    assert acc >= 0.8, acc
    assert set(layer.features["class_name"]) <= set(NAMES)

    # threshold: 95 % hides the uncertain hits; counts and plot follow
    widget.confidence.setValue(0.95)
    n95 = len(scene[2]) - res.counts(0.95)["unassigned"]
    assert int(np.sum(layer.shown)) == n95
    assert "at 95 %" in widget.counts_label.text()
    ax = widget.plot.ax
    assert ax is not None and len(ax.lines) >= 2  # one fitted Gaussian per class + mixture
    assert "95 %" in ax.get_title()

    # job folder (the CLI's) and per-class STAR export at the threshold shown
    back = read_classification(tmp_path / "job")
    np.testing.assert_allclose(back.posteriors, res.posteriors)
    paths = widget.export_stars(tmp_path / "export")
    for i, p in enumerate(paths):
        star = read_hits(p)
        assert len(star) == res.counts(0.95)[NAMES[i]]
        assert (star["rlnMicrographName"] == "mic.mrc").all()


def test_widget_cancel_writes_nothing_and_bad_input_is_one_line(viewer, qtbot, scene, tmp_path):
    import pandas as pd

    many = pd.concat([scene[2]] * 6, ignore_index=True)  # a longer job to cancel
    widget = _setup(viewer, scene, many)
    widget.output_dir.setText(str(tmp_path / "job"))
    widget.progress_shown.connect(lambda p: widget.cancel())
    with qtbot.waitSignal(widget.job_finished, timeout=JOB_TIMEOUT_MS) as done:
        widget.run()
    assert done.args == ["cancelled"]
    assert not (tmp_path / "job").exists()
    assert widget.run_button.isEnabled() and "cancelled" in widget.status.text()

    widget.templates.setRowCount(1)
    with qtbot.waitSignal(widget.job_finished, timeout=5_000) as bad:
        widget.run()
    assert bad.args == ["error"]
    assert "two or more templates" in widget.status.text()
    assert len(widget.status.text().splitlines()) == 1
    QThreadPool.globalInstance().waitForDone(10_000)
