#!/usr/bin/env python3
"""Load client for bench/run.sh: measures an OpenAI-compatible server (govboxd or llama-server) on
loopback. Python standard library only (threads, http.client, ssl), so it needs no install.

  serve_client.py streams --url URL --model NAME -c N -n TOKENS [--token T] [--cacert CA]
                  [--ignore-eos] [--rss-pid PID]
      N concurrent streaming chat completions of at most TOKENS tokens each, all started at once.
      Prints JSON: wall time, completion tokens (from each stream's usage chunk, else counted
      chunks), aggregate tokens/s = total completion tokens / wall time, per-stream TTFT and
      tokens/s, and with --rss-pid the peak and last VmRSS of that process sampled every 100 ms.

  serve_client.py prefix --url URL --model NAME [--prefix-tokens 1000] [--tokenizer tokenizer.json] ...
      Time to first token of two requests that share a ~1,000-token system prompt (new to the
      server: it starts with a random nonce), and differ in the user message. Each is a
      non-streamed request for one token, so its latency is prefill + one decode step + HTTP.
      Prints JSON with both latencies, their ratio (second / first) and the prompt token counts.

Exit status 1 with a message on stderr when a request fails (HTTP status, connection, bad JSON).
"""
import argparse
import http.client
import json
import os
import random
import ssl
import sys
import threading
import time
import urllib.parse


class BenchError(Exception):
    pass


def connect(url, cacert, timeout):
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        ctx = ssl.create_default_context(cafile=cacert) if cacert else ssl.create_default_context()
        return http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout, context=ctx), u.path.rstrip("/")
    if u.scheme == "http":
        return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout), u.path.rstrip("/")
    raise BenchError(f"--url {url}: scheme must be http or https")


def headers(token):
    h = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return h


def body_for(args, messages, max_tokens, stream):
    b = {"model": args.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "seed": 1}
    if stream:
        b["stream"] = True
        b["stream_options"] = {"include_usage": True}
    if args.ignore_eos:
        b["ignore_eos"] = True  # llama-server's extension; govboxd has no such field
    return json.dumps(b).encode()


def post(args, conn, base, body):
    conn.request("POST", base + "/chat/completions", body=body, headers=headers(args.token))
    resp = conn.getresponse()
    if resp.status != 200:
        text = resp.read()[:500].decode(errors="replace")
        raise BenchError(f"POST {args.url}/chat/completions: HTTP {resp.status}: {text}")
    return resp


def one_stream(args, idx, max_tokens, start_barrier, out):
    conn, base = connect(args.url, args.cacert, args.timeout)
    try:
        messages = [{"role": "user", "content": f"Stream {idx}: write a long story about a lighthouse keeper."}]
        body = body_for(args, messages, max_tokens, stream=True)
        start_barrier.wait()
        t0 = time.perf_counter()
        resp = post(args, conn, base, body)
        ttft = None
        chunks = 0
        usage = None
        finish = None
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            ev = json.loads(data)
            if ev.get("error"):
                raise BenchError(f"stream {idx}: error event: {ev['error']}")
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices") or []:
                delta = ch.get("delta") or {}
                if delta.get("content"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                if ch.get("finish_reason"):
                    finish = ch["finish_reason"]
        t1 = time.perf_counter()
        tokens = usage["completion_tokens"] if usage and "completion_tokens" in usage else chunks
        out[idx] = {
            "start": t0, "end": t1, "ttft_s": ttft, "completion_tokens": tokens,
            "tokens_from": "usage" if usage else "chunks", "content_chunks": chunks, "finish_reason": finish,
            "tps": tokens / (t1 - t0) if t1 > t0 else 0.0,
        }
    except Exception as e:  # reported by the main thread
        out[idx] = {"error": f"{type(e).__name__}: {e}"}
        try:
            start_barrier.abort()
        except threading.BrokenBarrierError:
            pass
    finally:
        conn.close()


def read_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's VmRSS every 100 ms on a thread while in a `with` block."""

    def __init__(self, pid):
        self.pid = pid
        self.res = {"before_kb": None, "peak_kb": None, "last_kb": None, "samples": 0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.is_set():
            kb = read_rss_kb(self.pid)
            if kb is not None:
                self.res["samples"] += 1
                self.res["last_kb"] = kb
                self.res["peak_kb"] = max(self.res["peak_kb"] or 0, kb)
            self.stop.wait(0.1)

    def __enter__(self):
        if self.pid:
            self.res["before_kb"] = read_rss_kb(self.pid)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.pid:
            self.stop.set()
            self.thread.join()


def cmd_streams(args):
    out = [None] * args.concurrency
    barrier = threading.Barrier(args.concurrency + 1)
    threads = [threading.Thread(target=one_stream, args=(args, i, args.tokens, barrier, out), daemon=True)
               for i in range(args.concurrency)]
    for t in threads:
        t.start()
    with RssSampler(args.rss_pid) as rss:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        t0 = time.perf_counter()
        for t in threads:
            t.join(args.timeout)
        wall = time.perf_counter() - t0
    errors = [r["error"] for r in out if r and "error" in r]
    if any(r is None for r in out):
        errors.append(f"{sum(r is None for r in out)} stream(s) did not finish within {args.timeout} s")
    if errors:
        raise BenchError("; ".join(sorted(set(errors))))
    total = sum(r["completion_tokens"] for r in out)
    ttfts = [r["ttft_s"] for r in out if r["ttft_s"] is not None]
    res = {
        "concurrency": args.concurrency, "max_tokens": args.tokens, "wall_s": wall, "completion_tokens": total,
        "aggregate_tps": total / wall, "mean_stream_tps": sum(r["tps"] for r in out) / len(out),
        "ttft_s": {"min": min(ttfts, default=None), "max": max(ttfts, default=None),
                   "mean": sum(ttfts) / len(ttfts) if ttfts else None},
        "tokens_per_stream": [r["completion_tokens"] for r in out],
        "tokens_from": sorted({r["tokens_from"] for r in out}),
        "finish_reasons": sorted({str(r["finish_reason"]) for r in out}),
    }
    if args.rss_pid:
        res["rss"] = rss.res
    return res


def system_prompt(n_tokens, tokenizer_path, nonce):
    """About n_tokens tokens of varied English text, opening with a nonce the server has not seen."""
    words = ("the regional office keeps records of residence permits business licences tax filings and "
             "social insurance contributions for every district each clerk must check the applicant's "
             "identity card the household register and the employer's letter before a permit is renewed "
             "applications missing a document are returned with a written note naming what is missing").split()
    rng = random.Random(7)
    count = None
    if tokenizer_path:
        try:
            from tokenizers import Tokenizer
            tok = Tokenizer.from_file(tokenizer_path)
        except Exception as e:
            raise BenchError(f"--tokenizer {tokenizer_path}: cannot load it with the tokenizers package: {e}")
        count = lambda s: len(tok.encode(s).ids)  # noqa: E731
    text = f"Session {nonce}. You are a helpful assistant for a government service desk."
    while True:
        sentence = " ".join(rng.choice(words) for _ in range(12)).capitalize() + "."
        nxt = text + " " + sentence
        est = count(nxt) if count else len(nxt.split()) * 1.3
        if est > n_tokens:
            return text
        text = nxt


def timed_one_token(args, messages):
    conn, base = connect(args.url, args.cacert, args.timeout)
    try:
        t0 = time.perf_counter()
        resp = post(args, conn, base, body_for(args, messages, 1, stream=False))
        j = json.loads(resp.read())
        dt = time.perf_counter() - t0
    finally:
        conn.close()
    return dt, (j.get("usage") or {}).get("prompt_tokens")


def cmd_prefix(args):
    # An unrelated first request, so that one-off start-up costs fall on neither measured request.
    timed_one_token(args, [{"role": "user", "content": "Hello."}])
    sysmsg = system_prompt(args.prefix_tokens, args.tokenizer, f"{random.getrandbits(48):012x}")
    with RssSampler(args.rss_pid) as rss:
        first, p1 = timed_one_token(args, [{"role": "system", "content": sysmsg},
                                           {"role": "user", "content": "How do I renew a residence permit?"}])
        second, p2 = timed_one_token(args, [{"role": "system", "content": sysmsg},
                                            {"role": "user", "content": "Which documents does a business licence need?"}])
    res = {"first_ttft_s": first, "second_ttft_s": second, "ratio": second / first,
           "first_prompt_tokens": p1, "second_prompt_tokens": p2, "target_prefix_tokens": args.prefix_tokens}
    if args.rss_pid:
        res["rss"] = rss.res
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["streams", "prefix"])
    ap.add_argument("--url", required=True, help="base URL ending in /v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--token", default=os.environ.get("BENCH_TOKEN"), help="bearer token (or $BENCH_TOKEN)")
    ap.add_argument("--cacert", help="CA certificate for https")
    ap.add_argument("-c", "--concurrency", type=int, default=1)
    ap.add_argument("-n", "--tokens", type=int, default=128)
    ap.add_argument("--ignore-eos", action="store_true", help="send llama-server's ignore_eos: true")
    ap.add_argument("--rss-pid", type=int, help="sample this process's VmRSS during the run")
    ap.add_argument("--prefix-tokens", type=int, default=1000)
    ap.add_argument("--tokenizer", help="tokenizer.json to size the shared system prompt with")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    if args.concurrency < 1 or args.tokens < 1:
        ap.error("-c and -n must be at least 1")
    try:
        res = cmd_streams(args) if args.mode == "streams" else cmd_prefix(args)
    except (BenchError, OSError, ValueError, http.client.HTTPException) as e:
        print(f"serve_client {args.mode} {args.url}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
