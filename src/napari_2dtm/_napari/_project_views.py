"""Views of the "2DTM Project" widget: the micrograph table and the hits-per-image plot.

Both draw a project table (:func:`._project_data.read_project`) and hold nothing else;
rows and bars are in the table's order, so a row index is a bar index is a micrograph.
Colours say the status (``STATUS_COLOR``); the plot is dark like napari's default theme
and the Hits widget's plots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from ._hits_views import _style_axes

COLUMNS = ["Micrograph", "Status", "Hits", "Classes"]
STATUS_COLOR = {"done": "#3fbf5f", "failed": "#e05050", "interrupted": "#e0a030",
                "pending": "#909090"}


class MicrographTable(QTableWidget):
    """One row per micrograph: name, status, hits, hits per class (single selection)."""

    def __init__(self):
        super().__init__(0, len(COLUMNS))
        self.setHorizontalHeaderLabels(COLUMNS)
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        hdr = self.horizontalHeader()
        hdr.setSectionResizeMode(0, QHeaderView.Stretch)
        for c in range(1, len(COLUMNS)):
            hdr.setSectionResizeMode(c, QHeaderView.ResizeToContents)

    def selected_row(self) -> int | None:
        rows = self.selectionModel().selectedRows() if self.selectionModel() else []
        return rows[0].row() if rows else None

    def show_project(self, data: pd.DataFrame):
        """List the micrographs of ``data``, keeping the selected row.

        Tooltips: the error of a failed micrograph, else its file.
        """
        selected = self.selected_row()
        self.setRowCount(len(data))
        for i, r in enumerate(data.itertuples(index=False)):
            status = r.status
            if status == "interrupted" and r.fraction is not None and np.isfinite(r.fraction):
                status = f"interrupted ({100 * r.fraction:.0f}%)"
            hits = "" if r.n_hits is None or pd.isna(r.n_hits) else str(int(r.n_hits))
            classes = ", ".join(f"{k} {v}" for k, v in r.classes.items()) if r.classes else ""
            tip = r.error if r.status == "failed" and r.error else (r.micrograph or r.name)
            for c, text in enumerate([r.name, status, hits, classes]):
                item = QTableWidgetItem(text)
                if c == 1:
                    item.setForeground(QColor(STATUS_COLOR.get(r.status, "#909090")))
                if c == 2:
                    item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
                item.setToolTip(str(tip))
                self.setItem(i, c, item)
        if selected is not None and selected < len(data):
            self.selectRow(selected)


class HitsPerImagePlot:
    """Matplotlib bar plot of hits per micrograph (failed ones marked), current highlighted."""

    def __init__(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.2), dpi=90, layout="constrained", facecolor="#262930")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(170)
        self.ax = self.figure.add_subplot(111)
        self.n_bars = 0

    def update(self, table: pd.DataFrame, current: int | None):
        ax = self.ax
        ax.clear()
        n = len(table)
        self.n_bars = n
        x = np.arange(n)
        hits = pd.to_numeric(table["n_hits"], errors="coerce").fillna(0).to_numpy()
        status = table["status"].to_numpy()
        colors = [STATUS_COLOR["done"] if s == "done" else STATUS_COLOR.get(s, "#909090")
                  for s in status]
        if current is not None and 0 <= current < n:
            colors[current] = "#ff8c00"
        ax.bar(x, hits, color=colors, width=0.8)
        failed = np.flatnonzero(status == "failed")
        if failed.size:
            ax.plot(failed, np.zeros(failed.size), "x", color=STATUS_COLOR["failed"],
                    markersize=7, mew=2, label="failed")
            ax.legend(loc="upper right", fontsize=7, frameon=False, labelcolor="#d0d4dc")
        ax.set_ylabel("hits", fontsize=8)
        ax.set_title("hits per micrograph", fontsize=9)
        if n <= 24:
            ax.set_xticks(x, [str(s) for s in table["name"]], rotation=60, ha="right", fontsize=6)
        else:
            ax.set_xlabel("micrograph", fontsize=8)
        _style_axes(ax)
        ax.set_xlim(-0.6, max(n, 1) - 0.4)
        self.canvas.draw_idle()
