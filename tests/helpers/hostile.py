"""The judge of hostile-input tests (tests/hostile/): what a refusal must look like.

:func:`assert_refused`: exit 2, one line on stderr naming the file or option, no
traceback. :func:`looks_complete`: a results folder a reader would take as finished.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

PIXEL_SIZE_A = 4.0
DEFOCUS_A = 10000.0
#: A coarse grid matched to a 12 A limit, one defocus plane: the small case searches in
#: about a second and still finds its particles.
FAST = ("--out-of-plane-step", "12", "--in-plane-step", "12", "--high-res-limit", "12",
        "--defocus1", str(DEFOCUS_A), "--defocus-range", "0", "--device", "cpu")


@dataclasses.dataclass
class Case:
    """Paths of one test's copy of the small case (strings, as on a command line)."""

    dir: Path
    mic: str
    tpl: str
    out: str
    truth: object  # rows (x, y, phi, theta, psi) of the planted particles
    fast: tuple = FAST


def assert_refused(code: int, err: str, *names: str) -> None:
    """Exit 2 and exactly one line on stderr, naming each of ``names``; no traceback."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, f"exit {code}, stderr: {err!r}"
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]!r}"


def looks_complete(folder) -> bool:
    """A results folder a reader would take as finished (its marker file is there)."""
    return Path(folder, "search.json").is_file()
