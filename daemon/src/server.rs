//! The HTTPS listener: accepting connections within `limits.max_connections` and, from any one
//! IP address, `limits.max_connections_per_address`; the TLS handshake within
//! `limits.header_timeout_secs`; HTTP/1.1 with a header-read timeout, an idle timeout, and a
//! graceful drain on shutdown.
//!
//! A connection is closed when it has been silent for `limits.idle_timeout_secs` with no request
//! in flight; with a request in flight it is closed only if it makes no progress for longer than
//! the request deadline plus the idle timeout (a client that stopped reading its answer).
//!
//! The header timeout counts from the first byte of a request's head, not from the end of the
//! previous request: hyper's own `header_read_timeout` starts as soon as a keep-alive connection
//! waits for its next request, which would close quiet keep-alive connections after
//! `header_timeout_secs` instead of `idle_timeout_secs`. So the timer is ours: the read side
//! notes when a head starts arriving on a connection with nothing in flight, the service clears
//! it when the head is complete, and the connection's watchdog closes one that trickles. A new
//! connection must begin its first request within `header_timeout_secs` of the handshake, so a
//! peer that completes handshakes and then says nothing holds each slot only that long.
//!
//! hyper's `header_read_timeout` is set explicitly (left unset, hyper applies its own 30 s, which
//! closed quiet keep-alive connections at 30 s whatever `idle_timeout_secs` said): to
//! `idle_timeout_secs + header_timeout_secs`, the longest a head may take by the rules above, so
//! it is a backstop that never cuts a connection those rules allow.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::auth::{ClientCert, ConnInfo};
use crate::state::AppState;
use crate::tls;

/// How a listener makes an accepted TCP connection secure before HTTP runs on it: TLS (rustls)
/// on the HTTPS port, TLCP (Tongsuo, `crate::tlcp`) on the TLCP port. Everything after the
/// handshake (limits, timeouts, the API, auth, quotas, audit) is the same code for both.
pub trait Handshake: Send + Sync + 'static {
    /// The secured stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The protocol's name in logs (`TLS`, `TLCP`).
    const NAME: &'static str;
    /// Runs the handshake; gives the stream and, when the peer presented a client certificate
    /// that verified, its identity.
    fn accept(
        &self,
        tcp: TcpStream,
        state: &AppState,
    ) -> impl Future<Output = Result<(Self::Stream, Option<ClientCert>), String>> + Send;
}

/// The rustls handshake of the HTTPS port, with the current `ServerConfig` (`tls_reload` swaps it).
pub struct TlsHandshake;

impl Handshake for TlsHandshake {
    type Stream = tokio_rustls::server::TlsStream<TcpStream>;
    const NAME: &'static str = "TLS";
    async fn accept(&self, tcp: TcpStream, state: &AppState) -> Result<(Self::Stream, Option<ClientCert>), String> {
        let stream = TlsAcceptor::from(state.tls_config()).accept(tcp).await.map_err(|e| e.to_string())?;
        let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(tls::fingerprint);
        Ok((stream, cert.map(ClientCert::Tls)))
    }
}

/// Accepts connections until shutdown, then waits up to `serving.shutdown_grace_secs` for the
/// open ones to finish their answers.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, router: Router) {
    serve_with(listener, state, router, Arc::new(TlsHandshake)).await
}

/// [`serve`] with another handshake (the TLCP port). Each listener has its own
/// `limits.max_connections` and per-address slots.
pub async fn serve_with<H: Handshake>(listener: TcpListener, state: Arc<AppState>, router: Router, handshake: Arc<H>) {
    let max = state.config.limits.max_connections;
    let conns = Arc::new(Semaphore::new(max));
    let per_address = PerAddress::new(state.config.limits.max_connections_per_address);
    let mut shutdown = state.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Some(slot) = per_address.take(peer.ip()) else {
                        state.metrics.connections_refused.inc();
                        log::debug!(
                            "refused a connection from {}: it has {} connections open",
                            peer.ip(),
                            per_address.limit
                        );
                        continue;
                    };
                    let Ok(permit) = conns.clone().try_acquire_owned() else {
                        state.metrics.connections_refused.inc();
                        log::debug!("refused a connection from {}: {max} connections are open", peer.ip());
                        continue;
                    };
                    tokio::spawn(connection(tcp, peer, (permit, slot), state.clone(), router.clone(), handshake.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly rather than spin.
                    log::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let open = max - conns.available_permits();
    let grace = Duration::from_secs(state.config.serving.shutdown_grace_secs);
    log::info!("stopped accepting connections; waiting up to {} s for {open} open connections", grace.as_secs());
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    match tokio::time::timeout(grace, conns.acquire_many(all)).await {
        Ok(_) => log::info!("all connections closed"),
        Err(_) => log::warn!(
            "{} connections still open after the {} s grace period; closing them",
            max - conns.available_permits(),
            grace.as_secs()
        ),
    }
}

/// Open connections per peer address (IPv4-mapped IPv6 counted as the IPv4 address).
struct PerAddress {
    limit: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One open connection of an address; dropping it frees the slot.
struct AddressSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerAddress {
    fn new(limit: usize) -> Self {
        PerAddress { limit, open: Arc::default() }
    }

    /// A slot for one more connection from `ip`, or `None` when it has `limit` open.
    fn take(&self, ip: IpAddr) -> Option<AddressSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot { ip, open: self.open.clone() })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            // Forget idle addresses, so the map holds only addresses with open connections.
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Milliseconds since `base` of the last byte read or written.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    /// 1 + the millisecond at which the head of the next request began to arrive; 0 when no
    /// head is partly read.
    head_started_ms: AtomicU64,
    /// Requests whose head was read and whose answer is not finished.
    in_flight: Arc<AtomicUsize>,
    /// Whether any request head was read on this connection.
    any_head: AtomicBool,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }
    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }
    /// Bytes arrived: with no request in flight they begin the next request's head.
    fn read_some(&self) {
        self.touch();
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let _ = self.head_started_ms.compare_exchange(0, self.now_ms() + 1, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
    /// A whole head was read.
    fn head_done(&self) {
        self.head_started_ms.store(0, Ordering::SeqCst);
        self.any_head.store(true, Ordering::SeqCst);
    }
    /// How long the connection has waited for its first request, if none came yet.
    fn first_head_pending_for(&self) -> Option<Duration> {
        (!self.any_head.load(Ordering::SeqCst)).then(|| self.base.elapsed())
    }
    /// How long the current head has been arriving, if one is.
    fn head_pending_for(&self) -> Option<Duration> {
        match self.head_started_ms.load(Ordering::SeqCst) {
            0 => None,
            t => Some(Duration::from_millis(self.now_ms().saturating_sub(t - 1))),
        }
    }
    fn quiet_for(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// An IO stream that notes when bytes move.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_some();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.activity.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a request as in flight until its response body is gone.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(n: Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        InFlight(n)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Guarded {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

struct OpenConnection(Arc<AppState>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics.connections.dec();
    }
}

async fn connection<H: Handshake>(
    tcp: TcpStream,
    peer: SocketAddr,
    permits: (OwnedSemaphorePermit, AddressSlot),
    state: Arc<AppState>,
    router: Router,
    handshake: Arc<H>,
) {
    let _permits = permits;
    state.metrics.connections.inc();
    let _open = OpenConnection(state.clone());
    let _ = tcp.set_nodelay(true);
    let limits = &state.config.limits;
    let header_timeout = Duration::from_secs(limits.header_timeout_secs);
    let (stream, client_cert) = match tokio::time::timeout(header_timeout, handshake.accept(tcp, &state)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            state.metrics.handshake_failures.inc();
            log::debug!("{} handshake with {} failed: {e}", H::NAME, peer.ip());
            // A refused client certificate ends here: an authentication failure (aggregated).
            state.audit.record_auth_failure(peer.ip(), "tls_handshake_failed");
            return;
        }
        Err(_) => {
            state.metrics.handshake_failures.inc();
            log::debug!("{} handshake with {} timed out", H::NAME, peer.ip());
            return;
        }
    };
    let info = ConnInfo { peer, client_cert };
    let in_flight = Arc::new(AtomicUsize::new(0));
    let activity = Arc::new(Activity {
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
        head_started_ms: AtomicU64::new(0),
        in_flight: in_flight.clone(),
        any_head: AtomicBool::new(false),
    });
    let io = TokioIo::new(Tracked { inner: stream, activity: activity.clone() });
    let counter = in_flight.clone();
    let heads = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        let guard = InFlight::new(counter.clone());
        heads.head_done();
        let router = router.clone();
        async move {
            let resp = router.oneshot(req.map(Body::new)).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|b| Body::new(Guarded { inner: b, _in_flight: guard })))
        }
    });
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    let mut builder = http1::Builder::new();
    // A backstop only: the watchdog below enforces the header timeout (see the module docs).
    builder.timer(TokioTimer::new()).header_read_timeout(idle + header_timeout).max_headers(100);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);

    let stuck = Duration::from_secs(state.config.serving.request_deadline_secs) + idle;
    let mut tick =
        tokio::time::interval((idle.min(header_timeout) / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)));
    let mut shutdown = state.shutdown.subscribe();
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    log::debug!("connection from {}: {e}", peer.ip());
                }
                break;
            }
            _ = shutdown.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tick.tick() => {
                let quiet = activity.quiet_for();
                let busy = in_flight.load(Ordering::SeqCst) > 0;
                let pending = activity.head_pending_for().or_else(|| activity.first_head_pending_for());
                if !busy && pending.is_some_and(|t| t >= header_timeout) {
                    log::debug!("closing a connection from {} whose request head took over {} s", peer.ip(), header_timeout.as_secs());
                    break;
                }
                if !busy && quiet >= idle {
                    if closing {
                        break;
                    }
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                } else if busy && quiet >= stuck {
                    log::info!("closing a connection from {} that made no progress for {} s", peer.ip(), quiet.as_secs());
                    break;
                }
            }
        }
    }
}
