"""How much a true particle inflates its own per-pixel statistics: the template against itself.

At the centre of a particle of matched-filter SNR ``A`` whose pose is not on the grid,
the cross-correlation with grid pose ``j`` (orientation and defocus plane) is
``A * rho_j + noise``, where ``rho_j`` is the normalised inner product of the whitened,
CTF-filtered template at the particle's pose with the one at grid pose ``j``. Over the
``n`` grid poses the per-pixel statistics are then

* ``MIP ~= A * max_j rho_j``,
* ``mean ~= A * mean_j rho_j``,
* ``var ~= sigma^2 + A^2 * var_j rho_j``,

so the particle's own contribution to the variance is ``kappa * (MIP - mean)^2`` with

    kappa = var_j(rho) / (max_j rho - mean_j rho)^2,

a property of the template and the search grid alone. :func:`self_inflation` estimates
it from reference poses drawn uniformly off the grid (orientation and defocus), the
median over them. Inner products are taken at zero shift (the statistics of one pixel)
on a frame twice the box, so the CTF's delocalisation stays inside it.

The moments come from every grid pose near the reference (orientations within a few
grid steps, where ``rho`` is large, at every defocus plane) plus a uniform sample of the
other (orientation, plane) pairs, weighted to stand for all of them.

**Side lobes.** Off its centre, at distance ``d``, a particle still correlates with other
grid poses, up to ``A * g(d)``: inside a strong particle's footprint that is a peak of its
own. :func:`self_inflation` also returns ``lobe(d) = g(d) / g(0)`` (the largest over a few
references, each against its own defocus plane), which lets the detection explain such
peaks away (:func:`napari_2dtm.search.detect.explain_away`).
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from napari_2dtm.core.ctf import CTFParams, ctf_2d
from napari_2dtm.core.geometry import euler_to_matrix
from napari_2dtm.core.projection import FourierVolume, extract_slices, subtract_edge_mean
from napari_2dtm.errors import Cancelled

__all__ = ["self_inflation", "SelfMatch"]

#: (orientation, plane) grid poses sampled away from the references
_FAR_SAMPLE = 2000
#: far orientations each side-lobe reference is also matched with
_LOBE_SAMPLE = 2000
#: references for kappa, and for the side-lobe profile
_N_REF = 16
_N_LOBE_REF = 4
_CHUNK = 256


class SelfMatch:
    """Whitened, CTF-filtered template spectra at any pose on one ``2h x 2h`` frame.

    volume: ``(n, n, n)`` template at ``template_pixel_a``; box: the search box ``h`` (px)
    at ``pixel_size_a``; whitening: a callable of spatial frequency (1/A), the search's
    whitening filter; defocus_offsets_a: the search's planes."""

    def __init__(self, volume, template_pixel_a: float, box: int, pixel_size_a: float,
                 ctf: CTFParams, whitening, defocus_offsets_a):
        self.box = int(box)
        self.g = g = 2 * self.box
        self.fvol = FourierVolume(volume, pad=2)
        self.scale = self.fvol.scale_for(template_pixel_a, self.box, pixel_size_a)
        ky = np.fft.fftfreq(g, d=pixel_size_a)
        kx = np.fft.rfftfreq(g, d=pixel_size_a)
        self.whitening = np.asarray(whitening(np.hypot(ky[:, None], kx[None, :])), np.float32)
        self.ctf = ctf
        self.pixel_size_a = float(pixel_size_a)
        self.defocus_offsets_a = np.asarray(defocus_offsets_a, float)
        self.filters = np.stack([self.filter(d) for d in self.defocus_offsets_a])
        wts = np.full(g // 2 + 1, 2.0, np.float32)
        wts[0] = wts[-1] = 1.0
        self.weights = wts  # Hermitian weights of the half spectrum

    def filter(self, defocus_offset_a: float) -> np.ndarray:
        return (ctf_2d(self.ctf, (self.g, self.g), self.pixel_size_a,
                       defocus_offset_a=float(defocus_offset_a)) * self.whitening).astype(np.float32)

    def spectra(self, rots: np.ndarray) -> np.ndarray:
        """Unfiltered projection spectra ``(B, 2h, h + 1)`` complex64 (centre at pixel 0,
        edge mean subtracted, as the engine's projections) for rotations ``(B, 3, 3)``."""
        h, g = self.box, self.g
        sl = extract_slices(self.fvol, np.asarray(rots, np.float64), h, self.scale)
        p = sfft.irfft2(sl, s=(h, h), axes=(-2, -1), workers=-1)
        subtract_edge_mean(p)
        big = np.zeros((len(p), g, g), np.float32)
        e, t = h // 2, h - h // 2
        # wrap layout: the centre stays at pixel 0, the box's halves at both ends
        big[:, :e, :e] = p[:, :e, :e]
        big[:, :e, g - t:] = p[:, :e, e:]
        big[:, g - t:, :e] = p[:, e:, :e]
        big[:, g - t:, g - t:] = p[:, e:, e:]
        return sfft.rfft2(big, axes=(-2, -1), workers=-1).astype(np.complex64)

    def normalised(self, spec: np.ndarray, filt: np.ndarray) -> np.ndarray:
        """Filtered spectra scaled to unit (Hermitian-weighted) norm, ``(B, 2h, h + 1)``."""
        f = spec * filt
        e = np.sqrt(np.einsum("bij,j->b", (f.real**2 + f.imag**2), self.weights))
        return (f / np.where(e > 0, e, 1.0)[:, None, None]).astype(np.complex64)

    def rho(self, ref: np.ndarray, grid: np.ndarray, planes) -> np.ndarray:
        """``rho`` ``(n_ref, B, len(planes))`` of unit references ``(n_ref, 2h, h+1)`` with
        grid spectra ``grid`` ``(B, 2h, h+1)`` (unfiltered) at the defocus planes ``planes``."""
        out = np.empty((len(ref), len(grid), len(planes)), np.float32)
        rw = np.conj(ref * self.weights).reshape(len(ref), -1)
        for i, d in enumerate(planes):
            t = self.normalised(grid, self.filters[d]).reshape(len(grid), -1)
            out[:, :, i] = (rw @ t.T).real
        return out

    def cc_max_map(self, ref: np.ndarray, grid: np.ndarray, plane: int) -> np.ndarray:
        """Largest normalised CC over ``grid`` spectra at each shift: ``(2h, 2h)`` float32 for
        one unit reference ``ref`` ``(2h, h+1)`` (shift 0 at pixel 0)."""
        g = self.g
        out = np.full((g, g), -np.inf, np.float32)
        for c in range(0, len(grid), _CHUNK):
            t = self.normalised(grid[c:c + _CHUNK], self.filters[plane])
            cc = sfft.irfft2(np.conj(t) * ref, s=(g, g), axes=(-2, -1), workers=-1) * (g * g)
            np.maximum(out, cc.max(axis=0), out=out)
        return out


def _quat(rots: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation  # noqa: PLC0415

    return Rotation.from_matrix(rots).as_quat()


def _radial_max(m: np.ndarray) -> np.ndarray:
    """Largest value of a wrap-layout map ``(g, g)`` at each integer distance ``0..g/2``."""
    g = m.shape[0]
    f = np.fft.fftfreq(g, 1.0 / g)
    r = np.rint(np.hypot(f[:, None], f[None, :])).astype(int).ravel()
    out = np.full(g // 2 + 1, -np.inf)
    keep = r <= g // 2
    np.maximum.at(out, r[keep], m.ravel()[keep])
    return out


def self_inflation(volume, template_pixel_a: float, box: int, pixel_size_a: float,
                   ctf: CTFParams, whitening, defocus_offsets_a, orientations_deg,
                   n_ref: int = _N_REF, seed: int = 0, step_deg: float | None = None,
                   stop=None) -> dict:
    """Estimate ``kappa`` and the side-lobe profile (see the module notes) for a search grid.

    orientations_deg: the grid's ZYZ angles ``(n, 3)``; step_deg: its angular step (sets
    the "near" neighbourhood; default from the grid size). Returns ``{"kappa",
    "rho_max", "rho_mean", "rho_std"}`` (medians over the references), ``"kappa_refs"``,
    ``"rho_max_refs"`` (per reference: kappa differs up to 3x between views) and
    ``"lobe"``: ``lobe[d]``, d = 0 .. h px, the side-lobe height at distance ``d`` relative
    to the particle's own peak. Deterministic for a given ``seed``. stop: a callable checked
    between chunks of work; when it returns True, :class:`~napari_2dtm.errors.Cancelled`.
    """
    def check():
        if stop is not None and stop():
            raise Cancelled("search cancelled")

    from scipy.spatial.transform import Rotation  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    sm = SelfMatch(volume, template_pixel_a, box, pixel_size_a, ctf, whitening, defocus_offsets_a)
    ori = np.asarray(orientations_deg, np.float64)
    rots = euler_to_matrix(ori[:, 0], ori[:, 1], ori[:, 2])
    n, dfs = len(rots), sm.defocus_offsets_a
    n_df = len(dfs)
    if step_deg is None:
        step_deg = float(np.degrees((8 * np.pi**2 / max(n, 1)) ** (1 / 3)))
    q = _quat(rots)

    ref_rots = Rotation.random(n_ref, random_state=rng.integers(2**31)).as_matrix()
    ref_df = rng.uniform(dfs.min(), dfs.max(), n_ref) if n_df > 1 else np.zeros(n_ref)
    ref_spec = sm.spectra(ref_rots)
    refs = np.stack([sm.normalised(ref_spec[i:i + 1], sm.filter(ref_df[i]))[0]
                     for i in range(n_ref)])
    # far: (orientation, plane) pairs drawn uniformly, shared by all references
    n_pairs = n * n_df
    pick = np.sort(rng.choice(n_pairs, size=min(n_pairs, _FAR_SAMPLE), replace=False))
    far_o, far_d = pick // n_df, pick % n_df
    uo, inv = np.unique(far_o, return_inverse=True)
    far_rho = np.empty((n_ref, len(pick)), np.float32)
    for c in range(0, len(uo), _CHUNK):
        check()
        spec = sm.spectra(rots[uo[c:c + _CHUNK]])
        sel = np.flatnonzero((inv >= c) & (inv < c + _CHUNK))
        for d in np.unique(far_d[sel]):
            s_d = sel[far_d[sel] == d]
            far_rho[:, s_d] = sm.rho(refs, spec[inv[s_d] - c], [d])[:, :, 0]

    kappas, maxes, means, stds, nears = [], [], [], [], []
    qr = _quat(ref_rots)
    for i in range(n_ref):
        check()
        ang = np.degrees(2 * np.arccos(np.clip(np.abs(q @ qr[i]), 0, 1)))
        near = np.flatnonzero(ang < 2.5 * step_deg)
        nears.append(near)
        near_rho = (sm.rho(refs[i:i + 1], sm.spectra(rots[near]), range(n_df))[0].ravel()
                    if len(near) else np.zeros(0))
        fr = far_rho[i][~np.isin(far_o, near)].astype(np.float64)
        w_far = (n_pairs - near_rho.size) / max(fr.size, 1)
        tot = near_rho.size + w_far * fr.size
        mean = (near_rho.sum() + w_far * fr.sum()) / tot
        var = max((np.square(near_rho).sum() + w_far * np.square(fr).sum()) / tot - mean**2, 0.0)
        mx = max(near_rho.max(initial=-1.0), fr.max(initial=-1.0))
        kappas.append(var / max(mx - mean, 1e-6) ** 2)
        maxes.append(mx)
        means.append(mean)
        stds.append(np.sqrt(var))

    # side lobes: a few references against the near set and a large sample (the largest
    # match of a shifted view is what counts: a small sample would miss it), own plane
    lobe_pick = np.sort(rng.choice(n, size=min(n, _LOBE_SAMPLE), replace=False))
    lobe_spec = sm.spectra(rots[lobe_pick])  # shared by the references
    lobe = np.zeros(sm.box + 1)
    for i in range(min(_N_LOBE_REF, n_ref)):
        check()
        plane = int(np.argmin(np.abs(dfs - ref_df[i])))
        m = sm.cc_max_map(refs[i], lobe_spec, plane)
        extra = np.setdiff1d(nears[i], lobe_pick)
        if extra.size:
            np.maximum(m, sm.cc_max_map(refs[i], sm.spectra(rots[extra]), plane), out=m)
        prof = _radial_max(m)[: sm.box + 1]
        if prof[0] > 0:
            lobe = np.maximum(lobe, np.clip(prof / prof[0], 0, 1))
    return {
        "kappa": float(np.median(kappas)),
        "rho_max": float(np.median(maxes)),
        "rho_mean": float(np.median(means)),
        "rho_std": float(np.median(stds)),
        "kappa_refs": [float(k) for k in kappas],
        "rho_max_refs": [float(v) for v in maxes],
        "lobe": [float(v) for v in lobe],
        "n_ref": int(n_ref),
    }
