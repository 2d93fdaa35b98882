"""The run/cancel/progress/output-folder scaffolding every job widget shares.

A :class:`JobPanel` is the bottom of the Search, Classify and Reconstruct widgets: an
output-folder row (folder, browse, "replace an existing folder"), Run and Cancel, a
progress bar and one status line. :meth:`JobPanel.start` runs one job of
:mod:`napari_2dtm.jobs` in a worker thread with the jobs' protocol::

    job(*args, **kwargs, progress=<callable>, cancel=<threading.Event>) -> value

``progress`` may be called from the worker thread; the panel re-emits each record as
:attr:`JobPanel.progressed` in the main thread (a queued Qt signal), so widgets update
layers only there. The outcome arrives in the main thread too: :attr:`returned` with the
job's value, then :attr:`finished` with ``"done"``, ``"cancelled"`` or ``"error"``.
:class:`~napari_2dtm.errors.Cancelled` (or a cancel the job noticed and returned
``None`` for) is ``"cancelled"``; any other exception is ``"error"`` with its first
line in the status line.

The widget owns its inputs and its results; the panel owns the worker's lifecycle.
"""

from __future__ import annotations

import threading
from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_2dtm.errors import Cancelled, InputError, one_line

#: Outcomes emitted by :attr:`JobPanel.finished`.
OUTCOMES = ("done", "cancelled", "error")
#: the style of a status line that reports an error
ERROR_STYLE = "color: #ff6b6b;"


class JobPanel(QWidget):
    """Output folder, Run/Cancel, progress and status of one job at a time.

    Parameters
    ----------
    title:
        Title of the output-folder group box ("Results folder", "Job folder").
    run_text:
        Label of the Run button.
    verb:
        Used in status lines ("Search cancelled", "Reconstruction failed: ...").
    """

    started = Signal()
    progressed = Signal(object)
    returned = Signal(object)
    finished = Signal(str)
    _progress_from_worker = Signal(object)

    def __init__(self, title: str = "Results folder", run_text: str = "Run",
                 verb: str = "Job", parent=None):
        super().__init__(parent)
        self.verb = verb
        self.worker = None
        self.outcome: str | None = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()

        self.output_dir = QLineEdit()
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_output)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.output_dir)
        row.addWidget(browse)
        holder = QWidget()
        holder.setLayout(row)
        self.overwrite = QCheckBox("replace an existing folder")
        self.folder_box = QGroupBox(title)
        form = QFormLayout(self.folder_box)
        form.addRow("Folder", holder)
        form.addRow("", self.overwrite)

        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        self.options = QVBoxLayout()  # widgets add job options shown above Run (checkboxes)
        self.options.setContentsMargins(0, 0, 0, 0)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.folder_box)
        lay.addLayout(self.options)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        self._progress_from_worker.connect(self._on_progress)

    #: the controls a job widget shows under its own names (tests and scripts use them)
    CONTROLS = ("output_dir", "overwrite", "run_button", "cancel_button", "progress", "status")

    def expose_on(self, widget) -> None:
        """Give ``widget`` the panel's :data:`CONTROLS` as attributes of the same names, and
        connect its Run button to ``widget.run``."""
        for name in self.CONTROLS:
            setattr(widget, name, getattr(self, name))
        self.run_button.clicked.connect(widget.run)

    # ---------------------------------------------------------------- inputs
    def out_dir(self) -> Path:
        """The chosen output folder; :class:`InputError` if none is given, or if it exists
        and "replace" is not ticked."""
        text = self.output_dir.text().strip()
        if not text:
            raise InputError("no output folder given")
        path = Path(text)
        if path.exists() and not self.overwrite.isChecked():
            raise InputError(f"{text}: exists; tick 'replace' or choose another folder")
        return path

    def suggest_output(self, base: Path) -> None:
        """Fill the folder field with ``base``, or the first of ``base_2``, ``base_3``, ...
        that does not exist."""
        folder, i = base, 1
        while folder.exists():
            i += 1
            folder = base.with_name(f"{base.name}_{i}")
        self.output_dir.setText(str(folder))

    def _browse_output(self):
        d = QFileDialog.getExistingDirectory(self, "Output folder")
        if d:
            self.output_dir.setText(d)

    # -------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, job, *args, status: str = "Starting…", **kwargs) -> bool:
        """Run ``job(*args, **kwargs, progress=..., cancel=...)`` in a worker thread.

        Returns False (and changes nothing) while another job runs."""
        from napari.qt.threading import create_worker

        if self.running:
            return False
        self._cancel = threading.Event()
        self.outcome = None
        self.error = None
        worker = create_worker(job, *args, progress=self._progress_from_worker.emit,
                               cancel=self._cancel, _ignore_errors=True, **kwargs)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.set_status(status)
        self.started.emit()
        worker.start()
        return True

    def refuse(self, exc: BaseException) -> None:
        """The job could not start (bad input): one line, and ``finished("error")``."""
        self.set_status(f"Cannot start: {one_line(exc)}", error=True)
        self.finished.emit("error")

    def cancel(self):
        """Ask the running job to stop at its next check."""
        if not self.running:
            return
        self._cancel.set()
        self.cancel_button.setEnabled(False)
        self.set_status("Cancelling…")

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout_ms: int = 600_000) -> None:
        """Block (processing Qt events) until the running job has finished (tests)."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        timer = QElapsedTimer()
        timer.start()
        while self.running and timer.elapsed() < timeout_ms:
            QCoreApplication.processEvents()
            threading.Event().wait(0.01)

    # ---------------------------------------------------- display (main thread)
    def set_progress(self, fraction: float, text: str) -> None:
        self.progress.setValue(int(round(1000 * min(max(fraction, 0.0), 1.0))))
        self.progress.setFormat(text)

    def set_status(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet(ERROR_STYLE if error else "")

    # Everything below runs in the main thread (queued signals from the worker).
    def _on_progress(self, record):
        if self.running:
            self.progressed.emit(record)

    def _on_returned(self, value):
        if value is None and self._cancel.is_set():
            self.outcome = "cancelled"
            return
        self.outcome = "done"
        self.returned.emit(value)

    def _on_errored(self, exc):
        if isinstance(exc, Cancelled) or self._cancel.is_set():
            self.outcome = "cancelled"
            return
        self.outcome = "error"
        self.error = exc
        self.set_status(f"{self.verb} failed: {one_line(exc)}", error=True)
        self.progress.setFormat("failed")

    def _on_finished(self):
        outcome = self.outcome or ("cancelled" if self._cancel.is_set() else "error")
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if outcome == "cancelled":
            self.progress.setFormat("cancelled")
            self.set_status(f"{self.verb} cancelled; nothing was saved.")
        self.finished.emit(outcome)
