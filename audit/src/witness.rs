//! The witness: every signed tree head also goes to a log server outside the box.
//!
//! A head kept only in the store can be deleted together with the entries it covers (see
//! `audit/README.md`, "What an insider can hide"). A head the agency's log server holds cannot:
//! `govbox audit verify EXPORT --witness FILE` then fails when the export does not extend it.
//!
//! **Wire format.** Each head is one RFC 5424 syslog message sent over TCP with octet-counting
//! framing (RFC 6587 §3.4.1: `MSG-LEN SP SYSLOG-MSG`), which rsyslog (`imtcp`), syslog-ng
//! (`network(transport(tcp))` with `flags(syslog-protocol)`) and SIEMs accept. With `tls://` the
//! same frames go inside TLS (RFC 5425, which uses that framing too; rsyslog `imtcp` with
//! `StreamDriver.Mode="1"`, syslog-ng `transport(tls)`), and the receiver's certificate must chain
//! to the CA named by `witness_ca` ([`crate::witness_tls`]):
//!
//! ```text
//! <110>1 2026-12-05T01:23:45.678Z HOST govbox-audit 1234 sth [govbox-sth@32473 tree_size="30"
//! root_hash="<64 hex>" time="2026-12-05T01:23:45.678Z" keyid="<64 hex>" signature="<128 hex>"]
//! govbox audit signed tree head, size 30
//! ```
//!
//! (one line; wrapped here; a head of the `gm` suite adds `alg="sm2" hash="sm3"` after the
//! signature, which is then DER hex). PRI 110 is facility 13 ("log audit") and severity 6. The
//! structured-data element carries the whole head; `32473` is the private enterprise number
//! that RFC 5612 reserves for documentation, since govbox has none of its own. The receiver may
//! store the frames as they came (`LEN SP MSG`) or one message a line (rsyslog's
//! `RSYSLOG_SyslogProtocol23Format`); [`parse_witness_file`] reads both.
//!
//! **Delivery.** A head is first written to the spool folder (`STATE/audit/witness/`, one file
//! per head, fsynced) and removed once it was written to the TCP connection. Syslog over TCP has
//! no acknowledgement: a head the receiver loses after accepting it is not sent again, but each
//! later head covers it (the verifier needs only the largest). Sending is retried with backoff
//! from 1 s to 60 s. At most [`MAX_SPOOL`] heads wait; older ones are dropped first, since the
//! newest head alone anchors everything before it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use govbox_provisioning::{HashAlgorithm, KeyAlgorithm};
use serde::{Deserialize, Serialize};

use crate::error::{AuditError, Result};
use crate::sth::SignedTreeHead;
pub use crate::witness_tls::WitnessTls;

/// The structured-data id of a head: `govbox-sth@` and the documentation PEN of RFC 5612.
pub const SD_ID: &str = "govbox-sth@32473";
/// Most heads waiting in the spool; the oldest are dropped beyond this.
pub const MAX_SPOOL: usize = 10_000;
/// Largest witness file `govbox audit verify --witness` reads (256 MiB).
pub const MAX_WITNESS_FILE_BYTES: u64 = 256 << 20;
/// Largest single syslog message accepted when reading frames back.
const MAX_MESSAGE: usize = 64 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long closing the log waits for the spool to empty.
const FINAL_SEND: Duration = Duration::from_secs(3);

/// Where heads go: `tcp://IP:PORT` or `tls://IP:PORT` (`[audit] witness`).
///
/// An IP address, never a host name: the egress lockdown leaves no DNS, and a name resolved at
/// each connect would let whoever answers DNS choose the witness. (With TLS the certificate may
/// still carry a name: `witness_server_name`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WitnessAddr {
    /// The receiver's IP address and port.
    pub addr: SocketAddr,
    /// Plain TCP or TLS.
    pub transport: WitnessTransport,
}

/// How the frames travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WitnessTransport {
    /// Plain TCP (RFC 6587).
    Tcp,
    /// TLS (RFC 5425), the receiver authenticated by `witness_ca`.
    Tls,
}

impl FromStr for WitnessAddr {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (transport, rest) = if let Some(rest) = s.strip_prefix("tcp://") {
            (WitnessTransport::Tcp, rest)
        } else if let Some(rest) = s.strip_prefix("tls://") {
            (WitnessTransport::Tls, rest)
        } else {
            return Err(format!("'{s}' is not tcp://IP:PORT or tls://IP:PORT"));
        };
        let addr: SocketAddr = rest
            .parse()
            .map_err(|e| format!("'{s}': '{rest}' is not IP:PORT (an IP address, not a host name): {e}"))?;
        if addr.port() == 0 {
            return Err(format!("'{s}': port 0"));
        }
        Ok(Self { addr, transport })
    }
}

impl std::fmt::Display for WitnessAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.transport {
            WitnessTransport::Tcp => "tcp",
            WitnessTransport::Tls => "tls",
        };
        write!(f, "{scheme}://{}", self.addr)
    }
}

/// How the witness is doing, for `/readyz`, `govbox status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessStatus {
    /// `tcp://IP:PORT` or `tls://IP:PORT`.
    pub address: String,
    /// Heads waiting in the spool: more than zero means the witness is behind.
    pub pending: u64,
    /// The tree size of the last head written to the witness since start.
    pub last_sent_size: Option<u64>,
    /// Why the last attempt failed; `None` after a success.
    pub last_error: Option<String>,
}

/// One RFC 5424 message carrying `head` (see the module documentation), without framing.
pub fn syslog_message(head: &SignedTreeHead, hostname: &str, pid: u32) -> String {
    format!(
        "<110>1 {time} {host} govbox-audit {pid} sth [{SD_ID} tree_size=\"{size}\" root_hash=\"{root}\" time=\"{time}\" keyid=\"{keyid}\" signature=\"{sig}\"{algs}] govbox audit signed tree head, size {size}",
        time = head.time,
        host = if hostname.is_empty() { "-" } else { hostname },
        size = head.tree_size,
        root = head.root_hash,
        keyid = head.keyid,
        sig = head.signature,
        // Heads of the intl suite keep the message they always had; others name their algorithms.
        algs = if head.alg == KeyAlgorithm::Ed25519 && head.hash == HashAlgorithm::Sha256 {
            String::new()
        } else {
            format!(" alg=\"{}\" hash=\"{}\"", head.alg, head.hash)
        },
    )
}

/// The message with RFC 6587 octet-counting framing: `LEN SP MSG`.
pub fn frame(message: &str) -> Vec<u8> {
    format!("{} {message}", message.len()).into_bytes()
}

/// One head found in a witness file, or why a `govbox-sth` element there did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WitnessRecord {
    /// A well-formed head (its signature is not checked here).
    Head(SignedTreeHead),
    /// A message with a `govbox-sth` element that is not a head; the string says why.
    Malformed(String),
}

/// Reads a witness file: octet-counted frames as sent, or one message a line, in any mix.
/// Messages without a `govbox-sth` element (other syslog traffic) are skipped.
pub fn parse_witness_file(bytes: &[u8]) -> Result<Vec<WitnessRecord>> {
    if bytes.len() as u64 > MAX_WITNESS_FILE_BYTES {
        return Err(AuditError::TooLarge { size: bytes.len() as u64, limit: MAX_WITNESS_FILE_BYTES });
    }
    let mut out = Vec::new();
    let mut rest = bytes;
    loop {
        while let [b' ' | b'\n' | b'\r' | b'\t' | 0, tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() {
            break;
        }
        let (msg, tail) = split_frame(rest).unwrap_or_else(|| split_line(rest));
        rest = tail;
        let msg = String::from_utf8_lossy(msg);
        if let Some(at) = msg.find(&format!("[{SD_ID} ")) {
            out.push(match parse_element(&msg[at + SD_ID.len() + 2..]) {
                Ok(h) => WitnessRecord::Head(h),
                Err(why) => {
                    WitnessRecord::Malformed(format!("{why} in '{}'", msg.chars().take(120).collect::<String>()))
                }
            });
        }
    }
    Ok(out)
}

/// `LEN SP MSG` at the start of `b`, if it is one.
fn split_frame(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 6 || b.get(digits) != Some(&b' ') {
        return None;
    }
    let len: usize = std::str::from_utf8(&b[..digits]).ok()?.parse().ok()?;
    let body = &b[digits + 1..];
    if len == 0 || len > MAX_MESSAGE || len > body.len() || body[0] != b'<' {
        return None;
    }
    Some(body.split_at(len))
}

fn split_line(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|c| *c == b'\n') {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

/// The params of a `govbox-sth` element, from just after its id to its closing `]`.
fn parse_element(s: &str) -> std::result::Result<SignedTreeHead, String> {
    let end = s.find(']').ok_or("the element has no closing ']'")?;
    let mut fields: [Option<&str>; 7] = [None; 7];
    const NAMES: [&str; 7] = ["tree_size", "root_hash", "time", "keyid", "signature", "alg", "hash"];
    let mut params = &s[..end];
    while !params.trim_start().is_empty() {
        params = params.trim_start();
        let (name, after) = params.split_once("=\"").ok_or("a param is not NAME=\"VALUE\"")?;
        let (value, after) = after.split_once('"').ok_or("a param value has no closing quote")?;
        if value.contains('\\') {
            return Err(format!("param {name}: escapes never occur in a head"));
        }
        let i = NAMES.iter().position(|n| *n == name).ok_or_else(|| format!("unknown param '{name}'"))?;
        if fields[i].replace(value).is_some() {
            return Err(format!("param {name} given twice"));
        }
        params = after;
    }
    let get = |i: usize| fields[i].map(str::to_string).ok_or_else(|| format!("param {} missing", NAMES[i]));
    let tree_size = get(0)?.parse().map_err(|e| format!("tree_size: {e}"))?;
    // Absent in heads of the intl suite (and of govbox before SM2): ed25519 over a SHA-256 tree.
    let alg =
        fields[5].map_or(Some(KeyAlgorithm::Ed25519), KeyAlgorithm::parse).ok_or("param alg is not ed25519 or sm2")?;
    let hash =
        fields[6].map_or(Some(HashAlgorithm::Sha256), HashAlgorithm::parse).ok_or("param hash is not sha256 or sm3")?;
    Ok(SignedTreeHead { tree_size, root_hash: get(1)?, time: get(2)?, keyid: get(3)?, signature: get(4)?, alg, hash })
}

/// What the log and the sender thread share.
struct State {
    status: Mutex<WitnessStatus>,
    wake: Condvar,
    stop: AtomicBool,
}

/// The spool and its sender thread.
pub(crate) struct Witness {
    spool: PathBuf,
    hostname: String,
    state: Arc<State>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Witness {
    /// Opens (creating) the spool `spool` and starts sending what it holds to `addr`; with
    /// `tls://`, `tls` names the CA and the name that the receiver's certificate must carry.
    pub fn start(addr: WitnessAddr, tls: &WitnessTls, spool: &Path) -> Result<Self> {
        let tls = crate::witness_tls::Connector::new(addr, tls)?;
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(spool).map_err(|source| AuditError::Io {
                action: "creating the witness spool".into(),
                path: spool.into(),
                source,
            })?;
        }
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().chars().filter(char::is_ascii_graphic).take(255).collect())
            .unwrap_or_default();
        let state = Arc::new(State {
            status: Mutex::new(WitnessStatus { address: addr.to_string(), ..WitnessStatus::default() }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let sender = Sender { addr, tls, spool: spool.to_path_buf(), state: state.clone(), conn: None };
        let thread =
            std::thread::Builder::new().name("audit-witness".into()).spawn(move || sender.run()).map_err(|source| {
                AuditError::Io { action: "starting the witness sender".into(), path: spool.into(), source }
            })?;
        Ok(Self { spool: spool.to_path_buf(), hostname, state, thread: Mutex::new(Some(thread)) })
    }

    /// Puts `head` in the spool (durably) and wakes the sender. A head that cannot be spooled
    /// (a full disk) is reported in the status; the checkpoint itself is already durable in the
    /// store, and the next head covers this one.
    pub fn enqueue(&self, head: &SignedTreeHead) {
        let msg = syslog_message(head, &self.hostname, std::process::id());
        let name = format!("{:020}.frame", head.tree_size);
        let tmp = self.spool.join(format!("{name}.tmp"));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&frame(&msg)).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, self.spool.join(&name)));
        let pending = spooled(&self.spool).map(|v| v.len()).unwrap_or(0);
        let mut status = self.state.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.pending = pending as u64;
        if let Err(e) = written {
            let why = format!("spooling head {} in {}: {e}", head.tree_size, self.spool.display());
            log_warn(&why);
            status.last_error = Some(why);
        }
        drop(status);
        self.state.wake.notify_all();
    }

    pub fn status(&self) -> WitnessStatus {
        self.state.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Tries for a short while to send what is spooled, then stops the sender.
    pub fn finish(&self) {
        let deadline = Instant::now() + FINAL_SEND;
        while Instant::now() < deadline && self.status().pending > 0 {
            let guard = self.state.status.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = self.state.wake.wait_timeout(guard, Duration::from_millis(50));
        }
        self.state.stop.store(true, Ordering::Release);
        self.state.wake.notify_all();
        if let Some(t) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        self.state.wake.notify_all();
    }
}

/// The spooled frames, oldest (smallest tree size) first.
fn spooled(spool: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(spool)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "frame"))
        .collect();
    v.sort();
    Ok(v)
}

struct Sender {
    addr: WitnessAddr,
    /// Set for `tls://`.
    tls: Option<crate::witness_tls::Connector>,
    spool: PathBuf,
    state: Arc<State>,
    conn: Option<Conn>,
}

/// An open connection to the witness.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<crate::witness_tls::TlsConn>),
}

impl Conn {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(c) => c.write_all(bytes),
            Conn::Tls(c) => c.send(bytes),
        }
    }

    /// True when the receiver has closed the connection.
    fn closed(&mut self) -> bool {
        match self {
            Conn::Tcp(c) => peer_closed(c),
            Conn::Tls(c) => c.closed(),
        }
    }
}

impl Sender {
    fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        while !self.state.stop.load(Ordering::Acquire) {
            match self.send_spooled() {
                Ok(()) => {
                    backoff = MIN_BACKOFF;
                    self.sleep(Duration::from_secs(30));
                }
                Err(why) => {
                    self.conn = None;
                    self.set(|s| s.last_error = Some(why.clone()));
                    log_warn(&format!("audit witness {}: {why}; retrying in {} s", self.addr, backoff.as_secs()));
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn set(&self, f: impl FnOnce(&mut WitnessStatus)) {
        f(&mut self.state.status.lock().unwrap_or_else(PoisonError::into_inner));
        self.state.wake.notify_all();
    }

    /// Waits for `d`, or until a head is spooled or the log closes.
    fn sleep(&self, d: Duration) {
        let guard = self.state.status.lock().unwrap_or_else(PoisonError::into_inner);
        if self.state.stop.load(Ordering::Acquire) || (guard.pending > 0 && guard.last_error.is_none()) {
            return;
        }
        let _ = self.state.wake.wait_timeout(guard, d);
    }

    /// Sends every spooled head in order, removing each once written.
    fn send_spooled(&mut self) -> std::result::Result<(), String> {
        let mut files = spooled(&self.spool).map_err(|e| format!("listing the spool {}: {e}", self.spool.display()))?;
        while files.len() > MAX_SPOOL {
            let _ = std::fs::remove_file(files.remove(0));
        }
        self.set(|s| s.pending = files.len() as u64);
        for (i, path) in files.iter().enumerate() {
            let mut bytes = Vec::new();
            let read = std::fs::File::open(path).and_then(|f| f.take(MAX_MESSAGE as u64 + 16).read_to_end(&mut bytes));
            if let Err(e) = read {
                return Err(format!("reading {}: {e}", path.display()));
            }
            self.connected()?.send(&bytes).map_err(|e| format!("sending: {e}"))?;
            let _ = std::fs::remove_file(path);
            let size = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok());
            self.set(|s| {
                s.pending = (files.len() - i - 1) as u64;
                s.last_sent_size = size.or(s.last_sent_size);
                s.last_error = None;
            });
        }
        Ok(())
    }

    /// The connection, opened anew if there is none or the receiver closed it.
    fn connected(&mut self) -> std::result::Result<&mut Conn, String> {
        if let Some(c) = &mut self.conn
            && !c.closed()
        {
            // Checked just above; the borrow checker cannot carry it over.
            return self.conn.as_mut().ok_or_else(|| "no connection".to_string());
        }
        self.conn = None;
        let c = TcpStream::connect_timeout(&self.addr.addr, CONNECT_TIMEOUT).map_err(|e| format!("connecting: {e}"))?;
        c.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(|e| format!("connecting: {e}"))?;
        let conn = match &self.tls {
            None => Conn::Tcp(c),
            Some(tls) => Conn::Tls(Box::new(tls.handshake(c, CONNECT_TIMEOUT)?)),
        };
        Ok(self.conn.insert(conn))
    }
}

/// True when the receiver has closed the connection (a read would return end of stream).
fn peer_closed(c: &TcpStream) -> bool {
    if c.set_nonblocking(true).is_err() {
        return true;
    }
    let closed = match c.peek(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    closed || c.set_nonblocking(false).is_err()
}

/// Operational messages go to stderr (the journal under systemd); this crate has no logger.
fn log_warn(msg: &str) {
    eprintln!("govbox-audit: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use govbox_provisioning::SigningKey;

    fn head(size: u64) -> SignedTreeHead {
        let key = SigningKey::generate().unwrap();
        SignedTreeHead::sign(&key, HashAlgorithm::Sha256, size, &[size as u8; 32], "2026-12-05T01:02:03.456Z".into())
    }

    #[test]
    fn addresses() {
        assert_eq!("tcp://127.0.0.1:6514".parse::<WitnessAddr>().unwrap().addr, "127.0.0.1:6514".parse().unwrap());
        let tls = "tls://10.0.0.5:6514".parse::<WitnessAddr>().unwrap();
        assert_eq!((tls.transport, tls.to_string().as_str()), (WitnessTransport::Tls, "tls://10.0.0.5:6514"));
        assert_eq!("tcp://[::1]:514".parse::<WitnessAddr>().unwrap().to_string(), "tcp://[::1]:514");
        for bad in [
            "udp://1.2.3.4:514",
            "tcp://logs.example:514",
            "tcp://1.2.3.4",
            "tls://logs.example:6514",
            "tcp://1.2.3.4:0",
        ] {
            assert!(bad.parse::<WitnessAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn frames_and_lines_parse_back_to_the_heads() {
        let (a, b) = (head(3), head(1000));
        let (ma, mb) = (syslog_message(&a, "box-1", 42), syslog_message(&b, "", 42));
        assert!(ma.starts_with("<110>1 2026-12-05T01:02:03.456Z box-1 govbox-audit 42 sth [govbox-sth@32473 "));
        let mut file = frame(&ma);
        file.extend_from_slice(&frame(&mb));
        file.extend_from_slice(b"\n<14>1 - host other - - - unrelated traffic\n");
        file.extend_from_slice(format!("{ma}\n").as_bytes());
        let got = parse_witness_file(&file).unwrap();
        assert_eq!(got, vec![WitnessRecord::Head(a.clone()), WitnessRecord::Head(b), WitnessRecord::Head(a)]);
    }

    #[test]
    fn malformed_elements_are_reported_not_skipped() {
        let m = syslog_message(&head(3), "h", 1);
        for (bad, why) in [
            (m.replace("tree_size=\"3\"", "tree_size=\"x\""), "tree_size"),
            (m.replace(" keyid=", " keyid2="), "unknown param"),
            (m.replace(" signature=\"", " keyid=\"0"), "twice"),
            (m.replace(']', ""), "closing"),
        ] {
            let got = parse_witness_file(bad.as_bytes()).unwrap();
            assert!(matches!(&got[..], [WitnessRecord::Malformed(w)] if w.contains(why)), "{why}: {got:?}");
        }
    }
}
