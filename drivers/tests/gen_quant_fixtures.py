#!/usr/bin/env python3
"""Generates the reference data for drivers/tests/quant_matches_gguf_py.rs.

The reference is gguf-py's numpy implementation (`gguf.quants`, PyPI package `gguf`). For each
weight format this writes drivers/tests/fixtures/quant/<name>.bin holding a few rows of
ROW_LEN values:

  * the quantised bytes: produced by `gguf.quants.quantize` from an f32 source row where gguf-py
    can quantise the format (the source row is stored too, so the Rust side can check that its
    quantiser gives the same bytes); otherwise random valid blocks (random bytes with the f16
    scale fields set to small finite values);
  * `gguf.quants.dequantize` of those bytes;
  * a random f32 activation vector and the float64 dot product of the de-quantised row with it.

File layout (all little-endian):
  header:  b"GBQF", u32 version (1), u32 rows, u32 row_len, u32 flags (bit 0: has source)
  per row: [f32 source x row_len, if flag bit 0] | quantised bytes | f32 dequantised x row_len
           | f32 activations x row_len | f64 dot

Run from the repository root with the project's virtual environment:

  .venv/bin/python drivers/tests/gen_quant_fixtures.py

The output is deterministic (fixed seed), so rerunning it rewrites identical files.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import quants

SEED = 20240611
ROW_LEN = 1024
ROWS = 3
OUT = Path(__file__).resolve().parent / "fixtures" / "quant"

# (file name, type, whether gguf-py can quantise it, byte offsets of f16 scales in a block)
FORMATS = [
    ("f32", T.F32, True, []),
    ("f16", T.F16, True, []),
    ("bf16", T.BF16, True, []),
    ("q8_0", T.Q8_0, True, [0]),
    ("q4_0", T.Q4_0, True, [0]),
    ("q4_1", T.Q4_1, True, [0, 2]),
    ("q5_0", T.Q5_0, True, [0]),
    ("q5_1", T.Q5_1, True, [0, 2]),
    ("q4_k", T.Q4_K, False, [0, 2]),
    ("q5_k", T.Q5_K, False, [0, 2]),
    ("q6_k", T.Q6_K, False, [208]),
]


def special_row(rng: np.random.Generator) -> np.ndarray:
    """A row of 32-value blocks that exercise the edge cases of the simple quantisers."""
    blocks = [rng.normal(0.0, 1.0, 32) for _ in range(ROW_LEN // 32)]
    blocks[0] = np.zeros(32)  # d == 0: the inverse scale is 0
    blocks[1] = np.full(32, 0.375)  # max == min for the formats with a min
    ties = np.linspace(-3.0, 3.0, 32)
    ties[3], ties[7] = -3.0, 3.0  # equal magnitudes: numpy's argmax takes the first
    blocks[2] = ties
    halves = (np.arange(32) - 16) + 0.5  # exact .5 products when d == 1 (Q8_0: amax 127)
    halves[0] = 127.0
    blocks[3] = halves
    blocks[4] = rng.normal(0.0, 1e-6, 32)  # scales that are subnormal as f16
    blocks[5] = rng.normal(0.0, 300.0, 32)  # large values
    blocks[6] = -np.abs(rng.normal(0.0, 1.0, 32))  # all negative
    blocks[7] = np.abs(rng.normal(0.0, 1.0, 32)) + 5.0  # all positive, offset
    return np.concatenate(blocks).astype(np.float32)


def source_rows(rng: np.random.Generator) -> np.ndarray:
    scales = np.repeat(rng.uniform(0.05, 4.0, ROW_LEN // 32), 32)
    normal = (rng.normal(0.0, 1.0, ROW_LEN) * scales).astype(np.float32)
    uniform = rng.uniform(-1.5, 2.5, ROW_LEN).astype(np.float32)
    return np.stack([special_row(rng), normal, uniform])


def random_blocks(rng: np.random.Generator, qtype: T, scale_offsets: list[int]) -> np.ndarray:
    block_len, block_bytes = GGML_QUANT_SIZES[qtype]
    n_blocks = ROWS * ROW_LEN // block_len
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for off in scale_offsets:
        mag = rng.uniform(0.01, 0.1, n_blocks)
        sign = np.where(rng.integers(0, 2, n_blocks) == 0, -1.0, 1.0)
        scale = (mag * sign).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
        blocks[:, off : off + 2] = scale
    return blocks.reshape(ROWS, -1)


def write_format(name: str, qtype: T, can_quantize: bool, scale_offsets: list[int], rng: np.random.Generator) -> int:
    if can_quantize:
        src = source_rows(rng)
        qbytes = quants.quantize(src, qtype).view(np.uint8).reshape(ROWS, -1)
    else:
        src = None
        qbytes = random_blocks(rng, qtype, scale_offsets)
    deq = quants.dequantize(qbytes, qtype).astype(np.float32).reshape(ROWS, ROW_LEN)
    assert np.all(np.isfinite(deq)), name
    x = rng.uniform(-1.0, 1.0, (ROWS, ROW_LEN)).astype(np.float32)

    out = bytearray()
    out += b"GBQF" + struct.pack("<IIII", 1, ROWS, ROW_LEN, 1 if can_quantize else 0)
    for r in range(ROWS):
        if src is not None:
            out += src[r].astype("<f4").tobytes()
        out += qbytes[r].tobytes()
        out += deq[r].astype("<f4").tobytes()
        out += x[r].astype("<f4").tobytes()
        out += struct.pack("<d", float(np.dot(deq[r].astype(np.float64), x[r].astype(np.float64))))
    path = OUT / f"{name}.bin"
    path.write_bytes(bytes(out))
    return len(out)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    total = 0
    for name, qtype, can_quantize, offsets in FORMATS:
        size = write_format(name, qtype, can_quantize, offsets, rng)
        total += size
        print(f"{name}: {size} bytes")
    print(f"total: {total} bytes in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
