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
# and then two of Qwen2.5-7B's shapes (7.6 B parameters):
#   WORK/qwen2.5-7b-q8_0.gguf      8.1 GB, written as Q8_0 by the converter itself (--outtype
#                                  q8_0), so that no 15 GB F16 file has to sit beside the 15 GB
#                                  safetensors folder; the folder is removed once converted
#   WORK/qwen2.5-7b-q4_k_m.gguf    4.7 GB, llama-quantize --allow-requantize from that Q8_0 file
#                                  (random weights: the speed does not depend on their values)
# The 7B files need about 24 GB of free disk while they are made and 13 GB after, and about
# 16 GB of memory (the safetensors folder is written in bfloat16).
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

# write_hf SHAPE DIR: the random-weight safetensors folder of SHAPE in DIR, unless it is there.
write_hf() {
  local shape=$1 hf=$2
  if [ ! -f "$hf/config.json" ] || [ ! -f "$hf/tokenizer.json" ]; then
    rm -rf "$hf.partial"
    echo "make-models.sh: writing the random-weight $shape-shaped model" >&2
    "$py" "$here/make_bench_model.py" "$hf.partial" --shape "$shape" --tokenizer "$repo/tests/fixtures/tiny-qwen2" >&2
    rm -rf "$hf"; mv "$hf.partial" "$hf"
  fi
}

# make_shape SHAPE: writes WORK/SHAPE-{f16,q8_0,q4_k_m}.gguf where missing.
make_shape() {
  local shape=$1 f16=$work/$1-f16.gguf hf=$work/$1-hf q out
  if [ ! -f "$f16" ]; then
    write_hf "$shape" "$hf"
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
# make_7b: WORK/qwen2.5-7b-{q8_0,q4_k_m}.gguf where missing (see the header for why not via F16).
make_7b() {
  local shape=qwen2.5-7b hf=$work/qwen2.5-7b-hf q8=$work/qwen2.5-7b-q8_0.gguf q4=$work/qwen2.5-7b-q4_k_m.gguf
  if [ ! -f "$q8" ]; then
    write_hf "$shape" "$hf"
    echo "make-models.sh: converting $shape to GGUF Q8_0" >&2
    PYTHONPATH=$work/llama/llama.cpp/gguf-py "$py" "$conv" "$hf" --outtype q8_0 --outfile "$q8.partial" \
        > "$work/convert-$shape.log" 2>&1 ||
      { echo "make-models.sh: converting $shape failed; see $work/convert-$shape.log" >&2; exit 1; }
    mv "$q8.partial" "$q8"
  fi
  rm -rf "$hf"
  if [ ! -f "$q4" ]; then
    echo "make-models.sh: llama-quantize --allow-requantize $shape q4_k_m" >&2
    "$bin/llama-quantize" --allow-requantize "$q8" "$q4.partial" q4_k_m >/dev/null 2>"$work/quantize-$shape-q4_k_m.log" ||
      { echo "make-models.sh: llama-quantize $shape q4_k_m failed; see $work/quantize-$shape-q4_k_m.log" >&2; exit 1; }
    mv "$q4.partial" "$q4"
  fi
}
if [ "$large" = 1 ]; then
  make_shape qwen2.5-1.5b
  printf '%s\n' "$work/qwen2.5-1.5b-f16.gguf" "$work/qwen2.5-1.5b-q8_0.gguf" "$work/qwen2.5-1.5b-q4_k_m.gguf"
  make_7b
  printf '%s\n' "$work/qwen2.5-7b-q8_0.gguf" "$work/qwen2.5-7b-q4_k_m.gguf"
fi
