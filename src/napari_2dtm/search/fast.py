"""The fast search: an exhaustive search at reduced resolution, then gradient refinement.

``SearchConfig(strategy="fast")`` (``napari-2dtm search --strategy fast``) looks for the
particles the exhaustive search at the same requested steps finds, with a calibrated
false-alarm threshold, for a fraction of the cross-correlations:

1. **Coarse stage** (:func:`coarse_config`): the ordinary engine with the resolution
   limit :data:`COARSE_RESOLUTION` (1.5) times coarser (frames of 1/2.25 the pixels) and
   the angular and defocus steps :data:`COARSE_ANGLE` (2) times coarser (an eighth of
   the orientations, about half the planes), but never coarser than twice the full
   resolution's own step, ``resolution / particle diameter`` radians (the width of a
   correlation peak): a requested step already coarser than that stays as it is. Not 2x
   in resolution: at twice the pixel size a particle half a coarse pixel off the grid
   loses ~35 % of its correlation and a flipped view can win its pixel (measured).
   Its maps stream live and are the maps the fast search reports (at the coarse pixel
   size, recorded in ``search.json``).
2. **Candidates**: local maxima of the coarse height over its background,
   ``(MIP - mean) / sigma_bg`` (never below ``zbg``), above :data:`COARSE_RETAINED`
   times the final threshold (the least fraction of its height a particle keeps at the
   coarse stage), outside contamination; each starts from the pose and pixel of the
   largest MIP within two coarse pixels.
3. **Refinement** of every candidate at full resolution
   (:class:`~napari_2dtm.core.pose_refine.PoseRefiner`): a local grid of orientations
   within two requested steps of the coarse pose, scored on the coarse band at the best
   integer shift, then L-BFGS on the differentiable score from its best few points
   (pose, sub-pixel position, defocus).
4. **Detection**: ``zbg = (cc - mean) / sigma_bg`` with the refined correlation ``cc``,
   the full-resolution per-pixel mean at the refined position (from a uniform sample of
   orientations: what an exhaustive search would have there; the coarse stage's mean is
   another quantity, its low band carries more of the orientation average) and the
   background spread ``sigma_bg`` of the coarse stage (white-noise CCs are N(0, 1) at any
   resolution). Not the exhaustive zbg's guard ``sqrt(std^2 - kappa h^2)``: at a
   particle's exact centre its own signal inflates the SD beyond what the template's
   self-match predicts whenever the particle correlates more with other views than the
   template does (measured on the benchmark's simulated particles), which is also why
   the exhaustive zbg peaks 2-6 px off such particles. ``zscore`` uses the sampled SD.
   Strongest correlation first, a candidate is dropped when a kept one lies within the
   peak radius, or explains it: ``cc <= rho cc_k + margin`` with ``rho`` the overlap of
   the two refined filtered templates (:func:`~napari_2dtm.core.diffproj.template_overlap`).
   The threshold is Rickgauer's with the trials of a *continuous* search: the
   orientations of a grid at the finer of the requested step and the resolution's
   (:func:`fine_trials`), since a refined optimum takes the best of every independent
   orientation near it, not only of the grid's points (with the requested step's count
   noise images gave 2-6 false positives each at N_fp = 1).

The candidates (refined, with every statistic) are kept in the result and in
``candidates.csv``, so a review can move the threshold down to the candidate threshold.
No p-value map: the 2DTM p-value is fitted to a map's local maxima, which here are coarse.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from napari_2dtm.core.filters import prepare_image
from napari_2dtm.core.geometry import euler_to_matrix, matrix_to_euler, so3_grid
from napari_2dtm.core.pose_refine import PoseRefiner
from napari_2dtm.core.projection import FourierVolume
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.templates.load import template_at

from .config import STRATEGIES, SearchConfig, defocus_offsets
from .detect import false_alarm_threshold, find_peaks, hits_from_candidates
from .engine import Search
from .outcome import SearchProgress, SearchResult
from .statistics import template_radius

__all__ = ["STRATEGIES", "FastSearch", "make_search", "search", "coarse_config", "COARSE_RETAINED",
           "COARSE_RESOLUTION", "COARSE_ANGLE", "hits_from_candidates"]

#: the coarse stage's resolution limit is this factor coarser (not 2: at pixels twice
#: the size, a particle half a coarse pixel off the grid loses ~35 % of its correlation
#: and a wrong view can win its pixel; at 1.5 it loses under 20 %)
COARSE_RESOLUTION = 1.5
#: ... and its angular and defocus steps this factor coarser (the refinement starts with
#: a local grid of this many requested steps around the coarse pose)
COARSE_ANGLE = 2.0
#: sigmas above the median candidate's height that a candidate must stand above the
#: correlation a stronger neighbour lends it (the template overlap) to be its own particle
LOBE_EXTRA_SIGMA = 0.5
#: random orientations for the full-resolution per-pixel mean and SD at a candidate
SAMPLE_ORIENTATIONS = 300
#: the least fraction of its full-resolution height a particle keeps at the coarse stage:
#: measured 0.80-0.96 at its true pose for 1BD2 at 4 -> 6 A pixels (the signal beyond the
#: coarse band, and a particle half a coarse pixel off the grid), times ~0.9 for the
#: coarse grid's angular misalignment
COARSE_RETAINED = 0.7


def coarse_config(config: SearchConfig, pixel_size_a: float,
                  particle_radius_a: float | None = None) -> SearchConfig:
    """The coarse stage of a fast search of a micrograph at ``pixel_size_a``: the
    resolution limit :data:`COARSE_RESOLUTION` times the requested one (the full
    resolution by default), the angular steps :data:`COARSE_ANGLE` times the requested
    ones but no coarser than that many times the full resolution's own step
    (:func:`resolution_step_deg` with ``particle_radius_a``: a requested step already
    coarser than the resolution allows is not made coarser still), the defocus step
    :data:`COARSE_ANGLE` times."""
    if config.orientations is not None:
        raise InputError("strategy fast (--strategy fast) searches a grid: an explicit "
                         "orientation list is already local, use the exhaustive strategy")
    if config.pixel_size_range_a > 0:
        raise InputError("strategy fast (--strategy fast) searches the nominal pixel size "
                         "only: set pixel_size_range_a (--pixel-size-range) to 0")
    if config.orientation_range is not None:
        raise InputError("strategy fast (--strategy fast) does not split into orientation "
                         "shards: run it whole")
    fine_limit = config.high_res_limit_a or 2.0 * float(pixel_size_a)
    f = COARSE_ANGLE
    cap = 90.0 if particle_radius_a is None else f * resolution_step_deg(fine_limit,
                                                                         particle_radius_a)

    def step(requested: float, most: float) -> float:
        return min(f * requested, max(cap, requested), most)

    return SearchConfig(**{
        **config.__dict__, "strategy": "exhaustive",
        "high_res_limit_a": COARSE_RESOLUTION * fine_limit,
        "out_of_plane_step_deg": step(config.out_of_plane_step_deg, 90.0),
        "in_plane_step_deg": step(config.in_plane_step_deg, 360.0),
        "defocus_step_a": f * config.defocus_step_a,
    })


def make_search(image, pixel_size_a: float, template, config: SearchConfig | None = None,
                **kwargs):
    """A :class:`~napari_2dtm.search.engine.Search` or, for ``config.strategy == "fast"``,
    a :class:`FastSearch` (the same interface: run, result, cancel, checkpoints)."""
    if config is not None and config.strategy == "fast":
        return FastSearch(image, pixel_size_a, template, config, **kwargs)
    return Search(image, pixel_size_a, template, config, **kwargs)


def search(image, pixel_size_a: float, template, config: SearchConfig | None = None,
           checkpoint=None, **kwargs) -> SearchResult:
    """Run a whole search of the config's strategy and return its :class:`SearchResult`
    (``napari_2dtm.search``; see :func:`napari_2dtm.search.engine.search` for the
    checkpoint)."""
    s = make_search(image, pixel_size_a, template, config, checkpoint=checkpoint, **kwargs)
    for _ in s.run():
        pass
    s.remove_checkpoint()
    return s.result


class FastSearch:
    """A coarse-to-fine search (module docstring) with :class:`Search`'s interface.

    The coarse stage is a :class:`Search` (checkpoints and resume are its own); this
    object forwards what a job reads (sizes, device, checkpoint) to it, and makes the
    result after the refinement.
    """

    def __init__(self, image, pixel_size_a: float, template, config: SearchConfig,
                 template_kwargs: dict | None = None, checkpoint=None, micrograph_path=None):
        self.config = config
        tpl = template_at(template, pixel_size_a, **(template_kwargs or {}))
        radius_a = template_radius(tpl.volume) * tpl.pixel_size_a
        self.coarse = Search(image, pixel_size_a, tpl, coarse_config(config, pixel_size_a,
                                                                     radius_a),
                             checkpoint=checkpoint, micrograph_path=micrograph_path)
        self.image = np.asarray(image, np.float32)
        self.template = self.coarse.template
        self.result: SearchResult | None = None
        self._fine = None  # (prepared full-resolution image, PoseRefiner), when needed

    def __getattr__(self, name):  # sizes, device, checkpoint path: the coarse stage's
        if name == "coarse":
            raise AttributeError(name)
        return getattr(self.coarse, name)

    def cancel(self):
        self.coarse.cancel()

    @property
    def cancelled(self) -> bool:
        return self.coarse.cancelled

    def remove_checkpoint(self):
        self.coarse.remove_checkpoint()

    def estimate_seconds(self) -> float:
        # the refinement: about 0.07 s per candidate, about one candidate per half-peak
        # disk above the median (half of the local maxima)
        c = self.coarse
        n_cand = 0.5 * c.image_shape[0] * c.image_shape[1] / (np.pi * (0.5 * c.peak_radius_px) ** 2)
        return c.estimate_seconds() + 0.07 * n_cand

    def run(self) -> Iterator[SearchProgress]:
        """The coarse stage's progress records (never ``done``), then the final one."""
        last = None
        for rec in self.coarse.run():
            last = rec
            if rec.done:
                break
            yield rec
        if self.coarse.cancelled:
            return
        t0 = time.perf_counter()
        self.result = _finish(self, self.coarse.result)
        elapsed = self.coarse.result.metadata.get("elapsed_s", 0.0) + time.perf_counter() - t0
        self.result.metadata["elapsed_s"] = elapsed
        m = self.result.maps
        yield SearchProgress(
            fraction=1.0, n_done=last.n_done if last else 0, n_total=last.n_total if last else 0,
            elapsed_s=elapsed, orientations_per_s=last.orientations_per_s if last else 0.0,
            eta_s=0.0, mip=m["mip"], zscore=m["zscore"], snr=m["snr"],
            pixel_size_a=self.coarse.pixel_size_a, done=True, zbg=m.get("zbg"))


def resolution_step_deg(resolution_a: float, particle_radius_a: float) -> float:
    """The angular width of a correlation peak, ``resolution / diameter`` radians, in
    degrees: orientations closer than this are not independent trials."""
    return math.degrees(float(resolution_a) / (2.0 * max(float(particle_radius_a), 1e-6)))


def fine_trials(config: SearchConfig, coarse: SearchResult, pixel_size_a: float) -> tuple:
    """``(trials, step_deg)``: the trials of a search at full resolution whose every
    candidate is optimised continuously: the valid pixels at the fine search pixel size x
    the defocus planes x the orientations of a grid at ``step_deg``, the finer of the
    requested steps and the resolution's (:func:`resolution_step_deg`): a continuous
    optimum takes the best of every independent orientation near it, not only of the grid
    points (without this, noise images give several times the requested false positives)."""
    fine_px = max(float(pixel_size_a), 0.5 * (config.high_res_limit_a or 0.0))
    radius_a = float(coarse.metadata["particle_radius_px"]) * coarse.pixel_size_a
    res_step = resolution_step_deg(2.0 * fine_px, radius_a)
    out_step = min(config.out_of_plane_step_deg, res_step)
    in_step = min(config.in_plane_step_deg, res_step)
    n_or = len(so3_grid(out_step, in_step, config.symmetry))
    n_planes = len(defocus_offsets(config.defocus_range_a, config.defocus_step_a))
    n_pix = float(coarse.valid_mask.sum()) * (coarse.pixel_size_a / fine_px) ** 2
    return n_pix * n_or * n_planes, (out_step, in_step)


def _finish(fs: FastSearch, cres: SearchResult) -> SearchResult:
    t0 = time.perf_counter()
    cfg, maps, meta = fs.config, cres.maps, dict(cres.metadata)
    valid = cres.valid_mask
    excluded = maps["excluded"] > 0.5 if "excluded" in maps else np.zeros_like(valid)
    n_trials, eff_steps = fine_trials(cfg, cres, cres.input_pixel_size_a)
    thr = false_alarm_threshold(n_trials, cfg.n_false_positives)
    # Peaks of the height over the background, not of zbg: a strong particle inflates its
    # own spread, which flattens zbg's peak and can move it off the particle (zbg >=
    # height / sigma_bg is never larger, so these candidates include zbg's).
    coarse_height = np.where(valid, (maps["mip"] - maps["mean"])
                             / np.maximum(maps["sigma_bg"], 1e-12), -np.inf)
    # A particle at the fine threshold keeps at least COARSE_RETAINED of its height at the
    # coarse stage: every coarse peak above that is refined (most are noise).
    t_cand = COARSE_RETAINED * thr
    peaks = find_peaks(coarse_height, t_cand, cres.metadata["peak_radius_px"], mask=valid & ~excluded)
    # Each refinement starts at the pose and pixel of the MIP's maximum near the peak: the
    # height peak can sit a pixel or two aside, where a flipped view of the particle wins
    rows, cols = _mip_maxima_near(maps["mip"], valid, peaks, 2)
    b = cres.binning
    start = pd.DataFrame({
        "x": cols * b, "y": rows * b,
        "phi": maps["phi"][rows, cols].astype(float), "theta": maps["theta"][rows, cols].astype(float),
        "psi": maps["psi"][rows, cols].astype(float),
        "defocus_a": maps["defocus"][rows, cols].astype(float)})
    ctf = cfg.ctf
    ref, raw = _refine(fs, cres, start)
    # each refined candidate's coarse pixel (its background spread)
    r = np.clip(np.rint(ref["y"].to_numpy(float) / b).astype(int), 0, valid.shape[0] - 1)
    c = np.clip(np.rint(ref["x"].to_numpy(float) / b).astype(int), 0, valid.shape[1] - 1)
    cc = ref["cc"].to_numpy(float)
    # The per-pixel mean and SD at full resolution, at the refined position, from a
    # uniform sample of orientations (PoseRefiner.set_orientation_sample): what an
    # exhaustive search would have there. zbg's spread is the background's alone
    # (sigma_bg, the coarse stage's: white-noise CCs are N(0, 1) at any resolution):
    # at a particle's exact centre its own signal inflates the SD beyond what the
    # template's self-match predicts whenever the particle correlates more with other
    # views than the template does (the benchmark's simulated 4E43: mean 5.3 against 3.6
    # predicted), and the exhaustive zbg then peaks 2-6 px off the particle.
    mean, std = ref["mean_cc"].to_numpy(float), ref["std_cc"].to_numpy(float)
    sig_bg = maps["sigma_bg"][r, c].astype(float)
    height = cc - mean
    gsig = float(meta.get("cc_global_std") or 1.0)
    cand = pd.DataFrame({
        "x": ref["x"].to_numpy(float), "y": ref["y"].to_numpy(float),
        "phi": ref["phi"].to_numpy(float), "theta": ref["theta"].to_numpy(float),
        "psi": ref["psi"].to_numpy(float), "defocus_a": ref["defocus_a"].to_numpy(float),
        "zbg": height / np.maximum(sig_bg, 1e-12),
        "zscore": height / np.maximum(std, 1e-12), "snr": cc / gsig, "mip": cc,
        "defocus1_a": ref["defocus1_a"].to_numpy(float),
        "defocus2_a": ref["defocus2_a"].to_numpy(float),
        "astigmatism_angle_deg": ctf.astigmatism_angle_deg,
        "x_search": c, "y_search": r, "zbg_coarse": maps["zbg"][r, c].astype(float),
        "mean_cc": mean, "std_cc": std, "sigma_bg": sig_bg, "height": height,
    })
    keep = _explained_away(fs, raw, cand, meta, b)
    cand = cand[keep]
    meta.update({
        "config": cfg.to_dict(),
        "strategy": "fast",
        "n_trials": n_trials, "threshold": thr,
        "fast": {
            "coarse_config": meta["config"], "coarse_n_trials": cres.n_trials,
            "coarse_threshold": cres.threshold, "candidate_threshold": t_cand,
            "coarse_retained": COARSE_RETAINED, "n_candidates": int(len(start)),
            "n_after_explaining_away": int(len(cand)),
            "effective_steps_deg": list(eff_steps),
            "refine_seconds": time.perf_counter() - t0,
            "refine_evaluations": int(ref.attrs.get("refine_evaluations", 0)),
            "coarse_seconds": cres.metadata.get("elapsed_s"),
            "coarse_cc_per_pixel": cres.metadata.get("n_cc_per_pixel"),
            "coarse_pixel_size_a": cres.pixel_size_a,
        },
    })
    res = SearchResult(maps=maps, pixel_size_a=cres.pixel_size_a,
                       input_pixel_size_a=cres.input_pixel_size_a, threshold=thr,
                       n_trials=n_trials, hits=None, metadata=meta, valid_mask=valid,
                       candidates=cand.reset_index(drop=True))
    res.hits = hits_from_candidates(res)
    return res


def _mip_maxima_near(mip: np.ndarray, valid: np.ndarray, peaks: np.ndarray, r: int):
    """``(rows, cols)``: for each peak, the pixel of the largest valid MIP within ``r``."""
    ny, nx = mip.shape
    m = np.where(valid, mip, -np.inf)
    rows, cols = np.empty(len(peaks), int), np.empty(len(peaks), int)
    for i, (y, x) in enumerate(peaks):
        y0, y1, x0, x1 = max(y - r, 0), min(y + r + 1, ny), max(x - r, 0), min(x + r + 1, nx)
        j = int(np.argmax(m[y0:y1, x0:x1]))
        rows[i], cols[i] = y0 + j // (x1 - x0), x0 + j % (x1 - x0)
    return rows, cols


def _refine(fs: FastSearch, cres: SearchResult, start: pd.DataFrame) -> tuple:
    """Every candidate refined at full resolution (:class:`PoseRefiner`): a table (x, y in
    input pixels, phi, theta, psi, defocus_a, defocus1_a, defocus2_a, cc) and the
    refiner's own results (for :func:`_explained_away`)."""
    cfg, ctf = fs.config, fs.config.ctf
    cols = {k: np.zeros(len(start)) for k in ("x", "y", "phi", "theta", "psi", "defocus_a", "cc",
                                              "mean_cc", "std_cc")}
    n_eval = 0
    raw = []
    if len(start):
        if fs._fine is None:
            prep = prepare_image(fs.image, cres.input_pixel_size_a, cfg.high_res_limit_a)
            t = fs.template
            px = prep.pixel_size_a
            box = int(math.ceil(t.box * t.pixel_size_a / px - 1e-6))
            box += box % 2
            refiner = PoseRefiner(prep.image, prep.whitening, px, FourierVolume(t.volume, pad=2),
                                  t.pixel_size_a, box, ctf,
                                  max(cfg.defocus_range_a, cfg.defocus_step_a))
            # the full-resolution per-pixel mean at each candidate (the coarse stage's is
            # another quantity: its low band carries more of the orientation average)
            refiner.set_orientation_sample(Rotation.random(
                SAMPLE_ORIENTATIONS, random_state=0).as_matrix().transpose(0, 2, 1))
            fs._fine = (prep, refiner)
        prep, refiner = fs._fine
        fb = prep.pixel_size_a / cres.input_pixel_size_a  # fine binning
        for i, h in enumerate(start.itertuples(index=False)):
            if fs.cancelled:
                raise Cancelled("search cancelled")
            got = refiner.refine(int(round(h.y / fb)), int(round(h.x / fb)),
                                 euler_to_matrix(h.phi, h.theta, h.psi),
                                 float(h.defocus_a) - ctf.defocus_mean_a,
                                 # two coarse pixels' error, in fine pixels, and one more
                                 max_shift_px=2.0 * COARSE_RESOLUTION + 1.0,
                                 # the coarse grid's step: its best point can be that far
                                 search_deg=COARSE_ANGLE * max(cfg.out_of_plane_step_deg,
                                                                cfg.in_plane_step_deg),
                                 search_band_a=cres.metadata["config"]["high_res_limit_a"])
            n_eval += got["n_evaluations"]
            raw.append(got)
            cols["x"][i] = (got["col"] + got["shift_px"][0]) * fb
            cols["y"][i] = (got["row"] + got["shift_px"][1]) * fb
            cols["phi"][i], cols["theta"][i], cols["psi"][i] = matrix_to_euler(got["rot"])
            cols["defocus_a"][i] = ctf.defocus_mean_a + got["delta_a"]
            cols["cc"][i] = got["score"]
            for k in ("mean_cc", "std_cc"):
                cols[k][i] = got[k]
    ref = pd.DataFrame(cols)
    d_off = ref["defocus_a"] - ctf.defocus_mean_a
    ref["defocus1_a"] = ctf.defocus1_a + d_off
    ref["defocus2_a"] = ctf.defocus2_a + d_off
    ref.attrs["refine_evaluations"] = n_eval
    return ref, raw


def _explained_away(fs: FastSearch, raw: list, cand: pd.DataFrame, meta: dict,
                    binning: float) -> np.ndarray:
    """Strongest first (by refined correlation), keep a candidate unless a kept
    one explains it: closer than the peak radius (two coarse peaks refined onto one
    particle), or, within the template's diameter, ``cc <= rho * cc_k + margin`` where
    ``rho`` is the overlap of the two refined, filtered templates at their positions
    (:func:`~napari_2dtm.core.diffproj.template_overlap`: the correlation particle ``k``
    lends to this pose) and ``margin`` what the noise adds to a locally optimised lobe:
    the median candidate's height (most candidates are noise) plus
    :data:`LOBE_EXTRA_SIGMA`, in background sigmas. Returns the keep mask in ``cand``'s
    order."""
    n = len(cand)
    keep = np.zeros(n, bool)
    if n == 0:
        return keep
    refiner = fs._fine[1]
    xy = cand[["x", "y"]].to_numpy(float) / binning  # coarse pixels
    radius = float(meta.get("peak_radius_px") or 3.0)
    reach = 2.0 * float(meta.get("particle_radius_px") or radius)
    cc = cand["mip"].to_numpy(float)
    sig = cand["sigma_bg"].to_numpy(float)
    # A lobe is the neighbour's lent correlation plus this candidate's own noise maximum
    # under local optimisation: typically the median candidate (most are noise), plus
    # half a sigma (the exhaustive detection's rule, on refined values)
    margin = (float(np.median(cand["height"].to_numpy(float) / sig)) + LOBE_EXTRA_SIGMA) * sig
    tree = cKDTree(xy)
    # strongest correlation first: a particle's zbg, and its height over the coarse mean,
    # can be below its own side lobe's (its own signal inflates the mean and spread at its
    # pixel), its refined correlation cannot
    for i in np.argsort(-cc, kind="stable"):
        ok = True
        for k in tree.query_ball_point(xy[i], reach):
            if not keep[k]:
                continue
            if math.hypot(*(xy[i] - xy[k])) < radius:
                ok = False
                break
            if cc[i] <= refiner.overlap(raw[i], raw[k]) * cc[k] + margin[i]:
                ok = False
                break
        keep[i] = ok
    return keep
