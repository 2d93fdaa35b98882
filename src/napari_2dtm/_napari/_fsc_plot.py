"""The docked FSC plot of the Reconstruct widget: a matplotlib canvas in napari's colours.

The curves are :func:`napari_2dtm.plots.draw_fsc`, the figure the job saves as
``fsc.png``; this file only restyles them for the dark theme.
"""

from __future__ import annotations

from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_2dtm.plots import draw_fsc

BACKGROUND = "#262930"  # napari's dark theme
TEXT = "#d6d6d6"


class FSCPlot(QWidget):
    """A docked matplotlib canvas with the FSC curves of a reconstruction job."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.2, 3.0), dpi=100, facecolor=BACKGROUND)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.canvas)
        self.ax = None

    def show_result(self, job_result):
        """Draw the curves of a :class:`~napari_2dtm.jobs.reconstruct.JobResult`."""
        self.figure.clear()
        ax = self.figure.add_subplot(111, facecolor=BACKGROUND)
        draw_fsc(ax, job_result.reconstruction, job_result.omit_reconstruction)
        for item in [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(),
                     *ax.get_yticklabels()]:
            item.set_color(TEXT)
        for sp in ax.spines.values():
            sp.set_color("#888888")
        ax.tick_params(colors=TEXT)
        leg = ax.get_legend()
        if leg is not None:
            leg.get_frame().set_facecolor("#3b3f4a")
            for text in leg.get_texts():
                text.set_color("#e8e8e8")
        self.figure.tight_layout()
        self.canvas.draw()
        self.ax = ax
