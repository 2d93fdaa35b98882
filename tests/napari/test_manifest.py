"""The npe2 manifest loads from the installed distribution, validates and imports."""

from pathlib import Path

import npe2

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_loads_from_distribution_and_validates():
    manifest = npe2.PluginManifest.from_distribution("napari-2dtm")
    assert manifest.name == "napari-2dtm"
    manifest.validate_imports()  # every python_name resolves
    contrib = manifest.contributions
    assert {r.command for r in contrib.readers} == {"napari-2dtm.get_reader"}
    assert {w.display_name for w in contrib.widgets} >= {"2DTM Search", "2DTM Hits", "2DTM Reconstruct"}
    assert {s.display_name for s in contrib.sample_data} == {"2DTM demo", "lamella demo"}
    assert contrib.writers[0].filename_extensions == [".star", ".csv"]
    assert contrib.menus


def test_package_manifest_is_the_top_level_file():
    top = ROOT / "napari.yaml"
    in_package = ROOT / "src" / "napari_2dtm" / "napari.yaml"
    assert top.read_text() == in_package.read_text()
    assert npe2.PluginManifest.from_file(top).name == "napari-2dtm"
