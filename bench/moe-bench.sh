#!/usr/bin/env bash
# govbox against llama.cpp on a Qwen3-MoE of issue 23's size, side by side in one run: random
# weights of the shape `qwen3-moe-3b-a0.6b` (bench/make_bench_model.py: 3.16 B parameters, 8 of 48
# experts per token), converted by llama.cpp's converter and quantised by llama-quantize to Q8_0
# and Q4_K_M; the same file on both sides.
#
#   bench/moe-bench.sh [--rounds N] [--threads N]
#
# Each round runs, for each file, llama-bench (-p 512 -n 128 -r 1) and then govbox model bench
# (decode of 128 tokens, then prefill of 512 in a separate process: a second prefill in one process
# would be served by the prefix cache), each under /usr/bin/time for its peak RSS. Alternating the
# two sides every round lets both see the same machine load; the load average is printed at the
# start and the end. Both sides hold a KV cache of 768 tokens: llama-bench sizes its context to
# the prompt plus the generated tokens (512 + 128), which llama.cpp rounds up to a multiple of 256
# (llama-context.cpp), and govbox gets --kv-tokens 768. Files are kept under bench/work
# (git-ignored); making them needs about 15 GB of free disk for a while (the HF folder and the
# F16 GGUF are removed once the quantised files exist).
# govbox comes from target/release (cargo build --release -p govbox-cli first).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
work=$here/work
rounds=2
threads=2
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=${2:?--rounds needs a number}; shift 2 ;;
    --threads) threads=${2:?--threads needs a number}; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "moe-bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $rounds$threads in *[!0-9]*) echo "moe-bench.sh: --rounds and --threads take whole numbers" >&2; exit 2 ;; esac
# shellcheck source=bench/peer-lib.sh
. "$here/peer-lib.sh"
peer_setup moe-bench.sh

shape=qwen3-moe-3b-a0.6b
files=()
for q in q8_0 q4_k_m; do
  out=$work/$shape-$q.gguf
  files+=("$out")
  [ -f "$out" ] && continue
  f16=$work/$shape-f16.gguf hf=$work/$shape-hf
  if [ ! -f "$f16" ]; then
    if [ ! -f "$hf/config.json" ]; then
      rm -rf "$hf.partial"
      "$py" "$here/make_bench_model.py" "$hf.partial" --shape "$shape" --tokenizer "$repo/tests/fixtures/tiny-qwen2" >&2
      mv "$hf.partial" "$hf"
    fi
    PYTHONPATH=$work/llama/llama.cpp/gguf-py "$py" "$work/llama/llama.cpp/convert_hf_to_gguf.py" "$hf" \
        --outtype f16 --outfile "$f16.partial" >&2
    mv "$f16.partial" "$f16"
  fi
  "$bin/llama-quantize" "$f16" "$out.partial" "$q" >/dev/null 2>"$work/quantize-$shape-$q.log"
  mv "$out.partial" "$out"
done
[ -f "${files[0]}" ] && [ -f "${files[1]}" ] && rm -rf "$work/$shape-f16.gguf" "$work/$shape-hf"

run=$work/moe-run
rm -rf "$run"; mkdir -p "$run"
cut -d' ' -f1-3 /proc/loadavg > "$run/load-start"
echo "load average at start: $(cat "$run/load-start")"
for r in $(seq "$rounds"); do
  for m in "${files[@]}"; do
    name=$(basename "$m" .gguf)
    /usr/bin/time -f '%M' -o "$run/llama-$name-$r.rss" "$bin/llama-bench" -m "$m" -t "$threads" -p 512 -n 128 -r 1 \
        -o json > "$run/llama-$name-$r.json" 2>> "$run/llama.log"
    /usr/bin/time -f '%M' -o "$run/govbox-tg-$name-$r.rss" "$govbox" model bench --model "$m" --device cpu \
        --threads "$threads" -p 0 -n 128 -r 1 --kv-tokens 768 > "$run/govbox-tg-$name-$r.json" 2>> "$run/govbox.log"
    /usr/bin/time -f '%M' -o "$run/govbox-pp-$name-$r.rss" "$govbox" model bench --model "$m" --device cpu \
        --threads "$threads" -p 512 -n 0 -r 1 --kv-tokens 768 > "$run/govbox-pp-$name-$r.json" 2>> "$run/govbox.log"
  done
done
cut -d' ' -f1-3 /proc/loadavg > "$run/load-end"
echo "load average at end: $(cat "$run/load-end")"
"$py" - "$run" "$rounds" "${files[@]}" <<'PY'
import json, os, sys
run, rounds, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def rss(p):
    return int(open(p).read().split()[-1]) * 1024 / 1e6
def mean(xs):
    return sum(xs) / len(xs)
print(f"| file | MB | tg128 llama.cpp | tg128 govbox | ratio | pp512 llama.cpp | pp512 govbox | ratio "
      f"| peak RSS llama.cpp MB | peak RSS govbox MB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
summary = []
for f in files:
    n = os.path.basename(f)[:-5]
    lt, lp, gt, gp, lr, gr = [], [], [], [], [], []
    for r in range(1, rounds + 1):
        for t in json.load(open(f"{run}/llama-{n}-{r}.json")):
            (lt if t["n_gen"] else lp).append(t["avg_ts"])
        gt.append(json.load(open(f"{run}/govbox-tg-{n}-{r}.json"))["tg"]["mean_tps"])
        gp.append(json.load(open(f"{run}/govbox-pp-{n}-{r}.json"))["pp"]["mean_tps"])
        lr.append(rss(f"{run}/llama-{n}-{r}.rss"))
        gr.append(max(rss(f"{run}/govbox-tg-{n}-{r}.rss"), rss(f"{run}/govbox-pp-{n}-{r}.rss")))
    print(f"| {n} | {os.path.getsize(f) / 1e6:.0f} | {mean(lt):.1f} | {mean(gt):.1f} | {mean(gt) / mean(lt):.2f} "
          f"| {mean(lp):.1f} | {mean(gp):.1f} | {mean(gp) / mean(lp):.2f} | {max(lr):.0f} | {max(gr):.0f} |")
    summary.append({"file": n, "mb": os.path.getsize(f) / 1e6, "llama_tg": mean(lt), "govbox_tg": mean(gt),
                    "llama_pp": mean(lp), "govbox_pp": mean(gp), "llama_rss_mb": max(lr), "govbox_rss_mb": max(gr)})
json.dump({"rounds": rounds, "load_start": open(f"{run}/load-start").read().strip(),
           "load_end": open(f"{run}/load-end").read().strip(), "files": summary}, open(f"{run}/summary.json", "w"))
PY
