"""The "2DTM Reconstruct" widget in a real napari viewer (Xvfb): hits layer in, 3D map
layer and docked FSC plot out; progress, cancel, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.planting import structure_file
from napari_2dtm import CTFParams, Search, SearchConfig, extract_hits, write_results
from napari_2dtm.core.geometry import local_grid
from napari_2dtm.io.mrc import write_mrc
from napari_2dtm.simulate import simulate_micrograph
from napari_2dtm.templates.model import template_from_model, write_template_mrc

PX = 2.0


@pytest.fixture(scope="module")
def search_folder(tmp_path_factory):
    """A results folder from a real (local-grid) search of a simulated 1A28 micrograph."""
    d = tmp_path_factory.mktemp("rec_widget")
    path = structure_file("1A28.pdb.gz")
    full = template_from_model(path, PX, center="model")
    omit = template_from_model(path, PX, center="model", selection="all but resname STR")
    write_template_mrc(d / "full.mrc", full)
    write_template_mrc(d / "omit.mrc", omit)
    ctf = CTFParams(defocus1_a=9000, defocus2_a=8800, astigmatism_angle_deg=10)
    sim = simulate_micrograph([path], 10, shape=(384, 384), pixel_size_a=PX, ctf=ctf, snr=0.1,
                              seed=8)
    ori = np.concatenate([local_grid(r[["phi", "theta", "psi"]].to_numpy(float), 2.0, 2.0)
                          for _, r in sim.truth.iterrows()])
    s = Search(sim.image, PX, d / "full.mrc", SearchConfig(ctf=ctf, orientations=ori, device="cpu"))
    for _ in s.run():
        pass
    s.result.hits = extract_hits(s.result, metric="snr", threshold=7.0)
    assert len(s.result.hits) >= 8
    write_mrc(d / "mic.mrc", sim.image, PX)
    write_results(s.result, d / "results", micrograph_path=d / "mic.mrc")
    return d


def _open(viewer, folder):
    """The viewer as after a search: micrograph layer, maps and the hits layer."""
    from napari_2dtm import read_results
    from napari_2dtm._napari._layers import micrograph_layer, result_layers
    from napari_2dtm.io.mrc import read_micrograph

    res = read_results(folder / "results")
    image, px = read_micrograph(folder / "mic.mrc")
    data, kw, _ = micrograph_layer(image, px, "mic")
    viewer.add_image(data, **kw)
    for ld, kwargs, kind in result_layers(res, "mic", folder / "results"):
        if kind == "points":
            getattr(viewer, f"add_{kind}")(ld, **kwargs)
    return res


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Reconstruct")
    return widget


def test_reconstruct_from_hits_shows_map_and_fsc(make_napari_viewer, qtbot, search_folder, tmp_path):
    from napari.layers import Image

    viewer = make_napari_viewer()
    res = _open(viewer, search_folder)
    w = _dock(viewer)
    assert w.hits_combo.currentText() == "hits [mic]"
    assert w.micrograph_combo.currentText() == "mic"
    assert f"{len(res.hits)} hits" in w.hits_info.text()
    # template: empty = the search's (from search.json); omit template for the bias check
    w.omit_path.setText(str(search_folder / "omit.mrc"))
    w.refine_mode.setCurrentIndex(1)  # quick
    w.box_size.setValue(64)
    out = tmp_path / "job"
    w.output_dir.setText(str(out))
    seen = []
    w.progress_shown.connect(lambda p: seen.append(p.fraction))
    with qtbot.waitSignal(w.job_finished, timeout=240_000) as blocker:
        w.run()
        assert w.running and not w.run_button.isEnabled()
    assert blocker.args == ["done"], w.status.text()
    assert len(seen) >= 5 and max(seen) == pytest.approx(1.0)
    assert seen == sorted(seen)
    # the map as a 3D image layer in Angstrom, the view switched to 3D
    layer = viewer.layers["map [job]"]
    assert isinstance(layer, Image) and layer.ndim == 3
    assert layer.data.shape == (64, 64, 64) and tuple(layer.scale) == (PX, PX, PX)
    assert "omit map [job]" in viewer.layers
    assert viewer.dims.ndisplay == 3
    assert not viewer.layers["mic"].visible
    # the FSC plot docked: unmasked, masked and omit-map curves
    assert w.fsc_plot is not None and w.fsc_plot.ax is not None
    assert len(w.fsc_plot.ax.lines) >= 3
    assert "not gold-standard" in w.fsc_plot.ax.get_title()
    assert any("FSC" in name for name in viewer.window.dock_widgets)
    assert "not gold-standard" in w.status.text() and "Ω" in w.status.text()
    assert (out / "map.mrc").exists() and (out / "reconstruct.json").exists()
    assert w.result.summary["n_particles"] >= 8
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()


def test_cancel_writes_nothing(make_napari_viewer, qtbot, search_folder, tmp_path):
    viewer = make_napari_viewer()
    _open(viewer, search_folder)
    w = _dock(viewer)
    w.refine_mode.setCurrentIndex(0)  # full refinement: long enough to cancel
    out = tmp_path / "job"
    w.output_dir.setText(str(out))
    w.progress_shown.connect(lambda p: w.cancel())
    with qtbot.waitSignal(w.job_finished, timeout=120_000) as blocker:
        w.run()
    assert blocker.args == ["cancelled"]
    assert "cancelled" in w.status.text()
    assert not out.exists()
    assert not any(ly.ndim == 3 for ly in viewer.layers)


def test_bad_inputs_are_one_line_errors(make_napari_viewer, qtbot, search_folder, tmp_path):
    viewer = make_napari_viewer()
    _open(viewer, search_folder)
    w = _dock(viewer)
    w.output_dir.setText("")
    with qtbot.waitSignal(w.job_finished, timeout=5_000) as blocker:
        w.run()
    assert blocker.args == ["error"] and "no output folder" in w.status.text()
    existing = tmp_path / "exists"
    existing.mkdir()
    w.output_dir.setText(str(existing))
    with qtbot.waitSignal(w.job_finished, timeout=5_000):
        w.run()
    assert "exists" in w.status.text()
    # a failure inside the job (a template that is no map) ends in one line, not a traceback
    bad = tmp_path / "bad.mrc"
    bad.write_text("not an MRC file")
    w.template_path.setText(str(bad))
    w.output_dir.setText(str(tmp_path / "job"))
    with qtbot.waitSignal(w.job_finished, timeout=60_000) as blocker:
        w.run()
    assert blocker.args == ["error"]
    assert "bad.mrc" in w.status.text() and "\n" not in w.status.text()
