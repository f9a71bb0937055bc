//! Property: `govbox model disable NAME` takes a model out of service through a running govboxd
//! (404 `model_not_found`, listed as disabled, recorded in the audit log) and `enable` brings it
//! back, with no restart (issue 21 §2).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use govbox_e2e::{TestBox, govbox, repo};
use serde_json::json;

#[test]
fn a_disabled_model_answers_404_and_is_back_after_enable() {
    let b = TestBox::provisioned("model-disable");
    let package = b.build_package(&repo().join("tests/fixtures/tiny-qwen2"), "tiny-qwen2", "1.0.0", false);
    b.import(&package);
    let _d = b.start();
    let chat = json!({"model": "tiny-qwen2", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2});
    let (code, body) = b.post_json("/v1/chat/completions", &chat);
    assert_eq!(code, 200, "{body}");

    let out = govbox(&b.state, &["model", "disable", "tiny-qwen2"]);
    assert!(out.contains("disabled"), "{out}");
    let (code, body) = b.post_json("/v1/chat/completions", &chat);
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("model_not_found")), "{body}");
    let list = govbox(&b.state, &["model", "list"]);
    assert!(list.lines().any(|l| l.starts_with("tiny-qwen2 ") && l.contains("*disabled")), "{list}");
    let listed: serde_json::Value = serde_json::from_str(&govbox(&b.state, &["model", "list", "--json"])).unwrap();
    assert_eq!(listed["models"][0]["disabled"], true, "{listed}");
    assert!(listed["models"][0]["serving"].is_null(), "{listed}");

    govbox(&b.state, &["model", "enable", "tiny-qwen2"]);
    let (code, body) = b.post_json("/v1/chat/completions", &chat);
    assert_eq!(code, 200, "{body}");

    let entries = govbox_e2e::exported_entries(&b.state, &b.dir);
    for action in ["model_disable", "model_enable"] {
        assert!(
            entries.iter().any(|e| e["action"] == action
                && e["subject"] == "tiny-qwen2"
                && e["actor"].as_str().unwrap().starts_with("admin-socket uid ")),
            "no {action} entry: {entries:#?}"
        );
    }
}
