"""The writer saves a hits points layer to STAR or CSV, positions as shown."""

import numpy as np
import pandas as pd
import pytest

from napari_2dtm._napari._layers import points_layer
from napari_2dtm.io.star import read_hits


@pytest.fixture
def hits():
    return pd.DataFrame(
        {
            "x": [10.0, 200.5, 31.0],
            "y": [20.0, 40.0, 150.25],
            "phi": [1.0, 2.0, 3.0],
            "theta": [10.0, 20.0, 30.0],
            "psi": [5.0, 6.0, 7.0],
            "defocus_a": [0.0, 100.0, -100.0],
            "zscore": [9.0, 8.5, 8.0],
            "snr": [9.5, 9.0, 8.6],
        }
    )


@pytest.mark.parametrize("ext", [".csv", ".star"])
def test_points_layer_saves_through_napari(make_napari_viewer, tmp_path, hits, ext):
    viewer = make_napari_viewer()
    data, kwargs, _ = points_layer(hits, 1.5, "hits")
    layer = viewer.add_points(data, **kwargs)
    layer.data = layer.data + np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # a moved point
    out = tmp_path / f"hits{ext}"
    written = layer.save(str(out), plugin="napari-2dtm")
    assert written == [str(out)]
    table = read_hits(out)  # the same reader as for a results folder
    if ext == ".csv":
        assert list(table.columns[:2]) == ["x", "y"]
    np.testing.assert_allclose(table["x"], hits["x"])
    np.testing.assert_allclose(table["y"], hits["y"] + [1.0, 0.0, 0.0])
    np.testing.assert_allclose(table["snr"], hits["snr"])
