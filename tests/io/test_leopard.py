"""Leopard-EM results folders: conventions, opening, sidecar, export round trip, bad files.

Folders are written by :mod:`helpers.foreign_data` in Leopard-EM's documented format
(valid-cropped corner maps, pandas CSV with its index column), never copied from it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from helpers.foreign_data import BOX, CTF, N_CORR, PIXEL_A, leopard_folder
from napari_2dtm.core.geometry import euler_to_matrix
from napari_2dtm.errors import InputError
from napari_2dtm.io import leopard
from napari_2dtm.search.detect import false_alarm_threshold
from napari_2dtm.search.foreign import (
    SIDECAR,
    detect,
    export_result,
    load_spec,
    open_foreign,
    open_results,
    propose,
    save_spec,
)


def _rz(a):
    c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _ry(a):
    c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def test_leopard_euler_matrix_is_relions_transpose():
    """roma's euler_to_rotmat("ZYZ") = Rz(phi) Ry(theta) Rz(psi) (intrinsic, upper case),
    used by torch-fourier-slice to sample the template at R k; ours samples at A.T k."""
    rng = np.random.default_rng(1)
    for phi, theta, psi in rng.uniform([0, 0, 0], [360, 180, 360], (20, 3)):
        leopard_r = _rz(phi) @ _ry(theta) @ _rz(psi)
        np.testing.assert_allclose(euler_to_matrix(phi, theta, psi).T, leopard_r, atol=1e-12)


def _match(hits, truth):
    d = np.hypot(hits["x"].to_numpy()[:, None] - truth[:, 0], hits["y"].to_numpy()[:, None]
                 - truth[:, 1])
    j = d.argmin(0)
    return j, d[j, np.arange(len(truth))]


def _angles_close(hits, j, truth, tol=1.0):
    for k, col in enumerate(("phi", "theta", "psi")):
        diff = (hits[col].to_numpy()[j] - truth[:, 2 + k] + 180) % 360 - 180
        assert np.abs(diff).max() < tol, col


def test_folder_opens_with_hits_on_the_particles(tmp_path):
    folder, truth = leopard_folder(tmp_path)
    assert detect(folder) == "leopard"
    spec = propose(folder)
    assert spec.asked == [] and spec.template_box == BOX and spec.correlations_per_pixel == N_CORR
    view = open_foreign(folder)
    hits = view.hits
    j, dist = _match(hits, truth)
    assert len(hits) == len(truth) and dist.max() < 1.0
    _angles_close(hits, j, truth)
    np.testing.assert_allclose(hits["defocus_a"].to_numpy()[j],
                               (CTF["defocus1_a"] + CTF["defocus2_a"]) / 2 + truth[:, 5])
    # maps moved from template corners to particle centres on the micrograph grid
    z = view.maps["zscore"]
    assert z.shape == (160, 176)
    for x, y in truth[:, :2].astype(int):
        patch = z[y - 3:y + 4, x - 3:x + 4]
        assert np.unravel_index(patch.argmax(), patch.shape) == (3, 3)
    assert view.pixel_size_a == view.input_pixel_size_a == PIXEL_A
    n_valid = (160 - BOX + 1) * (176 - BOX + 1)
    assert view.result.n_trials == n_valid * N_CORR
    assert view.result.threshold == pytest.approx(false_alarm_threshold(n_valid * N_CORR))
    assert view.micrograph_path() == folder / "micrograph.mrc"


def test_maps_only_folder_proposes_and_extracts(tmp_path):
    folder, truth = leopard_folder(tmp_path, csv=False, prefix="run7_")
    spec = propose(folder)
    assert spec.program == "leopard" and "correlations_per_pixel" in spec.asked
    assert spec.template_box == BOX  # from the valid-cropped map vs the micrograph
    assert spec.correlations_per_pixel == 1_584_000  # Leopard-EM's default search, proposed
    spec.correlations_per_pixel = N_CORR
    spec.micrograph = str(folder / "micrograph.mrc")
    before = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    save_spec(folder, spec)
    assert load_spec(folder).asked == [] and load_spec(folder).correlations_per_pixel == N_CORR
    view = open_results(folder)
    j, dist = _match(view.hits, truth)
    assert dist.max() < 1.0
    _angles_close(view.hits, j, truth)
    after = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()
             if p.name != SIDECAR}
    assert after == before  # their files untouched; only our sidecar added


def test_export_round_trip_through_leopards_columns(tmp_path):
    folder, truth = leopard_folder(tmp_path)
    view = open_foreign(folder)
    out = tmp_path / "curated.csv"
    export_result(view, view.hits, out, "leopard")
    raw = pd.read_csv(out, index_col=0)  # what Leopard-EM's ParticleStack reads
    assert list(raw.columns) == leopard.MATCH_COLUMNS
    j, _ = _match(view.hits, truth)
    np.testing.assert_array_equal(raw["pos_x_img"], view.hits["x"].round())
    np.testing.assert_array_equal(raw["pos_y"], view.hits["y"].round() - BOX // 2)
    for c in ("phi", "theta", "psi"):
        np.testing.assert_allclose(raw[c], view.hits[c])
    np.testing.assert_allclose(raw["relative_defocus"].to_numpy()[j], truth[:, 5], atol=1e-6)
    np.testing.assert_allclose(raw["pixel_size"], PIXEL_A)
    back = leopard.particles_to_hits(leopard.read_particles(out))
    for c in ("x", "y", "phi", "theta", "psi", "defocus_a", "zscore"):
        np.testing.assert_allclose(back[c], view.hits[c], err_msg=c)


def test_refined_columns_are_preferred(tmp_path):
    folder, _ = leopard_folder(tmp_path)
    df = leopard.read_particles(folder / "results.csv")
    df["refined_pos_x_img"] = df["pos_x_img"] + 1
    df["refined_pos_y_img"] = df["pos_y_img"]
    df["refined_psi"] = df["psi"] + 0.5
    hits = leopard.particles_to_hits(df)
    np.testing.assert_allclose(hits["x"], df["pos_x_img"] + 1)
    np.testing.assert_allclose(hits["psi"], df["psi"] + 0.5)
    np.testing.assert_allclose(hits["theta"], df["theta"])


def test_broken_files_refused_in_one_line_naming_them(tmp_path):
    folder, _ = leopard_folder(tmp_path)
    bad_map = folder / "output_orientation_theta.mrc"
    bad_map.write_bytes(bad_map.read_bytes()[:1500])  # truncated
    with pytest.raises(InputError, match="output_orientation_theta.mrc") as e:
        open_foreign(folder)
    assert "\n" not in str(e.value)
    csv = tmp_path / "junk.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="junk.csv.*not a Leopard-EM particle CSV"):
        leopard.read_particles(csv)
    nan = tmp_path / "nan.csv"
    pd.DataFrame({"pos_x_img": [1, "x"], "pos_y_img": [1, 2], "phi": [0, 0], "theta": [0, 0],
                  "psi": [0, 0], "scaled_mip": [8, 9]}).to_csv(nan)
    with pytest.raises(InputError, match="nan.csv: pos_x_img of particle row 2"):
        leopard.read_particles(nan)
    (tmp_path / "empty").mkdir()
    assert detect(tmp_path / "empty") is None
    with pytest.raises(InputError, match="empty"):
        open_results(tmp_path / "empty")
