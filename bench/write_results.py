#!/usr/bin/env python3
"""Writes bench/RESULTS.md from the raw JSON that bench/run.sh leaves in bench/work/run/.

usage: write_results.py RUN_DIR OUT.md

Every figure in the report is read from RUN_DIR; nothing is assumed. A target whose figure was not
measured (e.g. F16 in a --quick run) is marked "not measured", never met.
"""
import json
import os
import sys

# Bytes per key or value element of govbox's CPU KV cache for each `kv_dtype`
# (drivers/src/cpu/kv_pool.rs: q8_0 stores 34 bytes per 32 values). Runs from before
# machine.json recorded the type used f32.
KV_BYTES_PER_ELEM = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}
MEMORY_SLACK_MB = 150


def load(run, name, required=True):
    path = os.path.join(run, name)
    if not os.path.exists(path):
        if required:
            sys.exit(f"write_results.py: {path} is missing; did bench/run.sh finish?")
        return None
    try:
        with open(path) as f:
            if name.endswith(".jsonl"):
                return [json.loads(line) for line in f if line.strip()]
            return json.load(f)
    except ValueError as e:
        sys.exit(f"write_results.py: {path} is not valid JSON: {e}")


def mib(b):
    return b / 2**20


def kv_mib(row, key):
    """A long-context row's KV bytes of one side in MiB, or n/a for rows written before they were kept."""
    return f"{mib(row[key]):.1f}" if key in row else "n/a"


def fmt(x, spec=".1f"):
    return "–" if x is None else format(x, spec)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: write_results.py RUN_DIR OUT.md")
    run, out = sys.argv[1], sys.argv[2]
    m = load(run, "machine.json")
    triad = load(run, "triad.json")
    gguf = {g["file"].removesuffix(".gguf"): g for g in load(run, "gguf.jsonl")}
    speed = {r["model"]: r for r in load(run, "speed.jsonl")}
    end = load(run, "end.json")
    srv = {}
    for s in ("llama-server", "govboxd"):
        srv[s] = {k: load(run, f"{s}-{k}.json") for k in ("1", "8", "prefix")}
    idle = load(run, "govboxd-idle.json", required=False) or {}
    hwm = load(run, "govboxd-hwm.json", required=False) or {}
    moe = load(run, "families-moe.json", required=False)
    gemma = load(run, "families-gemma3.json", required=False)

    q8, q4, f16 = "qwen2.5-0.5b-q8_0", "qwen2.5-0.5b-q4_k_m", "qwen2.5-0.5b-f16"
    q8_large, q4_large = "qwen2.5-1.5b-q8_0", "qwen2.5-1.5b-q4_k_m"
    q8_7b, q4_7b = "qwen2.5-7b-q8_0", "qwen2.5-7b-q4_k_m"
    large_files = (q8_large, q4_large, q8_7b, q4_7b)
    start = load(run, "start-to-ready.json", required=False)
    kv_dtype = m.get("kv_dtype", "f32")
    kv_elem = KV_BYTES_PER_ELEM[kv_dtype]
    longctx = load(run, "longctx.jsonl", required=False) or []
    smol = next((k for k in gguf if k.lower().startswith("smollm2")), None)
    quick = m["quick"]
    L = []
    w = L.append
    w("# govbox against llama.cpp: benchmark results")
    w("")
    if quick:
        w("> **This is a `--quick` run** (1 repetition, Q8_0 and SmolLM2 only for decode/prefill, "
          f"{m['stream_tokens']}-token streams, fewer triad passes). It checks that the harness works end to end; "
          "its figures are indicative only. The full run is `bench/run.sh` without `--quick`.")
        w("")
    loads = [float(m["load_start"].split()[0]), float(end["load_end"].split()[0])]
    # At the start nothing of the run is running yet; at the end the last measurement's own threads
    # (`threads` of them, busy until a second before) are in the 1-minute average, so only load
    # beyond them counts as other work.
    if loads[0] > 1.0 or loads[1] > m["threads"] + 0.5:
        w(f"> **The machine was busy during this run** (1-minute load average {loads[0]:.2f} at the start, "
          f"{loads[1]:.2f} at the end, on {m['cores']} cores, of which up to {m['threads']} is this run's own "
          "threads at the end). Competing work slows llama.cpp, whose thread "
          "pool spins and waits for every thread at each step, far more than govbox, so the govbox / llama.cpp "
          "ratios below overstate govbox. Only a run on an idle machine gives valid ratios.")
        w("")
    w(f"Written by `bench/run.sh{' --quick' if quick else ''}` (bench/write_results.py) from the raw JSON in "
      "`bench/work/run/`. Every figure below was measured in that run.")
    w("")
    w("## Machine and run")
    w("")
    w(f"- CPU: {m['cpu']}, {m['cores']} cores, L3 {m['l3']}, {m['mem_gib']} GiB memory, Linux {m['kernel']}")
    build = f" (of which {m['build_s']} s cargo build)" if m.get("build_s") else ""
    w(f"- Date (UTC): {m['date_utc']}; whole run {end['elapsed_s'] // 60} min {end['elapsed_s'] % 60} s{build}")
    w(f"- govbox commit {m['govbox_commit']}; llama.cpp {m['llama_cpp']} (built from the llama-cpp-python "
      "sdist by bench/get-llama-cpp.sh, GGML_NATIVE=ON"
      + (", built without AMX: LLAMA_AMX=off, see bench/README.md)"
         if m.get("llama_amx_off") else ")"))
    w(f"- Threads: {m['threads']} on both sides; repetitions: {m['reps']}"
      + (f"; every measured process at nice {m['nice']}" if m.get("nice") else ""))
    w(f"- Load average (1, 5, 15 min) at start: {m['load_start']}; at end: {end['load_end']} (the run's own "
      f"{m['threads']} threads were busy until the end, so up to {m['threads']} of that is the run itself). "
      "Other work on the machine lowers every figure; compare runs only at a low load.")
    w("")
    w("## Commands")
    w("")
    w("```")
    flags = (" --quick" if quick else "") + (" --large" if m.get("large") else "") + (" --families" if moe or gemma else "")
    w(f"bench/run.sh{flags}          # all of the below, then this file")
    w(f"OMP_NUM_THREADS={m['threads']} bench/work/bin/triad {triad['mib_per_array']} {triad['passes']}"
      "   # gcc -O3 -march=native -fopenmp bench/triad.c")
    w(f"llama-bench -m M -t {m['threads']} -p 512 -n 128 -r {m['reps']} -o json")
    w(f"govbox model bench --model M --device cpu --threads {m['threads']} -p 0 -n 128 -r {m['reps']} --kv-tokens 1024")
    w(f"govbox model bench --model M --device cpu --threads {m['threads']} -p 512 -n 0 -r 1 --kv-tokens 1024"
      f"   # {m['reps']} separate processes: within one, the prefix cache would serve the repeated prompt")
    w(f"llama-server -m Q8_0 -t {m['threads']} -np 8 --cont-batching -kvu -c {m['kv_tokens']} --host 127.0.0.1")
    w(f"govboxd (device = 'cpu', threads = {m['threads']}, [serving] max_concurrent = 8, kv_tokens = {m['kv_tokens']}; "
      "signed package of the same Q8_0 file, HTTPS + bearer token; MALLOC_ARENA_MAX=2 as dist/govboxd.service sets)")
    w(f"bench/serve_client.py streams -c 1|8 -n {m['stream_tokens']}   and   "
      f"bench/serve_client.py prefix --prefix-tokens {m['prefix_tokens']}")
    if moe or gemma:
        w("bench/moe-bench.sh --rounds N   and   bench/gemma3-window-bench.sh --ctx 4096   # --families")
    w("```")
    w("")
    w("## Models")
    w("")
    w("| file | size MiB | tensor types (count, MiB) | weight MiB read per decoded token |")
    w("|---|---:|---|---:|")
    for name, g in gguf.items():
        mix = ", ".join(f"{t} {v['count']} ({mib(v['bytes']):.1f})" for t, v in g["tensor_types"].items())
        w(f"| {name} | {mib(g['file_bytes']):.1f} | {mix} | {mib(g['bytes_per_token']):.1f} |")
    w("")
    w("The Qwen2.5-0.5B-shaped files hold random weights (bench/make_bench_model.py): speed does not depend "
      "on the values. Its rows (896) are not a multiple of 256, so llama-quantize's Q4_K_M stores most "
      "tensors as Q5_0 and the embedding as Q8_0; the row above is the file's actual mix.")
    w("")
    w("## Memory bandwidth")
    w("")
    w(f"STREAM-like triad `a[i] = b[i] + s*c[i]`, {triad['threads']} threads, 3 arrays of {triad['mib_per_array']} MiB, "
      f"{triad['passes']} passes (counting 24 bytes per element): best **{triad['best_gbs']:.2f} GB/s**, "
      f"mean {triad['mean_gbs']:.2f}, worst {triad['worst_gbs']:.2f}; check {triad['check']}.")
    w("")
    w("## Decode and prefill (tokens/s; llama-bench avg_ts against govbox mean over the repetitions)")
    w("")
    w("| model | tg128 llama.cpp | tg128 govbox | ratio | pp512 llama.cpp | pp512 govbox | ratio |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    ratios = {}
    for name, r in speed.items():
        g = r["govbox"]
        tg = g["tg"]["mean_tps"] / r["llama_tg"]["avg_ts"]
        pp = g["pp"]["mean_tps"] / r["llama_pp"]["avg_ts"]
        ratios[name] = (tg, pp)
        w(f"| {name} | {r['llama_tg']['avg_ts']:.1f} ± {r['llama_tg']['stddev_ts']:.1f} | {g['tg']['mean_tps']:.1f} "
          f"(best {g['tg']['best_tps']:.1f}) | {tg:.2f} | {r['llama_pp']['avg_ts']:.1f} ± {r['llama_pp']['stddev_ts']:.1f} "
          f"| {g['pp']['mean_tps']:.1f} (best {g['pp']['best_tps']:.1f}) | {pp:.2f} |")
    w("")
    # roofline
    roofs = {}
    for name in (q8,) + large_files:
        if name not in speed or name not in gguf:
            continue
        bpt = gguf[name]["bytes_per_token"]
        # The triad run just before this file's govbox decode, where the run has one (run.sh since
        # December 2026); the run's first triad otherwise.
        near = load(run, f"triad-{name}.json", required=False)
        gbs = near["best_gbs"] if near else triad["best_gbs"]
        ceiling = gbs * 1e9 / bpt
        tps, llama_tps = speed[name]["govbox"]["tg"]["mean_tps"], speed[name]["llama_tg"]["avg_ts"]
        roofs[name] = tps / ceiling
        when = (f"measured just before govbox's decode of this file ({triad['best_gbs']:.2f} GB/s at the run's "
                f"start; {triad['best_gbs'] * 1e9 / bpt:.1f} tokens/s and {tps * bpt / 1e9 / triad['best_gbs']:.0%} "
                "against that)") if near else "at the run's start"
        w(f"## Roofline ({name} decode)")
        w("")
        w(f"Ceiling = triad bandwidth {when} / weight bytes read per token = {gbs:.2f} GB/s / "
          f"{bpt / 1e6:.1f} MB = **{ceiling:.1f} tokens/s**. govbox decodes at {tps:.1f} "
          f"tokens/s = **{roofs[name]:.0%}** of it; llama.cpp at {llama_tps:.1f} = {llama_tps / ceiling:.0%}.")
        w("")
    roof = roofs.get(q8)
    if longctx:
        if all(r.get("method") == "one prefill per side" for r in longctx):
            w(f"## Long contexts ({q8_large}; bench/longctx-bench.sh: llama-batched-bench with -fa on and "
              "-ctk/-ctv as the KV type)")
            w("")
            w("One process per side, prompt length and KV type: the prefill of the whole prompt, then decode "
              "of 32 tokens at that depth; peak RSS of that process (/usr/bin/time), the weights' mapped "
              "pages included. KV MiB: each side's own account of its cache (llama.cpp's `llama_kv_cache: size` "
              "line with -v, govbox's kv_bytes), sized for the prompt + 64 tokens (llama.cpp rounds the cells "
              "up to a multiple of 256).")
        else:
            w(f"## Long contexts ({q8_large}; llama-bench with -fa on and -ctk/-ctv as the KV type)")
            w("")
            w("Prefill of the whole prompt in one process, then decode of 32 tokens at that depth in another; "
              "peak RSS is the larger of the two processes' (/usr/bin/time), the weights' mapped pages included.")
        w("")
        w("| prompt tokens | KV | prefill llama.cpp | prefill govbox | ratio | decode at depth llama.cpp | "
          "decode govbox | ratio | peak RSS llama.cpp (MB) | peak RSS govbox (MB) | KV llama.cpp (MiB) | "
          "KV govbox (MiB) |")
        w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in longctx:
            w(f"| {r['ctx']} | {r['kv']} | {r['llama_pp']:.1f} | {r['govbox_pp']:.1f} | {r['govbox_pp'] / r['llama_pp']:.2f} "
              f"| {r['llama_tg']:.2f} | {r['govbox_tg']:.2f} | {r['govbox_tg'] / r['llama_tg']:.2f} "
              f"| {r['llama_rss_kb'] * 1024 / 1e6:.0f} | {r['govbox_rss_kb'] * 1024 / 1e6:.0f} "
              f"| {kv_mib(r, 'llama_kv_bytes')} | {kv_mib(r, 'govbox_kv_bytes')} |")
        w("")
    if moe:
        w("## Qwen3-MoE (bench/moe-bench.sh; 3.16 B parameters, 8 of 48 experts per token)")
        w("")
        w(f"{moe['rounds']} rounds, alternating sides; load average {moe['load_start']} at the start, "
          f"{moe['load_end']} at the end. Both sides hold 768 tokens of KV (llama-bench's 512 + 128, rounded up "
          "by llama.cpp); govbox's RSS is the larger of its decode and prefill processes'.")
        w("")
        w("| file | MB | tg128 llama.cpp | tg128 govbox | ratio | pp512 llama.cpp | pp512 govbox | ratio "
          "| peak RSS llama.cpp (MB) | peak RSS govbox (MB) |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in moe["files"]:
            w(f"| {r['file']} | {r['mb']:.0f} | {r['llama_tg']:.1f} | {r['govbox_tg']:.1f} "
              f"| {r['govbox_tg'] / r['llama_tg']:.2f} | {r['llama_pp']:.1f} | {r['govbox_pp']:.1f} "
              f"| {r['govbox_pp'] / r['llama_pp']:.2f} | {r['llama_rss_mb']:.0f} | {r['govbox_rss_mb']:.0f} |")
        w("")
    if gemma:
        win, dense = gemma["windowed"], gemma["dense"]
        w(f"## Gemma 3 sliding window at {gemma['ctx']} tokens (bench/gemma3-window-bench.sh)")
        w("")
        w(f"A Gemma-3-1B-shaped Q8_0 (five of six layers with a 512-token window) against its dense twin; "
          f"load average {gemma['load_start']} at the start, {gemma['load_end']} at the end.")
        w("")
        w("| file | govbox KV (MiB) | decode at depth govbox | llama.cpp | ratio | peak RSS govbox (MB) "
          "| llama.cpp (MB) |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for r in (win, dense):
            w(f"| {r['file']} | {mib(r['govbox_kv_bytes']):.1f} | {r['govbox_tg']:.2f} | {r['llama_tg']:.2f} "
              f"| {r['govbox_tg'] / r['llama_tg']:.2f} | {r['govbox_rss_mb']:.0f} | {r['llama_rss_mb']:.0f} |")
        w("")
    # serving
    w(f"## Serving (Q8_0, loopback, streams of {m['stream_tokens']} tokens)")
    w("")
    w("Aggregate tokens/s = completion tokens of all streams / wall time from the first request sent to the "
      "last stream closed. llama-server is asked for `ignore_eos: true`; govboxd has no such field, so its "
      "streams ask for max_tokens and the tokens actually produced are counted from each stream's usage chunk.")
    w("")
    w("| server | 1 stream tokens/s | 8 streams aggregate tokens/s | 8 / 1 | tokens produced (8 streams) | mean TTFT, 8 streams (s) |")
    w("|---|---:|---:|---:|---:|---:|")
    for s, d in srv.items():
        one, eight = d["1"], d["8"]
        w(f"| {s} | {one['aggregate_tps']:.1f} | {eight['aggregate_tps']:.1f} | "
          f"{eight['aggregate_tps'] / one['aggregate_tps']:.2f} | {eight['completion_tokens']} of "
          f"{8 * eight['max_tokens']} ({'/'.join(eight['tokens_from'])}) | "
          f"{'n/a (no text chunks)' if eight['ttft_s']['mean'] is None else format(eight['ttft_s']['mean'], '.2f')} |")
    w("")
    w("TTFT here is the time to the first chunk with text. The random-weight model mostly produces the "
      "converter's padding tokens; llama-server streams no chunk for a token without text, so it has none.")
    w("")
    w("Prefix cache: two one-token requests sharing a new system prompt of about "
      f"{m['prefix_tokens']} tokens (sized with the fixture tokenizer), each timed from request to answer.")
    w("")
    w("| server | prompt tokens (first, second) | first (s) | second (s) | second / first |")
    w("|---|---:|---:|---:|---:|")
    for s, d in srv.items():
        p = d["prefix"]
        w(f"| {s} | {p['first_prompt_tokens']}, {p['second_prompt_tokens']} | {p['first_ttft_s']:.3f} | "
          f"{p['second_ttft_s']:.3f} | {p['ratio']:.3f} |")
    w("")
    # memory
    g8 = gguf.get(q8)
    peaks = [d.get("rss", {}).get("peak_kb") for d in srv["govboxd"].values()]
    peak_kb = max((p for p in peaks if p), default=None)
    bound = None
    if g8 and g8.get("kv_elems_per_token"):
        kv_bytes = m["kv_tokens"] * g8["kv_elems_per_token"] * kv_elem
        bound = g8["file_bytes"] + kv_bytes + MEMORY_SLACK_MB * 1e6
        w("## govboxd memory while serving Q8_0")
        w("")
        w(f"Peak VmRSS sampled every 100 ms during the 1-stream, 8-stream and prefix runs: "
          f"**{fmt(peak_kb and peak_kb * 1024 / 1e6, '.0f')} MB** (idle after start "
          f"{fmt(idle.get('idle_rss_kb') and idle['idle_rss_kb'] * 1024 / 1e6, '.0f')} MB; VmHWM over the "
          f"process's life {fmt(hwm.get('hwm_kb') and hwm['hwm_kb'] * 1024 / 1e6, '.0f')} MB). Bound = file "
          f"{g8['file_bytes'] / 1e6:.0f} MB + KV cache {kv_bytes / 1e6:.0f} MB ({m['kv_tokens']} tokens x "
          f"{g8['kv_elems_per_token']} values x {kv_elem:g} bytes, {kv_dtype}) + {MEMORY_SLACK_MB} MB = "
          f"**{bound / 1e6:.0f} MB**.")
        w("")

    if start:
        kv_bytes = start["kv_bytes"]
        start_bound = start["file_bytes"] + kv_bytes + 200e6
        w(f"## govboxd start to ready ({start['model']}, a signed package)")
        w("")
        w(f"`bench/start-to-ready.sh`: the package imported in {start['import_s']:.1f} s (verify, store, self-test). "
          "Then govboxd with `verify_payload_on_start = true` (signatures re-checked, every payload byte hashed "
          "again while the model loads) from exec to its READY=1 (systemd's readiness notice; /readyz answers 200 "
          "then), against `cat` of the stored "
          "file; cold = after `echo 3 > /proc/sys/vm/drop_caches` before each of the two, warm = the file in "
          f"the page cache. KV cache {start['kv_tokens']} tokens {start['kv_dtype']} = {kv_bytes / 1e6:.0f} MB; "
          f"bound = file {start['file_bytes'] / 1e6:.0f} MB + KV + 200 MB = **{start_bound / 1e6:.0f} MB**. "
          f"govboxd's log: {start['hashed_log'] or 'n/a'}.")
        w("")
        w("| page cache | cat (s) | start to ready (s) | ratio | VmHWM at ready (MB) | after one answer (MB) |")
        w("|---|---:|---:|---:|---:|---:|")
        for r in start["runs"]:
            w(f"| {r['mode']} | {r['cat_s']:.2f} | {r['ready_s']:.2f} | {r['ready_s'] / r['cat_s']:.2f} "
              f"| {r['hwm_ready_kb'] * 1024 / 1e6:.0f} | {r['hwm_after_kb'] * 1024 / 1e6:.0f} |")
        w("")

    # targets
    w("## Targets")
    w("")
    w("| target | figure | threshold | result |")
    w("|---|---:|---|---|")

    def target(label, value, ok, threshold, spec=".2f"):
        if value is None:
            w(f"| {label} | – | {threshold} | not measured{' (--quick)' if quick else ''} |")
        else:
            w(f"| {label} | {format(value, spec)} | {threshold} | {'**met**' if ok(value) else '**missed**'} |")

    for name, label, need in ((q8, "Q8_0", 1.0), (q4, "Q4_K_M", 1.0), (smol, "SmolLM2 Q4_1", 1.0), (f16, "F16", 0.9)):
        v = ratios.get(name, (None, None))[0]
        target(f"decode tg128 govbox / llama.cpp, {label}", v, lambda x, n=need: x >= n, f">= {need:.1f}")
    for name, label in ((q8, "Q8_0"), (q4, "Q4_K_M"), (smol, "SmolLM2 Q4_1"), (f16, "F16")):
        v = ratios.get(name, (None, None))[1]
        target(f"prefill pp512 govbox / llama.cpp, {label}", v, lambda x: x >= 1.0, ">= 1.0")
    target("roofline: Q8_0 decode / bandwidth ceiling", roof, lambda x: x >= 0.70, ">= 70 %", ".0%")
    if m.get("large"):
        labels = ("1.5B Q8_0", "1.5B Q4_K_M", "7B Q8_0", "7B Q4_K_M")
        for name, label in zip(large_files, labels):
            tg, pp = ratios.get(name, (None, None))
            target(f"decode tg128 govbox / llama.cpp, {label}", tg, lambda x: x >= 1.0, ">= 1.0")
            target(f"prefill pp512 govbox / llama.cpp, {label}", pp, lambda x: x >= 1.0, ">= 1.0")
        for name, label in zip(large_files, labels):
            target(f"roofline: {label} decode / bandwidth ceiling", roofs.get(name), lambda x: x >= 0.85, ">= 85 %",
                   ".0%")
        for r in longctx:
            at = f"{r['ctx']} tokens, KV {r['kv']}"
            target(f"prefill govbox / llama.cpp, {at}", r["govbox_pp"] / r["llama_pp"], lambda x: x >= 1.0, ">= 1.0")
            target(f"decode at depth govbox / llama.cpp, {at}", r["govbox_tg"] / r["llama_tg"], lambda x: x >= 1.0,
                   ">= 1.0")
            target(f"peak RSS govbox / llama.cpp, {at}", r["govbox_rss_kb"] / r["llama_rss_kb"], lambda x: x <= 1.0,
                   "<= 1.0", ".3f")
            if "llama_kv_bytes" in r:
                target(f"KV cache bytes govbox / llama.cpp, {at}", r["govbox_kv_bytes"] / r["llama_kv_bytes"],
                       lambda x: x <= 1.0, "<= 1.0", ".3f")
        if start:
            for r in start["runs"]:
                if r is min((x for x in start["runs"] if x["mode"] == r["mode"]), key=lambda x: x["ready_s"]):
                    target(f"govboxd start to ready / cat, {start['model']}, {r['mode']} page cache",
                           r["ready_s"] / r["cat_s"], lambda x: x <= 1.5, "<= 1.5")
            hwm_mb = max(r["hwm_after_kb"] for r in start["runs"]) * 1024 / 1e6
            target(f"govboxd peak RSS, {start['model']} (MB)", hwm_mb, lambda x: x <= start_bound / 1e6,
                   f"<= {start_bound / 1e6:.0f} MB", ".0f")
    for r in (moe or {}).get("files", []):
        f = r["file"]
        target(f"decode tg128 govbox / llama.cpp, {f}", r["govbox_tg"] / r["llama_tg"], lambda x: x >= 1.0, ">= 1.0")
        target(f"prefill pp512 govbox / llama.cpp, {f}", r["govbox_pp"] / r["llama_pp"], lambda x: x >= 1.0, ">= 1.0")
        target(f"peak RSS govbox / llama.cpp, {f}", r["govbox_rss_mb"] / r["llama_rss_mb"], lambda x: x <= 1.0,
               "<= 1.0", ".3f")
    if gemma:
        win, dense = gemma["windowed"], gemma["dense"]
        target("Gemma 3 KV bytes, windowed / dense", win["govbox_kv_bytes"] / dense["govbox_kv_bytes"],
               lambda x: x < 1.0, "< 1.0")
        target("Gemma 3 decode at depth, windowed / dense (speed)", win["govbox_tg"] / dense["govbox_tg"],
               lambda x: x > 1.0, "> 1.0")
    gd, ls = srv["govboxd"], srv["llama-server"]
    target("govboxd 8 streams / 1 stream (aggregate tokens/s)", gd["8"]["aggregate_tps"] / gd["1"]["aggregate_tps"],
           lambda x: x >= 3.0, ">= 3.0")
    target("govboxd 8 streams / llama-server 8 streams", gd["8"]["aggregate_tps"] / ls["8"]["aggregate_tps"],
           lambda x: x >= 1.0, ">= 1.0")
    target("govboxd prefix TTFT, second / first", gd["prefix"]["ratio"], lambda x: x <= 0.2, "<= 0.2", ".3f")
    target("govboxd peak RSS serving Q8_0 (MB)", peak_kb and peak_kb * 1024 / 1e6,
           lambda x: bound is not None and x * 1e6 <= bound, f"<= {fmt(bound and bound / 1e6, '.0f')} MB", ".0f")
    w("")
    with open(out, "w") as f:
        f.write("\n".join(L))
    print(f"wrote {out}", file=sys.stderr)


main()
