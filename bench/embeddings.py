#!/usr/bin/env python3
"""Helper for bench/embed-bench.sh: makes the sentence set, times sentence-transformers on
PyTorch (CPU), and prints the govbox / sentence-transformers comparison.

    embeddings.py gen --out FILE [--n 256] [--seed 7]
    embeddings.py st --model DIR --sentences FILE [--threads 2] [--batch 32] [--rounds 3] [--single 64]
    embeddings.py report --govbox G1.json [G2.json ...] --st S1.json [S2.json ...]

`st` prints the same JSON fields as engine/examples/embed_bench.rs. `report` takes the best value
of each metric over repeated runs (the machine may be shared), and fails if the two sides'
vectors differ. `gen` and `report` need only the standard library.
"""

import argparse
import json
import math
import random
import statistics
import sys
import time

WORDS = """
the a an of to in for on with by from at as and or not is are was be been will can must may
should agency office citizen resident permit license application form request record document
data system server network appliance intranet audit log report review policy rule regulation
department ministry service public local national regional budget tax fee payment account
identity card certificate signature key encryption access user administrator staff officer
meeting schedule deadline week month year day morning evening today tomorrow new old current
annual monthly daily secure private internal external approved pending rejected complete
submit verify update renew register apply check confirm store export import backup restore
please how what when where which who why every each all some any other more less most first last
business housing health education transport water energy road school hospital court police
information question answer support help desk team project plan budget contract vendor supplier
""".split()


def gen(args):
    rng = random.Random(args.seed)
    out = []
    for _ in range(args.n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(15, 25))]
        out.append(" ".join(words).capitalize() + ".")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)


def pct(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    return sorted_vals[min(len(sorted_vals) - 1, round((len(sorted_vals) - 1) * p))]


def st(args):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    with open(args.sentences, encoding="utf-8") as f:
        texts = json.load(f)

    t = time.perf_counter()
    model = SentenceTransformer(args.model, device="cpu")
    load_ms = (time.perf_counter() - t) * 1e3

    def encode(batch):
        return model.encode(batch, batch_size=args.batch, convert_to_numpy=True, show_progress_bar=False)

    with torch.inference_mode():
        encode(texts[: args.batch])
        encode(texts[:1])
        t = time.perf_counter()
        for _ in range(args.rounds):
            for i in range(0, len(texts), args.batch):
                encode(texts[i : i + args.batch])
        batch_s = time.perf_counter() - t
        tokens = sum(
            int(m.sum()) for i in range(0, len(texts), args.batch)
            for m in model.tokenize(texts[i : i + args.batch])["attention_mask"]
        )
        single = []
        for s in texts[: args.single]:
            t = time.perf_counter()
            encode([s])
            single.append((time.perf_counter() - t) * 1e3)
        check = encode(texts[:8]).tolist()
    n = len(texts) * args.rounds
    single_sorted = sorted(single)
    print(json.dumps({
        "impl": "sentence-transformers",
        "threads": args.threads,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch,
        "load_ms": load_ms,
        "sentences_batched": n,
        "tokens_per_sentence": tokens / len(texts),
        "sentences_per_s": n / batch_s,
        "batch_ms_mean": batch_s * 1e3 / (args.rounds * math.ceil(len(texts) / args.batch)),
        "single_ms_median": pct(single_sorted, 0.5),
        "single_ms_p90": pct(single_sorted, 0.9),
        "single_ms_mean": statistics.fmean(single),
        "check_vectors": check,
    }))


def best(runs, key, higher_better):
    vals = [r[key] for r in runs]
    return max(vals) if higher_better else min(vals)


def report(args):
    def load(paths):
        runs = []
        for path in paths:
            with open(path) as f:
                runs.append(json.load(f))
        return runs

    gs, ss = load(args.govbox), load(args.st)
    g, s = gs[0], ss[0]
    worst = 0.0
    for a, b in zip(g["check_vectors"], s["check_vectors"]):
        worst = max(worst, max(abs(x - y) for x, y in zip(a, b)))
    print(f"threads: govbox {g['threads']} ({g.get('simd', '?')}), torch {s['torch_threads']} (torch {s['torch']})")
    print(f"tokens per sentence: {g['tokens_per_sentence']:.1f}; batch size {g['batch_size']}; "
          f"best of {len(gs)} govbox and {len(ss)} sentence-transformers runs, alternated")
    print(f"same vectors: largest difference over {len(g['check_vectors'])} sentences {worst:.2e}")
    print()
    rows = [
        ("throughput, batches (sentences/s)", "sentences_per_s", True),
        ("batch of 32, mean (ms)", "batch_ms_mean", False),
        ("single sentence, median (ms)", "single_ms_median", False),
        ("single sentence, p90 (ms)", "single_ms_p90", False),
        ("single sentence, mean (ms)", "single_ms_mean", False),
        ("load (ms)", "load_ms", False),
    ]
    print(f"{'':36} {'govbox':>10} {'sent-tr':>10} {'govbox advantage':>18}")
    for label, key, higher_better in rows:
        # sentences/s: higher is better; times: lower is better. The ratio is >1 when govbox wins.
        gv, sv = best(gs, key, higher_better), best(ss, key, higher_better)
        ratio = gv / sv if higher_better else sv / gv
        print(f"{label:36} {gv:10.2f} {sv:10.2f} {ratio:17.2f}x")
    if worst > 1e-4:
        print(f"WARNING: the two sides' vectors differ by {worst:.2e}", file=sys.stderr)
        sys.exit(1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--out", required=True)
    g.add_argument("--n", type=int, default=256)
    g.add_argument("--seed", type=int, default=7)
    s = sub.add_parser("st")
    s.add_argument("--model", required=True)
    s.add_argument("--sentences", required=True)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--single", type=int, default=64)
    r = sub.add_parser("report")
    r.add_argument("--govbox", nargs="+", required=True, help="govbox result files")
    r.add_argument("--st", nargs="+", required=True, help="sentence-transformers result files")
    args = p.parse_args()
    {"gen": gen, "st": st, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
