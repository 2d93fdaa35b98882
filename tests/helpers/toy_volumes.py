"""Pseudo-atomic toy volumes and their exact projections, independent of our projector.

A volume is a sum of isotropic Gaussian "atoms" (sigma in voxels) sampled at voxel
centres; a particle image at pose ``A`` is the analytic z-integral of the rotated atoms
(``r -> A @ r``, the convention of :mod:`napari_2dtm.core.geometry`), sampled at pixel
centres. Nothing here uses Fourier slices, so it checks the reconstructor's geometry.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from napari_2dtm.core.ctf import CTFParams, ctf_2d
from napari_2dtm.core.geometry import euler_to_matrix, matrix_to_euler


def random_atoms(n_atoms: int, radius_vox: float, seed: int) -> np.ndarray:
    """``(n, 3)`` positions (x, y, z) in voxels from the centre, uniform in a ball."""
    rng = np.random.default_rng(seed)
    pts = []
    while len(pts) < n_atoms:
        p = rng.uniform(-radius_vox, radius_vox, 3)
        if np.linalg.norm(p) <= radius_vox:
            pts.append(p)
    return np.array(pts)


def atoms_volume(atoms: np.ndarray, n: int, sigma: float = 1.2, amps=None) -> np.ndarray:
    """``(n, n, n)`` [z, y, x] volume: Gaussians of unit integral at ``atoms + n // 2``."""
    amps = np.ones(len(atoms)) if amps is None else np.asarray(amps, float)
    g = np.arange(n) - n // 2
    norm = 1.0 / (2 * np.pi * sigma**2) ** 1.5
    ex = np.exp(-((g[None, :] - atoms[:, 0:1]) ** 2) / (2 * sigma**2))  # (A, n)
    ey = np.exp(-((g[None, :] - atoms[:, 1:2]) ** 2) / (2 * sigma**2))
    ez = np.exp(-((g[None, :] - atoms[:, 2:3]) ** 2) / (2 * sigma**2))
    vol = np.einsum("a,az,ay,ax->zyx", amps * norm, ez, ey, ex, optimize=True)
    return vol


def atoms_projection(atoms: np.ndarray, rot: np.ndarray, n: int, sigma: float = 1.2,
                     amps=None, shift=(0.0, 0.0)) -> np.ndarray:
    """``(n, n)`` projection along z of the atoms moved to ``rot @ r`` (+ shift (x, y)
    pixels); the z-integral of each unit Gaussian is a 2D unit Gaussian."""
    amps = np.ones(len(atoms)) if amps is None else np.asarray(amps, float)
    r = atoms @ np.asarray(rot).T
    g = np.arange(n) - n // 2
    norm = 1.0 / (2 * np.pi * sigma**2)
    ex = np.exp(-((g[None, :] - r[:, 0:1] - shift[0]) ** 2) / (2 * sigma**2))
    ey = np.exp(-((g[None, :] - r[:, 1:2] - shift[1]) ** 2) / (2 * sigma**2))
    return (ey * (amps * norm)[:, None]).T @ ex


def random_poses(n: int, seed: int) -> np.ndarray:
    """``(n, 3)`` ZYZ angles (deg) uniform over SO(3)."""
    m = Rotation.random(n, random_state=seed).as_matrix()
    return matrix_to_euler(m)


def project_all(atoms, angles, n, sigma=1.2, amps=None, shifts=None) -> np.ndarray:
    rots = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    out = np.empty((len(angles), n, n))
    for i, r in enumerate(rots):
        s = (0.0, 0.0) if shifts is None else shifts[i]
        out[i] = atoms_projection(atoms, r, n, sigma, amps, s)
    return out


def apply_ctf_white(images: np.ndarray, ctfs: list[CTFParams], pixel_size_a: float,
                    canvas_factor: int = 4) -> np.ndarray:
    """White-protein particle images ``-ctf_2d * projection`` (RELION convention), the CTF
    applied on a larger canvas and the box cut out, as when boxing from a micrograph."""
    b, n, _ = images.shape
    big = canvas_factor * n
    o = big // 2 - n // 2
    out = np.empty_like(images)
    for i in range(b):
        c = np.zeros((big, big))
        c[o:o + n, o:o + n] = images[i]
        f = np.fft.rfft2(c) * (-ctf_2d(ctfs[i], (big, big), pixel_size_a))
        out[i] = np.fft.irfft2(f, s=(big, big))[o:o + n, o:o + n]
    return out


def add_noise(images: np.ndarray, snr: float, seed: int) -> tuple[np.ndarray, float]:
    """Gaussian noise at per-pixel SNR = var(signal over the boxes) / var(noise)."""
    rng = np.random.default_rng(seed)
    sigma = float(np.sqrt(images.var() / snr))
    return images + rng.normal(0.0, sigma, images.shape), sigma
