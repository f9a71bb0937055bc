#!/usr/bin/env bash
# What `[serving] prefix_cache = "per_client"` costs against "shared" (a benchmark, not a test).
#
# Starts govboxd (release build) on SmolLM2-135M-Instruct, once per mode and ROUNDS times,
# alternating the modes so that other load on the machine hits both alike. Each start: one warm-up
# request, then 8 concurrent streams of TOKENS tokens (bench/serve_client.py, one client), then the
# same client sends a ~600-token system prompt twice and the script prints the second answer's
# usage.prompt_tokens_details.cached_tokens and time. Both modes let a client reuse its own
# prefixes, so the figures should agree within noise; only other clients' reuse differs.
#
#   bench/prefix-cache-modes.sh        (ROUNDS=3 TOKENS=128 BUILD=0 to skip cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
tokens=${TOKENS:-128}
. bench/govboxd-lib.sh
bench_setup
system=$(python3 -c 'print(" ".join(f"rule {i}: answer briefly and politely." for i in range(60)))')
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$rounds"); do
  for mode in per_client shared; do
    bench_start "prefix_cache = \"$mode\""
    args=(--url "https://127.0.0.1:$port/v1" --model m --token "$token" --cacert "$state/tls/ca.crt")
    python3 bench/serve_client.py streams "${args[@]}" -c 1 -n 8 > /dev/null
    python3 bench/serve_client.py streams "${args[@]}" -c 8 -n "$tokens" |
      python3 -c 'import json,sys; r=json.load(sys.stdin); print("round '"$round"' %-10s 8 streams x %d: %.0f tokens/s" % ("'"$mode"'", r["max_tokens"], r["aggregate_tps"]))'
    for q in "What is rule 3?" "What is rule 7?"; do
      body=$(python3 -c 'import json,sys; print(json.dumps({"model": "m", "max_tokens": 1, "temperature": 0,
        "messages": [{"role": "system", "content": sys.argv[1]}, {"role": "user", "content": sys.argv[2]}]}))' "$system" "$q")
      curl -sS --cacert "$state/tls/ca.crt" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -w ' %{time_total}' -d "$body" "https://127.0.0.1:$port/v1/chat/completions"; echo
    done | tail -1 | python3 -c 'import json,sys; t=sys.stdin.read(); j,_,s=t.strip().rpartition(" "); u=json.loads(j)["usage"]
print("round '"$round"' %-10s repeat of a %d-token prompt: cached_tokens %d, answered in %.3f s" % ("'"$mode"'", u["prompt_tokens"], u["prompt_tokens_details"]["cached_tokens"], float(s)))'
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
