//! Property: only the box's clients get answers, each within its limits. Missing or wrong
//! credentials give 401; a certificate from another CA never completes a request; revocation
//! through the admin socket refuses the very next request; a client gets 403 for a model it may
//! not use, and 429 (with Retry-After) over its request rate or daily token budget.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use common::{Box_, Creds, Daemon, tiny_qwen2};
use serde_json::{Value, json};

fn chat() -> Value {
    json!({"model": "tiny", "max_tokens": 1, "temperature": 0, "messages": [{"role": "user", "content": "hi"}]})
}

/// A client certificate named like a real client but issued by a CA the box does not know.
fn foreign_cert(cn: &str) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "govbox CA");
    let issuer = Issuer::new(ca, KeyPair::generate().unwrap());
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, cn);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_required_and_checked() {
    let b = Box_::provision();
    let app = b.add_client("app", &[], None, None);
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], "")).await;

    for creds in [Creds::none(), Creds::token("gbx_not-a-real-token"), Creds::token("Basic Zm9vOmJhcg==")] {
        let r = d.post(&creds, "/v1/chat/completions", &chat()).await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(r.headers.contains_key("www-authenticate"));
        let code = r.error_code();
        assert!(code == "missing_credentials" || code == "invalid_api_key", "{code}");
        assert_eq!(r.json()["error"]["type"], "authentication_error");
    }
    let r = d.get(&Creds::none(), "/v1/models").await.unwrap();
    assert_eq!(r.status, 401);

    // Both of the client's credentials work.
    assert_eq!(d.post(&app.token_only(), "/v1/chat/completions", &chat()).await.status, 200);
    assert_eq!(d.post(&app.cert_only(), "/v1/chat/completions", &chat()).await.status, 200);

    // A certificate from another CA, even with the client's name, gets no answer at all.
    let foreign = Creds { token: None, cert: Some(foreign_cert("app")) };
    let r = d.send(&foreign, "POST", "/v1/chat/completions", Some(chat().to_string().into())).await;
    assert!(r.is_err(), "a foreign certificate got an HTTP answer: {}", r.map(|r| r.status).unwrap_or(0));
    // ... not even with a valid token beside it.
    let foreign = Creds { token: app.token.clone(), cert: Some(foreign_cert("app")) };
    assert!(d.send(&foreign, "GET", "/v1/models", None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_renewal_through_the_admin_socket_apply_at_once() {
    let b = Box_::provision();
    let app = b.add_client("app", &[], None, None);
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], "")).await;
    let meta = std::fs::metadata(&d.admin).unwrap();
    assert!(meta.file_type().is_socket());
    // Anyone may connect; each request is checked by the caller's role (`admin_socket_roles`).
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);

    let status = d.admin(&json!({"cmd": "status"}));
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(status["result"]["ready"], true);
    assert_eq!(status["result"]["models"][0]["name"], "tiny");
    assert_eq!(status["result"]["backend"]["kind"], "cpu");
    assert!(status["result"]["version"].is_string());

    // A client added through the socket can call at once with the token it was given.
    let added = d.admin(&json!({"cmd": "client_add", "name": "portal", "models": ["tiny"], "token": true}));
    assert_eq!(added["ok"], true, "{added}");
    let portal = Creds {
        token: added["result"]["token"].as_str().map(String::from),
        cert: Some((
            added["result"]["cert_pem"].as_str().unwrap().to_string(),
            added["result"]["key_pem"].as_str().unwrap().to_string(),
        )),
    };
    assert!(added["result"]["ca_pem"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    assert_eq!(d.post(&portal.token_only(), "/v1/chat/completions", &chat()).await.status, 200);
    let again = d.admin(&json!({"cmd": "client_add", "name": "portal"}));
    assert_eq!((again["ok"].clone(), again["error"]["code"].clone()), (json!(false), json!("client_exists")));
    let list = d.admin(&json!({"cmd": "client_list"}));
    assert_eq!(list["result"]["clients"].as_array().unwrap().len(), 2);
    // No choice of models is refused, and so is a model the box does not have, by name.
    let none = d.admin(&json!({"cmd": "client_add", "name": "vague"}));
    assert_eq!(none["error"]["code"], "invalid_client_setting", "{none}");
    assert!(none["error"]["message"].as_str().unwrap().contains("--models all"), "{none}");
    let typo = d.admin(&json!({"cmd": "client_add", "name": "typo", "models": ["tiny", "nosuch"]}));
    assert_eq!(typo["error"]["code"], "invalid_client_setting", "{typo}");
    assert!(typo["error"]["message"].as_str().unwrap().contains("model 'nosuch' is not on this box"), "{typo}");
    let all = d.admin(&json!({"cmd": "client_add", "name": "everything", "models": ["all"]}));
    assert_eq!(all["result"]["client"]["models"], json!([]), "{all}");
    let bad = d.admin(&json!({"cmd": "rm -rf"}));
    assert_eq!(bad["error"]["code"], "bad_request");

    // Renewal: the new certificate works, the old one is refused on the next request.
    let renewed = d.admin(&json!({"cmd": "client_renew", "name": "portal", "cert_days": 10}));
    assert_eq!(renewed["ok"], true, "{renewed}");
    let new_cert = Creds {
        token: None,
        cert: Some((
            renewed["result"]["cert_pem"].as_str().unwrap().to_string(),
            renewed["result"]["key_pem"].as_str().unwrap().to_string(),
        )),
    };
    assert_eq!(d.post(&new_cert, "/v1/chat/completions", &chat()).await.status, 200);
    let r = d.post(&portal.cert_only(), "/v1/chat/completions", &chat()).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_client_certificate"));

    // Revocation: the very next request, by token or by certificate, is refused.
    assert_eq!(d.post(&app.token_only(), "/v1/chat/completions", &chat()).await.status, 200);
    let revoked = d.admin(&json!({"cmd": "client_revoke", "name": "app"}));
    assert_eq!(revoked["result"]["client"]["revoked"], true, "{revoked}");
    let r = d.post(&app.token_only(), "/v1/chat/completions", &chat()).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_api_key"));
    let r = d.post(&app.cert_only(), "/v1/chat/completions", &chat()).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_client_certificate"));
    let r = d.get(&app.token_only(), "/v1/models").await.unwrap();
    assert_eq!(r.status, 401);
    // The other client is untouched.
    assert_eq!(d.post(&portal.token_only(), "/v1/chat/completions", &chat()).await.status, 200);
    // A revoked name is never given to a new client, and the refusal says why.
    let reuse = d.admin(&json!({"cmd": "client_add", "name": "app", "models": ["all"]}));
    assert_eq!(reuse["error"]["code"], "client_name_retired", "{reuse}");
    assert!(reuse["error"]["message"].as_str().unwrap().contains("a revoked client had this name"), "{reuse}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_rate_and_budget_are_enforced_per_client() {
    let b = Box_::provision();
    let other = b.add_client("other-only", &["other"], None, None);
    let slow = b.add_client("slow", &[], Some(2), None);
    let frugal = b.add_client("frugal", &["tiny"], None, Some(40));
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], "")).await;

    // A model the client may not use: 403; and it does not see it in the list.
    let r = d.post(&other.token_only(), "/v1/chat/completions", &chat()).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "model_not_allowed"));
    assert_eq!(r.json()["error"]["type"], "permission_error");
    let v = d.get(&other.token_only(), "/v1/models").await.unwrap().json();
    assert_eq!(v["data"].as_array().unwrap().len(), 0);
    // Nor may it learn that the model exists: the same 404 as for a model that does not.
    let hidden = d.get(&other.token_only(), "/v1/models/tiny").await.unwrap();
    let missing = d.get(&other.token_only(), "/v1/models/nosuch").await.unwrap();
    assert_eq!((hidden.status, missing.status), (404, 404));
    assert_eq!(hidden.text().replace("tiny", "M"), missing.text().replace("nosuch", "M"));

    // Two requests per minute: the third is refused with a Retry-After.
    assert_eq!(d.post(&slow.token_only(), "/v1/chat/completions", &chat()).await.status, 200);
    assert_eq!(
        d.post(&slow.token_only(), "/v1/completions", &json!({"model": "tiny", "prompt": "a", "max_tokens": 1}))
            .await
            .status,
        200
    );
    let r = d.post(&slow.token_only(), "/v1/chat/completions", &chat()).await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limit_exceeded"));
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");

    // A 40-token daily budget: a request that fits is answered; one whose prompt and max_tokens
    // exceed what is left is refused until midnight UTC, saying how to make it fit.
    let first = d.post(&frugal.token_only(), "/v1/chat/completions", &chat()).await;
    assert_eq!(first.status, 200);
    assert!(first.json()["usage"]["total_tokens"].as_u64().unwrap() < 40);
    let mut big = chat();
    big["max_tokens"] = json!(40);
    let r = d.post(&frugal.cert_only(), "/v1/chat/completions", &big).await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "token_budget_exceeded"));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("lower max_tokens"), "{}", r.text());
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_refuses_tokens() {
    let b = Box_::provision();
    let app = b.add_client("app", &[], None, None);
    let d = Daemon::start(&b, &b.config(&[("tiny", &tiny_qwen2())], "[tls]\nmtls = \"required\"\n"));
    d.wait_ready_with(&app.cert_only()).await;
    // No certificate: the handshake fails, token or not.
    assert!(d.send(&app.token_only(), "GET", "/v1/models", None).await.is_err());
    let r = d.get(&app.cert_only(), "/v1/models").await.unwrap();
    assert_eq!(r.status, 200);
    // Health needs a certificate too in this mode (the handshake asks for one).
    assert!(d.get(&Creds::none(), "/healthz").await.is_err());
    assert_eq!(d.get(&app.cert_only(), "/healthz").await.unwrap().status, 200);
}
