"""langchain-openai against govboxd: bind_tools with a tool-calling agent loop (tool results sent
back), streamed tool-call chunks, with_structured_output into a pydantic model, and
OpenAIEmbeddings with check_embedding_ctx_length=False (its default counts tokens with tiktoken,
whose data it would fetch from the internet).

usage: langchain_agents_check.py BASE_URL CA_PEM TOKEN CHAT_MODEL EMBEDDING_MODEL

Exits non-zero with a message on the first check that fails; prints one line per check passed.
"""
import json
import ssl
import sys
from typing import Literal

import httpx
import pydantic
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings


@tool
def get_weather(city: Literal["Paris", "Beijing", "Tokyo"]) -> str:
    """Current weather in a city."""
    return json.dumps({"city": city, "temp_c": 18, "sky": "sunny"})


class Permit(pydantic.BaseModel):
    """A building permit."""

    name: str = pydantic.Field(max_length=40)
    days: int = pydantic.Field(ge=1, le=90)
    online: bool


def main() -> None:
    base, ca, token, chat_model, embed_model = sys.argv[1:6]
    ctx = ssl.create_default_context(cafile=ca)
    common = {"base_url": base, "api_key": token, "max_retries": 0, "timeout": 300}
    llm = ChatOpenAI(
        model=chat_model, temperature=0, max_tokens=96, http_client=httpx.Client(verify=ctx, timeout=300), **common
    )

    # 1. An agent loop: the model must call the tool first; each call runs and its result goes
    # back as a ToolMessage, until the model answers without a call (at most three rounds).
    # strict: the arguments' schema closes the object (additionalProperties false), so a small
    # model cannot ramble on in made-up fields until max_tokens.
    first = llm.bind_tools([get_weather], tool_choice="required", parallel_tool_calls=False, strict=True)
    then = llm.bind_tools([get_weather], parallel_tool_calls=False, strict=True)
    msgs = [HumanMessage("What is the weather in Paris?")]
    ai = first.invoke(msgs)
    assert isinstance(ai, AIMessage) and ai.tool_calls, ai
    assert ai.tool_calls[0]["name"] == "get_weather" and ai.tool_calls[0]["args"].get("city") in ("Paris", "Beijing", "Tokyo"), ai
    first_args = ai.tool_calls[0]["args"]
    print("bind_tools call ok", first_args)
    rounds = 0
    while ai.tool_calls and rounds < 3:
        msgs.append(ai)
        for call in ai.tool_calls:
            msgs.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
        ai = then.invoke(msgs)
        rounds += 1
    assert isinstance(ai, AIMessage) and (ai.content or ai.tool_calls), ai
    assert any(isinstance(m, ToolMessage) for m in msgs), msgs
    print("agent loop ok", rounds, "round(s);", "answer" if not ai.tool_calls else "still calling")

    # 2. The same call streamed: langchain joins the tool-call chunks by index.
    acc = None
    chunks = 0
    for chunk in first.stream(msgs[:1]):
        acc = chunk if acc is None else acc + chunk
        chunks += bool(chunk.tool_call_chunks)
    assert acc is not None and acc.tool_calls, acc
    assert acc.tool_calls[0]["name"] == "get_weather", acc.tool_calls
    assert acc.tool_calls[0]["args"] == first_args, (acc.tool_calls, first_args)
    assert chunks > 2, f"the call came in {chunks} chunk(s), not incrementally"
    print("streamed tool call ok in", chunks, "chunks", acc.tool_calls[0]["args"])

    # 3. Structured output into a pydantic model.
    structured = ChatOpenAI(
        model=chat_model, temperature=0.8, max_tokens=120, http_client=httpx.Client(verify=ctx, timeout=300), **common
    ).with_structured_output(Permit)
    for seed in range(2):
        p = structured.bind(seed=seed).invoke("Describe a building permit as JSON.")
        assert isinstance(p, Permit), p
        print("with_structured_output ok", p.model_dump())

    # 4. Embeddings without tiktoken.
    emb = OpenAIEmbeddings(
        model=embed_model, check_embedding_ctx_length=False, http_client=httpx.Client(verify=ctx, timeout=300), **common
    )
    docs = emb.embed_documents(["Where do I renew a residence permit?", "办理居住证需要哪些材料？"])
    query = emb.embed_query("residence permit renewal")
    assert len(docs) == 2 and len(docs[0]) == len(query) > 0, (len(docs), len(query))
    norm = sum(x * x for x in query) ** 0.5
    assert abs(norm - 1.0) < 1e-3, norm
    print("OpenAIEmbeddings ok", len(query), "dimensions")


if __name__ == "__main__":
    main()
