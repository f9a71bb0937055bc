//! The official `openai` Python SDK against a real govboxd over HTTPS serving the real SmolLM2
//! (from a signed package): a required tool call and its result sent back, the same call
//! streamed, and `client.beta.chat.completions.parse` into a pydantic model.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::Command;

use govbox_e2e::{TestBox, python_with_openai, repo};

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
    let o = Command::new(&py)
        .arg(repo().join("tests/python/openai_agents_check.py"))
        .arg(b.url("/v1"))
        .arg(b.certs.join("ca.crt"))
        .arg(&b.token)
        .arg("smollm2")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "failed:\n{out}\n{}\n--- govboxd log ---\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log_text()
    );
    eprintln!("{out}");
}
