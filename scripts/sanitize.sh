#!/usr/bin/env bash
# Build the CPU core with AddressSanitizer + UndefinedBehaviorSanitizer into its own build folder
# and run the op tests (tests/ops) against that build, then count the sanitizer reports.
#
#   scripts/sanitize.sh [pytest args...]        (default: tests/ops -q)
#
# The sanitized _core is loaded from an overlay package (build/sanitize/overlay/pyconcepts: links
# to every source file, plus the sanitized _core*.so), so the source tree's own build is left
# alone (python -P keeps the current folder off the front of sys.path). Python leaks by design,
# so leak detection is off. Exit status: non-zero when the build or a test fails or when any
# sanitizer report was written.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${BUILD:-$ROOT/build/sanitize}"
PY="${PY:-python}"
CXX_COMPILER="${CXX:-g++}"
cd "$ROOT"

mkdir -p "$BUILD"
cmake -S . -B "$BUILD" -G Ninja -DPYCONCEPTS_CUDA=OFF -DPYCONCEPTS_SANITIZE=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$CXX_COMPILER" \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$PY")" \
  >"$BUILD/configure.log"
cmake --build "$BUILD"

OVERLAY="$BUILD/overlay/pyconcepts"
rm -rf "$BUILD/overlay"
mkdir -p "$OVERLAY"
for entry in "$ROOT"/pyconcepts/*; do
  case "$(basename "$entry")" in _core*.so | _build_info.json | __pycache__) continue ;; esac
  ln -s "$entry" "$OVERLAY/"
done
cp "$BUILD"/_core*.so "$BUILD/_build_info.json" "$OVERLAY/"

# The ASan runtime must be the first library loaded into the (unsanitized) Python process, and
# libstdc++ must be there when it starts: else its __cxa_throw interceptor finds no real
# __cxa_throw and the first C++ exception aborts with "CHECK failed".
ASAN_RT="$("$CXX_COMPILER" -print-file-name=libasan.so)"
CXX_RT="$("$CXX_COMPILER" -print-file-name=libstdc++.so.6)"
[[ -f "$ASAN_RT" ]] || { echo "sanitize.sh: ASan runtime not found ($ASAN_RT)" >&2; exit 2; }
LOGS="$BUILD/reports"
rm -rf "$LOGS" && mkdir -p "$LOGS"

sanitized=(env LD_PRELOAD="$ASAN_RT:$CXX_RT" PYTHONPATH="$BUILD/overlay:$ROOT"
  ASAN_OPTIONS="detect_leaks=0:log_path=$LOGS/asan:halt_on_error=1"
  UBSAN_OPTIONS="print_stacktrace=1:log_path=$LOGS/ubsan:halt_on_error=0")
status=0
"${sanitized[@]}" "$PY" -P - "$BUILD/overlay" <<'PYEOF' || status=$?
import sys
from pathlib import Path

from pyconcepts import _backends

core = _backends.core()
if core is None or not Path(core.__file__).is_relative_to(sys.argv[1]):
    sys.exit(f"sanitize.sh: the sanitized _core did not load: {_backends.backends()}")
print(f"sanitize.sh: testing against {core.__file__}")
PYEOF
if [[ $status -eq 0 ]]; then
  "${sanitized[@]}" "$PY" -P -m pytest -p no:cacheprovider "${@:-tests/ops}" -q || status=$?
fi

reports=$(find "$LOGS" -type f | wc -l)
echo "sanitize.sh: $reports sanitizer report file(s) in $LOGS"
if [[ $reports -gt 0 ]]; then
  head -n 40 "$LOGS"/*
  [[ $status -ne 0 ]] || status=1
fi
exit "$status"
