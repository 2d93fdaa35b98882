"""Hits review without Qt: candidates, thresholds, noise expectations, curation, export.

After a search, the user decides which peaks are molecules. This module holds every
step of that loop that is not drawing, so the napari "2DTM Hits" widget stays thin
and a script or the CLI can do the same:

* :func:`extract_candidates` finds the peaks of one detection map (z-score, SNR or
  -ln p) ONCE, at a low floor (by default every local maximum), so that moving the
  threshold afterwards is a vectorised comparison (:meth:`Review.shown`), not a
  new peak search;
* :class:`NoiseModel` gives the expected number of noise peaks above a threshold:
  the Gaussian tail ``N_trials * Phi_c(t)`` (Rickgauer et al. 2017) for z-score and
  SNR, ``N_population * exp(-t)`` for -ln p (Zhang et al. 2025 p-value, see
  :mod:`napari_2dtm.search.pvalue`), its inverse, and the expected counts per histogram bin;
* :class:`Review` keeps the candidate table with a ``status`` column (``unreviewed``,
  ``accepted``, ``rejected``), re-extracts with another metric, radius, floor or
  exclusion mask while carrying the decisions over, saves and restores itself in
  ``<results folder>/review/`` (atomic writes), and exports STAR (RELION 5 names,
  via :func:`napari_2dtm.io.star.write_hits`) or CSV of all hits or accepted ones.

Positions: ``x``, ``y`` are input-micrograph pixels (0-based centres, x = column);
``x_search``, ``y_search`` the search-grid pixel of the peak (see docs/conventions.md).
Exclusion masks are boolean ``(ny, nx)`` arrays on the search grid, True = excluded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import atomic_path, atomic_write_text, read_mrc, write_mrc
from napari_2dtm.search.detect import (
    default_metric,
    expected_false_positives,
    extract_hits,
    false_alarm_threshold,
)
from napari_2dtm.search.pvalue import (
    add_neg_log_p,
    expected_false_positives_pvalue,
    pvalue_threshold,
    result_population_mask,
)

__all__ = [
    "METRICS", "STATUSES", "REVIEW_DIR", "NoiseModel", "Review", "extract_candidates",
    "metric_map", "sample_mask", "population_size",
]

#: detection metrics: result-map key -> display label
METRICS = {"zbg": "zbg", "zscore": "z-score", "snr": "SNR", "neg_log_p": "-ln p"}
STATUSES = ("unreviewed", "accepted", "rejected")
#: sub-folder of a results folder holding the review (outside the folder's top level,
#: whose ``*.mrc`` files are all read as maps)
REVIEW_DIR = "review"
CURATION_FILE = "curation.csv"
SETTINGS_FILE = "review.json"
MASK_FILE = "exclusion_mask.mrc"
#: at most this many candidates are kept (the strongest): enough for any histogram,
#: small enough for an interactive points layer
MAX_CANDIDATES = 50_000
_KEEP = object()


# ------------------------------------------------------------------ metrics


def available_metrics(result) -> list[str]:
    """Metrics that can be reviewed for ``result``: maps it has or -ln p computable."""
    keys = [k for k in METRICS if k in result.maps]
    if "neg_log_p" not in keys and {"zscore", "snr"} <= set(result.maps):
        keys.append("neg_log_p")
    return keys


def metric_map(result, metric: str, exclusion: np.ndarray | None = None) -> np.ndarray:
    """The ``(ny, nx)`` search-grid map of ``metric``.

    -ln p is computed with :func:`napari_2dtm.search.pvalue.add_neg_log_p` (stored in
    ``result.maps``/``metadata``) when the result lacks it, or when it was ranked with
    another exclusion mask than ``exclusion`` (True = excluded): the p-value is relative
    to its population, so excluded regions must leave the population too.
    """
    if metric not in METRICS:
        raise InputError(f"unknown detection metric {metric!r} (expected one of {list(METRICS)})")
    if metric != "neg_log_p":
        if metric not in result.maps:
            raise InputError(f"the search result has no {METRICS[metric]} map")
        return result.maps[metric]
    key = None if exclusion is None else hash(np.packbits(np.asarray(exclusion, bool)).tobytes())
    meta = (result.metadata or {}).get("neg_log_p") or {}
    have = "neg_log_p" in result.maps and meta
    current = meta.get("exclusion_key") if meta.get("exclusion_mask") else None
    if have and current == key:
        return result.maps["neg_log_p"]
    add_neg_log_p(result, mask=None if exclusion is None else ~np.asarray(exclusion, bool))
    result.metadata["neg_log_p"]["exclusion_key"] = key
    return result.maps["neg_log_p"]


def population_size(result) -> float:
    """``N_population`` the -ln p map of ``result`` was ranked over."""
    meta = (result.metadata or {}).get("neg_log_p") or {}
    if meta.get("n_population"):
        return float(meta["n_population"])
    pop = result_population_mask(result)
    if pop is None:
        raise InputError("the search result has no -ln p map")
    return float(pop.sum())


class NoiseModel:
    """Expected number of noise peaks above a threshold for one detection metric.

    z-score and SNR: ``N_trials * Phi_c(t)`` with ``N_trials`` = valid pixels x
    correlations per pixel (:func:`napari_2dtm.search.detect.expected_false_positives`);
    -ln p: ``N_population * exp(-t)`` (null calibration of the 2DTM p-value).
    """

    def __init__(self, metric: str, n_trials: float | None = None,
                 n_population: float | None = None, gamma: float | None = None):
        self.metric = metric
        self.gamma = gamma
        self.n_trials = n_trials
        self.n_population = n_population
        n = n_population if metric == "neg_log_p" else n_trials
        if not n or n <= 0:
            raise InputError(f"{METRICS.get(metric, metric)}: noise model needs a population size > 0")
        self.n = float(n)

    @classmethod
    def for_result(cls, result, metric: str) -> NoiseModel:
        if metric == "neg_log_p":
            meta = (result.metadata or {}).get("neg_log_p") or {}
            return cls(metric, n_population=population_size(result), gamma=meta.get("gamma_rad"))
        return cls(metric, n_trials=float(result.n_trials))

    @property
    def description(self) -> str:
        if self.metric == "neg_log_p":
            return f"N_pop·e^-t, N_pop = {self.n:,.0f}"
        return f"Gaussian tail, N_trials = {self.n:.3g}"

    def expected_false_positives(self, t):
        """Expected noise peaks with metric >= ``t`` (scalar or array)."""
        t = np.asarray(t, dtype=np.float64)
        if self.metric == "neg_log_p":
            out = np.asarray(expected_false_positives_pvalue(t, self.n, self.gamma))
        else:
            out = expected_false_positives(t, self.n)
        return float(out) if out.ndim == 0 else out

    def threshold_for(self, n_false_positives: float = 1.0) -> float:
        """Threshold with ``n_false_positives`` expected noise peaks (inverse of the above)."""
        if n_false_positives <= 0:
            raise InputError(f"expected false positives must be > 0, got {n_false_positives}")
        if self.metric == "neg_log_p":
            return max(0.0, pvalue_threshold(self.n, n_false_positives))
        return false_alarm_threshold(self.n, n_false_positives)

    def expected_counts(self, edges) -> np.ndarray:
        """Expected noise counts in histogram bins ``[edges[i], edges[i+1])``."""
        tail = np.asarray(self.expected_false_positives(np.asarray(edges, np.float64)))
        return np.maximum(tail[:-1] - tail[1:], 0.0)


# --------------------------------------------------------------- candidates


def extract_candidates(result, metric: str | None = None, radius_px: float | None = None,
                       floor: float | None = None, exclusion: np.ndarray | None = None,
                       max_candidates: int = MAX_CANDIDATES) -> pd.DataFrame:
    """Peaks of the ``metric`` map at least ``radius_px`` search pixels apart.

    floor: lowest metric value kept (default: every local maximum; for -ln p every
    one above 0, as points outside the first quadrant all have -ln p = 0);
    exclusion: ``(ny, nx)`` bool, True = no peak there. Returns the
    :func:`napari_2dtm.search.detect.extract_hits` table (strongest first, at most
    ``max_candidates`` rows) plus ``id`` (0..n-1) and ``status`` (``unreviewed``).
    """
    metric = metric or default_metric(result.maps)
    metric_map(result, metric, exclusion)
    if floor is None:
        floor = np.nextafter(np.float32(0), np.float32(1)) if metric == "neg_log_p" else -np.inf
    allowed = None
    if exclusion is not None:
        exclusion = np.asarray(exclusion, bool)
        if exclusion.shape != result.maps[metric].shape:
            raise InputError(f"exclusion mask {exclusion.shape} does not match the maps "
                             f"{result.maps[metric].shape}")
        allowed = ~exclusion
    table = extract_hits(result, metric, threshold=float(floor), radius_px=radius_px, mask=allowed)
    table = table.head(max_candidates).reset_index(drop=True)
    table.insert(0, "id", np.arange(len(table)))
    table["status"] = pd.Categorical(["unreviewed"] * len(table), categories=STATUSES)
    return table


def sample_mask(mask: np.ndarray, scale, translate, search_shape, search_pixel_size_a: float
                ) -> np.ndarray:
    """A 2D mask drawn in any layer frame, sampled on the search grid (nearest pixel).

    mask: ``(my, mx)`` array in the layer's data frame (non-zero = masked); scale and
    translate: the layer's last two ``(y, x)`` scale (Å per data pixel) and translation
    (Å); the search grid has pixel ``(i, j)`` at world ``(i, j) * search_pixel_size_a``
    (the maps' layers). Returns ``search_shape`` bool; outside the mask's extent False.
    """
    m = np.asarray(mask)
    ny, nx = search_shape
    sy, sx = (float(v) for v in scale)
    ty, tx = (float(v) for v in translate)
    rows = np.rint((np.arange(ny) * search_pixel_size_a - ty) / sy).astype(np.int64)
    cols = np.rint((np.arange(nx) * search_pixel_size_a - tx) / sx).astype(np.int64)
    ok_r = (rows >= 0) & (rows < m.shape[0])
    ok_c = (cols >= 0) & (cols < m.shape[1])
    out = np.zeros((ny, nx), bool)
    sub = m[np.ix_(rows[ok_r], cols[ok_c])] != 0
    out[np.ix_(ok_r, ok_c)] = sub
    return out


# ------------------------------------------------------------------- review


class Review:
    """The review state of one search result: candidates, threshold, decisions.

    result: a :class:`~napari_2dtm.search.engine.SearchResult` (maps, metadata); folder: its
    results folder (where :meth:`save` writes ``review/``); metric, radius_px (search
    pixels, default the search's peak radius), floor, exclusion: as in
    :func:`extract_candidates`; threshold defaults to the value with
    ``n_false_positives`` expected noise peaks; at most ``max_candidates`` (the
    strongest) are kept.
    """

    def __init__(self, result, folder=None, metric: str | None = None,
                 radius_px: float | None = None, floor: float | None = None,
                 exclusion: np.ndarray | None = None, threshold: float | None = None,
                 n_false_positives: float = 1.0, max_candidates: int = MAX_CANDIDATES):
        self.result = result
        self.max_candidates = int(max_candidates)
        self.folder = Path(folder) if folder else None
        self.n_false_positives = float(n_false_positives)
        self.table = pd.DataFrame()
        self.metric = metric = metric or default_metric(result.maps)
        self._extracted_metric: str | None = None  # the metric of the current candidates
        self.extract(metric, radius_px, floor, exclusion)
        if threshold is not None:
            self.set_threshold(threshold)

    # ------------------------------------------------------------- metadata
    @property
    def metadata(self) -> dict:
        return dict(self.result.metadata or {})

    @property
    def results(self):
        """The typed view of the result and its folder
        (:class:`~napari_2dtm.search.results.ResultsFolder`)."""
        from napari_2dtm.search.results import ResultsFolder  # noqa: PLC0415

        return ResultsFolder.of(self.result, self.folder)

    @property
    def micrograph_name(self) -> str:
        return self.results.micrograph_name

    @property
    def ctf(self) -> dict:
        return self.results.ctf.to_dict() if self.metadata.get("config") else {}

    @property
    def default_radius_px(self) -> float:
        return self.results.peak_radius_px

    # ----------------------------------------------------------- extraction
    def extract(self, metric: str | None = None, radius_px=_KEEP, floor=_KEEP,
                exclusion=_KEEP) -> pd.DataFrame:
        """(Re-)extract candidates from the stored maps; decisions follow their peaks.

        Arguments left out keep their current value (``None`` restores the default:
        the search's peak radius, every local maximum, no mask). A reviewed peak keeps
        its status when a new candidate lies within ``max(2, radius / 2)`` search
        pixels. A new metric resets the threshold to the value with
        :attr:`n_false_positives` expected noise peaks.
        """
        metric = metric or self.metric
        if radius_px is not _KEEP:
            self.radius_px = None if radius_px is None else float(radius_px)
        if floor is not _KEEP:
            self.floor = None if floor is None else float(floor)
        if exclusion is not _KEEP:
            self.exclusion = None if exclusion is None else np.asarray(exclusion, bool)
        old = self.table
        radius = self.radius_px or self.default_radius_px
        table = extract_candidates(self.result, metric, radius, self.floor, self.exclusion,
                                   self.max_candidates)
        if len(old) and len(table):
            reviewed = old[old["status"] != "unreviewed"]
            if len(reviewed):
                tree = cKDTree(table[["y_search", "x_search"]].to_numpy(float))
                d, j = tree.query(reviewed[["y_search", "x_search"]].to_numpy(float))
                ok = d <= max(2.0, 0.5 * radius)
                status = table["status"].to_numpy(object).copy()
                status[j[ok]] = reviewed["status"].to_numpy(object)[ok]
                table["status"] = pd.Categorical(status, categories=STATUSES)
        new_metric = metric != self._extracted_metric
        self.table = table
        self.metric = self._extracted_metric = metric
        self._values = table[metric].to_numpy(np.float64) if len(table) else np.zeros(0)
        self.noise = NoiseModel.for_result(self.result, metric)
        if new_metric:
            self.threshold = self.noise.threshold_for(self.n_false_positives)
        return table

    # ------------------------------------------------------------ threshold
    @property
    def values(self) -> np.ndarray:
        """``(n,)`` metric value of each candidate."""
        return self._values

    def set_threshold(self, threshold: float) -> np.ndarray:
        """Set the threshold; returns the ``(n,)`` bool mask of hits (metric >= threshold)."""
        self.threshold = float(threshold)
        return self.shown()

    def shown(self, threshold: float | None = None) -> np.ndarray:
        """``(n,)`` bool: candidates at or above the threshold (the hits)."""
        t = self.threshold if threshold is None else float(threshold)
        return self._values >= t

    def set_threshold_for(self, n_false_positives: float) -> float:
        """Threshold with ``n_false_positives`` expected noise peaks; returns it."""
        self.n_false_positives = float(n_false_positives)
        self.threshold = self.noise.threshold_for(n_false_positives)
        return self.threshold

    @property
    def expected_false_positives(self) -> float:
        """Expected noise peaks above the current threshold."""
        return self.noise.expected_false_positives(self.threshold)

    def histogram(self, bins: int = 60):
        """``(counts, edges, expected_noise_counts)`` of the candidates' metric values."""
        v = self._values[np.isfinite(self._values)]
        if v.size == 0:
            edges = np.linspace(0.0, 1.0, bins + 1)
            return np.zeros(bins), edges, self.noise.expected_counts(edges)
        lo, hi = float(v.min()), float(v.max())
        hi = max(hi, self.threshold) + 1e-6
        lo = min(lo, self.threshold)
        counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
        return counts, edges, self.noise.expected_counts(edges)

    # -------------------------------------------------------------- curation
    def set_status(self, ids, status: str) -> None:
        """Set the status (``accepted``, ``rejected`` or ``unreviewed``) of candidates."""
        if status not in STATUSES:
            raise InputError(f"status must be one of {STATUSES}, got {status!r}")
        idx = np.atleast_1d(np.asarray(list(ids) if isinstance(ids, (set, frozenset)) else ids,
                                       dtype=np.int64))
        if idx.size:
            self.table.loc[idx, "status"] = status

    def counts(self) -> dict:
        """Candidates, hits (shown) and decisions, for labels."""
        s = self.table["status"].to_numpy(object) if len(self.table) else np.zeros(0, object)
        return {
            "candidates": int(len(self.table)),
            "hits": int(self.shown().sum()),
            "accepted": int(np.sum(s == "accepted")),
            "rejected": int(np.sum(s == "rejected")),
        }

    def _review_dir(self, folder=None) -> Path:
        folder = Path(folder) if folder else self.folder
        if folder is None:
            raise InputError("no results folder to save the review in")
        return folder / REVIEW_DIR

    def save(self, folder=None) -> Path:
        """Write ``review/curation.csv`` (reviewed peaks), ``review/review.json``
        (metric, radius, floor, threshold) and ``review/exclusion_mask.mrc`` atomically."""
        out = self._review_dir(folder)
        out.mkdir(parents=True, exist_ok=True)
        t = self.table
        reviewed = t[t["status"] != "unreviewed"] if len(t) else t
        cols = [c for c in ("x", "y", "x_search", "y_search", "status", "zscore", "snr",
                            "neg_log_p", "phi", "theta", "psi") if c in reviewed.columns]
        with atomic_path(out / CURATION_FILE) as tmp:
            reviewed[cols].to_csv(tmp, index=False)
        settings = {
            "metric": self.metric,
            "radius_px": self.radius_px,
            "floor": self.floor,
            "threshold": self.threshold,
            "n_false_positives": self.n_false_positives,
            "expected_false_positives": self.expected_false_positives,
            "exclusion_mask": MASK_FILE if self.exclusion is not None else None,
            **self.counts(),
        }
        if self.exclusion is not None:
            write_mrc(out / MASK_FILE, self.exclusion.astype(np.int8), self.result.pixel_size_a)
        elif (out / MASK_FILE).exists():
            (out / MASK_FILE).unlink()
        atomic_write_text(out / SETTINGS_FILE, json.dumps(settings, indent=2))
        return out

    @classmethod
    def open(cls, folder, result=None, **kwargs) -> Review:
        """The review of a results folder: saved settings and decisions restored
        (a fresh review when none was saved). ``result`` saves reading the maps again;
        ``kwargs`` go to the constructor (e.g. ``max_candidates``)."""
        from napari_2dtm.search.results import read_results

        folder = Path(folder)
        if result is None:
            result = read_results(folder)
        rdir = folder / REVIEW_DIR
        settings, exclusion = {}, None
        if (rdir / SETTINGS_FILE).is_file():
            try:
                settings = json.loads((rdir / SETTINGS_FILE).read_text())
            except ValueError as e:
                raise InputError(f"{rdir / SETTINGS_FILE}: not valid JSON ({e})") from None
        if settings.get("exclusion_mask") and (rdir / MASK_FILE).is_file():
            exclusion = read_mrc(rdir / MASK_FILE)[0] != 0
        metric = settings.get("metric") or default_metric(result.maps)
        if metric not in available_metrics(result):
            metric = default_metric(result.maps)
        review = cls(result, folder, metric=metric, radius_px=settings.get("radius_px"),
                     floor=settings.get("floor"), exclusion=exclusion,
                     n_false_positives=settings.get("n_false_positives", 1.0), **kwargs)
        if settings.get("threshold") is not None and settings.get("metric") == metric:
            review.set_threshold(settings["threshold"])
        if (rdir / CURATION_FILE).is_file():
            review.restore_decisions(pd.read_csv(rdir / CURATION_FILE))
        return review

    def restore_decisions(self, decisions: pd.DataFrame) -> int:
        """Apply saved ``status`` rows (matched by search-grid position); returns matches."""
        if not len(decisions) or not len(self.table):
            return 0
        missing = {"x_search", "y_search", "status"} - set(decisions.columns)
        if missing:
            raise InputError(f"curation table lacks columns {sorted(missing)}")
        tree = cKDTree(self.table[["y_search", "x_search"]].to_numpy(float))
        d, j = tree.query(decisions[["y_search", "x_search"]].to_numpy(float))
        radius = self.radius_px or self.default_radius_px
        ok = (d <= max(2.0, 0.5 * radius)) & decisions["status"].isin(STATUSES).to_numpy()
        status = self.table["status"].to_numpy(object).copy()
        status[j[ok]] = decisions["status"].to_numpy(object)[ok]
        self.table["status"] = pd.Categorical(status, categories=STATUSES)
        return int(ok.sum())

    # ---------------------------------------------------------------- export
    def selection(self, which: str = "all") -> pd.DataFrame:
        """Rows to export: ``all`` = hits above the threshold except rejected ones;
        ``accepted`` = every accepted candidate (whatever the threshold)."""
        t = self.table
        if which == "accepted":
            sel = (t["status"] == "accepted").to_numpy()
        elif which == "all":
            sel = self.shown() & (t["status"] != "rejected").to_numpy()
        else:
            raise InputError(f"export selection must be 'all' or 'accepted', got {which!r}")
        out = t[sel].drop(columns=["id"]).reset_index(drop=True)
        out["status"] = out["status"].astype(str)
        out["accepted"] = out["status"] == "accepted"
        return out

    def export(self, path, which: str = "all", overwrite: bool = True) -> pd.DataFrame:
        """Write the selection to ``.star`` (RELION 5 names, z-score/SNR/-ln p columns)
        or ``.csv``; returns the exported table."""
        from napari_2dtm.io.star import write_hits

        table = self.selection(which)
        write_hits(table, path, micrograph_name=self.micrograph_name,
                   pixel_size_a=self.result.input_pixel_size_a, ctf=self.ctf,
                   overwrite=overwrite)
        return table
