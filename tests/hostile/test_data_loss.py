"""Data loss (issue 16, cases 1-4 and 11): no run deletes, replaces or hides a user's files.

1. ``--overwrite`` replaces only a folder the project wrote (its marker file) and never
   one that holds an input; 2. ``--overwrite`` gives up an interrupted search's
   checkpoint only once the inputs are good; 3. a second run on the same output is
   refused while the first holds its lock; 4. ``batch`` saves the checkpoint of the
   micrograph in progress on SIGTERM and resumes it; 11. written files and folders have
   the modes the umask gives. Each test shows the files intact afterwards.

A new case is a few lines: make the folder, run the command, ``assert_refused`` and
compare :func:`_snapshot` before and after.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers.hostile import assert_refused, looks_complete
from napari_2dtm import read_results
from napari_2dtm.io.mrc import lock_path_for, output_lock
from napari_2dtm.search.checkpoint import checkpoint_path_for, read_state

#: ``napari-2dtm`` as a separate process (``-m`` would add a runpy warning on stderr)
NAPARI_2DTM = [sys.executable, "-c",
               "import sys; from napari_2dtm.cli.main import main; sys.exit(main())"]


def _snapshot(folder) -> dict:
    """Every file under ``folder``: relative path -> content hash."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _search(cli, case, out, *extra):
    return cli("search", case.mic, "--template", case.tpl, "--out", out, *case.fast, *extra)


@pytest.fixture
def results(case, cli):
    """A finished search of the small case (``case.out``)."""
    code, _, err = _search(cli, case, case.out)
    assert code == 0, err
    return Path(case.out)


def _classify(cli, case, res, out, *extra):
    return cli("classify", res, "-t", case.tpl, "-t", case.tpl, "--out", out, *extra)


def _reconstruct(cli, case, res, out, *extra):
    return cli("reconstruct", "--results", res, "--no-refine", "--out", out, *extra)


# ------------------------------------------------------------------ 1: --overwrite
def test_search_overwrite_of_the_project_folder_is_refused(case, cli):
    before = _snapshot(case.dir)
    code, _, err = _search(cli, case, case.dir, "--overwrite")
    assert_refused(code, err, str(case.dir), "search.json")
    assert _snapshot(case.dir) == before


def test_search_overwrite_of_the_micrograph_is_refused(case, cli):
    before = _snapshot(case.dir)
    code, _, err = _search(cli, case, case.mic, "--overwrite")
    assert_refused(code, err, case.mic, "not a folder")
    assert _snapshot(case.dir) == before


def test_search_overwrite_of_a_results_folder_holding_the_micrograph_is_refused(case, cli,
                                                                                results):
    # A micrograph kept in an old results folder, searched into that folder again.
    mic = results / "input" / "mic.mrc"
    mic.parent.mkdir()
    shutil.copy(case.mic, mic)
    before = _snapshot(results)
    code, _, err = cli("search", mic, "--template", case.tpl, "--out", results, *case.fast,
                       "--overwrite")
    assert_refused(code, err, str(results), "holds the input")
    assert _snapshot(results) == before


def test_search_overwrite_replaces_its_own_results_folder(case, cli, results):
    (results / "note.txt").write_text("old")
    code, _, err = _search(cli, case, results, "--overwrite")
    assert code == 0, err
    assert looks_complete(results) and not (results / "note.txt").exists()
    assert not list(results.parent.glob(f".{results.name}.*"))  # no temporaries, no lock


@pytest.mark.parametrize("run", [_classify, _reconstruct], ids=["classify", "reconstruct"])
def test_overwrite_of_the_project_folder_is_refused_before_any_work(case, cli, results, run):
    before = _snapshot(case.dir)
    code, _, err = run(cli, case, results, case.dir, "--overwrite")
    assert_refused(code, err, str(case.dir))
    assert _snapshot(case.dir) == before


@pytest.mark.parametrize("run", [_classify, _reconstruct], ids=["classify", "reconstruct"])
def test_overwrite_of_an_input_file_or_results_folder_is_refused(case, cli, results, run):
    before = _snapshot(case.dir)
    for out in (case.mic, results):
        code, _, err = run(cli, case, results, out, "--overwrite")
        assert_refused(code, err, str(out))
    assert _snapshot(case.dir) == before


def test_reconstruct_overwrite_of_its_own_folder_holding_the_template_is_refused(case, cli,
                                                                                results):
    job = case.dir / "job"
    job.mkdir()
    (job / "reconstruct.json").write_text("{}")
    tpl = job / "tpl.mrc"
    shutil.copy(case.tpl, tpl)
    before = _snapshot(job)
    code, _, err = cli("reconstruct", "--results", results, "-t", tpl, "--no-refine", "--out",
                       job, "--overwrite")
    assert_refused(code, err, str(job), "holds the input")
    assert _snapshot(job) == before


def test_batch_into_a_folder_with_a_users_summary_is_refused(case, cli):
    project = case.dir / "project"
    project.mkdir()
    (project / "summary.csv").write_text("my own table\n")
    code, _, err = cli("batch", case.mic, "-t", case.tpl, "--out", project, "--workers", "0",
                       *case.fast)
    assert_refused(code, err, str(project), "summary.csv")
    assert (project / "summary.csv").read_text() == "my own table\n"


# ------------------------------------------------------------------ 2: the checkpoint
def test_overwrite_with_a_typo_keeps_the_interrupted_search(case, cli):
    ckpt = checkpoint_path_for(case.out)
    ckpt.write_bytes(b"an interrupted search")
    for bad in (("search", case.dir / "typo.mrc", "--template", case.tpl),
                ("search", case.mic, "--template", case.dir / "typo_tpl.mrc")):
        code, _, err = cli(*bad, "--out", case.out, *case.fast, "--overwrite")
        assert_refused(code, err, "typo")
        assert ckpt.read_bytes() == b"an interrupted search"


def test_overwrite_with_good_inputs_starts_over(case, cli):
    ckpt = checkpoint_path_for(case.out)
    ckpt.write_bytes(b"an interrupted search")
    code, _, err = _search(cli, case, case.out, "--overwrite")
    assert code == 0, err
    assert looks_complete(case.out) and not ckpt.exists()


# ------------------------------------------------------------------ 3: one run per output
@contextlib.contextmanager
def _another_run_holds(out):
    """Hold ``out``'s lock from another thread, as a run in progress does."""
    taken, release = threading.Event(), threading.Event()

    def hold():
        with output_lock(out):
            taken.set()
            release.wait(60)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert taken.wait(10)
    try:
        yield
    finally:
        release.set()
        t.join()


def test_a_second_search_on_the_same_out_is_refused(case, cli):
    with _another_run_holds(case.out):
        code, _, err = _search(cli, case, case.out)
        assert_refused(code, err, case.out, "another napari-2dtm run")
        assert not Path(case.out).exists() and not checkpoint_path_for(case.out).exists()
    code, _, err = _search(cli, case, case.out)  # the lock goes with the run
    assert code == 0, err


def test_a_second_run_on_a_running_output_is_refused(case, cli, results):
    runs = {
        "classify": lambda out: _classify(cli, case, results, out),
        "reconstruct": lambda out: _reconstruct(cli, case, results, out),
        "batch": lambda out: cli("batch", case.mic, "-t", case.tpl, "--out", out, "--workers",
                                 "0", *case.fast),
    }
    for name, run in runs.items():
        out = case.dir / name
        with _another_run_holds(out):
            code, _, err = run(out)
            assert_refused(code, err, str(out), "another napari-2dtm run")
            assert not out.exists(), name


def test_two_real_searches_at_once_one_is_refused_the_other_completes(case, tmp_path):
    out = tmp_path / "shared"
    cmd = [*NAPARI_2DTM, "search", case.mic, "--template",
           case.tpl, "--out", str(out), *case.fast[:-6], "--defocus1", "10000",
           "--defocus-range", "400", "--defocus-step", "100", "--device", "cpu"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        while not lock_path_for(out).exists() and first.poll() is None:
            assert time.monotonic() - t0 < 60
            time.sleep(0.02)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert first.wait(120) == 0, first.stderr.read().decode()
    finally:
        if first.poll() is None:
            first.kill()
    assert not lock_path_for(out).exists()  # removed with the lock
    if second.returncode == 0:
        pytest.skip("the first search finished before the second started")
    assert_refused(second.returncode, second.stderr, str(out), "another napari-2dtm run")
    assert looks_complete(out)
    assert len(read_results(out).hits) >= 1


# ------------------------------------------------------------------ 4: batch and SIGTERM
@pytest.mark.parametrize("workers", ["0", "1"], ids=["in-process", "dask"])
def test_batch_saves_a_checkpoint_on_sigterm_and_resumes(case, tmp_path, workers):
    out = tmp_path / "batch"
    cmd = [*NAPARI_2DTM, "batch", case.mic, "-t", case.tpl,
           "--out", str(out), "--workers", workers, "--out-of-plane-step", "6",
           "--in-plane-step", "6", "--high-res-limit", "12", "--defocus1", "10000",
           "--device", "cpu", "--checkpoint-interval", "1000"]
    env = dict(os.environ, NAPARI_2DTM_WORKERS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    mic_lock = lock_path_for(out / "mic")  # taken by the micrograph's search
    try:
        t0 = time.monotonic()
        while not mic_lock.exists() and proc.poll() is None:
            assert time.monotonic() - t0 < 120, "the search never started"
            time.sleep(0.05)
        time.sleep(1.0)  # well into the search (no periodic checkpoint before 1000 s)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    ckpt = checkpoint_path_for(out / "mic")
    assert ckpt.is_file(), err
    saved = read_state(ckpt)["n_cc"]
    assert saved > 0 and not (out / "mic").exists()
    cmd[cmd.index("--checkpoint-interval") + 1] = "0"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    res = read_results(out / "mic")
    assert res.metadata["resumed_from_cc"] == saved
    assert not ckpt.exists()
    assert json.loads((out / "summary.json").read_text())[0]["status"] == "done"


# ------------------------------------------------------------------ 11: the umask
def test_files_and_folders_honour_the_umask(case, cli):
    old = os.umask(0o022)
    try:
        code, _, err = _search(cli, case, case.out)
    finally:
        os.umask(old)
    assert code == 0, err
    out = Path(case.out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    for p in out.rglob("*"):
        if p.is_dir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o755, p
