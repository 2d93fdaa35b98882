"""The "Refine Model" dock widget: an atomic model refined against the particles of hits.

A thin shell over :func:`napari_2dtm.jobs.model_refine.run_model_refine_from_hits`, the
job behind ``napari-2dtm refine-model``, so the same job folder comes out. The hits and
micrograph come from a :class:`~napari_2dtm._napari._hits_picker.HitsPicker`; the model
defaults to the one the search's template was made from (``search.json`` of the hits'
results folder), since the job refuses a model outside the template's frame anyway. A
:class:`~napari_2dtm._napari._job_panel.JobPanel` runs the job in a worker thread with
progress and cancel. In main-thread slots only, the widget shows the groups' motions in
a table, the work/free CC per cycle (:class:`~napari_2dtm._napari._plot_canvas.CyclesPlot`),
the model's atoms as 3D points coloured by how far they moved, and the two templates
side by side; the atoms sit inside the starting template, both in model coordinates
(Angstrom), so a moved domain shows where it left the density.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHeaderView,
    QPlainTextEdit,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_2dtm._napari._hits_picker import HitsPicker, file_row
from napari_2dtm._napari._job_panel import JobPanel
from napari_2dtm._napari._plot_canvas import CyclesPlot
from napari_2dtm.errors import InputError

if TYPE_CHECKING:
    import napari

MODEL_FILTERS = "Atomic models (*.pdb *.ent *.cif *.mmcif *.gz);;All (*)"
ATOMS_LAYER = "refined atoms"
BEFORE_LAYER, AFTER_LAYER = "template before", "template after"
#: the gap between the two templates, as a fraction of the box
GAP = 0.15
#: why the job stopped (``summary["stopped"]``), for the status line
STOPPED = {"max_cycles": "all cycles run", "free_cc": "stopped: the free CC no longer rose"}
#: (header, key of a row of ``summary["groups"]``, format)
GROUP_COLUMNS = (("group", "group", "{}"), ("rotation (°)", "rotation_deg", "{:.2f}"),
                 ("shift (Å)", "shift_a", "{:.2f}"), ("RMSD (Å)", "rmsd_a", "{:.2f}"),
                 ("ΔB (Å²)", "delta_b_a2", "{:+.1f}"))


def recorded_model(results_folder) -> str:
    """The model file the search's template was made from ("" when none is recorded)."""
    from napari_2dtm.search.results import MARKER, ResultsFolder

    if not results_folder or not (Path(results_folder) / MARKER).is_file():
        return ""
    try:
        rf = ResultsFolder.open(results_folder, maps=False)
    except InputError:  # an unreadable search.json only loses the default
        return ""
    return str(rf.template.params.get("model") or "")


class ModelRefineWidget(QWidget):
    """Dock widget refining an atomic model against a hits points layer.

    Signals ``job_started``, ``progress_shown(JobProgress)`` and ``job_finished(str)``
    (``"done"``, ``"cancelled"`` or ``"error"``) let tests and other widgets follow. After
    a job, ``result`` is the :class:`~napari_2dtm.jobs.model_refine.ModelRefineResult`,
    ``atoms_layer`` and ``template_layers`` the layers it added.
    """

    job_started = Signal()
    progress_shown = Signal(object)
    job_finished = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.result = None
        self.atoms_layer = None
        self.template_layers: list = []
        self._auto_model = ""  # the model field's text when the widget filled it in

        self.panel = JobPanel(title="Job folder", run_text="Refine model",
                              verb="Model refinement")
        self.panel.expose_on(self)  # output_dir, overwrite, run_button, ..., status; Run -> self.run
        self.panel.started.connect(self.job_started)
        self.panel.progressed.connect(self._on_progress)
        self.panel.returned.connect(self._on_returned)
        self.panel.finished.connect(self.job_finished)

        self.picker = HitsPicker(self.viewer, "Input", "to refine against")
        self.hits_combo, self.micrograph_combo = self.picker.hits_combo, self.picker.micrograph_combo
        self.hits_info = self.picker.hits_info
        self.model_path, row = file_row(self, "PDB / mmCIF of the search's template",
                                        "Atomic model", MODEL_FILTERS)
        self.picker.form.addRow("Model", row)
        self.groups_edit = QPlainTextEdit()
        self.groups_edit.setPlaceholderText("one selection per line, e.g. chain A\n"
                                            "empty: one group per chain")
        self.groups_edit.setFixedHeight(64)
        self.picker.form.addRow("Groups", self.groups_edit)
        self.picker.changed.connect(self._on_hits_changed)

        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(self.picker)
        layout.addWidget(self._build_settings_box())
        layout.addWidget(self.panel)
        layout.addWidget(self._build_result_box())
        layout.addStretch(1)
        # napari docks do not scroll, and inputs, job and results are taller than a laptop
        # screen: without this the plot would be squeezed out of sight
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll_area.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll_area)
        self.picker.refresh()

    # ------------------------------------------------------------------ layout
    def _build_settings_box(self) -> QGroupBox:
        box = QGroupBox("Refinement")
        form = QFormLayout(box)
        self.rigid = QCheckBox("rigid body (rotation and shift per group)")
        self.rigid.setChecked(True)
        self.bfactor = QCheckBox("B-factors (one change per group)")
        self.poses = QCheckBox("refine poses (in alternation with the model)")
        self.poses.setChecked(True)
        for check in (self.rigid, self.bfactor, self.poses):
            form.addRow("", check)
        self.cycles = QSpinBox()
        self.cycles.setRange(1, 50)
        self.cycles.setValue(5)
        self.cycles.setToolTip("Cycles after cycle 0; stops early when the free CC stops rising")
        form.addRow("Cycles", self.cycles)
        self.show_3d = QCheckBox("show in 3D when done")
        self.show_3d.setChecked(True)
        form.addRow("", self.show_3d)
        return box

    def _build_result_box(self) -> QGroupBox:
        box = QGroupBox("Result")
        lay = QVBoxLayout(box)
        self.groups_table = QTableWidget(0, len(GROUP_COLUMNS))
        self.groups_table.setHorizontalHeaderLabels([c[0] for c in GROUP_COLUMNS])
        self.groups_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.groups_table.verticalHeader().setVisible(False)
        self.groups_table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents)
        self.groups_table.horizontalHeader().setStretchLastSection(True)
        lay.addWidget(self.groups_table)
        self.cycles_plot = CyclesPlot()
        lay.addWidget(self.cycles_plot)
        return box

    def _on_hits_changed(self):
        info = self.picker.info()
        folder = info.get("results_folder")
        current = self.model_path.text().strip()
        if not current or current == self._auto_model:  # never overwrite the user's choice
            self._auto_model = recorded_model(folder)
            self.model_path.setText(self._auto_model)
        if folder and not self.output_dir.text():
            self.panel.suggest_output(Path(folder).with_name(f"{Path(folder).name}_model_refine"))

    # ------------------------------------------------------------- parameters
    def settings(self):
        from napari_2dtm.jobs.model_refine import ModelRefineSettings

        lines = [t.strip() for t in self.groups_edit.toPlainText().splitlines()]
        s = ModelRefineSettings(groups=tuple(t for t in lines if t) or None,
                                rigid=self.rigid.isChecked(), bfactor=self.bfactor.isChecked(),
                                poses=self.poses.isChecked(), max_cycles=self.cycles.value())
        s.options()  # "nothing to refine" before a worker starts, not after
        return s

    def _inputs(self) -> dict:
        """Keyword arguments of :func:`~napari_2dtm.jobs.model_refine.run_model_refine_from_hits`
        (:class:`InputError` when something is missing)."""
        kwargs = self.picker.job_inputs()
        model = self.model_path.text().strip()
        if not model:
            raise InputError("no model file (PDB / mmCIF) given")
        if not Path(model).is_file():
            raise InputError(f"{model}: model file not found")
        kwargs.update(model=model, settings=self.settings(), out_dir=self.panel.out_dir(),
                      overwrite=self.overwrite.isChecked())
        return kwargs

    # -------------------------------------------------------------- run/cancel
    @property
    def running(self) -> bool:
        return self.panel.running

    def run(self):
        """Start the job in a worker thread (no-op while one runs)."""
        from napari_2dtm.jobs.model_refine import run_model_refine_from_hits

        if self.running:
            return
        try:
            kwargs = self._inputs()
        except Exception as e:  # any input problem is one line in the status
            self.panel.refuse(e)
            return
        self.result = None
        self.panel.start(run_model_refine_from_hits,
                         status=f"Refining {Path(kwargs['model']).name} against "
                                f"{len(kwargs['hits'])} hits…", **kwargs)

    def cancel(self):
        """Ask the job to stop (at its next progress report); nothing is written."""
        self.panel.cancel()

    # Everything below runs in the main thread.
    def _on_progress(self, p):
        self.panel.set_progress(p.fraction, f"{100 * p.fraction:.0f}% · {p.step}")
        self.panel.set_status(p.message)
        self.progress_shown.emit(p)

    def _on_returned(self, value):
        job, folder = value
        self.result = job
        s = job.summary
        self._fill_table(s["groups"])
        self.cycles_plot.show_result(job)
        self._show_layers(job)
        worst = max(s["groups"], key=lambda g: g["rmsd_a"])
        self.panel.set_status(
            f"{s['n_particles']} particles; free CC {s['free_cc_start']:.3f} → "
            f"{s['free_cc_refined']:.3f} (kept cycle {s['best_cycle']}; "
            f"{STOPPED.get(s['stopped'], s['stopped'])}); "
            f"largest motion {worst['group']} {worst['rmsd_a']:.2f} Å RMSD. Saved to {folder}")
        self.panel.set_progress(1.0, "done")

    def _fill_table(self, groups: list):
        t = self.groups_table
        t.setRowCount(len(groups))
        for i, g in enumerate(groups):
            for j, (_, key, fmt) in enumerate(GROUP_COLUMNS):
                t.setItem(i, j, QTableWidgetItem(fmt.format(g[key])))
        # every row in view up to 8 groups: a table scrolling inside the scroll area hides rows
        rows = sum(t.rowHeight(i) for i in range(min(len(groups), 8)))
        t.setFixedHeight(t.horizontalHeader().height() + rows + 2 * t.frameWidth() + 2)

    def _show_layers(self, job):
        for name in (ATOMS_LAYER, BEFORE_LAYER, AFTER_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        meta = {"job_folder": str(job.folder)}
        self.atoms_layer = self._add_atoms(job, meta)
        px = float(job.pixel_size_a)
        box = np.asarray(job.template_start.shape)
        # voxel box // 2 is the template centre, so the starting template overlays the atoms
        origin_zyx = (np.asarray(job.summary["center_a"], float) - (box[::-1] // 2) * px)[::-1]
        shift_x = np.array([0.0, 0.0, (1 + GAP) * box[2] * px])
        start = np.asarray(job.template_start, np.float32)
        refined = np.asarray(job.template_refined, np.float32)
        hi = float(max(start.max(), refined.max())) or 1.0  # one scale: the two compare
        # the atoms sit inside the starting template: a glow shows them, a surface buries them
        looks = ((BEFORE_LAYER, start, "bop blue", 0 * shift_x, "attenuated_mip", 0.6),
                 (AFTER_LAYER, refined, "bop orange", shift_x, "iso", 0.5))
        self.template_layers = [
            self.viewer.add_image(
                data, name=name, scale=(px,) * 3, translate=tuple(origin_zyx + offset),
                units=("angstrom",) * 3, colormap=cmap, rendering=rendering,
                iso_threshold=0.2 * hi, contrast_limits=(0.0, hi), opacity=opacity,
                blending="additive",
                metadata={"napari_2dtm": {"kind": "model_template", "pixel_size_a": px, **meta}})
            for name, data, cmap, offset, rendering, opacity in looks]
        self.viewer.layers.selection.active = self.atoms_layer
        if self.show_3d.isChecked():
            for ly in self.viewer.layers:
                if ly.ndim < 3:
                    ly.visible = False
            self.viewer.dims.ndisplay = 3
            shown = [self.atoms_layer, *self.template_layers]
            try:  # fit the model and templates, not the (hidden) micrograph around them
                self.viewer.reset_view(layers=shown)
            except TypeError:  # napari < 0.7: no layers argument
                self.viewer.reset_view()

    def _add_atoms(self, job, meta: dict):
        atoms, groups = job.groups.atoms, job.groups
        d = np.asarray(job.displacement_a, float)
        group = np.full(len(atoms), "", dtype=object)
        for name, mask in zip(groups.names, groups.masks):
            group[mask] = name
        features = pd.DataFrame({"group": group, "chain": atoms.chain, "resname": atoms.resname,
                                 "seqnum": atoms.seqnum, "atom": atoms.atom_name,
                                 "displacement_a": d})
        hi = float(d.max()) if d.size and d.max() > 0 else 1.0  # a still model: all at the low end
        return self.viewer.add_points(
            np.asarray(atoms.xyz, float)[:, ::-1], name=ATOMS_LAYER, features=features,
            size=1.0, face_color="displacement_a", face_colormap="viridis",
            face_contrast_limits=(0.0, hi), border_width=0, shading="spherical",
            units=("angstrom",) * 3,
            metadata={"napari_2dtm": {"kind": "refined_atoms", **meta}})

    def closeEvent(self, event):  # noqa: N802 (Qt name)
        self.cancel()
        super().closeEvent(event)
