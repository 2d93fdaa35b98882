"""Scoring every hit with every template, on one local grid for all.

Each hit is scored with each state's template at its pose by the same small local
search (:func:`napari_2dtm.hits.local.local_search`: angular offsets within one step,
``+-shift_px`` pixels, defocus offsets), so the SNRs share one scale and no template is
favoured. The pose (position, angles, defocus) is refined with the reference template
only; the other templates' columns are their scores.

:func:`score_hits_iter` is the generator (a place to report progress and to stop after
every chunk of hits); :func:`score_hits` drives it with the jobs' protocol: a
``progress(done, total)`` callable and a :class:`threading.Event` to cancel, raising
:class:`~napari_2dtm.errors.Cancelled`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pandas as pd

from napari_2dtm.classify.templates import TemplateSet
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.search.results import ResultsFolder

__all__ = ["score_hits", "score_hits_iter"]

#: pose columns taken from the reference template's local search
_POSE_COLUMNS = ("x", "y", "phi", "theta", "psi", "defocus_a", "defocus1_a", "defocus2_a")


def score_hits_iter(
    image: np.ndarray,
    pixel_size_a: float,
    templates: TemplateSet,
    hits: pd.DataFrame,
    ctf,
    *,
    angular_step_deg: float = 1.5,
    angular_range_deg: float | None = None,
    in_plane_step_deg: float | None = None,
    in_plane_range_deg: float | None = None,
    shift_px: int = 1,
    defocus_range_a: float = 0.0,
    defocus_step_a: float = 100.0,
    result=None,
    high_res_limit_a: float | None = None,
    chunk: int = 16,
) -> Iterator[tuple[int, int]]:
    """Generator form of :func:`score_hits`: yields ``(done, total)`` hit-template pairs
    after every chunk of hits (a place to cancel); returns the scored table."""
    from napari_2dtm.hits.local import LocalScorer, local_search  # noqa: PLC0415

    if not isinstance(templates, TemplateSet):
        raise InputError("templates must be a TemplateSet (see load_template_set)")
    hits = pd.DataFrame(hits).reset_index(drop=True)
    for col in ("x", "y", "phi", "theta", "psi"):
        if col not in hits:
            raise InputError(f"hits table has no {col!r} column (need x, y, phi, theta, psi)")
    if len(hits) == 0:
        raise InputError("no hits to classify")
    ar = angular_step_deg if angular_range_deg is None else angular_range_deg
    grid = dict(
        angular_range_deg=float(ar), angular_step_deg=float(angular_step_deg),
        in_plane_range_deg=in_plane_range_deg, in_plane_step_deg=in_plane_step_deg,
        shift_px=int(shift_px), defocus_range_a=float(defocus_range_a),
        defocus_step_a=float(defocus_step_a),
    )
    if result is not None and high_res_limit_a is None:
        # the search's resolution limit gives the search's pixel size and whitening
        high_res_limit_a = ResultsFolder.of(result).high_res_limit_a
    scorer = LocalScorer(image, pixel_size_a, ctf, high_res_limit_a=high_res_limit_a)
    n, k = len(hits), len(templates)
    total = n * k
    out = hits.copy()
    yield (0, total)
    for ti, (name, tpl) in enumerate(zip(templates.names, templates.templates)):
        parts = []
        for start in range(0, n, max(1, int(chunk))):
            sub = hits.iloc[start : start + chunk]
            parts.append(local_search(image, pixel_size_a, tpl, sub, ctf, result=result,
                                      scorer=scorer, **grid))
            yield (ti * n + start + len(sub), total)
        scored = pd.concat(parts, ignore_index=True)
        out[f"cc_{name}"] = scored["cc"].to_numpy(np.float64)
        out[f"snr_{name}"] = scored["snr"].to_numpy(np.float64)
        if ti == templates.reference:
            for col in _POSE_COLUMNS:
                if col in scored:
                    out[col] = scored[col].to_numpy()
            if "zscore" not in out and "zscore" in scored:
                out["zscore"] = scored["zscore"].to_numpy(np.float64)
    return out


def score_hits(image, pixel_size_a, templates: TemplateSet, hits, ctf, *, progress=None,
               cancel: threading.Event | None = None, **kwargs) -> pd.DataFrame:
    """Score every hit with every template, with one local grid for all.

    image: ``(ny, nx)`` micrograph; pixel_size_a: its pixel size (A); hits: table with x, y
    (input pixels), phi, theta, psi (deg), optional defocus_a; ctf: :class:`CTFParams`.
    Grid (identical for every template, so none is favoured): out-of-plane offsets within
    ``angular_range_deg`` (default one step) in ``angular_step_deg`` steps, psi likewise,
    ``+-shift_px`` pixels, defocus offsets ``-defocus_range_a..+defocus_range_a`` (A).
    result: the search's :class:`SearchResult` (SNR on the search's scale, z-scores).
    progress(done, total) per chunk of hits; cancel: a set :class:`threading.Event`
    stops after the current chunk with :class:`~napari_2dtm.errors.Cancelled`.

    Returns a copy of ``hits`` with ``cc_<name>`` and ``snr_<name>`` per template, the
    pose refined with the reference template (x, y, angles, defocus), other columns kept.
    """
    gen = score_hits_iter(image, pixel_size_a, templates, hits, ctf, **kwargs)
    while True:
        try:
            done, total = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(done, total)
        if cancel is not None and cancel.is_set():
            gen.close()
            raise Cancelled("classification cancelled")

