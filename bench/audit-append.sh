#!/usr/bin/env bash
# Durable audit appends per second with 1, 8 and 64 concurrent writers (group commit), against a
# plain sled insert+flush loop on the same disk (the single-writer ceiling).
#
#   bench/audit-append.sh [DIR] [SECONDS]
#
# DIR must be on a real disk (not tmpfs, where fsync costs nothing); default target/audit-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/audit-bench}
secs=${2:-3}
mkdir -p "$dir"
fstype=$(stat -f -c %T "$dir")
if [ "$fstype" = tmpfs ] || [ "$fstype" = ramfs ]; then
    echo "error: $dir is on $fstype; fsync is free there, so the figures would mean nothing" >&2
    exit 2
fi
echo "disk: $(df -h --output=source,fstype "$dir" | tail -1)  (${secs}s per run)"
cargo run --quiet --release -p govbox-audit --example append_bench -- "$dir" "$secs"
