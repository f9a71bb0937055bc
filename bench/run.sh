#!/usr/bin/env bash
# One command that benchmarks govbox against llama.cpp side by side on this machine and writes
# bench/RESULTS.md (absolute figures, ratios against the targets, each marked met or missed).
#
#   bench/run.sh [--quick] [--large [--ctx N,N]] [--families] [--threads N] [--no-build] [--nice N] [--out FILE]
#
# Both sides run with the same thread count (2 unless --threads) on the same GGUF files:
#   models   bench/make-models.sh: random weights of Qwen2.5-0.5B's shapes as F16, Q8_0 and
#            Q4_K_M (llama-quantize), and the real SmolLM2-135M-Instruct Q4_1;
#   memory   a STREAM-like triad (bench/triad.c, gcc -O3 -march=native -fopenmp), best of N;
#   speed    decode tg128 and prefill pp512: `govbox model bench` against `llama-bench` (govbox's
#            prefill repetitions run as separate processes: its prefix cache would otherwise serve
#            the repeated prompt of the second and later repetitions);
#   serving  govboxd (HTTPS, bearer token, a signed package of the Q8_0 file imported into a
#            fresh state folder) against `llama-server -np 8 --cont-batching` (HTTP), both on
#            loopback with the same KV budget: 1 and 8 concurrent streams of 128 tokens
#            (bench/serve_client.py), TTFT of a request sharing a ~1,000-token system prompt with
#            the one before it, and govboxd's peak VmRSS while serving;
#   roofline Q8_0 decode tokens/s as a share of (triad bandwidth / weight bytes read per token),
#            the triad run again just before each file's govbox decode (the host's bandwidth
#            moves during a long run: 28.6 to 30.2 GB/s within minutes on the Intel Xeon VM).
# The servers run one after the other, never together, and are stopped on any exit.
# --quick: one repetition, Q8_0 and SmolLM2 only for speed, 64-token streams, fewer triad passes.
# --large: also the Qwen2.5-1.5B- and 7B-shaped Q8_0 and Q4_K_M files (bench/make-models.sh --large)
#          in the speed rows (rooflines too); govboxd's start to ready on a signed package of the
#          7B Q4_K_M file against `cat` of it, cold and warm, with its peak RSS
#          (bench/start-to-ready.sh); and long contexts on the 1.5B Q8_0 file: for each prompt
#          length of --ctx (default 8192,32736: a prompt and its 32 tokens fill the 32k context)
#          and each KV type (f16, q8_0 on both sides, llama.cpp with -fa on), prefill of that many
#          tokens and decode of 32 tokens at that depth, from one prefill per side, and each
#          process's peak RSS (bench/longctx-bench.sh). At 32k on 2 cores this part alone takes
#          hours: --ctx 8192 to leave 32k out.
# --families: also the model families of issue 23, each side by side with llama.cpp on the same
#          files: a Qwen3-MoE of 3.16 B parameters (0.6 B active) as Q8_0 and Q4_K_M
#          (bench/moe-bench.sh: tg128, pp512, peak RSS), and a Gemma-3-1B shape at a 4k context,
#          windowed against its dense twin (bench/gemma3-window-bench.sh: KV bytes, decode at depth,
#          peak RSS). On the idle 2-core dev machine, with the files made, moe-bench.sh took 2.5 min
#          for 2 rounds and the Gemma run 3 min (making the files takes about 15 min more and 15 GB
#          of disk for a while).
# Everything is built and kept under bench/work (git-ignored); this run's raw JSON is in
# bench/work/run/. Measured on the 2-core dev machine at a load average of 5-9 (other builds):
# full 37 min, --quick 6-10 min, both without the cargo build; an idle machine should need well
# under half of that, as llama.cpp's figures were 3-10x lower under that load.
# Other load on the machine distorts every figure (llama.cpp's spinning thread pool far more than
# govbox): the report records the load average, and the script warns when it is above 0.5 at the
# start. --nice -10 runs every measured process (both sides, the triad, the client) at a higher
# priority, which softens but does not remove the effect; it needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
work=$here/work
run=$work/run
threads=2
quick=0
build=1
out=$here/RESULTS.md
nice_n=0
large=0
families=0
ctx_list=8192,32736
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1; shift ;;
    --large) large=1; shift ;;
    --families) families=1; shift ;;
    --ctx) ctx_list=${2:?--ctx needs a list of prompt lengths}; shift 2 ;;
    --threads) threads=${2:?--threads needs a number}; shift 2 ;;
    --no-build) build=0; shift ;;
    --out) out=${2:?--out needs a file}; shift 2 ;;
    --nice) nice_n=${2:?--nice needs a number}; shift 2 ;;
    -h|--help) sed -n '2,44p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $threads in ''|*[!0-9]*|0) echo "run.sh: --threads must be a positive whole number, not '$threads'" >&2; exit 2 ;; esac
case ,$ctx_list, in *,,*|*[!0-9,]*) echo "run.sh: --ctx must be prompt lengths separated by commas, not '$ctx_list'" >&2; exit 2 ;; esac
case $nice_n in ''|*[!0-9-]*|?*-*) echo "run.sh: --nice must be a whole number (-20 to 19), not '$nice_n'" >&2; exit 2 ;; esac
nice_cmd=()
if [ "$nice_n" != 0 ]; then
  [ -z "$(nice -n "$nice_n" true 2>&1)" ] ||
    { echo "run.sh: cannot run at nice $nice_n (a negative value needs root)" >&2; exit 2; }
  nice_cmd=(nice -n "$nice_n")
fi

if [ "$quick" = 1 ]; then
  reps=1; stream_tokens=64; triad_passes=5
else
  reps=3; stream_tokens=128; triad_passes=20
fi
kv_tokens=4096      # govboxd's [serving] kv_tokens and llama-server's -c (unified KV): the same budget
kv_dtype=f16        # govboxd's [serving] kv_dtype: llama-server's default cache type
prefix_tokens=1000

log() { echo "== [$(date -u +%H:%M:%S)] $*" >&2; }
die() { echo "run.sh: $*" >&2; exit 1; }
for tool in gcc curl python3; do command -v "$tool" >/dev/null || die "$tool is needed (apt-get install -y $tool)"; done

server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t_start=$(date +%s)
mkdir -p "$work"
rm -rf "$run"
mkdir -p "$run"
log "llama.cpp tools (bench/get-llama-cpp.sh)"
"$here/get-llama-cpp.sh" "$work/llama" >/dev/null
bin=$work/llama/llama.cpp/build/bin
py=$work/llama/venv/bin/python
gguf_py=$work/llama/llama.cpp/gguf-py

log "models (bench/make-models.sh)"
large_args=()
[ "$large" = 1 ] && large_args=(--large)
mapfile -t models < <("$here/make-models.sh" "$work" "${large_args[@]}")
[ "${#models[@]}" = $((4 + 5 * large)) ] || die "bench/make-models.sh gave ${#models[@]} paths, expected $((4 + 5 * large))"
f16=${models[0]}; q8=${models[1]}; q4km=${models[2]}; smol=${models[3]}
if [ "$large" = 1 ]; then q8_large=${models[5]}; q4km_large=${models[6]}; q8_7b=${models[7]}; q4km_7b=${models[8]}; fi

t_build=$(date +%s)
if [ "$build" = 1 ]; then
  log "building govbox and govboxd (cargo build --release)"
  (cd "$repo" && cargo build --release -q -p govbox-cli -p govbox-daemon) || die "cargo build failed"
fi
for b in govbox govboxd; do
  [ -x "$repo/target/release/$b" ] || die "$repo/target/release/$b is missing; run without --no-build"
  # A copy, so that a rebuild in the checkout during the run cannot swap the binary under it.
  mkdir -p "$work/bin"; cp "$repo/target/release/$b" "$work/bin/$b.new"; mv -f "$work/bin/$b.new" "$work/bin/$b"
done

# The load when the measurements start (after any build).
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${load_start%% *}" 'BEGIN { exit !(l > 0.5) }'; then
  echo "run.sh: WARNING: load average is $load_start; other work on the machine distorts the figures" >&2
fi
govbox=$work/bin/govbox
govboxd=$work/bin/govboxd

log "machine facts"
{
  echo "{"
  echo "\"date_utc\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "\"cpu\": $(lscpu | sed -n 's/^Model name: *//p' | head -1 | "$py" -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),"
  echo "\"cores\": $(nproc),"
  echo "\"mem_gib\": $(awk '/MemTotal/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo),"
  echo "\"l3\": \"$(lscpu | sed -n 's/^L3 cache: *//p' | head -1)\","
  echo "\"kernel\": \"$(uname -r)\","
  echo "\"govbox_commit\": \"$(cd "$repo" && git rev-parse --short HEAD)$(cd "$repo" && git diff --quiet HEAD -- engine drivers daemon cli || echo '+uncommitted changes')\","
  echo "\"llama_cpp\": $("$bin/llama-server" --version 2>&1 | grep -m1 -i version | "$py" -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),"
  echo "\"llama_amx_off\": $(grep -q '^CMAKE_CXX_FLAGS:STRING=.*-mno-amx-int8' "$bin/../CMakeCache.txt" 2>/dev/null && echo true || echo false),"
  echo "\"nice\": $nice_n, \"build_s\": $(( $(date +%s) - t_build )),"
  echo "\"threads\": $threads, \"quick\": $([ "$quick" = 1 ] && echo true || echo false), \"reps\": $reps,"
  echo "\"large\": $([ "$large" = 1 ] && echo true || echo false), \"ctx\": [$ctx_list],"
  echo "\"stream_tokens\": $stream_tokens, \"kv_tokens\": $kv_tokens, \"kv_dtype\": \"$kv_dtype\", \"prefix_tokens\": $prefix_tokens,"
  echo "\"load_start\": \"$load_start\""
  echo "}"
} > "$run/machine.json"
"$py" -c 'import json,sys; json.load(open(sys.argv[1]))' "$run/machine.json" || die "machine facts are not valid JSON"

log "memory bandwidth: STREAM-like triad, $threads threads"
mkdir -p "$work/bin"
gcc -O3 -march=native -fopenmp "$here/triad.c" -o "$work/bin/triad" || die "cannot compile bench/triad.c"
# Each array twice the last-level cache (at least 512 MiB), so no pass is served from cache.
l3_mib=$(lscpu -B 2>/dev/null | sed -n 's/^L3 cache: *\([0-9]*\).*/\1/p' | head -1)
l3_mib=$(( ${l3_mib:-0} / 1048576 ))
triad_mib=$(( 2 * l3_mib > 512 ? 2 * l3_mib : 512 ))
# One triad into the JSON file $1 (the run's first, and one before each file's decode below).
triad_into() {
  OMP_NUM_THREADS=$threads OMP_PROC_BIND=spread "${nice_cmd[@]}" "$work/bin/triad" "$triad_mib" "$triad_passes" > "$1" ||
    die "the triad failed: $(cat "$1")"
}
triad_into "$run/triad.json"
cat "$run/triad.json" >&2

log "GGUF facts (tensor types, bytes read per token)"
PYTHONPATH=$gguf_py "$py" "$here/gguf_facts.py" "${models[@]}" > "$run/gguf.jsonl" || die "bench/gguf_facts.py failed"

if [ "$quick" = 1 ]; then speed_models=("$q8" "$smol"); else speed_models=("$q8" "$q4km" "$f16" "$smol"); fi
[ "$large" = 1 ] && speed_models+=("$q8_large" "$q4km_large" "$q8_7b" "$q4km_7b")
: > "$run/speed.jsonl"
for m in "${speed_models[@]}"; do
  name=$(basename "$m" .gguf)
  log "$name: llama-bench -t $threads -p 512 -n 128 -r $reps"
  "${nice_cmd[@]}" "$bin/llama-bench" -m "$m" -t "$threads" -p 512 -n 128 -r "$reps" -o json > "$run/llama-bench-$name.json" \
      2> "$run/llama-bench-$name.log" || {
    rc=$?
    [ "$rc" = 132 ] && grep -q amx_int8 /proc/cpuinfo &&
      echo "run.sh: llama-bench died with SIGILL on a CPU that lists AMX: rebuild llama.cpp without it" \
        "(rm -rf $work/llama/llama.cpp/build; LLAMA_AMX=off bench/get-llama-cpp.sh $work/llama)" >&2
    die "llama-bench failed on $m (exit $rc); see $run/llama-bench-$name.log"
  }
  # The bandwidth now, for this file's roofline (write_results.py; the run's first triad where
  # this one is missing).
  triad_into "$run/triad-$name.json"
  # Decode: one process, R repetitions. Prefill: R processes of one repetition each, because the
  # engine's prefix cache would serve a repeated prompt within one process from the cache.
  log "$name: govbox model bench --device cpu --threads $threads -p 0 -n 128 -r $reps, then $reps x -p 512 -n 0 -r 1"
  gb_log=$run/govbox-bench-$name.log
  "${nice_cmd[@]}" "$govbox" model bench --model "$m" --device cpu --threads "$threads" -p 0 -n 128 -r "$reps" \
      --kv-tokens 1024 > "$run/govbox-tg-$name.json" 2> "$gb_log" || die "govbox model bench failed on $m; see $gb_log"
  : > "$run/govbox-pp-$name.jsonl"
  for _ in $(seq 1 "$reps"); do
    "${nice_cmd[@]}" "$govbox" model bench --model "$m" --device cpu --threads "$threads" -p 512 -n 0 -r 1 \
        --kv-tokens 1024 >> "$run/govbox-pp-$name.jsonl" 2>> "$gb_log" || die "govbox model bench failed on $m; see $gb_log"
  done
  "$py" - "$run/govbox-tg-$name.json" "$run/govbox-pp-$name.jsonl" > "$run/govbox-bench-$name.json" <<'PY'
import json, sys
tg = json.load(open(sys.argv[1]))
runs = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
times = [r["pp"]["tokens"] / r["pp"]["best_tps"] for r in runs]
n = runs[0]["pp"]["tokens"]
tg["pp"] = {"tokens": n, "best_tps": n / min(times), "mean_tps": n / (sum(times) / len(times)),
            "processes": len(runs)}
print(json.dumps(tg))
PY
  "$py" - "$name" "$run/llama-bench-$name.json" "$run/govbox-bench-$name.json" >> "$run/speed.jsonl" <<'PY'
import json, sys
name, lb, gb = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
row = {"model": name, "govbox": gb}
for t in lb:
    key = "tg" if t["n_gen"] > 0 and t["n_prompt"] == 0 else "pp" if t["n_prompt"] > 0 and t["n_gen"] == 0 else None
    if key:
        row[f"llama_{key}"] = {"avg_ts": t["avg_ts"], "stddev_ts": t["stddev_ts"], "n": t["n_gen"] or t["n_prompt"]}
if "llama_tg" not in row or "llama_pp" not in row:
    sys.exit(f"llama-bench output for {name} lacks the pp or tg test")
print(json.dumps(row))
PY
  tail -1 "$run/speed.jsonl" | "$py" -c 'import json,sys; r=json.load(sys.stdin); g=r["govbox"]
print("   tg128 llama %.1f govbox %.1f   pp512 llama %.1f govbox %.1f tokens/s" % (r["llama_tg"]["avg_ts"],
      g["tg"]["mean_tps"], r["llama_pp"]["avg_ts"], g["pp"]["mean_tps"]))' >&2
done

if [ "$large" = 1 ]; then
  [ -x /usr/bin/time ] || die "/usr/bin/time is needed for --large (apt-get install -y time)"
  : > "$run/longctx.jsonl"
  log "$(basename "$q8_large" .gguf): prompts of $ctx_list tokens, KV f16 and q8_0 (bench/longctx-bench.sh)"
  GOVBOX=$govbox "${nice_cmd[@]}" "$here/longctx-bench.sh" "$q8_large" --ctx "$ctx_list" --kv f16,q8_0 \
      --threads "$threads" --out "$run/longctx.jsonl" || die "bench/longctx-bench.sh failed"
fi

if [ "$large" = 1 ]; then
  log "govboxd start to ready on a signed package of $(basename "$q4km_7b") (bench/start-to-ready.sh)"
  "$here/start-to-ready.sh" "$q4km_7b" "$run/start-to-ready.json" --govbox "$govbox" --govboxd "$govboxd" \
      --threads "$threads" --kv-tokens 4096 --kv-dtype f16 || die "bench/start-to-ready.sh failed"
fi

if [ "$families" = 1 ]; then
  log "Qwen3-MoE against llama.cpp (bench/moe-bench.sh)"
  GOVBOX=$govbox "${nice_cmd[@]}" "$here/moe-bench.sh" --rounds "$((3 - 2 * quick))" --threads "$threads" >&2 ||
    die "bench/moe-bench.sh failed"
  cp "$work/moe-run/summary.json" "$run/families-moe.json"
  log "Gemma 3 sliding window against its dense twin (bench/gemma3-window-bench.sh)"
  GOVBOX=$govbox "${nice_cmd[@]}" "$here/gemma3-window-bench.sh" --ctx 4096 --rounds 1 --threads "$threads" >&2 ||
    die "bench/gemma3-window-bench.sh failed"
  cp "$work/gemma3-run/summary.json" "$run/families-gemma3.json"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
client=("${nice_cmd[@]}" "$py" "$here/serve_client.py")
tokenizer=$repo/tests/fixtures/tiny-qwen2/tokenizer.json

# serve NAME URL MODEL [client options...]: the three serving measurements against a running server.
serve() {
  local name=$1 url=$2 model=$3; shift 3
  "${client[@]}" streams --url "$url" --model "$model" -c 1 -n 8 "$@" > /dev/null ||
    die "warm-up request to $name failed"
  log "$name: 1 stream of $stream_tokens tokens"
  "${client[@]}" streams --url "$url" --model "$model" -c 1 -n "$stream_tokens" "$@" > "$run/$name-1.json" ||
    die "$name: 1-stream run failed"
  log "$name: 8 concurrent streams of $stream_tokens tokens"
  "${client[@]}" streams --url "$url" --model "$model" -c 8 -n "$stream_tokens" "$@" > "$run/$name-8.json" ||
    die "$name: 8-stream run failed"
  log "$name: prefix cache, ~$prefix_tokens-token shared system prompt"
  "${client[@]}" prefix --url "$url" --model "$model" --prefix-tokens "$prefix_tokens" --tokenizer "$tokenizer" \
      "$@" > "$run/$name-prefix.json" || die "$name: prefix run failed"
  cat "$run/$name-1.json" "$run/$name-8.json" "$run/$name-prefix.json" | cut -c1-200 >&2
}

# wait_ready URL LOG [curl options...]: until URL answers 200, the server exits, or 120 s pass.
wait_ready() {
  local url=$1 logf=$2 code=000; shift 2
  for _ in $(seq 1 1200); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" || true)
    [ "$code" = 200 ] && return 0
    kill -0 "$server_pid" 2>/dev/null || { tail -20 "$logf" >&2; die "the server exited before it was ready (log: $logf)"; }
    sleep 0.1
  done
  tail -20 "$logf" >&2
  die "$url did not answer 200 within 120 s (last HTTP status $code; log: $logf)"
}

port=$(free_port)
log "llama-server -m $(basename "$q8") -t $threads -np 8 --cont-batching -kvu -c $kv_tokens on http://127.0.0.1:$port"
"${nice_cmd[@]}" "$bin/llama-server" -m "$q8" -t "$threads" -np 8 --cont-batching -kvu -c "$kv_tokens" --host 127.0.0.1 \
    --port "$port" --no-webui > "$run/llama-server.log" 2>&1 &
server_pid=$!
wait_ready "http://127.0.0.1:$port/health" "$run/llama-server.log"
serve llama-server "http://127.0.0.1:$port/v1" bench-q8 --ignore-eos
cleanup

log "govboxd: provisioning a fresh state folder, signing and importing a package of $(basename "$q8")"
state=$work/govboxd-state
rm -rf "$state"
mkdir -p "$state/vendor"
chmod 700 "$state" "$state/vendor"
{
  "$govbox" keygen --out "$state/vendor/bench.key" --pub "$state/vendor/bench.pub"
  "$govbox" --state "$state" provision --hostname govbox-bench --trust-key "$state/vendor/bench.pub"
  "$govbox" package build --model "$q8" --name bench-q8 --version 1.0.0 --sign "$state/vendor/bench.key" \
      -o "$work/bench-q8.gbx"
  "$govbox" --state "$state" model import "$work/bench-q8.gbx"
} > "$run/govboxd-provision.log" 2>&1 || { tail -20 "$run/govboxd-provision.log" >&2; die "provisioning govboxd failed (log: $run/govboxd-provision.log)"; }
rm -f "$work/bench-q8.gbx"
token=$("$govbox" --state "$state" client add bench --models all --token --rpm 100000000 --cert-out "$state/clients/bench" |
  grep -o 'gbx_[A-Za-z0-9_-]*' | head -n1) || true
[ -n "$token" ] || die "no bearer token from 'govbox client add'"
port=$(free_port)
cat > "$state/govbox.toml" <<TOML
config_version = 2
listen = "127.0.0.1:$port"
threads = $threads
device = "cpu"
log_level = "warn"

[serving]
max_concurrent = 8
queue_depth = 64
kv_tokens = $kv_tokens
kv_dtype = "$kv_dtype"
request_deadline_secs = 900
TOML
log "govboxd (threads $threads, max_concurrent 8, kv_tokens $kv_tokens, kv_dtype $kv_dtype) on https://127.0.0.1:$port"
# MALLOC_ARENA_MAX=2 as dist/govboxd.service sets it: the bench measures the RSS the appliance runs with.
MALLOC_ARENA_MAX=2 "${nice_cmd[@]}" "$govboxd" --state "$state" --config "$state/govbox.toml" > "$run/govboxd.log" 2>&1 &
server_pid=$!
wait_ready "https://127.0.0.1:$port/readyz" "$run/govboxd.log" --cacert "$state/tls/ca.crt"
grep -m1 VmRSS "/proc/$server_pid/status" | awk '{ print "{\"idle_rss_kb\": " $2 "}" }' > "$run/govboxd-idle.json"
serve govboxd "https://127.0.0.1:$port/v1" bench-q8 --token "$token" --cacert "$state/tls/ca.crt" --rss-pid "$server_pid"
grep -m1 VmHWM "/proc/$server_pid/status" | awk '{ print "{\"hwm_kb\": " $2 "}" }' > "$run/govboxd-hwm.json"
cleanup

t_end=$(date +%s)
echo "{\"elapsed_s\": $((t_end - t_start)), \"load_end\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" > "$run/end.json"
log "writing $out"
"$py" "$here/write_results.py" "$run" "$out"
log "done in $(( (t_end - t_start) / 60 )) min $(( (t_end - t_start) % 60 )) s"
