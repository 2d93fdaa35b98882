"""Checkpoint / resume of a search killed mid-way, and orientation shards merged.

The resume test kills a real ``napari-2dtm search`` process with SIGKILL once it has
written a checkpoint (about a third of the way), resumes it from the command line and
from the Python API, and compares every map and the hits with an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers.planting import match, plant, structure
from napari_2dtm import CTFParams, Search, SearchConfig, read_results, search
from napari_2dtm.cli.main import main
from napari_2dtm.errors import InputError, SearchCancelled
from napari_2dtm.io.mrc import write_mrc
from napari_2dtm.search.checkpoint import (
    checkpoint_path_for,
    load_partial,
    merge_partials,
    read_state,
    shard_ranges,
)

PX = 4.0
DEFOCUS = 10000.0


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from napari_2dtm.templates.model import template_from_model

    d = tmp_path_factory.mktemp("resume")
    tpl = template_from_model(structure("1BD2"), PX)
    img, truth = plant(tpl, (224, 224), 3, CTFParams(defocus1_a=DEFOCUS), target_snr=20.0, seed=5)
    write_mrc(d / "mic.mrc", img, PX)
    write_mrc(d / "tpl.mrc", tpl.volume, PX)
    return d, img, tpl, truth


def _args(d, out, *extra, grid="20"):
    return ["search", str(d / "mic.mrc"), "--template", str(d / "tpl.mrc"), "--defocus1",
            str(DEFOCUS), "--out-of-plane-step", grid, "--in-plane-step", grid,
            "--defocus-range", "200", "--defocus-step", "200", "--device", "cpu",
            "--out", str(out), *extra]


ENGINE_MAPS = {"mip", "zscore", "snr", "mean", "std", "phi", "theta", "psi", "defocus",
               "defocus_offset"}


def _assert_same_results(a, b):
    assert ENGINE_MAPS <= set(a.maps) and ENGINE_MAPS <= set(b.maps)
    for k in ENGINE_MAPS:
        np.testing.assert_allclose(a.maps[k], b.maps[k], rtol=1e-6, atol=1e-6 * np.abs(b.maps[k]).max(),
                                   err_msg=k)
    assert len(a.hits) == len(b.hits)
    for col in ("x", "y", "phi", "theta", "psi", "defocus_a", "zscore"):
        np.testing.assert_allclose(a.hits[col], b.hits[col], rtol=1e-6, err_msg=col)


def test_killed_search_resumes_to_the_same_maps(case, tmp_path, capsys):
    d, _, _, truth = case
    out = tmp_path / "killed"
    ckpt = checkpoint_path_for(out)
    env = dict(os.environ, NAPARI_2DTM_WORKERS="2")
    proc = subprocess.Popen([sys.executable, "-m", "napari_2dtm.cli.main",
                             *_args(d, out, "--checkpoint-interval", "0.3")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = None
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 120 and proc.poll() is None:
            if ckpt.exists():
                state = read_state(ckpt)
                total = state["info"]["n_orientations_total"] * 3
                if state["n_cc"] >= 0.25 * total:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, f"search ended before the kill: {proc.stderr.read().decode()}"
        proc.send_signal(signal.SIGKILL)  # no chance to clean up: a real crash
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # results only appear complete
    killed_at = read_state(ckpt)
    frac = killed_at["n_cc"] / total
    assert 0.2 < frac < 0.9, frac
    keep = tmp_path / "copy.checkpoint.npz"
    shutil.copy(ckpt, keep)

    # Without --resume the CLI refuses to start over silently.
    assert main(_args(d, out)) == 2
    assert "--resume" in capsys.readouterr().err
    # A different search is refused, naming what differs.
    assert main(_args(d, out, "--resume", grid="18")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different search" in err[0] and "step_deg" in err[0], err

    assert main(_args(d, out, "--resume")) == 0
    assert "resuming from" in capsys.readouterr().err
    assert not ckpt.exists()  # removed once the results are written
    resumed = read_results(out)

    # The same FFT library in the killed process, its resume and this one: the machine's
    # cache remembers the timed choice (libraries round differently: near-tied planes).
    lib = killed_at["info"]["fft"]["library"]
    assert resumed.metadata["fft"]["library"] == lib
    ref_out = tmp_path / "uninterrupted"
    assert main(_args(d, ref_out, "--checkpoint-interval", "0")) == 0
    ref = read_results(ref_out)
    assert ref.metadata["fft"]["library"] == lib
    _assert_same_results(resumed, ref)
    assert len(match(ref.hits, truth, 3)) >= 2  # a coarse grid: not every particle
    # the resumed process did only the remaining work
    assert resumed.metadata["resumed_from_cc"] == killed_at["n_cc"]

    # The Python API resumes the same checkpoint (micrograph re-read from its path).
    s = Search.resume(keep)
    assert s.micrograph_path == str(d / "mic.mrc")
    for _ in s.run():
        pass
    _assert_same_results(s.result, ref)


def test_cancel_saves_and_search_continues_in_process(case, tmp_path):
    _, img, tpl, _ = case
    cfg = SearchConfig(ctf=CTFParams(defocus1_a=DEFOCUS), out_of_plane_step_deg=20,
                       in_plane_step_deg=20, batch_size=16, progress_interval_s=0.0,
                       checkpoint_interval_s=1e9, device="cpu")
    ckpt = tmp_path / "c.npz"
    s = Search(img, PX, tpl, cfg, checkpoint=ckpt)
    with pytest.raises(SearchCancelled):
        for p in s.run():
            if p.fraction > 0.3:
                s.cancel()
    st = read_state(ckpt)  # the interval is huge: this was written by cancel()
    assert 0.3 < st["n_cc"] / s.n_cc_total < 1
    # a different template is refused
    with pytest.raises(InputError, match="different search"):
        Search(img, PX, tpl.volume[::-1].copy(), cfg, checkpoint=ckpt)
    # batch size is taken from the checkpoint: same boundaries
    res = search(img, PX, tpl, SearchConfig(**{**cfg.__dict__, "batch_size": 5}), checkpoint=ckpt)
    assert not ckpt.exists()
    ref = search(img, PX, tpl, cfg)
    _assert_same_results(res, ref)


def test_orientation_shards_merge_to_the_single_search(case, tmp_path):
    _, img, tpl, truth = case
    cfg = SearchConfig(ctf=CTFParams(defocus1_a=DEFOCUS), out_of_plane_step_deg=20,
                       in_plane_step_deg=20, defocus_range_a=200, defocus_step_a=200,
                       device="cpu")
    full = Search(img, PX, tpl, cfg)
    ref = search(img, PX, tpl, cfg)
    ranges = shard_ranges(full.n_orientations_total, 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == full.n_orientations_total
    parts = []
    for k, r in enumerate(ranges[::-1]):  # any order
        s = Search(img, PX, tpl, SearchConfig(**{**cfg.__dict__, "orientation_range": r}),
                   checkpoint=tmp_path / f"shard{k}.npz")
        for _ in s.run():
            pass
        assert s.n_cc_total == (r[1] - r[0]) * 3
        parts.append(load_partial(tmp_path / f"shard{k}.npz"))
    merged = merge_partials(parts)
    assert merged.n_cc == full.n_cc_total
    res = full.result_from_partial(merged)
    _assert_same_results(res, ref)
    assert len(match(res.hits, truth, 3)) >= 2
    np.testing.assert_array_equal(res.maps["mip"], ref.maps["mip"])  # max is exact
    # overlapping or foreign partials are refused
    with pytest.raises(InputError, match="overlapping"):
        merge_partials([parts[0], parts[0]])
    with pytest.raises(InputError, match="incomplete"):
        full.result_from_partial(merge_partials(parts[:2]))
    other = Search(img[::-1].copy(), PX, tpl, SearchConfig(**{**cfg.__dict__,
                                                              "orientation_range": ranges[0]}))
    with pytest.raises(InputError, match="different searches"):
        merge_partials([parts[0], other.partial()])
