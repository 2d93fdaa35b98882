"""cisTEM and Leopard-EM results folders written by the tests in each program's documented
format (file names, headers, columns, units), never copied from their repositories.

One micrograph with planted toy particles (:mod:`tests.helpers.toy_volumes`, exact
projections at known positions and ZYZ poses) and its template. The "search" maps are
synthetic but laid out as each program writes them: a N(0, 1) z-score background with a
peak of height ~10 at every particle, the particle's angles and a defocus offset in a
3 x 3 patch around it (random angles elsewhere), per-pixel mean ~0 and std ~1.

* Leopard-EM (``docs/data_formats.md``): valid-cropped maps ``(H - h + 1, W - w + 1)``,
  map pixel = template top-left corner (particle centre - h // 2), the std saved as
  ``correlation_variance``, a particle CSV written by pandas with its index column,
  ``pos_*`` corners and ``pos_*_img`` centres, map and input paths.
* cisTEM (``match_template.cpp`` prompts): full-size maps at particle centres named
  ``mip.mrc``, ``mip_scaled.mrc``, ``phi.mrc``..., ``histogram.txt`` with its threshold
  comment and survival column, ``coordinates.txt`` (``%14.5f``, X/Y in A) and a cisTEM
  STAR (template-matches package columns, positions in A).
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd

from napari_2dtm.core.geometry import euler_to_matrix

from .toy_volumes import atoms_projection, atoms_volume, random_atoms, random_poses

SHAPE = (160, 176)   # micrograph (H, W)
BOX = 32             # template edge
PIXEL_A = 1.5
CTF = {"defocus1_a": 8000.0, "defocus2_a": 7600.0, "astigmatism_angle_deg": 30.0,
       "voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.07}
N_CORR = 12_345      # correlations per pixel the "search" did
DF_OFFSETS = (-200.0, 0.0, 200.0, 400.0)


def _mrc(path: Path, data, px=PIXEL_A):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(data, np.float32))
        m.voxel_size = px


def planted(seed: int = 3):
    """``(image, volume, truth)``: truth rows ``(x, y, phi, theta, psi, defocus_offset)``."""
    rng = np.random.default_rng(seed)
    atoms = random_atoms(40, 9.0, seed)
    vol = atoms_volume(atoms, BOX)
    poses = random_poses(4, seed)
    centres = [(40, 44), (120, 40), (46, 118), (116, 128)]  # (x, y)
    image = rng.normal(0, 0.02, SHAPE)
    for (x, y), ang in zip(centres, poses):
        p = atoms_projection(atoms, euler_to_matrix(*ang), BOX)
        image[y - BOX // 2:y + BOX // 2, x - BOX // 2:x + BOX // 2] += p
    truth = np.array([[x, y, *a, df] for (x, y), a, df in zip(centres, poses, DF_OFFSETS)])
    return image.astype(np.float32), vol.astype(np.float32), truth


def _maps(shape, peaks, seed):
    """Synthetic statistic maps on ``shape``; ``peaks`` rows (col, row, phi, theta, psi, df)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1, shape)
    ang = {k: rng.uniform(0, hi, shape) for k, hi in (("phi", 360), ("theta", 180), ("psi", 360))}
    df = np.zeros(shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for c, r, phi, theta, psi, off in peaks:
        c, r = int(c), int(r)
        z += 10.0 * np.exp(-((xx - c) ** 2 + (yy - r) ** 2) / 2.0)
        sl = (slice(r - 1, r + 2), slice(c - 1, c + 2))
        ang["phi"][sl], ang["theta"][sl], ang["psi"][sl] = phi, theta, psi
        df[sl] = off
    mean = rng.normal(0, 0.02, shape)
    std = 1.0 + rng.normal(0, 0.01, shape)
    mip = z * std + mean
    return {"mip": mip, "zscore": z, "mean": mean, "std": std, **ang, "defocus": df}


def leopard_folder(root: Path, *, csv: bool = True, prefix: str = "output_") -> tuple[Path, np.ndarray]:
    """A Leopard-EM match_template output folder; returns ``(folder, truth)``."""
    folder = Path(root) / "leopard_run"
    folder.mkdir(parents=True, exist_ok=True)
    image, vol, truth = planted()
    _mrc(folder / "micrograph.mrc", image)
    _mrc(folder / "template.mrc", vol)
    half = BOX // 2
    valid = (SHAPE[0] - BOX + 1, SHAPE[1] - BOX + 1)
    corner = truth.copy()
    corner[:, 0] -= half
    corner[:, 1] -= half
    maps = _maps(valid, corner, seed=5)
    names = {"mip": "mip", "zscore": "scaled_mip", "mean": "correlation_average",
             "std": "correlation_variance", "phi": "orientation_phi",
             "theta": "orientation_theta", "psi": "orientation_psi", "defocus": "relative_defocus"}
    paths = {}
    for key, stem in names.items():
        paths[key] = folder / f"{prefix}{stem}.mrc"
        _mrc(paths[key], maps[key])
    if csv:
        rows = []
        for i, (x, y, phi, theta, psi, off) in enumerate(truth):
            c, r = int(x) - half, int(y) - half
            rows.append({
                "particle_index": i, "mip": maps["mip"][r, c], "scaled_mip": maps["zscore"][r, c],
                "correlation_mean": maps["mean"][r, c], "correlation_variance": maps["std"][r, c],
                "total_correlations": N_CORR, "pos_x": c, "pos_y": r,
                "pos_x_img": c + half, "pos_y_img": r + half,
                "pos_x_img_angstrom": (c + half) * PIXEL_A, "pos_y_img_angstrom": (r + half) * PIXEL_A,
                "phi": phi, "theta": theta, "psi": psi, "relative_defocus": off,
                "defocus_u": CTF["defocus1_a"], "defocus_v": CTF["defocus2_a"],
                "astigmatism_angle": CTF["astigmatism_angle_deg"], "pixel_size": PIXEL_A,
                "refined_pixel_size": PIXEL_A, "voltage": 300.0, "spherical_aberration": 2.7,
                "amplitude_contrast_ratio": 0.07, "phase_shift": 0.0, "ctf_B_factor": 0.0,
                "even_zernikes": None, "odd_zernikes": None, "mag_matrix": "[[1.0, 0.0], [0.0, 1.0]]",
                "micrograph_path": str(folder / "micrograph.mrc"),
                "template_path": str(folder / "template.mrc"),
                "mip_path": str(paths["mip"]), "scaled_mip_path": str(paths["zscore"]),
                "psi_path": str(paths["psi"]), "theta_path": str(paths["theta"]),
                "phi_path": str(paths["phi"]), "defocus_path": str(paths["defocus"]),
                "correlation_average_path": str(paths["mean"]),
                "correlation_variance_path": str(paths["std"]),
            })
        pd.DataFrame(rows).to_csv(folder / "results.csv", index=True)
    return folder, truth


def cistem_folder(root: Path, *, star: bool = True, coords: bool = True) -> tuple[Path, np.ndarray]:
    """A cisTEM match_template (+ make_template_result) output folder: ``(folder, truth)``."""
    folder = Path(root) / "cistem_run"
    folder.mkdir(parents=True, exist_ok=True)
    image, vol, truth = planted()
    _mrc(folder / "image.mrc", image)
    _mrc(folder / "template.mrc", vol)
    maps = _maps(SHAPE, truth, seed=6)
    names = {"mip": "mip", "zscore": "mip_scaled", "mean": "corr_average", "std": "corr_stddev",
             "phi": "phi", "theta": "theta", "psi": "psi", "defocus": "defocus"}
    for key, stem in names.items():
        _mrc(folder / f"{stem}.mrc", maps[key])
    _mrc(folder / "pixel_size.mrc", np.zeros(SHAPE))
    total = SHAPE[0] * SHAPE[1] * N_CORR
    bins = -12.5 + 35.0 / 512 * (np.arange(512) + 0.5)
    counts = np.diff(np.concatenate([[0.0], total * _norm_cdf(bins + 35.0 / 1024)]))
    counts[0] += total - counts.sum()
    survival = np.cumsum(counts[::-1])[::-1]
    lines = ["# Expected threshold = 7.21", "",
             "# SNR, histogram, survival histogram, random survival histogram"]
    lines += [" ".join(f"{v:14.5f}" for v in (b, c, s, s)) for b, c, s in zip(bins, counts, survival)]
    (folder / "histogram.txt").write_text("\n".join(lines) + "\n")
    if coords:
        out = ["# " + "".join(f"{h:>15}" for h in ("Psi", "Theta", "Phi", "X", "Y", "Z",
                                                    "PixelSize", "Peak"))]
        for x, y, phi, theta, psi, off in truth:
            vals = (psi, theta, phi, x * PIXEL_A, y * PIXEL_A, off, 0.0, maps["zscore"][int(y), int(x)])
            out.append(" ".join(f"{v:14.5f}" for v in vals))
        (folder / "coordinates.txt").write_text("\n".join(out) + "\n")
    if star:
        head = ["# Written by cisTEM Version 2.0.0-alpha on 2025-10-02 10:00:00", " ", "data_", " ",
                "loop_"]
        labels = ["cisTEMAnglePsi", "cisTEMAngleTheta", "cisTEMAnglePhi", "cisTEMDefocus1",
                  "cisTEMDefocus2", "cisTEMDefocusAngle", "cisTEMScore", "cisTEMPixelSize",
                  "cisTEMMicroscopeVoltagekV", "cisTEMMicroscopeCsMM", "cisTEMAmplitudeContrast",
                  "cisTEMBeamTiltX", "cisTEMBeamTiltY", "cisTEMImageShiftX", "cisTEMImageShiftY",
                  "cisTEMOriginalImageFilename", "cisTEMOriginalXPosition", "cisTEMOriginalYPosition"]
        head += [f"_{lab} #{i}" for i, lab in enumerate(labels, 1)]
        head.append("#   PSI   THETA     PHI      DF1      DF2  ANGAST   SCORE    PSIZE    VOLT      Cs"
                    "    AmpC  BTILTX  BTILTY  ISHFTX  ISHFTY   ORIGINAL_IMAGE_FILENAME    ORIGX    ORIGY")
        for x, y, phi, theta, psi, off in truth:
            name = f"'{folder / 'image.mrc'}'"
            head.append(f"{psi:7.2f} {theta:7.2f} {phi:7.2f} {CTF['defocus1_a'] + off:8.1f} "
                        f"{CTF['defocus2_a'] + off:8.1f} {30.0:7.2f} "
                        f"{maps['zscore'][int(y), int(x)]:7.2f} {PIXEL_A:8.5f} {300.0:7.2f} "
                        f"{2.7:7.2f} {0.07:7.4f} {0:7.3f} {0:7.3f} {0:7.3f} {0:7.3f} {name:>50s} "
                        f"{x * PIXEL_A:8.2f} {y * PIXEL_A:8.2f} ")
        (folder / "template_matches_package_1.star").write_text("\n".join(head) + "\n")
    return folder, truth


def _norm_cdf(x):
    from scipy.special import ndtr

    return ndtr(x)
