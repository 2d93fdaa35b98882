"""MRC reading with user-facing validation, and the one safe way to write outputs.

Every reader raises :class:`~napari_2dtm.errors.InputError` whose message names the
file and the problem; nothing leaks a traceback from deep inside NumPy or mrcfile.

Writing follows four rules, so that no run loses a user's files:

* **atomic**: a file (:func:`atomic_path`) or a folder (:func:`atomic_dir`) is written
  under a temporary name beside it and moved into place only when complete;
* **only what the project wrote is replaced**: :func:`output_problem` refuses a folder
  without the marker file of its kind (``search.json``, ...), a file where a folder is
  due, and a folder that holds one of the run's inputs (``-o`` naming the project
  folder, or a results folder that holds the micrograph being searched);
* **one writer per output**: :func:`output_lock` holds an exclusive lock
  (:mod:`filelock`, ``.<name>.lock`` beside the output while it is held) from before the
  work starts until the output is in place; a second run on the same output is refused
  in one line;
* **the umask decides the mode**: ``mkstemp``/``mkdtemp`` create 0600/0700, which would
  hide results from the rest of a lab on a shared cluster; the temporaries get the
  mode an ordinary ``open``/``mkdir`` would have given (0666/0777 less the umask).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import filelock
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
    "atomic_dir",
    "output_problem",
    "check_output",
    "output_lock",
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
                if np.iscomplexobj(m.data):  # float32 would drop the imaginary part silently
                    raise InputError(f"{path}: complex-valued MRC (mode {m.header.mode}); "
                                     "expected a real image or map")
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
            raise InputError(f"{path}: pixel size must be > 0 Angstrom, got {given} (--pixel-size)")
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
    if float(data.min()) == float(data.max()):
        raise InputError(f"{path}: every pixel is {float(data.min()):g}; nothing to search")
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


def current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    ``os.umask`` can only be read by setting it; between the two calls another thread
    would create files with the wrong mode. Linux shows it in ``/proc/self/status``.
    """
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; move it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide it from the lab
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


def _inside(path: Path, folder: Path) -> bool:
    """True if ``path`` is ``folder`` or lies under it (links resolved)."""
    try:
        p, f = Path(path).resolve(), Path(folder).resolve()
    except (OSError, RuntimeError):
        return False
    return p == f or f in p.parents


def output_problem(final_dir: str | Path, *, overwrite: bool = False, marker: str | None = None,
                   what: str = "folder", inputs=()) -> str | None:
    """Why the folder ``final_dir`` may not be written (None: it may); see :func:`atomic_dir`.

    inputs: the run's input files and folders; a ``final_dir`` that is one of them or
    holds one is never replaced (the replaced folder would take the input with it).
    """
    final_dir = Path(final_dir)
    # "-o .", "-o ..", or any path to the folder the run is started in or one above it:
    # replacing it would pull the ground from under the run (and it has no name to put
    # a checkpoint or a lock beside)
    if final_dir.name in ("", ".", "..") or _inside(Path.cwd(), final_dir):
        return (f"{final_dir}: is the current folder or one above it; an output must be a "
                "new folder or a napari-2dtm folder, give it by its name")
    for src in inputs or ():
        if src is not None and str(src) and _inside(Path(src), final_dir):
            return (f"{final_dir}: holds the input {src}; refusing to replace it, choose "
                    "another output")
    if not final_dir.exists():
        return None
    if not final_dir.is_dir():
        return f"{final_dir}: exists and is not a folder; choose another output"
    if marker is not None and not (final_dir / marker).is_file():
        return (f"{final_dir}: exists and is not a napari-2dtm {what} (no {marker}); "
                "refusing to replace it, choose another output")
    if not overwrite:
        return f"{final_dir}: {what} exists; use --overwrite to replace it"
    return None


def check_output(final_dir: str | Path, **rules) -> None:
    """Raise :class:`InputError` when :func:`output_problem` finds one."""
    problem = output_problem(final_dir, **rules)
    if problem:
        raise InputError(problem)


#: locks this process holds: lock path -> [thread id, depth] (a job inside a door that
#: already holds the lock of the same output takes it again without blocking itself)
_HELD: dict[str, list] = {}
_HELD_GUARD = threading.Lock()


def lock_path_for(output: str | Path) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it (hidden: it is bookkeeping)."""
    out = Path(os.path.abspath(output))
    return out.parent / f".{out.name or 'root'}.lock"


@contextlib.contextmanager
def output_lock(output: str | Path):
    """Hold the exclusive lock of ``output`` (a folder or file to be written) while the block runs.

    Taken before any work and held until the output is in place, so two runs on one
    ``--out`` cannot both compute and then replace each other's folder (or share one
    checkpoint). A second run, in this process or another, gets one :class:`InputError`
    naming the output. Reentrant in one thread (a door and the job it calls may both
    take it). An OS lock (``flock``): it is released when the process dies, so no stale
    lock outlives a killed run (its empty file may stay; it is removed on release).
    """
    lock_file = lock_path_for(output)
    key = str(lock_file)
    me = threading.get_ident()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None and held[0] == me:
            held[1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD[key][1] -= 1
        return
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(lock_file, timeout=0)
        lock.acquire()
    except filelock.Timeout:
        raise InputError(f"{output}: another napari-2dtm run is writing this output now "
                         f"(lock {lock_file.name}); wait for it or choose another output") from None
    except OSError as e:  # read-only or missing parent folder
        raise InputError(f"{output}: cannot write here ({e.strerror or e})") from None
    with _HELD_GUARD:
        _HELD[key] = [me, 1]
    try:
        yield
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        # Removed while still held, so no lock file is left beside the output; a run that
        # opened the old file meanwhile finds it gone (filelock checks) and takes a new one.
        with contextlib.suppress(OSError):
            lock_file.unlink()
        lock.release()


@contextlib.contextmanager
def atomic_dir(final_dir: str | Path, *, overwrite: bool = False, marker: str | None = None,
               what: str = "folder", inputs=()):
    """Yield an empty temporary folder beside ``final_dir``; on success it replaces it.

    The one way the project writes a folder: a reader never sees a half-written one, and
    an error or a cancel leaves the old folder (if any) as it was and no temporary behind.

    final_dir: the folder to write. overwrite: replace an existing ``final_dir``;
    without it an existing folder is one :class:`InputError`. marker: a file name that
    every folder of this kind holds (``search.json``, ...): an existing folder without it
    was not written by the project and is never replaced, overwrite or not. what: the
    kind of folder, for the messages ("results folder"). inputs: the run's input paths;
    a folder holding one is never replaced (:func:`output_problem`).
    """
    final_dir = Path(final_dir)
    check_output(final_dir, overwrite=overwrite, marker=marker, what=what, inputs=inputs)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp",
                                dir=final_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide it from the lab
        yield tmp
        # Checked again at the move: the folder may have changed during a long job.
        check_output(final_dir, overwrite=overwrite, marker=marker, what=what, inputs=inputs)
        replace_dir(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp_dir: Path, final_dir: Path):
    """Move a finished temporary folder into place (replacing an old one if present)."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        # A fresh name for the old folder: a fixed one could name something of the user's.
        old = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".old",
                                    dir=final_dir.parent))
        os.replace(final_dir, old)  # rename onto the empty folder mkdtemp made
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
