"""mkdocs hooks: the command-line reference, generated from the CLI itself.

In ``docs/cli.md`` the line ``<!-- cli-reference -->`` is replaced, at every build, by
the ``--help`` text of ``napari-2dtm`` and of each of its sub-commands, exactly as
argparse formats it (:func:`cli_reference`), so the page cannot drift from the code.
``python scripts/mkdocs_hooks.py`` prints the generated Markdown.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-reference -->"
HELP_WIDTH = "92"  # argparse wraps help to $COLUMNS


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_reference() -> str:
    """Markdown: the top-level help, then one section per sub-command."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH
    try:
        from napari_2dtm.cli.main import build_parser

        parser = build_parser()
        parts = ["## `napari-2dtm`", "", "```text", parser.format_help().rstrip(), "```", ""]
        for name, sub in _subparsers(parser).items():
            parts += [f"## `napari-2dtm {name}`", "", "```text", sub.format_help().rstrip(),
                      "```", ""]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, **kwargs) -> str:  # noqa: ARG001 (mkdocs hook)
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return markdown


if __name__ == "__main__":
    print(cli_reference())
