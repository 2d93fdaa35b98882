# size: one simulator, simulate_micrograph (~290 lines), whose steps share the local state of one image; splitting it would pass a dozen arrays between pieces.
"""Micrograph simulator with ground truth, for testing 2DTM searches.

Image model (see ``docs/templates.md``):

1. Each particle is an atomic model in a uniformly random orientation ``A`` (ZYZ angles,
   the RELION matrix of :func:`napari_2dtm.core.geometry.euler_to_matrix`): atom ``r`` moves to
   ``A @ (r - c)`` where ``c`` is the template's centre (``template_from_model(...,
   center="mass")``), so the template centre lands exactly on the particle position.
   Its projected potential (V*A) is computed *analytically*, independently of the search
   engine's Fourier-slice projector: every atom contributes the z-integral of its
   5-Gaussian potential (gemmi's electron scattering coefficients, plus the B-factor),
   sampled at the pixel centres. Particle centres are integer pixels.
2. Phase ``phi = sigma_e * V_proj`` (interaction constant at the CTF voltage), optional
   "ice" texture (low-pass filtered Gaussian noise) added to the phase.
3. Weak-phase image contrast ``c = 2 * (CTF * phi)`` with ``CTF = -sin(chi)`` of
   :func:`napari_2dtm.core.ctf.ctf_2d` (particles dark in under-focus; a template filtered by
   the same CTF correlates positively). The CTF is applied in Fourier space on a canvas
   padded by the CTF delocalisation, so nothing wraps around the image edges.
4. Intensity ``I = t(x) * (1 + c)`` with an optional linear transmission gradient ``t``.
5. Noise: ``exposure_e_per_a2=E``: ``image = Poisson(E * pixel^2 * I)`` (counts per
   pixel); ``snr=s``: ``image = I - 1 + N(0, sigma^2)`` with
   ``sigma^2 = var(particle contrast inside the particle boxes) / s``; neither: no noise.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_2dtm.core.ctf import CTFParams, ctf_2d, wavelength_a
from napari_2dtm.core.geometry import euler_to_matrix, matrix_to_euler, rotate_about_random_axes
from napari_2dtm.errors import InputError
from napari_2dtm.templates.atoms import _filter_atoms, read_atoms
from napari_2dtm.templates.model import (
    DEFAULT_BFACTOR_A2,
    VOLT_A2,
    _atom_radius_a,
    template_from_model,
    write_template_mrc,
)
from napari_2dtm.templates.template import Template

__all__ = [
    "SimulationResult",
    "simulate_micrograph",
    "write_simulation",
    "interaction_constant",
    "project_atoms",
    "perturbed_hits",
    "TRUTH_COLUMNS",
]

#: Columns of ``SimulationResult.truth`` shared with the engine's hits table, then extras.
TRUTH_COLUMNS = ["x", "y", "phi", "theta", "psi", "defocus_a", "class", "class_name"]


def interaction_constant(voltage_kv: float) -> float:
    """Relativistic interaction constant sigma_e in rad / (V * A)."""
    v = float(voltage_kv) * 1e3
    mc2 = 510998.95  # electron rest energy, eV
    lam = wavelength_a(voltage_kv)
    return 2.0 * math.pi / (lam * v) * (mc2 + v) / (2.0 * mc2 + v)


# --------------------------------------------------------------------------------------
# Analytic projection of atoms
# --------------------------------------------------------------------------------------

try:
    import numba

    @numba.njit(cache=True)
    def _splat(out, xs, ys, amp, alpha, rad):  # pragma: no cover - compiled
        ny, nx = out.shape
        ncomp = amp.shape[1]
        for i in range(xs.size):
            x = xs[i]
            y = ys[i]
            r = rad[i]
            x0 = max(int(math.ceil(x - r)), 0)
            x1 = min(int(math.floor(x + r)), nx - 1)
            y0 = max(int(math.ceil(y - r)), 0)
            y1 = min(int(math.floor(y + r)), ny - 1)
            if x1 < x0 or y1 < y0:
                continue
            wx = x1 - x0 + 1
            wy = y1 - y0 + 1
            ex = np.empty((ncomp, wx))
            ey = np.empty((ncomp, wy))
            for j in range(ncomp):
                a = alpha[i, j]
                for k in range(wx):
                    d = x0 + k - x
                    ex[j, k] = math.exp(-a * d * d)
                for k in range(wy):
                    d = y0 + k - y
                    ey[j, k] = amp[i, j] * math.exp(-a * d * d)
            for ky in range(wy):
                for kx in range(wx):
                    v = 0.0
                    for j in range(ncomp):
                        v += ey[j, ky] * ex[j, kx]
                    out[y0 + ky, x0 + kx] += v

except ImportError:  # pragma: no cover - numba is a dependency; keep a slow fallback
    numba = None

    def _splat(out, xs, ys, amp, alpha, rad):
        ny, nx = out.shape
        for i in range(xs.size):
            r = rad[i]
            x0, x1 = max(int(math.ceil(xs[i] - r)), 0), min(int(math.floor(xs[i] + r)), nx - 1)
            y0, y1 = max(int(math.ceil(ys[i] - r)), 0), min(int(math.floor(ys[i] + r)), ny - 1)
            if x1 < x0 or y1 < y0:
                continue
            dx = np.arange(x0, x1 + 1) - xs[i]
            dy = np.arange(y0, y1 + 1) - ys[i]
            ex = np.exp(-alpha[i][:, None] * dx[None] ** 2)
            ey = amp[i][:, None] * np.exp(-alpha[i][:, None] * dy[None] ** 2)
            out[y0 : y1 + 1, x0 : x1 + 1] += ey.T @ ex


@dataclasses.dataclass
class _AtomClass:
    """Per-structure arrays ready for projection (coordinates relative to the centre)."""

    rel_xyz: np.ndarray  # (N, 3) A, relative to the template centre
    amp: np.ndarray  # (N, 5) V*A at d = 0 for each Gaussian
    widths: np.ndarray  # (N, 5) b_i + B, A^2
    rad_a: np.ndarray  # (N,) cut-off radius, A


def _atom_class(atoms, center_a, bfactor_a2: float, use_model_bfactors: bool = False) -> _AtomClass:
    b = np.full(len(atoms), float(bfactor_a2))
    if use_model_bfactors:  # as the templates: the file's B-factors added
        b = b + np.maximum(atoms.b_iso, 0.0)
    bt = atoms.coefs_b + b[:, None]
    amp = atoms.occ[:, None] * atoms.coefs_a * (4.0 * math.pi / bt) * VOLT_A2
    rad = np.array([_atom_radius_a(float(b)) for b in bt.max(axis=1)])
    return _AtomClass(atoms.xyz - np.asarray(center_a, dtype=np.float64), amp, bt, rad)


def project_atoms(ac: _AtomClass, rot: np.ndarray, box: int, pixel_size_a: float) -> np.ndarray:
    """Projected potential (V*A) of ``A @ r`` along z on a ``(box, box)`` grid, centre at
    pixel ``box // 2``; each atom's Gaussians integrated exactly along z."""
    px = float(pixel_size_a)
    r = ac.rel_xyz @ np.asarray(rot, dtype=np.float64).T
    xs = np.ascontiguousarray(r[:, 0] / px + box // 2)
    ys = np.ascontiguousarray(r[:, 1] / px + box // 2)
    alpha = np.ascontiguousarray(4.0 * math.pi**2 * px * px / ac.widths)
    out = np.zeros((box, box), dtype=np.float64)
    _splat(out, xs, ys, np.ascontiguousarray(ac.amp), alpha, np.ascontiguousarray(ac.rad_a / px))
    return out


def _project_volume(vol: np.ndarray, rot: np.ndarray, pixel_size_a: float) -> np.ndarray:
    """Real-space projection of a volume rotated by ``rot`` (V_rot(r) = V(A.T r)), V*A."""
    n = vol.shape[0]
    c = n // 2
    g = np.arange(n, dtype=np.float64) - c
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()])  # (3, n^3), (x, y, z)
    src = np.asarray(rot, dtype=np.float64).T @ pts + c
    vals = ndimage.map_coordinates(vol, src[::-1], order=1, mode="constant", cval=0.0)
    return vals.reshape(n, n, n).sum(axis=0) * float(pixel_size_a)


# --------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class SimulationResult:
    """A simulated micrograph and its ground truth.

    image: ``(ny, nx)`` float32. With ``snr``: contrast units plus Gaussian noise; with
        ``exposure_e_per_a2``: electron counts per pixel; with neither: noise-free contrast.
    truth: one row per particle: ``x, y`` (pixel column / row of the particle centre,
        0-based), ``phi, theta, psi`` (ZYZ degrees, the matrix-A convention),
        ``defocus_a`` (mean micrograph defocus), ``class`` (int), ``class_name``, and
        ``snr_matched``: the particle's matched-filter SNR ``||s|| / sigma_noise``, an
        upper bound on its 2DTM z-score (exact template, exact pose, white noise).
    templates: one :class:`Template` per class (the template the particles were made
        from: same atoms, B-factor and centre).
    clean: the noise-free image in the units of ``image`` (if ``return_clean``).
    noise_sigma: standard deviation of the added noise (None without noise).
    """

    image: np.ndarray
    truth: pd.DataFrame
    pixel_size_a: float
    ctf: CTFParams
    templates: list
    clean: np.ndarray | None = None
    noise_sigma: float | None = None
    params: dict = dataclasses.field(default_factory=dict)

    def class_name(self, i: int) -> str:
        names = self.params.get("class_names") or []
        return names[i] if i < len(names) else f"class{i}"


def _class_name(s, i: int) -> str:
    if isinstance(s, Template):
        name = Path(str(s.source)).name if s.source and s.source != "array" else f"class{i}"
    else:
        name = Path(str(s)).name
    for suf in (".gz", ".pdb", ".ent", ".cif", ".mmcif", ".mrc", ".map"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
    return name or f"class{i}"


def _class_counts(n: int, fractions) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    exact = n * f / f.sum()
    counts = np.floor(exact).astype(int)
    rem = n - counts.sum()
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:rem]] += 1
    return counts


def _random_rotation(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    m = Rotation.from_quat(q).as_matrix()  # uniform over SO(3); so is its transpose
    angles = matrix_to_euler(m)
    return angles, euler_to_matrix(*angles)


def _delocalisation_px(ctf: CTFParams, pixel_size_a: float) -> int:
    lam = wavelength_a(ctf.voltage_kv)
    k = 0.5 / pixel_size_a
    df = max(abs(ctf.defocus1_a), abs(ctf.defocus2_a))
    r = lam * df * k + ctf.cs_mm * 1e7 * lam**3 * k**3
    return int(math.ceil(r / pixel_size_a))


def _lowpass_noise(rng, shape, pixel_size_a, length_a):
    white = rng.standard_normal(shape)
    f = sfft.rfft2(white, workers=-1)
    ky = np.fft.fftfreq(shape[0], d=pixel_size_a)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=pixel_size_a)[None, :]
    f *= np.exp(-2.0 * math.pi**2 * length_a**2 * (kx**2 + ky**2))  # Gaussian, sigma = length_a
    out = sfft.irfft2(f, s=shape, workers=-1)
    sd = out.std()
    return out / sd if sd > 0 else out


def simulate_micrograph(
    structures,
    n_particles: int,
    shape=(512, 512),
    pixel_size_a: float = 1.0,
    ctf: CTFParams | None = None,
    exposure_e_per_a2: float | None = None,
    snr: float | None = None,
    seed: int | None = 0,
    class_fractions=None,
    min_distance_px: float | None = None,
    background: str | None = None,
    thickness_gradient: float | None = None,
    edge_margin_px: int | None = None,
    bfactor_a2: float = DEFAULT_BFACTOR_A2,
    return_clean: bool = False,
    ice_strength: float = 0.5,
    ice_length_a: float = 20.0,
    keep_hydrogens: bool = False,
    keep_waters: bool = False,
    template_box: int | None = None,
    extra_phase: np.ndarray | None = None,
    forbidden: np.ndarray | None = None,
    noise_gradient: float | None = None,
    use_model_bfactors: bool = False,
) -> SimulationResult:
    """Simulate a micrograph of randomly placed, randomly oriented particles.

    Parameters
    ----------
    structures : model path, Template, or a list of them; one class per entry. Models are
        projected analytically from their atoms; Templates by rotating the volume in real
        space (trilinear) and summing along z.
    n_particles : total number of particles (split over classes by ``class_fractions``,
        default equal, largest-remainder rounding).
    shape : ``(ny, nx)`` of the micrograph in pixels.
    pixel_size_a : pixel size in A (templates are computed at the same pixel size).
    ctf : :class:`CTFParams` of the micrograph (default ``CTFParams()``: 10000 A, 300 kV).
    exposure_e_per_a2 : total exposure; Poisson noise on ``E * pixel^2 * I`` counts.
    snr : per-pixel SNR = variance of the noise-free particle contrast inside the particle
        boxes (template box around each particle) / noise variance. Typical micrographs:
        0.01-0.1. Mutually exclusive with ``exposure_e_per_a2``.
    seed : seed of ``numpy.random.default_rng``; same seed, same result.
    min_distance_px : least distance between particle centres (pixels), in addition to
        the default rule that particle projections (footprints) never overlap.
    background : None or ``"ice"``: add low-pass filtered Gaussian noise (correlation
        length ``ice_length_a``) to the phase, with RMS ``ice_strength`` times the RMS
        particle phase inside the particle boxes.
    thickness_gradient : relative change of the mean intensity across the image along x
        (e.g. 0.2: from 0.9 at the left edge to 1.1 at the right), a lamella thickness ramp.
    edge_margin_px : least distance of a particle centre from the image edge; default
        half the template box, so the template box lies fully inside the image.
    bfactor_a2 : B-factor of all atoms, for particles and templates alike.
    return_clean : also return the noise-free image.
    template_box : box of the class templates (default: automatic from the model).
    extra_phase : ``(ny, nx)`` phase (rad) of everything that is not a particle
        (non-target proteins, membranes, contamination: :mod:`napari_2dtm.scenes`), imaged
        through the same CTF; it does not enter the SNR's particle signal variance.
    forbidden : ``(ny, nx)`` bool, where no particle may lie (footprints never overlap it).
    noise_gradient : Gaussian noise only: the noise sigma grows linearly along x by this
        fraction (e.g. 0.4: 0.8x at the left edge to 1.2x at the right), the extra
        inelastic and multiple scattering of a thicker lamella; ``snr_matched`` uses the
        local sigma.
    use_model_bfactors : add each atom's B-factor from the model file to ``bfactor_a2``
        (particles and templates alike), e.g. a flexible chain.
    """
    px = float(pixel_size_a)
    if not (math.isfinite(px) and px > 0):
        raise InputError(f"pixel size must be > 0 Angstrom, got {pixel_size_a}")
    try:
        ny, nx = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise InputError(f"shape must be (ny, nx) in pixels, got {shape!r}") from None
    if ny < 16 or nx < 16:
        raise InputError(f"micrograph shape {shape} is too small (need >= 16 x 16 pixels)")
    n_particles = int(n_particles)
    if n_particles < 0:
        raise InputError(f"number of particles must be >= 0, got {n_particles}")
    if exposure_e_per_a2 is not None and snr is not None:
        raise InputError("give either an exposure (Poisson noise) or an SNR (Gaussian noise), not both")
    if exposure_e_per_a2 is not None and not (exposure_e_per_a2 > 0 and math.isfinite(exposure_e_per_a2)):
        raise InputError(f"exposure must be > 0 e/A^2, got {exposure_e_per_a2}")
    if snr is not None and not (snr > 0 and math.isfinite(snr)):
        raise InputError(f"SNR must be > 0, got {snr}")
    if background not in (None, "none", "ice"):
        raise InputError(f"background must be None or 'ice', got {background!r}")
    if thickness_gradient is not None and not (abs(thickness_gradient) < 2):
        raise InputError(f"thickness gradient must be a fraction between -2 and 2, got {thickness_gradient}")
    ctf = CTFParams() if ctf is None else ctf
    if isinstance(structures, (str, Path, Template)):
        structures = [structures]
    structures = list(structures)
    if not structures:
        raise InputError("no structures given to simulate")
    n_cls = len(structures)
    if class_fractions is None:
        class_fractions = np.ones(n_cls)
    class_fractions = np.asarray(class_fractions, dtype=np.float64).ravel()
    if len(class_fractions) != n_cls or np.any(class_fractions < 0) or class_fractions.sum() <= 0:
        raise InputError(
            f"class fractions must be {n_cls} non-negative numbers with a positive sum, got {list(class_fractions)}"
        )
    rng = np.random.default_rng(seed)

    # Per-class templates and projection inputs.
    templates, projectors, names = [], [], []
    for i, s in enumerate(structures):
        names.append(_class_name(s, i))
        if isinstance(s, Template):
            if abs(s.pixel_size_a - px) > 1e-6 * px:
                raise InputError(
                    f"{s.source}: template pixel size {s.pixel_size_a} A differs from the micrograph's {px} A"
                )
            templates.append(s)
            projectors.append(("volume", s.volume))
            continue
        t = template_from_model(
            s, px, box=template_box, bfactor_a2=bfactor_a2, keep_hydrogens=keep_hydrogens,
            keep_waters=keep_waters, center="mass", use_model_bfactors=use_model_bfactors,
        )
        atoms = _filter_atoms(read_atoms(s), keep_hydrogens, keep_waters)
        templates.append(t)
        projectors.append(("atoms", _atom_class(atoms, t.params["center_a"], bfactor_a2,
                                                use_model_bfactors)))

    counts = _class_counts(n_particles, class_fractions)
    labels = rng.permutation(np.repeat(np.arange(n_cls), counts))

    # Canvas padded by the CTF delocalisation and half the largest box.
    max_box = max(t.box for t in templates)
    pad = _delocalisation_px(ctf, px) + max_box // 2 + 8
    cy, cx = sfft.next_fast_len(ny + 2 * pad, real=True), sfft.next_fast_len(nx + 2 * pad, real=True)
    pad_y0, pad_x0 = (cy - ny) // 2, (cx - nx) // 2
    phase_p = np.zeros((cy, cx), dtype=np.float64)
    sig_e = interaction_constant(ctf.voltage_kv)

    occupied = np.zeros((ny, nx), dtype=np.float32)
    if forbidden is not None:
        if np.shape(forbidden) != (ny, nx):
            raise InputError(f"forbidden mask of shape {np.shape(forbidden)} does not match {shape}")
        occupied[np.asarray(forbidden, bool)] = 1.0
    centres = []
    rows = []
    projections = []
    yy, xx = np.ogrid[0:ny, 0:nx]
    for k, cls in enumerate(labels):
        t = templates[cls]
        m = t.box
        h = m // 2
        e = h if edge_margin_px is None else int(edge_margin_px)
        lo_y, hi_y, lo_x, hi_x = e, ny - 1 - e, e, nx - 1 - e
        if edge_margin_px is None:
            hi_y, hi_x = ny - m + h, nx - m + h
        if hi_y < lo_y or hi_x < lo_x:
            raise InputError(
                f"{names[cls]}: template box {m} px does not fit in a {ny} x {nx} micrograph "
                "with the edge margin; use a larger shape or a smaller edge margin"
            )
        placed = False
        for _attempt in range(50):
            angles, rot = _random_rotation(rng)
            kind, obj = projectors[cls]
            proj = project_atoms(obj, rot, m, px) if kind == "atoms" else _project_volume(obj, rot, px)
            pmax = proj.max()
            foot = proj > 0.02 * pmax if pmax > 0 else np.zeros_like(proj, bool)
            foot = ndimage.binary_dilation(foot, iterations=1)
            y_lo, x_lo = max(lo_y, 0), max(lo_x, 0)
            if hi_y < y_lo or hi_x < x_lo:
                break
            # Uniform over the free positions: rejection sampling first (cheap), then an
            # exact map of all free positions by FFT correlation when the image is crowded.
            for _try in range(64):
                y0 = int(rng.integers(y_lo, hi_y + 1))
                x0 = int(rng.integers(x_lo, hi_x + 1))
                if _free(occupied, foot, y0, x0, h, centres, min_distance_px):
                    placed = True
                    break
            if placed:
                break
            valid = np.zeros((ny, nx), bool)
            valid[y_lo : hi_y + 1, x_lo : hi_x + 1] = True
            if occupied.any():
                full = _fft_correlate(occupied, foot.astype(np.float32))
                ov = full[m - 1 - h : m - 1 - h + ny, m - 1 - h : m - 1 - h + nx]
                valid &= ov < 0.5
            if min_distance_px and centres:
                for (py, px_) in centres:
                    valid &= (yy - py) ** 2 + (xx - px_) ** 2 >= float(min_distance_px) ** 2
            idx = np.flatnonzero(valid)
            if idx.size:
                pick = int(idx[rng.integers(idx.size)])
                y0, x0 = divmod(pick, nx)
                placed = True
                break
        if not placed:
            raise InputError(
                f"could not place particle {k + 1} of {n_particles} without overlap in a "
                f"{ny} x {nx} micrograph; use fewer particles, a larger shape, or a smaller "
                "min_distance_px / edge_margin_px"
            )
        # Mark the footprint, add the phase.
        ys0, xs0 = y0 - h, x0 - h
        oy0, ox0 = max(ys0, 0), max(xs0, 0)
        oy1, ox1 = min(ys0 + m, ny), min(xs0 + m, nx)
        occupied[oy0:oy1, ox0:ox1] += foot[oy0 - ys0 : oy1 - ys0, ox0 - xs0 : ox1 - xs0]
        np.minimum(occupied, 1.0, out=occupied)
        phase_p[pad_y0 + ys0 : pad_y0 + ys0 + m, pad_x0 + xs0 : pad_x0 + xs0 + m] += sig_e * proj
        centres.append((y0, x0))
        projections.append((proj, m))
        rows.append(
            {
                "x": int(x0), "y": int(y0), "phi": float(angles[0]), "theta": float(angles[1]),
                "psi": float(angles[2]), "defocus_a": float(ctf.defocus_mean_a),
                "class": int(cls), "class_name": names[cls],
            }
        )

    ctf_full = 2.0 * ctf_2d(ctf, (cy, cx), px).astype(np.float64)
    contrast_p = sfft.irfft2(sfft.rfft2(phase_p, workers=-1) * ctf_full, s=(cy, cx), workers=-1)
    contrast_p = contrast_p[pad_y0 : pad_y0 + ny, pad_x0 : pad_x0 + nx]

    # Pixels inside the particle boxes (for the SNR definition).
    in_box = np.zeros((ny, nx), bool)
    for (y0, x0), (_proj, m) in zip(centres, projections):
        h = m // 2
        in_box[max(y0 - h, 0) : min(y0 - h + m, ny), max(x0 - h, 0) : min(x0 - h + m, nx)] = True
    box_phase = phase_p[pad_y0 : pad_y0 + ny, pad_x0 : pad_x0 + nx][in_box]
    phase_rms = float(np.sqrt(np.mean(box_phase**2))) if box_phase.size else 0.0

    contrast = contrast_p.copy()
    if background == "ice":
        ice_rms = float(ice_strength) * (phase_rms if phase_rms > 0 else 0.01)
        ice = _lowpass_noise(rng, (cy, cx), px, float(ice_length_a)) * ice_rms
        contrast_ice = sfft.irfft2(sfft.rfft2(ice, workers=-1) * ctf_full, s=(cy, cx), workers=-1)
        contrast += contrast_ice[pad_y0 : pad_y0 + ny, pad_x0 : pad_x0 + nx]
    if extra_phase is not None:
        if np.shape(extra_phase) != (ny, nx):
            raise InputError(f"extra phase of shape {np.shape(extra_phase)} does not match {shape}")
        extra_p = np.zeros((cy, cx), np.float64)
        extra_p[pad_y0 : pad_y0 + ny, pad_x0 : pad_x0 + nx] = extra_phase
        contrast_x = sfft.irfft2(sfft.rfft2(extra_p, workers=-1) * ctf_full, s=(cy, cx), workers=-1)
        contrast += contrast_x[pad_y0 : pad_y0 + ny, pad_x0 : pad_x0 + nx]
    intensity = 1.0 + contrast
    if thickness_gradient:
        ramp = 1.0 + float(thickness_gradient) * (np.arange(nx) / max(nx - 1, 1) - 0.5)
        intensity = intensity * ramp[None, :]
    np.maximum(intensity, 0.0, out=intensity)

    signal_var = float(contrast_p[in_box].var()) if in_box.any() else 0.0
    noise_sigma = None
    noise_ramp = np.ones(nx)
    if noise_gradient and snr is not None:
        noise_ramp = 1.0 + float(noise_gradient) * (np.arange(nx) / max(nx - 1, 1) - 0.5)
    if exposure_e_per_a2 is not None:
        mean_counts = float(exposure_e_per_a2) * px * px
        clean = mean_counts * intensity
        image = rng.poisson(clean).astype(np.float32)
        noise_sigma = math.sqrt(mean_counts)
        signal_scale = mean_counts
    else:
        clean = intensity - 1.0
        signal_scale = 1.0
        if snr is not None:
            if signal_var <= 0:
                raise InputError("cannot set an SNR without particles (the signal variance is zero)")
            noise_sigma = math.sqrt(signal_var / float(snr))
            noise = rng.normal(0.0, noise_sigma, size=clean.shape)
            if noise_gradient:
                noise *= noise_ramp[None, :]
            image = (clean + noise).astype(np.float32)
        else:
            image = clean.astype(np.float32)

    # Matched-filter SNR of each particle alone: ||CTF-filtered particle|| / sigma.
    snr_matched = []
    for (proj, m), (_y0, x0) in zip(projections, centres):
        if noise_sigma is None:
            snr_matched.append(float("nan"))
            continue
        s = _isolated_contrast(proj * sig_e, m, ctf, px)
        snr_matched.append(float(signal_scale * np.sqrt((s**2).sum()) / (noise_sigma * noise_ramp[x0])))

    truth = pd.DataFrame(rows, columns=TRUTH_COLUMNS)
    truth["snr_matched"] = np.asarray(snr_matched, dtype=np.float64)
    truth["class"] = truth["class"].astype(np.int64)
    truth["x"] = truth["x"].astype(np.int64)
    truth["y"] = truth["y"].astype(np.int64)

    params = {
        "n_particles": n_particles,
        "shape": [ny, nx],
        "pixel_size_a": px,
        "ctf": ctf.to_dict(),
        "exposure_e_per_a2": exposure_e_per_a2,
        "snr": snr,
        "seed": seed,
        "class_names": names,
        "class_fractions": [float(v) for v in class_fractions],
        "structures": [str(s.source) if isinstance(s, Template) else str(s) for s in structures],
        "min_distance_px": min_distance_px,
        "edge_margin_px": edge_margin_px,
        "background": background,
        "ice_strength": ice_strength if background == "ice" else None,
        "ice_length_a": ice_length_a if background == "ice" else None,
        "thickness_gradient": thickness_gradient,
        "noise_gradient": noise_gradient,
        "extra_phase": extra_phase is not None,
        "bfactor_a2": float(bfactor_a2),
        "noise_sigma": noise_sigma,
        "signal_variance": signal_var,
        "interaction_constant_rad_per_v_a": sig_e,
        "image_units": "counts" if exposure_e_per_a2 is not None else "contrast",
    }
    return SimulationResult(
        image=np.ascontiguousarray(image, dtype=np.float32),
        truth=truth,
        pixel_size_a=px,
        ctf=ctf,
        templates=templates,
        clean=np.ascontiguousarray(clean, dtype=np.float32) if return_clean else None,
        noise_sigma=noise_sigma,
        params=params,
    )


def _free(occupied, foot, y0, x0, h, centres, min_distance_px) -> bool:
    """True if a footprint centred at (y0, x0) overlaps no placed particle."""
    ny, nx = occupied.shape
    m = foot.shape[0]
    ys0, xs0 = y0 - h, x0 - h
    oy0, ox0 = max(ys0, 0), max(xs0, 0)
    oy1, ox1 = min(ys0 + m, ny), min(xs0 + m, nx)
    if np.any(occupied[oy0:oy1, ox0:ox1][foot[oy0 - ys0 : oy1 - ys0, ox0 - xs0 : ox1 - xs0]] > 0.5):
        return False
    if min_distance_px:
        d2 = float(min_distance_px) ** 2
        for py, px_ in centres:
            if (y0 - py) ** 2 + (x0 - px_) ** 2 < d2:
                return False
    return True


def _fft_correlate(occupied: np.ndarray, foot: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve

    return fftconvolve(occupied, foot[::-1, ::-1], mode="full")


def _isolated_contrast(phase: np.ndarray, m: int, ctf: CTFParams, px: float) -> np.ndarray:
    """Contrast ``2 * CTF * phase`` of one particle on a padded canvas (no wrap-around)."""
    size = sfft.next_fast_len(m + 2 * _delocalisation_px(ctf, px) + 16, real=True)
    canvas = np.zeros((size, size))
    o = (size - m) // 2
    canvas[o : o + m, o : o + m] = phase
    c = 2.0 * ctf_2d(ctf, (size, size), px).astype(np.float64)
    return sfft.irfft2(sfft.rfft2(canvas, workers=-1) * c, s=(size, size), workers=-1)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def write_simulation(
    result: SimulationResult,
    out,
    overwrite: bool = False,
    write_templates: bool = True,
    write_clean: bool = True,
) -> dict:
    """Write a simulation: micrograph MRC (pixel size in the header), truth CSV, template
    MRCs, the noise-free image (if present) and ``simulation.json``.

    ``out`` is a folder (files ``micrograph.mrc``, ``truth.csv``, ``template_<i>_<name>.mrc``,
    ``clean.mrc``, ``simulation.json``) or a micrograph path ending in ``.mrc`` (siblings
    ``<stem>_truth.csv``, ``<stem>_template_<i>_<name>.mrc``, ...). Every file is written
    atomically; existing files are never replaced unless ``overwrite`` (checked for all
    files before anything is written). Returns ``{role: Path}``.
    """
    from napari_2dtm.io.mrc import atomic_write_text, write_mrc

    out = Path(out)
    if out.suffix.lower() == ".mrc":
        base = out.parent
        mic = out
        prefix = out.stem + "_"
    else:
        if out.exists() and not out.is_dir():
            raise InputError(f"{out}: exists and is not a folder")
        base = out
        mic = out / "micrograph.mrc"
        prefix = ""
    paths = {"micrograph": mic, "truth": base / f"{prefix}truth.csv", "json": base / f"{prefix}simulation.json"}
    if write_clean and result.clean is not None:
        paths["clean"] = base / f"{prefix}clean.mrc"
    if write_templates:
        for i in range(len(result.templates)):
            name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in result.class_name(i))
            paths[f"template_{i}"] = base / f"{prefix}template_{i}_{name}.mrc"
    if not overwrite:
        for p in paths.values():
            if p.exists():
                raise InputError(f"{p}: exists; refusing to overwrite (use --overwrite)")
    base.mkdir(parents=True, exist_ok=True)
    write_mrc(paths["micrograph"], result.image, result.pixel_size_a, overwrite=True)
    if "clean" in paths:
        write_mrc(paths["clean"], result.clean, result.pixel_size_a, overwrite=True)
    atomic_write_text(paths["truth"], result.truth.to_csv(index=False, float_format="%.6g"))
    for i, t in enumerate(result.templates if write_templates else []):
        write_template_mrc(paths[f"template_{i}"], t, overwrite=True)
    meta = dict(result.params)
    meta["files"] = {k: p.name for k, p in paths.items()}
    atomic_write_text(paths["json"], json.dumps(meta, indent=2, default=str) + "\n")
    return paths


def perturbed_hits(truth: pd.DataFrame, angle_deg: float, shift_px: float, defocus_a: float,
                   seed: int) -> pd.DataFrame:
    """Hits with known errors made from a truth table (for refinement and reconstruction
    tests): each pose turned by ``angle_deg`` about its own random axis, ``x`` and ``y``
    each moved by +-``shift_px`` (random signs), ``defocus_a`` added to the defocus."""
    rng = np.random.default_rng(seed)
    h = truth.copy()
    h[["phi", "theta", "psi"]] = rotate_about_random_axes(
        h[["phi", "theta", "psi"]].to_numpy(float), angle_deg, rng)
    h["x"] = h["x"] + rng.choice([-1.0, 1.0], len(h)) * shift_px
    h["y"] = h["y"] + rng.choice([-1.0, 1.0], len(h)) * shift_px
    h["defocus_a"] = h["defocus_a"] + defocus_a
    return h
