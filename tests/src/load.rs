//! Load and abuse against a running govboxd over real TLS, for the reliability campaign
//! (`scripts/reliability.sh`, `src/bin/govbox-reliability.rs`) and its CI short form
//! (`tests/reliability_short.rs`).
//!
//! Everything here talks to one loopback address. Each function reports what it saw (counts and
//! statuses) rather than asserting, so that the campaign can print a full table; the callers
//! decide what is a failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::TestBox;

/// Where and how to reach a daemon.
#[derive(Clone)]
pub struct Target {
    /// The daemon's HTTPS address.
    pub addr: SocketAddr,
    /// TLS with the box CA and no client certificate (bearer-token requests).
    pub tls: TlsConnector,
    /// TLS with the client's certificate of the box CA.
    pub tls_cert: TlsConnector,
    /// The client's bearer token.
    pub token: String,
}

impl Target {
    /// The target for a [`TestBox`]'s client `app` on its port.
    pub fn of(b: &TestBox) -> Result<Self, String> {
        let read = |n: &str| {
            std::fs::read_to_string(b.certs.join(n)).map_err(|e| format!("{}: {e}", b.certs.join(n).display()))
        };
        let ca = read("ca.crt")?;
        let cert = (read("app.crt")?, read("app.key")?);
        Ok(Self {
            addr: SocketAddr::from(([127, 0, 0, 1], b.port)),
            tls: TlsConnector::from(Arc::new(client_config(&ca, None)?)),
            tls_cert: TlsConnector::from(Arc::new(client_config(&ca, Some(&cert))?)),
            token: b.token.clone(),
        })
    }

    /// A TLS connection (with the client certificate when `cert`).
    pub async fn tls_stream(&self, cert: bool) -> Result<TlsStream<TcpStream>, String> {
        let tcp = TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
        let c = if cert { &self.tls_cert } else { &self.tls };
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        c.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))
    }

    /// An HTTP/1.1 connection; its driver task ends when the connection does.
    pub async fn connect(&self, cert: bool) -> Result<SendRequest<Full<Bytes>>, String> {
        let tls = self.tls_stream(cert).await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// `GET /readyz` on a fresh connection: its status.
    pub async fn readyz(&self) -> Result<u16, String> {
        let mut s = self.connect(false).await?;
        Ok(send(&mut s, "GET", "/readyz", None, None).await?.status)
    }
}

/// A rustls client config trusting `ca_pem`, with an optional client certificate and key.
pub fn client_config(ca_pem: &str, cert: Option<&(String, String)>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| format!("CA: {e}"))?).map_err(|e| format!("CA: {e}"))?;
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match cert {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("client key: {e}"))?;
            b.with_client_auth_cert(chain, key).map_err(|e| e.to_string())
        }
        None => Ok(b.with_no_client_auth()),
    }
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// `x-request-id`, when sent.
    pub request_id: Option<String>,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// Sends one request on `s` (bearer `token` when given) and reads the whole answer.
pub async fn send(
    s: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    token: Option<&str>,
) -> Result<Answer, String> {
    s.ready().await.map_err(|e| format!("connection: {e}"))?;
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", "localhost");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| e.to_string())?;
    let resp = s.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let request_id = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    Ok(Answer { status, request_id, body })
}

/// Linux's resident set size of process `pid`, in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// The anonymous part of [`rss_kib`] (`RssAnon`: heap, stacks), in KiB: RSS less file-backed
/// pages such as memory-mapped model weights, which are touched lazily and are not a leak.
pub fn rss_anon_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().next()?.parse().ok()
}

/// What [`hold`] saw.
#[derive(Debug, Default, Clone)]
pub struct HoldReport {
    /// Connections asked for.
    pub wanted: usize,
    /// Connections whose TLS handshake and first request succeeded.
    pub opened: usize,
    /// Connections that answered every keep-alive request until the end.
    pub held: usize,
    /// Requests answered 200 on the held connections.
    pub requests: u64,
    /// The first few errors, for the report.
    pub errors: Vec<String>,
}

/// Opens `n` TLS connections (bearer token, 64 handshakes at a time), sends `GET /healthz` on each
/// and keeps them all open for `secs`, with one more `/healthz` on each every `ping` (which must be
/// below the daemon's idle timeout). Counts the connections that stay open and answer.
pub async fn hold(t: &Target, n: usize, secs: u64, ping: Duration) -> HoldReport {
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let opened = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (t, gate, opened) = (t.clone(), gate.clone(), opened.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = {
                let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                let mut s = t.connect(false).await?;
                let a = send(&mut s, "GET", "/healthz", None, None).await?;
                if a.status != 200 {
                    return Err(format!("first /healthz: {}", a.status));
                }
                s
            };
            opened.fetch_add(1, Ordering::Relaxed);
            let mut ok = 1u64;
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                tokio::time::sleep(ping.min(end.saturating_duration_since(Instant::now()))).await;
                let a = send(&mut s, "GET", "/healthz", None, None).await?;
                if a.status != 200 {
                    return Err(format!("keep-alive /healthz: {}", a.status));
                }
                ok += 1;
            }
            Ok::<u64, String>(ok)
        }));
    }
    let mut r = HoldReport { wanted: n, ..Default::default() };
    for task in tasks {
        match task.await {
            Ok(Ok(k)) => {
                r.held += 1;
                r.requests += k;
            }
            Ok(Err(e)) => {
                if r.errors.len() < 5 {
                    r.errors.push(e);
                }
            }
            Err(e) => r.errors.push(format!("task: {e}")),
        }
    }
    r.opened = opened.load(Ordering::Relaxed) as usize;
    r
}

/// What [`soak`] saw.
#[derive(Debug, Default, Clone)]
pub struct SoakReport {
    /// Requests sent.
    pub requests: u64,
    /// Answers by status.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection errors, cut bodies).
    pub transport_errors: u64,
    /// 200 answers whose body was wrong (a stream without `[DONE]`, JSON without `choices`/`data`).
    pub bad_bodies: u64,
    /// `x-request-id` of every answered inference request (2xx), to look for in the audit log.
    pub request_ids: Vec<String>,
    /// RSS in KiB when warm-up ended: the baseline growth is measured from.
    pub rss_warm_kib: Option<u64>,
    /// RSS in KiB at the end, after the workers stopped.
    pub rss_end_kib: Option<u64>,
    /// `RssAnon` in KiB when warm-up ended and at the end (see [`rss_anon_kib`]).
    pub rss_anon_kib: (Option<u64>, Option<u64>),
    /// RSS samples during the soak: (seconds since the soak started, KiB), every
    /// [`RSS_SAMPLE_EVERY`], at the end of warm-up and at the end.
    pub rss_series: Vec<(u64, u64)>,
    /// The first few errors, for the report.
    pub errors: Vec<String>,
}

impl SoakReport {
    /// Answers with a 5xx status other than a deliberate 503 (admission: queue full).
    pub fn unexpected_5xx(&self) -> u64 {
        self.by_status.iter().filter(|(s, _)| **s >= 500 && **s != 503).map(|(_, n)| n).sum()
    }

    /// RSS growth after warm-up (end against the baseline), in percent.
    pub fn rss_growth_pct(&self) -> Option<f64> {
        let (w, e) = (self.rss_warm_kib?, self.rss_end_kib?);
        Some((e as f64 - w as f64) * 100.0 / w as f64)
    }

    /// The highest RSS sampled after warm-up, in KiB.
    pub fn rss_max_after_warmup_kib(&self, warmup: Duration) -> Option<u64> {
        self.rss_series.iter().filter(|(s, _)| *s >= warmup.as_secs()).map(|(_, k)| *k).max()
    }

    /// The RSS series as `t=SECS:KIB` pairs, for logs and the report.
    pub fn rss_series_text(&self) -> String {
        self.rss_series.iter().map(|(s, k)| format!("{s}s:{k}")).collect::<Vec<_>>().join(" ")
    }
}

/// The request a soak worker sends as its `i`-th: plain chat, streamed chat or embeddings.
fn mixed_request(worker: usize, i: u64) -> (&'static str, Vec<u8>, bool) {
    let words = ["audit", "river", "ledger", "seven", "policy", "lantern", "quota", "harbour"];
    let w = |k: u64| words[((k * 7 + worker as u64 * 3) % words.len() as u64) as usize];
    let text = format!("{} {} {} {worker}-{i}", w(i), w(i + 1), w(i + 2));
    match (i + worker as u64) % 3 {
        0 => (
            "/v1/chat/completions",
            serde_json::json!({"model": "tiny-qwen2", "messages": [{"role": "user", "content": text}],
                "max_tokens": 8 + i % 9})
            .to_string()
            .into_bytes(),
            false,
        ),
        1 => (
            "/v1/chat/completions",
            serde_json::json!({"model": "tiny-qwen2", "messages": [{"role": "user", "content": text}],
                "max_tokens": 8 + i % 9, "stream": true})
            .to_string()
            .into_bytes(),
            true,
        ),
        _ => (
            "/v1/embeddings",
            serde_json::json!({"model": "minilm", "input": [text.clone(), format!("{text} again")]})
                .to_string()
                .into_bytes(),
            false,
        ),
    }
}

fn body_ok(a: &Answer, stream: bool) -> bool {
    if stream {
        return a.body.windows(12).any(|w| w == b"data: [DONE]");
    }
    let v = a.json();
    v["choices"].is_array() || v["data"].is_array()
}

/// How often [`soak`] samples the daemon's RSS.
pub const RSS_SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Runs `workers` clients (half with the client certificate, half with the bearer token), each
/// on a keep-alive connection, sending mixed chat, streamed chat and embeddings back to back for
/// `secs`. The first `warmup` of the soak is warm-up (same load: allocator pools, sled caches,
/// connection buffers reach their working size); RSS of `pid` is sampled every
/// [`RSS_SAMPLE_EVERY`], and the sample when `warmup` ends is the baseline (`rss_warm_kib`) that
/// the end sample (`rss_end_kib`) is compared with.
pub async fn soak(t: &Target, workers: usize, secs: u64, warmup: Duration, pid: u32) -> SoakReport {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (t, stop) = (t.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let cert = w % 2 == 0;
            let token = if cert { None } else { Some(t.token.clone()) };
            let mut r = SoakReport::default();
            let mut conn: Option<SendRequest<Full<Bytes>>> = None;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (path, body, stream) = mixed_request(w, i);
                r.requests += 1;
                let s = match conn.as_mut() {
                    Some(s) => s,
                    None => match t.connect(cert).await {
                        Ok(s) => conn.insert(s),
                        Err(e) => {
                            r.transport_errors += 1;
                            if r.errors.len() < 3 {
                                r.errors.push(e);
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                match send(s, "POST", path, Some(body), token.as_deref()).await {
                    Ok(a) => {
                        *r.by_status.entry(a.status).or_default() += 1;
                        if a.status == 200 {
                            if !body_ok(&a, stream) {
                                r.bad_bodies += 1;
                                if r.errors.len() < 3 {
                                    r.errors.push(format!("bad body: {}", String::from_utf8_lossy(&a.body)));
                                }
                            }
                            r.request_ids.extend(a.request_id);
                        } else if a.status == 503 || a.status == 429 {
                            // Admission said no: back off a little, as a client should.
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                    }
                    Err(e) => {
                        r.transport_errors += 1;
                        conn = None;
                        if r.errors.len() < 3 {
                            r.errors.push(e);
                        }
                    }
                }
            }
            r
        }));
    }
    let t0 = Instant::now();
    let (total_d, warmup) = (Duration::from_secs(secs), warmup.min(Duration::from_secs(secs)));
    let mut rss_series = Vec::new();
    let (mut rss_warm_kib, mut rss_anon_warm) = (None, None);
    let mut next_sample = Duration::ZERO;
    loop {
        let now = t0.elapsed();
        if now >= total_d {
            break;
        }
        let warm_due = rss_warm_kib.is_none() && now >= warmup;
        if now >= next_sample || warm_due {
            if let Some(k) = rss_kib(pid) {
                rss_series.push((now.as_secs_f64().round() as u64, k));
                if warm_due {
                    rss_warm_kib = Some(k);
                    rss_anon_warm = rss_anon_kib(pid);
                }
            }
            while next_sample <= now {
                next_sample += RSS_SAMPLE_EVERY;
            }
        }
        let mut wake = next_sample.min(total_d);
        if rss_warm_kib.is_none() && warmup > now {
            wake = wake.min(warmup);
        }
        tokio::time::sleep(wake.saturating_sub(t0.elapsed())).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = SoakReport { rss_warm_kib, rss_anon_kib: (rss_anon_warm, None), ..Default::default() };
    for task in tasks {
        // A worker finishes its request in flight; one that does not within a minute is a hang,
        // reported as a transport error rather than waited for.
        let abort = task.abort_handle();
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Err(_) => {
                abort.abort();
                total.transport_errors += 1;
                total.errors.push("a soak worker did not finish within 60 s of the end".into());
            }
            Ok(Ok(r)) => {
                total.requests += r.requests;
                for (s, n) in r.by_status {
                    *total.by_status.entry(s).or_default() += n;
                }
                total.transport_errors += r.transport_errors;
                total.bad_bodies += r.bad_bodies;
                total.request_ids.extend(r.request_ids);
                for e in r.errors {
                    if total.errors.len() < 5 {
                        total.errors.push(e);
                    }
                }
            }
            Ok(Err(e)) => total.errors.push(format!("worker: {e}")),
        }
    }
    total.rss_end_kib = rss_kib(pid);
    total.rss_anon_kib.1 = rss_anon_kib(pid);
    // A soak whose warm-up is its whole length has no later baseline: the end is compared with
    // the last sample taken before the workers stopped.
    if total.rss_warm_kib.is_none() {
        total.rss_warm_kib = rss_series.last().map(|(_, k)| *k);
    }
    rss_series.extend(total.rss_end_kib.map(|k| (t0.elapsed().as_secs_f64().round() as u64, k)));
    total.rss_series = rss_series;
    total
}

/// One abuse check: what was sent, what was expected, what came back.
#[derive(Debug, Clone)]
pub struct Check {
    /// A short name (`slowloris`, `oversized_body`, ...).
    pub name: String,
    /// Attacks sent (connections, requests or handshakes).
    pub faults: u64,
    /// What the daemon should do.
    pub expected: String,
    /// What it did.
    pub got: String,
    /// Whether that matches, and `/readyz` answered 200 afterwards.
    pub ok: bool,
}

/// Runs one abuse check with an upper bound on its duration: a check that has not finished after
/// `limit` fails with "timed out" instead of hanging the campaign.
pub async fn bounded(name: &str, limit: Duration, check: impl std::future::Future<Output = Check>) -> Check {
    let t0 = Instant::now();
    let c = match tokio::time::timeout(limit, check).await {
        Ok(c) => c,
        Err(_) => Check {
            name: name.into(),
            faults: 0,
            expected: "to finish".into(),
            got: format!("timed out after {limit:?}"),
            ok: false,
        },
    };
    eprintln!(
        "   {} {} ({:.1?}): {} (expected {})",
        if c.ok { "ok  " } else { "FAIL" },
        c.name,
        t0.elapsed(),
        c.got,
        c.expected
    );
    c
}

/// Runs `f` and then checks the daemon is still ready.
async fn checked(t: &Target, name: &str, faults: u64, expected: &str, got: Result<(bool, String), String>) -> Check {
    let ready = t.readyz().await;
    let (ok, mut got) = match got {
        Ok((ok, g)) => (ok, g),
        Err(e) => (false, e),
    };
    got.push_str(&format!("; /readyz after: {}", ready.as_ref().map_or_else(|e| e.clone(), |s| s.to_string())));
    Check { name: name.into(), faults, expected: expected.into(), got, ok: ok && ready == Ok(200) }
}

/// Reads from `s` until the server closes it; returns what it sent and when it closed (None when
/// still open after `limit`).
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> (Vec<u8>, Option<Duration>) {
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
    (out, r.ok().map(|_| t.elapsed()))
}

fn status_of(raw: &[u8]) -> Option<u16> {
    let line = raw.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line).ok()?.split_whitespace().nth(1)?.parse().ok()
}

/// Slowloris: `n` TLS connections that send a request line and then one header byte every
/// 200 ms, forever. The daemon must close every one within `header_timeout` (plus slack).
pub async fn slowloris(t: &Target, n: usize, header_timeout: Duration) -> Check {
    let limit = header_timeout + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = t.tls_stream(false).await?;
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                .await
                .map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            while t0.elapsed() < limit {
                if s.write_all(b"a").await.is_err() || s.flush().await.is_err() {
                    return Ok(Some(t0.elapsed()));
                }
                // A closed connection shows up as a read of 0 bytes.
                if let (_, Some(_)) = read_until_closed(&mut s, Duration::from_millis(200)).await {
                    return Ok(Some(t0.elapsed()));
                }
            }
            Ok::<_, String>(None)
        }));
    }
    let mut closed = 0;
    let mut slowest = Duration::ZERO;
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(Some(d))) => {
                closed += 1;
                slowest = slowest.max(d);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let got = format!("{closed}/{n} closed, the last after {slowest:.1?}; errors: {errors:?}");
    checked(t, "slowloris", n as u64, &format!("all closed within {limit:?}"), Ok((closed == n, got))).await
}

/// Writes raw request bytes on a fresh TLS connection and reads the answer's status.
async fn raw_status(t: &Target, head: &[u8], body: &[u8]) -> Result<Option<u16>, String> {
    raw_answer(t, head, body).await.map(|(status, _)| status)
}

/// [`raw_status`], also saying whether the server closed the connection before it had taken
/// every byte of `head` (a server may refuse an oversized header that way; the answer it sent
/// first can then be lost to the reset).
async fn raw_answer(t: &Target, head: &[u8], body: &[u8]) -> Result<(Option<u16>, bool), String> {
    let mut s = t.tls_stream(false).await?;
    let cut_short = s.write_all(head).await.is_err();
    // The server may answer and close before the body is sent: that is fine.
    if !cut_short {
        let _ = s.write_all(body).await;
    }
    let _ = s.flush().await;
    let (out, _) = read_until_closed(&mut s, Duration::from_secs(30)).await;
    Ok((status_of(&out), cut_short))
}

/// Headers over the limits (more than 100 headers; one header of 512 KiB): 431 each.
pub async fn oversized_headers(t: &Target) -> Check {
    let mut many = String::from("GET /v1/models HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let big = format!("GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(512 << 10));
    let a = raw_status(t, many.as_bytes(), b"").await;
    // The 512 KiB header is refused either with 431 or by the server closing the connection
    // while the client is still sending it (431 first, then the reset may drop it); what must
    // not happen is an answer other than 431.
    let b = raw_answer(t, big.as_bytes(), b"").await;
    let ok = matches!(a, Ok(Some(431))) && matches!(b, Ok((Some(431), _)) | Ok((None, true)));
    checked(
        t,
        "oversized_headers",
        2,
        "431 for 150 headers; 431, or the connection closed mid-header, for a 512 KiB header",
        Ok((ok, format!("{a:?}, {b:?} (status, closed before the header was sent)"))),
    )
    .await
}

/// Bodies over `max_body` (declared by Content-Length, and chunked without a length): 413 each.
pub async fn oversized_body(t: &Target, max_body: usize) -> Check {
    let size = max_body + (64 << 10);
    let body = vec![b' '; size];
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n",
        t.token
    );
    let a = raw_status(t, head.as_bytes(), &body).await;
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        t.token
    );
    let mut chunked = Vec::new();
    for part in body.chunks(64 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let b = raw_status(t, head.as_bytes(), &chunked).await;
    let ok = matches!(a, Ok(Some(413))) && matches!(b, Ok(Some(413)));
    checked(
        t,
        "oversized_body",
        2,
        &format!("413 for {size}-byte bodies (length and chunked)"),
        Ok((ok, format!("{a:?}, {b:?}"))),
    )
    .await
}

/// A client certificate and key (PEM) from a CA the box does not know.
pub fn foreign_client_cert() -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = rcgen::CertificateParams::new(vec!["app".to_string()]).map_err(|e| e.to_string())?;
    p.distinguished_name.push(rcgen::DnType::CommonName, "app");
    let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `n` connections in quick succession (16 at a time) presenting a certificate from a foreign
/// CA: every one must be refused (handshake failure, or no answer to a request).
pub async fn bad_certificates(t: &Target, ca_pem: &str, n: usize) -> Check {
    let run = async {
        let bad = foreign_client_cert()?;
        let tls = TlsConnector::from(Arc::new(client_config(ca_pem, Some(&bad))?));
        let refused = Arc::new(AtomicU64::new(0));
        let served = Arc::new(AtomicU64::new(0));
        // Attempts still pending after 30 s, by the step they were in: a stall is reported with
        // where it happened instead of holding the whole check until its bound.
        let stalled = Arc::new(std::sync::Mutex::new(BTreeMap::<&'static str, u64>::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (tls, addr, refused, served, gate, stalled) =
                (tls.clone(), t.addr, refused.clone(), served.clone(), gate.clone(), stalled.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(_p) = gate.acquire().await else { return };
                let step = std::sync::Mutex::new("tcp connect");
                let at = |s: &'static str| *step.lock().unwrap_or_else(|e| e.into_inner()) = s;
                let attempt = async {
                    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
                    // TLS 1.3: the client finishes first; the server's refusal arrives with the
                    // first read, so a request must fail for the refusal to count.
                    at("tls handshake");
                    let tls = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
                    at("http handshake");
                    let (mut s, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
                        .await
                        .map_err(|e| e.to_string())?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    at("request");
                    send(&mut s, "GET", "/v1/models", None, None).await
                };
                match tokio::time::timeout(Duration::from_secs(30), attempt).await {
                    Ok(Ok(_)) => served.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(_)) => refused.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        let s = *step.lock().unwrap_or_else(|e| e.into_inner());
                        *stalled.lock().unwrap_or_else(|e| e.into_inner()).entry(s).or_default() += 1;
                        0
                    }
                };
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        let (r, s) = (refused.load(Ordering::Relaxed), served.load(Ordering::Relaxed));
        let stalled = stalled.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok((s == 0 && r == n as u64, format!("{r}/{n} refused, {s} answered, stalled over 30 s: {stalled:?}")))
    };
    let got = run.await;
    checked(t, "bad_client_certificates", n as u64, "every handshake refused", got).await
}

/// Posts `body` with the bearer token on a fresh connection.
async fn post_raw(t: &Target, path: &str, body: Vec<u8>) -> Result<Answer, String> {
    let mut s = t.connect(false).await?;
    send(&mut s, "POST", path, Some(body), Some(&t.token)).await
}

/// Invalid UTF-8 inside a JSON string: 400.
pub async fn invalid_utf8(t: &Target) -> Check {
    let mut body = br#"{"model":"tiny-qwen2","messages":[{"role":"user","content":"ok "#.to_vec();
    body.extend_from_slice(b"\xff\xfe\xc3\x28");
    body.extend_from_slice(br#""}],"max_tokens":4}"#);
    let a = post_raw(t, "/v1/chat/completions", body).await;
    let got = a.map(|a| (a.status == 400, format!("{} {}", a.status, String::from_utf8_lossy(&a.body))));
    checked(t, "invalid_utf8_json", 1, "400", got).await
}

/// JSON nested `depth` levels deep (arrays inside `messages`, and a bare nest): 400, and the
/// daemon does not overflow its stack.
pub async fn nested_json(t: &Target, depth: usize) -> Check {
    let nest = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let inner = format!(r#"{{"model":"tiny-qwen2","messages":{nest},"max_tokens":4}}"#);
    let a = post_raw(t, "/v1/chat/completions", inner.into_bytes()).await;
    let b = post_raw(t, "/v1/embeddings", format!(r#"{{"model":"minilm","input":{nest}}}"#).into_bytes()).await;
    let st = |r: &Result<Answer, String>| r.as_ref().map(|a| a.status).map_err(Clone::clone);
    let ok = st(&a) == Ok(400) && st(&b) == Ok(400);
    checked(t, "nested_json", 2, &format!("400 for {depth}-deep JSON"), Ok((ok, format!("{:?}, {:?}", st(&a), st(&b)))))
        .await
}

/// `max_tokens` far beyond the context window: openapi.yaml says the context bounds it, so either
/// a 400 or a 200 whose completion stays within the context (`ctx` tokens).
pub async fn huge_max_tokens(t: &Target, ctx: u64) -> Check {
    let body = serde_json::json!({"model": "tiny-qwen2", "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 1_000_000_000u64})
    .to_string();
    let a = post_raw(t, "/v1/chat/completions", body.into_bytes()).await;
    let got = a.map(|a| {
        let v = a.json();
        let used = v["usage"]["total_tokens"].as_u64();
        let ok = a.status == 400 || (a.status == 200 && used.is_some_and(|u| u <= ctx));
        (ok, format!("{} total_tokens={used:?} {}", a.status, v["error"]["message"]))
    });
    checked(t, "huge_max_tokens", 1, &format!("400, or 200 within the {ctx}-token context"), got).await
}

/// Exports the audit log offline (the daemon stopped) with `govbox audit export`, through
/// govbox-auditd's `audit_socket` when there is one, verifies it with `govbox audit verify`, and
/// returns (verified, entries, request ids of
/// `inference_request` entries, verify's output).
pub fn audit_export_verify(
    state: &Path,
    audit_socket: Option<&Path>,
    out: &Path,
) -> Result<(bool, usize, Vec<String>, String), String> {
    let mut export = std::process::Command::new(crate::bin("govbox"));
    export.arg("--state").arg(state);
    if let Some(s) = audit_socket {
        export.arg("--audit-socket").arg(s);
    }
    let o = export.args(["audit", "export", "-o"]).arg(out).output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!("govbox audit export: {}", String::from_utf8_lossy(&o.stderr)));
    }
    let v = std::process::Command::new(crate::bin("govbox"))
        .args(["audit", "verify"])
        .arg(out)
        .arg("--device-key")
        .arg(state.join("identity/audit.pub"))
        .output()
        .map_err(|e| e.to_string())?;
    let text = format!("{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let entries = doc["entries"].as_array().cloned().unwrap_or_default();
    let ids = entries
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e["entry"].as_str()?).ok())
        .filter(|e| e["kind"] == "inference_request")
        .filter_map(|e| e["request_id"].as_str().map(str::to_string))
        .collect();
    Ok((v.status.success(), entries.len(), ids, text.trim().to_string()))
}
