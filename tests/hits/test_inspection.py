"""Hit inspection: the template at a hit's pose against the whitened micrograph box.

Particles come from the simulator (atoms projected analytically, no Fourier slices),
so agreement with the inspector's Fourier-slice projection at the true pose is an
independent check of the pose, centre and CTF conventions.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from helpers.planting import structure_file
from helpers.review_data import demo_results
from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.errors import InputError
from napari_2dtm.hits.inspection import HitInspector, cut_box, template_for_result
from napari_2dtm.simulate import simulate_micrograph

CTF = CTFParams(defocus1_a=10000.0)


@pytest.fixture(scope="module", params=[0.3, 5.0], ids=["snr0.3", "snr5"])
def planted(request):
    sim = simulate_micrograph(structure_file("1BD2.pdb.gz"), 3, shape=(256, 256),
                              pixel_size_a=2.0, ctf=CTF, snr=request.param, seed=4)
    return request.param, sim, HitInspector(sim.image, 2.0, sim.templates[0], CTF)


def test_true_pose_matches_the_planted_particle_and_wrong_poses_do_not(planted):
    snr, sim, ins = planted
    for _, t in sim.truth.iterrows():
        true = ins.inspect(t)
        d = true.box.shape[0]
        assert true.box.shape == true.model.shape == true.difference.shape == (d, d)
        # close to the matched-filter bound (coarse whitening of a high-SNR image costs more)
        assert true.cc > (0.6 if snr < 1 else 0.2) * t.snr_matched, (true.cc, t.snr_matched)
        assert true.pearson > (0.25 if snr < 1 else 0.4), true.pearson
        for wrong in (dict(t, theta=t.theta + 90.0), dict(t, psi=t.psi + 90.0),
                      dict(t, x=t.x + 12.0)):
            w = ins.inspect(wrong)
            assert w.cc < 0.3 * true.cc and w.pearson < 0.1, (wrong, w.cc, w.pearson)
        # the difference removes the particle: less power left than in the box
        assert np.sum(true.difference**2) < np.sum(true.box**2)


def test_inspection_cc_is_the_search_mip_at_each_hit():
    """Same normalisation and centre as the engine: the CC at the search's pose is its MIP."""
    folder, result, sim = demo_results()
    ins = HitInspector.for_result(result, sim.image, sim.templates[0])
    assert ins.pixel_size_a == pytest.approx(result.pixel_size_a)
    for _, h in result.hits.iterrows():
        r = ins.inspect(h)
        assert (r.row, r.col) == (int(h.y_search), int(h.x_search))
        assert r.cc == pytest.approx(h.mip, rel=0.02), (h.x, h.y)


def test_cut_box_centres_the_pixel_and_zero_pads_outside():
    img = np.arange(100.0).reshape(10, 10)
    box = cut_box(img, 4, 6, 5)
    assert box[2, 2] == img[4, 6] and box[0, 0] == img[2, 4]
    edge = cut_box(img, 0, 9, 4)
    assert edge[2, 2] == img[0, 9]
    assert np.all(edge[:2] == 0) and np.all(edge[:, 3] == 0)


def test_template_is_rebuilt_from_search_json_or_asked_for():
    _, result, sim = demo_results()
    rebuilt = template_for_result(result)  # the model, converted with the recorded parameters
    np.testing.assert_allclose(rebuilt.volume, sim.templates[0].volume, rtol=1e-5, atol=1e-6)
    from_array = copy.copy(result)
    from_array.metadata = dict(result.metadata, template={"source": "array", "box": 78})
    with pytest.raises(InputError, match="template 'array'"):
        template_for_result(from_array)
