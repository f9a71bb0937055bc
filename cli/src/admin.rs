//! A small blocking client for govboxd's admin socket.
//!
//! The protocol (see `daemon/src/admin/mod.rs`): one JSON object per line out, one JSON object per
//! line back, `{"ok":true,"result":...}` or `{"ok":false,"error":{"code":...,"message":...}}`.
//! Whoever may open the socket (mode 0660, group `govbox-admin`) is an administrator, so this
//! client trusts the daemon's answers but still caps their size and waits only so long for them.
//!
//! [`AdminClient::connect`] failing with [`AdminError::is_unreachable`] means "no daemon answers
//! here": the caller may then work on the state folder directly. Any later failure means the
//! daemon may already have acted, so callers must not fall back.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// The socket when no `--state` is given (the production layout).
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/govbox/admin.sock";
/// The group whose members may open the socket.
pub const ADMIN_GROUP: &str = "govbox-admin";
/// Longest answer line accepted: an audit export (at most 2 GiB, base64) is the largest answer.
const MAX_ANSWER: u64 = 3 << 30;
/// How long to wait for an answer: `client_add` signs a certificate and flushes the store.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request line may take to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the admin socket is: `--admin-socket`, else `STATE/admin.sock` with `--state`, else
/// [`DEFAULT_ADMIN_SOCKET`].
pub fn socket_path(explicit: Option<&Path>, state: Option<&Path>) -> PathBuf {
    match (explicit, state) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(s)) => s.join("admin.sock"),
        (None, None) => PathBuf::from(DEFAULT_ADMIN_SOCKET),
    }
}

/// Why an admin request failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdminError {
    /// Nothing at the socket path.
    Missing {
        /// The socket.
        path: PathBuf,
    },
    /// The caller may not open the socket.
    PermissionDenied {
        /// The socket.
        path: PathBuf,
    },
    /// The socket exists but nobody accepts on it (a stale socket of a stopped daemon).
    NotAnswering {
        /// The socket.
        path: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// The connection failed after it was made: a timeout, a closed connection, a write error.
    Io {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// The answer was not the protocol's JSON, or longer than the cap.
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The daemon answered with an error.
    Refused {
        /// The command.
        cmd: String,
        /// The daemon's stable error code.
        code: String,
        /// The daemon's message.
        message: String,
    },
}

impl AdminError {
    /// True when no daemon could be reached at all, so nothing was sent.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Missing { .. } | Self::PermissionDenied { .. } | Self::NotAnswering { .. })
    }

    /// True when the socket is missing or nobody listens on it: the daemon is not running.
    pub fn is_not_running(&self) -> bool {
        matches!(self, Self::Missing { .. } | Self::NotAnswering { .. })
    }

    /// The reason alone, without the socket path (for messages that already name it).
    pub fn reason(&self) -> String {
        match self {
            Self::Missing { .. } => "the socket does not exist".to_string(),
            Self::PermissionDenied { .. } => {
                format!("permission denied; run as root or as a member of the '{ADMIN_GROUP}' group")
            }
            Self::NotAnswering { source, .. } => format!("nobody accepts connections on it ({source})"),
            Self::Io { action, source, .. } => format!("{action}: {}", describe_io(source)),
            Self::BadAnswer { reason, .. } => reason.clone(),
            Self::Refused { cmd, code, message } => format!("govboxd refused {cmd}: {message} ({code})"),
        }
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused { .. } => f.write_str(&self.reason()),
            Self::Missing { path }
            | Self::PermissionDenied { path }
            | Self::NotAnswering { path, .. }
            | Self::Io { path, .. }
            | Self::BadAnswer { path, .. } => {
                write!(f, "govboxd admin socket {}: {}", path.display(), self.reason())
            }
        }
    }
}

impl std::error::Error for AdminError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::NotAnswering { source, .. } | Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "govboxd did not answer in time".to_string(),
        _ => e.to_string(),
    }
}

/// One open connection to the admin socket; several requests may be sent on it, in turn.
pub struct AdminClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl AdminClient {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, AdminError> {
        let path_buf = path.to_path_buf();
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => AdminError::Missing { path: path_buf.clone() },
            io::ErrorKind::PermissionDenied => AdminError::PermissionDenied { path: path_buf.clone() },
            _ => AdminError::NotAnswering { path: path_buf.clone(), source: e },
        })?;
        let io_err = |action, source| AdminError::Io { path: path_buf.clone(), action, source };
        stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(|e| io_err("setting the read timeout", e))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(|e| io_err("setting the write timeout", e))?;
        let writer = stream.try_clone().map_err(|e| io_err("cloning the connection", e))?;
        Ok(Self { path: path_buf, reader: BufReader::new(stream), writer })
    }

    /// Waits up to `limit` for each answer (the default is 30 s; imports take longer).
    pub fn set_read_timeout(&mut self, limit: Duration) {
        // Only fails for a zero duration, which callers never pass.
        let _ = self.reader.get_ref().set_read_timeout(Some(limit));
    }

    /// The socket this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `request` (an object with a `cmd`) and returns the answer's `result`.
    pub fn request(&mut self, request: &Value) -> Result<Value, AdminError> {
        let cmd = request.get("cmd").and_then(Value::as_str).unwrap_or("?").to_string();
        let mut line = request.to_string().into_bytes();
        line.push(b'\n');
        let io_err = |action, source| AdminError::Io { path: self.path.clone(), action, source };
        self.writer.write_all(&line).map_err(|e| io_err("sending the request", e))?;
        self.writer.flush().map_err(|e| io_err("sending the request", e))?;

        let mut answer = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_ANSWER + 1)
            .read_until(b'\n', &mut answer)
            .map_err(|e| io_err("reading the answer", e))?;
        if n == 0 {
            let closed =
                io::Error::new(io::ErrorKind::UnexpectedEof, "govboxd closed the connection without answering");
            return Err(io_err("reading the answer", closed));
        }
        if answer.last() != Some(&b'\n') {
            let reason = if n as u64 > MAX_ANSWER {
                format!("the answer to {cmd} is longer than {} MiB", MAX_ANSWER >> 20)
            } else {
                format!("the answer to {cmd} was cut off")
            };
            return Err(AdminError::BadAnswer { path: self.path.clone(), reason });
        }
        parse_answer(&self.path, &cmd, &answer)
    }
}

/// Splits an answer line into its result or the daemon's error.
fn parse_answer(path: &Path, cmd: &str, line: &[u8]) -> Result<Value, AdminError> {
    let bad = |reason: String| AdminError::BadAnswer { path: path.to_path_buf(), reason };
    let mut v: Value =
        serde_json::from_slice(line).map_err(|e| bad(format!("the answer to {cmd} is not JSON: {e}")))?;
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(v.get_mut("result").map(Value::take).unwrap_or(Value::Null)),
        Some(false) => {
            let field = |k: &str| v.pointer(&format!("/error/{k}")).and_then(Value::as_str).unwrap_or("?").to_string();
            Err(AdminError::Refused { cmd: cmd.to_string(), code: field("code"), message: field("message") })
        }
        None => Err(bad(format!("the answer to {cmd} has no boolean \"ok\""))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::os::unix::net::UnixListener;

    use serde_json::json;

    use super::*;

    #[test]
    fn socket_path_follows_state_and_override() {
        assert_eq!(socket_path(None, None), PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert_eq!(socket_path(None, Some(Path::new("/s"))), PathBuf::from("/s/admin.sock"));
        assert_eq!(socket_path(Some(Path::new("/x.sock")), Some(Path::new("/s"))), PathBuf::from("/x.sock"));
    }

    #[test]
    fn missing_socket_is_unreachable_and_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let err = AdminClient::connect(&dir.path().join("admin.sock")).err().unwrap();
        assert!(matches!(err, AdminError::Missing { .. }), "{err}");
        assert!(err.is_unreachable() && err.is_not_running());
    }

    #[test]
    fn stale_socket_is_not_answering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        drop(UnixListener::bind(&path).unwrap());
        let err = AdminClient::connect(&path).err().unwrap();
        assert!(matches!(err, AdminError::NotAnswering { .. }), "{err}");
        assert!(err.is_not_running());
    }

    /// Serves one connection: answers each line with the next of `answers`, then closes.
    fn serve(answers: Vec<&'static [u8]>) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<Vec<String>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut seen = Vec::new();
            for a in answers {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                seen.push(l);
                w.write_all(a).unwrap();
            }
            seen
        });
        (dir, path, t)
    }

    #[test]
    fn request_returns_result_and_maps_refusals() {
        let (_dir, path, t) = serve(vec![
            b"{\"ok\":true,\"result\":{\"ready\":true}}\n",
            b"{\"ok\":false,\"error\":{\"code\":\"client_not_found\",\"message\":\"no client 'x'\"}}\n",
        ]);
        let mut c = AdminClient::connect(&path).unwrap();
        assert_eq!(c.request(&json!({"cmd": "status"})).unwrap(), json!({"ready": true}));
        let err = c.request(&json!({"cmd": "client_revoke", "name": "x"})).unwrap_err();
        assert_eq!(err.to_string(), "govboxd refused client_revoke: no client 'x' (client_not_found)");
        assert!(!err.is_unreachable());
        let seen = t.join().unwrap();
        assert_eq!(seen, vec!["{\"cmd\":\"status\"}\n", "{\"cmd\":\"client_revoke\",\"name\":\"x\"}\n"]);
    }

    #[test]
    fn closed_or_garbled_answers_are_errors() {
        let (_dir, path, t) = serve(vec![b"not json\n", b"{\"ok\":true"]);
        let mut c = AdminClient::connect(&path).unwrap();
        let e = c.request(&json!({"cmd": "status"})).unwrap_err();
        assert!(e.to_string().contains("is not JSON"), "{e}");
        let e = c.request(&json!({"cmd": "status"})).unwrap_err();
        assert!(e.to_string().contains("cut off"), "{e}");
        t.join().unwrap();
        let e = c.request(&json!({"cmd": "status"})).unwrap_err();
        assert!(matches!(e, AdminError::Io { .. }), "{e}");
    }
}
