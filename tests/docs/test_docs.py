"""The documentation stays true: its snippets run, its pictures exist and are made by
the scripts, its CLI reference covers every sub-command.

Snippets: every ```python and ```bash block of ``docs/tutorials/*.md`` and
``docs/quickstart.md`` runs, in page order, in a fresh folder (python blocks of one page
share one namespace, like a session following the page). A block right after a line
``<!-- skip-test -->`` is not run (napari windows, the long demo); the tutorials use
small simulated micrographs and coarse grids, so each page runs in seconds.
``mkdocs build --strict`` itself runs in CI (``.ci/run``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCRIPTS = [ROOT / "scripts" / "make_figures.py", ROOT / "scripts" / "make_screenshots.py",
           ROOT / "benchmarks" / "bench_detection.py"]  # its figure is measured, not drawn
SKIP = "<!-- skip-test -->"
_FENCE = re.compile(r"^(\s*)```(\w+)?\s*$")


def code_blocks(path: Path) -> list[tuple[str, str, int, bool]]:
    """``(language, code, line number, skipped)`` of each fenced block of a page."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or m.group(2) is None:
            i += 1
            continue
        start, lang, indent = i, m.group(2), len(m.group(1))
        skipped = any(lines[j].strip() == SKIP for j in range(max(0, i - 2), i))
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        blocks.append((lang, textwrap.dedent("\n".join(body)) + "\n", start + 1, skipped))
        i += 1
    return blocks


def _pages():
    return sorted((DOCS / "tutorials").glob("*.md")) + [DOCS / "quickstart.md"]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.stem)
def test_snippets_run(page, tmp_path, monkeypatch):
    blocks = [b for b in code_blocks(page) if b[0] in ("python", "bash")]
    runnable = [b for b in blocks if not b[3]]
    if page.parent.name == "tutorials":
        assert runnable, f"{page.name}: a tutorial without a runnable snippet"
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MPLBACKEND="Agg")
    namespace = {"__name__": "__tutorial__"}
    # shell variables carry over between a page's bash blocks, as in one terminal
    shell_state = tmp_path.parent / f"{tmp_path.name}.bash_state"
    for lang, code, line, _ in runnable:
        where = f"{page.relative_to(ROOT)}:{line}"
        if lang == "python":
            exec(compile(code, where, "exec"), namespace)  # noqa: S102 (the docs' own code)
        else:
            script = (f"set -a\n[ -f '{shell_state}' ] && source '{shell_state}'\n{code}\n"
                      f"export -p > '{shell_state}'\n")
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, f"{where}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


def _image_refs(path: Path) -> list[str]:
    text = path.read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text, flags=re.S)
    refs += re.findall(r"<img[^>]*\bsrc=\"([^\"]+)\"", text)
    return [r for r in refs if not r.startswith(("http://", "https://"))]


def test_every_image_exists_and_is_made_by_a_script():
    pages = sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]
    made_by = "\n".join(p.read_text() for p in SCRIPTS)
    referenced = set()
    for page in pages:
        for ref in _image_refs(page):
            img = (page.parent / ref).resolve()
            assert img.is_file(), f"{page.relative_to(ROOT)}: image {ref} does not exist"
            referenced.add(img)
    assert len(referenced) >= 8
    # every picture in docs/images comes from a script (none made by hand), referenced or not
    for img in sorted((DOCS / "images").glob("*.png")):
        assert f'"{img.name}"' in made_by, f"{img.name} is made by none of {[p.name for p in SCRIPTS]}"


def test_cli_reference_covers_every_subcommand():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from mkdocs_hooks import MARKER, _subparsers, cli_reference, on_page_markdown
    finally:
        sys.path.pop(0)
    from napari_2dtm.cli.main import build_parser

    text = cli_reference()
    subs = _subparsers(build_parser())
    assert {"search", "template", "simulate", "demo"} <= set(subs)
    for name, parser in subs.items():
        assert f"## `napari-2dtm {name}`" in text
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in text, f"{name}: {flag} missing from the CLI reference"
    page = (DOCS / "cli.md").read_text()
    assert MARKER in page
    assert MARKER not in on_page_markdown(page, page=None)
