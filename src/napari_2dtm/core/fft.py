"""The CPU engine's frame-sized FFTs, on the fastest FFT library present.

The CPU search spends most of its time in two transforms of the search frame
``(Hs, Ws)``, both made one map per thread with all threads busy:

* the inverse real FFT of each spectrum product ``(Hs, Ws//2+1)`` complex64 to a
  correlation map ``(Hs, Ws)`` float32 (:meth:`FrameFFT.inverse`), once per
  cross-correlation;
* the column pass of the padded forward FFT of each projection (:meth:`FrameFFT.columns`,
  in place), once per orientation.

Three libraries can make them:

``pocketfft``
    scipy.fft / numpy.fft: always there, the fallback and the oracle. Its maps are
    bit-identical to what the engine made before this layer existed.
``fftw``
    FFTW through pyFFTW (the ``fast`` extra). Plans are made once per frame shape with
    ``FFTW_MEASURE``, one per thread, and reused; the planner's wisdom is kept in the
    project's disk cache (:func:`cache_dir`, never in the working folder), so a later
    process makes the same plans at once. FFTW's inverse is unnormalised: the factor
    ``1 / (Hs Ws)`` goes into the maps' normalisation (:attr:`FrameFFT.inverse_scale`)
    instead of a pass over the map.
``mkl``
    Intel MKL through ``mkl_fft`` (the ``fast`` extra, x86-64 only), one MKL thread per
    calling thread; unnormalised inverse as FFTW.

:func:`frame_fft` picks one per frame shape and thread count by a short timing of each
installed library in the engine's own pattern (:func:`throughput_seconds`: one map per
thread, all threads, seconds per map at full throughput: the floor an engine can
reach), as FFTW's planner picks among algorithms, and the machine's cache remembers the
choice, so every later process (a resume, dask shards, the same search again) uses the
same library and makes the same maps. ``NAPARI_2DTM_FFT`` (``auto``,
``fftw``, ``mkl``, ``pocketfft``) or the ``library`` argument forces one.

Libraries round differently (maps agree to ~1e-6 relative), and FFTW's measured plans can
differ between processes, so a search records what it used (:meth:`FrameFFT.record`: the
library and, for FFTW, the wisdom its plans came from) and a resumed search remakes the
same plans from that record (:func:`frame_fft_from_record`) or refuses.
"""

from __future__ import annotations

import contextlib
import os
import platform
import queue
import threading
import time
from pathlib import Path

import numpy as np
import scipy.fft as sfft

from napari_2dtm.errors import InputError

__all__ = ["LIBRARIES", "ENV_VAR", "FrameFFT", "installed", "requested", "frame_fft",
           "frame_fft_from_record", "record_of", "throughput_seconds", "make", "cache_dir", "POCKETFFT_RECORD"]

#: the libraries, in the order they are tried
LIBRARIES = ("fftw", "mkl", "pocketfft")
#: environment variable that forces a library (``auto`` or one of :data:`LIBRARIES`)
ENV_VAR = "NAPARI_2DTM_FFT"
#: what a checkpoint made before FFT libraries were recorded used
POCKETFFT_RECORD = {"library": "pocketfft"}

_PLAN_LOCK = threading.Lock()  # FFTW's planner is not thread-safe
_CHOICE_LOCK = threading.Lock()
_CHOSEN: dict[tuple, FrameFFT] = {}


# ------------------------------------------------------------------ what is here
def _import(name: str):
    """The module behind library ``name``, or None when it is not installed or fails."""
    try:
        if name == "fftw":
            import pyfftw  # noqa: PLC0415

            return pyfftw
        if name == "mkl":
            import mkl_fft  # noqa: PLC0415

            return mkl_fft
    except Exception:  # ImportError, or a broken binary
        return None
    return sfft


def installed() -> tuple[str, ...]:
    """The libraries that import here, in :data:`LIBRARIES` order (always ``pocketfft``)."""
    return tuple(n for n in LIBRARIES if _import(n) is not None)


def requested() -> str:
    """``auto`` or the library :data:`ENV_VAR` forces (InputError for an unknown name)."""
    v = (os.environ.get(ENV_VAR) or "auto").strip().lower()
    if v not in ("auto", *LIBRARIES):
        raise InputError(f"{ENV_VAR}={v!r}: must be auto, {', '.join(LIBRARIES)}")
    return v


def cache_dir() -> Path | None:
    """Where FFTW wisdom is kept: ``fftw/`` in the project's disk cache, the one the model
    templates use (``$NAPARI_2DTM_CACHE``, else ``$XDG_CACHE_HOME/napari-2dtm`` or
    ``~/.cache/napari-2dtm``); None when ``$NAPARI_2DTM_CACHE`` is ``0``/``off``/``none``."""
    env = os.environ.get("NAPARI_2DTM_CACHE")
    if env is not None:
        if env.strip().lower() in ("", "0", "off", "none", "false", "no"):
            return None
        return Path(env).expanduser() / "fftw"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "napari-2dtm" / "fftw"


# ------------------------------------------------------------------ the libraries
class FrameFFT:
    """The engine's FFTs of one frame ``(Hs, Ws)`` on one library.

    Each call is single-threaded and may come from any thread; callers run one map per
    thread. floor_s: measured seconds per inverse map at full throughput
    (:func:`throughput_seconds`), floors_s: the same for every library timed when this
    one was chosen.
    """

    name = "pocketfft"
    #: factor that turns :meth:`inverse`'s output into ``scipy.fft.irfft2``'s
    inverse_scale = 1.0

    def __init__(self, frame: tuple[int, int], workers: int):
        self.frame = (int(frame[0]), int(frame[1]))
        self.workers = int(workers)
        self.floor_s: float | None = None
        self.floors_s: dict[str, float] = {}
        self.chosen_by = "argument"

    def empty(self, shape, dtype) -> np.ndarray:
        """An uninitialised array the library transforms without copying."""
        return np.empty(shape, dtype)

    def inverse(self, spec: np.ndarray, out: np.ndarray) -> None:
        """``out`` ``(Hs, Ws)`` float32 = ``irfft2(spec) / inverse_scale`` of a half
        spectrum ``(Hs, Ws//2+1)`` complex64, which is overwritten."""
        # Two passes into preallocated memory: the column pass in place (scipy), the row
        # pass into the caller's map (numpy.fft has out=); both pocketfft, so the maps
        # equal scipy.fft.irfft2's.
        col = sfft.ifft(spec, axis=0, workers=1, overwrite_x=True)
        np.fft.irfft(col, n=self.frame[1], axis=1, out=out)

    def columns(self, spec: np.ndarray) -> None:
        """Forward FFT along axis 0 of ``spec`` ``(Hs, Ws//2+1)`` complex64, in place."""
        col = sfft.fft(spec, axis=0, workers=1, overwrite_x=True)  # in place in practice
        if not np.may_share_memory(col, spec):
            spec[...] = col

    def version(self) -> str:
        return f"scipy {_scipy_version()}"

    def record(self, wisdom: bool = False) -> dict:
        """What a search records: library, version, measured floor (ms per map) and,
        with ``wisdom``, what :func:`frame_fft_from_record` needs to remake the plans."""
        r = {"library": self.name, "version": self.version(), "chosen_by": self.chosen_by,
             "floor_ms_per_map": None if self.floor_s is None else round(self.floor_s * 1e3, 4),
             "floors_ms_per_map": {k: round(v * 1e3, 4) for k, v in self.floors_s.items()},
             "threads": self.workers}
        return r

    def describe(self) -> str:
        """One line: ``fftw (pyFFTW 0.15.1, FFTW 3.3.5), floor 1.82 ms/map``."""
        fl = "" if self.floor_s is None else f", floor {self.floor_s * 1e3:.2f} ms/map"
        return f"FFT {self.name} ({self.version()}){fl}"


def _scipy_version() -> str:
    import scipy  # noqa: PLC0415

    return scipy.__version__


class _PlanPool:
    """Plans (or any per-call state) handed to one calling thread at a time."""

    def __init__(self, items):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        for it in items:
            self._q.put(it)

    @contextlib.contextmanager
    def take(self):
        it = self._q.get()
        try:
            yield it
        finally:
            self._q.put(it)


class _FFTW(FrameFFT):
    name = "fftw"

    def __init__(self, frame, workers, wisdom: str | None = None):
        super().__init__(frame, workers)
        import pyfftw  # noqa: PLC0415

        self._fftw = pyfftw
        hs, ws = self.frame
        self.inverse_scale = 1.0 / (hs * ws)
        self._align = pyfftw.simd_alignment
        flags = ("FFTW_MEASURE", "FFTW_DESTROY_INPUT")
        with _PLAN_LOCK:
            # Plans from this frame's wisdom alone (none: measured afresh), whatever else
            # this process planned before: processes sharing the cache make the same maps.
            pyfftw.forget_wisdom()
            recorded = wisdom is not None
            path = _wisdom_file(pyfftw, self.frame)
            if wisdom is None and path is not None and path.is_file():
                with contextlib.suppress(OSError, ValueError):
                    wisdom = path.read_text()
                    path = None  # nothing new to save
            if wisdom is not None:
                # Exactly the plans of the run that recorded this wisdom, or none.
                pyfftw.import_wisdom((b"", wisdom.encode(), b""))
                flags = (*flags, "FFTW_WISDOM_ONLY")
            spec = pyfftw.empty_aligned((hs, ws // 2 + 1), "complex64")
            out = pyfftw.empty_aligned((hs, ws), "float32")
            try:
                inv, col = self._plans(spec, out, flags)
            except RuntimeError as e:
                if not recorded:  # a stale cache file: measure afresh
                    pyfftw.forget_wisdom()
                    path = _wisdom_file(pyfftw, self.frame)
                    inv, col = self._plans(spec, out, flags[:2])
                    wisdom = None
                else:
                    raise InputError(
                        f"FFTW cannot remake the recorded plans for a {hs} x {ws} frame on "
                        f"this machine ({e}); the maps would not be bit-identical: start the "
                        "search over") from None
            self.wisdom = pyfftw.export_wisdom()[1].decode()
            if wisdom is None:
                _save_disk_wisdom(pyfftw, path)
        del spec, out
        self._inv = _PlanPool([[p, None] for p in inv])
        self._col = _PlanPool([[p, None] for p in col])

    def _plans(self, spec, out, flags):
        # One plan per thread, all from the wisdom of the first: identical plans.
        mk = self._fftw.FFTW
        inv = [mk(spec, out, axes=(0, 1), direction="FFTW_BACKWARD", flags=flags, threads=1)
               for _ in range(self.workers)]
        col = [mk(spec, spec, axes=(0,), direction="FFTW_FORWARD", flags=flags, threads=1)
               for _ in range(self.workers)]
        return inv, col

    def empty(self, shape, dtype):
        return self._fftw.empty_aligned(shape, dtype)

    def _aligned(self, a) -> bool:
        return a.ctypes.data % self._align == 0 and a.flags.c_contiguous

    def inverse(self, spec, out):
        with self._inv.take() as slot:
            p = slot[0]
            if self._aligned(spec) and self._aligned(out):
                p.update_arrays(spec, out)
                p.execute()
                return
            if slot[1] is None:  # own aligned arrays for a caller's unaligned ones
                slot[1] = (self.empty(spec.shape, spec.dtype), self.empty(out.shape, out.dtype))
            s, o = slot[1]
            s[...] = spec
            p.update_arrays(s, o)
            p.execute()
            out[...] = o

    def columns(self, spec):
        with self._col.take() as slot:
            p = slot[0]
            if self._aligned(spec):
                p.update_arrays(spec, spec)
                p.execute()
                return
            if slot[1] is None:
                slot[1] = self.empty(spec.shape, spec.dtype)
            s = slot[1]
            s[...] = spec
            p.update_arrays(s, s)
            p.execute()
            spec[...] = s

    def version(self) -> str:
        return f"pyFFTW {self._fftw.__version__}, FFTW {self._fftw.fftw_version}"

    def record(self, wisdom: bool = False) -> dict:
        r = super().record()
        if wisdom:
            r["wisdom"] = self.wisdom
        return r


def _wisdom_file(pyfftw, frame) -> Path | None:
    d = cache_dir()
    hs, ws = frame
    return None if d is None else d / f"{pyfftw.fftw_version}-{platform.machine()}-{hs}x{ws}.wisdom"


def _save_disk_wisdom(pyfftw, path: Path | None):
    """Write the wisdom of one frame's plans to the cache (atomically; a cache that
    cannot be written is skipped: it only saves planning time)."""
    if path is None:
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(pyfftw.export_wisdom()[1])
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _mkl_thread_setter():
    """``MKL_Set_Num_Threads_Local`` (the C interface: lower case is Fortran's, by
    reference) of the loaded MKL runtime, or None."""
    import ctypes  # noqa: PLC0415

    for name in ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so", "mkl_rt.dll",
                 "mkl_rt.2.dll", "libmkl_rt.dylib"):
        try:
            fn = ctypes.CDLL(name).MKL_Set_Num_Threads_Local
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int]
        return fn
    return None


class _MKL(FrameFFT):
    name = "mkl"

    def __init__(self, frame, workers):
        super().__init__(frame, workers)
        import mkl_fft  # noqa: PLC0415

        self._mkl = mkl_fft
        hs, ws = self.frame
        self.inverse_scale = 1.0 / (hs * ws)
        self._one_thread = _mkl_thread_setter()

    def _single(self):
        # One MKL thread per calling thread: the engine's threads are over maps.
        if self._one_thread is not None:
            self._one_thread(1)

    def inverse(self, spec, out):
        self._single()
        self._mkl.irfft2(spec, s=self.frame, norm="forward", out=out)

    def columns(self, spec):
        self._single()
        self._mkl.fft(spec, axis=0, out=spec)

    def version(self) -> str:
        return f"mkl_fft {self._mkl.__version__}"


# ------------------------------------------------------------------ choosing one
def make(library: str, frame: tuple[int, int], workers: int, wisdom: str | None = None) -> FrameFFT:
    """A :class:`FrameFFT` of ``library`` (InputError when it is not installed)."""
    if library not in LIBRARIES:
        raise InputError(f"FFT library must be one of {', '.join(LIBRARIES)}, got {library!r}")
    if _import(library) is None:
        pkg = {"fftw": "pyFFTW", "mkl": "mkl_fft"}[library]
        raise InputError(f"FFT library {library} ({pkg}) is not installed: pip install "
                         "'napari-2dtm[fast]'")
    if library == "fftw":
        return _FFTW(frame, workers, wisdom)
    if library == "mkl":
        return _MKL(frame, workers)
    return FrameFFT(frame, workers)


def throughput_seconds(fft: FrameFFT, threads: int | None = None, budget_s: float = 0.1) -> float:
    """Seconds per inverse map at full throughput, as the engine runs them: ``threads``
    (default ``fft.workers``) threads each transforming its own map, over and over, for
    about ``budget_s`` seconds; the wall time divided by the maps made."""
    n_thr = threads or fft.workers
    hs, ws = fft.frame
    specs = [fft.empty((hs, ws // 2 + 1), np.complex64) for _ in range(n_thr)]
    outs = [fft.empty((hs, ws), np.float32) for _ in range(n_thr)]
    for s in specs:
        s[...] = 0  # FFT time does not depend on the values; zeros stay finite when destroyed

    def timed(reps: int) -> float:
        go = threading.Barrier(n_thr + 1)

        def work(i):
            go.wait()
            for _ in range(reps):
                fft.inverse(specs[i], outs[i])

        ths = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n_thr)]
        for t in ths:
            t.start()
        go.wait()
        t0 = time.perf_counter()
        for t in ths:
            t.join()
        return (time.perf_counter() - t0) / (reps * n_thr)

    first = timed(1)  # warm-up: first-touch of the maps, MKL's descriptors
    reps = int(np.clip(budget_s / max(first * n_thr, 1e-6), 2, 50))
    return min(timed(reps), timed(reps))


def frame_fft(frame: tuple[int, int], workers: int, library: str | None = None) -> FrameFFT:
    """The FFTs for ``frame`` with ``workers`` threads: ``library`` (default
    :func:`requested`), or with ``auto`` the installed library of the shortest
    :func:`throughput_seconds`, timed once per machine and frame and remembered
    in the disk cache (:func:`_remembered_or_timed`). Planned once per process."""
    lib = library or requested()
    key = (tuple(int(v) for v in frame), int(workers), lib)
    with _CHOICE_LOCK:
        got = _CHOSEN.get(key)
        if got is not None:
            return got
        if lib != "auto":
            got = make(lib, frame, workers)
            got.floor_s = throughput_seconds(got, budget_s=0.05)
            got.floors_s = {lib: got.floor_s}
            got.chosen_by = "argument" if library else ENV_VAR
        else:
            got = _remembered_or_timed(key[0], int(workers))
        _CHOSEN[key] = got
        return got


def _timed_choice(frame, workers) -> tuple[str, dict[str, float]]:
    """The installed library of the shortest :func:`throughput_seconds`, and every floor."""
    made = {n: make(n, frame, workers) for n in installed()}
    # Interleaved short timings, the best of each: another process's burst of work
    # slows one of them, not the same library every time.
    floors = {n: np.inf for n in made}
    for _ in range(3 if len(made) > 1 else 1):
        for n, f in made.items():
            floors[n] = min(floors[n], throughput_seconds(f, budget_s=0.05))
    return min(floors, key=floors.get), floors


def _choice_file(frame) -> Path | None:
    # Per frame, not per thread count: a resume or a dask worker with other threads
    # must land on the same library (the timing of the first process decides).
    d = cache_dir()
    hs, ws = frame
    return None if d is None else d / f"choice-{platform.machine()}-{hs}x{ws}.json"


def _remembered_or_timed(frame, workers) -> FrameFFT:
    """``auto``: the library this machine's cache remembers for the frame, else the timed choice, remembered. Timings of near-equal libraries flip from
    process to process, and libraries round differently, so without the memory the
    processes of one search (dask shards, a resume, the same search run twice) could
    give maps that differ in the last bit and argmaxes of near-ties (defocus, angles)
    that differ outright. Delete the cache folder to time again."""
    import json  # noqa: PLC0415

    import filelock  # noqa: PLC0415

    path = _choice_file(frame)
    lock = contextlib.nullcontext()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(str(path) + ".lock", timeout=120)
        except OSError:  # a cache that cannot be written: time in every process
            path = None
    with lock:  # processes starting together time once, not each its own way
        memo = None
        if path is not None and path.is_file():
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                m = json.loads(path.read_text())
                if m["library"] in installed():
                    memo = m["library"], {k: float(v) / 1e3 for k, v in m["floors_ms"].items()}
        chosen_by = "remembered"
        if memo is None:
            memo, chosen_by = _timed_choice(frame, workers), "timing"
            if path is not None:
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                with contextlib.suppress(OSError):
                    tmp.write_text(json.dumps({"library": memo[0], "floors_ms": {
                        k: v * 1e3 for k, v in memo[1].items()}}))
                    os.replace(tmp, path)
        name, floors = memo
        got = make(name, frame, workers)
    got.floor_s, got.floors_s, got.chosen_by = floors[name], floors, chosen_by
    return got


def record_of(fft: FrameFFT | None, restored: dict | None, wisdom: bool = False) -> dict | None:
    """The record of the FFTs a search used (``fft``, None if it made none: then the
    ``restored`` partial's record), with FFTW's wisdom only when ``wisdom``."""
    rec = fft.record(wisdom=wisdom) if fft is not None else restored
    return rec if rec is None or wisdom else {k: v for k, v in rec.items() if k != "wisdom"}


def frame_fft_from_record(frame: tuple[int, int], workers: int, record: dict | None) -> FrameFFT:
    """The FFTs a recorded search used (its :meth:`FrameFFT.record` with wisdom; None: a
    record from before libraries were recorded, i.e. pocketfft), for a bit-identical
    resume. InputError when that library is not installed or cannot remake the plans."""
    rec = record or POCKETFFT_RECORD
    lib = rec.get("library")
    if lib not in LIBRARIES:
        raise InputError(f"the checkpoint names an unknown FFT library {lib!r}")
    if _import(lib) is None:
        raise InputError(f"the checkpoint was made with the FFT library {lib}, which is not "
                         "installed here; install it (pip install 'napari-2dtm[fast]') to "
                         "resume bit-identically, or start the search over")
    if lib != "fftw" or not rec.get("wisdom"):
        got = frame_fft(frame, workers, lib)
    else:
        key = (tuple(int(v) for v in frame), int(workers), lib, rec["wisdom"])
        with _CHOICE_LOCK:
            got = _CHOSEN.get(key)
            if got is None:
                got = _CHOSEN[key] = make(lib, frame, workers, wisdom=rec["wisdom"])
                got.floor_s = throughput_seconds(got)
                got.floors_s = {lib: got.floor_s}
                got.chosen_by = "checkpoint"
    return got
