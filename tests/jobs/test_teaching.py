"""Teaching mode without napari: the shown correlation is the engine's, the pace does not
change the result, precision/recall are counted right.

The demo sample's micrograph (320 x 320 px, 8 planted 1BD2) with a coarse 30 degree
grid keeps each search to a couple of seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_2dtm import CTFParams, SearchConfig, search
from napari_2dtm.jobs.teaching import TeachingSearch, match_truth


@pytest.fixture(scope="module")
def demo():
    from napari_2dtm.samples import DEMO, simulate_sample

    sim = simulate_sample(DEMO)
    config = SearchConfig(ctf=CTFParams(**DEMO["ctf"]), out_of_plane_step_deg=30.0,
                          in_plane_step_deg=30.0)
    return sim, config


def test_shown_correlation_is_the_engines_and_the_result_is_unchanged(demo):
    sim, config = demo
    naps = []
    teacher = TeachingSearch(sim.image, sim.pixel_size_a, sim.templates[0], config,
                             truth=sim.truth, step_s=0.2, intro_s=0.3, max_steps=8,
                             sleep=lambda s: naps.append(s))
    steps = list(teacher.steps())
    normal = search(sim.image, sim.pixel_size_a, sim.templates[0], config)

    # the stages in order, each with a caption
    assert [s.stage for s in steps[:2]] == ["whiten", "template"]
    assert steps[-1].stage == "done"
    mid = [s for s in steps if s.stage == "search"]
    assert 3 <= len(mid) <= 9
    assert all(s.caption for s in steps)
    # paced: the search waited (the fake sleep recorded the naps), intro steps longer
    assert sum(naps) >= 2 * 0.3 + 0.2 * (len(mid) - 1) - 0.05

    # the same result as a search run at full speed
    pd.testing.assert_frame_equal(teacher.result.hits, normal.hits)
    assert np.array_equal(teacher.result.maps["mip"], normal.maps["mip"])

    # each shown CC map is the engine's CC for that orientation (a one-orientation
    # search's MIP is exactly that map), N(0, 1)-scaled
    valid = normal.valid_mask
    for s in (mid[0], mid[-1]):
        one = search(sim.image, sim.pixel_size_a, sim.templates[0],
                     SearchConfig(ctf=config.ctf, orientations=[s.orientation_deg]))
        assert np.abs(s.cc[valid] - one.maps["mip"][valid]).max() < 1e-4
        assert 0.8 < s.cc[valid].std() < 1.5
    # the MIP only grows, and never below any shown CC map
    for a, b in zip(mid, mid[1:]):
        assert np.all(b.mip[valid] >= a.mip[valid])
        assert b.fraction > a.fraction
    final = normal.maps["mip"]
    for s in mid:
        assert np.all(s.cc[valid] <= final[valid] + 1e-4)

    # live precision/recall: the final step counts the result's hits against the truth
    last = steps[-1]
    n, prec, rec = match_truth(normal.hits, sim.truth, teacher.match_radius_px)
    assert (last.n_matched, last.precision, last.recall) == (n, prec, rec)
    assert rec >= 0.5, f"only {n} of {len(sim.truth)} planted particles found"
    assert f"recall {rec:.2f}" in last.caption
    # recall never falls as the search goes on (the MIP only grows; the threshold is fixed)
    assert mid[0].recall <= last.recall


def test_match_truth_counts_one_to_one():
    truth = pd.DataFrame({"x": [10.0, 100.0, 200.0], "y": [10.0, 100.0, 200.0]})
    hits = pd.DataFrame({"x": [11.0, 12.0, 100.0, 400.0], "y": [10.0, 10.0, 103.0, 5.0]})
    n, prec, rec = match_truth(hits, truth, radius_px=5.0)
    # two hits near particle 0 count once; the far one is a false positive
    assert (n, prec, rec) == (2, 0.5, 2 / 3)
    assert match_truth(hits.iloc[:0], truth, 5.0) == (0, 1.0, 0.0)
    assert match_truth(hits, truth.iloc[:0], 5.0) == (0, 0.0, 1.0)


def test_cancel_stops_a_paced_run_promptly(demo):
    import threading
    import time

    from napari_2dtm.errors import SearchCancelled

    sim, config = demo
    teacher = TeachingSearch(sim.image, sim.pixel_size_a, sim.templates[0], config,
                             step_s=30.0, intro_s=30.0)
    steps = teacher.steps()
    assert next(steps).stage == "whiten"
    threading.Timer(0.3, teacher.cancel).start()
    t0 = time.perf_counter()
    with pytest.raises(SearchCancelled):
        for _ in steps:  # the 30 s pauses end at once: the search stops at its next batch
            pass
    assert time.perf_counter() - t0 < 5.0
    assert teacher.result is None
