"""The reconstruction job shared by ``napari-2dtm reconstruct`` and the napari widget.

Steps, for hits on one or more micrographs: local refinement with the template
(:mod:`napari_2dtm.hits.refine`), particle boxes and STAR (:mod:`napari_2dtm.reconstruct.particles`),
reconstruction (:mod:`napari_2dtm.reconstruct.reconstructor`); with an omit template the hits are
refined with it too, a second map is made from those poses, and the template-bias
metric Omega (:mod:`napari_2dtm.reconstruct.bias`) and the density in the omitted region are
reported. Everything lands in a job folder, written to a temporary sibling and moved
into place (an existing folder is replaced only with ``overwrite``)::

    map.mrc  map_filtered.mrc  half1.mrc  half2.mrc  mask.mrc  fsc.csv  fsc.png
    particles.star  particles.mrcs  refined_hits.csv
    [omit_map.mrc  omit_map_filtered.mrc  omit_half1.mrc  omit_half2.mrc  omit_fsc.csv
     omit_particles.star  omit_particles.mrcs  omit_refined_hits.csv  omit_region_mask.mrc]
    reconstruct.json   (all parameters, resolutions, Omega, timings, the FSC note)

No Qt, no napari: the widget runs :func:`run_job` in a worker thread.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.errors import InputError
from napari_2dtm.hits.refine import DEFAULT_STAGES, RefineStage, refine_hits
from napari_2dtm.io.mrc import read_micrograph, replace_dir, write_mrc
from napari_2dtm.reconstruct.bias import (
    BiasReport,
    difference_mask,
    fit_to_box,
    template_bias,
)
from napari_2dtm.reconstruct.particles import (
    ParticleSet,
    concat_particles,
    extract_particles,
    write_particles,
)
from napari_2dtm.reconstruct.reconstructor import (
    FSC_NOTE,
    Reconstruction,
    reconstruct,
)
from napari_2dtm.templates.template import Template, load_template

__all__ = ["MicrographInput", "JobSettings", "JobProgress", "JobResult", "run_job",
           "micrograph_from_results", "micrographs_from_star", "density_sigma"]


@dataclasses.dataclass
class MicrographInput:
    """One micrograph's data: image ``(ny, nx)``, pixel size, CTF, hits (x, y in its
    pixels, phi/theta/psi, defocus), a name for the STAR file, and the search result
    the hits came from (for z-scores on the search's scale; optional)."""

    image: np.ndarray
    pixel_size_a: float
    ctf: CTFParams
    hits: pd.DataFrame
    name: str = "micrograph.mrc"
    result: object | None = None


@dataclasses.dataclass
class JobSettings:
    """Parameters of a job (saved in ``reconstruct.json``).

    box: particle box in pixels (None: 1.25 x the template box, even); refine: run the
    local refinement (``stages``: :data:`napari_2dtm.hits.refine.DEFAULT_STAGES` by
    default); min_score / score_column: keep hits with that score at least; symmetry,
    pad, ssnr, mask ("auto", "template" or None) as in :func:`reconstruct`;
    omit_divisor: Omega mask divisor.
    """

    box: int | None = None
    refine: bool = True
    stages: tuple | None = None
    min_score: float | None = None
    score_column: str = "zscore"
    symmetry: str = "C1"
    pad: int = 2
    ssnr: float | None = None
    mask: str | None = "auto"
    omit_divisor: float = 10.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stages"] = [dataclasses.asdict(s) if isinstance(s, RefineStage) else s
                       for s in (self.stages or DEFAULT_STAGES)] if self.refine else None
        return d


@dataclasses.dataclass
class JobProgress:
    """A progress report: ``step`` ("refine", "extract", "reconstruct", "write"),
    ``fraction`` of the whole job (0-1) and a one-line message."""

    step: str
    fraction: float
    message: str


@dataclasses.dataclass
class JobResult:
    folder: Path
    reconstruction: Reconstruction
    particles: ParticleSet
    omit_reconstruction: Reconstruction | None
    bias: BiasReport | None
    summary: dict


class JobCancelled(RuntimeError):
    """The job was cancelled; nothing was written."""


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def micrograph_from_results(folder, micrograph=None) -> MicrographInput:
    """A results folder of ``napari-2dtm search``: its hits, CTF, search result and
    micrograph (``micrograph`` overrides the path recorded in ``search.json``)."""
    from napari_2dtm.search.results import read_results  # noqa: PLC0415

    folder = Path(folder)
    res = read_results(folder)
    path = micrograph or res.metadata.get("micrograph")
    if not path:
        raise InputError(f"{folder}: search.json records no micrograph; give it (--micrograph)")
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = folder / path
    image, px = read_micrograph(path, res.input_pixel_size_a)
    ctf = CTFParams(**res.metadata.get("config", {}).get("ctf", {}))
    hits = res.hits if res.hits is not None else pd.DataFrame()
    if len(hits) == 0:
        raise InputError(f"{folder}: the results folder has no hits")
    return MicrographInput(image, px, ctf, hits, path.name, res)


def micrographs_from_star(star, micrographs: Sequence | None = None,
                          pixel_size_a: float | None = None) -> list[MicrographInput]:
    """Hits from a STAR file (ours or RELION 5: optics + particles with coordinates,
    angles and defoci), grouped by ``rlnMicrographName``; micrographs are found next to
    the STAR file unless given (in the order of their first appearance)."""
    import starfile  # noqa: PLC0415

    from napari_2dtm.search.results import STAR_COLUMNS  # noqa: PLC0415

    star = Path(star)
    if not star.exists():
        raise InputError(f"{star}: file not found")
    try:
        blocks = starfile.read(star, always_dict=True)
    except Exception as e:  # parser errors vary
        raise InputError(f"{star}: not a readable STAR file ({type(e).__name__})") from None
    parts = blocks.get("particles", next(iter(blocks.values()), None))
    if not isinstance(parts, pd.DataFrame) or "rlnCoordinateX" not in parts:
        raise InputError(f"{star}: no particles block with rlnCoordinateX/Y")
    optics = blocks.get("optics")
    o = optics.iloc[0] if isinstance(optics, pd.DataFrame) and len(optics) else {}
    hits = parts.rename(columns={v: k for k, v in STAR_COLUMNS.items()})
    for c in ("phi", "theta", "psi"):
        if c not in hits:
            raise InputError(f"{star}: lacks rlnAngleRot/Tilt/Psi")
    names = (hits["rlnMicrographName"].astype(str) if "rlnMicrographName" in hits
             else pd.Series(["micrograph.mrc"] * len(hits)))
    order = list(dict.fromkeys(names))
    if micrographs is not None and len(micrographs) != len(order):
        raise InputError(f"{star}: names {len(order)} micrographs but {len(micrographs)} were given")
    out = []
    for k, name in enumerate(order):
        path = Path(micrographs[k]) if micrographs is not None else Path(name)
        if micrographs is None and not path.is_absolute():
            path = star.parent / path
        image, px = read_micrograph(path, pixel_size_a or _optics_value(o, "rlnMicrographPixelSize"))
        sel = hits[names.to_numpy() == name].reset_index(drop=True)
        d1 = float(sel["defocus1_a"].median()) if "defocus1_a" in sel else 10000.0
        d2 = float(sel["defocus2_a"].median()) if "defocus2_a" in sel else d1
        ctf = CTFParams(
            defocus1_a=d1, defocus2_a=d2,
            astigmatism_angle_deg=float(sel["astigmatism_angle_deg"].median())
            if "astigmatism_angle_deg" in sel else 0.0,
            voltage_kv=_optics_value(o, "rlnVoltage", 300.0),
            cs_mm=_optics_value(o, "rlnSphericalAberration", 2.7),
            amplitude_contrast=_optics_value(o, "rlnAmplitudeContrast", 0.07),
        )
        if "defocus1_a" in sel and "defocus_a" not in sel:
            sel["defocus_a"] = 0.5 * (sel["defocus1_a"] + sel["defocus2_a"])
        out.append(MicrographInput(image, px, ctf, sel, path.name))
    return out


def _optics_value(o, key, default=None):
    try:
        v = float(o[key])
        return v if math.isfinite(v) else default
    except (KeyError, TypeError, ValueError):
        return default


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------


def _solvent(template: np.ndarray) -> np.ndarray:
    """Voxels well away from the particle (template support dilated by 3 voxels) inside
    the sphere inscribed in the box, less a 3-voxel rim."""
    from scipy import ndimage  # noqa: PLC0415

    n = template.shape[0]
    support = ndimage.binary_dilation(template > 0.05 * template.max(), iterations=3)
    g = np.arange(n) - n // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    return ~support & (r < n // 2 - 3)


def density_sigma(volume: np.ndarray, region: np.ndarray, template: np.ndarray) -> float:
    """``(mean in region - mean of solvent) / SD of solvent`` (solvent from the template)."""
    solvent = _solvent(template)
    if solvent.sum() < 50 or not region.any():
        return float("nan")
    s = volume[solvent]
    sd = float(s.std())
    return float((volume[region].mean() - s.mean()) / sd) if sd > 0 else float("nan")


# --------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------


def _load(template, px, what) -> Template:
    t = load_template(template, pixel_size_a=px)
    if abs(t.pixel_size_a - px) > 1e-3 * px:
        raise InputError(f"{t.source}: {what} pixel size {t.pixel_size_a:g} A differs from the "
                         f"micrograph's {px:g} A; make it at the micrograph pixel size")
    return t


def _default_box(t: Template) -> int:
    b = int(math.ceil(1.25 * t.box))
    return b + b % 2


def _fsc_plot(path: Path, rec: Reconstruction, omit: Reconstruction | None):
    """FSC curves as a PNG (matplotlib's Agg canvas, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    draw_fsc(fig.add_subplot(111), rec, omit)
    fig.tight_layout()
    fig.savefig(path)


def draw_fsc(ax, rec: Reconstruction, omit: Reconstruction | None = None):
    """Draw FSC curves (unmasked, masked; omit map dashed) on a matplotlib axes."""
    t = rec.fsc
    ax.plot(t["frequency_inv_a"], t["fsc_unmasked"], color="#1f77b4",
            label=f"unmasked ({rec.resolution_a:.1f} Å)")
    if rec.resolution_masked_a is not None:
        ax.plot(t["frequency_inv_a"], t["fsc_masked"], color="#d62728",
                label=f"masked ({rec.resolution_masked_a:.1f} Å)")
    if omit is not None:
        o = omit.fsc
        res = omit.resolution_masked_a or omit.resolution_a
        ax.plot(o["frequency_inv_a"], o["fsc_masked"] if omit.resolution_masked_a else
                o["fsc_unmasked"], "--", color="#2ca02c", label=f"omit-template map ({res:.1f} Å)")
    ax.axhline(0.143, color="gray", lw=0.8, ls=":")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlim(0, float(t["frequency_inv_a"].iloc[-1]))
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC (half maps)")
    ax.set_title("FSC — not gold-standard (poses from the template)", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")


def _write_rec(tmp: Path, prefix: str, rec: Reconstruction):
    px = rec.pixel_size_a
    write_mrc(tmp / f"{prefix}map.mrc", rec.full, px)
    write_mrc(tmp / f"{prefix}map_filtered.mrc", rec.filtered, px)
    write_mrc(tmp / f"{prefix}half1.mrc", rec.half1, px)
    write_mrc(tmp / f"{prefix}half2.mrc", rec.half2, px)
    if rec.mask is not None:
        write_mrc(tmp / f"{prefix}mask.mrc", rec.mask, px)
    with open(tmp / f"{prefix}fsc.csv", "w") as f:
        f.write(f"# {FSC_NOTE}\n")
        rec.fsc.to_csv(f, index=False, float_format="%.6g")


def _rec_summary(rec: Reconstruction) -> dict:
    return {
        "resolution_a": rec.resolution_a,
        "resolution_masked_a": rec.resolution_masked_a,
        "n_particles_half1": rec.n_particles[0],
        "n_particles_half2": rec.n_particles[1],
        "params": rec.params,
    }


def run_job(micrographs: Sequence[MicrographInput], template, out_dir, settings: JobSettings | None = None,
            omit_template=None, overwrite: bool = False,
            progress: Callable[[JobProgress], None] | None = None,
            cancel: threading.Event | None = None) -> JobResult:
    """Refine, box, reconstruct (and with ``omit_template`` the bias check); write the job
    folder ``out_dir``. Raises :class:`JobCancelled` when ``cancel`` is set (nothing
    written) and :class:`InputError` on bad input."""
    from napari_2dtm.hits.refine import RefinementCancelled  # noqa: PLC0415
    from napari_2dtm.reconstruct.reconstructor import (  # noqa: PLC0415
        ReconstructionCancelled,
        soft_mask,
    )

    s = settings or JobSettings()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise InputError(f"{out_dir}: job folder exists; use --overwrite to replace it")
    mics = list(micrographs)
    if not mics:
        raise InputError("no micrographs given")
    px = float(mics[0].pixel_size_a)
    for m in mics:
        if abs(m.pixel_size_a - px) > 1e-3 * px:
            raise InputError(f"{m.name}: pixel size {m.pixel_size_a:g} A differs from {px:g} A "
                             "of the first micrograph")
    t_main = _load(template, px, "template")
    t_omit = _load(omit_template, px, "omit template") if omit_template is not None else None
    if t_omit is not None and t_omit.box != t_main.box:
        raise InputError(f"{t_omit.source}: omit template box {t_omit.box} differs from the "
                         f"template's {t_main.box}; make both with center='model' (same grid)")
    box = int(s.box) if s.box else _default_box(t_main)
    stages = tuple(s.stages) if s.stages else DEFAULT_STAGES
    cancel = cancel or threading.Event()
    timings: dict[str, float] = {}
    n_hits = []
    for m in mics:
        h = m.hits
        if s.min_score is not None:
            if s.score_column not in h:
                raise InputError(f"{m.name}: hits have no {s.score_column!r} column to select on")
            h = h[h[s.score_column] >= s.min_score]
        n_hits.append(len(h))
    total_hits = sum(n_hits)
    if total_hits == 0:
        raise InputError("no hits to reconstruct (after the score selection)")
    templates = [("", t_main)] + ([("omit_", t_omit)] if t_omit is not None else [])
    # progress weights: refinement dominates; reconstruction per map
    w_ref = 0.8 if s.refine else 0.0
    w_rec = (1.0 - w_ref - 0.05) / len(templates)

    def report(step, frac, msg):
        if cancel.is_set():
            raise JobCancelled("reconstruction job cancelled")
        if progress is not None:
            progress(JobProgress(step, float(min(max(frac, 0.0), 1.0)), msg))

    try:
        sets = {p: [] for p, _ in templates}
        refined_tables = {p: [] for p, _ in templates}
        done = 0
        t0 = time.perf_counter()
        for m, nh in zip(mics, n_hits):
            hits = m.hits
            if s.min_score is not None:
                hits = hits[hits[s.score_column] >= s.min_score].reset_index(drop=True)
            if nh == 0:
                continue
            for k, (prefix, tmpl) in enumerate(templates):
                if s.refine:
                    base = done * len(templates) + k * nh

                    def prog(i, n, base=base, name=m.name, nh=nh,
                             what="omit template" if prefix else "template"):
                        frac = w_ref * (base + i * nh / max(n, 1)) / (total_hits * len(templates))
                        report("refine", frac, f"refining {name} with the {what}"
                               f" ({int(i * nh / max(n, 1))}/{nh} hits)")

                    refined = refine_hits(m.image, m.pixel_size_a, tmpl, hits, m.ctf,
                                          stages=stages, result=m.result, progress=prog,
                                          cancel=cancel)
                else:
                    refined = hits.copy()
                refined.insert(0, "micrograph", m.name)
                refined_tables[prefix].append(refined)
                sets[prefix].append(extract_particles(m.image, m.pixel_size_a, refined, box,
                                                      m.ctf, m.name))
            done += nh
        timings["refine_s"] = time.perf_counter() - t0
        report("extract", w_ref, f"{total_hits} hits refined; boxing particles")
        recs = {}
        particles = {}
        for k, (prefix, tmpl) in enumerate(templates):
            ps = concat_particles(sets[prefix])
            particles[prefix] = ps
            mask = s.mask
            if mask == "template":
                mask = soft_mask(fit_to_box(tmpl.volume, box), px)
            base = w_ref + k * w_rec

            def rprog(i, n, base=base, label="omit-template map" if prefix else "map"):
                report("reconstruct", base + 0.9 * w_rec * i / max(n, 1),
                       f"reconstructing the {label} ({i}/{n} particles)")

            t1 = time.perf_counter()
            recs[prefix] = reconstruct(ps.images, px, ps.table, symmetry=s.symmetry, pad=s.pad,
                                       ssnr=s.ssnr, mask=mask, progress=rprog, cancel=cancel)
            timings[f"{prefix}reconstruct_s"] = time.perf_counter() - t1
        report("write", 0.96, "writing the job folder")
        rec = recs[""]
        omit_rec = recs.get("omit_")
        bias = None
        summary = {
            "fsc_note": FSC_NOTE,
            "gold_standard": False,
            "n_micrographs": len(mics),
            "n_hits": total_hits,
            "n_particles": len(particles[""]),
            "n_dropped_at_edges": particles[""].dropped,
            "box": box,
            "pixel_size_a": px,
            "template": {"source": t_main.source, "box": t_main.box,
                         "params": _jsonable(t_main.params)},
            "settings": s.to_dict(),
            "map": _rec_summary(rec),
            "micrographs": [m.name for m in mics],
        }
        region = None
        if omit_rec is not None:
            tf = fit_to_box(t_main.volume, box)
            to = fit_to_box(t_omit.volume, box)
            bias = template_bias(rec.full, omit_rec.full, tf, to, divisor=s.omit_divisor)
            region = difference_mask(tf, to, s.omit_divisor)
            summary["omit_template"] = {"source": t_omit.source,
                                        "params": _jsonable(t_omit.params)}
            summary["omit_map"] = _rec_summary(omit_rec)
            summary["bias"] = bias.to_dict()
            summary["omitted_region_density_sigma"] = {
                "map": density_sigma(rec.full, region, tf),
                "omit_map": density_sigma(omit_rec.full, region, tf),
            }
        summary["timings"] = timings

        # ---- write everything into a temporary sibling, then move it into place
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
        try:
            for prefix, _ in templates:
                _write_rec(tmp, prefix, recs[prefix])
                write_particles(particles[prefix], tmp / f"{prefix}particles.star")
                pd.concat(refined_tables[prefix], ignore_index=True).to_csv(
                    tmp / f"{prefix}refined_hits.csv", index=False, float_format="%.6g")
            if region is not None:
                write_mrc(tmp / "omit_region_mask.mrc", region.astype(np.int8), px)
            _fsc_plot(tmp / "fsc.png", rec, omit_rec)
            (tmp / "reconstruct.json").write_text(json.dumps(summary, indent=2, default=_default))
            replace_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        report("write", 1.0, f"done: {out_dir}")
    except (RefinementCancelled, ReconstructionCancelled):
        raise JobCancelled("reconstruction job cancelled") from None
    return JobResult(out_dir, rec, particles[""], omit_rec, bias, summary)


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _jsonable(d):
    return json.loads(json.dumps(d, default=_default))
