#!/usr/bin/env python3
"""Writes a copy of a GGUF file with its Q4_0, Q4_1 and Q8_0 tensors de-quantised to F16.

    python3 bench/gguf_to_f16.py IN.gguf OUT.gguf      (needs numpy)

For measuring the F16 weight path on a real model where only a quantised file is at hand (the
SmolLM2 Q4_1 file of scripts/fetch-models.sh): the metadata is copied byte for byte, F32 tensors
as they are; any other tensor type is refused. The values are those of the quantised file, not
of the original checkpoint.
"""
import struct
import sys

import numpy as np

F32, F16, Q4_0, Q4_1, Q8_0 = 0, 1, 2, 3, 8
BLOCK = {Q4_0: 18, Q4_1: 20, Q8_0: 34}


def read_str(d, o):
    (n,) = struct.unpack_from("<Q", d, o)
    return d[o + 8 : o + 8 + n].decode(), o + 8 + n


def skip_value(d, o, t):
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    if t == 8:
        return read_str(d, o)[1]
    if t == 9:
        at, n = struct.unpack_from("<IQ", d, o)
        o += 12
        for _ in range(n):
            o = skip_value(d, o, at)
        return o
    return o + sizes[t]


def dequantize(t, raw, count):
    if t == F32:
        return None
    b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, BLOCK[t])
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    if t == Q8_0:
        q = b[:, 2:34].copy().view(np.int8).astype(np.float32)
        v = q * d
    else:
        qs = b[:, 4:20] if t == Q4_1 else b[:, 2:18]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
        v = q * d + b[:, 2:4].copy().view(np.float16).astype(np.float32) if t == Q4_1 else (q - 8.0) * d
    return v.reshape(count).astype(np.float16)


def main(src, dst):
    d = open(src, "rb").read()
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", d, 0)
    if magic != b"GGUF" or version != 3:
        sys.exit(f"{src}: not a GGUF v3 file")
    o = 24
    align = 32
    for _ in range(n_kv):
        key, o = read_str(d, o)
        (t,) = struct.unpack_from("<I", d, o)
        o += 4
        if key == "general.alignment":
            (align,) = struct.unpack_from("<I", d, o)
        o = skip_value(d, o, t)
    kv_bytes = d[24:o]
    infos = []
    for _ in range(n_tensors):
        name, o = read_str(d, o)
        (nd,) = struct.unpack_from("<I", d, o)
        dims = struct.unpack_from(f"<{nd}Q", d, o + 4)
        t, off = struct.unpack_from("<IQ", d, o + 4 + 8 * nd)
        o += 4 + 8 * nd + 12
        if t not in (F32, Q4_0, Q4_1, Q8_0):
            sys.exit(f"{src}: tensor {name} has type {t}, which this script does not convert")
        infos.append((name, dims, t, off))
    data_start = (o + align - 1) // align * align
    out_infos, blobs, off = [], [], 0
    for name, dims, t, toff in infos:
        count = int(np.prod(dims))
        size = count * 4 if t == F32 else count // 32 * BLOCK[t]
        raw = d[data_start + toff : data_start + toff + size]
        v = dequantize(t, raw, count)
        blob = raw if v is None else v.tobytes()
        out_infos.append((name, dims, F32 if v is None else F16, off))
        blobs.append(blob)
        off += (len(blob) + align - 1) // align * align
    write_gguf(dst, n_kv, kv_bytes, out_infos, blobs, align)


def write_gguf(dst, n_kv, kv_bytes, infos, blobs, align):
    """Writes a GGUF v3 file: the metadata bytes as read, the tensor infos `(name, dims, type,
    offset)` and the tensor data `blobs`, each padded to `align`."""
    with open(dst, "wb") as f:
        f.write(struct.pack("<4sIQQ", b"GGUF", 3, len(infos), n_kv))
        f.write(kv_bytes)
        for name, dims, t, toff in infos:
            nb = name.encode()
            f.write(struct.pack("<Q", len(nb)) + nb + struct.pack("<I", len(dims)))
            f.write(struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", t, toff))
        f.write(b"\0" * (-f.tell() % align))
        for blob in blobs:
            f.write(blob)
            f.write(b"\0" * (-len(blob) % align))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
