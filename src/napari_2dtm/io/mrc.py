"""MRC reading with user-facing validation, and atomic writes.

Every reader raises :class:`~napari_2dtm.errors.InputError` whose message names the
file and the problem; nothing leaks a traceback from deep inside NumPy or mrcfile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import mrcfile
import numpy as np

from napari_2dtm.errors import InputError

__all__ = [
    "read_mrc",
    "read_micrograph",
    "read_map",
    "write_mrc",
    "atomic_write_text",
    "atomic_path",
]


def read_mrc(path: str | Path) -> tuple[np.ndarray, float | None]:
    """Read any MRC file as float32; returns ``(data, pixel_size_a or None)``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an MRC file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, permissive=True, mode="r") as m:
                if m.data is None:
                    raise InputError(f"{path}: not an MRC file (unreadable header or data)")
                data = np.asarray(m.data, dtype=np.float32).copy()
                vs = float(m.voxel_size.x)
    except InputError:
        raise
    except Exception as e:  # mrcfile raises ValueError/OSError/EOFError on junk
        raise InputError(f"{path}: not a readable MRC file ({type(e).__name__}: {e})") from None
    pixel = vs if np.isfinite(vs) and vs > 0 else None
    return data, pixel


def _check_finite(path, data):
    if not np.all(np.isfinite(data)):
        n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{path}: contains {n} NaN or infinite pixel values")


def _resolve_pixel(path, header_pixel, given):
    if given is not None:
        if not (np.isfinite(given) and given > 0):
            raise InputError(f"{path}: pixel size must be > 0 Angstrom, got {given}")
        return float(given)
    if header_pixel is None:
        raise InputError(
            f"{path}: pixel size is zero or missing in the header; give it (--pixel-size)"
        )
    return float(header_pixel)


def read_micrograph(path: str | Path, pixel_size_a: float | None = None) -> tuple[np.ndarray, float]:
    """Read a 2D micrograph; returns ``(image (ny, nx) float32, pixel_size_a)``."""
    data, px = read_mrc(path)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise InputError(
            f"{path}: expected a 2D micrograph, got an array of shape {data.shape} "
            "(a stack or volume)"
        )
    if min(data.shape) < 16:
        raise InputError(f"{path}: image {data.shape} is too small for template matching")
    _check_finite(path, data)
    return data, _resolve_pixel(path, px, pixel_size_a)


def read_map(path: str | Path, pixel_size_a: float | None = None) -> tuple[np.ndarray, float]:
    """Read a cubic 3D map; returns ``(volume (n, n, n) float32, pixel_size_a)``."""
    data, px = read_mrc(path)
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D map, got an array of shape {data.shape}")
    if len(set(data.shape)) != 1:
        raise InputError(f"{path}: template must be cubic, got shape {data.shape}")
    _check_finite(path, data)
    return data, _resolve_pixel(path, px, pixel_size_a)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; move it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_mrc(path: str | Path, data: np.ndarray, pixel_size_a: float, overwrite: bool = True):
    """Write ``data`` as MRC (float32, or int16/uint8/etc. as given) atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: exists; refusing to overwrite")
    arr = np.asarray(data)
    if arr.dtype not in (np.int8, np.int16, np.uint16, np.uint8, np.float16, np.complex64):
        arr = arr.astype(np.float32)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(np.ascontiguousarray(arr))
            m.voxel_size = float(pixel_size_a)
            m.update_header_stats()


def atomic_write_text(path: str | Path, text: str):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


@contextlib.contextmanager
def atomic_dir(final_dir: str | Path, *, overwrite: bool = False, marker: str | None = None,
               what: str = "folder"):
    """Yield an empty temporary folder beside ``final_dir``; on success it replaces it.

    The one way the project writes a folder: a reader never sees a half-written one, and
    an error or a cancel leaves the old folder (if any) as it was and no temporary behind.

    final_dir: the folder to write. overwrite: replace an existing ``final_dir``;
    without it an existing folder is one :class:`InputError`. marker: a file name that
    every folder of this kind holds (``search.json``, ...): an existing folder without it
    was not written by the project and is never replaced, overwrite or not. what: the
    kind of folder, for the messages ("results folder").
    """
    final_dir = Path(final_dir)
    if final_dir.exists():
        if not final_dir.is_dir():
            raise InputError(f"{final_dir}: exists and is not a folder; choose another output")
        if marker is not None and not (final_dir / marker).is_file():
            raise InputError(f"{final_dir}: exists and is not a napari-2dtm {what} (no "
                             f"{marker}); refusing to replace it, choose another output")
        if not overwrite:
            raise InputError(f"{final_dir}: {what} exists; use --overwrite to replace it")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp",
                                dir=final_dir.parent))
    try:
        yield tmp
        replace_dir(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp_dir: Path, final_dir: Path):
    """Move a finished temporary folder into place (replacing an old one if present)."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
