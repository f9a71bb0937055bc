#!/usr/bin/env bash
# What content filtering costs (issue 26), two parts, each side by side with filtering off in the
# same run; prints the load average before and after each part.
#
# 1. micro: a generated library of 12,000 keywords, per request (a four-message chat of 2,000
#    characters checked) and per streamed token (three characters a token), beside the same loop
#    with filtering off (the policy crate's example filter_bench; one JSON line).
# 2. serve: govboxd serving SmolLM2-135M (bench/govboxd-lib.sh) with a signed policy package of
#    12,000 generated keywords imported, asked by two clients of the same process in alternation:
#    `bench` (the box default: the library) and `unfiltered` (`client add --policy off`). Decode
#    tokens/s of streamed answers (ROUNDS rounds of TOKENS tokens, ignore_eos), and the latency of
#    a one-token request whose four messages hold 2,000 characters (REQUESTS each). Prints the
#    medians, the filtered/off ratios, and one JSON line.
#
# PART=micro|serve|all (default all). BUILD=0 and BIN_DIR as in govboxd-lib.sh (release builds).
set -euo pipefail
cd "$(dirname "$0")/.."
part=${PART:-all}
load() { cut -d' ' -f1-3 /proc/loadavg; }

if [ "$part" = micro ] || [ "$part" = all ]; then
  echo "load before micro: $(load)"
  nice -n 10 cargo build --release -q -p govbox-policy --example filter_bench
  ./target/release/examples/filter_bench
  echo "load after micro:  $(load)"
fi
[ "$part" = serve ] || [ "$part" = all ] || exit 0

. bench/govboxd-lib.sh
BENCH_ROLES=root,models,updates,policy bench_setup
# `bench` (bench_setup's client) gets the box default, the library; `unfiltered` none.
token_filtered=$token
token_off=$("$govbox" --state "$state" client add unfiltered --models all --rpm 100000000 --token --policy off \
  --cert-out "$work/c-off" 2>/dev/null | grep -o 'gbx_[A-Za-z0-9_-]*')

# The library: 12,000 keywords of two to four CJK characters (seeded), traditional folding on.
mkdir -p "$work/lib/lists"
python3 - "$work/lib" <<'PY'
import random, sys
r = random.Random(7)
words = {"".join(chr(0x4E00 + r.randrange(0x51A6)) for _ in range(r.randint(2, 4))) for _ in range(12500)}
words = sorted(words)[:12000]
open(f"{sys.argv[1]}/lists/kw.txt", "w").write("\n".join(words) + "\n")
open(f"{sys.argv[1]}/policy.toml", "w").write(
    'format = "govbox-policy/1"\nname = "bench"\nversion = "1.0.0"\n[normalise]\ntraditional = true\n'
    '[[category]]\nid = "c"\naction = "refuse"\nrefusal = "no"\nkeywords = ["lists/kw.txt"]\n'
    'patterns = [{ id = "p", regex = "qq[0-9]{5,9}zz" }]\n')
PY
"$govbox" policy build "$work/lib" --sign "$work/v.key" -o "$work/bench.gbp" | sed -n 3p
"$govbox" --state "$state" policy import "$work/bench.gbp" >/dev/null

bench_start ""
url=https://127.0.0.1:$port
echo "load before serve: $(load)"
python3 - "$url" "$state/tls/ca.crt" "$token_filtered" "$token_off" "${ROUNDS:-5}" "${TOKENS:-128}" "${REQUESTS:-30}" <<'PY'
import json, statistics, subprocess, sys, time, http.client, ssl
url, ca, tok_f, tok_o, rounds, tokens, requests = sys.argv[1:4] + sys.argv[4:5] + [int(x) for x in sys.argv[5:]]
def stream(tok):
    out = subprocess.run([sys.executable, "bench/serve_client.py", "streams", "--url", url + "/v1", "--model", "m", "-c", "1",
                          "-n", str(tokens), "--token", tok, "--cacert", ca, "--ignore-eos"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"serve_client.py failed: {out.stderr.strip()}")
    r = json.loads(out.stdout)
    assert r["finish_reasons"] != ["content_filter"], r
    return r["mean_stream_tps"]
ctx = ssl.create_default_context(cafile=ca)
host, port = url.split("//")[1].split(":")
conn = {}
para = ("The committee reviewed the annual report on public transport, water supply and schools. " * 6)[:500]
body = json.dumps({"model": "m", "max_tokens": 1, "temperature": 0,
                   "messages": [{"role": "user", "content": para}] * 4}).encode()
def one(tok):
    c = conn.get(tok) or http.client.HTTPSConnection(host, int(port), context=ctx, timeout=120)
    conn[tok] = c
    t = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"})
    r = c.getresponse(); data = r.read()
    assert r.status == 200, (r.status, data[:200])
    return (time.perf_counter() - t) * 1e3
stream(tok_f); stream(tok_o)  # warm-up, not counted
tps = {"filtered": [], "off": []}
for _ in range(rounds):
    tps["filtered"].append(stream(tok_f)); tps["off"].append(stream(tok_o))
one(tok_f); one(tok_o)
ms = {"filtered": [], "off": []}
for _ in range(requests):
    ms["filtered"].append(one(tok_f)); ms["off"].append(one(tok_o))
med = {k: statistics.median(v) for k, v in tps.items()}
lat = {k: statistics.median(v) for k, v in ms.items()}
print(f"decode tokens/s (median of {rounds}, {tokens} tokens a stream): filtered {med['filtered']:.1f}, "
      f"off {med['off']:.1f}, filtered/off {med['filtered'] / med['off']:.4f} "
      f"(decode time {(med['off'] / med['filtered'] - 1) * 100:+.2f} %)")
print(f"one-token request, 2,000 characters in 4 messages (median of {requests}): filtered {lat['filtered']:.2f} ms, "
      f"off {lat['off']:.2f} ms, difference {lat['filtered'] - lat['off']:+.2f} ms")
print(json.dumps({"keywords": 12000, "decode_tps": tps, "request_ms": ms, "median_tps": med, "median_request_ms": lat}))
PY
echo "load after serve:  $(load)"
