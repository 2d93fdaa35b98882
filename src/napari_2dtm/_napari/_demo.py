"""The demo in napari: the "2DTM demo" sample with the Search widget docked.

:func:`launch` opens a napari window, loads the sample, docks the widget (which
takes the sample's suggested settings) and starts the search; it can take a
screenshot half-way and one when the search is done, then quit (used by
``scripts/make_screenshots.py`` under Xvfb). :func:`screenshot_results` renders a
results folder opened with this plugin's reader (the headless demo's picture).

Run as ``python -m napari_2dtm._napari._demo screenshot RESULTS PNG``, or
``python -m napari_2dtm._napari._demo launch RESULTS [--overwrite] [--no-run]
[--teaching]`` (how ``napari-2dtm demo`` opens the window: the CLI does not import the
GUI layer, it starts it as a process).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

WINDOW_SIZE = (1500, 1000)


def _new_viewer(title: str):
    import napari

    viewer = napari.Viewer(title=title, show=True)
    viewer.window.resize(*WINDOW_SIZE)
    return viewer


def _focus_on_results(viewer, micrograph_name: str):
    """Show micrograph, SNR map and hits; everything else hidden."""
    from ._hits_dock import review_layer_name
    from ._layers import hits_layer_name, map_layer_name

    for layer in viewer.layers:
        if layer.name.startswith(("template", "ground truth")):
            layer.visible = False
    hits = hits_layer_name(micrograph_name)
    review = review_layer_name(micrograph_name)
    # The Hits widget's review layer, when docked, draws the same hits: show one layer.
    shown = review if review in viewer.layers else hits
    for name, visible in ((map_layer_name("zscore", micrograph_name), False),
                          (map_layer_name("snr", micrograph_name), False),
                          (map_layer_name("zbg", micrograph_name), True),
                          (hits, shown == hits), (review, True)):
        if name in viewer.layers:
            viewer.layers[name].visible = visible
    if shown in viewer.layers:
        viewer.layers.selection.active = viewer.layers[shown]


def launch(
    out_dir: str | Path,
    run: bool = True,
    overwrite: bool = False,
    live_screenshot: str | Path | None = None,
    done_screenshot: str | Path | None = None,
    quit_when_done: bool = False,
    teaching: bool = False,
) -> int:
    """Open napari with the demo and the docked Search widget; returns an exit code.

    teaching: tick the widget's teaching mode (the search runs slowly, explained)."""
    import napari
    from qtpy.QtCore import QTimer

    from ._layers import map_layer_name

    viewer = _new_viewer("napari-2dtm demo")
    viewer.open_sample("napari-2dtm", "demo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-2dtm", "2DTM Search")
    widget.output_dir.setText(str(out_dir))
    widget.overwrite.setChecked(overwrite)
    widget.teaching.setChecked(teaching)
    QTimer.singleShot(300, viewer.reset_view)  # once the dock has taken its space
    state = {"live": live_screenshot is None, "code": 0}

    def on_progress(p):
        if not state["live"] and p.fraction >= 0.5:
            state["live"] = True
            zbg = map_layer_name("zbg", widget.micrograph_combo.currentText())
            viewer.layers.selection.active = viewer.layers[zbg]
            viewer.screenshot(str(live_screenshot), canvas_only=False)
            print(f"screenshot (live, {100 * p.fraction:.0f}%): {live_screenshot}")

    def on_finished(outcome):
        print(f"search {outcome}: {widget.status.text()}")
        if outcome == "done":
            _focus_on_results(viewer, widget.micrograph_combo.currentText())
            if done_screenshot:
                viewer.screenshot(str(done_screenshot), canvas_only=False)
                print(f"screenshot (done): {done_screenshot}")
        else:
            state["code"] = 1
        if quit_when_done:
            QTimer.singleShot(200, viewer.close)

    widget.progress_shown.connect(on_progress)
    widget.search_finished.connect(on_finished)
    if run:
        QTimer.singleShot(500, widget.run)
    napari.run()
    return state["code"]


def quiet_notifications() -> None:
    """No pop-up notifications in screenshots (environment only: settings stay as they are)."""
    os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")


def screenshot_results(folder: str | Path, png: str | Path) -> None:
    """Open a results folder with the plugin's reader and save a window screenshot."""
    from ._hits_dock import micrograph_name_of

    quiet_notifications()
    viewer = _new_viewer("napari-2dtm results")
    layers = viewer.open(str(folder), plugin="napari-2dtm")
    mic = micrograph_name_of(next((ly.name for ly in layers if ly.name.startswith("hits [")),
                                  "hits []"))
    _focus_on_results(viewer, mic)
    viewer.reset_view()
    viewer.screenshot(str(png), canvas_only=False)
    viewer.close()


def main(argv: list[str]) -> int:
    """``screenshot RESULTS PNG`` or ``launch RESULTS [--overwrite] [--no-run] [--teaching]``."""
    import argparse

    p = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else __name__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("screenshot", help="render a results folder into a PNG")
    s.add_argument("folder")
    s.add_argument("png")
    g = sub.add_parser("launch", help="napari with the demo and the Search widget")
    g.add_argument("folder")
    g.add_argument("--overwrite", action="store_true")
    g.add_argument("--no-run", action="store_true")
    g.add_argument("--teaching", action="store_true")
    args = p.parse_args(argv)
    if args.command == "screenshot":
        screenshot_results(args.folder, args.png)
        return 0
    return launch(args.folder, run=not args.no_run, overwrite=args.overwrite,
                  teaching=args.teaching)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
