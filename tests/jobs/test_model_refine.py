"""The refine-model job and CLI end to end: a results folder of a real search of a
simulated micrograph, the job folder it writes, the refined model file, and refusals of
bad input in one line (exit 2)."""

from __future__ import annotations

import json

import gemmi
import numpy as np
import pandas as pd
import pytest

from helpers.model_sim import changed_model, simulated_hits
from helpers.planting import structure
from napari_2dtm.cli.main import main
from napari_2dtm.errors import InputError
from napari_2dtm.jobs.model_refine import ModelRefineSettings, run_model_refine
from napari_2dtm.jobs.reconstruct import MicrographInput, micrograph_from_results
from napari_2dtm.jobs.search import run_search
from napari_2dtm.search.config import SearchConfig

PX = 1.5


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A search of a micrograph of 1A28 whose chain B turned by 4 degrees; the views
    searched are the particles' own plus random ones (the statistics)."""
    tmp = tmp_path_factory.mktemp("refmodel")
    model = structure("1A28")
    changed = changed_model(model, tmp / "changed.pdb", "chain B", angle_deg=4.0,
                            shift_a=(1.0, 0.0, 1.0))
    mics, truths = simulated_hits(changed, 40, pixel_size_a=PX, per_micrograph=40,
                                  shape=(768, 768), seed=5, with_truth=True)
    rng = np.random.default_rng(0)
    views = np.concatenate([truths[0][["phi", "theta", "psi"]].to_numpy(float),
                            np.column_stack([rng.uniform(0, 360, 100),
                                             np.rad2deg(np.arccos(rng.uniform(-1, 1, 100))),
                                             rng.uniform(0, 360, 100)])])
    cfg = SearchConfig(orientations=views, ctf=mics[0].ctf)
    res, folder = run_search(mics[0].image, PX, str(model), cfg, tmp / "search", metric="snr")
    assert len(res.hits) >= 30
    return model, folder, tmp


def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_cli_refines_and_writes_the_job_folder(searched, capsys):
    model, folder, tmp = searched
    out = tmp / "job"
    rc = main(["refine-model", str(model), "--results", str(folder), "--out", str(out),
               "--cycles", "1", "--quiet"])
    assert rc == 0
    for name in ("refined_model.cif", "refined_model.pdb", "template_start.mrc",
                 "template_refined.mrc", "groups.csv", "cycles.csv", "particles.csv",
                 "model_refine.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "model_refine.json").read_text())
    assert "search template" in summary["center_from"]
    assert summary["n_work"] + summary["n_free"] == summary["n_particles"] >= 30
    assert summary["free_cc_refined"] > summary["free_cc_start"]
    groups = pd.read_csv(out / "groups.csv")
    assert list(groups["group"]) == ["chain A", "chain B"]
    cycles = pd.read_csv(out / "cycles.csv")
    assert list(cycles["cycle"]) == [0, 1]
    # the written model: the input's atoms, moved as groups.csv says, the rest kept
    st0 = gemmi.read_structure(str(model))
    st1 = gemmi.read_structure(str(out / "refined_model.pdb"))
    st2 = gemmi.read_structure(str(out / "refined_model.cif"))
    for st in (st1, st2):
        a0 = [(c.name, r.name, r.seqid.num, a.name) for c in st0[0] for r in c for a in r]
        a1 = [(c.name, r.name, r.seqid.num, a.name) for c in st[0] for r in c for a in r]
        assert a0 == a1  # waters, ligands, names, numbering kept
        for chain, row in zip("AB", groups.itertuples()):
            x0 = np.array([a.pos.tolist() for r in st0[0][chain] for a in r if not r.is_water()])
            x1 = np.array([a.pos.tolist() for r in st[0][chain] for a in r if not r.is_water()])
            rmsd = float(np.sqrt(((x1 - x0) ** 2).sum(1).mean()))
            assert rmsd == pytest.approx(row.rmsd_a, abs=2e-3)
    # chain B turned (4 degrees, 1.4 A) against chain A: found within a fraction
    assert groups.loc[1, "rmsd_a"] > 1.0 and groups.loc[0, "rmsd_a"] < 0.3


def test_the_job_refuses_bad_input_in_one_line(searched, tmp_path, capsys):
    model, folder, tmp = searched
    other = structure("1BD2")  # not the model of the template the hits were found with
    assert main(["refine-model", str(other), "--results", str(folder), "--out",
                 str(tmp_path / "a")]) == 2
    line = _one_line(capsys)
    assert "1BD2" in line and "template" in line and "frame" in line
    assert main(["refine-model", str(model), "--results", str(folder), "--group", "chain A",
                 "--group", "chain Z", "--out", str(tmp_path / "b")]) == 2
    line = _one_line(capsys)
    assert "chain Z" in line and "matches no atom" in line
    score = np.sort(micrograph_from_results(folder).hits["snr"].to_numpy())[::-1]
    assert main(["refine-model", str(model), "--results", str(folder), "--min-score",
                 str(score[5]), "--score", "snr", "--out", str(tmp_path / "c")]) == 2
    line = _one_line(capsys)
    assert "fewer than the 12 parameters" in line
    assert main(["refine-model", str(model), "--results", str(folder), "--refine", "sidechains",
                 "--out", str(tmp_path / "d")]) == 2
    assert "--refine" in _one_line(capsys)
    for sub in ("a", "b", "c", "d"):
        assert not (tmp_path / sub).exists()  # nothing that looks like a result


def test_hits_without_poses_are_refused(searched, tmp_path):
    model, folder, _ = searched
    m = micrograph_from_results(folder)
    bare = MicrographInput(m.image, m.pixel_size_a, m.ctf, m.hits.drop(columns=["phi", "psi"]),
                           m.name, m.result)
    with pytest.raises(InputError, match="no poses"):
        run_model_refine([bare], model, tmp_path / "job", ModelRefineSettings(max_cycles=1))
    assert not (tmp_path / "job").exists()
