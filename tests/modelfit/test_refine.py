"""Model refinement finds a moved domain, moves nothing that did not move, recovers a
B-factor difference, and its model finds the particles with a higher SNR.

Particles are simulated by the project's simulator (atoms projected analytically, Poisson
noise at 40 e/A^2, 0.8 um defocus, 1.5 A pixels) from 1A28 changed by the test helper
(gemmi and NumPy, not the refinement's group code); the hits are the truth with 1 degree
and 0.5 px errors. The groups are chain A and the two halves of chain B, so that "the
other groups do not move" is measured on two groups. 200 particles keep the suite fast;
``benchmarks/bench_model_refine.py`` runs the issue's 1,000 on 1BD2.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers.model_sim import changed_model, simulated_hits
from helpers.planting import structure
from napari_2dtm.modelfit.forward import GroupVolumes
from napari_2dtm.modelfit.groups import GroupMotion, make_groups
from napari_2dtm.modelfit.particles import prepare_particles
from napari_2dtm.modelfit.refine import RefineOptions, model_potential, refine_model
from napari_2dtm.search.config import SearchConfig
from napari_2dtm.search.engine import search
from napari_2dtm.templates.atoms import read_atoms
from napari_2dtm.templates.model import _auto_box
from napari_2dtm.templates.template import Template

PX = 1.5
N = 200
GROUPS = ["chain A", "chain B and resid 683-806", "chain B and resid 807-931"]
MOVED = 1  # the N-terminal half of chain B
SHIFT = np.array([1.2, -1.0, 1.2]) / np.linalg.norm([1.2, -1.0, 1.2]) * 2.0


def _refine(model_for_particles, options, *, seed, use_model_bfactors=False):
    src = structure("1A28")
    mics, truths = simulated_hits(model_for_particles, N, pixel_size_a=PX, per_micrograph=100,
                                  shape=(1024, 1024), seed=seed, with_truth=True,
                                  use_model_bfactors=use_model_bfactors)
    atoms = read_atoms(src)
    groups = make_groups(atoms, GROUPS)
    # the hits refer to the starting model's template: centre = its weighted centre
    c0 = groups.atoms.weighted_center()
    vols = GroupVolumes(groups, PX, 30.0)
    box = _auto_box(groups.atoms, c0, PX)
    data = prepare_particles(mics, box, vols.size, None)
    fit = refine_model(groups, data, c0, options=options, model_box=box)
    return groups, fit, mics, truths, c0, box


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    out = tmp_path_factory.mktemp("moved") / "changed.pdb"
    changed_model(structure("1A28"), out, GROUPS[MOVED], angle_deg=5.0, shift_a=SHIFT)
    return (*_refine(out, RefineOptions(max_cycles=3), seed=11), read_atoms(out))


def test_a_moved_domain_is_found_and_nothing_else_moves(moved):
    groups, fit, _, _, _, _, changed = moved
    truth = changed.xyz  # same atoms, same order as the potential's (no H, no waters)
    assert truth.shape == groups.atoms.xyz.shape
    refined = fit.motion.apply(groups.atoms.xyz, groups.masks, groups.centers_a)
    err = [float(np.sqrt(((refined[m] - truth[m]) ** 2).sum(1).mean())) for m in groups.masks]
    true_move = float(np.sqrt(((groups.atoms.xyz - truth)[groups.masks[MOVED]] ** 2).sum(1).mean()))
    assert true_move > 2.0
    assert err[MOVED] < 0.5, err
    moved_by = fit.motion.rmsd_a(groups)
    assert all(moved_by[g] <= 0.2 for g in range(len(groups)) if g != MOVED), moved_by
    best = next(c for c in fit.cycles if c.cycle == fit.best_cycle)
    assert best.free_cc > fit.cycles[0].free_cc + 0.02 * abs(fit.cycles[0].free_cc)


def test_the_refined_model_finds_the_particles_with_a_higher_snr(moved):
    groups, fit, mics, truths, c0, box = moved[:6]
    mic, truth = mics[0], truths[0]
    start = Template(model_potential(groups, GroupMotion.zero(len(groups)), c0, box, PX, 30.0), PX)
    refined = Template(model_potential(groups, fit.motion, c0, box, PX, 30.0), PX)
    rng = np.random.default_rng(0)
    # the particles' true views plus random ones (the background statistics)
    views = np.concatenate([truth[["phi", "theta", "psi"]].to_numpy(float),
                            np.column_stack([rng.uniform(0, 360, 200),
                                             np.rad2deg(np.arccos(rng.uniform(-1, 1, 200))),
                                             rng.uniform(0, 360, 200)])])
    snr = []
    for t in (start, refined):
        res = search(mic.image, PX, t, SearchConfig(orientations=views, ctf=mic.ctf,
                                                    defocus_range_a=0.0))
        m = res.maps["snr"]
        snr.append(np.array([m[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].max()
                             for x, y in zip(truth["x"], truth["y"])]))
    gain = snr[1] / snr[0]
    assert np.median(gain) > 1.03, np.median(gain)
    assert np.mean(gain > 1) > 0.8


def test_particles_of_the_starting_model_move_nothing(tmp_path_factory):
    src = structure("1A28")
    groups, fit, *_ = _refine(src, RefineOptions(max_cycles=2), seed=21)
    for c in fit.cycles:  # every cycle, not only the kept one
        assert c.motion.rmsd_a(groups).max() <= 0.2, (c.cycle, c.motion.rmsd_a(groups))
    assert fit.motion.rmsd_a(groups).max() <= 0.2
    best = next(c for c in fit.cycles if c.cycle == fit.best_cycle)
    assert best.free_cc >= fit.cycles[0].free_cc


def test_a_b_factor_difference_is_recovered(tmp_path_factory):
    out = tmp_path_factory.mktemp("bfac") / "bfactors.pdb"
    changed_model(structure("1A28"), out, bfactor={"chain A": 0.0, "chain B": 40.0})
    groups, fit, *_ = _refine(out, RefineOptions(rigid=False, bfactor=True, max_cycles=2), seed=31,
                              use_model_bfactors=True)
    db = fit.motion.delta_b_a2
    chain_b = (db[1] + db[2]) / 2
    assert abs((chain_b - db[0]) - 40.0) <= 10.0, db
    assert abs(db[1] - db[2]) <= 10.0, db
