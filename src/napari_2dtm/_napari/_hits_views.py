"""Plots of the Hits widget: the histogram and the inspection panel, and the status colours.

Qt and matplotlib only; they draw what :class:`napari_2dtm.hits.review.Review` and
:class:`napari_2dtm.hits.inspection.HitInspector` compute and hold no review state themselves.
The table of candidates is in :mod:`._hits_table`.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from napari_2dtm.hits.review import METRICS

#: border colour of a point per status (RGBA)
STATUS_RGBA = {
    "unreviewed": (0.0, 0.9, 1.0, 1.0),
    "accepted": (0.25, 1.0, 0.25, 1.0),
    "rejected": (1.0, 0.25, 0.25, 1.0),
}


# ------------------------------------------------------------------ plots


def _dark_figure(w_in: float, h_in: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w_in, h_in), dpi=90, facecolor="#262930")
    return fig


def _style_axes(ax):
    ax.set_facecolor("#1f2026")
    for s in ax.spines.values():
        s.set_color("#8a8f99")
    ax.tick_params(colors="#d0d4dc", labelsize=7)
    ax.xaxis.label.set_color("#d0d4dc")
    ax.yaxis.label.set_color("#d0d4dc")
    ax.title.set_color("#d0d4dc")


class HistogramPlot:
    """Log-count histogram of the metric with the expected-noise curve and threshold."""

    def __init__(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

        self.figure = _dark_figure(4.0, 1.9)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(150)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.ax = self.figure.add_subplot(111)
        self.figure.subplots_adjust(left=0.11, right=0.98, top=0.96, bottom=0.22)
        self.bars = None
        self.line = None
        self.centres = np.zeros(0)

    def set_review(self, review):
        ax = self.ax
        ax.clear()
        _style_axes(ax)
        counts, edges, noise = review.histogram()
        self.centres = 0.5 * (edges[:-1] + edges[1:])
        width = np.diff(edges)
        self.bars = ax.bar(self.centres, np.maximum(counts, 1e-9), width=width, align="center",
                           color="#6a7fb0", edgecolor="none", label="candidates")
        ax.plot(self.centres, noise, color="#ffb000", lw=1.4, label="expected noise")
        top = max(float(counts.max()) if counts.size else 1.0, 1.0) * 3
        ax.set_yscale("log")
        ax.set_ylim(0.5, top)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel(METRICS[review.metric], labelpad=1)
        ax.set_ylabel("count", labelpad=1)
        self.line = ax.axvline(review.threshold, color="#ff4d4d", lw=1.4, label="threshold")
        leg = ax.legend(fontsize=7, loc="upper right", frameon=False)
        for t in leg.get_texts():
            t.set_color("#d0d4dc")
        self.set_threshold(review.threshold)

    def set_threshold(self, t: float):
        if self.line is None:
            return
        self.line.set_xdata([t, t])
        for c, bar in zip(self.centres, self.bars):
            bar.set_color("#57d9a3" if c >= t else "#6a7fb0")
        self.canvas.draw_idle()


class InspectionPanel(QWidget):
    """Whitened box | template at pose (CTF) x cc | difference, and the hit's numbers."""

    def __init__(self):
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

        self.figure = _dark_figure(4.0, 1.55)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(130)
        self.axes = [self.figure.add_subplot(1, 3, i + 1) for i in range(3)]
        self.figure.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.02, wspace=0.04)
        self.images = []
        for ax, title in zip(self.axes, ("micrograph (whitened)", "template at pose × CTF",
                                         "difference")):
            _style_axes(ax)
            ax.set_title(title, fontsize=7.5, pad=2)
            ax.set_xticks([])
            ax.set_yticks([])
            self.images.append(ax.imshow(np.zeros((8, 8)), cmap="gray", vmin=-1, vmax=1,
                                         interpolation="nearest"))
        self.numbers = QLabel("Select a hit (table, point, or n / p).")
        self.numbers.setWordWrap(True)
        self.numbers.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        v = QVBoxLayout(self)
        v.setContentsMargins(0, 0, 0, 0)
        v.addWidget(self.canvas)
        v.addWidget(self.numbers)
        self.last = None

    def show_inspection(self, ins, text: str):
        self.last = ins
        lim = float(np.percentile(np.abs(ins.box), 99.5)) or 1.0
        for im, arr in zip(self.images, (ins.box, ins.model, ins.difference)):
            im.set_data(arr)
            im.set_extent((0, arr.shape[1], arr.shape[0], 0))
            im.set_clim(-lim, lim)
        self.numbers.setText(text)
        self.canvas.draw_idle()

    def show_message(self, text: str):
        self.last = None
        for im in self.images:
            im.set_data(np.zeros((8, 8)))
        self.numbers.setText(text)
        self.canvas.draw_idle()
