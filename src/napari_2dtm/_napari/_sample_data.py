"""Sample data: simulated micrographs with planted particles and their ground truth.

Both samples are made on the fly by :func:`napari_2dtm.simulate.simulate_micrograph`
from the structures shipped in ``napari_2dtm/data`` (seeded: the same every time,
a few seconds to make). Each returns, in this order: the template(s) as hidden 3D
image layers, the micrograph, and the ground truth as a hidden points layer whose
``features`` are the simulator's truth table. The micrograph layer's metadata holds
``search_defaults``, the Search widget's settings for a quick search that finds the
planted particles; the demo command and the tests use the same settings.

This module imports nothing from napari or Qt.
"""

from __future__ import annotations

from pathlib import Path

from ._layers import micrograph_layer, points_layer

DATA = Path(__file__).resolve().parents[1] / "data"

#: the "2DTM demo": a small micrograph with well separated 1BD2 particles
DEMO = dict(
    name="2DTM demo",
    structures=("1BD2.pdb.gz",),
    n_particles=8,
    shape=(320, 320),
    pixel_size_a=2.0,
    ctf=dict(defocus1_a=10000.0, defocus2_a=10000.0),
    snr=0.3,
    seed=0,
    min_distance_px=60,
    search=dict(out_of_plane_step_deg=15.0, in_plane_step_deg=15.0),
)

#: the "lamella demo": larger, crowded, ice texture, thickness ramp, two states
LAMELLA = dict(
    name="lamella demo",
    structures=("1BD2.pdb.gz", "1A28.pdb.gz"),
    n_particles=80,
    shape=(1024, 1024),
    pixel_size_a=2.0,
    ctf=dict(defocus1_a=12000.0, defocus2_a=11500.0, astigmatism_angle_deg=40.0),
    snr=0.2,
    seed=1,
    background="ice",
    thickness_gradient=0.3,
    search=dict(out_of_plane_step_deg=10.0, in_plane_step_deg=10.0),
)


def simulate_sample(spec: dict):
    """Run the simulator for a sample spec; returns its ``SimulationResult``."""
    from napari_2dtm.core.ctf import CTFParams
    from napari_2dtm.simulate import simulate_micrograph

    kwargs = {
        k: v for k, v in spec.items() if k not in ("name", "structures", "ctf", "search")
    }
    return simulate_micrograph(
        [DATA / s for s in spec["structures"]], ctf=CTFParams(**spec["ctf"]), **kwargs
    )


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
