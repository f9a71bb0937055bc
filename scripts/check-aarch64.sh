#!/usr/bin/env bash
# Cross-builds govbox-drivers for aarch64-unknown-linux-gnu and runs its `quant` unit tests (the
# NEON kernels against the scalar references) and tests/quant_matches_gguf_py.rs UNDER QEMU
# USER-MODE EMULATION, on an x86 host:
#   scripts/check-aarch64.sh              # tests under `-cpu max` and `-cpu cortex-a53`
#   scripts/check-aarch64.sh --clippy     # also clippy --all-targets -D warnings for aarch64
#   CPUS="max" scripts/check-aarch64.sh   # only the listed qemu CPU models
# `-cpu max` has dotprod (and fp16), so both 8-bit builds (sdot and plain NEON) run there;
# `-cpu cortex-a53` (ARMv8.0) lacks both, so run-time detection must pick plain NEON and the
# half crate's software f16 conversion. Emulation checks correctness only: timings mean nothing.
# Needs (Debian/Ubuntu, as root): apt-get install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
# and the target: rustup target add aarch64-unknown-linux-gnu. Extra arguments go to the test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
clippy=0
if [ "${1:-}" = --clippy ]; then
  clippy=1
  shift
fi
for tool in qemu-aarch64 aarch64-linux-gnu-gcc; do
  if ! command -v "$tool" >/dev/null; then
    echo "check-aarch64: $tool is missing: apt-get install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross" >&2
    exit 1
  fi
done
if ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
  echo "check-aarch64: the aarch64 std is missing: rustup target add aarch64-unknown-linux-gnu" >&2
  exit 1
fi
# A target dir of its own, so that this does not wait on (or evict) the host build's.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-arm}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
target=aarch64-unknown-linux-gnu
if [ "$clippy" = 1 ]; then
  cargo clippy -p govbox-drivers --target "$target" --all-targets -- -D warnings
fi
cargo test -p govbox-drivers --target "$target" --lib --test quant_matches_gguf_py --no-run
for cpu in ${CPUS:-max cortex-a53}; do
  echo "=== govbox-drivers quant tests for aarch64 under qemu user-mode emulation, -cpu $cpu ==="
  QEMU_CPU=$cpu cargo test -p govbox-drivers --target "$target" --lib quant -- "$@"
  # The public quant API against gguf-py's fixtures (through whichever kernels quant/mod.rs picks).
  QEMU_CPU=$cpu cargo test -p govbox-drivers --target "$target" --test quant_matches_gguf_py -- "$@"
done
