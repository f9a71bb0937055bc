# Shared by the govboxd benchmarks (sourced, not run): a provisioned state with one bench client,
# and starting govboxd on SmolLM2-135M-Instruct with extra [serving] settings.
#   BUILD=0 skips `cargo build --release`; BIN_DIR (default target/release) holds the binaries.

# Builds (unless BUILD=0), provisions a state in a temporary folder and adds a token client.
# BENCH_ROLES (e.g. root,models,updates,policy) gives the vendor key those roles.
# Sets: govbox, govboxd, gguf, work, state, token; stops govboxd and removes $work on exit.
bench_setup() {
  local target_dir=${CARGO_TARGET_DIR:-target}
  if [ "${BUILD:-1}" = 1 ]; then cargo build --release -q -p govbox-cli -p govbox-daemon; fi
  local bin_dir=${BIN_DIR:-$target_dir/release}
  govbox=$bin_dir/govbox
  govboxd=$bin_dir/govboxd
  gguf=$(scripts/fetch-models.sh smollm2)
  work=$(mktemp -d)
  pid=
  trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
  state=$work/state
  "$govbox" keygen --out "$work/v.key" --pub "$work/v.pub" >/dev/null
  "$govbox" --state "$state" provision --hostname bench --trust-key "${BENCH_ROLES:+$BENCH_ROLES:}$work/v.pub" >/dev/null
  # --rpm: the benches send far more than [serving] default_client_rpm allows.
  token=$("$govbox" --state "$state" client add bench --models all --rpm 100000000 --token --cert-out "$work/c" 2>/dev/null |
    grep -o 'gbx_[A-Za-z0-9_-]*')
}

# Starts govboxd serving SmolLM2 as model "m" with `[serving]` lines $1 (may be empty) and waits
# until it is ready. Sets: port, pid.
bench_start() {
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf 'config_version = 2\nlisten = "127.0.0.1:%s"\n[serving]\n%s\n[[models]]\nname = "m"\npath = "%s"\n' \
    "$port" "$1" "$gguf" > "$work/govbox.toml"
  # The SmolLM2 file as a dev model: the same weights a signed package would hold.
  "$govboxd" --state "$state" --config "$work/govbox.toml" --insecure-dev-models > "$work/govboxd.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null --cacert "$state/tls/ca.crt" "https://127.0.0.1:$port/readyz" && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$work/govboxd.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "govboxd did not become ready" >&2
  exit 1
}
