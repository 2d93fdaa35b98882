"""Refinement of an atomic model against particle images, in cycles.

Each cycle has two steps (after GisAPR, Zhu, Zhang, Kong & Grigorieff):

1. **Model step.** The groups' motions (rotation, translation, B-factor change, as the user
   chose) maximise the mean normalised CC of the *work* particles, by L-BFGS-B on the
   analytic gradient (:func:`~napari_2dtm.modelfit.forward.score_particles`), through
   resolution bands (a coarse band first widens the basin, as the pose refinement's).
   Variables are scaled to comparable steps: degrees, Angstrom, tens of A^2.
2. **Pose step.** Every particle's orientation and sub-pixel shift are refined against
   the template of the moved model (:func:`napari_2dtm.core.pose_refine.refine_pose`),
   the defocus kept.

A cycle 0 runs the pose step alone on the starting model, so the model step never pays
for the hits' pose errors. After every cycle the work- and free-half mean CC are recorded
on every frequency; refinement stops when the free CC no longer rises by ``tol`` (or after
``max_cycles``) and keeps the motion of the cycle with the best free CC: noise fitted by
the work half lowers the free half's CC (R-free, Brunger 1992).

The CC is the log-likelihood of a Gaussian-noise model of whitened images with the scale
profiled out, up to a monotonic map; so maximising its sum is maximum likelihood.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize

from napari_2dtm.core.diffproj import PoseScore, left_jacobian
from napari_2dtm.core.pose_refine import bands_for, refine_pose
from napari_2dtm.core.projection import FourierVolume
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.templates.model import potential_on_grid

from .forward import GroupVolumes, gridding_corrected, score_particles
from .groups import GroupMotion, RigidGroups
from .particles import ParticleData

__all__ = ["RefineOptions", "CycleRecord", "ModelFit", "refine_model", "model_potential"]

_DEG = math.pi / 180.0
_B_UNIT = 10.0
#: the first model step's coarse band (A)
FIRST_BAND_A = 10.0


@dataclasses.dataclass
class RefineOptions:
    """What is refined and how far.

    rigid: rotation and translation of every group; bfactor: a B-factor change per group;
    poses: the particles' orientations and shifts in alternation (else kept);
    max_cycles: cycles after cycle 0; bands_a: the model step's bands (default: the
    first step 10 A then every frequency, later steps every frequency); tol: least rise of the free CC
    (relative) that counts as improving; max_rotation_deg, max_shift_a, max_delta_b_a2:
    bounds of each group's motion; pose_angle_deg, pose_shift_px: of each particle's
    pose step."""

    rigid: bool = True
    bfactor: bool = False
    poses: bool = True
    max_cycles: int = 5
    bands_a: tuple | None = None
    tol: float = 1e-4
    max_rotation_deg: float = 15.0
    max_shift_a: float = 8.0
    max_delta_b_a2: float = 150.0
    pose_angle_deg: float = 3.0
    pose_shift_px: float = 2.0

    def __post_init__(self):
        if not (self.rigid or self.bfactor):
            raise InputError("nothing to refine: choose rigid-body motions, B-factors or both")
        if not (isinstance(self.max_cycles, int) and self.max_cycles >= 1):
            raise InputError(f"cycles must be a whole number >= 1, got {self.max_cycles}")

    def n_parameters(self, n_groups: int) -> int:
        return n_groups * (6 * bool(self.rigid) + bool(self.bfactor))


@dataclasses.dataclass
class CycleRecord:
    """One cycle: mean CC of the work and free halves, the motion, seconds."""

    cycle: int
    work_cc: float
    free_cc: float
    motion: GroupMotion
    seconds: float
    evaluations: int = 0


@dataclasses.dataclass
class ModelFit:
    """The result: ``motion`` (of the best cycle), ``cycles``, ``best_cycle``, the
    particles' final ``rot (Np, 3, 3)``, ``shift_px (Np, 2)`` and ``cc (Np,)``."""

    motion: GroupMotion
    cycles: list
    best_cycle: int
    rot: np.ndarray
    shift_px: np.ndarray
    cc: np.ndarray
    stopped: str


def model_potential(groups: RigidGroups, motion: GroupMotion, center_a, box: int,
                    pixel_size_a: float, bfactor_a2: float,
                    use_model_bfactors: bool = False) -> np.ndarray:
    """The moved model's potential ``(box, box, box)`` volts, voxel ``box // 2`` at
    ``center_a``: the template of the refined model."""
    atoms = groups.atoms
    db = motion.atom_b(groups.masks)
    if use_model_bfactors:
        db = db + np.maximum(atoms.b_iso, 0.0)
    lo = float(db.min()) if len(db) else 0.0
    moved = dataclasses.replace(atoms, xyz=motion.apply(atoms.xyz, groups.masks,
                                                        groups.centers_a),
                                b_iso=db - lo)
    # potential_on_grid adds max(b_iso, 0) to bfactor_a2: shift by the lowest change so a
    # negative change (sharper group) is kept
    return potential_on_grid(moved, center_a, box, pixel_size_a, bfactor_a2 + lo, True)


def _pack(motion: GroupMotion, opt: RefineOptions) -> np.ndarray:
    parts = []
    for g in range(len(motion.delta_b_a2)):
        if opt.rigid:
            parts += [motion.rotvec[g] / _DEG, motion.shift_a[g]]
        if opt.bfactor:
            parts.append([motion.delta_b_a2[g] / _B_UNIT])
    return np.concatenate(parts) if parts else np.zeros(0)


def _unpack(x: np.ndarray, base: GroupMotion, opt: RefineOptions) -> GroupMotion:
    m = base.copy()
    i = 0
    for g in range(len(m.delta_b_a2)):
        if opt.rigid:
            m.rotvec[g] = x[i:i + 3] * _DEG
            m.shift_a[g] = x[i + 3:i + 6]
            i += 6
        if opt.bfactor:
            m.delta_b_a2[g] = x[i] * _B_UNIT
            i += 1
    return m


def _grad_vector(gr, motion: GroupMotion, opt: RefineOptions) -> np.ndarray:
    parts = []
    for g in range(len(motion.delta_b_a2)):
        if opt.rigid:
            parts += [left_jacobian(motion.rotvec[g]).T @ gr.rotvec[g] * _DEG, gr.shift_a[g]]
        if opt.bfactor:
            parts.append([gr.delta_b[g] * _B_UNIT])
    return np.concatenate(parts)


def _bounds(opt: RefineOptions, n_groups: int, bfactor_a2: float) -> list:
    out = []
    for _ in range(n_groups):
        if opt.rigid:
            out += [(-opt.max_rotation_deg, opt.max_rotation_deg)] * 3
            out += [(-opt.max_shift_a, opt.max_shift_a)] * 3
        if opt.bfactor:
            # a total B below 2 A^2 would alias on the grid
            out.append((max(-opt.max_delta_b_a2, 2.0 - bfactor_a2) / _B_UNIT,
                        opt.max_delta_b_a2 / _B_UNIT))
    return out


def _model_step(data: ParticleData, vols: GroupVolumes, motion: GroupMotion, center0_a,
                opt: RefineOptions, bfactor_a2: float, cancel, first: bool) -> tuple[GroupMotion, int]:
    work = data.batch.take(data.work)
    # the first step may start a few degrees / Angstrom away: a coarse band first widens
    # the basin; later steps start within a fraction of that and take every frequency
    bands = opt.bands_a if opt.bands_a is not None else ((FIRST_BAND_A, None) if first else (None,))
    n_eval = 0
    bounds = _bounds(opt, len(motion.delta_b_a2), bfactor_a2)
    for band in bands:
        sub = work.band(band)
        n = float(len(sub))

        def fun(x, sub=sub, base=motion, n=n):
            nonlocal n_eval
            if cancel is not None and cancel.is_set():
                raise Cancelled("model refinement cancelled")
            m = _unpack(x, base, opt)
            gr = score_particles(sub, vols, m, center0_a)
            n_eval += 1
            return -float(gr.cc.sum()) / n, -_grad_vector(gr, m, opt) / n

        last = band is bands[-1]
        # per unit mean CC: 1e-9 of a CC near 20 is far below what the free half resolves
        res = minimize(fun, _pack(motion, opt), jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 200, "gtol": 1e-5 if last else 1e-4,
                                "ftol": 1e-9 if last else 1e-7})
        motion = _unpack(res.x, motion, opt)
    return motion, n_eval


def _pose_step(data: ParticleData, fvol: FourierVolume, opt: RefineOptions, cancel,
               report=None, first: bool = False) -> None:
    b = data.batch
    px = b.pixel_size_a
    scale = fvol.size / float(b.size)
    # the hits' poses may be a search grid step off: bands; later the poses are within a
    # fraction of a degree of the optimum, where every frequency's basin holds them
    bands = bands_for(px, 10.0) if first else (None,)
    for p in range(len(b)):
        if cancel is not None and cancel.is_set():
            raise Cancelled("model refinement cancelled")
        m = data.mic[p]
        passes = PoseScore.passes(data.patches[p], data.whitening[m], fvol, scale,
                                  data.ctfs[m], px, bands)
        got = refine_pose(passes, b.rot[p], float(data.delta_a[p]),
                          max_shift_px=opt.pose_shift_px + 1.0,
                          angular_range_deg=opt.pose_angle_deg, defocus_range_a=0.0)
        b.rot[p] = got["rot"]
        b.shift_px[p] = got["shift_px"]
        if report is not None and p % 50 == 49:
            report(p + 1, len(b))


def refine_model(groups: RigidGroups, data: ParticleData, center0_a, *,
                 options: RefineOptions | None = None, bfactor_a2: float = 30.0,
                 use_model_bfactors: bool = False, model_box: int | None = None,
                 progress: Callable[[str, float, str], None] | None = None,
                 cancel: threading.Event | None = None) -> ModelFit:
    """Refine the groups' motions (and the particles' poses) in cycles; see the module
    docstring. ``data``'s particle poses are updated in place (the best cycle's at the
    end). progress(step, fraction, message): ``step`` is "poses", "model" or "cycle"."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    # L-BFGS-B's small dense algebra on a many-threaded BLAS: thread hand-offs cost more
    # than the work (1.8 ms an L-BFGS step measured on a busy 2-core machine)
    with threadpool_limits(limits=1, user_api="blas"):
        return _refine_model(groups, data, center0_a, options, bfactor_a2, use_model_bfactors,
                             model_box, progress, cancel)


def _refine_model(groups, data, center0_a, options, bfactor_a2, use_model_bfactors, model_box,
                  progress, cancel) -> ModelFit:
    opt = options or RefineOptions()
    n_par = opt.n_parameters(len(groups))
    n_work = len(data.work)
    if n_work < n_par or len(data.free) == 0:
        raise InputError(f"{len(data.batch)} particles ({n_work} in the work half) are fewer "
                         f"than the {n_par} parameters refined; give more particles or "
                         "fewer groups")
    px = data.batch.pixel_size_a
    vols = GroupVolumes(groups, px, bfactor_a2, use_model_bfactors)
    box = int(model_box or vols.box)
    motion = GroupMotion.zero(len(groups))
    say = progress or (lambda *a: None)
    total = opt.max_cycles + 1

    def template_volume(m):
        return FourierVolume(gridding_corrected(model_potential(
            groups, m, center0_a, box, px, bfactor_a2, use_model_bfactors), 2), pad=2)

    def score_all():
        cc = score_particles(data.batch, vols, motion, center0_a, want_grad=False).cc
        return cc, float(cc[data.work].mean()), float(cc[data.free].mean())

    cycles: list[CycleRecord] = []
    best = None
    stopped = "max_cycles"
    for k in range(total):
        t0 = time.perf_counter()
        n_eval = 0
        if k > 0:
            say("model", k / total, f"cycle {k}: refining the model on {n_work} particles")
            motion, n_eval = _model_step(data, vols, motion, center0_a, opt, bfactor_a2, cancel,
                                         first=k == 1)
        if opt.poses:
            fvol = template_volume(motion)
            _pose_step(data, fvol, opt, cancel,
                       lambda i, n, k=k: say("poses", (k + 0.5 * i / n) / total,
                                             f"cycle {k}: poses {i}/{n}"), first=k == 0)
        cc, work_cc, free_cc = score_all()
        rec = CycleRecord(k, work_cc, free_cc, motion.copy(), time.perf_counter() - t0, n_eval)
        cycles.append(rec)
        say("cycle", (k + 1) / total, f"cycle {k}: work CC {work_cc:.4f}, free CC {free_cc:.4f}")
        improved = best is None or free_cc > best[0].free_cc + opt.tol * abs(best[0].free_cc)
        if improved:
            best = (rec, data.batch.rot.copy(), data.batch.shift_px.copy(), cc)
        elif k > 0:
            stopped = "free_cc"
            break
    rec, rot, shift, cc = best
    motion, q, u = rec.motion.in_still_frame(groups)
    for c in cycles:
        c.motion = c.motion.in_still_frame(groups)[0]
    # the same images under the re-framed model: A' = A q.T, and the centre moves by
    # A (q.T (c0 - u) - c0) (see modelfit.groups)
    c0 = np.asarray(center0_a, np.float64)
    rot = rot @ q.T
    shift = shift + np.einsum("pij,j->pi", rot[:, :2, :] @ q, q.T @ (c0 - u) - c0) / px
    data.batch.rot[:] = rot
    data.batch.shift_px[:] = shift
    return ModelFit(motion, cycles, rec.cycle, rot, shift, cc, stopped)
