"""Matplotlib figures shared by jobs and widgets (no Qt): each draws into a given Axes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def draw_fsc(ax, rec, omit=None) -> None:
    """Half-map FSC curves of a reconstruction on ``ax``: unmasked, masked (when a mask
    was used) and the omit-template map's (dashed), with the 0.143 line.

    rec, omit: :class:`~napari_2dtm.reconstruct.reconstructor.Reconstruction` (omit may
    be None). The title says the FSC is not gold-standard (poses from the template).
    """
    from napari_2dtm.reconstruct.fsc import FSC_THRESHOLD, resolution_text  # noqa: PLC0415

    t = rec.fsc
    ax.plot(t["frequency_inv_a"], t["fsc_unmasked"], color="#1f77b4",
            label=f"unmasked ({resolution_text(rec.resolution_a, 1)})")
    if rec.resolution_masked_a is not None:
        ax.plot(t["frequency_inv_a"], t["fsc_masked"], color="#d62728",
                label=f"masked ({resolution_text(rec.resolution_masked_a, 1)})")
    if omit is not None:
        o = omit.fsc
        res = omit.resolution_masked_a or omit.resolution_a
        ax.plot(o["frequency_inv_a"], o["fsc_masked"] if omit.resolution_masked_a else
                o["fsc_unmasked"], "--", color="#2ca02c",
                label=f"omit-template map ({resolution_text(res, 1)})")
    ax.axhline(FSC_THRESHOLD, color="gray", lw=0.8, ls=":")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlim(0, float(t["frequency_inv_a"].iloc[-1]))
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC (half maps)")
    ax.set_title("FSC — not gold-standard (poses from the template)", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")


def save_fsc(rec, omit, path: Path) -> None:
    """``fsc.png`` of a reconstruction folder: :func:`draw_fsc` on matplotlib's Agg
    canvas (no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    draw_fsc(fig.add_subplot(111), rec, omit)
    fig.tight_layout()
    fig.savefig(path)


def draw_model_cycles(ax, cycles, best_cycle: int | None = None) -> None:
    """Work- and free-half mean CC per cycle of a model refinement on ``ax``, the kept
    (best free CC) cycle marked.

    cycles: records with ``cycle``, ``work_cc`` and ``free_cc``
    (:class:`~napari_2dtm.modelfit.refine.CycleRecord`). Cycle 0 is the starting model
    with refined poses, so the rise from it is the model's own.
    """
    n = [int(r.cycle) for r in cycles]
    work = [float(r.work_cc) for r in cycles]
    free = [float(r.free_cc) for r in cycles]
    ax.plot(n, work, "o-", color="#1f77b4", label="work half (fitted)")
    ax.plot(n, free, "s-", color="#ff7f0e", label="free half (scored only)")
    if best_cycle is not None and best_cycle in n:
        i = n.index(best_cycle)
        ax.axvline(best_cycle, color="gray", lw=0.8, ls=":")
        ax.plot([best_cycle], [free[i]], "*", ms=14, color="#2ca02c", zorder=3,
                label=f"kept: cycle {best_cycle}")
    ax.set_xticks(n)
    ax.set_xlabel("cycle (0: starting model, poses refined)")
    ax.set_ylabel("mean CC")
    ax.set_title("model refinement: work and free CC", fontsize=9)
    ax.legend(fontsize=7, loc="best")


# --------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------

#: Class colours (class k uses entry k modulo the length), shared by plots and layers.
CLASS_COLORS = ("#ff9f1c", "#2ec4b6", "#e71d36", "#a06cd5", "#8ac926", "#1982c4")
UNASSIGNED_COLOR = "#9a9a9a"


def draw_features(ax, res, confidence: float | None = None, text_color: str | None = None) -> None:
    """Draw the log2 ratios with the fitted Gaussians on a matplotlib axes.

    One feature: histogram (density) of the hits, each class's ``prior * N(mean, SD)``
    and their sum. Two or more: scatter of the first two features coloured by the most
    probable class (grey below ``confidence``), with 1 and 2 SD ellipses per class.
    res: a :class:`~napari_2dtm.classify.result.ClassificationResult`; text_color: set on
    a dark background (the mixture's dashed line turns light).
    """
    conf = res.confidence if confidence is None else float(confidence)
    x = res.features
    ok = np.all(np.isfinite(x), axis=1)
    ref = res.names[res.reference]
    labels = [f"log2(SNR {ref} / SNR {nm})" for i, nm in enumerate(res.names) if i != res.reference]
    a = res.assign(conf)
    best = res.assign(0.0)
    colors = [CLASS_COLORS[i % len(CLASS_COLORS)] for i in range(len(res.names))]
    if x.shape[1] == 1:
        v = x[ok, 0]
        lo, hi = (float(v.min()), float(v.max())) if v.size else (-0.5, 0.5)
        pad = 0.15 * max(hi - lo, 0.1)
        bins = np.histogram_bin_edges(v, bins="auto", range=(lo - pad, hi + pad)) if v.size else 20
        ax.hist(v, bins=bins, density=True, color="#8d99ae", alpha=0.55, label=f"{len(v)} hits")
        grid = np.linspace(lo - pad, hi + pad, 400)
        total = np.zeros_like(grid)
        for i, nm in enumerate(res.names):
            if not res.present[i]:
                continue
            sd = math.sqrt(res.covariances[i, 0, 0])
            y = res.priors[i] * np.exp(-0.5 * ((grid - res.means[i, 0]) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
            total += y
            ax.plot(grid, y, color=colors[i], lw=2,
                    label=f"{nm}: {res.means[i, 0]:+.3f} ± {sd:.3f} ({(a == i).sum()})")
        ax.plot(grid, total, color="#f1faee" if text_color else "black", lw=1, ls="--", label="mixture")
        ax.axvline(0.0, color="gray", lw=0.8, ls=":")
        ax.set_xlabel(labels[0])
        ax.set_ylabel("density")
    else:
        i0, i1 = 0, 1
        pt_colors = np.array([colors[b] if (b >= 0 and a[j] >= 0) else UNASSIGNED_COLOR
                              for j, b in enumerate(best)])
        ax.scatter(x[ok, i0], x[ok, i1], s=10, c=pt_colors[ok], alpha=0.8, linewidths=0)
        t = np.linspace(0, 2 * math.pi, 200)
        circle = np.stack([np.cos(t), np.sin(t)])
        for i, nm in enumerate(res.names):
            if not res.present[i]:
                continue
            cov = res.covariances[i][np.ix_([i0, i1], [i0, i1])]
            w, vecs = np.linalg.eigh(cov)
            for k, ls in ((1, "-"), (2, "--")):
                e = vecs @ (k * np.sqrt(np.maximum(w, 0))[:, None] * circle)
                ax.plot(res.means[i, i0] + e[0], res.means[i, i1] + e[1], color=colors[i], lw=1.5,
                        ls=ls, label=f"{nm} ({(a == i).sum()})" if k == 1 else None)
        ax.axhline(0.0, color="gray", lw=0.8, ls=":")
        ax.axvline(0.0, color="gray", lw=0.8, ls=":")
        ax.set_xlabel(labels[i0])
        ax.set_ylabel(labels[i1])
    ax.set_title(f"classes at {100 * conf:g} % confidence", fontsize=9)
    ax.legend(fontsize=7, loc="best")


def save_features(res, path: Path) -> None:
    """``features.png`` of a classification folder: :func:`draw_features` at the result's
    confidence (the ``plot`` of :func:`napari_2dtm.classify.folder.write_classification`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(5, 3.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    draw_features(fig.add_subplot(111), res)
    fig.savefig(path)
