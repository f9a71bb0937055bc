"""Calls a running govboxd with the official openai Python SDK and checks every answer.

usage: openai_client_check.py BASE_URL CA_PEM (--cert CRT KEY | --token TOKEN) CHAT_MODEL EMBED_MODEL

Exits non-zero with a message on the first check that fails; prints one line per check passed.
"""
import base64
import struct
import sys

import ssl

import openai


def main() -> None:
    args = sys.argv[1:]
    base, ca = args[0], args[1]
    if args[2] == "--cert":
        cert, key, token = (args[3], args[4]), None, "unused-the-certificate-identifies-the-client"
        rest = args[5:]
    else:
        cert, token = None, args[3]
        rest = args[4:]
    chat_model, embed_model = rest
    # The box's own CA, and for mTLS the client's certificate, in one SSL context: the SDK's
    # default HTTP client takes it as `verify`.
    ctx = ssl.create_default_context(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    http = openai.DefaultHttpxClient(verify=ctx, timeout=120)
    client = openai.OpenAI(base_url=base, api_key=token, http_client=http, max_retries=0)

    models = {m.id for m in client.models.list()}
    assert {chat_model, embed_model} <= models, f"models listed: {models}"
    print("models ok", sorted(models))

    msgs = [{"role": "user", "content": "请问办理居住证需要准备哪些材料？"}]
    r = client.chat.completions.create(model=chat_model, messages=msgs, max_tokens=12, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
    assert r.usage.completion_tokens >= 1 and r.usage.completion_tokens <= 12, r.usage
    assert r.usage.prompt_tokens > 5 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
    print("chat ok", r.usage.prompt_tokens, r.usage.completion_tokens, repr(text))

    stream = client.chat.completions.create(
        model=chat_model, messages=msgs, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert "".join(parts) == text, ("streamed text differs from the non-streamed greedy answer", parts, text)
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
    assert usage.prompt_tokens == r.usage.prompt_tokens and finish == r.choices[0].finish_reason
    print("chat stream ok", len(parts), "chunks")

    c = client.completions.create(model=chat_model, prompt="The quick brown fox", max_tokens=5, temperature=0)
    assert c.usage.completion_tokens == 5 or c.choices[0].finish_reason == "stop", c
    assert isinstance(c.choices[0].text, str)
    print("completions ok", c.usage.prompt_tokens, c.usage.completion_tokens)

    texts = ["How do I renew my residence permit?", "居住证续签"]
    e = client.embeddings.create(model=embed_model, input=texts, encoding_format="float")
    assert len(e.data) == 2 and all(len(d.embedding) == 384 for d in e.data)
    norm = sum(x * x for x in e.data[0].embedding) ** 0.5
    assert abs(norm - 1.0) < 1e-4, norm
    assert e.usage.prompt_tokens > 4, e.usage
    # The SDK decodes base64 itself when it asked for it; ask through the raw client to see the
    # wire format, and compare it with the float answer.
    raw = client.embeddings.with_raw_response.create(model=embed_model, input=texts[0], encoding_format="base64")
    b64 = raw.http_response.json()["data"][0]["embedding"]
    vec = struct.unpack(f"<{len(base64.b64decode(b64)) // 4}f", base64.b64decode(b64))
    assert len(vec) == 384 and max(abs(a - b) for a, b in zip(vec, e.data[0].embedding)) < 1e-6
    single = client.embeddings.create(model=embed_model, input=texts[0])
    assert len(single.data) == 1
    print("embeddings ok (float, base64, string and array input)")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as err:
        print("CHECK FAILED:", err, file=sys.stderr)
        sys.exit(1)
