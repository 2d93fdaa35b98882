"""The model refinement job, behind ``napari-2dtm refine-model`` and the Refine Model widget.

Refines an atomic model against the particle images that a search found
(:mod:`napari_2dtm.modelfit`): groups of atoms (chains, or selections) move as rigid
bodies and/or change their B-factor, the particles' poses are refined in alternation,
and particles alternate into a work half (fitted) and a free half (only scored). One job
folder, written through :func:`napari_2dtm.io.mrc.atomic_dir` (an existing one is
replaced only with ``overwrite``, and only when it holds ``model_refine.json``)::

    refined_model.cif  refined_model.pdb     the input file, atoms moved (gemmi)
    template_start.mrc  template_refined.mrc  the two templates, one grid (the hits' centre)
    groups.csv     per group: rotation (deg, axis), translation (A), RMSD moved, B change
    cycles.csv     per cycle: work and free mean CC, seconds
    particles.csv  per particle: micrograph, hit, refined pose and position, CC, half
    model_refine.json   (settings, groups, cycles, the best cycle, why it stopped, timings)

The hits must refer to a template made from this model: the model's centre (by the rule
the search's template recorded, ``center_a`` in ``search.json``) must lie within
``max(2 A, 1.5 px)`` of the template centre, or the job refuses. Without a record (hits
from a STAR file or a map template) the model's potential-weighted centre is the
template centre (the template default, ``center="mass"``).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from napari_2dtm.core.filters import resample_plan
from napari_2dtm.core.geometry import angular_distance_deg, matrix_to_euler
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.io.mrc import atomic_dir, output_lock, write_mrc
from napari_2dtm.io.records import plain, strict
from napari_2dtm.modelfit.forward import GroupVolumes
from napari_2dtm.modelfit.groups import GroupMotion, RigidGroups, make_groups
from napari_2dtm.modelfit.particles import MicrographHits, prepare_particles
from napari_2dtm.modelfit.refine import ModelFit, RefineOptions, model_potential, refine_model
from napari_2dtm.modelfit.writer import displacement_a, write_model
from napari_2dtm.search.results import ResultsFolder
from napari_2dtm.templates.atoms import read_atoms
from napari_2dtm.templates.model import DEFAULT_BFACTOR_A2, _auto_box
from napari_2dtm.templates.selection import select_atoms

from .reconstruct import JobProgress, MicrographInput, micrograph_from_hits

__all__ = ["ModelRefineSettings", "ModelRefineResult", "run_model_refine",
           "run_model_refine_from_hits", "template_center"]

MARKER = "model_refine.json"


@dataclasses.dataclass
class ModelRefineSettings:
    """Parameters of a job (saved in ``model_refine.json``).

    groups: selections, one per rigid group (None: one group per chain); rigid, bfactor:
    what is refined per group; poses: refine the particles' poses in alternation;
    max_cycles: cycles after cycle 0; bfactor_a2: B-factor of every atom in the
    predicted images (None: the search template's, else 30); high_res_limit_a: the
    search pixel size and whitening (None: the search's); min_score, score_column: keep
    hits scoring at least that."""

    groups: tuple | None = None
    rigid: bool = True
    bfactor: bool = False
    poses: bool = True
    max_cycles: int = 5
    bfactor_a2: float | None = None
    high_res_limit_a: float | None = None
    min_score: float | None = None
    score_column: str = "zscore"

    def options(self) -> RefineOptions:
        return RefineOptions(rigid=self.rigid, bfactor=self.bfactor, poses=self.poses,
                             max_cycles=self.max_cycles)


@dataclasses.dataclass
class ModelRefineResult:
    """What a job made: its folder, the groups, the fit, per-atom displacement (A) of the
    potential's atoms, the two templates (volts, search pixels) and the summary."""

    folder: Path
    groups: RigidGroups
    fit: ModelFit
    displacement_a: np.ndarray
    template_start: np.ndarray
    template_refined: np.ndarray
    pixel_size_a: float
    particles: pd.DataFrame
    summary: dict


def _recorded(mics: Sequence[MicrographInput]) -> tuple[dict, str | None, float | None]:
    """The search template's params, the folder they came from, and the search's
    high-resolution limit (from the first micrograph with a result)."""
    for m in mics:
        if m.result is not None and (m.result.metadata or {}).get("template"):
            rf = ResultsFolder.of(m.result)
            return rf.template.params, m.name, rf.high_res_limit_a
    return {}, None, None


def template_center(atoms_file, params: dict, pixel_size_a: float, where: str | None):
    """``(center_a (3,), how)``: the centre of the template the hits refer to, checked
    against the model (see the module docstring)."""
    from napari_2dtm.templates.atoms import _filter_atoms

    atoms = _filter_atoms(atoms_file, bool(params.get("keep_hydrogens")),
                          bool(params.get("keep_waters")))
    c = params.get("center_a")
    if c is None:
        return atoms.weighted_center(), "the model's potential-weighted centre"
    c = np.asarray(c, np.float64)
    kind = params.get("center", "mass")
    tpx = float(params.get("pixel_size_a") or pixel_size_a)
    if kind == "model":
        own = np.round(atoms.weighted_center() / tpx) * tpx
    elif kind == "mass" or kind is None:
        sel = params.get("selection")
        m = select_atoms(atoms, sel) if sel else np.ones(len(atoms), bool)
        own = atoms.subset(m).weighted_center() if m.any() else atoms.weighted_center()
    else:  # a centre given as a point: the atoms must at least lie in its box
        own = c
        box = params.get("box")
        if box and float(np.abs(atoms.xyz - c).max()) > box * tpx / 2:
            raise InputError(f"{atoms_file.path}: the model's atoms reach beyond the box of the "
                             f"template the hits were found with ({box} px around "
                             f"{_fmt(c)} A, recorded in {where}); the model must be in the "
                             "template's frame")
    tol = max(2.0, 1.5 * tpx)
    d = float(np.linalg.norm(own - c))
    if d > tol:
        raise InputError(f"{atoms_file.path}: the model's centre {_fmt(own)} A lies {d:.1f} A "
                         f"from the centre {_fmt(c)} A of the template the hits were found "
                         f"with (recorded in {where}); the model must be in the template's "
                         "frame")
    return c, f"the search template's centre (recorded in {where})"


def _fmt(v) -> str:
    return "(" + ", ".join(f"{float(x):.1f}" for x in v) + ")"


def _selected(m: MicrographInput, s: ModelRefineSettings) -> pd.DataFrame:
    h = m.hits
    if s.min_score is not None:
        if s.score_column not in h:
            raise InputError(f"{m.name}: hits have no column {s.score_column!r} to select by")
        h = h[h[s.score_column] >= s.min_score]
    return h.reset_index(drop=True)


def _groups_table(groups: RigidGroups, motion: GroupMotion) -> pd.DataFrame:
    rmsd = motion.rmsd_a(groups)
    rows = []
    for g, name in enumerate(groups.names):
        w = motion.rotvec[g]
        ang = float(np.rad2deg(np.linalg.norm(w)))
        axis = w / np.linalg.norm(w) if ang > 0 else np.zeros(3)
        rows.append({"group": name, "selection": groups.selections[g],
                     "n_atoms": int(groups.masks[g].sum()), "rotation_deg": ang,
                     "axis_x": axis[0], "axis_y": axis[1], "axis_z": axis[2],
                     "shift_x_a": motion.shift_a[g, 0], "shift_y_a": motion.shift_a[g, 1],
                     "shift_z_a": motion.shift_a[g, 2],
                     "shift_a": float(np.linalg.norm(motion.shift_a[g])),
                     "rmsd_a": float(rmsd[g]), "delta_b_a2": float(motion.delta_b_a2[g])})
    return pd.DataFrame(rows)


def run_model_refine(micrographs: Sequence[MicrographInput], model, out_dir,
                     settings: ModelRefineSettings | None = None, *, overwrite: bool = False,
                     progress: Callable[[JobProgress], None] | None = None,
                     cancel: threading.Event | None = None) -> tuple[ModelRefineResult, Path]:
    """Refine ``model`` (PDB / mmCIF path) against the hits of ``micrographs``; write the
    job folder ``out_dir``. Raises :class:`~napari_2dtm.errors.Cancelled` when ``cancel``
    is set (nothing written) and :class:`InputError` on bad input."""
    s = settings or ModelRefineSettings()
    out_dir = Path(out_dir)
    cancel = cancel or threading.Event()
    with (output_lock(out_dir),
          atomic_dir(out_dir, overwrite=overwrite, marker=MARKER,
                     what="model refinement folder", inputs=[model]) as tmp):
        job = _run(list(micrographs), Path(model), s, tmp, progress, cancel)
    job.folder = out_dir
    if progress is not None:
        progress(JobProgress("write", 1.0, f"done: {out_dir}"))
    return job, out_dir


def run_model_refine_from_hits(image, pixel_size_a: float, hits: pd.DataFrame, model, out_dir,
                               *, micrograph_name: str = "micrograph.mrc", ctf=None,
                               results_folder=None, settings: ModelRefineSettings | None = None,
                               overwrite: bool = False,
                               progress: Callable[[JobProgress], None] | None = None,
                               cancel: threading.Event | None = None):
    """:func:`run_model_refine` on one micrograph's hits held in memory (the widget's
    layers)."""
    mic = micrograph_from_hits(image, pixel_size_a, hits, micrograph_name, ctf=ctf,
                               results_folder=results_folder)
    return run_model_refine([mic], model, out_dir, settings, overwrite=overwrite,
                            progress=progress, cancel=cancel)


def _run(mics: list[MicrographInput], model: Path, s: ModelRefineSettings, folder: Path,
         progress, cancel: threading.Event) -> ModelRefineResult:
    t_start = time.perf_counter()
    if not mics:
        raise InputError("no micrographs given")

    def report(step, frac, msg):
        if cancel.is_set():
            raise Cancelled("model refinement cancelled")
        if progress is not None:
            progress(JobProgress(step, float(min(max(frac, 0.0), 1.0)), msg))

    file_atoms = read_atoms(model)
    params, where, hrl = _recorded(mics)
    keep_h, keep_w = bool(params.get("keep_hydrogens")), bool(params.get("keep_waters"))
    groups = make_groups(file_atoms, list(s.groups) if s.groups else None,
                         keep_hydrogens=keep_h, keep_waters=keep_w)
    bfac = float(s.bfactor_a2 if s.bfactor_a2 is not None
                 else params.get("bfactor_a2", DEFAULT_BFACTOR_A2))
    use_b = bool(params.get("use_model_bfactors"))
    high_res = s.high_res_limit_a if s.high_res_limit_a is not None else hrl
    hits = [_selected(m, s) for m in mics]
    inputs = [MicrographHits(m.image, m.pixel_size_a, m.ctf, h, m.name)
              for m, h in zip(mics, hits) if len(h)]
    if not inputs:
        raise InputError("no hits to refine against (after the score selection)")
    opt = s.options()
    report("prepare", 0.0, "computing the groups' potentials and cutting the particles")
    # the search pixel size, as the particles' preparation will resample
    a, c = resample_plan(inputs[0].pixel_size_a, high_res)
    px = inputs[0].pixel_size_a * a / c
    center0, center_how = template_center(file_atoms, params, px, where)
    vols = GroupVolumes(groups, px, bfac, use_b)
    box = _auto_box(groups.atoms, center0, px)
    data = prepare_particles(inputs, box, vols.size, high_res)
    n_par = opt.n_parameters(len(groups))
    if len(data.work) < n_par:
        raise InputError(f"{len(data.batch)} particles ({len(data.work)} in the work half) are "
                         f"fewer than the {n_par} parameters refined; give more particles or "
                         "fewer groups")
    start_rot = data.batch.rot.copy()
    t0 = time.perf_counter()

    def prog(step, frac, msg):
        report(step, 0.02 + 0.9 * frac, msg)

    fit = refine_model(groups, data, center0, options=opt, bfactor_a2=bfac,
                       use_model_bfactors=use_b, model_box=box, progress=prog, cancel=cancel)
    t_refine = time.perf_counter() - t0
    report("write", 0.94, "writing the refined model and the templates")
    paths = write_model(groups, fit.motion, folder / "refined_model")
    t_start_vol = model_potential(groups, GroupMotion.zero(len(groups)), center0, box, px, bfac,
                                  use_b)
    t_ref_vol = model_potential(groups, fit.motion, center0, box, px, bfac, use_b)
    origin = center0 - (box // 2) * px
    for name, vol in (("template_start.mrc", t_start_vol), ("template_refined.mrc", t_ref_vol)):
        write_mrc(folder / name, vol, px)
        _set_origin(folder / name, origin)
    gtab = _groups_table(groups, fit.motion)
    gtab.to_csv(folder / "groups.csv", index=False, float_format="%.6g")
    ctab = pd.DataFrame([{"cycle": r.cycle, "work_cc": r.work_cc, "free_cc": r.free_cc,
                          "max_rmsd_a": float(r.motion.rmsd_a(groups).max()),
                          "seconds": r.seconds, "evaluations": r.evaluations}
                         for r in fit.cycles])
    ctab.to_csv(folder / "cycles.csv", index=False, float_format="%.6g")
    ptab = data.table.copy()
    b = data.batch
    xs = (data.cols + b.shift_px[:, 0]) * data.binning
    ys = (data.rows + b.shift_px[:, 1]) * data.binning
    ptab["x"], ptab["y"] = xs, ys
    ang = matrix_to_euler(b.rot)
    ptab["phi"], ptab["theta"], ptab["psi"] = ang[:, 0], ang[:, 1], ang[:, 2]
    ptab["cc"] = fit.cc
    ptab["pose_change_deg"] = angular_distance_deg(start_rot, b.rot)
    ptab = ptab[["micrograph", "hit", "x", "y", "phi", "theta", "psi", "defocus_a", "cc",
                 "pose_change_deg", "half"]]
    ptab.to_csv(folder / "particles.csv", index=False, float_format="%.6g")
    first, best = fit.cycles[0], fit.cycles[[r.cycle for r in fit.cycles].index(fit.best_cycle)]
    summary = {
        "model": str(model),
        "outputs": [p.name for p in paths],
        "n_micrographs": len(inputs),
        "n_particles": len(b),
        "n_work": int(len(data.work)),
        "n_free": int(len(data.free)),
        "n_parameters": n_par,
        "pixel_size_a": px,
        "patch_px": int(b.size),
        "template_box": int(box),
        "center_a": [float(v) for v in center0],
        "center_from": center_how,
        "bfactor_a2": bfac,
        "use_model_bfactors": use_b,
        "high_res_limit_a": high_res,
        "settings": dataclasses.asdict(s),
        "groups": gtab.to_dict(orient="records"),
        "cycles": ctab.to_dict(orient="records"),
        "best_cycle": fit.best_cycle,
        "stopped": fit.stopped,
        "free_cc_start": first.free_cc,
        "free_cc_refined": best.free_cc,
        "work_cc_start": first.work_cc,
        "work_cc_refined": best.work_cc,
        "frame": ("the groups' motions are given in the frame where the most atoms stand "
                  "still (poses absorb a motion shared by every group)"),
        "timings": {"refine_s": t_refine, "total_s": time.perf_counter() - t_start,
                    "per_particle_per_cycle_s": t_refine / max(len(b), 1)
                    / max(len(fit.cycles), 1)},
    }
    (folder / MARKER).write_text(json.dumps(strict(plain(summary)), indent=2, allow_nan=False))
    return ModelRefineResult(folder, groups, fit, displacement_a(groups, fit.motion), t_start_vol,
                             t_ref_vol, px, ptab, summary)


def _set_origin(path: Path, origin) -> None:
    import mrcfile

    with mrcfile.open(path, mode="r+") as m:
        m.header.origin.x, m.header.origin.y, m.header.origin.z = (float(v) for v in origin)
