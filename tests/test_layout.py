"""The package's layout rules (architecture.md): file sizes, and the import contracts.

- No source file over 600 lines and no widget file (``_napari/_*_widget.py``) over 400,
  unless a comment line near its top starts with ``# size:`` and gives the reason.
- The import-linter contracts of pyproject.toml hold (layers, Qt only in ``_napari``);
  CI also runs ``lint-imports`` itself.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "napari_2dtm"


def _limit(path: Path) -> int:
    return 400 if path.parent.name == "_napari" and path.stem.endswith("_widget") else 600


def _has_reason(path: Path) -> bool:
    head = path.read_text().splitlines()[:30]
    return any(line.startswith("# size:") and len(line) > len("# size:") + 10 for line in head)


def test_no_oversized_module():
    too_big = []
    for path in sorted(PKG.rglob("*.py")):
        n = len(path.read_text().splitlines())
        if n > _limit(path) and not _has_reason(path):
            too_big.append(f"{path.relative_to(PKG)}: {n} lines (limit {_limit(path)})")
    assert not too_big, "\n".join(too_big)


def test_import_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports (import-linter) is not installed: run scripts/setup.sh")
    done = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
