"""Makes the rerank call Dify's OpenAI-API-compatible rerank provider makes: one plain HTTP POST
of `{model, query, documents, top_n}` JSON to `ENDPOINT_URL/rerank` with a bearer token, here
through httpx (Dify's own code uses requests; the request on the wire is the same).

usage: dify_rerank_call.py ENDPOINT_URL CA_PEM TOKEN MODEL TOP_N < {"query": q, "documents": [..]}

Prints the HTTP status and the answer's JSON on one line: {"status": s, "body": {...}}.
"""
import json
import sys

import httpx


def main() -> None:
    endpoint, ca, token, model, top_n = sys.argv[1:6]
    job = json.load(sys.stdin)
    payload = {"model": model, "query": job["query"], "documents": job["documents"], "top_n": int(top_n)}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    r = httpx.post(endpoint.rstrip("/") + "/rerank", headers=headers, json=payload, verify=ca, timeout=60)
    print(json.dumps({"status": r.status_code, "body": r.json()}, ensure_ascii=False))


if __name__ == "__main__":
    main()
