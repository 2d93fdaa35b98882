"""Hits review without Qt: noise model, candidates, thresholds, curation, masks, export.

Most tests use the "2DTM demo" search (8 planted 1BD2 particles, coarse grid) made
once per process by ``_review_data.demo_results``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import starfile
from scipy.special import erfc

from helpers.review_data import copy_results, demo_results, noise_results
from napari_2dtm.errors import InputError
from napari_2dtm.hits.review import REVIEW_DIR, NoiseModel, Review, sample_mask
from napari_2dtm.search.detect import extract_hits, false_alarm_threshold

RELION_COLUMNS = ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnAngleRot",
                  "rlnAngleTilt", "rlnAnglePsi", "rlnDefocusU", "rlnDefocusV",
                  "rlnDefocusAngle", "rln2dtmZScore", "rln2dtmSNR"]


def _recall(table, truth, tol_px=4.0) -> int:
    return sum(bool(len(table)) and np.hypot(table.x - t.x, table.y - t.y).min() <= tol_px
               for t in truth.itertuples())


def test_noise_model_is_the_gaussian_tail_and_its_inverse():
    n = 2.76e8
    nm = NoiseModel("zscore", n_trials=n)
    for t in (5.0, 6.0, 7.5):
        assert nm.expected_false_positives(t) == pytest.approx(n * 0.5 * erfc(t / math.sqrt(2)),
                                                               rel=1e-12)
    for k in (0.01, 1.0, 30.0):
        t = nm.threshold_for(k)
        assert nm.expected_false_positives(t) == pytest.approx(k, rel=1e-9)
    assert nm.threshold_for(1.0) == pytest.approx(false_alarm_threshold(n, 1.0))
    edges = np.linspace(4, 9, 11)
    counts = nm.expected_counts(edges)
    assert counts.sum() == pytest.approx(nm.expected_false_positives(4) - nm.expected_false_positives(9))
    assert np.all(np.diff(counts) < 0)  # a falling tail
    with pytest.raises(InputError):
        nm.threshold_for(0)


def test_noise_model_of_neg_log_p_is_n_exp_minus_t():
    pytest.importorskip("napari_2dtm.search.pvalue")
    nm = NoiseModel("neg_log_p", n_population=5000)
    for t in (9.0, 10.0, 12.0):  # above ln(2 pi / gamma): exactly N e^-t
        assert nm.expected_false_positives(t) == pytest.approx(5000 * math.exp(-t), rel=1e-12)
    assert nm.threshold_for(1.0) == pytest.approx(math.log(5000))
    assert nm.threshold_for(10.0) == pytest.approx(math.log(500))


def test_candidates_are_extracted_once_and_the_threshold_only_selects():
    folder, result, sim = demo_results()
    review = Review(result, folder, metric="zscore")
    table = review.table
    # every local maximum is a candidate; the search's own hits are those above its threshold
    assert len(table) > 3 * len(result.hits)
    assert review.threshold == pytest.approx(result.threshold)
    assert review.expected_false_positives == pytest.approx(1.0, rel=1e-6)
    shown = table[review.shown()]
    zscore_hits = extract_hits(result, "zscore")
    assert sorted(zip(shown.x, shown.y)) == sorted(zip(zscore_hits.x, zscore_hits.y))
    assert _recall(shown, sim.truth) >= 7  # of 8 planted particles
    assert set(table.status) == {"unreviewed"}
    # moving the threshold selects a nested subset of the SAME table
    counts = []
    for t in (4.0, result.threshold, 8.0, 10.0, 13.0):
        mask = review.set_threshold(t)
        assert review.table is table
        np.testing.assert_array_equal(mask, table.zscore.to_numpy() >= t)
        counts.append(int(mask.sum()))
        assert review.expected_false_positives == pytest.approx(
            result.n_trials * 0.5 * erfc(t / math.sqrt(2)), rel=1e-9)
    assert counts == sorted(counts, reverse=True) and counts[0] == len(table) and counts[-1] == 0
    counts_hist, edges, noise = review.histogram(30)
    assert counts_hist.sum() == len(table) and len(noise) == 30


def test_threshold_on_10000_candidates_takes_milliseconds():
    _, result = noise_results()
    review = Review(result, max_candidates=10_000)
    assert len(review.table) == 10_000
    times = []
    for t in np.linspace(2.0, 7.0, 25):
        t0 = time.perf_counter()
        mask = review.set_threshold(t)
        review.expected_false_positives  # noqa: B018 (what the label shows)
        times.append(time.perf_counter() - t0)
        assert mask.sum() == np.sum(review.values >= t)
    print(f"Review.set_threshold on 10,000 candidates: median {1e3 * np.median(times):.3f} ms, "
          f"max {1e3 * max(times):.3f} ms")
    assert np.median(times) < 0.005


def test_decisions_survive_save_and_reopen(tmp_path):
    folder = copy_results(tmp_path)
    star_before = (folder / "hits.star").read_bytes()
    review = Review.open(folder)
    review.set_status([0, 2, 5], "accepted")
    review.set_status({1, 7}, "rejected")
    review.set_threshold(7.0)
    out = review.save()
    assert out == folder / REVIEW_DIR
    assert {p.name for p in out.iterdir()} == {"curation.csv", "review.json"}
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries
    assert (folder / "hits.star").read_bytes() == star_before  # the search's files untouched

    again = Review.open(folder)
    assert again.threshold == pytest.approx(7.0)
    for col in ("x", "y", "status"):
        pd.testing.assert_series_equal(again.table[col].astype(str), review.table[col].astype(str))
    assert again.counts() == {"candidates": len(review.table), "hits": int(review.shown().sum()),
                              "accepted": 3, "rejected": 2}
    with pytest.raises(InputError):
        review.set_status([0], "maybe")


def test_reextraction_keeps_decisions_and_the_exclusion_mask_removes_hits(tmp_path):
    folder = copy_results(tmp_path)
    review = Review.open(folder)
    hits = review.table[review.shown()]
    top = hits[hits.y_search < 150]
    bottom = hits[hits.y_search >= 150]
    assert len(top) and len(bottom)
    review.set_status(bottom.id[:2], "accepted")
    review.set_status(top.id[:1], "rejected")
    accepted_xy = set(zip(bottom.x[:2], bottom.y[:2]))

    exclusion = np.zeros(review.result.maps["zscore"].shape, bool)
    exclusion[:150] = True
    review.extract(exclusion=exclusion)
    t = review.table
    assert t.y_search.min() >= 150  # nothing inside the mask
    assert not (set(zip(top.x, top.y)) & set(zip(t.x, t.y)))
    kept = t[t.status == "accepted"]
    assert set(zip(kept.x, kept.y)) == accepted_xy  # decisions follow their peaks
    assert (t.status == "rejected").sum() == 0  # the rejected hit was masked away
    review.save()
    assert (folder / REVIEW_DIR / "exclusion_mask.mrc").is_file()
    restored = Review.open(folder)
    np.testing.assert_array_equal(restored.exclusion, exclusion)
    assert len(restored.table) == len(t)

    # another radius, without searching again: fewer, farther-apart candidates
    wide = review.extract(radius_px=2 * review.default_radius_px)
    assert 0 < len(wide) < len(t)
    d = np.hypot(*(wide[["x_search", "y_search"]].to_numpy()[:, None] -
                   wide[["x_search", "y_search"]].to_numpy()[None]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(wide), 1)].min() >= 2 * review.default_radius_px
    assert (wide.status == "accepted").sum() == 2


def test_sample_mask_maps_a_layer_frame_onto_the_search_grid():
    # mask drawn on the micrograph at 1 A/px, search grid at 2 A/px, layer shifted by 10 A
    mask = np.zeros((100, 100), np.uint8)
    mask[20:40, 50:90] = 3
    out = sample_mask(mask, (1.0, 1.0), (10.0, 0.0), (60, 60), 2.0)
    rows, cols = np.nonzero(out)
    # search pixel (i, j) sits at world (2i, 2j) = mask pixel (2i - 10, 2j)
    assert rows.min() == 15 and rows.max() == 24 and cols.min() == 25 and cols.max() == 44
    assert out.sum() == 10 * 20


def test_export_star_reads_back_with_relion_names(tmp_path):
    folder = copy_results(tmp_path)
    review = Review.open(folder)
    review.set_status([0, 1], "accepted")
    review.set_status([2], "rejected")
    everything = review.export(tmp_path / "all.star")
    accepted = review.export(tmp_path / "accepted.star", "accepted")
    review.export(tmp_path / "accepted.csv", "accepted")
    n_hits = int(review.shown().sum())
    assert len(everything) == n_hits - 1 and len(accepted) == 2

    star = starfile.read(tmp_path / "all.star", always_dict=True)
    parts = star["particles"]
    assert set(RELION_COLUMNS) <= set(parts.columns)
    assert float(star["optics"]["rlnMicrographPixelSize"].iloc[0]) == pytest.approx(2.0)
    assert set(parts.rlnMicrographName) == {"2DTM_demo.mrc"}
    np.testing.assert_allclose(parts.rlnCoordinateX, everything.x)
    np.testing.assert_allclose(parts.rln2dtmZScore, everything.zscore)
    np.testing.assert_allclose(parts.rlnDefocusU, everything.defocus1_a)
    acc = starfile.read(tmp_path / "accepted.star", always_dict=True)["particles"]
    assert len(acc) == 2 and set(acc.rln2dtmAccepted) == {1}
    csv = pd.read_csv(tmp_path / "accepted.csv")
    assert list(csv.status) == ["accepted", "accepted"]
    with pytest.raises(InputError):
        review.export(tmp_path / "hits.txt")


def test_neg_log_p_review_counts_and_export(tmp_path):
    folder = copy_results(tmp_path)
    review = Review.open(folder)
    review.set_status([0], "accepted")
    review.extract("neg_log_p")
    n_pop = review.noise.n
    assert n_pop == review.result.metadata["neg_log_p"]["n_population"]
    assert review.threshold == pytest.approx(math.log(n_pop))
    assert review.expected_false_positives == pytest.approx(1.0)
    assert (review.table.neg_log_p > 0).all()
    assert (review.table.status == "accepted").sum() == 1  # the decision followed
    review.set_threshold(1.0)
    out = review.export(tmp_path / "p.star")
    parts = starfile.read(tmp_path / "p.star", always_dict=True)["particles"]
    np.testing.assert_allclose(parts.rln2dtmNegLogP, out.neg_log_p, rtol=1e-5)
