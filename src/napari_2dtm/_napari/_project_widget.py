"""The "2DTM Project" dock widget: review a batch of micrographs image by image.

Open a batch folder (written by ``napari-2dtm batch``, or any folder of results
folders): the table lists every micrograph with its status (done, failed, interrupted
with the fraction done, pending), its hit count and, when a classification job folder
exists for it, the hits per class. A bar plot shows the hits per micrograph (click a bar
to open that micrograph). Opening a micrograph replaces the layers of the previous one
with its results folder as this plugin's reader reads it: the micrograph, the z-score
and SNR maps (every map with "all maps") and the hits, on which the 2DTM Hits widget
is docked. Fewer layers make switching images fast (napari pays per layer removed).

Keys: ``Page Down`` / ``Page Up`` open the next / previous finished micrograph (in the
viewer and in this panel); in the table, arrows move and ``Enter`` opens.

The widget only reads folders (:mod:`._project_data`: the batch status and class
counts); while some micrographs are not finished it re-reads the folder every few
seconds, so a running batch can be followed. The table and the plot (:mod:`._project_views`)
only draw; this class owns the navigation and the layers of the open micrograph.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from qtpy.QtCore import QEvent, Qt, QTimer, Signal
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QShortcut,
    QVBoxLayout,
    QWidget,
)

from napari_2dtm.errors import one_line

from ._hits_dock import review_hits
from ._project_data import PROJECT_COLUMNS, project_summary, read_project
from ._project_views import HitsPerImagePlot, MicrographTable
from ._reader import results_layers

if TYPE_CHECKING:
    import napari

NEXT_KEY, PREVIOUS_KEY = "PageDown", "PageUp"
REVIEW_MAPS = ("zbg", "zscore", "snr")  # maps opened without "all maps"
REFRESH_MS = 5000


class ProjectWidget(QWidget):
    """Dock widget listing the micrographs of a batch folder (see the module docstring).

    Signals: ``folder_loaded(str)`` after a folder was (re)read, ``image_opened(str)``
    with the micrograph name once its layers are in the viewer.
    """

    folder_loaded = Signal(str)
    image_opened = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.folder: Path | None = None
        self.table_data = pd.DataFrame(columns=PROJECT_COLUMNS)
        self.current: int | None = None
        self._opened: list = []
        self._opened_name: str | None = None

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        row = QHBoxLayout()
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("batch folder (napari-2dtm batch --out)")
        self.folder_edit.returnPressed.connect(lambda: self.set_folder(self.folder_edit.text()))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        row.addWidget(self.refresh_button)
        layout.addLayout(row)

        self.summary_label = QLabel("No folder open.")
        self.summary_label.setWordWrap(True)
        layout.addWidget(self.summary_label)

        self.table = MicrographTable()
        self.table.installEventFilter(self)  # Page Up/Down: images, not table pages
        self.table.itemActivated.connect(lambda item: self.open_image(item.row()))
        self.table.itemDoubleClicked.connect(lambda item: self.open_image(item.row()))
        layout.addWidget(self.table, 3)

        nav = QHBoxLayout()
        self.prev_button = QPushButton("◀ Previous")
        self.prev_button.setToolTip("open the previous finished micrograph (Page Up)")
        self.prev_button.clicked.connect(self.previous_image)
        self.open_button = QPushButton("Open")
        self.open_button.setToolTip("open the selected micrograph (Enter, double-click)")
        self.open_button.clicked.connect(self._open_selected)
        self.next_button = QPushButton("Next ▶")
        self.next_button.setToolTip("open the next finished micrograph (Page Down)")
        self.next_button.clicked.connect(self.next_image)
        for b in (self.prev_button, self.open_button, self.next_button):
            nav.addWidget(b)
        self.all_maps = QCheckBox("all maps")
        self.all_maps.setToolTip("open every map of the results folder, not only z-score and SNR")
        nav.addWidget(self.all_maps)
        layout.addLayout(nav)

        self.plot = HitsPerImagePlot()
        self.plot.canvas.mpl_connect("button_press_event", self._on_plot_click)
        layout.addWidget(self.plot.canvas, 2)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        for key, fn in ((QKeySequence.MoveToNextPage, self.next_image),
                        (QKeySequence.MoveToPreviousPage, self.previous_image)):
            sc = QShortcut(QKeySequence(key), self)
            sc.setContext(Qt.WidgetWithChildrenShortcut)
            sc.activated.connect(fn)
        self._bind_keys()
        self._timer = QTimer(self)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self.refresh)

    # ------------------------------------------------------------------ folder
    def _browse(self):
        d = QFileDialog.getExistingDirectory(self, "Batch folder", str(self.folder or Path.cwd()))
        if d:
            self.set_folder(d)

    def set_folder(self, folder) -> bool:
        """Read a batch folder; returns False (and says why) if it holds no micrographs."""
        folder = Path(str(folder)).expanduser()
        self.folder_edit.setText(str(folder))
        if not folder.is_dir():
            self._set_status(f"{folder}: folder not found", error=True)
            return False
        try:
            data = read_project(folder)
        except Exception as e:
            self._set_status(f"Cannot read {folder}: {one_line(e)}", error=True)
            return False
        if data.empty:
            self._set_status(f"{folder}: no micrographs (not a batch folder: no summary.csv, "
                             "batch.json or results folders)", error=True)
            return False
        if self.folder != folder:
            self.current = None
        self.folder = folder
        self._show(data)
        self._set_status(f"{len(data)} micrographs in {folder.name}. Page Down / Page Up: "
                         "next / previous micrograph.")
        self.folder_loaded.emit(str(folder))
        return True

    def refresh(self):
        """Re-read the folder (status, hits, classes), keeping the selection."""
        if self.folder is None:
            return
        try:
            self._show(read_project(self.folder))
        except Exception as e:  # the folder vanished or is being rewritten: try again later
            self._set_status(f"Cannot read {self.folder}: {one_line(e)}", error=True)

    def _show(self, data: pd.DataFrame):
        self.table_data = data
        self.table.show_project(data)
        self.summary_label.setText(project_summary(data))
        self.plot.update(data, self.current)
        unfinished = any(s in ("pending", "interrupted") for s in data["status"])
        if unfinished and not self._timer.isActive():
            self._timer.start()
        elif not unfinished:
            self._timer.stop()

    # -------------------------------------------------------------- navigation
    def selected_row(self) -> int | None:
        return self.table.selected_row()

    def _open_selected(self):
        r = self.selected_row()
        if r is not None:
            self.open_image(r)

    def _done_rows(self) -> list[int]:
        return [i for i, s in enumerate(self.table_data["status"]) if s == "done"]

    def next_image(self, *_):
        """Open the next finished micrograph after the current (or selected) one."""
        return self._step(+1)

    def previous_image(self, *_):
        """Open the previous finished micrograph."""
        return self._step(-1)

    def _step(self, d: int) -> bool:
        done = self._done_rows()
        if not done:
            self._set_status("No finished micrograph to open yet.")
            return False
        here = self.current if self.current is not None else self.selected_row()
        if here is None:
            target = done[0] if d > 0 else done[-1]
        else:
            later = [i for i in done if (i - here) * d > 0]
            if not later:
                self._set_status("Last finished micrograph." if d > 0 else
                                 "First finished micrograph.")
                return False
            target = later[0] if d > 0 else later[-1]
        return self.open_image(target)

    def open_image(self, row: int) -> bool:
        """Replace the layers of the open micrograph by those of micrograph ``row``."""
        if not 0 <= row < len(self.table_data):
            return False
        r = self.table_data.iloc[row]
        if r["status"] != "done" or not r["results"]:
            why = f": {r['error']}" if r["status"] == "failed" and r["error"] else ""
            self._set_status(f"{r['name']} is {r['status']}{why}; nothing to open yet.",
                             error=r["status"] == "failed")
            self.table.selectRow(row)
            return False
        self._close_current()
        try:
            layers, hits_name = self._add_result_layers(Path(r["results"]))
        except Exception as e:
            self._set_status(f"Cannot open {r['name']}: {one_line(e)}", error=True)
            return False
        self._opened = layers
        self._opened_name = self._micrograph_label(layers, r["name"])
        if hits_name:
            self._review(hits_name, Path(r["results"]))
        self.current = row
        self.table.selectRow(row)
        self.table.scrollToItem(self.table.item(row, 0))
        self.plot.update(self.table_data, row)
        self.viewer.reset_view()
        n = r["n_hits"]
        hits = "" if n is None or pd.isna(n) else f", {int(n)} hits"
        self._set_status(f"{row + 1}/{len(self.table_data)}: {r['name']}{hits}.")
        self.image_opened.emit(str(r["name"]))
        return True

    def _add_result_layers(self, folder: Path):
        """Add the layers of a results folder (reader's layer data); returns them and the
        name of the hits layer."""
        added, hits_name = [], None
        for data, kwargs, kind in results_layers(folder):
            info = kwargs.get("metadata", {}).get("napari_2dtm", {})
            if (info.get("kind") == "map" and not self.all_maps.isChecked()
                    and info.get("map") not in REVIEW_MAPS):
                continue
            added.append(getattr(self.viewer, f"add_{kind}")(data, **kwargs))
            if info.get("kind") == "hits":
                hits_name = kwargs["name"]
        return added, hits_name

    def _review(self, hits_name: str, folder: Path):
        """Dock the 2DTM Hits widget on the opened hits."""
        try:
            review_hits(self.viewer, hits_name, folder=folder)
        except Exception as e:  # the panel still works without the review
            self._set_status(f"Hits widget: {one_line(e)}", error=True)

    @staticmethod
    def _micrograph_label(layers, default: str) -> str:
        for ly in layers or []:
            if ly.name.startswith("hits [") and ly.name.endswith("]"):
                return ly.name[len("hits ["):-1]
        return default

    def _close_current(self):
        """Remove the layers of the micrograph opened before (and those made for it,
        e.g. the hits review layer), keeping memory flat over a long review."""
        if self._opened_name is None:
            return
        tag = f"[{self._opened_name}]"
        # by name: a plugin's viewer hands out proxies, not the layer objects themselves
        opened = {ly.name for ly in self._opened}
        gone = [ly.name for ly in self.viewer.layers if ly.name in opened or ly.name.endswith(tag)]
        # one batch: napari then cleans the canvas (gc.collect) once, not once per layer
        batch = getattr(self.viewer.layers, "batched_update", contextlib.nullcontext)
        with batch():
            for name in gone:
                self.viewer.layers.remove(name)
        self._opened = []
        self._opened_name = None

    def _on_plot_click(self, event):
        if event.inaxes is not self.plot.ax or event.xdata is None:
            return
        i = int(round(event.xdata))
        if 0 <= i < self.plot.n_bars:
            self.open_image(i)

    # ------------------------------------------------------------------- keys
    def _bind_keys(self):
        self.viewer.bind_key(NEXT_KEY, self._key_next, overwrite=True)
        self.viewer.bind_key(PREVIOUS_KEY, self._key_previous, overwrite=True)

    def _unbind_keys(self):
        for key in (NEXT_KEY, PREVIOUS_KEY):
            try:
                self.viewer.bind_key(key, None, overwrite=True)
            except (TypeError, ValueError, KeyError):
                pass

    def _key_next(self, _viewer=None):
        self.next_image()

    def _key_previous(self, _viewer=None):
        self.previous_image()

    def eventFilter(self, obj, event):  # noqa: N802 (Qt name)
        if obj is self.table and event.type() == QEvent.KeyPress:
            if event.key() == Qt.Key_PageDown:
                self.next_image()
                return True
            if event.key() == Qt.Key_PageUp:
                self.previous_image()
                return True
        return super().eventFilter(obj, event)

    def _set_status(self, text: str, error: bool = False):
        self.status.setText(text)
        self.status.setStyleSheet("color: #e05050;" if error else "")

    def closeEvent(self, event):  # noqa: N802 (Qt name)
        self._timer.stop()
        self._unbind_keys()
        super().closeEvent(event)
