"""Simulated two-state data for the classification tests: 1BD2 with and without
beta-2-microglobulin (chain B), hits at the true poses perturbed by one grid step.

The simulator centres each particle on its own class's centre of mass; the templates
(``center="model"``) share the whole model's origin, so truth positions are moved to it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from helpers.planting import structure_file
from napari_2dtm import CTFParams
from napari_2dtm.classify.templates import load_template_set
from napari_2dtm.core.geometry import euler_to_matrix, matrix_to_euler

PX = 3.0  # A/px: b2m's 12 kDa is a low-resolution difference
CTF = CTFParams(defocus1_a=10000.0)
STEP = 1.5  # deg, the local grid's angular step
NAMES = ["full", "no_b2m"]
GRID = dict(angular_step_deg=STEP, shift_px=1, defocus_range_a=100.0, defocus_step_a=100.0)


def make_models(folder):
    """``(full, no_b2m)`` model paths: 1BD2 and 1BD2 without chain B written to ``folder``."""
    import gemmi

    full = structure_file("1BD2.pdb.gz")
    st = gemmi.read_structure(str(full))
    st[0].remove_chain("B")
    no_b = folder / "1BD2_no_b2m.pdb"
    st.write_pdb(str(no_b))
    return full, no_b


def make_templates(full):
    """Both states' templates from one file, model origin kept."""
    return load_template_set([full, full], PX, names=NAMES, selections=[None, "not chain B"])


def _truth_at_model_origin(sim, ts) -> pd.DataFrame:
    """Truth positions of the shared model origin (the simulator centres each class on
    its own centre of mass: atom r lands at A (r - c_k) + position)."""
    origin = np.asarray(ts.templates[0].params["center_a"])
    t = sim.truth.copy()
    xs, ys = [], []
    for _, r in t.iterrows():
        c_k = np.asarray(sim.templates[int(r["class"])].params["center_a"])
        d = euler_to_matrix(r.phi, r.theta, r.psi) @ (origin - c_k) / PX
        xs.append(r.x + d[0])
        ys.append(r.y + d[1])
    t["x_true"], t["y_true"] = xs, ys
    t["true_name"] = np.where(t["class_name"] == "1BD2", NAMES[0], NAMES[1])
    return t


def _start_hits(truth: pd.DataFrame, rng) -> pd.DataFrame:
    """True poses perturbed by one grid step; positions rounded to whole pixels."""
    rows = []
    for _, r in truth.iterrows():
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        tilt = Rotation.from_rotvec(np.radians(STEP) * axis).as_matrix()
        phi, theta, psi = matrix_to_euler(tilt @ euler_to_matrix(r.phi, r.theta, r.psi))
        rows.append(dict(x=float(np.round(r.x_true + rng.uniform(-0.5, 0.5))),
                         y=float(np.round(r.y_true + rng.uniform(-0.5, 0.5))),
                         phi=phi, theta=theta, psi=psi, defocus_a=CTF.defocus_mean_a,
                         x_true=r.x_true, y_true=r.y_true, true_name=r.true_name))
    return pd.DataFrame(rows)


