"""The demo samples: simulated micrographs with planted particles, their definitions and
the search settings that find them (no Qt, no napari).

A sample is a dict: ``name``, ``structures`` (files in ``napari_2dtm/data``),
the keyword arguments of :func:`napari_2dtm.simulate.simulate_micrograph` (shape,
pixel size, number of particles, SNR, seed, ...), ``ctf`` (:class:`CTFParams` fields)
and ``search`` (:class:`SearchConfig` fields of a quick search that finds the planted
particles). :func:`simulate_sample` makes one (seeded: the same every time, a few
seconds). The napari sample layers (``napari_2dtm._napari._sample_data``), the
``napari-2dtm demo`` command and the tests all start from these definitions.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATA", "DEMO", "LAMELLA", "simulate_sample", "sample_config"]

DATA = Path(__file__).resolve().parent / "data"

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
    from napari_2dtm.core.ctf import CTFParams  # noqa: PLC0415
    from napari_2dtm.simulate import simulate_micrograph  # noqa: PLC0415

    kwargs = {
        k: v for k, v in spec.items() if k not in ("name", "structures", "ctf", "search")
    }
    return simulate_micrograph(
        [DATA / s for s in spec["structures"]], ctf=CTFParams(**spec["ctf"]), **kwargs
    )


def sample_config(spec: dict, **overrides):
    """The :class:`~napari_2dtm.search.engine.SearchConfig` of a sample's quick search."""
    from napari_2dtm.core.ctf import CTFParams  # noqa: PLC0415
    from napari_2dtm.search.engine import SearchConfig  # noqa: PLC0415

    return SearchConfig(ctf=CTFParams(**spec["ctf"]), **{**spec["search"], **overrides})
