"""Search jobs shared by the Search widget and the headless demo (no Qt, no napari).

:func:`search_job` is the body the widget runs in its worker thread and the demo
runs in the main thread: build the :class:`~napari_2dtm.Search`, stream its
progress, save the results folder with :func:`~napari_2dtm.write_results`.
"""

from __future__ import annotations

import re
from pathlib import Path


class SearchError(Exception):
    """A search failed (message: one line)."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def save_results(result, out_dir, image, pixel_size_a, micrograph_path=None,
                 micrograph_name="micrograph", overwrite=False):
    """Write the results folder; an in-memory micrograph is saved along with it.

    With no ``micrograph_path`` the image is written to
    ``out_dir/input/<micrograph_name>.mrc`` (recorded in ``search.json``; outside the
    folder's top level, which holds only maps), so the folder opens complete in napari.
    """
    from napari_2dtm import write_results
    from napari_2dtm.io.mrc import write_mrc

    out_dir = Path(out_dir)
    if micrograph_path:
        mic_path = Path(micrograph_path)
    else:
        safe = re.sub(r"[^\w.-]+", "_", str(micrograph_name)).strip("._") or "micrograph"
        mic_path = out_dir.resolve() / "input" / f"{safe}.mrc"
    write_results(result, out_dir, overwrite=overwrite, micrograph_path=mic_path)
    if not micrograph_path:
        write_mrc(mic_path, image, pixel_size_a)
    return out_dir


def search_job(image, pixel_size_a, template, config, out_dir, micrograph_path=None,
               micrograph_name="micrograph", overwrite=False):
    """Generator: yields ``("search", Search)`` once, then ``("progress", SearchProgress)``.

    Returns ``(SearchResult, results_folder)``, or ``None`` if the search was
    cancelled. Other failures raise :class:`SearchError` with a one-line message
    (superqt drops a RuntimeError raised by a generator worker without emitting
    ``errored`` or ``finished``, so none leaves this function).
    """
    from napari_2dtm import Search
    from napari_2dtm.errors import SearchCancelled

    try:
        search = Search(image, pixel_size_a, template, config)
        yield ("search", search)
        for progress in search.run():
            yield ("progress", progress)
    except SearchCancelled:
        return None
    except RuntimeError as e:
        raise SearchError(one_line(e)) from e
    folder = save_results(search.result, out_dir, image, pixel_size_a, micrograph_path,
                          micrograph_name, overwrite)
    return search.result, folder


def estimate_job(image, pixel_size_a, template, config):
    """``(n_orientations, n_planes, n_cc_total, estimated_seconds)`` of a search."""
    from napari_2dtm import Search

    search = Search(image, pixel_size_a, template, config)
    return search.n_orientations, search.n_planes, search.n_cc_total, search.estimate_seconds()
