# Shared by the side-by-side benchmarks against llama.cpp that run `govbox model bench` on files
# they make (sourced, not run: bench/moe-bench.sh, bench/gemma3-window-bench.sh).

# peer_setup NAME: checks for target/release/govbox (or $GOVBOX: bench/run.sh passes its copy) and /usr/bin/time, brings llama.cpp's tools
# (bench/get-llama-cpp.sh) into $work/llama; NAME is the calling script's, for its messages.
# Needs: here, repo, work. Sets: govbox, bin (llama.cpp's tools), py (the converter's Python).
peer_setup() {
  govbox=${GOVBOX:-$repo/target/release/govbox}
  [ -x "$govbox" ] || { echo "$1: $govbox is missing: cargo build --release -p govbox-cli" >&2; exit 1; }
  [ -x /usr/bin/time ] || { echo "$1: /usr/bin/time is needed (apt-get install -y time)" >&2; exit 1; }
  mkdir -p "$work"
  "$here/get-llama-cpp.sh" "$work/llama" >/dev/null
  bin=$work/llama/llama.cpp/build/bin
  py=$work/llama/venv/bin/python
}
