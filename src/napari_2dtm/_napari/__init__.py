"""napari glue for napari-2dtm: reader, writer, sample data and the Search widget.

Everything napari- or Qt-specific lives in this sub-package; the search engine and
the CLI never import it. Modules are imported lazily by napari through the commands
declared in ``napari.yaml``.
"""
