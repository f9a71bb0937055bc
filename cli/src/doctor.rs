//! `govbox doctor`: checks a box's state folder, certificates, trust root, disk and running daemon,
//! one line per check, each OK, WARN, FAIL or SKIP with a hint for what to do.
//!
//! Expected modes come from provisioning (keys 0600, folders 0700, public files 0644) and from
//! `dist/tmpfiles.d/govbox.conf` (the state folder 0700, owner `govbox`); the admin socket is 0666,
//! group `govbox-admin`, each request checked against the caller's groups (`govbox_admin::roles`). Files are expected to belong to the owner of
//! the state folder, and on the production state folder to the user `govbox` when it exists.
//!
//! Exit codes: 0 when no check failed (warnings and skipped checks included), 1 when any check
//! failed. Errors of doctor itself (e.g. `--json` output failing) also exit 1.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use govbox_admin::protocol::{ClientList, Status, StatusAnswer};
use govbox_provisioning::{CertInfo, ClientRecord, ClientStore, DEFAULT_STATE_DIR, Role, StatePaths, TrustRoot};
use serde::Serialize;
use time::OffsetDateTime;

use govbox_admin::socket::{ADMIN_GROUP, SOCKET_MODE};

use crate::admin::{AdminClient, AdminError};

/// A certificate expiring within this many days is a warning.
const CERT_WARN_DAYS: i64 = 30;
/// A trust root expiring within this many days is a warning (a new one arrives only by hand).
const ROOT_WARN_DAYS: i64 = 90;
/// Free space on the audit log's filesystem: a warning below this share...
const DISK_WARN_PERCENT: f64 = 10.0;
/// ...and a failure below this share...
const DISK_FAIL_PERCENT: f64 = 2.0;
/// ...or below this many bytes.
const DISK_FAIL_BYTES: u64 = 1 << 30;
/// The user govboxd runs as (`dist/sysusers.d/govbox.conf`).
const SERVICE_USER: &str = "govbox";

/// Arguments of `govbox doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Print the checks as JSON instead.
    #[arg(long)]
    json: bool,
}

/// How a check came out, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Fine.
    Ok,
    /// Could not be checked here (e.g. govboxd is not running); not a problem in itself.
    Skip,
    /// Works now, needs attention soon.
    Warn,
    /// Broken or unsafe.
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Skip => "SKIP",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short name.
    pub name: &'static str,
    /// Outcome.
    pub level: Level,
    /// What was found.
    pub message: String,
    /// What to do, for WARN and FAIL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    fn new(name: &'static str, level: Level, message: impl Into<String>, hint: Option<String>) -> Self {
        Self { name, level, message: message.into(), hint }
    }
    fn ok(name: &'static str, message: impl Into<String>) -> Self {
        Self::new(name, Level::Ok, message, None)
    }
}

/// Runs `govbox doctor`.
pub fn run(state: Option<&Path>, socket: &Path, args: DoctorArgs) -> Result<ExitCode> {
    // Without --state: the folder of the govboxd that answers, else the packaged one.
    let state = state.map(Path::to_path_buf).unwrap_or_else(|| {
        AdminClient::connect(socket)
            .and_then(|mut c| c.call(Status {}))
            .ok()
            .map(|s| PathBuf::from(s.state_dir))
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    });
    let checks = collect(&state, socket, OffsetDateTime::now_utc());
    if args.json {
        let worst = checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok);
        /// The `--json` document.
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            state: String,
            worst: Level,
            checks: &'a [Check],
        }
        let doc = Doc { state: state.display().to_string(), worst, checks: &checks };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render(&state, &checks));
    }
    Ok(if checks.iter().any(|c| c.level == Level::Fail) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Every check, in the order shown.
pub fn collect(state: &Path, socket: &Path, now: OffsetDateTime) -> Vec<Check> {
    let paths = StatePaths::new(state);
    let mut checks = Vec::new();
    match state_owner(state) {
        Err(c) => checks.push(c),
        Ok(owner) => {
            checks.push(folders(&paths, owner));
            checks.push(private_keys(&paths, owner));
            checks.push(public_files(&paths, owner));
            checks.extend(certificates(&paths, now));
            checks.push(trust_root(&paths, now));
            checks.push(disk(&paths));
        }
    }
    checks.push(admin_socket(socket));
    let status = daemon(socket, &mut checks);
    checks.push(match clients(state, socket) {
        Ok(list) => client_certificates(&list, now),
        Err(why) => Check::new("client certificates", Level::Skip, why, None),
    });
    checks.push(egress(status.as_ref()));
    checks.push(process(socket, status.as_ref()));
    checks
}

/// The human form: one line per check, a hint line under each WARN and FAIL, and a tally.
pub fn render(state: &Path, checks: &[Check]) -> String {
    let mut out = format!("govbox doctor: {}\n", state.display());
    for c in checks {
        out.push_str(&format!("  {:<5} {:<18} {}\n", c.level.label(), c.name, c.message));
        if let Some(h) = &c.hint {
            out.push_str(&format!("  {:<5} {:<18} hint: {h}\n", "", ""));
        }
    }
    let count = |l: Level| checks.iter().filter(|c| c.level == l).count();
    out.push_str(&format!(
        "{} FAIL, {} WARN, {} OK, {} SKIP\n",
        count(Level::Fail),
        count(Level::Warn),
        count(Level::Ok),
        count(Level::Skip)
    ));
    out
}

/// The uid every file of the state folder should have, or the failed check when the folder is
/// unusable.
fn state_owner(state: &Path) -> Result<u32, Check> {
    let meta = match fs::metadata(state) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => {
            return Err(Check::new("state folder", Level::Fail, format!("{} is not a folder", state.display()), None));
        }
        Err(e) => {
            return Err(Check::new(
                "state folder",
                Level::Fail,
                format!("{}: {e}", state.display()),
                Some("run `govbox provision` first, or pass --state DIR (as root to read /var/lib/govbox)".into()),
            ));
        }
    };
    Ok(meta.uid())
}

/// The service user's uid, when the state folder is the production one and the user exists.
fn service_uid(paths: &StatePaths) -> Option<u32> {
    if paths.root() != Path::new(DEFAULT_STATE_DIR) {
        return None;
    }
    nix::unistd::User::from_name(SERVICE_USER).ok().flatten().map(|u| u.uid.as_raw())
}

fn rel(paths: &StatePaths, p: &Path) -> String {
    p.strip_prefix(paths.root()).unwrap_or(p).display().to_string()
}

/// Modes and owners of the state folder and its six subfolders: 0700, one owner.
fn folders(paths: &StatePaths, owner: u32) -> Check {
    let mut problems = Vec::new();
    let mut fix = Vec::new();
    if let Some(uid) = service_uid(paths).filter(|&u| u != owner) {
        problems.push(format!("the state folder belongs to uid {owner}, govboxd runs as {SERVICE_USER} (uid {uid})"));
        fix.push(format!("chown -R {SERVICE_USER}:{SERVICE_USER} {}", paths.root().display()));
    }
    let mut dirs = vec![paths.root().to_path_buf()];
    dirs.extend(paths.all_dirs());
    for d in &dirs {
        let name = if d == paths.root() { ".".to_string() } else { rel(paths, d) };
        match fs::symlink_metadata(d) {
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                fix.push("govbox provision".into());
            }
            Ok(m) if !m.is_dir() => problems.push(format!("{name} is not a folder")),
            Ok(m) => {
                let mode = m.mode() & 0o7777;
                if mode & 0o077 != 0 {
                    problems.push(format!("{name} is mode {mode:04o}, not 0700"));
                    fix.push(format!("chmod 0700 {}", d.display()));
                }
                if m.uid() != owner {
                    problems.push(format!("{name} belongs to uid {}, not {owner}", m.uid()));
                    fix.push(format!("chown {owner} {}", d.display()));
                }
            }
        }
    }
    verdict("state folder", Level::Fail, problems, fix, || format!("{} folders 0700, owner uid {owner}", dirs.len()))
}

/// The secrets of provisioning (the audit key only where provisioning made it, not with
/// `--audit-pub`), and the content key when govboxd has made one: regular files, mode 0600
/// (nothing for group or others), the state's owner.
fn private_keys(paths: &StatePaths, owner: u32) -> Check {
    let mut keys = vec![paths.device_key(), paths.audit_hmac_key(), paths.ca_key(), paths.server_key()];
    if paths.audit_key().symlink_metadata().is_ok() {
        keys.insert(1, paths.audit_key());
    }
    // [retention] store_content: made on first use (daemon/src/content.rs).
    let content = paths.identity_dir().join("content.key");
    if content.symlink_metadata().is_ok() {
        keys.push(content);
    }
    let mut problems = Vec::new();
    let mut fix = Vec::new();
    for k in &keys {
        let name = rel(paths, k);
        match fs::symlink_metadata(k) {
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                fix.push("govbox provision".into());
            }
            Ok(m) if !m.file_type().is_file() => problems.push(format!("{name} is not a regular file")),
            Ok(m) => {
                let mode = m.mode() & 0o7777;
                if mode & 0o077 != 0 {
                    problems.push(format!("{name} is mode {mode:04o} (group or others may read it)"));
                    fix.push(format!("chmod 0600 {}", k.display()));
                }
                if m.uid() != owner {
                    problems.push(format!("{name} belongs to uid {}, not {owner}", m.uid()));
                    fix.push(format!("chown {owner} {}", k.display()));
                }
            }
        }
    }
    verdict("private keys", Level::Fail, problems, fix, || format!("{} keys 0600, owner uid {owner}", keys.len()))
}

/// Certificates, public keys and the trust root: nobody but the owner may change them.
fn public_files(paths: &StatePaths, owner: u32) -> Check {
    let files = [paths.ca_cert(), paths.server_cert(), paths.device_pub(), paths.audit_pub(), paths.root_json()];
    let mut problems = Vec::new();
    let mut fix = Vec::new();
    let mut level = Level::Warn;
    for f in &files {
        let name = rel(paths, f);
        match fs::symlink_metadata(f) {
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                fix.push("govbox provision".into());
                level = Level::Fail;
            }
            Ok(m) => {
                let mode = m.mode() & 0o7777;
                if mode & 0o022 != 0 {
                    problems.push(format!("{name} is mode {mode:04o} (group or others may change it)"));
                    fix.push(format!("chmod 0644 {}", f.display()));
                    level = Level::Fail;
                }
                if m.uid() != owner {
                    problems.push(format!("{name} belongs to uid {}, not {owner}", m.uid()));
                    fix.push(format!("chown {owner} {}", f.display()));
                }
            }
        }
    }
    verdict("public files", level, problems, fix, || format!("{} files not writable by group or others", files.len()))
}

/// OK with `ok()` when there are no problems, else `level` with the problems and their fixes.
fn verdict(
    name: &'static str,
    level: Level,
    problems: Vec<String>,
    mut fix: Vec<String>,
    ok: impl FnOnce() -> String,
) -> Check {
    if problems.is_empty() {
        return Check::ok(name, ok());
    }
    fix.dedup();
    let hint = (!fix.is_empty()).then(|| fix.join("; "));
    Check::new(name, level, problems.join("; "), hint)
}

fn days_left(not_after: i64, now: OffsetDateTime) -> i64 {
    (not_after - now.unix_timestamp()).div_euclid(86_400)
}

/// The server certificate's validity, and that the box's CA signed it.
fn certificates(paths: &StatePaths, now: OffsetDateTime) -> Vec<Check> {
    let mut out = Vec::new();
    let (server, ca) = match (CertInfo::load(&paths.server_cert()), CertInfo::load(&paths.ca_cert())) {
        (Ok(s), Ok(c)) => (s, c),
        (Err(e), _) | (_, Err(e)) => {
            out.push(Check::new("server certificate", Level::Fail, e.to_string(), Some("govbox provision".into())));
            return out;
        }
    };
    // The server certificate is renewed under the same CA: clients keep trusting it.
    let renew = "govbox tls renew (same CA, new key; a running govboxd serves it with no restart)";
    // Only an expired CA needs a new identity, which every client must then trust anew.
    let new_ca = "the box CA itself must be re-created: `govbox provision --force` makes a new identity and CA, \
                  and every client must then trust the new CA";
    let expires = time::OffsetDateTime::from_unix_timestamp(server.not_after)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| server.not_after.to_string());
    let left = days_left(server.not_after, now);
    out.push(if server.not_after <= now.unix_timestamp() {
        Check::new("server certificate", Level::Fail, format!("expired at {expires}"), Some(renew.into()))
    } else if server.not_before > now.unix_timestamp() {
        Check::new(
            "server certificate",
            Level::Fail,
            "not valid yet (check the system clock)",
            Some("timedatectl; fix the clock".into()),
        )
    } else if left < CERT_WARN_DAYS {
        Check::new("server certificate", Level::Warn, format!("expires in {left} days ({expires})"), Some(renew.into()))
    } else {
        Check::ok("server certificate", format!("valid for {left} more days (until {expires})"))
    });
    out.push(match chain(paths) {
        Ok(()) if ca.not_after <= now.unix_timestamp() => Check::new(
            "certificate chain",
            Level::Fail,
            format!("signed by the box CA '{}', but the CA has expired", ca.subject),
            Some(new_ca.into()),
        ),
        Ok(()) => Check::ok("certificate chain", format!("signed by the box CA '{}'", ca.subject)),
        Err(why) => Check::new(
            "certificate chain",
            Level::Fail,
            why,
            Some("tls/server.crt and tls/ca.crt do not belong together; restore them from a backup".into()),
        ),
    });
    out
}

/// Whether `tls/server.crt` names `tls/ca.crt`'s subject as its issuer and its signature verifies
/// with the CA's key.
fn chain(paths: &StatePaths) -> Result<(), String> {
    let der = |p: &Path| -> Result<Vec<u8>, String> {
        let text = fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(pem::parse(text).map_err(|e| format!("{}: {e}", p.display()))?.into_contents())
    };
    let (server_der, ca_der) = (der(&paths.server_cert())?, der(&paths.ca_cert())?);
    let (server, ca) = (parse_cert(&server_der, "tls/server.crt")?, parse_cert(&ca_der, "tls/ca.crt")?);
    if server.issuer() != ca.subject() {
        return Err(format!(
            "tls/server.crt was issued by '{}', not by the box CA '{}'",
            server.issuer(),
            ca.subject()
        ));
    }
    server
        .verify_signature(Some(ca.public_key()))
        .map_err(|e| format!("tls/server.crt's signature does not verify with the box CA's key ({e})"))
}

fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<x509_parser::certificate::X509Certificate<'a>, String> {
    x509_parser::parse_x509_certificate(der).map(|(_, c)| c).map_err(|e| format!("{what}: {e}"))
}

/// `trust/root.json`: parses (every role present with keys and a sane threshold), not expired, and
/// any signatures it carries meet its own `root` threshold.
fn trust_root(paths: &StatePaths, now: OffsetDateTime) -> Check {
    let name = "trust root";
    let root = match TrustRoot::load(&paths.root_json()) {
        Ok(r) => r,
        Err(e) => return Check::new(name, Level::Fail, e.to_string(), Some("restore trust/root.json".into())),
    };
    let roles: Vec<String> = Role::ALL
        .iter()
        .filter(|&&r| root.has_role(r))
        .map(|&r| format!("{r} {}/{}", root.role(r).threshold, root.role(r).keyids.len()))
        .collect();
    if let Some(empty) = Role::REQUIRED.into_iter().find(|&r| root.role_public_keys(r).is_empty()) {
        return Check::new(name, Level::Fail, format!("role '{empty}' has no keys"), None);
    }
    let signed = if root.signatures().is_empty() {
        "unsigned, as provisioned".to_string()
    } else {
        let msg = root.signed_canonical_json();
        let keys = root.role_public_keys(Role::Root);
        let mut good: Vec<&str> = root
            .signatures()
            .iter()
            .filter(|s| {
                keys.iter().any(|k| {
                    k.keyid() == s.keyid
                        && s.signature_bytes().is_some_and(|sig| k.verify(msg.as_bytes(), &sig).is_ok())
                })
            })
            .map(|s| s.keyid.as_str())
            .collect();
        good.sort_unstable();
        good.dedup();
        let need = root.role(Role::Root).threshold as usize;
        if good.len() < need {
            return Check::new(
                name,
                Level::Fail,
                format!(
                    "version {}: {} valid root signature(s), its root threshold is {need}",
                    root.version(),
                    good.len()
                ),
                Some("trust/root.json was altered; restore it from the signed original".into()),
            );
        }
        format!("{} of {need} root signatures", good.len())
    };
    let left = days_left(root.expires().unix_timestamp(), now);
    let msg = format!("version {}, {signed}, roles {}", root.version(), roles.join(", "));
    let rotate = "rotate it with a new root signed by the current root keys (`govbox trust`)".to_string();
    if root.is_expired_at(now) {
        Check::new(name, Level::Fail, format!("{msg}; expired at {}", root.expires_rfc3339()), Some(rotate))
    } else if left < ROOT_WARN_DAYS {
        Check::new(name, Level::Warn, format!("{msg}; expires in {left} days"), Some(rotate))
    } else {
        Check::ok(name, format!("{msg}; expires {}", root.expires_rfc3339()))
    }
}

/// Free space on the audit log's filesystem.
fn disk(paths: &StatePaths) -> Check {
    let dir = paths.audit_dir();
    let at = if dir.exists() { dir } else { paths.root().to_path_buf() };
    match nix::sys::statvfs::statvfs(&at) {
        Err(e) => Check::new("disk", Level::Fail, format!("statvfs {}: {e}", at.display()), None),
        Ok(s) => {
            let frag = s.fragment_size();
            disk_check(&at, s.blocks_available().saturating_mul(frag), s.blocks().saturating_mul(frag))
        }
    }
}

/// The disk verdict for `avail` of `total` bytes free to unprivileged users.
pub fn disk_check(at: &Path, avail: u64, total: u64) -> Check {
    #[allow(clippy::cast_precision_loss)] // a percentage for display and thresholds
    let pct = if total == 0 { 0.0 } else { avail as f64 * 100.0 / total as f64 };
    let gib = |b: u64| {
        #[allow(clippy::cast_precision_loss)]
        let g = b as f64 / (1u64 << 30) as f64;
        g
    };
    let msg = format!("{:.1} GiB free of {:.1} GiB ({pct:.1} %) at {}", gib(avail), gib(total), at.display());
    let hint = Some(
        "export and prune the audit log (`govbox audit export`, `govbox audit prune`), or remove unused models".into(),
    );
    if pct < DISK_FAIL_PERCENT || avail < DISK_FAIL_BYTES {
        Check::new("disk", Level::Fail, msg, hint)
    } else if pct < DISK_WARN_PERCENT {
        Check::new("disk", Level::Warn, msg, hint)
    } else {
        Check::ok("disk", msg)
    }
}

/// The admin socket: a socket, mode 0666 (govboxd decides each request by the caller's peer
/// credentials: groups `govbox-admin` and `govbox-audit-readers`), group `govbox-admin` when it
/// exists.
fn admin_socket(socket: &Path) -> Check {
    let name = "admin socket";
    let m = match fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) => {
            return Check::new(name, Level::Skip, format!("{}: {e} (govboxd not running?)", socket.display()), None);
        }
    };
    if !m.file_type().is_socket() {
        return Check::new(name, Level::Fail, format!("{} is not a socket", socket.display()), None);
    }
    let mode = m.mode() & 0o7777;
    let mut problems = Vec::new();
    let mut fix = Vec::new();
    if mode != SOCKET_MODE {
        problems.push(format!(
            "mode {mode:04o}, not {SOCKET_MODE:04o}: auditors outside {ADMIN_GROUP} cannot reach it (roles are checked \
             by govboxd)"
        ));
        fix.push("restart govboxd (it sets the mode at start)".to_string());
    }
    let group = nix::unistd::Group::from_name(ADMIN_GROUP).ok().flatten();
    if let Some(g) = &group
        && m.gid() != g.gid.as_raw()
    {
        problems.push(format!("group is gid {}, not {ADMIN_GROUP} ({})", m.gid(), g.gid));
        fix.push(format!("add SupplementaryGroups={ADMIN_GROUP} to the unit, or chgrp {ADMIN_GROUP} the socket"));
    }
    if problems.is_empty() {
        let g = group.map_or_else(|| format!("gid {} (no {ADMIN_GROUP} group here)", m.gid()), |g| g.name);
        Check::ok(name, format!("{} mode {mode:04o}, group {g}", socket.display()))
    } else {
        Check::new(name, Level::Fail, problems.join("; "), Some(fix.join("; ")))
    }
}

/// Whether govboxd answers on the admin socket; its `status` answer when it does.
fn daemon(socket: &Path, checks: &mut Vec<Check>) -> Option<StatusAnswer> {
    let name = "govboxd";
    let status = AdminClient::connect(socket).and_then(|mut c| c.call(Status {}));
    match status {
        Ok(s) => {
            let version = &s.version;
            checks.push(if s.ready {
                Check::ok(name, format!("{version} ready, up {} s", s.uptime_secs))
            } else {
                Check::new(
                    name,
                    Level::Warn,
                    format!("{version} answers but is not ready (models loading?)"),
                    Some("govbox status; journalctl -u govboxd".into()),
                )
            });
            Some(s)
        }
        Err(e @ AdminError::PermissionDenied { .. }) => {
            checks.push(Check::new(name, Level::Skip, e.reason(), None));
            None
        }
        Err(e) if e.is_not_running() => {
            checks.push(Check::new(
                name,
                Level::Warn,
                format!("not running (no answer on {})", socket.display()),
                Some("systemctl status govboxd; journalctl -u govboxd".into()),
            ));
            None
        }
        Err(e) => {
            checks.push(Check::new(name, Level::Fail, e.to_string(), Some("journalctl -u govboxd".into())));
            None
        }
    }
}

/// The clients: from the running govboxd (which holds the store's lock), else from the store.
fn clients(state: &Path, socket: &Path) -> Result<Vec<ClientRecord>, String> {
    if let Ok(answer) = AdminClient::connect(socket).and_then(|mut c| c.call(ClientList {})) {
        return Ok(answer.clients);
    }
    ClientStore::open(state).and_then(|s| s.list()).map_err(|e| format!("the client store cannot be read: {e}"))
}

/// The certificates of the clients that are not revoked: an expired one is refused (401) until
/// renewed, so that application is down; one expiring within [`CERT_WARN_DAYS`] soon will be.
pub fn client_certificates(clients: &[ClientRecord], now: OffsetDateTime) -> Check {
    let name = "client certificates";
    let mut expired = Vec::new();
    let mut expiring = Vec::new();
    for c in clients.iter().filter(|c| !c.revoked) {
        let left = days_left(c.cert_not_after, now);
        if c.cert_expired(now.unix_timestamp()) {
            expired.push(c.name.as_str());
        } else if left < CERT_WARN_DAYS {
            expiring.push(format!("{} ({left} days)", c.name));
        }
    }
    let renew = "govbox client renew NAME --cert-out DIR, and install the new files on that application \
                 (or govbox client revoke NAME if it is retired)";
    let active = clients.iter().filter(|c| !c.revoked).count();
    if !expired.is_empty() {
        let mut msg = format!("expired, refused until renewed: {}", expired.join(", "));
        if !expiring.is_empty() {
            msg.push_str(&format!("; expiring within {CERT_WARN_DAYS} days: {}", expiring.join(", ")));
        }
        Check::new(name, Level::Fail, msg, Some(renew.into()))
    } else if !expiring.is_empty() {
        Check::new(
            name,
            Level::Warn,
            format!("expiring within {CERT_WARN_DAYS} days: {}", expiring.join(", ")),
            Some(renew.into()),
        )
    } else {
        Check::ok(name, format!("{active} active clients, none expiring within {CERT_WARN_DAYS} days"))
    }
}

/// The egress lockdown that govboxd reports in its `status` (`egress`).
pub fn egress(status: Option<&StatusAnswer>) -> Check {
    let name = "egress lockdown";
    let Some(s) = status else {
        return Check::new(name, Level::Skip, "unknown (govboxd does not answer)", None);
    };
    let Some(e) = &s.egress else {
        return Check::new(name, Level::Warn, "unknown (govboxd has not locked down yet)", None);
    };
    let (mechanism, connect, other) = (e.mechanism.as_str(), e.connect.as_str(), e.other_inet.as_str());
    let abi = e.abi.map(|a| format!(" ABI {a}")).unwrap_or_default();
    let msg = format!("{mechanism}{abi}: outbound TCP {connect}, other internet sockets {other}");
    if mechanism == "off" || connect != "denied" || other != "denied" {
        Check::new(
            name,
            Level::Warn,
            msg,
            Some("set [sandbox] egress = \"auto\" in /etc/govbox/govbox.toml and restart govboxd".into()),
        )
    } else {
        Check::ok(name, msg)
    }
}

/// govboxd's user and capabilities, from `/proc/PID/status` of the process behind the admin socket
/// (the `pid` of its `status`, else its peer credentials).
fn process(socket: &Path, status: Option<&StatusAnswer>) -> Check {
    let name = "service identity";
    let Some(status) = status else {
        return Check::new(name, Level::Skip, "govboxd does not answer", None);
    };
    let pid = i32::try_from(status.pid).ok().filter(|p| *p > 0).or_else(|| peer_pid(socket));
    let Some(pid) = pid else {
        return Check::new(name, Level::Skip, "govboxd's process id is not known", None);
    };
    let path = format!("/proc/{pid}/status");
    match fs::read_to_string(&path) {
        Ok(text) => process_check(pid, &text),
        Err(e) => Check::new(name, Level::Skip, format!("{path}: {e}"), None),
    }
}

/// The process behind the admin socket, from the socket's peer credentials.
fn peer_pid(socket: &Path) -> Option<i32> {
    let stream = UnixStream::connect(socket).ok()?;
    let cred = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    Some(cred.pid())
}

/// The verdict on a `/proc/PID/status` text: FAIL when any uid is 0 or any effective capability
/// is held.
pub fn process_check(pid: i32, proc_status: &str) -> Check {
    let name = "service identity";
    let field = |k: &str| proc_status.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    let uids: Vec<u32> =
        field("Uid:").map(|v| v.split_whitespace().filter_map(|u| u.parse().ok()).collect()).unwrap_or_default();
    let cap_eff = field("CapEff:").and_then(|v| u64::from_str_radix(v, 16).ok());
    let (Some(&uid), Some(caps)) = (uids.get(1), cap_eff) else {
        return Check::new(name, Level::Skip, format!("pid {pid}: no Uid/CapEff in /proc/{pid}/status"), None);
    };
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name);
    let mut problems = Vec::new();
    if uids.contains(&0) {
        problems.push(format!("runs as root (uids {uids:?})"));
    }
    if caps != 0 {
        problems.push(format!("holds capabilities (CapEff {caps:016x})"));
    }
    if problems.is_empty() {
        Check::ok(name, format!("pid {pid} runs as {user}, no capabilities"))
    } else {
        Check::new(
            name,
            Level::Fail,
            format!("pid {pid}: {}", problems.join(", ")),
            Some("run govboxd from dist/govboxd.service (User=govbox, CapabilityBoundingSet= empty)".into()),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use govbox_provisioning::{Overwrite, ProvisionOptions, SigningKey, TrustKeySpec, provision};

    use super::*;

    fn provisioned(dir: &Path) -> PathBuf {
        let vendor = dir.join("vendor.pub");
        SigningKey::generate().unwrap().public_key().write_pem(&vendor, Overwrite::Refuse).unwrap();
        let state = dir.join("state");
        provision(&ProvisionOptions {
            state_dir: state.clone(),
            hostname: Some("box.example".into()),
            extra_sans: vec![],
            trust_keys: vec![TrustKeySpec { roles: Role::ALL.to_vec(), path: vendor }],
            thresholds: vec![],
            force: false,
            audit_pub: None,
            suite: govbox_provisioning::Suite::Intl,
        })
        .unwrap();
        state
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
    }

    #[test]
    fn readable_key_fails_and_chmod_fixes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let state = provisioned(tmp.path());
        let socket = tmp.path().join("none.sock");
        let now = OffsetDateTime::now_utc();
        let checks = collect(&state, &socket, now);
        for name in ["state folder", "private keys", "public files", "server certificate", "certificate chain"] {
            assert_eq!(find(&checks, name).level, Level::Ok, "{checks:#?}");
        }
        assert_eq!(find(&checks, "trust root").level, Level::Ok, "{checks:#?}");
        assert!(find(&checks, "trust root").message.contains("unsigned, as provisioned"));
        assert_eq!(find(&checks, "govboxd").level, Level::Warn);
        assert_eq!(find(&checks, "admin socket").level, Level::Skip);
        assert_eq!(find(&checks, "egress lockdown").level, Level::Skip);

        let key = StatePaths::new(&state).server_key();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let checks = collect(&state, &socket, now);
        let c = find(&checks, "private keys");
        assert_eq!(c.level, Level::Fail, "{c:?}");
        assert!(c.message.contains("tls/server.key is mode 0644"), "{c:?}");
        assert_eq!(c.hint.as_deref(), Some(format!("chmod 0600 {}", key.display()).as_str()));
        let text = render(&state, &checks);
        assert!(text.contains("FAIL  private keys"), "{text}");

        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(find(&collect(&state, &socket, now), "private keys").level, Level::Ok);

        // The content key, once govboxd made one, is held to the same rule.
        let content = StatePaths::new(&state).identity_dir().join("content.key");
        fs::write(&content, [0u8; 32]).unwrap();
        fs::set_permissions(&content, fs::Permissions::from_mode(0o640)).unwrap();
        let c = find(&collect(&state, &socket, now), "private keys").clone();
        assert!(c.level == Level::Fail && c.message.contains("identity/content.key is mode 0640"), "{c:?}");
        fs::set_permissions(&content, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(find(&collect(&state, &socket, now), "private keys").level, Level::Ok);

        let dir = StatePaths::new(&state).identity_dir();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find(&collect(&state, &socket, now), "state folder").level, Level::Fail);
    }

    #[test]
    fn certificate_expiry_and_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let state = provisioned(tmp.path());
        let paths = StatePaths::new(&state);
        let server = CertInfo::load(&paths.server_cert()).unwrap();
        let at = |t: i64| OffsetDateTime::from_unix_timestamp(t).unwrap();
        let level = |now| certificates(&paths, now)[0].level;
        assert_eq!(level(at(server.not_after - 10 * 86_400)), Level::Warn);
        assert_eq!(level(at(server.not_after + 1)), Level::Fail);
        // Renewing the server certificate keeps the identity: never advise `provision --force` for it.
        for when in [server.not_after - 10 * 86_400, server.not_after + 1] {
            let hint = certificates(&paths, at(when))[0].hint.clone().unwrap();
            assert!(hint.starts_with("govbox tls renew") && !hint.contains("--force"), "{hint}");
        }
        assert_eq!(level(at(server.not_before - 86_400)), Level::Fail);

        // A server certificate of another box's CA does not chain to this CA.
        fs::create_dir(tmp.path().join("other")).unwrap();
        let other = provisioned(&tmp.path().join("other"));
        fs::copy(StatePaths::new(&other).server_cert(), paths.server_cert()).unwrap();
        let c = &certificates(&paths, OffsetDateTime::now_utc())[1];
        assert_eq!(c.level, Level::Fail, "{c:?}");
    }

    #[test]
    fn expired_and_expiring_client_certificates_are_named() {
        let at = |t: i64| OffsetDateTime::from_unix_timestamp(t).unwrap();
        let client = |name: &str, not_after: i64, revoked: bool| ClientRecord {
            name: name.into(),
            models: vec![],
            scopes: vec![govbox_provisioning::Scope::Inference],
            rpm: None,
            tokens_per_day: None,
            max_concurrent: None,
            cert_sha256: None,
            cert_not_after: not_after,
            token_sha256: None,
            revoked,
            created: 0,
            allow_special_tokens: false,
            policy: None,
        };
        let now = 1_000 * 86_400;
        let fine = client("fine", now + 100 * 86_400, false);
        let soon = client("soon", now + 5 * 86_400, false);
        let gone = client("gone", now - 1, false);
        let revoked = client("old", now - 1, true);
        assert_eq!(client_certificates(&[fine.clone(), revoked.clone()], at(now)).level, Level::Ok);
        let c = client_certificates(&[fine.clone(), soon.clone()], at(now));
        assert!(c.level == Level::Warn && c.message.contains("soon (5 days)"), "{c:?}");
        let c = client_certificates(&[fine, soon, gone, revoked], at(now));
        assert!(c.level == Level::Fail && c.message.starts_with("expired, refused until renewed: gone;"), "{c:?}");
        assert!(c.hint.as_deref().unwrap().contains("govbox client renew"), "{c:?}");
    }

    #[test]
    fn altered_or_expired_trust_root_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let state = provisioned(tmp.path());
        let paths = StatePaths::new(&state);
        let root = TrustRoot::load(&paths.root_json()).unwrap();
        assert_eq!(trust_root(&paths, root.expires() + time::Duration::days(1)).level, Level::Fail);
        assert_eq!(trust_root(&paths, root.expires() - time::Duration::days(10)).level, Level::Warn);
        fs::write(paths.root_json(), b"{\"signed\": {}}").unwrap();
        assert_eq!(trust_root(&paths, OffsetDateTime::now_utc()).level, Level::Fail);
    }

    #[test]
    fn disk_thresholds() {
        let p = Path::new("/x");
        let gib = 1u64 << 30;
        assert_eq!(disk_check(p, 50 * gib, 100 * gib).level, Level::Ok);
        assert_eq!(disk_check(p, 5 * gib, 100 * gib).level, Level::Warn);
        assert_eq!(disk_check(p, gib, 100 * gib).level, Level::Fail);
        assert_eq!(disk_check(p, gib / 2, 2 * gib).level, Level::Fail);
        assert_eq!(disk_check(p, 0, 0).level, Level::Fail);
    }

    #[test]
    fn egress_and_process_verdicts() {
        let with =
            |e: serde_json::Value| StatusAnswer { egress: serde_json::from_value(e).unwrap(), ..Default::default() };
        let locked = with(serde_json::json!({"mechanism": "landlock", "abi": 6, "connect": "denied",
            "bind_ports": [8443], "other_inet": "denied"}));
        assert_eq!(egress(Some(&locked)).level, Level::Ok);
        let off = with(serde_json::json!({"mechanism": "off", "abi": null, "connect": "allowed", "bind_ports": null,
            "other_inet": "allowed"}));
        assert_eq!(egress(Some(&off)).level, Level::Warn);
        let c = egress(Some(&StatusAnswer::default()));
        assert!(c.level == Level::Warn && c.message.starts_with("unknown"), "{c:?}");

        let unpriv = "Name:\tgovboxd\nUid:\t998\t998\t998\t998\nCapEff:\t0000000000000000\n";
        assert_eq!(process_check(7, unpriv).level, Level::Ok);
        let root = "Uid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n";
        let c = process_check(7, root);
        assert!(c.level == Level::Fail && c.message.contains("root") && c.message.contains("capabilities"), "{c:?}");
        let caps = "Uid:\t998\t998\t998\t998\nCapEff:\t0000000000000400\n";
        assert_eq!(process_check(7, caps).level, Level::Fail);
    }
}
