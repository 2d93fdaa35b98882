"""Euler angles, rotation matrices and the SO(3) search grid.

Convention (used everywhere in napari-2dtm, see ``docs/conventions.md``):

* Euler angles are ZYZ, ``(phi, theta, psi)`` in degrees, as RELION's
  ``(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)`` and cisTEM's ``(phi, theta, psi)``.
* ``euler_to_matrix`` returns RELION's matrix ``A = Rz(psi) Ry(theta) Rz(phi)`` built
  from *passive* elementary rotations. Equivalently ``A.T`` is the active intrinsic
  ZYZ rotation ``scipy.spatial.transform.Rotation.from_euler("ZYZ", (phi, theta, psi))``.
* The particle seen in the image is the template rotated actively by ``A``:
  ``V_rot(r) = V(A.T @ r)``, projected along z. By the Fourier-slice theorem the
  projection's 2D transform at ``(kx, ky)`` is the template's 3D transform at
  ``A.T @ (kx, ky, 0) = kx * A[0] + ky * A[1]``.
* Vectors are ``(x, y, z)``; arrays are indexed ``[z, y, x]``.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "euler_to_matrix",
    "matrix_to_euler",
    "so3_grid",
    "local_grid",
    "symmetry_ranges",
    "angular_distance_deg",
    "rotate_about_random_axes",
]


def euler_to_matrix(phi_deg, theta_deg, psi_deg) -> np.ndarray:
    """RELION/cisTEM ZYZ matrix ``A`` for angles in degrees; shape ``(..., 3, 3)``."""
    a, b, g = (np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (phi_deg, theta_deg, psi_deg))
    a, b, g = np.broadcast_arrays(a, b, g)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    m = np.empty(a.shape + (3, 3))
    m[..., 0, 0] = cg * cb * ca - sg * sa
    m[..., 0, 1] = cg * cb * sa + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cb * ca - cg * sa
    m[..., 1, 1] = -sg * cb * sa + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sb * ca
    m[..., 2, 1] = sb * sa
    m[..., 2, 2] = cb
    return m


def matrix_to_euler(m: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_to_matrix`; returns ``(..., 3)`` angles in degrees.

    theta in [0, 180], phi and psi in [0, 360). At the poles psi is set to 0.
    """
    m = np.asarray(m, dtype=np.float64)
    theta = np.arccos(np.clip(m[..., 2, 2], -1.0, 1.0))
    sb = np.sin(theta)
    pole = sb < 1e-8
    phi = np.arctan2(m[..., 2, 1], m[..., 2, 0])
    psi = np.arctan2(m[..., 1, 2], -m[..., 0, 2])
    # At a pole only phi + psi (or phi - psi) is defined: fold it into phi.
    north = m[..., 2, 2] > 0
    phi_pole = np.where(
        north,
        np.arctan2(m[..., 0, 1], m[..., 0, 0]),
        np.arctan2(-m[..., 0, 1], -m[..., 0, 0]),
    )
    phi = np.where(pole, phi_pole, phi)
    psi = np.where(pole, 0.0, psi)
    out = np.stack([np.rad2deg(phi) % 360.0, np.rad2deg(theta), np.rad2deg(psi) % 360.0], -1)
    return out


def angular_distance_deg(m1: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """Geodesic distance in degrees between rotation matrices ``(..., 3, 3)``."""
    r = np.einsum("...ij,...ij->...", m1, m2)
    return np.rad2deg(np.arccos(np.clip((r - 1.0) / 2.0, -1.0, 1.0)))


def rotate_about_random_axes(angles_deg: np.ndarray, deg: float, rng) -> np.ndarray:
    """Orientations ``(N, 3)`` ZYZ degrees, each turned by exactly ``deg`` about its own
    uniformly random axis (``R' = R_axis R``): poses with a known error, for simulated
    hits. ``rng``: a :class:`numpy.random.Generator` (draws ``N x 3`` normals)."""
    a = np.asarray(angles_deg, np.float64).reshape(-1, 3)
    axes = rng.normal(size=(len(a), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    turn = Rotation.from_rotvec(axes * np.deg2rad(deg)).as_matrix()
    return matrix_to_euler(turn @ euler_to_matrix(*a.T))


_TETRA_THETA = 54.7356
_ICOSA_THETA = 31.7175


def symmetry_ranges(symmetry: str = "C1") -> tuple[float, float]:
    """Return ``(phi_max_deg, theta_max_deg)`` of the asymmetric search range.

    Ranges follow torch-so3 / Leopard-EM: Cn -> (360/n, 180), Dn -> (360/n, 90),
    T -> (180, 54.7), O -> (90, 54.7), I -> (180, 31.7). psi always spans [0, 360).
    """
    s = str(symmetry).strip().upper()
    if not s:
        raise ValueError("empty symmetry: use C1, Cn, Dn, T, O or I")
    kind, num = s[0], s[1:]
    if kind in "CD":
        try:
            n = int(num) if num else 1
        except ValueError:
            raise ValueError(f"symmetry {symmetry!r}: expected e.g. C1, C7, D2") from None
        if n < 1:
            raise ValueError(f"symmetry {symmetry!r}: order must be >= 1")
        return 360.0 / n, (180.0 if kind == "C" else 90.0)
    if s == "T":
        return 180.0, _TETRA_THETA
    if s == "O":
        return 90.0, _TETRA_THETA
    if s == "I":
        return 180.0, _ICOSA_THETA
    raise ValueError(f"unknown symmetry {symmetry!r}: use C1, Cn, Dn, T, O or I")


def so3_grid(
    out_of_plane_step_deg: float = 2.5,
    in_plane_step_deg: float = 1.5,
    symmetry: str = "C1",
    theta_max_deg: float | None = None,
) -> np.ndarray:
    """Uniform SO(3) grid as ``(n, 3)`` float64 ``(phi, theta, psi)`` in degrees.

    theta runs from 0 to theta_max in steps of ``out_of_plane_step_deg`` (both ends
    included); on each theta ring phi is stepped by ``step / sin(theta)`` rounded to
    divide the phi range (end exclusive, one phi at the poles); psi is
    ``arange(0, 360, in_plane_step)`` (end exclusive: no psi = 0/360 duplicate).
    Order: psi varies fastest, then phi, then theta.
    """
    if out_of_plane_step_deg <= 0 or in_plane_step_deg <= 0:
        raise ValueError("angular steps must be > 0 degrees")
    phi_max, th_max = symmetry_ranges(symmetry)
    if theta_max_deg is not None:
        th_max = float(theta_max_deg)
    d = float(out_of_plane_step_deg)
    thetas = np.arange(0.0, th_max + 1e-6, d)
    pairs = []
    for th in thetas:
        step = d / (np.sin(np.deg2rad(th)) + 1e-6)
        n_phi = max(1, int(round(phi_max / min(step, phi_max))))
        phis = np.arange(n_phi) * (phi_max / n_phi)
        pairs.append(np.stack([phis, np.full(n_phi, th)], -1))
    pt = np.concatenate(pairs)
    n_psi = max(1, int(round(360.0 / in_plane_step_deg)))
    psis = np.arange(n_psi) * (360.0 / n_psi)
    grid = np.empty((len(pt), n_psi, 3))
    grid[:, :, 0] = pt[:, None, 0]
    grid[:, :, 1] = pt[:, None, 1]
    grid[:, :, 2] = psis[None, :]
    return grid.reshape(-1, 3)


def local_grid(
    center_deg,
    half_range_deg: float,
    step_deg: float,
    in_plane_half_range_deg: float | None = None,
    in_plane_step_deg: float | None = None,
) -> np.ndarray:
    """Orientations near one pose, as ``(n, 3)`` ZYZ angles in degrees.

    Out-of-plane offsets form a small cap of directions around the pole (the same
    ring scheme as :func:`so3_grid`), in-plane offsets a psi range; each offset
    rotation is composed with the centre pose so the grid is uniform around it.
    """
    ip_half = half_range_deg if in_plane_half_range_deg is None else in_plane_half_range_deg
    ip_step = step_deg if in_plane_step_deg is None else in_plane_step_deg
    cap = so3_grid(step_deg, 360.0, "C1", theta_max_deg=half_range_deg)[:, :2]
    n_psi = int(np.floor(ip_half / ip_step + 1e-9))
    dpsi = np.arange(-n_psi, n_psi + 1) * ip_step
    phi = np.repeat(cap[:, 0], len(dpsi))
    theta = np.repeat(cap[:, 1], len(dpsi))
    # psi_offset = -phi keeps each offset a pure tilt about an in-plane axis.
    psi = np.tile(dpsi, len(cap)) - phi
    offsets = euler_to_matrix(phi, theta, psi)
    a0 = euler_to_matrix(*np.asarray(center_deg, dtype=np.float64))
    return matrix_to_euler(offsets @ a0)
