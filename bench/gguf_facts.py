#!/usr/bin/env python3
"""Facts about a GGUF file that the benchmark report needs, read with llama.cpp's gguf-py
(run with PYTHONPATH=bench/work/llama/llama.cpp/gguf-py):

  gguf_facts.py FILE.gguf...     prints one JSON object a line, per file:
    file_bytes          the file's size
    tensor_types        {type: {"count", "bytes"}} over all tensors: the file's actual mix (a
                        Q4_K_M file of a model whose rows are not a multiple of 256 holds Q5_0,
                        Q8_0 and Q6_K tensors too)
    weight_bytes        bytes of all tensors
    bytes_per_token     weight bytes one decode step reads: every tensor once, except that the
                        token embedding contributes one row when a separate output.weight exists
                        (with tied embeddings the whole matrix is read as the output projection)
    n_layers, n_kv_heads, head_dim, kv_elems_per_token  (K and V, all layers)
"""
import json
import os
import sys

try:
    import gguf
except ImportError:
    sys.exit("gguf_facts.py: cannot import gguf; run with PYTHONPATH=bench/work/llama/llama.cpp/gguf-py")


def field(r, key):
    f = r.get_field(key)
    if f is None:
        return None
    v = f.contents()
    return v


def facts(path):
    try:
        r = gguf.GGUFReader(path)
    except Exception as e:
        sys.exit(f"gguf_facts.py: cannot read {path} as GGUF: {e}")
    arch = field(r, "general.architecture")
    types = {}
    total = 0
    names = {}
    for t in r.tensors:
        n = int(t.n_bytes)
        e = types.setdefault(t.tensor_type.name, {"count": 0, "bytes": 0})
        e["count"] += 1
        e["bytes"] += n
        total += n
        names[t.name] = t
    per_token = total
    emb = names.get("token_embd.weight")
    if emb is not None and "output.weight" in names:
        rows = int(emb.shape[-1]) if len(emb.shape) > 1 else 1  # gguf-py lists ne0 (row length) first
        per_token -= int(emb.n_bytes) - int(emb.n_bytes) // max(rows, 1)
    n_layers = field(r, f"{arch}.block_count")
    n_heads = field(r, f"{arch}.attention.head_count")
    n_kv = field(r, f"{arch}.attention.head_count_kv") or n_heads
    emb_len = field(r, f"{arch}.embedding_length")
    head_dim = field(r, f"{arch}.attention.key_length") or (emb_len // n_heads if emb_len and n_heads else None)
    kv = 2 * n_layers * n_kv * head_dim if n_layers and n_kv and head_dim else None
    return {
        "file": os.path.basename(path), "architecture": arch, "file_bytes": os.path.getsize(path),
        "tensor_types": dict(sorted(types.items(), key=lambda kv_: -kv_[1]["bytes"])), "weight_bytes": total,
        "bytes_per_token": per_token, "tied_embeddings": "output.weight" not in names,
        "n_layers": n_layers, "n_kv_heads": n_kv, "head_dim": head_dim, "kv_elems_per_token": kv,
    }


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: gguf_facts.py FILE.gguf...")
    for path in sys.argv[1:]:
        print(json.dumps(facts(path)))


main()
