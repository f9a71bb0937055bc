//! The audit writer as a process of its own: `govbox-auditd` holds the store and the audit
//! signing key under its own account, and govboxd appends over a Unix socket.
//!
//! **Why.** A process that can write the store can cut or rewrite it (issue 19). With the writer
//! apart, govboxd (and whoever runs code as its account) can append, ask for a checkpoint, read
//! the tail and take an export, and nothing else: the protocol has no operation that removes or
//! changes an entry. Retention prunes by its own rule (exported entries past the retention
//! period); a forced prune is refused over the socket.
//!
//! **Protocol.** One JSON object a line each way, [`Request`] and [`Response`], each carrying the
//! client's `id`. Requests on one connection are answered in order; appends are pipelined, so
//! the writer's group commit sees every waiting append of every connection in one batch.
//!
//! **Who may connect.** The server reads the peer's uid from the kernel (`SO_PEERCRED`) and
//! serves only its own uid, root (agency IT: `govbox audit export` while govboxd is stopped; root
//! could read the store anyway) and the uids it was told to allow (govboxd's); others are closed
//! at once without an answer.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::anchor::AnchorStatus;
use crate::entry::{Entry, Event, parse_time};
use crate::error::{AuditError, Result};
use crate::export::ExportRange;
use crate::log::AuditLog;
use crate::retention::PruneReport;
use crate::sth::SignedTreeHead;
use crate::witness::WitnessStatus;

/// Longest request line the server reads (an entry's fields are capped at 512 bytes each).
pub const MAX_REQUEST_LINE: usize = 64 << 10;
/// Longest answer line the client reads: an export of at most [`crate::MAX_EXPORT_BYTES`].
pub const MAX_RESPONSE_LINE: u64 = crate::MAX_EXPORT_BYTES * 2 + 4096;

/// A request to `govbox-auditd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Append an entry; answered once it is durable, with its seq.
    Append {
        /// The client's tag for the answer.
        id: u64,
        /// What happened.
        event: Event,
    },
    /// Count a failed authentication (tallied per source and minute by the writer); no answer.
    AuthFailure {
        /// The client's tag.
        id: u64,
        /// Where it came from.
        source: IpAddr,
        /// Why it failed.
        reason: String,
    },
    /// Make and return a fresh signed tree head.
    Checkpoint {
        /// The client's tag.
        id: u64,
    },
    /// An export (`govbox-audit-export/1`).
    Export {
        /// The client's tag.
        id: u64,
        /// The first seq.
        from_seq: Option<u64>,
        /// The first entry at or after this RFC 3339 time.
        since: Option<String>,
        /// The last seq.
        to_seq: Option<u64>,
    },
    /// The newest `n` entries.
    Tail {
        /// The client's tag.
        id: u64,
        /// How many.
        n: usize,
    },
    /// Prune what the retention rule allows before `before` (never forced).
    Prune {
        /// The client's tag.
        id: u64,
        /// RFC 3339.
        before: String,
    },
    /// The tree size, failures, the audit key, the witness and the TPM anchor.
    Status {
        /// The client's tag.
        id: u64,
    },
    /// An operator acknowledges a store found behind its TPM anchor ([`AuditLog::acknowledge`]);
    /// served to root and the server's own uid only.
    Acknowledge {
        /// The client's tag.
        id: u64,
        /// Why the operator accepts it (recorded in the entry).
        reason: String,
    },
}

impl Request {
    fn id(&self) -> u64 {
        match self {
            Request::Append { id, .. }
            | Request::AuthFailure { id, .. }
            | Request::Checkpoint { id }
            | Request::Export { id, .. }
            | Request::Tail { id, .. }
            | Request::Prune { id, .. }
            | Request::Status { id }
            | Request::Acknowledge { id, .. } => *id,
        }
    }
}

/// What `govbox-auditd` reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Durable entries.
    pub tree_size: u64,
    /// Appends that failed since it started.
    pub failures: u64,
    /// The audit public key (SPKI PEM).
    pub audit_key_pem: String,
    /// The witness, when one is configured.
    pub witness: Option<WitnessStatus>,
    /// The TPM anchor, when one is configured.
    #[serde(default)]
    pub anchor: Option<AnchorStatus>,
    /// Why the store is held behind its TPM anchor (nothing is served until an operator
    /// acknowledges it), while it is.
    #[serde(default)]
    pub held: Option<String>,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// An append's seq.
    Seq(u64),
    /// A signed tree head.
    Head(SignedTreeHead),
    /// An export document (its JSON text).
    Export(String),
    /// Entries, oldest first.
    Entries(Vec<Entry>),
    /// What a prune did.
    Pruned(PruneReport),
    /// The server's status.
    Status(ServerStatus),
}

/// An answer to the request with the same `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// The request's tag.
    pub id: u64,
    /// The answer, or the error's stable code and message.
    pub result: std::result::Result<Answer, RemoteError>,
}

/// An error as it crosses the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    /// [`AuditError::code`].
    pub code: String,
    /// Its message.
    pub message: String,
}

impl From<&AuditError> for RemoteError {
    fn from(e: &AuditError) -> Self {
        Self { code: e.code().to_string(), message: e.to_string() }
    }
}

impl From<RemoteError> for AuditError {
    /// Range errors stay range errors (a 400 to the caller); the rest make the log unavailable
    /// to the client, which is how govboxd must treat them (fail closed).
    fn from(e: RemoteError) -> Self {
        match e.code.as_str() {
            "audit_bad_range" => AuditError::Range { reason: e.message },
            "audit_closed" => AuditError::Closed,
            "audit_corrupt" => AuditError::Corrupt { path: "govbox-auditd".into(), detail: e.message },
            _ => AuditError::unavailable(format!("govbox-auditd: {}", e.message)),
        }
    }
}

/// Serves `log` on `listener` until the listener fails. Each connection gets a reader thread
/// and a thread that writes the answers in order. Peers whose uid is neither this process's nor
/// in `allowed_uids` are closed at once.
pub fn serve(log: AuditLog, listener: UnixListener, allowed_uids: Vec<u32>) -> Result<()> {
    let own = nix::unistd::getuid().as_raw();
    let allowed: Arc<Vec<u32>> = Arc::new(allowed_uids.into_iter().chain([own, 0]).collect());
    for conn in listener.incoming() {
        let conn = conn.map_err(|source| AuditError::Io {
            action: "accepting a connection on the audit socket".into(),
            path: Default::default(),
            source,
        })?;
        let uid = match nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(c) if allowed.contains(&c.uid()) => c.uid(),
            Ok(c) => {
                eprintln!("govbox-auditd: refused a connection from uid {} (pid {})", c.uid(), c.pid());
                continue;
            }
            Err(e) => {
                eprintln!("govbox-auditd: refused a connection whose peer credentials are unreadable: {e}");
                continue;
            }
        };
        let operator = uid == own || uid == 0;
        let log = log.clone();
        let _ =
            std::thread::Builder::new().name("auditd-conn".into()).spawn(move || connection(log, conn, uid, operator));
    }
    Ok(())
}

/// An answer still being worked on: an append waits for its group commit.
enum Pending {
    Ready(Response),
    Append(u64, tokio::sync::oneshot::Receiver<Result<u64>>),
}

/// `operator`: the peer is root or this server's own uid, who alone may acknowledge a held store.
fn connection(log: AuditLog, conn: UnixStream, uid: u32, operator: bool) {
    let Ok(out) = conn.try_clone() else { return };
    let (tx, rx) = mpsc::channel::<Pending>();
    let writer = std::thread::Builder::new().name("auditd-answers".into()).spawn(move || answers(out, rx));
    let mut reader = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_REQUEST_LINE as u64 + 1).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.len() > MAX_REQUEST_LINE => break,
            Ok(_) => {}
        }
        let req: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                let err = RemoteError { code: "audit_bad_request".into(), message: format!("not a request: {e}") };
                let _ = tx.send(Pending::Ready(Response { id: 0, result: Err(err) }));
                break;
            }
        };
        let id = req.id();
        let pending = match req {
            Request::Append { event, .. } => match log.submit(event) {
                Ok(rx) => Pending::Append(id, rx),
                Err(e) => Pending::Ready(Response { id, result: Err((&e).into()) }),
            },
            Request::AuthFailure { source, reason, .. } => {
                log.record_auth_failure(source, &reason);
                continue;
            }
            Request::Acknowledge { reason, .. } => {
                let result = if operator {
                    log.acknowledge(&format!("audit-socket uid {uid}"), &reason).map(Answer::Head)
                } else {
                    Err(AuditError::Range {
                        reason: format!("uid {uid} may not acknowledge: only root and the audit account may"),
                    })
                };
                Pending::Ready(Response { id, result: result.map_err(|e| (&e).into()) })
            }
            other => Pending::Ready(Response { id, result: handle(&log, other).map_err(|e| (&e).into()) }),
        };
        if tx.send(pending).is_err() {
            break;
        }
    }
    drop(tx);
    if let Ok(w) = writer {
        let _ = w.join();
    }
}

/// Everything but appends, answered inline.
fn handle(log: &AuditLog, req: Request) -> Result<Answer> {
    let time = |s: Option<String>, what: &str| {
        s.map(|t| parse_time(&t).ok_or_else(|| AuditError::Range { reason: format!("{what} '{t}' is not RFC 3339") }))
            .transpose()
    };
    Ok(match req {
        Request::Checkpoint { .. } => Answer::Head(log.checkpoint()?),
        Request::Export { from_seq, since, to_seq, .. } => {
            let since = time(since, "since")?;
            let bytes = log.export(ExportRange { from_seq, since, to_seq })?;
            Answer::Export(String::from_utf8(bytes).map_err(|_| AuditError::unavailable("the export is not UTF-8"))?)
        }
        Request::Tail { n, .. } => Answer::Entries(log.tail(n)?),
        Request::Prune { before, .. } => {
            let before: OffsetDateTime = time(Some(before), "before")?.unwrap_or_else(OffsetDateTime::now_utc);
            Answer::Pruned(log.prune(before, false)?)
        }
        Request::Status { .. } => Answer::Status(ServerStatus {
            tree_size: log.tree_size(),
            failures: log.failures(),
            audit_key_pem: log.public_key().to_spki_pem(),
            witness: log.witness_status(),
            anchor: log.anchor_status(),
            held: log.held(),
        }),
        Request::Append { .. } | Request::AuthFailure { .. } | Request::Acknowledge { .. } => {
            return Err(AuditError::unavailable("internal: append handled inline"));
        }
    })
}

/// Writes answers in request order, flushing whenever no further answer is ready.
fn answers(out: UnixStream, rx: mpsc::Receiver<Pending>) {
    let mut out = BufWriter::new(out);
    let mut next = rx.recv().ok();
    while let Some(p) = next {
        let resp = match p {
            Pending::Ready(r) => r,
            Pending::Append(id, rx) => {
                let result = match rx.blocking_recv() {
                    Ok(Ok(seq)) => Ok(Answer::Seq(seq)),
                    Ok(Err(e)) => Err((&e).into()),
                    Err(_) => Err((&AuditError::unavailable("the audit writer stopped")).into()),
                };
                Response { id, result }
            }
        };
        let line = serde_json::to_vec(&resp).unwrap_or_default();
        if out.write_all(&line).and_then(|()| out.write_all(b"\n")).is_err() {
            return;
        }
        next = match rx.try_recv() {
            Ok(p) => Some(p),
            Err(_) => {
                if out.flush().is_err() {
                    return;
                }
                rx.recv().ok()
            }
        };
    }
    let _ = out.flush();
}

type Waiters = std::collections::HashMap<u64, tokio::sync::oneshot::Sender<Result<Answer>>>;

/// One connection to `govbox-auditd`: requests go out under a lock, a reader thread hands each
/// answer to its waiter by id.
struct Conn {
    out: std::sync::Mutex<UnixStream>,
    waiting: Arc<std::sync::Mutex<Waiters>>,
    next_id: std::sync::atomic::AtomicU64,
    dead: Arc<std::sync::atomic::AtomicBool>,
}

impl Conn {
    fn open(path: &std::path::Path) -> Result<Self> {
        let io =
            |source| AuditError::unavailable(format!("connecting to govbox-auditd at {}: {source}", path.display()));
        let s = UnixStream::connect(path).map_err(io)?;
        let input = s.try_clone().map_err(io)?;
        let waiting: Arc<std::sync::Mutex<Waiters>> = Arc::default();
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (w, d) = (waiting.clone(), dead.clone());
        std::thread::Builder::new()
            .name("audit-client".into())
            .spawn(move || read_answers(input, &w, &d))
            .map_err(io)?;
        Ok(Self { out: std::sync::Mutex::new(s), waiting, next_id: 1.into(), dead })
    }

    fn is_dead(&self) -> bool {
        self.dead.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sends the request `make(id)`; the receiver gets its answer.
    fn send(&self, make: impl FnOnce(u64) -> Request) -> Result<tokio::sync::oneshot::Receiver<Result<Answer>>> {
        use std::sync::PoisonError;
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).insert(id, tx);
        if let Err(e) = self.write(&make(id)) {
            self.waiting.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
            return Err(e);
        }
        Ok(rx)
    }

    /// Sends a request that has no answer.
    fn post(&self, make: impl FnOnce(u64) -> Request) -> Result<()> {
        self.write(&make(self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
    }

    fn write(&self, req: &Request) -> Result<()> {
        let mut line = serde_json::to_vec(req).map_err(|e| AuditError::unavailable(format!("encoding: {e}")))?;
        line.push(b'\n');
        let written = self.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner).write_all(&line);
        written.map_err(|e| {
            self.dead.store(true, std::sync::atomic::Ordering::Release);
            AuditError::unavailable(format!("sending to govbox-auditd: {e}"))
        })
    }
}

fn read_answers(input: UnixStream, waiting: &std::sync::Mutex<Waiters>, dead: &std::sync::atomic::AtomicBool) {
    use std::sync::PoisonError;
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_RESPONSE_LINE + 1).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) if n as u64 > MAX_RESPONSE_LINE => break,
            Ok(_) => {}
        }
        let Ok(resp) = serde_json::from_slice::<Response>(&line) else { break };
        if let Some(tx) = waiting.lock().unwrap_or_else(PoisonError::into_inner).remove(&resp.id) {
            let _ = tx.send(resp.result.map_err(AuditError::from));
        }
    }
    dead.store(true, std::sync::atomic::Ordering::Release);
    // Dropping the waiters' senders fails them: "govbox-auditd closed the connection".
    waiting.lock().unwrap_or_else(PoisonError::into_inner).clear();
}

/// govboxd's handle on `govbox-auditd`: appends on one connection, everything else on a second,
/// so that an export never holds appends up. A connection that breaks is opened again by the
/// next request; until then requests fail with `audit_unavailable` (govboxd answers 503).
pub struct AuditClient {
    path: std::path::PathBuf,
    appends: std::sync::RwLock<Arc<Conn>>,
    control: std::sync::RwLock<Arc<Conn>>,
    public: govbox_provisioning::PublicKey,
    committed: std::sync::atomic::AtomicU64,
    failures: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for AuditClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditClient").field("socket", &self.path).finish_non_exhaustive()
    }
}

fn closed(_: tokio::sync::oneshot::error::RecvError) -> AuditError {
    AuditError::unavailable("govbox-auditd closed the connection")
}

impl AuditClient {
    /// Connects to the socket and reads the server's status (its audit key, its tree size).
    pub fn connect(path: &std::path::Path) -> Result<Self> {
        let control = Conn::open(path)?;
        let status = match control.send(|id| Request::Status { id })?.blocking_recv().map_err(closed)?? {
            Answer::Status(s) => s,
            other => return Err(AuditError::unavailable(format!("govbox-auditd: status answered {other:?}"))),
        };
        let public =
            govbox_provisioning::PublicKey::from_spki_pem_at(&status.audit_key_pem, "govbox-auditd's audit key")?;
        Ok(Self {
            appends: std::sync::RwLock::new(Arc::new(Conn::open(path)?)),
            control: std::sync::RwLock::new(Arc::new(control)),
            path: path.to_path_buf(),
            public,
            committed: status.tree_size.into(),
            failures: 0.into(),
        })
    }

    fn conn(&self, which: &std::sync::RwLock<Arc<Conn>>) -> Result<Arc<Conn>> {
        use std::sync::PoisonError;
        let c = which.read().unwrap_or_else(PoisonError::into_inner).clone();
        if !c.is_dead() {
            return Ok(c);
        }
        let fresh = Arc::new(Conn::open(&self.path)?);
        *which.write().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        Ok(fresh)
    }

    fn request(&self, make: impl FnOnce(u64) -> Request) -> Result<Answer> {
        self.conn(&self.control)?.send(make)?.blocking_recv().map_err(closed)?
    }

    fn appended(&self, r: Result<Answer>) -> Result<u64> {
        use std::sync::atomic::Ordering;
        match r {
            Ok(Answer::Seq(seq)) => {
                self.committed.fetch_max(seq + 1, Ordering::AcqRel);
                Ok(seq)
            }
            Ok(other) => Err(AuditError::unavailable(format!("govbox-auditd: append answered {other:?}"))),
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Appends; resolves once govbox-auditd has made the entry durable.
    pub async fn append(&self, event: Event) -> Result<u64> {
        let rx = self.conn(&self.appends).and_then(|c| c.send(|id| Request::Append { id, event }));
        let r = match rx {
            Ok(rx) => rx.await.map_err(closed).and_then(|r| r),
            Err(e) => Err(e),
        };
        self.appended(r)
    }

    /// [`AuditClient::append`] from blocking code (never on a runtime thread).
    pub fn append_blocking(&self, event: Event) -> Result<u64> {
        let rx = self.conn(&self.appends).and_then(|c| c.send(|id| Request::Append { id, event }));
        let r = match rx {
            Ok(rx) => rx.blocking_recv().map_err(closed).and_then(|r| r),
            Err(e) => Err(e),
        };
        self.appended(r)
    }

    /// Counts a failed authentication (govbox-auditd tallies them per source and minute).
    pub fn record_auth_failure(&self, source: IpAddr, reason: &str) {
        let reason = reason.to_string();
        if let Ok(c) = self.conn(&self.appends) {
            let _ = c.post(|id| Request::AuthFailure { id, source, reason });
        }
    }

    /// A fresh signed tree head. Blocking.
    pub fn checkpoint(&self) -> Result<SignedTreeHead> {
        match self.request(|id| Request::Checkpoint { id })? {
            Answer::Head(h) => Ok(h),
            other => Err(AuditError::unavailable(format!("govbox-auditd: checkpoint answered {other:?}"))),
        }
    }

    /// An export. Blocking.
    pub fn export(&self, range: ExportRange) -> Result<Vec<u8>> {
        let since = range.since.map(crate::entry::format_time);
        match self.request(|id| Request::Export { id, from_seq: range.from_seq, since, to_seq: range.to_seq })? {
            Answer::Export(text) => Ok(text.into_bytes()),
            other => Err(AuditError::unavailable(format!("govbox-auditd: export answered {other:?}"))),
        }
    }

    /// The newest `n` entries. Blocking.
    pub fn tail(&self, n: usize) -> Result<Vec<Entry>> {
        match self.request(|id| Request::Tail { id, n })? {
            Answer::Entries(e) => Ok(e),
            other => Err(AuditError::unavailable(format!("govbox-auditd: tail answered {other:?}"))),
        }
    }

    /// Prunes by the retention rule. A forced prune is refused: govboxd may not delete entries.
    pub fn prune(&self, before: OffsetDateTime, force: bool) -> Result<PruneReport> {
        if force {
            return Err(AuditError::Range {
                reason: "a forced prune is not available through govbox-auditd's socket; run `govbox audit prune --force` as the govbox-audit account with govbox-auditd stopped".into(),
            });
        }
        match self.request(|id| Request::Prune { id, before: crate::entry::format_time(before) })? {
            Answer::Pruned(p) => Ok(p),
            other => Err(AuditError::unavailable(format!("govbox-auditd: prune answered {other:?}"))),
        }
    }

    /// The server's status, including its witness. Blocking.
    pub fn status(&self) -> Result<ServerStatus> {
        match self.request(|id| Request::Status { id })? {
            Answer::Status(s) => Ok(s),
            other => Err(AuditError::unavailable(format!("govbox-auditd: status answered {other:?}"))),
        }
    }

    /// Acknowledges a store held behind its TPM anchor (root or the audit account only);
    /// returns the head that covers the acknowledgement entry. Blocking.
    pub fn acknowledge(&self, reason: &str) -> Result<SignedTreeHead> {
        match self.request(|id| Request::Acknowledge { id, reason: reason.to_string() })? {
            Answer::Head(h) => Ok(h),
            other => Err(AuditError::unavailable(format!("govbox-auditd: acknowledge answered {other:?}"))),
        }
    }

    /// Appends that failed since connecting.
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Entries known durable (from the answers seen).
    pub fn tree_size(&self) -> u64 {
        self.committed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The audit public key govbox-auditd signs with.
    pub fn public_key(&self) -> govbox_provisioning::PublicKey {
        self.public
    }
}
