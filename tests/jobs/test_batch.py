"""Batch search: per-micrograph CTF, a corrupt micrograph, skip-done / retry-failed, and
a dask LocalCluster (2 worker processes, orientation shards) giving the same maps as
the single-process run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers.planting import match, plant, structure
from napari_2dtm import CTFParams, read_results
from napari_2dtm.cli.main import main
from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import write_mrc
from napari_2dtm.jobs.batch import (
    CTFSource,
    batch_status,
    find_micrographs,
    read_summary,
    run_batch,
)
from napari_2dtm.search.config import SearchConfig

PX = 4.0
DEFOCI = {"mic_a": 8000.0, "mic_b": 10000.0, "mic_c": 12500.0}
ENGINE_MAPS = ("mip", "zscore", "snr", "mean", "std", "phi", "theta", "psi", "defocus")


def _ctffind_text(defocus):
    return ("# Output from CTFFind version 4.1.14\n"
            f"# Pixel size: {PX:.3f} Angstroms ; acceleration voltage: 300.0 keV ; spherical "
            "aberration: 2.70 mm ; amplitude contrast: 0.07\n"
            "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; "
            "#4 - azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross "
            "correlation; #7 - spacing\n"
            f"1.000000 {defocus:.1f} {defocus:.1f} 0.0 0.000000 0.09 8.0\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Three planted micrographs with their own defocus (CTFFIND files), one corrupt."""
    from napari_2dtm.templates.model import template_from_model

    d = tmp_path_factory.mktemp("batch")
    (d / "mics").mkdir()
    (d / "ctf").mkdir()
    tpl = template_from_model(structure("1BD2"), PX)
    write_mrc(d / "tpl.mrc", tpl.volume, PX)
    truth = {}
    for k, (name, df) in enumerate(DEFOCI.items()):
        img, t = plant(tpl, (160, 160), 2, CTFParams(defocus1_a=df), target_snr=25.0, seed=10 + k)
        write_mrc(d / "mics" / f"{name}.mrc", img, PX)
        (d / "ctf" / f"{name}_diag.txt").write_text(_ctffind_text(df))
        (d / "ctf" / f"{name}_diag_avrot.txt").write_text("# not a result file\n")
        truth[name] = t
    (d / "mics" / "mic_bad.mrc").write_bytes(b"MRC? no: a truncated download\n" * 10)
    (d / "ctf" / "mic_bad.txt").write_text(_ctffind_text(10000.0))
    return d, tpl, truth


def _cfg():
    return SearchConfig(out_of_plane_step_deg=20, in_plane_step_deg=20, device="cpu",
                        checkpoint_interval_s=60)


def test_ctf_sources(project, tmp_path):
    d, *_ = project
    src = CTFSource(ctffind_dir=d / "ctf")
    p, px = src.for_micrograph(d / "mics" / "mic_b.mrc")
    assert p.defocus1_a == 10000.0 and px == PX  # mic_b_diag.txt, not *_avrot.txt
    with pytest.raises(InputError, match="no CTFFIND file"):
        src.for_micrograph(d / "mics" / "other.mrc")
    star = tmp_path / "micrographs_ctf.star"
    star.write_text(
        "data_optics\nloop_\n_rlnOpticsGroup #1\n_rlnVoltage #2\n_rlnSphericalAberration #3\n"
        "_rlnAmplitudeContrast #4\n_rlnMicrographPixelSize #5\n1 200.0 2.7 0.1 4.0\n\n"
        "data_micrographs\nloop_\n_rlnMicrographName #1\n_rlnOpticsGroup #2\n_rlnDefocusU #3\n"
        "_rlnDefocusV #4\n_rlnDefocusAngle #5\n"
        "MotionCorr/job002/mic_a.mrc 1 8100.0 7900.0 30.0\n"
        "MotionCorr/job002/mic_c.mrc 1 12600.0 12400.0 -15.0\n")
    s = CTFSource(star=star)
    p, px = s.for_micrograph(d / "mics" / "mic_c.mrc")
    assert (p.defocus1_a, p.defocus2_a, p.astigmatism_angle_deg) == (12600.0, 12400.0, -15.0)
    assert p.voltage_kv == 200.0 and p.amplitude_contrast == 0.1 and px == 4.0
    with pytest.raises(InputError, match="not listed"):
        s.for_micrograph(d / "mics" / "mic_b.mrc")
    assert [m.name for m in find_micrographs([d / "mics"])] == [
        "mic_a.mrc", "mic_b.mrc", "mic_bad.mrc", "mic_c.mrc"]
    assert len(find_micrographs([str(d / "mics" / "mic_[ab].mrc")])) == 2
    with pytest.raises(InputError, match="no file matches"):
        find_micrographs([str(d / "none" / "*.mrc")])


def test_batch_serial_then_dask_cluster_identical(project, tmp_path, capsys):
    d, tpl, truth = project
    # --- single process, from the command line ---
    serial = tmp_path / "serial"
    rc = main(["batch", str(d / "mics"), "--template", str(d / "tpl.mrc"), "--ctffind-dir",
               str(d / "ctf"), "--out-of-plane-step", "20", "--in-plane-step", "20",
               "--device", "cpu", "--workers", "0", "--out", str(serial)])
    err = capsys.readouterr().err
    assert rc == 1  # one micrograph failed
    assert "mic_bad: FAILED" in err and "not a readable MRC file" in err
    s = read_summary(serial).set_index("name")
    assert list(s["status"]) == ["done", "done", "failed", "done"]
    assert "mic_bad.mrc" in s.loc["mic_bad", "error"]
    js = json.loads((serial / "summary.json").read_text())
    assert {r["name"] for r in js} == set(DEFOCI) | {"mic_bad"}
    found = 0
    for name, df in DEFOCI.items():
        r = read_results(serial / name)
        assert r.metadata["config"]["ctf"]["defocus1_a"] == df  # its own CTFFIND file
        assert s.loc[name, "n_hits"] == len(r.hits)
        n = len(match(r.hits, truth[name], 3))
        assert n >= 1, name
        found += n
    assert found >= 5  # of 6 planted particles, on a coarse 20 degree grid

    # --- dask LocalCluster, 2 worker processes, each search split in 2 orientation shards ---
    dist = tmp_path / "dask"
    summary, folder = run_batch(find_micrographs([d / "mics"]), dist, d / "tpl.mrc", _cfg(),
                        ctf=CTFSource(ctffind_dir=d / "ctf"), workers=2, threads_per_worker=1,
                        shards=2)
    assert folder == dist
    assert list(summary["status"]) == ["done", "done", "failed", "done"]
    assert "not a readable MRC file" in summary.set_index("name").loc["mic_bad", "error"]
    for name in DEFOCI:
        a, b = read_results(serial / name), read_results(dist / name)
        for k in ENGINE_MAPS:
            np.testing.assert_allclose(b.maps[k], a.maps[k], rtol=1e-6,
                                       atol=1e-6 * np.abs(a.maps[k]).max(), err_msg=f"{name} {k}")
        pd.testing.assert_frame_equal(b.hits[["x", "y", "phi", "theta", "psi"]],
                                      a.hits[["x", "y", "phi", "theta", "psi"]])
        assert not (dist / f".{name}.shards").exists()  # shard files merged and removed

    # --- run again: done ones skipped, the failed one stays failed until --retry-failed ---
    again, _ = run_batch(find_micrographs([d / "mics"]), dist, d / "tpl.mrc", _cfg(),
                      ctf=CTFSource(ctffind_dir=d / "ctf"))
    assert list(again["status"]) == ["skipped", "skipped", "failed", "skipped"]
    st = batch_status(dist)
    assert list(st["status"]) == ["done", "done", "failed", "done"]
    img, _ = plant(tpl, (160, 160), 2, CTFParams(defocus1_a=10000.0), 25.0, seed=99)
    write_mrc(d / "mics" / "mic_bad.mrc", img, PX)  # the file is fixed
    try:
        fixed, _ = run_batch(find_micrographs([d / "mics"]), dist, d / "tpl.mrc", _cfg(),
                          ctf=CTFSource(ctffind_dir=d / "ctf"), retry_failed=True)
    finally:
        (d / "mics" / "mic_bad.mrc").write_bytes(b"MRC? no: a truncated download\n" * 10)
    assert list(fixed["status"]) == ["skipped", "skipped", "done", "skipped"]
    # other settings in the same batch folder are refused
    with pytest.raises(InputError, match="other settings"):
        run_batch(find_micrographs([d / "mics"]), dist, d / "tpl.mrc",
                  SearchConfig(out_of_plane_step_deg=15, in_plane_step_deg=20, device="cpu"))


def test_cancelled_batch_raises_and_leaves_no_results(project, tmp_path):
    import threading

    from napari_2dtm.errors import Cancelled

    d, *_ = project
    cancel = threading.Event()
    cancel.set()
    rows = []
    with pytest.raises(Cancelled):
        run_batch(find_micrographs([d / "mics" / "mic_a.mrc"]), tmp_path / "b", d / "tpl.mrc",
                  _cfg(), ctf=CTFSource(ctffind_dir=d / "ctf"), workers=0, progress=rows.append,
                  cancel=cancel)
    assert rows == []
    assert not (tmp_path / "b" / "mic_a").exists()
    assert list(read_summary(tmp_path / "b")["status"]) == []
