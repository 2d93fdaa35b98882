"""Planted-particle micrographs for engine tests, made independently of the engine.

Particles are projected by rotating the template volume in real space
(``V_rot(r) = V(A.T r)``, trilinear) and summing along z: no Fourier slices involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_2dtm.core.ctf import CTFParams, ctf_2d
from napari_2dtm.core.geometry import euler_to_matrix, matrix_to_euler

#: Real atomic models the tests use, copied from the project's shared data into the repo.
STRUCTURES = Path(__file__).resolve().parents[1] / "data" / "structures"


def structure(name: str) -> Path:
    """A test structure by PDB code ('1BD2'): the .pdb.gz, else the .cif.gz."""
    for suffix in (".pdb.gz", ".cif.gz"):
        p = STRUCTURES / f"{name}{suffix}"
        if p.exists():
            return p
    raise FileNotFoundError(f"test structure {name} not in {STRUCTURES}")


def structure_file(filename: str) -> Path:
    """A test structure by file name ('1BD2.pdb.gz')."""
    p = STRUCTURES / filename
    if not p.exists():
        raise FileNotFoundError(f"test structure {filename} not in {STRUCTURES}")
    return p


def real_space_projection(volume: np.ndarray, angles_deg) -> np.ndarray:
    n = volume.shape[0]
    c = n // 2
    a = euler_to_matrix(*angles_deg)
    grid = np.stack(np.meshgrid(np.arange(n) - c, np.arange(n) - c, np.arange(n) - c,
                                indexing="ij")[::-1], -1).reshape(-1, 3)  # (x, y, z) of [z,y,x]
    src = grid @ a  # rows: (A.T r)^T
    vals = ndimage.map_coordinates(volume, [src[:, 2] + c, src[:, 1] + c, src[:, 0] + c], order=1)
    return vals.reshape(n, n, n).sum(0)


def plant(template, shape, n_particles, ctf: CTFParams, target_snr: float, seed: int,
          defocus_shift_a: float = 0.0):
    """Micrograph with particles at random poses; noise set for a true-pose CC ~ target_snr.

    Returns ``(image, truth)`` with truth rows ``(x, y, phi, theta, psi)``.
    """
    rng = np.random.default_rng(seed)
    vol = template.volume
    n = vol.shape[0]
    ny, nx = shape
    r_min = int(0.45 * n)
    pos = []
    while len(pos) < n_particles:
        y, x = rng.integers(n // 2 + 2, ny - n // 2 - 2), rng.integers(n // 2 + 2, nx - n // 2 - 2)
        if all((y - q[0]) ** 2 + (x - q[1]) ** 2 >= (2 * r_min) ** 2 for q in pos):
            pos.append((y, x))
    rots = Rotation.random(n_particles, random_state=seed).as_matrix().transpose(0, 2, 1)
    angles = matrix_to_euler(rots)
    clean = np.zeros(shape)
    for (y, x), ang in zip(pos, angles):
        p = real_space_projection(vol, ang)
        clean[y - n // 2 : y - n // 2 + n, x - n // 2 : x - n // 2 + n] += p
    c = ctf_2d(ctf.shifted(defocus_shift_a), shape, template.pixel_size_a)
    filtered = np.fft.irfft2(np.fft.rfft2(clean) * c, s=shape)
    # A matched filter on white noise gives CC = ||particle|| / sigma.
    energy = np.sum(filtered**2) / n_particles
    sigma = np.sqrt(energy) / target_snr
    image = filtered + rng.normal(0, sigma, shape)
    truth = np.array([[x, y, *a] for (y, x), a in zip(pos, angles)])
    return image.astype(np.float32), truth


def match(hits, truth, max_dist_px):
    """Greedy nearest matching; returns list of (truth_row, hit_row) index pairs."""
    pairs = []
    used = set()
    for i, t in enumerate(truth):
        if len(hits) == 0:
            break
        d = np.hypot(hits["x"].to_numpy() - t[0], hits["y"].to_numpy() - t[1])
        j = int(np.argmin(d))
        if d[j] <= max_dist_px and j not in used:
            pairs.append((i, j))
            used.add(j)
    return pairs
