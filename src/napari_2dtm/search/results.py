"""The results folder of one search, and :class:`ResultsFolder`, its typed view.

Layout of ``OUT/``::

    mip.mrc zscore.mrc snr.mrc mean.mrc std.mrc phi.mrc theta.mrc psi.mrc
    defocus.mrc defocus_offset.mrc [pixel_size.mrc] [neg_log_p.mrc] valid_mask.mrc
    hits.star hits.csv search.json
    [input/<name>.mrc]      the micrograph, when it was searched from memory (widget, demo)

Maps carry the search pixel size in their header. ``search.json`` is the search's
metadata plus ``micrograph`` (where the searched image is: an absolute path, or a path
relative to the folder for the ``input/`` copy), ``micrograph_relative`` (the same file
relative to the folder, so that a project moved or copied as a whole, micrograph and
results together, still finds it from any working folder), ``versions`` and ``n_hits``. The folder
is written with :func:`~napari_2dtm.io.mrc.atomic_dir` (marker ``search.json``): it
appears complete or not at all, and an existing folder is replaced only with
``overwrite=True`` and only if it is a results folder.

Every reader of a results folder goes through :class:`ResultsFolder`: the micrograph is
found by one rule (:meth:`ResultsFolder.micrograph_path`), and the CTF, config and
template come as typed values instead of dictionary digging in ``search.json``.
The STAR/CSV hits files are written by :mod:`napari_2dtm.io.star`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
from importlib import metadata as im
from pathlib import Path

import numpy as np
import pandas as pd

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import (
    atomic_dir,
    output_problem,
    read_micrograph,
    read_mrc,
    write_mrc,
)
from napari_2dtm.io.records import json_default
from napari_2dtm.io.star import write_hits

__all__ = ["ResultsFolder", "TemplateInfo", "write_results", "read_results", "MARKER",
           "INPUT_DIR", "results_dir_problem"]

#: the file every results folder holds (``atomic_dir``'s marker)
MARKER = "search.json"
#: sub-folder of the micrograph copy of a search run on an in-memory image
INPUT_DIR = "input"


@dataclasses.dataclass(frozen=True)
class TemplateInfo:
    """The template of a search as recorded: source (file path, or a description of an
    in-memory array), box and pixel size (Angstrom) of the template, box at the search
    pixel size, and the model-conversion parameters."""

    source: str | None
    box: int | None
    pixel_size_a: float | None
    search_box: int | None
    params: dict

    @property
    def is_file(self) -> bool:
        """True when the source is a file on this computer (it can be loaded again)."""
        return bool(self.source) and Path(str(self.source)).is_file()


@dataclasses.dataclass
class ResultsFolder:
    """A search result with the folder it was saved in (None: in memory only).

    Build one with :meth:`open` (read a folder) or :meth:`of` (wrap a
    :class:`~napari_2dtm.search.engine.SearchResult`). ``result`` holds maps, hits and
    the raw metadata; the properties below are the typed way to read them.
    """

    result: object
    path: Path | None = None

    @classmethod
    def open(cls, folder, *, maps: bool = True) -> ResultsFolder:
        """Read a results folder (maps, valid mask, hits, ``search.json``); with
        ``maps=False`` only ``search.json`` (a quick look: no maps, no hits table)."""
        from .engine import SearchResult  # noqa: PLC0415 (the engine imports heavy kernels)

        folder = Path(folder)
        meta_path = folder / MARKER
        if not meta_path.is_file():
            raise InputError(f"{folder}: not a napari-2dtm results folder (no {MARKER})")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{meta_path}: not readable ({e})") from None
        _find_moved_template(meta, folder)
        if not maps:
            return cls(SearchResult(maps={}, pixel_size_a=meta.get("search_pixel_size_a"),
                                    input_pixel_size_a=meta.get("input_pixel_size_a"),
                                    threshold=meta.get("threshold"), n_trials=meta.get("n_trials"),
                                    hits=None, metadata=meta), folder)
        found = {p.stem: read_mrc(p)[0] for p in sorted(folder.glob("*.mrc"))
                 if p.stem != "valid_mask"}
        valid = None
        if (folder / "valid_mask.mrc").exists():
            valid = read_mrc(folder / "valid_mask.mrc")[0].astype(bool)
        hits_csv = folder / "hits.csv"
        hits = (pd.read_csv(hits_csv) if hits_csv.exists() and hits_csv.stat().st_size > 1
                else pd.DataFrame())
        cand_csv = folder / "candidates.csv"
        candidates = (pd.read_csv(cand_csv) if meta.get("strategy") == "fast"
                      and cand_csv.is_file() else None)
        result = SearchResult(maps=found, pixel_size_a=meta["search_pixel_size_a"],
                              input_pixel_size_a=meta["input_pixel_size_a"],
                              threshold=meta["threshold"], n_trials=meta["n_trials"], hits=hits,
                              metadata=meta, valid_mask=valid, candidates=candidates)
        return cls(result, folder)

    @classmethod
    def of(cls, result, folder=None) -> ResultsFolder:
        """The typed view of an in-memory result (``folder``: where it was saved, if known)."""
        return cls(result, Path(folder) if folder else None)

    # ------------------------------------------------------------ the result
    @property
    def metadata(self) -> dict:
        return self.result.metadata if self.result.metadata is not None else {}

    @property
    def maps(self) -> dict:
        return self.result.maps

    @property
    def hits(self) -> pd.DataFrame:
        return self.result.hits if self.result.hits is not None else pd.DataFrame()

    @property
    def pixel_size_a(self) -> float:
        """The search pixel size (of the maps), Angstrom."""
        return float(self.result.pixel_size_a)

    @property
    def input_pixel_size_a(self) -> float:
        """The micrograph's pixel size (of the hit coordinates), Angstrom."""
        return float(self.result.input_pixel_size_a)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.metadata.get("input_shape") or ())

    # ---------------------------------------------------------- typed metadata
    @property
    def config(self):
        """The :class:`~napari_2dtm.search.engine.SearchConfig` of the search (an explicit
        orientation list is not stored: ``orientations`` is None then)."""
        from .config import SearchConfig  # noqa: PLC0415

        return SearchConfig.from_dict(self.metadata.get("config") or {})

    @property
    def ctf(self) -> CTFParams:
        """The CTF the search used (nominal defocus; the maps add the defocus offsets)."""
        return CTFParams(**((self.metadata.get("config") or {}).get("ctf") or {}))

    @property
    def high_res_limit_a(self) -> float | None:
        return (self.metadata.get("config") or {}).get("high_res_limit_a")

    @property
    def cc_global_std(self) -> float:
        """The standard deviation of all cross-correlation values of the search (1 when
        nothing is recorded): local scores divide by it to be on the search's SNR scale."""
        return float(self.metadata.get("cc_global_std") or 1.0)

    @property
    def peak_radius_px(self) -> float:
        """Minimum distance between hits in search pixels (10 when nothing is recorded)."""
        m = self.metadata
        return float(m.get("peak_radius_px") or (m.get("config") or {}).get("peak_radius_px")
                     or 10.0)

    @property
    def template(self) -> TemplateInfo:
        t = dict(self.metadata.get("template") or {})
        return TemplateInfo(source=t.get("source"), box=t.get("box"),
                            pixel_size_a=t.get("pixel_size_a"), search_box=t.get("search_box"),
                            params=dict(t.get("params") or {}))

    @property
    def hits_metric(self) -> str:
        """The map the hits were detected on (``zscore``, ``snr`` or ``neg_log_p``)."""
        return str(self.metadata.get("hits_metric") or "zscore")

    @property
    def hits_threshold(self) -> float:
        return float(self.metadata.get("hits_threshold", self.result.threshold))

    @property
    def n_hits(self) -> int | None:
        """Number of hits (as recorded, when the hits were not read)."""
        if self.result.hits is not None:
            return len(self.result.hits)
        n = self.metadata.get("n_hits")
        return None if n is None else int(n)

    @property
    def elapsed_s(self) -> float:
        return float(self.metadata.get("elapsed_s") or 0.0)

    # ------------------------------------------------------------ micrograph
    @property
    def recorded_micrograph(self) -> str | None:
        """The micrograph as ``search.json`` records it (None if it records none)."""
        value = self.metadata.get("micrograph")
        return str(value) if value else None

    @property
    def micrograph_name(self) -> str:
        """File name of the micrograph (``rlnMicrographName``); ``micrograph.mrc`` if none."""
        rec = self.recorded_micrograph
        return Path(rec).name if rec else "micrograph.mrc"

    def micrograph_path(self) -> Path | None:
        """Where the searched micrograph is now, by one rule; None when it is not found.

        1. the recorded path: absolute, or relative to the results folder;
        2. the recorded path relative to the results folder (``micrograph_relative``: the
           project was moved or copied);
        3. the folder's own copy, ``input/<recorded file name>`` (so a folder that was
           moved, with an absolute path recorded, still opens), or its only
           ``input/*.mrc`` when nothing is recorded.
        """
        rec = self.recorded_micrograph
        folder = self.path
        candidates = []
        if rec:
            p = Path(rec)
            if p.is_absolute():
                candidates.append(p)
            elif folder is not None:
                candidates.append(folder / p)
            rel = self.metadata.get("micrograph_relative")
            if rel and folder is not None:
                candidates.append(folder / rel)
            if folder is not None:
                candidates.append(folder / INPUT_DIR / p.name)
        elif folder is not None:
            copies = sorted((folder / INPUT_DIR).glob("*.mrc"))
            candidates += copies if len(copies) == 1 else []
        return next((c for c in candidates if c.is_file()), None)

    def read_micrograph(self, pixel_size_a: float | None = None):
        """``(image, pixel_size_a)`` of the searched micrograph; :class:`InputError` when
        its file is not found (the message says where it was looked for)."""
        path = self.micrograph_path()
        if path is None:
            where = self.path or "the result"
            if not self.recorded_micrograph:
                raise InputError(f"{where}: search.json records no micrograph; give it")
            raise InputError(f"{where}: micrograph {self.recorded_micrograph} not found; give it")
        return read_micrograph(path, pixel_size_a or self.input_pixel_size_a)


def read_results(out_dir):
    """Load a results folder back into a :class:`~napari_2dtm.search.engine.SearchResult`
    (:meth:`ResultsFolder.open` gives the typed view as well)."""
    return ResultsFolder.open(out_dir).result


# --------------------------------------------------------------------- writing
def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("napari-2dtm", "numpy", "scipy", "numba", "mrcfile", "gemmi", "starfile", "pandas", "cupy"):
        try:
            out[pkg] = im.version(pkg)
        except im.PackageNotFoundError:
            pass
    return out


def results_dir_problem(out_dir, overwrite: bool = False, inputs=()) -> str | None:
    """Why ``out_dir`` cannot receive a results folder (None: it can): the rules
    :func:`~napari_2dtm.io.mrc.atomic_dir` applies when writing, checked before a search
    starts so that a long search is not run for nothing. inputs: the run's input files;
    a folder holding one is refused even with ``overwrite``."""
    return (output_problem(out_dir, overwrite=overwrite, marker=MARKER, what="results folder")
            or output_problem(out_dir, overwrite=True, inputs=inputs))


def input_copy_name(micrograph_name: str) -> str:
    """``input/<safe name>.mrc``: where an in-memory micrograph is saved in the folder."""
    safe = re.sub(r"[^\w.-]+", "_", str(micrograph_name)).strip("._") or "micrograph"
    return f"{INPUT_DIR}/{safe}.mrc"


def write_results(result, out_dir, overwrite: bool = False, micrograph_path=None, *,
                  micrograph_image=None, micrograph_name: str = "micrograph") -> Path:
    """Write a :class:`~napari_2dtm.search.engine.SearchResult` into ``out_dir``.

    micrograph_path: the searched file (recorded as an absolute path and relative to the
    folder). Or micrograph_image: the searched image itself (an in-memory micrograph),
    saved in the folder as ``input/<micrograph_name>.mrc`` and recorded relative to the
    folder.
    """
    out_dir = Path(out_dir)
    relative = None
    if micrograph_image is not None:
        recorded = input_copy_name(micrograph_name)
    else:
        recorded = str(Path(micrograph_path).resolve()) if micrograph_path else None
        if recorded:
            relative = _relative_to(recorded, out_dir)
    with atomic_dir(out_dir, overwrite=overwrite, marker=MARKER, what="results folder") as tmp:
        px = result.pixel_size_a
        for name, arr in result.maps.items():
            write_mrc(tmp / f"{name}.mrc", np.asarray(arr, np.float32), px)
        if result.valid_mask is not None:
            write_mrc(tmp / "valid_mask.mrc", result.valid_mask.astype(np.int8), px)
        if micrograph_image is not None:
            write_mrc(tmp / recorded, micrograph_image, result.input_pixel_size_a)
        view = ResultsFolder.of(result)
        hits = view.hits
        write_hits(hits, tmp / "hits.star", Path(recorded).name if recorded else "micrograph.mrc",
                   result.input_pixel_size_a, view.ctf)
        write_hits(hits, tmp / "hits.csv")
        if getattr(result, "candidates", None) is not None:
            result.candidates.to_csv(tmp / "candidates.csv", index=False)
        meta = dict(result.metadata)
        meta["micrograph"] = recorded
        meta["micrograph_relative"] = relative
        meta["template"] = _template_record(meta.get("template"), out_dir)
        meta["versions"] = _versions()
        meta["n_hits"] = len(hits)
        (tmp / MARKER).write_text(json.dumps(meta, indent=2, default=json_default))
    return out_dir


def _template_record(template: dict | None, out_dir: Path) -> dict | None:
    """The template's record with a file source written as an absolute path and, as
    ``source_relative``, relative to the results folder (the micrograph's rule), so a
    moved or copied project still finds its template."""
    if not template or not template.get("source") or not Path(template["source"]).is_file():
        return template
    absolute = str(Path(template["source"]).resolve())
    return {**template, "source": absolute, "source_relative": _relative_to(absolute, out_dir)}


def _find_moved_template(meta: dict, folder: Path) -> None:
    """Point ``meta["template"]["source"]`` at the template file where it is now: the
    recorded path, else ``source_relative`` from the folder (the project was moved)."""
    t = meta.get("template") or {}
    src, rel = t.get("source"), t.get("source_relative")
    if src and not Path(src).is_file() and rel and (folder / rel).is_file():
        t["source"] = str((folder / rel).resolve())


def _relative_to(path: str, folder: Path) -> str | None:
    """``path`` relative to ``folder`` (both made absolute; None across drives)."""
    try:
        return Path(os.path.relpath(path, Path(folder).resolve())).as_posix()
    except ValueError:
        return None
