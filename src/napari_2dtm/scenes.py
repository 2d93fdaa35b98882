"""Lamella-like and crowded scenes: what a detection statistic must survive.

:func:`lamella_scene` builds the *non-target* part of a cell-lamella image as a phase map
and hands it to :func:`napari_2dtm.simulate.simulate_micrograph`, which places the target
particles around it and images everything through one CTF:

* **protein clutter**: non-target proteins (other structures, and single chains of them:
  sub-complexes a cell is full of) at random orientations, projected from their atoms
  exactly like the targets; they may touch targets but never overlap their footprints;
* **lipid bilayers**: arcs of vesicles seen edge-on. Across the membrane the projected
  potential is two head-group ridges (Gaussian, sigma 3 A, 40 A apart) and a slightly
  negative hydrocarbon core (lipid tails are less dense than water); seen edge-on the
  beam crosses a long chord, so the ridges are strong (set relative to a target's peak
  phase by ``membrane_strength``);
* **ice contamination**: blobs with a soft edge, several times a target's peak phase,
  with an internal texture;
* **a thickness gradient**: the noise sigma grows across the image (``noise_gradient``)
  and the transmission falls (``thickness_gradient``);
* **hot pixels**: isolated pixels far above the noise (detector defects), added last.

The result is a :class:`~napari_2dtm.simulate.SimulationResult` whose ``truth`` lists
the targets only; ``params["scene"]`` holds the masks a detection must stay out of
(``membrane``, ``contamination``: bool ``(ny, nx)``), clutter centres and hot pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.errors import InputError
from napari_2dtm.simulate import (
    SimulationResult,
    _atom_class,
    _random_rotation,
    interaction_constant,
    project_atoms,
    simulate_micrograph,
)
from napari_2dtm.templates.atoms import _filter_atoms, read_atoms
from napari_2dtm.templates.model import DEFAULT_BFACTOR_A2, template_from_model

__all__ = ["lamella_scene", "clutter_parts"]


def clutter_parts(paths) -> list[tuple[str, object]]:
    """Non-target bodies: every structure in ``paths`` whole and each of its protein
    chains of >= 50 residues alone. Returns ``[(name, AtomTable), ...]``."""
    parts = []
    for p in paths:
        atoms = _filter_atoms(read_atoms(p), False, False)
        name = Path(p).name.split(".")[0]
        parts.append((name, atoms))
        chains = np.asarray(atoms.chain)
        for c in dict.fromkeys(chains.tolist()):
            sel = (chains == c) & np.asarray(atoms.is_polymer_residue, bool)
            n_res = len(set(np.asarray(atoms.seqnum)[sel].tolist()))
            if n_res >= 50 and sel.sum() < len(chains):
                parts.append((f"{name}/{c}", atoms.subset(sel)))
    return parts


def _bilayer(shape, px: float, rng, strength: float) -> np.ndarray:
    """Phase of one edge-on bilayer: an arc of a vesicle crossing the image."""
    ny, nx = shape
    r_a = rng.uniform(0.6, 1.6) * max(ny, nx) * px  # vesicle radius
    ang = rng.uniform(0, 2 * np.pi)
    # centre outside the image so that an arc, not a closed circle, crosses it
    d = r_a / px + rng.uniform(-0.3, 0.3) * min(ny, nx)
    cy = ny / 2 + d * math.sin(ang)
    cx = nx / 2 + d * math.cos(ang)
    yy, xx = np.mgrid[0:ny, 0:nx]
    dist_a = (np.hypot(yy - cy, xx - cx) - r_a / px) * px  # signed distance to the mid-plane
    head = np.exp(-0.5 * ((dist_a - 20.0) / 3.0) ** 2) + np.exp(-0.5 * ((dist_a + 20.0) / 3.0) ** 2)
    core = np.exp(-0.5 * (dist_a / 8.0) ** 2)
    return strength * (head - 0.35 * core)


def _blob(shape, px: float, rng, strength: float, radius_a=(60.0, 150.0)) -> np.ndarray:
    """Phase of one ice-contamination blob (radius in ``radius_a``, soft edge, textured)."""
    ny, nx = shape
    r = rng.uniform(*radius_a) / px
    cy, cx = rng.uniform(r, ny - r), rng.uniform(r, nx - r)
    yy, xx = np.mgrid[0:ny, 0:nx]
    d = np.hypot(yy - cy, xx - cx)
    body = 1.0 / (1.0 + np.exp((d - r) / (5.0 / px)))
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 4.0 / px)
    texture /= texture.std() + 1e-12
    return strength * body * (1.0 + 0.3 * texture)


def lamella_scene(
    target,
    n_targets: int,
    clutter=(),
    n_clutter: int = 100,
    shape=(768, 768),
    pixel_size_a: float = 2.0,
    ctf: CTFParams | None = None,
    snr: float = 0.05,
    seed: int = 0,
    n_membranes: int = 1,
    n_blobs: int = 1,
    n_hot_pixels: int = 10,
    membrane_strength: float = 1.0,
    blob_strength: float = 3.0,
    noise_gradient: float = 0.4,
    thickness_gradient: float = 0.2,
    bfactor_a2: float = DEFAULT_BFACTOR_A2,
    blob_radius_a: tuple[float, float] = (60.0, 150.0),
    clearance_px: int = 2,
) -> SimulationResult:
    """A lamella-like micrograph: ``n_targets`` copies of ``target`` (a model path) among
    ``n_clutter`` non-target bodies from ``clutter`` (model paths; see
    :func:`clutter_parts`), membranes, contamination, a thickness gradient and hot pixels.

    ``snr`` is the simulator's per-pixel SNR of the targets (noise sigma from their
    contrast); ``truth["snr_matched"]`` gives each target's exact-pose SNR with the local
    noise. Strengths are in units of one target's peak projected phase; blob_radius_a:
    the range of contamination radii; clearance_px: least distance of a target's footprint
    from clutter, membranes and contamination.
    """
    ny, nx = (int(v) for v in shape)
    px = float(pixel_size_a)
    ctf = CTFParams() if ctf is None else ctf
    rng = np.random.default_rng(seed)
    sig_e = interaction_constant(ctf.voltage_kv)

    t = template_from_model(target, px, bfactor_a2=bfactor_a2, center="mass")
    tac = _atom_class(_filter_atoms(read_atoms(target), False, False), t.params["center_a"], bfactor_a2)
    peaks = [project_atoms(tac, _random_rotation(rng)[1], t.box, px).max() for _ in range(4)]
    unit = sig_e * float(np.mean(peaks))  # one target's peak phase (rad)

    phase = np.zeros((ny, nx))
    membrane = np.zeros((ny, nx), bool)
    for _ in range(n_membranes):
        b = _bilayer((ny, nx), px, rng, membrane_strength * unit)
        phase += b
        membrane |= np.abs(b) > 0.05 * membrane_strength * unit
    contamination = np.zeros((ny, nx), bool)
    for _ in range(n_blobs):
        b = _blob((ny, nx), px, rng, blob_strength * unit, blob_radius_a)
        phase += b
        contamination |= b > 0.05 * blob_strength * unit

    parts = clutter_parts(clutter) if n_clutter else []
    if n_clutter and not parts:
        raise InputError("clutter: no non-target structures given")
    occupied = np.zeros((ny, nx), bool)
    centres, names = [], []
    for _ in range(n_clutter):
        name, atoms = parts[int(rng.integers(len(parts)))]
        xyz = atoms.xyz
        centre = xyz.mean(axis=0)
        extent = float(np.sqrt(((xyz - centre) ** 2).sum(axis=1)).max())
        m = int(2 * math.ceil((extent + 10.0) / px / 2) * 2)
        ac = _atom_class(atoms, centre, bfactor_a2)
        proj = project_atoms(ac, _random_rotation(rng)[1], m, px)
        h = m // 2
        y0, x0 = int(rng.integers(0, ny)), int(rng.integers(0, nx))
        ys, xs = y0 - h, x0 - h
        oy0, ox0, oy1, ox1 = max(ys, 0), max(xs, 0), min(ys + m, ny), min(xs + m, nx)
        if oy1 <= oy0 or ox1 <= ox0:
            continue
        patch = proj[oy0 - ys : oy1 - ys, ox0 - xs : ox1 - xs]
        phase[oy0:oy1, ox0:ox1] += sig_e * patch
        occupied[oy0:oy1, ox0:ox1] |= patch > 0.02 * proj.max()
        centres.append((y0, x0))
        names.append(name)

    forbidden = ndimage.binary_dilation(occupied | membrane | contamination,
                                        iterations=max(1, int(clearance_px)))
    res = simulate_micrograph(
        [target], n_targets, shape=(ny, nx), pixel_size_a=px, ctf=ctf, snr=snr, seed=seed,
        forbidden=forbidden, extra_phase=phase, noise_gradient=noise_gradient,
        thickness_gradient=thickness_gradient, bfactor_a2=bfactor_a2,
    )
    hot = np.stack([rng.integers(0, ny, n_hot_pixels), rng.integers(0, nx, n_hot_pixels)], axis=1)
    if n_hot_pixels:
        sd = float(res.image.std())
        res.image[hot[:, 0], hot[:, 1]] += np.float32(30.0 * sd)
    res.params["scene"] = {
        "membrane": membrane,
        "contamination": contamination,
        "clutter_centres": np.asarray(centres, np.int64).reshape(-1, 2),
        "clutter_names": names,
        "hot_pixels": hot,
        "n_membranes": n_membranes,
        "n_blobs": n_blobs,
        "membrane_strength": membrane_strength,
        "blob_strength": blob_strength,
    }
    return res
