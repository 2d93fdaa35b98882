"""The small dialog that asks, once, what a cisTEM or Leopard-EM folder does not say.

The reader shows it when a foreign folder (:mod:`napari_2dtm.search.foreign`) is opened
for the first time: every file role (names vary with the user's prefixes) and number is
pre-filled from :func:`~napari_2dtm.search.foreign.propose`; the values proposed from
the program's defaults rather than read from the files are marked "(default: check)".
On OK the answers go to the folder's sidecar (:func:`~napari_2dtm.search.foreign.save_spec`)
and are not asked again.
"""

from __future__ import annotations

import dataclasses

from qtpy.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
)

from napari_2dtm.search.foreign import ForeignSpec, propose, save_spec

#: file roles shown, with their labels
ROLES = {"zscore": "scaled MIP (z-score)", "mip": "MIP", "mean": "correlation mean",
         "std": "correlation std", "phi": "phi", "theta": "theta", "psi": "psi",
         "defocus_offset": "defocus offset", "pixel_size_offset": "pixel-size offset",
         "particles": "particle table", "histogram": "histogram"}
CTF_FIELDS = {"defocus1_a": ("defocus 1 (A)", 0, 1e6, 1), "defocus2_a": ("defocus 2 (A)", 0, 1e6, 1),
              "astigmatism_angle_deg": ("astigmatism angle (deg)", -360, 360, 2),
              "voltage_kv": ("voltage (kV)", 1, 1000, 1), "cs_mm": ("Cs (mm)", 0, 100, 2),
              "amplitude_contrast": ("amplitude contrast", 0, 0.99, 3)}


class ForeignDialog(QDialog):
    """Confirm or correct a :class:`ForeignSpec`; :meth:`spec` reads the answers back."""

    def __init__(self, folder, spec: ForeignSpec | None = None, parent=None):
        super().__init__(parent)
        self.folder = folder
        self._spec = spec or propose(folder)
        s = self._spec
        self.setWindowTitle(f"Open {s.program_name} results")
        v = QVBoxLayout(self)
        v.addWidget(QLabel(f"{folder}\nFiles and numbers of this {s.program_name} search "
                           "(asked once, stored in napari_2dtm_import.json there)."))
        form = QFormLayout()
        v.addLayout(form)
        asked = set(s.asked)

        def label(text, key):
            return f"{text} (default: check)" if key in asked else text

        self.files = {}
        for role, text in ROLES.items():
            if role in s.files or role in ("zscore", "particles"):
                self.files[role] = QLineEdit(str(s.files.get(role) or ""))
                form.addRow(text, self.files[role])
        self.micrograph = QLineEdit(s.micrograph or "")
        form.addRow(label("micrograph", "micrograph"), self.micrograph)
        self.template = QLineEdit(s.template or "")
        form.addRow(label("template", "template"), self.template)
        self.pixel = QDoubleSpinBox(decimals=4, minimum=0.01, maximum=100.0)
        self.pixel.setValue(float(s.input_pixel_size_a or 1.0))
        form.addRow(label("micrograph pixel size (A)", "input_pixel_size_a"), self.pixel)
        self.box = QSpinBox(minimum=0, maximum=4096)
        self.box.setValue(int(s.template_box or 0))
        self.box.setToolTip("Template edge in pixels (Leopard-EM maps start at its corner)")
        form.addRow(label("template box (px)", "template_box"), self.box)
        self.n_corr = QLineEdit(f"{float(s.correlations_per_pixel or 1):.0f}")
        self.n_corr.setToolTip("Orientations x defocus planes searched: sets the false-alarm "
                               "threshold")
        form.addRow(label("correlations per pixel", "correlations_per_pixel"), self.n_corr)
        self.ctf = {}
        for key, (text, lo, hi, dec) in CTF_FIELDS.items():
            box = QDoubleSpinBox(decimals=dec, minimum=lo, maximum=hi)
            box.setValue(float(s.ctf.get(key, 0.0)))
            self.ctf[key] = box
            form.addRow(label(text, "ctf"), box)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        v.addWidget(buttons)

    def spec(self) -> ForeignSpec:
        """The spec as the fields say now."""
        s = self._spec
        files = {**s.files, **{r: w.text().strip() for r, w in self.files.items()}}
        files = {r: f for r, f in files.items() if f}
        try:
            n_corr = float(self.n_corr.text())
        except ValueError:
            n_corr = s.correlations_per_pixel
        return dataclasses.replace(
            s, files=files, micrograph=self.micrograph.text().strip() or None,
            template=self.template.text().strip() or None,
            input_pixel_size_a=float(self.pixel.value()),
            template_box=int(self.box.value()) or None, correlations_per_pixel=n_corr,
            ctf={**s.ctf, **{k: float(w.value()) for k, w in self.ctf.items()}})

    def save(self):
        """Store the answers in the folder's sidecar; returns the spec."""
        spec = self.spec()
        save_spec(self.folder, spec)
        return spec


def confirm_spec(folder, parent=None) -> ForeignSpec | None:
    """Ask (modal) and store; None when the user cancelled."""
    dialog = ForeignDialog(folder, parent=parent)
    if dialog.exec() != QDialog.DialogCode.Accepted:
        return None
    return dialog.save()
