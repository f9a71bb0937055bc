#!/usr/bin/env bash
# Decode and prefill speed with the KV cache stored as f32 and as f16 ([serving] kv_dtype), side
# by side in one run: the same binary, model and threads, the two types alternating (f32 first in
# odd rounds, f16 first in even ones) so that drift in the machine's load hits both alike.
# Prints per depth the median tokens/s of each, their ratio, the spread over the rounds, the KV
# pool's size at each type, and the load average before and after.
#
#   bench/kv-dtype-bench.sh [--model GGUF] [--threads N] [--depths "512 3072"] [--gen N]
#                           [--rounds N] [--profile release|test]
#
# --profile test builds with the test profile (opt-level 2, no LTO) instead of release: slower
# absolute figures, but the same code for both types, so the ratio still compares them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
model=$repo/.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
threads=2
depths="512 3072"
gen=64
rounds=3
profile=release
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --depths) depths=$2; shift 2 ;;
    --gen) gen=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -f "$model" ] || { echo "no model at $model (scripts/fetch-models.sh smollm2, or --model)" >&2; exit 1; }

(cd "$repo" && cargo build --profile "$profile" -p govbox-cli --bin govbox >/dev/null)
dir=$profile
[ "$profile" = test ] && dir=debug
govbox=$repo/target/$dir/govbox

max_depth=$(printf '%s\n' $depths | sort -n | tail -1)
kv_tokens=$(( (max_depth + gen + 16) / 16 * 16 ))
out=$(mktemp)
trap 'rm -f "$out"' EXIT
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq 1 "$rounds"); do
  order="f32 f16"
  [ $((r % 2)) = 0 ] && order="f16 f32"
  for d in $depths; do
    for kv in $order; do
      "$govbox" model bench --device cpu --model "$model" --threads "$threads" --kv-tokens "$kv_tokens" \
        --kv-dtype "$kv" -p 512 -n "$gen" -d "$d" -r 1 |
        python3 -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({"round": int(sys.argv[1]), **r}))' "$r" >> "$out"
    done
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$out" "$threads" "$profile" "$load_before" "$load_after" "$model" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
threads, profile, before, after, model = sys.argv[2:7]
print(f"model {model.split('/')[-1]}, threads {threads}, build profile {profile}, rounds {max(r['round'] for r in rows)}")
print(f"load average before: {before}   after: {after}")
def med(xs): return statistics.median(xs), min(xs), max(xs)
kv = {r["kv_dtype"]: r["kv_bytes"] for r in rows}
print("KV pool, same kv_tokens: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(kv.items())))
print(f"{'what':16} {'f32 tok/s (min-max)':>24} {'f16 tok/s (min-max)':>24} {'f16/f32':>8}")
def line(name, pick):
    got = {}
    for t in ("f32", "f16"):
        xs = [pick(r) for r in rows if r["kv_dtype"] == t and pick(r) is not None]
        got[t] = med(xs)
    (a, a0, a1), (b, b0, b1) = got["f32"], got["f16"]
    print(f"{name:16} {a:9.1f} ({a0:6.1f}-{a1:6.1f}) {b:9.1f} ({b0:6.1f}-{b1:6.1f}) {b / a:8.3f}")
line("pp512", lambda r: r["pp"]["mean_tps"])
for d in sorted({r["depth"] for r in rows if "depth" in r}):
    line(f"decode @ {d}", lambda r, d=d: r["tg"]["mean_tps"] if r.get("depth") == d else None)
PY
