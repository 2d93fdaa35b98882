#!/usr/bin/env bash
# The prepared GPU check: install, GPU tests, benchmark, all results under $OUT.
#
# Run from anywhere on a machine with an NVIDIA GPU (the repository's working tree):
#     bash scripts/gpu_check.sh                      # results in ./gpu_check_out
#     OUT=/tmp/res GPU_CHECK_BUDGET_S=480 bash scripts/gpu_check.sh
#
# Steps (each under what is left of the time budget, default 480 s):
#   1. nvidia-smi: the GPU and the driver's CUDA version.
#   2. CuPy: kept if it imports and sees the GPU; else pip install cupy-cuda13x or
#      cupy-cuda12x (with the CUDA libraries, the [ctk] extra) for that driver.
#   3. napari-2dtm: pip install -e . (and pytest); offline, from the wheels in
#      $GPU_CHECK_WHEELS when set, else without dependencies, else by PYTHONPATH=src.
#   4. pytest: the GPU kernel tests and GPU plan tests (each CuPy kernel against its NumPy
#      reference, the GPU search against the CPU search to 1e-4 relative, a planted-particle
#      search on the GPU) -- and their CPU reference tests.
#   5. benchmarks/bench_gpu.py: CC/s at 4096^2 (384^3 template) and 1024^2 (128^3), the
#      batched irfft2 floor, their ratio, peak device memory, fp16-vs-fp32 deviation.
# A machine that cannot reach PyPI (the lent GPU machines) needs the few dependencies its
# image lacks as wheels: on a machine with network access, once,
#     bash scripts/gpu_check.sh --prepare-wheels gpu_wheels   # ~10 MB, for Python 3.12
# then copy gpu_wheels/ along (git-ignored) and run with GPU_CHECK_WHEELS=gpu_wheels.
# Output: $OUT/gpu_check.log, nvidia_smi.txt, pytest.txt, pytest.xml, bench_gpu.json,
# bench_gpu.txt, summary.json. Exit status: 0 all passed; 1 a test failed or a step
# broke; 2 no usable GPU or CuPy.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${1:-}" == "--prepare-wheels" ]]; then
    # the project's dependencies that a CUDA/PyTorch image usually lacks, no transitive ones
    dest=${2:?"usage: bash scripts/gpu_check.sh --prepare-wheels DIR [PYTHON_VERSION]"}
    pyver=${3:-3.12}
    "${PYTHON:-python3}" -m pip download --disable-pip-version-check -q --no-deps \
        --only-binary=:all: --python-version "$pyver" --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$dest" \
        hatchling pathspec pluggy trove-classifiers packaging editables mrcfile starfile gemmi
    echo "wheels for Python $pyver in $dest:"
    ls "$dest"
    exit 0
fi

OUT="${OUT:-./gpu_check_out}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-480}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
START=$(date +%s)
LOG="$OUT/gpu_check.log"
: >"$LOG"
export PYTHONUNBUFFERED=1 QT_API="${QT_API:-pyqt6}"

log() { echo "[gpu_check +$(($(date +%s) - START))s] $*" | tee -a "$LOG" >&2; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
die() { log "FAILED: $2"; summary "$1" "$2"; exit "$1"; }
summary() {  # status code, message
    "$PY" - "$OUT" "$1" "$2" "$(($(date +%s) - START))" <<'EOF' || true
import json, sys, pathlib
out, rc, msg, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
p = pathlib.Path(out)
s = {"exit_status": rc, "message": msg, "seconds": secs}
b = p / "bench_gpu.json"
if b.exists():
    s["bench"] = json.loads(b.read_text())
(p / "summary.json").write_text(json.dumps(s, indent=1))
EOF
}
# run a step with what is left of the budget (at least 30 s); its output goes to the log
step() {  # name, seconds wanted at most, command...
    local name=$1 want=$2
    shift 2
    local t
    t=$(left)
    ((t > want)) && t=$want
    if ((t < 30)); then
        die 1 "time budget spent before: $name"
    fi
    log "$name (up to ${t}s): $*"
    set +e
    timeout --kill-after=10 "$t" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    set -e
    if ((rc == 124 || rc == 137)); then log "$name: stopped at its ${t}s limit"; fi
    return "$rc"
}

# 1. the GPU
command -v nvidia-smi >/dev/null || die 2 "nvidia-smi not found: no NVIDIA driver on this machine"
nvidia-smi >"$OUT/nvidia_smi.txt" 2>&1 || die 2 "nvidia-smi failed (see $OUT/nvidia_smi.txt)"
CUDA_MAJOR=$(grep -o "CUDA Version: [0-9]*" "$OUT/nvidia_smi.txt" | grep -o "[0-9]*$" || true)
log "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1); driver CUDA ${CUDA_MAJOR:-unknown}"

PIP=("$PY" -m pip install --disable-pip-version-check -q)
ONLINE=1
if [[ -n "${GPU_CHECK_WHEELS:-}" ]]; then
    PIP+=(--no-index --find-links "$GPU_CHECK_WHEELS")
elif ! "$PY" -c "import socket; socket.create_connection(('pypi.org', 443), 5).close()" 2>/dev/null; then
    ONLINE=0  # pip would spend minutes retrying: only installs that need no index
    log "PyPI is not reachable and GPU_CHECK_WHEELS is not set: no downloads"
fi

# 2. CuPy
cupy_ok() { "$PY" -c "import cupy; cupy.cuda.runtime.getDeviceCount(); cupy.zeros(1).sum()" >/dev/null 2>&1; }
if cupy_ok; then
    log "CuPy $("$PY" -c 'import cupy; print(cupy.__version__)') already works: not installing"
else
    case "${CUDA_MAJOR:-12}" in
        13 | 14 | 15) pkgs=(cupy-cuda13x cupy-cuda12x) ;;
        11) pkgs=(cupy-cuda11x) ;;
        *) pkgs=(cupy-cuda12x) ;;
    esac
    ((ONLINE)) || die 2 "CuPy does not work and cannot be installed offline (set GPU_CHECK_WHEELS)"
    for pkg in "${pkgs[@]}"; do
        step "install ${pkg}[ctk]" 240 "${PIP[@]}" "${pkg}[ctk]" || step "install $pkg" 180 "${PIP[@]}" "$pkg" || true
        if cupy_ok; then break; fi
    done
    cupy_ok || die 2 "CuPy does not work here (offline? carry the wheels and set GPU_CHECK_WHEELS; see docs/gpu.md)"
fi

# 3. the package
if ((ONLINE)) && step "install napari-2dtm" 240 "${PIP[@]}" -e . pytest; then
    :
else
    log "pip install -e . failed (offline without the dependencies?): trying without them"
    step "install napari-2dtm (no deps)" 120 "${PIP[@]}" --no-deps --no-build-isolation -e . ||
        log "no editable install: using PYTHONPATH=src"
fi
if ! "$PY" -c "import napari_2dtm" >/dev/null 2>&1; then
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import napari_2dtm" 2>&1 | tee -a "$LOG" ||
    die 1 "napari_2dtm does not import (missing dependencies: carry their wheels in GPU_CHECK_WHEELS)"
"$PY" -c "import pytest" >/dev/null 2>&1 || die 1 "pytest is not installed"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG" || die 2 "napari_2dtm sees no usable GPU"
from napari_2dtm import gpu_info
i = gpu_info()
print("napari_2dtm.gpu_info():", i)
raise SystemExit(0 if i["available"] else 1)
EOF

# 4. the tests: no GPU twin may skip here
TESTS_RC=0
step "GPU tests" 240 "$PY" -m pytest -p no:cacheprovider -q -rs \
    --junitxml="$OUT/pytest.xml" tests/core/test_gpu_kernels.py tests/search/test_gpu_plan.py \
    >"$OUT/pytest.txt" || TESTS_RC=$?
tail -n 25 "$OUT/pytest.txt" >&2
if grep -q "SKIPPED" "$OUT/pytest.txt"; then
    log "some GPU tests were skipped: the check is not complete"
    ((TESTS_RC != 0)) || TESTS_RC=1
fi

# 5. the benchmark (writes bench_gpu.json and bench_gpu.txt as it goes)
BENCH_RC=0
step "benchmark" 600 "$PY" benchmarks/bench_gpu.py --out "$OUT" ${GPU_CHECK_BENCH_ARGS:-} || BENCH_RC=$?

if ((TESTS_RC != 0)); then die 1 "GPU tests failed or skipped (status $TESTS_RC; see $OUT/pytest.txt)"; fi
if ((BENCH_RC != 0)); then die 1 "benchmark failed (status $BENCH_RC; see $OUT/gpu_check.log)"; fi
log "all GPU checks passed; results in $OUT"
summary 0 "all GPU checks passed"
