"""A project moved or copied as a whole still opens (issue 16, case 12).

``search.json`` records the micrograph absolute and relative to the results folder; a
reader tries both, from whatever folder it runs in.
"""

from __future__ import annotations

import json
import shutil

import pytest

from napari_2dtm.search.results import ResultsFolder


@pytest.fixture
def moved_project(case, cli, tmp_path_factory, monkeypatch):
    """Search from inside the project with relative paths, then move the whole project
    elsewhere (the old absolute path is gone) and work from a third folder."""
    monkeypatch.chdir(case.dir)
    code, _, err = cli("search", "mic.mrc", "--template", "tpl.mrc", "--out", "results",
                       *case.fast)
    assert code == 0, err
    meta = json.loads((case.dir / "results" / "search.json").read_text())
    assert meta["micrograph"] == str((case.dir / "mic.mrc").resolve())
    assert meta["micrograph_relative"] == "../mic.mrc"
    new = tmp_path_factory.mktemp("elsewhere") / "project"
    shutil.move(str(case.dir), new)
    monkeypatch.chdir(tmp_path_factory.mktemp("another_cwd"))
    return new


def test_the_moved_results_folder_finds_its_micrograph(moved_project):
    view = ResultsFolder.open(moved_project / "results")
    assert view.micrograph_path().resolve() == (moved_project / "mic.mrc").resolve()
    image, px = view.read_micrograph()
    assert image.shape == tuple(view.input_shape)


def test_the_moved_folder_opened_by_a_relative_path_from_another_cwd(moved_project,
                                                                     monkeypatch):
    monkeypatch.chdir(moved_project.parent)
    view = ResultsFolder.open("project/results")
    assert view.micrograph_path().resolve() == (moved_project / "mic.mrc").resolve()


def test_reconstruct_from_a_moved_project_and_another_cwd(moved_project, cli):
    out = moved_project.parent / "rec"
    code, _, err = cli("reconstruct", "--results", moved_project / "results", "--template",
                       moved_project / "tpl.mrc", "--no-refine", "--out", out, "--quiet")
    assert code == 0, err
    assert (out / "reconstruct.json").is_file()


def test_the_moved_project_finds_its_template_too(moved_project, cli):
    """The template is recorded the same two ways: reconstruct needs no --template."""
    meta = json.loads((moved_project / "results" / "search.json").read_text())
    assert meta["template"]["source_relative"] == "../tpl.mrc"
    view = ResultsFolder.open(moved_project / "results", maps=False)
    assert view.template.source == str((moved_project / "tpl.mrc").resolve())
    out = moved_project.parent / "rec_auto"
    code, _, err = cli("reconstruct", "--results", moved_project / "results", "--no-refine",
                       "--out", out, "--quiet")
    assert code == 0, err
    assert (out / "reconstruct.json").is_file()
