#!/usr/bin/env bash
# Makes (once) the GGUF files the benchmarks compare govbox and llama.cpp on, and prints their
# paths, one a line, in this order:
#   WORK/qwen2.5-0.5b-f16.gguf     random weights with Qwen2.5-0.5B's exact shapes
#                                  (make_bench_model.py), converted by llama.cpp's converter
#   WORK/qwen2.5-0.5b-q8_0.gguf    llama-quantize ... q8_0
#   WORK/qwen2.5-0.5b-q4_k_m.gguf  llama-quantize ... Q4_K_M (896 is not a multiple of 256, so
#                                  llama-quantize stores many tensors as Q5_0/Q8_0/Q6_K instead:
#                                  bench/gguf_facts.py reports the file's actual mix)
#   .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   the real model (scripts/fetch-models.sh)
# Each file is written under a .partial name and renamed when complete, so an interrupted run
# never leaves a file that a later run would take as finished.
#
# usage: bench/make-models.sh WORK    (WORK/llama must hold llama.cpp from bench/get-llama-cpp.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
work=${1:?usage: make-models.sh WORK}
work=$(cd "$work" && pwd)
bin=$work/llama/llama.cpp/build/bin
py=$work/llama/venv/bin/python
conv=$work/llama/llama.cpp/convert_hf_to_gguf.py
for f in "$bin/llama-quantize" "$py" "$conv"; do
  [ -e "$f" ] || { echo "make-models.sh: $f is missing; run bench/get-llama-cpp.sh $work/llama first" >&2; exit 1; }
done

f16=$work/qwen2.5-0.5b-f16.gguf
if [ ! -f "$f16" ]; then
  hf=$work/qwen2.5-0.5b-hf
  if [ ! -f "$hf/config.json" ] || [ ! -f "$hf/tokenizer.json" ]; then
    rm -rf "$hf.partial"
    echo "make-models.sh: writing the random-weight Qwen2.5-0.5B-shaped model" >&2
    "$py" "$here/make_bench_model.py" "$hf.partial" --shape qwen2.5-0.5b --tokenizer "$repo/tests/fixtures/tiny-qwen2" >&2
    rm -rf "$hf"; mv "$hf.partial" "$hf"
  fi
  echo "make-models.sh: converting to GGUF F16" >&2
  PYTHONPATH=$work/llama/llama.cpp/gguf-py "$py" "$conv" "$hf" --outtype f16 --outfile "$f16.partial" >&2
  mv "$f16.partial" "$f16"
fi
for q in q8_0 q4_k_m; do
  out=$work/qwen2.5-0.5b-$q.gguf
  if [ ! -f "$out" ]; then
    echo "make-models.sh: llama-quantize $q" >&2
    "$bin/llama-quantize" "$f16" "$out.partial" "$q" >/dev/null 2>"$work/quantize-$q.log" ||
      { echo "make-models.sh: llama-quantize $q failed; see $work/quantize-$q.log" >&2; exit 1; }
    mv "$out.partial" "$out"
  fi
done
smollm2=$("$repo/scripts/fetch-models.sh" smollm2)
printf '%s\n' "$f16" "$work/qwen2.5-0.5b-q8_0.gguf" "$work/qwen2.5-0.5b-q4_k_m.gguf" "$smollm2"
