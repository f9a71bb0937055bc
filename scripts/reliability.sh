#!/usr/bin/env bash
# The reliability campaign, run by hand (tests/RELIABILITY.md explains it):
#   scripts/reliability.sh [--quick] [--record] [--fuzz-secs N] [--examples N] [--no-fuzz]
# against a real govboxd on a loopback port, with the tiny Qwen2 chat model and MiniLM:
#  a. load: 1,000 TLS connections held open, then a 10-minute soak (--quick: 60 s) of mixed chat,
#     streamed chat and embeddings at saturation; no 5xx but admission's 503, RSS growth after
#     warm-up (the first fifth of the soak, at most 120 s; RSS sampled every 10 s) under 5 %, the
#     audit export verifies and holds every answered request;
#  b. abuse: slowloris, oversized headers and bodies, 10,000 (--quick: 1,000) handshakes with a
#     foreign client certificate, invalid UTF-8, 100k-deep JSON, huge max_tokens, each with its
#     documented status and /readyz 200 afterwards;
#  c. schema fuzzing: schemathesis --checks all against daemon/openapi.yaml (--examples, default
#     200; --quick: 50);
#  d. coverage-guided fuzzing: scripts/fuzz.sh, 600 s per target (--quick: 60; --fuzz-secs N);
#  e. egress: tests/tests/egress.rs, when it exists.
# Prints a summary table; --record also writes it to the figures section of tests/RELIABILITY.md.
# Exits non-zero if any part failed. Logs: target/reliability/ (under $CARGO_TARGET_DIR when set).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0 record=0 fuzz_secs="" examples="" fuzz=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --record) record=1 ;;
    --no-fuzz) fuzz=0 ;;
    --fuzz-secs) fuzz_secs=${2:?--fuzz-secs needs a number}; shift ;;
    --examples) examples=${2:?--examples needs a number}; shift ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "scripts/reliability.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$quick" = 1 ]; then
  fuzz_secs=${fuzz_secs:-60} examples=${examples:-50} load_args=(--quick)
else
  fuzz_secs=${fuzz_secs:-600} examples=${examples:-200} load_args=()
fi

target=${CARGO_TARGET_DIR:-target}
out=$target/reliability
mkdir -p "$out"
# 1,000 client sockets here and 1,000 in govboxd (which inherits this limit), plus files.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
  echo "scripts/reliability.sh: the open-file limit is $(ulimit -n); 1,000 connections need 4096 (raise the hard limit)" >&2
  exit 2
fi

echo "== building govbox, govboxd and govbox-reliability"
cargo build --quiet -p govbox-cli -p govbox-daemon -p govbox-e2e --bins
scripts/fetch-models.sh minilm >/dev/null

status=0
started=$(date -u +%Y-%m-%dT%H:%MZ)
echo "== a-c: load, abuse and schemathesis (${examples} examples) against a real govboxd"
load_rc=0
"$target/debug/govbox-reliability" "${load_args[@]}" --exec "scripts/schemathesis.sh $examples > $out/schemathesis.log 2>&1" \
  --json "$out/load.json" 2> >(grep --line-buffered -v '^20[0-9][0-9]-' >"$out/load.log") | tee "$out/load-table.md" || load_rc=$?
[ "$load_rc" -eq 0 ] || status=1
st_line=$(grep -E '^Test cases:' -A1 "$out/schemathesis.log" | tail -1 | sed 's/^ *//' || true)
st_result=$(grep -E '^=+ .* in [0-9.]+s =+$' "$out/schemathesis.log" | tail -1 | tr -d '=' | sed 's/^ *//;s/ *$//' || true)

fuzz_line="not run"
if [ "$fuzz" = 1 ]; then
  echo "== d: coverage-guided fuzzing, ${fuzz_secs} s per target"
  fuzz_rc=0
  scripts/fuzz.sh "$fuzz_secs" 2>&1 | tee "$out/fuzz.log" || fuzz_rc=$?
  [ "$fuzz_rc" -eq 0 ] || status=1
  fuzz_line=$(grep '^fuzz:' "$out/fuzz.log" | tail -1 || echo "fuzz.sh failed before its summary")
fi

egress_line="tests/tests/egress.rs absent: not run"
if [ -f tests/tests/egress.rs ]; then
  echo "== e: egress"
  if cargo test -p govbox-e2e --test egress 2>&1 | tee "$out/egress.log" | tail -3; then
    egress_line=$(grep '^test result:' "$out/egress.log" | tail -1)
  else
    egress_line="FAILED: $(grep '^test result:' "$out/egress.log" | tail -1)"
    status=1
  fi
fi

{
  echo "Run of \`scripts/reliability.sh $([ "$quick" = 1 ] && echo --quick)\` started $started on $(nproc) CPUs ($(uname -m))."
  echo
  grep '^|' "$out/load-table.md" || echo "| load and abuse | failed before its table (see $out/load.log) |"
  echo "| schemathesis (--checks all, ${examples} examples) | ${st_line:-?}; ${st_result:-see $out/schemathesis.log} |"
  if [ "$fuzz" = 1 ]; then
    echo "| fuzzing (${fuzz_secs} s per target) | ${fuzz_line#fuzz: } |"
    grep -E '^[a-z_]+ +[0-9]+ +[0-9?]+ +[0-9]+ ' "$out/fuzz.log" | awk '{ printf "| fuzz %s | %s inputs, corpus %s, %s |\n", $1, $3, $4, $5 }'
  else
    echo "| fuzzing | not run (--no-fuzz) |"
  fi
  echo "| egress | $egress_line |"
  echo "| result | $([ "$status" = 0 ] && echo PASS || echo FAIL) |"
} >"$out/summary.md"
echo
cat "$out/summary.md"

if [ "$record" = 1 ]; then
  python3 - "$out/summary.md" <<'EOF'
import sys
doc = "tests/RELIABILITY.md"
start, end = "<!-- figures:start -->", "<!-- figures:end -->"
text = open(doc).read()
if start not in text or end not in text:
    sys.exit(f"{doc} has no {start} ... {end} section to record into")
summary = open(sys.argv[1]).read().strip()
head, rest = text.split(start, 1)
_, tail = rest.split(end, 1)
open(doc, "w").write(f"{head}{start}\n{summary}\n{end}{tail}")
print(f"recorded in {doc}")
EOF
fi
exit "$status"
