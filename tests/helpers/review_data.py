"""Search results for the hits-review tests, made once per test process.

:func:`demo_results` runs the "2DTM demo" search (simulated 320 x 320 px micrograph,
8 planted 1BD2 particles, the sample's coarse 15 deg grid; ~10 s on 2 cores) and saves
the results folder as the Search widget does (micrograph under ``input/``).
:func:`copy_results` gives each test its own copy to curate. :func:`noise_results`
makes a synthetic results folder of pure-noise maps with >= 10,000 local maxima, for
timing the review on a large candidate table.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

_TMP = Path(tempfile.mkdtemp(prefix="napari2dtm-review-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def demo_results():
    """``(folder, result, simulation)`` of the demo search (run once per process)."""
    from napari_2dtm import CTFParams, Search, SearchConfig
    from napari_2dtm._napari._sample_data import DEMO, simulate_sample
    from napari_2dtm.jobs.search import save_results

    sim = simulate_sample(DEMO)
    config = SearchConfig(ctf=CTFParams(**DEMO["ctf"]), device="cpu", **DEMO["search"])
    search = Search(sim.image, sim.pixel_size_a, sim.templates[0], config)
    for _ in search.run():
        pass
    folder = _TMP / "demo_results"
    save_results(search.result, folder, sim.image, micrograph_name="2DTM demo")
    return folder, search.result, sim


def copy_results(dest: Path) -> Path:
    """A private copy of the demo results folder under ``dest``."""
    folder, _, _ = demo_results()
    out = Path(dest) / folder.name
    shutil.copytree(folder, out)
    return out


@functools.lru_cache(maxsize=1)
def noise_results(shape=(640, 640), radius_px=2.5):
    """``(folder, result)``: white-noise z-score/SNR maps, peak radius 2.5 px, no hits."""
    from napari_2dtm import write_results
    from napari_2dtm.search.engine import SearchResult

    rng = np.random.default_rng(7)
    z = rng.standard_normal(shape).astype(np.float32) + 3.0
    snr = (0.8 * z + 0.6 * rng.standard_normal(shape)).astype(np.float32)
    zeros = np.zeros(shape, np.float32)
    maps = {"mip": snr, "zscore": z, "snr": snr, "mean": zeros, "std": zeros + 1,
            "phi": zeros, "theta": zeros, "psi": zeros, "defocus": zeros + 10000.0,
            "defocus_offset": zeros}
    meta = {"config": {"ctf": {"defocus1_a": 10000.0, "defocus2_a": 10000.0}},
            "input_shape": list(shape), "input_pixel_size_a": 2.0, "search_pixel_size_a": 2.0,
            "peak_radius_px": radius_px, "n_trials": float(z.size) * 1000, "threshold": 6.0,
            "template": {"box": 16, "pixel_size_a": 2.0, "source": "array"}}
    res = SearchResult(maps=maps, pixel_size_a=2.0, input_pixel_size_a=2.0, threshold=6.0,
                       n_trials=meta["n_trials"], hits=None, metadata=meta,
                       valid_mask=np.ones(shape, bool))
    folder = _TMP / "noise_results"
    write_results(res, folder)
    return folder, res
