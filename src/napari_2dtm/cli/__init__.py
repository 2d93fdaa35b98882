"""The ``napari-2dtm`` command line: one file per sub-command, each a thin door to a job."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
