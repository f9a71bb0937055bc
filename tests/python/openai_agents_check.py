"""Tools, structured output and streamed tool calls through the official openai SDK.

usage: openai_agents_check.py BASE_URL CA_PEM TOKEN CHAT_MODEL

Exits non-zero with a message on the first check that fails; prints one line per check passed.
"""
import json
import ssl
import sys

import openai
import pydantic

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "Beijing", "Tokyo"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]


class Permit(pydantic.BaseModel):
    """What the structured answer must be."""

    name: str = pydantic.Field(max_length=40)
    days: int = pydantic.Field(ge=1, le=90)
    online: bool


def main() -> None:
    base, ca, token, model = sys.argv[1:5]
    ctx = ssl.create_default_context(cafile=ca)
    http = openai.DefaultHttpxClient(verify=ctx, timeout=300)
    client = openai.OpenAI(base_url=base, api_key=token, http_client=http, max_retries=0)

    # 1. A required tool call, then the tool's result back and the model's answer.
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(
        model=model, messages=msgs, tools=TOOLS, tool_choice="required", max_tokens=64, temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather", call
    args = json.loads(call.function.arguments)
    assert args["city"] in ("Paris", "Beijing", "Tokyo"), args
    print("tool call ok", call.function.name, args)
    msgs.append(choice.message.model_dump(exclude_none=True))
    msgs.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 18, "sky": "sunny"})})
    r = client.chat.completions.create(model=model, messages=msgs, tools=TOOLS, max_tokens=40, temperature=0)
    final = r.choices[0]
    assert final.finish_reason in ("stop", "length", "tool_calls"), final
    assert final.message.content or final.message.tool_calls, final
    print("tool result round trip ok", final.finish_reason)

    # 2. The same call streamed: the SDK's stream helper accumulates the tool_calls deltas.
    named = {
        "model": model,
        "messages": msgs[:1],
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "max_tokens": 64,
        "temperature": 0,
    }
    with client.chat.completions.stream(**named) as stream:
        for _ in stream:
            pass
        done = stream.get_final_completion()
    streamed = done.choices[0]
    assert streamed.finish_reason == "tool_calls", streamed
    scall = streamed.message.tool_calls[0]
    assert scall.function.name == "get_weather" and json.loads(scall.function.arguments)["city"], scall
    assert json.loads(scall.function.arguments) == args, (scall.function.arguments, args)
    print("streamed tool call ok", scall.function.arguments)

    # The raw stream: the first tool_calls delta has the index, id, type and name; the
    # arguments follow in several pieces as they are generated, not in one delta at the end.
    raw = client.chat.completions.create(**named, stream=True)
    deltas, finishes = [], []
    for chunk in raw:
        for c in chunk.choices:
            deltas.extend(c.delta.tool_calls or [])
            if c.finish_reason:
                finishes.append(c.finish_reason)
    head = deltas[0]
    assert head.index == 0 and head.id and head.type == "function" and head.function.name == "get_weather", head
    assert len(deltas) > 2, deltas
    assert all(d.index == 0 and d.id is None and d.function.name is None for d in deltas[1:]), deltas
    joined = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(joined) == args, (joined, args)
    assert finishes == ["tool_calls"], finishes
    print("incremental tool-call deltas ok:", len(deltas), "deltas")

    # 3. Structured output parsed into a pydantic model, several seeds.
    for seed in range(3):
        parsed = client.beta.chat.completions.parse(
            model=model,
            messages=[{"role": "user", "content": "Describe a building permit as JSON."}],
            response_format=Permit,
            max_tokens=120,
            temperature=0.8,
            seed=seed,
        )
        p = parsed.choices[0].message.parsed
        assert isinstance(p, Permit), parsed
        print("parse ok", p.model_dump())


if __name__ == "__main__":
    main()
