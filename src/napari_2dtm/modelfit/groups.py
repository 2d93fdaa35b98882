"""Rigid groups of an atomic model and their motions.

A group is a set of atoms (a chain, or a selection in the template ``--selection``
language, :func:`napari_2dtm.templates.selection.select_atoms`) that moves as one body
about its own potential-weighted centre ``c_g`` (model coordinates, Angstrom)::

    x' = R_g (x - c_g) + c_g + t_g

``R_g = expm([omega_g]_x)`` (``omega_g`` a rotation vector, radians, in the model frame),
``t_g`` a translation in Angstrom, and ``delta_b_g`` a B-factor change (A^2) added to the
group's atoms. Groups may not share atoms; atoms in no group stay where they are (and
are part of no refined parameter).

The frame. Particle poses are refined with the model, so a motion shared by every group is
undone by the poses: the images fix only the groups' motions relative to one another. The
refined model is therefore put back in the frame where the most atoms stand still
(:meth:`GroupMotion.in_still_frame`): each group in turn is taken as the anchor, the groups
that then moved less than :data:`STILL_RMSD_A` are counted by atoms, and the best anchor's
still groups are superposed onto the starting model (least squares, Kabsch). A domain
that moved against the rest of a complex thus shows its motion, and the rest shows none.
With two groups of equal size the larger by one atom (or the first) is the anchor.

Masks are kept twice: over the atoms that make the potential (hydrogens and waters
removed, as the templates), and over every atom of the file (so that the refined model
moves the hydrogens and waters of a group with it when it is written).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.spatial.transform import Rotation

from napari_2dtm.core.diffproj import rotvec_matrix
from napari_2dtm.errors import InputError
from napari_2dtm.templates.atoms import AtomTable, _filter_atoms
from napari_2dtm.templates.selection import select_atoms

__all__ = ["RigidGroups", "GroupMotion", "make_groups", "STILL_RMSD_A", "superpose"]

#: a group that moved less than this (RMSD, A) relative to an anchor "stands still"
STILL_RMSD_A = 0.5


@dataclasses.dataclass
class RigidGroups:
    """Groups over one model: ``names`` (G,), ``selections`` (the text that made each),
    ``masks`` ``(G, N)`` bool over ``atoms`` (the potential's atoms), ``file_masks``
    ``(G, N_file)`` over every atom of the file, ``centers_a`` ``(G, 3)``."""

    atoms: AtomTable
    file_atoms: AtomTable
    names: list
    selections: list
    masks: np.ndarray
    file_masks: np.ndarray
    centers_a: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def group_atoms(self, g: int) -> AtomTable:
        return self.atoms.subset(self.masks[g])


def make_groups(file_atoms: AtomTable, groups=None, *, keep_hydrogens: bool = False,
                keep_waters: bool = False) -> RigidGroups:
    """Groups from selections (a list of texts, or a dict name -> selection); None or
    ``"chains"``: one group per chain (chains of potential atoms only, e.g. not a chain of
    waters). Refuses (one line naming the model) a selection that matches no atom and
    atoms claimed by two groups."""
    atoms = _filter_atoms(file_atoms, keep_hydrogens, keep_waters)
    path = file_atoms.path
    if groups is None or (isinstance(groups, str) and groups.strip().lower() in ("", "chains")):
        names = list(dict.fromkeys(atoms.chain.tolist()))
        sels = [f"chain {c}" for c in names]
        names = [f"chain {c}" for c in names]
    elif isinstance(groups, dict):
        names, sels = list(groups), list(groups.values())
    else:
        sels = [str(s) for s in ([groups] if isinstance(groups, str) else groups)]
        names = list(sels)
    if not sels:
        raise InputError(f"{path}: no groups given")
    file_masks = np.zeros((len(sels), len(file_atoms)), bool)
    keep = np.ones(len(file_atoms), bool)
    if not keep_hydrogens:
        keep &= ~file_atoms.is_hydrogen
    if not keep_waters:
        keep &= ~file_atoms.is_water
    for g, s in enumerate(sels):
        m = select_atoms(file_atoms, s)
        if not (m & keep).any():
            raise InputError(f"{path}: group selection {s!r} matches no atom")
        file_masks[g] = m
    overlap = file_masks.sum(0) > 1
    if overlap.any():
        i = int(np.argmax(overlap))
        two = [sels[g] for g in np.flatnonzero(file_masks[:, i])]
        raise InputError(f"{path}: atom {file_atoms.atom_name[i]} of residue "
                         f"{file_atoms.resname[i]} {file_atoms.seqnum[i]} chain "
                         f"{file_atoms.chain[i]} is in two groups ({two[0]!r}, {two[1]!r})")
    masks = file_masks[:, keep]
    centers = np.array([atoms.subset(m).weighted_center() for m in masks])
    return RigidGroups(atoms, file_atoms, names, sels, masks, file_masks, centers)


@dataclasses.dataclass
class GroupMotion:
    """The motion of every group: ``rotvec`` ``(G, 3)`` radians, ``shift_a`` ``(G, 3)``,
    ``delta_b_a2`` ``(G,)``. Zero is the starting model."""

    rotvec: np.ndarray
    shift_a: np.ndarray
    delta_b_a2: np.ndarray

    @classmethod
    def zero(cls, n_groups: int) -> GroupMotion:
        return cls(np.zeros((n_groups, 3)), np.zeros((n_groups, 3)), np.zeros(n_groups))

    def copy(self) -> GroupMotion:
        return GroupMotion(self.rotvec.copy(), self.shift_a.copy(), self.delta_b_a2.copy())

    def rotations(self) -> np.ndarray:
        """``(G, 3, 3)`` rotation matrices."""
        return np.array([rotvec_matrix(w) for w in self.rotvec])

    def apply(self, xyz: np.ndarray, masks: np.ndarray, centers_a: np.ndarray) -> np.ndarray:
        """Moved coordinates ``(N, 3)`` of atoms ``xyz`` under ``masks`` ``(G, N)``."""
        out = np.array(xyz, np.float64, copy=True)
        for g, r in enumerate(self.rotations()):
            m = masks[g]
            out[m] = (xyz[m] - centers_a[g]) @ r.T + centers_a[g] + self.shift_a[g]
        return out

    def atom_b(self, masks: np.ndarray) -> np.ndarray:
        """Per-atom B-factor change ``(N,)``."""
        out = np.zeros(masks.shape[1])
        for g in range(len(masks)):
            out[masks[g]] = self.delta_b_a2[g]
        return out

    def rmsd_a(self, groups: RigidGroups) -> np.ndarray:
        """``(G,)`` RMS displacement (A) of each group's atoms from the starting model."""
        moved = self.apply(groups.atoms.xyz, groups.masks, groups.centers_a)
        d2 = ((moved - groups.atoms.xyz) ** 2).sum(1)
        return np.array([float(np.sqrt(d2[m].mean())) for m in groups.masks])

    def compose(self, q: np.ndarray, u: np.ndarray, groups: RigidGroups) -> GroupMotion:
        """The motion followed by the global map ``y -> q y + u`` (rotation ``q``)."""
        out = self.copy()
        c = groups.centers_a
        for g, r in enumerate(self.rotations()):
            out.rotvec[g] = Rotation.from_matrix(q @ r).as_rotvec()
            out.shift_a[g] = q @ (c[g] + self.shift_a[g]) + u - c[g]
        return out

    def in_still_frame(self, groups: RigidGroups) -> tuple[GroupMotion, np.ndarray, np.ndarray]:
        """``(motion, q, u)``: this motion followed by the global map ``y -> q y + u`` that
        puts it in the frame where the most atoms stand still (module docstring)."""
        xyz = groups.atoms.xyz
        moved = self.apply(xyz, groups.masks, groups.centers_a)
        sizes = groups.masks.sum(1)
        best = None
        for a in range(len(groups)):
            m = groups.masks[a]
            q, u = superpose(moved[m], xyz[m])
            back = moved @ q.T + u
            d2 = ((back - xyz) ** 2).sum(1)
            still = np.array([float(np.sqrt(d2[mg].mean())) < STILL_RMSD_A
                              for mg in groups.masks])
            key = (int(sizes[still].sum()), int(sizes[a]), -a)
            if best is None or key > best[0]:
                best = (key, still)
        sel = groups.masks[best[1]].any(0)
        q, u = superpose(moved[sel], xyz[sel])
        return self.compose(q, u, groups), q, u

    def angles_deg(self) -> np.ndarray:
        return np.rad2deg(np.linalg.norm(self.rotvec, axis=1))


def superpose(moving: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(q, u)`` minimising ``sum |q x + u - y|^2`` over rotations (Kabsch), points
    ``(N, 3)``."""
    pc, tc = moving.mean(0), target.mean(0)
    h = (moving - pc).T @ (target - tc)
    uu, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ uu.T))
    q = vt.T @ np.diag([1.0, 1.0, d]) @ uu.T
    return q, tc - q @ pc
