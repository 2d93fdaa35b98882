"""Shared fixtures: MRC files with odd headers, and the demo sample (made once).

GUI tests use napari's ``make_napari_viewer`` fixture (a real viewer); pytest-xvfb
gives them an X server when there is no display.
"""

from __future__ import annotations

import os
import warnings

# Qt6 (PyQt6, what scripts/setup.sh installs) even where an older PyQt5 is still installed;
# set before anything imports qtpy
os.environ.setdefault("QT_API", "pyqt6")

import mrcfile
import numpy as np
import pytest


@pytest.fixture
def make_mrc(tmp_path):
    """Write an MRC file: ``make_mrc(name, data, voxel_size=1.5, ispg=None) -> Path``."""

    def _make(name, data, voxel_size=1.5, ispg=None):
        path = tmp_path / name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.new(path, overwrite=True) as m:
                m.set_data(np.asarray(data))
                m.voxel_size = voxel_size
                if ispg is not None:
                    m.header.ispg = ispg
        return path

    return _make


@pytest.fixture(scope="session")
def demo_sample():
    """The '2DTM demo' sample layers (simulated once per test session)."""
    from napari_2dtm._napari._sample_data import demo_sample as make

    return make()


@pytest.fixture(autouse=True)
def _template_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Keep the model-template disk cache inside the test session's temporary folder."""
    monkeypatch.setenv("NAPARI_2DTM_CACHE", str(tmp_path_factory.getbasetemp() / "napari2dtm-cache"))
