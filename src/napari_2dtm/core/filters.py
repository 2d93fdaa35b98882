"""Micrograph preparation: Fourier resampling, whitening, normalisation.

All frequencies are physical (1/Angstrom) so one whitening curve serves the image and
every template projection, whatever their grid sizes.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import scipy.fft as sfft

__all__ = ["resample_plan", "fourier_resample", "WhiteningFilter", "prepare_image", "PreparedImage"]


def resample_plan(pixel_size_a: float, high_res_limit_a: float | None, max_den: int = 32):
    """Rational binning ``a / c`` so the search pixel is ``pixel_size_a * a / c``.

    The search pixel size is about ``high_res_limit_a / 2`` (Nyquist at the limit), never
    smaller than the input pixel. Blocks of ``a`` input pixels become ``c`` search pixels
    exactly, so both axes share one pixel size and pixel 0 stays pixel 0.
    """
    if high_res_limit_a is None or high_res_limit_a <= 2 * pixel_size_a * (1 + 1e-6):
        return 1, 1
    b = high_res_limit_a / (2.0 * pixel_size_a)
    f = Fraction(b).limit_denominator(max_den)
    if f <= 1:
        return 1, 1
    return f.numerator, f.denominator


def _crop_indices(n_in: int, n_out: int) -> np.ndarray:
    """Input fft indices of the frequencies kept when cropping ``n_in`` -> ``n_out``."""
    k = np.fft.fftfreq(n_out, 1.0 / n_out).astype(int)
    return np.where(k < 0, k + n_in, k)


def fourier_resample(image: np.ndarray, block_in: int, block_out: int) -> np.ndarray:
    """Fourier-crop a 2D image by ``block_out / block_in`` (edges padded with the mean)."""
    if block_in == block_out:
        return np.asarray(image, np.float32)
    ny, nx = image.shape
    py, px = -(-ny // block_in) * block_in, -(-nx // block_in) * block_in
    oy, ox = py // block_in * block_out, px // block_in * block_out
    work = np.full((py, px), float(image.mean()), np.float32)
    work[:ny, :nx] = image
    f = sfft.rfft2(work, workers=-1)
    f = f[_crop_indices(py, oy)][:, : ox // 2 + 1]
    out = sfft.irfft2(f, s=(oy, ox), workers=-1) * (oy * ox / (py * px))
    return out.astype(np.float32)


@dataclasses.dataclass
class WhiteningFilter:
    """Radial whitening filter ``W(|k|) = 1 / sqrt(P(|k|))``, max 1, ``W(0) = 0``.

    k_a: bin centres in 1/Angstrom; w: filter values.
    """

    k_a: np.ndarray
    w: np.ndarray

    @classmethod
    def from_spectrum(cls, power: np.ndarray, shape, pixel_size_a: float):
        """Fit from an rfft2 power spectrum ``(ny, nx//2+1)`` of an image of ``shape``."""
        ny, nx = shape
        ky = np.fft.fftfreq(ny, d=pixel_size_a)[:, None]
        kx = np.fft.rfftfreq(nx, d=pixel_size_a)[None, :]
        k = np.sqrt(kx * kx + ky * ky)
        dk = 1.0 / (max(ny, nx) * pixel_size_a)
        nbins = int(math.ceil(k.max() / dk)) + 2
        idx = np.minimum(np.rint(k / dk).astype(int), nbins - 1)
        wts = np.ones_like(k)
        wts[:, 1:] = 2.0  # Hermitian pairs count twice
        if nx % 2 == 0:
            wts[:, -1] = 1.0
        num = np.bincount(idx.ravel(), (power * wts).ravel(), nbins)
        den = np.bincount(idx.ravel(), wts.ravel(), nbins)
        good = den > 0
        good[0] = False
        kc = np.arange(nbins) * dk
        p = np.interp(kc, kc[good], num[good] / den[good])  # fill empty bins (corners)
        p = np.maximum(p, p.max() * 1e-12 + 1e-30)
        w = 1.0 / np.sqrt(p)
        w[0] = 0.0
        w /= w[1:].max()
        return cls(kc, w.astype(np.float64))

    def __call__(self, k_a):
        """Filter values at spatial frequencies ``k_a`` (1/Angstrom, any shape)."""
        return np.interp(k_a, self.k_a, self.w, right=self.w[-1]).astype(np.float32)

    def on_grid(self, shape, pixel_size_a: float) -> np.ndarray:
        ny, nx = shape
        ky = np.fft.fftfreq(ny, d=pixel_size_a)[:, None]
        kx = np.fft.rfftfreq(nx, d=pixel_size_a)[None, :]
        out = self(np.sqrt(kx * kx + ky * ky))
        out[0, 0] = 0.0
        return out


@dataclasses.dataclass
class PreparedImage:
    """Whitened, unit-variance micrograph at the search pixel size.

    image: ``(ny, nx)`` float32, search pixel size; whitening: its filter;
    pixel_size_a: search pixel size; binning: (a, c) with search px = input px * a / c.
    """

    image: np.ndarray
    whitening: WhiteningFilter
    pixel_size_a: float
    input_pixel_size_a: float
    binning: tuple[int, int]


def prepare_image(
    image: np.ndarray,
    pixel_size_a: float,
    high_res_limit_a: float | None = None,
    outlier_sigma: float = 5.0,
) -> PreparedImage:
    """Clip outliers, resample to the search pixel size, whiten and normalise."""
    img = np.asarray(image, np.float32)
    mu, sd = float(img.mean()), float(img.std())
    if sd > 0 and outlier_sigma:
        # Hot pixels and specks dominate the spectrum; cisTEM replaces them by the mean.
        img = np.where(np.abs(img - mu) > outlier_sigma * sd, mu, img).astype(np.float32)
    a, c = resample_plan(pixel_size_a, high_res_limit_a)
    img = fourier_resample(img, a, c)
    px = pixel_size_a * a / c
    img = img - img.mean()
    f = sfft.rfft2(img, workers=-1)
    wf = WhiteningFilter.from_spectrum(np.abs(f) ** 2, img.shape, px)
    f *= wf.on_grid(img.shape, px)
    out = sfft.irfft2(f, s=img.shape, workers=-1).astype(np.float32)
    out -= out.mean()
    sd = float(out.std())
    if sd > 0:
        out /= sd
    return PreparedImage(out, wf, px, pixel_size_a, (a, c))
