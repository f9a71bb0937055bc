#!/usr/bin/env bash
# Retrieval speed on the CPU: govbox against sentence-transformers on PyTorch, both limited to
# the same number of threads, on random-weight XLM-RoBERTa models of bge-reranker-base's shapes
# (bench/make_xlmr_bench_models.py; NOT the real weights, which do not change the cost) and
# Chinese documents of 100-300 characters:
#   1. reranking: CrossEncoder.predict vs govbox's RerankModel::score, one query against 32
#      documents per call (pairs/s), and one query against one document (latency);
#   2. embedding: SentenceTransformer.encode vs govbox's EmbeddingModel::embed on the same
#      documents, batches of 32 (bench/embeddings.py and engine/examples/embed_bench.rs).
# Each side runs BENCH_REPEAT times, alternating; the best of each metric is reported, with the
# load average before and after.
#
# usage: bench/rerank-bench.sh
# env:   BENCH_THREADS (2), BENCH_ROUNDS (1), BENCH_SINGLE (8), BENCH_REPEAT (2), BENCH_LAYERS (12),
#        BENCH_DOCS (64: documents used of the 256 made),
#        ST_VENV: a venv with torch and sentence-transformers (default /work/wt/venv-torch if present,
#        else bench/work/st-venv, made on first use).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
threads=${BENCH_THREADS:-2}
rounds=${BENCH_ROUNDS:-1}
single=${BENCH_SINGLE:-8}
repeat=${BENCH_REPEAT:-2}
layers=${BENCH_LAYERS:-12}
ndocs=${BENCH_DOCS:-64}
work=$root/bench/work/retrieval-$layers
venv=${ST_VENV:-/work/wt/venv-torch}
[ -x "$venv/bin/python" ] || venv=$root/bench/work/st-venv
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
export RAYON_NUM_THREADS=$threads TOKENIZERS_PARALLELISM=false

if ! "$venv/bin/python" -c "import sentence_transformers" 2>/dev/null; then
  echo "== setting up $venv (sentence-transformers)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch transformers sentence-transformers
fi
if [ ! -f "$work/reranker/model.safetensors" ]; then
  "$venv/bin/python" "$root/bench/make_xlmr_bench_models.py" "$work.partial" --layers "$layers"
  mv "$work.partial" "$work"
fi
# The tokenizer and documents are cheap: rewritten each run, so that a change to them applies.
"$venv/bin/python" "$root/bench/make_xlmr_bench_models.py" "$work" --layers "$layers" > /dev/null
python3 - "$work/docs.json" "$ndocs" "$work/set.json" "$work/sentences.json" <<'PY'
import json, sys
job = json.load(open(sys.argv[1])); n = int(sys.argv[2])
json.dump({"queries": job["queries"], "documents": job["documents"][:n]}, open(sys.argv[3], "w"), ensure_ascii=False)
json.dump(job["documents"][:n], open(sys.argv[4], "w"), ensure_ascii=False)
PY

echo "== building the govbox benches (release)" >&2
(cd "$root" && cargo build -q --release --example rerank_bench --example embed_bench -p govbox-engine)
bin=${CARGO_TARGET_DIR:-$root/target}/release/examples

load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "load average before: $(load)"
rargs=(--model "$work/reranker" --docs "$work/set.json" --threads "$threads" --batch 32 --rounds "$rounds" --single "$single")
eargs=(--model "$work/embedder" --sentences "$work/sentences.json" --threads "$threads" --batch 32 --rounds "$rounds" --single "$single")
rg=() rs=() eg=() es=()
for i in $(seq 1 "$repeat"); do
  echo "== run $i/$repeat" >&2
  "$bin/rerank_bench" "${rargs[@]}" > "$work/rerank-govbox.$i.json"
  "$venv/bin/python" "$root/bench/rerank.py" st "${rargs[@]}" > "$work/rerank-st.$i.json" 2> "$work/rerank-st.$i.log"
  "$bin/embed_bench" "${eargs[@]}" > "$work/embed-govbox.$i.json"
  "$venv/bin/python" "$root/bench/embeddings.py" st "${eargs[@]}" > "$work/embed-st.$i.json" 2> "$work/embed-st.$i.log"
  rg+=("$work/rerank-govbox.$i.json") rs+=("$work/rerank-st.$i.json")
  eg+=("$work/embed-govbox.$i.json") es+=("$work/embed-st.$i.json")
done
echo "load average after: $(load)"
echo
echo "== reranking: random-weight bge-reranker-base shapes ($layers layers), $ndocs Chinese documents of 100-300 characters"
python3 "$root/bench/rerank.py" report --govbox "${rg[@]}" --st "${rs[@]}"
echo
echo "== embedding: random-weight XLM-RoBERTa embedder of the same shapes, CLS pooling, same documents"
python3 "$root/bench/embeddings.py" report --govbox "${eg[@]}" --st "${es[@]}"
