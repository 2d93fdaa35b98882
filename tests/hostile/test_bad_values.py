"""Bad values (issue 16, cases 7-10): refused in one line before any work, never searched.

Validation lives in the config objects (``SearchConfig.validate`` / ``check_against``,
``CTFParams``) and the readers, so the command line, the API, batch and the widgets
share it. One row per case: ``(extra arguments of napari-2dtm search, what the line must
name)``; the extra arguments come after the fast options, so they override them. Add a
case in one line.
"""

from __future__ import annotations

import math
import os

import mrcfile
import numpy as np
import pandas as pd
import pytest

from helpers.hostile import assert_refused, looks_complete
from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import read_mrc, write_mrc
from napari_2dtm.reconstruct.fsc import fsc, fsc_resolution, resolution_text
from napari_2dtm.search.config import SearchConfig

SEARCH_CASES = [
    # 7: NaN CTF values
    (("--defocus1", "nan"), "--defocus1"),
    (("--defocus2", "inf"), "--defocus2"),
    (("--cs", "nan"), "--cs"),
    # 8: batch size, pixel-size planes <= 0
    (("--batch-size", "-1"), "--batch-size"),
    (("--batch-size", "0"), "--batch-size"),
    (("--pixel-size-range", "5", "--pixel-size-step", "1"), "--pixel-size-range"),
    # 9: accepted nonsense
    (("--defocus-range", "400", "--defocus-step", "0"), "--defocus-step"),
    (("--defocus-range", "400", "--defocus-step", "-200"), "--defocus-step"),
    (("--defocus-range", "-100"), "--defocus-range"),
    (("--high-res-limit", "0"), "--high-res-limit"),
    (("--high-res-limit", "-12"), "--high-res-limit"),
    (("--high-res-limit", "nan"), "--high-res-limit"),
    (("--high-res-limit", "5"), "Nyquist"),  # 4 A/px: Nyquist is 8 A
    (("--high-res-limit", "1000"), "template box"),
    (("--pixel-size", "0"), "--pixel-size"),
    (("--n-false-positives", "0"), "--n-false-positives"),
    (("--n-false-positives", "-1"), "--n-false-positives"),
    (("--threshold", "nan"), "--threshold"),
    (("--out-of-plane-step", "1000"), "--out-of-plane-step"),
    # 10: tracebacks that become one line
    (("--out-of-plane-step", "0"), "--out-of-plane-step"),
    (("--in-plane-step", "nan"), "--in-plane-step"),
    (("--in-plane-step", "-3"), "--in-plane-step"),
    (("--symmetry", "X7"), "--symmetry"),
    (("--symmetry", "C0"), "--symmetry"),
    (("--defocus-range", "1e9"), "--defocus-range"),
]


@pytest.mark.parametrize("extra, name", SEARCH_CASES, ids=lambda v: " ".join(v)
                         if isinstance(v, tuple) else None)
def test_bad_search_value_is_refused_before_any_work(case, cli, extra, name):
    code, out, err = cli("search", case.mic, "--template", case.tpl, "--out", case.out,
                         *case.fast, *extra)
    assert_refused(code, err, name)
    assert not os.path.exists(case.out)
    assert not any(p.name.endswith(".checkpoint.npz") for p in case.dir.iterdir())


# --------------------------------------------------------------- 7: NaN CTF from files
def test_ctffind_line_with_nan_is_refused_naming_the_file(case, cli):
    ctf = case.dir / "mic_ctf.txt"
    ctf.write_text("# Pixel size: 4.0 Angstroms ; acceleration voltage: 300.0 keV ; "
                   "spherical aberration: 2.70 mm ; amplitude contrast: 0.07\n"
                   "1.0 nan 10000.0 0.0 0.0 0.1 8.0\n")
    code, out, err = cli("search", case.mic, "--template", case.tpl, "--out", case.out,
                         *case.fast, "--ctffind", ctf)
    assert_refused(code, err, "mic_ctf.txt", "defocus1")
    assert not os.path.exists(case.out)


def test_star_with_empty_defocus_is_refused_naming_the_file(case, cli):
    star = case.dir / "micrographs_ctf.star"
    star.write_text("data_micrographs\n\nloop_\n_rlnMicrographName #1\n_rlnDefocusU #2\n"
                    "_rlnDefocusV #3\n_rlnDefocusAngle #4\nmic.mrc \"\" 10000 0\n")
    code, out, err = cli("batch", case.mic, "--template", case.tpl, "--out", case.out,
                         *case.fast, "--workers", "0", "--ctf-star", star)
    # batch reports a bad micrograph in its summary and goes on (exit 1), never searches it
    assert code == 1 and "Traceback" not in err
    [line] = [ln for ln in err.splitlines() if "FAILED" in ln]
    assert "micrographs_ctf.star" in line and "rlnDefocusU" in line
    assert not looks_complete(os.path.join(case.out, "mic"))


def test_nan_ctf_in_the_python_api_is_an_input_error():
    with pytest.raises(InputError, match="defocus1_a"):
        CTFParams(defocus1_a=float("nan"))
    with pytest.raises(InputError, match="voltage_kv"):
        CTFParams(voltage_kv=-300)


# --------------------------------------------------------------- 8: complex micrograph
def test_complex_micrograph_is_refused_not_cast(case, cli):
    img = read_mrc(case.mic)[0]
    path = case.dir / "complex.mrc"
    with mrcfile.new(path) as m:
        m.set_data((img + 1j * img).astype(np.complex64))
        m.voxel_size = 4.0
    code, out, err = cli("search", path, "--template", case.tpl, "--out", case.out, *case.fast)
    assert_refused(code, err, "complex.mrc", "complex")


# --------------------------------------------------------------- 9: blank inputs
@pytest.mark.parametrize("which", ["mic", "tpl"])
def test_all_zero_micrograph_or_template_is_refused_naming_the_file(case, cli, which):
    path = getattr(case, which)
    data, px = read_mrc(path)
    write_mrc(path, np.zeros_like(data), px)
    code, out, err = cli("search", case.mic, "--template", case.tpl, "--out", case.out,
                         *case.fast)
    assert_refused(code, err, os.path.basename(path))
    assert not os.path.exists(case.out)


def test_fsc_that_never_crosses_reports_worse_than_the_box():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 32, 32, 32))  # independent noise: no shell correlates
    res = fsc_resolution(fsc(a, b), 32, 3.5)
    assert math.isinf(res)  # not 32 * 3.5 / 1e-6 = 1.1e8 A
    assert "does not cross 0.143" in resolution_text(res)
    assert resolution_text(7.346) == "7.35 A"


# --------------------------------------------------------------- 10: other doors
@pytest.mark.parametrize("extra, name", [
    (("--shape", "1000000", "1000000"), "--shape"),
    (("--defocus", "nan"), "--defocus"),
    (("--pixel-size", "0"), "--pixel-size"),
], ids=["huge shape", "defocus nan", "pixel size 0"])
def test_bad_simulate_value_is_refused(tmp_path, cli, extra, name):
    from helpers.planting import structure

    code, out, err = cli("simulate", "-s", structure("1BD2"), "-n", "2", "--out",
                         tmp_path / "sim", *extra)
    assert_refused(code, err, name)
    assert not (tmp_path / "sim").exists()


def test_huge_template_box_is_refused_before_allocating(tmp_path, cli):
    from helpers.planting import structure

    code, out, err = cli("template", structure("1BD2"), "--pixel-size", "4", "--box", "100000",
                         "--out", tmp_path / "t.mrc")
    assert_refused(code, err, "--box")
    assert not (tmp_path / "t.mrc").exists()


@pytest.mark.parametrize("content", ["x,y,phi,theta,psi\n10,nan,0,0,0\n", "hello world\n", ""],
                         ids=["nan", "text", "empty"])
def test_bad_hits_file_is_refused_naming_it(case, cli, content):
    hits = case.dir / "hits.csv"
    hits.write_text(content)
    code, out, err = cli("classify", "--micrograph", case.mic, "--hits", hits,
                         "--template", case.tpl, "--template", case.tpl, "--out", case.out)
    assert_refused(code, err, "hits.csv")
    assert not os.path.exists(case.out)


def test_reconstruct_star_with_nan_pose_is_refused_naming_it(case, cli):
    star = case.dir / "hits.star"
    star.write_text("data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n"
                    "_rlnAngleRot #3\n_rlnAngleTilt #4\n_rlnAnglePsi #5\n"
                    "_rlnMicrographName #6\n40 40 nan 10 20 mic.mrc\n")
    code, out, err = cli("reconstruct", "--hits", star, "--template", case.tpl,
                         "--out", case.out, "--no-refine", "--quiet")
    assert_refused(code, err, "hits.star")
    assert not os.path.exists(case.out)


@pytest.mark.parametrize("extra, name", [
    (("--symmetry", "X7"), "X7"), (("--box", "4"), "--box"), (("--pad", "0"), "--pad"),
    (("--ssnr", "-1"), "--ssnr"),
])
def test_bad_reconstruct_setting_is_refused_before_any_work(case, cli, extra, name):
    star = case.dir / "hits.star"
    star.write_text("data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n"
                    "_rlnAngleRot #3\n_rlnAngleTilt #4\n_rlnAnglePsi #5\n"
                    "_rlnMicrographName #6\n40 40 0 10 20 mic.mrc\n")
    code, out, err = cli("reconstruct", "--hits", star, "--template", case.tpl,
                         "--out", case.out, "--no-refine", "--quiet", *extra)
    assert_refused(code, err, name)
    assert not os.path.exists(case.out)


@pytest.mark.parametrize("extra, name", [
    (("--workers", "-1"), "--workers"),
    (("--shards", "0"), "--shards"),
    (("--pixel-size", "0"), "--pixel-size"),
    (("--threshold", "nan"), "--threshold"),
])
def test_bad_batch_value_is_refused(case, cli, extra, name):
    code, out, err = cli("batch", case.mic, "--template", case.tpl, "--out", case.out,
                         *case.fast, *extra)
    assert_refused(code, err, name)
    assert not os.path.exists(case.out)


def test_unreachable_scheduler_is_one_line(case, cli, monkeypatch):
    from napari_2dtm.jobs import batch

    monkeypatch.setattr(batch, "SCHEDULER_TIMEOUT_S", 1)
    code, out, err = cli("batch", case.mic, "--template", case.tpl, "--out", case.out,
                         *case.fast, "--scheduler", "tcp://127.0.0.1:9")
    assert_refused(code, err, "--scheduler")
    assert not looks_complete(os.path.join(case.out, "mic"))


@pytest.mark.parametrize("out", [".", ".."])
def test_dot_outputs_are_refused_before_the_search(case, cli, monkeypatch, out):
    work = case.dir / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(os.listdir(case.dir))
    code, _, err = cli("search", case.mic, "--template", case.tpl, "--out", out, "--overwrite",
                       *case.fast)
    assert_refused(code, err, out)
    assert sorted(os.listdir(case.dir)) == before and os.listdir(work) == []


def test_dot_output_inside_a_results_folder_is_refused(case, cli, monkeypatch):
    code, _, err = cli("search", case.mic, "--template", case.tpl, "--out", case.out,
                       *case.fast)
    assert code == 0, err
    monkeypatch.chdir(case.out)
    before = {p: os.path.getmtime(os.path.join(case.out, p)) for p in os.listdir(case.out)}
    code, _, err = cli("search", case.mic, "--template", case.tpl, "--out", ".", "--overwrite",
                       *case.fast)
    assert_refused(code, err, "current folder")
    assert {p: os.path.getmtime(os.path.join(case.out, p)) for p in os.listdir(case.out)} == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_one_line(case, cli):
    ro = case.dir / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, out, err = cli("search", case.mic, "--template", case.tpl, "--out", ro / "res",
                             *case.fast)
    finally:
        ro.chmod(0o755)
    assert_refused(code, err, "ro")
    assert os.listdir(ro) == []


def test_output_that_cannot_be_created_is_one_line(case, cli):
    """The same refusal as a read-only folder, reachable as root too: the output's parent
    is a file, so nothing can be created there (ENOTDIR)."""
    blocker = case.dir / "not_a_folder"
    blocker.write_text("a user's file")
    code, out, err = cli("search", case.mic, "--template", case.tpl, "--out", blocker / "res",
                         *case.fast)
    assert_refused(code, err, "not_a_folder")
    assert blocker.read_text() == "a user's file"


def test_ctrl_c_during_start_up_is_one_line(cli, monkeypatch):
    import importlib

    cli_main = importlib.import_module("napari_2dtm.cli.main")

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main.importlib, "import_module", interrupted)
    code, out, err = cli("search", "--help")
    assert code == 130 and err.strip() == "napari-2dtm: interrupted"


@pytest.mark.parametrize("kwargs, name", [
    ({"out_of_plane_step_deg": "fine"}, "out_of_plane_step_deg (--out-of-plane-step)"),
    ({"defocus_range_a": 400, "defocus_step_a": 0}, "defocus_step_a (--defocus-step)"),
    ({"batch_size": 2.5}, "batch_size (--batch-size)"),
    ({"symmetry": None}, "symmetry (--symmetry)"),
    ({"ctf": {"defocus1_a": 1e4}}, "ctf"),
    ({"orientations": np.full((2, 3), np.nan)}, "orientations"),
])
def test_search_config_errors_are_input_errors(kwargs, name):
    with pytest.raises(InputError) as e:
        SearchConfig(**kwargs)
    assert name in str(e.value) and len(str(e.value).splitlines()) == 1


def test_valid_config_round_trips_through_its_dict():
    cfg = SearchConfig(defocus_range_a=400, defocus_step_a=100, batch_size=8)
    assert SearchConfig.from_dict(pd.Series(cfg.to_dict()).to_dict()) == cfg
