"""3D reconstruction by direct Fourier inversion, with CTF Wiener weighting.

Model (RELION convention, the one :mod:`napari_2dtm.reconstruct.particles` writes): a particle
image has the protein *white* (positive) and its transform is
``X(k) = CTF(k) * P(k) + noise`` with ``CTF = sin(chi) = -ctf_2d(...)`` (the sign of
:func:`napari_2dtm.core.ctf.ctf_2d` flipped, as contrast inversion does) and ``P`` the
projection of the map rotated by the particle's pose ``A`` (``V_rot(r) = V(A.T r)``,
:mod:`napari_2dtm.core.geometry`). By the Fourier-slice theorem ``P(k)`` is the map's
transform at ``A.T @ (kx, ky, 0)``; the inverse of :func:`napari_2dtm.core.projection.project`
therefore inserts each image's transform there.

Insertion: each image (``box x box``, particle centre at pixel ``box // 2`` minus its
RELION origin) is zero-padded to ``P = pad * box`` pixels, shifted to centre the
particle, and its ``rfft2`` samples are spread into the ``P^3`` half-volume
(Friedel symmetry, ``x >= 0``) with trilinear weights ("gridding"): ``num += w CTF X``
and ``den += w CTF^2``. Even and odd particles go to two independent half-volumes.

Wiener filter: ``F = sum CTF X / (sum CTF^2 + tau(k))``, ``tau = 1 / SSNR`` per particle
and shell. ``tau`` comes from the half-map FSC (``SSNR_half = FSC / (1 - FSC)`` and
``tau = <den_half>_shell / SSNR_half``, two passes) unless a constant SSNR is given.
The real-space map is then cropped to ``box`` and divided by the trilinear kernel's
transform (``sinc^2`` per axis, the gridding correction).

The half-map FSC, the resolution and the masks are :mod:`napari_2dtm.reconstruct.fsc`;
that FSC is NOT gold-standard when the poses come from template matching (both halves
share the template's bias, :data:`~napari_2dtm.reconstruct.fsc.FSC_NOTE`).

The insertion kernel is numba (``nogil``: the two half maps fill in two threads);
:func:`insert_reference` is the NumPy definition used in tests.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pandas as pd
import scipy.fft as sfft

from napari_2dtm.core.ctf import CTFParams, wavelength_a
from napari_2dtm.core.geometry import euler_to_matrix
from napari_2dtm.errors import Cancelled, InputError

from .fsc import FSC_NOTE, FSC_THRESHOLD, fsc, fsc_resolution, lowpass, shell_frequencies, soft_mask

__all__ = [
    "Reconstructor",
    "Reconstruction",
    "reconstruct",
    "insert_reference",
    "symmetry_matrices",
    "ctf_table",
]

#: per-particle CTF columns (names as :class:`~napari_2dtm.core.ctf.CTFParams` fields)
CTF_COLUMNS = ("defocus1_a", "defocus2_a", "astigmatism_angle_deg", "voltage_kv", "cs_mm",
               "amplitude_contrast", "phase_shift_deg", "bfactor_a2")


# --------------------------------------------------------------------------------------
# Symmetry
# --------------------------------------------------------------------------------------


def symmetry_matrices(symmetry: str = "C1") -> np.ndarray:
    """Rotation matrices ``(n, 3, 3)`` of a point group: ``Cn`` (n-fold axis z) or ``Dn``
    (plus 2-fold axes in the xy plane, the first along x), as the search grid assumes.

    A map with symmetry ``R`` (``V(R r) = V(r)``) seen at pose ``A`` is also seen at
    pose ``A @ R.T``; the reconstructor inserts every particle at all of them.
    """
    s = str(symmetry or "C1").strip().upper()
    kind, num = s[:1], s[1:]
    if kind not in ("C", "D") or (num and not num.isdigit()) or (num and int(num) < 1):
        raise InputError(f"symmetry {symmetry!r}: the reconstruction supports Cn and Dn "
                         "(e.g. C1, C7, D2)")
    n = int(num) if num else 1
    mats = []
    for k in range(n):
        a = 2.0 * math.pi * k / n
        c, si = math.cos(a), math.sin(a)
        mats.append(np.array([[c, -si, 0.0], [si, c, 0.0], [0.0, 0.0, 1.0]]))
    if kind == "D":
        flip = np.diag([1.0, -1.0, -1.0])  # 180 deg about x
        mats += [m @ flip for m in mats]
    return np.stack(mats)


# --------------------------------------------------------------------------------------
# Insertion kernels
# --------------------------------------------------------------------------------------


@numba.njit(nogil=True, fastmath=True, cache=True)
def _insert_numba(num, den, fimg, rots, ctfp, shifts, weights, use_ctf, inv_size_a):
    """Trilinear insertion of ``B`` padded image transforms into a half-volume.

    num: ``(P, P, P//2+1)`` complex128, den: same shape float64 (z, y centred at P//2);
    fimg: ``(B, P, P//2+1)`` complex64 rfft2 of the padded images (centre at pixel 0);
    rots: ``(B, 3, 3)``; ctfp: ``(B, 7)`` rows (df1, df2, astig_rad, lambda, cs_a,
    total phase w + shift, bfactor); shifts: ``(B, 2)`` particle offset (x, y) from the
    box centre in pixels; weights: ``(B,)``; inv_size_a: ``1 / (P * pixel)``.
    """
    big = num.shape[0]
    half = big // 2
    nkx = fimg.shape[2]
    # A radius off the integer lattice (|k|^2 of a 2D sample is an integer before the
    # rotation) so rounding never decides; it also keeps x0 + 1, y0 + 1 inside the grid.
    rmax2 = (half - 1.5) ** 2
    two_pi = 2.0 * np.pi
    for b in range(fimg.shape[0]):
        r00, r01, r02 = rots[b, 0, 0], rots[b, 0, 1], rots[b, 0, 2]
        r10, r11, r12 = rots[b, 1, 0], rots[b, 1, 1], rots[b, 1, 2]
        df1, df2, ast = ctfp[b, 0], ctfp[b, 1], ctfp[b, 2]
        lam, cs, wtot, bfac = ctfp[b, 3], ctfp[b, 4], ctfp[b, 5], ctfp[b, 6]
        dfm, dfd = 0.5 * (df1 + df2), 0.5 * (df1 - df2)
        c2a, s2a = np.cos(2.0 * ast), np.sin(2.0 * ast)
        sx, sy = shifts[b, 0], shifts[b, 1]
        wb = weights[b]
        for i in range(big):
            ky = i if i < big - half else i - big
            for j in range(nkx):
                kx = j
                x = kx * r00 + ky * r10
                y = kx * r01 + ky * r11
                z = kx * r02 + ky * r12
                if x * x + y * y + z * z > rmax2:
                    continue
                v = fimg[b, i, j]
                # Move the particle centre to the origin: multiply by exp(+2 pi i k.d / P).
                ph = two_pi * (kx * sx + ky * sy) / big
                v = v * complex(np.cos(ph), np.sin(ph))
                w = wb
                if j == 0 or j == nkx - 1:
                    w *= 0.5  # these columns hold both Friedel mates of the 2D transform
                c2 = 1.0
                if use_ctf:
                    fx = kx * inv_size_a
                    fy = ky * inv_size_a
                    k2 = fx * fx + fy * fy
                    if k2 > 0:
                        cos2 = ((fx * fx - fy * fy) * c2a + 2.0 * fx * fy * s2a) / k2
                    else:
                        cos2 = 1.0
                    df = dfm + dfd * cos2
                    chi = np.pi * lam * k2 * (df - 0.5 * lam * lam * k2 * cs) + wtot
                    c = np.sin(chi)  # = -ctf_2d: white particles (RELION convention)
                    if bfac != 0.0:
                        c *= np.exp(-bfac * k2 / 4.0)
                    v = v * c
                    c2 = c * c
                if x < 0:
                    x, y, z = -x, -y, -z
                    v = np.conj(v)
                y += half
                z += half
                x0 = int(np.floor(x))
                y0 = int(np.floor(y))
                z0 = int(np.floor(z))
                gx = x - x0
                gy = y - y0
                gz = z - z0
                for dz in range(2):
                    wz = gz if dz else 1.0 - gz
                    for dy in range(2):
                        wy = gy if dy else 1.0 - gy
                        wzy = w * wz * wy
                        for dx in range(2):
                            wt = wzy * (gx if dx else 1.0 - gx)
                            num[z0 + dz, y0 + dy, x0 + dx] += wt * v
                            den[z0 + dz, y0 + dy, x0 + dx] += wt * c2


def _ctf_rows(ctfs: list[CTFParams] | None, n: int) -> np.ndarray:
    out = np.zeros((n, 7))
    if ctfs is None:
        return out
    for i, c in enumerate(ctfs):
        ac = c.amplitude_contrast
        w = math.atan2(ac, math.sqrt(1.0 - ac * ac))
        out[i] = (c.defocus1_a, c.defocus2_a, math.radians(c.astigmatism_angle_deg),
                  wavelength_a(c.voltage_kv), c.cs_mm * 1e7, w + math.radians(c.phase_shift_deg),
                  c.bfactor_a2)
    return out


def insert_reference(num, den, fimg, rots, ctfs, shifts, weights, pixel_size_a):
    """NumPy definition of the insertion kernel (test oracle; same arguments, CTFs as a
    list of :class:`CTFParams` or None). Accumulates into ``num`` and ``den`` in place."""
    from napari_2dtm.core.ctf import ctf_2d  # noqa: PLC0415

    big = num.shape[0]
    half = big // 2
    nkx = fimg.shape[2]
    ky = np.fft.fftfreq(big, 1.0 / big)[:, None] * np.ones((1, nkx))
    kx = np.arange(nkx, dtype=np.float64)[None, :] * np.ones((big, 1))
    colw = np.ones(nkx)
    colw[0] = colw[-1] = 0.5
    for b in range(fimg.shape[0]):
        r = rots[b]
        x = kx * r[0, 0] + ky * r[1, 0]
        y = kx * r[0, 1] + ky * r[1, 1]
        z = kx * r[0, 2] + ky * r[1, 2]
        inside = x * x + y * y + z * z <= (half - 1.5) ** 2
        v = fimg[b].astype(np.complex128)
        v = v * np.exp(2j * np.pi * (kx * shifts[b, 0] + ky * shifts[b, 1]) / big)
        w = weights[b] * colw[None, :] * np.ones((big, 1))
        c2 = np.ones_like(w)
        if ctfs is not None:
            c = -ctf_2d(ctfs[b], (big, big), pixel_size_a).astype(np.float64)
            v = v * c
            c2 = c * c
        neg = x < 0
        sgn = np.where(neg, -1.0, 1.0)
        x, y, z = x * sgn, y * sgn + half, z * sgn + half
        v = np.where(neg, np.conj(v), v)
        x, y, z, v, w, c2 = (a[inside] for a in (x, y, z, v, w, c2))
        x0, y0, z0 = (np.floor(a).astype(int) for a in (x, y, z))
        gx, gy, gz = x - x0, y - y0, z - z0
        for dz in (0, 1):
            wz = gz if dz else 1 - gz
            for dy in (0, 1):
                wy = gy if dy else 1 - gy
                for dx in (0, 1):
                    wt = w * wz * wy * (gx if dx else 1 - gx)
                    idx = (z0 + dz, y0 + dy, x0 + dx)
                    np.add.at(num, idx, wt * v)
                    np.add.at(den, idx, wt * c2)


# --------------------------------------------------------------------------------------
# Reconstructor
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Reconstruction:
    """Result of :meth:`Reconstructor.finish`.

    Maps are ``(box, box, box)`` float32 at ``pixel_size_a``, centre at voxel ``box // 2``,
    on the template's axes: ``full`` (all particles, Wiener-filtered), ``half1`` /
    ``half2`` (even / odd particles), ``filtered`` (``full`` low-passed at the FSC 0.143
    resolution, masked FSC when a mask was used). ``fsc`` is a table per shell:
    ``shell, frequency_inv_a, resolution_a, fsc_unmasked, fsc_masked`` (NaN without mask),
    ``ssnr`` (per-particle SSNR used by the Wiener filter). ``note`` states that the FSC
    is not gold-standard.
    """

    full: np.ndarray
    half1: np.ndarray
    half2: np.ndarray
    filtered: np.ndarray
    mask: np.ndarray | None
    fsc: pd.DataFrame
    resolution_a: float
    resolution_masked_a: float | None
    pixel_size_a: float
    n_particles: tuple[int, int]
    params: dict
    note: str = FSC_NOTE


class Reconstructor:
    """Accumulates particles into two half-volumes; :meth:`finish` gives the maps.

    box: particle box (even, pixels); pixel_size_a: particle pixel size; pad: Fourier
    oversampling (2); symmetry: ``Cn`` / ``Dn``; use_ctf: Wiener-weight by the CTF
    (False: insert the images as they are, e.g. CTF-free data). Memory: two
    ``(P, P, P/2+1)`` complex128 + float64 volumes, ``P = pad * box`` (0.4 GB at box 128).
    """

    def __init__(self, box: int, pixel_size_a: float, pad: int = 2, symmetry: str = "C1",
                 use_ctf: bool = True):
        box = int(box)
        if box < 8 or box % 2:
            raise InputError(f"particle box must be even and >= 8 pixels, got {box}")
        if not (pixel_size_a and pixel_size_a > 0):
            raise InputError(f"pixel size must be > 0 Angstrom, got {pixel_size_a}")
        if int(pad) < 1:
            raise InputError(f"padding factor must be >= 1, got {pad}")
        self.box = box
        self.pixel_size_a = float(pixel_size_a)
        self.pad = int(pad)
        self.size = self.pad * box
        self.use_ctf = bool(use_ctf)
        self.symmetry = str(symmetry or "C1").upper()
        self.sym = symmetry_matrices(self.symmetry)
        shape = (self.size, self.size, self.size // 2 + 1)
        self.num = [np.zeros(shape, np.complex128), np.zeros(shape, np.complex128)]
        self.den = [np.zeros(shape, np.float64), np.zeros(shape, np.float64)]
        self.counts = [0, 0]
        self._shell_cache: np.ndarray | None = None  # shell index per padded voxel, on first use
        self._pool = ThreadPoolExecutor(max_workers=2)

    # ------------------------------------------------------------------ insert
    def _padded_fft(self, images: np.ndarray) -> np.ndarray:
        """rfft2 of the images zero-padded to ``P``, particle centre moved to pixel 0."""
        b, n = images.shape[0], self.box
        big = np.zeros((b, self.size, self.size), np.float32)
        o = self.size // 2 - n // 2
        big[:, o:o + n, o:o + n] = images
        big = np.fft.ifftshift(big, axes=(-2, -1))
        return sfft.rfft2(big, axes=(-2, -1), workers=1).astype(np.complex64)

    def _insert_half(self, h, images, rots, ctfp, shifts, weights):
        f = self._padded_fft(images)
        nsym = len(self.sym)
        if nsym > 1:
            rots = np.einsum("bij,skj->bsik", rots, self.sym).reshape(-1, 3, 3)
            f = np.repeat(f, nsym, axis=0)
            ctfp = np.repeat(ctfp, nsym, axis=0)
            shifts = np.repeat(shifts, nsym, axis=0)
            weights = np.repeat(weights, nsym, axis=0)
        _insert_numba(self.num[h], self.den[h], f, np.ascontiguousarray(rots), ctfp,
                      np.ascontiguousarray(shifts, np.float64),
                      np.ascontiguousarray(weights, np.float64), self.use_ctf,
                      1.0 / (self.size * self.pixel_size_a))

    def insert(self, images, angles_deg, halves, ctfs: list[CTFParams] | None = None,
               shifts_px=None, weights=None):
        """Add particles.

        images: ``(B, box, box)`` white-protein images; angles_deg: ``(B, 3)`` ZYZ
        (phi, theta, psi); halves: ``(B,)`` 1 or 2; ctfs: one :class:`CTFParams` per
        particle (required when ``use_ctf``); shifts_px: ``(B, 2)`` particle centre
        offset ``(dx, dy)`` from pixel ``box // 2`` (= ``-rlnOrigin / pixel``);
        weights: ``(B,)`` (default 1).
        """
        images = np.asarray(images, np.float32)
        if images.ndim == 2:
            images = images[None]
        b = images.shape[0]
        if images.shape[1:] != (self.box, self.box):
            raise InputError(f"particle images are {images.shape[1:]}, expected "
                             f"{(self.box, self.box)}")
        ang = np.asarray(angles_deg, np.float64).reshape(b, 3)
        rots = euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])
        halves = np.broadcast_to(np.asarray(halves, np.int64), (b,))
        if self.use_ctf and ctfs is None:
            raise InputError("CTF weighting asked for but no CTF parameters given")
        ctfp = _ctf_rows(ctfs if self.use_ctf else None, b)
        shifts = np.zeros((b, 2)) if shifts_px is None else np.asarray(shifts_px, np.float64).reshape(b, 2)
        weights = np.ones(b) if weights is None else np.asarray(weights, np.float64).reshape(b)
        bad = set(np.unique(halves).tolist()) - {1, 2}
        if bad:
            raise InputError(f"half-set labels must be 1 or 2, got {sorted(bad)}")
        jobs = []
        for h in (0, 1):
            sel = np.flatnonzero(halves == h + 1)
            if len(sel) == 0:
                continue
            self.counts[h] += len(sel)
            jobs.append(self._pool.submit(self._insert_half, h, images[sel], rots[sel],
                                          ctfp[sel], shifts[sel], weights[sel]))
        for j in jobs:
            j.result()

    # ------------------------------------------------------------------ finish
    def _hermitian(self, num, den):
        """Make the x = 0 plane Friedel-symmetric (both mates get the pooled sums)."""
        p = self.size
        idx = (p - np.arange(p)) % p
        # Centred layout: index i holds frequency i - P/2; its mate -k sits at P - i.
        n0 = num[:, :, 0]
        d0 = den[:, :, 0]
        mate_n = np.conj(n0[idx][:, idx])
        mate_d = d0[idx][:, idx]
        num[:, :, 0] = n0 + mate_n
        den[:, :, 0] = d0 + mate_d
        # index 0 (frequency -P/2) has no mate inside the grid and lies outside rmax

    def _shells_padded(self):
        if self._shell_cache is None:
            p = self.size
            k = np.arange(p) - p // 2
            kx = np.arange(p // 2 + 1)
            r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
            # shell index in units of the particle box (what the FSC is measured in)
            self._shell_cache = np.rint(r / self.pad).astype(np.int32)
        return self._shell_cache

    def _tau(self, den, ssnr_shell):
        """Regulariser ``<den>_shell / SSNR`` per voxel (den: half-set CTF^2 sums)."""
        shells = self._shells_padded()
        nsh = self.box // 2 + 1
        keep = shells < nsh
        sums = np.bincount(shells[keep], den[keep], nsh)
        cnt = np.bincount(shells[keep], (den[keep] > 0).astype(np.float64), nsh)
        mean_w = np.where(cnt > 0, sums / np.maximum(cnt, 1), 0.0)
        tau_shell = np.append(mean_w / np.maximum(ssnr_shell, 1e-12), np.inf)
        return tau_shell[np.minimum(shells, nsh)]

    def _to_real(self, num, den, tau) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(den + tau > 0, num / (den + tau), 0.0)
        f[~np.isfinite(f)] = 0.0
        f = np.fft.ifftshift(f, axes=(0, 1))
        p = self.size
        vol = sfft.irfftn(f, s=(p, p, p), workers=-1)
        vol = np.fft.fftshift(vol)
        n = self.box
        o = p // 2 - n // 2
        vol = vol[o:o + n, o:o + n, o:o + n]
        # Gridding correction: divide by the transform of the trilinear kernel.
        g = np.sinc((np.arange(n) - n // 2) / p) ** 2
        vol = vol / (g[:, None, None] * g[None, :, None] * g[None, None, :])
        # Units: an image that is the plain sum of the map along z reconstructs to the map.
        return vol.astype(np.float32)

    def finish(self, ssnr: float | None = None, mask: np.ndarray | None | str = "auto",
               fsc_iterations: int = 2) -> Reconstruction:
        """Half maps, FSC, full and filtered maps.

        ssnr: constant per-particle spectral SNR for the Wiener term (``tau = 1/ssnr``);
        None: estimated per shell from the half-map FSC. mask: ``(box,)*3`` soft mask for
        the masked FSC, ``"auto"`` (from the low-passed full map, :func:`soft_mask`) or None.
        """
        if min(self.counts) == 0:
            raise InputError(f"need particles in both half sets, got {self.counts[0]} and "
                             f"{self.counts[1]}")
        nums = [x.copy() for x in self.num]
        dens = [x.copy() for x in self.den]
        for a, d in zip(nums, dens):
            self._hermitian(a, d)
        nsh = self.box // 2 + 1
        if ssnr is not None:
            if not ssnr > 0:
                raise InputError(f"SSNR must be > 0, got {ssnr}")
            ssnr_shell = np.full(nsh, float(ssnr))
            taus = [np.full(dens[0].shape, 1.0 / ssnr)] * 2
            halves = [self._to_real(a, d, t) for a, d, t in zip(nums, dens, taus)]
            curve = fsc(halves[0], halves[1])
            tau_full = taus[0]
        else:
            ssnr_shell = np.full(nsh, 1e3)  # first pass: a near-plain division
            for _ in range(max(1, int(fsc_iterations))):
                taus = [self._tau(d, ssnr_shell) for d in dens]
                halves = [self._to_real(a, d, t) for a, d, t in zip(nums, dens, taus)]
                curve = fsc(halves[0], halves[1])
                f = np.clip(curve, 1e-3, 0.999)
                ssnr_shell = f / (1.0 - f)
                ssnr_shell[0] = max(ssnr_shell[0], 1e3)
            taus = [self._tau(d, ssnr_shell) for d in dens]
            halves = [self._to_real(a, d, t) for a, d, t in zip(nums, dens, taus)]
            curve = fsc(halves[0], halves[1])
            # The regulariser is the per-particle N/S: the same for the full map.
            tau_full = self._tau(0.5 * (dens[0] + dens[1]), ssnr_shell)
        full = self._to_real(nums[0] + nums[1], dens[0] + dens[1], tau_full)
        n, px = self.box, self.pixel_size_a
        res = fsc_resolution(curve, n, px)
        if isinstance(mask, str):
            if mask != "auto":
                raise InputError(f"mask must be an array, 'auto' or None, got {mask!r}")
            mask = soft_mask(lowpass(full, px, max(res, 2.5 * px)), px)
        curve_m = None
        res_m = None
        if mask is not None:
            mask = np.asarray(mask, np.float32)
            if mask.shape != full.shape:
                raise InputError(f"mask shape {mask.shape} differs from the map {full.shape}")
            curve_m = fsc(halves[0], halves[1], mask)
            res_m = fsc_resolution(curve_m, n, px)
        res_filter = res_m if res_m is not None else res
        filtered = lowpass(full, px, res_filter).astype(np.float32)
        freq = shell_frequencies(n, px)
        with np.errstate(divide="ignore"):
            reso = np.where(freq > 0, 1.0 / np.where(freq > 0, freq, 1.0), np.inf)
        table = pd.DataFrame({
            "shell": np.arange(nsh),
            "frequency_inv_a": freq,
            "resolution_a": reso,
            "fsc_unmasked": curve,
            "fsc_masked": curve_m if curve_m is not None else np.full(nsh, np.nan),
            "ssnr": ssnr_shell,
        })
        params = {
            "box": n, "pixel_size_a": px, "pad": self.pad, "symmetry": self.symmetry,
            "use_ctf": self.use_ctf, "wiener_ssnr": "from half-map FSC" if ssnr is None else ssnr,
            "fsc_threshold": FSC_THRESHOLD, "gold_standard": False,
        }
        return Reconstruction(
            full=full, half1=halves[0], half2=halves[1], filtered=filtered, mask=mask,
            fsc=table, resolution_a=res, resolution_masked_a=res_m, pixel_size_a=px,
            n_particles=(self.counts[0], self.counts[1]), params=params,
        )

    def close(self):
        """Stop the insertion threads (the accumulated volumes stay)."""
        self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------
# One call
# --------------------------------------------------------------------------------------


def ctf_table(particles: pd.DataFrame, default: CTFParams | None = None) -> list[CTFParams]:
    """One :class:`CTFParams` per row from columns named as its fields (missing columns
    from ``default``; ``defocus_a`` alone sets both defoci)."""
    base = default or CTFParams()
    cols = {c: particles[c].to_numpy() for c in CTF_COLUMNS if c in particles}
    mean_df = particles["defocus_a"].to_numpy() if "defocus_a" in particles else None
    out = []
    for i in range(len(particles)):
        kw = {k: float(v[i]) for k, v in cols.items()}
        if "defocus1_a" not in kw and mean_df is not None:
            kw["defocus1_a"] = kw["defocus2_a"] = float(mean_df[i])
        kw.setdefault("defocus2_a", kw.get("defocus1_a", base.defocus2_a))
        out.append(dataclasses.replace(base, **kw))
    return out


def reconstruct(images, pixel_size_a: float, particles: pd.DataFrame, *, use_ctf: bool = True,
                ctf: CTFParams | None = None, symmetry: str = "C1", pad: int = 2,
                ssnr: float | None = None, mask="auto", batch: int = 256,
                progress: Callable[[int, int], None] | None = None,
                cancel: threading.Event | None = None) -> Reconstruction:
    """Reconstruct a map from a particle stack and its table.

    images: ``(N, box, box)`` with white protein (as :func:`napari_2dtm.reconstruct.particles.
    extract_particles` writes them); particles: DataFrame with ``phi, theta, psi``
    (deg), optional ``origin_x_a, origin_y_a`` (RELION origins, A: the particle centre
    sits at pixel ``box // 2 - origin / pixel``), ``half`` (1/2; default alternating
    even/odd), ``weight``, and CTF columns (``defocus1_a, defocus2_a,
    astigmatism_angle_deg, voltage_kv, cs_mm, amplitude_contrast, phase_shift_deg``;
    missing ones from ``ctf``). progress(done, total) is called per batch; setting
    ``cancel`` stops between batches with :class:`~napari_2dtm.errors.Cancelled`.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise InputError(f"particle stack must be (N, box, box), got shape {images.shape}")
    n = images.shape[0]
    if len(particles) != n:
        raise InputError(f"{n} particle images but {len(particles)} table rows")
    for c in ("phi", "theta", "psi"):
        if c not in particles:
            raise InputError(f"particle table lacks the column {c!r}")
    px = float(pixel_size_a)
    angles = particles[["phi", "theta", "psi"]].to_numpy(np.float64)
    if "origin_x_a" in particles and "origin_y_a" in particles:
        shifts = -particles[["origin_x_a", "origin_y_a"]].to_numpy(np.float64) / px
    else:
        shifts = np.zeros((n, 2))
    halves = (particles["half"].to_numpy(np.int64) if "half" in particles
              else 1 + (np.arange(n) % 2))
    weights = particles["weight"].to_numpy(np.float64) if "weight" in particles else np.ones(n)
    ctfs = ctf_table(particles, ctf) if use_ctf else None
    with Reconstructor(images.shape[1], px, pad=pad, symmetry=symmetry, use_ctf=use_ctf) as rec:
        for i0 in range(0, n, batch):
            if cancel is not None and cancel.is_set():
                raise Cancelled("reconstruction cancelled")
            sl = slice(i0, min(n, i0 + batch))
            rec.insert(images[sl], angles[sl], halves[sl],
                       ctfs[sl] if ctfs is not None else None, shifts[sl], weights[sl])
            if progress is not None:
                progress(sl.stop, n)
        if cancel is not None and cancel.is_set():
            raise Cancelled("reconstruction cancelled")
        return rec.finish(ssnr=ssnr, mask=mask)
