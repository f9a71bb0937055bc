#!/usr/bin/env python3
"""Regenerates the committed fuzz seeds (fuzz/seeds/<target>/) from tests/fixtures.

    python3 fuzz/seeds/make_seeds.py

Real files are cut down where large (a GGUF header without most of its data, a safetensors
header with a few data bytes) and joined by small hand-made valid files, so that each target
starts from inputs that reach deep into its parser. Standard library only.

audit_export's seeds are not made here: they are two real exports of one govboxd run
(`govbox audit export` through `govbox-reliability --exec`, with GOVBOX_STATE), the first byte 0
for "export alone" and 1 for "export, then the previous export", both halves padded with spaces
to the same length so that the target's split falls between them.
"""
import io
import json
import os
import struct
import tarfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(*p):
    with open(os.path.join(FIX, *p), "rb") as f:
        return f.read()


# --- gguf_header -------------------------------------------------------------------------------
def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_minimal(align=32):
    kv = [
        gguf_str("general.architecture") + struct.pack("<I", 8) + gguf_str("qwen2"),
        gguf_str("general.alignment") + struct.pack("<II", 4, align),
        gguf_str("qwen2.context_length") + struct.pack("<IQ", 10, 64),
        gguf_str("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + gguf_str("a") + gguf_str("b"),
        gguf_str("general.flag") + struct.pack("<IB", 7, 1),
    ]
    tensors = [
        gguf_str("a.weight") + struct.pack("<IQQIQ", 2, 4, 2, 0, 0),  # f32 [2,4]: 32 bytes
        gguf_str("b.weight") + struct.pack("<IQIQ", 1, 32, 8, align),  # q8_0 one block: 34 bytes
    ]
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv) + b"".join(tensors)
    head += b"\0" * (-len(head) % align)
    return head + bytes(range(32)) + b"\0" * (align - 32 % align if 32 % align else 0) + bytes(34)


put("gguf_header", "minimal_f32_q8", gguf_minimal())
put("gguf_header", "minimal_align64", gguf_minimal(64))
put("gguf_header", "tiny-qwen2-q8_0.gguf", read("gguf", "tiny-qwen2-q8_0.gguf"))
put("gguf_header", "tiny-llama-f32_first64k", read("gguf", "tiny-llama-f32.gguf")[:65536])

# --- safetensors_header ------------------------------------------------------------------------
def safetensors(tensors, metadata=None):
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, size in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + size]}
        data += bytes(size)
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


put("safetensors_header", "small_mixed", safetensors(
    [("w", "F32", [2, 3], 24), ("b", "BF16", [3], 6), ("i", "I64", [1], 8), ("s", "F16", [], 2)],
    {"format": "pt"}))
put("safetensors_header", "empty", safetensors([]))
put("safetensors_header", "unknown_dtype", safetensors([("q", "F8_E4M3", [4], 4), ("u", "U8", [0], 0)]))
for name in ("model.safetensors", "expected_logits.safetensors"):
    b = read("tiny-qwen2", name)
    n = struct.unpack("<Q", b[:8])[0]
    put("safetensors_header", "tiny-qwen2-" + name + "-header", b[: 8 + n + 64])

# --- update_bundle (first byte: 0 = bundle head, 1 = new trust root) ----------------------------
put("update_bundle", "update_as_model", b"\0" + read("packages", "update_as_model.gbx"))
put("update_bundle", "good_package", b"\0" + read("packages", "good.gbx"))
put("update_bundle", "truncated", b"\0" + read("packages", "truncated.gbx"))
put("update_bundle", "root", b"\1" + read("packages", "root.json"))

# --- package_manifest (manifest NUL signatures) and package_tar ---------------------------------
for gbx in ("good.gbx", "update_as_model.gbx"):
    with tarfile.open(fileobj=io.BytesIO(read("packages", gbx))) as t:
        names = t.getnames()
        manifest = t.extractfile(names[0]).read()
        sigs = t.extractfile(names[1]).read()
    put("package_manifest", gbx.replace(".gbx", ""), manifest + b"\0" + sigs)
    if gbx == "good.gbx":
        # The same manifest with piece digests on its first file (3 MiB in pieces of 1 MiB).
        m = json.loads(manifest)
        m["files"][0]["size"] = 3 << 20
        m["files"][0]["chunks"] = {"size": 1 << 20, "digests": [f"{i:02x}" * 32 for i in range(3)]}
        chunked = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        put("package_manifest", "good_with_pieces", chunked + b"\0" + sigs)
for gbx in ("good.gbx", "unsigned.gbx", "symlink.gbx", "trailing_garbage.gbx", "update_as_model.gbx"):
    put("package_tar", gbx.replace(".gbx", ""), read("packages", gbx))

# --- chat_template (first byte even: conversation; odd: template NUL conversation) --------------
def convo(*msgs):
    return b"\0".join(bytes([r]) + c.encode() for r, c in msgs)


put("chat_template", "system_user_assistant", b"\2" + convo((0, "You are terse."), (1, "hi"), (2, "hello"), (1, "bye")))
put("chat_template", "user_only", b"\0" + convo((1, "What is 2+2?")))
put("chat_template", "bad_alternation", b"\0" + convo((1, "a"), (1, "b"), (3, "tool says {{ x }}")))
put("chat_template", "template_loop", b"\1" + b"{% for m in messages %}{{ m.role }}: {{ m.content | tojson }}\n"
    b"{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}\0" + convo((1, "x"), (2, "y")))
put("chat_template", "template_methods", b"\3" + b"{{ bos_token }}{% for m in messages %}{{ m['content'].strip()"
    b".upper() }}{{ raise_exception('no') if m.role == 'tool' }}{% endfor %}{{ strftime_now('%Y-%m-%d') }}\0"
    + convo((1, " padded "), (3, "t")))
# --- decoder_config ----------------------------------------------------------------------------
for fam in sorted(os.listdir(FIX)):
    if fam.startswith("tiny-") and os.path.isfile(os.path.join(FIX, fam, "config.json")):
        put("decoder_config", fam + ".json", read(fam, "config.json"))

# --- embed_prompts (config_sentence_transformers.json) ------------------------------------------
put("embed_prompts", "qwen3-embedder.json", read("retrieval", "tiny-qwen3-embedder", "config_sentence_transformers.json"))
put("embed_prompts", "default-prompt.json", b'{"prompts": {"query": "Q: ", "passage": ""}, "default_prompt_name": "query"}')

# --- policy_library (policy.toml NUL keyword list) ---------------------------------------------
POLICY_TOML = (
    'format = "govbox-policy/1"\nname = "seed"\nversion = "1"\nexceptions = ["ex.txt"]\n'
    '[normalise]\ntraditional = true\n[[category]]\nid = "v"\naction = "refuse"\nrefusal = "no"\n'
    'keywords = ["kw.txt"]\npatterns = [{ id = "p", regex = "ab{1,3}c" }]\n'
)
put("policy_library", "minimal", POLICY_TOML.encode() + b"\0" + "bomb\nr-1\t炸药\n".encode())
# --- admin_request (one admin socket line, or a reply line) -------------------------------------
put("admin_request", "status", b'{"cmd":"status"}')
put("admin_request", "client_add", b'{"cmd":"client_add","name":"hr-portal","models":["qwen2"],"rpm":60,"token":true}')
put("admin_request", "audit_hmac", b'{"cmd":"audit_hmac","client":"hr-portal","text":"x"}')
put("admin_request", "reply", b'{"ok":false,"error":{"code":"forbidden","message":"uid 1000 may not status"}}')
print("seeds written under", OUT)
