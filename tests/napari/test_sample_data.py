"""Sample data: seeded simulations with hidden templates and ground truth."""

import numpy as np

from napari_2dtm.samples import DEMO, LAMELLA


def test_demo_sample_layers(demo_sample):
    (tvol, tkw, tkind), (image, mkw, mkind), (pts, pkw, pkind) = demo_sample
    assert (tkind, mkind, pkind) == ("image", "image", "points")
    assert tvol.ndim == 3 and not tkw["visible"]
    assert image.shape == DEMO["shape"] and mkw["scale"] == (2.0, 2.0)
    assert mkw["metadata"]["napari_2dtm"]["search_defaults"]["template_layer"] == tkw["name"]
    assert len(pts) == DEMO["n_particles"] and not pkw["visible"]
    assert {"x", "y", "phi", "theta", "psi", "defocus_a"} <= set(pkw["features"])


def test_demo_sample_is_seeded(demo_sample):
    from napari_2dtm._napari._sample_data import demo_sample as make

    np.testing.assert_array_equal(make()[1][0], demo_sample[1][0])


def test_lamella_sample_opens_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-2dtm", "lamella")
    names = [layer.name for layer in viewer.layers]
    assert names == ["template 1BD2", "template 1A28", "lamella demo", "ground truth [lamella demo]"]
    assert viewer.layers["lamella demo"].data.shape == LAMELLA["shape"]
    truth = viewer.layers["ground truth [lamella demo]"].features
    assert len(truth) == LAMELLA["n_particles"]
    assert set(truth["class_name"]) == {"1BD2", "1A28"}
