//! Property: what agents ask of chat completions holds even on a random-weight model, whose
//! unconstrained output is noise: `response_format` answers parse and validate; a required or
//! named `tool_choice` gives well-formed calls (whole and streamed, `finish_reason:
//! "tool_calls"`); tool results in the history are accepted; a reasoning model's `<think>`
//! block comes back as `reasoning_content`, never in `content`; bad fields name themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use common::{Box_, Creds, Daemon, sse_events, tiny_qwen2};
use serde_json::{Value, json};

/// A copy of the tiny qwen2 model whose chat template is `template` (a real model's, from the
/// fixtures).
fn with_template(dir: &Path, name: &str, template: &str) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(tiny_qwen2()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
    }
    let cfg_path = out.join("tokenizer_config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    let src = tiny_qwen2().join("../chat-templates").join(template);
    cfg["chat_template"] = Value::String(std::fs::read_to_string(src).unwrap());
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    out
}

async fn daemon() -> (Box_, Daemon, Creds, tempfile::TempDir) {
    let b = Box_::provision();
    let creds = b.add_client("app", &[], None, None);
    let tmp = tempfile::tempdir().unwrap();
    let qwen3 = with_template(tmp.path(), "qwen3", "qwen3.jinja");
    let r1 = with_template(tmp.path(), "r1", "deepseek-r1-distill-llama.jinja");
    let glm4 = with_template(tmp.path(), "glm4", "glm4.jinja");
    let cfg = b.config(&[("tiny", &tiny_qwen2()), ("qwen3", &qwen3), ("r1", &r1), ("glm4", &glm4)], "");
    let d = Daemon::ready(&b, &cfg).await;
    (b, d, creds, tmp)
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Beijing"]}},
                           "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time",
            "parameters": {"type": "object", "properties": {"utc": {"type": "boolean"}},
                           "required": ["utc"], "additionalProperties": false}}},
    ])
}

/// Checks a call against [`weather_tools`].
fn valid_call(name: &str, arguments: &str) -> bool {
    let Ok(args) = serde_json::from_str::<Value>(arguments) else { return false };
    match name {
        "get_weather" => {
            args.as_object().is_some_and(|o| o.len() == 1) && matches!(args["city"].as_str(), Some("Paris" | "Beijing"))
        }
        "get_time" => args.as_object().is_some_and(|o| o.len() == 1) && args["utc"].is_boolean(),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constrained_answers_tools_and_reasoning() {
    let (_b, d, creds, _tmp) = daemon().await;
    let c = creds.token_only();
    let user = json!([{"role": "user", "content": "What is the weather in Paris?"}]);

    // Structured output: a schema-valid object, whatever the weights.
    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer",
        "minimum": 1, "maximum": 9}}, "required": ["ok", "n"], "additionalProperties": false});
    for seed in 0..3 {
        let req = json!({"model": "tiny", "messages": user, "max_tokens": 64, "temperature": 1, "seed": seed,
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": true}}});
        let v = d.post(&c, "/v1/chat/completions", &req).await.json();
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
        let out: Value = serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
        assert!(out["ok"].is_boolean() && (1..=9).contains(&out["n"].as_i64().unwrap()), "{out}");
    }
    let req = json!({"model": "tiny", "messages": user, "max_tokens": 64, "response_format": {"type": "json_object"}});
    let v = d.post(&c, "/v1/chat/completions", &req).await.json();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with('{'), "{v}");

    // tool_choice required: calls to the offered tools with valid arguments, in each family's
    // format (Hermes for tiny's ChatML, DeepSeek's tool tokens for r1, GLM-4's for glm4).
    for model in ["tiny", "r1", "glm4"] {
        for seed in 0..3 {
            let req = json!({"model": model, "messages": user, "tools": weather_tools(), "tool_choice": "required",
                "max_tokens": 160, "temperature": 1, "seed": seed, "parallel_tool_calls": false});
            let v = d.post(&c, "/v1/chat/completions", &req).await.json();
            let choice = &v["choices"][0];
            assert_eq!(choice["finish_reason"], "tool_calls", "{model}: {v}");
            let calls = choice["message"]["tool_calls"].as_array().unwrap();
            assert_eq!(calls.len(), 1, "{model}: {v}");
            let f = &calls[0]["function"];
            assert!(valid_call(f["name"].as_str().unwrap(), f["arguments"].as_str().unwrap()), "{model}: {v}");
            assert_eq!(calls[0]["type"], "function");
            assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
            assert!(choice["message"].get("reasoning_content").is_none(), "{model}: {v}");
        }
        // A named function, streamed: the first tool_calls delta has the index, id, type and
        // name; the arguments follow in pieces as they are generated.
        let req = json!({"model": model, "messages": user, "tools": weather_tools(), "stream": true,
            "max_tokens": 160, "tool_choice": {"type": "function", "function": {"name": "get_time"}}});
        let resp = d.send_raw(&c, "POST", "/v1/chat/completions", Some(req.to_string().into())).await.unwrap();
        let events = sse_events(resp).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        let deltas: Vec<&Value> =
            chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array()).flatten().collect();
        assert!(deltas.len() > 2, "{model}: the call came in {} deltas: {chunks:?}", deltas.len());
        let first = deltas[0];
        assert_eq!((first["index"].as_u64(), first["function"]["name"].as_str()), (Some(0), Some("get_time")));
        assert_eq!(first["type"], "function");
        assert!(first["id"].as_str().unwrap().starts_with("call_"), "{first}");
        assert!(
            deltas[1..].iter().all(|d| d["index"] == 0 && d.get("id").is_none() && d["function"].get("name").is_none())
        );
        let args: String = deltas.iter().map(|d| d["function"]["arguments"].as_str().unwrap()).collect();
        assert!(valid_call("get_time", &args), "{model}: {args}");
        let finishes: Vec<&str> = chunks.iter().filter_map(|c| c["choices"][0]["finish_reason"].as_str()).collect();
        assert_eq!(finishes, ["tool_calls"], "{model}");
    }

    // The round trip: the call and its result in the history, on a template with tool support
    // and on one without.
    for model in ["tiny", "qwen3", "r1", "glm4"] {
        let req = json!({"model": model, "tools": weather_tools(), "max_tokens": 8, "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]});
        let r = d.post(&c, "/v1/chat/completions", &req).await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
    }

    // Reasoning: DeepSeek-R1's template opens the <think> block, so a model that never closes
    // it has said nothing but reasoning.
    let req = json!({"model": "r1", "messages": user, "max_tokens": 16, "temperature": 0});
    let v = d.post(&c, "/v1/chat/completions", &req).await.json();
    let m = &v["choices"][0]["message"];
    let reasoning = m["reasoning_content"].as_str().unwrap_or_default();
    assert!(!reasoning.is_empty() && !m["content"].as_str().unwrap().contains(reasoning), "{v}");
    assert!(v["usage"]["completion_tokens_details"]["reasoning_tokens"].as_u64().unwrap() > 0, "{v}");
    // Qwen3 with thinking off: the template closes an empty block, so the answer is content,
    // and the prompt is longer by that block.
    let on = json!({"model": "qwen3", "messages": user, "max_tokens": 4});
    let off = json!({"model": "qwen3", "messages": user, "max_tokens": 4, "chat_template_kwargs": {"enable_thinking": false}});
    let (on, off) =
        (d.post(&c, "/v1/chat/completions", &on).await.json(), d.post(&c, "/v1/chat/completions", &off).await.json());
    assert!(off["usage"]["prompt_tokens"].as_u64() > on["usage"]["prompt_tokens"].as_u64(), "{on} {off}");
    assert!(off["choices"][0]["message"].get("reasoning_content").is_none(), "{off}");

    // Bad fields are named.
    let bad = [
        (
            json!({"tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]}), "tools"),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema":
            {"type": "object", "properties": {"a": {"$ref": "#/missing"}}}}}}),
            "response_format",
        ),
        (json!({"response_format": {"type": "yaml"}}), "response_format"),
        (json!({"chat_template_kwargs": {"messages": []}}), "chat_template_kwargs"),
        (json!({"reasoning_effort": "extreme"}), "reasoning_effort"),
        (json!({"functions": []}), "functions"),
    ];
    for (extra, param) in bad {
        let mut req = json!({"model": "tiny", "messages": user, "max_tokens": 4});
        req.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let r = d.post(&c, "/v1/chat/completions", &req).await;
        assert_eq!(r.status, 400, "{param}: {}", r.text());
        assert_eq!(r.json()["error"]["param"], param, "{}", r.text());
    }
}
