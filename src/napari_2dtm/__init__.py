"""napari-2dtm: high-resolution 2D template matching for cryo-EM."""

__version__ = "0.1.0"
