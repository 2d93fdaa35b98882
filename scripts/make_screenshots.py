"""Make the README screenshots in docs/images/ (napari under Xvfb when there is no display).

    python3 scripts/make_screenshots.py

Opens napari with the "2DTM demo" sample and the Search widget docked, runs the
demo search, and saves the whole window half-way through the search
(``docs/images/search_live.png``) and when it is done (``search_done.png``).
Without a display it re-runs itself under ``xvfb-run``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"


def main() -> int:
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        xvfb = shutil.which("xvfb-run")
        if not xvfb:
            sys.exit("make_screenshots: no display and no xvfb-run (apt-get install xvfb)")
        cmd = [xvfb, "-a", "-s", "-screen 0 1600x1100x24", sys.executable, *sys.argv]
        return subprocess.call(cmd)
    from napari_2dtm._napari._demo import launch, quiet_notifications

    quiet_notifications()
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        return launch(
            Path(tmp) / "results",
            live_screenshot=IMAGES / "search_live.png",
            done_screenshot=IMAGES / "search_done.png",
            quit_when_done=True,
        )


if __name__ == "__main__":
    sys.exit(main())
