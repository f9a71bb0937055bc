#!/usr/bin/env bash
# Sentence-embedding speed: govbox's CPU backend against sentence-transformers on PyTorch (CPU),
# both limited to the same number of threads, on the same sentences (15-25 words each).
# Measures batch throughput (batches of 32) and single-sentence latency, prints the ratios, and
# checks that both sides produced the same vectors.
#
# usage: bench/embed-bench.sh [MODEL_DIR]        (default: .cache/models/minilm)
# env:   BENCH_THREADS (2), BENCH_ROUNDS (3), BENCH_SINGLE (64), BENCH_SENTENCES (256),
#        BENCH_REPEAT (3: alternating runs of each side; the best of each metric is reported)
#        On a shared, busy machine PyTorch's OpenMP threads lose far more than rayon's when the
#        cores are oversubscribed, so the 2-thread ratios then flatter govbox; compare with
#        BENCH_THREADS=1 too.
#        TORCH_VENV: an existing venv whose torch to reuse (default bench/work/llama/venv, if it
#        has torch), so that the first run need not download PyTorch again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-${GOVBOX_MINILM_DIR:-$root/.cache/models/minilm}}
model=$(cd "$model" && pwd)
threads=${BENCH_THREADS:-2}
rounds=${BENCH_ROUNDS:-3}
single=${BENCH_SINGLE:-64}
work=$root/bench/work/embed
venv=$root/bench/work/st-venv
mkdir -p "$work"

# One budget of threads for every library on both sides.
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
export RAYON_NUM_THREADS=$threads TOKENIZERS_PARALLELISM=false

if ! "$venv/bin/python" -c "import sentence_transformers" 2>/dev/null; then
  echo "== setting up $venv (sentence-transformers)" >&2
  python3 -m venv "$venv"
  torch_venv=${TORCH_VENV:-$root/bench/work/llama/venv}
  if [ -x "$torch_venv/bin/python" ] && "$torch_venv/bin/python" -c "import torch" 2>/dev/null \
     && [ "$("$torch_venv/bin/python" -c 'import sys; print(sys.version_info[:2])')" \
          = "$("$venv/bin/python" -c 'import sys; print(sys.version_info[:2])')" ]; then
    # Reuse that venv's torch (a multi-GB download) through a .pth; packages installed into
    # this venv still come first on sys.path.
    purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'
    "$torch_venv/bin/python" -c "$purelib" > "$("$venv/bin/python" -c "$purelib")/reuse-torch.pth"
    echo "   reusing torch from $torch_venv" >&2
  fi
  "$venv/bin/pip" install -q sentence-transformers
fi

python3 "$root/bench/embeddings.py" gen --out "$work/sentences.json" --n "${BENCH_SENTENCES:-256}"

echo "== building the govbox bench (release)" >&2
(cd "$root" && cargo build -q --release --example embed_bench -p govbox-engine)

args=(--model "$model" --sentences "$work/sentences.json" --threads "$threads" --batch 32
      --rounds "$rounds" --single "$single")
# Alternate the two sides so that a busy spell on a shared machine hits both; report the best.
repeat=${BENCH_REPEAT:-3}
gfiles=() sfiles=()
for i in $(seq 1 "$repeat"); do
  echo "== run $i/$repeat: govbox, $threads threads" >&2
  "${CARGO_TARGET_DIR:-$root/target}/release/examples/embed_bench" "${args[@]}" > "$work/govbox.$i.json"
  echo "== run $i/$repeat: sentence-transformers, $threads threads" >&2
  "$venv/bin/python" "$root/bench/embeddings.py" st "${args[@]}" > "$work/st.$i.json" 2> "$work/st.$i.log"
  gfiles+=("$work/govbox.$i.json") sfiles+=("$work/st.$i.json")
done

echo
echo "model: $model"
python3 "$root/bench/embeddings.py" report --govbox "${gfiles[@]}" --st "${sfiles[@]}"
