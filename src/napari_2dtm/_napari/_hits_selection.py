"""Which hits are selected in the Hits widget: table rows and points stay in step.

The table lists the candidates above the threshold in its sort order; the review's
points layer holds every candidate. A selection made in either is copied to the other.
Copying fires the other's selection event, so the copies are made inside :meth:`quiet`
and the handlers ignore what happens there (no echo, no loop).

One candidate is *current*: the one inspected, the one ``n`` / ``p`` step from. A row
picked in the table centres the view on its hit (a point picked in the view is already
in sight); :meth:`HitSelection.select` lets the caller choose.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ._hits_table import HitsTable


class HitSelection:
    """Keeps ``table`` and a points layer selecting the same candidates.

    ``on_current(hit_id, center)`` runs whenever a candidate becomes current (center:
    whether the view should be centred on it).
    """

    def __init__(self, table: HitsTable, on_current):
        self.table = table
        self.layer = None  # the review's points layer
        self.current: int | None = None
        self._on_current = on_current
        self._syncing = False  # a selection is being copied from one side to the other
        self._center_request: bool | None = None  # select()'s `center`, for the table handler
        table.selectionModel().selectionChanged.connect(self._on_table_selection)

    @contextlib.contextmanager
    def quiet(self):
        """Selection changes made inside are not copied (the caller sets both sides)."""
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    def attach(self, layer):
        self.layer = layer
        layer.selected_data.events.items_changed.connect(self._on_points_selection)

    def detach(self):
        if self.layer is not None:
            try:
                self.layer.selected_data.events.items_changed.disconnect(self._on_points_selection)
            except (TypeError, ValueError, RuntimeError):
                pass
        self.layer = None

    def clear(self):
        """Select nothing (call inside :meth:`quiet` when the candidates change)."""
        self.current = None
        self.layer.selected_data = set()

    def select(self, hit_id: int, center: bool = True):
        """Make candidate ``hit_id`` current: its row (when listed) and its point."""
        model = self.table.hits_model
        row = int(model.pos[hit_id])
        if row >= 0 and self.table.selected_rows() != [row]:
            self._center_request = center
            try:
                self.table.selectRow(row)  # -> _on_table_selection
            finally:
                self._center_request = None
            self.table.scrollTo(model.index(row, 0))
        else:
            with self.quiet():
                self.layer.selected_data = {hit_id}
            self._set_current(hit_id, center)

    def selected_ids(self) -> list[int]:
        """Ids of the selected candidates (the current hit when nothing is selected)."""
        ids = sorted(int(i) for i in self.layer.selected_data) if self.layer is not None else []
        return ids or ([self.current] if self.current is not None else [])

    def step(self, delta: int):
        """Select the hit ``delta`` rows from the current one (the first when none)."""
        rows = self.table.hits_model.rows
        if self.layer is None or not len(rows):
            return
        pos = self.table.hits_model.pos[self.current] if self.current is not None else -1
        nxt = 0 if pos < 0 else int(np.clip(pos + delta, 0, len(rows) - 1))
        self.select(int(rows[nxt]))

    def _set_current(self, hit_id: int, center: bool):
        self.current = int(hit_id)
        self._on_current(self.current, center)

    def _on_table_selection(self, *_):
        if self._syncing or self.layer is None:
            return
        ids = self.table.selected_ids()
        with self.quiet():
            self.layer.selected_data = set(ids)
        current = self.table.current_id()
        if current is not None:
            center = self._center_request if self._center_request is not None else len(ids) == 1
            self._set_current(current, center=center)

    def _on_points_selection(self, *_):
        if self._syncing or self.layer is None:
            return
        ids = sorted(int(i) for i in self.layer.selected_data)
        with self.quiet():
            self.table.select_ids(ids)
        if ids:
            current = self.current if self.current in ids else ids[-1]
            self._set_current(current, center=False)
