"""Pixel sizes that disagree (issue 16, cases 5 and 6): never searched silently wrong.

Case 5: a template map keeps its header voxel size (``--template-pixel-size`` wins) and is
resampled in Fourier space to the micrograph's. Case 6: a CTFFIND file whose pixel size
disagrees with the micrograph header, or is 0, is refused in one line.
"""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from helpers.hostile import DEFOCUS_A, PIXEL_SIZE_A, assert_refused, looks_complete
from napari_2dtm import read_results, search
from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.io.mrc import read_map, write_mrc
from napari_2dtm.search.config import SearchConfig
from napari_2dtm.templates.template import Template, resample_template


def _fourier_bin2(vol: np.ndarray) -> np.ndarray:
    """Independent 2x Fourier binning (centred spectrum cropped to the middle half)."""
    n = vol.shape[0]
    ft = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(vol)))
    q = n // 4
    small = ft[q:q + n // 2, q:q + n // 2, q:q + n // 2]
    return (np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(small))).real / 8).astype(np.float32)


def _found(hits, truth, tol_px=2.0) -> int:
    return sum(len(hits) > 0 and np.hypot(hits.x - x, hits.y - y).min() <= tol_px
               for x, y, *_ in truth)


@pytest.fixture
def tpl_8a(case):
    """The case's 4 A template, Fourier-binned and written at 8 A (the header says so)."""
    vol, _ = read_map(case.tpl)
    path = case.dir / "tpl_8A.mrc"
    write_mrc(path, _fourier_bin2(vol), 2 * PIXEL_SIZE_A)
    return str(path)


# ---------------------------------------------------------------- case 5: template header
def test_a_template_at_twice_the_pixel_size_finds_the_planted_particles(case, cli, tpl_8a):
    code, out, err = cli("search", case.mic, "--template", tpl_8a, "--out", case.out, *case.fast)
    assert code == 0, err
    assert _found(read_results(case.out).hits, case.truth) == len(case.truth)
    # The old behaviour, the header overridden by the micrograph's 4 A (now only on request):
    # the particle looks half its size and the planted particles are missed.
    old = case.dir / "old"
    code, _, err = cli("search", case.mic, "--template", tpl_8a, "--out", old, *case.fast,
                       "--template-pixel-size", PIXEL_SIZE_A)
    assert code == 0, err
    assert _found(read_results(old).hits, case.truth) < len(case.truth)


def test_the_python_api_keeps_the_template_header(case, tpl_8a):
    from napari_2dtm.io.mrc import read_micrograph

    image, px = read_micrograph(case.mic)
    cfg = SearchConfig(ctf=CTFParams(defocus1_a=DEFOCUS_A), out_of_plane_step_deg=12,
                       in_plane_step_deg=12, high_res_limit_a=12, device="cpu")
    res = search(image, px, tpl_8a, cfg)
    t = res.metadata["template"]
    assert t["params"]["resampled_from_pixel_size_a"] == pytest.approx(8.0)
    assert t["pixel_size_a"] == pytest.approx(PIXEL_SIZE_A, rel=1e-4)
    assert _found(res.hits, case.truth) == len(case.truth)


@pytest.mark.parametrize(("from_px", "to_px"), [(8.0, 3.5), (3.5, 8.0), (2.0, 3.3)])
def test_fourier_resampling_keeps_a_gaussian_blob_in_angstrom(from_px, to_px):
    sigma_a = 14.0  # well sampled at every pixel size here (>= 1.75 px)
    n = int(round(160 / from_px)) // 2 * 2
    g = (np.indices((n, n, n)) - n // 2) * from_px
    blob = np.exp(-(g ** 2).sum(0) / (2 * sigma_a ** 2)).astype(np.float32)
    r = resample_template(Template(blob, from_px), to_px)
    assert r.pixel_size_a == pytest.approx(to_px, rel=1e-4)
    m = r.box
    assert m * r.pixel_size_a >= n * from_px - 1e-6 and m % 2 == 0  # the extent is kept
    gr = (np.indices((m, m, m)) - m // 2) * r.pixel_size_a
    w = r.volume
    for axis in range(3):  # centre (0 A) and second moment (sigma^2) in Angstrom
        assert (w * gr[axis]).sum() / w.sum() == pytest.approx(0.0, abs=0.02 * sigma_a)
        assert np.sqrt((w * gr[axis] ** 2).sum() / w.sum()) == pytest.approx(sigma_a, rel=0.01)
    analytic = np.exp(-(gr ** 2).sum(0) / (2 * sigma_a ** 2))  # the values are kept
    assert np.abs(w - analytic).max() < 0.01


def test_a_template_without_a_header_pixel_size_is_refused_naming_the_option(case, cli):
    with mrcfile.open(case.tpl, mode="r+") as m:
        m.voxel_size = 0.0
    code, out, err = cli("search", case.mic, "--template", case.tpl, "--out", case.out,
                         *case.fast)
    assert_refused(code, err, "tpl.mrc", "--template-pixel-size")
    assert not looks_complete(case.out)
    code, out, err = cli("search", case.mic, "--template", case.tpl, "--out", case.out,
                         *case.fast, "--template-pixel-size", PIXEL_SIZE_A)
    assert code == 0, err
    assert _found(read_results(case.out).hits, case.truth) == len(case.truth)


# ---------------------------------------------------------------- case 6: CTFFIND pixel size
def _ctffind(path, pixel_size_a):
    path.write_text(
        "# Output from CTFFIND version 4.1.14\n"
        f"# Pixel size: {pixel_size_a} Angstroms ; acceleration voltage: 300.0 keV ; "
        "spherical aberration: 2.70 mm ; amplitude contrast: 0.07\n"
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; ...\n"
        "1.000000 10000.0 10000.0 0.0 0.0 -0.05 8.0\n")
    return str(path)


def test_a_ctffind_pixel_size_disagreeing_with_the_header_is_refused(case, cli):
    ctf = _ctffind(case.dir / "mic_ctf.txt", 5.0)
    code, out, err = cli("search", case.mic, "--template", case.tpl, "--out", case.out,
                         *case.fast, "--ctffind", ctf)
    assert_refused(code, err, "mic.mrc", "mic_ctf.txt", "4", "5")
    assert not looks_complete(case.out)
    # --pixel-size says which is right
    code, out, err = cli("search", case.mic, "--template", case.tpl, "--out", case.out,
                         *case.fast, "--ctffind", ctf, "--pixel-size", PIXEL_SIZE_A)
    assert code == 0, err
    assert read_results(case.out).input_pixel_size_a == pytest.approx(PIXEL_SIZE_A)


def test_a_ctffind_pixel_size_within_one_percent_is_accepted(case, cli):
    ctf = _ctffind(case.dir / "mic_ctf.txt", 1.005 * PIXEL_SIZE_A)
    code, out, err = cli("search", case.mic, "--template", case.tpl, "--out", case.out,
                         *case.fast, "--ctffind", ctf)
    assert code == 0, err
    assert read_results(case.out).input_pixel_size_a == pytest.approx(PIXEL_SIZE_A)  # header


def test_a_ctffind_pixel_size_of_zero_is_refused_naming_the_ctffind_file(case, cli):
    ctf = _ctffind(case.dir / "mic_ctf.txt", 0.0)
    code, out, err = cli("search", case.mic, "--template", case.tpl, "--out", case.out,
                         *case.fast, "--ctffind", ctf)
    assert_refused(code, err, "mic_ctf.txt")
    assert not looks_complete(case.out)


def test_batch_refuses_the_micrograph_whose_ctffind_pixel_size_disagrees(case, cli):
    ctf_dir = case.dir / "ctf"
    ctf_dir.mkdir()
    _ctffind(ctf_dir / "mic.txt", 5.0)
    out = case.dir / "batch"
    code, _, err = cli("batch", case.mic, "--template", case.tpl, "--out", out, *case.fast,
                       "--ctffind-dir", ctf_dir, "--workers", "0")
    assert code == 1, err  # the micrograph failed, with the one line in the summary
    summary = (out / "summary.csv").read_text()
    assert "mic.txt" in summary and "5 A" in summary
    assert not looks_complete(out / "mic")
