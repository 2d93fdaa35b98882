"""Atomic models (PDB / mmCIF) to 3D templates: the electrostatic potential on a cubic grid.

The potential is computed by gemmi's ``DensityCalculatorE`` from its tabulated 5-Gaussian
electron scattering factors (Peng et al. 1996, ``gemmi.Element(...).c4322``); nothing here
hand-writes scattering tables. See ``docs/templates.md`` for the choices made.

Atoms are read by :mod:`napari_2dtm.templates.atoms` and picked by
:mod:`napari_2dtm.templates.selection`; this module places them on the grid, applies the
optional dose filter and caches finished maps in memory and on disk, keyed by the model
file's identity and every parameter that changes the voxels.

Units
    Voxel values are the Coulomb potential in **volts** sampled at the voxel centres:
    ``V(r) = h^2 / (2 pi m0 e) * rho(r)`` with ``rho`` the inverse 3D Fourier transform of
    the electron scattering factors in Angstrom (gemmi's map, unit 1/A^2) and
    ``h^2 / (2 pi m0 e) = 47.878 V A^2``. ``volume.sum() * pixel**3`` is the integrated
    potential in V*A^3 and ``volume.sum(axis=0) * pixel`` the projected potential in V*A.

Centring (voxel ``n // 2`` along each axis is the particle centre)
    ``center="mass"``: the potential-weighted centre of the selected atoms
    (weights ``occupancy * f_e(0)``) sits exactly at voxel ``n // 2``.
    ``center="model"``: the grid is fixed in model coordinates and independent of the
    selection: voxels lie at model coordinates that are integer multiples of the pixel size
    (the model origin (0, 0, 0) is a grid point) and voxel ``n // 2`` is the grid point
    nearest the potential-weighted centre of the *whole* model (first model, after the
    hydrogen / water filters, before ``selection``). With ``box=None`` the box size is also
    taken from the whole model, so two selections of one file (same pixel size, B-factor
    and filters) lie on the same grid voxel for voxel: ideal for omit templates.
    ``center=(x, y, z)``: voxel ``n // 2`` is at that model coordinate (Angstrom).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import math
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import constants as _const

from napari_2dtm.errors import InputError

from .atoms import AtomTable, _filter_atoms, clear_atom_cache, file_key, read_atoms
from .selection import select_atoms
from .template import Template

__all__ = [
    "DEFAULT_BFACTOR_A2",
    "VOLT_A2",
    "template_from_model",
    "potential_on_grid",
    "critical_exposure",
    "dose_filter",
    "write_template_mrc",
    "clear_cache",
    "cache_dir",
]

#: B-factor (A^2) added to every atom by default; see docs/templates.md for the reasoning.
DEFAULT_BFACTOR_A2 = 30.0

#: h^2 / (2 pi m0 e) in V*A^2: converts gemmi's electron "density" (1/A^2) to volts.
VOLT_A2 = _const.h**2 / (2.0 * math.pi * _const.m_e * _const.e) * 1e20

#: Margin (A) added around the model's radius when the box size is chosen automatically.
AUTO_BOX_MARGIN_A = 5.0

_CACHE_VERSION = 1


# --------------------------------------------------------------------------------------
# Dose filter (Grant & Grigorieff 2015)
# --------------------------------------------------------------------------------------


def critical_exposure(k_inv_a, voltage_kv: float = 300.0):
    """Critical exposure N_e(k) in e/A^2 (Grant & Grigorieff 2015, eLife 4:e06980).

    ``N_e = 0.245 * k**-1.665 + 2.81`` at 300 kV (k in 1/A); scaled by 0.8 at 200 kV
    (linear in between, clamped outside 200-300 kV).
    """
    k = np.asarray(k_inv_a, dtype=np.float64)
    scale = 0.8 + 0.2 * min(max((float(voltage_kv) - 200.0) / 100.0, 0.0), 1.0)
    with np.errstate(divide="ignore"):
        ne = 0.24499 * np.power(np.maximum(k, 1e-12), -1.6649) + 2.8141
    return ne * scale


def dose_filter(k_inv_a, exposure_e_per_a2: float, voltage_kv: float = 300.0):
    """Amplitude attenuation averaged over an exposure from 0 to ``exposure_e_per_a2``.

    ``Q(k) = (2 N_e / D) * (1 - exp(-D / (2 N_e)))``: the mean over the exposure of the
    per-frame amplitude ``exp(-N / (2 N_e))`` (Grant & Grigorieff 2015). Q(0) = 1.
    """
    d = float(exposure_e_per_a2)
    if d <= 0:
        return np.ones_like(np.asarray(k_inv_a, dtype=np.float64))
    ne = critical_exposure(k_inv_a, voltage_kv)
    x = d / (2.0 * ne)
    return -np.expm1(-x) / x


# --------------------------------------------------------------------------------------
# Potential on a grid
# --------------------------------------------------------------------------------------


def _check_pixel(path, pixel_size_a) -> float:
    try:
        px = float(pixel_size_a)
    except (TypeError, ValueError):
        raise InputError(f"{path}: pixel size must be a number > 0 Angstrom, got {pixel_size_a!r}") from None
    if not (math.isfinite(px) and px > 0):
        raise InputError(f"{path}: pixel size must be > 0 Angstrom, got {pixel_size_a}")
    return px


def _atom_radius_a(b_max: float) -> float:
    """Distance (A) beyond which a Gaussian with total B ``b_max`` is negligible."""
    sigma = math.sqrt(max(b_max, 1.0) / (8.0 * math.pi**2))
    return 5.0 * sigma + 1.0


def potential_on_grid(
    atoms: AtomTable,
    center_a,
    box: int,
    pixel_size_a: float,
    bfactor_a2: float,
    use_model_bfactors: bool = False,
) -> np.ndarray:
    """Potential (volts) of ``atoms`` on an ``(box, box, box)`` grid indexed [z, y, x].

    Voxel ``(i, j, k)`` (x, y, z) is at model coordinate
    ``center_a + ((i, j, k) - box // 2) * pixel_size_a``. Computed by gemmi on a grid
    padded by the atoms' radius (so nothing wraps around) and cropped.
    """
    import gemmi

    px = float(pixel_size_a)
    n = int(box)
    b_atoms = np.full(len(atoms), float(bfactor_a2))
    if use_model_bfactors:
        b_atoms = b_atoms + np.maximum(atoms.b_iso, 0.0)
    b_max = float(b_atoms.max() + atoms.coefs_b.max()) if len(atoms) else 1.0
    pad = int(math.ceil(_atom_radius_a(b_max) / px)) + 1
    big = n + 2 * pad
    dc = gemmi.DensityCalculatorE()
    dc.d_min = 0.0
    dc.blur = 0.0
    dc.grid.unit_cell = gemmi.UnitCell(big * px, big * px, big * px, 90, 90, 90)
    dc.grid.spacegroup = gemmi.find_spacegroup_by_name("P 1")
    dc.grid.set_size(big, big, big)
    dc.initialize_grid()
    # Grid point 0 of the padded grid is at model coordinate c - (n//2 + pad) * px.
    shift = -np.asarray(center_a, dtype=np.float64) + (n // 2 + pad) * px
    pos = atoms.xyz + shift
    at = gemmi.Atom()
    elements = {}
    for p, z, occ, b in zip(pos.tolist(), atoms.atomic_number.tolist(), atoms.occ.tolist(), b_atoms.tolist()):
        el = elements.get(z)
        if el is None:
            el = elements[z] = gemmi.Element(int(z))
        at.pos = gemmi.Position(p[0], p[1], p[2])
        at.element = el
        at.occ = occ
        at.b_iso = b
        dc.add_atom_density_to_grid(at)
    g = np.asarray(dc.grid.array)  # [x, y, z]
    vol = g[pad : pad + n, pad : pad + n, pad : pad + n].transpose(2, 1, 0)
    out = np.ascontiguousarray(vol, dtype=np.float32)
    out *= np.float32(VOLT_A2)
    return out


def _apply_dose_filter(vol: np.ndarray, px: float, dose: float, voltage_kv: float) -> np.ndarray:
    from scipy import fft as sfft

    n = vol.shape[0]
    k1 = np.fft.fftfreq(n, d=px)
    kr = np.fft.rfftfreq(n, d=px)
    k = np.sqrt(k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + kr[None, None, :] ** 2)
    f = sfft.rfftn(vol, workers=-1)
    f *= dose_filter(k, dose, voltage_kv)
    return sfft.irfftn(f, s=vol.shape, workers=-1).astype(np.float32)


def _auto_box(atoms: AtomTable, center: np.ndarray, px: float) -> int:
    r = float(np.sqrt(((atoms.xyz - center) ** 2).sum(axis=1)).max()) if len(atoms) else 0.0
    n = int(math.ceil((2.0 * (r + AUTO_BOX_MARGIN_A)) / px))
    n += n % 2
    return max(n, 16)


def _resolve_center(center, atoms_all: AtomTable, atoms_sel: AtomTable, px: float, path) -> tuple[np.ndarray, str]:
    if isinstance(center, str):
        c = center.strip().lower()
        if c == "mass":
            return atoms_sel.weighted_center(), "mass"
        if c == "model":
            wc = atoms_all.weighted_center()
            return np.round(wc / px) * px, "model"
        raise InputError(f"{path}: center must be 'mass', 'model' or (x, y, z) in Angstrom, got {center!r}")
    try:
        c = np.asarray(center, dtype=np.float64).reshape(3)
    except (TypeError, ValueError):
        raise InputError(f"{path}: center must be 'mass', 'model' or (x, y, z) in Angstrom, got {center!r}") from None
    if not np.all(np.isfinite(c)):
        raise InputError(f"{path}: center must be finite, got {center!r}")
    return c, "point"


# --------------------------------------------------------------------------------------
# Caching
# --------------------------------------------------------------------------------------

_MEM_CACHE: collections.OrderedDict = collections.OrderedDict()
_MEM_CACHE_MAX_BYTES = 1 << 30
_MEM_CACHE_MAX_ITEMS = 32
_LOCK = threading.RLock()


def cache_dir() -> Path | None:
    """Disk cache folder: ``$NAPARI_2DTM_CACHE`` or ``$XDG_CACHE_HOME/napari-2dtm`` or
    ``~/.cache/napari-2dtm``; None if ``$NAPARI_2DTM_CACHE`` is ``0``/``off``/``none``."""
    env = os.environ.get("NAPARI_2DTM_CACHE")
    if env is not None:
        if env.strip().lower() in ("", "0", "off", "none", "false", "no"):
            return None
        return Path(env).expanduser() / "templates"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "napari-2dtm" / "templates"


def clear_cache(disk: bool = False) -> None:
    """Empty the in-memory caches (and the disk cache folder if ``disk``)."""
    with _LOCK:
        _MEM_CACHE.clear()
    clear_atom_cache()
    if disk:
        d = cache_dir()
        if d is not None and d.is_dir():
            for p in d.glob("*.npy"):
                with contextlib.suppress(OSError):
                    p.unlink()
            for p in d.glob("*.json"):
                with contextlib.suppress(OSError):
                    p.unlink()


def _mem_get(key):
    with _LOCK:
        hit = _MEM_CACHE.get(key)
        if hit is not None:
            _MEM_CACHE.move_to_end(key)
        return hit


def _mem_put(key, vol: np.ndarray, params: dict):
    with _LOCK:
        _MEM_CACHE[key] = (vol, params)
        total = sum(v.nbytes for v, _ in _MEM_CACHE.values())
        while _MEM_CACHE and (total > _MEM_CACHE_MAX_BYTES or len(_MEM_CACHE) > _MEM_CACHE_MAX_ITEMS):
            _, (v, _p) = _MEM_CACHE.popitem(last=False)
            total -= v.nbytes


def _disk_name(key) -> str:
    return hashlib.sha256(repr(key).encode()).hexdigest()[:32]


def _disk_get(key):
    d = cache_dir()
    if d is None:
        return None
    name = _disk_name(key)
    npy, js = d / f"{name}.npy", d / f"{name}.json"
    try:
        meta = json.loads(js.read_text())
        if meta.get("key") != repr(key):
            return None
        vol = np.load(npy, allow_pickle=False)
        if vol.dtype != np.float32 or vol.ndim != 3:
            return None
        os.utime(npy)  # LRU pruning uses mtime
        return vol, meta["params"]
    except (OSError, ValueError, KeyError):
        return None


def _disk_put(key, vol: np.ndarray, params: dict, max_bytes: int = 2 << 30):
    from napari_2dtm.io.mrc import atomic_path

    d = cache_dir()
    if d is None:
        return
    name = _disk_name(key)
    try:
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / f"{name}.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, vol, allow_pickle=False)
        with atomic_path(d / f"{name}.json") as tmp:
            Path(tmp).write_text(json.dumps({"key": repr(key), "params": params}))
        files = sorted(d.glob("*.npy"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for p in files:
            if total <= max_bytes:
                break
            total -= p.stat().st_size
            for q in (p, p.with_suffix(".json")):
                with contextlib.suppress(OSError):
                    q.unlink()
    except OSError as e:  # a read-only or full disk must not break template making
        warnings.warn(f"napari-2dtm: template disk cache not written ({e})", stacklevel=3)


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------


def template_from_model(
    path: str | Path,
    pixel_size_a: float,
    box: int | None = None,
    bfactor_a2: float = DEFAULT_BFACTOR_A2,
    keep_hydrogens: bool = False,
    keep_waters: bool = False,
    selection: str | None = None,
    center="mass",
    dose_e_per_a2: float | None = None,
    voltage_kv: float = 300.0,
    use_model_bfactors: bool = False,
    cache: bool | str = True,
) -> Template:
    """Compute a template (potential in volts) from an atomic model file.

    Parameters
    ----------
    path : PDB / mmCIF file (``.pdb``, ``.ent``, ``.cif``, ``.mmcif``, optionally ``.gz``).
        Only the first model is used; alternate conformations are weighted by occupancy.
    pixel_size_a : voxel size in Angstrom (normally the micrograph pixel size), > 0.
    box : cube edge in voxels; None = smallest even size holding the model (the
        largest atom distance from the centre plus 5 A, in any orientation).
    bfactor_a2 : B-factor (A^2) given to every atom (default ``DEFAULT_BFACTOR_A2`` = 30).
    keep_hydrogens, keep_waters : keep H atoms / water molecules (removed by default).
    selection : atoms to keep, e.g. ``"chain A,B"``, ``"not chain B"``,
        ``"all but resname STR"``, ``"chain A and resid 10-50"`` (see :func:`select_atoms`).
    center : ``"mass"``, ``"model"`` or ``(x, y, z)`` in A; see the module docstring.
    dose_e_per_a2 : if given, low-pass by the exposure-averaged dose filter of
        Grant & Grigorieff (2015) for a total exposure of that many e/A^2 at ``voltage_kv``.
    use_model_bfactors : add the file's per-atom B-factors to ``bfactor_a2``.
    cache : True: memory cache plus disk cache (see :func:`cache_dir`); ``"memory"``:
        memory only; False: always recompute.

    Returns
    -------
    Template with ``volume`` (n, n, n) float32 in volts, indexed [z, y, x], and ``params``
    recording the inputs plus ``center_a`` (model coordinate of voxel n//2, x y z) and
    ``origin_a`` (model coordinate of voxel 0).
    """
    path = Path(path)
    px = _check_pixel(path, pixel_size_a)
    if box is not None:
        try:
            box = int(box)
        except (TypeError, ValueError):
            raise InputError(f"{path}: box must be a whole number of voxels, got {box!r}") from None
        if box < 2:
            raise InputError(f"{path}: box must be >= 2 voxels, got {box}")
    b = float(bfactor_a2)
    if not math.isfinite(b) or b < 0:
        raise InputError(f"{path}: B-factor must be >= 0 A^2, got {bfactor_a2}")
    if dose_e_per_a2 is not None:
        dose = float(dose_e_per_a2)
        if not math.isfinite(dose) or dose < 0:
            raise InputError(f"{path}: exposure must be >= 0 e/A^2, got {dose_e_per_a2}")
        dose_e_per_a2 = dose if dose > 0 else None
    if isinstance(center, str):
        center_key = center.strip().lower()
    else:
        try:
            center_key = tuple(float(v) for v in np.asarray(center, dtype=np.float64).reshape(3))
        except (TypeError, ValueError):
            raise InputError(f"{path}: center must be 'mass', 'model' or (x, y, z) in Angstrom, got {center!r}") from None
    if not path.exists():
        raise InputError(f"{path}: model file not found")
    fkey = file_key(path)
    key = (
        _CACHE_VERSION,
        fkey,
        round(px, 9),
        box,
        round(b, 6),
        bool(keep_hydrogens),
        bool(keep_waters),
        (selection or "").strip(),
        center_key,
        None if dose_e_per_a2 is None else round(dose_e_per_a2, 6),
        round(float(voltage_kv), 3),
        bool(use_model_bfactors),
    )
    if cache:
        hit = _mem_get(key)
        if hit is None and cache != "memory":
            hit = _disk_get(key)
            if hit is not None:
                _mem_put(key, *hit)
        if hit is not None:
            vol, params = hit
            return Template(vol.copy(), px, source=str(path), params=dict(params))

    t0 = time.perf_counter()
    atoms_file = read_atoms(path)
    atoms_all = _filter_atoms(atoms_file, keep_hydrogens, keep_waters)
    if len(atoms_all) == 0:
        raise InputError(f"{path}: no atoms left after removing hydrogens and waters")
    mask = select_atoms(atoms_all, selection)
    if not mask.any():
        raise InputError(f"{path}: selection {selection!r} matches no atoms")
    atoms = atoms_all if mask.all() else atoms_all.subset(mask)
    c, center_kind = _resolve_center(center, atoms_all, atoms, px, path)
    box_ref = atoms_all if center_kind == "model" else atoms
    n = _auto_box(box_ref, c, px) if box is None else box
    # Every atom must lie inside the box.
    u = (atoms.xyz - c) / px + n // 2
    if u.min() < 0 or u.max() > n - 1:
        r_need = np.abs(atoms.xyz - c).max(axis=0) / px
        need = int(2 * math.ceil(float(r_need.max())) + 2)
        raise InputError(
            f"{path}: box {n} px ({n * px:.1f} A at {px:g} A/px) is too small for the model: "
            f"atoms reach {float(np.abs(atoms.xyz - c).max()):.1f} A from the centre; "
            f"use a box of at least {need} px"
        )
    vol = potential_on_grid(atoms, c, n, px, b, use_model_bfactors)
    if dose_e_per_a2 is not None:
        vol = _apply_dose_filter(vol, px, dose_e_per_a2, voltage_kv)
    origin = c - (n // 2) * px
    params = {
        "kind": "atomic_model",
        "model": str(path),
        "pixel_size_a": px,
        "box": n,
        "bfactor_a2": b,
        "use_model_bfactors": bool(use_model_bfactors),
        "keep_hydrogens": bool(keep_hydrogens),
        "keep_waters": bool(keep_waters),
        "selection": selection,
        "center": center if isinstance(center, str) else list(center_key),
        "center_a": [float(v) for v in c],
        "origin_a": [float(v) for v in origin],
        "n_atoms": len(atoms),
        "dose_e_per_a2": dose_e_per_a2,
        "voltage_kv": float(voltage_kv),
        "units": "V",
        "scattering_factors": "gemmi c4322 (Peng 1996, 5 Gaussians)",
        "compute_s": round(time.perf_counter() - t0, 4),
    }
    if cache:
        _mem_put(key, vol, params)
        if cache != "memory":
            _disk_put(key, vol, params)
        vol = vol.copy()
    return Template(vol, px, source=str(path), params=dict(params))


def write_template_mrc(path: str | Path, template: Template, overwrite: bool = False) -> Path:
    """Write a template as MRC, atomically; the header origin is the model coordinate of
    voxel 0 when known, so the map overlays its model in ChimeraX / Coot."""
    import mrcfile

    from napari_2dtm.io.mrc import atomic_path

    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists; refusing to overwrite (use --overwrite)")
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(np.ascontiguousarray(template.volume, dtype=np.float32))
            m.voxel_size = float(template.pixel_size_a)
            origin = template.params.get("origin_a") if template.params else None
            if origin is not None:
                m.header.origin.x, m.header.origin.y, m.header.origin.z = (float(v) for v in origin)
            m.update_header_stats()
    return path

