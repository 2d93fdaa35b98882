#!/usr/bin/env bash
# The demo (installs first if needed): opens napari with the "2DTM demo" sample and
# the Search widget docked. With no display it runs the same search headless and
# saves the results folder and a screenshot (see `napari-2dtm demo --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Qt6 (PyQt6, what setup installs) even where an older PyQt5 is still installed
export QT_API="${QT_API:-pyqt6}"
exec "${PYTHON:-python3}" -m napari_2dtm.cli demo "$@"
