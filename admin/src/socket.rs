//! The admin socket's place, permissions and limits.
//!
//! A Unix stream socket, mode [`SOCKET_MODE`] (0666: anyone may connect, every request is checked
//! against the caller's role by peer credentials), group [`ADMIN_GROUP`] when that group exists and
//! the daemon is a member. Each request is one JSON object on one line ([`crate::AdminRequest`]); each answer
//! is one JSON object on one line ([`crate::Reply`]), in order. A connection may send several
//! requests. Lines longer than [`MAX_REQUEST_LINE`], or a connection silent for [`IDLE`], end the
//! connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket in the packaged layout (`dist/govbox.toml`, `RuntimeDirectory=govbox`).
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/govbox/admin.sock";
/// The socket's file name inside the state folder when the config names none.
pub const STATE_SOCKET_NAME: &str = "admin.sock";
/// The file in the state folder where a running govboxd writes the path of its admin socket, so
/// that `govbox --state S` finds a socket that is not `S/admin.sock`.
pub const SOCKET_RECORD_NAME: &str = "admin-socket.path";
/// The socket's mode: anyone may connect; each request is then allowed or refused by the
/// caller's peer credentials (see [`crate::roles`]), so that auditors who are not operators can
/// reach it.
pub const SOCKET_MODE: u32 = 0o666;
/// The group whose members may use the socket (`dist/sysusers.d/govbox.conf`).
pub const ADMIN_GROUP: &str = "govbox-admin";
/// Longest request line.
pub const MAX_REQUEST_LINE: usize = 64 << 10;
/// Longest answer line: an audit export (at most 2 GiB, base64) is the largest answer.
pub const MAX_ANSWER_LINE: u64 = 3 << 30;
/// A connection silent this long is closed by the daemon.
pub const IDLE: Duration = Duration::from_secs(60);

/// The socket of the state folder `state` when the config names none.
pub fn in_state(state: &Path) -> PathBuf {
    state.join(STATE_SOCKET_NAME)
}

/// The record of where a running govboxd of `state` listens (see [`SOCKET_RECORD_NAME`]).
pub fn record_path(state: &Path) -> PathBuf {
    state.join(SOCKET_RECORD_NAME)
}
