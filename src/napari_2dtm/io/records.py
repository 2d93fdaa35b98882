"""The JSON records the project writes beside its files (``search.json``,
``classification.json``, ``reconstruct.json``, a checkpoint's state): one rule for the
values NumPy hands us, so every record reads back with the plain ``json`` module.

NumPy scalars become Python numbers, arrays become (nested) lists, anything else its
``str`` (a path, an enum).
"""

from __future__ import annotations

import json

import numpy as np


def json_default(o):
    """``default=`` for :func:`json.dumps`: NumPy scalars and arrays, else ``str(o)``."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def to_json(obj, **kwargs) -> str:
    """``json.dumps(obj, default=json_default, **kwargs)``."""
    return json.dumps(obj, default=json_default, **kwargs)


def plain(obj):
    """``obj`` as plain JSON values (a round trip through :func:`to_json`)."""
    return json.loads(to_json(obj))
