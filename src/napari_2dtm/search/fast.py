"""The fast search: an exhaustive search at half resolution, then gradient refinement.

``SearchConfig(strategy="fast")`` (``napari-2dtm search --strategy fast``) finds the
particles the exhaustive search at the same angular step finds, with the same
false-alarm threshold, for a fraction of the cross-correlations:

1. **Coarse stage** (:func:`coarse_config`): the ordinary engine at half the resolution
   (the resolution limit doubled: frames of a quarter of the pixels) with the angular
   steps and the defocus step doubled (an eighth of the orientations, about half the
   planes). The step is matched to the resolution: a correlation peak is about
   ``resolution / particle diameter`` radians wide, so doubling both keeps the expected
   loss of the correlation from grid misalignment the same as the fine grid's (about
   5-10 % at a step of half the peak width). Its maps stream live and are the maps the
   fast search reports (at the coarse pixel size, recorded in ``search.json``).
2. **Candidates**, liberally: local maxima of the coarse stage's height over its
   background, ``(MIP - mean) / sigma_bg`` (an upper bound of ``zbg``), above the
   threshold at which :data:`NOISE_CANDIDATES` noise peaks per image are expected
   (Rickgauer's formula on the coarse stage's own number of trials), outside
   contamination. Their number, not the threshold, is the cost: each is refined.
3. **Refinement** of every candidate at full resolution by gradient
   (:func:`napari_2dtm.hits.gradient.refine_hits_gradient`: pose, sub-pixel position,
   defocus), from the coarse pose.
4. **Detection**: each refined correlation ``cc`` on the coarse stage's background,
   ``zbg = (cc - mean) / max(sigma_bg, sqrt(std^2 - kappa (MIP - mean)^2))`` with the
   coarse maps at the candidate's pixel (the background is a property of the place, not
   of the resolution: white-noise CCs are N(0, 1) at any resolution), ``zscore`` and
   ``snr`` likewise; duplicates (two candidates refined onto one particle) and side
   lobes of a stronger neighbour are dropped (the rule of
   :func:`~napari_2dtm.search.detect.explain_away`), and the threshold is the exhaustive
   search's: Rickgauer's formula with the number of trials of the full-resolution grid at
   the requested steps. The refined maximum is a maximum over a continuous neighbourhood,
   not a grid, so under noise it is a little higher than the fine grid's; the noise
   benchmark measures what that does to the false-positive rate.

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

from napari_2dtm.core.filters import prepare_image
from napari_2dtm.core.geometry import euler_to_matrix, matrix_to_euler
from napari_2dtm.core.pose_refine import PoseRefiner
from napari_2dtm.core.projection import FourierVolume
from napari_2dtm.errors import Cancelled, InputError

from .config import STRATEGIES, SearchConfig, defocus_offsets, orientation_list
from .detect import false_alarm_threshold, find_peaks, hits_from_candidates
from .engine import Search
from .outcome import SearchProgress, SearchResult

__all__ = ["STRATEGIES", "FastSearch", "make_search", "coarse_config", "COARSE_RETAINED",
           "COARSE_FACTOR", "hits_from_candidates"]

#: the coarse stage's resolution and angular steps are this factor coarser
COARSE_FACTOR = 2.0
#: the least fraction of its full-resolution height a particle keeps at the coarse stage
#: (measured 0.6-0.8 for 1BD2 at 2 A; the rest of the signal is beyond the coarse band)
COARSE_RETAINED = 0.55


def coarse_config(config: SearchConfig, pixel_size_a: float) -> SearchConfig:
    """The coarse stage of a fast search of a micrograph at ``pixel_size_a``."""
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
    f = COARSE_FACTOR
    return SearchConfig(**{
        **config.__dict__, "strategy": "exhaustive",
        "high_res_limit_a": f * fine_limit,
        "out_of_plane_step_deg": min(f * config.out_of_plane_step_deg, 90.0),
        "in_plane_step_deg": min(f * config.in_plane_step_deg, 360.0),
        "defocus_step_a": f * config.defocus_step_a,
    })


def make_search(image, pixel_size_a: float, template, config: SearchConfig | None = None,
                **kwargs):
    """A :class:`~napari_2dtm.search.engine.Search` or, for ``config.strategy == "fast"``,
    a :class:`FastSearch` (the same interface: run, result, cancel, checkpoints)."""
    if config is not None and config.strategy == "fast":
        return FastSearch(image, pixel_size_a, template, config, **kwargs)
    return Search(image, pixel_size_a, template, config, **kwargs)


class FastSearch:
    """A coarse-to-fine search (module docstring) with :class:`Search`'s interface.

    The coarse stage is a :class:`Search` (checkpoints and resume are its own); this
    object forwards what a job reads (sizes, device, checkpoint) to it, and makes the
    result after the refinement.
    """

    def __init__(self, image, pixel_size_a: float, template, config: SearchConfig,
                 template_kwargs: dict | None = None, checkpoint=None, micrograph_path=None):
        self.config = config
        self.coarse = Search(image, pixel_size_a, template, coarse_config(config, pixel_size_a),
                             template_kwargs=template_kwargs, checkpoint=checkpoint,
                             micrograph_path=micrograph_path)
        self.image = np.asarray(image, np.float32)
        self.template = self.coarse.template
        self.result: SearchResult | None = None
        self._stage = "coarse"
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
        self._stage = "refine"
        self.result = _finish(self, self.coarse.result)
        elapsed = self.coarse.result.metadata.get("elapsed_s", 0.0) + time.perf_counter() - t0
        self.result.metadata["elapsed_s"] = elapsed
        m = self.result.maps
        yield SearchProgress(
            fraction=1.0, n_done=last.n_done if last else 0, n_total=last.n_total if last else 0,
            elapsed_s=elapsed, orientations_per_s=last.orientations_per_s if last else 0.0,
            eta_s=0.0, mip=m["mip"], zscore=m["zscore"], snr=m["snr"],
            pixel_size_a=self.coarse.pixel_size_a, done=True, zbg=m.get("zbg"))


def fine_trials(config: SearchConfig, coarse: SearchResult, pixel_size_a: float) -> float:
    """Trials of the exhaustive search at ``config``'s steps and full resolution: its
    orientations x planes x the valid pixels at the fine search pixel size."""
    n_or = len(orientation_list(config))
    n_planes = len(defocus_offsets(config.defocus_range_a, config.defocus_step_a))
    fine_px = max(float(pixel_size_a), 0.5 * (config.high_res_limit_a or 0.0))
    n_pix = float(coarse.valid_mask.sum()) * (coarse.pixel_size_a / fine_px) ** 2
    return n_pix * n_or * n_planes


def _finish(fs: FastSearch, cres: SearchResult) -> SearchResult:
    t0 = time.perf_counter()
    cfg, maps, meta = fs.config, cres.maps, dict(cres.metadata)
    valid = cres.valid_mask
    excluded = maps["excluded"] > 0.5 if "excluded" in maps else np.zeros_like(valid)
    n_trials = fine_trials(cfg, cres, cres.input_pixel_size_a)
    thr = false_alarm_threshold(n_trials, cfg.n_false_positives)
    # Peaks of the height over the background, not of zbg: a strong particle inflates its
    # own spread, which flattens zbg's peak and can move it off the particle (zbg >=
    # height / sigma_bg is never larger, so these candidates include zbg's).
    height = np.where(valid, (maps["mip"] - maps["mean"]) / np.maximum(maps["sigma_bg"], 1e-12),
                      -np.inf)
    # A particle at the fine threshold keeps at least COARSE_RETAINED of its height at the
    # coarse stage; so does the noise maximum of a pixel, which is why the candidates are
    # many (about every local maximum above the pixels' median height).
    t_cand = max(COARSE_RETAINED * thr, float(np.median(height[valid])) if valid.any() else 0.0)
    peaks = find_peaks(height, t_cand, 0.5 * cres.metadata["peak_radius_px"],
                       mask=valid & ~excluded)
    rows, cols = peaks[:, 0], peaks[:, 1]
    b = cres.binning
    start = pd.DataFrame({
        "x": cols * b, "y": rows * b,
        "phi": maps["phi"][rows, cols].astype(float), "theta": maps["theta"][rows, cols].astype(float),
        "psi": maps["psi"][rows, cols].astype(float),
        "defocus_a": maps["defocus"][rows, cols].astype(float)})
    ctf = cfg.ctf
    ref = _refine(fs, cres, start)
    # statistics on the coarse background at each candidate's coarse pixel
    r = np.clip(np.rint(ref["y"].to_numpy(float) / b).astype(int), 0, valid.shape[0] - 1)
    c = np.clip(np.rint(ref["x"].to_numpy(float) / b).astype(int), 0, valid.shape[1] - 1)
    cc = ref["cc"].to_numpy(float)
    mean, std = maps["mean"][r, c].astype(float), maps["std"][r, c].astype(float)
    sig_bg = maps["sigma_bg"][r, c].astype(float)
    kappa = float(meta["detection"]["kappa"])
    h_c = maps["mip"][r, c].astype(float) - mean
    den = np.maximum(sig_bg, np.sqrt(np.maximum(std**2 - kappa * h_c**2, 0.0)))
    gsig = float(meta.get("cc_global_std") or 1.0)
    cand = pd.DataFrame({
        "x": ref["x"].to_numpy(float), "y": ref["y"].to_numpy(float),
        "phi": ref["phi"].to_numpy(float), "theta": ref["theta"].to_numpy(float),
        "psi": ref["psi"].to_numpy(float), "defocus_a": ref["defocus_a"].to_numpy(float),
        "zbg": (cc - mean) / np.maximum(den, 1e-12),
        "zscore": (cc - mean) / np.maximum(std, 1e-12), "snr": cc / gsig, "mip": cc,
        "defocus1_a": ref["defocus1_a"].to_numpy(float),
        "defocus2_a": ref["defocus2_a"].to_numpy(float),
        "astigmatism_angle_deg": ctf.astigmatism_angle_deg,
        "x_search": c, "y_search": r, "zbg_coarse": maps["zbg"][r, c].astype(float),
        "sigma_bg": sig_bg, "height": cc - mean,
    })
    cand = _drop_duplicates_and_lobes(cand, meta, b)
    meta.update({
        "config": cfg.to_dict(),
        "strategy": "fast",
        "n_trials": n_trials, "threshold": thr,
        "fast": {
            "coarse_config": meta["config"], "coarse_n_trials": cres.n_trials,
            "coarse_threshold": cres.threshold, "candidate_threshold": t_cand,
            "coarse_retained": COARSE_RETAINED, "n_candidates": int(len(start)),
            "n_after_duplicates": int(len(cand)),
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


def _refine(fs: FastSearch, cres: SearchResult, start: pd.DataFrame) -> pd.DataFrame:
    """Every candidate refined at full resolution (:class:`PoseRefiner`): x, y (input
    pixels), phi, theta, psi, defocus_a, defocus1_a, defocus2_a, cc."""
    cfg, ctf = fs.config, fs.config.ctf
    cols = {k: np.zeros(len(start)) for k in ("x", "y", "phi", "theta", "psi", "defocus_a", "cc")}
    n_eval = 0
    if len(start):
        if fs._fine is None:
            prep = prepare_image(fs.image, cres.input_pixel_size_a, cfg.high_res_limit_a)
            t = fs.template
            px = prep.pixel_size_a
            box = int(math.ceil(t.box * t.pixel_size_a / px - 1e-6))
            box += box % 2
            fs._fine = (prep, PoseRefiner(
                prep.image, prep.whitening, px, FourierVolume(t.volume, pad=2), t.pixel_size_a,
                box, ctf, max(cfg.defocus_range_a, cfg.defocus_step_a)))
        prep, refiner = fs._fine
        fb = prep.pixel_size_a / cres.input_pixel_size_a  # fine binning
        for i, h in enumerate(start.itertuples(index=False)):
            if fs.cancelled:
                raise Cancelled("search cancelled")
            got = refiner.refine(int(round(h.y / fb)), int(round(h.x / fb)),
                                 euler_to_matrix(h.phi, h.theta, h.psi),
                                 float(h.defocus_a) - ctf.defocus_mean_a,
                                 # a coarse pixel's error, in fine pixels, and a pixel more
                                 max_shift_px=COARSE_FACTOR + 1.0)
            n_eval += got["n_evaluations"]
            cols["x"][i] = (got["col"] + got["shift_px"][0]) * fb
            cols["y"][i] = (got["row"] + got["shift_px"][1]) * fb
            cols["phi"][i], cols["theta"][i], cols["psi"][i] = matrix_to_euler(got["rot"])
            cols["defocus_a"][i] = ctf.defocus_mean_a + got["delta_a"]
            cols["cc"][i] = got["score"]
    ref = pd.DataFrame(cols)
    d_off = ref["defocus_a"] - ctf.defocus_mean_a
    ref["defocus1_a"] = ctf.defocus1_a + d_off
    ref["defocus2_a"] = ctf.defocus2_a + d_off
    ref.attrs["refine_evaluations"] = n_eval
    return ref


def _drop_duplicates_and_lobes(cand: pd.DataFrame, meta: dict, binning: float) -> pd.DataFrame:
    """Strongest first, drop a candidate within the peak radius of a kept one (two coarse
    peaks refined onto one particle) or one a kept neighbour's side lobe explains (the
    rule of :func:`~napari_2dtm.search.detect.explain_away`, the coarse stage's profile)."""
    if len(cand) < 2:
        return cand
    order = np.argsort(-cand["zbg"].to_numpy(), kind="stable")
    cand = cand.iloc[order].reset_index(drop=True)
    xy = cand[["x", "y"]].to_numpy(float) / binning  # coarse pixels
    lobe = np.asarray(meta.get("detection", {}).get("lobe") or [1.0], float)
    n_sigma = float(meta.get("detection", {}).get("lobe_n_sigma", 3.0))
    radius = float(meta.get("peak_radius_px") or 3.0)
    reach = max(len(lobe) - 1, radius)
    tree = cKDTree(xy)
    h = cand["height"].to_numpy(float)
    sg = cand["sigma_bg"].to_numpy(float)
    kept = np.zeros(len(cand), bool)
    for i in range(len(cand)):
        near = [k for k in tree.query_ball_point(xy[i], reach) if kept[k]]
        ok = True
        for k in near:
            d = math.hypot(*(xy[i] - xy[k]))
            if d < radius:
                ok = False
                break
            j = int(round(d))
            if j < len(lobe) and h[i] <= lobe[j] * h[k] + n_sigma * sg[i]:
                ok = False
                break
        kept[i] = ok
    return cand[kept].reset_index(drop=True)
