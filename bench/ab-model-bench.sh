#!/usr/bin/env bash
# Prefill and decode speed of two govbox builds side by side in one run (before/after a kernel
# change), alternating A and B each round so that both see the same machine load.
#
#   bench/ab-model-bench.sh GOVBOX_A GOVBOX_B MODEL.gguf [MODEL.gguf ...]
#
# Environment: ROUNDS (default 3), THREADS (default 2), PP (default 512), TG (default 128), and
# LLAMA_BENCH: the path of llama.cpp's llama-bench, to run it too in each round (before A and
# B, same file and threads) as the peer the ratios are taken against.
# Each round runs `govbox model bench -p PP -n TG -r 1` once per binary; the table gives the
# mean tokens/s over the rounds and B / A (and A and B / llama.cpp). The load average is
# printed before and after.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,12p "$0" >&2; exit 2; }
a=$1 b=$2; shift 2
rounds=${ROUNDS:-3} threads=${THREADS:-2} pp=${PP:-512} tg=${TG:-128}
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for m in "$@"; do
  pa=() pb=() ta=() tb=() pl=() tl=()
  for _ in $(seq "$rounds"); do
    if [ -n "${LLAMA_BENCH:-}" ]; then
      tl+=("$("$LLAMA_BENCH" -m "$m" -t "$threads" -p 0 -n "$tg" -r 1 -o json 2>/dev/null | sed -n 's/.*"avg_ts": *\([0-9.e+-]*\).*/\1/p')")
      pl+=("$("$LLAMA_BENCH" -m "$m" -t "$threads" -p "$pp" -n 0 -r 1 -o json 2>/dev/null | sed -n 's/.*"avg_ts": *\([0-9.e+-]*\).*/\1/p')")
    fi
    for side in a b; do
      bin=$a; [ $side = b ] && bin=$b
      out=$("$bin" model bench --model "$m" --threads "$threads" -p "$pp" -n "$tg" -r 1 --kv-tokens 1024)
      p=$(sed -E 's/.*"pp":\{[^}]*"mean_tps":([0-9.e+-]+).*/\1/' <<<"$out")
      t=$(sed -E 's/.*"tg":\{[^}]*"mean_tps":([0-9.e+-]+).*/\1/' <<<"$out")
      if [ $side = a ]; then pa+=("$p"); ta+=("$t"); else pb+=("$p"); tb+=("$t"); fi
    done
  done
  awk -v name="$(basename "$m")" -v pa="${pa[*]}" -v pb="${pb[*]}" -v ta="${ta[*]}" -v tb="${tb[*]}" -v pp="$pp" -v tg="$tg" \
      -v pl="${pl[*]}" -v tl="${tl[*]}" '
    function mean(s,  n, v, i, t) { n = split(s, v, " "); t = 0; for (i = 1; i <= n; i++) t += v[i]; return t / n }
    function peer(l, a, b) { if (l != "") printf "  llama.cpp %8.1f  A/llama.cpp %.3f  B/llama.cpp %.3f   (rounds: %s)\n", mean(l), mean(a) / mean(l), mean(b) / mean(l), l }
    BEGIN {
      printf "%s\n  pp%d tokens/s  A %8.1f  B %8.1f  B/A %.3f   (rounds A: %s; B: %s)\n", name, pp, mean(pa), mean(pb), mean(pb) / mean(pa), pa, pb
      peer(pl, pa, pb)
      printf "  tg%d tokens/s  A %8.1f  B %8.1f  B/A %.3f   (rounds A: %s; B: %s)\n", tg, mean(ta), mean(tb), mean(tb) / mean(ta), ta, tb
      peer(tl, ta, tb)
    }'
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
