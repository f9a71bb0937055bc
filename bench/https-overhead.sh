#!/usr/bin/env bash
# What HTTPS, bearer-token auth and routing add to an embedding call (a benchmark, not a test).
#
# Starts govboxd on a free loopback port with its own temporary state folder and the MiniLM
# embedding model, then, in the same run and alternating so that load from other work on the
# machine hits both sides alike:
#   in-process  engine/examples/embed_latency: Engine::embed(&[TEXT]) from 1 and from 32 caller
#               threads, back to back, for DURATION seconds each;
#   HTTPS       wrk, POST /v1/embeddings {"model", "input": TEXT} with a bearer token, over 1 and
#               over 32 keep-alive connections, for DURATION seconds each;
# and once, GET /healthz over 1 and 32 connections (TLS + HTTP + routing, no engine, no auth).
# Both sides use THREADS engine threads and at most MAX_CONCURRENT engine calls at once
# (govboxd's [serving] max_concurrent; the in-process callers wait on a semaphore of that size).
# The client (wrk, one thread) runs on the same cores as govboxd and is part of the HTTPS cost.
#
# Prints a table (p50/p90/p99/mean latency, throughput, govboxd's own mean request time from its
# /metrics histogram, CPU per request of govboxd / the in-process timer and of wrk) and, per
# round and as the median over rounds, the overheads in ms:
#   (a) p50(HTTPS, 1 connection) - p50(in-process, 1 caller): per-request overhead, no queueing;
#   (b) with 32: 1/throughput_https - 1/throughput_inproc (per-request cost on the cores),
#       and the p50 and p99 differences;
#   (c) CPU per request, govboxd minus in-process (robust to other load on the machine);
#   (d) at 1: govboxd's own mean time minus in-process mean (handler: auth, JSON, admission,
#       blocking-thread hand-off), and wrk's mean minus govboxd's (TLS, HTTP, sockets, wrk).
# The target is an overhead under TARGET_MS (1 ms) at p50.
#
#   bench/https-overhead.sh     (DURATION=6 ROUNDS=4 HEALTHZ_DURATION=4 THREADS=2 MAX_CONCURRENT=4
#                                TEXT=... TARGET_MS=1 BUILD=0 to skip cargo build, NICE=-10 to
#                                run govboxd, wrk and the timer at a higher priority)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
duration=${DURATION:-6}
rounds=${ROUNDS:-4}
hz_duration=${HEALTHZ_DURATION:-4}
threads=${THREADS:-2}
max_concurrent=${MAX_CONCURRENT:-4}
text=${TEXT:-The quick brown fox jumps over the lazy dog.}
target_ms=${TARGET_MS:-1}
build=${BUILD:-1}
nice_n=${NICE:-0}
conns=(1 32)
nice_cmd=()
[ "$nice_n" = 0 ] || nice_cmd=(nice -n "$nice_n")

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }

if [ "$build" = 1 ]; then
  echo "== building govbox, govboxd and the in-process timer (release)" >&2
  cargo build --release -q -p govbox-cli -p govbox-daemon
  cargo build --release -q -p govbox-engine --example embed_latency
fi
govbox=$root/target/release/govbox
govboxd=$root/target/release/govboxd
timer=$root/target/release/examples/embed_latency
minilm=$(scripts/fetch-models.sh minilm)

work=$(mktemp -d "${TMPDIR:-/tmp}/govbox-https-bench.XXXXXX")
state=$work/state
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== provisioning a temporary state folder" >&2
mkdir -p "$state/vendor"
chmod 700 "$state" "$state/vendor"
"$govbox" keygen --out "$state/vendor/bench.key" --pub "$state/vendor/bench.pub" >/dev/null
"$govbox" --state "$state" provision --hostname govbox-bench --trust-key "$state/vendor/bench.pub" >/dev/null
# --rpm: the bench measures throughput, far above [serving] default_client_rpm.
token=$("$govbox" --state "$state" client add bench --models all --scope inference,metrics --token --rpm 100000000 --cert-out "$state/clients/bench" \
  | grep -o 'gbx_[A-Za-z0-9_-]*' | head -n1)
[ -n "$token" ] || { echo "no bearer token from 'govbox client add'" >&2; exit 1; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/govbox.toml" <<TOML
config_version = 1
listen = "127.0.0.1:$port"
threads = $threads
log_level = "warn"

# wrk's 32 connections and the /metrics scrapes all come from 127.0.0.1.
[limits]
max_connections_per_address = 64

[serving]
max_concurrent = $max_concurrent
queue_depth = 64

[[models]]
name = "minilm"
path = "$minilm"
TOML

echo "== starting govboxd on https://127.0.0.1:$port" >&2
# The bench serves the MiniLM folder as a dev model (the same weights a signed package would hold);
# govboxd refuses unsigned [[models]] folders unless told this is development.
"${nice_cmd[@]}" "$govboxd" --state "$state" --config "$work/govbox.toml" --insecure-dev-models >"$work/govboxd.log" 2>&1 &
pid=$!
code=000
for _ in $(seq 1 600); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$state/tls/ca.crt" "https://127.0.0.1:$port/readyz" || true)
  [ "$code" = 200 ] && break
  kill -0 "$pid" 2>/dev/null || { echo "govboxd exited:" >&2; cat "$work/govboxd.log" >&2; exit 1; }
  sleep 0.1
done
[ "$code" = 200 ] || { echo "govboxd did not become ready in 60 s" >&2; cat "$work/govboxd.log" >&2; exit 1; }

body=$(TEXT=$text python3 -c 'import json, os; print(json.dumps({"model": "minilm", "input": os.environ["TEXT"]}))')
dim=$(curl -sf --cacert "$state/tls/ca.crt" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d "$body" "https://127.0.0.1:$port/v1/embeddings" \
  | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["data"][0]["embedding"]))')
echo "== one embedding call answered with a $dim-dimensional vector" >&2

results=$work/results.jsonl
lua=$root/bench/https/wrk.lua
report=$root/bench/https/report.py
url=https://127.0.0.1:$port

# CPU seconds (user + system, all threads) govboxd has used so far; /proc counts in USER_HZ = 100.
server_cpu() { awk '{ sub(/^.*\) /, ""); print ($12 + $13) / 100 }' "/proc/$pid/stat"; }

# "SUM COUNT" of govboxd's own request-duration histogram for ROUTE (arrival of the request, after
# TLS and header parsing, to the last byte of its answer).
server_time() { # ROUTE
  curl -sf --cacert "$state/tls/ca.crt" -H "Authorization: Bearer $token" "$url/metrics" | awk -v r="\"$1\"" '
    /^govbox_request_duration_seconds_sum\{/ && index($0, r) { s = $NF }
    /^govbox_request_duration_seconds_count\{/ && index($0, r) { c = $NF }
    END { print (s == "" ? 0 : s), (c == "" ? 0 : c) }'
}

wrk_run() { # NAME CONC ROUND DURATION METHOD PATH
  local out cpu0 cpu1 client t0 t1
  t0=$(server_time "$6")
  cpu0=$(server_cpu)
  # bash's `time` gives wrk's own CPU time (TIMEFORMAT: user + system seconds).
  out=$( { TIMEFORMAT='WRKCPU %U %S'; time GBX_METHOD=$5 GBX_BODY=$body GBX_TOKEN=$token \
    "${nice_cmd[@]}" wrk -t1 -c"$2" -d"$4"s --timeout 10s -s "$lua" "$url$6"; } 2>&1 )
  cpu1=$(server_cpu)
  t1=$(server_time "$6")
  client=$(awk '/^WRKCPU/ { print $2 + $3 }' <<<"$out")
  if [ "$3" -gt 0 ]; then
    python3 "$report" wrk "$1" "$2" "$3" "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { print b - a }')" "$client" \
      "$t0" "$t1" <<<"$out" >>"$results"
  fi
}
inproc_run() { # CONC ROUND
  "${nice_cmd[@]}" "$timer" --model "$minilm" --text "$text" --threads "$threads" --callers "$1" --duration "$duration" \
    --max-concurrent "$max_concurrent" --warmup 1 | python3 "$report" inproc inproc-embed "$2" >>"$results"
}

echo "== warming govboxd up (3 s, not counted)" >&2
wrk_run warmup 32 0 3 POST /v1/embeddings

for r in $(seq 1 "$rounds"); do
  for c in "${conns[@]}"; do
    echo "== round $r/$rounds, $c caller(s)/connection(s): in-process, then HTTPS (${duration} s each)" >&2
    inproc_run "$c" "$r"
    wrk_run https-embeddings "$c" "$r" "$duration" POST /v1/embeddings
  done
done
for c in "${conns[@]}"; do
  echo "== GET /healthz over $c connection(s) (${hz_duration} s)" >&2
  wrk_run https-healthz "$c" 1 "$hz_duration" GET /healthz
done

tokens=$(python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline()).get("input_tokens", "?"))' "$results")
echo
echo "govbox HTTPS overhead on /v1/embeddings: model MiniLM-L6 ($dim dims), input \"$text\" ($tokens tokens),"
echo "engine threads $threads, max_concurrent $max_concurrent, $(nproc) cores (load average $(cut -d' ' -f1-3 /proc/loadavg)), wrk 1 thread,"
echo "$rounds alternating rounds of ${duration} s per run, nice $nice_n"
echo
python3 "$report" table "$results" "$target_ms"
