#!/usr/bin/env bash
# Coverage-guided fuzzing of every cargo-fuzz target in fuzz/, each for SECONDS (default 60).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_JOBS=N scripts/fuzz.sh ...   runs N targets at once (default 1; CI uses one per CPU)
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). cargo-fuzz uses nightly-only flags
# (-Zsanitizer=address); on a stable toolchain this script sets RUSTC_BOOTSTRAP=1 for it.
# Each target starts from the committed seeds (fuzz/seeds/TARGET, made by
# fuzz/seeds/make_seeds.py) and grows its own working corpus in fuzz/corpus/TARGET (not
# committed). Zero crashes, leaks, timeouts or out-of-memory are required: any of them fails the
# script, and libFuzzer leaves the input in fuzz/artifacts/TARGET/ (reproduce with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run -O TARGET fuzz/artifacts/TARGET/<file>`); make it a
# regression test in the owning crate.
# Prints one line per target (inputs tried, corpus size, result) and a total.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
case "$secs" in '' | *[!0-9]*) echo "scripts/fuzz.sh: SECONDS must be a whole number, not '$secs'" >&2; exit 2 ;; esac
all=(package_manifest package_tar audit_export audit_witness gguf_header safetensors_header update_bundle chat_template rerank_body policy_library policy_eval_report decoder_config tool_calls_and_reasoning embed_prompts sm2_keys_and_signatures admin_request)
targets=("$@")
if [ $# -eq 0 ]; then targets=("${all[@]}"); fi

command -v cargo-fuzz >/dev/null || { echo "scripts/fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2; exit 2; }
export RUSTC_BOOTSTRAP=1

# libFuzzer flags per target beyond the common ones.
extra_flags() {
  case "$1" in
    # verify_into hashes on a scoped thread per package; a joined thread can still be running its
    # thread-local destructors when libFuzzer checks for leaks, which LeakSanitizer reports as a
    # 112-byte leak that rerunning the input never reproduces (tests/RELIABILITY.md, Findings).
    package_tar) echo -detect_leaks=0 ;;
  esac
}

# Largest input per target: the seeds fit, and the fuzzer does not waste time on huge inputs.
max_len() {
  case "$1" in
    gguf_header) echo 262144 ;;
    package_tar | update_bundle) echo 32768 ;;
    audit_export) echo 65536 ;;
    chat_template) echo 4096 ;;
    *) echo 16384 ;;
  esac
}

echo "== building the fuzz targets (cargo fuzz build -O, AddressSanitizer)"
t0=$(date +%s)
(cd fuzz && cargo fuzz build -O)
echo "   built in $(($(date +%s) - t0)) s"

jobs=${FUZZ_JOBS:-1}
case "$jobs" in '' | *[!0-9]* | 0) echo "scripts/fuzz.sh: FUZZ_JOBS must be a positive number, not '$jobs'" >&2; exit 2 ;; esac
logs=target/fuzz-logs
mkdir -p "$logs"

# One target: its log in target/fuzz-logs/TARGET.log, its table row in TARGET.row.
run_target() {
  local t=$1 log="$logs/$1.log" rc=0 runs corpus result
  mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t" "fuzz/artifacts/$t"
  # shellcheck disable=SC2046
  (cd fuzz && cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -max_len="$(max_len "$t")" -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -timeout=20 -print_final_stats=1 -artifact_prefix="artifacts/$t/" $(extra_flags "$t")) >"$log" 2>&1 || rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  if [ "$rc" -eq 0 ]; then result=ok; else result="FAILED (exit $rc; see $log and fuzz/artifacts/$t/)"; fi
  printf '%-20s %8s %12s %8s %s\n' "$t" "$secs" "${runs:-?}" "$corpus" "$result" >"$logs/$t.row"
  [ "$rc" -eq 0 ]
}

echo "== fuzzing ${#targets[@]} targets for $secs s each, $jobs at a time"
for t in "${targets[@]}"; do
  rm -f "$logs/$t.row"
  run_target "$t" &
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
done
wait || true

failed=0
total=0
printf '%-20s %8s %12s %8s %s\n' target seconds inputs corpus result
for t in "${targets[@]}"; do
  row=$(cat "$logs/$t.row" 2>/dev/null || printf '%-20s %8s %12s %8s %s' "$t" "$secs" "?" "?" "FAILED (no result)")
  echo "$row"
  case "$row" in
    *" ok") ;;
    *)
      failed=$((failed + 1))
      grep -E 'ERROR: libFuzzer|SUMMARY|panicked at|==ERROR' "$logs/$t.log" 2>/dev/null | head -5 | sed 's/^/    /' || true
      ;;
  esac
  runs=$(echo "$row" | awk '{ print $3 }')
  case "$runs" in *[!0-9]* | '') ;; *) total=$((total + runs)) ;; esac
done
echo "fuzz: ${#targets[@]} targets, $total inputs tried, $failed crashed"
[ "$failed" -eq 0 ]
