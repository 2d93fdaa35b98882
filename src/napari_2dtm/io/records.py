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


def strict(obj):
    """``obj`` with every non-finite float (``inf``, ``nan``) replaced by None, so the
    record is strict JSON that any parser reads (Python's ``json`` writes ``Infinity``,
    which JavaScript, ``jq`` and most others refuse). The reader treats None as "not
    measured": e.g. a resolution where the FSC never crosses its threshold."""
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict(v) for v in obj]
    return obj


def plain(obj):
    """``obj`` as plain JSON values (a round trip through :func:`to_json`)."""
    return json.loads(to_json(obj))
