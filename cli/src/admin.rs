//! A small blocking client for govboxd's admin socket.
//!
//! The protocol is `govbox_admin`'s: [`AdminClient::call`] sends one typed request and reads back
//! its typed answer, so a change to a message that this client does not follow fails to compile.
//! The daemon decides what each caller may do (its role by peer credentials), so this
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

use govbox_admin::socket::{ADMIN_GROUP, DEFAULT_ADMIN_SOCKET, MAX_ANSWER_LINE as MAX_ANSWER};
use govbox_admin::{AdminRequest, Call, Reply};
/// How long to wait for an answer: `client_add` signs a certificate and flushes the store.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request line may take to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The packaged daemon config, whose `admin_socket` says where a production govboxd listens.
const PACKAGED_CONFIG: &str = "/etc/govbox/govbox.toml";
/// Longest socket record or config file read while looking for the socket.
const MAX_LOOKUP_FILE: u64 = 1 << 20;

/// What `govbox` says when no daemon answers where it looked: which flag points it elsewhere.
pub const ELSEWHERE_HINT: &str =
    "if govboxd runs with its admin socket elsewhere, pass --admin-socket PATH (the admin_socket of its config)";

/// Where the admin socket is: `--admin-socket`; else, with `--state S`, `S/admin.sock` when it
/// exists, else the path the running govboxd of `S` recorded there (`S/admin-socket.path`), else
/// the packaged config's `admin_socket` when a socket is there, else `S/admin.sock`; without
/// `--state`, [`DEFAULT_ADMIN_SOCKET`].
pub fn socket_path(explicit: Option<&Path>, state: Option<&Path>) -> PathBuf {
    match (explicit, state) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(s)) => {
            let own = govbox_admin::socket::in_state(s);
            if own.symlink_metadata().is_ok() {
                return own;
            }
            recorded_socket(s)
                .or_else(|| configured_socket(Path::new(PACKAGED_CONFIG)).filter(|p| p.symlink_metadata().is_ok()))
                .unwrap_or(own)
        }
        (None, None) => PathBuf::from(DEFAULT_ADMIN_SOCKET),
    }
}

fn read_small(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(MAX_LOOKUP_FILE).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The socket path a running govboxd recorded in its state folder.
fn recorded_socket(state: &Path) -> Option<PathBuf> {
    let text = read_small(&govbox_admin::socket::record_path(state))?;
    let p = PathBuf::from(text.trim());
    p.is_absolute().then_some(p)
}

/// `admin_socket` of a govboxd config file, when it names one.
fn configured_socket(config: &Path) -> Option<PathBuf> {
    /// The one key read here; the daemon checks the rest.
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        admin_socket: PathBuf,
    }
    let c: Config = toml::from_str(&read_small(config)?).ok()?;
    (!c.admin_socket.as_os_str().is_empty()).then_some(c.admin_socket)
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
            Self::Missing { .. } => format!("the socket does not exist; {ELSEWHERE_HINT}"),
            Self::PermissionDenied { .. } => {
                format!("permission denied; run as root or as a member of the '{ADMIN_GROUP}' group")
            }
            Self::NotAnswering { source, .. } => {
                format!("nobody accepts connections on it ({source}); {ELSEWHERE_HINT}")
            }
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

    /// Sends `request` and returns its typed answer.
    pub fn call<C: Call>(&mut self, request: C) -> Result<C::Answer, AdminError> {
        let cmd = C::CMD;
        let request: AdminRequest = request.into();
        let mut line = serde_json::to_vec(&request)
            .map_err(|e| AdminError::BadAnswer { path: self.path.clone(), reason: format!("encoding {cmd}: {e}") })?;
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
        parse_answer::<C::Answer>(&self.path, cmd, &answer)
    }
}

/// Splits an answer line into its typed result or the daemon's error.
fn parse_answer<T: serde::de::DeserializeOwned>(path: &Path, cmd: &str, line: &[u8]) -> Result<T, AdminError> {
    let bad = |reason: String| AdminError::BadAnswer { path: path.to_path_buf(), reason };
    let reply: Reply<T> = serde_json::from_slice(line)
        .map_err(|e| bad(format!("the answer to {cmd} is not the protocol's answer: {e}")))?;
    match reply.into_result() {
        Some(Ok(r)) => Ok(r),
        Some(Err(e)) => Err(AdminError::Refused { cmd: cmd.to_string(), code: e.code, message: e.message }),
        None => Err(bad(format!("the answer to {cmd} has neither a result nor an error"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::os::unix::net::UnixListener;

    use govbox_admin::protocol::{ClientRevoke, Status};

    use super::*;

    #[test]
    fn socket_path_follows_the_state_folders_record_and_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        assert_eq!(socket_path(None, Some(state)), state.join("admin.sock"));
        std::fs::write(state.join("admin-socket.path"), "/run/elsewhere/admin.sock\n").unwrap();
        assert_eq!(socket_path(None, Some(state)), PathBuf::from("/run/elsewhere/admin.sock"));
        drop(UnixListener::bind(state.join("admin.sock")).unwrap());
        assert_eq!(socket_path(None, Some(state)), state.join("admin.sock"), "a socket in the folder wins");
        let cfg = state.join("govbox.toml");
        std::fs::write(&cfg, "config_version = 2\nadmin_socket = \"/run/govbox/admin.sock\"\n[tls]\nx = 1\n").unwrap();
        assert_eq!(configured_socket(&cfg), Some(PathBuf::from("/run/govbox/admin.sock")));
        std::fs::write(&cfg, "config_version = 2\n").unwrap();
        assert_eq!(configured_socket(&cfg), None);
    }

    #[test]
    fn socket_path_follows_state_and_override() {
        assert_eq!(socket_path(None, None), PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert_eq!(socket_path(None, Some(Path::new("/nonexistent-s"))), PathBuf::from("/nonexistent-s/admin.sock"));
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
            b"{\"ok\":true,\"result\":{\"hmac\":\"ab\"}}\n",
            b"{\"ok\":false,\"error\":{\"code\":\"client_not_found\",\"message\":\"no client 'x'\"}}\n",
        ]);
        let mut c = AdminClient::connect(&path).unwrap();
        let hmac = govbox_admin::protocol::AuditHmac { text: "t".into(), client: None };
        assert_eq!(c.call(hmac).unwrap().hmac, "ab");
        let err = c.call(ClientRevoke { name: "x".into() }).unwrap_err();
        assert_eq!(err.to_string(), "govboxd refused client_revoke: no client 'x' (client_not_found)");
        assert!(!err.is_unreachable());
        let seen = t.join().unwrap();
        assert_eq!(
            seen,
            vec!["{\"cmd\":\"audit_hmac\",\"text\":\"t\"}\n", "{\"cmd\":\"client_revoke\",\"name\":\"x\"}\n"]
        );
    }

    #[test]
    fn closed_or_garbled_answers_are_errors() {
        let (_dir, path, t) = serve(vec![b"not json\n", b"{\"ok\":true"]);
        let mut c = AdminClient::connect(&path).unwrap();
        let e = c.call(Status {}).unwrap_err();
        assert!(e.to_string().contains("is not the protocol's answer"), "{e}");
        let e = c.call(Status {}).unwrap_err();
        assert!(e.to_string().contains("cut off"), "{e}");
        t.join().unwrap();
        let e = c.call(Status {}).unwrap_err();
        assert!(matches!(e, AdminError::Io { .. }), "{e}");
    }
}
