#!/usr/bin/env bash
# What grammar-constrained sampling (response_format json_schema, required tool calls) costs per
# token on SmolLM2-135M-Instruct, beside unconstrained decoding in the same run (a benchmark, not
# a test). engine/examples/grammar_bench.rs: ROUNDS alternating rounds of TOKENS greedy tokens
# unconstrained and under a JSON schema that cannot close sooner, then the mask alone replayed
# over the constrained answer's tokens. The bar (issue 22): the mask <= 10 % of decode time.
#
#   bench/grammar-mask.sh        (ROUNDS=3 TOKENS=128 THREADS=2 PROFILE=release; PROFILE=test is
#   opt-level 2 without the release build's thin LTO)
set -euo pipefail
cd "$(dirname "$0")/.."
gguf=$(scripts/fetch-models.sh smollm2)
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo run --profile "${PROFILE:-release}" -q -p govbox-engine --example grammar_bench -- "$gguf" \
  --rounds "${ROUNDS:-3}" --tokens "${TOKENS:-128}" --threads "${THREADS:-2}"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
