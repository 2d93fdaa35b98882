"""The reconstruction job, behind ``napari-2dtm reconstruct`` and the Reconstruct widget.

Steps, for hits on one or more micrographs: local refinement with the template
(:mod:`napari_2dtm.hits.refine`), particle boxes and STAR (:mod:`napari_2dtm.reconstruct.particles`),
reconstruction (:mod:`napari_2dtm.reconstruct.reconstructor`, FSC in
:mod:`napari_2dtm.reconstruct.fsc`); with an omit template the hits are refined with it
too, a second map is made from those poses, and the template-bias metric Omega
(:mod:`napari_2dtm.reconstruct.bias`) and the density in the omitted region are
reported. Everything lands in one job folder, written through
:func:`napari_2dtm.io.mrc.atomic_dir` (an existing one is replaced only with
``overwrite``, and only when it holds ``reconstruct.json``)::

    map.mrc  map_filtered.mrc  half1.mrc  half2.mrc  mask.mrc  fsc.csv  fsc.png
    particles.star  particles.mrcs  refined_hits.csv
    [omit_map.mrc  omit_map_filtered.mrc  omit_half1.mrc  omit_half2.mrc  omit_fsc.csv
     omit_particles.star  omit_particles.mrcs  omit_refined_hits.csv  omit_region_mask.mrc]
    reconstruct.json   (all parameters, resolutions, Omega, timings, the FSC note)

The doors: the CLI builds its micrographs with :func:`micrograph_from_results` or
:func:`micrographs_from_star` and calls :func:`run_reconstruct`; the widget hands the
hits and micrograph of its layers to :func:`run_reconstruct_from_hits` in a worker
thread. Both follow the jobs' protocol (:mod:`napari_2dtm.jobs`): ``progress`` gets
:class:`JobProgress` records, a set ``cancel`` event raises
:class:`~napari_2dtm.errors.Cancelled` (nothing written), bad input
:class:`~napari_2dtm.errors.InputError`; they return ``(JobResult, folder)``.
No Qt, no napari.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.hits.refine import RefineStage, refine_hits
from napari_2dtm.io.mrc import atomic_dir, output_lock, read_micrograph, write_mrc
from napari_2dtm.io.records import plain, strict
from napari_2dtm.plots import save_fsc
from napari_2dtm.reconstruct.bias import (
    BiasReport,
    difference_mask,
    fit_to_box,
    template_bias,
)
from napari_2dtm.reconstruct.fsc import FSC_NOTE, soft_mask
from napari_2dtm.reconstruct.particles import (
    ParticleSet,
    concat_particles,
    extract_particles,
    write_particles,
)
from napari_2dtm.reconstruct.reconstructor import Reconstruction, reconstruct, symmetry_matrices
from napari_2dtm.templates.load import template_at
from napari_2dtm.templates.template import Template

__all__ = ["MicrographInput", "JobSettings", "JobProgress", "JobResult", "run_reconstruct",
           "run_reconstruct_from_hits", "micrograph_from_results", "micrographs_from_star",
           "micrograph_from_hits", "density_sigma"]


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
    local refinement (by gradient; with ``stages``, on those local grids instead);
    min_score / score_column: keep hits with that score at least; symmetry,
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

    def __post_init__(self):
        # checked here, before any refinement, not when the map is inserted at the end
        symmetry_matrices(self.symmetry)
        if self.box is not None and not (isinstance(self.box, int) and self.box >= 16):
            raise InputError(f"box (--box) must be a whole number of pixels >= 16, got {self.box}")
        if not (isinstance(self.pad, int) and self.pad >= 1):
            raise InputError(f"pad (--pad) must be a whole number >= 1, got {self.pad}")
        if self.ssnr is not None and not (math.isfinite(self.ssnr) and self.ssnr > 0):
            raise InputError(f"ssnr (--ssnr) must be > 0, got {self.ssnr}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["refine_method"] = ("grid" if self.stages else "gradient") if self.refine else None
        d["stages"] = [dataclasses.asdict(s) if isinstance(s, RefineStage) else s
                       for s in self.stages] if self.refine and self.stages else None
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
    """What a job made: its folder, the map (and the omit-template map), the particles of
    the map, the bias report (with an omit template) and the ``reconstruct.json`` summary."""

    folder: Path
    reconstruction: Reconstruction
    particles: ParticleSet
    omit_reconstruction: Reconstruction | None
    bias: BiasReport | None
    summary: dict


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def micrograph_from_results(folder, micrograph=None) -> MicrographInput:
    """A results folder of ``napari-2dtm search`` (or of cisTEM / Leopard-EM): its hits,
    CTF, search result and micrograph (``micrograph`` overrides the path it records)."""
    from napari_2dtm.search.foreign import open_results  # noqa: PLC0415

    view = open_results(folder)
    res = view.result
    if micrograph:
        path = Path(micrograph)
        image, px = read_micrograph(path, res.input_pixel_size_a)
    else:  # the folder's one rule; the error says what was looked for
        image, px = view.read_micrograph()
        path = view.micrograph_path()
    ctf = view.ctf
    hits = res.hits if res.hits is not None else pd.DataFrame()
    if len(hits) == 0:
        raise InputError(f"{folder}: the results folder has no hits")
    return MicrographInput(image, px, ctf, hits, path.name, res)


def micrograph_from_hits(image, pixel_size_a: float, hits: pd.DataFrame,
                         name: str = "micrograph.mrc", *, ctf=None,
                         results_folder=None) -> MicrographInput:
    """Hits and a micrograph held in memory (napari layers): the search result is read
    from ``results_folder`` when it is one (z-scores on the search's scale, its
    template); ``ctf`` (a :class:`CTFParams` or a dict of its fields) defaults to the
    search's."""
    from napari_2dtm.search.foreign import is_results_folder, open_results  # noqa: PLC0415

    result = None
    if results_folder and is_results_folder(results_folder):  # ours, cisTEM's, Leopard-EM's
        result = open_results(results_folder).result
    if ctf is None and result is not None:
        ctf = _search_ctf(result)
    if not ctf:
        raise InputError("the hits record no CTF (open their results folder)")
    if not isinstance(ctf, CTFParams):
        ctf = CTFParams(**ctf)
    return MicrographInput(np.asarray(image, np.float32), float(pixel_size_a), ctf, hits, name,
                           result)


def _search_ctf(result) -> CTFParams | None:
    """The CTF a search recorded in ``search.json`` (None when it recorded none)."""
    from napari_2dtm.search.results import ResultsFolder  # noqa: PLC0415

    return ResultsFolder.of(result).ctf if (result.metadata or {}).get("config") else None


def micrographs_from_star(star, micrographs: Sequence | None = None,
                          pixel_size_a: float | None = None) -> list[MicrographInput]:
    """Hits from a STAR file (ours or RELION 5: optics + particles with coordinates,
    angles and defoci), grouped by ``rlnMicrographName``; micrographs are found next to
    the STAR file unless given (in the order of their first appearance)."""
    from napari_2dtm.io.star import (  # noqa: PLC0415
        STAR_COLUMNS,
        check_hits,
        optics_ctf,
        read_star,
        star_value,
    )

    star = Path(star)
    blocks = read_star(star)
    parts = blocks.get("particles", next(iter(blocks.values()), None))
    if not isinstance(parts, pd.DataFrame) or "rlnCoordinateX" not in parts:
        raise InputError(f"{star}: no particles block with rlnCoordinateX/Y")
    optics = blocks.get("optics")
    o = optics.iloc[0] if isinstance(optics, pd.DataFrame) and len(optics) else {}
    hits = check_hits(parts.rename(columns={v: k for k, v in STAR_COLUMNS.items()}), star)
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
        image, px = read_micrograph(path, pixel_size_a or star_value(o, "rlnMicrographPixelSize"))
        sel = hits[names.to_numpy() == name].reset_index(drop=True)
        d1 = float(sel["defocus1_a"].median()) if "defocus1_a" in sel else 10000.0
        d2 = float(sel["defocus2_a"].median()) if "defocus2_a" in sel else d1
        ctf = CTFParams(
            defocus1_a=d1, defocus2_a=d2,
            astigmatism_angle_deg=float(sel["astigmatism_angle_deg"].median())
            if "astigmatism_angle_deg" in sel else 0.0,
            **optics_ctf(o),
        )
        if "defocus1_a" in sel and "defocus_a" not in sel:
            sel["defocus_a"] = 0.5 * (sel["defocus1_a"] + sel["defocus2_a"])
        out.append(MicrographInput(image, px, ctf, sel, path.name))
    return out


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
    t = template_at(template, px)  # a map keeps its header voxel size, then resampled
    if abs(t.pixel_size_a - px) > 1e-3 * px:
        raise InputError(f"{t.source}: {what} pixel size {t.pixel_size_a:g} A differs from the "
                         f"micrograph's {px:g} A; make it at the micrograph pixel size")
    return t


def _templates(template, omit_template, first: MicrographInput, px: float):
    """``(template, omit template or None)`` at the micrographs' pixel size; no template:
    the search's, rebuilt from the first micrograph's ``search.json``."""
    if template is None:
        if first.result is None:
            raise InputError("no template given, and the hits come with no search (search.json) "
                             "to take it from; give a template map or model")
        from napari_2dtm.hits.inspection import template_for_result  # noqa: PLC0415

        template = template_for_result(first.result)
    t_main = _load(template, px, "template")
    t_omit = _load(omit_template, px, "omit template") if omit_template is not None else None
    if t_omit is not None and t_omit.box != t_main.box:
        raise InputError(f"{t_omit.source}: omit template box {t_omit.box} differs from the "
                         f"template's {t_main.box}; make both with center='model' (same grid)")
    return t_main, t_omit


def _default_box(t: Template) -> int:
    b = int(math.ceil(1.25 * t.box))
    return b + b % 2


def _selected(m: MicrographInput, s: JobSettings) -> pd.DataFrame:
    """The micrograph's hits with at least ``s.min_score`` (all without it)."""
    h = m.hits
    if s.min_score is None:
        return h
    if s.score_column not in h:
        raise InputError(f"{m.name}: hits have no {s.score_column!r} column to select on")
    return h[h[s.score_column] >= s.min_score].reset_index(drop=True)


def _write_rec(folder: Path, prefix: str, rec: Reconstruction):
    px = rec.pixel_size_a
    write_mrc(folder / f"{prefix}map.mrc", rec.full, px)
    write_mrc(folder / f"{prefix}map_filtered.mrc", rec.filtered, px)
    write_mrc(folder / f"{prefix}half1.mrc", rec.half1, px)
    write_mrc(folder / f"{prefix}half2.mrc", rec.half2, px)
    if rec.mask is not None:
        write_mrc(folder / f"{prefix}mask.mrc", rec.mask, px)
    with open(folder / f"{prefix}fsc.csv", "w") as f:
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


def run_reconstruct(micrographs: Sequence[MicrographInput], template, out_dir,
                    settings: JobSettings | None = None, *, omit_template=None,
                    overwrite: bool = False,
                    progress: Callable[[JobProgress], None] | None = None,
                    cancel: threading.Event | None = None) -> tuple[JobResult, Path]:
    """Refine, box, reconstruct (and with ``omit_template`` the bias check); write the job
    folder ``out_dir``.

    template / omit_template: :class:`Template`, path or array at the micrographs' pixel
    size; template None: the search's (from the first micrograph's search result).
    Raises :class:`~napari_2dtm.errors.Cancelled` when ``cancel`` is set (nothing
    written) and :class:`InputError` on bad input. Returns ``(JobResult, out_dir)``.
    """
    s = settings or JobSettings()
    out_dir = Path(out_dir)
    cancel = cancel or threading.Event()
    # The lock and the folder check come first (a second run on this folder, or an
    # existing folder, fails in a second, not after the refinement); the temporary
    # folder is dropped on any error or cancel.
    inputs = [t for t in (template, omit_template) if isinstance(t, (str, Path))]
    with (output_lock(out_dir),
          atomic_dir(out_dir, overwrite=overwrite, marker="reconstruct.json",
                     what="reconstruction folder", inputs=inputs) as tmp):
        job = _run(list(micrographs), template, omit_template, s, tmp, progress, cancel)
    job.folder = out_dir
    if progress is not None:  # after the move: a late cancel no longer undoes the folder
        progress(JobProgress("write", 1.0, f"done: {out_dir}"))
    return job, out_dir


def run_reconstruct_from_hits(image, pixel_size_a: float, hits: pd.DataFrame, out_dir, *,
                              micrograph_name: str = "micrograph.mrc", ctf=None,
                              results_folder=None, template=None, omit_template=None,
                              settings: JobSettings | None = None, overwrite: bool = False,
                              progress: Callable[[JobProgress], None] | None = None,
                              cancel: threading.Event | None = None) -> tuple[JobResult, Path]:
    """:func:`run_reconstruct` on one micrograph's hits held in memory (the widget's
    layers), its inputs completed by :func:`micrograph_from_hits` inside the job (the
    results folder is read in the job's thread)."""
    mic = micrograph_from_hits(image, pixel_size_a, hits, micrograph_name, ctf=ctf,
                               results_folder=results_folder)
    return run_reconstruct([mic], template, out_dir, settings, omit_template=omit_template,
                           overwrite=overwrite, progress=progress, cancel=cancel)


def _run(mics: list[MicrographInput], template, omit_template, s: JobSettings, folder: Path,
         progress, cancel: threading.Event) -> JobResult:
    """The job's body: everything is written into ``folder`` (the temporary one)."""
    if not mics:
        raise InputError("no micrographs given")
    px = float(mics[0].pixel_size_a)
    for m in mics:
        if abs(m.pixel_size_a - px) > 1e-3 * px:
            raise InputError(f"{m.name}: pixel size {m.pixel_size_a:g} A differs from {px:g} A "
                             "of the first micrograph")
    t_main, t_omit = _templates(template, omit_template, mics[0], px)
    box = int(s.box) if s.box else _default_box(t_main)
    stages = tuple(s.stages) if s.stages else None  # grid steps given: the grid method
    timings: dict[str, float] = {}
    selected = [_selected(m, s) for m in mics]
    total_hits = sum(len(h) for h in selected)
    if total_hits == 0:
        raise InputError("no hits to reconstruct (after the score selection)")
    templates = [("", t_main)] + ([("omit_", t_omit)] if t_omit is not None else [])
    # progress weights: refinement dominates; reconstruction per map
    w_ref = 0.8 if s.refine else 0.0
    w_rec = (1.0 - w_ref - 0.05) / len(templates)

    def report(step, frac, msg):
        if cancel.is_set():
            raise Cancelled("reconstruction job cancelled")
        if progress is not None:
            progress(JobProgress(step, float(min(max(frac, 0.0), 1.0)), msg))

    sets = {p: [] for p, _ in templates}
    refined_tables = {p: [] for p, _ in templates}
    done = 0
    t0 = time.perf_counter()
    for m, hits in zip(mics, selected):
        nh = len(hits)
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
                                      method="grid" if stages else "gradient", stages=stages,
                                      result=m.result, progress=prog,
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
                     "params": plain(t_main.params)},
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
                                    "params": plain(t_omit.params)}
        summary["omit_map"] = _rec_summary(omit_rec)
        summary["bias"] = bias.to_dict()
        summary["omitted_region_density_sigma"] = {
            "map": density_sigma(rec.full, region, tf),
            "omit_map": density_sigma(omit_rec.full, region, tf),
        }
    summary["timings"] = timings

    for prefix, _ in templates:
        _write_rec(folder, prefix, recs[prefix])
        write_particles(particles[prefix], folder / f"{prefix}particles.star")
        pd.concat(refined_tables[prefix], ignore_index=True).to_csv(
            folder / f"{prefix}refined_hits.csv", index=False, float_format="%.6g")
    if region is not None:
        write_mrc(folder / "omit_region_mask.mrc", region.astype(np.int8), px)
    save_fsc(rec, omit_rec, folder / "fsc.png")
    # the marker last: a folder holding reconstruct.json is complete
    # strict JSON: a resolution worse than the box is null there (inf in memory)
    (folder / "reconstruct.json").write_text(json.dumps(strict(plain(summary)), indent=2,
                                                        allow_nan=False))
    return JobResult(folder, rec, particles[""], omit_rec, bias, summary)
