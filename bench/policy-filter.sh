#!/usr/bin/env bash
# What content filtering costs (issue 26): a generated library of 12,000 keywords, per request
# (a four-message chat of 2,000 characters checked) and per streamed token (three characters a
# token), each beside the same loop with filtering off, in one run. Prints the load average
# before and after, and one JSON line. Release build of the policy crate's example only.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
nice -n 10 cargo build --release -q -p govbox-policy --example filter_bench
./target/release/examples/filter_bench
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
