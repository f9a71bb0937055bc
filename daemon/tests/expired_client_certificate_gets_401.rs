//! Property: a client certificate of the box's CA that has expired completes the TLS handshake
//! and is refused with the documented 401 in OpenAI's error shape (which an SDK can show), while
//! a certificate of another CA, expired or not, still fails the handshake.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Box_, Creds, Daemon, tiny_qwen2};
use govbox_provisioning::ClientStore;
use serde_json::json;
use time::{Duration, OffsetDateTime};

/// Gives `name` (in `b`'s store, daemon stopped) a certificate valid for one day, two days ago.
fn expire(b: &Box_, name: &str, token: Option<String>) -> Creds {
    let store = ClientStore::open(&b.state).unwrap();
    let issued = store.renew_at(name, 1, OffsetDateTime::now_utc() - Duration::days(2)).unwrap();
    Creds { token, cert: Some((issued.cert.cert_pem, issued.cert.key_pem)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_gets_a_401_and_a_foreign_one_no_handshake() {
    let b = Box_::provision();
    let fresh = b.add_client("fresh", &[], None, None);
    let old = b.add_client("old", &[], None, None);
    let old = expire(&b, "old", old.token);
    // Another box's CA: its certificates, current or expired, are strangers here.
    let other = Box_::provision();
    let stranger = other.add_client("fresh", &[], None, None);
    let _ = other.add_client("old", &[], None, None);
    let stale_stranger = expire(&other, "old", None);
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], "")).await;
    let chat = json!({"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});

    assert_eq!(d.post(&fresh.cert_only(), "/v1/chat/completions", &chat).await.status, 200);
    let r = d
        .send(&old.cert_only(), "POST", "/v1/chat/completions", Some(chat.to_string().into_bytes()))
        .await
        .expect("an expired certificate of this CA completes the handshake");
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_client_certificate"), "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    // Its token is a separate credential and still works.
    assert_eq!(d.post(&old.token_only(), "/v1/chat/completions", &chat).await.status, 200);

    for (what, creds) in [("a current", stranger.cert_only()), ("an expired", stale_stranger.cert_only())] {
        let r = d.get(&creds, "/v1/models").await;
        assert!(r.is_err(), "{what} certificate of another CA completed the handshake: {}", r.unwrap().status);
    }
}
