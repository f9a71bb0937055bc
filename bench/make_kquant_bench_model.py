#!/usr/bin/env python3
"""Writes a random-weight GGUF with SmolLM2-135M's tokenizer and layer count, widened so that
every matmul's rows are whole Q4_K/Q5_K super-blocks (256 values), with its linear layers in one
K format:

    python3 bench/make_kquant_bench_model.py SMOLLM2.gguf OUT.gguf q4_k|q5_k    (needs numpy)

SmolLM2's hidden size (576) is not a multiple of 256, so a K-quantised SmolLM2 (as llama-quantize
makes one) keeps most tensors in other formats; this file measures the Q4_K/Q5_K kernels alone:
hidden 768, 12 heads of 64 (4 KV heads), FFN 2048, 30 layers; the embedding (and tied head) Q8_0,
the norms F32. The values are random (speed does not depend on them) and the output is noise.
The template's metadata is copied but for the four shape keys.
"""
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_to_f16 import read_str, skip_value, write_gguf  # noqa: E402  (GGUF reading and writing)

F32, Q8_0, Q4K, Q5K = 0, 8, 12, 13
WIDEN = {576: 768, 1536: 2048, 192: 256}
SHAPE_KEYS = {
    "llama.embedding_length": 768,
    "llama.feed_forward_length": 2048,
    "llama.attention.head_count": 12,
    "llama.attention.head_count_kv": 4,
}


def random_blocks(rng, n_blocks, block_bytes, scales):
    """Random bytes in blocks, each block starting with the f16 values `scales`."""
    b = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for i, s in enumerate(scales):
        b[:, 2 * i : 2 * i + 2] = np.frombuffer(np.float16(s).tobytes(), dtype=np.uint8)
    return b.tobytes()


def tensor(rng, name, dims, kfmt):
    count = int(np.prod(dims))
    if len(dims) == 1:
        return F32, (1.0 + 0.01 * rng.standard_normal(count)).astype(np.float32).tobytes()
    if name == "token_embd.weight":
        return Q8_0, random_blocks(rng, count // 32, 34, [0.002])
    if kfmt == Q4K:
        return Q4K, random_blocks(rng, count // 256, 144, [0.0004, 0.0002])
    return Q5K, random_blocks(rng, count // 256, 176, [0.0002, 0.0001])


def main(src, dst, fmt):
    kfmt = {"q4_k": Q4K, "q5_k": Q5K}.get(fmt)
    if kfmt is None:
        sys.exit(f"format {fmt!r}: expected q4_k or q5_k")
    d = open(src, "rb").read()
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", d, 0)
    if magic != b"GGUF" or version != 3:
        sys.exit(f"{src}: not a GGUF v3 file")
    o, align, kv = 24, 32, bytearray()
    for _ in range(n_kv):
        start = o
        key, o = read_str(d, o)
        (t,) = struct.unpack_from("<I", d, o)
        o += 4
        if key == "general.alignment":
            (align,) = struct.unpack_from("<I", d, o)
        end = skip_value(d, o, t)
        if key in SHAPE_KEYS:
            if t != 4:
                sys.exit(f"{src}: {key} has value type {t}, expected 4 (uint32)")
            kv += d[start:o] + struct.pack("<I", SHAPE_KEYS[key])
        else:
            kv += d[start:end]
        o = end
    if not all(k.encode() in kv for k in SHAPE_KEYS):
        sys.exit(f"{src}: not a Llama-architecture file with the shape keys {list(SHAPE_KEYS)}")
    rng = np.random.default_rng(7)
    infos, blobs, off = [], [], 0
    for _ in range(n_tensors):
        name, o = read_str(d, o)
        (nd,) = struct.unpack_from("<I", d, o)
        dims = [WIDEN.get(x, x) for x in struct.unpack_from(f"<{nd}Q", d, o + 4)]
        o += 4 + 8 * nd + 12
        t, blob = tensor(rng, name, dims, kfmt)
        infos.append((name, dims, t, off))
        blobs.append(blob)
        off += (len(blob) + align - 1) // align * align
    write_gguf(dst + ".partial", n_kv, bytes(kv), infos, blobs, align)
    os.replace(dst + ".partial", dst)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3])
