#!/usr/bin/env bash
# Run the whole test suite (installs first if needed). GUI tests open a real napari
# viewer; without a display pytest-xvfb starts a virtual X server for them.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k reader`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Qt6 (PyQt6, what setup installs) even where an older PyQt5 is still installed
export QT_API="${QT_API:-pyqt6}"
exec "${PYTHON:-python3}" -m pytest "$@"
