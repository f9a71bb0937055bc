#!/usr/bin/env python3
"""Client side of bench/n-choices.sh: one chat request with n=N against N separate requests
(sent at once, each n=1) for the same prompt, alternating ROUNDS times. Python standard library
only. Each request is non-streamed and seeded (choice j of the n=N request has seed S+j, the
j-th separate request seed S+j, so both sides sample the same kind of answers).

  n-choices.py --url URL --model NAME --token T --cacert CA -n 4 --max-tokens 128 --rounds 3

Prints one line per side and round: wall time, completion tokens, tokens/s, prompt tokens billed;
then the median ratio (n=N tokens/s over separate tokens/s).
"""
import argparse
import http.client
import json
import ssl
import statistics
import threading
import time
import urllib.parse

PROMPT = " ".join(f"Rule {i}: answer briefly, politely and only about the question asked." for i in range(40))


def post(args, body):
    u = urllib.parse.urlsplit(args.url)
    ctx = ssl.create_default_context(cafile=args.cacert)
    conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=600, context=ctx)
    conn.request("POST", u.path.rstrip("/") + "/chat/completions", json.dumps(body).encode(),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {args.token}"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise SystemExit(f"HTTP {r.status}: {data[:300]!r}")
    return json.loads(data)


def body(args, n, seed):
    return {"model": args.model, "n": n, "seed": seed, "temperature": 0.8, "max_tokens": args.max_tokens,
            "messages": [{"role": "system", "content": PROMPT},
                         {"role": "user", "content": "Write a long story about a lighthouse keeper."}]}


def one_request(args, seed):
    t = time.perf_counter()
    v = post(args, body(args, args.n, seed))
    return time.perf_counter() - t, v["usage"]["completion_tokens"], v["usage"]["prompt_tokens"]


def separate(args, seed):
    out = [None] * args.n

    def run(j):
        out[j] = post(args, body(args, 1, seed + j))

    t = time.perf_counter()
    threads = [threading.Thread(target=run, args=(j,)) for j in range(args.n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    return wall, sum(v["usage"]["completion_tokens"] for v in out), sum(v["usage"]["prompt_tokens"] for v in out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--cacert", required=True)
    p.add_argument("-n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    post(args, body(args, 1, 0))  # warm-up
    ratios = []
    for r in range(1, args.rounds + 1):
        seed = 1000 * r  # a new seed each round, the same for both sides
        rates = {}
        for side, f in (("n=%d" % args.n, one_request), ("%d separate" % args.n, separate)):
            wall, tokens, prompt = f(args, seed)
            rates[side] = tokens / wall
            print(f"round {r} {side:<11} {wall:6.2f} s {tokens:4d} tokens {tokens / wall:7.1f} tokens/s "
                  f"prompt tokens billed {prompt}", flush=True)
        a, b = rates.values()
        ratios.append(a / b)
    print(f"median ratio (n={args.n} / separate, tokens/s): {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
