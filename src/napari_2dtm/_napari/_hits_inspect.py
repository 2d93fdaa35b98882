"""Inspection of a hit in the viewer: where the micrograph and the template come from.

:class:`napari_2dtm.hits.inspection.HitInspector` needs the micrograph and the
template of the search. A review knows them only by name: the micrograph is taken from
the viewer's layer of that name when its shape matches the search's input, else read
from the path in ``search.json``; the template is the one the search was given, else
rebuilt from ``search.json`` (:func:`~napari_2dtm.hits.inspection.template_for_result`),
else a cubic 3D image layer of the search's box and pixel size (a template made in the
viewer has no file). The inspector is built at the first inspection; when that fails the
reason is kept and shown with every hit, rather than retried per hit.
"""

from __future__ import annotations

import numpy as np

from napari_2dtm.errors import one_line
from napari_2dtm.hits.inspection import HitInspector, template_for_result
from napari_2dtm.hits.review import METRICS
from napari_2dtm.templates.template import Template


def hit_numbers(row) -> str:
    """One line of a candidate's numbers: id, status, position, metrics, pose, defocus."""
    parts = [f"#{int(row['id'])} {row['status']}", f"x {row['x']:.0f}, y {row['y']:.0f} px"]
    for key in METRICS:
        if key in row.index:
            parts.append(f"{METRICS[key]} {row[key]:.2f}")
    parts.append(f"φ θ ψ {row['phi']:.1f} {row['theta']:.1f} {row['psi']:.1f}°")
    if "defocus_a" in row.index:
        parts.append(f"defocus {row['defocus_a']:.0f} Å")
    return " · ".join(parts)


class HitInspection:
    """The inspector of one review, built from the viewer's layers or the results folder."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.review = None
        self.micrograph_name = ""
        self.template = None  # the search's own template, when the caller had it
        self.inspector: HitInspector | None = None
        self.error: str | None = None  # why no inspector could be built

    def reset(self, review, micrograph_name: str, template=None):
        """Inspect the candidates of ``review`` from now on."""
        self.review = review
        self.micrograph_name = micrograph_name
        self.template = template
        self.inspector = None
        self.error = None

    def show(self, panel, hit_id: int):
        """Show the inspection of candidate ``hit_id`` in ``panel`` (an InspectionPanel)."""
        row = self.review.table.iloc[int(hit_id)]
        text = hit_numbers(row)
        ins = self._get_inspector()
        if ins is None:
            panel.show_message(f"{text}\nNo inspection: {self.error}")
            return
        try:
            r = ins.inspect(row)
            panel.show_inspection(
                r, f"{text}\nCC {r.cc:.2f} at this pose · box/model correlation "
                   f"{r.pearson:.2f} · box {r.box.shape[0]} px of {r.pixel_size_a:.2f} Å")
        except Exception as e:
            panel.show_message(f"{text}\nNo inspection: {one_line(e)}")

    def _get_inspector(self) -> HitInspector | None:
        if self.inspector is None and self.error is None:
            try:
                self.inspector = HitInspector.for_result(
                    self.review.result, self._micrograph(), self._find_template())
            except Exception as e:
                self.error = one_line(e)
        return self.inspector

    def _micrograph(self) -> np.ndarray:
        rv = self.review
        name = self.micrograph_name
        shape = rv.results.input_shape
        if name in self.viewer.layers:
            data = np.asarray(self.viewer.layers[name].data)
            if data.ndim == 2 and (not shape or data.shape == shape):
                return data
        if rv.results.micrograph_path() is not None:
            return rv.results.read_micrograph()[0]
        raise ValueError(f"micrograph {name!r} is neither a layer nor a file")

    def _find_template(self) -> Template:
        from napari.layers import Image

        if self.template is not None:
            return self.template
        try:
            return template_for_result(self.review.result)
        except Exception as first:
            info = self.review.results.template
            box, tpx = info.box, info.pixel_size_a
            for layer in self.viewer.layers:
                if isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb:
                    data = np.asarray(layer.data)
                    lpx = layer.metadata.get("napari_2dtm", {}).get("pixel_size_a") or float(
                        layer.scale[-1])
                    if len(set(data.shape)) == 1 and data.shape[0] == box and tpx and abs(
                            float(lpx) - float(tpx)) < 1e-3 * float(tpx):
                        return Template(data.astype(np.float32), float(tpx), source=layer.name)
            raise first
