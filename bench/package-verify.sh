#!/usr/bin/env bash
# Package verification and import speed against `openssl dgst -sha256` (or `-sm3`) and `cp` on the
# same data.
#
#   bench/package-verify.sh [--size-mb N] [--files N] [--runs N] [--dir DIR] [--hash sha256|sm3] [--keep]
#
# Builds a package of N MB of random payload (default 2048 MB in 4 files) in DIR (default
# target/package-bench, i.e. on the repository's disk), then with a warm page cache runs each
# command --runs times (default 2), keeping the best:
#   govbox package verify            vs  openssl dgst -sha256 over the payload files
#   the store's import (verify and copy, images example import_package)
#                                    vs  cp -r of the payload folder (and cp -r + sync)
# With --hash sm3 the box is a 国密 one (`provision --suite gm`, SM2 vendor and root keys), the
# package is built with `--hash sm3` and verify is compared with `openssl dgst -sm3`.
# and reports the speed ratios and the bytes each process read (rchar from /proc/PID/io, taken
# when the process has exited but is not yet reaped). The target is verify >= 0.9x openssl,
# reading the archive once.
set -euo pipefail
cd "$(dirname "$0")/.."

size_mb=2048
files=4
dir=target/package-bench
keep=0
runs=2
hash=sha256
while [ $# -gt 0 ]; do
    case "$1" in
        --size-mb) size_mb=$2; shift 2 ;;
        --files) files=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        --hash) hash=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        *) echo "usage: $0 [--size-mb N] [--files N] [--runs N] [--dir DIR] [--hash sha256|sm3] [--keep]" >&2; exit 2 ;;
    esac
done
case "$hash" in
    sha256) suite=intl alg=ed25519 ;;
    sm3) suite=gm alg=sm2 ;;
    *) echo "error: --hash: '$hash' is not sha256 or sm3" >&2; exit 2 ;;
esac

need=$(( size_mb * 3 + 256 ))
avail=$(df -Pm "$(dirname "$dir")" | awk 'NR==2 {print $4}')
if [ "$avail" -lt "$need" ]; then
    echo "error: $dir needs about $need MB free (payload, package, store), $avail MB available; use --size-mb" >&2
    exit 2
fi

cargo build --quiet --release -p govbox-cli -p govbox-images --examples --bins
G=$PWD/target/release/govbox
rm -rf "$dir"
mkdir -p "$dir/payload"
[ "$keep" = 1 ] || trap 'rm -rf "$dir"' EXIT

per=$(( size_mb * 1024 * 1024 / files ))
echo "hash $hash (suite $suite); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "payload: $files x $(( per / 1024 / 1024 )) MB random in $dir ($(df -h --output=fstype "$dir" | tail -1 | tr -d ' '))"
for i in $(seq 1 "$files"); do
    # AES-CTR keystream: incompressible and much faster than /dev/urandom.
    # (openssl dies of SIGPIPE when head has enough, hence no pipefail here.)
    (set +o pipefail; openssl enc -aes-128-ctr -nosalt -pass pass:govbox-bench-$i -pbkdf2 </dev/zero 2>/dev/null |
        head -c "$per" >"$dir/payload/part-$i.bin")
done

for k in k0 k1 root; do "$G" keygen --algorithm "$alg" --out "$dir/$k.key" >/dev/null; done
"$G" provision --state "$dir/state" --suite "$suite" --hostname bench.local --trust-key "models:$dir/k0.pub" \
    --trust-key "models:$dir/k1.pub" --trust-key "root,updates:$dir/root.pub" --threshold models:2 >/dev/null
# calc EXPR DECIMALS
calc() { awk "BEGIN { printf \"%.$2f\", $1 }"; }
start=$(date +%s.%N)
"$G" package build --model "$dir/payload" --name bench --version 1.0.0 --kind chat --architecture random \
    --context-length 1 --dtype bytes --hash "$hash" --sign "$dir/k0.key" --sign "$dir/k1.key" -o "$dir/bench.gbx" >/dev/null
echo "build: $(calc "$(date +%s.%N) - $start" 1) s for $(stat -c %s "$dir/bench.gbx") bytes"

payload_bytes=$(( per * files ))
cat "$dir/bench.gbx" "$dir"/payload/* >/dev/null   # warm the page cache
# The store's import alone (verify while copying): `govbox model import` also loads the model on
# the CPU backend afterwards, which random bytes are not, and refuses it.
import_cmd="exec '$PWD/target/release/examples/import_package' '$dir/state' '$dir/bench.gbx'"
import_name="import (images example)"
reset="rm -rf '$dir/state/models' '$dir/state/copy'; sync"
declare -A t r d
while read -r label secs rchar disk; do
    t[$label]=$secs r[$label]=$rchar d[$label]=$disk
done < <(python3 bench/measure_io.py "$runs" \
    "verify||exec '$G' --state '$dir/state' package verify '$dir/bench.gbx'" \
    "openssl||exec openssl dgst -$hash $dir/payload/*" \
    "import|$reset|$import_cmd" \
    "cp|$reset|exec cp -r '$dir/payload' '$dir/state/copy'" \
    "cpsync|$reset|cp -r '$dir/payload' '$dir/state/copy' && sync -f '$dir/state'")
v_s=${t[verify]} v_r=${r[verify]} v_d=${d[verify]} o_s=${t[openssl]} o_r=${r[openssl]} o_d=${d[openssl]}
i_s=${t[import]} i_r=${r[import]} c_s=${t[cp]} cs_s=${t[cpsync]}

mbs() { calc "$1 / 1000000 / $2" 0; }
printf '%-34s %8s %10s %16s %14s\n' "" "seconds" "MB/s" "rchar (bytes)" "disk reads"
printf '%-34s %8.3f %10s %16s %14s\n' "govbox package verify" "$v_s" "$(mbs "$payload_bytes" "$v_s")" "$v_r" "$v_d"
printf '%-34s %8.3f %10s %16s %14s\n' "openssl dgst -$hash (payload)" "$o_s" "$(mbs "$payload_bytes" "$o_s")" "$o_r" "$o_d"
printf '%-34s %8.3f %10s %16s\n' "$import_name" "$i_s" "$(mbs "$payload_bytes" "$i_s")" "$i_r"
printf '%-34s %8.3f %10s\n' "cp -r payload" "$c_s" "$(mbs "$payload_bytes" "$c_s")"
printf '%-34s %8.3f %10s\n' "cp -r payload + sync" "$cs_s" "$(mbs "$payload_bytes" "$cs_s")"
echo "archive $(stat -c %s "$dir/bench.gbx") bytes; payload $payload_bytes bytes"
echo "verify speed / openssl speed: $(calc "$o_s / $v_s" 2)  (target >= 0.90)"
echo "verify rchar / archive size:  $(calc "$v_r / $(stat -c %s "$dir/bench.gbx")" 3)  (1.000 = read once)"
echo "import time / cp time:        $(calc "$i_s / $c_s" 2) (cp+sync: $(calc "$i_s / $cs_s" 2))"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
