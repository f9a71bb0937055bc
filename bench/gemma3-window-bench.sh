#!/usr/bin/env bash
# What Gemma 3's sliding window saves at a 4k context (issue 23): the same Gemma-3-1B-shaped file
# (bench/make_bench_model.py --shape gemma3-1b: 26 layers, five of every six with a 512-token
# window; random weights, converted by llama.cpp's converter, Q8_0 by llama-quantize) twice: as
# converted, and as a dense twin whose window (`gemma3.attention.sliding_window`) is twice the
# context, so that every layer attends to all of it (llama.cpp refuses a gemma3 file without any
# sliding layer). For each: govbox's KV-cache bytes for the context and its
# decode speed at that depth, llama.cpp's decode at the same depth (-fa on), and each process's
# peak RSS. One process per measurement, alternating sides, ROUNDS times.
#
#   bench/gemma3-window-bench.sh [--ctx N] [--rounds N] [--threads N]
#
# govbox comes from target/release (cargo build --release -p govbox-cli first). Files are kept
# under bench/work (git-ignored).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
work=$here/work
ctx=4096 rounds=1 threads=2
while [ $# -gt 0 ]; do
  case $1 in
    --ctx) ctx=${2:?--ctx needs a number}; shift 2 ;;
    --rounds) rounds=${2:?--rounds needs a number}; shift 2 ;;
    --threads) threads=${2:?--threads needs a number}; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "gemma3-window-bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $ctx$rounds$threads in *[!0-9]*) echo "gemma3-window-bench.sh: options take whole numbers" >&2; exit 2 ;; esac
# shellcheck source=bench/peer-lib.sh
. "$here/peer-lib.sh"
peer_setup gemma3-window-bench.sh
export PYTHONPATH=$work/llama/llama.cpp/gguf-py

shape=gemma3-1b
window=$work/$shape-q8_0.gguf dense=$work/$shape-window$((2 * ctx))-q8_0.gguf
if [ ! -f "$window" ]; then
  hf=$work/$shape-hf f16=$work/$shape-f16.gguf
  if [ ! -f "$hf/config.json" ]; then
    rm -rf "$hf.partial"
    "$py" "$here/make_bench_model.py" "$hf.partial" --shape "$shape" --tokenizer "$repo/tests/fixtures/tiny-gemma3" >&2
    mv "$hf.partial" "$hf"
  fi
  "$py" "$work/llama/llama.cpp/convert_hf_to_gguf.py" "$hf" --outtype f16 --outfile "$f16.partial" >&2
  "$bin/llama-quantize" "$f16.partial" "$window.partial" q8_0 >/dev/null 2>"$work/quantize-$shape.log"
  mv "$window.partial" "$window"
  rm -rf "$f16.partial" "$hf"
fi
if [ ! -f "$dense" ]; then
  "$py" - "$window" "$dense.partial" "$ctx" <<'PY'
import sys
import gguf
from gguf.scripts.gguf_new_metadata import copy_with_new_metadata
src, dst, ctx = sys.argv[1], sys.argv[2], int(sys.argv[3])
reader = gguf.GGUFReader(src)
writer = gguf.GGUFWriter(dst, arch="gemma3", endianess=reader.endianess)
# A window past the whole context: every layer then attends to all of it, as a dense model's do
# (llama.cpp refuses a gemma3 file without any sliding layer, so the window, not the pattern, changes).
writer.add_uint32("gemma3.attention.sliding_window", 2 * ctx)
copy_with_new_metadata(reader, writer, {}, ["gemma3.attention.sliding_window"])
PY
  mv "$dense.partial" "$dense"
fi

run=$work/gemma3-run
rm -rf "$run"; mkdir -p "$run"
cut -d' ' -f1-3 /proc/loadavg > "$run/load-start"
echo "load average at start: $(cat "$run/load-start")"
for r in $(seq "$rounds"); do
  for m in "$window" "$dense"; do
    name=$(basename "$m" .gguf)
    /usr/bin/time -f '%M' -o "$run/llama-$name-$r.rss" "$bin/llama-bench" -m "$m" -t "$threads" -fa on -p 0 -n 32 \
        -d "$ctx" -r 1 -o json > "$run/llama-$name-$r.json" 2>> "$run/llama.log"
    /usr/bin/time -f '%M' -o "$run/govbox-$name-$r.rss" "$govbox" model bench --model "$m" --device cpu \
        --threads "$threads" -p 0 -n 32 -d "$ctx" -r 1 --kv-tokens $((ctx + 64)) > "$run/govbox-$name-$r.json" \
        2>> "$run/govbox.log"
  done
done
cut -d' ' -f1-3 /proc/loadavg > "$run/load-end"
echo "load average at end: $(cat "$run/load-end")"
"$py" - "$run" "$rounds" "$ctx" "$window" "$dense" <<'PY'
import json, os, sys
run, rounds, ctx, files = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def rss(p):
    return int(open(p).read().split()[-1]) * 1024 / 1e6
rows, summary = {}, []
print(f"| file | govbox KV MiB ({ctx} tokens, f16) | decode at depth {ctx}, govbox | llama.cpp | ratio "
      "| peak RSS govbox MB | llama.cpp MB |")
print("|---|---:|---:|---:|---:|---:|---:|")
for f in files:
    n = os.path.basename(f)[:-5]
    g = [json.load(open(f"{run}/govbox-{n}-{r}.json")) for r in range(1, rounds + 1)]
    l = [json.load(open(f"{run}/llama-{n}-{r}.json"))[0]["avg_ts"] for r in range(1, rounds + 1)]
    gt = sum(x["tg"]["mean_tps"] for x in g) / rounds
    lt = sum(l) / rounds
    gr = max(rss(f"{run}/govbox-{n}-{r}.rss") for r in range(1, rounds + 1))
    lr = max(rss(f"{run}/llama-{n}-{r}.rss") for r in range(1, rounds + 1))
    rows[n] = (g[0]["kv_bytes"], gt)
    print(f"| {n} | {g[0]['kv_bytes'] / 2**20:.1f} | {gt:.2f} | {lt:.2f} | {gt / lt:.2f} | {gr:.0f} | {lr:.0f} |")
    summary.append({"file": n, "govbox_kv_bytes": g[0]["kv_bytes"], "govbox_tg": gt, "llama_tg": lt,
                    "govbox_rss_mb": gr, "llama_rss_mb": lr})
(wk, wt), (dk, dt) = rows.values()
print(f"\nwindowed / dense: KV bytes {wk / dk:.2f}x, decode speed {wt / dt:.2f}x")
json.dump({"ctx": int(ctx), "rounds": rounds, "load_start": open(f"{run}/load-start").read().strip(),
           "load_end": open(f"{run}/load-end").read().strip(), "windowed": summary[0], "dense": summary[1]},
          open(f"{run}/summary.json", "w"))
PY
