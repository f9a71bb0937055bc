//! Property: one address cannot lock the other clients out by holding connections. Connections
//! from one IP address beyond `limits.max_connections_per_address` are closed at once, so an
//! attacker on 127.0.0.1 holding idle TLS connections leaves room for a client on 127.0.0.2.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Box_, Daemon, client_config, tiny_qwen2};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpSocket;

/// A TLS connection to `to` from `from` (port chosen by the kernel).
async fn tls_from(
    from: Ipv4Addr,
    to: SocketAddr,
    ca_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    let tcp = socket.connect(to).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca_pem, None)));
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_leave_room_for_another() {
    const MAX: usize = 8;
    const PER_ADDRESS: usize = 4;
    let b = Box_::provision();
    // A long header timeout: the attacker's idle connections stay for the whole test.
    let limits = format!(
        "[limits]\nmax_connections = {MAX}\nmax_connections_per_address = {PER_ADDRESS}\nheader_timeout_secs = 60\n"
    );
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], &limits)).await;

    // The attacker completes handshakes and idles. (The harness's own readiness probe, from the
    // same address, may hold a slot for a moment after it ends: retried within a deadline.)
    let attacker = Ipv4Addr::new(127, 0, 0, 1);
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < PER_ADDRESS {
        assert!(Instant::now() < deadline, "only {} attacker connections were accepted", held.len());
        match tls_from(attacker, d.addr, &d.ca_pem).await {
            Ok(s) => held.push(s),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    // Every further one from that address is closed at once, though the box has room.
    for i in PER_ADDRESS..MAX {
        let r = tls_from(attacker, d.addr, &d.ca_pem).await;
        assert!(
            r.is_err(),
            "attacker connection {} of {MAX} was accepted; the per-address limit is {PER_ADDRESS}",
            i + 1
        );
    }

    // The victim, on another address, is still served.
    let tls = tls_from(Ipv4Addr::new(127, 0, 0, 2), d.addr, &d.ca_pem).await.expect("the victim's handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/healthz").header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
    let resp = sender.send_request(req).await.expect("the victim's request");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(!body.is_empty());

    // Once the attacker lets go, its address may connect again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tls_from(attacker, d.addr, &d.ca_pem).await.is_err() {
        assert!(Instant::now() < deadline, "the attacker's address stayed locked out after closing its connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
