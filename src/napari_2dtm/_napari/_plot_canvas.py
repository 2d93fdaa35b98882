"""Docked matplotlib plots in napari's dark theme: one canvas, many figures.

The figures themselves are the Qt-free functions of :mod:`napari_2dtm.plots` (the same
ones the jobs save as PNG: ``fsc.png``, ``features.png``); :class:`PlotCanvas` only
draws one into a canvas and restyles it for the dark theme. :class:`FSCPlot` (the
Reconstruct widget's), :class:`FeaturePlot` (the Classify widget's) and
:class:`CyclesPlot` (the Refine Model widget's) are the uses.
"""

from __future__ import annotations

from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_2dtm.plots import draw_features, draw_fsc, draw_model_cycles

BACKGROUND = "#262930"  # napari's dark theme
TEXT = "#d6d6d6"


class PlotCanvas(QWidget):
    """A matplotlib canvas; :meth:`draw` fills it with one figure function.

    ``ax`` is the axes last drawn (None before)."""

    def __init__(self, min_height: int = 220, margins: int = 2, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.2, 3.0), dpi=100, facecolor=BACKGROUND)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(min_height)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(margins, margins, margins, margins)
        lay.addWidget(self.canvas)
        self.ax = None

    def draw(self, figure_fn, *args, **kwargs):
        """Clear, call ``figure_fn(ax, *args, **kwargs)``, restyle for the dark theme."""
        self.figure.clear()
        ax = self.figure.add_subplot(111, facecolor=BACKGROUND)
        figure_fn(ax, *args, **kwargs)
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


class FSCPlot(PlotCanvas):
    """The FSC curves of a reconstruction job (:func:`napari_2dtm.plots.draw_fsc`)."""

    def show_result(self, job_result):
        """Draw the curves of a :class:`~napari_2dtm.jobs.reconstruct.JobResult`."""
        self.draw(draw_fsc, job_result.reconstruction, job_result.omit_reconstruction)


class FeaturePlot(PlotCanvas):
    """One classification's log2 ratios and fitted Gaussians at a confidence
    (:func:`napari_2dtm.plots.draw_features`)."""

    def __init__(self, parent=None):
        super().__init__(min_height=230, margins=0, parent=parent)

    def show_result(self, res, confidence: float):
        self.draw(draw_features, res, confidence, text_color=TEXT)


class CyclesPlot(PlotCanvas):
    """Work and free CC per cycle of a model refinement
    (:func:`napari_2dtm.plots.draw_model_cycles`)."""

    def __init__(self, parent=None):
        super().__init__(min_height=200, margins=0, parent=parent)

    def show_result(self, job_result):
        """Draw the cycles of a :class:`~napari_2dtm.jobs.model_refine.ModelRefineResult`."""
        self.draw(draw_model_cycles, job_result.fit.cycles, job_result.fit.best_cycle)
