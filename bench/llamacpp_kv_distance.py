#!/usr/bin/env python3
"""llama.cpp's own distance from HF's float32 logits with its KV cache as f16 and as q8_0
(`-ctk q8_0 -ctv q8_0`, flash attention on), on a float32 GGUF, written as a fixture that
`engine/tests/kv_dtype_numerics.rs` holds govbox's q8_0 pool to.

Writes OUT (safetensors): for each case N of the fixture's expected.json, `caseN.logits`
([seq, vocab] float32, every position) with the q8_0 cache, and prints per case the max abs
error against HF and the argmax agreement with both cache types (f16 for comparison only). The
metadata records llama-cpp-python's version and the settings.

Needs llama-cpp-python (with its libllama), numpy and safetensors, e.g. bench/work/llama/venv:

    bench/work/llama/venv/bin/python bench/llamacpp_kv_distance.py \\
        tests/fixtures/gguf/tiny-qwen3-f32.gguf tests/fixtures/tiny-qwen3 \\
        tests/fixtures/gguf/tiny-qwen3-f32.kv_q8_0.llamacpp_logits.safetensors

The GGUF is llama.cpp's own conversion of the fixture (convert_hf_to_gguf.py --outtype f32), so
both programs read the same float32 weights and only the KV cache type differs from HF's run.
"""

import json
import sys

import llama_cpp
import numpy as np
from safetensors.numpy import load_file, save_file

GGML_TYPE_F16 = 1
GGML_TYPE_Q8_0 = 8


def run(gguf, cases, kv_type):
    llm = llama_cpp.Llama(
        model_path=gguf,
        n_ctx=512,
        n_batch=512,
        n_threads=2,
        logits_all=True,
        type_k=kv_type,
        type_v=kv_type,
        flash_attn=True,
        seed=0,
        verbose=False,
    )
    out = []
    for ids in cases:
        llm.reset()
        llm.eval(ids)
        out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    return out


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    gguf, fixture, out_path = sys.argv[1:]
    exp = json.load(open(f"{fixture}/expected.json"))
    hf = load_file(f"{fixture}/expected_logits.safetensors")
    cases = [c["input_ids"] for c in exp["cases"]]
    tensors = {}
    for name, kv_type in (("f16", GGML_TYPE_F16), ("q8_0", GGML_TYPE_Q8_0)):
        logits = run(gguf, cases, kv_type)
        agree = positions = 0
        worst = 0.0
        for i, got in enumerate(logits):
            want = hf[f"case{i}.logits"]
            assert got.shape == want.shape, (got.shape, want.shape)
            err = float(np.abs(got - want).max())
            worst = max(worst, err)
            agree += int((got.argmax(-1) == want.argmax(-1)).sum())
            positions += len(cases[i])
            print(f"kv {name} case {i}: max abs error {err:.5f}")
            if name == "q8_0":
                tensors[f"case{i}.logits"] = got
        print(f"kv {name}: largest error {worst:.5f}, argmax agreement {agree}/{positions}")
    meta = {
        "llama_cpp_python": llama_cpp.__version__,
        "settings": "type_k=type_v (f16=1, q8_0=8), flash_attn=True, n_threads=2, n_ctx=512, logits_all",
        "gguf": gguf.split("/")[-1],
    }
    save_file(tensors, out_path, metadata=meta)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
