"""cisTEM and Leopard-EM searches opened as results folders (:class:`ResultsFolder`).

A *foreign* folder holds another program's ``match_template`` output (maps, and a
particle table: Leopard-EM's CSV, cisTEM's ``coordinates.txt`` or STAR). It is read, never
written, except for one sidecar of ours, :data:`SIDECAR`, holding what the files do
not say (:class:`ForeignSpec`: which file is which map, the micrograph, the template, the
input pixel size, the number of correlations per pixel for the false-alarm threshold, the
CTF). :func:`propose` fills a spec from the files, proposing the program's defaults for
the rest (listed in ``spec.asked``); the napari reader lets the user confirm it once
and :func:`save_spec` stores it; the CLI uses the stored spec, else the proposal.

:func:`open_foreign` builds an in-memory :class:`~napari_2dtm.search.engine.SearchResult`
in our conventions (docs/conventions.md): maps renamed to ours and placed on the
micrograph grid (Leopard-EM's valid-cropped, top-left-corner maps shifted by
``template_box // 2``), ``defocus`` made absolute, ``snr = MIP / sigma`` with sigma pooled
from the mean and std maps, hits with :data:`~napari_2dtm.search.detect.HIT_COLUMNS`.
Everything is read and checked before anything is returned: a broken file raises one
:class:`~napari_2dtm.errors.InputError` naming it, and nothing is half-opened.
:func:`open_results` opens either kind of folder; :func:`export_hits` writes a hits
table back in either program's format.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from napari_2dtm.core.ctf import CTFParams
from napari_2dtm.errors import InputError
from napari_2dtm.io import cistem, leopard
from napari_2dtm.io.mrc import atomic_write_text, read_mrc

from .results import MARKER, ResultsFolder

__all__ = ["SIDECAR", "ForeignSpec", "detect", "propose", "load_spec", "save_spec",
           "open_foreign", "open_results", "is_results_folder", "export_hits", "export_result",
           "DEFAULTS"]

#: our sidecar in a foreign folder (the only file we write there, with ``review/``)
SIDECAR = "napari_2dtm_import.json"

#: per program: correlations per pixel of its default search, and its peak radius (px).
#: cisTEM: 2.5/1.5 deg, C1, psi 0..360 inclusive = 1,598,794 orientations, one defocus
#: plane; Leopard-EM: the same steps, psi end-exclusive = 1,584,000 (our so3_grid).
DEFAULTS = {"cistem": {"correlations_per_pixel": 1_598_794, "peak_radius_px": 10.0},
            "leopard": {"correlations_per_pixel": 1_584_000, "peak_radius_px": 5.0}}

_PROGRAM_NAMES = {"cistem": "cisTEM", "leopard": "Leopard-EM"}


@dataclasses.dataclass
class ForeignSpec:
    """What napari-2dtm needs to know about a foreign folder (stored in :data:`SIDECAR`).

    files: role -> file (relative to the folder, or absolute): map roles as our map
    names (``mip``, ``zscore``, ``mean``, ``std``, ``phi``, ``theta``, ``psi``,
    ``defocus_offset``, cisTEM ``pixel_size_offset``), ``particles`` (Leopard-EM CSV,
    cisTEM STAR or ``coordinates.txt``), cisTEM ``histogram``. template_box: the
    template's edge (px; Leopard-EM's map offset is ``template_box // 2``).
    asked: the fields proposed from defaults rather than read from the files.
    """

    program: str
    files: dict
    micrograph: str | None = None
    template: str | None = None
    input_pixel_size_a: float | None = None
    template_box: int | None = None
    correlations_per_pixel: float | None = None
    ctf: dict = dataclasses.field(default_factory=dict)
    n_false_positives: float = 1.0
    threshold: float | None = None
    asked: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source=None) -> ForeignSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        if d.get("program") not in _PROGRAM_NAMES:
            raise InputError(f"{source}: program must be one of {sorted(_PROGRAM_NAMES)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def program_name(self) -> str:
        return _PROGRAM_NAMES[self.program]


# ------------------------------------------------------------------ recognising
def _mrc_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.mrc") if not p.name.startswith("."))


def _find_role(files: list[Path], stems: tuple) -> Path | None:
    """The file whose stem is one of ``stems``, or ends with ``_<stem>`` (a user prefix)."""
    for stem in stems:
        for p in files:
            if p.stem == stem:
                return p
    for stem in stems:
        hits = [p for p in files if p.stem.endswith("_" + stem)]
        if len(hits) == 1:
            return hits[0]
    return None


def detect(folder) -> str | None:
    """``"leopard"``, ``"cistem"`` or None: which program's results ``folder`` holds
    (our own results folders, with ``search.json``, are None)."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / MARKER).is_file():
        return None
    if (folder / SIDECAR).is_file():
        try:
            program = json.loads((folder / SIDECAR).read_text()).get("program")
        except (OSError, ValueError, AttributeError):
            program = None
        if program in _PROGRAM_NAMES:
            return program
    if any(leopard.is_particles_csv(p) for p in folder.glob("*.csv")):
        return "leopard"
    stems = [p.stem for p in _mrc_files(folder)]
    if any(s.endswith("orientation_psi") for s in stems):
        return "leopard"
    if ((folder / "histogram.txt").is_file() or any(s.endswith("mip_scaled") for s in stems)
            or any(cistem.is_coordinates(p) for p in folder.glob("*.txt"))
            or any(cistem.is_cistem_star(p) for p in folder.glob("*.star"))):
        return "cistem"
    return None


def is_results_folder(folder) -> bool:
    """A folder :func:`open_results` opens: ours (``search.json``) or a foreign one."""
    folder = Path(folder)
    return (folder / MARKER).is_file() or detect(folder) is not None


# ------------------------------------------------------------------ the spec
def load_spec(folder) -> ForeignSpec | None:
    """The stored spec of a foreign folder (None when none was stored)."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        return None
    try:
        return ForeignSpec.from_dict(json.loads(path.read_text()), path)
    except (OSError, ValueError, TypeError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: not readable ({e})") from None


def save_spec(folder, spec: ForeignSpec) -> Path:
    """Store ``spec`` in the folder's sidecar (atomic; the user's answers count as read:
    ``asked`` is emptied)."""
    spec = dataclasses.replace(spec, asked=[])
    path = Path(folder) / SIDECAR
    atomic_write_text(path, json.dumps(spec.to_dict(), indent=2))
    return path


def _existing(path_text, folder: Path) -> str | None:
    """A recorded path as it is found now: as written, else its name in ``folder``."""
    if not path_text or not isinstance(path_text, str):
        return None
    p = Path(path_text)
    for cand in (p if p.is_absolute() else folder / p, folder / p.name):
        if cand.is_file():
            return str(cand.resolve())
    return None


def propose(folder) -> ForeignSpec:
    """A spec read from the folder's files, with the program's defaults for the rest."""
    folder = Path(folder)
    program = detect(folder)
    if program is None:
        raise InputError(f"{folder}: not a cisTEM or Leopard-EM results folder (no scaled "
                         "MIP map, particle CSV, histogram.txt or coordinates.txt found)")
    return _propose_leopard(folder) if program == "leopard" else _propose_cistem(folder)


def _header_pixel(path: Path | None) -> float | None:
    if path is None:
        return None
    import mrcfile  # noqa: PLC0415

    try:
        with mrcfile.mmap(path, mode="r", permissive=True) as m:
            v = float(m.voxel_size.x)
    except Exception:
        return None
    return v if np.isfinite(v) and v > 0 else None


def _propose_leopard(folder: Path) -> ForeignSpec:
    mrcs = _mrc_files(folder)
    files = {role: p.name for role, stems in leopard.MAP_NAMES.items()
             if (p := _find_role(mrcs, stems)) is not None}
    csvs = [p for p in sorted(folder.glob("*.csv")) if leopard.is_particles_csv(p)]
    # refine_template's table (refined_* columns) is the better one when both are there
    csvs.sort(key=lambda p: "refined_mip" not in _first_line(p))
    spec = ForeignSpec("leopard", files)
    asked = []
    if csvs:
        df = leopard.read_particles(csvs[0])
        spec.files["particles"] = csvs[0].name
        if len(df):
            row = df.iloc[0]
            for role, col in leopard.MAP_ROLES.items():
                found = _existing(row.get(col), folder)
                if found and role not in spec.files:
                    spec.files[role] = found
            spec.micrograph = _existing(row.get("micrograph_path"), folder)
            spec.template = _existing(row.get("template_path"), folder)
            spec.input_pixel_size_a = _float(row.get("pixel_size"))
            box = _float(row.get("pos_x_img")) - _float(row.get("pos_x"), np.nan)
            spec.template_box = int(2 * box) if np.isfinite(box) else None
            spec.correlations_per_pixel = _float(row.get("total_correlations"))
            spec.ctf = _ctf_dict(defocus1_a=row.get("defocus_u"), defocus2_a=row.get("defocus_v"),
                                 astigmatism_angle_deg=row.get("astigmatism_angle"),
                                 voltage_kv=row.get("voltage"),
                                 cs_mm=row.get("spherical_aberration"),
                                 amplitude_contrast=row.get("amplitude_contrast_ratio"),
                                 phase_shift_deg=row.get("phase_shift"),
                                 bfactor_a2=row.get("ctf_B_factor"))
    _fill_defaults(spec, folder, asked)
    if spec.template_box is None and spec.template:
        spec.template_box = _mrc_nx(Path(spec.template))
    if spec.template_box is None and spec.micrograph and "zscore" in files:
        # valid cropping: map = micrograph - box + 1 on each axis
        mic, zmap = _mrc_shape(Path(spec.micrograph)), _mrc_shape(folder / files["zscore"])
        if mic and zmap and mic[-1] > zmap[-1]:
            spec.template_box = int(mic[-1] - zmap[-1] + 1)
    return spec


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline()


def _propose_cistem(folder: Path) -> ForeignSpec:
    mrcs = _mrc_files(folder)
    files = {role: p.name for role, stems in cistem.MAP_NAMES.items()
             if (p := _find_role(mrcs, stems)) is not None}
    spec = ForeignSpec("cistem", files)
    asked = []
    hist = folder / "histogram.txt"
    if hist.is_file():
        spec.files["histogram"] = hist.name
        thr, table = cistem.read_histogram(hist)
        spec.threshold = thr
        if len(table) and "std" in files:
            std = read_mrc(folder / files["std"])[0]
            n_valid = int(np.count_nonzero(std > 0)) or std.size
            spec.correlations_per_pixel = float(table["survival"].iloc[0]) / n_valid
    stars = [p for p in sorted(folder.glob("*.star")) if cistem.is_cistem_star(p)]
    coords = [p for p in sorted(folder.glob("*.txt")) if cistem.is_coordinates(p)]
    if stars:
        spec.files["particles"] = stars[0].name
        df = cistem.read_cistem_star(stars[0])
        if len(df):
            row = df.iloc[0]
            spec.input_pixel_size_a = _float(row.get("cisTEMPixelSize"))
            spec.micrograph = _existing(row.get("cisTEMOriginalImageFilename"), folder)
            d1 = pd.to_numeric(df.get("cisTEMDefocus1"), errors="coerce").to_numpy(np.float64)
            d2 = pd.to_numeric(df.get("cisTEMDefocus2"), errors="coerce").to_numpy(np.float64)
            # a package's defoci are nominal + the hit's offset (defocus.mrc at the peak)
            off = _offsets_at(folder, files.get("defocus_offset"), df, spec.input_pixel_size_a)
            d1, d2 = d1 - off, d2 - off
            spec.ctf = _ctf_dict(defocus1_a=float(np.median(d1)), defocus2_a=float(np.median(d2)),
                                 astigmatism_angle_deg=row.get("cisTEMDefocusAngle"),
                                 voltage_kv=row.get("cisTEMMicroscopeVoltagekV"),
                                 cs_mm=row.get("cisTEMMicroscopeCsMM"),
                                 amplitude_contrast=row.get("cisTEMAmplitudeContrast"),
                                 phase_shift_deg=row.get("cisTEMPhaseShift"))
    elif coords:
        spec.files["particles"] = coords[0].name
    _fill_defaults(spec, folder, asked)
    return spec


def _offsets_at(folder: Path, name, df: pd.DataFrame, pixel_size_a) -> np.ndarray:
    """cisTEM's defocus-offset map at each STAR row's peak (zeros without the map)."""
    if not name or not pixel_size_a:
        return np.zeros(len(df))
    data = read_mrc(folder / name)[0]
    off = data.reshape(-1, *data.shape[-2:])[0]
    px = _header_pixel(folder / name) or pixel_size_a
    cols = np.rint(pd.to_numeric(df["cisTEMOriginalXPosition"], errors="coerce") / px)
    rows = np.rint(pd.to_numeric(df["cisTEMOriginalYPosition"], errors="coerce") / px)
    ok = (cols >= 0) & (rows >= 0) & (cols < off.shape[1]) & (rows < off.shape[0])
    out = np.zeros(len(df))
    out[ok] = off[rows[ok].astype(int), cols[ok].astype(int)]
    return out


def _fill_defaults(spec: ForeignSpec, folder: Path, asked: list) -> None:
    """Propose what the files did not say; name each proposal in ``spec.asked``."""
    maps = {spec.files.get(r) for r in ("mip", "zscore", "mean", "std", "phi", "theta", "psi",
                                        "defocus_offset", "pixel_size_offset")}
    others = {p: _mrc_shape(p) or () for p in _mrc_files(folder) if p.name not in maps}
    if spec.micrograph is None:
        asked.append("micrograph")
        flat = [p for p, sh in others.items() if len(sh) == 2 or (len(sh) == 3 and sh[0] == 1)]
        spec.micrograph = str(flat[0].resolve()) if len(flat) == 1 else None
    if spec.input_pixel_size_a is None:
        asked.append("input_pixel_size_a")
        spec.input_pixel_size_a = _header_pixel(_path(folder, spec.files.get("zscore"))) or 1.0
    if spec.program == "leopard" and spec.template_box is None:
        asked.append("template_box")
    if spec.template is None:
        asked.append("template")
        cubes = [p for p, sh in others.items() if len(sh) == 3 and len(set(sh)) == 1]
        spec.template = str(cubes[0].resolve()) if len(cubes) == 1 else None
    if spec.correlations_per_pixel is None:
        asked.append("correlations_per_pixel")
        spec.correlations_per_pixel = float(DEFAULTS[spec.program]["correlations_per_pixel"])
    if not spec.ctf:
        asked.append("ctf")
        spec.ctf = CTFParams().to_dict()
    spec.asked = asked


def _float(v, default=None):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if np.isfinite(f) else default


def _ctf_dict(**values) -> dict:
    defaults = CTFParams().to_dict()
    out = {k: (_float(v) if _float(v) is not None else defaults[k]) for k, v in values.items()}
    return CTFParams(**{**defaults, **out}).to_dict()


def _mrc_nx(path: Path) -> int | None:
    shape = _mrc_shape(path)
    return shape[-1] if shape else None


def _mrc_shape(path: Path) -> tuple | None:
    """The data shape in an MRC header (None when unreadable)."""
    import mrcfile  # noqa: PLC0415

    try:
        with mrcfile.mmap(path, mode="r", permissive=True) as m:
            return tuple(int(s) for s in m.data.shape)
    except Exception:
        return None


def _path(folder: Path, name) -> Path | None:
    if not name:
        return None
    p = Path(name)
    return p if p.is_absolute() else folder / p


# ------------------------------------------------------------------ opening
def open_results(folder, *, maps: bool = True) -> ResultsFolder:
    """Our results folder (``search.json``) or a cisTEM / Leopard-EM one, as a
    :class:`ResultsFolder`; InputError naming the folder when it is neither."""
    folder = Path(folder)
    if (folder / MARKER).is_file() or detect(folder) is None:
        return ResultsFolder.open(folder, maps=maps)
    return open_foreign(folder)


def open_foreign(folder, spec: ForeignSpec | None = None) -> ResultsFolder:
    """The foreign folder as a :class:`ResultsFolder` (in memory; ``path`` = the folder)."""
    from .detect import extract_hits, false_alarm_threshold  # noqa: PLC0415
    from .engine import SearchResult  # noqa: PLC0415 (heavy kernels)

    folder = Path(folder)
    spec = spec or load_spec(folder) or propose(folder)
    if "zscore" not in spec.files:
        raise InputError(f"{folder}: no scaled MIP map found for {spec.program_name}; "
                         "choose its files")
    raw = {}
    for role in ("mip", "zscore", "mean", "std", "phi", "theta", "psi", "defocus_offset",
                 "pixel_size_offset"):
        if spec.files.get(role):
            path = _path(folder, spec.files[role])
            data, px = read_mrc(path)
            if data.ndim == 3 and data.shape[0] == 1:
                data = data[0]
            if data.ndim != 2:
                raise InputError(f"{path}: a {spec.program_name} map must be 2D, got shape "
                                 f"{data.shape}")
            raw[role] = (data, px, path)
    for data, _, path in raw.values():
        if data.shape != raw["zscore"][0].shape:
            raise InputError(f"{path}: shape {data.shape} differs from the scaled MIP's "
                             f"{raw['zscore'][0].shape}")
    search_px = raw["zscore"][1] or spec.input_pixel_size_a or 1.0
    input_px = float(spec.input_pixel_size_a or search_px)
    ctf = CTFParams(**spec.ctf) if spec.ctf else CTFParams()
    mshape = raw["zscore"][0].shape
    mic_shape = _micrograph_shape(spec)
    if spec.program == "leopard":
        if not spec.template_box:
            raise InputError(f"{folder}: the template's box size is needed to place "
                             "Leopard-EM's maps (give template_box)")
        offset = int(spec.template_box) // 2
        shape = mic_shape or (mshape[0] + 2 * offset, mshape[1] + 2 * offset)
        search_px = input_px  # Leopard-EM does not resample the micrograph
    else:
        offset = 0
        shape = mshape
    maps = {role: _place(d, shape, offset) for role, (d, _, _) in raw.items()}
    valid = _place(np.ones(mshape, bool), shape, offset)
    if "std" in maps:
        valid &= maps["std"] > 0
    pix_off = maps.pop("pixel_size_offset", None)
    if pix_off is not None and np.any(pix_off[valid] != 0):
        maps["pixel_size"] = (search_px + pix_off).astype(np.float32)
    if "defocus_offset" not in maps:
        maps["defocus_offset"] = np.zeros(shape, np.float32)
    mean_df = (ctf.defocus1_a + ctf.defocus2_a) / 2
    maps["defocus"] = (mean_df + maps["defocus_offset"]).astype(np.float32)
    sigma = _pooled_sigma(maps, valid)
    if "mip" in maps:
        maps["snr"] = (maps["mip"] / sigma).astype(np.float32)
    for role in ("phi", "theta", "psi"):
        maps.setdefault(role, np.zeros(shape, np.float32))
    n_valid = int(valid.sum())
    n_trials = float(max(n_valid, 1) * float(spec.correlations_per_pixel or 1.0))
    threshold = (float(spec.threshold) if spec.threshold
                 else false_alarm_threshold(n_trials, spec.n_false_positives))
    radius = DEFAULTS[spec.program]["peak_radius_px"]
    meta = {
        "program": spec.program,
        "foreign": spec.to_dict(),
        "micrograph": spec.micrograph,
        "micrograph_relative": None,
        "search_pixel_size_a": float(search_px),
        "input_pixel_size_a": input_px,
        "input_shape": list(mic_shape or (round(shape[0] * search_px / input_px),
                                          round(shape[1] * search_px / input_px))),
        "threshold": threshold,
        "n_trials": n_trials,
        "hits_metric": "zscore",
        "hits_threshold": threshold,
        "peak_radius_px": radius,
        "cc_global_std": sigma,
        "config": {"ctf": ctf.to_dict(), "n_false_positives": spec.n_false_positives,
                   "peak_radius_px": radius},
        "template": {"source": spec.template, "box": spec.template_box,
                     "pixel_size_a": input_px, "search_box": spec.template_box, "params": {}},
    }
    result = SearchResult(maps=maps, pixel_size_a=float(search_px), input_pixel_size_a=input_px,
                          threshold=threshold, n_trials=n_trials, hits=None, metadata=meta,
                          valid_mask=valid)
    table = _read_particles(folder, spec, input_px, ctf)
    if table is None:
        hits = extract_hits(result, "zscore", ctf=ctf)
    else:
        hits = _with_map_values(table, maps, input_px / search_px)
    result.hits = hits
    return ResultsFolder(result, folder)


def _micrograph_shape(spec: ForeignSpec) -> tuple | None:
    if not spec.micrograph or not Path(spec.micrograph).is_file():
        return None
    shape = _mrc_shape(Path(spec.micrograph))
    return shape[-2:] if shape else None


def _place(data: np.ndarray, shape: tuple, offset: int) -> np.ndarray:
    """``data`` put at ``(offset, offset)`` of a zero array of ``shape`` (cropped)."""
    out = np.zeros(shape, data.dtype)
    h = min(data.shape[0], shape[0] - offset)
    w = min(data.shape[1], shape[1] - offset)
    out[offset:offset + h, offset:offset + w] = data[:h, :w]
    return out


def _pooled_sigma(maps: dict, valid: np.ndarray) -> float:
    """Standard deviation of all correlations from per-pixel mean and std maps
    (law of total variance over the valid pixels); 1 when they are missing."""
    if "mean" not in maps or "std" not in maps or not valid.any():
        return 1.0
    m = maps["mean"][valid].astype(np.float64)
    s = maps["std"][valid].astype(np.float64)
    var = float(np.mean(s**2 + m**2) - np.mean(m) ** 2)
    return float(np.sqrt(var)) if var > 0 else 1.0


def _read_particles(folder: Path, spec: ForeignSpec, input_px: float, ctf: CTFParams):
    """Our hits from the folder's particle table (None when it has none)."""
    name = spec.files.get("particles")
    if not name:
        return None
    path = _path(folder, name)
    if spec.program == "leopard":
        return leopard.particles_to_hits(leopard.read_particles(path))
    if cistem.is_cistem_star(path):
        return cistem.star_to_hits(cistem.read_cistem_star(path), input_px, source=path)
    return cistem.coordinates_to_hits(cistem.read_coordinates(path), input_px, ctf.to_dict())


def _with_map_values(table: pd.DataFrame, maps: dict, scale: float) -> pd.DataFrame:
    """Add ``snr`` (and ``mip``, ``zscore`` where missing) sampled from the maps at each
    hit, plus ``x_search``/``y_search``; the table's own values are kept."""
    table = table.copy()
    shape = maps["zscore"].shape
    cols = np.clip(np.rint(table["x"].to_numpy(np.float64) / scale).astype(int), 0, shape[1] - 1)
    rows = np.clip(np.rint(table["y"].to_numpy(np.float64) / scale).astype(int), 0, shape[0] - 1)
    for name in ("snr", "mip", "zscore"):
        if name in maps and (name not in table or table[name].isna().all()):
            table[name] = maps[name][rows, cols].astype(np.float64)
    table["x_search"] = cols
    table["y_search"] = rows
    return table.reset_index(drop=True)


# ------------------------------------------------------------------ export
def export_hits(hits: pd.DataFrame, path, fmt: str, *, pixel_size_a: float, ctf, template_box=None,
                micrograph_path: str = "", template_path: str = "",
                correlations_per_pixel=None, overwrite: bool = True) -> Path:
    """Write a hits table (our columns) as a Leopard-EM particle CSV (``fmt="leopard"``)
    or a cisTEM STAR (``fmt="cistem"``) so the curated hits go on in that program.

    pixel_size_a: the micrograph's (Leopard-EM's ``pixel_size``; cisTEM positions are in
    A). template_box: needed for Leopard-EM's corner positions ``pos_x/pos_y``.
    """
    ctf = ctf.to_dict() if isinstance(ctf, CTFParams) else dict(ctf or {})
    if not ctf:
        raise InputError(f"{path}: the hits carry no CTF to write")
    if fmt == "leopard":
        if not template_box:
            raise InputError(f"{path}: the template box size is needed for Leopard-EM's "
                             "pos_x/pos_y (give it)")
        rows = leopard.hits_to_particles(hits, template_box=int(template_box),
                                         pixel_size_a=pixel_size_a, ctf=ctf,
                                         micrograph_path=micrograph_path,
                                         template_path=template_path,
                                         total_correlations=correlations_per_pixel)
        return leopard.write_particles(rows, path, overwrite=overwrite)
    if fmt == "cistem":
        rows = cistem.hits_to_star_rows(hits, pixel_size_a=pixel_size_a, ctf=ctf,
                                        micrograph_path=micrograph_path)
        return cistem.write_cistem_star(rows, path, overwrite=overwrite)
    raise InputError(f"{path}: unknown export format {fmt!r} (leopard or cistem)")


def export_result(view: ResultsFolder, hits: pd.DataFrame, path, fmt: str,
                  overwrite: bool = True) -> pd.DataFrame:
    """:func:`export_hits` for hits of a results folder (ours or foreign): pixel size,
    CTF, template box (in micrograph pixels), micrograph and template paths from it.
    Returns ``hits``."""
    t = view.template
    px = view.input_pixel_size_a
    box = round(t.box * (t.pixel_size_a or px) / px) if t.box else None
    spec = view.metadata.get("foreign") or {}
    corr = spec.get("correlations_per_pixel")
    if corr is None and view.metadata.get("n_trials") and view.maps.get("zscore") is not None:
        valid = view.result.valid_mask
        n_valid = int(valid.sum()) if valid is not None else view.maps["zscore"].size
        corr = float(view.metadata["n_trials"]) / max(n_valid, 1)
    mic = view.micrograph_path()
    export_hits(hits, path, fmt, pixel_size_a=px, ctf=view.ctf, template_box=box,
                micrograph_path=str(mic or view.recorded_micrograph or ""),
                template_path=str(t.source or ""), correlations_per_pixel=corr,
                overwrite=overwrite)
    return hits
