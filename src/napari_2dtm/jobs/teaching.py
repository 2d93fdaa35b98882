"""Teaching mode: a real search, slowed down and explained step by step.

:class:`TeachingSearch` runs the ordinary :class:`~napari_2dtm.search.engine.Search` (same
configuration, same batches, so its result and hits are exactly those of a normal
search) and paces its progress stream: between batches it pauses so a person can
watch, and for each shown step it recomputes, from the public building blocks, what
the engine just did for the last orientation of the batch:

* the template's projection (:func:`~napari_2dtm.core.projection.extract_slices`), the
  ``CTF x whitening`` filter (:func:`~napari_2dtm.core.ctf.ctf_2d`,
  :class:`~napari_2dtm.core.filters.WhiteningFilter`) and the filtered projection that is
  correlated with the micrograph;
* that orientation's normalised cross-correlation map over the whole micrograph
  (the engine's formula, see :class:`OrientationCorrelator`);
* the MIP so far (from the search's own progress snapshot);
* with a ground-truth table, live precision and recall of the peaks above the
  false-alarm threshold.

Every step carries a short caption. :func:`run_teaching` is the job (the jobs'
protocol: progress records, an Event to cancel, ``(result, folder)``): it saves the
same results folder as :func:`~napari_2dtm.jobs.search.run_search`. No Qt or napari
here: the napari view is ``napari_2dtm._napari._teaching_widget``.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.fft as sfft
from scipy.optimize import linear_sum_assignment

from napari_2dtm.core.ctf import ctf_2d
from napari_2dtm.core.geometry import euler_to_matrix
from napari_2dtm.core.projection import FourierVolume, extract_slices, subtract_edge_mean
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.jobs.search import SearchStarted, linked_cancel, save_results
from napari_2dtm.search.config import SearchConfig
from napari_2dtm.search.detect import false_alarm_threshold, find_peaks
from napari_2dtm.search.engine import Search
from napari_2dtm.search.results import results_dir_problem

__all__ = ["TeachingSearch", "TeachingStep", "OrientationCorrelator", "match_truth", "CAPTIONS",
           "PACE", "run_teaching"]

#: the default pace: seconds per search step, per introductory step, shown steps
PACE = dict(step_s=0.5, intro_s=3.0, max_steps=60)

#: one-line explanations shown with each stage
CAPTIONS = {
    "whiten": (
        "1. Whitening: the micrograph is divided by its own noise spectrum and scaled to "
        "unit variance, so noise is equally strong at every frequency and fine detail "
        "counts as much as coarse blobs."
    ),
    "template": (
        "2. Template and CTF: each orientation of the 3D template gives one 2D projection "
        "(a central slice of its Fourier transform). The microscope's CTF (rings) and the "
        "same whitening filter turn it into what the particle looks like in this image."
    ),
    "search": (
        "3. Search: the filtered projection is cross-correlated with the whole micrograph "
        "at once (FFT). Each pixel keeps its best score over all orientations so far: the "
        "maximum intensity projection (MIP)."
    ),
    "done": (
        "4. Detection: zbg = (MIP - mean) / sigma per pixel, where sigma is the spread of "
        "the background, not inflated by the particle itself (the plain z-score divides by "
        "every orientation's spread, so strong particles score low). Peaks above the "
        "false-alarm threshold (expected number of noise peaks above it: N false pos.) are "
        "the hits; a peak that a stronger neighbour's side lobe explains is not."
    ),
}


@dataclasses.dataclass
class TeachingStep:
    """What one step of a teaching run shows.

    stage: ``"whiten"``, ``"template"``, ``"search"`` or ``"done"``; caption: text
    for the viewer. Arrays at the search pixel size (``pixel_size_a``):
    whitened ``(ny, nx)`` (whiten stage only); projection, ctf, filtered ``(h, h)``
    (projection centred at ``h // 2``; ctf is the ``CTF x whitening`` filter in
    Fourier space, zero frequency at the centre; filtered is the projection after that
    filter, scaled to unit energy); cc ``(ny, nx)`` the normalised cross-correlation
    of this orientation (N(0, 1) under noise); mip ``(ny, nx)`` the MIP so far.
    hits: peaks of the current zbg above the threshold (x, y in input pixels);
    precision, recall: against the ground truth (None without one).
    """

    stage: str
    caption: str
    index: int
    fraction: float
    pixel_size_a: float
    orientation_index: int | None = None
    orientation_deg: tuple[float, float, float] | None = None
    whitened: np.ndarray | None = None
    projection: np.ndarray | None = None
    ctf: np.ndarray | None = None
    filtered: np.ndarray | None = None
    cc: np.ndarray | None = None
    mip: np.ndarray | None = None
    progress: Any = None
    hits: pd.DataFrame | None = None
    threshold: float | None = None
    n_truth: int = 0
    n_matched: int = 0
    precision: float | None = None
    recall: float | None = None
    result: Any = None


class OrientationCorrelator:
    """One orientation's template projection and correlation map, as the engine makes them.

    Uses the search's prepared (whitened, unit-variance) image, its search frame and
    pixel size, and the central defocus plane: the projection (edge mean subtracted)
    is zero-padded to the frame, multiplied by ``CTF x whitening`` and scaled to unit
    energy, and correlated with the image by FFT. So under white noise each pixel of
    the map is N(0, 1), and the element-wise maximum of the maps over all orientations
    is the search's MIP.
    """

    def __init__(self, search: Search):
        cfg = search.config
        t = search.template
        self.box = h = search.box
        self.frame = hs, ws = search.frame
        self.image_shape = search.image_shape
        self.pixel_size_a = px = search.pixel_size_a
        pad = cfg.template_pad or (2 if t.box <= 256 else 1)  # the engine's choice
        self.fvol = FourierVolume(t.volume, pad=pad)
        self.scale = self.fvol.scale_for(t.pixel_size_a, h, px)
        ny, nx = self.image_shape
        frame = np.zeros((hs, ws), np.float32)
        frame[:ny, :nx] = search.prepared.image
        self.image_ft = sfft.rfft2(frame)
        whitening = search.prepared.whitening
        self.filter = ctf_2d(cfg.ctf, (hs, ws), px) * whitening.on_grid((hs, ws), px)
        wts = np.full(ws // 2 + 1, 2.0)
        wts[0] = 1.0
        wts[-1] = 1.0
        self._wts = wts
        # For display: the same filter on the box grid, full plane, zero frequency centred.
        ky = np.fft.fftfreq(h, d=px)[:, None]
        kx = np.fft.fftfreq(h, d=px)[None, :]
        box_filter = ctf_2d(cfg.ctf, (h, h), px, rfft=False) * whitening(np.hypot(kx, ky))
        self.box_filter = np.fft.fftshift(box_filter).astype(np.float32)

    def projection(self, angles_deg) -> np.ndarray:
        """Edge-mean-subtracted projection ``(h, h)``, wrapped (particle centre at pixel 0)."""
        rot = euler_to_matrix(*np.asarray(angles_deg, np.float64))[None]
        sl = extract_slices(self.fvol, rot, self.box, self.scale)
        p = np.fft.irfft2(sl, s=(self.box, self.box), axes=(-2, -1))
        return subtract_edge_mean(p)[0]

    def correlate(self, angles_deg) -> dict:
        """``projection``, ``filtered`` ``(h, h)`` centred, and ``cc`` ``(ny, nx)``."""
        h = self.box
        hs, ws = self.frame
        e = h // 2
        p = self.projection(angles_deg)
        big = np.zeros((hs, ws))
        big[:e, :e] = p[:e, :e]
        big[:e, ws - e:] = p[:e, e:]
        big[hs - e:, :e] = p[e:, :e]
        big[hs - e:, ws - e:] = p[e:, e:]
        g = sfft.rfft2(big) * self.filter
        energy = float(np.sum(self._wts * (g.real**2 + g.imag**2)))
        norm = 1.0 / math.sqrt(energy / (hs * ws)) if energy > 0 else 0.0
        ny, nx = self.image_shape
        cc = sfft.irfft2(self.image_ft * np.conj(g), s=(hs, ws))[:ny, :nx] * norm
        filt = sfft.irfft2(g, s=(hs, ws)) * norm
        filt = np.roll(filt, (e, e), axis=(0, 1))[:h, :h]
        return {
            "projection": np.fft.fftshift(p).astype(np.float32),
            "filtered": filt.astype(np.float32),
            "cc": cc.astype(np.float32),
        }


def match_truth(hits: pd.DataFrame, truth: pd.DataFrame, radius_px: float) -> tuple[int, float, float]:
    """One-to-one matching of hits to true particles closer than ``radius_px``.

    hits, truth: tables with x, y in input-micrograph pixels. Returns
    ``(n_matched, precision, recall)``; precision is 1 with no hits (nothing wrong
    was claimed) and recall 1 with no true particles (nothing to find).
    """
    nh, nt = len(hits), len(truth)
    if nh == 0 or nt == 0:
        return 0, 0.0 if nh else 1.0, 0.0 if nt else 1.0
    a = hits[["x", "y"]].to_numpy(float)
    b = truth[["x", "y"]].to_numpy(float)
    d = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    cost = np.where(d <= radius_px, d, 1e9)
    r, c = linear_sum_assignment(cost)
    n = int(np.sum(d[r, c] <= radius_px))
    return n, n / nh, n / nt


class TeachingSearch:
    """A real search run at a watchable pace, yielding :class:`TeachingStep` s.

    image, pixel_size_a, template, config: as for :class:`~napari_2dtm.search.engine.Search`
    (the config is copied with a progress snapshot after every batch; nothing else
    changes, so :attr:`result` equals a normal search's). truth: optional table with
    x, y (input pixels) of the true particles. step_s: minimum seconds between shown
    steps (the search waits); intro_s: seconds the two introductory steps stay;
    max_steps: at most this many search steps are shown (batches in between run
    without pausing). ``sleep`` is the pause function (tests pass a fast one).
    """

    def __init__(self, image, pixel_size_a: float, template, config: SearchConfig | None = None,
                 truth: pd.DataFrame | None = None, step_s: float = 0.5, intro_s: float = 3.0,
                 max_steps: int = 60, sleep=time.sleep):
        config = dataclasses.replace(config or SearchConfig(), progress_interval_s=0.0)
        self.search = Search(image, pixel_size_a, template, config)
        self.truth = None if truth is None else pd.DataFrame(truth).reset_index(drop=True)
        self.step_s = float(step_s)
        self.intro_s = float(intro_s)
        self.max_steps = max(1, int(max_steps))
        self._sleep = sleep
        s = self.search
        n_valid = int(s.valid_mask().sum())
        self.threshold = false_alarm_threshold(n_valid * s.n_cc_total, config.n_false_positives)
        self.binning = s.pixel_size_a / s.input_pixel_size_a
        # A hit counts as a true particle within half a particle radius.
        self.match_radius_px = max(3.0, 0.5 * s.particle_radius_px * self.binning)
        self.correlator: OrientationCorrelator | None = None
        self.result = None
        self._last = 0.0

    def cancel(self):
        self.search.cancel()

    # ------------------------------------------------------------------ steps
    def _wait(self, seconds: float):
        """Pause until ``seconds`` after the previous step (in short naps: cancel stays quick)."""
        end = self._last + seconds
        while not self.search.cancelled:
            left = end - time.perf_counter()
            if left <= 0:
                break
            self._sleep(min(left, 0.1))
        self._last = time.perf_counter()

    def _score(self, step: TeachingStep, hits: pd.DataFrame):
        step.hits = hits
        step.threshold = self.threshold
        if self.truth is not None:
            n, prec, rec = match_truth(hits, self.truth, self.match_radius_px)
            step.n_truth, step.n_matched, step.precision, step.recall = len(self.truth), n, prec, rec

    def _live_hits(self, zbg: np.ndarray) -> pd.DataFrame:
        s = self.search
        pk = find_peaks(zbg, self.threshold, s.peak_radius_px, mask=s.valid_mask())
        return pd.DataFrame({"x": pk[:, 1] * self.binning, "y": pk[:, 0] * self.binning,
                             "zbg": zbg[pk[:, 0], pk[:, 1]].astype(float)})

    def score_text(self, step: TeachingStep) -> str:
        """``"3 hits above 5.79; 3 of 8 true particles: precision 1.00, recall 0.38"``."""
        n = 0 if step.hits is None else len(step.hits)
        text = f"{n} hit{'s' if n != 1 else ''} above the threshold {self.threshold:.2f}"
        if step.precision is not None:
            text += (f"; {step.n_matched} of {step.n_truth} true particles found: "
                     f"precision {step.precision:.2f}, recall {step.recall:.2f}")
        return text

    def steps(self) -> Iterator[TeachingStep]:
        """Run the search; yield the intro steps, up to ``max_steps`` search steps, and
        the final step (with :attr:`result`). Raises SearchCancelled when cancelled."""
        s = self.search
        px = s.pixel_size_a
        self._last = time.perf_counter()
        yield TeachingStep("whiten", CAPTIONS["whiten"], 0, 0.0, px,
                           whitened=s.prepared.image.astype(np.float32))
        self._wait(self.intro_s)
        self.correlator = corr = OrientationCorrelator(s)
        first = tuple(float(a) for a in s.orientations[0])
        shown = corr.correlate(first)
        yield TeachingStep("template", CAPTIONS["template"], 1, 0.0, px, orientation_index=0,
                           orientation_deg=first, projection=shown["projection"],
                           ctf=corr.box_filter, filtered=shown["filtered"])
        self._wait(self.intro_s)
        n_or = s.n_orientations
        n_df = len(s.defocus_offsets_a)
        first_or = getattr(s, "orientation_range", (0, n_or))[0]
        index = 2
        next_mark = 0.0
        for p in s.run():
            if p.done:
                break
            if p.fraction < next_mark:
                continue  # batches between shown steps run at full speed
            next_mark = p.fraction + 1.0 / self.max_steps
            # the last orientation of the batch just done (batches run in grid order)
            k = first_or + (p.n_done // n_df - 1) % n_or
            ang = tuple(float(a) for a in s.orientations[k])
            shown = corr.correlate(ang)
            step = TeachingStep("search", "", index, p.fraction, px, orientation_index=k,
                                orientation_deg=ang, projection=shown["projection"],
                                ctf=corr.box_filter, filtered=shown["filtered"],
                                cc=shown["cc"], mip=p.mip, progress=p)
            self._score(step, self._live_hits(p.zbg if p.zbg is not None else p.zscore))
            step.caption = (
                f"{CAPTIONS['search']}\nOrientation {k + 1:,} of {len(s.orientations):,} "
                f"(phi {ang[0]:.0f}°, theta {ang[1]:.0f}°, psi {ang[2]:.0f}°), "
                f"{100 * p.fraction:.0f}% done. {self.score_text(step)}."
            )
            index += 1
            yield step
            self._wait(self.step_s)
        self.result = res = s.result
        step = TeachingStep("done", "", index, 1.0, px, mip=res.maps["mip"], progress=p,
                            result=res)
        self._score(step, res.hits)
        step.caption = f"{CAPTIONS['done']}\n{self.score_text(step)}."
        yield step


def run_teaching(image, pixel_size_a: float, template, config, out_dir, *,
                 micrograph_path=None, micrograph_name: str = "micrograph",
                 overwrite: bool = False, truth: pd.DataFrame | None = None,
                 pace: dict | None = None, progress: Callable | None = None,
                 cancel: threading.Event | None = None):
    """The teaching job: a :class:`TeachingSearch` run, then the normal results folder.

    Arguments as :func:`~napari_2dtm.jobs.search.run_search`; truth: the sample's ground
    truth (x, y in input pixels) for live precision/recall; pace: overrides of
    :data:`PACE`. ``progress`` gets a
    :class:`~napari_2dtm.jobs.search.SearchStarted`, then every :class:`TeachingStep`.
    Returns ``(SearchResult, folder)``; raises :class:`~napari_2dtm.errors.Cancelled`.
    """
    problem = results_dir_problem(out_dir, overwrite)
    if problem:
        raise InputError(problem)
    teacher = TeachingSearch(image, pixel_size_a, template, config, truth=truth,
                             **{**PACE, **(pace or {})})
    s = teacher.search
    if progress is not None:
        progress(SearchStarted.of(s))
    with linked_cancel(cancel, teacher.cancel):
        for step in teacher.steps():
            if progress is not None:
                progress(step)
    if cancel is not None and cancel.is_set():
        raise Cancelled("search cancelled")
    folder = save_results(teacher.result, out_dir, image, micrograph_path, micrograph_name,
                          overwrite)
    return teacher.result, Path(folder)
