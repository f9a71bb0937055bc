//! Property: a client cannot hold the server's resources by being slow or by opening many
//! connections. A TLS handshake, a request's headers and its body must each arrive within their
//! timeouts; a silent keep-alive connection is closed after the idle timeout; connections over
//! `limits.max_connections` are closed at once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::{Box_, Creds, Daemon, connect_to, raw_tls, tiny_qwen2};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMITS: &str = "[limits]\nheader_timeout_secs = 1\nbody_timeout_secs = 1\nidle_timeout_secs = 1\n";

/// Reads until the server closes the stream; returns what it sent and how long that took.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> (String, Duration) {
    let t = Instant::now();
    let mut out = Vec::new();
    let r = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(r.is_ok(), "the server kept the connection open for {limit:?}");
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_timed_out() {
    let b = Box_::provision();
    let app = b.add_client("app", &[], None, None);
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], LIMITS)).await;

    // No TLS handshake at all.
    let mut tcp = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let (_, took) = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900), "{took:?}");

    // Headers that never end (slowloris).
    let mut tls = raw_tls(d.addr, &d.ca_pem).await.unwrap();
    tls.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nX-Slow: a").await.unwrap();
    let (_, took) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A body that stops half-way: 408 in OpenAI's shape.
    let mut tls = raw_tls(d.addr, &d.ca_pem).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":",
        app.token.as_deref().unwrap()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let (answer, took) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A keep-alive connection that goes quiet after its request is closed by the server.
    let (mut sender, conn) = connect_to(d.addr, &d.ca_pem, None).await.unwrap();
    let req = hyper::Request::get("/healthz").header("host", "localhost").body(Default::default()).unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn).await.expect("idle connection left open").unwrap();
    assert!(t.elapsed() >= Duration::from_millis(500), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed() {
    let b = Box_::provision();
    let prom = b.add_metrics_client("prometheus");
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], "[limits]\nmax_connections = 2\n")).await;
    // The server may still count the connection that found it ready for a moment after the
    // client dropped it (seen once in a clean-clone run: the second handshake was refused), so
    // the two allowed connections retry their handshake for a while; a third is then refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut open = Vec::new();
    while open.len() < 2 {
        match connect_to(d.addr, &d.ca_pem, None).await {
            Ok(conn) => open.push(conn),
            Err(e) => assert!(Instant::now() < deadline, "an allowed connection was refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (a, c) = (open.pop(), open.pop());
    assert!(d.get(&Creds::none(), "/healthz").await.is_err(), "a third connection was served");
    drop((a, c));
    // Once the two close, connections are served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.get(&Creds::none(), "/healthz").await.is_err() {
        assert!(Instant::now() < deadline, "no connection was served after the others closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(d.metric(&prom, "govbox_connections_refused_total ").await.unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_keep_alive_connection_lasts_the_idle_timeout_not_the_header_timeout() {
    let b = Box_::provision();
    let limits = "[limits]\nheader_timeout_secs = 1\nbody_timeout_secs = 1\nidle_timeout_secs = 4\n";
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], limits)).await;
    let (mut sender, conn) = connect_to(d.addr, &d.ca_pem, None).await.unwrap();
    let get = || hyper::Request::get("/healthz").header("host", "localhost").body(Default::default()).unwrap();
    let conn = tokio::spawn(conn);
    assert_eq!(sender.send_request(get()).await.unwrap().status(), 200);
    // Quiet for twice the header timeout: the connection must still serve.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!conn.is_finished(), "closed after the header timeout although only idle");
    assert_eq!(sender.send_request(get()).await.unwrap().status(), 200);
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), conn).await.expect("idle connection left open").unwrap().unwrap();
    assert!(
        t.elapsed() >= Duration::from_secs(3),
        "closed {:?} after the last request; idle timeout is 4 s",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_request_is_closed_after_the_header_timeout() {
    let b = Box_::provision();
    let limits = "[limits]\nheader_timeout_secs = 1\nidle_timeout_secs = 30\n";
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], limits)).await;
    // A completed handshake, then silence: the first request's head must start within the
    // header timeout, not the idle timeout (nor hyper's own 30 s).
    let mut tls = raw_tls(d.addr, &d.ca_pem).await.unwrap();
    let (_, took) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{took:?}");
}
