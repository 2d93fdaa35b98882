"""The "Refine Model" widget in a real napari viewer (Xvfb): hits layer and model in; the
groups' motions, the CC per cycle, the atoms coloured by displacement and the two
templates out; the model default from a results folder, cancel, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.model_sim import simulated_hits
from helpers.planting import structure

PX = 1.5


@pytest.fixture(scope="module")
def sim():
    """40 particles of 1A28 (two chains) on one 768 x 768 micrograph, hits 1° / 0.5 px off."""
    return simulated_hits(structure("1A28"), 40, pixel_size_a=PX, shape=(768, 768), seed=5)[0]


def _open(viewer, sim, results_folder=None):
    """The viewer as after a search: the micrograph and its hits layer."""
    from napari_2dtm._napari._layers import micrograph_layer, points_layer

    data, kw, _ = micrograph_layer(sim.image, PX, "mic")
    viewer.add_image(data, **kw)
    info = {"kind": "hits", "pixel_size_a": PX, "micrograph_name": "mic.mrc",
            "ctf": sim.ctf.to_dict(), "results_folder": results_folder}
    data, kw, _ = points_layer(sim.hits.drop(columns=["class_name"]), PX, "hits [mic]",
                               metadata={"napari_2dtm": info})
    viewer.add_points(data, **kw)


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Refine Model")
    return widget


def test_refine_shows_motions_cycles_atoms_and_templates(make_napari_viewer, qtbot, sim,
                                                         tmp_path):
    from napari.layers import Image, Points

    viewer = make_napari_viewer()
    _open(viewer, sim)
    w = _dock(viewer)
    assert w.hits_combo.currentText() == "hits [mic]"
    assert w.micrograph_combo.currentText() == "mic"
    assert "40 hits" in w.hits_info.text()
    assert w.model_path.text() == ""  # no results folder: no recorded model
    assert w.rigid.isChecked() and not w.bfactor.isChecked() and w.poses.isChecked()
    assert w.cycles.value() == 5 and w.show_3d.isChecked()
    w.model_path.setText(str(structure("1A28")))
    w.cycles.setValue(1)
    out = tmp_path / "job"
    w.output_dir.setText(str(out))
    seen = []
    w.progress_shown.connect(lambda p: seen.append(p.fraction))
    with qtbot.waitSignal(w.job_finished, timeout=180_000) as blocker:
        w.run()
        assert w.running and not w.run_button.isEnabled()
    assert blocker.args == ["done"], w.status.text()
    assert seen and max(seen) == pytest.approx(1.0) and seen == sorted(seen)
    assert (out / "model_refine.json").is_file() and (out / "refined_model.cif").is_file()
    job = w.result
    assert "Saved to" in w.status.text() and "free CC" in w.status.text()
    # one table row per chain
    assert w.groups_table.rowCount() == 2
    assert [w.groups_table.item(i, 0).text() for i in range(2)] == ["chain A", "chain B"]
    assert float(w.groups_table.item(1, 3).text()) == pytest.approx(
        job.summary["groups"][1]["rmsd_a"], abs=0.01)
    # the CC per cycle, cycles 0 and 1, the kept one marked
    ax = w.cycles_plot.ax
    assert ax is not None
    work = ax.lines[0].get_xydata()
    assert list(work[:, 0]) == [0, 1]
    assert work[:, 1] == pytest.approx([c.work_cc for c in job.fit.cycles])
    assert any(f"cycle {job.fit.best_cycle}" in t.get_text() for t in ax.get_legend().get_texts())
    # the atoms in 3D (z, y, x in Angstrom), coloured by their displacement
    atoms = viewer.layers["refined atoms"]
    assert isinstance(atoms, Points) and atoms.ndim == 3
    assert len(atoms.data) == len(job.groups.atoms.xyz)
    assert atoms.data == pytest.approx(job.groups.atoms.xyz[:, ::-1])
    assert np.asarray(atoms.features["displacement_a"]) == pytest.approx(job.displacement_a)
    # the two templates side by side, one box plus a gap apart along x
    before, after = viewer.layers["template before"], viewer.layers["template after"]
    assert isinstance(before, Image) and isinstance(after, Image)
    assert before.data.shape == job.template_start.shape
    assert after.data.shape == job.template_refined.shape
    assert tuple(before.scale) == (job.pixel_size_a,) * 3
    box_a = job.template_start.shape[2] * job.pixel_size_a
    assert after.translate[2] - before.translate[2] > box_a
    assert after.translate[:2] == pytest.approx(before.translate[:2])
    assert viewer.dims.ndisplay == 3 and not viewer.layers["mic"].visible
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()


def test_model_defaults_to_the_search_templates(make_napari_viewer, sim, tmp_path):
    """Hits from a results folder whose template was made from a model: that model."""
    results = tmp_path / "results"
    results.mkdir()
    model = str(structure("1A28"))
    (results / "search.json").write_text(json.dumps(
        {"template": {"source": "1A28.mrc", "params": {"model": model}}}))
    viewer = make_napari_viewer()
    _open(viewer, sim, results_folder=str(results))
    w = _dock(viewer)
    assert w.model_path.text() == model
    assert w.output_dir.text() == str(tmp_path / "results_model_refine")


def test_cancel_writes_nothing(make_napari_viewer, qtbot, sim, tmp_path):
    viewer = make_napari_viewer()
    _open(viewer, sim)
    w = _dock(viewer)
    w.model_path.setText(str(structure("1A28")))
    w.cycles.setValue(1)
    out = tmp_path / "job"
    w.output_dir.setText(str(out))
    w.progress_shown.connect(lambda p: w.cancel())
    with qtbot.waitSignal(w.job_finished, timeout=120_000) as blocker:
        w.run()
    assert blocker.args == ["cancelled"]
    assert "cancelled" in w.status.text()
    assert not out.exists()
    assert "refined atoms" not in viewer.layers


def test_bad_inputs_are_one_line_errors(make_napari_viewer, qtbot, sim, tmp_path):
    viewer = make_napari_viewer()
    _open(viewer, sim)
    w = _dock(viewer)
    w.output_dir.setText(str(tmp_path / "job"))
    with qtbot.waitSignal(w.job_finished, timeout=5_000) as blocker:
        w.run()
    assert blocker.args == ["error"] and "no model file" in w.status.text()
    w.model_path.setText(str(tmp_path / "missing.pdb"))
    with qtbot.waitSignal(w.job_finished, timeout=5_000) as blocker:
        w.run()
    assert blocker.args == ["error"] and "missing.pdb: model file not found" in w.status.text()
    w.model_path.setText(str(structure("1A28")))
    w.rigid.setChecked(False)
    with qtbot.waitSignal(w.job_finished, timeout=5_000):
        w.run()
    assert "nothing to refine" in w.status.text()
    # a failure inside the job (a model file that is no model) ends in one line
    w.rigid.setChecked(True)
    bad = tmp_path / "bad.pdb"
    bad.write_text("not a model\n" * 3)
    w.model_path.setText(str(bad))
    with qtbot.waitSignal(w.job_finished, timeout=60_000) as blocker:
        w.run()
    assert blocker.args == ["error"]
    text = w.status.text()
    assert text.startswith("Model refinement failed:") and "bad.pdb" in text
    assert "\n" not in text and "Traceback" not in text
    assert not (tmp_path / "job").exists()
