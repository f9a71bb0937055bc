//! Grammar-constrained sampling: whatever the weights, an answer that ends by EOS follows its
//! grammar. Random-weight fixtures are the hard case (left alone they write byte soup), and
//! SmolLM2 the real one.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::*;

use govbox_engine::constraint::Grammar;
use govbox_engine::sampler::SamplingParams;
use govbox_engine::tools::{ToolFormat, ToolSpec};
use govbox_engine::{Engine, Event, FinishReason, GenerateRequest, Prompt};
use serde_json::{Value, json};

fn run(engine: &Engine, prompt: Prompt, grammar: Option<Grammar>, sampling: SamplingParams) -> (String, FinishReason) {
    let req = GenerateRequest { grammar, sampling, ..GenerateRequest::new(prompt, 700) };
    let mut text = String::new();
    let mut finish = None;
    engine
        .generate(&req, &mut |e| {
            match e {
                Event::Text(t) => text.push_str(&t),
                Event::Done { finish_reason, .. } => finish = Some(finish_reason),
                Event::Error(e) => panic!("{e}"),
                Event::Logprobs(_) => {}
            }
            true
        })
        .unwrap();
    (text, finish.unwrap())
}

/// A schema whose every sentence is short, so a random model must finish inside the budget.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["clerk", "judge"]},
            "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        },
        "required": ["name", "age", "role", "tags"],
        "additionalProperties": false,
    })
}

/// Checks `v` against [`person_schema`] by hand.
fn is_person(v: &Value) -> bool {
    let Some(o) = v.as_object() else { return false };
    let keys_ok = o.keys().all(|k| ["name", "age", "role", "tags"].contains(&k.as_str())) && o.len() == 4;
    keys_ok
        && o["name"].as_str().is_some_and(|s| s.chars().count() <= 6)
        && o["age"].as_i64().is_some_and(|a| (0..=120).contains(&a))
        && o["role"].as_str().is_some_and(|r| r == "clerk" || r == "judge")
        && o["tags"].as_array().is_some_and(|t| t.len() <= 3 && t.iter().all(Value::is_boolean))
}

fn samplings() -> Vec<SamplingParams> {
    let mut v = vec![SamplingParams::default()];
    v.extend((0..4).map(|s| SamplingParams { temperature: 1.0, seed: Some(s), ..Default::default() }));
    v
}

#[test]
fn random_weight_models_answer_schema_valid_json() {
    for fx in ["tiny-llama", "tiny-qwen2"] {
        let engine = load(&fixture(fx));
        let grammar = Grammar::JsonSchema { schema: person_schema(), strict: true };
        for sampling in samplings() {
            let prompt = Prompt::Text("Describe a person as JSON:".into());
            let (text, finish) = run(&engine, prompt.clone(), Some(grammar.clone()), sampling.clone());
            assert_eq!(finish, FinishReason::Stop, "{fx}: {text:?}");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{fx}: {text:?}: {e}"));
            assert!(is_person(&v), "{fx}: {v}");
            // The same model unconstrained does not write such JSON: the mask did the work.
            let (free, _) = run(&engine, prompt, None, sampling);
            assert!(serde_json::from_str::<Value>(&free).ok().is_none_or(|v| !is_person(&v)), "{fx}: {free:?}");
        }
        let (text, finish) =
            run(&engine, Prompt::Text("{".into()), Some(Grammar::JsonObject), SamplingParams::default());
        // An object of any shape may not close within the budget on random weights; what came
        // out is still a prefix of an object, and a finished one parses.
        assert!(text.starts_with('{'), "{fx}: {text:?}");
        if finish == FinishReason::Stop {
            assert!(serde_json::from_str::<Value>(&text).unwrap().is_object(), "{fx}: {text:?}");
        }
    }
}

#[test]
fn required_tool_calls_are_well_formed_in_every_format() {
    let engine = load(&fixture("tiny-llama"));
    let tools = [
        ToolSpec {
            name: "lookup".into(),
            parameters: json!({"type": "object", "properties": {"x": {"enum": [1, 2]}},
            "required": ["x"], "additionalProperties": false}),
        },
        ToolSpec {
            name: "ping".into(),
            parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
        },
    ];
    for format in [ToolFormat::Hermes, ToolFormat::Llama3Json, ToolFormat::DeepSeek, ToolFormat::Glm4] {
        for sampling in samplings() {
            let g = format.grammar(&tools, true);
            let (text, finish) = run(&engine, Prompt::Text("call".into()), Some(g), sampling);
            assert_eq!(finish, FinishReason::Stop, "{format:?}: {text:?}");
            let parsed = format.parse(&text);
            assert!(!parsed.calls.is_empty() && parsed.content.is_empty(), "{format:?}: {text:?}");
            for c in &parsed.calls {
                let args: Value = serde_json::from_str(&c.arguments).unwrap();
                match c.name.as_str() {
                    "lookup" => {
                        assert!(matches!(args["x"].as_i64(), Some(1 | 2)) && args.as_object().unwrap().len() == 1)
                    }
                    "ping" => assert_eq!(args, json!({})),
                    other => panic!("{format:?}: call to {other}: {text:?}"),
                }
            }
        }
    }
}

#[test]
fn bad_grammars_are_refused_before_generation() {
    let engine = load(&fixture("tiny-llama"));
    // A schema the engine cannot compile is refused before anything is generated.
    let bad = Grammar::JsonSchema {
        schema: json!({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}),
        strict: true,
    };
    let e = engine.compile_grammar(&bad).unwrap_err().to_string();
    assert!(e.contains("json_schema cannot be compiled"), "{e}");
    let e = engine.compile_grammar(&Grammar::Lark("start: (".into())).unwrap_err().to_string();
    assert!(e.contains("grammar cannot be compiled"), "{e}");
}

#[test]
fn smollm2_answers_schema_valid_json() {
    let Some(path) = smollm2() else { return };
    let engine = load(&path);
    let msgs = vec![govbox_engine::chat::ChatMessage::new("user", "Give me a person as JSON with name, age and role.")];
    let grammar = Grammar::JsonSchema { schema: person_schema(), strict: true };
    for sampling in samplings() {
        let (text, finish) = run(&engine, Prompt::Chat(msgs.clone()), Some(grammar.clone()), sampling);
        assert_eq!(finish, FinishReason::Stop, "{text:?}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(is_person(&v), "{v}");
    }
}
