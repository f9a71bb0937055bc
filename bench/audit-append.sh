#!/usr/bin/env bash
# Durable audit appends per second with 1, 8 and 64 concurrent writers (group commit), in process
# and through a real govbox-auditd process over its socket, against a plain sled insert+flush loop
# on the same disk (the single-writer ceiling).
#
#   bench/audit-append.sh [DIR] [SECONDS] [intl|gm]
#
# SUITE gm measures a log of the `gm` suite (SM3 tree, SM2-signed checkpoints, HMAC-SM3).
# DIR must be on a real disk (not tmpfs, where fsync costs nothing); default target/audit-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/audit-bench}
secs=${2:-3}
suite=${3:-intl}
mkdir -p "$dir"
fstype=$(stat -f -c %T "$dir")
if [ "$fstype" = tmpfs ] || [ "$fstype" = ramfs ]; then
    echo "error: $dir is on $fstype; fsync is free there, so the figures would mean nothing" >&2
    exit 2
fi
echo "disk: $(df -h --output=source,fstype "$dir" | tail -1)  (${secs}s per run)"
# The socket runs start the real govbox-auditd of the same release build.
cargo build --quiet --release -p govbox-audit --bins --example append_bench
target=${CARGO_TARGET_DIR:-target}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$target/release/examples/append_bench" "$dir" "$secs" "$suite"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
