//! The admin socket: how the `govbox` CLI changes a running daemon's state.
//!
//! # Protocol
//!
//! A Unix stream socket at `admin_socket` (default `STATE/admin.sock`; the packaged config puts
//! it at `/run/govbox/admin.sock`), mode 0660, group `govbox-admin` when that group exists and the
//! daemon is a member: whoever may open it is an administrator. Each request is one JSON object on one line; each answer is one
//! JSON object on one line, in order. A connection may send several requests. Lines longer than
//! 64 KiB, or a connection silent for 60 s, end the connection.
//!
//! Requests (`cmd` selects the command; other fields as shown, optional ones may be left out):
//!
//! ```text
//! {"cmd":"status"}
//! {"cmd":"client_add","name":"hr-portal","models":["qwen2"],"rpm":60,"tokens_per_day":100000,
//!  "max_concurrent":2,"cert_days":365,"token":true}
//! {"cmd":"client_list"}
//! {"cmd":"client_revoke","name":"hr-portal"}
//! {"cmd":"client_renew","name":"hr-portal","cert_days":365}
//! {"cmd":"attest","nonce":"<16 to 64 bytes, hex>"}
//! {"cmd":"debug_egress_probe","addr":"127.0.0.1:9"}   (debug builds only: tests)
//! {"cmd":"tls_reload"}
//! {"cmd":"content_read","request_id":"req-0123456789abcdef"}
//! ```
//!
//! Answers:
//!
//! ```text
//! {"ok":true,"result":{...}}
//! {"ok":false,"error":{"code":"client_not_found","message":"..."}}
//! ```
//!
//! - `status` gives `version`, `uptime_secs`, `ready`, `shutting_down`, `listen`,
//!   `configured_models`, `models` (`name`, `kind`, `format`, `path` of each loaded model),
//!   `backend` (`kind`, `name`, `threads`, `simulated`, `memory_used`, `memory_total`),
//!   `active_generations`, `queued_requests`, `open_connections` and `tls_certificate` (the served
//!   server certificate: `serial`, `not_after`, `expires`, `sha256`), and `egress` (the egress
//!   lockdown in force: `mechanism`, `abi`, `connect`, `bind_ports`, `other_inet`; see
//!   `crate::sandbox`).
//! - `client_add` and `client_renew` give `client` (the stored record), `cert_pem`, `key_pem`,
//!   `ca_pem` and `token` (the bearer token, only from `client_add` with `"token":true`, else
//!   null). These secrets exist only in this answer: the CLI writes them to files.
//! - `client_list` gives `clients`, the stored records; `client_revoke` gives `client`.
//! - `tls_reload` serves the certificate and key now in `STATE/tls/` to new handshakes (open
//!   connections keep theirs) and gives `old` and `new` (`serial`, `not_after`, `expires`,
//!   `sha256`); the swap is an audit entry. A pair that does not match, or a certificate that does
//!   not chain to the box's CA, is refused (`tls_invalid`) and the old one stays.
//! - `debug_egress_probe` exists only in builds with debug assertions (the e2e tests' binaries,
//!   never release builds or packages): it tries a TCP connect to `addr` from a tokio worker, a new
//!   std thread and a new rayon thread, and a UDP datagram, and gives each outcome and errno.
//! - `content_read` records the read in the audit log (who, which request id) and then gives the
//!   request's stored `prompt` and `response` (`text`, or `base64` when not UTF-8, `audit_hmac`,
//!   `hmac_matches`, `truncated`, `stored`; null when absent); `content_not_stored` when retention
//!   never stored anything, `content_not_found` for an unknown or expired id.
//! - `audit_export` first writes the pending `request_refused` tallies and an `admin` entry
//!   recording the export, so the export holds both; `audit_hmac` takes an optional `client`
//!   (prompt and response hashes are keyed per client) and is recorded too. A `model_import` that
//!   is refused leaves a `package_refused` entry.
//! - `attest` gives a signed `govbox-attestation/1` report (see `govbox-attestation`), after
//!   recording the request in the audit log.
//!
//! Error codes are those of `govbox-provisioning` (`client_exists`, `client_not_found`,
//! `invalid_client_name`, ...) plus `bad_request` for a line that is not a valid request.
//!
//! Revocation takes effect on the next HTTPS request: the HTTPS side reads the same store for
//! every request. Every command is logged with the caller's uid; secrets never are.

mod attest;
pub(crate) mod protocol;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use protocol::{AdminFailure, AdminRequest};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::auditing;
use crate::state::AppState;

/// Longest request line.
const MAX_LINE: usize = 64 << 10;
/// A connection silent this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// The socket's mode: owner and group read and write.
pub const SOCKET_MODE: u32 = 0o660;
/// The group whose members may use the socket, when it exists (`dist/sysusers.d/govbox.conf`).
pub const ADMIN_GROUP: &str = "govbox-admin";

/// Binds the socket, replacing a stale one (the caller holds the state store's lock, so no other
/// daemon of this state folder can be using it), and sets its mode to 0660.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket; remove it by hand"));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    give_to_admin_group(path);
    Ok(listener)
}

/// Hands the socket to [`ADMIN_GROUP`] when that group exists. The daemon can only do this when
/// it is a member (the unit's `SupplementaryGroups=`); otherwise the socket keeps the daemon's own
/// group, which is safe, and the log says why the CLI may be refused.
fn give_to_admin_group(path: &Path) {
    match nix::unistd::Group::from_name(ADMIN_GROUP) {
        Ok(Some(g)) => match nix::unistd::chown(path, None, Some(g.gid)) {
            Ok(()) => log::info!("admin socket {} belongs to group {ADMIN_GROUP}", path.display()),
            Err(e) => log::warn!("admin socket {}: cannot hand it to group {ADMIN_GROUP}: {e}", path.display()),
        },
        Ok(None) => log::debug!("group {ADMIN_GROUP} does not exist; the admin socket keeps the daemon's group"),
        Err(e) => log::warn!("looking up group {ADMIN_GROUP}: {e}"),
    }
}

/// Serves the socket until the daemon stops.
pub async fn serve(listener: UnixListener, state: Arc<AppState>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, state.clone()));
            }
            Err(e) => {
                log::warn!("admin socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, state: Arc<AppState>) {
    let uid = stream.peer_cred().map_or_else(|_| "?".to_string(), |c| c.uid().to_string());
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let n = match tokio::time::timeout(IDLE, read_line(&mut lines, &mut line)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                log::debug!("admin socket: uid {uid}: {e}");
                return;
            }
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        let answer = match serde_json::from_slice::<AdminRequest>(&line) {
            Err(e) => json!({"ok": false, "error": {
                "code": "bad_request",
                "message": format!("not a valid admin request (line {}, column {}): expected one JSON object \
                                    with a known \"cmd\"", e.line(), e.column()),
            }}),
            Ok(req) => {
                let cmd = req.name();
                let subject = req.subject().unwrap_or("-").to_string();
                let st = state.clone();
                let (who, what) = (uid.clone(), subject.clone());
                let result = tokio::task::spawn_blocking(move || {
                    let r = protocol::execute(&st, req, &who);
                    if let Ok(v) = &r {
                        for ev in auditing::admin_events(cmd, &what, &who, v) {
                            auditing::record_blocking(&st.audit, &st.metrics, ev);
                        }
                    }
                    r
                })
                .await;
                let result = result.unwrap_or_else(|e| {
                    Err(AdminFailure { code: "internal_error", message: format!("admin task failed: {e}") })
                });
                match result {
                    Ok(v) => {
                        if !matches!(cmd, "status" | "client_list" | "model_list" | "audit_tail") {
                            log::info!("admin: {cmd} '{subject}' by uid {uid}: done");
                        }
                        json!({"ok": true, "result": v})
                    }
                    Err(f) => {
                        log::info!("admin: {cmd} '{subject}' by uid {uid}: failed ({})", f.code);
                        json!({"ok": false, "error": f})
                    }
                }
            }
        };
        let mut out = answer.to_string().into_bytes();
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes; a longer one is an error.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, out: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(out.len());
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        out.extend_from_slice(&buf[..take]);
        r.consume(take);
        if out.len() > MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request line longer than 64 KiB"));
        }
        if done {
            return Ok(out.len());
        }
    }
}
