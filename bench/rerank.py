#!/usr/bin/env python3
"""Helper for bench/rerank-bench.sh: times sentence-transformers' CrossEncoder on PyTorch (CPU)
the way engine/examples/rerank_bench.rs times govbox, and prints the comparison.

    rerank.py st --model DIR --docs FILE [--threads 2] [--batch 32] [--rounds 2] [--single 16]
    rerank.py report --govbox G1.json [G2.json ...] --st S1.json [S2.json ...]

`report` takes the best value of each metric over repeated runs (the machine may be shared) and
fails if the two sides' scores differ by more than 1e-4.
"""
import argparse
import json
import statistics
import sys
import time


def st(args):
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(args.threads)
    with open(args.docs, encoding="utf-8") as f:
        job = json.load(f)
    queries, docs = job["queries"], job["documents"]
    t = time.perf_counter()
    model = CrossEncoder(args.model, device="cpu", max_length=512)
    load_ms = (time.perf_counter() - t) * 1e3

    def score(q, ds):
        return model.predict([(q, d) for d in ds], batch_size=args.batch, show_progress_bar=False)

    with torch.inference_mode():
        score(queries[0], docs[: args.batch])
        pairs = tokens = calls = 0
        t = time.perf_counter()
        for r in range(args.rounds):
            for i in range(len(docs) // args.batch):
                chunk = docs[i * args.batch:(i + 1) * args.batch]
                score(queries[(r + i) % len(queries)], chunk)
                pairs += len(chunk)
                calls += 1
        batch_s = time.perf_counter() - t
        for i in range(len(docs) // args.batch):
            chunk = docs[i * args.batch:(i + 1) * args.batch]
            enc = model.tokenizer([queries[0]] * len(chunk), chunk, truncation=True, max_length=512)
            tokens += sum(len(x) for x in enc["input_ids"])
        single = []
        for i, d in enumerate(docs[: args.single]):
            t = time.perf_counter()
            score(queries[i % len(queries)], [d])
            single.append((time.perf_counter() - t) * 1e3)
        check = [float(x) for x in score(queries[0], docs[:8])]
    print(json.dumps({
        "impl": "sentence-transformers",
        "threads": args.threads,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch,
        "load_ms": load_ms,
        "pairs": pairs,
        "tokens_per_pair": tokens / max(1, (len(docs) // args.batch) * args.batch),
        "pairs_per_s": pairs / batch_s,
        "batch_ms_mean": batch_s * 1e3 / max(1, calls),
        "single_ms_median": statistics.median(single),
        "check_scores": check,
    }))


def report(args):
    def load(paths):
        return [json.load(open(p)) for p in paths]

    gs, ss = load(args.govbox), load(args.st)
    g, s = gs[0], ss[0]
    worst = max(abs(a - b) for a, b in zip(g["check_scores"], s["check_scores"]))
    print(f"threads: govbox {g['threads']} ({g.get('simd', '?')}), torch {s['torch_threads']} (torch {s['torch']})")
    print(f"tokens per pair: govbox {g['tokens_per_pair']:.1f}, sentence-transformers {s['tokens_per_pair']:.1f}; "
          f"batch {g['batch_size']} pairs; best of {len(gs)} + {len(ss)} alternated runs")
    print(f"same scores: largest difference over {len(g['check_scores'])} pairs {worst:.2e}")
    rows = [("throughput (pairs/s)", "pairs_per_s", True), ("one query x 32 documents, mean (ms)", "batch_ms_mean", False),
            ("one query x 1 document, median (ms)", "single_ms_median", False), ("load (ms)", "load_ms", False)]
    print(f"{'':38} {'govbox':>10} {'sent-tr':>10} {'govbox advantage':>18}")
    for label, key, higher in rows:
        vals_g, vals_s = [r[key] for r in gs], [r[key] for r in ss]
        gv, sv = (max(vals_g), max(vals_s)) if higher else (min(vals_g), min(vals_s))
        ratio = gv / sv if higher else sv / gv
        print(f"{label:38} {gv:10.2f} {sv:10.2f} {ratio:17.2f}x")
    if worst > 1e-4:
        print(f"WARNING: the two sides' scores differ by {worst:.2e}", file=sys.stderr)
        sys.exit(1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("st")
    s.add_argument("--model", required=True)
    s.add_argument("--docs", required=True)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--single", type=int, default=16)
    r = sub.add_parser("report")
    r.add_argument("--govbox", nargs="+", required=True)
    r.add_argument("--st", nargs="+", required=True)
    args = p.parse_args()
    {"st": st, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
