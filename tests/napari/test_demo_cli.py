"""``napari-2dtm demo`` without a display: the demo search, its results and a screenshot."""

import json
import shutil

import numpy as np
import pytest

from helpers.planting import match
from napari_2dtm import read_results
from napari_2dtm.cli.main import main
from napari_2dtm.samples import DEMO, simulate_sample


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--headless", "--out", str(out)])
    return code, out


def test_headless_demo_saves_results_and_a_screenshot(demo_run, capsys):
    code, out = demo_run
    assert code == 0
    res = read_results(out / "results")
    # exactly the 8 planted particles, no other hit (the z-score gave 13 hits here)
    truth = simulate_sample(DEMO).truth[["x", "y"]].to_numpy(float)
    assert res.metadata["hits_metric"] == "zbg"
    assert len(res.hits) == 8 and len(match(res.hits, truth, 3.0)) == 8
    meta = json.loads((out / "results" / "search.json").read_text())
    assert meta["micrograph"].endswith("input/2DTM_demo.mrc")
    png = out / "screenshot.png"
    assert png.is_file() and png.stat().st_size > 10_000


@pytest.mark.skipif(not shutil.which("xvfb-run"), reason="needs xvfb-run")
def test_headless_screenshot_is_a_rendered_napari_window(demo_run):
    import matplotlib.image as mpimg

    _, out = demo_run
    rgb = mpimg.imread(out / "screenshot.png")[..., :3]
    assert rgb.shape[0] >= 800 and rgb.shape[1] >= 1200  # the whole window
    assert rgb.std() > 0.05  # not a black frame


def test_matplotlib_fallback_figure(demo_run, tmp_path):
    from napari_2dtm.cli.demo import _matplotlib_figure

    _, out = demo_run
    png = tmp_path / "figure.png"
    _matplotlib_figure(out / "results", png)
    import matplotlib.image as mpimg

    assert np.asarray(mpimg.imread(png)).std() > 0.05


def test_demo_refuses_to_replace_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "precious.txt").write_text("keep me")
    assert main(["demo", "--headless", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a napari-2dtm results folder" in err[0]
    assert (tmp_path / "results" / "precious.txt").is_file()
