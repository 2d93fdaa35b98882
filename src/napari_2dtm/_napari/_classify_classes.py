"""The Classify widget's "Classes" box: the posterior threshold, the counts per class, the
plot and the export button.

:class:`ClassesBox` holds the plot of the log2 ratios and the fitted Gaussians
(:class:`~napari_2dtm._napari._plot_canvas.FeaturePlot`) with the threshold and the
counts (at 50 %, 95 % and the threshold shown, in the class colours). The widget connects the threshold and the button.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from napari_2dtm._napari._plot_canvas import FeaturePlot
from napari_2dtm.plots import CLASS_COLORS


def counts_html(res, confidence: float) -> str:
    """Counts per class at 50 %, 95 % and ``confidence`` (bold), names in class colours."""
    parts = []
    for level in sorted({0.5, 0.95, confidence}):
        cnt = res.counts(level)
        items = [f"<span style='color:{CLASS_COLORS[i % len(CLASS_COLORS)]}'>{nm}</span> "
                 f"{cnt[nm]}" for i, nm in enumerate(res.names)]
        bold = ("<b>", "</b>") if abs(level - confidence) < 1e-9 else ("", "")
        parts.append(f"{bold[0]}at {100 * level:g} %: " + ", ".join(items)
                     + f", unassigned {cnt['unassigned']}{bold[1]}")
    return "<br>".join(parts)


class ClassesBox(QGroupBox):
    """``confidence`` (spin box, with 50 % / 95 % buttons), ``counts_label``, ``plot``
    (:class:`FeaturePlot`) and ``export_button``."""

    def __init__(self, parent=None):
        super().__init__("Classes", parent)
        v = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("Posterior ≥"))
        self.confidence = QDoubleSpinBox()
        self.confidence.setRange(0.5, 1.0)
        self.confidence.setDecimals(3)
        self.confidence.setSingleStep(0.01)
        self.confidence.setValue(0.5)
        self.confidence.setKeyboardTracking(False)
        self.confidence.setToolTip("Hits whose most probable class has a lower posterior are "
                                   "hidden and left unassigned")
        row.addWidget(self.confidence)
        for level in (0.5, 0.95):
            b = QPushButton(f"{100 * level:g} %")
            b.setMaximumWidth(52)
            b.clicked.connect(lambda _=False, lv=level: self.confidence.setValue(lv))
            row.addWidget(b)
        row.addStretch(1)
        v.addLayout(row)
        self.counts_label = QLabel("")
        self.counts_label.setWordWrap(True)
        self.counts_label.setTextFormat(Qt.TextFormat.RichText)
        v.addWidget(self.counts_label)
        self.plot = FeaturePlot()
        v.addWidget(self.plot)
        self.export_button = QPushButton("Export per-class STAR…")
        self.export_button.setEnabled(False)
        v.addWidget(self.export_button)

    def show_result(self, res, confidence: float) -> None:
        """Counts and plot of ``res`` at ``confidence``."""
        self.counts_label.setText(counts_html(res, confidence))
        self.plot.show_result(res, confidence)
