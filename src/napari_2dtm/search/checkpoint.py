"""Partial search statistics: checkpoints, orientation shards and their merge.

A :class:`SearchPartial` holds what a search has accumulated so far, on the search
pixel grid ``(ny, nx)``: the MIP (float32), the global index of the best
cross-correlation (int32, ``orientation + n_orient * (defocus + n_defocus * pixel_plane)``)
and the float64 sums of the scores and of their squares, plus which orientation ranges
of which pixel-size planes are done. The same object is

* a **checkpoint** of a running search (saved periodically and atomically; a search
  built with the same checkpoint path continues from it), and
* the result of one **shard** of a search split by orientation ranges
  (``SearchConfig(orientation_range=(start, stop))``); :func:`merge_partials` combines
  shards by max (ties go to the index a single run would have met first) and sums, and
  :meth:`napari_2dtm.search.engine.Search.result_from_partial` turns a complete partial into
  the same :class:`~napari_2dtm.search.engine.SearchResult` as one uninterrupted run.

File format: one uncompressed ``.npz`` with arrays ``mip, best, s1, s2``,
``template_volume`` (the template searched, at its own pixel size), ``orientations``
(only for explicit orientation lists) and ``state_json`` (a JSON string: identity,
config, done ranges, timing, provenance).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from napari_2dtm.errors import InputError
from napari_2dtm.io.mrc import atomic_path
from napari_2dtm.io.records import json_default

__all__ = ["SearchPartial", "save_partial", "load_partial", "merge_partials", "shard_ranges",
           "array_digest", "checkpoint_path_for"]

FORMAT = "napari-2dtm-partial"
VERSION = 1


def array_digest(a) -> str:
    """Content hash (BLAKE2b, 16 bytes, hex) of an array's dtype, shape and values."""
    a = np.ascontiguousarray(a)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def checkpoint_path_for(results_dir) -> Path:
    """The checkpoint file of a search whose results go to ``results_dir``:
    ``<results_dir>.checkpoint.npz`` beside it (the results folder itself is written
    atomically at the end, so it cannot hold work in progress)."""
    p = Path(results_dir)
    return p.with_name(p.name + ".checkpoint.npz")


def shard_ranges(n_orientations: int, n_shards: int) -> list[tuple[int, int]]:
    """Split ``range(n_orientations)`` into ``n_shards`` contiguous ``(start, stop)`` ranges
    of near-equal size (no empty shard)."""
    n_shards = max(1, min(int(n_shards), int(n_orientations)))
    edges = np.linspace(0, n_orientations, n_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _merge_intervals(iv):
    out = []
    for a, b in sorted((int(a), int(b)) for a, b in iv):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


@dataclasses.dataclass
class SearchPartial:
    """Accumulated statistics of (part of) a search on the search grid ``(ny, nx)``.

    mip: float32 max score; best: int32 global index of the max; s1, s2: float64 sums
    of scores and squared scores; done: ``[[pixel_plane, o_start, o_stop], ...]``
    orientation ranges accumulated (merged, sorted); n_cc: scores summed per pixel;
    identity: what must match to combine or resume (input and template hashes, pixel
    sizes, the search-space config); info: config dict, shapes, provenance, timing.
    """

    mip: np.ndarray
    best: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    done: list
    n_cc: int
    identity: dict
    info: dict
    template_volume: np.ndarray | None = None
    orientations: np.ndarray | None = None

    @property
    def n_orientations_total(self) -> int:
        return int(self.info["n_orientations_total"])

    @property
    def n_defocus(self) -> int:
        return int(self.info["n_defocus"])

    @property
    def n_pixel_planes(self) -> int:
        return int(self.info["n_pixel_planes"])

    def done_by_plane(self) -> dict[int, list]:
        d: dict[int, list] = {}
        for ip, a, b in self.done:
            d.setdefault(int(ip), []).append((a, b))
        return {ip: _merge_intervals(v) for ip, v in d.items()}

    def covers(self, start: int, stop: int) -> bool:
        """True if orientations ``start..stop-1`` are done in every pixel plane."""
        by = self.done_by_plane()
        for ip in range(self.n_pixel_planes):
            if not any(a <= start and stop <= b for a, b in by.get(ip, [])):
                return False
        return True

    @property
    def fraction_done(self) -> float:
        rng = self.info.get("orientation_range") or [0, self.n_orientations_total]
        total = (rng[1] - rng[0]) * self.n_defocus * self.n_pixel_planes
        return self.n_cc / total if total else 0.0


def save_partial(p: SearchPartial, path) -> Path:
    """Write ``p`` to ``path`` (``.npz``) atomically: a crash mid-write keeps the old file."""
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, "done": [[int(v) for v in r] for r in p.done],
             "n_cc": int(p.n_cc), "identity": p.identity, "info": p.info}
    arrays = {"mip": p.mip, "best": p.best, "s1": p.s1, "s2": p.s2,
              "state_json": np.frombuffer(json.dumps(state, default=json_default).encode(), np.uint8)}
    if p.template_volume is not None:
        arrays["template_volume"] = p.template_volume
    if p.orientations is not None:
        arrays["orientations"] = p.orientations
    with atomic_path(path) as tmp:
        # A file object: np.savez would append ".npz" to the temporary name.
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
    return path


def read_state(path) -> dict:
    """Only the JSON state of a partial file (cheap: the arrays are not read)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            state = json.loads(bytes(z["state_json"]).decode())
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint file not found") from None
    except Exception as e:  # zipfile/json/KeyError on junk
        raise InputError(f"{path}: not a napari-2dtm checkpoint ({type(e).__name__}: {e})") from None
    if state.get("format") != FORMAT:
        raise InputError(f"{path}: not a napari-2dtm checkpoint (format {state.get('format')!r})")
    if state.get("version", 0) > VERSION:
        raise InputError(f"{path}: checkpoint version {state['version']} is newer than this "
                         f"napari-2dtm understands ({VERSION})")
    return state


def load_partial(path) -> SearchPartial:
    """Read a partial/checkpoint file written by :func:`save_partial`."""
    path = Path(path)
    state = read_state(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arr = {k: z[k] for k in z.files if k != "state_json"}
    except Exception as e:
        raise InputError(f"{path}: damaged checkpoint ({type(e).__name__}: {e})") from None
    return SearchPartial(mip=arr["mip"], best=arr["best"], s1=arr["s1"], s2=arr["s2"],
                         done=state["done"], n_cc=state["n_cc"], identity=state["identity"],
                         info=state["info"], template_volume=arr.get("template_volume"),
                         orientations=arr.get("orientations"))


def identity_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    """First differing key between two identity dicts, as ``key: a != b``; None if equal."""
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = identity_difference(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb and not (isinstance(va, float) and isinstance(vb, float)
                               and np.isclose(va, vb, rtol=1e-12, atol=0)):
            return f"{prefix}{k}: {va!r} != {vb!r}"
    return None


def merge_partials(partials) -> SearchPartial:
    """Combine partial statistics of disjoint orientation ranges of one search.

    MIP by max, best index from the same winner (on exact ties the index a single
    sequential run meets first: pixel plane, then orientation, then defocus), sums by
    addition. Raises :class:`InputError` if the partials belong to different searches
    or overlap.
    """
    parts = list(partials)
    if not parts:
        raise InputError("merge_partials: no partial results given")
    ref = parts[0]
    for q in parts[1:]:
        d = identity_difference(ref.identity, q.identity)
        if d:
            raise InputError(f"cannot merge partial results of different searches ({d})")
        if q.mip.shape != ref.mip.shape:
            raise InputError(f"cannot merge partial results of different image shapes "
                             f"{ref.mip.shape} and {q.mip.shape}")
    seen: dict[int, list] = {}
    for q in parts:
        for ip, a, b in q.done:
            for a2, b2 in seen.get(int(ip), []):
                if a < b2 and a2 < b:
                    raise InputError(f"cannot merge overlapping partial results (orientations "
                                     f"{a}-{b} and {a2}-{b2} of pixel plane {ip})")
            seen.setdefault(int(ip), []).append((a, b))
    n_or, n_df = ref.n_orientations_total, ref.n_defocus
    mip = ref.mip.copy()
    best = ref.best.copy()
    s1 = ref.s1.copy()
    s2 = ref.s2.copy()
    for q in parts[1:]:
        take = q.mip > mip
        tie = q.mip == mip
        if tie.any():
            take |= tie & (_order_key(q.best, n_or, n_df) < _order_key(best, n_or, n_df))
        np.copyto(mip, q.mip, where=take)
        np.copyto(best, q.best, where=take)
        s1 += q.s1
        s2 += q.s2
    done = [[ip, a, b] for ip, iv in sorted(seen.items()) for a, b in _merge_intervals(iv)]
    info = dict(ref.info)
    info["elapsed_s"] = float(sum(q.info.get("elapsed_s", 0.0) for q in parts))
    info["merged_from"] = len(parts)
    info["orientation_range"] = None
    return SearchPartial(mip, best, s1, s2, done, int(sum(q.n_cc for q in parts)), ref.identity,
                         info, ref.template_volume, ref.orientations)


def _order_key(g, n_or, n_df):
    """Position of global index ``g`` in the sequential search order (plane, orient, defocus)."""
    g = g.astype(np.int64)
    o = g % n_or
    rest = g // n_or
    return ((rest // n_df) * n_or + o) * n_df + rest % n_df


