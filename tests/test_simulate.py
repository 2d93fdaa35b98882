"""Micrograph simulator (napari_2dtm.simulate)."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from helpers.planting import structure_file as structure
from napari_2dtm.core.ctf import CTFParams, ctf_2d
from napari_2dtm.core.geometry import euler_to_matrix
from napari_2dtm.errors import InputError
from napari_2dtm.simulate import (
    TRUTH_COLUMNS,
    _atom_class,
    interaction_constant,
    project_atoms,
    simulate_micrograph,
    write_simulation,
)
from napari_2dtm.templates.atoms import _filter_atoms, read_atoms
from napari_2dtm.templates.model import template_from_model


def _rotated_template_projection(vol: np.ndarray, a: np.ndarray, px: float, order: int = 3) -> np.ndarray:
    """Project ``V_rot(r) = V(A.T @ r)`` along z by real-space interpolation (V*A)."""
    n = vol.shape[0]
    c = n // 2
    g = np.arange(n, dtype=np.float64) - c
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()])
    src = a.T @ pts + c
    v = ndimage.map_coordinates(vol, src[::-1], order=order, mode="constant")
    return v.reshape(n, n, n).sum(axis=0) * px


def _ncc(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# ---------------------------------------------------------------------------------------


def test_projection_convention_matches_rotated_template():
    p = structure("1BD2.pdb.gz")
    t = template_from_model(p, 1.5)
    atoms = _filter_atoms(read_atoms(p), False, False)
    ac = _atom_class(atoms, t.params["center_a"], t.params["bfactor_a2"])
    rng = np.random.default_rng(7)
    worse = []
    for angles in [(0, 0, 0), (30, 60, 120), *rng.uniform([0, 0, 0], [360, 180, 360], (2, 3))]:
        a = euler_to_matrix(*angles)
        sim = project_atoms(ac, a, t.box, t.pixel_size_a)
        ref = _rotated_template_projection(t.volume, a, t.pixel_size_a)
        assert _ncc(sim, ref) > 0.99, angles
        # both integrate to the same projected potential (V*A * A^2 = V*A^3)
        assert sim.sum() == pytest.approx(ref.sum(), rel=0.01)
        if angles[1] > 20:
            worse.append(_ncc(sim, _rotated_template_projection(t.volume, a.T, t.pixel_size_a, 1)))
    assert min(worse) < 0.9  # the test does tell A from A.T


def test_interaction_constant():
    # 300 kV: sigma_e = 6.526e-4 rad / (V A); 200 kV: 7.29e-4
    assert interaction_constant(300) == pytest.approx(6.526e-4, rel=2e-3)
    assert interaction_constant(200) == pytest.approx(7.29e-4, rel=3e-3)


def test_seeded_reproducibility():
    p = structure("1A28.pdb.gz")
    kw = dict(shape=(192, 256), pixel_size_a=2.0, snr=0.05, ctf=CTFParams(defocus1_a=9000))
    a = simulate_micrograph([p], 4, seed=11, **kw)
    b = simulate_micrograph([p], 4, seed=11, **kw)
    c = simulate_micrograph([p], 4, seed=12, **kw)
    np.testing.assert_array_equal(a.image, b.image)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert not np.array_equal(a.image, c.image)
    assert not a.truth[["x", "y"]].equals(c.truth[["x", "y"]])


def test_truth_table_columns_and_types():
    ctf = CTFParams(defocus1_a=12000, defocus2_a=11000)
    r = simulate_micrograph(
        [structure("1A28.pdb.gz")], 3, shape=(160, 160), pixel_size_a=2.0, ctf=ctf, snr=0.1, seed=1
    )
    t = r.truth
    assert list(t.columns[: len(TRUTH_COLUMNS)]) == ["x", "y", "phi", "theta", "psi", "defocus_a", "class", "class_name"]
    assert "snr_matched" in t.columns
    assert len(t) == 3
    assert t["x"].dtype.kind == "i" and t["y"].dtype.kind == "i"
    assert np.all((t["phi"] >= 0) & (t["phi"] < 360))
    assert np.all((t["theta"] >= 0) & (t["theta"] <= 180))
    assert np.all((t["psi"] >= 0) & (t["psi"] < 360))
    assert np.all(t["defocus_a"] == 11500.0)
    assert set(t["class"]) == {0} and set(t["class_name"]) == {"1A28"}
    assert np.all(t["snr_matched"] > 0)
    assert r.image.shape == (160, 160) and r.image.dtype == np.float32
    assert r.pixel_size_a == 2.0 and r.ctf == ctf
    assert len(r.templates) == 1 and r.templates[0].pixel_size_a == 2.0


def test_particles_inside_and_not_overlapping():
    p = structure("1BD2.pdb.gz")
    r = simulate_micrograph([p], 15, shape=(512, 512), pixel_size_a=1.0, seed=3,
                            ctf=CTFParams(defocus1_a=12000), snr=0.02)
    t = r.truth
    assert len(t) == 15
    m = r.templates[0].box
    h = m // 2
    # the template box around each particle lies fully inside the image
    assert t["x"].min() >= h and t["y"].min() >= h
    assert t["x"].max() - h + m <= 512 and t["y"].max() - h + m <= 512
    # projections do not overlap: recompute each particle's footprint from the truth
    atoms = _filter_atoms(read_atoms(p), False, False)
    ac = _atom_class(atoms, r.templates[0].params["center_a"], 30.0)
    cover = np.zeros((512, 512), int)
    for row in t.itertuples():
        proj = project_atoms(ac, euler_to_matrix(row.phi, row.theta, row.psi), m, 1.0)
        foot = proj > 0.05 * proj.max()
        cover[row.y - h : row.y - h + m, row.x - h : row.x - h + m] += foot
    assert cover.max() == 1
    d = np.hypot(t["x"].to_numpy()[:, None] - t["x"].to_numpy(), t["y"].to_numpy()[:, None] - t["y"].to_numpy())
    assert d[np.triu_indices(len(t), 1)].min() > 20


def test_min_distance_and_edge_margin():
    r = simulate_micrograph([structure("1A28.pdb.gz")], 6, shape=(256, 256), pixel_size_a=2.0,
                            seed=5, min_distance_px=70, edge_margin_px=40)
    x, y = r.truth["x"].to_numpy(), r.truth["y"].to_numpy()
    d = np.hypot(x[:, None] - x, y[:, None] - y)[np.triu_indices(6, 1)]
    assert d.min() >= 70
    assert x.min() >= 40 and y.min() >= 40 and x.max() <= 255 - 40 and y.max() <= 255 - 40


def test_too_many_particles_is_a_clear_error():
    with pytest.raises(InputError) as e:
        simulate_micrograph([structure("1A28.pdb.gz")], 200, shape=(128, 128), pixel_size_a=2.0)
    assert "could not place particle" in str(e.value) and "\n" not in str(e.value)


def test_snr_sets_the_noise_level():
    snr = 0.05
    r = simulate_micrograph([structure("1A28.pdb.gz")], 5, shape=(256, 256), pixel_size_a=2.0,
                            ctf=CTFParams(defocus1_a=10000), snr=snr, seed=2, return_clean=True)
    noise = r.image.astype(np.float64) - r.clean
    assert noise.std() == pytest.approx(r.noise_sigma, rel=0.02)
    assert abs(noise.mean()) < 0.02 * r.noise_sigma
    # SNR = variance of the clean particle signal in the particle boxes / noise variance
    m = r.templates[0].box
    h = m // 2
    inbox = np.zeros(r.image.shape, bool)
    for row in r.truth.itertuples():
        inbox[row.y - h : row.y - h + m, row.x - h : row.x - h + m] = True
    assert r.clean[inbox].var() / noise.var() == pytest.approx(snr, rel=0.03)
    # the matched-filter SNR grows as sqrt(snr)
    r4 = simulate_micrograph([structure("1A28.pdb.gz")], 5, shape=(256, 256), pixel_size_a=2.0,
                             ctf=CTFParams(defocus1_a=10000), snr=4 * snr, seed=2)
    np.testing.assert_allclose(r4.truth["snr_matched"], 2 * r.truth["snr_matched"], rtol=1e-6)


def test_exposure_gives_poisson_counts():
    e = 20.0
    px = 2.0
    r = simulate_micrograph([structure("1A28.pdb.gz")], 4, shape=(256, 256), pixel_size_a=px,
                            exposure_e_per_a2=e, seed=4, return_clean=True)
    mean_counts = e * px * px
    assert r.image.mean() == pytest.approx(mean_counts, rel=0.01)
    assert np.all(r.image == np.round(r.image)) and r.image.min() >= 0
    noise = r.image.astype(np.float64) - r.clean
    assert noise.var() == pytest.approx(r.clean.mean(), rel=0.03)  # Poisson: variance = mean
    assert r.noise_sigma == pytest.approx(np.sqrt(mean_counts))
    assert r.params["image_units"] == "counts"


def test_no_noise_and_argument_errors():
    p = structure("1A28.pdb.gz")
    r = simulate_micrograph([p], 2, shape=(160, 160), pixel_size_a=2.0, return_clean=True)
    np.testing.assert_array_equal(r.image, r.clean)
    assert r.noise_sigma is None and r.truth["snr_matched"].isna().all()
    for kw, text in [
        ({"snr": 0.1, "exposure_e_per_a2": 30}, "not both"),
        ({"snr": -1}, "SNR"),
        ({"pixel_size_a": 0}, "pixel size"),
        ({"background": "water"}, "background"),
        ({"class_fractions": [1, 2]}, "class fractions"),
    ]:
        with pytest.raises(InputError) as e:
            simulate_micrograph([p], 2, **{"shape": (160, 160), "pixel_size_a": 2.0, **kw})
        assert text in str(e.value)


def test_particles_correlate_positively_with_ctf_filtered_template():
    """Template x CTF at the truth pose peaks at the truth position with positive sign."""
    ctf = CTFParams(defocus1_a=8000)
    px = 1.5
    r = simulate_micrograph([structure("1BD2.pdb.gz")], 3, shape=(320, 320), pixel_size_a=px,
                            ctf=ctf, seed=9, return_clean=True)
    img = r.clean.astype(np.float64)
    img -= img.mean()
    t = r.templates[0]
    h = t.box // 2
    f_img = np.fft.rfft2(img)
    c = ctf_2d(ctf, img.shape, px)
    for row in r.truth.itertuples():
        proj = _rotated_template_projection(t.volume, euler_to_matrix(row.phi, row.theta, row.psi), px, 1)
        ker = np.zeros_like(img)
        ker[: t.box, : t.box] = proj
        ker = np.roll(ker, (-h, -h), axis=(0, 1))  # template centre at pixel (0, 0)
        k = np.fft.rfft2(ker) * c
        cc = np.fft.irfft2(f_img * np.conj(k), s=img.shape)
        win = cc[row.y - 20 : row.y + 21, row.x - 20 : row.x + 21]
        iy, ix = np.unravel_index(np.argmax(win), win.shape)
        assert (iy - 20, ix - 20) == (0, 0)
        assert cc[row.y, row.x] > 0


def test_two_classes_and_fractions():
    r = simulate_micrograph([structure("1A28.pdb.gz"), structure("1BD2.pdb.gz")], 4,
                            shape=(320, 320), pixel_size_a=2.0, class_fractions=[3, 1], seed=0)
    counts = r.truth.groupby("class_name").size().to_dict()
    assert counts == {"1A28": 3, "1BD2": 1}
    assert set(r.truth["class"]) == {0, 1}
    assert [tt.box for tt in r.templates][0] < r.templates[1].box


def test_template_objects_as_structures():
    t = template_from_model(structure("1A28.pdb.gz"), 2.0)
    r = simulate_micrograph([t], 3, shape=(200, 200), pixel_size_a=2.0, snr=0.1, seed=1)
    assert len(r.truth) == 3 and r.templates[0] is t
    with pytest.raises(InputError):
        simulate_micrograph([t], 1, shape=(200, 200), pixel_size_a=1.0)


def test_ice_and_thickness_gradient():
    p = structure("1A28.pdb.gz")
    kw = dict(shape=(256, 256), pixel_size_a=2.0, seed=6, return_clean=True, exposure_e_per_a2=50.0)
    plain = simulate_micrograph([p], 3, **kw)
    ice = simulate_micrograph([p], 3, background="ice", **kw)
    grad = simulate_micrograph([p], 3, thickness_gradient=0.2, **kw)
    pd.testing.assert_frame_equal(plain.truth, grad.truth)
    assert ice.clean.std() > plain.clean.std()
    left, right = grad.clean[:, :32].mean(), grad.clean[:, -32:].mean()
    assert right / left == pytest.approx(1.1 / 0.9, rel=0.03)


def test_write_simulation(tmp_path):
    r = simulate_micrograph([structure("1A28.pdb.gz")], 3, shape=(160, 192), pixel_size_a=2.0,
                            snr=0.1, seed=1, return_clean=True)
    paths = write_simulation(r, tmp_path / "sim")
    names = sorted(p.name for p in paths.values())
    assert names == ["clean.mrc", "micrograph.mrc", "simulation.json", "template_0_1A28.mrc", "truth.csv"]
    with mrcfile.open(paths["micrograph"]) as m:
        assert m.data.shape == (160, 192)
        assert float(m.voxel_size.x) == pytest.approx(2.0)
        np.testing.assert_array_equal(m.data, r.image)
    back = pd.read_csv(paths["truth"])
    assert list(back.columns) == list(r.truth.columns)
    np.testing.assert_array_equal(back[["x", "y", "class"]], r.truth[["x", "y", "class"]])
    np.testing.assert_allclose(back[["phi", "theta", "psi"]], r.truth[["phi", "theta", "psi"]], atol=1e-3)
    # no silent overwrite, nothing touched
    before = paths["micrograph"].stat().st_mtime_ns
    with pytest.raises(InputError) as e:
        write_simulation(r, tmp_path / "sim")
    assert "exists" in str(e.value) and "overwrite" in str(e.value)
    assert paths["micrograph"].stat().st_mtime_ns == before
    write_simulation(r, tmp_path / "sim", overwrite=True)
    # micrograph-path form
    p2 = write_simulation(r, tmp_path / "other" / "mic01.mrc", write_templates=False)
    assert sorted(p.name for p in p2.values()) == [
        "mic01.mrc", "mic01_clean.mrc", "mic01_simulation.json", "mic01_truth.csv"
    ]
