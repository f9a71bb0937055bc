//! Property: embedding and rerank inputs are checked "per policy": a library whose `apply_to`
//! leaves them out does not touch them; once a library that lists `embeddings` and `rerank` is
//! activated, an input holding a keyword (as text, disguised, or as token ids that decode to it)
//! is refused with 400 `content_filter`, the field named and the category's refusal as the
//! message, and each refusal is a `policy_verdict` audit entry; benign inputs are served.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use common::{Box_, Daemon};
use govbox_engine::tokenizer::Tokenizer;
use govbox_images::{PackageBuilder, PolicyInfo};
use govbox_provisioning::SigningKey;
use serde_json::{Value, json};

const REFUSAL: &str = "抱歉，这个问题我无法回答。";
/// Four characters the fixture encoders' small vocabulary holds, so that token ids decode to them.
const KEYWORD: &str = "矛盾纠纷";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/retrieval")).join(name)
}

/// A signed policy package of the library `baseline` at `version`, with `apply_to`.
fn package(dir: &Path, key: &SigningKey, version: &str, apply_to: &str) -> PathBuf {
    let lib = dir.join(format!("library-{version}"));
    std::fs::create_dir_all(lib.join("lists")).unwrap();
    std::fs::write(lib.join("lists/violence.txt"), format!("kw-feud\t{KEYWORD}\n")).unwrap();
    std::fs::write(
        lib.join("policy.toml"),
        format!(
            "format = \"govbox-policy/1\"\nname = \"baseline\"\nversion = \"{version}\"\napply_to = {apply_to}\n\
             [[category]]\nid = \"violence\"\naction = \"refuse\"\nrefusal = \"{REFUSAL}\"\n\
             keywords = [\"lists/violence.txt\"]\n"
        ),
    )
    .unwrap();
    let pkg = dir.join(format!("baseline-{version}.gbp"));
    let info = PolicyInfo { format: "govbox-policy/1".into(), categories: vec!["violence".into()], keywords: 1 };
    PackageBuilder::policy("baseline", version, &lib, info).unwrap().write(&pkg, &[key], &mut |_, _| {}).unwrap();
    pkg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_and_rerank_inputs_are_checked_when_the_library_asks() {
    let key = SigningKey::generate().unwrap();
    let b = Box_::provision_with(&key);
    let app = b.add_client("app", &[], None, None).token_only();
    let (embedder, reranker) = (fixture("tiny-bert-zh-embedder"), fixture("tiny-bert-zh-reranker"));
    let config = b.config(&[("emb", &embedder), ("rr", &reranker)], "");
    let d = Daemon::ready(&b, &config).await;

    let keyword_ids = Tokenizer::from_hf_dir(&embedder).unwrap().encode_plain(KEYWORD).unwrap();
    let embed = |input: Value| json!({"model": "emb", "input": input});
    let rerank = |query: &str, docs: &[&str]| json!({"model": "rr", "query": query, "documents": docs});
    let refused_with_keyword = [
        ("/v1/embeddings", embed(json!(["城市环境", "矛 盾·纠\u{200B}纷"])), "input"),
        ("/v1/embeddings", embed(json!(keyword_ids)), "input"),
        ("/v1/rerank", rerank("政府服务", &["城市环境", KEYWORD]), "documents"),
        ("/v1/rerank", rerank("ＡＢ矛盾纠纷", &["城市环境"]), "query"),
    ];

    // Version 1 applies to chat and completions only (the default): retrieval inputs pass.
    let v1 = package(b.tmp.path(), &key, "1.0.0", "[\"chat\", \"completions\"]");
    let a = d.admin(&json!({"cmd": "policy_import", "path": v1.to_str().unwrap()}));
    assert_eq!(a["ok"], true, "{a}");
    for (path, body, _) in &refused_with_keyword {
        let r = d.post(&app, path, body).await;
        assert_eq!(r.status, 200, "{path} {body}: {}", r.text());
    }

    // Version 2 lists embeddings and rerank: the same inputs are refused, each recorded.
    let v2 = package(b.tmp.path(), &key, "2.0.0", "[\"chat\", \"completions\", \"embeddings\", \"rerank\"]");
    let a = d.admin(&json!({"cmd": "policy_import", "path": v2.to_str().unwrap(), "activate": true}));
    assert_eq!(a["ok"], true, "{a}");
    let digest = a["result"]["digest"].as_str().unwrap().to_string();
    for (path, body, param) in &refused_with_keyword {
        let r = d.post(&app, path, body).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "content_filter"), "{path} {body}: {}", r.text());
        assert_eq!(r.json()["error"]["message"], REFUSAL);
        assert_eq!(r.json()["error"]["param"], *param);
    }
    for (path, body) in
        [("/v1/embeddings", embed(json!("公司的矛盾"))), ("/v1/rerank", rerank("政府服务", &["城市环境"]))]
    {
        let r = d.post(&app, path, &body).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }

    let verdicts: Vec<Value> = d.audit_entries().into_iter().filter(|e| e["kind"] == "policy_verdict").collect();
    assert_eq!(verdicts.len(), refused_with_keyword.len(), "{verdicts:#?}");
    for v in &verdicts {
        assert_eq!((v["stage"].as_str(), v["rule"].as_str()), (Some("input"), Some("kw-feud")));
        assert_eq!(v["digest"], digest);
        assert!(!v.to_string().contains(KEYWORD), "{v}");
    }
}
