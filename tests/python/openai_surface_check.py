"""Calls a running govboxd with the official openai Python SDK for the parts of the chat and
completions surface beyond plain text (logprobs, n, logit_bias, completions prompt lists and
echo, field-naming errors), and validates every request and every answer, streamed chunks and
errors included, against the schemas of daemon/openapi.yaml.

usage: openai_surface_check.py OPENAPI_YAML BASE_URL CA_PEM TOKEN CHAT_MODEL

Exits non-zero with a message on the first check that fails; prints one line per check passed.
"""
import copy
import ssl
import sys

import jsonschema
import openai
import yaml


def json_schema(spec: dict) -> dict:
    """The spec's components as JSON Schema: OpenAPI 3.0's `nullable: true` becomes a type list
    (or an anyOf with null), and its boolean `exclusiveMinimum` the numeric form."""

    def conv(s):
        if isinstance(s, list):
            return [conv(x) for x in s]
        if not isinstance(s, dict):
            return s
        s = {k: conv(v) for k, v in s.items()}
        if s.pop("nullable", False):
            if "type" in s:
                s["type"] = [s["type"], "null"]
                if "enum" in s and None not in s["enum"]:
                    s["enum"] = s["enum"] + [None]
            else:
                s = {"anyOf": [s, {"type": "null"}]}
        if s.get("exclusiveMinimum") is True:
            s["exclusiveMinimum"] = s.pop("minimum")
        return s

    comps = conv(copy.deepcopy(spec["components"]["schemas"]))
    return {"components": {"schemas": comps}}


class Schemas:
    def __init__(self, path: str):
        with open(path, encoding="utf-8") as f:
            self.root = json_schema(yaml.safe_load(f))

    def check(self, name: str, value) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", **self.root}
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as e:
            raise AssertionError(f"{name} does not match openapi.yaml: {e.message} at {list(e.absolute_path)}: {value}")

    def refuses(self, name: str, value) -> None:
        try:
            self.check(name, value)
        except AssertionError:
            return
        raise AssertionError(f"openapi.yaml's {name} accepts {value}, which the server refuses")


def main() -> None:
    spec_path, base, ca, token, model = sys.argv[1:]
    schemas = Schemas(spec_path)
    http = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=ca), timeout=120)
    client = openai.OpenAI(base_url=base, api_key=token, http_client=http, max_retries=0)
    msgs = [{"role": "user", "content": "Write one sentence about rivers."}]

    # logprobs and n=2, through the SDK's typed objects and the raw JSON.
    req = dict(model=model, messages=msgs, max_tokens=8, temperature=0.9, seed=3, n=2, logprobs=True, top_logprobs=3)
    schemas.check("ChatRequest", req)
    raw = client.chat.completions.with_raw_response.create(**req)
    schemas.check("ChatCompletion", raw.http_response.json())
    r = raw.parse()
    assert [c.index for c in r.choices] == [0, 1], r.choices
    for c in r.choices:
        lp = c.logprobs.content
        assert lp and all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in lp), lp
        assert all(bytes(t.bytes).decode("utf-8", "replace") == t.token for t in lp)
    print("chat n=2 logprobs ok", [len(c.logprobs.content) for c in r.choices], r.usage.completion_tokens)

    stream = client.chat.completions.create(**req, stream=True, stream_options={"include_usage": True})
    texts, lps, usage = {0: "", 1: ""}, {0: [], 1: []}, None
    for chunk in stream:
        schemas.check("ChatCompletionChunk", chunk.model_dump(exclude_unset=True))
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.logprobs and c.logprobs.content:
                lps[c.index] += [t.token for t in c.logprobs.content]
    for c in r.choices:
        assert texts[c.index] == c.message.content, (texts, c.message.content)
        assert lps[c.index] == [t.token for t in c.logprobs.content], (lps, c.logprobs.content)
    assert usage.completion_tokens == r.usage.completion_tokens and usage.prompt_tokens == r.usage.prompt_tokens
    print("chat n=2 logprobs streamed ok")

    # Greedy choices agree.
    g = client.chat.completions.create(model=model, messages=msgs, max_tokens=6, temperature=0, n=2, logprobs=True)
    assert g.choices[0].message.content == g.choices[1].message.content
    print("greedy n=2 ok")

    # Completions: a prompt list with logprobs, and echo.
    creq = dict(model=model, prompt=["The river", "A mountain"], max_tokens=5, temperature=0, logprobs=2)
    schemas.check("CompletionRequest", creq)
    raw = client.completions.with_raw_response.create(**creq)
    schemas.check("Completion", raw.http_response.json())
    c = raw.parse()
    assert len(c.choices) == 2 and all(len(x.logprobs.tokens) == len(x.logprobs.text_offset) for x in c.choices)
    e = client.completions.create(model=model, prompt="The river", max_tokens=5, temperature=0, echo=True)
    assert e.choices[0].text == "The river" + c.choices[0].text, (e.choices[0].text, c.choices[0].text)
    for chunk in client.completions.create(**creq, stream=True):
        schemas.check("Completion", chunk.model_dump(exclude_unset=True))
    # Echo with logprobs: the prompt's tokens lead, the first with null.
    ereq = dict(model=model, prompt="The river", max_tokens=5, temperature=0, echo=True, logprobs=2)
    raw = client.completions.with_raw_response.create(**ereq)
    schemas.check("Completion", raw.http_response.json())
    lp = raw.parse().choices[0].logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp
    assert "".join(lp.tokens) == raw.parse().choices[0].text, (lp.tokens, raw.parse().choices[0].text)
    assert all(x is not None for x in lp.token_logprobs[1:]), lp
    print("completions prompt list, logprobs, echo (with prompt logprobs) ok")

    # Errors name their field, in the documented shape; the schema refuses what the server does.
    for bad, param in [
        (dict(model=model, messages=msgs, top_logprobs=21, logprobs=True), "top_logprobs"),
        (dict(model=model, messages=msgs, n=9), "n"),
        (dict(model=model, messages=msgs, logit_bias={"5": 101}), "logit_bias.5"),
    ]:
        schemas.refuses("ChatRequest", bad)
        try:
            client.chat.completions.create(**bad)
            raise AssertionError(f"accepted {bad}")
        except openai.BadRequestError as err:
            body = err.response.json()
            schemas.check("ErrorResponse", body)
            assert body["error"]["param"] == param, body
    try:
        client.chat.completions.create(model=model, messages=msgs, temperature="0")
        raise AssertionError("accepted a string temperature")
    except openai.BadRequestError as err:
        body = err.response.json()
        assert body["error"]["param"] == "temperature" and "a number" in body["error"]["message"], body
    print("errors ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as err:
        print("CHECK FAILED:", err, file=sys.stderr)
        sys.exit(1)
