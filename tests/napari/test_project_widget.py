"""The 2DTM Project panel in a real viewer: a batch folder listed, images opened, keys."""

from __future__ import annotations

import json

import pytest

from helpers.planting import plant, structure
from napari_2dtm import CTFParams, Search, SearchConfig
from napari_2dtm.io.mrc import write_mrc
from napari_2dtm.jobs.batch import find_micrographs, read_summary, run_batch
from napari_2dtm.search.checkpoint import checkpoint_path_for

pytestmark = pytest.mark.gui
PX = 4.0


@pytest.fixture(scope="module")
def batch_folder(tmp_path_factory):
    """A batch of 3 searched micrographs, 1 corrupt, 1 interrupted (a checkpoint), and a
    classification job folder for one of them."""
    from napari_2dtm.templates.model import template_from_model

    d = tmp_path_factory.mktemp("project")
    mics = d / "mics"
    mics.mkdir()
    tpl = template_from_model(structure("1BD2"), PX)
    ctf = CTFParams(defocus1_a=10000)
    for k, (name, n) in enumerate((("mic_a", 1), ("mic_b", 3), ("mic_c", 2))):
        img, _ = plant(tpl, (160, 160), n, ctf, target_snr=30.0, seed=40 + k)
        write_mrc(mics / f"{name}.mrc", img, PX)
    (mics / "mic_bad.mrc").write_text("not an MRC file")
    cfg = SearchConfig(ctf=ctf, out_of_plane_step_deg=30, in_plane_step_deg=30, device="cpu")
    out = d / "batch"
    run_batch(find_micrographs([mics]), out, tpl, cfg)
    img, _ = plant(tpl, (160, 160), 1, ctf, target_snr=30.0, seed=49)
    write_mrc(mics / "mic_d.mrc", img, PX)
    s = Search(img, PX, tpl, cfg, checkpoint=checkpoint_path_for(out / "mic_d"),
               micrograph_path=mics / "mic_d.mrc")
    s.save_checkpoint()  # an interrupted search, 0 % done
    job = out / "mic_b" / "classification_job"
    job.mkdir()
    (job / "classification.json").write_text(json.dumps(
        {"confidence": 0.95, "counts": {"0.5": {"open": 2, "closed": 1, "unassigned": 0},
                                        "0.95": {"open": 2, "closed": 0, "unassigned": 1}}}))
    return out


def _layer_names(viewer):
    return [ly.name for ly in viewer.layers]


def test_project_panel_lists_opens_and_navigates(make_napari_viewer, qtbot, batch_folder):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Project")
    assert w.set_folder(batch_folder)
    t = w.table
    rows = {t.item(i, 0).text(): [t.item(i, c).text() for c in range(1, 4)]
            for i in range(t.rowCount())}
    summary = read_summary(batch_folder).set_index("name")
    assert set(rows) == {"mic_a", "mic_b", "mic_bad", "mic_c", "mic_d"}
    for name in ("mic_a", "mic_b", "mic_c"):
        assert rows[name][0] == "done"
        assert rows[name][1] == str(int(summary.loc[name, "n_hits"]))
    assert int(rows["mic_b"][1]) >= 2  # planted particles were found
    assert rows["mic_bad"][0] == "failed" and rows["mic_bad"][1] == ""
    assert rows["mic_d"][0].startswith("interrupted")
    assert rows["mic_b"][2] == "open 2, closed 0"  # counts at the job's confidence (95 %)
    assert "mic_bad.mrc" in t.item(list(rows).index("mic_bad"), 1).toolTip()
    assert w.plot.n_bars == 5
    heights = [p.get_height() for p in w.plot.ax.patches]
    assert heights[list(rows).index("mic_b")] == int(rows["mic_b"][1])

    # open the first finished micrograph: micrograph, maps and hits of mic_a
    with qtbot.waitSignal(w.image_opened, timeout=10000):
        assert w.next_image()
    names = _layer_names(viewer)
    assert "hits [mic_a]" in names and "mic_a" in names and "SNR [mic_a]" in names
    assert len(viewer.layers["hits [mic_a]"].data) == int(rows["mic_a"][1])

    # Page Down in the panel: next micrograph; the previous one's layers are gone
    t.setFocus()
    with qtbot.waitSignal(w.image_opened, timeout=10000) as sig:
        qtbot.keyClick(t, Qt.Key_PageDown)
    assert sig.args == ["mic_b"]
    qtbot.wait(50)  # the Hits widget docks at the next event-loop turn
    names = _layer_names(viewer)
    assert "hits [mic_b]" in names and not any(n.endswith("[mic_a]") for n in names)
    assert "mic_a" not in names
    hits = [wd for key, wd in viewer.window.dock_widgets.items() if "2DTM Hits" in key]
    assert len(hits) == 1 and hits[0].micrograph_name == "mic_b"  # it reviews the image opened

    # the viewer's Page Down key (canvas focus): skips the failed micrograph
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    with qtbot.waitSignal(w.image_opened, timeout=10000) as sig:
        qtbot.keyClick(canvas, Qt.Key_PageDown)
    assert sig.args == ["mic_c"]
    assert not w.next_image()  # mic_d is not finished: nothing after mic_c
    with qtbot.waitSignal(w.image_opened, timeout=10000) as sig:
        qtbot.keyClick(t, Qt.Key_PageUp)
    assert sig.args == ["mic_b"]

    # a failed micrograph cannot be opened; the panel says why
    assert not w.open_image(list(rows).index("mic_bad"))
    assert "failed" in w.status.text() and "mic_bad.mrc" in w.status.text()
