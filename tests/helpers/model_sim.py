"""Particles simulated from a deliberately changed atomic model, for model refinement.

The change is made here with gemmi and NumPy alone (not with the refinement's own group
code): the atoms of a selection turn about their potential-weighted centre and shift, or
get a B-factor. Particles come from the project's simulator (atoms projected
analytically, Poisson noise at a given exposure), their hits from the truth with known
pose errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.modelfit.particles import MicrographHits
from napari_2dtm.simulate import perturbed_hits, simulate_micrograph
from napari_2dtm.templates.atoms import _filter_atoms, read_atoms
from napari_2dtm.templates.selection import select_atoms


def changed_model(src, out, selection: str | None = None, *, axis=(0.3, 0.8, -0.5),
                  angle_deg: float = 0.0, shift_a=(0.0, 0.0, 0.0), bfactor=None) -> Path:
    """Write ``out`` (PDB): ``src`` with the atoms of ``selection`` turned by
    ``angle_deg`` about ``axis`` through their weighted centre and moved by ``shift_a``
    (A); ``bfactor``: {selection: B} sets those atoms' B-factors (others 0)."""
    import gemmi

    atoms = read_atoms(src)
    st = gemmi.read_structure(str(src))
    st.remove_hydrogens()
    st.remove_waters()
    while len(st) > 1:
        del st[len(st) - 1]
    if selection is not None:
        pot = _filter_atoms(atoms, False, False)
        m = select_atoms(pot, selection)
        w = pot.occ[m] * pot.f0[m]
        centre = (pot.xyz[m] * w[:, None]).sum(0) / w.sum()
        ax = np.asarray(axis, float) / np.linalg.norm(axis)
        rot = Rotation.from_rotvec(ax * np.deg2rad(angle_deg)).as_matrix()
    sel_b = {}
    for text, b in (bfactor or {}).items():
        pot = _filter_atoms(atoms, False, False)
        sel_b[text] = (select_atoms(pot, text), float(b))
    i = 0
    for ch in st[0]:
        for res in ch:
            for a in res:
                a.b_iso = 0.0
                for mask, b in sel_b.values():
                    if mask[i]:
                        a.b_iso = b
                if selection is not None and m[i]:
                    x = np.array([a.pos.x, a.pos.y, a.pos.z])
                    y = rot @ (x - centre) + centre + np.asarray(shift_a, float)
                    a.pos = gemmi.Position(*y)
                i += 1
    out = Path(out)
    st.write_pdb(str(out))
    return out


def simulated_hits(model, n_particles: int, *, pixel_size_a: float = 1.5, per_micrograph: int = 100,
                   shape=(1024, 1024), defocus_a: float = 8000.0, exposure_e_per_a2: float = 40.0,
                   pose_error_deg: float = 1.0, shift_error_px: float = 0.5, seed: int = 0,
                   use_model_bfactors: bool = False, bfactor_a2: float = 30.0,
                   with_truth: bool = False):
    """:class:`MicrographHits` of ``n_particles`` simulated from ``model`` (several
    micrographs), hits = the truth with pose errors; ``with_truth``: also the truth
    tables (a list, one per micrograph)."""
    ctf = CTFParams(defocus1_a=defocus_a)
    out, truths = [], []
    left, k = int(n_particles), 0
    while left > 0:
        n = min(per_micrograph, left)
        sim = simulate_micrograph(model, n, shape=shape, pixel_size_a=pixel_size_a, ctf=ctf,
                                  exposure_e_per_a2=exposure_e_per_a2, seed=seed + k,
                                  use_model_bfactors=use_model_bfactors, bfactor_a2=bfactor_a2)
        hits = perturbed_hits(sim.truth, pose_error_deg, shift_error_px, 0.0, seed=seed + 1000 + k)
        out.append(MicrographHits(sim.image, pixel_size_a, ctf, hits, f"sim{k:02d}.mrc"))
        truths.append(sim.truth)
        left -= n
        k += 1
    return (out, truths) if with_truth else out
