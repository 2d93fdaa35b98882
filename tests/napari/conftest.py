"""Every test in this folder opens a real napari viewer (Xvfb without a display)."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/napari/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.gui)
