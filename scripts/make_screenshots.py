"""Make the README screenshots in docs/images/ (napari under Xvfb when there is no display).

    python3 scripts/make_screenshots.py

Opens napari with the "2DTM demo" sample and the Search widget docked, runs the
demo search, and saves the whole window half-way through the search
(``docs/images/search_live.png``) and when it is done (``search_done.png``); then the
same search in teaching mode (``teaching_mode.png``).
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
        code = launch(
            Path(tmp) / "results",
            live_screenshot=IMAGES / "search_live.png",
            done_screenshot=IMAGES / "search_done.png",
            quit_when_done=True,
        )
        return code or teaching_screenshot(IMAGES / "teaching_mode.png", Path(tmp) / "teaching")


def teaching_screenshot(png: Path, out_dir: Path) -> int:
    """The demo search in teaching mode (fast pace), saved at 60 % (teaching_mode.png)."""
    import napari
    from qtpy.QtCore import QTimer

    from napari_2dtm._napari._demo import _new_viewer

    viewer = _new_viewer("napari-2dtm teaching mode")
    viewer.open_sample("napari-2dtm", "demo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Search")
    widget.output_dir.setText(str(out_dir))
    widget.teaching.setChecked(True)
    widget.teaching_pace = dict(step_s=0.1, intro_s=0.5, max_steps=20)
    state = {"shot": False, "code": 1}

    def on_progress(p):
        if not state["shot"] and p.fraction >= 0.6:
            state["shot"] = True
            viewer.screenshot(str(png), canvas_only=False)
            print(f"screenshot (teaching mode, {100 * p.fraction:.0f}%): {png}")

    def on_finished(outcome):
        state["code"] = 0 if outcome == "done" and state["shot"] else 1
        widget._estimate_timer.stop()  # no run-time estimate racing the window's closing
        QTimer.singleShot(200, viewer.close)

    widget.progress_shown.connect(on_progress)
    widget.search_finished.connect(on_finished)
    QTimer.singleShot(500, widget.run)
    napari.run()
    return state["code"]


if __name__ == "__main__":
    sys.exit(main())
