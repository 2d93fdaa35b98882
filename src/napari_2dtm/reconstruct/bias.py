"""Template bias: the Omega metric of Lucas et al. (2023), "baited reconstruction".

Given a full template ``T_f`` and an omit template ``T_o`` (the same model without some
atoms, e.g. a ligand; identically scaled, on the same grid), and reconstructions
``rho_full`` / ``rho_omit`` from targets found (and aligned) with each:

* mask ``M``: voxels where ``D = T_f - T_o`` exceeds ``mean(top n_top voxels of D) /
  divisor`` (divisor 10 by default; 3-5 gives a tighter mask);
* ``Omega = (sum_M rho_full - sum_M rho_omit) / sum_M rho_full``.

Omega = 0: the omitted density is there without the template putting it there (no
bias); Omega = 1: it appears only when the template contains it (full bias); noise can
push it past 1. Correlations ``corr(rho_full, rho_omit)``, ``corr(T_f, T_o)`` and their
ratio are reported too (as the authors' tool does).

Maps must share pixel size and centre (voxel ``n // 2``); templates in a different box
are centre-cropped or padded to the reconstruction box (:func:`fit_to_box`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from napari_2dtm.errors import InputError

__all__ = ["difference_mask", "omega", "fit_to_box", "BiasReport", "template_bias"]


def fit_to_box(volume: np.ndarray, box: int) -> np.ndarray:
    """Centre-crop or zero-pad a cubic volume to ``(box, box, box)``, keeping voxel
    ``n // 2`` at ``box // 2``."""
    v = np.asarray(volume)
    n = v.shape[0]
    if n == box:
        return v
    out = np.zeros((box, box, box), v.dtype)
    # overlap in source and target index ranges, aligned on the centres
    s0 = max(0, n // 2 - box // 2)
    t0 = max(0, box // 2 - n // 2)
    m = min(n - s0, box - t0)
    out[t0:t0 + m, t0:t0 + m, t0:t0 + m] = v[s0:s0 + m, s0:s0 + m, s0:s0 + m]
    return out


def difference_mask(template_full: np.ndarray, template_omit: np.ndarray,
                    divisor: float = 10.0, n_top: int = 100) -> np.ndarray:
    """Boolean mask of the omitted region: ``D > mean(top n_top of D) / divisor`` with
    ``D = T_f - T_o``; same shape as the templates."""
    tf = np.asarray(template_full, np.float64)
    to = np.asarray(template_omit, np.float64)
    if tf.shape != to.shape:
        raise InputError(f"full and omit templates differ in shape: {tf.shape} vs {to.shape}")
    if not divisor > 0:
        raise InputError(f"mask divisor must be > 0, got {divisor}")
    d = tf - to
    flat = np.sort(d.ravel())
    top = flat[-int(max(1, min(n_top, flat.size))):]
    level = float(top.mean()) / float(divisor)
    if not level > 0:
        raise InputError("the omit template removes nothing from the full template "
                         "(their difference is never positive)")
    return d > level


def omega(rho_full: np.ndarray, rho_omit: np.ndarray, mask: np.ndarray) -> float:
    """``(sum_M rho_full - sum_M rho_omit) / sum_M rho_full`` over the boolean ``mask``."""
    m = np.asarray(mask, bool)
    if not m.any():
        raise InputError("the omitted-region mask is empty")
    a = float(np.asarray(rho_full, np.float64)[m].sum())
    b = float(np.asarray(rho_omit, np.float64)[m].sum())
    if a == 0:
        return float("nan")
    return (a - b) / a


def _corr(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


@dataclasses.dataclass
class BiasReport:
    """Omega and companions. ``scale``: factor applied to ``rho_omit`` to match
    ``rho_full`` outside the mask (1.0 when not matched); ``n_mask_voxels``: size of the
    omitted-region mask; ``mask_level``: the threshold on ``T_f - T_o``."""

    omega: float
    n_mask_voxels: int
    mask_level: float
    divisor: float
    scale: float
    corr_maps: float
    corr_templates: float
    corr_ratio: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def template_bias(rho_full, rho_omit, template_full, template_omit, divisor: float = 10.0,
                  n_top: int = 100, match_scale: bool = True) -> BiasReport:
    """Omega of Lucas et al. (2023) for two reconstructions and their templates.

    All four are cubic maps at one pixel size with the particle centre at voxel
    ``n // 2``; templates are fitted to the reconstruction box. ``match_scale``: scale
    ``rho_omit`` by least squares onto ``rho_full`` over the voxels outside the mask
    inside the template's support, so particle counts or normalisation differences
    between the two reconstructions do not enter Omega.
    """
    rf = np.asarray(rho_full, np.float64)
    ro = np.asarray(rho_omit, np.float64)
    if rf.shape != ro.shape or rf.ndim != 3:
        raise InputError(f"reconstructions must be cubic maps of one shape, got {rf.shape} "
                         f"and {ro.shape}")
    box = rf.shape[0]
    tf = fit_to_box(np.asarray(template_full, np.float64), box)
    to = fit_to_box(np.asarray(template_omit, np.float64), box)
    mask = difference_mask(tf, to, divisor, n_top)
    d = tf - to
    flat = np.sort(d.ravel())
    level = float(flat[-int(max(1, min(n_top, flat.size))):].mean()) / float(divisor)
    scale = 1.0
    if match_scale:
        support = (tf > 0.05 * tf.max()) & ~mask
        if support.sum() < 10:
            support = ~mask
        den = float((ro[support] ** 2).sum())
        if den > 0:
            scale = float((rf[support] * ro[support]).sum()) / den
    ro_s = ro * scale
    cm = _corr(rf, ro_s)
    ct = _corr(tf, to)
    return BiasReport(
        omega=omega(rf, ro_s, mask), n_mask_voxels=int(mask.sum()), mask_level=level,
        divisor=float(divisor), scale=scale, corr_maps=cm, corr_templates=ct,
        corr_ratio=cm / ct if ct else float("nan"),
    )
