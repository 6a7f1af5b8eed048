#!/usr/bin/env bash
# Every check that needs a GPU (issue 18), in one short run on a lent machine:
#
#   scripts/gpu_checks.sh [STEP...]     steps: info build test memcheck racecheck bench
#                                       (default: all, in that order)
#
# Logs go to $OUT (the device tool's folder that comes back) or build/gpu-checks, one file per
# step, plus summary.txt with each step's exit status and seconds. Each step has its own time
# limit (STEP_LIMIT_S, default 150 s; the build 300 s) so one slow step cannot eat the device
# time of the others; a step that runs out says so in the summary and the next one starts.
# The device machine has no internet: the build uses the preinstalled build tools
# (--no-build-isolation) and compiles for Hopper only (CUDAARCHS=90) to save time.
# The sanitizers run the two rewritten kernels' tests (-k "triplet or concept"); racecheck
# checks shared memory only (docs/benchmarks.md, "To measure on a GPU").
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOGS="${OUT:-$ROOT/build/gpu-checks}"
PY="${PY:-python}"
LIMIT="${STEP_LIMIT_S:-150}"
cd "$ROOT"
mkdir -p "$LOGS"
SUMMARY="$LOGS/summary.txt"
: >"$SUMMARY"
SELECT=(-m cuda tests/ops -q -p no:cacheprovider)
SANITIZED=(-k "triplet or concept")

step() {  # step NAME LIMIT COMMAND...: run, log, record status and time
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  local note=""
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then note=" (ran out of its ${limit} s)"; fi
  echo "$name: exit $rc in $((SECONDS - start)) s$note" | tee -a "$SUMMARY"
  tail -n 3 "$LOGS/$name.log"
}

run_step() {
  case "$1" in
    info) step info 60 bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, \
torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())'" ;;
    build)
      CUDAARCHS="${CUDAARCHS:-90}" step build 300 \
        "$PY" -m pip install --no-build-isolation --no-deps -e .
      # without the CUDA module every CUDA test skips and "test" would pass with nothing run
      step cuda_module 60 "$PY" -c "import pyconcepts._core_cuda as m; print(m.__file__)" ;;
    test) step test "$LIMIT" "$PY" -m pytest "${SELECT[@]}" ;;
    memcheck) step memcheck "$LIMIT" compute-sanitizer --tool memcheck --target-processes all \
      --error-exitcode 1 "$PY" -m pytest "${SELECT[@]}" "${SANITIZED[@]}" ;;
    racecheck) step racecheck "$LIMIT" compute-sanitizer --tool racecheck --racecheck-report all \
      --target-processes all --error-exitcode 1 "$PY" -m pytest "${SELECT[@]}" "${SANITIZED[@]}" ;;
    bench)
      step bench_cuda_kernels "$LIMIT" "$PY" -m bench.cuda_kernels
      step bench_concept_maps "$LIMIT" "$PY" -m bench.concept_maps --device cuda
      # SRAE's class parts: is one grouped model faster than parts of 8 on a GPU? (CPU: no)
      step bench_srae "$LIMIT" "$PY" -m bench.srae --classes 64 --n 2000 --dim 1280 \
        --epochs 1 --repeats 2 --class-batch 8 --device cuda ;;
    *) echo "unknown step '$1' (expected: info build test memcheck racecheck bench)" >&2
       return 2 ;;
  esac
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(info build test memcheck racecheck bench)
for s in "${steps[@]}"; do
  case "$s" in info | build | test | memcheck | racecheck | bench) ;; *) run_step "$s"; exit 2 ;;
  esac
done
status=0
for s in "${steps[@]}"; do run_step "$s" || status=1; done
grep -q "exit [^0]" "$SUMMARY" && status=1
echo "logs: $LOGS"
exit $status
