"""The harness itself: the small case searches and finds its particles; refusals are judged."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.hostile import assert_refused, looks_complete
from napari_2dtm import read_results


def test_small_case_search_finds_the_planted_particles(case, cli):
    code, out, err = cli("search", case.mic, "--template", case.tpl, "--out", case.out,
                         *case.fast)
    assert code == 0, err
    assert looks_complete(case.out)
    hits = read_results(case.out).hits
    for x, y, *_ in case.truth:
        assert np.hypot(hits.x - x, hits.y - y).min() <= 2


def test_a_missing_micrograph_is_refused_in_one_line(case, cli):
    code, out, err = cli("search", case.dir / "typo.mrc", "--template", case.tpl, "--out",
                         case.out, *case.fast)
    assert_refused(code, err, "typo.mrc")
    assert not looks_complete(case.out)
    with pytest.raises(AssertionError):  # the judge itself can fail
        assert_refused(0, "a\nb\n", "x")
