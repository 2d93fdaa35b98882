"""The live -ln p map of a running search (used by the Search widget).

The 2DTM p-value (:mod:`napari_2dtm.search.pvalue`) ranks every pixel's (z-score, SNR)
pair against the population of the whole map, so it cannot be updated pixel by pixel:
each update recomputes the full map from the search's partial z-score and SNR maps.
That costs about as much as a few orientation batches on large micrographs, so it runs
off the main thread, at most one at a time, and is throttled by its own measured cost
(the search needs the CPU more than the preview does). The final snapshot is always
computed, so the layer ends equal to the map the results folder holds.
"""

from __future__ import annotations

import time

import numpy as np

from napari_2dtm.search.pvalue import neg_log_p_map


def _live_neg_log_p(zscore, snr):
    """-ln p map of partial maps (None while the population is too small)."""
    try:
        return neg_log_p_map(zscore, snr, mask=zscore != 0)
    except ValueError:
        return None


class LiveNegLogP:
    """-ln p recomputed from a running search's partial maps, off the main thread.

    ``update(progress)`` starts a worker unless one is running or the last started
    less than ``interval_s`` ago (at least 5 x its compute time, so large maps do not
    load the CPU the search needs); the final snapshot is always computed.
    ``show(map, pixel_size_a)`` runs in the main thread with each new map.
    """

    def __init__(self, show, interval_s: float = 2.0):
        self.show = show
        self.interval_s = interval_s
        self._busy = False
        self._pending = None  # the final snapshot, when it came while a worker ran
        self._last = -np.inf  # perf_counter() of the last start
        self._cost = 0.0  # seconds the last map took
        self._stopped = False
        self.n_shown = 0

    def stop(self):
        """Show nothing more: a map still being computed is dropped when it arrives
        (after a cancel, or while the viewer closes, adding a layer would race napari's
        own teardown)."""
        self._stopped = True
        self._pending = None

    def update(self, progress):
        if self._stopped:
            return
        if self._busy:
            if progress.done:
                self._pending = progress
            return
        wait = max(self.interval_s, 5.0 * self._cost)
        if not progress.done and time.perf_counter() - self._last < wait:
            return
        self._start(progress)

    def _start(self, progress):
        from napari.qt.threading import create_worker

        self._busy = True
        self._last = time.perf_counter()
        worker = create_worker(_live_neg_log_p, progress.zscore, progress.snr,
                               _ignore_errors=True)
        px = progress.pixel_size_a
        worker.returned.connect(lambda m: self._returned(m, px))
        worker.finished.connect(self._finished)
        worker.start()

    def _returned(self, nlp, px):
        self._cost = time.perf_counter() - self._last
        if nlp is not None and not self._stopped:
            try:
                self.show(nlp, px)
            except RuntimeError:  # the viewer or widget was closed meanwhile
                return
            self.n_shown += 1

    def _finished(self):
        self._busy = False
        if self._pending is not None and not self._stopped:
            p, self._pending = self._pending, None
            self._start(p)
