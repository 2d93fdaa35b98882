"""The classification folder: write it (one way, atomically) and read it back.

Layout (every file is written by :func:`write_classification_files`)::

    classification.csv        every hit: scores, features, posteriors, class
    classification.json       parameters, fitted means/covariances/priors, counts at
                              50 % and 95 %, AIC/BIC per class subset, warnings (the
                              folder's marker: a folder without it is never replaced)
    all_hits.star             every hit with rlnClassNumber (0 = unassigned)
    class_<k>_<name>.star     hits assigned to class k at the chosen confidence
    features.png              the log2 ratios with the fitted Gaussians (drawn by the
                              ``plot`` callable: figures live above this layer, in
                              :mod:`napari_2dtm.plots`; the job passes
                              :func:`napari_2dtm.plots.save_features`)

A table with a ``micrograph`` column (hits pooled from several micrographs) names each
row's micrograph in the STAR files; otherwise every row gets ``micrograph_name``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from napari_2dtm.classify.result import CONFIDENCE_LEVELS, ClassificationResult
from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import atomic_dir, atomic_path
from napari_2dtm.io.records import json_default
from napari_2dtm.io.star import hits_to_star, write_hits
from napari_2dtm.search.results import _versions

__all__ = ["write_classification", "write_classification_files", "read_classification",
           "write_class_stars", "MARKER", "WHAT"]

#: The file every classification folder holds (see :func:`napari_2dtm.io.mrc.atomic_dir`).
MARKER = "classification.json"
#: The kind of folder, for messages.
WHAT = "classification folder"


def _write_star(hits: pd.DataFrame, path: Path, micrograph_name, pixel_size_a, ctf) -> None:
    """RELION STAR of hits; a ``micrograph`` column (pooled micrographs) names each row's."""
    if "micrograph" not in hits:
        write_hits(hits, path, micrograph_name, pixel_size_a, ctf)
        return
    blocks = hits_to_star(hits, micrograph_name, pixel_size_a, ctf)
    blocks["particles"]["rlnMicrographName"] = hits["micrograph"].astype(str).to_numpy()
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, overwrite=True)


def write_class_stars(res: ClassificationResult, folder, confidence: float | None = None,
                      micrograph_name: str = "micrograph.mrc", pixel_size_a: float | None = None,
                      ctf: dict | None = None, overwrite: bool = False) -> list[Path]:
    """Write ``class_<k>_<name>.star`` (hits assigned to class k at ``confidence``) into
    ``folder``; each file atomically, none replaced unless ``overwrite``. Returns paths."""
    folder = Path(folder)
    conf = res.confidence if confidence is None else float(confidence)
    paths = [folder / f"class_{i + 1}_{nm}.star" for i, nm in enumerate(res.names)]
    if not overwrite:
        for p in paths:
            if p.exists():
                raise InputError(f"{p}: exists; refusing to overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    px = pixel_size_a or res.params.get("pixel_size_a")
    ctf = ctf if ctf is not None else res.params.get("ctf")
    for i, p in enumerate(paths):
        _write_star(res.class_hits(i, conf), p, micrograph_name, px, ctf)
    return paths


def write_classification(
    res: ClassificationResult,
    out_dir,
    overwrite: bool = False,
    micrograph_name: str = "micrograph.mrc",
    pixel_size_a: float | None = None,
    ctf: dict | None = None,
    plot: Callable[[ClassificationResult, Path], None] | None = None,
) -> Path:
    """Write a classification folder atomically (:func:`napari_2dtm.io.mrc.atomic_dir`).

    An existing folder is replaced only with ``overwrite=True``, and never one without
    ``classification.json``. plot: draws ``features.png`` as ``plot(res, path)``
    (:func:`napari_2dtm.plots.save_features`); None writes no figure. Returns the folder.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite, marker=MARKER, what=WHAT) as tmp:
        write_classification_files(res, tmp, micrograph_name, pixel_size_a, ctf, plot)
    return out_dir


def write_classification_files(
    res: ClassificationResult,
    folder: Path,
    micrograph_name: str = "micrograph.mrc",
    pixel_size_a: float | None = None,
    ctf: dict | None = None,
    plot: Callable[[ClassificationResult, Path], None] | None = None,
) -> None:
    """The files of a classification folder (see the module docstring), into ``folder``:
    an empty folder from :func:`~napari_2dtm.io.mrc.atomic_dir`, which alone moves it
    into place. pixel_size_a and ctf default to ``res.params``'."""
    tmp = Path(folder)
    px = pixel_size_a or res.params.get("pixel_size_a")
    ctf = ctf if ctf is not None else res.params.get("ctf")
    res.hits.to_csv(tmp / "classification.csv", index=False)
    _write_star(res.hits, tmp / "all_hits.star", micrograph_name, px, ctf)
    files = {"table": "classification.csv", "all": "all_hits.star", "classes": {}}
    for i, nm in enumerate(res.names):
        fn = f"class_{i + 1}_{nm}.star"
        _write_star(res.class_hits(i), tmp / fn, micrograph_name, px, ctf)
        files["classes"][nm] = fn
    meta = {
        "method": "in situ classification, Lucas et al. eLife 2022 (log2 SNR ratios, "
                  "Gaussian mixture by EM)",
        "templates": res.names,
        "reference": res.names[res.reference],
        "feature_names": res.feature_names,
        "confidence": res.confidence,
        "priors_fixed": res.priors_fixed,
        "priors": res.priors,
        "present": res.present,
        "means": res.means,
        "covariances": res.covariances,
        "selection": res.selection,
        "log_likelihood": res.log_likelihood,
        "converged": res.converged,
        "counts": {f"{c:g}": res.counts(c) for c in sorted(set(CONFIDENCE_LEVELS) | {res.confidence})},
        "n_hits": len(res.hits),
        "warnings": res.warnings,
        "params": res.params,
        "files": files,
        "versions": _versions(),
    }
    if plot is not None:
        plot(res, tmp / "features.png")
        files["plot"] = "features.png"
    # the marker last: a folder holding it is complete
    (tmp / MARKER).write_text(
        json.dumps(meta, indent=2, default=json_default, allow_nan=True) + "\n")


def read_classification(out_dir) -> ClassificationResult:
    """Load a folder written by :func:`write_classification`."""
    out_dir = Path(out_dir)
    meta_path = out_dir / MARKER
    if not meta_path.exists():
        raise InputError(f"{out_dir}: not a classification folder (no {MARKER})")
    meta = json.loads(meta_path.read_text())
    hits = pd.read_csv(out_dir / "classification.csv", keep_default_na=False, na_values=["", "NaN", "nan"])
    names = list(meta["templates"])
    ref = names.index(meta["reference"])
    k = len(names)
    x = hits[meta["feature_names"]].to_numpy(np.float64)
    post = hits[[f"p_{n}" for n in names]].to_numpy(np.float64)
    if "class_name" in hits:
        hits["class_name"] = hits["class_name"].astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        means = np.asarray(meta["means"], dtype=np.float64).reshape(k, k - 1)
        covs = np.asarray(meta["covariances"], dtype=np.float64).reshape(k, k - 1, k - 1)
    return ClassificationResult(
        hits=hits, names=names, reference=ref, features=x, posteriors=post, means=means,
        covariances=covs, priors=np.asarray(meta["priors"], dtype=np.float64),
        present=np.asarray(meta["present"], dtype=bool), priors_fixed=bool(meta["priors_fixed"]),
        confidence=float(meta["confidence"]), selection=dict(meta["selection"]),
        log_likelihood=float(meta["log_likelihood"]), converged=bool(meta["converged"]),
        warnings=list(meta.get("warnings", [])), params=dict(meta.get("params", {})),
    )
