"""Particle images predicted from an atomic model in rigid groups, and the gradient of
their normalised cross-correlation with respect to every group's motion.

Each group's potential is computed from its atoms (gemmi's 5-Gaussian electron
scattering factors and the B-factor, :func:`napari_2dtm.templates.model.potential_on_grid`)
on a grid centred on the group's own centre ``c_g`` and kept as a padded Fourier volume
``V_g`` (:class:`~napari_2dtm.core.projection.FourierVolume`). A group moved by
``(R_g, t_g, delta_b_g)`` (:mod:`~napari_2dtm.modelfit.groups`) and seen by particle p at
rotation ``A`` and shift ``s`` (search pixels) contributes, at the integer frequency
``k = (kx, ky)`` of the particle's ``P x P`` patch (wrap layout, as
:mod:`napari_2dtm.core.diffproj`)::

    S_g(k) = V_g(scale (A R_g).T (kx, ky, 0))                     Fourier slice, trilinear
    d_g    = [A (c_g + t_g - c_0)]_xy / pixel + s                  the group's centre, px
    T(k)   = F(k) sum_g exp(-delta_b_g |k|^2 / 4) exp(-2 pi i k.d_g / P) S_g(k)

``c_0`` is the template centre the hits refer to, ``F = CTF(defocus) * whitening``. The
score of the particle is the engine's normalised CC, ``cc = N / sqrt(E)`` with
``N = sum_k w_k Re[conj(T) I]`` and ``E = sum_k w_k |T|^2`` (``I`` the whitened patch's
transform, ``w_k`` the rfft weights / P^2, frequencies restricted to a band). Since the
transform is linear, the sum over groups is the model's potential: with no motion it is
the template's slice at the particle's pose (tested).

Gradient. With ``H = w (I / sqrt(E) - N T / E^1.5)`` every change of T moves the score by
``sum_k Re[conj(H) dT]``; for group g and ``a = conj(H) F b_g ph_g``:

* rotation (left increment ``omega`` of ``A R_g``, i.e. ``A omega_g`` in the model frame):
  ``d cc / d omega' = -scale sum_k k x (A R_g) Re[a grad_q V_g]``, then
  ``d cc / d omega_g = A.T d cc / d omega'``;
* centre ``d_g`` (px): ``sum_k Re[a S_g (-2 pi i k / P)]``, then
  ``d cc / d t_g = A[:2].T (d cc / d d_g) / pixel``;
* B: ``d cc / d delta_b_g = sum_k Re[a S_g] (-|k|^2 / 4)``.

:func:`score_particles` runs one fused numba pass per particle (particles in parallel);
:func:`score_particles_reference` is the same in NumPy (the test oracle).
"""

from __future__ import annotations

import dataclasses
import math

import numba
import numpy as np

from napari_2dtm.core.ctf import CTFParams, ctf_at
from napari_2dtm.core.diffproj import _sample_grad, slice_points_reference
from napari_2dtm.core.projection import FourierVolume
from napari_2dtm.templates.model import _auto_box, potential_on_grid

from .groups import GroupMotion, RigidGroups

__all__ = ["gridding_corrected", "GroupVolumes", "ParticleBatch", "score_particles", "score_particles_reference",
           "ModelGradient"]


def gridding_corrected(volume: np.ndarray, pad: int = 2) -> np.ndarray:
    """``volume / sinc^2`` per axis: trilinear interpolation in the transform of a volume
    padded to ``pad * n`` multiplies the real-space volume by ``sinc^2(x / (pad n))`` per
    axis (down to 0.81 at the edge of the box for pad 2), so a group off the box centre
    would be predicted fainter than it is; dividing first undoes that (as RELION's
    gridding correction)."""
    n = volume.shape[0]
    u = (np.arange(n) - n // 2) / float(pad * n)
    s2 = np.sinc(u) ** 2
    return (volume / (s2[:, None, None] * s2[None, :, None] * s2[None, None, :])).astype(np.float32)


class GroupVolumes:
    """The Fourier volumes ``(G, M, M, M // 2 + 1)`` of the groups at ``pixel_size_a``
    (the search pixel size), each centred on its group centre, one box for all.

    bfactor_a2: the B-factor given to every atom (the template's); use_model_bfactors:
    add the file's B-factors, as the template option of that name."""

    def __init__(self, groups: RigidGroups, pixel_size_a: float, bfactor_a2: float,
                 use_model_bfactors: bool = False, pad: int = 2):
        px = float(pixel_size_a)
        box = max(_auto_box(groups.group_atoms(g), groups.centers_a[g], px)
                  for g in range(len(groups)))
        vols = []
        for g in range(len(groups)):
            v = potential_on_grid(groups.group_atoms(g), groups.centers_a[g], box, px,
                                  bfactor_a2, use_model_bfactors)
            vols.append(FourierVolume(gridding_corrected(v, pad), pad=pad).data)
        self.data = np.ascontiguousarray(np.stack(vols))
        self.box, self.size = box, box * pad
        self.pixel_size_a = px
        self.centers_a = np.asarray(groups.centers_a, np.float64)

    def scale_for(self, patch_size: int) -> float:
        """Volume index per patch frequency (template and patch at one pixel size)."""
        return self.size / float(patch_size)


@dataclasses.dataclass
class ParticleBatch:
    """Particles sharing one patch size ``P`` and one set of frequency points.

    kx, ky: ``(K,)`` integer frequencies (float64) kept; k2_a: ``|k|^2`` in 1/A^2; w:
    rfft weights / P^2; img ``(Np, K)`` complex: each whitened patch's transform (the
    particle's box centre at index 0); filt ``(Np, K)``: CTF(particle defocus) x
    whitening; rot ``(Np, 3, 3)``: particle rotations A; shift_px ``(Np, 2)``: (x, y)
    of the particle centre from the patch centre, search pixels; grid_idx ``(K,)``: the
    points' flat indices on the ``(P, P // 2 + 1)`` rfft grid."""

    size: int
    pixel_size_a: float
    kx: np.ndarray
    ky: np.ndarray
    k2_a: np.ndarray
    w: np.ndarray
    img: np.ndarray
    filt: np.ndarray
    rot: np.ndarray
    shift_px: np.ndarray
    grid_idx: np.ndarray

    def __len__(self) -> int:
        return len(self.rot)

    def band(self, band_a: float | None) -> ParticleBatch:
        """The batch restricted to ``|k| <= 1 / band_a`` (None: itself)."""
        if band_a is None:
            return self
        keep = self.k2_a <= 1.0 / float(band_a) ** 2
        return dataclasses.replace(self, kx=self.kx[keep], ky=self.ky[keep],
                                   k2_a=self.k2_a[keep], w=self.w[keep], grid_idx=self.grid_idx[keep],
                                   img=np.ascontiguousarray(self.img[:, keep]),
                                   filt=np.ascontiguousarray(self.filt[:, keep]))

    def take(self, idx) -> ParticleBatch:
        """The particles ``idx`` (a view of the same points)."""
        return dataclasses.replace(self, img=self.img[idx], filt=self.filt[idx],
                                   rot=self.rot[idx], shift_px=self.shift_px[idx])


def frequency_points(size: int, pixel_size_a: float, scale: float, vol_size: int,
                     band_a: float | None):
    """``(idx, kx, ky, k2_a, w)`` of the kept points of a ``size`` patch's rfft grid: no
    DC, inside the volume's safe sphere (as :class:`~napari_2dtm.core.diffproj.PoseScore`),
    within the band."""
    p = int(size)
    ky = np.fft.fftfreq(p, 1.0 / p)[:, None] * np.ones((1, p // 2 + 1))
    kx = np.arange(p // 2 + 1, dtype=np.float64)[None, :] * np.ones((p, 1))
    k2 = (kx**2 + ky**2) / (p * pixel_size_a) ** 2
    keep = ~((kx == 0) & (ky == 0)) & (scale * np.hypot(kx, ky) < vol_size // 2 - 1.5)
    if band_a is not None:
        keep &= k2 <= 1.0 / float(band_a) ** 2
    wts = np.full(p // 2 + 1, 2.0)
    wts[0] = wts[-1] = 1.0
    idx = np.flatnonzero(keep)
    w = (wts[None, :] * np.ones((p, 1))).ravel()[idx] / (p * p)
    return idx, kx.ravel()[idx].copy(), ky.ravel()[idx].copy(), k2.ravel()[idx].copy(), w


def particle_filter(ctf: CTFParams, whitening_on_grid: np.ndarray, idx, kx, ky, size: int,
                    pixel_size_a: float, defocus_offset_a: float) -> np.ndarray:
    """CTF(defocus offset) x whitening at the kept points."""
    kya, kxa = ky / (size * pixel_size_a), kx / (size * pixel_size_a)
    c, _ = ctf_at(ctf, kya, kxa, defocus_offset_a)
    return c * np.asarray(whitening_on_grid, np.float64).ravel()[idx]


@dataclasses.dataclass
class ModelGradient:
    """Per-particle scores ``cc (Np,)`` and the gradient of their sum over the motion:
    ``rotvec (G, 3)`` per radian, ``shift_a (G, 3)`` per Angstrom, ``delta_b (G,)`` per
    A^2 (zeros when not asked for)."""

    cc: np.ndarray
    rotvec: np.ndarray
    shift_a: np.ndarray
    delta_b: np.ndarray


def _combined(batch: ParticleBatch, vols: GroupVolumes, motion: GroupMotion, center0_a):
    """Per particle and group: the slicing rotation ``A R_g`` ``(Np, G, 3, 3)`` and the
    group centre in the patch ``d_g`` ``(Np, G, 2)`` px."""
    rg = motion.rotations()
    rots = np.einsum("pij,gjk->pgik", batch.rot, rg)
    rel = vols.centers_a + motion.shift_a - np.asarray(center0_a, np.float64)  # (G, 3)
    offs = np.einsum("pij,gj->pgi", batch.rot[:, :2, :], rel) / batch.pixel_size_a
    offs += batch.shift_px[:, None, :]
    return np.ascontiguousarray(rots), np.ascontiguousarray(offs)


def _to_model(batch: ParticleBatch, g_rot, g_off, g_b) -> tuple:
    """Per-particle gradients in the combined frame and px -> sums in the model frame."""
    rot = np.einsum("pji,pgj->gi", batch.rot, g_rot)  # A.T g per particle, summed
    sh = np.einsum("pji,pgj->gi", batch.rot[:, :2, :], g_off) / batch.pixel_size_a
    return rot, sh, g_b.sum(0)


@numba.njit(parallel=True, nogil=True, fastmath=False, cache=True)
def _score_kernel(vols, rots, offs, bexp, kx, ky, k2, w, img, filt, scale, size, want_grad,
                  cc, g_rot, g_off, g_b):
    n_part = rots.shape[0]
    n_g = vols.shape[0]
    n_pts = kx.shape[0]
    half = vols.shape[1] // 2
    two_pi_p = 2.0 * np.pi / size
    nkx = size // 2 + 1
    for p in numba.prange(n_part):
        s = np.empty((n_g, n_pts), np.complex128)
        ds = np.empty((n_g, n_pts, 3), np.complex128) if want_grad else np.empty((1, 1, 3),
                                                                                  np.complex128)
        t = np.empty(n_pts, np.complex128)
        phx = np.empty((n_g, nkx), np.complex128)
        phy = np.empty((n_g, size), np.complex128)
        for g in range(n_g):
            for j in range(nkx):
                a = -two_pi_p * j * offs[p, g, 0]
                phx[g, j] = complex(math.cos(a), math.sin(a))
            for j in range(size):
                kk = j if j < size - size // 2 else j - size
                a = -two_pi_p * kk * offs[p, g, 1]
                phy[g, j] = complex(math.cos(a), math.sin(a))
        # one group's slice at a time: its volume's cache lines are reused along the slice
        for g in range(n_g):
            r = rots[p, g]
            vol = vols[g]
            for i in range(n_pts):
                x = scale * (kx[i] * r[0, 0] + ky[i] * r[1, 0])
                y = scale * (kx[i] * r[0, 1] + ky[i] * r[1, 1])
                z = scale * (kx[i] * r[0, 2] + ky[i] * r[1, 2])
                v, gx, gy, gz = _sample_grad(vol, half, x, y, z)
                f = bexp[g, i] * phx[g, int(kx[i])] * phy[g, int(ky[i]) % size]
                s[g, i] = v * f
                if want_grad:
                    ds[g, i, 0] = gx * f
                    ds[g, i, 1] = gy * f
                    ds[g, i, 2] = gz * f
        n_acc = 0.0
        e_acc = 0.0
        for i in range(n_pts):
            tot = 0j
            for g in range(n_g):
                tot += s[g, i]
            tt = filt[p, i] * tot
            t[i] = tt
            n_acc += w[i] * (tt.real * img[p, i].real + tt.imag * img[p, i].imag)
            e_acc += w[i] * (tt.real * tt.real + tt.imag * tt.imag)
        if e_acc <= 0:
            cc[p] = 0.0
            if want_grad:
                g_rot[p] = 0.0
                g_off[p] = 0.0
                g_b[p] = 0.0
            continue
        rt = math.sqrt(e_acc)
        cc[p] = n_acc / rt
        if not want_grad:
            continue
        # a = conj(H) F once per point, then every group's sums in one pass
        c2 = n_acc / (rt * e_acc)
        for i in range(n_pts):
            h = w[i] * (img[p, i] / rt - c2 * t[i])
            t[i] = h.conjugate() * filt[p, i]
        acc = np.zeros((n_g, 6))
        for i in range(n_pts):
            a = t[i]
            kxi = kx[i]
            kyi = ky[i]
            k2i = k2[i] / 4.0
            for g in range(n_g):
                vx = (a * ds[g, i, 0]).real
                vy = (a * ds[g, i, 1]).real
                vz = (a * ds[g, i, 2]).real
                r = rots[p, g]
                ux = r[0, 0] * vx + r[0, 1] * vy + r[0, 2] * vz
                uy = r[1, 0] * vx + r[1, 1] * vy + r[1, 2] * vz
                uz = r[2, 0] * vx + r[2, 1] * vy + r[2, 2] * vz
                acc[g, 0] -= kyi * uz
                acc[g, 1] += kxi * uz
                acc[g, 2] -= kxi * uy - kyi * ux
                q = a * s[g, i]
                # d/dd of exp(-2 pi i k.d / P) brings -2 pi i k / P: Re[-i q] = Im[q]
                acc[g, 3] += q.imag * kxi
                acc[g, 4] += q.imag * kyi
                acc[g, 5] -= q.real * k2i
        for g in range(n_g):
            g_rot[p, g, 0] = scale * acc[g, 0]
            g_rot[p, g, 1] = scale * acc[g, 1]
            g_rot[p, g, 2] = scale * acc[g, 2]
            g_off[p, g, 0] = two_pi_p * acc[g, 3]
            g_off[p, g, 1] = two_pi_p * acc[g, 4]
            g_b[p, g] = acc[g, 5]


def score_particles(batch: ParticleBatch, vols: GroupVolumes, motion: GroupMotion, center0_a,
                    want_grad: bool = True) -> ModelGradient:
    """Scores of every particle of ``batch`` against the model moved by ``motion``, and
    (``want_grad``) the gradient of their sum (see the module docstring)."""
    rots, offs = _combined(batch, vols, motion, center0_a)
    n, g = len(batch), len(vols.centers_a)
    cc = np.empty(n)
    g_rot = np.zeros((n, g, 3))
    g_off = np.zeros((n, g, 2))
    g_b = np.zeros((n, g))
    bexp = np.exp(-np.asarray(motion.delta_b_a2, np.float64)[:, None] * batch.k2_a[None, :] / 4.0)
    _score_kernel(vols.data, rots, offs, bexp, batch.kx,
                  batch.ky, batch.k2_a, batch.w, batch.img, batch.filt,
                  vols.scale_for(batch.size), int(batch.size), bool(want_grad), cc, g_rot,
                  g_off, g_b)
    if not want_grad:
        z = np.zeros((g, 3))
        return ModelGradient(cc, z, z.copy(), np.zeros(g))
    return ModelGradient(cc, *_to_model(batch, g_rot, g_off, g_b))


def score_particles_reference(batch: ParticleBatch, vols: GroupVolumes, motion: GroupMotion,
                              center0_a) -> ModelGradient:
    """:func:`score_particles` in NumPy, term by term as the module docstring."""
    rots, offs = _combined(batch, vols, motion, center0_a)
    n, ng = len(batch), len(vols.centers_a)
    scale = vols.scale_for(batch.size)
    two_pi_p = 2 * np.pi / batch.size
    k3 = np.stack([batch.kx, batch.ky, np.zeros_like(batch.kx)], 1)
    cc = np.empty(n)
    g_rot = np.zeros((n, ng, 3))
    g_off = np.zeros((n, ng, 2))
    g_b = np.zeros((n, ng))
    bf = np.exp(-np.asarray(motion.delta_b_a2)[:, None] * batch.k2_a[None, :] / 4.0)
    for p in range(n):
        sg, dsg = [], []
        for g in range(ng):
            s, ds = slice_points_reference(vols.data[g], rots[p, g], batch.kx, batch.ky, scale)
            ph = np.exp(-1j * two_pi_p * (batch.kx * offs[p, g, 0] + batch.ky * offs[p, g, 1]))
            sg.append(s * ph * bf[g])
            dsg.append(ds * (ph * bf[g])[:, None])
        t = batch.filt[p] * np.sum(sg, axis=0)
        nn = float(np.sum(batch.w * (np.conj(t) * batch.img[p]).real))
        e = float(np.sum(batch.w * np.abs(t) ** 2))
        cc[p] = nn / math.sqrt(e)
        h = batch.w * (batch.img[p] / math.sqrt(e) - nn * t / e**1.5)
        a = np.conj(h) * batch.filt[p]
        for g in range(ng):
            v = (a[:, None] * dsg[g]).real
            u = v @ rots[p, g].T
            g_rot[p, g] = -scale * np.cross(k3, u).sum(0)
            q = a * sg[g]
            g_off[p, g] = [np.sum((q * -1j * two_pi_p * batch.kx).real),
                           np.sum((q * -1j * two_pi_p * batch.ky).real)]
            g_b[p, g] = np.sum(q.real * -batch.k2_a / 4.0)
    return ModelGradient(cc, *_to_model(batch, g_rot, g_off, g_b))
