"""The Classify widget's template table: one row per state (name, file, atom selection,
prior), the reference template and how the priors are set.

:meth:`TemplateTable.template_rows` turns the table into the keyword arguments of
:func:`napari_2dtm.jobs.classify.run_classify` (checked: two or more existing files,
numbers in the Prior column when the priors are fixed).
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_2dtm.classify.templates import default_name
from napari_2dtm.errors import InputError

PRIOR_MODES = {"learned from the data": "learn", "uniform (fixed)": "uniform",
               "fixed (table)": "table"}
TEMPLATE_COLUMNS = ("Name", "File", "Selection", "Prior")
_COL = {c: i for i, c in enumerate(TEMPLATE_COLUMNS)}


class TemplateTable(QGroupBox):
    """Templates (one per state, sharing one origin): ``templates`` (the table),
    ``reference`` and ``prior_mode`` (combo boxes)."""

    def __init__(self, parent=None):
        super().__init__("Templates (one per state, sharing one origin)", parent)
        v = QVBoxLayout(self)
        self.templates = QTableWidget(0, len(TEMPLATE_COLUMNS))
        self.templates.setHorizontalHeaderLabels(list(TEMPLATE_COLUMNS))
        hdr = self.templates.horizontalHeader()
        hdr.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        hdr.setSectionResizeMode(_COL["File"], QHeaderView.ResizeMode.Stretch)
        self.templates.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.templates.verticalHeader().setVisible(False)
        self.templates.setMinimumHeight(90)
        self.templates.setToolTip(
            "Models (.pdb/.cif) are converted with the model origin kept, so selections of "
            "one file share it ('not chain B'); maps must be aligned. Prior: used when the "
            "priors are fixed (table).")
        self.templates.itemChanged.connect(self._refresh_reference)
        v.addWidget(self.templates)
        row = QHBoxLayout()
        add = QPushButton("Add…")
        add.clicked.connect(self._browse_template)
        remove = QPushButton("Remove")
        remove.clicked.connect(self._remove_template)
        row.addWidget(add)
        row.addWidget(remove)
        row.addStretch(1)
        v.addLayout(row)
        form = QFormLayout()
        self.reference = QComboBox()
        self.reference.setToolTip("Reference template: numerator of log2(SNR_ref / SNR_k)")
        form.addRow("Reference", self.reference)
        self.prior_mode = QComboBox()
        self.prior_mode.addItems(list(PRIOR_MODES))
        form.addRow("Priors", self.prior_mode)
        v.addLayout(form)

    def add_template(self, path, selection: str = "", name: str | None = None,
                     prior: float | None = None):
        """Append a template row (file, atom selection, name, prior for fixed priors)."""
        r = self.templates.rowCount()
        self.templates.blockSignals(True)
        self.templates.insertRow(r)
        values = {"Name": name or default_name(path, selection or None), "File": str(path),
                  "Selection": selection or "", "Prior": "" if prior is None else f"{prior:g}"}
        for col, val in values.items():
            self.templates.setItem(r, _COL[col], QTableWidgetItem(val))
        self.templates.blockSignals(False)
        self._refresh_reference()

    def set_templates(self, rows):
        """Replace the table by rows of ``(path, selection, name, prior)`` (last ones optional)."""
        self.templates.setRowCount(0)
        for row in rows:
            row = list(row) + [None] * (4 - len(row))
            self.add_template(row[0], row[1] or "", row[2], row[3])

    def _browse_template(self):
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Template maps or models", "",
            "Maps and models (*.mrc *.map *.pdb *.cif *.mmcif *.ent *.gz);;All files (*)")
        for p in paths:
            self.add_template(p)

    def _remove_template(self):
        rows = sorted({i.row() for i in self.templates.selectedIndexes()}, reverse=True)
        for r in rows or [self.templates.rowCount() - 1]:
            if r >= 0:
                self.templates.removeRow(r)
        self._refresh_reference()

    def _cell(self, r: int, col: str) -> str:
        item = self.templates.item(r, _COL[col])
        return item.text().strip() if item is not None else ""

    def _refresh_reference(self, *_):
        cur = self.reference.currentText()
        names = [self._cell(r, "Name") for r in range(self.templates.rowCount())]
        self.reference.blockSignals(True)
        self.reference.clear()
        self.reference.addItems(names)
        if cur in names:
            self.reference.setCurrentText(cur)
        self.reference.blockSignals(False)

    def template_rows(self) -> dict:
        """``templates`` (files), ``names``, ``selections``, ``reference`` (index) and
        ``priors`` ("learn", "uniform" or numbers) from the table; one-line
        :class:`InputError` when they do not make a classification."""
        n = self.templates.rowCount()
        if n < 2:
            raise InputError("add two or more templates (one per state)")
        files = [self._cell(r, "File") for r in range(n)]
        for f in files:
            if not f or not Path(f).is_file():
                raise InputError(f"{f or '(empty)'}: template file not found")
        priors = PRIOR_MODES[self.prior_mode.currentText()]
        if priors == "table":
            try:
                priors = [float(self._cell(r, "Prior")) for r in range(n)]
            except ValueError:
                raise InputError("fixed priors: give a number in the Prior column of every "
                                 "template") from None
        return {"templates": files,
                "names": [self._cell(r, "Name") or f"template{r + 1}" for r in range(n)],
                "selections": [self._cell(r, "Selection") or None for r in range(n)],
                "reference": max(self.reference.currentIndex(), 0), "priors": priors}
