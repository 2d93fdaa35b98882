"""The :class:`Template`: a potential on a cubic grid with its pixel size, and reading one from a map.

The engine asks only for a :class:`Template`; where it came from is recorded in
``source`` (and, for computed templates, ``params``) for ``search.json``. Maps are read
here from MRC-style files; atomic models are converted by
:mod:`napari_2dtm.templates.model`, and :func:`napari_2dtm.templates.load.load_template`
picks between the two by file suffix. This module imports neither, so the class can be
used by every other templates module without an import circle.

Pixel sizes. A map's voxel size is its header's, unless the user gives one
(``--template-pixel-size`` / ``template_pixel_size_a``), which wins; a map with no (or a
zero) header voxel size and none given is refused in one line. A template whose voxel
size differs from the micrograph's is brought to it by :func:`resample_template`, in
Fourier space: the centred spectrum of the ``n^3`` map is cropped (coarser: the ideal
low-pass, no aliasing) or zero-padded (finer) to ``m^3`` with
``m = n * template_px / micrograph_px``, i.e. the box is resized by the pixel-size ratio
and the physical extent ``n * template_px`` is kept. ``m`` must be an integer, so the map
is first zero-padded in real space to the ``n' >= n`` for which ``n' * template_px /
micrograph_px`` is nearest an integer ``m'`` (exact for rational ratios such as 8/3.5),
resampled to ``m'`` and cut back to the even box that holds the particle; the pixel size
recorded is ``n' * template_px / m'`` (within 1e-4 of the micrograph's in practice; the
projector's scale takes up the rest). Voxel sizes within 0.1 % are left as they are. Values are kept (a constant map stays that
constant; the potential is an intensive quantity), and the particle centre stays at
voxel ``m // 2``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mrcfile
import numpy as np
import scipy.fft as sfft

from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import read_map

__all__ = ["Template", "fourier_resample", "resample_template", "template_from_map"]

#: Relative pixel-size difference below which a template is used as it is (float32
#: headers, and a resampled template resampled again; the projector's scale takes up
#: the rest).
SAME_PIXEL_RTOL = 1e-3


@dataclasses.dataclass
class Template:
    """A 3D template.

    volume: ``(n, n, n)`` float32 potential, indexed ``[z, y, x]``, particle centre at
        voxel ``n // 2`` along each axis.
    pixel_size_a: voxel size in Angstrom.
    source: where it came from (file path or description), for ``search.json``.
    """

    volume: np.ndarray
    pixel_size_a: float
    source: str = "array"
    params: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        v = np.asarray(self.volume, dtype=np.float32)
        if v.ndim != 3 or len(set(v.shape)) != 1:
            raise InputError(f"{self.source}: template must be a cubic 3D map, got shape {v.shape}")
        if not np.all(np.isfinite(v)):
            raise InputError(f"{self.source}: template contains NaN or infinite values")
        if not (np.isfinite(self.pixel_size_a) and self.pixel_size_a > 0):
            raise InputError(f"{self.source}: template pixel size must be > 0, got {self.pixel_size_a}")
        self.volume = v

    @property
    def box(self) -> int:
        return self.volume.shape[0]


def _header_pixel_size(path) -> tuple[bool, float | None]:
    """``(readable, voxel size or None when zero/missing)`` from the header alone."""
    try:
        with mrcfile.open(path, header_only=True, permissive=True) as m:
            vs = float(m.voxel_size.x)
    except Exception:  # noqa: BLE001 - junk: read_map says what is wrong with the file
        return False, None
    return True, (vs if np.isfinite(vs) and vs > 0 else None)


def template_from_map(path, pixel_size_a: float | None = None) -> Template:
    """Read a cubic map file as a Template at its header's voxel size, or at
    ``pixel_size_a`` when given (the user's ``--template-pixel-size`` wins)."""
    if pixel_size_a is None and Path(path).is_file():
        readable, header_px = _header_pixel_size(path)
        if readable and header_px is None:
            raise InputError(f"{path}: template pixel size is zero or missing in the header; "
                             "give it with --template-pixel-size (template_pixel_size_a)")
    vol, px = read_map(path, pixel_size_a)
    return Template(vol, px, source=str(path), params={"kind": "map", "map_pixel_size_a": px})


def fourier_resample(volume: np.ndarray, m: int) -> np.ndarray:
    """The cubic ``volume`` (``n^3``, centre at ``n // 2``) resampled to ``m^3`` voxels
    over the same extent by cropping or zero-padding its centred spectrum; values are
    kept (a constant stays that constant) and the centre moves to ``m // 2``."""
    vol = np.asarray(volume, np.float32)
    n = vol.shape[0]
    if m == n:
        return vol.copy()
    ft = sfft.fftshift(sfft.fftn(sfft.ifftshift(vol), workers=-1))
    c = min(n, m)
    src = slice(n // 2 - c // 2, n // 2 - c // 2 + c)
    dst = slice(m // 2 - c // 2, m // 2 - c // 2 + c)
    out = np.zeros((m, m, m), ft.dtype)
    out[dst, dst, dst] = ft[src, src, src]
    del ft
    res = sfft.fftshift(sfft.ifftn(sfft.ifftshift(out), workers=-1)).real
    return (res * (m / n) ** 3).astype(np.float32)


def _padded_box(n: int, ratio: float) -> tuple[int, int]:
    """``(n', m')``: the real-space box ``n' in [n, 2n]`` whose resampled size
    ``n' * ratio`` is nearest an integer ``m'`` (the smallest such ``n'`` on ties)."""
    best = None
    for n2 in range(n, 2 * n + 1):
        m2 = max(2, round(n2 * ratio))
        err = abs(n2 * ratio / m2 - 1.0)
        if best is None or err < best[0] - 1e-12:
            best = (err, n2, m2)
        if err < 1e-7:
            break
    return best[1], best[2]


def resample_template(template: Template, pixel_size_a: float) -> Template:
    """``template`` at the voxel size ``pixel_size_a`` (Fourier crop/pad; see the module
    notes); the same object when its voxel size is already that within
    :data:`SAME_PIXEL_RTOL`."""
    px = float(pixel_size_a)
    t_px = float(template.pixel_size_a)
    if not (np.isfinite(px) and px > 0):
        raise InputError(f"{template.source}: pixel size to resample to must be > 0, got {px}")
    ratio = t_px / px
    if abs(ratio - 1.0) < SAME_PIXEL_RTOL:
        return template
    n = template.box
    n2, m2 = _padded_box(n, ratio)
    vol = template.volume
    if n2 > n:
        padded = np.zeros((n2, n2, n2), np.float32)
        o = n2 // 2 - n // 2
        padded[o:o + n, o:o + n, o:o + n] = vol
        vol = padded
    res = fourier_resample(vol, m2)
    new_px = n2 * t_px / m2
    m = int(np.ceil(n * t_px / new_px - 1e-6))
    m += m % 2  # the even box holding the original extent, centre kept at m // 2
    if m <= m2:
        o = m2 // 2 - m // 2
        res = res[o:o + m, o:o + m, o:o + m]
    else:
        out = np.zeros((m, m, m), np.float32)
        o = m // 2 - m2 // 2
        out[o:o + m2, o:o + m2, o:o + m2] = res
        res = out
    params = {**template.params, "resampled_from_pixel_size_a": t_px,
              "resampled_from_box": n}
    return Template(res, new_px, source=template.source, params=params)
