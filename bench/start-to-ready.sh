#!/usr/bin/env bash
# How long govboxd takes from start to ready on a large signed package, against the time to read
# the same file once, and its peak memory against file + KV cache.
#
#   bench/start-to-ready.sh MODEL.gguf OUT.json [--govbox BIN] [--govboxd BIN] [--threads N]
#                                               [--kv-tokens N] [--kv-dtype f16|q8_0|f32] [--runs N]
#                                               [--settle SECONDS]
#
# Provisions a fresh state folder under bench/work/start-state, signs a package of MODEL and
# imports it (import time recorded), then for a cold page cache (`echo 3 > drop_caches`, root
# only; skipped otherwise) and a warm one, best of --runs (default 2) each:
#   cat    `cat PAYLOAD > /dev/null` of the stored payload file
#   ready  govboxd with verify_payload_on_start = true (the default: every payload byte is hashed
#          again and the signatures re-checked) from exec to its READY=1 on NOTIFY_SOCKET (systemd's
#          Type=notify readiness), after which /readyz must answer 200; its VmHWM at ready and
#          after one 16-token answer
# The KV cache's size comes from `govbox model info` with the same kv_tokens and kv_dtype. Writes one JSON object to OUT.
# --settle waits that long before each timed cat and each timed start. On a virtual machine whose
# balloon reports freed memory to the host (free-page reporting), memory freed a moment before
# (a drop_caches, the previous run's exit) is still backed and fast to use, and memory freed
# seconds earlier has to be backed by the host again when touched, which on the Intel Xeon VM of
# bench/RESULTS.md costs more than the disk: without the wait each timed step meets whichever
# state the step before it left (bench/README.md, "What fresh memory costs on this VM").
# The state folder and the package are removed at the end (the store's copy is as big as MODEL).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
model=${1:?usage: start-to-ready.sh MODEL.gguf OUT.json [options]}
out=${2:?usage: start-to-ready.sh MODEL.gguf OUT.json [options]}
shift 2
govbox=$repo/target/release/govbox
govboxd=$repo/target/release/govboxd
threads=2
kv_tokens=4096
kv_dtype=f16
runs=2
settle=0
while [ $# -gt 0 ]; do
  case "$1" in
    --govbox) govbox=$2; shift 2 ;;
    --govboxd) govboxd=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --kv-tokens) kv_tokens=$2; shift 2 ;;
    --kv-dtype) kv_dtype=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --settle) settle=$2; shift 2 ;;
    *) echo "start-to-ready.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
die() { echo "start-to-ready.sh: $*" >&2; exit 1; }
log() { echo "== $(date -u +%H:%M:%S) $*" >&2; }
now() { date +%s.%N; }
[ -f "$model" ] || die "no model file $model"
for b in "$govbox" "$govboxd"; do [ -x "$b" ] || die "$b is missing (cargo build --release)"; done

work=$here/work
state=$work/start-state
pkg=$work/start-package.gbx
pid=
stop() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi
}
trap 'stop; rm -rf "$state" "$pkg" "$work/start-notify.sock" "$work/start-notify.sock.bound" "$work/start-ready.txt"' EXIT
rm -rf "$state" "$pkg"
mkdir -p "$state/vendor"
chmod 700 "$state" "$state/vendor"

log "signing and importing a package of $(basename "$model") ($(( $(stat -c %s "$model") / 1048576 )) MiB)"
"$govbox" keygen --out "$state/vendor/v.key" --pub "$state/vendor/v.pub" >/dev/null
"$govbox" --state "$state" provision --hostname start-bench --trust-key "$state/vendor/v.pub" >/dev/null
"$govbox" package build --model "$model" --name big --version 1.0.0 --sign "$state/vendor/v.key" -o "$pkg" >/dev/null
t0=$(date +%s.%N)
"$govbox" --state "$state" model import "$pkg" > "$work/start-import.log" 2>&1 || { tail "$work/start-import.log" >&2; die "import failed"; }
import_s=$(awk -v a="$(now)" -v b="$t0" 'BEGIN { printf "%.3f", a - b }')
rm -f "$pkg"
payload=$(find "$state" -type f -name "$(basename "$model")" -size +1M | head -n1)
[ -n "$payload" ] || die "cannot find the stored payload of $(basename "$model") under $state"
token=$("$govbox" --state "$state" client add bench --models all --token --rpm 1000000 --cert-out "$state/clients/bench" |
  grep -o 'gbx_[A-Za-z0-9_-]*' | head -n1) || true
[ -n "$token" ] || die "no bearer token from 'govbox client add'"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$state/govbox.toml" <<TOML
config_version = 2
listen = "127.0.0.1:$port"
threads = $threads
device = "cpu"
verify_payload_on_start = true

[serving]
kv_tokens = $kv_tokens
kv_dtype = "$kv_dtype"
TOML

# The KV cache govboxd allocates for this model and [serving] (the same sizing as model info's).
kv_line=$("$govbox" model info --model "$model" --device cpu --threads "$threads" --kv-tokens "$kv_tokens" \
    --kv-dtype "$kv_dtype" 2>/dev/null | sed -n 's/^kv cache: *//p')
[ -n "$kv_line" ] || die "govbox model info printed no kv cache line for $model"
kv_bytes=$(printf '%s' "$kv_line" | sed -n 's/.*(\([0-9.]*\) MiB)$/\1/p' | awk '{ printf "%d", $1 * 1048576 }')
[ -n "$kv_bytes" ] || die "cannot read the KV cache size from '$kv_line'"
log "KV cache: $kv_line"

can_drop=0
if [ -w /proc/sys/vm/drop_caches ]; then can_drop=1; fi
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
hwm() { awk '/VmHWM/ { print $2 }' "/proc/$pid/status"; }

# One cat: prints seconds.
time_cat() {
  local t; t=$(now); cat "$payload" > /dev/null; awk -v a="$(now)" -v b="$t" 'BEGIN { printf "%.3f", a - b }'
}
# One start: prints "seconds hwm_ready_kb hwm_after_kb". Ready is govboxd's READY=1 on the
# NOTIFY_SOCKET this script gives it (what systemd waits for with the unit's Type=notify), timed
# by a listener that sleeps in recv; /readyz must then answer 200. Polling /readyz instead (a
# curl and a TLS handshake every 20 ms, as this script did until December 2026) took a core's
# share from the start it timed: 1.5 to 6 s more on a 7B package on 2 cores.
time_start() {
  local t code a b ready sock=$work/start-notify.sock
  rm -f "$sock" "$sock.bound" "$work/start-ready.txt"
  python3 - "$sock" > "$work/start-ready.txt" <<'PY' &
import socket, sys, time
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
open(path + ".bound", "w").close()
s.settimeout(600)
while True:
    if b"READY=1" in s.recv(65536).split(b"\n"):
        print(f"{time.time():.6f}")
        break
PY
  local listener=$!
  for _ in $(seq 1 500); do [ -e "$sock.bound" ] && break; sleep 0.01; done
  [ -e "$sock.bound" ] || die "the notify listener did not start"
  t=$(now)
  NOTIFY_SOCKET=$sock MALLOC_ARENA_MAX=2 "$govboxd" --state "$state" --config "$state/govbox.toml" \
      > "$work/start-govboxd.log" 2>&1 &
  pid=$!
  while kill -0 "$listener" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { kill "$listener"; tail -20 "$work/start-govboxd.log" >&2; die "govboxd exited before it was ready"; }
    sleep 0.2
  done
  wait "$listener" || die "govboxd sent no READY=1 within 10 minutes"
  ready=$(cat "$work/start-ready.txt")
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$state/tls/ca.crt" "https://127.0.0.1:$port/readyz" || true)
  [ "$code" = 200 ] || die "govboxd sent READY=1 but /readyz answered $code"
  local secs; secs=$(awk -v a="$ready" -v b="$t" 'BEGIN { printf "%.3f", a - b }')
  a=$(hwm)
  curl -sf --cacert "$state/tls/ca.crt" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
      -d '{"model":"big","messages":[{"role":"user","content":"hello"}],"max_tokens":16}' \
      "https://127.0.0.1:$port/v1/chat/completions" > /dev/null || die "the request after start failed"
  b=$(hwm)
  stop
  echo "$secs $a $b"
}

results=()
modes=(warm)
[ "$can_drop" = 1 ] && modes=(cold warm)
[ "$can_drop" = 1 ] || log "not root: no cold-cache runs (cannot write /proc/sys/vm/drop_caches)"
for mode in "${modes[@]}"; do
  best_cat= best_start=
  for r in $(seq 1 "$runs"); do
    if [ "$mode" = cold ]; then drop; else cat "$payload" > /dev/null; fi
    sleep "$settle"
    c=$(time_cat)
    if [ "$mode" = cold ]; then drop; fi
    sleep "$settle"
    read -r s a b < <(time_start)
    log "$mode run $r: cat $c s, start to ready $s s, VmHWM at ready $((a / 1024)) MiB, after a request $((b / 1024)) MiB"
    results+=("{\"mode\": \"$mode\", \"cat_s\": $c, \"ready_s\": $s, \"hwm_ready_kb\": $a, \"hwm_after_kb\": $b}")
  done
done
hashed=$(grep -m1 -o '[0-9.]* MB hashed[a-z ]* in [0-9.]* s' "$work/start-govboxd.log" || true)
{
  echo "{\"model\": \"$(basename "$model")\", \"file_bytes\": $(stat -c %s "$payload"), \"import_s\": $import_s,"
  echo " \"threads\": $threads, \"kv_tokens\": $kv_tokens, \"kv_dtype\": \"$kv_dtype\", \"settle_s\": $settle,"
  echo " \"kv_info\": \"$kv_line\", \"kv_bytes\": $kv_bytes,"
  echo " \"hashed_log\": \"$hashed\","
  echo " \"runs\": [$(IFS=,; echo "${results[*]}")]}"
} > "$out"
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$out" || die "$out is not valid JSON"
cat "$out" >&2
