"""The reader opens MRC images, stacks and maps with odd headers, or declines cleanly."""

import numpy as np
import pytest

from napari_2dtm._napari._reader import get_reader

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "dtype, mode",
    [(np.int8, 0), (np.int16, 1), (np.float32, 2), (np.uint16, 6)],
)
def test_2d_modes_open_scaled_in_angstrom(make_mrc, dtype, mode):
    data = (RNG.random((40, 50)) * 100).astype(dtype)
    path = make_mrc(f"m{mode}.mrc", data, voxel_size=1.25)
    reader = get_reader(str(path))
    assert reader is not None
    [(arr, kwargs, kind)] = reader(str(path))
    assert kind == "image" and arr.shape == (40, 50) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, data.astype(np.float32))
    assert kwargs["scale"] == (1.25, 1.25)
    assert kwargs["units"] == ("angstrom", "angstrom")
    lo, hi = kwargs["contrast_limits"]
    assert data.min() <= lo < hi <= data.max()


def test_zero_pixel_size_opens_in_pixels(make_mrc):
    path = make_mrc("zero.mrc", RNG.random((32, 32)).astype(np.float32), voxel_size=0.0)
    [(_, kwargs, _)] = get_reader(path)(path)
    assert kwargs["scale"] == (1.0, 1.0)
    assert kwargs["units"] == ("pixel", "pixel")


def test_single_image_stack_opens_as_2d(make_mrc):
    path = make_mrc("one.mrcs", RNG.random((1, 24, 30)).astype(np.float32))
    [(arr, kwargs, _)] = get_reader(path)(path)
    assert arr.shape == (24, 30) and kwargs["scale"] == (1.5, 1.5)


def test_stack_opens_with_image_slider(make_mrc):
    path = make_mrc("parts.mrcs", RNG.random((5, 24, 24)).astype(np.float32), voxel_size=2.0)
    [(arr, kwargs, _)] = get_reader(path)(path)
    assert arr.shape == (5, 24, 24)
    assert kwargs["scale"] == (1.0, 2.0, 2.0)
    assert kwargs["axis_labels"] == ("image", "y", "x")


def test_space_group_zero_mrc_is_a_stack_and_map_is_a_volume(make_mrc):
    stack = make_mrc("stack.mrc", RNG.random((3, 20, 24)).astype(np.float32), ispg=0)
    vol = make_mrc("vol.map", RNG.random((16, 16, 16)).astype(np.float32), voxel_size=1.1)
    assert get_reader(stack)(stack)[0][1]["axis_labels"] == ("image", "y", "x")
    [(arr, kwargs, _)] = get_reader(vol)(vol)
    assert arr.shape == (16, 16, 16)
    assert kwargs["scale"] == pytest.approx((1.1, 1.1, 1.1))


def test_declines_unreadable_files(tmp_path, make_mrc):
    junk = tmp_path / "junk.mrc"
    junk.write_bytes(b"not an mrc file at all" * 100)
    empty = tmp_path / "empty.mrc"
    empty.write_bytes(b"")
    good = make_mrc("trunc.mrc", RNG.random((64, 64)).astype(np.float32))
    truncated = tmp_path / "truncated.mrc"
    truncated.write_bytes(good.read_bytes()[:2000])
    complex_ = make_mrc("complex.mrc", np.ones((8, 8), np.complex64))
    other = tmp_path / "image.tif"
    other.write_bytes(b"II*\x00")
    for p in (junk, empty, truncated, complex_, other, tmp_path / "missing.mrc", tmp_path):
        assert get_reader(str(p)) is None, p
    assert get_reader([str(good), str(junk)]) is None


def test_viewer_opens_odd_files_and_declines_junk(make_napari_viewer, make_mrc, tmp_path):
    viewer = make_napari_viewer()
    p0 = make_mrc("mode0.mrc", (RNG.random((30, 30)) * 50).astype(np.int8), voxel_size=0.0)
    p6 = make_mrc("mode6.mrcs", (RNG.random((3, 30, 30)) * 500).astype(np.uint16))
    viewer.open([str(p0)], plugin="napari-2dtm")
    viewer.open(str(p6), plugin="napari-2dtm")
    assert [layer.name for layer in viewer.layers] == ["mode0", "mode6"]
    assert viewer.layers["mode6"].data.shape == (3, 30, 30)
    junk = tmp_path / "junk.mrc"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError):  # napari reports "no reader", nothing crashes
        viewer.open(str(junk), plugin="napari-2dtm")
    assert len(viewer.layers) == 2
