"""The engine on the physical simulator: truth and hits share one convention."""

from __future__ import annotations

import numpy as np

from helpers.planting import match, structure
from napari_2dtm import CTFParams, Search, SearchConfig, extract_hits
from napari_2dtm.core.geometry import angular_distance_deg, euler_to_matrix, local_grid
from napari_2dtm.simulate import simulate_micrograph


def test_simulated_particles_found_at_true_poses():
    ctf = CTFParams(defocus1_a=11000)
    sim = simulate_micrograph([structure("1BD2")], n_particles=6, shape=(224, 224),
                              pixel_size_a=3.0, ctf=ctf, snr=0.05, seed=11)
    truth = sim.truth
    assert set(["x", "y", "phi", "theta", "psi", "defocus_a"]) <= set(truth.columns)
    # Local grids around the true poses (exactly containing them) keep this fast; the
    # full-grid search of planted particles is in test_search_science.
    ori = np.concatenate([local_grid(r[["phi", "theta", "psi"]].to_numpy(float), 6.0, 3.0)
                          for _, r in truth.iterrows()])
    s = Search(sim.image, sim.pixel_size_a, sim.templates[0],
               SearchConfig(ctf=ctf, orientations=ori, device="cpu"))
    for _ in s.run():
        pass
    hits = extract_hits(s.result, metric="snr", threshold=7.0)
    t = truth[["x", "y", "phi", "theta", "psi"]].to_numpy(float)
    pairs = match(hits, t, 1.0)
    assert len(pairs) == len(truth), (hits, truth)
    assert len(hits) == len(truth)
    ang = []
    for i, j in pairs:
        h = hits.iloc[j]
        assert np.hypot(h.x - t[i, 0], h.y - t[i, 1]) <= 1.0
        ang.append(float(angular_distance_deg(euler_to_matrix(h.phi, h.theta, h.psi),
                                              euler_to_matrix(*t[i, 2:]))))
        assert h.defocus_a == truth.defocus_a.iloc[i]
    # At a 6 A search resolution the pose of a ~100 A particle is determined to about
    # 6 A / 100 A = 3.4 degrees.
    assert np.median(ang) <= 4.5, ang
