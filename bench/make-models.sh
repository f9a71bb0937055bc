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
# and with --large, after those four, the same three files of Qwen2.5-1.5B's shapes:
#   WORK/qwen2.5-1.5b-f16.gguf, WORK/qwen2.5-1.5b-q8_0.gguf, WORK/qwen2.5-1.5b-q4_k_m.gguf
#                                  (hidden size 1536 = 6 x 256: Q4_K_M is then mostly Q4_K with
#                                  some Q6_K, as in real files of larger models)
# Each file is written under a .partial name and renamed when complete, so an interrupted run
# never leaves a file that a later run would take as finished.
#
# usage: bench/make-models.sh WORK [--large]
#        (WORK/llama must hold llama.cpp from bench/get-llama-cpp.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
work=${1:?usage: make-models.sh WORK [--large]}
work=$(cd "$work" && pwd)
large=0
case "${2:-}" in
  "") ;;
  --large) large=1 ;;
  *) echo "make-models.sh: unknown option '$2' (usage: make-models.sh WORK [--large])" >&2; exit 2 ;;
esac
bin=$work/llama/llama.cpp/build/bin
py=$work/llama/venv/bin/python
conv=$work/llama/llama.cpp/convert_hf_to_gguf.py
for f in "$bin/llama-quantize" "$py" "$conv"; do
  [ -e "$f" ] || { echo "make-models.sh: $f is missing; run bench/get-llama-cpp.sh $work/llama first" >&2; exit 1; }
done

# make_shape SHAPE: writes WORK/SHAPE-{f16,q8_0,q4_k_m}.gguf where missing.
make_shape() {
  local shape=$1 f16=$work/$1-f16.gguf hf=$work/$1-hf q out
  if [ ! -f "$f16" ]; then
    if [ ! -f "$hf/config.json" ] || [ ! -f "$hf/tokenizer.json" ]; then
      rm -rf "$hf.partial"
      echo "make-models.sh: writing the random-weight $shape-shaped model" >&2
      "$py" "$here/make_bench_model.py" "$hf.partial" --shape "$shape" --tokenizer "$repo/tests/fixtures/tiny-qwen2" >&2
      rm -rf "$hf"; mv "$hf.partial" "$hf"
    fi
    echo "make-models.sh: converting $shape to GGUF F16" >&2
    PYTHONPATH=$work/llama/llama.cpp/gguf-py "$py" "$conv" "$hf" --outtype f16 --outfile "$f16.partial" >&2
    mv "$f16.partial" "$f16"
  fi
  for q in q8_0 q4_k_m; do
    out=$work/$shape-$q.gguf
    if [ ! -f "$out" ]; then
      echo "make-models.sh: llama-quantize $shape $q" >&2
      "$bin/llama-quantize" "$f16" "$out.partial" "$q" >/dev/null 2>"$work/quantize-$shape-$q.log" ||
        { echo "make-models.sh: llama-quantize $shape $q failed; see $work/quantize-$shape-$q.log" >&2; exit 1; }
      mv "$out.partial" "$out"
    fi
  done
}
make_shape qwen2.5-0.5b
smollm2=$("$repo/scripts/fetch-models.sh" smollm2)
printf '%s\n' "$work/qwen2.5-0.5b-f16.gguf" "$work/qwen2.5-0.5b-q8_0.gguf" "$work/qwen2.5-0.5b-q4_k_m.gguf" "$smollm2"
if [ "$large" = 1 ]; then
  make_shape qwen2.5-1.5b
  printf '%s\n' "$work/qwen2.5-1.5b-f16.gguf" "$work/qwen2.5-1.5b-q8_0.gguf" "$work/qwen2.5-1.5b-q4_k_m.gguf"
fi
