#!/usr/bin/env bash
# Decode and prefill speed with the KV cache stored as each of several types ([serving]
# kv_dtype: f32, f16, q8_0), side by side in one run: the same model and threads, the types (and,
# with --base-bin, a second govbox binary such as a build of an earlier commit) rotated so that
# each round starts with a different one and drift in the machine's load hits all alike.
# Prints per depth the median tokens/s of each (min-max over the rounds), its ratio to the first,
# the KV pool's size at each type, and the load average before and after.
#
#   bench/kv-dtype-bench.sh [--model GGUF] [--threads N] [--depths "512 3072"] [--gen N]
#                           [--rounds N] [--profile release|test] [--kv "f32 f16 q8_0"]
#                           [--base-bin PATH] [--prompt N]
#
# --profile test builds with the test profile (opt-level 2, no LTO) instead of release: slower
# absolute figures, but the same code for every type, so the ratios still compare them.
# --base-bin adds rows "base:<type>" measured with that binary (types it does not know are
# skipped), e.g. one built from the commit before a kernel change.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
model=$repo/.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
threads=2
depths="512 3072"
gen=64
rounds=3
profile=release
kvs="f32 f16 q8_0"
base=
prompt=512
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --depths) depths=$2; shift 2 ;;
    --gen) gen=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --kv) kvs=$2; shift 2 ;;
    --base-bin) base=$2; shift 2 ;;
    --prompt) prompt=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -f "$model" ] || { echo "no model at $model (scripts/fetch-models.sh smollm2, or --model)" >&2; exit 1; }
[ -z "$base" ] || [ -x "$base" ] || { echo "--base-bin $base is not an executable" >&2; exit 1; }

(cd "$repo" && cargo build --profile "$profile" -p govbox-cli --bin govbox >/dev/null)
dir=$profile
[ "$profile" = test ] && dir=debug
govbox=$repo/target/$dir/govbox

# Every (binary, type) to measure, as "label binary type".
runs=()
for kv in $kvs; do runs+=("$kv $govbox $kv"); done
if [ -n "$base" ]; then
  for kv in $kvs; do
    "$base" model bench --help 2>/dev/null | grep -q -- --kv-dtype || continue
    runs+=("base:$kv $base $kv")
  done
fi

max_depth=$(printf '%s\n' $depths | sort -n | tail -1)
kv_tokens=$(( (max_depth + gen + 16) / 16 * 16 ))
[ "$kv_tokens" -ge $((prompt + gen + 16)) ] || kv_tokens=$(( (prompt + gen + 32) / 16 * 16 ))
out=$(mktemp)
trap 'rm -f "$out"' EXIT
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
n=${#runs[@]}
for r in $(seq 1 "$rounds"); do
  for d in $depths; do
    for i in $(seq 0 $((n - 1))); do
      read -r label bin kv <<< "${runs[$(( (i + r - 1) % n ))]}"
      if ! "$bin" model bench --device cpu --model "$model" --threads "$threads" --kv-tokens "$kv_tokens" \
        --kv-dtype "$kv" -p "$prompt" -n "$gen" -d "$d" -r 1 > "$out.one" 2> "$out.err"; then
        echo "$label: $(tail -1 "$out.err") (skipped)" >&2
        continue
      fi
      python3 -c 'import json,sys; r=json.load(open(sys.argv[3])); print(json.dumps({"round": int(sys.argv[1]), "label": sys.argv[2], **r}))' \
        "$r" "$label" "$out.one" >> "$out"
    done
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
rm -f "$out.one" "$out.err"

python3 - "$out" "$threads" "$profile" "$load_before" "$load_after" "$model" "$prompt" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
threads, profile, before, after, model, prompt = sys.argv[2:8]
labels = list(dict.fromkeys(r["label"] for r in rows))
print(f"model {model.split('/')[-1]}, threads {threads}, build profile {profile}, rounds {max(r['round'] for r in rows)}")
print(f"load average before: {before}   after: {after}")
kv = {r["label"]: r["kv_bytes"] for r in rows}
print("KV pool, same kv_tokens: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in kv.items()))
print(f"{'tok/s':16} " + " ".join(f"{l:>24}" for l in labels) + "   ratios to " + labels[0])
def line(name, pick):
    got = {}
    for l in labels:
        xs = [pick(r) for r in rows if r["label"] == l and pick(r) is not None]
        if xs:
            got[l] = (statistics.median(xs), min(xs), max(xs))
    cells = [f"{got[l][0]:9.1f} ({got[l][1]:6.1f}-{got[l][2]:6.1f})" if l in got else f"{'-':>24}" for l in labels]
    first = got.get(labels[0], (None,))[0]
    ratios = [f"{got[l][0] / first:.2f}" if l in got and first else "-" for l in labels[1:]]
    print(f"{name:16} " + " ".join(cells) + "   " + " ".join(ratios))
line(f"pp{prompt}", lambda r: r["pp"]["mean_tps"])
for d in sorted({r["depth"] for r in rows if "depth" in r}):
    line(f"decode @ {d}", lambda r, d=d: r["tg"]["mean_tps"] if r.get("depth") == d else None)
PY
