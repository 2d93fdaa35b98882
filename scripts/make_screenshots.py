"""Make the README screenshots in docs/images/ (napari under Xvfb when there is no display).

    python3 scripts/make_screenshots.py

Opens napari with the "2DTM demo" sample and the Search widget docked, runs the
demo search, and saves the whole window half-way through the search
(``docs/images/search_live.png``) and when it is done (``search_done.png``); then the
same search in teaching mode (``teaching_mode.png``); then a small batch reviewed in the
2DTM Project panel (``project_panel.png``; ``--only project`` makes just that one); then a
reconstruction job in the 2DTM Reconstruct widget (``reconstruction.png``; ``--only
reconstruction``); then an atomic model refined in the Refine Model widget
(``model_refine_widget.png``; ``--only model-refine``); then the demo's results reviewed in
the 2DTM Hits widget
(``hits_review.png``; ``--only hits``); then two states told apart in the 2DTM Classify
widget (``classification.png``; ``--only classification``); then a Leopard-EM and a cisTEM
results folder opened for review (``foreign_leopard.png``, ``foreign_cistem.png``;
``--only foreign-leopard`` / ``--only foreign-cistem``). One run makes them all and exits.
Without a display it re-runs itself under ``xvfb-run``. Everything is made in one fixed,
neutral working folder (``<temp>/napari-2dtm-demo``, removed afterwards), so the paths the
widgets show in the pictures name no checkout and no random temporary folder. Qt6
(PyQt6) unless ``QT_API`` says otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
DATA = ROOT / "src" / "napari_2dtm" / "data"
#: the working folder the screenshots show (see the module docstring)
WORK = Path(tempfile.gettempdir()) / "napari-2dtm-demo"
_MINE = ".made-by-make_screenshots"


@contextlib.contextmanager
def neutral_folder():
    """Make ``WORK`` afresh and work in it; removed afterwards. A ``WORK`` this script did
    not make is never touched."""
    if WORK.exists():
        if not (WORK / _MINE).is_file():
            sys.exit(f"make_screenshots: {WORK} exists and was not made by this script; "
                     "move it away first")
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    (WORK / _MINE).touch()
    old = Path.cwd()
    os.chdir(WORK)  # the Search widget suggests its next folder under the working folder
    try:
        yield WORK
    finally:
        os.chdir(old)
        shutil.rmtree(WORK, ignore_errors=True)


def main() -> int:
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        xvfb = shutil.which("xvfb-run")
        if not xvfb:
            sys.exit("make_screenshots: no display and no xvfb-run (apt-get install xvfb)")
        cmd = [xvfb, "-a", "-s", "-screen 0 1600x1100x24", sys.executable, *sys.argv]
        return subprocess.call(cmd)
    os.environ.setdefault("QT_API", "pyqt6")
    from napari_2dtm._napari._demo import launch, quiet_notifications

    quiet_notifications()
    IMAGES.mkdir(parents=True, exist_ok=True)
    # the pictures after the search, in order: (--only name, file, maker)
    later = [("teaching", "teaching_mode.png", teaching_screenshot),
             ("project", "project_panel.png", project_panel_screenshot),
             ("reconstruction", "reconstruction.png", reconstruction_screenshot),
             ("model-refine", "model_refine_widget.png", model_refine_screenshot),
             ("hits", "hits_review.png", hits_review_screenshot),
             ("classification", "classification.png", classification_screenshot),
             ("foreign-leopard", "foreign_leopard.png", functools.partial(
                 foreign_screenshot, "leopard")),
             ("foreign-cistem", "foreign_cistem.png", functools.partial(
                 foreign_screenshot, "cistem"))]
    only = {name: (png, make) for name, png, make in later if name != "teaching"}
    if len(sys.argv) == 3 and sys.argv[1] == "--only" and sys.argv[2] in only:
        png, make = only[sys.argv[2]]
        with neutral_folder() as tmp:
            return make(IMAGES / png, tmp)
    with neutral_folder() as tmp:
        code = launch(
            tmp / "results",
            live_screenshot=IMAGES / "search_live.png",
            done_screenshot=IMAGES / "search_done.png",
            quit_when_done=True,
        )
        for name, png, make in later:
            code = code or make(IMAGES / png, tmp / name)
        return code


def teaching_screenshot(png: Path, out_dir: Path) -> int:
    """The demo search in teaching mode (fast pace), saved at 60 % (teaching_mode.png)."""
    import napari
    from qtpy.QtCore import QTimer

    from napari_2dtm._napari._demo import _new_viewer

    viewer = _new_viewer("napari-2dtm teaching mode")
    viewer.open_sample("napari-2dtm", "demo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Search")
    widget.output_dir.setText(str(out_dir))
    widget.teaching.setChecked(True)
    widget.teaching_pace = dict(step_s=0.1, intro_s=0.5, max_steps=20)
    state = {"shot": False, "code": 1}

    def on_progress(p):
        if not state["shot"] and p.fraction >= 0.6:
            state["shot"] = True
            viewer.screenshot(str(png), canvas_only=False)
            print(f"screenshot (teaching mode, {100 * p.fraction:.0f}%): {png}")

    def on_finished(outcome):
        state["code"] = 0 if outcome == "done" and state["shot"] else 1
        widget._estimate_timer.stop()  # no run-time estimate racing the window's closing
        QTimer.singleShot(200, viewer.close)

    widget.progress_shown.connect(on_progress)
    widget.search_finished.connect(on_finished)
    QTimer.singleShot(500, widget.run)
    napari.run()
    return state["code"]


def project_panel_screenshot(png: Path, work_dir: Path) -> int:
    """A small batch (6 simulated micrographs, one corrupt, one interrupted) searched with
    ``run_batch``, reviewed in the 2DTM Project panel with one micrograph open."""
    import napari
    from qtpy.QtCore import QTimer

    from napari_2dtm import CTFParams, Search, SearchConfig
    from napari_2dtm._napari._demo import _new_viewer
    from napari_2dtm.io.mrc import write_mrc
    from napari_2dtm.jobs.batch import find_micrographs, run_batch
    from napari_2dtm.search.checkpoint import checkpoint_path_for
    from napari_2dtm.simulate import simulate_micrograph
    from napari_2dtm.templates.model import template_from_model

    model = ROOT / "src" / "napari_2dtm" / "data" / "1BD2.pdb.gz"
    px = 3.0
    mics = work_dir / "mics"
    mics.mkdir(parents=True)
    tpl = template_from_model(model, px)
    config = SearchConfig(out_of_plane_step_deg=15, in_plane_step_deg=15, device="cpu")
    for k, n in enumerate((4, 7, 2, 5, 6)):
        ctf = CTFParams(defocus1_a=9000.0 + 700 * k)
        sim = simulate_micrograph(model, n, shape=(288, 288), pixel_size_a=px, ctf=ctf,
                                  snr=0.4, seed=20 + k)
        write_mrc(mics / f"lamella1_{k + 1:03d}.mrc", sim.image, px)
        (mics / f"lamella1_{k + 1:03d}_ctf.txt").write_text(
            f"# Pixel size: {px} Angstroms ; acceleration voltage: 300.0 keV ; spherical "
            "aberration: 2.70 mm ; amplitude contrast: 0.07\n"
            f"1.0 {ctf.defocus1_a} {ctf.defocus2_a} 0.0 0.0 0.1 6.0\n")
    (mics / "lamella1_006.mrc").write_bytes(b"interrupted transfer")
    out = work_dir / "batch"
    from napari_2dtm.jobs.batch import CTFSource

    run_batch(find_micrographs([mics]), out, tpl, config, ctf=CTFSource(ctffind_dir=mics))
    sim = simulate_micrograph(model, 3, shape=(288, 288), pixel_size_a=px, snr=0.4, seed=30)
    write_mrc(mics / "lamella1_007.mrc", sim.image, px)
    s = Search(sim.image, px, tpl, config, checkpoint=checkpoint_path_for(out / "lamella1_007"),
               micrograph_path=mics / "lamella1_007.mrc")
    s.save_checkpoint()  # shows as interrupted

    viewer = _new_viewer("napari-2dtm project")
    _, panel = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Project")
    panel.set_folder(out)
    panel.next_image()
    panel.next_image()
    state = {"code": 1}

    def dock_of(w):
        from qtpy.QtWidgets import QDockWidget

        while w is not None and not isinstance(w, QDockWidget):
            w = w.parent()
        return w

    def layout_docks():
        # The Hits widget (docked on the opened hits) as a tab behind the panel, so the
        # panel has the whole column; the opened micrograph's hits shown, not the review's
        # candidates.
        hits = [w for k, w in viewer.window.dock_widgets.items() if "2DTM Hits" in k]
        docks = [dock_of(panel)] + [dock_of(w) for w in hits]
        if all(docks) and len(docks) == 2:
            viewer.window._qt_window.tabifyDockWidget(docks[0], docks[1])
            docks[0].raise_()
        for layer in viewer.layers:
            if layer.name.startswith("hits review ["):
                layer.visible = False
            elif layer.name.startswith("hits ["):
                layer.visible = True

    def shoot():
        layout_docks()
        viewer.reset_view()
        viewer.screenshot(str(png), canvas_only=False)
        print(f"screenshot (project panel): {png}")
        state["code"] = 0
        QTimer.singleShot(200, viewer.close)

    QTimer.singleShot(300, layout_docks)
    QTimer.singleShot(3000, shoot)
    napari.run()
    return state["code"]


def reconstruction_screenshot(png: Path, work_dir: Path) -> int:
    """The 2DTM Reconstruct widget after a job: 1A28 hits (simulated with the full model,
    poses one search step off) refined with the map without the ligand STR and with the
    full map; the map shown in 3D, the FSC plot docked (reconstruction.png)."""
    import napari
    import numpy as np
    from qtpy.QtCore import QTimer
    from scipy.spatial.transform import Rotation

    from napari_2dtm import CTFParams
    from napari_2dtm._napari._demo import _new_viewer
    from napari_2dtm._napari._layers import micrograph_layer, points_layer
    from napari_2dtm.core.geometry import euler_to_matrix, matrix_to_euler
    from napari_2dtm.simulate import simulate_micrograph
    from napari_2dtm.templates.model import template_from_model, write_template_mrc

    model = DATA / "1A28.pdb.gz"
    px = 2.0
    work_dir.mkdir(parents=True, exist_ok=True)
    write_template_mrc(work_dir / "1A28.mrc", template_from_model(model, px, center="model"))
    write_template_mrc(work_dir / "1A28_noSTR.mrc", template_from_model(
        model, px, center="model", selection="all but resname STR"))
    ctf = CTFParams(defocus1_a=9000, defocus2_a=8700, astigmatism_angle_deg=30)
    sim = simulate_micrograph(model, 140, shape=(1280, 1280), pixel_size_a=px, ctf=ctf,
                              snr=0.05, seed=7)
    hits = sim.truth.copy()
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(len(hits), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    turn = Rotation.from_rotvec(axes * np.deg2rad(2.5)).as_matrix()  # one search step off
    hits[["phi", "theta", "psi"]] = matrix_to_euler(
        turn @ euler_to_matrix(*hits[["phi", "theta", "psi"]].to_numpy(float).T))
    hits["x"] = hits["x"] + rng.choice([-1.0, 1.0], len(hits))

    viewer = _new_viewer("napari-2dtm reconstruction")
    data, kw, _ = micrograph_layer(sim.image, px, "mic")
    viewer.add_image(data, **kw)
    info = {"kind": "hits", "pixel_size_a": px, "micrograph_name": "mic.mrc",
            "ctf": ctf.to_dict()}
    data, kw, _ = points_layer(hits.drop(columns=["class_name"]), px, "hits [mic]", size_px=40,
                               metadata={"napari_2dtm": info})
    viewer.add_points(data, **kw)
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Reconstruct")
    widget.template_path.setText(str(work_dir / "1A28.mrc"))
    widget.omit_path.setText(str(work_dir / "1A28_noSTR.mrc"))
    widget.refine_mode.setCurrentIndex(1)  # quick
    widget.box_size.setValue(64)
    widget.output_dir.setText(str(work_dir / "job"))
    state = {"code": 1}

    def shoot():
        viewer.camera.angles = (10.0, -30.0, 120.0)
        viewer.screenshot(str(png), canvas_only=False)
        print(f"screenshot (reconstruction): {png}")
        state["code"] = 0
        QTimer.singleShot(200, viewer.close)

    def on_finished(outcome):
        print(f"reconstruction {outcome}: {widget.status.text()}")
        if outcome == "done":
            QTimer.singleShot(800, shoot)
        else:
            QTimer.singleShot(200, viewer.close)

    widget.job_finished.connect(on_finished)
    QTimer.singleShot(500, widget.run)
    napari.run()
    return state["code"]


def model_refine_screenshot(png: Path, work_dir: Path) -> int:
    """The Refine Model widget after a job: 60 particles simulated from 1A28 with chain B
    turned 5° and shifted 2 Å (the tests' helper), the unchanged model refined for two
    cycles; atoms coloured by how far they moved inside the starting template, the
    refined template beside it, the groups' motions and CC per cycle in the dock
    (model_refine_widget.png; ``--only model-refine``)."""
    import napari
    from qtpy.QtCore import QTimer

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.model_sim import changed_model, simulated_hits
    from napari_2dtm._napari._demo import _new_viewer
    from napari_2dtm._napari._layers import micrograph_layer, points_layer

    px = 1.5
    work_dir.mkdir(parents=True, exist_ok=True)
    model = work_dir / "1A28.pdb.gz"  # the model field shows this path
    shutil.copy(DATA / "1A28.pdb.gz", model)
    moved = changed_model(model, work_dir / "1A28_chainB_moved.pdb", "chain B", angle_deg=5,
                          shift_a=(1.2, -1.0, 1.2))
    sim = simulated_hits(moved, 60, pixel_size_a=px, shape=(1024, 1024), seed=11)[0]

    viewer = _new_viewer("napari-2dtm model refinement")
    data, kw, _ = micrograph_layer(sim.image, px, "mic")
    viewer.add_image(data, **kw)
    info = {"kind": "hits", "pixel_size_a": px, "micrograph_name": "mic.mrc",
            "ctf": sim.ctf.to_dict()}
    data, kw, _ = points_layer(sim.hits.drop(columns=["class_name"]), px, "hits [mic]",
                               size_px=40, metadata={"napari_2dtm": info})
    viewer.add_points(data, **kw)
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Refine Model")
    widget.model_path.setText(str(model))
    widget.cycles.setValue(2)
    widget.output_dir.setText(str(work_dir / "job"))
    state = {"code": 1}

    def shoot():
        viewer.camera.angles = (0.0, 0.0, 90.0)
        viewer.camera.zoom *= 1.2
        bar = widget.scroll_area.verticalScrollBar()  # the results at the bottom in view
        bar.setValue(bar.maximum())
        QTimer.singleShot(500, save)

    def save():
        viewer.screenshot(str(png), canvas_only=False)
        print(f"screenshot (model refinement): {png}")
        state["code"] = 0
        QTimer.singleShot(200, viewer.close)

    def on_finished(outcome):
        print(f"model refinement {outcome}: {widget.status.text()}")
        if outcome == "done":
            QTimer.singleShot(800, shoot)
        else:
            QTimer.singleShot(200, viewer.close)

    widget.job_finished.connect(on_finished)
    QTimer.singleShot(500, widget.run)
    napari.run()
    return state["code"]


def hits_review_screenshot(png: Path, work_dir: Path) -> int:
    """The demo search's results folder opened in napari: the 2DTM Hits widget docks
    with the threshold, histogram, table and inspection panel; a few hits accepted
    (green) and one rejected (red), the next one inspected (hits_review.png)."""
    import napari
    from qtpy.QtCore import QTimer

    from napari_2dtm import CTFParams, Search, SearchConfig
    from napari_2dtm._napari._demo import _new_viewer
    from napari_2dtm._napari._sample_data import DEMO, simulate_sample
    from napari_2dtm.jobs.search import save_results

    sim = simulate_sample(DEMO)
    config = SearchConfig(ctf=CTFParams(**DEMO["ctf"]), device="cpu", **DEMO["search"])
    search = Search(sim.image, sim.pixel_size_a, sim.templates[0], config)
    for _ in search.run():
        pass
    folder = work_dir / "demo_2dtm"
    save_results(search.result, folder, sim.image, micrograph_name="2DTM demo")

    viewer = _new_viewer("napari-2dtm hits review")
    viewer.open(str(folder), plugin="napari-2dtm")  # the Hits widget docks itself
    state = {"code": 1}

    def curate():
        widget = viewer.window.dock_widgets.get("2DTM Hits (napari-2dtm)")
        if widget is None or widget.review is None:
            print("hits review: the Hits widget did not dock")
            QTimer.singleShot(200, viewer.close)
            return
        for layer in viewer.layers:
            layer.visible = layer.name in ("2DTM_demo", widget.layer.name)
        viewer.layers.selection.active = widget.layer
        widget.set_threshold(6.0)  # a little below the 1-false-positive threshold
        rows = [int(i) for i in widget.model.rows]
        for i in rows[:4]:
            widget.select_hit(i, center=False)
            widget.accept()
        widget.select_hit(rows[-1], center=False)
        widget.reject()
        widget.select_hit(rows[4], center=False)
        viewer.reset_view()
        QTimer.singleShot(800, shoot)

    def shoot():
        viewer.screenshot(str(png), canvas_only=False)
        print(f"screenshot (hits review): {png}")
        state["code"] = 0
        QTimer.singleShot(200, viewer.close)

    QTimer.singleShot(1500, curate)
    napari.run()
    return state["code"]


def foreign_screenshot(program: str, png: Path, work_dir: Path) -> int:
    """A cisTEM or Leopard-EM results folder (written in the program's format by the
    tests' helper, planted particles) opened in napari: micrograph, z-score map and hits,
    the 2DTM Hits widget docked (foreign_leopard.png, foreign_cistem.png;
    ``--only foreign-leopard`` / ``--only foreign-cistem``)."""
    import napari
    from qtpy.QtCore import QTimer

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.foreign_data import cistem_folder, leopard_folder
    from napari_2dtm._napari._demo import _new_viewer
    from napari_2dtm.search.foreign import propose, save_spec

    work_dir.mkdir(parents=True, exist_ok=True)
    folder, _ = (leopard_folder if program == "leopard" else cistem_folder)(work_dir)
    save_spec(folder, propose(folder))  # the dialog's answers, as proposed
    viewer = _new_viewer(f"napari-2dtm: {program} results")
    viewer.open(str(folder), plugin="napari-2dtm")  # the Hits widget docks itself
    state = {"code": 1}

    def shoot():
        widget = viewer.window.dock_widgets.get("2DTM Hits (napari-2dtm)")
        if widget is None or widget.review is None:
            print(f"{program}: the Hits widget did not dock")
        else:
            viewer.reset_view()
            viewer.screenshot(str(png), canvas_only=False)
            print(f"screenshot ({program} results): {png}")
            state["code"] = 0
        QTimer.singleShot(200, viewer.close)

    QTimer.singleShot(2500, shoot)
    napari.run()
    return state["code"]


def classification_screenshot(png: Path, work_dir: Path) -> int:
    """The 2DTM Classify widget after a job: 70 simulated particles, half 1BD2 and half
    1BD2 without beta-2-microglobulin (chain B), hits one search step off their true
    poses; classes coloured on the micrograph, log2 ratios with the fitted Gaussians."""
    import gemmi
    import napari
    import numpy as np
    from qtpy.QtCore import QTimer
    from scipy.spatial.transform import Rotation

    from napari_2dtm import CTFParams
    from napari_2dtm._napari._demo import _new_viewer
    from napari_2dtm._napari._layers import micrograph_layer, points_layer
    from napari_2dtm.classify.templates import load_template_set
    from napari_2dtm.core.geometry import euler_to_matrix, matrix_to_euler
    from napari_2dtm.simulate import simulate_micrograph

    px = 3.0
    work_dir.mkdir(parents=True, exist_ok=True)
    full = work_dir / "1BD2.pdb.gz"  # the templates table shows this path
    shutil.copy(DATA / "1BD2.pdb.gz", full)
    st = gemmi.read_structure(str(full))
    st[0].remove_chain("B")
    no_b = work_dir / "1BD2_no_b2m.pdb"
    st.write_pdb(str(no_b))
    ctf = CTFParams(defocus1_a=10000.0)
    sim = simulate_micrograph([full, no_b], 70, shape=(768, 768), pixel_size_a=px, ctf=ctf,
                              snr=0.09, seed=10)
    # particles are centred on their own class's centre of mass; move to the shared origin
    ts = load_template_set([full, full], px, names=["full", "no_b2m"],
                           selections=[None, "not chain B"])
    origin = np.asarray(ts.templates[0].params["center_a"])
    hits = sim.truth.copy()
    rng = np.random.default_rng(0)
    for i, r in hits.iterrows():
        a = euler_to_matrix(r.phi, r.theta, r.psi)
        d = a @ (origin - np.asarray(sim.templates[int(r["class"])].params["center_a"])) / px
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        turn = Rotation.from_rotvec(np.deg2rad(1.5) * axis).as_matrix()  # one grid step off
        hits.loc[i, ["phi", "theta", "psi"]] = matrix_to_euler(turn @ a)
        hits.loc[i, "x"] = float(np.round(r.x + d[0]))
        hits.loc[i, "y"] = float(np.round(r.y + d[1]))
    hits = hits.drop(columns=["class", "class_name", "snr_matched"])

    viewer = _new_viewer("napari-2dtm classification")
    data, kw, _ = micrograph_layer(sim.image, px, "lamella")
    viewer.add_image(data, **kw)
    info = {"kind": "hits", "pixel_size_a": px, "micrograph_name": "lamella.mrc",
            "ctf": ctf.to_dict()}
    data, kw, _ = points_layer(hits, px, "hits [lamella]", size_px=34,
                               metadata={"napari_2dtm": info}, visible=False)
    viewer.add_points(data, **kw)
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Classify")
    widget.set_templates([(full, "", "full"), (full, "not chain B", "no_b2m")])
    widget.output_dir.setText(str(work_dir / "job"))
    state = {"code": 1}

    def shoot():
        widget.confidence.setValue(0.95)
        viewer.reset_view()
        scroll = widget.parent()
        while scroll is not None and not hasattr(scroll, "verticalScrollBar"):
            scroll = scroll.parent()
        if scroll is not None:  # the results at the bottom of the dock in view
            bar = scroll.verticalScrollBar()
            bar.setValue(bar.maximum())
        QTimer.singleShot(500, lambda: _save())

    def _save():
        viewer.screenshot(str(png), canvas_only=False)
        print(f"screenshot (classification): {png}; {widget.counts_label.text()}")
        state["code"] = 0
        QTimer.singleShot(200, viewer.close)

    def on_finished(outcome):
        print(f"classification {outcome}: {widget.status.text()}")
        if outcome == "done":
            QTimer.singleShot(800, shoot)
        else:
            QTimer.singleShot(200, viewer.close)

    widget.job_finished.connect(on_finished)
    QTimer.singleShot(500, widget.run)
    napari.run()
    return state["code"]


if __name__ == "__main__":
    sys.exit(main())
