"""Make the concept figures of the documentation (docs/images/concepts_*.png).

    python3 scripts/make_figures.py [--out docs/images]

Every figure is computed by napari-2dtm itself from the "2DTM demo" sample (a
simulated 320 x 320 px micrograph at 2 A/px with 8 planted 1BD2 particles and their
ground truth) and the demo's search settings, with matplotlib (Agg, no display). The
search runs once through :class:`napari_2dtm.jobs.teaching.TeachingSearch` at full speed,
which also gives the MIP part-way through. About half a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: every figure this script writes (tests check the docs reference only files made here)
FIGURES = [
    "concepts_whitening.png",
    "concepts_projection_ctf.png",
    "concepts_cross_correlation.png",
    "concepts_mip.png",
    "concepts_zscore.png",
    "concepts_threshold.png",
    "concepts_pvalue.png",
]


def radial_power(image: np.ndarray, pixel_size_a: float, n_bins: int = 60):
    """Radially averaged power spectrum: (spatial frequency 1/A, mean power)."""
    f = np.abs(np.fft.rfft2(image - image.mean())) ** 2
    ky = np.fft.fftfreq(image.shape[0], pixel_size_a)[:, None]
    kx = np.fft.rfftfreq(image.shape[1], pixel_size_a)[None, :]
    k = np.hypot(kx, ky).ravel()
    edges = np.linspace(0, 0.5 / pixel_size_a, n_bins + 1)
    idx = np.digitize(k, edges) - 1
    ok = (idx >= 0) & (idx < n_bins)
    p = np.bincount(idx[ok], f.ravel()[ok], n_bins) / np.maximum(np.bincount(idx[ok], None, n_bins), 1)
    return 0.5 * (edges[1:] + edges[:-1]), p


def _show(ax, img, title, cmap="gray", limits=None, px=None):
    extent = None
    if px:
        ny, nx = img.shape
        extent = (-0.5 * px, (nx - 0.5) * px, (ny - 0.5) * px, -0.5 * px)
    lo, hi = limits or np.percentile(img, [0.5, 99.5])
    im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _truth_markers(ax, truth, binning=1.0, **kw):
    style = dict(s=260, facecolors="none", edgecolors="#ffcc00", linewidths=1.0)
    style.update(kw)
    ax.scatter(truth["x"] / binning, truth["y"] / binning, **style)


def compute():
    """The demo sample, its search (with steps), and the pieces the figures need."""
    from napari_2dtm import CTFParams, SearchConfig
    from napari_2dtm._napari._sample_data import DEMO, simulate_sample
    from napari_2dtm.jobs.teaching import TeachingSearch

    sim = simulate_sample(DEMO)
    config = SearchConfig(ctf=CTFParams(**DEMO["ctf"]), **DEMO["search"])
    teacher = TeachingSearch(sim.image, sim.pixel_size_a, sim.templates[0], config,
                             truth=sim.truth, step_s=0, intro_s=0, max_steps=20,
                             sleep=lambda s: None)
    steps = list(teacher.steps())
    return sim, config, teacher, steps


def fig_whitening(sim, teacher, out):
    px = sim.pixel_size_a
    white = teacher.search.prepared.image
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    _show(axes[0], sim.image, "micrograph (planted particles circled)")
    _truth_markers(axes[0], sim.truth)
    _show(axes[1], white, "whitened, unit variance")
    for img, label in ((sim.image, "micrograph"), (white, "whitened")):
        k, p = radial_power(img, px)
        axes[2].semilogy(k, p / p[1:].mean(), label=label)
    axes[2].set_xlabel("spatial frequency (1/Å)")
    axes[2].set_ylabel("power (relative)")
    axes[2].set_title("radial power spectrum", fontsize=9)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fig_projection_ctf(sim, config, teacher, out):
    from napari_2dtm.core.ctf import ctf_2d

    corr = teacher.correlator
    px = corr.pixel_size_a
    t = sim.templates[0]
    angles = [(0.0, 0.0, 0.0), (0.0, 90.0, 0.0), (90.0, 90.0, 45.0)]
    fig, axes = plt.subplots(2, 4, figsize=(11, 5.6))
    _show(axes[0, 0], t.volume[t.box // 2], "template: central z slice\n(potential, 3D map)")
    for ax, ang in zip(axes[0, 1:], angles):
        _show(ax, corr.correlate(ang)["projection"],
              f"projection φ={ang[0]:.0f}° θ={ang[1]:.0f}° ψ={ang[2]:.0f}°")
    shown = corr.correlate(angles[1])
    _show(axes[1, 0], corr.box_filter, "CTF × whitening (Fourier space)", limits=(-1, 1))
    _show(axes[1, 1], shown["filtered"], "projection × CTF × whitening\n(θ=90°: what is searched for)")
    # the CTF along one radius: ctf_2d on a 1 x N grid samples kx = 0 .. 1/(2 px)
    n = 512
    c = ctf_2d(config.ctf, (1, n), px)[0]
    kx = np.fft.rfftfreq(n, px)
    w = teacher.search.prepared.whitening(kx)
    ax = axes[1, 2]
    ax.plot(kx, c, lw=0.8, label="CTF")
    ax.plot(kx, c * w, lw=0.8, label="CTF × whitening")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_title(f"CTF at {config.ctf.defocus1_a / 1e4:.1f} µm defocus, 300 kV", fontsize=9)
    ax.legend(fontsize=7)
    axes[1, 3].axis("off")
    axes[1, 3].text(0, 0.5, "The same filtering goes on the\nmicrograph (whitening) and on every\n"
                    "projection (CTF × whitening), so\nthe correlation of noise is N(0, 1).",
                    fontsize=9, va="center")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fig_cross_correlation(sim, teacher, out):
    from scipy.stats import norm

    corr = teacher.correlator
    s = teacher.search
    valid = s.valid_mask()
    row = sim.truth.iloc[0]
    true = (float(row["phi"]), float(row["theta"]), float(row["psi"]))
    wrong = ((true[0] + 90.0) % 360, (true[1] + 60.0) % 180, (true[2] + 120.0) % 360)
    cc_true = np.where(valid, corr.correlate(true)["cc"], 0)
    cc_wrong = np.where(valid, corr.correlate(wrong)["cc"], 0)
    lim = (-4.5, max(6.0, float(cc_true.max())))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    im = _show(axes[0], cc_true, f"CC at particle 1's orientation\n(peak {cc_true.max():.1f} at the "
               "yellow circle)", cmap="magma", limits=lim)
    _truth_markers(axes[0], sim.truth.iloc[:1], s.pixel_size_a / s.input_pixel_size_a)
    _show(axes[1], cc_wrong, "CC at another orientation", cmap="magma", limits=lim)
    fig.colorbar(im, ax=axes[:2], shrink=0.8, label="normalised CC")
    vals = cc_wrong[valid]
    x = np.linspace(-5, 5, 200)
    axes[2].hist(vals, bins=80, density=True, alpha=0.6, label="CC values (one map)")
    axes[2].plot(x, norm.pdf(x), "k", lw=1, label="N(0, 1)")
    axes[2].set_yscale("log")
    axes[2].set_ylim(1e-5, 1)
    axes[2].set_xlabel("normalised CC")
    axes[2].set_title(f"CC values: std {vals.std():.2f} (the tails are the particles)",
                      fontsize=9)
    axes[2].legend(fontsize=7)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def fig_mip(sim, teacher, steps, out):
    s = teacher.search
    mid = [st for st in steps if st.stage == "search"]
    picks = [mid[0], mid[len(mid) // 2], steps[-1]]
    lim = (0.0, float(steps[-1].mip.max()))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
    for ax, st in zip(axes, picks):
        im = _show(ax, st.mip, f"MIP after {100 * st.fraction:.0f}% of {s.n_orientations:,} "
                   f"orientations\n{st.n_matched} of {st.n_truth} particles above threshold",
                   cmap="viridis", limits=lim)
    fig.colorbar(im, ax=axes, shrink=0.8, label="best CC so far")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def fig_zscore(sim, teacher, out):
    res = teacher.result
    valid = res.valid_mask
    b = res.pixel_size_a / res.input_pixel_size_a
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, key, label in ((axes[0], "snr", "SNR = MIP / σ (global)"),
                           (axes[1], "zscore", "z-score = (MIP − mean) / std (per pixel)")):
        im = _show(ax, res.maps[key], label, cmap="inferno",
                   limits=(float(res.maps[key][valid].min()), float(res.maps[key].max())))
        fig.colorbar(im, ax=ax, shrink=0.8)
    _truth_markers(axes[1], sim.truth, b, s=300)
    hits = res.hits
    axes[1].scatter(hits["x_search"], hits["y_search"], marker="+", c="#00ff66", s=40,
                    label="hits")
    axes[1].legend(fontsize=7, loc="lower right")
    z = res.maps["zscore"][valid]
    axes[2].hist(z, bins=100, alpha=0.7)
    axes[2].axvline(res.threshold, color="r", lw=1, label=f"threshold {res.threshold:.2f}")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("z-score")
    axes[2].set_ylabel("pixels")
    axes[2].set_title("z-score of every valid pixel", fontsize=9)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fig_threshold(teacher, out):
    from napari_2dtm import expected_false_positives, false_alarm_threshold

    res = teacher.result
    n = np.logspace(6, 15, 200)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for nfp in (0.1, 1.0, 10.0):
        axes[0].semilogx(n, [false_alarm_threshold(v, nfp) for v in n], label=f"N false pos. = {nfp:g}")
    cases = [(res.n_trials, "this demo"), (4096**2 * 1_584_480, "4k × 4k, 1.6 M orientations")]
    for v, label in cases:
        t = false_alarm_threshold(v, 1.0)
        axes[0].plot([v], [t], "o")
        axes[0].annotate(f"{label}: {t:.2f}", (v, t), textcoords="offset points",
                         xytext=(-10, 8), ha="right", fontsize=8)
    axes[0].set_xlabel("N trials = valid pixels × correlations per pixel")
    axes[0].set_ylabel("threshold (σ)")
    axes[0].set_title("θ = √2 · erfc⁻¹(2 N_fp / N_trials)", fontsize=9)
    axes[0].legend(fontsize=7)
    t = np.linspace(4, 8, 200)
    axes[1].semilogy(t, expected_false_positives(t, res.n_trials))
    axes[1].axvline(res.threshold, color="r", lw=1, label=f"threshold {res.threshold:.2f}")
    axes[1].axhline(1.0, color="k", lw=0.5)
    axes[1].set_xlabel("threshold (σ)")
    axes[1].set_ylabel("expected noise peaks above it")
    axes[1].set_title(f"this demo: N trials = {res.n_trials:.2e}", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fig_pvalue(sim, teacher, out):
    from napari_2dtm.search.pvalue import fit_neg_log_p_map

    res = teacher.result
    fit = fit_neg_log_p_map(res.maps["zscore"], res.maps["snr"], mask=res.valid_mask)
    pop = fit.population_mask
    rows, cols = np.nonzero(pop)
    z = res.maps["zscore"][rows, cols]
    s = res.maps["snr"][rows, cols]
    nlp = fit.neg_log_p[rows, cols]
    b = res.pixel_size_a / res.input_pixel_size_a
    # each planted particle's candidate: the strongest local maximum near it
    true = np.zeros(len(rows), bool)
    for _, p in sim.truth.iterrows():
        near = np.hypot(cols * b - p["x"], rows * b - p["y"]) <= teacher.match_radius_px
        if near.any():
            true[np.flatnonzero(near)[np.argmax(z[near])]] = True
    t = fit.threshold(1.0)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    sc = axes[0].scatter(z[~true], s[~true], c=nlp[~true], cmap="viridis", s=8, vmin=0,
                         vmax=max(t + 2, 1), label="other local maxima")
    axes[0].scatter(z[true], s[true], c=nlp[true], cmap="viridis", s=60, marker="*",
                    edgecolors="r", vmin=0, vmax=max(t + 2, 1), label="planted particles")
    axes[0].axvline(res.threshold, color="r", lw=0.8, ls="--", label="z-score threshold")
    fig.colorbar(sc, ax=axes[0], label="−ln p")
    axes[0].set_xlabel("z-score")
    axes[0].set_ylabel("SNR")
    axes[0].set_title(f"{fit.n_population} candidates (z-score local maxima), "
                      f"ρ = {fit.rho:.2f}", fontsize=9)
    axes[0].legend(fontsize=7)
    order = np.argsort(-nlp)
    axes[1].plot(np.arange(1, len(order) + 1), nlp[order], ".", ms=3)
    axes[1].plot(np.nonzero(true[order])[0] + 1, nlp[order][true[order]], "r*", ms=8,
                 label="planted particles")
    axes[1].axhline(t, color="k", lw=0.8, label=f"ln(N / N_fp) = {t:.2f}")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("rank")
    axes[1].set_ylabel("−ln p")
    axes[1].set_title("candidates ranked by the p-value", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sim, config, teacher, steps = compute()
    print(f"make_figures: demo search done ({time.perf_counter() - t0:.1f} s)")
    o = args.out
    fig_whitening(sim, teacher, o / "concepts_whitening.png")
    fig_projection_ctf(sim, config, teacher, o / "concepts_projection_ctf.png")
    fig_cross_correlation(sim, teacher, o / "concepts_cross_correlation.png")
    fig_mip(sim, teacher, steps, o / "concepts_mip.png")
    fig_zscore(sim, teacher, o / "concepts_zscore.png")
    fig_threshold(teacher, o / "concepts_threshold.png")
    fig_pvalue(sim, teacher, o / "concepts_pvalue.png")
    for name in FIGURES:
        print(f"  {o / name}")
    print(f"make_figures: {len(FIGURES)} figures in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
