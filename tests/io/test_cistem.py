"""cisTEM results folders: conventions, histogram, coordinates, STAR, export round trip.

Folders are written by :mod:`helpers.foreign_data` in cisTEM's documented layouts
(match_template's map names, NumericTextFile columns, WriteTocisTEMStarFile's STAR).
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers.foreign_data import CTF, N_CORR, PIXEL_A, cistem_folder
from napari_2dtm.core.geometry import euler_to_matrix
from napari_2dtm.errors import InputError
from napari_2dtm.io import cistem
from napari_2dtm.search.foreign import detect, export_result, open_foreign, propose


def _cistem_matrix(phi, theta, psi):
    """cisTEM's RotationMatrix::SetToEulerRotation, element by element (m[row][col])."""
    cf, sf = np.cos(np.radians(phi)), np.sin(np.radians(phi))
    ct, st = np.cos(np.radians(theta)), np.sin(np.radians(theta))
    cp, sp = np.cos(np.radians(psi)), np.sin(np.radians(psi))
    return np.array([
        [cf * ct * cp - sf * sp, -cf * ct * sp - sf * cp, st * cf],
        [sf * ct * cp + cf * sp, -sf * ct * sp + cf * cp, st * sf],
        [-st * cp, st * sp, ct],
    ])


def test_cistem_matrix_is_relions_transpose():
    rng = np.random.default_rng(2)
    for phi, theta, psi in rng.uniform([0, 0, 0], [360, 180, 360], (20, 3)):
        np.testing.assert_allclose(euler_to_matrix(phi, theta, psi).T,
                                   _cistem_matrix(phi, theta, psi), atol=1e-12)


def _match(hits, truth):
    d = np.hypot(hits["x"].to_numpy()[:, None] - truth[:, 0],
                 hits["y"].to_numpy()[:, None] - truth[:, 1])
    j = d.argmin(0)
    return j, d[j, np.arange(len(truth))]


@pytest.mark.parametrize("star", [True, False])
def test_folder_opens_with_hits_on_the_particles(tmp_path, star):
    folder, truth = cistem_folder(tmp_path, star=star, coords=True)
    assert detect(folder) == "cistem"
    spec = propose(folder)
    assert spec.threshold == 7.21  # "# Expected threshold = 7.21"
    assert spec.correlations_per_pixel == pytest.approx(N_CORR)  # survival[0] / valid pixels
    if star:
        assert spec.files["particles"].endswith(".star")
        assert spec.ctf["defocus1_a"] == pytest.approx(CTF["defocus1_a"])  # DF1 - offset map
        assert spec.ctf["defocus2_a"] == pytest.approx(CTF["defocus2_a"])
        assert spec.micrograph == str((folder / "image.mrc").resolve())
    else:
        assert spec.files["particles"] == "coordinates.txt" and "ctf" in spec.asked
        spec.ctf = dict(spec.ctf, defocus1_a=CTF["defocus1_a"], defocus2_a=CTF["defocus2_a"])
    view = open_foreign(folder, spec)
    hits = view.hits
    j, dist = _match(hits, truth)
    assert len(hits) == len(truth) and dist.max() < 1.0
    for k, col in enumerate(("phi", "theta", "psi")):
        assert np.abs(hits[col].to_numpy()[j] - truth[:, 2 + k]).max() < 0.01, col
    np.testing.assert_allclose(hits["defocus1_a"].to_numpy()[j], CTF["defocus1_a"] + truth[:, 5],
                               atol=0.1)
    assert view.result.threshold == 7.21 and view.pixel_size_a == PIXEL_A
    assert "pixel_size" not in view.maps  # all-zero offsets: no pixel-size search


def test_export_round_trip_through_cistems_columns(tmp_path):
    folder, truth = cistem_folder(tmp_path)
    view = open_foreign(folder)
    out = tmp_path / "curated.star"
    export_result(view, view.hits, out, "cistem")
    text = out.read_text()
    assert "data_" in text and "_cisTEMOriginalXPosition #" in text and "#   PSI   THETA" in text
    back = cistem.read_cistem_star(out)
    np.testing.assert_allclose(back["cisTEMOriginalXPosition"] / PIXEL_A, view.hits["x"],
                               atol=0.01 / PIXEL_A)
    np.testing.assert_allclose(back["cisTEMOriginalYPosition"] / PIXEL_A, view.hits["y"],
                               atol=0.01 / PIXEL_A)
    for label, c in (("cisTEMAnglePhi", "phi"), ("cisTEMAngleTheta", "theta"),
                     ("cisTEMAnglePsi", "psi")):
        np.testing.assert_allclose(back[label], view.hits[c], atol=0.005)
    np.testing.assert_allclose(back["cisTEMDefocus1"], view.hits["defocus1_a"], atol=0.05)
    assert set(back["cisTEMOriginalImageFilename"]) == {str(folder / "image.mrc")}
    hits = cistem.star_to_hits(back)
    np.testing.assert_allclose(hits["x"], view.hits["x"], atol=0.01)


def test_broken_files_refused_in_one_line_naming_them(tmp_path):
    folder, _ = cistem_folder(tmp_path)
    with open(folder / "histogram.txt", "a") as f:
        f.write("1.0 2.0 oops 4.0\n")
    with pytest.raises(InputError, match=r"histogram.txt: line \d+ of the cisTEM histogram"):
        propose(folder)
    star = tmp_path / "bad.star"
    star.write_text("data_\nloop_\n_cisTEMAnglePsi #1\n_cisTEMAngleTheta #2\n1.0\n")
    with pytest.raises(InputError, match="bad.star: line 5 has 1 values for 2 columns"):
        cistem.read_cistem_star(star)
    (folder / "histogram.txt").unlink()
    (folder / "phi.mrc").write_bytes(b"not an mrc at all" * 100)
    with pytest.raises(InputError, match="phi.mrc"):
        open_foreign(folder)


def test_cli_export_and_refuses_their_own_files(tmp_path, capsys):
    from napari_2dtm.cli.main import main

    folder, truth = cistem_folder(tmp_path)
    out = tmp_path / "for_leopard.csv"
    assert main(["export", str(folder), "--format", "leopard", "-o", str(out)]) == 2
    assert "template box size is needed" in capsys.readouterr().err  # cisTEM records none
    assert main(["export", str(folder), "-f", "cistem", "-o", str(tmp_path / "x.star")]) == 0
    assert len(cistem.read_cistem_star(tmp_path / "x.star")) == len(truth)
    theirs = folder / "template_matches_package_1.star"
    before = theirs.read_bytes()
    assert main(["export", str(folder), "-f", "cistem", "-o", str(theirs), "--overwrite"]) == 2
    assert "one of the search's own files" in capsys.readouterr().err
    assert theirs.read_bytes() == before
