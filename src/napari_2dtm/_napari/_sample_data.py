"""Sample data: simulated micrographs with planted particles and their ground truth.

The samples are defined and simulated in :mod:`napari_2dtm.samples` (Qt-free, shared
with the headless demo and the tests); this module turns them into layers. Each
returns, in this order: the template(s) as hidden 3D image layers, the micrograph, and
the ground truth as a hidden points layer whose ``features`` are the simulator's truth
table. The micrograph layer's metadata holds
``search_defaults``, the Search widget's settings for a quick search that finds the
planted particles; the demo command and the tests use the same settings.

This module imports nothing from napari or Qt.
"""

from __future__ import annotations

from pathlib import Path

from napari_2dtm.samples import DEMO, LAMELLA, simulate_sample

from ._layers import micrograph_layer, points_layer

__all__ = ["DEMO", "LAMELLA", "simulate_sample", "sample_layers", "demo_sample", "lamella_sample"]


def sample_layers(spec: dict) -> list:
    """Layer data of a sample: hidden template(s), micrograph, hidden ground truth."""
    sim = simulate_sample(spec)
    name = spec["name"]
    layers = []
    template_names = []
    for t in sim.templates:
        tname = f"template {Path(str(t.source)).name.split('.')[0]}"
        template_names.append(tname)
        px = float(t.pixel_size_a)
        layers.append(
            (
                t.volume,
                dict(
                    name=tname,
                    scale=(px, px, px),
                    units=("angstrom",) * 3,
                    visible=False,
                    colormap="gray",
                    metadata={"napari_2dtm": {"kind": "template", "pixel_size_a": px}},
                ),
                "image",
            )
        )
    defaults = dict(spec["ctf"], **spec["search"], template_layer=template_names[0])
    mic = micrograph_layer(sim.image, sim.pixel_size_a, name)
    mic[1]["metadata"]["napari_2dtm"].update(
        ctf=sim.ctf.to_dict(), search_defaults=defaults
    )
    layers.append(mic)
    box = max(t.box for t in sim.templates)
    layers.append(
        points_layer(
            sim.truth,
            sim.pixel_size_a,
            f"ground truth [{name}]",
            size_px=0.6 * box,
            color_by=None,
            border_color="#ffcc00",
            symbol="square",
            visible=False,
        )
    )
    return layers


def demo_sample() -> list:
    """napari sample "2DTM demo"."""
    return sample_layers(DEMO)


def lamella_sample() -> list:
    """napari sample "lamella demo"."""
    return sample_layers(LAMELLA)
