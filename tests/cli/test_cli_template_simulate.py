"""``napari-2dtm template`` and ``napari-2dtm simulate`` command lines."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pandas as pd
import pytest

from helpers.planting import structure_file as structure
from napari_2dtm.cli.main import build_parser, main
from napari_2dtm.templates import model as mdl


def test_template_cli_writes_mrc_and_refuses_overwrite(tmp_path, capsys):
    model = structure("1A28.pdb.gz")
    out = tmp_path / "t.mrc"
    rc = main(["template", str(model), "--pixel-size", "2.0", "--box", "64", "--bfactor", "40",
               "--out", str(out)])
    assert rc == 0
    with mrcfile.open(out) as m:
        assert m.data.shape == (64, 64, 64)
        assert float(m.voxel_size.x) == pytest.approx(2.0)
        vol = m.data.copy()
    ref = mdl.template_from_model(model, 2.0, box=64, bfactor_a2=40)
    np.testing.assert_array_equal(vol, ref.volume)
    capsys.readouterr()
    assert main(["template", str(model), "--pixel-size", "2.0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert main(["template", str(model), "--pixel-size", "2.0", "--out", str(out), "--overwrite"]) == 0


def test_template_cli_omit_selection_on_model_grid(tmp_path):
    model = structure("1A28.pdb.gz")
    full, omit = tmp_path / "full.mrc", tmp_path / "omit.mrc"
    assert main(["template", str(model), "--pixel-size", "2", "--center", "model", "--out", str(full)]) == 0
    assert main(["template", str(model), "--pixel-size", "2", "--center", "model",
                 "--select", "all but resname STR", "--out", str(omit)]) == 0
    with mrcfile.open(full) as a, mrcfile.open(omit) as b:
        assert a.data.shape == b.data.shape
        assert a.header.origin.x == b.header.origin.x
        assert a.header.origin.z == b.header.origin.z
        assert a.data.sum() > b.data.sum()
    out = tmp_path / "o.mrc"
    assert main(["template", str(model), "--pixel-size", "2", "--origin", "36", "18", "52",
                 "--box", "48", "--dose", "30", "--keep-waters", "--out", str(out)]) == 0
    with mrcfile.open(out) as m:
        assert float(m.header.origin.x) == pytest.approx(36 - 24 * 2)


@pytest.mark.parametrize(
    "extra, text",
    [
        (["--pixel-size", "0"], "pixel size must be > 0"),
        (["--pixel-size", "1", "--box", "16"], "too small"),
        (["--pixel-size", "1", "--select", "chain Q"], "matches no atoms"),
    ],
)
def test_template_cli_errors_are_one_line(tmp_path, capsys, extra, text):
    model = structure("1A28.pdb.gz")
    rc = main(["template", str(model), *extra, "--out", str(tmp_path / "x.mrc")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert text in err and "1A28.pdb.gz" in err
    assert not (tmp_path / "x.mrc").exists()


def test_template_cli_unreadable_model(tmp_path, capsys):
    bad = tmp_path / "bad.cif"
    bad.write_text("not a model\n")
    assert main(["template", str(bad), "--pixel-size", "1", "--out", str(tmp_path / "x.mrc")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.cif" in err


def test_simulate_cli_writes_files_and_refuses_overwrite(tmp_path, capsys):
    model = structure("1A28.pdb.gz")
    out = tmp_path / "sim"
    args = ["simulate", "--structure", str(model), "--n-particles", "3", "--shape", "160", "192",
            "--pixel-size", "2", "--defocus", "9000", "--snr", "0.05", "--seed", "4", "--out", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "micrograph.mrc", "simulation.json", "template_0_1A28.mrc", "truth.csv"
    ]
    truth = pd.read_csv(out / "truth.csv")
    assert list(truth.columns[:8]) == ["x", "y", "phi", "theta", "psi", "defocus_a", "class", "class_name"]
    assert len(truth) == 3 and np.all(truth["defocus_a"] == 9000)
    with mrcfile.open(out / "micrograph.mrc") as m:
        assert m.data.shape == (160, 192) and float(m.voxel_size.x) == pytest.approx(2.0)
        first = m.data.copy()
    meta = json.loads((out / "simulation.json").read_text())
    assert meta["snr"] == 0.05 and meta["seed"] == 4 and meta["ctf"]["defocus1_a"] == 9000
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err
    assert main([*args, "--overwrite"]) == 0
    with mrcfile.open(out / "micrograph.mrc") as m:
        np.testing.assert_array_equal(m.data, first)  # same seed, same micrograph


def test_simulate_cli_options(tmp_path):
    a, b = structure("1A28.pdb.gz"), structure("1BD2.pdb.gz")
    out = tmp_path / "mic.mrc"
    assert main(["simulate", "-s", str(a), "-s", str(b), "-n", "3", "--shape", "320", "320",
                 "--pixel-size", "2", "--exposure", "30", "--ice", "--gradient", "0.1",
                 "--class-fractions", "2", "1", "--clean", "--no-templates", "--out", str(out)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["mic.mrc", "mic_clean.mrc", "mic_simulation.json", "mic_truth.csv"]
    truth = pd.read_csv(tmp_path / "mic_truth.csv")
    assert truth.groupby("class_name").size().to_dict() == {"1A28": 2, "1BD2": 1}


def test_simulate_cli_errors(tmp_path, capsys):
    model = structure("1A28.pdb.gz")
    base = ["simulate", "-s", str(model), "-n", "2", "--shape", "160", "160", "--pixel-size", "2"]
    with pytest.raises(SystemExit):  # argparse: mutually exclusive
        main([*base, "--snr", "0.1", "--exposure", "30", "--out", str(tmp_path / "a")])
    capsys.readouterr()
    assert main(["simulate", "-s", str(tmp_path / "none.pdb"), "-n", "2", "--out", str(tmp_path / "b")]) == 2
    assert "none.pdb" in capsys.readouterr().err
    assert main([*base, "--class-fractions", "1", "2", "--out", str(tmp_path / "c")]) == 2
    assert "--class-fractions" in capsys.readouterr().err


def _subparser(name):
    p = build_parser()
    for act in p._subparsers._group_actions:
        if name in act.choices:
            return act.choices[name]
    raise AssertionError(f"no sub-command {name}")


@pytest.mark.parametrize("name", ["template", "simulate"])
def test_help_documents_every_option(name, capsys):
    sp = _subparser(name)
    for act in sp._actions:
        if act.dest == "help":
            continue
        assert act.help and len(act.help) > 10, act.dest
    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = capsys.readouterr().out
    assert "Angstrom" in text
    if name == "template":
        for opt in ["--pixel-size", "--box", "--bfactor", "--select", "--center", "--keep-hydrogens",
                    "--keep-waters", "--dose", "--out", "--overwrite", "A^2", "e/A^2"]:
            assert opt in text
    else:
        for opt in ["--structure", "--n-particles", "--shape", "--pixel-size", "--defocus", "--exposure",
                    "--snr", "--seed", "--ice", "--gradient", "--out", "--overwrite", "e/A^2"]:
            assert opt in text
