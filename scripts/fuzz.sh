#!/usr/bin/env bash
# Build the libFuzzer harnesses (make fuzz) and run each for SECONDS, one at a time, at the
# lowest CPU priority, on one OpenMP thread. Corpora persist in build/fuzz/corpus/<harness>;
# the inputs of fixed findings in fuzz/regressions/<harness> are replayed first (read-only
# corpus); new crashes land in build/fuzz/findings/<harness>. Prints one summary row per harness (seconds,
# executions, executions/s, corpus files, findings) and appends it to build/fuzz/summary.tsv.
#
#   scripts/fuzz.sh SECONDS [harness ...]      (default: every fuzz/fuzz_*.cpp)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECONDS_EACH="${1:?usage: scripts/fuzz.sh SECONDS [harness ...]}"
shift
OUT=build/fuzz
make --no-print-directory -j2 fuzz >/dev/null

if [[ $# -gt 0 ]]; then harnesses=("$@"); else
  harnesses=()
  for src in fuzz/fuzz_*.cpp; do harnesses+=("$(basename "$src" .cpp)"); done
fi

printf "harness\tseconds\truns\truns_per_s\tcorpus\tfindings\n"
status=0
for name in "${harnesses[@]}"; do
  corpus="$OUT/corpus/$name" findings="$OUT/findings/$name" log="$OUT/$name.log"
  mkdir -p "$corpus" "$findings"
  seeds=()
  [[ -d fuzz/regressions/$name ]] && seeds=("fuzz/regressions/$name")
  start=$(date +%s)
  rc=0
  OMP_NUM_THREADS=1 nice -n 19 "$OUT/$name" "$corpus" "${seeds[@]}" -max_total_time="$SECONDS_EACH" \
    -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$findings/" >"$log" 2>&1 || rc=$?
  elapsed=$(($(date +%s) - start))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  runs=${runs:-0}
  row=$(printf "%s\t%s\t%s\t%s\t%s\t%s" "$name" "$elapsed" "$runs" "$((runs / (elapsed > 0 ? elapsed : 1)))" \
    "$(find "$corpus" -type f | wc -l)" "$(find "$findings" -type f | wc -l)")
  echo "$row"
  printf "%s\t%s\n" "$(date -u +%FT%TZ)" "$row" >>"$OUT/summary.tsv"
  if [[ $rc -ne 0 ]]; then
    status=1
    grep -m5 -E "ERROR|invariant|SUMMARY" "$log" >&2 || true
  fi
done
exit "$status"
