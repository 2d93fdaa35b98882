"""Particles for model refinement: whitened patches around the hits of micrographs.

Each micrograph is prepared as the search prepares it (outliers clipped, resampled to
the search pixel size, whitened: :func:`napari_2dtm.core.filters.prepare_image`); each
hit gives a ``P x P`` patch whose centre pixel is the hit's search pixel (its sub-pixel
rest becomes the particle's starting shift). ``P`` holds the model's box plus the CTF
delocalisation (:func:`patch_size`), one size for every micrograph so that all particles
share one set of frequency points.

Particles alternate into a work half (``half == 1``, the one the model is fitted to) and
a free half (``half == 2``, only scored), as R-free: in the order given, so neighbours on
a micrograph fall in different halves.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import scipy.fft as sfft

from napari_2dtm.core.ctf import CTFParams, wavelength_a
from napari_2dtm.core.filters import prepare_image
from napari_2dtm.core.geometry import euler_to_matrix
from napari_2dtm.core.pose_refine import extract_patch
from napari_2dtm.errors import InputError

from .forward import ParticleBatch, frequency_points, particle_filter

__all__ = ["ParticleData", "prepare_particles", "MicrographHits"]


@dataclasses.dataclass
class MicrographHits:
    """One micrograph and its hits: image ``(ny, nx)`` at ``pixel_size_a``, CTF, hits (x, y
    in its pixels, phi/theta/psi in degrees, optionally defocus_a), a name."""

    image: np.ndarray
    pixel_size_a: float
    ctf: CTFParams
    hits: pd.DataFrame
    name: str = "micrograph.mrc"


@dataclasses.dataclass
class ParticleData:
    """Everything refinement needs about the particles.

    batch: the :class:`ParticleBatch` on every kept frequency; patches ``(Np, P, P)``
    float32 (whitened, search pixels); whitening: per micrograph, on the ``(P, P // 2 + 1)``
    grid; ctfs: per micrograph; mic ``(Np,)`` its micrograph; delta_a ``(Np,)`` the
    defocus offset from its micrograph's CTF; table: micrograph name, hit index, x, y
    (input pixels), phi, theta, psi, defocus_a, half; binning ``(Np,)`` search / input
    pixel; rows, cols ``(Np,)`` the patch centres (search pixels)."""

    batch: ParticleBatch
    patches: np.ndarray
    whitening: list
    ctfs: list
    mic: np.ndarray
    delta_a: np.ndarray
    table: pd.DataFrame
    binning: np.ndarray
    rows: np.ndarray
    cols: np.ndarray

    @property
    def work(self) -> np.ndarray:
        return np.flatnonzero(self.table["half"].to_numpy() == 1)

    @property
    def free(self) -> np.ndarray:
        return np.flatnonzero(self.table["half"].to_numpy() == 2)


def patch_size(box: int, ctf: CTFParams, pixel_size_a: float) -> int:
    """The model's box plus its CTF delocalisation at Nyquist on each side, a fast even
    FFT length: all of a particle's signal, and no more background than that."""
    deloc = wavelength_a(ctf.voltage_kv) * abs(max(ctf.defocus1_a, ctf.defocus2_a)) * (
        0.5 / pixel_size_a) / pixel_size_a
    size = sfft.next_fast_len(int(box) + 2 * int(math.ceil(deloc)) + 8, real=True)
    return size + size % 2


def prepare_particles(micrographs, box: int, vol_size: int, high_res_limit_a: float | None,
                      band_a: float | None = None) -> ParticleData:
    """Patches of every hit of ``micrographs`` (:class:`MicrographHits`).

    box: the model's box at the search pixel size; vol_size: the groups' Fourier volume
    size (its safe sphere bounds the frequencies); high_res_limit_a: the search's (the
    same search pixel size and whitening); band_a: keep frequencies up to 1 / band_a."""
    mics = list(micrographs)
    if not mics:
        raise InputError("no micrographs with hits given")
    prepared, pxs = [], set()
    for m in mics:
        missing = [c for c in ("x", "y", "phi", "theta", "psi") if c not in m.hits.columns]
        if missing:
            raise InputError(f"{m.name}: the hits have no poses (missing columns {missing})")
        if len(m.hits) == 0:
            continue
        img = np.asarray(m.image, np.float32)
        if img.ndim != 2 or not np.all(np.isfinite(img)):
            raise InputError(f"{m.name}: the micrograph must be a finite 2D image")
        prep = prepare_image(img, m.pixel_size_a, high_res_limit_a)
        prepared.append((m, prep))
        pxs.add(round(prep.pixel_size_a, 6))
    if not prepared:
        raise InputError("the micrographs have no hits")
    if len(pxs) > 1:
        raise InputError(f"the micrographs come to different search pixel sizes {sorted(pxs)} A;"
                         " refine micrographs of one pixel size together")
    px = prepared[0][1].pixel_size_a
    size = max(patch_size(box, m.ctf, px) for m, _ in prepared)
    scale = vol_size / float(size)
    idx, kx, ky, k2, w = frequency_points(size, px, scale, vol_size, band_a)
    n = sum(len(m.hits) for m, _ in prepared)
    patches = np.empty((n, size, size), np.float32)
    img = np.empty((n, len(idx)), np.complex128)
    filt = np.empty((n, len(idx)), np.float64)
    rot = np.empty((n, 3, 3))
    shift = np.empty((n, 2))
    mic = np.empty(n, np.int64)
    delta = np.empty(n)
    binning = np.empty(n)
    rows = np.empty(n, np.int64)
    cols = np.empty(n, np.int64)
    whitening, ctfs, table = [], [], []
    p = 0
    for j, (m, prep) in enumerate(prepared):
        white = prep.whitening.on_grid((size, size), px)
        whitening.append(white)
        ctfs.append(m.ctf)
        b = px / m.pixel_size_a
        h = m.hits.reset_index(drop=True)
        ny, nx = prep.image.shape
        for i, r in enumerate(h.itertuples(index=False)):
            xs, ys = float(r.x) / b, float(r.y) / b
            row, col = int(round(ys)), int(round(xs))
            if not (0 <= row < ny and 0 <= col < nx):
                raise InputError(f"{m.name}: hit {i} at x={r.x:.1f}, y={r.y:.1f} px lies outside"
                                 f" the micrograph")
            patches[p] = extract_patch(prep.image, row, col, size, np.float32)
            spec = np.fft.rfft2(np.fft.ifftshift(patches[p].astype(np.float64)))
            img[p] = spec.ravel()[idx]
            df = getattr(r, "defocus_a", None)
            delta[p] = (float(df) - m.ctf.defocus_mean_a
                        if df is not None and np.isfinite(df) else 0.0)
            filt[p] = particle_filter(m.ctf, white, idx, kx, ky, size, px, delta[p])
            rot[p] = euler_to_matrix(r.phi, r.theta, r.psi)
            shift[p] = (xs - col, ys - row)
            mic[p], binning[p], rows[p], cols[p] = j, b, row, col
            table.append({"micrograph": m.name, "hit": i, "x": float(r.x), "y": float(r.y),
                          "phi": float(r.phi), "theta": float(r.theta), "psi": float(r.psi),
                          "defocus_a": m.ctf.defocus_mean_a + delta[p]})
            p += 1
    t = pd.DataFrame(table)
    t["half"] = 1 + (np.arange(n) % 2)
    batch = ParticleBatch(size, px, kx, ky, k2, w, img, filt, rot, shift, idx)
    return ParticleData(batch, patches, whitening, ctfs, mic, delta, t, binning, rows, cols)
