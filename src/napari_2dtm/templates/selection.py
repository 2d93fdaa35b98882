"""Atom selections: a small boolean language over an :class:`AtomTable`, or a gemmi CID.

Words: ``chain A,B``, ``resname STR``, ``resid 10-50``, ``name CA``, ``element C`` (lists)
and ``protein``, ``ligand``, ``water``, ``hydrogen``, ``hetatm``, ``all``, ``none`` (flags),
joined by ``and`` / ``or`` / ``not`` / ``but`` (``X but Y`` = ``X and not Y``) and
parentheses; ``not`` binds tightest, then ``and``/``but``, then ``or``. Text starting with
``/`` is handed to gemmi as an MMDB CID (``/1/A/10-50``) instead. A selection gives a
boolean mask over the table's rows; errors become one-line :class:`InputError` messages
naming the file, with the syntax summary.
"""

from __future__ import annotations

import re

import numpy as np

from napari_2dtm.errors import InputError

from .atoms import AtomTable

__all__ = ["select_atoms"]


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
