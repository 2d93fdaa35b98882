"""JSON records: NumPy values become plain JSON, and records are strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_2dtm.io.records import plain, strict, to_json


def test_numpy_values_become_plain_json():
    rec = {"n": np.int64(3), "x": np.float32(0.5), "v": np.arange(3), "p": "a/b"}
    assert json.loads(to_json(rec)) == {"n": 3, "x": 0.5, "v": [0, 1, 2], "p": "a/b"}


def test_non_finite_values_are_null_and_the_record_is_strict():
    rec = {"resolution_a": math.inf, "fsc": np.array([1.0, np.nan, 0.2]),
           "nested": [{"omega": -np.inf}, 7.5]}
    text = json.dumps(strict(plain(rec)), allow_nan=False)  # raises on any Infinity/NaN
    assert json.loads(text) == {"resolution_a": None, "fsc": [1.0, None, 0.2],
                                "nested": [{"omega": None}, 7.5]}
    with pytest.raises(ValueError):  # what the plain record would have been
        json.dumps(plain(rec), allow_nan=False)
