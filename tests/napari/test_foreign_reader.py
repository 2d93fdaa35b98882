"""cisTEM and Leopard-EM results folders open in a real viewer with the Hits widget docked.

Folders from :mod:`helpers.foreign_data` (each program's documented format, planted
particles); the answers the dialog would ask for are stored first (the dialog itself
is tested on its own), so opening does not block.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers.foreign_data import BOX, N_CORR, cistem_folder, leopard_folder
from napari_2dtm._napari._foreign_dialog import ForeignDialog
from napari_2dtm._napari._reader import get_reader
from napari_2dtm.io import cistem
from napari_2dtm.search.foreign import SIDECAR, load_spec, propose, save_spec

DOCK = "2DTM Hits (napari-2dtm)"
MAKERS = {"leopard": leopard_folder, "cistem": cistem_folder}


@pytest.mark.parametrize("program", ["leopard", "cistem"])
def test_folder_opens_with_hits_on_particles_and_review(make_napari_viewer, qtbot, tmp_path,
                                                        program):
    folder, truth = MAKERS[program](tmp_path)
    save_spec(folder, propose(folder))
    viewer = make_napari_viewer()
    viewer.open(str(folder), plugin="napari-2dtm")
    qtbot.waitUntil(lambda: DOCK in viewer.window.dock_widgets
                    and viewer.window.dock_widgets[DOCK].review is not None, timeout=20_000)
    names = [layer.name for layer in viewer.layers]
    mic = "micrograph" if program == "leopard" else "image"
    assert mic in names and f"z-score [{mic}]" in names
    hits = viewer.layers[f"hits [{mic}]"]
    yx = hits.data
    d = np.hypot(yx[:, 1][:, None] - truth[:, 0], yx[:, 0][:, None] - truth[:, 1]).min(0)
    assert len(yx) == len(truth) and d.max() < 1.0
    feats = hits.features
    assert {"x", "y", "phi", "theta", "psi", "defocus_a", "zscore", "snr", "mip"} <= set(feats)
    # micrograph and maps overlay in Angstrom (Leopard-EM's corner maps were shifted)
    assert viewer.layers[mic].scale[0] == viewer.layers[f"z-score [{mic}]"].scale[0]
    widget = viewer.window.dock_widgets[DOCK]
    review = widget.review
    shown = review.selection("all")
    d = np.hypot(shown["x"].to_numpy()[:, None] - truth[:, 0],
                 shown["y"].to_numpy()[:, None] - truth[:, 1]).min(0)
    assert d.max() < 1.0  # every particle is a hit above the search's threshold
    out = tmp_path / ("curated.csv" if program == "leopard" else "curated.star")
    table = widget.export(str(out), fmt=program)
    assert table is not None and len(table) == len(shown)
    if program == "leopard":
        raw = pd.read_csv(out, index_col=0)
        np.testing.assert_array_equal(np.sort(raw["pos_x_img"]), np.sort(shown["x"].round()))
        np.testing.assert_array_equal(raw["pos_x"], raw["pos_x_img"] - BOX // 2)
    else:
        raw = cistem.read_cistem_star(out)
        np.testing.assert_allclose(np.sort(raw["cisTEMOriginalXPosition"] / 1.5),
                                   np.sort(shown["x"]), atol=0.01)
    review.set_status([0], "accepted")
    assert widget.save() is not None  # decisions are ours, in review/ beside their files
    assert (folder / "review").is_dir() and not (folder / "search.json").exists()


def test_reader_declines_other_folders(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    assert get_reader(str(tmp_path / "notes")) is None


def test_dialog_proposes_then_stores_answers(qtbot, tmp_path):
    folder, _ = leopard_folder(tmp_path, csv=False)
    dialog = ForeignDialog(folder)
    qtbot.addWidget(dialog)
    assert dialog.files["zscore"].text() == "output_scaled_mip.mrc"
    assert dialog.box.value() == BOX and dialog.n_corr.text() == "1584000"
    dialog.n_corr.setText(str(N_CORR))
    dialog.ctf["defocus1_a"].setValue(9000.0)
    dialog.save()
    stored = json.loads((folder / SIDECAR).read_text())
    assert stored["correlations_per_pixel"] == N_CORR and stored["asked"] == []
    assert load_spec(folder).ctf["defocus1_a"] == 9000.0
