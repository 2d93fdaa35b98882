"""One search, three doors, one folder.

The same small search (a 128 x 128 px micrograph with two planted 1BD2 particles, a
coarse 30 degree grid) is run through ``napari-2dtm search``, through ``napari-2dtm
batch`` (in this process) and through the job the Search widget runs
(:func:`napari_2dtm.jobs.search.run_search`). The three results folders must hold the
same files, identical maps and identical hits tables.

Compared out explicitly, because they are allowed to differ: in ``search.json`` the
timings (``elapsed_s``, ``timing``, ``cc_per_s``), and the time stamp comment at the top
of ``hits.star`` (its blocks are compared). The recorded micrograph path may
differ in general (how each door was given the file); here all three name the same
file, so it is compared too, as the path each folder resolves; the path relative to the
folder (``micrograph_relative``) differs with where the folder is, and is compared as
the file it resolves to; so is the template's (``template.source_relative``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import starfile

from helpers.planting import plant, structure
from napari_2dtm import CTFParams
from napari_2dtm.cli.main import main
from napari_2dtm.io.mrc import read_micrograph, write_mrc
from napari_2dtm.jobs.search import run_search
from napari_2dtm.search.config import SearchConfig
from napari_2dtm.search.results import ResultsFolder

PX = 4.0
GRID = ["--out-of-plane-step", "30", "--in-plane-step", "30", "--defocus1", "10000",
        "--device", "cpu", "--checkpoint-interval", "0"]
#: entries of search.json that measure the run, not its result
TIMINGS = {"elapsed_s", "timing", "cc_per_s"}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from napari_2dtm.templates.model import template_from_model

    d = tmp_path_factory.mktemp("same")
    tpl = template_from_model(structure("1BD2"), PX)
    img, _ = plant(tpl, (128, 128), 2, CTFParams(defocus1_a=10000), target_snr=20.0, seed=3)
    (d / "mics").mkdir()
    write_mrc(d / "mics" / "mic.mrc", img, PX)
    write_mrc(d / "tpl.mrc", tpl.volume, PX)
    return d


@pytest.fixture(scope="module")
def folders(case):
    d = case
    mic, tpl = d / "mics" / "mic.mrc", d / "tpl.mrc"
    assert main(["search", str(mic), "--template", str(tpl), *GRID, "--out", str(d / "cli")]) == 0
    assert main(["batch", str(mic), "--template", str(tpl), *GRID, "--workers", "0",
                 "--out", str(d / "batch")]) == 0
    # the widget's job, as the widget calls it for a micrograph layer opened from a file
    image, px = read_micrograph(mic)
    config = SearchConfig(ctf=CTFParams(defocus1_a=10000), out_of_plane_step_deg=30,
                          in_plane_step_deg=30, device="cpu", checkpoint_interval_s=0.0)
    records = []
    _, widget = run_search(image, px, str(tpl), config, d / "widget", micrograph_path=mic,
                           micrograph_name="mic", progress=records.append)
    assert records and records[-1].done
    return {"cli": d / "cli", "batch": d / "batch" / "mic", "widget": widget}


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_the_three_doors_write_the_same_folder(folders):
    views = {k: ResultsFolder.open(v) for k, v in folders.items()}
    names = {k: _files(v) for k, v in folders.items()}
    assert names["cli"] == names["batch"] == names["widget"]
    # the complete folder: the -ln p map and the hits metric are there behind every door
    assert "neg_log_p.mrc" in names["cli"] and "hits.star" in names["cli"]
    ref = views["cli"]
    assert ref.hits_metric == "zbg" and len(ref.hits) >= 1
    for door, view in views.items():
        assert sorted(view.maps) == sorted(ref.maps), door
        for k in ref.maps:
            assert np.array_equal(view.maps[k], ref.maps[k]), (door, k)
        assert np.array_equal(view.result.valid_mask, ref.result.valid_mask), door
        pd.testing.assert_frame_equal(view.hits, ref.hits, check_exact=True, obj=door)
        # hits.star: the same blocks (its first line, a comment, carries the time written)
        star = starfile.read(folders[door] / "hits.star", always_dict=True)
        star_ref = starfile.read(folders["cli"] / "hits.star", always_dict=True)
        assert sorted(star) == sorted(star_ref) == ["optics", "particles"]
        for block in star_ref:
            pd.testing.assert_frame_equal(star[block], star_ref[block], check_exact=True)
        # search.json: the same apart from the run's timings
        meta = json.loads((folders[door] / "search.json").read_text())
        meta_ref = json.loads((folders["cli"] / "search.json").read_text())
        for m in (meta, meta_ref):
            for key in TIMINGS:
                m.pop(key)
        # the micrograph relative to the folder differs with where the folder is: the
        # same file, compared as the path it resolves to
        rel, rel_ref = meta.pop("micrograph_relative"), meta_ref.pop("micrograph_relative")
        assert (folders[door] / rel).resolve() == (folders["cli"] / rel_ref).resolve(), door
        # and so does the template's
        rel = meta["template"].pop("source_relative")
        rel_ref = meta_ref["template"].pop("source_relative")
        assert (folders[door] / rel).resolve() == (folders["cli"] / rel_ref).resolve(), door
        assert meta == meta_ref, door
        assert view.micrograph_path() == ref.micrograph_path() == (folders["cli"].parent / "mics"
                                                                    / "mic.mrc").resolve()
