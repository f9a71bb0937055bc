#!/usr/bin/env bash
# Embedding time of two govbox builds side by side (before/after a kernel change), alternating A
# and B each round so that both see the same machine load: wall-clock seconds of one
# `govbox model embed` call with TEXTS sentences (model load included, the same for both), and
# of one with a single sentence.
#
#   bench/ab-embed-bench.sh GOVBOX_A GOVBOX_B [MODEL_DIR]     (default: .cache/models/minilm)
#
# Environment: ROUNDS (default 5), THREADS (default 2), TEXTS (default 64). The table gives the
# best time of each side and B / A (above 1: B is slower). The load average is printed before
# and after.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,10p "$0" >&2; exit 2; }
a=$1 b=$2
root=$(cd "$(dirname "$0")/.." && pwd)
model=${3:-$root/.cache/models/minilm}
rounds=${ROUNDS:-5} threads=${THREADS:-2} texts=${TEXTS:-64}
words=(the office publishes its annual report on public spending and explains each budget line to
  residents who ask how their taxes were used during the last financial year in plain language)
many=()
for i in $(seq "$texts"); do
  many+=(--text "Sentence $i: ${words[*]:$((i % 8)):$((12 + i % 9))}")
done
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
best() { sort -n | head -1; }
for what in batch single; do
  ta=() tb=()
  for _ in $(seq "$rounds"); do
    for side in a b; do
      bin=$a; [ $side = b ] && bin=$b
      args=("${many[@]}"); [ $what = single ] && args=(--text "${many[1]}")
      s=$(date +%s.%N)
      "$bin" model embed --model "$model" --threads "$threads" "${args[@]}" >/dev/null
      e=$(date +%s.%N)
      t=$(echo "$e - $s" | bc)
      if [ $side = a ]; then ta+=("$t"); else tb+=("$t"); fi
    done
  done
  ba=$(printf '%s\n' "${ta[@]}" | best) bb=$(printf '%s\n' "${tb[@]}" | best)
  n=$texts; [ $what = single ] && n=1
  printf '%-6s %3d texts  best s  A %7.3f  B %7.3f  B/A %.3f   (A: %s; B: %s)\n' "$what" "$n" "$ba" "$bb" \
    "$(echo "$bb / $ba" | bc -l)" "${ta[*]}" "${tb[*]}"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
