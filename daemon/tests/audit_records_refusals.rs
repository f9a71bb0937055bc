//! Property: the audit log records what the box refused, not only what it served. Requests
//! refused before their request entry (400, 403, 413, 429) leave `request_refused` entries per
//! client and minute; refused package imports through the admin socket (an untrusted key, a
//! tampered member, an architecture govbox does not implement) leave `package_refused` entries;
//! a removed package's entry carries its digest; every export records itself; and prompt hashes
//! are keyed per client, so the same prompt from two clients cannot be linked, while
//! `audit_hmac` with the client's name still proves the text.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;

use common::{Box_, Daemon, tiny_qwen2, wait_for};
use govbox_images::corpus::{CorpusKeys, write_corpus, write_unsupported_architecture};
use govbox_images::{ModelKind, ModelMeta, PackageBuilder};
use govbox_provisioning::{Overwrite, ProvisionOptions, Role, ThresholdSpec, TrustKeySpec, provision};
use serde_json::{Value, json};

/// Exports the whole log through the admin socket; returns its entries.
fn export(d: &Daemon) -> Vec<Value> {
    d.audit_entries()
}

fn chat(model: &str, content: &str) -> Value {
    json!({"model": model, "max_tokens": 1, "temperature": 0, "messages": [{"role": "user", "content": content}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_exports_and_per_client_prompt_hashes_are_recorded() {
    let b = Box_::provision();
    let app = b.add_client("app", &["tiny2"], Some(2), None);
    let other = b.add_client("other", &[], None, None);
    let config = b.config(&[("tiny", &tiny_qwen2()), ("tiny2", &tiny_qwen2())], "[limits]\nmax_body_bytes = 4096\n");
    let d = Daemon::ready(&b, &config).await;
    let c = app.token_only();

    let r = d.post(&c, "/v1/chat/completions", &chat("tiny", "hi")).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "model_not_allowed"));
    let r = d.send(&c, "POST", "/v1/chat/completions", Some(b"{not json".to_vec())).await.unwrap();
    assert_eq!(r.status, 400);
    let big = chat("tiny2", &"x".repeat(8192));
    let r = d.send(&c, "POST", "/v1/chat/completions", Some(big.to_string().into_bytes())).await.unwrap();
    assert_eq!(r.status, 413);
    let prompt = "my ID card number is 110101199003074471";
    assert_eq!(d.post(&c, "/v1/chat/completions", &chat("tiny2", prompt)).await.status, 200);
    assert_eq!(d.post(&other.token_only(), "/v1/chat/completions", &chat("tiny2", prompt)).await.status, 200);
    assert_eq!(d.post(&c, "/v1/chat/completions", &chat("tiny2", "hi")).await.status, 200);
    let r = d.post(&c, "/v1/chat/completions", &chat("tiny2", "hi")).await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limit_exceeded"));

    let entries = export(&d);
    let refused: Vec<&Value> = entries.iter().filter(|e| e["kind"] == "request_refused").collect();
    assert_eq!(refused.len(), 1, "one entry for the client's minute: {refused:?}");
    assert_eq!((refused[0]["client"].as_str(), refused[0]["count"].as_u64()), (Some("app"), Some(4)));
    let reason = refused[0]["reason"].as_str().unwrap();
    for want in ["403 model_not_allowed", "400 invalid_json", "413 body_too_large", "429 rate_limit_exceeded"] {
        assert!(reason.contains(want), "{want} missing from {reason}");
    }
    let last = entries.last().unwrap();
    assert_eq!((last["kind"].as_str(), last["action"].as_str()), (Some("admin"), Some("audit_export")), "{last}");

    // The same prompt from two clients: two unrelated hashes, each proven with the client's name.
    let hashes: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e["kind"] == "inference_request")
        .map(|e| (e["client"].as_str().unwrap().to_string(), e["prompt_hmac"].as_str().unwrap().to_string()))
        .collect();
    // The chat prompt's hashed form (see `auditing`): the messages as compact JSON, keys in order.
    let text = format!(r#"[{{"role":"user","content":"{prompt}"}}]"#);
    let proven = |client: Option<&str>| {
        let mut req = json!({"cmd": "audit_hmac", "text": text});
        if let Some(c) = client {
            req["client"] = json!(c);
        }
        d.admin(&req)["result"]["hmac"].as_str().unwrap().to_string()
    };
    let (for_app, for_other) = (proven(Some("app")), proven(Some("other")));
    assert_ne!(for_app, for_other);
    assert!(hashes.contains(&("app".into(), for_app)), "{hashes:?}");
    assert!(hashes.contains(&("other".into(), for_other)), "{hashes:?}");
    let bare = proven(None);
    assert!(hashes.iter().all(|(_, h)| *h != bare), "a bare HMAC would link the clients");
}

/// A box whose trust root is the bad-package corpus's (`models` needs both vendor keys).
fn corpus_box(keys: &CorpusKeys) -> Box_ {
    let tmp = tempfile::tempdir().unwrap();
    let pem = |name: &str, k: &govbox_provisioning::SigningKey| {
        let p = tmp.path().join(name);
        k.public_key().write_pem(&p, Overwrite::Refuse).unwrap();
        p
    };
    let trust_keys = vec![
        TrustKeySpec { roles: vec![Role::Models], path: pem("m0.pub", &keys.models[0]) },
        TrustKeySpec { roles: vec![Role::Models], path: pem("m1.pub", &keys.models[1]) },
        TrustKeySpec { roles: vec![Role::Root, Role::Updates], path: pem("u.pub", &keys.updates) },
    ];
    let state = tmp.path().join("state");
    provision(&ProvisionOptions {
        state_dir: state.clone(),
        hostname: Some("govbox-test".into()),
        extra_sans: vec![],
        trust_keys,
        thresholds: vec![ThresholdSpec { role: Role::Models, threshold: 2 }],
        force: false,
        audit_pub: None,
        suite: govbox_provisioning::Suite::Intl,
    })
    .unwrap();
    let ca_pem = std::fs::read_to_string(state.join("tls/ca.crt")).unwrap();
    Box_ { tmp, state, ca_pem }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_imports_and_removals_are_recorded_with_what_was_refused() {
    let keys = CorpusKeys::generate().unwrap();
    let b = corpus_box(&keys);
    let corpus = b.tmp.path().join("corpus");
    let cases = write_corpus(&corpus, &keys, &tiny_qwen2()).unwrap();
    let d = Daemon::start(&b, &b.config(&[], ""));
    wait_for(60, "the admin socket", || d.admin.exists().then_some(()));
    let import = |file: &Path| d.admin(&json!({"cmd": "model_import", "path": file.display().to_string()}));

    let mut want = vec![];
    for name in ["unknown_key", "payload_byte_flipped"] {
        let case = cases.iter().find(|c| c.name == name).unwrap();
        let a = import(&case.file);
        assert_eq!((a["ok"].as_bool(), a["error"]["code"].as_str()), (Some(false), Some(case.expect_code)), "{a}");
        want.push((case.file.display().to_string(), case.expect_code.to_string()));
    }
    let mamba = write_unsupported_architecture(b.tmp.path(), &keys, &tiny_qwen2()).unwrap();
    let a = import(&mamba);
    assert_eq!(a["ok"], false, "{a}");
    assert!(a["error"]["message"].as_str().unwrap().contains("unknown architecture"), "{a}");
    want.push((mamba.display().to_string(), a["error"]["code"].as_str().unwrap().to_string()));

    // Two versions; the one not active is removed, and its entry names its digest.
    let good = cases.iter().find(|c| c.expect_code == govbox_images::corpus::GOOD).unwrap();
    assert_eq!(import(&good.file)["ok"], true);
    let v2 = b.tmp.path().join("tiny-2.0.0.gbx");
    let meta =
        ModelMeta { kind: ModelKind::Chat, architecture: "qwen2".into(), context_length: 4096, dtype: "f32".into() };
    PackageBuilder::model("tiny", "2.0.0", &tiny_qwen2(), meta)
        .unwrap()
        .write(&v2, &[&keys.models[0], &keys.models[1]], &mut |_, _| {})
        .unwrap();
    let imported = import(&v2);
    assert_eq!(imported["result"]["active"], false, "{imported}");
    let digest = imported["result"]["digest"].as_str().unwrap().trim_start_matches("sha256-").to_string();
    let removed = d.admin(&json!({"cmd": "model_remove", "name": "tiny", "version": "2.0.0"}));
    assert_eq!(removed["ok"], true, "{removed}");

    let entries = export(&d);
    for (file, code) in &want {
        assert!(
            entries.iter().any(|e| e["kind"] == "package_refused"
                && e["file"] == file.as_str()
                && e["code"] == code.as_str()
                && e["actor"].as_str().unwrap().starts_with("admin-socket uid ")),
            "no package_refused entry for {file} ({code}): {entries:#?}"
        );
    }
    let rm = entries.iter().find(|e| e["kind"] == "package" && e["action"] == "removed").unwrap();
    assert_eq!((rm["version"].as_str(), rm["digest"].as_str()), (Some("2.0.0"), Some(digest.as_str())), "{rm}");
}
