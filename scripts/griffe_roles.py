"""Griffe extension for the API docs: Sphinx roles in docstrings become code spans.

The package's docstrings are free text (``docstring_style: null`` in mkdocs.yml) that
use RST ``:func:`~napari_2dtm.x.f``` roles and ````code```` spans; Markdown shows the
roles literally, so ``:role:`~a.b.c``` becomes `` `c` `` (the last name, as the ``~``
asks) and ``:role:`a.b.c``` becomes `` `a.b.c` ``.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class RolesToCode(griffe.Extension):
    """Rewrite Sphinx roles in every docstring griffe loads."""

    def on_instance(self, *, obj, **kwargs) -> None:  # noqa: ARG002 (griffe's signature)
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)
