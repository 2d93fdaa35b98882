"""The classification job (:func:`napari_2dtm.jobs.classify.run_classify`): one door or
another, the same folder comes out; the jobs' protocol (progress, cancel, refusals).

The scene is the widget test's: a 384 x 384 px micrograph at 3 A with 14 particles of
1BD2 with and without beta-2-microglobulin, hits at the true poses perturbed by one
grid step, written to ``mic.mrc`` and ``hits.csv``.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest

from helpers.classify_sim import (
    CTF,
    NAMES,
    PX,
    _start_hits,
    _truth_at_model_origin,
    make_models,
    make_templates,
)
from napari_2dtm.classify.folder import read_classification
from napari_2dtm.cli.main import main
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.io.mrc import read_micrograph, write_mrc
from napari_2dtm.io.star import read_hits, write_hits
from napari_2dtm.jobs.classify import ClassifyInput, ClassifyProgress, run_classify
from napari_2dtm.simulate import simulate_micrograph

SELECTIONS = [None, "not chain B"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene")
    full, no_b = make_models(folder)
    sim = simulate_micrograph([full, no_b], 14, shape=(384, 384), pixel_size_a=PX, ctf=CTF,
                              snr=0.09, seed=5)
    hits = _start_hits(_truth_at_model_origin(sim, make_templates(full)),
                       np.random.default_rng(3))
    mic, hits_path = folder / "mic.mrc", folder / "hits.csv"
    write_mrc(mic, sim.image, PX)
    write_hits(hits, hits_path)
    return full, mic, hits_path


def _input(scene) -> ClassifyInput:
    _, mic, hits_path = scene
    image, px = read_micrograph(mic)
    return ClassifyInput(image, px, read_hits(hits_path), CTF, name=mic.name,
                         source=str(hits_path))


def _star_body(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("# Created")]


def test_cli_and_job_write_the_same_folder(scene, tmp_path):
    full, mic, hits_path = scene
    argv = ["classify", "--micrograph", str(mic), "--hits", str(hits_path),
            "--defocus1", str(CTF.defocus1_a), "-t", str(full), "-t", str(full),
            "--selection", "all", "--selection", SELECTIONS[1],
            "--name", NAMES[0], "--name", NAMES[1], "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    records = []
    res, folder = run_classify(_input(scene), [full, full], tmp_path / "job", names=NAMES,
                               selections=SELECTIONS, progress=records.append)
    assert folder == tmp_path / "job"

    cli, job = tmp_path / "cli", tmp_path / "job"
    files = sorted(p.name for p in cli.iterdir())
    assert files == sorted(p.name for p in job.iterdir())
    assert {"classification.csv", "classification.json", "all_hits.star", "features.png",
            *(f"class_{i + 1}_{n}.star" for i, n in enumerate(NAMES))} == set(files)
    pd.testing.assert_frame_equal(pd.read_csv(cli / "classification.csv"),
                                  pd.read_csv(job / "classification.csv"), check_exact=True)
    for name in files:
        if name.endswith(".star"):  # the first line says when the file was written
            assert _star_body(cli / name) == _star_body(job / name), name
        elif name.endswith(".png"):
            assert (cli / name).read_bytes() == (job / name).read_bytes(), name
    meta_cli, meta_job = (json.loads((f / "classification.json").read_text()) for f in (cli, job))
    for meta in (meta_cli, meta_job):
        assert meta["params"].pop("elapsed_s") >= 0
    assert meta_cli == meta_job
    assert meta_job["params"]["inputs"] == [str(hits_path)]
    assert meta_job["params"]["template_selections"] == SELECTIONS

    back = read_classification(job)
    np.testing.assert_array_equal(back.posteriors, res.posteriors)
    assert (back.hits["micrograph"] == mic.name).all()
    assert len(read_hits(job / "all_hits.star")) == len(back.hits) == 14
    # progress: the templates, then every hit x template score, in order
    assert all(isinstance(r, ClassifyProgress) for r in records)
    assert [r[:3] for r in records[:2]] == [("templates", 0, 1), ("templates", 1, 1)]
    assert "reference full" in records[1].message
    scores = [r for r in records if r.stage == "score"]
    total = 2 * len(back.hits)
    assert scores[-1][1:3] == (total, total)
    assert all(a.done <= b.done for a, b in zip(scores, scores[1:]))


def test_cancel_writes_nothing(scene, tmp_path):
    full = scene[0]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        run_classify(_input(scene), [full, full], tmp_path / "job", names=NAMES,
                     selections=SELECTIONS, cancel=cancel)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary


def test_refusals_come_before_any_work(scene, tmp_path):
    full = scene[0]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a classification")
    with pytest.raises(InputError, match="not a napari-2dtm classification folder"):
        run_classify(_input(scene), [full, full], other, overwrite=True)
    assert (other / "notes.txt").exists()
    with pytest.raises(InputError, match="two or more templates"):
        run_classify(_input(scene), [full], tmp_path / "job")
    no_ctf = _input(scene)
    no_ctf.ctf = None
    with pytest.raises(InputError, match="no CTF"):
        run_classify(no_ctf, [full, full], tmp_path / "job")
    with pytest.raises(InputError, match="unknown scoring grid"):
        run_classify(_input(scene), [full, full], tmp_path / "job", grid={"shift": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
