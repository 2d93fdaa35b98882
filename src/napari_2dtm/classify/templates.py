"""Template sets for classification: one template per state, all sharing one origin.

A hit's SNR with each state's template is compared, so the templates must be
positioned identically, or one would score higher just by being better centred.
Models converted with ``center="model"`` (two selections of one file lie on one grid)
share the origin by construction; maps the user declares aligned are checked:
:func:`check_templates` warns when pixel sizes, the best superposition or the centres of
mass disagree (:func:`template_alignment` gives the numbers).

Template names become column names (``snr_<name>``, ``p_<name>``) and file names
(``class_<k>_<name>.star``), hence :func:`_safe_name`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from napari_2dtm.errors import InputError
from napari_2dtm.templates.load import _MODEL_SUFFIXES, load_template, template_suffix
from napari_2dtm.templates.template import Template

__all__ = ["TemplateSet", "load_template_set", "check_templates", "template_alignment",
           "default_name"]


def _safe_name(text: str) -> str:
    s = re.sub(r"[^\w.-]+", "_", str(text)).strip("._")
    return s or "template"


@dataclasses.dataclass
class TemplateSet:
    """Two or more templates sharing one origin.

    templates: :class:`~napari_2dtm.Template` per state (cubic volumes, particle centre at
        voxel ``n // 2``, same pixel size).
    names: one short unique name per template (used in column names: ``snr_<name>``).
    reference: index of the reference template (numerator of the log-ratios).
    """

    templates: list
    names: list
    reference: int = 0

    def __post_init__(self):
        if len(self.templates) < 2:
            raise InputError(f"classification needs two or more templates, got {len(self.templates)}")
        if len(self.names) != len(self.templates):
            raise InputError(f"{len(self.names)} names for {len(self.templates)} templates")
        self.names = [_safe_name(n) for n in self.names]
        if len(set(self.names)) != len(self.names):
            raise InputError(f"template names must be unique, got {self.names}")
        self.reference = _reference_index(self.reference, self.names)

    def __len__(self) -> int:
        return len(self.templates)

    @property
    def pixel_size_a(self) -> float:
        return float(self.templates[0].pixel_size_a)


def _reference_index(reference, names: Sequence[str]) -> int:
    if isinstance(reference, str) and not reference.lstrip("-").isdigit():
        key = _safe_name(reference)
        if key not in names:
            raise InputError(f"reference {reference!r} is not one of the templates {list(names)}")
        return list(names).index(key)
    r = int(reference)
    if not 0 <= r < len(names):
        raise InputError(f"reference index {r} out of range for {len(names)} templates")
    return r


def default_name(source, selection) -> str:
    """A short name for a template: its file name without suffixes, plus the selection."""
    if isinstance(source, Template):
        base = Path(str(source.source)).name if source.source not in (None, "", "array") else "template"
    else:
        base = Path(str(source)).name
    low = base.lower()
    for suf in (".gz", ".pdb", ".ent", ".cif", ".mmcif", ".mrc", ".map", ".mrcs"):
        if low.endswith(suf):
            base, low = base[: -len(suf)], low[: -len(suf)]
    if selection:
        base += "_" + selection
    return _safe_name(base)


def load_template_set(
    sources: Sequence,
    pixel_size_a: float,
    names: Sequence[str] | None = None,
    selections: Sequence[str | None] | None = None,
    reference=0,
    bfactor_a2: float | None = None,
    box: int | None = None,
) -> TemplateSet:
    """Load templates that share one origin.

    sources: per template a model file (``.pdb/.cif[.gz]``), a map file (``.mrc``, assumed
        aligned with the others by the user), or a :class:`Template`.
    pixel_size_a: Angstrom per voxel for models (maps keep their header pixel size).
    selections: per template an atom selection for models (``"not chain B"``) or None.
    Models are converted with ``center="model"``: the grid is fixed in model coordinates
    and sized from the whole model, so selections of one file share the origin exactly.
    If any model is given, all models get the same box (the largest automatic one).
    """
    sources = list(sources)
    n = len(sources)
    selections = list(selections) if selections is not None else [None] * n
    if len(selections) != n:
        raise InputError(f"{len(selections)} selections for {n} templates")
    selections = [s.strip() if isinstance(s, str) and s.strip() else None for s in selections]
    for src, sel in zip(sources, selections):
        if sel and not _is_model(src):
            raise InputError(f"{src}: an atom selection needs an atomic model (.pdb/.cif), not a map")
    kw = {} if bfactor_a2 is None else {"bfactor_a2": float(bfactor_a2)}
    auto = {}  # models at their automatic box; kept when that is the common box
    if box is None:
        auto = {i: load_template(src, pixel_size_a, selection=sel, center="model", **kw)
                for i, (src, sel) in enumerate(zip(sources, selections)) if _is_model(src)}
        box = max((t.box for t in auto.values()), default=None)
    templates = []
    for i, (src, sel) in enumerate(zip(sources, selections)):
        if _is_model(src):
            t = auto.get(i)
            if t is None or t.box != box:
                t = load_template(src, pixel_size_a, selection=sel, center="model", box=box, **kw)
            templates.append(t)
        else:
            templates.append(load_template(src))
    if names is None:
        names = [default_name(s, sel) for s, sel in zip(sources, selections)]
        if len(set(names)) != len(names):
            names = [f"{nm}_{i + 1}" for i, nm in enumerate(names)]
    return TemplateSet(templates, list(names), reference)


def _is_model(src) -> bool:
    if isinstance(src, (Template, np.ndarray)):
        return False
    return template_suffix(src) in _MODEL_SUFFIXES


def _center_of_mass_a(t: Template) -> np.ndarray:
    """Potential-weighted centre (x, y, z) in Angstrom relative to voxel n // 2."""
    v = np.clip(np.asarray(t.volume, np.float64), 0.0, None)
    s = v.sum()
    if not s > 0:
        return np.zeros(3)
    c = t.box // 2
    zs, ys, xs = (np.arange(t.box) - c for _ in range(3))
    com = np.array([(v.sum((0, 1)) * xs).sum(), (v.sum((0, 2)) * ys).sum(), (v.sum((1, 2)) * zs).sum()])
    return com / s * t.pixel_size_a


def _radius_a(t: Template) -> float:
    """Radius (Angstrom) holding 99 % of the positive potential around voxel n // 2."""
    v = np.clip(np.asarray(t.volume, np.float64), 0.0, None)
    c = t.box // 2
    g = np.arange(t.box) - c
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2).ravel()
    order = np.argsort(r)
    cum = np.cumsum(v.ravel()[order])
    if not cum[-1] > 0:
        return 0.0
    return float(r[order][np.searchsorted(cum, 0.99 * cum[-1])]) * t.pixel_size_a


def _superposition_shift_a(a: Template, b: Template) -> np.ndarray:
    """Shift (x, y, z) in Angstrom that best superimposes ``b`` on ``a`` (3D cross-
    correlation peak, parabolic sub-voxel refinement). Zero for aligned templates, also
    when one lacks a subunit, since the shared part dominates the overlap."""
    n = max(a.box, b.box)

    def pad(v):
        out = np.zeros((n, n, n), np.float64)
        o = n // 2 - v.shape[0] // 2
        out[o : o + v.shape[0], o : o + v.shape[0], o : o + v.shape[0]] = v
        return out - out.mean()

    fa, fb = np.fft.rfftn(pad(a.volume)), np.fft.rfftn(pad(b.volume))
    cc = np.fft.irfftn(fa * np.conj(fb), s=(n, n, n))
    idx = np.unravel_index(int(np.argmax(cc)), cc.shape)
    shift = []
    for ax, i in enumerate(idx):
        m, p = list(idx), list(idx)
        m[ax], p[ax] = (i - 1) % n, (i + 1) % n
        c0, cm, cp = cc[idx], cc[tuple(m)], cc[tuple(p)]
        den = cm - 2 * c0 + cp
        frac = 0.5 * (cm - cp) / den if den < 0 else 0.0
        s = i if i <= n // 2 else i - n
        shift.append(s + frac)
    z, y, x = shift  # b moved by +shift lands on a
    return np.array([x, y, z]) * a.pixel_size_a


def template_alignment(ts: TemplateSet) -> pd.DataFrame:
    """Per template, relative to the reference: pixel size, box, integrated potential
    ratio, centre-of-mass distance (A), the distance a removed part could explain (A),
    and the superposition shift (A). One row per template."""
    ref = ts.templates[ts.reference]
    ref_com, ref_mass = _center_of_mass_a(ref), float(np.clip(ref.volume, 0, None).sum()) * ref.pixel_size_a**3
    radius = max(_radius_a(t) for t in ts.templates)
    rows = []
    for name, t in zip(ts.names, ts.templates):
        mass = float(np.clip(t.volume, 0, None).sum()) * t.pixel_size_a**3
        ratio = mass / ref_mass if ref_mass > 0 else float("nan")
        frac = abs(1.0 - min(ratio, 1.0 / ratio)) if ratio > 0 else 1.0
        # A part with mass fraction f removed from within radius R moves the centre of mass
        # by at most f / (1 - f) * R.
        explained = frac / max(1.0 - frac, 1e-6) * radius
        same_px = abs(t.pixel_size_a - ref.pixel_size_a) <= 1e-3 * ref.pixel_size_a
        shift = _superposition_shift_a(ref, t) if same_px else np.full(3, np.nan)
        rows.append({
            "name": name,
            "pixel_size_a": float(t.pixel_size_a),
            "box": int(t.box),
            "potential_ratio": ratio,
            "com_distance_a": float(np.linalg.norm(_center_of_mass_a(t) - ref_com)),
            "com_explained_a": explained,
            "superposition_shift_a": float(np.linalg.norm(shift)),
        })
    return pd.DataFrame(rows)


def check_templates(ts: TemplateSet, tolerance_px: float = 1.0) -> list[str]:
    """Warnings (one line each) when the templates do not look aligned.

    Checks: equal pixel sizes (0.1 %); the best superposition needs no shift beyond
    ``tolerance_px`` voxels; the centres of mass differ by no more than a removed or added
    part of the mass difference could explain (plus ``tolerance_px``). An empty list means
    nothing suspicious. The potential's overall scale does not matter (scores are
    normalised cross-correlations).
    """
    tab = template_alignment(ts)
    px = ts.pixel_size_a
    ref = ts.names[ts.reference]
    out = []
    for _, r in tab.iterrows():
        if r["name"] == ref:
            continue
        if abs(r["pixel_size_a"] - px) > 1e-3 * px:
            out.append(f"{r['name']}: pixel size {r['pixel_size_a']:g} A differs from "
                       f"{ref}'s {px:g} A; resample the maps to one pixel size")
            continue
        if r["superposition_shift_a"] > tolerance_px * px:
            out.append(f"{r['name']}: best superposition on {ref} needs a shift of "
                       f"{r['superposition_shift_a']:.1f} A; the templates do not share one origin")
        if r["com_distance_a"] > r["com_explained_a"] + tolerance_px * px:
            out.append(f"{r['name']}: centre of mass {r['com_distance_a']:.1f} A from {ref}'s, more "
                       f"than its {100 * abs(1 - r['potential_ratio']):.0f} % mass difference explains "
                       f"({r['com_explained_a']:.1f} A); check the alignment")
    return out

