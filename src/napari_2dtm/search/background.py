"""The default detection statistic: a z-score whose spread the particle does not inflate.

The per-pixel z-score ``(MIP - mean) / std`` (Rickgauer et al. 2017; cisTEM's and
Leopard-EM's "scaled MIP") follows a background that changes across a lamella, and it
discounts pixels where many orientations correlate (membranes, contamination edges,
protein clutter). But at a true particle ``std`` is inflated by the particle itself:
``var = sigma^2 + kappa * (MIP - mean)^2`` (:mod:`napari_2dtm.search.self_match`), so the
z-score of a particle of SNR ``A`` grows like ``A / sqrt(1 + kappa A^2)`` and strong,
well-matched particles fall behind weaker ones and their neighbours' side lobes. The
SNR ``MIP / sigma`` with one global sigma has no such saturation but cannot follow a
thickness gradient and scores every bright membrane.

**zbg** (the background z-score) keeps what is right in both::

    zbg = (MIP - mean) / max(sigma_bg, sqrt(std^2 - kappa * (MIP - mean)^2))

* ``kappa``: the spread a true particle adds to its own pixel, predicted from the
  template and the search grid alone; removing it leaves the spread of everything that
  is *not* this particle at this pixel;
* ``sigma_bg``: the local background spread of one correlation, a robust spatial
  estimate over a window several particles wide (:func:`background_spread`): the median
  of ``std^2`` plus the robust variance of ``mean`` (neighbouring grid poses correlate, so
  part of the noise variance moves the pixel's mean, not its std). A particle, a few
  neighbours or a membrane crossing the window do not move it; a thickness gradient
  does. It is a floor: nothing is more significant than the background noise allows.

At a true particle ``zbg ~= (MIP - mean) / sigma_bg``, the particle's SNR in its own
neighbourhood's noise, unsaturated. On clutter whose orientation profile is broad, the
spread beyond ``kappa`` stays in the denominator. Under noise alone each trial is close
to N(0, 1) and the Gaussian false-alarm threshold of :mod:`napari_2dtm.search.detect`
applies (conservatively, the trials being correlated).

The hits rule adds two checks (``docs/detection.md``): contamination, whose image energy
no particle explains (:func:`contamination_mask`), and side lobes of a stronger
neighbour (:func:`napari_2dtm.search.detect.explain_away`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["background_spread", "zbg_map", "window_px_for", "contamination_mask", "detection_maps",
           "search_detection_maps", "search_self_match", "live_zbg", "LOBE_EXTRA_SIGMA"]


def window_px_for(particle_radius_px: float) -> int:
    """The background window (search px): eight particle radii, at least 32 px."""
    return int(max(32, math.ceil(8 * particle_radius_px)))


def _tiles(values: np.ndarray, valid: np.ndarray, window_px: int, stat) -> np.ndarray:
    """``stat`` (reducing the last axis, NaN-aware) of the valid pixels of ``values`` in
    tiles of a quarter window, then the median of 5 x 5 tiles (so one tile covered by a
    particle or a membrane does not move it), interpolated bilinearly back to every pixel
    ``(ny, nx)`` float64. Tiles with no valid pixel take the global median."""
    import warnings  # noqa: PLC0415

    ny, nx = values.shape
    tile = max(4, int(window_px) // 4)
    ty, tx = -(-ny // tile), -(-nx // tile)
    pad = np.full((ty * tile, tx * tile), np.nan, np.float64)
    pad[:ny, :nx] = np.where(valid, values, np.nan)
    blocks = pad.reshape(ty, tile, tx, tile).transpose(0, 2, 1, 3).reshape(ty, tx, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN tiles
        per_tile = stat(blocks)
        win = np.lib.stride_tricks.sliding_window_view(np.pad(per_tile, 2, mode="edge"), (5, 5))
        smooth = np.nanmedian(win.reshape(ty, tx, 25), axis=-1)
        glob = float(np.nanmedian(per_tile)) if np.isfinite(per_tile).any() else 1.0
    smooth = np.where(np.isfinite(smooth), smooth, glob)
    # tile centres -> pixels (bilinear, clamped at the edges)
    yc = np.clip((np.arange(ny) + 0.5) / tile - 0.5, 0, ty - 1)
    xc = np.clip((np.arange(nx) + 0.5) / tile - 0.5, 0, tx - 1)
    yy, xx = np.meshgrid(yc, xc, indexing="ij")
    return ndimage.map_coordinates(smooth, [yy, xx], order=1, mode="nearest")


def _robust_var(blocks: np.ndarray) -> np.ndarray:
    med = np.nanmedian(blocks, axis=-1, keepdims=True)
    return (1.4826 * np.nanmedian(np.abs(blocks - med), axis=-1)) ** 2


def background_spread(std: np.ndarray, valid: np.ndarray, window_px: int,
                      mean: np.ndarray | None = None) -> np.ndarray:
    """Robust local background spread ``(ny, nx)`` float32 of per-pixel maps (see
    :func:`_tiles`): the median of ``std^2`` and, with ``mean``, plus the robust (MAD)
    variance of ``mean`` over the same tiles.

    With ``mean`` this is the spread of one correlation under the local noise: at a pixel
    the correlations of neighbouring grid poses are correlated, so the per-pixel ``std``
    misses the share of the variance that moves the pixel's ``mean`` (about 12 % of it,
    measured on white noise); the spatial scatter of ``mean`` holds that share."""
    var = _tiles(np.asarray(std, np.float64) ** 2, valid, window_px,
                 lambda b: np.nanmedian(b, axis=-1))
    if mean is not None:
        var = var + _tiles(np.asarray(mean, np.float64), valid, window_px, _robust_var)
    return np.sqrt(var).astype(np.float32)


def zbg_map(mip: np.ndarray, mean: np.ndarray, std: np.ndarray, sigma_bg: np.ndarray,
            kappa: float, valid: np.ndarray) -> np.ndarray:
    """``zbg`` ``(ny, nx)`` float32 (0 outside ``valid``) from the per-pixel maps (see the
    module notes); kappa: :func:`napari_2dtm.search.self_match.self_inflation`."""
    h = mip.astype(np.float64) - mean
    s2 = std.astype(np.float64) ** 2 - float(kappa) * h * h
    den = np.maximum(sigma_bg.astype(np.float64), np.sqrt(np.maximum(s2, 0.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(valid & (den > 0), h / den, 0.0)
    return z.astype(np.float32)


#: a peak near a stronger one is its side lobe unless it stands this many sigma_bg above
#: the lobe on top of the typical noise maximum
LOBE_EXTRA_SIGMA = 0.5


#: image energy, in units of what the strongest particle nearby can carry, beyond which a
#: region is contamination
ENERGY_CORE = 3.0


def contamination_mask(image: np.ndarray, mip, mean, sigma_bg, valid, radius_px: int,
                       rho_max: float, window_px: int) -> np.ndarray:
    """Pixels whose template footprint touches contamination: bool ``(ny, nx)``.

    image: the whitened, normalised search image. Around each pixel, within the disk of
    ``N`` pixels of ``radius_px`` (a particle's extent), the image carries an excess energy
    ``E = sum(image^2 / v_bg - 1)`` over the local background variance ``v_bg``. A particle of
    matched-filter SNR ``A`` carries at most ``A^2`` (the whitened particle's energy), and
    ``A <= H / rho_max`` with ``H`` the largest ``(MIP - mean) / sigma_bg`` within the disk:
    measured at planted particles, ``(E - 5 sqrt(2N)) / A^2`` stays below 1.6 (below 0.5
    for isolated ones), however strong. Ice contamination and carbon edges carry far more
    energy than any particle there explains (3.5 to 7 on simulated blobs). The core is
    ``E - 5 sqrt(2N) > ENERGY_CORE * max(A^2, 1)``; as ``E`` sums the particle's disk, the
    rim of a blob, where the template half overlaps it, is left out with it. Stretches of
    strong edge-on membranes can qualify too."""
    from scipy import signal  # noqa: PLC0415

    img = np.asarray(image, np.float64)
    r = max(1, int(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = yy * yy + xx * xx <= r * r
    n = float(disk.sum())
    local = signal.fftconvolve(img * img, disk / n, mode="same")
    v_bg = np.maximum(_tiles(local, np.ones(img.shape, bool), window_px,
                             lambda b: np.nanmedian(b, axis=-1)), 1e-12)
    excess = (local / v_bg - 1.0) * n
    height = np.where(valid, (mip.astype(np.float64) - mean) / np.maximum(sigma_bg, 1e-12), 0.0)
    a2 = (ndimage.maximum_filter(height, size=2 * r + 1) / max(rho_max, 0.1)) ** 2
    # E sums the disk around each pixel: a pixel is marked as soon as its footprint takes
    # in enough of the contamination, so the rim goes with the blob without growing it
    return (excess - 5.0 * np.sqrt(2.0 * n) > ENERGY_CORE * np.maximum(a2, 1.0)) & valid


def detection_maps(maps: dict, valid: np.ndarray, self_match: dict,
                   particle_radius_px: float, image: np.ndarray) -> tuple[dict, dict]:
    """The default statistic's maps from a search's ``maps`` (mip, mean, std) and its
    whitened image ``image`` (for the contamination mask): ``zbg``,
    ``sigma_bg`` and ``excluded`` (contamination, 1 / 0) as float32 ``(ny, nx)``, and the
    record of how they were made (for ``search.json``; it carries the side-lobe profile
    the hit detection uses).

    self_match: :func:`napari_2dtm.search.self_match.self_inflation` of the search."""
    window = window_px_for(particle_radius_px)
    sigma_bg = background_spread(maps["std"], valid, window, maps["mean"])
    kappa = float(self_match["kappa"])
    zbg = zbg_map(maps["mip"], maps["mean"], maps["std"], sigma_bg, kappa, valid)
    radius = int(math.ceil(particle_radius_px))
    excl = contamination_mask(image, maps["mip"], maps["mean"], sigma_bg, valid, radius,
                              float(self_match["rho_max"]), window)
    out = {"zbg": zbg, "sigma_bg": sigma_bg, "excluded": excl.astype(np.float32)}
    # A side lobe is the neighbour's lobe plus this pixel's own noise maximum over the
    # grid: typically the median of (MIP - mean) / sigma_bg, spread about half a sigma.
    h = (maps["mip"].astype(np.float64) - maps["mean"]) / np.maximum(sigma_bg, 1e-12)
    noise_max = float(np.median(h[valid])) if valid.any() else 0.0
    record = {
        "statistic": "zbg = (MIP - mean) / max(sigma_bg, sqrt(std^2 - kappa (MIP - mean)^2))",
        "kappa": kappa, "rho_max": float(self_match["rho_max"]),
        "rho_mean": float(self_match["rho_mean"]), "n_ref": int(self_match.get("n_ref", 0)),
        "window_px": int(window), "contamination_radius_px": radius,
        "energy_core": ENERGY_CORE, "lobe": list(self_match.get("lobe", [])),
        "lobe_n_sigma": noise_max + LOBE_EXTRA_SIGMA,
    }
    return out, record


def search_self_match(search) -> dict:
    """The template's self-match on a :class:`~napari_2dtm.search.engine.Search`'s grid
    (:func:`~napari_2dtm.search.self_match.self_inflation`, nominal pixel-size plane),
    computed once per search."""
    sm = search._self_match
    if sm is None:
        import time  # noqa: PLC0415

        from .self_match import self_inflation  # noqa: PLC0415

        t0 = time.perf_counter()
        cfg, t = search.config, search.template
        sm = self_inflation(t.volume, t.pixel_size_a, search.box, search.pixel_size_a, cfg.ctf,
                            search.prepared.whitening, search.defocus_offsets_a,
                            search.orientations,
                            step_deg=max(cfg.out_of_plane_step_deg, cfg.in_plane_step_deg),
                            stop=lambda: search.cancelled)
        search._self_match = sm
        search._self_match_s = time.perf_counter() - t0
    return sm


def live_zbg(search, maps: dict, valid: np.ndarray) -> np.ndarray:
    """``zbg`` of a running search from its partial ``maps`` (mip, mean, std)."""
    sm = search_self_match(search)
    sigma_bg = background_spread(maps["std"], valid, window_px_for(search.particle_radius_px),
                                 maps["mean"])
    return zbg_map(maps["mip"], maps["mean"], maps["std"], sigma_bg, sm["kappa"], valid)


def search_detection_maps(search, maps: dict, valid: np.ndarray) -> tuple[dict, dict]:
    """:func:`detection_maps` of a finished :class:`~napari_2dtm.search.engine.Search`."""
    return detection_maps(maps, valid, search_self_match(search), search.particle_radius_px,
                          search.prepared.image)
