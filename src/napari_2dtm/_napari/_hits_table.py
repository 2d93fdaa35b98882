"""The table of the Hits widget: the shown candidates, sortable, rows <-> candidate ids.

:class:`HitsTableModel` holds the candidate table as NumPy columns: a threshold change
over 10,000 rows is one boolean filter and one model reset, a sort one ``argsort``, no
per-cell pandas access. Rows are listed in view order (``rows``: row -> candidate id,
``pos``: candidate id -> row or -1 when the candidate is below the threshold).
:class:`HitsTable` is the view; it speaks candidate ids, so the Hits widget can keep it
and the points layer selecting the same hits without knowing about rows.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QItemSelection, QItemSelectionModel, QModelIndex, Qt
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableView

from napari_2dtm.hits.review import METRICS, STATUSES

from ._hits_views import STATUS_RGBA

#: table columns after the metrics: (header, table column)
BASE_COLUMNS = [("x", "x"), ("y", "y"), ("φ", "phi"), ("θ", "theta"), ("ψ", "psi"),
                ("defocus Å", "defocus_a")]
_NO_PARENT = QModelIndex()


class HitsTableModel(QAbstractTableModel):
    """Rows = the shown candidates, in the current sort order; columns as configured.

    Values are held as NumPy columns (no pandas access per cell), sorting and
    filtering are NumPy index operations, so a threshold change over 10,000 rows is
    one model reset.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.columns: list[tuple[str, str]] = []
        self.values: dict[str, np.ndarray] = {}
        self.status = np.zeros(0, object)
        self.shown = np.zeros(0, bool)
        self.rows = np.zeros(0, np.int64)  # candidate ids in view order
        self.pos = np.zeros(0, np.int64)  # id -> row (-1: not listed)
        self._order = np.zeros(0, np.int64)  # every candidate id in sort order
        self.sort_column = 2
        self.sort_order = Qt.SortOrder.DescendingOrder

    def set_table(self, table, metrics: list[str]):
        self.beginResetModel()
        self.columns = [("#", "id"), ("status", "status")]
        self.columns += [(METRICS[m], m) for m in metrics if m in table.columns]
        self.columns += [c for c in BASE_COLUMNS if c[1] in table.columns]
        self.values = {key: table[key].to_numpy() for _, key in self.columns if key != "status"}
        self.status = table["status"].to_numpy(object).copy() if len(table) else np.zeros(0, object)
        self.shown = np.ones(len(table), bool)
        self._order = self._sorted_ids()
        self._filter()
        self.endResetModel()

    def set_shown(self, shown: np.ndarray):
        self.beginResetModel()
        self.shown = np.asarray(shown, bool)
        self._filter()
        self.endResetModel()

    def set_status(self, ids, status: str):
        ids = np.atleast_1d(np.asarray(ids, np.int64))
        self.status[ids] = status
        col = next(i for i, c in enumerate(self.columns) if c[1] == "status")
        for i in ids:
            r = int(self.pos[i]) if i < len(self.pos) else -1
            if r >= 0:
                idx = self.index(r, col)
                self.dataChanged.emit(idx, idx)

    def _sorted_ids(self) -> np.ndarray:
        n = len(self.status)
        if not self.columns or n == 0:
            return np.arange(n)
        key = self.columns[min(self.sort_column, len(self.columns) - 1)][1]
        vals = self.status if key == "status" else self.values[key]
        if key == "status":
            vals = np.array([STATUSES.index(s) for s in vals])
        order = np.argsort(vals, kind="stable")
        return order[::-1].copy() if self.sort_order == Qt.SortOrder.DescendingOrder else order

    def _filter(self):
        self.rows = self._order[self.shown[self._order]] if len(self._order) else self._order
        self.pos = np.full(len(self.status), -1, np.int64)
        self.pos[self.rows] = np.arange(len(self.rows))

    # Qt model API
    def rowCount(self, parent=_NO_PARENT):  # noqa: N802 (Qt name)
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=_NO_PARENT):  # noqa: N802
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.columns[section][0]
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        i = int(self.rows[index.row()])
        key = self.columns[index.column()][1]
        if role == Qt.ItemDataRole.DisplayRole:
            if key == "status":
                return str(self.status[i])
            v = self.values[key][i]
            if key == "id":
                return str(int(v))
            if key in ("x", "y", "defocus_a"):
                return f"{v:.0f}"
            if key in ("phi", "theta", "psi"):
                return f"{v:.1f}"
            return f"{v:.2f}"
        if role == Qt.ItemDataRole.ForegroundRole and key == "status":
            from qtpy.QtGui import QColor

            r, g, b, _ = STATUS_RGBA[str(self.status[i])]
            return QColor.fromRgbF(r, g, b)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def sort(self, column, order=Qt.SortOrder.AscendingOrder):
        self.layoutAboutToBeChanged.emit()
        # the view's selection follows its hits, not the row numbers they had
        old = self.persistentIndexList()
        ids = [int(self.rows[i.row()]) if 0 <= i.row() < len(self.rows) else -1 for i in old]
        self.sort_column, self.sort_order = int(column), order
        self._order = self._sorted_ids()
        self._filter()
        new = [self.index(int(self.pos[h]), i.column()) if h >= 0 and self.pos[h] >= 0
               else QModelIndex() for i, h in zip(old, ids)]
        self.changePersistentIndexList(old, new)
        self.layoutChanged.emit()


class HitsTable(QTableView):
    """The view of a :class:`HitsTableModel` (``hits_model``), selecting whole rows."""

    def __init__(self):
        super().__init__()
        self.hits_model = HitsTableModel(self)
        self.setModel(self.hits_model)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(18)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        header.setResizeContentsPrecision(50)  # sample rows: fast on 10,000
        header.setSortIndicator(2, Qt.SortOrder.DescendingOrder)  # the first metric
        self.setSortingEnabled(True)
        self.setMinimumHeight(120)

    def show_table(self, table, metrics: list[str]):
        """List the candidates of ``table`` (a review's), with these metric columns."""
        self.hits_model.set_table(table, metrics)
        self.resizeColumnsToContents()

    def selected_rows(self) -> list[int]:
        return sorted({i.row() for i in self.selectionModel().selectedRows()})

    def selected_ids(self) -> list[int]:
        """Candidate ids of the selected rows, in row order."""
        return [int(self.hits_model.rows[r]) for r in self.selected_rows()]

    def current_id(self) -> int | None:
        """The hit to inspect: the row with the keyboard focus when it is selected, else
        the last selected row (None when nothing is selected)."""
        rows = self.selected_rows()
        cur = self.selectionModel().currentIndex()
        if cur.isValid() and cur.row() in rows:
            return int(self.hits_model.rows[cur.row()])
        return int(self.hits_model.rows[rows[-1]]) if rows else None

    def select_ids(self, ids):
        """Select the rows of candidates ``ids`` (those listed) and scroll to the last."""
        model = self.hits_model
        rows = [int(model.pos[i]) for i in ids if model.pos[i] >= 0]
        sel = QItemSelection()
        last = model.columnCount() - 1
        for r in rows:
            sel.select(model.index(r, 0), model.index(r, last))
        flags = (QItemSelectionModel.SelectionFlag.ClearAndSelect
                 | QItemSelectionModel.SelectionFlag.Rows)
        self.selectionModel().select(sel, flags)
        if rows:
            self.scrollTo(model.index(rows[-1], 0))
