"""Differentiable projection matching: one particle box against the template at a pose.

The score is the engine's normalised cross-correlation (N(0, 1) at every pixel under
white noise) of a whitened image patch with the template projected at rotation ``A``,
shifted by ``s`` (search pixels) and filtered by the CTF at a defocus offset ``delta``
(Angstrom), made differentiable in all three (after DiffPose, Zhang, Zhu & Grigorieff
2025). On the ``rfft2`` grid of a ``P x P`` patch whose candidate pixel sits at index 0
(wrap layout), with integer frequencies ``k = (kx, ky)``::

    S(k)  = V(q),  q = scale * A.T @ (kx, ky, 0)        Fourier slice, trilinear
    T(k)  = S(k) F(k),  F = CTF(defocus + delta) * whitening * band
    N     = 1/P^2 sum_k w_k Re[conj(T(k)) I(k) exp(2 pi i k.s / P)]
    E     = 1/P^2 sum_k w_k |T(k)|^2                      (the template's energy)
    score = N / sqrt(E)

``w_k`` are the rfft weights (1 on the kx = 0 and Nyquist columns, else 2); ``band``
restricts the sum to ``|k| <= 1 / band_a`` (resolution continuation: a coarse band
first widens the basin of the optimum). N is the dot product of the filtered, unit-energy
template with the patch at shift ``s``, as :class:`napari_2dtm.hits.local.LocalScorer`
computes it; here the projection fills the whole ``P`` box (no crop to the template box,
no edge-mean subtraction), which changes scores by well under 1 %.

Gradients (all analytic). With ``G(k) = w_k / P^2 [C(k) / sqrt(E) - N F^2 S(k) / E^1.5]``,
``C = F I exp(2 pi i k.s / P)``, the score changes by ``sum_k Re[conj(G) dS]``:

* rotation: ``A(omega) = expm([omega]_x) A`` (a left increment, radians). Then
  ``dq = -scale * A.T (omega x k)``, so with ``v(k) = Re[conj(G(k)) grad_q S(k)]`` and
  ``u = A v``: ``d score / d omega = -scale * sum_k k x u(k)``;
* shift: ``d score / d s = 1/sqrt(E) * 1/P^2 sum_k w_k Re[conj(T) I exp(..) * 2 pi i k / P]``;
* defocus: ``dF = CTF'(delta) * whitening``; ``dN = 1/P^2 sum w Re[conj(S dF) I exp(..)]``,
  ``dE = 2/P^2 sum w F dF |S|^2``, ``d score = dN / sqrt(E) - N dE / (2 E^1.5)``.

The trilinear gradient is exact inside each voxel and jumps across voxel faces; with the
volume padded twice (:class:`~napari_2dtm.core.projection.FourierVolume`) finite
differences agree to ~1e-4 relative on random poses (tested).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from napari_2dtm.core.ctf import CTFParams, ctf_at, wavelength_a
from napari_2dtm.core.projection import FourierVolume
from napari_2dtm.errors import InputError

__all__ = ["PoseScore", "slice_points", "slice_points_reference", "left_jacobian",
           "rotvec_matrix", "template_overlap"]


@numba.njit(nogil=True, fastmath=False, cache=True, inline="always")
def _sample_grad(vol, half, x, y, z):
    """Trilinear sample of the half-volume at ``q = (x, y, z)`` (index units, before the
    centre offset) and its gradient in ``q``, with Friedel symmetry for ``x < 0``:
    ``S(q) = conj(V(-q))``, ``dS/dq = -conj(grad V(-q))``. Returns ``(S, dx, dy, dz)``."""
    sgn = 1.0
    if x < 0:
        x, y, z = -x, -y, -z
        sgn = -1.0
    y += half
    z += half
    x0 = int(np.floor(x))
    y0 = int(np.floor(y))
    z0 = int(np.floor(z))
    fx = x - x0
    fy = y - y0
    fz = z - z0
    c000 = vol[z0, y0, x0]
    c001 = vol[z0, y0, x0 + 1]
    c010 = vol[z0, y0 + 1, x0]
    c011 = vol[z0, y0 + 1, x0 + 1]
    c100 = vol[z0 + 1, y0, x0]
    c101 = vol[z0 + 1, y0, x0 + 1]
    c110 = vol[z0 + 1, y0 + 1, x0]
    c111 = vol[z0 + 1, y0 + 1, x0 + 1]
    c00 = c000 + fx * (c001 - c000)
    c01 = c010 + fx * (c011 - c010)
    c10 = c100 + fx * (c101 - c100)
    c11 = c110 + fx * (c111 - c110)
    c0 = c00 + fy * (c01 - c00)
    c1 = c10 + fy * (c11 - c10)
    v = complex(c0 + fz * (c1 - c0))
    gz = complex(c1 - c0)
    gy = complex((c01 - c00) + fz * ((c11 - c10) - (c01 - c00)))
    gx = complex((1 - fz) * ((1 - fy) * (c001 - c000) + fy * (c011 - c010))
                 + fz * ((1 - fy) * (c101 - c100) + fy * (c111 - c110)))
    if sgn < 0:
        return v.conjugate(), -gx.conjugate(), -gy.conjugate(), -gz.conjugate()
    return v, gx, gy, gz


@numba.njit(nogil=True, fastmath=False, cache=True)
def _slice_points_numba(vol, rot, kx, ky, scale, s_out, ds_out):
    big = vol.shape[0]
    half = big // 2
    rmax2 = (half - 1.0) ** 2
    for p in range(kx.shape[0]):
        x = scale * (kx[p] * rot[0, 0] + ky[p] * rot[1, 0])
        y = scale * (kx[p] * rot[0, 1] + ky[p] * rot[1, 1])
        z = scale * (kx[p] * rot[0, 2] + ky[p] * rot[1, 2])
        if x * x + y * y + z * z > rmax2:
            s_out[p] = 0
            ds_out[p, 0] = 0
            ds_out[p, 1] = 0
            ds_out[p, 2] = 0
            continue
        v, gx, gy, gz = _sample_grad(vol, half, x, y, z)
        s_out[p] = v
        ds_out[p, 0] = gx
        ds_out[p, 1] = gy
        ds_out[p, 2] = gz


@numba.njit(nogil=True, fastmath=False, cache=True)
def _score_grad_numba(vol, rot, kx, ky, scale, w, img, white, chi0, a_df, env, delta,
                      ph_x, ph_y, two_pi_p, want_grad, s_buf, ds_buf, f_buf, ip_buf, grad):
    """Score and (with want_grad) its gradient ``grad[0:3]`` rotation, ``[3:5]`` shift,
    ``[5]`` defocus, in one fused pass over the points (see the module docstring)."""
    n_pts = kx.shape[0]
    big = vol.shape[0]
    half = big // 2
    n_acc = 0.0
    e_acc = 0.0
    gsx = 0.0
    gsy = 0.0
    dn = 0.0
    de = 0.0
    for p in range(n_pts):
        ikx = int(kx[p])
        iky = int(ky[p])
        x = scale * (kx[p] * rot[0, 0] + ky[p] * rot[1, 0])
        y = scale * (kx[p] * rot[0, 1] + ky[p] * rot[1, 1])
        z = scale * (kx[p] * rot[0, 2] + ky[p] * rot[1, 2])
        v, gx, gy, gz = _sample_grad(vol, half, x, y, z)
        s_buf[p] = v
        if want_grad:
            ds_buf[p, 0] = gx
            ds_buf[p, 1] = gy
            ds_buf[p, 2] = gz
        chi = chi0[p] + a_df[p] * delta
        f = -np.sin(chi) * env[p] * white[p]
        ip = img[p] * ph_x[ikx] * ph_y[iky]
        f_buf[p] = f
        ip_buf[p] = ip
        prod = v.conjugate() * ip  # conj(S) I e^{i phi}; times f: conj(T) I e^{i phi}
        abs2 = v.real * v.real + v.imag * v.imag
        n_acc += w[p] * f * prod.real
        e_acc += w[p] * f * f * abs2
        if want_grad:
            df = -np.cos(chi) * a_df[p] * env[p] * white[p]
            # d/ds of Re[prod * f * e^{...}] = Re[prod * f * i 2 pi k / P] = -f Im[prod] 2 pi k/P
            gsx -= w[p] * f * prod.imag * two_pi_p * kx[p]
            gsy -= w[p] * f * prod.imag * two_pi_p * ky[p]
            dn += w[p] * df * prod.real
            de += 2.0 * w[p] * f * df * abs2
    if e_acc <= 0:
        for i in range(6):
            grad[i] = 0.0
        return 0.0
    rt = np.sqrt(e_acc)
    score = n_acc / rt
    if not want_grad:
        return score
    c_n = n_acc / (e_acc * rt)
    g0 = 0.0
    g1 = 0.0
    g2 = 0.0
    inv_rt = 1.0 / rt
    for p in range(n_pts):
        f = f_buf[p]
        g = w[p] * (f * inv_rt * ip_buf[p] - c_n * f * f * s_buf[p])
        gc = g.conjugate()
        v0 = (gc * ds_buf[p, 0]).real
        v1 = (gc * ds_buf[p, 1]).real
        v2 = (gc * ds_buf[p, 2]).real
        u0 = rot[0, 0] * v0 + rot[0, 1] * v1 + rot[0, 2] * v2
        u1 = rot[1, 0] * v0 + rot[1, 1] * v1 + rot[1, 2] * v2
        u2 = rot[2, 0] * v0 + rot[2, 1] * v1 + rot[2, 2] * v2
        # k x u with k = (kx, ky, 0)
        g0 += ky[p] * u2
        g1 -= kx[p] * u2
        g2 += kx[p] * u1 - ky[p] * u0
    grad[0] = -scale * g0
    grad[1] = -scale * g1
    grad[2] = -scale * g2
    grad[3] = gsx / rt
    grad[4] = gsy / rt
    grad[5] = dn / rt - n_acc * de / (2.0 * e_acc * rt)
    return score


def slice_points(fvol: FourierVolume, rot, kx, ky, scale: float):
    """Fourier-slice samples ``S (n,)`` complex128 and their gradient ``dS/dq (n, 3)``
    (``q = (x, y, z)`` in volume index units) at integer frequencies ``kx, ky`` ``(n,)``
    of a box whose grid maps into the volume by ``scale``, for rotation ``rot (3, 3)``."""
    kx = np.ascontiguousarray(kx, np.float64)
    ky = np.ascontiguousarray(ky, np.float64)
    s = np.empty(len(kx), np.complex128)
    ds = np.empty((len(kx), 3), np.complex128)
    _slice_points_numba(fvol.data, np.ascontiguousarray(rot, np.float64), kx, ky, float(scale),
                        s, ds)
    return s, ds


def slice_points_reference(vol, rot, kx, ky, scale: float):
    """NumPy implementation of :func:`slice_points` (its test oracle); vol: the
    :attr:`FourierVolume.data` array."""
    vol = np.asarray(vol)
    half = vol.shape[0] // 2
    kx = np.asarray(kx, np.float64)
    ky = np.asarray(ky, np.float64)
    q = scale * (kx[:, None] * rot[0][None, :] + ky[:, None] * rot[1][None, :])  # (n, 3)
    inside = (q * q).sum(1) <= (half - 1.0) ** 2
    neg = q[:, 0] < 0
    q = np.where(neg[:, None], -q, q)
    q = np.where(inside[:, None], q, 0.0)
    x, y, z = q[:, 0], q[:, 1] + half, q[:, 2] + half
    x0, y0, z0 = (np.floor(a).astype(int) for a in (x, y, z))
    f = [x - x0, y - y0, z - z0]
    val = np.zeros(len(kx), np.complex128)
    grad = np.zeros((len(kx), 3), np.complex128)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                c = vol[z0 + dz, y0 + dy, x0 + dx].astype(np.complex128)
                wts = [f[0] if dx else 1 - f[0], f[1] if dy else 1 - f[1], f[2] if dz else 1 - f[2]]
                sg = [1 if dx else -1, 1 if dy else -1, 1 if dz else -1]
                val += wts[0] * wts[1] * wts[2] * c
                grad[:, 0] += sg[0] * wts[1] * wts[2] * c
                grad[:, 1] += wts[0] * sg[1] * wts[2] * c
                grad[:, 2] += wts[0] * wts[1] * sg[2] * c
    val = np.where(neg, np.conj(val), val)
    grad = np.where(neg[:, None], -np.conj(grad), grad)
    val[~inside] = 0
    grad[~inside] = 0
    return val, grad


def _skew(w):
    return np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


def rotvec_matrix(omega) -> np.ndarray:
    """``expm([omega]_x)`` (Rodrigues) for a rotation vector in radians, ``(3, 3)``."""
    w = np.asarray(omega, np.float64)
    th = float(np.linalg.norm(w))
    k = _skew(w)
    if th < 1e-12:
        return np.eye(3) + k
    return np.eye(3) + math.sin(th) / th * k + (1 - math.cos(th)) / th**2 * (k @ k)


def left_jacobian(omega) -> np.ndarray:
    """SO(3) left Jacobian: ``expm([omega + d]) ~ expm([J d]) expm([omega])``, so the
    gradient in ``omega`` is ``J.T`` times the gradient in a left increment."""
    w = np.asarray(omega, np.float64)
    th = float(np.linalg.norm(w))
    k = _skew(w)
    if th < 1e-8:
        return np.eye(3) + 0.5 * k
    return (np.eye(3) + (1 - math.cos(th)) / th**2 * k
            + (th - math.sin(th)) / th**3 * (k @ k))


class PoseScore:
    """The score of one patch against one template, and its gradient.

    patch: ``(P, P)`` whitened image (search pixels) with the candidate pixel at
    ``(P // 2, P // 2)``; whitening: the search's filter on the ``rfft2`` grid of the
    patch ``(P, P // 2 + 1)``; fvol, scale: the template's Fourier volume and the index
    scale of a ``P`` box at the search pixel size; ctf: the micrograph's CTF (``delta``
    is relative to it); band_a: keep frequencies ``|k| <= 1 / band_a`` (None: all).
    :meth:`value` and :meth:`value_and_grad` run one fused numba pass over the kept
    frequencies; :meth:`value_and_grad_reference` is the same in NumPy (the oracle).
    """

    def __init__(self, patch: np.ndarray, whitening: np.ndarray, fvol: FourierVolume,
                 scale: float, ctf: CTFParams, pixel_size_a: float, band_a: float | None = None,
                 _spectrum: np.ndarray | None = None):
        patch = np.asarray(patch, np.float64)
        if patch.ndim != 2 or patch.shape[0] != patch.shape[1] or patch.shape[0] % 2:
            raise InputError(f"particle patch must be square with an even side, got {patch.shape}")
        if not np.all(np.isfinite(patch)):
            raise InputError("particle patch contains NaN or infinite values")
        p = patch.shape[0]
        self.size = p
        self.fvol, self.scale, self.ctf = fvol, float(scale), ctf
        self.pixel_size_a = float(pixel_size_a)
        # candidate pixel at index 0
        spec = np.fft.rfft2(np.fft.ifftshift(patch)) if _spectrum is None else _spectrum
        ky = np.fft.fftfreq(p, 1.0 / p)[:, None] * np.ones((1, p // 2 + 1))
        kx = np.arange(p // 2 + 1, dtype=np.float64)[None, :] * np.ones((p, 1))
        kmag_a = np.hypot(kx, ky) / (p * self.pixel_size_a)
        keep = (np.asarray(whitening) > 0) & ~((kx == 0) & (ky == 0))
        # |q| = scale |k| whatever the rotation: points at the volume's edge sphere would
        # flip in and out with rounding (a jump in the score), so they are left out.
        keep &= self.scale * np.hypot(kx, ky) < fvol.size // 2 - 1.5
        if band_a is not None:
            keep &= kmag_a <= 1.0 / float(band_a)
        wts = np.full(p // 2 + 1, 2.0)
        wts[0] = wts[-1] = 1.0
        self.idx = np.flatnonzero(keep)
        self.kx, self.ky = kx.ravel()[self.idx].copy(), ky.ravel()[self.idx].copy()
        self.w = (wts[None, :] * np.ones((p, 1))).ravel()[self.idx] / (p * p)
        self.img = spec.ravel()[self.idx]
        self.white = np.asarray(whitening, np.float64).ravel()[self.idx]
        self._kya, self._kxa = self.ky / (p * self.pixel_size_a), self.kx / (p * self.pixel_size_a)
        # CTF(delta) = -sin(chi0 + a_df * delta) * env at every kept point
        c0, dc0 = ctf_at(ctf, self._kya, self._kxa, 0.0)
        k2 = self._kxa**2 + self._kya**2
        self._a_df = math.pi * wavelength_a(ctf.voltage_kv) * k2
        self._env = np.exp(-ctf.bfactor_a2 * k2 / 4.0) if ctf.bfactor_a2 else np.ones_like(k2)
        self._chi0 = np.arctan2(-c0 / self._env, -dc0 / (self._env * np.where(
            self._a_df > 0, self._a_df, 1.0)))
        self._freq = np.fft.fftfreq(p, 1.0 / p)
        self._s_buf = np.empty(len(self.kx), np.complex128)
        self._ds_buf = np.empty((len(self.kx), 3), np.complex128)
        self._f_buf = np.empty(len(self.kx), np.float64)
        self._ip_buf = np.empty(len(self.kx), np.complex128)
        self._grad = np.empty(6)
        self.n_evaluations = 0

    @classmethod
    def passes(cls, patch, whitening, fvol, scale, ctf, pixel_size_a, bands_a) -> list:
        """One :class:`PoseScore` per band of ``bands_a`` (coarse first), sharing the
        patch's transform."""
        patch = np.asarray(patch, np.float64)
        spec = np.fft.rfft2(np.fft.ifftshift(patch)) if patch.ndim == 2 else None
        return [cls(patch, whitening, fvol, scale, ctf, pixel_size_a, b, _spectrum=spec)
                for b in bands_a]

    # ------------------------------------------------------------ fused kernel
    def _run(self, rot, shift_px, delta_a, want_grad):
        two_pi_p = 2 * np.pi / self.size
        ph_x = np.exp(1j * two_pi_p * float(shift_px[0]) * np.arange(self.size // 2 + 1))
        ph_y = np.exp(1j * two_pi_p * float(shift_px[1]) * self._freq)
        self.n_evaluations += 1
        return _score_grad_numba(self.fvol.data, np.ascontiguousarray(rot, np.float64), self.kx,
                                 self.ky, self.scale, self.w, self.img, self.white, self._chi0,
                                 self._a_df, self._env, float(delta_a), ph_x, ph_y, two_pi_p,
                                 want_grad, self._s_buf, self._ds_buf, self._f_buf,
                                 self._ip_buf, self._grad)

    def value(self, rot, shift_px=(0.0, 0.0), delta_a: float = 0.0) -> float:
        """The normalised CC at rotation ``rot (3, 3)``, shift ``(sx, sy)`` px, defocus
        offset ``delta_a``."""
        return float(self._run(rot, shift_px, delta_a, False))

    def value_and_grad(self, rot, shift_px=(0.0, 0.0), delta_a: float = 0.0):
        """``(score, d/d omega (3,) per radian of a left increment, d/d shift (2,) per
        pixel (x, y), d/d delta per Angstrom)``."""
        score = float(self._run(rot, shift_px, delta_a, True))
        g = self._grad
        return score, g[:3].copy(), g[3:5].copy(), float(g[5])

    # ------------------------------------------------------------ NumPy oracle
    def _filter(self, delta_a: float):
        c, dc = ctf_at(self.ctf, self._kya, self._kxa, delta_a)
        return c * self.white, dc * self.white

    def _phase(self, shift_px):
        sx, sy = float(shift_px[0]), float(shift_px[1])
        return np.exp(2j * np.pi * (self.kx * sx + self.ky * sy) / self.size)

    def value_and_grad_reference(self, rot, shift_px=(0.0, 0.0), delta_a: float = 0.0):
        """:meth:`value_and_grad` in NumPy, term by term as the module docstring."""
        s, ds = slice_points_reference(self.fvol.data, np.asarray(rot, np.float64), self.kx,
                                       self.ky, self.scale)
        f, df = self._filter(delta_a)
        t = s * f
        abs_s2 = s.real**2 + s.imag**2
        e = float(np.sum(self.w * f * f * abs_s2))
        if e <= 0:
            return 0.0, np.zeros(3), np.zeros(2), 0.0
        rt = math.sqrt(e)
        ip = self.img * self._phase(shift_px)  # I exp(2 pi i k.s / P)
        prod = np.conj(t) * ip
        n = float(np.sum(self.w * prod.real))
        g = self.w * (f * ip / rt - (n / e**1.5) * (f * f) * s)
        v = (np.conj(g)[:, None] * ds).real  # (n, 3), volume (x, y, z)
        u = v @ np.asarray(rot, np.float64).T  # A v per point
        k3 = np.stack([self.kx, self.ky, np.zeros_like(self.kx)], 1)
        g_rot = -self.scale * np.cross(k3, u).sum(0)
        two_pi = 2 * np.pi / self.size
        g_shift = np.array([np.sum(self.w * (prod * 1j * two_pi * self.kx).real),
                            np.sum(self.w * (prod * 1j * two_pi * self.ky).real)]) / rt
        dn = float(np.sum(self.w * (np.conj(s * df) * ip).real))
        de = 2.0 * float(np.sum(self.w * f * df * abs_s2))
        return n / rt, g_rot, g_shift, dn / rt - n * de / (2 * e**1.5)

    def correlation_map(self, rot, delta_a: float = 0.0) -> np.ndarray:
        """Scores at every integer shift ``(P, P)`` (wrap layout: index ``(dy, dx)`` is
        the shift ``(dy, dx)`` mod P) at one pose, in one inverse FFT."""
        s, _ = slice_points(self.fvol, rot, self.kx, self.ky, self.scale)
        f, _ = self._filter(delta_a)
        self.n_evaluations += 1
        t = s * f
        e = float(np.sum(self.w * (t.real**2 + t.imag**2)))
        p = self.size
        full = np.zeros(p * (p // 2 + 1), np.complex128)
        full[self.idx] = np.conj(t) * self.img
        cc = np.fft.irfft2(full.reshape(p, p // 2 + 1), s=(p, p))
        return cc / math.sqrt(e) if e > 0 else cc * 0


def template_overlap(fvol: FourierVolume, scale: float, size: int, whitening: np.ndarray,
                     ctf: CTFParams, pixel_size_a: float, rot_a, delta_a: float, rot_b,
                     delta_b: float, shift_px) -> float:
    """Normalised overlap of two filtered templates in a ``size`` box: ``sum t_a t_b``
    for unit-energy ``t_a`` (rotation ``rot_a``, defocus offset ``delta_a``) and ``t_b``
    moved by ``shift_px = (dx, dy)`` pixels relative to it. For a particle ``b`` of
    correlation ``cc_b`` this is the correlation it lends, times ``cc_b``, to the
    template at pose ``a`` (side lobes, explained away by the fast search)."""
    p = int(size)
    ky = np.fft.fftfreq(p, 1.0 / p)[:, None] * np.ones((1, p // 2 + 1))
    kx = np.arange(p // 2 + 1, dtype=np.float64)[None, :] * np.ones((p, 1))
    keep = (np.asarray(whitening) > 0) & ~((kx == 0) & (ky == 0))
    keep &= float(scale) * np.hypot(kx, ky) < fvol.size // 2 - 1.5
    idx = np.flatnonzero(keep)
    kx, ky = kx.ravel()[idx], ky.ravel()[idx]
    wts = np.full(p // 2 + 1, 2.0)
    wts[0] = wts[-1] = 1.0
    w = (wts[None, :] * np.ones((p, 1))).ravel()[idx]
    white = np.asarray(whitening, np.float64).ravel()[idx]
    kya, kxa = ky / (p * pixel_size_a), kx / (p * pixel_size_a)
    out = []
    for rot, delta in ((rot_a, delta_a), (rot_b, delta_b)):
        s, _ = slice_points(fvol, rot, kx, ky, scale)
        out.append(s * ctf_at(ctf, kya, kxa, delta)[0] * white)
    ta, tb = out
    ea = float(np.sum(w * np.abs(ta) ** 2))
    eb = float(np.sum(w * np.abs(tb) ** 2))
    if ea <= 0 or eb <= 0:
        return 0.0
    ph = np.exp(-2j * np.pi * (kx * float(shift_px[0]) + ky * float(shift_px[1])) / p)
    return float(np.sum(w * (np.conj(ta) * tb * ph).real) / math.sqrt(ea * eb))
