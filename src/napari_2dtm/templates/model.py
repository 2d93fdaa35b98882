"""Atomic models (PDB / mmCIF) to 3D templates: the electrostatic potential on a cubic grid.

The potential is computed by gemmi's ``DensityCalculatorE`` from its tabulated 5-Gaussian
electron scattering factors (Peng et al. 1996, ``gemmi.Element(...).c4322``); nothing here
hand-writes scattering tables. See ``docs/templates.md`` for the choices made.

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
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import threading
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import constants as _const

from napari_2dtm.errors import InputError

from .template import Template, register_template_loader

__all__ = [
    "DEFAULT_BFACTOR_A2",
    "VOLT_A2",
    "template_from_model",
    "read_atoms",
    "AtomTable",
    "select_atoms",
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

_MODEL_SUFFIXES = (".pdb", ".cif", ".mmcif", ".ent")
_CACHE_VERSION = 1


# --------------------------------------------------------------------------------------
# Reading atoms
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AtomTable:
    """All atoms of the first model of a structure file, as flat arrays (one row per atom).

    ``xyz`` is ``(N, 3)`` float64 in Angstrom (model coordinates, x, y, z order).
    ``f0`` is ``sum(a_i)`` of the element's 5-Gaussian electron scattering factor (A),
    i.e. ``f_e(0)``: each atom's integrated potential is ``occ * f0 * VOLT_A2`` V*A^3.
    """

    path: str
    xyz: np.ndarray
    atomic_number: np.ndarray
    element: np.ndarray
    occ: np.ndarray
    b_iso: np.ndarray
    chain: np.ndarray
    resname: np.ndarray
    seqnum: np.ndarray
    atom_name: np.ndarray
    is_hydrogen: np.ndarray
    is_water: np.ndarray
    is_het: np.ndarray
    is_polymer_residue: np.ndarray
    f0: np.ndarray
    coefs_a: np.ndarray  # (N, 5) Gaussian amplitudes a_i (A)
    coefs_b: np.ndarray  # (N, 5) Gaussian widths b_i (A^2)
    structure: object = dataclasses.field(repr=False, compare=False, default=None)

    def __len__(self) -> int:
        return len(self.xyz)

    def subset(self, mask: np.ndarray) -> AtomTable:
        fields = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray) and v.shape[:1] == (len(self),):
                v = v[mask]
            fields[f.name] = v
        return AtomTable(**fields)

    def weighted_center(self) -> np.ndarray:
        """Potential-weighted centre (weights ``occ * f_e(0)``) in model coordinates."""
        w = self.occ * self.f0
        tot = float(w.sum())
        if tot <= 0:
            return self.xyz.mean(axis=0)
        return (self.xyz * w[:, None]).sum(axis=0) / tot


def _file_key(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError as e:
        raise InputError(f"{path}: cannot read atomic model ({e.strerror or e})") from None
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=128)
def _element_coefs(atomic_number: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    import gemmi

    c = gemmi.Element(int(atomic_number)).c4322.get_coefs()
    return tuple(float(v) for v in c[:5]), tuple(float(v) for v in c[5:10])


_ATOM_CACHE: collections.OrderedDict = collections.OrderedDict()
_ATOM_CACHE_MAX = 16
_LOCK = threading.RLock()


def read_atoms(path: str | Path) -> AtomTable:
    """Read all atoms of the first model of a PDB/mmCIF file (gzip allowed), cached.

    Raises :class:`InputError` if the file is missing, unreadable or holds no atoms.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a PDB or mmCIF model file")
    key = _file_key(path)
    with _LOCK:
        if key in _ATOM_CACHE:
            _ATOM_CACHE.move_to_end(key)
            return _ATOM_CACHE[key]
    table = _read_atoms_uncached(path)
    with _LOCK:
        _ATOM_CACHE[key] = table
        while len(_ATOM_CACHE) > _ATOM_CACHE_MAX:
            _ATOM_CACHE.popitem(last=False)
    return table


def _read_atoms_uncached(path: Path) -> AtomTable:
    import gemmi

    if path.name.lower().endswith(".gz"):
        import gzip
        import zlib

        try:
            with gzip.open(path, "rb") as fh:
                while fh.read(1 << 22):
                    pass
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"{path}: cannot read atomic model (broken gzip file: {e})") from None
    try:
        st = gemmi.read_structure(str(path))
    except Exception as e:  # gemmi raises RuntimeError / ValueError / OSError on junk
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: cannot read atomic model ({msg})") from None
    if len(st) == 0:
        raise InputError(f"{path}: contains no atoms (not a PDB/mmCIF model?)")
    # Keep only the first model; number atoms so gemmi selections map back to rows.
    while len(st) > 1:
        del st[len(st) - 1]
    try:
        st.setup_entities()
    except Exception:  # noqa: BLE001  entity setup is only a nicety for 'protein'
        pass
    st.assign_serial_numbers()
    model = st[0]
    rows = []
    chains, resnames, names, elements = [], [], [], []
    for ch in model:
        for res in ch:
            water = res.is_water()
            info = gemmi.find_tabulated_residue(res.name)
            poly = bool(info is not None and (info.is_amino_acid() or info.is_nucleic_acid()))
            het = res.het_flag == "H"
            for a in res:
                el = a.element
                rows.append(
                    (
                        a.pos.x,
                        a.pos.y,
                        a.pos.z,
                        el.atomic_number,
                        a.occ,
                        a.b_iso,
                        res.seqid.num,
                        el.is_hydrogen,
                        water,
                        het,
                        poly,
                    )
                )
                chains.append(ch.name)
                resnames.append(res.name)
                names.append(a.name)
                elements.append(el.name)
    if not rows:
        raise InputError(f"{path}: contains no atoms (not a PDB/mmCIF model?)")
    arr = np.array(rows, dtype=np.float64)
    z = arr[:, 3].astype(np.int16)
    if np.any(z <= 0):
        i = int(np.argmax(z <= 0))
        raise InputError(
            f"{path}: atom {names[i]!r} in residue {resnames[i]} {int(arr[i, 6])} of chain "
            f"{chains[i]} has an unknown element; fix the element column"
        )
    coefs = [_element_coefs(int(v)) for v in z]
    ca = np.array([c[0] for c in coefs], dtype=np.float64)
    cb = np.array([c[1] for c in coefs], dtype=np.float64)
    return AtomTable(
        path=str(path),
        xyz=np.ascontiguousarray(arr[:, :3]),
        atomic_number=z,
        element=np.array(elements, dtype=object),
        occ=arr[:, 4].copy(),
        b_iso=arr[:, 5].copy(),
        chain=np.array(chains, dtype=object),
        resname=np.array([r.upper() for r in resnames], dtype=object),
        seqnum=arr[:, 6].astype(np.int64),
        atom_name=np.array(names, dtype=object),
        is_hydrogen=arr[:, 7].astype(bool),
        is_water=arr[:, 8].astype(bool),
        is_het=arr[:, 9].astype(bool),
        is_polymer_residue=arr[:, 10].astype(bool),
        f0=ca.sum(axis=1),
        coefs_a=ca,
        coefs_b=cb,
        structure=st,
    )


# --------------------------------------------------------------------------------------
# Selections
# --------------------------------------------------------------------------------------

_SELECTION_HELP = (
    "syntax: chain A,B | resname STR | resid 10-50 | name CA | element C | protein | ligand | "
    "water | hydrogen | all, joined by and/or/not/but and parentheses, or a gemmi CID like /1/A/10-50"
)
_OPERATORS = {"and", "or", "not", "but", "(", ")"}
_LIST_SELECTORS = {
    "chain": "chain",
    "chains": "chain",
    "chainid": "chain",
    "resname": "resname",
    "resn": "resname",
    "resnames": "resname",
    "resid": "resid",
    "resi": "resid",
    "resseq": "resid",
    "residue": "resid",
    "residues": "resid",
    "name": "name",
    "atomname": "name",
    "element": "element",
    "elem": "element",
}
_FLAG_SELECTORS = {
    "all": "all",
    "everything": "all",
    "none": "none",
    "protein": "polymer",
    "polymer": "polymer",
    "water": "water",
    "waters": "water",
    "solvent": "water",
    "hydrogen": "hydrogen",
    "hydrogens": "hydrogen",
    "ligand": "ligand",
    "ligands": "ligand",
    "hetatm": "het",
    "het": "het",
}
_RANGE_RE = re.compile(r"^(-?\d+)[A-Za-z]?(?:(?:-|:|\.\.)(-?\d+)[A-Za-z]?)?$")


class _SelectionSyntaxError(Exception):
    pass


def _tokenize(text: str) -> list[str]:
    return re.findall(r"\(|\)|,|[^\s(),]+", text)


class _Parser:
    def __init__(self, tokens: list[str], atoms: AtomTable):
        self.toks = tokens
        self.i = 0
        self.atoms = atoms

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        t = self.toks[self.i]
        self.i += 1
        return t

    def parse(self) -> np.ndarray:
        m = self.expr_or()
        if self.peek() is not None:
            raise _SelectionSyntaxError(f"unexpected {self.peek()!r}")
        return m

    def expr_or(self) -> np.ndarray:
        m = self.expr_and()
        while self.peek() is not None and self.peek().lower() == "or":
            self.take()
            m = m | self.expr_and()
        return m

    def expr_and(self) -> np.ndarray:
        m = self.expr_not()
        while self.peek() is not None and self.peek().lower() in ("and", "but"):
            op = self.take().lower()
            rhs = self.expr_not()
            m = m & (~rhs if op == "but" else rhs)
        return m

    def expr_not(self) -> np.ndarray:
        t = self.peek()
        if t is None:
            raise _SelectionSyntaxError("selection ends too early")
        if t.lower() == "not":
            self.take()
            return ~self.expr_not()
        if t == "(":
            self.take()
            m = self.expr_or()
            if self.peek() != ")":
                raise _SelectionSyntaxError("missing ')'")
            self.take()
            return m
        return self.primary()

    def values(self, what: str) -> list[str]:
        vals = []
        while True:
            t = self.peek()
            if t is None or t.lower() in _OPERATORS or t == ")":
                break
            if t == ",":
                self.take()
                continue
            if t.lower() in _LIST_SELECTORS or t.lower() in _FLAG_SELECTORS:
                break
            vals.append(self.take())
        if not vals:
            raise _SelectionSyntaxError(f"'{what}' needs at least one value")
        return vals

    def primary(self) -> np.ndarray:
        a = self.atoms
        word = self.take()
        key = word.lower()
        if key in _FLAG_SELECTORS:
            kind = _FLAG_SELECTORS[key]
            n = len(a)
            if kind == "all":
                return np.ones(n, bool)
            if kind == "none":
                return np.zeros(n, bool)
            if kind == "polymer":
                return a.is_polymer_residue.copy()
            if kind == "water":
                return a.is_water.copy()
            if kind == "hydrogen":
                return a.is_hydrogen.copy()
            if kind == "ligand":
                return ~a.is_polymer_residue & ~a.is_water
            if kind == "het":
                return a.is_het.copy()
        if key not in _LIST_SELECTORS:
            raise _SelectionSyntaxError(f"unknown word {word!r}")
        kind = _LIST_SELECTORS[key]
        vals = self.values(word)
        if kind == "chain":
            return np.isin(a.chain, vals)
        if kind == "resname":
            return np.isin(a.resname, [v.upper() for v in vals])
        if kind == "name":
            return np.isin(a.atom_name, vals) | np.isin(a.atom_name, [v.upper() for v in vals])
        if kind == "element":
            up = {v.capitalize() for v in vals}
            return np.isin(a.element, list(up))
        # residue number ranges
        m = np.zeros(len(a), bool)
        for v in vals:
            r = _RANGE_RE.match(v)
            if not r:
                raise _SelectionSyntaxError(f"bad residue range {v!r} (use e.g. 10-50 or 7)")
            lo = int(r.group(1))
            hi = int(r.group(2)) if r.group(2) is not None else lo
            if hi < lo:
                lo, hi = hi, lo
            m |= (a.seqnum >= lo) & (a.seqnum <= hi)
        return m


def _cid_mask(atoms: AtomTable, text: str) -> np.ndarray:
    import gemmi

    sel = gemmi.Selection(text)
    st = atoms.structure
    mask = np.zeros(len(atoms), bool)
    for model in sel.models(st):
        for ch in sel.chains(model):
            for res in sel.residues(ch):
                for at in sel.atoms(res):
                    mask[at.serial - 1] = True
    return mask


def select_atoms(atoms: AtomTable, selection: str | None) -> np.ndarray:
    """Boolean mask of the atoms matched by ``selection`` (None or '' selects all).

    Syntax: ``chain A,B``, ``resname STR``, ``resid 10-50``, ``name CA``, ``element C``,
    ``protein``, ``ligand``, ``water``, ``hydrogen``, ``hetatm``, ``all``, combined with
    ``and`` / ``or`` / ``not`` / ``but`` (``X but Y`` = ``X and not Y``) and parentheses;
    or a gemmi/MMDB CID when the text starts with ``/`` (e.g. ``/1/A/10-50``).
    """
    if selection is None or not str(selection).strip():
        return np.ones(len(atoms), bool)
    text = str(selection).strip()
    if text.startswith("/"):
        try:
            return _cid_mask(atoms, text)
        except Exception as e:  # noqa: BLE001  gemmi: RuntimeError on bad syntax
            raise InputError(f"{atoms.path}: bad selection {text!r} ({e})") from None
    try:
        return _Parser(_tokenize(text), atoms).parse()
    except _SelectionSyntaxError as e:
        raise InputError(f"{atoms.path}: bad selection {text!r}: {e} ({_SELECTION_HELP})") from None


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


def _filter_atoms(atoms: AtomTable, keep_hydrogens: bool, keep_waters: bool) -> AtomTable:
    m = np.ones(len(atoms), bool)
    if not keep_hydrogens:
        m &= ~atoms.is_hydrogen
    if not keep_waters:
        m &= ~atoms.is_water
    return atoms if m.all() else atoms.subset(m)


# --------------------------------------------------------------------------------------
# Caching
# --------------------------------------------------------------------------------------

_MEM_CACHE: collections.OrderedDict = collections.OrderedDict()
_MEM_CACHE_MAX_BYTES = 1 << 30
_MEM_CACHE_MAX_ITEMS = 32


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
        _ATOM_CACHE.clear()
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
    fkey = _file_key(path)
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


def _load_model(path, pixel_size_a=None, **kwargs) -> Template:
    if pixel_size_a is None:
        raise InputError(
            f"{path}: an atomic model needs a pixel size to compute the template on "
            "(give --pixel-size or pixel_size_a)"
        )
    return template_from_model(path, pixel_size_a, **kwargs)


register_template_loader(_MODEL_SUFFIXES, _load_model)
