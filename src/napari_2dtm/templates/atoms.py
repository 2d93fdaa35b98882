"""Atoms of an atomic model (PDB / mmCIF, gzip allowed) as flat arrays.

Only the first model of a file is kept; atoms are numbered in file order so that gemmi
selections (see :mod:`napari_2dtm.templates.selection`) map back to rows of the table.
Each atom carries its element's 5-Gaussian electron scattering factor from gemmi
(``gemmi.Element(...).c4322``, Peng et al. 1996): amplitudes ``a_i`` in Angstrom, widths
``b_i`` in A^2; ``f0 = sum(a_i) = f_e(0)`` weights the potential-weighted centre.

Parsed files are kept in a small LRU cache keyed by (resolved path, mtime, size), so one
model read for a search, its omit templates and the simulator is parsed once.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
from pathlib import Path

import numpy as np

from napari_2dtm.errors import InputError

__all__ = ["AtomTable", "read_atoms", "file_key", "clear_atom_cache"]


@dataclasses.dataclass(frozen=True)
class AtomTable:
    """All atoms of the first model of a structure file, as flat arrays (one row per atom).

    ``xyz`` is ``(N, 3)`` float64 in Angstrom (model coordinates, x, y, z order).
    ``f0`` is ``sum(a_i)`` of the element's 5-Gaussian electron scattering factor (A),
    i.e. ``f_e(0)``: each atom's integrated potential is ``occ * f0 * VOLT_A2`` V*A^3
    (``VOLT_A2`` in :mod:`napari_2dtm.templates.model`).
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


def file_key(path: Path) -> tuple:
    """Identity of a model file for caches: resolved path, mtime (ns) and size (bytes)."""
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


def clear_atom_cache() -> None:
    """Forget every parsed model file."""
    with _LOCK:
        _ATOM_CACHE.clear()


def read_atoms(path: str | Path) -> AtomTable:
    """Read all atoms of the first model of a PDB/mmCIF file (gzip allowed), cached.

    Raises :class:`InputError` if the file is missing, unreadable or holds no atoms.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a PDB or mmCIF model file")
    key = file_key(path)
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


def _filter_atoms(atoms: AtomTable, keep_hydrogens: bool, keep_waters: bool) -> AtomTable:
    m = np.ones(len(atoms), bool)
    if not keep_hydrogens:
        m &= ~atoms.is_hydrogen
    if not keep_waters:
        m &= ~atoms.is_water
    return atoms if m.all() else atoms.subset(m)
