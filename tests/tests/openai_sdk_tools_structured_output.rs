//! Real clients against a real govboxd over HTTPS serving the real SmolLM2 (from a signed
//! package): the official `openai` Python SDK (a required tool call and its result sent back,
//! the same call streamed as incremental deltas, `client.beta.chat.completions.parse` into a
//! pydantic model), and `langchain-openai` (`bind_tools` with a tool-calling agent loop, streamed
//! tool-call chunks, `with_structured_output`, `OpenAIEmbeddings` on MiniLM with
//! `check_embedding_ctx_length=False`, with every other network route closed).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;

use govbox_e2e::{TestBox, minilm, python_check, python_with, python_with_openai, repo};

fn smollm2() -> PathBuf {
    let p = std::env::var_os("GOVBOX_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh smollm2", p.display());
    p
}

#[test]
fn openai_sdk_tools_round_trip_streamed_calls_and_parse() {
    let py = python_with_openai();
    let b = TestBox::provisioned("agents");
    let pkg = b.build_package(&smollm2(), "smollm2", "1.0.0", false);
    b.import(&pkg);
    let d = b.start();
    let args = [b.url("/v1"), b.certs.join("ca.crt").display().to_string(), b.token.clone(), "smollm2".into()];
    python_check(&py, "openai_agents_check.py", &args, &[], &d);
}

#[test]
fn langchain_openai_agent_loop_structured_output_and_embeddings() {
    let py = python_with(&["langchain_openai"]);
    let b = TestBox::provisioned("langchain");
    b.import(&b.build_package(&smollm2(), "smollm2", "1.0.0", false));
    b.import(&b.build_package(&minilm(), "minilm", "1.0.0", false));
    let d = b.start();
    // Anything but the box goes to a closed port, and tiktoken's cache is empty: the
    // embeddings must not need tiktoken's files from the internet.
    let cache = b.dir.join("tiktoken-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let env = [
        ("HTTPS_PROXY", "http://127.0.0.1:9"),
        ("HTTP_PROXY", "http://127.0.0.1:9"),
        ("NO_PROXY", "127.0.0.1,localhost"),
        ("TIKTOKEN_CACHE_DIR", cache.to_str().unwrap()),
    ];
    let args = [
        b.url("/v1"),
        b.certs.join("ca.crt").display().to_string(),
        b.token.clone(),
        "smollm2".into(),
        "minilm".into(),
    ];
    python_check(&py, "langchain_agents_check.py", &args, &env, &d);
}
