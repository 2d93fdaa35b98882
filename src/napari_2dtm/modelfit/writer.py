"""Writing the refined model: the input file's structure with its atoms moved.

gemmi keeps the rest of the file (header, cell, chains, residue numbering, alternate
locations, ligands, waters, hydrogens; only the first model of a multi-model file is
refined and written). Every atom of a group, hydrogens and waters included, moves with
the group; its B-factor changes by the group's B-factor change (never below 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_2dtm.errors import InputError

from .groups import GroupMotion, RigidGroups

__all__ = ["write_model", "moved_structure"]


def moved_structure(groups: RigidGroups, motion: GroupMotion):
    """A copy of the model's gemmi Structure with the motion applied."""
    import gemmi

    fa = groups.file_atoms
    st = fa.structure.clone()
    xyz = motion.apply(fa.xyz, groups.file_masks, groups.centers_a)
    db = motion.atom_b(groups.file_masks)
    i = 0
    for ch in st[0]:
        for res in ch:
            for a in res:
                a.pos = gemmi.Position(*xyz[i])
                a.b_iso = float(max(a.b_iso + db[i], 0.0))
                i += 1
    if i != len(fa):
        raise InputError(f"{fa.path}: the model changed while it was refined")
    return st


def write_model(groups: RigidGroups, motion: GroupMotion, stem: str | Path) -> list[Path]:
    """Write ``<stem>.cif`` (mmCIF) and ``<stem>.pdb`` (when the model fits the PDB
    format); returns the paths written."""
    stem = Path(stem)
    st = moved_structure(groups, motion)
    out = []
    cif = stem.with_suffix(".cif")
    st.make_mmcif_document().write_file(str(cif))
    out.append(cif)
    n_atoms = sum(1 for ch in st[0] for r in ch for _ in r)
    if n_atoms < 100000 and all(len(ch.name) <= 2 for ch in st[0]):
        pdb = stem.with_suffix(".pdb")
        st.write_pdb(str(pdb))
        out.append(pdb)
    return out


def displacement_a(groups: RigidGroups, motion: GroupMotion) -> np.ndarray:
    """``(N,)`` distance (A) each potential atom moved."""
    moved = motion.apply(groups.atoms.xyz, groups.masks, groups.centers_a)
    return np.sqrt(((moved - groups.atoms.xyz) ** 2).sum(1))
