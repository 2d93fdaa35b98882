"""Templates from atomic models (napari_2dtm.templates.model)."""

from __future__ import annotations

import gzip
from pathlib import Path

import gemmi
import numpy as np
import pytest
from scipy.spatial import cKDTree

from helpers.planting import structure_file as structure
from napari_2dtm.errors import InputError
from napari_2dtm.templates import model as mdl
from napari_2dtm.templates.atoms import read_atoms
from napari_2dtm.templates.load import load_template
from napari_2dtm.templates.model import (
    VOLT_A2,
    critical_exposure,
    dose_filter,
    template_from_model,
)
from napari_2dtm.templates.selection import select_atoms
from napari_2dtm.templates.template import Template


def _centroid(vol):
    w = vol.sum()
    z, y, x = (np.arange(s, dtype=np.float64) for s in vol.shape)
    return np.array(
        [
            (vol.sum(axis=(0, 1)) * x).sum() / w,
            (vol.sum(axis=(0, 2)) * y).sum() / w,
            (vol.sum(axis=(1, 2)) * z).sum() / w,
        ]
    )


def _voxel_coords(t: Template) -> np.ndarray:
    """Model coordinates (x, y, z) of every voxel, rows in C order of [z, y, x]."""
    n = t.box
    g = np.arange(n, dtype=np.float64) * t.pixel_size_a
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    o = np.asarray(t.params["origin_a"])
    return np.stack([x.ravel() + o[0], y.ravel() + o[1], z.ravel() + o[2]], axis=1)


def _f0_sum(path: Path) -> float:
    """Sum over atoms (no waters, no H) of occupancy * f_e(0) from gemmi's coefficients."""
    st = gemmi.read_structure(str(path))
    total = 0.0
    for ch in st[0]:
        for res in ch:
            if res.is_water():
                continue
            for a in res:
                if a.element.is_hydrogen:
                    continue
                total += a.occ * sum(a.element.c4322.get_coefs()[:5])
    return total


# ---------------------------------------------------------------------------------------


def test_center_mass_puts_potential_centroid_at_box_centre():
    t = template_from_model(structure("1BD2.pdb.gz"), 1.0, box=160)
    assert t.volume.shape == (160, 160, 160)
    assert t.volume.dtype == np.float32
    assert t.pixel_size_a == 1.0
    c = _centroid(t.volume.astype(np.float64))
    assert np.all(np.abs(c - 80) < 0.5), c
    assert np.all(np.abs(c - 80) < 0.05), c  # in fact exact up to sampling
    assert t.params["center"] == "mass" and t.params["units"] == "V"


def test_auto_box_is_even_and_holds_model_in_any_orientation():
    p = structure("1BD2.pdb.gz")
    t = template_from_model(p, 1.0)
    assert t.box % 2 == 0
    atoms = read_atoms(p)
    keep = ~atoms.is_water & ~atoms.is_hydrogen
    r = np.linalg.norm(atoms.xyz[keep] - np.asarray(t.params["center_a"]), axis=1).max()
    assert t.box >= 2 * r  # a sphere of the model's radius fits: no clipping when rotated
    assert t.box <= 2 * r + 2 * mdl.AUTO_BOX_MARGIN_A + 2
    t2 = template_from_model(p, 2.0)
    assert abs(t2.box - t.box / 2) <= 2


def test_integrated_potential_scales_with_scattering_factors():
    pa, pb = structure("1BD2.pdb.gz"), structure("4E43.pdb.gz")
    ta = template_from_model(pa, 1.0)
    tb = template_from_model(pb, 1.0)
    ia = float(ta.volume.sum(dtype=np.float64)) * ta.pixel_size_a**3
    ib = float(tb.volume.sum(dtype=np.float64)) * tb.pixel_size_a**3
    fa, fb = _f0_sum(pa), _f0_sum(pb)
    assert ia / ib == pytest.approx(fa / fb, rel=0.02)
    # Absolute scale: volts * A^3 = 47.878 V A^2 * f_e(0) in A.
    assert VOLT_A2 == pytest.approx(47.878, rel=1e-3)
    assert ia == pytest.approx(VOLT_A2 * fa, rel=0.01)
    assert ib == pytest.approx(VOLT_A2 * fb, rel=0.01)
    # The projected potential (V*A) integrates to the same number.
    proj = ta.volume.sum(axis=0, dtype=np.float64) * ta.pixel_size_a
    assert proj.sum() * ta.pixel_size_a**2 == pytest.approx(ia, rel=1e-6)


def test_omit_selection_differs_only_around_the_ligand():
    p = structure("1A28.pdb.gz")
    full = template_from_model(p, 1.0, center="model")
    omit = template_from_model(p, 1.0, center="model", selection="all but resname STR")
    assert full.box == omit.box
    assert full.params["origin_a"] == omit.params["origin_a"]
    assert omit.params["n_atoms"] == full.params["n_atoms"] - 46  # two STR ligands, 23 atoms each
    diff = (full.volume.astype(np.float64) - omit.volume).ravel()
    assert diff.min() > -1e-4 * full.volume.max()  # removing atoms only removes potential
    atoms = read_atoms(p)
    lig = atoms.xyz[atoms.resname == "STR"]
    assert len(lig) == 46
    d, _ = cKDTree(lig).query(_voxel_coords(full), distance_upper_bound=5.0)
    near = np.isfinite(d)
    energy = diff**2
    assert energy[near].sum() / energy.sum() > 0.99
    # and the ligand's potential is really there: the omitted part is ~ its f_e(0) sum
    f0_lig = float((atoms.occ * atoms.f0)[atoms.resname == "STR"].sum())
    assert diff.sum() * full.pixel_size_a**3 == pytest.approx(VOLT_A2 * f0_lig, rel=0.02)


def test_center_model_puts_selections_on_the_same_grid():
    p = structure("1BD2.pdb.gz")
    a = template_from_model(p, 1.0, center="model")
    b = template_from_model(p, 1.0, center="model", selection="not chain B")
    assert a.box == b.box
    assert a.params["origin_a"] == b.params["origin_a"]
    assert a.params["center_a"] == b.params["center_a"]
    # Grid points sit at integer multiples of the pixel size in model coordinates.
    o = np.asarray(a.params["origin_a"]) / a.pixel_size_a
    assert np.allclose(o, np.round(o), atol=1e-9)
    atoms = read_atoms(p)
    chain_b = atoms.xyz[(atoms.chain == "B") & ~atoms.is_water]
    d, _ = cKDTree(chain_b).query(_voxel_coords(a), distance_upper_bound=8.0)
    far = ~np.isfinite(d)
    diff = np.abs(a.volume.astype(np.float64) - b.volume).ravel()
    assert far.sum() > 0.5 * diff.size
    assert diff[far].max() <= 1e-5 * a.volume.max()
    assert diff[~far].max() > 0.1 * a.volume.max()  # chain B really was removed
    # Same grid also with an explicit box and with another B-factor.
    c = template_from_model(p, 1.0, center="model", box=200, selection="chain A")
    d2 = template_from_model(p, 1.0, center="model", box=200)
    assert c.params["origin_a"] == d2.params["origin_a"]


def test_explicit_center_point():
    p = structure("1A28.pdb.gz")
    t = template_from_model(p, 1.5, center=(36.0, 18.0, 52.0), box=96)
    assert t.params["center_a"] == [36.0, 18.0, 52.0]
    assert np.allclose(t.params["origin_a"], np.array([36.0, 18.0, 52.0]) - 48 * 1.5)


def test_cif_and_pdb_give_the_same_template():
    a = template_from_model(structure("1BD2.pdb.gz"), 2.0)
    try:
        b = template_from_model(structure("1BD2.cif.gz"), 2.0)
    except pytest.skip.Exception:
        return
    assert a.box == b.box
    np.testing.assert_allclose(a.volume, b.volume, atol=1e-4 * a.volume.max())


def test_selection_syntax():
    atoms = read_atoms(structure("1A28.pdb.gz"))
    n = len(atoms)
    n_a = int((atoms.chain == "A").sum())
    assert select_atoms(atoms, None).all()
    assert select_atoms(atoms, "").all()
    assert select_atoms(atoms, "chain A,B").sum() == n
    assert select_atoms(atoms, "chain A B").sum() == n
    assert select_atoms(atoms, "chain A").sum() == n_a
    assert select_atoms(atoms, "not chain B").sum() == n_a
    assert select_atoms(atoms, "resname STR").sum() == 46
    assert select_atoms(atoms, "resname str").sum() == 46
    assert select_atoms(atoms, "not resname STR").sum() == n - 46
    assert select_atoms(atoms, "all but resname STR").sum() == n - 46
    assert select_atoms(atoms, "chain A but resname STR").sum() == n_a - 23
    assert select_atoms(atoms, "water").sum() == 180
    assert select_atoms(atoms, "ligand").sum() == 46
    assert select_atoms(atoms, "(chain A or chain B) and not water").sum() == n - 180
    m = select_atoms(atoms, "chain A and resid 700-710")
    assert m.sum() > 0
    assert np.all(atoms.seqnum[m] >= 700) and np.all(atoms.seqnum[m] <= 710)
    assert np.all(atoms.chain[m] == "A")
    np.testing.assert_array_equal(m, select_atoms(atoms, "/1/A/700-710"))
    assert select_atoms(atoms, "name CA and chain A").sum() == int(
        ((atoms.atom_name == "CA") & (atoms.chain == "A")).sum()
    )
    assert select_atoms(atoms, "element O").sum() == int((atoms.element == "O").sum())


@pytest.mark.parametrize("sel", ["chian A", "chain", "resid x-y", "(chain A", "chain A and", "/1/A/ab("])
def test_bad_selection_is_one_line_naming_the_file(sel):
    atoms = read_atoms(structure("1A28.pdb.gz"))
    with pytest.raises(InputError) as e:
        select_atoms(atoms, sel)
    msg = str(e.value)
    assert "\n" not in msg
    assert "1A28.pdb.gz" in msg and "selection" in msg


def test_filters_hydrogens_and_waters():
    p = structure("1A28.pdb.gz")
    t = template_from_model(p, 2.0)
    tw = template_from_model(p, 2.0, keep_waters=True, box=t.box + 40)
    assert tw.params["n_atoms"] == t.params["n_atoms"] + 180
    assert tw.volume.sum() > t.volume.sum()


# ---------------------------------------------------------------------------------------
# Bad input: InputError, one line naming the file and the problem


def _one_line(e, name):
    msg = str(e.value)
    assert "\n" not in msg
    assert name in msg
    return msg


def test_unreadable_model_file(tmp_path):
    junk = tmp_path / "junk.cif"
    junk.write_text("this is not an mmCIF file\n{{{\n")
    with pytest.raises(InputError) as e:
        template_from_model(junk, 1.0)
    msg = _one_line(e, "junk.cif")
    assert "cannot read" in msg or "no atoms" in msg

    badgz = tmp_path / "broken.pdb.gz"
    badgz.write_bytes(b"\x1f\x8b\x08\x00 definitely not gzip data")
    with pytest.raises(InputError) as e:
        template_from_model(badgz, 1.0)
    assert "cannot read atomic model" in _one_line(e, "broken.pdb.gz")

    empty = tmp_path / "empty.pdb"
    empty.write_text("HEADER    NOTHING HERE\nEND\n")
    with pytest.raises(InputError) as e:
        template_from_model(empty, 1.0)
    assert "no atoms" in _one_line(e, "empty.pdb")

    with pytest.raises(InputError) as e:
        template_from_model(tmp_path / "missing.pdb", 1.0)
    assert "not found" in _one_line(e, "missing.pdb")


def test_empty_selection():
    with pytest.raises(InputError) as e:
        template_from_model(structure("1BD2.pdb.gz"), 1.0, selection="chain Z")
    msg = _one_line(e, "1BD2.pdb.gz")
    assert "matches no atoms" in msg and "chain Z" in msg


def test_box_too_small():
    with pytest.raises(InputError) as e:
        template_from_model(structure("1BD2.pdb.gz"), 1.0, box=64)
    msg = _one_line(e, "1BD2.pdb.gz")
    assert "too small" in msg and "box 64" in msg


@pytest.mark.parametrize("px", [0.0, -1.0, float("nan")])
def test_pixel_size_must_be_positive(px):
    with pytest.raises(InputError) as e:
        template_from_model(structure("1BD2.pdb.gz"), px)
    assert "pixel size must be > 0" in _one_line(e, "1BD2.pdb.gz")


def test_other_bad_parameters():
    p = structure("1A28.pdb.gz")
    for kw, text in [
        ({"bfactor_a2": -5}, "B-factor"),
        ({"center": "middle"}, "center"),
        ({"dose_e_per_a2": -1}, "exposure"),
        ({"box": 1}, "box"),
    ]:
        with pytest.raises(InputError) as e:
            template_from_model(p, 2.0, **kw)
        assert text in _one_line(e, "1A28.pdb.gz")


# ---------------------------------------------------------------------------------------


def test_load_template_uses_the_model_loader():
    p = structure("1A28.pdb.gz")
    t = load_template(p, pixel_size_a=2.0, bfactor_a2=40.0)
    assert isinstance(t, Template)
    assert t.pixel_size_a == 2.0 and t.params["bfactor_a2"] == 40.0
    with pytest.raises(InputError) as e:
        load_template(p)
    assert "pixel size" in _one_line(e, "1A28.pdb.gz")


def test_memory_and_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_2DTM_CACHE", str(tmp_path / "c"))
    p = tmp_path / "m.pdb.gz"
    p.write_bytes(structure("1A28.pdb.gz").read_bytes())
    mdl.clear_cache()
    t1 = template_from_model(p, 2.0)
    files = list((tmp_path / "c" / "templates").glob("*.npy"))
    assert len(files) == 1
    t1.volume[:] = 0  # the caller owns its copy
    t2 = template_from_model(p, 2.0)
    assert t2.volume.max() > 0
    mdl.clear_cache()  # memory only: the disk copy is used
    t3 = template_from_model(p, 2.0)
    np.testing.assert_array_equal(t2.volume, t3.volume)
    assert t3.params == t2.params
    # A different parameter is a different entry; a changed file is recomputed.
    template_from_model(p, 2.0, bfactor_a2=50.0)
    assert len(list((tmp_path / "c" / "templates").glob("*.npy"))) == 2
    with gzip.open(p, "rt") as fh:
        lines = [ln for ln in fh if not (ln.startswith("HETATM") and " STR " in ln)]
    with gzip.open(p, "wt") as fh:
        fh.writelines(lines)
    t4 = template_from_model(p, 2.0)
    assert t4.params["n_atoms"] == t2.params["n_atoms"] - 46
    # cache=False always recomputes and writes nothing new
    monkeypatch.setenv("NAPARI_2DTM_CACHE", "off")
    assert mdl.cache_dir() is None
    t5 = template_from_model(p, 2.0, cache=False)
    np.testing.assert_array_equal(t4.volume, t5.volume)


def test_dose_filter():
    assert dose_filter(0.0, 30.0) == pytest.approx(1.0)
    k = np.array([0.05, 0.1, 0.2, 0.3])
    q = dose_filter(k, 30.0)
    assert np.all(np.diff(q) < 0) and np.all((q > 0) & (q < 1))
    # Grant & Grigorieff 2015: N_e(k) = 0.245 k^-1.665 + 2.81 at 300 kV
    assert critical_exposure(0.25) == pytest.approx(0.245 * 0.25**-1.665 + 2.81, rel=2e-3)
    assert critical_exposure(0.25, 200.0) == pytest.approx(0.8 * critical_exposure(0.25), rel=1e-9)
    p = structure("1A28.pdb.gz")
    t0 = template_from_model(p, 1.0)
    t1 = template_from_model(p, 1.0, dose_e_per_a2=40.0)
    assert t1.volume.sum() == pytest.approx(t0.volume.sum(), rel=1e-4)  # DC untouched
    f0 = np.abs(np.fft.rfftn(t0.volume))
    f1 = np.abs(np.fft.rfftn(t1.volume))
    kk = np.sqrt(
        np.fft.fftfreq(t0.box)[:, None, None] ** 2
        + np.fft.fftfreq(t0.box)[None, :, None] ** 2
        + np.fft.rfftfreq(t0.box)[None, None, :] ** 2
    )
    hi = kk > 0.3
    assert f1[hi].sum() < 0.7 * f0[hi].sum()


def test_template_mrc_header_places_map_on_model(tmp_path):
    import mrcfile

    t = template_from_model(structure("1A28.pdb.gz"), 2.0, center="model")
    out = tmp_path / "t.mrc"
    mdl.write_template_mrc(out, t)
    with mrcfile.open(out) as m:
        assert float(m.voxel_size.x) == pytest.approx(2.0)
        assert float(m.header.origin.x) == pytest.approx(t.params["origin_a"][0], abs=1e-3)
        np.testing.assert_array_equal(m.data, t.volume)
    with pytest.raises(InputError) as e:
        mdl.write_template_mrc(out, t)
    assert "exists" in _one_line(e, "t.mrc")
