"""CLI, results folder and bad-input handling of the search."""

from __future__ import annotations

import numpy as np
import pytest
import starfile

from helpers.planting import plant, structure
from napari_2dtm import CTFParams, SearchConfig, read_results, search, write_results
from napari_2dtm.cli.main import main
from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import write_mrc


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    from napari_2dtm.templates.model import template_from_model

    d = tmp_path_factory.mktemp("case")
    tpl = template_from_model(structure("1BD2"), 4.0)
    ctf = CTFParams(defocus1_a=10000)
    img, truth = plant(tpl, (128, 128), 2, ctf, target_snr=20.0, seed=3)
    write_mrc(d / "mic.mrc", img, 4.0)
    write_mrc(d / "tpl.mrc", tpl.volume, 4.0)
    return d, img, tpl, truth


def _cli_search(case_dir, *extra):
    return main(["search", str(case_dir / "mic.mrc"), "--template", str(case_dir / "tpl.mrc"),
                 "--out-of-plane-step", "20", "--in-plane-step", "20", "--defocus1", "10000",
                 "--device", "cpu", *extra])


def test_exact_pose_round_trip(small_case):
    """A particle planted with angles A is reported with angles A (A on the search list)."""
    _, img, tpl, truth = small_case
    rng = np.random.default_rng(0)
    decoys = rng.uniform([0, 0, 0], [360, 180, 360], (60, 3))
    ori = np.concatenate([decoys, truth[:, 2:]])
    r = search(img, 4.0, tpl, SearchConfig(ctf=CTFParams(defocus1_a=10000), orientations=ori,
                                           device="cpu"))
    for x, y, phi, theta, psi in truth:
        assert r.maps["phi"][int(y), int(x)] == pytest.approx(phi, abs=1e-3)
        assert r.maps["theta"][int(y), int(x)] == pytest.approx(theta, abs=1e-3)
        assert r.maps["psi"][int(y), int(x)] == pytest.approx(psi, abs=1e-3)


def test_cli_writes_results_and_refuses_overwrite(small_case, tmp_path, capsys):
    case, *_ = small_case
    out = tmp_path / "res"
    assert _cli_search(case, "--out", str(out)) == 0
    for f in ("mip.mrc", "zscore.mrc", "snr.mrc", "mean.mrc", "std.mrc", "phi.mrc", "theta.mrc",
              "psi.mrc", "defocus.mrc", "hits.star", "hits.csv", "search.json"):
        assert (out / f).exists(), f
    r = read_results(out)
    assert r.pixel_size_a == 4.0 and r.maps["zscore"].shape == (128, 128)
    assert r.metadata["versions"]["numpy"]
    star = starfile.read(out / "hits.star", always_dict=True)
    for col in ("rlnCoordinateX", "rlnCoordinateY", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                "rlnDefocusU", "rln2dtmZScore", "rln2dtmSNR"):
        assert col in star["particles"].columns
    before = (out / "mip.mrc").stat().st_mtime_ns
    assert _cli_search(case, "--out", str(out)) == 2
    assert "exists" in capsys.readouterr().err
    assert (out / "mip.mrc").stat().st_mtime_ns == before
    assert _cli_search(case, "--out", str(out), "--overwrite") == 0


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = capsys.readouterr().out
    for opt in ("--defocus1", "--high-res-limit", "--n-false-positives", "--symmetry",
                "--ctffind", "--device", "--pixel-size", "--overwrite"):
        assert opt in text
    assert "Angstrom" in text or " A " in text


@pytest.mark.parametrize("case", ["not_mrc", "stack", "too_big", "non_cubic", "nan", "no_pixel"])
def test_bad_input_gives_one_clear_line(case, tmp_path, capsys, small_case):
    src, img, tpl, _ = small_case
    mic, t = src / "mic.mrc", src / "tpl.mrc"
    extra = []
    if case == "not_mrc":
        mic = tmp_path / "notes.mrc"
        mic.write_text("this is not an MRC file")
        expect = "not a readable MRC file"
    elif case == "stack":
        mic = tmp_path / "stack.mrcs"
        write_mrc(mic, np.stack([img, img]), 4.0)
        expect = "expected a 2D micrograph"
    elif case == "too_big":
        mic = tmp_path / "tiny.mrc"
        write_mrc(mic, img[:32, :32], 4.0)
        expect = "larger than the micrograph"
    elif case == "non_cubic":
        t = tmp_path / "flat.mrc"
        write_mrc(t, tpl.volume[:-2], 4.0)
        expect = "cubic"
    elif case == "nan":
        mic = tmp_path / "nan.mrc"
        bad = img.copy()
        bad[5, 5] = np.nan
        write_mrc(mic, bad, 4.0)
        expect = "NaN"
    else:
        mic = tmp_path / "nopix.mrc"
        write_mrc(mic, img, 0.0)
        expect = "pixel size"
    rc = main(["search", str(mic), "--template", str(t), "--device", "cpu",
               "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and expect in err[0], err
    assert mic.name in err[0] or t.name in err[0] or case == "too_big"
    assert "Traceback" not in err[0]


def test_results_folder_write_is_atomic(small_case, tmp_path):
    _, img, tpl, _ = small_case
    r = search(img, 4.0, tpl, SearchConfig(ctf=CTFParams(), out_of_plane_step_deg=30,
                                           in_plane_step_deg=30, device="cpu"))
    out = write_results(r, tmp_path / "r")
    with pytest.raises(InputError):
        write_results(r, out)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_gpu_requested_without_gpu_is_a_clear_error(small_case, tmp_path, capsys):
    from napari_2dtm import gpu_info

    if gpu_info()["available"]:
        pytest.skip("a GPU is present")
    case, *_ = small_case
    assert _cli_search(case, "--out", str(tmp_path / "g"), "--device", "gpu") == 2
    assert "GPU requested but none is usable" in capsys.readouterr().err


@pytest.mark.gpu
def test_numpy_and_cupy_paths_agree(small_case):
    from napari_2dtm import gpu_info

    if not gpu_info()["available"]:
        pytest.skip(f"no usable GPU: {gpu_info()['reason']}")
    _, img, tpl, _ = small_case
    kw = dict(ctf=CTFParams(defocus1_a=10000), out_of_plane_step_deg=20, in_plane_step_deg=20,
              defocus_range_a=400, defocus_step_a=200)
    a = search(img, 4.0, tpl, SearchConfig(device="cpu", **kw))
    b = search(img, 4.0, tpl, SearchConfig(device="gpu", **kw))
    for name in ("mip", "zscore", "snr", "mean", "std"):
        scale = np.abs(a.maps[name]).max()
        assert np.abs(a.maps[name] - b.maps[name]).max() <= 1e-4 * scale, name
