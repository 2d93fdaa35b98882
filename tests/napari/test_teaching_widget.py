"""Teaching mode in a real napari viewer on the "2DTM demo" sample.

The widget runs the sample's own search settings (the normal demo search) with a fast
pace; the teaching layers must update at every step and the final hits must be those
of a normal search.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_2dtm import CTFParams, SearchConfig, search
from napari_2dtm._napari._teaching_widget import LAYERS

SEARCH_TIMEOUT_MS = 300_000


@pytest.fixture
def viewer(make_napari_viewer, monkeypatch):
    monkeypatch.setenv("NAPARI_ENSURE_PLUGIN_MAIN_THREAD", "1")
    return make_napari_viewer()


def test_teaching_mode_shows_each_step_and_ends_with_the_normal_hits(viewer, qtbot, tmp_path):
    from napari_2dtm.samples import DEMO, simulate_sample

    viewer.open_sample("napari-2dtm", "demo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Search")
    widget.output_dir.setText(str(tmp_path / "results"))
    widget.teaching.setChecked(True)
    widget.teaching_pace = dict(step_s=0.05, intro_s=0.2, max_steps=12)

    seen = []

    def on_progress(p):
        layers = viewer.layers
        seen.append({
            "fraction": p.fraction,
            "projection": layers[LAYERS["projection"]].data.copy(),
            "cc": layers[LAYERS["cc"]].data.copy(),
            "mip": layers[LAYERS["mip"]].data.copy(),
            "caption": viewer.text_overlay.text,
        })

    widget.progress_shown.connect(on_progress)
    with qtbot.waitSignal(widget.search_finished, timeout=SEARCH_TIMEOUT_MS) as done:
        widget.run()
    assert done.args == ["done"], widget.status.text()

    # the three panels updated at every step: a new orientation's projection and CC,
    # and a MIP that only grows
    assert len(seen) >= 8
    for a, b in zip(seen, seen[1:]):
        assert b["fraction"] > a["fraction"]
        assert not np.array_equal(a["projection"], b["projection"])
        assert not np.array_equal(a["cc"], b["cc"])
        assert not np.array_equal(a["mip"], b["mip"])
    valid = widget.result.valid_mask
    for a, b in zip(seen, seen[1:]):
        assert np.all(b["mip"][valid] >= a["mip"][valid])
    # beside the micrograph: no panel overlaps it (world extents in Å, rows then columns)
    (my0, mx0), (my1, mx1) = viewer.layers["2DTM demo"].extent.world[:, -2:]
    for key in ("cc", "mip", "projection"):
        (y0, x0), (y1, x1) = viewer.layers[LAYERS[key]].extent.world[:, -2:]
        assert x0 > mx1 or y0 > my1, f"{key} panel overlaps the micrograph"
    # captions name the step, with live precision and recall from the ground truth
    assert "Orientation" in seen[0]["caption"] and "recall" in seen[0]["caption"]
    final_caption = viewer.text_overlay.text
    assert "Detection" in final_caption and "recall" in final_caption
    assert np.array_equal(viewer.layers[LAYERS["mip"]].data, widget.result.maps["mip"])

    # the same hits as a normal search with the same settings
    sim = simulate_sample(DEMO)
    normal = search(sim.image, sim.pixel_size_a, sim.templates[0],
                    SearchConfig(ctf=CTFParams(**DEMO["ctf"]), **DEMO["search"]))
    cols = ["x", "y", "phi", "theta", "psi", "zscore"]
    pd.testing.assert_frame_equal(widget.result.hits[cols], normal.hits[cols])
    hits_layer = viewer.layers["hits [2DTM demo]"]
    assert len(hits_layer.data) == len(normal.hits)
    # and they find the planted particles (the final caption's recall)
    assert "8 of 8 true particles found" in final_caption.replace("\n", " ")
    assert (tmp_path / "results" / "hits.star").is_file()

    # the new layers re-scheduled the run-time estimate: let it land before teardown
    widget._estimate_timer.stop()
    with qtbot.waitSignal(widget.estimate_ready, timeout=60_000):
        widget.update_estimate()
