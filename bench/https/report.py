#!/usr/bin/env python3
"""Helper of bench/https-overhead.sh.

  report.py wrk NAME CONC ROUND SERVER_CPU_S CLIENT_CPU_S < wrk-output   one result line
  report.py inproc NAME ROUND < embed_latency-output                    one result line
  report.py table RESULTS.jsonl TARGET_MS                                the table and overheads

A result line is JSON: name, conc, round, requests, seconds, rps, p50_ms, p90_ms, p99_ms,
mean_ms, errors, cpu_ms (CPU per request of the server, or of the in-process timer) and
client_cpu_ms (CPU per request of wrk; absent in-process).
"""
import json
import statistics
import sys


def from_wrk(name, conc, rnd, server_cpu, client_cpu, server_t0, server_t1):
    text = sys.stdin.read()
    line = next((l for l in text.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        sys.exit("wrk printed no WRKJSON line:\n" + text)
    w = json.loads(line[len("WRKJSON "):])
    secs = w["duration_us"] / 1e6
    n = max(w["requests"], 1)
    errors = sum(w[k] for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts"))
    print(json.dumps({
        "name": name, "conc": int(conc), "round": int(rnd), "requests": w["requests"], "seconds": secs,
        "rps": w["requests"] / secs, "p50_ms": w["p50_us"] / 1e3, "p90_ms": w["p90_us"] / 1e3,
        "p99_ms": w["p99_us"] / 1e3, "mean_ms": w["mean_us"] / 1e3, "errors": errors,
        "cpu_ms": float(server_cpu) * 1e3 / n, "client_cpu_ms": float(client_cpu) * 1e3 / n,
        "server_mean_ms": server_mean(server_t0, server_t1),
    }))


def server_mean(t0, t1):
    (s0, c0), (s1, c1) = (map(float, t.split()) for t in (t0, t1))
    return (s1 - s0) * 1e3 / (c1 - c0) if c1 > c0 else None


def from_inproc(name, rnd):
    j = json.loads(sys.stdin.read().strip().splitlines()[-1])
    print(json.dumps({
        "name": name, "conc": j["callers"], "round": int(rnd), "requests": j["calls"], "seconds": j["seconds"],
        "rps": j["rps"], "p50_ms": j["p50_ms"], "p90_ms": j["p90_ms"], "p99_ms": j["p99_ms"],
        "mean_ms": j["mean_ms"], "errors": 0, "cpu_ms": j["cpu_ms_per_call"], "input_tokens": j["input_tokens"],
    }))


def table(path, target_ms):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    print(f"{'run':<18}{'conn':>5}{'rnd':>4}{'reqs':>7}{'req/s':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
          f"{'mean ms':>9}{'srv mean':>9}{'err':>5}{'cpu ms/req':>11}{'wrk cpu':>8}")
    for r in rows:
        cli = f"{r['client_cpu_ms']:>8.3f}" if "client_cpu_ms" in r else f"{'-':>8}"
        srv = f"{r['server_mean_ms']:>9.3f}" if r.get("server_mean_ms") is not None else f"{'-':>9}"
        print(f"{r['name']:<18}{r['conc']:>5}{r['round']:>4}{r['requests']:>7}{r['rps']:>8.1f}{r['p50_ms']:>9.3f}"
              f"{r['p90_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['mean_ms']:>9.3f}{srv}{r['errors']:>5}{r['cpu_ms']:>11.3f}{cli}")

    def get(name, conc, rnd):
        return next((r for r in rows if r["name"] == name and r["conc"] == conc and r["round"] == rnd), None)

    metrics = {
        "a": ("(a) p50, 1 conn - 1 caller", lambda i1, h1, i32, h32: h1["p50_ms"] - i1["p50_ms"]),
        "b": ("(b) 1/rps_https - 1/rps_inproc @32", lambda i1, h1, i32, h32: 1e3 / h32["rps"] - 1e3 / i32["rps"]),
        "b50": ("    p50 @32: https - inproc", lambda i1, h1, i32, h32: h32["p50_ms"] - i32["p50_ms"]),
        "b99": ("    p99 @32: https - inproc", lambda i1, h1, i32, h32: h32["p99_ms"] - i32["p99_ms"]),
        "c1": ("(c) CPU/req govboxd - inproc @1", lambda i1, h1, i32, h32: h1["cpu_ms"] - i1["cpu_ms"]),
        "c32": ("    CPU/req govboxd - inproc @32", lambda i1, h1, i32, h32: h32["cpu_ms"] - i32["cpu_ms"]),
        "w32": ("    CPU/req of wrk itself @32", lambda i1, h1, i32, h32: h32["client_cpu_ms"]),
        "s1": ("(d) mean @1: govboxd's own - inproc", lambda i1, h1, i32, h32: h1["server_mean_ms"] - i1["mean_ms"]),
        "t1": ("    mean @1: wrk - govboxd's own", lambda i1, h1, i32, h32: h1["mean_ms"] - h1["server_mean_ms"]),
    }
    rounds = sorted({r["round"] for r in rows if r["name"] == "https-embeddings"})
    per = {k: [] for k in metrics}
    for rnd in rounds:
        q = (get("inproc-embed", 1, rnd), get("https-embeddings", 1, rnd),
             get("inproc-embed", 32, rnd), get("https-embeddings", 32, rnd))
        if all(q):
            for k, (_, f) in metrics.items():
                per[k].append(f(*q))
    print()
    print("Overheads, HTTPS (TLS + HTTP + auth + routing + JSON + admission) minus in-process, in ms;")
    print("one value per round (each round runs both sides back to back), then their median:")
    for k, (label, _) in metrics.items():
        v = per[k]
        if not v:
            continue
        med = statistics.median(v)
        verdict = ""
        if k in ("a", "b"):
            verdict = f"  [target < {target_ms:g} ms: {'PASS' if med < target_ms else 'FAIL'}]"
        print(f"  {label:<36}" + "".join(f"{x:>9.3f}" for x in v) + f"   median {med:8.3f}{verdict}")
    hz1, hz32 = get("https-healthz", 1, 1), get("https-healthz", 32, 1)
    if hz1 or hz32:
        print()
        print("Reference, GET /healthz on the same kind of keep-alive HTTPS connections (no engine, no auth):")
        if hz1:
            print(f"  1 connection:   p50 {hz1['p50_ms']:.3f} ms, p99 {hz1['p99_ms']:.3f} ms "
                  f"(wrk + TLS + HTTP + routing round trip), {hz1['rps']:.0f} req/s")
        if hz32:
            print(f"  32 connections: {hz32['rps']:.0f} req/s; CPU per request govboxd {hz32['cpu_ms']:.3f} ms, "
                  f"wrk {hz32['client_cpu_ms']:.3f} ms")
    if any(r["errors"] for r in rows):
        print("\nWARNING: some runs had errors (non-2xx answers, timeouts or socket errors); see the table.")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "wrk":
        from_wrk(*sys.argv[2:9])
    elif cmd == "inproc":
        from_inproc(*sys.argv[2:4])
    elif cmd == "table":
        table(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(__doc__)
