"""The shared job panel: progress reaches the main thread, outcomes are reported once."""

from __future__ import annotations

import threading

from qtpy.QtCore import QThread

from napari_2dtm._napari._job_panel import JobPanel
from napari_2dtm.errors import Cancelled, InputError


def _counting_job(n, *, progress, cancel):
    for i in range(n):
        progress((i + 1) / n)
    return n * 10


def _waiting_job(*, progress, cancel: threading.Event):
    progress(0.0)
    if not cancel.wait(20):
        return "not cancelled"
    raise Cancelled("stopped")


def _failing_job(*, progress, cancel):
    raise InputError("mic.mrc: not an MRC file\nsecond line")


def test_progress_in_main_thread_and_value_returned(qtbot):
    panel = JobPanel(verb="Test")
    qtbot.addWidget(panel)
    seen, threads, returned = [], [], []
    panel.progressed.connect(lambda p: (seen.append(p), threads.append(QThread.currentThread())))
    panel.returned.connect(returned.append)
    with qtbot.waitSignal(panel.finished, timeout=20_000) as sig:
        assert panel.start(_counting_job, 4)
    assert sig.args == ["done"]
    assert returned == [40]
    assert seen == [0.25, 0.5, 0.75, 1.0]
    assert all(t is panel.thread() for t in threads)
    assert not panel.running and panel.run_button.isEnabled()


def test_cancel_and_failure_are_reported(qtbot):
    panel = JobPanel(verb="Test")
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.progressed, timeout=20_000):
        panel.start(_waiting_job)
    assert not panel.start(_counting_job, 1)  # one job at a time
    with qtbot.waitSignal(panel.finished, timeout=20_000) as sig:
        panel.cancel()
    assert sig.args == ["cancelled"]
    assert "cancelled" in panel.status.text()
    with qtbot.waitSignal(panel.finished, timeout=20_000) as sig:
        panel.start(_failing_job)
    assert sig.args == ["error"]
    assert panel.status.text() == "Test failed: mic.mrc: not an MRC file"


def test_out_dir_refuses_existing_folder_unless_replace(qtbot, tmp_path):
    panel = JobPanel()
    qtbot.addWidget(panel)
    panel.output_dir.setText(str(tmp_path))
    try:
        panel.out_dir()
    except InputError as e:
        assert "exists" in str(e)
    else:
        raise AssertionError("an existing folder was accepted without 'replace'")
    panel.overwrite.setChecked(True)
    assert panel.out_dir() == tmp_path
