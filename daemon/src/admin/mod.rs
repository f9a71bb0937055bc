//! The admin socket: how the `govbox` CLI changes a running daemon's state.
//!
//! The protocol is `govbox_admin`'s (typed requests and answers, shared with the CLI): a Unix
//! stream socket at `admin_socket` (default `STATE/admin.sock`; the packaged config puts it at
//! `/run/govbox/admin.sock`), mode 0666 (group `govbox-admin` when that group exists and the
//! daemon is a member). Who may do what is decided per request from the caller's peer
//! credentials (`SO_PEERCRED`, see `govbox_admin::roles`): operators (`govbox-admin`), auditors
//! (`govbox-audit-readers`), root and the daemon's own uid; anyone else is refused every
//! request. One JSON request per line, one
//! JSON answer per line, in order; lines longer than 64 KiB, or a connection silent for 60 s, end
//! the connection. The commands, their fields and their answers are documented on
//! `govbox_admin::protocol`; what each does here is in [`protocol`].
//!
//! A command that succeeds leaves the audit entries `govbox_admin::events` lists for it, and no
//! change is in effect without them: a client command records itself first; a model, policy or
//! certificate change writes its entries after its checks and before it is served (a model or
//! library swapped in, a stored version deleted, a certificate handed to new handshakes), and is
//! undone when they cannot be written; a command that reads or vouches (`audit_export`,
//! `audit_hmac`, `content_read`, `attest`) records itself first and fails if it cannot. Revocation takes effect on the next HTTPS request: the
//! HTTPS side reads the same store for every request. Every command is logged with the caller's
//! uid; secrets never are.

mod attest;
pub(crate) mod protocol;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use govbox_admin::roles::{AUDITORS_GROUP, Access, OPERATORS_GROUP, RoleGroups};
pub use govbox_admin::socket::{ADMIN_GROUP, SOCKET_MODE};
use govbox_admin::socket::{IDLE, MAX_REQUEST_LINE as MAX_LINE};
use govbox_admin::{AdminRequest, Refusal, Reply};
pub use protocol::AdminFailure;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::state::AppState;

/// Binds the socket, replacing a stale one (the caller holds the state store's lock, so no other
/// daemon of this state folder can be using it), and sets its mode to 0666 (each request is checked by the caller's role).
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

/// Writes where this daemon's admin socket is into the state folder when it is not
/// `STATE/admin.sock` (production: `/run/govbox/admin.sock`), so that `govbox --state STATE`
/// finds it; removes an old record otherwise.
fn record_socket(state: &AppState) {
    let path = state.admin_socket();
    let record = govbox_admin::socket::record_path(&state.state_dir);
    let r = if path == govbox_admin::socket::in_state(&state.state_dir) {
        match std::fs::remove_file(&record) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    } else {
        std::fs::write(&record, format!("{}\n", path.display()))
    };
    if let Err(e) = r {
        log::warn!("admin socket: recording its path in {}: {e}", record.display());
    }
}

/// The group ids the roles are granted by, looked up once when serving starts.
fn role_groups() -> RoleGroups {
    let gid = |name: &str| match nix::unistd::Group::from_name(name) {
        Ok(g) => g.map(|g| g.gid.as_raw()),
        Err(e) => {
            log::warn!("admin socket: looking up group {name}: {e}; nobody gets its role");
            None
        }
    };
    let groups = RoleGroups { operators: gid(OPERATORS_GROUP), auditors: gid(AUDITORS_GROUP) };
    for (name, g) in [(OPERATORS_GROUP, groups.operators), (AUDITORS_GROUP, groups.auditors)] {
        if g.is_none() {
            log::info!("admin socket: group {name} does not exist; only root and this daemon's uid hold its role");
        }
    }
    groups
}

/// The caller's uid and roles, from its peer credentials: its primary group, the supplementary
/// groups of its process (`/proc/PID/status`, when this process may read it) and those of its
/// user in the group database.
fn caller(stream: &UnixStream, groups: RoleGroups) -> (String, Access) {
    let Ok(cred) = stream.peer_cred() else {
        return ("?".to_string(), Access::default());
    };
    let uid = cred.uid();
    let mut gids = vec![cred.gid()];
    if let Some(pid) = cred.pid()
        && let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status"))
        && let Some(line) = text.lines().find_map(|l| l.strip_prefix("Groups:"))
    {
        gids.extend(line.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
    }
    if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        && let Ok(name) = std::ffi::CString::new(user.name)
        && let Ok(list) = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(cred.gid()))
    {
        gids.extend(list.into_iter().map(|g| g.as_raw()));
    }
    let owner = nix::unistd::geteuid().as_raw();
    (uid.to_string(), Access::of(uid, &gids, owner, groups))
}

/// Serves the socket until the daemon stops.
pub async fn serve(listener: UnixListener, state: Arc<AppState>) {
    let groups = role_groups();
    record_socket(&state);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, state.clone(), groups));
            }
            Err(e) => {
                log::warn!("admin socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, state: Arc<AppState>, groups: RoleGroups) {
    let (uid, access) = caller(&stream, groups);
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
        let answer: Reply<serde_json::Value> = match serde_json::from_slice::<AdminRequest>(&line) {
            Err(e) => Reply::refused(Refusal {
                code: "bad_request".into(),
                message: format!(
                    "not a valid admin request (line {}, column {}): expected one JSON object with a known \"cmd\" \
                     and its fields",
                    e.line(),
                    e.column()
                ),
            }),
            Ok(req) if !access.allows(req.needs()) => {
                let cmd = req.name();
                log::warn!("admin: {cmd} by uid {uid}: refused (needs group {})", req.needs().group());
                Reply::refused(Refusal {
                    code: "forbidden".into(),
                    message: format!(
                        "uid {uid} may not {cmd}: it needs membership of {} (or root)",
                        req.needs().group()
                    ),
                })
            }
            Ok(req) => {
                let cmd = req.name();
                let subject = subject(&req).unwrap_or("-").to_string();
                let st = state.clone();
                let who = uid.clone();
                let result = tokio::task::spawn_blocking(move || protocol::execute(&st, req, &who)).await;
                let result = result.unwrap_or_else(|e| {
                    Err(AdminFailure { code: "internal_error", message: format!("admin task failed: {e}") })
                });
                match result {
                    Ok(v) => {
                        if !matches!(cmd, "status" | "client_list" | "model_list" | "audit_tail") {
                            log::info!("admin: {cmd} '{subject}' by uid {uid}: done");
                        }
                        Reply::ok(v)
                    }
                    Err(f) => {
                        log::info!("admin: {cmd} '{subject}' by uid {uid}: failed ({})", f.code);
                        Reply::refused(f.into())
                    }
                }
            }
        };
        let mut out = serde_json::to_vec(&answer).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The client or model the command is about, for the log.
fn subject(req: &AdminRequest) -> Option<&str> {
    match req {
        AdminRequest::ClientAdd(r) => Some(&r.name),
        AdminRequest::ClientRevoke(r) => Some(&r.name),
        AdminRequest::ClientRenew(r) => Some(&r.name),
        AdminRequest::ModelActivate(r) => Some(&r.name),
        AdminRequest::ModelRollback(r) => Some(&r.name),
        AdminRequest::ModelRemove(r) => Some(&r.name),
        AdminRequest::ModelDisable(r) => Some(&r.name),
        AdminRequest::ModelEnable(r) => Some(&r.name),
        AdminRequest::PolicyActivate(r) => Some(&r.name),
        AdminRequest::PolicyRollback(r) => Some(&r.name),
        _ => None,
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
