#!/usr/bin/env bash
# Long prompts, govbox against llama.cpp on the same GGUF file: for each prompt length and each KV
# type, the prefill of the whole prompt, the decode of 32 tokens at that depth, each side's peak
# RSS (/usr/bin/time, the weights' mapped pages included) and each side's own account of its KV
# cache's bytes (llama.cpp's `llama_kv_cache: size` line, logged with -v; govbox's kv_bytes).
#
#   bench/longctx-bench.sh FILE [--ctx N,N] [--kv f16,q8_0] [--threads N] [--out JSONL]
#
# One process per side, prompt length and KV type, so each side prefills the long prompt once and
# both figures come from that one prefill:
#   llama.cpp  llama-batched-bench -fa on -ctk KV -ctv KV -c CTX+64 -npp CTX -ntg 32 -npl 1 -v
#              (its S_PP and S_TG: the prompt in batches of 2048, ubatches of 512, llama-bench's
#              defaults too, then 32 single-token decodes);
#   govbox     govbox model bench -p 0 -n 32 -d CTX -r 1 --kv-tokens CTX+64 --kv-dtype KV (its
#              depth_prefill: the time to the first token of the CTX-token prompt; its tg: the 31
#              decode steps after it).
# Timing a prefill and the decode after it in separate processes (llama-bench -p CTX, then -n 32 -d
# CTX) prefills twice; at 32k tokens on 2 cores one f16 prefill took 33 minutes in llama.cpp and 23
# in govbox, which is why this script uses one. A prompt and its 32 tokens must fit the model's
# context (govbox refuses a prompt that leaves no room): for the Qwen2.5 shapes' 32,768 that makes
# "32k" a prompt of 32,736 tokens. The defaults are bench/run.sh --large's: 8192 and 32736 tokens,
# f16 and q8_0. Rows go to --out (JSON lines, appended) and to stderr as they finish, each side's
# raw output and log to bench/work/longctx/ (kept: one side's figures survive the other's failure);
# the load average is printed at the start and the end. govbox comes from $GOVBOX or target/release.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
work=$here/work
ctx_list=8192,32736
kv_list=f16,q8_0
threads=2
out=/dev/null
file=
while [ $# -gt 0 ]; do
  case $1 in
    --ctx) ctx_list=${2:?--ctx needs prompt lengths}; shift 2 ;;
    --kv) kv_list=${2:?--kv needs KV types}; shift 2 ;;
    --threads) threads=${2:?--threads needs a number}; shift 2 ;;
    --out) out=${2:?--out needs a file}; shift 2 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    -*) echo "longctx-bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [ -z "$file" ] || { echo "longctx-bench.sh: one GGUF file, not '$file' and '$1'" >&2; exit 2; }
       file=$1; shift ;;
  esac
done
[ -n "$file" ] || { echo "longctx-bench.sh: which GGUF file? (see --help)" >&2; exit 2; }
[ -f "$file" ] || { echo "longctx-bench.sh: $file is not a file" >&2; exit 2; }
case ,$ctx_list, in *,,*|*[!0-9,]*) echo "longctx-bench.sh: --ctx must be prompt lengths separated by commas, not '$ctx_list'" >&2; exit 2 ;; esac
for kv in ${kv_list//,/ }; do
  case $kv in f16|q8_0) ;; *) echo "longctx-bench.sh: --kv takes f16 and q8_0, not '$kv'" >&2; exit 2 ;; esac
done
case $threads in ''|*[!0-9]*) echo "longctx-bench.sh: --threads takes a whole number" >&2; exit 2 ;; esac
# shellcheck source=bench/peer-lib.sh
. "$here/peer-lib.sh"
peer_setup longctx-bench.sh
raw=$work/longctx
mkdir -p "$raw"
log() { echo "== [$(date -u +%H:%M:%S)] $*" >&2; }

log "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
name=$(basename "$file" .gguf)
for ctx in ${ctx_list//,/ }; do
  for kv in ${kv_list//,/ }; do
    tag=$name-$ctx-$kv
    log "$name: $ctx-token prompt, then 32 tokens at that depth, KV $kv: llama-batched-bench -fa on"
    /usr/bin/time -f '%M' -o "$raw/llama-$tag.rss" "$bin/llama-batched-bench" -m "$file" \
        -t "$threads" -fa on -ctk "$kv" -ctv "$kv" -c $((ctx + 64)) -npp "$ctx" -ntg 32 -npl 1 \
        --output-format jsonl -v > "$raw/llama-$tag.json" 2> "$raw/llama-$tag.log" ||
      { tail -20 "$raw/llama-$tag.log" >&2; echo "longctx-bench.sh: llama-batched-bench failed" >&2; exit 1; }
    log "$name: the same with govbox model bench"
    /usr/bin/time -f '%M' -o "$raw/govbox-$tag.rss" "$govbox" model bench --model "$file" \
        --device cpu --threads "$threads" -p 0 -n 32 -d "$ctx" -r 1 --kv-tokens $((ctx + 64)) \
        --kv-dtype "$kv" > "$raw/govbox-$tag.json" 2> "$raw/govbox-$tag.log" ||
      { tail -20 "$raw/govbox-$tag.log" >&2; echo "longctx-bench.sh: govbox model bench failed" >&2; exit 1; }
    "$py" - "$raw" "$tag" "$ctx" "$kv" <<'PY' | tee -a "$out" >&2
import json, re, sys
raw, tag, ctx, kv_type = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def rss(side):
    return int(open(f"{raw}/{side}-{tag}.rss").read().split()[-1])
rows = [json.loads(l) for l in open(f"{raw}/llama-{tag}.json") if l.startswith("{")]
if len(rows) != 1 or rows[0]["pp"] != ctx:
    sys.exit(f"llama-batched-bench gave no row for a {ctx}-token prompt")
# llama.cpp's own account of its KV cache (-v logs it): "llama_kv_cache: size = 231.00 MiB (...)"
kv = re.findall(r"llama_kv_cache: size = +([0-9.]+) MiB", open(f"{raw}/llama-{tag}.log").read())
if len(kv) != 1:
    sys.exit(f"llama-batched-bench -v logged {len(kv)} KV cache sizes, not 1; see {raw}/llama-{tag}.log")
g = json.load(open(f"{raw}/govbox-{tag}.json"))
if g.get("depth") != ctx or "depth_prefill" not in g:
    sys.exit(f"govbox model bench gave no prefill at depth {ctx}")
print(json.dumps({"ctx": ctx, "kv": kv_type, "method": "one prefill per side",
                  "llama_pp": rows[0]["speed_pp"], "llama_tg": rows[0]["speed_tg"],
                  "govbox_pp": g["depth_prefill"]["mean_tps"], "govbox_tg": g["tg"]["mean_tps"],
                  "llama_rss_kb": rss("llama"), "govbox_rss_kb": rss("govbox"),
                  "llama_kv_bytes": round(float(kv[0]) * 1048576), "govbox_kv_bytes": g["kv_bytes"]}))
PY
  done
done
log "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
