"""The classification job: the one orchestrator behind ``napari-2dtm classify`` and the widget.

:func:`run_classify` follows the jobs' protocol (:mod:`napari_2dtm.jobs`). For hits on one
or more micrographs (:class:`ClassifyInput`; several are pooled into one fit) it

1. takes the output's lock (:func:`napari_2dtm.io.mrc.output_lock`: a second run on the
   same folder is refused) and refuses an output folder it may not replace, before any
   work (:func:`napari_2dtm.io.mrc.atomic_dir` with the marker ``classification.json``;
   never a folder holding one of the inputs);
2. loads the templates (:func:`~napari_2dtm.classify.templates.load_template_set`, models
   with the model origin kept) and checks their alignment: one
   :class:`ClassifyProgress` ``("templates", 1, 1)`` carries a one-line description and
   the warnings, so a door can show them before the long part;
3. scores every hit with every template on one local grid
   (:func:`~napari_2dtm.classify.scoring.score_hits`), reporting
   ``("score", done, total)`` over all micrographs; a set ``cancel`` stops here with
   :class:`~napari_2dtm.errors.Cancelled` and nothing is written;
4. fits the mixture and assigns classes
   (:func:`~napari_2dtm.classify.result.classify_scores`);
5. writes the folder (:func:`~napari_2dtm.classify.folder.write_classification_files`,
   ``features.png`` by :func:`napari_2dtm.plots.save_features`) and moves it into place.

Every row of the table names its micrograph (column ``micrograph``), also when there is
one, so the CLI and the widget write the same folder for the same inputs. The STAR
files' optics (pixel size, CTF) are the first micrograph's.

The grid defaults are the CLI's (:data:`DEFAULT_GRID`: one angular step around each pose,
``+-1`` px, defocus offsets ``+-100`` A in 100 A steps, the search's resolution limit).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from napari_2dtm.classify.folder import MARKER, WHAT, write_classification_files
from napari_2dtm.classify.result import ClassificationResult, classify_scores
from napari_2dtm.classify.scoring import score_hits
from napari_2dtm.classify.templates import TemplateSet, check_templates, load_template_set
from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.io.mrc import atomic_dir, output_lock
from napari_2dtm.plots import save_features
from napari_2dtm.search.foreign import is_results_folder, open_results
from napari_2dtm.search.results import ResultsFolder

__all__ = ["ClassifyInput", "ClassifyProgress", "DEFAULT_GRID", "run_classify"]

#: The local scoring grid unless given (the keyword arguments of ``score_hits``).
DEFAULT_GRID = dict(angular_step_deg=1.5, angular_range_deg=None, shift_px=1,
                    defocus_range_a=100.0, defocus_step_a=100.0, high_res_limit_a=None)


@dataclasses.dataclass
class ClassifyInput:
    """One micrograph's hits to classify.

    image: ``(ny, nx)`` micrograph; pixel_size_a: its pixel size (A); hits: table with x, y
    (pixels), phi, theta, psi (deg), optional defocus_a; ctf: :class:`CTFParams` or its
    dict, None to take the search's; name: the micrograph's file name (STAR files,
    column ``micrograph``); result: the search's
    :class:`~napari_2dtm.search.engine.SearchResult` or its results folder (SNRs on the
    search's scale, its CTF and resolution limit), or None; source: where the hits came
    from (recorded in ``params["inputs"]``).
    """

    image: np.ndarray
    pixel_size_a: float
    hits: pd.DataFrame
    ctf: CTFParams | dict | None = None
    name: str = "micrograph.mrc"
    result: object | None = None
    source: str = ""


class ClassifyProgress(NamedTuple):
    """A progress record: ``stage`` ("templates" or "score"), ``done`` of ``total``
    (hit x template scores for "score"), a one-line ``message`` and template
    ``warnings`` (with the finished "templates" record)."""

    stage: str
    done: int
    total: int
    message: str = ""
    warnings: tuple = ()


def _search_result(value):
    """A SearchResult, or the one in a results folder (None when it holds none)."""
    if value is None or not isinstance(value, (str, Path)):
        return value
    if not is_results_folder(value):  # ours (search.json), cisTEM's or Leopard-EM's
        return None
    return open_results(value).result


def _ctf(mic: ClassifyInput, result) -> CTFParams:
    ctf = mic.ctf
    if not ctf and result is not None:
        ctf = ResultsFolder.of(result).ctf
    if not ctf:
        raise InputError(f"{mic.source or mic.name}: no CTF recorded (give one, or hits from "
                         "a search's results folder)")
    return ctf if isinstance(ctf, CTFParams) else CTFParams(**ctf)


def run_classify(
    micrographs: ClassifyInput | Sequence[ClassifyInput],
    templates: TemplateSet | Sequence,
    out_dir,
    *,
    names: Sequence[str] | None = None,
    selections: Sequence[str | None] | None = None,
    reference=0,
    template_pixel_size_a: float | None = None,
    bfactor_a2: float | None = None,
    priors="learn",
    confidence: float = 0.5,
    select_classes: bool = True,
    grid: dict | None = None,
    params: dict | None = None,
    overwrite: bool = False,
    progress: Callable[[ClassifyProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[ClassificationResult, Path]:
    """Classify hits with several templates and write the classification folder.

    micrographs: one :class:`ClassifyInput` or several (pooled into one fit).
    templates: a :class:`TemplateSet`, or one source per state (model or map file,
    :class:`~napari_2dtm.templates.template.Template`) loaded with ``names``,
    ``selections`` (atom selections for models, None for all), ``reference`` (index or
    name), ``template_pixel_size_a`` (voxel size for models; default the first
    micrograph's) and ``bfactor_a2``. priors: "learn", "uniform" or K numbers;
    confidence: posterior needed for an assignment; select_classes: drop states the data
    do not support. grid: keyword arguments of
    :func:`~napari_2dtm.classify.scoring.score_hits` over :data:`DEFAULT_GRID`.
    params: extra entries for ``classification.json``'s ``params`` (e.g. the hits layer).
    out_dir: the folder to write; an existing one is replaced only with ``overwrite``.

    Returns ``(result, folder)``. Raises :class:`InputError` for bad input and
    :class:`Cancelled` when ``cancel`` was set (nothing written).
    """
    t0 = time.perf_counter()
    mics = [micrographs] if isinstance(micrographs, ClassifyInput) else list(micrographs)
    if not mics:
        raise InputError("no micrographs with hits to classify")
    if not isinstance(templates, TemplateSet) and len(templates) < 2:
        raise InputError(f"classification needs two or more templates, got {len(templates)}")
    grid = {**DEFAULT_GRID, **(grid or {})}
    unknown = set(grid) - set(DEFAULT_GRID) - {"in_plane_step_deg", "in_plane_range_deg", "chunk"}
    if unknown:
        raise InputError(f"unknown scoring grid parameter(s): {', '.join(sorted(unknown))}")
    out_dir = Path(out_dir)

    def report(*record):
        if progress is not None:
            progress(ClassifyProgress(*record))

    # The inputs (results folders, hits files, templates) are never inside what is replaced.
    inputs = [m.source for m in mics if m.source]
    if not isinstance(templates, TemplateSet):
        inputs += [t for t in templates if isinstance(t, (str, Path))]
    with (output_lock(out_dir),
          atomic_dir(out_dir, overwrite=overwrite, marker=MARKER, what=WHAT, inputs=inputs) as tmp):
        results = [_search_result(m.result) for m in mics]
        ctfs = [_ctf(m, r) for m, r in zip(mics, results)]
        px = float(template_pixel_size_a or mics[0].pixel_size_a)
        report("templates", 0, 1, "preparing templates…")
        if isinstance(templates, TemplateSet):
            ts = templates
            sources = [str(t.source) for t in ts.templates]
            sels = [t.params.get("selection") for t in ts.templates]
        else:
            sources = [str(s) for s in templates]
            sels = list(selections) if selections is not None else [None] * len(sources)
            ts = load_template_set(templates, px, names=names, selections=sels,
                                   reference=reference, bfactor_a2=bfactor_a2)
        template_warnings = check_templates(ts)
        hits = [pd.DataFrame(m.hits).reset_index(drop=True) for m in mics]
        n_total = sum(len(h) for h in hits)
        total = n_total * len(ts)
        report("templates", 1, 1,
               f"{n_total} hits in {len(mics)} micrograph(s); templates "
               + ", ".join(f"{n} ({t.box}^3 at {t.pixel_size_a:g} A)"
                           for n, t in zip(ts.names, ts.templates))
               + f"; reference {ts.names[ts.reference]}", tuple(template_warnings))

        tables, done_before = [], 0
        for m, h, ctf, result in zip(mics, hits, ctfs, results):
            if len(h) == 0:
                continue
            scored = score_hits(
                m.image, m.pixel_size_a, ts, h, ctf, result=result, cancel=cancel,
                progress=lambda done, _n, base=done_before: report("score", base + done, total),
                **grid)
            scored.insert(0, "micrograph", m.name)
            tables.append(scored)
            done_before += len(h) * len(ts)
        if not tables:
            raise InputError("no hits to classify")
        res = classify_scores(pd.concat(tables, ignore_index=True), ts.names, ts.reference,
                              priors=priors, confidence=confidence,
                              select_classes=select_classes)
        res.warnings[:0] = template_warnings
        res.params.update(
            scoring=grid, pixel_size_a=px, ctf=ctfs[0].to_dict(),
            inputs=[m.source or m.name for m in mics], template_sources=sources,
            template_selections=sels, **(params or {}),
            elapsed_s=round(time.perf_counter() - t0, 2),
        )
        if cancel is not None and cancel.is_set():
            raise Cancelled("classification cancelled")
        write_classification_files(res, tmp, micrograph_name=mics[0].name,
                                   pixel_size_a=mics[0].pixel_size_a, ctf=ctfs[0].to_dict(),
                                   plot=save_features)
    return res, out_dir
