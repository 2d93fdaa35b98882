"""Refinement, particle stacks and the reconstruction job end to end on simulated
micrographs of 1A28 (progesterone receptor with its ligand progesterone, resname STR).

Ligand scenario (reduced to test size; the full one is benchmarks/bench_ligand.py):
particles are simulated from the FULL model; hits come from one genuine search (local
orientation grids, omit template) and from true poses perturbed by a search grid step;
they are refined with the template WITHOUT STR and reconstructed. The ligand must show
up in the omit-template map (> 3 sigma of the solvent), and Omega is reported.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import starfile

from helpers.planting import match, structure_file
from napari_2dtm import CTFParams, Search, SearchConfig, extract_hits, write_results
from napari_2dtm.core.geometry import (
    angular_distance_deg,
    euler_to_matrix,
    local_grid,
)
from napari_2dtm.errors import Cancelled, InputError
from napari_2dtm.hits.refine import DEFAULT_STAGES, RefineStage, refine_hits, stages_from
from napari_2dtm.io.mrc import read_mrc, write_mrc
from napari_2dtm.jobs.reconstruct import JobSettings, MicrographInput, run_reconstruct
from napari_2dtm.reconstruct.particles import (
    concat_particles,
    extract_particles,
    read_particles,
    write_particles,
)
from napari_2dtm.simulate import perturbed_hits, simulate_micrograph
from napari_2dtm.templates.model import template_from_model, write_template_mrc

PX = 2.0
BOX = 64
QUICK = (RefineStage(2.5, 1.25, 1.5, 0.75),)  # one stage: the test's time budget


@pytest.fixture(scope="module")
def model():
    path = structure_file("1A28.pdb.gz")
    full = template_from_model(path, PX, center="model")
    omit = template_from_model(path, PX, center="model", selection="all but resname STR")
    assert full.box == omit.box and full.params["center_a"] == omit.params["center_a"]
    assert full.params["n_atoms"] - omit.params["n_atoms"] == 46  # 2 x 23 heavy atoms of progesterone (C21 O2)
    return path, full, omit


def _ang_err(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    return angular_distance_deg(euler_to_matrix(*a[["phi", "theta", "psi"]].to_numpy(float).T),
                                euler_to_matrix(*b[["phi", "theta", "psi"]].to_numpy(float).T))


@pytest.fixture(scope="module")
def searched(model, tmp_path_factory):
    """One micrograph searched for real (omit template, local grids around the truth)."""
    path, full, omit = model
    d = tmp_path_factory.mktemp("search")
    ctf = CTFParams(defocus1_a=9000, defocus2_a=8700, astigmatism_angle_deg=20)
    sim = simulate_micrograph([path], 12, shape=(448, 448), pixel_size_a=PX, ctf=ctf, snr=0.05,
                              seed=5)
    ori = np.concatenate([local_grid(r[["phi", "theta", "psi"]].to_numpy(float), 3.0, 1.5)
                          for _, r in sim.truth.iterrows()])
    s = Search(sim.image, PX, omit, SearchConfig(ctf=ctf, orientations=ori, device="cpu"))
    for _ in s.run():
        pass
    # local grids make the per-pixel z-score meaningless (correlated orientations): pick by SNR
    s.result.hits = extract_hits(s.result, metric="snr", threshold=7.0)
    write_mrc(d / "mic.mrc", sim.image, PX)
    write_results(s.result, d / "results", micrograph_path=d / "mic.mrc")
    write_template_mrc(d / "full.mrc", full)
    write_template_mrc(d / "omit.mrc", omit)
    return sim, s.result, d


def test_refinement_converges_at_high_snr(model):
    """Default schedule (down to 0.2 / 0.1 deg, 10 A): poses within a fraction of a degree,
    positions sub-pixel, defocus within tens of A, from a start one search step off."""
    path, full, _ = model
    ctf = CTFParams(defocus1_a=10000, defocus2_a=9600, astigmatism_angle_deg=40)
    sim = simulate_micrograph([path], 4, shape=(320, 320), pixel_size_a=PX, ctf=ctf, snr=1.0,
                              seed=2)
    truth = sim.truth
    start = perturbed_hits(truth, 2.5, 1.0, 120.0, seed=1)
    ref = refine_hits(sim.image, PX, full, start, ctf)
    err = _ang_err(ref, truth)
    pos = np.hypot(ref["x"] - truth["x"], ref["y"] - truth["y"])
    ddf = np.abs(ref["defocus_a"] - truth["defocus_a"])
    assert np.median(err) < 0.6 and err.max() < 1.0, err
    assert pos.max() < 0.35, pos  # the simulator centres the particle mass, not the grid
    assert ddf.max() <= 60, ddf
    assert (ref["refine_angle_deg"] > 1.5).all()
    # the stage list reaches cisTEM's refine_template precision
    assert min(st.angular_step_deg for st in DEFAULT_STAGES if st.angular_range_deg) == 0.2
    assert min(st.in_plane_step_deg for st in DEFAULT_STAGES if st.in_plane_range_deg) == 0.1
    assert DEFAULT_STAGES[-1].defocus_step_a == 10.0
    assert max(st.defocus_range_a for st in DEFAULT_STAGES) == 200.0
    assert stages_from(2.5, 1.5) == DEFAULT_STAGES
    s = stages_from(4.0, 3.0, defocus_range_a=0)
    assert s[-1].angular_step_deg == 0.2 and s[-1].in_plane_step_deg == 0.1
    assert all(st.defocus_range_a == 0 for st in s)
    print(f"\nhigh-SNR refinement: pose error median {np.median(err):.2f} max {err.max():.2f} deg, "
          f"position max {pos.max():.2f} px, defocus max {ddf.max():.0f} A")


def test_refined_scores_on_the_search_scale(searched, model):
    sim, res, _ = searched
    _, _, omit = model
    hits = res.hits
    assert len(match(hits, sim.truth[["x", "y"]].to_numpy(float), 1.5)) >= 10
    ref = refine_hits(sim.image, PX, omit, hits, sim.ctf, stages=QUICK, result=res)
    # the search's values kept; the refined CC can only improve on the grid optimum
    assert np.allclose(ref["snr_search"], hits["snr"])
    assert (ref["snr"] >= 0.98 * hits["snr"]).all()
    # z-score from the search's own per-pixel mean and SD at the refined pixel
    gs = res.metadata["cc_global_std"]
    rows = np.rint(ref["y"] / res.binning).astype(int)
    cols = np.rint(ref["x"] / res.binning).astype(int)
    z = (ref["cc"] - res.maps["mean"][rows, cols]) / res.maps["std"][rows, cols]
    np.testing.assert_allclose(ref["zscore"], z, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ref["snr"], ref["cc"] / gs, rtol=1e-9)
    assert (ref["zscore"] >= hits["zscore"] - 0.05).all()


def test_particle_stack_and_relion_star(searched, tmp_path):
    sim, _, _ = searched
    truth = sim.truth.copy()
    truth["x"] = truth["x"] + 0.3
    truth["y"] = truth["y"] - 0.45
    truth["zscore"] = 9.5
    a = extract_particles(sim.image, PX, truth, BOX, sim.ctf, "mic_a.mrc")
    b = extract_particles(sim.image, PX, truth.iloc[:5], BOX, sim.ctf, "mic_b.mrc")
    ps = concat_particles([a, b])
    assert len(ps) == len(a) + len(b) and a.dropped + len(a) == len(truth)
    # protein white and normalised: background mean 0, SD 1; the box centre is bright
    g = np.arange(BOX) - BOX // 2
    bg = (g[:, None] ** 2 + g[None, :] ** 2) > (0.375 * BOX) ** 2
    assert abs(ps.images[:, bg].mean()) < 1e-6 and ps.images[:, bg].std() == pytest.approx(1, abs=1e-3)
    star, stack = write_particles(ps, tmp_path / "particles.star")
    with pytest.raises(InputError):
        write_particles(ps, tmp_path / "particles.star")
    blocks = starfile.read(star, always_dict=True)
    optics, parts = blocks["optics"], blocks["particles"]
    for label in ("rlnOpticsGroup", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                  "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality"):
        assert label in optics
    assert optics["rlnImageSize"].iloc[0] == BOX and optics["rlnImagePixelSize"].iloc[0] == PX
    assert parts["rlnImageName"].iloc[0] == "000001@particles.mrcs"
    assert set(parts["rlnMicrographName"]) == {"mic_a.mrc", "mic_b.mrc"}
    for label in ("rlnCoordinateX", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                  "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                  "rlnRandomSubset", "rln2dtmZScore"):
        assert label in parts
    # RELION's sign: true centre = rlnCoordinateX - rlnOriginXAngst / pixel
    x_true = parts["rlnCoordinateX"] - parts["rlnOriginXAngst"] / PX
    y_true = parts["rlnCoordinateY"] - parts["rlnOriginYAngst"] / PX
    np.testing.assert_allclose(x_true, ps.table["x"], atol=1e-5)
    np.testing.assert_allclose(y_true, ps.table["y"], atol=1e-5)
    assert set(parts["rlnRandomSubset"]) == {1, 2}
    np.testing.assert_allclose(parts["rlnDefocusU"], 9000.0)
    back = read_particles(star)
    np.testing.assert_array_equal(back.images, ps.images)
    np.testing.assert_allclose(back.table["x"], ps.table["x"], atol=1e-5)
    assert read_mrc(stack)[1] == pytest.approx(PX)


def test_ligand_scenario(model, searched, tmp_path):
    """Search + refine with the template without STR; the ligand appears in the map."""
    path, full, omit = model
    sim0, res0, _ = searched
    mics = [MicrographInput(sim0.image, PX, sim0.ctf, res0.hits, "mic0.mrc", res0)]
    truths = [sim0.truth]
    for i in (1, 2):
        ctf = CTFParams(defocus1_a=7000 + 2500 * i, defocus2_a=6700 + 2500 * i,
                        astigmatism_angle_deg=35.0 * i)
        sim = simulate_micrograph([path], 45, shape=(768, 768), pixel_size_a=PX, ctf=ctf,
                                  snr=0.05, seed=20 + i)
        mics.append(MicrographInput(sim.image, PX, ctf, perturbed_hits(sim.truth, 2.5, 1.0, 100.0, i),
                                    f"mic{i}.mrc"))
        truths.append(sim.truth)
    out, folder = run_reconstruct(mics, full, tmp_path / "job", JobSettings(box=BOX, stages=QUICK),
                                  omit_template=omit)
    assert folder == out.folder == tmp_path / "job"
    s = out.summary
    assert s["n_particles"] >= 90
    # refined poses: closer to the truth than the start (one 2.5 deg grid step)
    refined = pd.read_csv(out.folder / "omit_refined_hits.csv")
    errs = []
    for k, t in enumerate(truths[1:], start=1):
        r = refined[refined["micrograph"] == f"mic{k}.mrc"].reset_index(drop=True)
        errs.append(_ang_err(r, t))
    errs = np.concatenate(errs)
    assert np.median(errs) < 1.6, np.median(errs)
    # the ligand, absent from the template used for the poses, is in the map
    dens = s["omitted_region_density_sigma"]
    assert dens["omit_map"] > 3.0, dens
    assert dens["map"] > 3.0, dens
    b = out.bias
    assert np.isfinite(b.omega) and b.omega < 0.5, b  # true particles: little bias
    assert b.n_mask_voxels > 20
    assert s["map"]["resolution_masked_a"] < 12.0
    assert s["bias"]["omega"] == b.omega
    print(f"\nligand scenario: {s['n_particles']} particles, Omega = {b.omega:.3f}, ligand "
          f"{dens['omit_map']:.1f} sigma (omit map) / {dens['map']:.1f} sigma (full map), "
          f"masked resolution {s['map']['resolution_masked_a']:.1f} A, median pose error "
          f"{np.median(errs):.2f} deg")


def test_cli_reconstruct_job_folder(searched, tmp_path, capsys):
    from napari_2dtm.cli.main import main

    _, _, d = searched
    out = tmp_path / "job"
    args = ["reconstruct", "--results", str(d / "results"), "--template", str(d / "full.mrc"),
            "--omit-template", str(d / "omit.mrc"), "--box", str(BOX), "--no-refine",
            "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "NOT gold-standard" in text and "Omega =" in text and "resolution at FSC 0.143" in text
    for name in ("map.mrc", "map_filtered.mrc", "half1.mrc", "half2.mrc", "mask.mrc", "fsc.csv",
                 "fsc.png", "particles.star", "particles.mrcs", "refined_hits.csv",
                 "omit_map.mrc", "omit_half1.mrc", "omit_fsc.csv", "omit_region_mask.mrc",
                 "reconstruct.json"):
        assert (out / name).exists(), name
    meta = json.loads((out / "reconstruct.json").read_text())
    assert meta["gold_standard"] is False and "NOT gold-standard" in meta["fsc_note"]
    assert meta["settings"]["refine"] is False and np.isfinite(meta["bias"]["omega"])
    fsc = pd.read_csv(out / "fsc.csv", comment="#")
    assert list(fsc.columns[:5]) == ["shell", "frequency_inv_a", "resolution_a", "fsc_unmasked",
                                     "fsc_masked"]
    assert len(fsc) == BOX // 2 + 1 and fsc["fsc_unmasked"].iloc[0] == pytest.approx(1.0)
    vol, px = read_mrc(out / "map.mrc")
    assert vol.shape == (BOX, BOX, BOX) and px == pytest.approx(PX)
    # never silently overwrite; bad input is one clear line
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "exists" in err and len(err.strip().splitlines()) == 1
    assert main(["reconstruct", "--results", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "not a napari-2dtm results folder" in err and len(err.strip().splitlines()) == 1


def test_cli_from_a_hits_star_and_a_model(searched, model, tmp_path, capsys):
    """Hits STAR + micrograph + atomic model; the omit template by an atom selection."""
    from napari_2dtm.cli.main import main

    _, res, d = searched
    path, _, _ = model
    out = tmp_path / "job"
    assert main(["reconstruct", "--hits", str(d / "results" / "hits.star"), "--micrograph",
                 str(d / "mic.mrc"), "--template", str(path), "--omit-selection",
                 "all but resname STR", "--box", str(BOX), "--no-refine", "--quiet",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    meta = json.loads((out / "reconstruct.json").read_text())
    assert meta["n_hits"] == len(res.hits)
    assert meta["omit_template"]["params"]["selection"] == "all but resname STR"
    assert meta["template"]["params"]["center"] == "model"
    parts = starfile.read(out / "particles.star", always_dict=True)["particles"]
    np.testing.assert_allclose(sorted(parts["rlnDefocusU"].unique()), [9000.0])


def test_cancel_leaves_nothing_and_an_old_folder_intact(searched, model, tmp_path):
    """A set cancel event stops refinement and the job with errors.Cancelled; the job folder
    is written only through atomic_dir: no temporary left, an existing folder untouched."""
    import threading

    sim, res, _ = searched
    _, full, _ = model
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        refine_hits(sim.image, PX, full, res.hits, sim.ctf, stages=QUICK, cancel=cancel)
    mics = [MicrographInput(sim.image, PX, sim.ctf, res.hits, "mic0.mrc", res)]
    out = tmp_path / "job"
    seen = []
    cancel = threading.Event()

    def progress(p):
        seen.append(p.step)
        if p.step == "reconstruct":
            cancel.set()

    with pytest.raises(Cancelled):
        run_reconstruct(mics, full, out, JobSettings(box=BOX, refine=False), progress=progress,
                        cancel=cancel)
    assert "reconstruct" in seen and not out.exists()
    assert list(tmp_path.iterdir()) == []
    # an existing job folder is replaced only with overwrite, and survives a cancel
    job, folder = run_reconstruct(mics, None, out, JobSettings(box=BOX, refine=False))
    assert folder == out and (out / "reconstruct.json").exists()
    assert job.summary["template"]["source"] == res.metadata["template"]["source"]
    with pytest.raises(InputError, match="exists"):
        run_reconstruct(mics, full, out, JobSettings(box=BOX, refine=False))
    stamp = (out / "reconstruct.json").read_text()
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        run_reconstruct(mics, full, out, JobSettings(box=BOX, refine=False), overwrite=True,
                        progress=progress, cancel=cancel)
    assert (out / "reconstruct.json").read_text() == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]

