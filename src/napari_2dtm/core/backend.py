"""Array backend: NumPy/SciPy on the CPU, CuPy on a GPU, one code path.

CuPy is imported lazily, only when a GPU is asked for or probed.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from napari_2dtm.errors import GPUUnavailableError

__all__ = ["gpu_info", "gpu_description", "get_backend", "to_numpy", "cpu_workers"]


def cpu_workers() -> int:
    """Threads for CPU FFTs and kernels (all cores unless NAPARI_2DTM_WORKERS is set)."""
    env = os.environ.get("NAPARI_2DTM_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def gpu_info() -> dict:
    """Describe the GPU CuPy would use: ``{available, name, memory_gb, reason}``."""
    try:
        import cupy as cp  # noqa: PLC0415
    except Exception as e:  # ImportError, or CUDA libraries missing
        return {"available": False, "name": None, "memory_gb": None,
                "reason": f"CuPy is not installed or failed to load ({type(e).__name__}: {e}); "
                          "install the 'gpu' extra (pip install napari-2dtm[gpu])"}
    try:
        n = cp.cuda.runtime.getDeviceCount()
        if n < 1:
            raise RuntimeError("no CUDA device found")
        dev = cp.cuda.Device()  # the current one (CUDA_VISIBLE_DEVICES picks it)
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        free, total = dev.mem_info
        return {"available": True, "name": name, "memory_gb": total / 2**30,
                "free_gb": free / 2**30, "device": int(dev.id),
                "compute_capability": str(dev.compute_capability), "reason": None}
    except Exception as e:
        return {"available": False, "name": None, "memory_gb": None,
                "reason": f"CuPy is installed but no usable CUDA device ({e})"}


def gpu_description() -> str:
    """The GPU CuPy uses, in words (its reason when there is none)."""
    info = gpu_info()
    if not info["available"]:
        return f"no usable GPU ({info['reason']})"
    dev = int(info.get("device", 0))
    return f"GPU {dev}: {info['name']} ({info['memory_gb']:.0f} GiB)"


class Backend:
    """Array module plus FFTs; ``xp`` is numpy or cupy."""

    def __init__(self, name: str):
        self.name = name
        if name == "gpu":
            import cupy as cp  # noqa: PLC0415
            import cupyx.scipy.fft as cfft  # noqa: PLC0415

            self.xp = cp
            self.fft = cfft
            self.fft_kw = {}
        else:
            import scipy.fft as sfft  # noqa: PLC0415

            self.xp = np
            self.fft = sfft
            self.fft_kw = {"workers": cpu_workers()}

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"

    @property
    def description(self) -> str:
        """The device in words, for reports: ``"GPU 0: NVIDIA H200 (139 GiB)"`` or
        ``"CPU (16 threads)"``."""
        if self.is_gpu:
            return gpu_description()
        return f"CPU ({self.fft_kw.get('workers', 1)} threads)"

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return to_numpy(a)


def to_numpy(a) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    return get() if get is not None else np.asarray(a)


def get_backend(device: str = "auto") -> Backend:
    """``"cpu"``, ``"gpu"`` (error if unusable) or ``"auto"`` (GPU when usable)."""
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    if device == "cpu":
        return Backend("cpu")
    info = gpu_info()
    if info["available"]:
        return Backend("gpu")
    if device == "gpu":
        raise GPUUnavailableError(f"GPU requested but none is usable: {info['reason']}")
    return Backend("cpu")
