"""``napari-2dtm`` command line: one sub-command per module, all on the public API."""

from __future__ import annotations

import argparse
import importlib
import sys

from napari_2dtm.errors import GPUUnavailableError, InputError, one_line

# Each module defines ``register(subparsers)`` adding one sub-command whose
# ``func(args) -> int`` is set with ``parser.set_defaults(func=...)``.
_SUBCOMMAND_MODULES = [
    "napari_2dtm.cli.search",
    "napari_2dtm.cli.batch",
    "napari_2dtm.cli.template",
    "napari_2dtm.cli.simulate",
    "napari_2dtm.cli.demo",
    "napari_2dtm.cli.reconstruct",
    "napari_2dtm.cli.refine_model",
    "napari_2dtm.cli.classify",
    "napari_2dtm.cli.export",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="napari-2dtm",
        description="2D template matching (2DTM) for cryo-EM micrographs.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue  # sub-command not built yet
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    command = None
    try:
        # Ctrl-C can come while the sub-commands' modules are still being imported (the
        # first seconds): one line and 130 then too, not a traceback from an import.
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except (InputError, GPUUnavailableError) as e:
        print(f"napari-2dtm {command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-2dtm{f' {command}' if command else ''}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
