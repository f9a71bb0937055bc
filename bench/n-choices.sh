#!/usr/bin/env bash
# What `n` choices in one request gain over the same number of separate requests (a benchmark,
# not a test).
#
# Starts govboxd (release build) on SmolLM2-135M-Instruct with the default per-client prefix
# cache, then alternates ROUNDS times: one chat request with n=N against N separate requests sent
# at once (bench/n-choices.py), both seeded alike, over a ~600-token system prompt. The n=N
# request computes the prompt's KV once and its choices hold it; the separate requests arrive
# together, so each computes it.
#
#   bench/n-choices.sh        (N=4 TOKENS=128 ROUNDS=3; BUILD=0 to skip cargo build, BIN_DIR for other binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-4}
tokens=${TOKENS:-128}
rounds=${ROUNDS:-3}
. bench/govboxd-lib.sh
bench_setup
bench_start ""
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 bench/n-choices.py --url "https://127.0.0.1:$port/v1" --model m --token "$token" \
  --cacert "$state/tls/ca.crt" -n "$n" --max-tokens "$tokens" --rounds "$rounds"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
