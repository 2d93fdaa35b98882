"""Micrograph inputs of a batch: files from folders, globs and lists, and their CTF.

:func:`find_micrographs` turns what a user names (folders, glob patterns, paths, ``.txt``
lists) into micrograph paths whose names are unique (each names a results folder,
:func:`micrograph_name`). :class:`CTFSource` gives each micrograph its CTF: a CTFFIND
output matched by name, a row of a RELION ``micrographs_ctf.star`` (through the optics
<-> CTF mapping of :mod:`napari_2dtm.io.star`), or one CTF for all.

Pixel size, one rule (:func:`read_micrograph_with_ctf`, used by ``search`` and ``batch``):
the user's ``--pixel-size`` wins; else the micrograph header's. A CTF file (CTFFIND
output, STAR optics) that states another pixel size (more than
:data:`PIXEL_SIZE_RTOL` apart) is refused in one line naming both files and both values,
since the defoci were fitted at the CTF file's pixel size and one of the two is wrong;
``--pixel-size`` settles it. A CTF file's pixel size is used only when the header has
none.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from napari_2dtm.core.ctf import CTFParams, read_ctffind
from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import read_micrograph
from napari_2dtm.io.star import ctf_from_star, join_optics, pixel_size_from_star, read_star

__all__ = ["find_micrographs", "micrograph_name", "CTFSource", "MICROGRAPH_SUFFIXES",
           "read_micrograph_with_ctf", "PIXEL_SIZE_RTOL"]

MICROGRAPH_SUFFIXES = (".mrc", ".mrcs", ".MRC", ".MRCS")
#: Relative difference between a CTF file's and the header's pixel size that is refused.
PIXEL_SIZE_RTOL = 0.01


def read_micrograph_with_ctf(path, pixel_size_a: float | None = None,
                             ctf_pixel_size_a: float | None = None, ctf_file=None):
    """``(image, pixel_size_a)`` of a micrograph by the module's pixel-size rule:
    ``pixel_size_a`` (the user's) wins, else the header's, which must agree with
    ``ctf_pixel_size_a`` (stated in ``ctf_file``) within :data:`PIXEL_SIZE_RTOL`."""
    if pixel_size_a is not None or ctf_pixel_size_a is None:
        return read_micrograph(path, pixel_size_a)
    try:
        image, header_px = read_micrograph(path)
    except InputError:
        # No header pixel size (or no file: then this says so): the CTF file's.
        return read_micrograph(path, ctf_pixel_size_a)
    if abs(ctf_pixel_size_a - header_px) > PIXEL_SIZE_RTOL * header_px:
        raise InputError(f"{path}: pixel size {header_px:g} A in its header but "
                         f"{ctf_pixel_size_a:g} A in {ctf_file or 'the CTF file'}; give "
                         "--pixel-size to say which is right")
    return image, header_px


def find_micrographs(inputs: Iterable) -> list[Path]:
    """Micrograph paths from folders (their ``*.mrc``), glob patterns, plain paths, or
    text files listing one path per line (``.txt``/``.lst``). Sorted within a folder or
    glob, in the given order otherwise, without duplicates.

    A pattern or folder that matches nothing is an :class:`InputError`; a listed file that
    does not exist is kept (it fails in the batch with a clear message).
    """
    out: list[Path] = []
    for item in inputs:
        s = str(item)
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix in MICROGRAPH_SUFFIXES and q.is_file())
            if not found:
                raise InputError(f"{p}: no micrographs (*.mrc) in this folder")
            out += found
        elif glob.has_magic(s):
            found = sorted(Path(q) for q in glob.glob(s))
            if not found:
                raise InputError(f"{s}: no file matches this pattern")
            out += found
        elif p.suffix.lower() in (".txt", ".lst") and p.is_file():
            base = p.parent
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line)
                    out.append(q if q.is_absolute() else base / q)
        else:
            out.append(p)
    seen, unique = set(), []
    for p in out:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    names: dict[str, Path] = {}
    for p in unique:
        n = micrograph_name(p)
        if n in names:
            raise InputError(f"{p}: same name as {names[n]}; results folders are named after "
                             "the micrograph file, so names must be unique")
        names[n] = p
    return unique


def micrograph_name(path) -> str:
    """Results-folder name of a micrograph: its file name without the extension."""
    name = Path(path).name
    for suf in MICROGRAPH_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


class CTFSource:
    """Per-micrograph CTF: a CTFFIND file matched by name, a STAR file, or one CTF for all.

    ctffind_dir: folder of CTFFIND4/5 output ``.txt`` files; for micrograph ``NAME.mrc``
    the file ``NAME.txt`` or ``NAME_<anything>.txt`` (not ``*_avrot.txt``) is used.
    star: RELION STAR file (``micrographs_ctf.star``) with ``rlnMicrographName``,
    ``rlnDefocusU``, ``rlnDefocusV``, ``rlnDefocusAngle`` (and optionally
    ``rlnPhaseShift``; voltage, Cs, amplitude contrast and pixel size from the optics
    block), matched by file name. default: the CTF used when neither is given, with
    default_pixel_size_a read from the file default_source (e.g. ``--ctffind``).
    """

    def __init__(self, ctffind_dir=None, star=None, default: CTFParams | None = None,
                 default_pixel_size_a: float | None = None, default_source=None):
        if ctffind_dir is not None and star is not None:
            raise InputError("give CTFFIND files or a STAR file for the CTF, not both")
        self.ctffind_dir = Path(ctffind_dir) if ctffind_dir is not None else None
        if self.ctffind_dir is not None and not self.ctffind_dir.is_dir():
            raise InputError(f"{self.ctffind_dir}: CTFFIND folder not found")
        self.default = default or CTFParams()
        self.default_pixel_size_a = default_pixel_size_a
        self.default_source = default_source
        self.star = Path(star) if star is not None else None
        self._table = _read_ctf_star(self.star) if self.star is not None else None

    @property
    def star_micrographs(self) -> list[str]:
        return [] if self._table is None else list(self._table["rlnMicrographName"])

    def for_micrograph(self, path) -> tuple[CTFParams, float | None]:
        """``(CTFParams, pixel size from the CTF source or None)`` for one micrograph."""
        path = Path(path)
        if self.ctffind_dir is not None:
            return read_ctffind(self._match_ctffind(path))
        if self._table is not None:
            return self._from_star(path)
        return self.default, self.default_pixel_size_a

    def source_file(self, path) -> str | None:
        """The file the CTF (and its pixel size) of micrograph ``path`` comes from."""
        if self.ctffind_dir is not None:
            return str(self._match_ctffind(Path(path)))
        if self.star is not None:
            return str(self.star)
        return None if self.default_source is None else str(self.default_source)

    def _match_ctffind(self, path: Path) -> Path:
        stem = micrograph_name(path)
        exact = self.ctffind_dir / f"{stem}.txt"
        if exact.is_file():
            return exact
        cands = sorted(p for p in self.ctffind_dir.glob(f"{glob.escape(stem)}[_.-]*.txt")
                       if not p.name.endswith("_avrot.txt") and p.is_file())
        if not cands:
            raise InputError(f"{path}: no CTFFIND file {stem}.txt or {stem}_*.txt in "
                             f"{self.ctffind_dir}")
        if len(cands) > 1:
            raise InputError(f"{path}: several CTFFIND files match in {self.ctffind_dir} "
                             f"({', '.join(p.name for p in cands[:3])})")
        return cands[0]

    def _from_star(self, path: Path) -> tuple[CTFParams, float | None]:
        t = self._table
        names = t["rlnMicrographName"].astype(str)
        hit = t[names.map(lambda s: Path(s).name) == path.name]
        if hit.empty:
            hit = t[names.map(micrograph_name) == micrograph_name(path)]
        if hit.empty:
            raise InputError(f"{path}: not listed in {self.star} (rlnMicrographName)")
        r = hit.iloc[0]
        # a micrograph row without a defocus has none (0), not the CTFParams default
        return (ctf_from_star(r, CTFParams(defocus1_a=0.0), source=self.star),
                pixel_size_from_star(r))


def _read_ctf_star(path: Path) -> pd.DataFrame:
    blocks = read_star(path)
    mics = next((df for name, df in blocks.items()
                 if isinstance(df, pd.DataFrame) and "rlnMicrographName" in df.columns), None)
    if mics is None:
        raise InputError(f"{path}: no table with rlnMicrographName")
    if "rlnDefocusU" not in mics.columns:
        raise InputError(f"{path}: no rlnDefocusU column (run CTF estimation first)")
    return join_optics(mics, blocks.get("optics")).reset_index(drop=True)
