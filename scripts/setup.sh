#!/usr/bin/env bash
# Install what napari-2dtm needs on a fresh Debian 12 / Ubuntu machine: the system
# libraries Qt and OpenGL need under a virtual X server, then the package (editable)
# with its test and dev tools. Idempotent: skips apt when the packages are present and
# pip when the installed package already matches this checkout's pyproject.toml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}

APT_PACKAGES=(
  xvfb xauth libgl1 libgl1-mesa-dri libegl1 libopengl0 libglib2.0-0 libdbus-1-3
  libfontconfig1 libfreetype6 fonts-dejavu-core libx11-xcb1 libxrender1 libxi6 libxext6
  libsm6 libice6 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
  libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0
  libxcb-cursor0 libxcb-xkb1
)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
fi
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# Not under build/: mkdocs rebuilds build/site and the stamp must survive it.
stamp=.setup-stamp
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $(pwd) $(command -v "$PY")"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$PY" -c "import napari_2dtm, napari, npe2, pytestqt, ruff, importlinter, mkdocs, material, mkdocstrings_handlers.python" >/dev/null 2>&1 \
   && "$PY" -c "import sys, napari_2dtm; sys.exit(not napari_2dtm.__file__.startswith('$(pwd)/'))" 2>/dev/null; then
  # installed, and from this checkout (not another clone's editable install)
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
echo "setup: installing napari-2dtm (editable) with its dev tools"
"$PY" -m pip install -q --upgrade "pip>=25.1"
"$PY" -m pip install -q -e . --group dev
# The optional fast FFT libraries (pyFFTW; mkl_fft on x86-64), so the suite tests them
# too; where they do not install, the engine uses scipy's pocketfft, which is tested as well.
"$PY" -m pip install -q -e '.[fast]' \
  || echo "setup: the optional 'fast' FFT libraries did not install; using pocketfft" >&2
echo "$want" >"$stamp"
