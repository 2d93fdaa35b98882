"""Hostile inputs: what a careless or hostile user does, one case a few lines.

Each test module here takes a kind of trouble (data loss, silently wrong science, bad
values). The fixtures give a small real case (a 128^2 micrograph at 4 A/px with planted
1BD2 particles, its 1BD2 template as MRC, a CTF) copied fresh into each test's folder,
and :func:`cli` runs ``napari-2dtm`` in-process and returns ``(exit_code, stdout,
stderr)``. :func:`helpers.hostile.assert_refused` is the standard a refusal must meet: exit 2, one line
on stderr that names the file or option, no traceback.

Adding a case (``from helpers.hostile import assert_refused``)::

    def test_my_case(case, cli):
        code, out, err = cli("search", case.mic, "--template", case.tpl, "--out", case.out,
                             *case.fast, "--defocus1", "nan")
        assert_refused(code, err, "--defocus1")
"""

from __future__ import annotations

import shutil

import pytest

from helpers.hostile import DEFOCUS_A, PIXEL_SIZE_A, Case
from helpers.planting import plant, structure
from napari_2dtm.cli.main import main
from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.io.mrc import write_mrc


@pytest.fixture(scope="session")
def _small_case_files(tmp_path_factory):
    from napari_2dtm.templates.model import template_from_model

    d = tmp_path_factory.mktemp("hostile_case")
    tpl = template_from_model(structure("1BD2"), PIXEL_SIZE_A)
    img, truth = plant(tpl, (128, 128), 2, CTFParams(defocus1_a=DEFOCUS_A), target_snr=20.0,
                       seed=3)
    write_mrc(d / "mic.mrc", img, PIXEL_SIZE_A)
    write_mrc(d / "tpl.mrc", tpl.volume, PIXEL_SIZE_A)
    return d, truth


@pytest.fixture
def case(_small_case_files, tmp_path) -> Case:
    """A fresh copy of the small case in this test's folder; ``out`` does not exist yet."""
    src, truth = _small_case_files
    for name in ("mic.mrc", "tpl.mrc"):
        shutil.copy(src / name, tmp_path / name)
    return Case(tmp_path, str(tmp_path / "mic.mrc"), str(tmp_path / "tpl.mrc"),
                str(tmp_path / "results"), truth)


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> (exit_code, stdout, stderr)`` of ``napari-2dtm *args``, in-process."""

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
