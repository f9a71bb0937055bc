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
#   bench/n-choices.sh        (N=4 TOKENS=128 ROUNDS=3; BUILD=0 to skip cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-4}
tokens=${TOKENS:-128}
rounds=${ROUNDS:-3}
target_dir=${CARGO_TARGET_DIR:-target}
if [ "${BUILD:-1}" = 1 ]; then cargo build --release -q -p govbox-cli -p govbox-daemon; fi
govbox=$target_dir/release/govbox
govboxd=$target_dir/release/govboxd
gguf=$(scripts/fetch-models.sh smollm2)
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
state=$work/state
"$govbox" keygen --out "$work/v.key" --pub "$work/v.pub" >/dev/null
"$govbox" --state "$state" provision --hostname bench --trust-key "$work/v.pub" >/dev/null
token=$("$govbox" --state "$state" client add bench --models all --rpm 100000000 --token --cert-out "$work/c" 2>/dev/null |
  grep -o 'gbx_[A-Za-z0-9_-]*')
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'config_version = 2\nlisten = "127.0.0.1:%s"\n[[models]]\nname = "m"\npath = "%s"\n' "$port" "$gguf" > "$work/govbox.toml"
"$govboxd" --state "$state" --config "$work/govbox.toml" --insecure-dev-models > "$work/govboxd.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  curl -sf -o /dev/null --cacert "$state/tls/ca.crt" "https://127.0.0.1:$port/readyz" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/govboxd.log" >&2; exit 1; }
  sleep 0.1
done
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 bench/n-choices.py --url "https://127.0.0.1:$port/v1" --model m --token "$token" \
  --cacert "$state/tls/ca.crt" -n "$n" --max-tokens "$tokens" --rounds "$rounds"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
