//! `govbox audit`: verify exports offline; export, tail and look up HMACs on the box.
//!
//! `verify` never needs the box: it reads the export file (and the previous one, and a pinned
//! audit key) and nothing else. `export`, `tail` and `hmac` go through govboxd's admin socket
//! while it runs (it holds the store's lock); when the socket does not answer, they open
//! `STATE/audit` directly.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use govbox_admin::protocol::{AuditExport, AuditHmac, AuditPrune, AuditTail, ContentRead};
use govbox_audit::{
    AuditError, AuditHandle, AuditLog, AuditOptions, Entry, Event, ExportRange, HmacKey, MAX_EXPORT_BYTES, PruneReport,
    VerifyReport, verify_export, verify_export_with_witness,
};
use govbox_provisioning::{PublicKey, StatePaths};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::admin::{AdminClient, AdminError};
use crate::provision::state_dir;

/// Longest text `govbox audit hmac` reads: a prompt far beyond any model's context.
const MAX_HMAC_TEXT: u64 = 64 << 20;

/// `govbox audit ...`
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify an export offline: range, count, gaps, and PASS/FAIL for every hash and signature.
    Verify(VerifyArgs),
    /// Export a range of the log to one file, for an auditor.
    Export(ExportArgs),
    /// Show the newest entries (metadata and keyed hashes only; the log holds no content).
    Tail {
        /// How many entries.
        #[arg(short = 'n', long, default_value_t = 20)]
        n: usize,
        /// Print one JSON object per line instead.
        #[arg(long)]
        json: bool,
    },
    /// The HMAC under the box's audit secret of a text, to find its prompt_hmac (or
    /// response_hmac) in an export. Hashes are keyed per client: name the client.
    Hmac {
        /// The exact text (a prompt or a response).
        #[arg(long, conflicts_with = "stdin", required_unless_present = "stdin")]
        text: Option<String>,
        /// Read the exact text from standard input instead.
        #[arg(long)]
        stdin: bool,
        /// The client that sent the prompt (or received the response), as in the entry's
        /// `client` field. Without it, the bare HMAC that entries written before per-client
        /// keying hold.
        #[arg(long, value_name = "NAME")]
        client: Option<String>,
    },
    /// Show a request's stored prompt and response ([retention] store_content; through govboxd
    /// only, and each read is recorded in the audit log).
    Content {
        /// The request id (the x-request-id header, `req-` and 16 hex digits).
        request_id: String,
        /// Print govboxd's answer as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Accept an audit store that govbox-auditd found behind its TPM anchor (entries cut, or an
    /// older copy put back), so that it serves again. The acknowledgement is recorded as the
    /// next entry, with the reason and what was found; the TPM then anchors the new head. Root
    /// or the audit account only, through govbox-auditd's socket.
    Acknowledge {
        /// Why the store is accepted (recorded in the entry): what happened, who decided.
        #[arg(long)]
        reason: String,
    },
    /// Remove old entries: by default those past `audit.retention_days` that an export already
    /// holds (govboxd also does this hourly). Leaf hashes and signed heads are always kept.
    Prune {
        /// Remove entries from before this RFC 3339 time instead of the retention cut-off.
        #[arg(long)]
        before: Option<String>,
        /// Also remove entries no export holds yet (recorded as a policy entry); needs --confirm.
        #[arg(long, requires = "confirm")]
        force: bool,
        /// Why a forced prune is made (recorded in its audit entry).
        #[arg(long, value_name = "REASON")]
        confirm: Option<String>,
    },
}

fn prune_cutoff(before: Option<&str>, retention_days: u32) -> Result<time::OffsetDateTime> {
    match before {
        Some(t) => govbox_audit::parse_time(t).ok_or_else(|| anyhow!("--before: '{t}' is not an RFC 3339 time")),
        None => Ok(time::OffsetDateTime::now_utc() - time::Duration::days(i64::from(retention_days))),
    }
}

fn print_prune(r: &PruneReport) {
    println!(
        "pruned {} entries; entries before seq {} are gone{}{}",
        r.removed,
        r.pruned_before,
        if r.held_by_export { "; older entries that no export holds were kept (export first, or --force)" } else { "" },
        if r.forced { "; the forced prune is recorded in the log" } else { "" }
    );
}

/// Arguments of `govbox audit verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The export file.
    file: PathBuf,
    /// The previous export: this one must continue it (detects a rewritten or truncated log).
    #[arg(long, value_name = "FILE")]
    previous: Option<PathBuf>,
    /// The box's audit public key (audit.pub, PEM), pinned: the export must be signed by it.
    #[arg(long, value_name = "PEM")]
    device_key: Option<PathBuf>,
    /// The signed tree heads the agency's log server received (`[audit] witness`), as it wrote
    /// them: the export must extend the largest of them (detects entries cut after it was sent).
    #[arg(long, value_name = "FILE")]
    witness: Option<PathBuf>,
    /// Trust whatever audit key the export carries (it then proves nothing about which box wrote it).
    #[arg(long, conflicts_with = "device_key")]
    insecure_embedded_key: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `govbox audit export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The first entry at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", conflicts_with = "from")]
    since: Option<String>,
    /// The first seq [default: the oldest entry still kept].
    #[arg(long, value_name = "SEQ")]
    from: Option<u64>,
    /// The last seq, inclusive [default: the newest].
    #[arg(long, value_name = "SEQ")]
    to: Option<u64>,
    /// The file to write.
    #[arg(short = 'o', long, value_name = "FILE")]
    output: PathBuf,
    /// Replace FILE if it exists (an earlier export is what the next one is verified against).
    #[arg(long)]
    force: bool,
}

/// Runs `govbox audit ...`.
pub fn run(state: Option<&Path>, socket: &Path, audit_socket: Option<&Path>, cmd: AuditCommand) -> Result<ExitCode> {
    // Where the audit store is when govboxd does not answer: govbox-auditd's (production), or
    // the state folder's own (`--state`: tests, the demo, a box without govbox-auditd).
    let auditd = auditd_socket(audit_socket, state);
    let state = state_dir(state);
    if let AuditCommand::Verify(args) = cmd {
        return verify(&args);
    }
    if let AuditCommand::Content { request_id, json } = &cmd {
        return content(socket, request_id, *json);
    }
    if let AuditCommand::Acknowledge { reason } = &cmd {
        return acknowledge(audit_socket.unwrap_or(Path::new(DEFAULT_AUDIT_SOCKET)), reason);
    }
    if let AuditCommand::Export(args) = &cmd
        && args.output.symlink_metadata().is_ok()
        && !args.force
    {
        bail!("refusing to overwrite {}: the file already exists (use --force)", args.output.display());
    }
    match AdminClient::connect(socket) {
        Ok(conn) => online(conn, cmd),
        Err(e) if !e.is_unreachable() => Err(e.into()),
        Err(unreachable) => offline(&state, auditd.as_deref(), cmd).map_err(|e| {
            if e.chain().any(|c| matches!(c.downcast_ref::<AuditError>(), Some(AuditError::Locked { .. }))) {
                anyhow!(
                    "the audit store is locked by a running govboxd, but its admin socket {} does not answer: {}",
                    socket.display(),
                    unreachable.reason()
                )
            } else if matches!(unreachable, AdminError::PermissionDenied { .. }) {
                anyhow!("{unreachable}; working on the state folder directly failed too: {e:#}")
            } else {
                e
            }
        }),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// `govbox audit acknowledge`: straight to govbox-auditd, which alone can hold a store (govboxd
/// does not start while it does).
fn acknowledge(auditd: &Path, reason: &str) -> Result<ExitCode> {
    if reason.trim().is_empty() {
        bail!("--reason: say why the store is accepted; it is recorded in the entry");
    }
    let client = govbox_audit::remote::AuditClient::connect(auditd)
        .with_context(|| format!("reaching govbox-auditd at {} (--audit-socket)", auditd.display()))?;
    let Some(held) = client.status()?.held else {
        bail!("govbox-auditd at {} holds nothing: its store is not behind its TPM anchor", auditd.display());
    };
    println!("govbox-auditd held the store: {held}");
    let head = client.acknowledge(reason.trim())?;
    println!(
        "acknowledged: entry {} records it, and the TPM now anchors the head of {} entries",
        head.tree_size.saturating_sub(1),
        head.tree_size
    );
    Ok(ExitCode::SUCCESS)
}

/// `govbox audit content`: only govboxd holds the content key's store open and records the read.
fn content(socket: &Path, request_id: &str, as_json: bool) -> Result<ExitCode> {
    let mut conn = AdminClient::connect(socket)
        .map_err(|e| anyhow!("{e}; stored content is read only through a running govboxd, which records every read"))?;
    let v = conn.call(ContentRead { request_id: request_id.to_string() })?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("request  {request_id}  (this read is recorded in the audit log)");
    for (kind, part) in [("prompt", &v.prompt), ("response", &v.response)] {
        let Some(p) = part else {
            println!("--- {kind}: not stored");
            continue;
        };
        let check = if p.hmac_matches { "matches the audit log's HMAC" } else { "DOES NOT match the audit log's HMAC" };
        let cut = if p.truncated { ", truncated" } else { "" };
        println!("--- {kind} (stored {}, {check}{cut})", p.stored);
        match (&p.text, &p.base64) {
            (Some(t), _) => println!("{t}"),
            (None, Some(b)) => println!("(not UTF-8; base64) {b}"),
            _ => println!("(empty)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_capped(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let file = fs::File::open(path).with_context(|| format!("opening {what} {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).with_context(|| format!("reading {what} {}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!("reading {what} {}: larger than the {limit}-byte limit", path.display());
    }
    Ok(bytes)
}

fn verify(args: &VerifyArgs) -> Result<ExitCode> {
    let export = read_capped(&args.file, MAX_EXPORT_BYTES, "the export")?;
    let previous =
        args.previous.as_deref().map(|p| read_capped(p, MAX_EXPORT_BYTES, "the previous export")).transpose()?;
    let pinned = args.device_key.as_deref().map(PublicKey::load_pem).transpose()?;
    let witness = args
        .witness
        .as_deref()
        .map(|p| read_capped(p, govbox_audit::witness::MAX_WITNESS_FILE_BYTES, "the witness file"))
        .transpose()?;
    let mut report = match &witness {
        None => verify_export(&export, previous.as_deref(), pinned.as_ref()),
        Some(w) => verify_export_with_witness(&export, previous.as_deref(), pinned.as_ref(), w),
    }
    .with_context(|| format!("verifying {}", args.file.display()))?;
    let warning = if pinned.is_none() { unpinned(&mut report, args.insecure_embedded_key) } else { None };
    if args.json {
        /// The report with the unpinned-key warning beside its fields.
        #[derive(serde::Serialize)]
        struct WithWarning<'a> {
            #[serde(flatten)]
            report: &'a VerifyReport,
            warning: Option<&'a str>,
        }
        let doc = WithWarning { report: &report, warning: warning.as_deref() };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render_report(&args.file, &report, warning.as_deref()));
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// With no audit key pinned, an export only proves it was signed by the key it carries, which
/// anyone can make: a failing `pinned key` check is added, unless the caller chose
/// `--insecure-embedded-key`, and then the verdict carries the returned warning.
fn unpinned(report: &mut VerifyReport, insecure: bool) -> Option<String> {
    if insecure {
        return Some(format!(
            "no audit key pinned (--insecure-embedded-key): trusted the key the export carries ({}); anyone with a fresh key could have written it",
            report.audit_keyid
        ));
    }
    report.checks.push(govbox_audit::Check {
        name: "pinned key".into(),
        ok: false,
        detail: "none given, so an export signed by any fresh key would pass: give --device-key (the box's \
                 identity/audit.pub, taken at install), or --insecure-embedded-key to trust the key the export carries"
            .into(),
    });
    report.ok = false;
    None
}

/// The human form of a verification report; a warning goes right above the verdict line.
fn render_report(file: &Path, r: &VerifyReport, warning: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "export     {}", file.display());
    let _ = writeln!(out, "range      seq {}..={} ({} entries), tree size {}", r.from, r.to, r.count, r.tree_size);
    let _ = writeln!(out, "audit key  {}", r.audit_keyid);
    let _ = writeln!(out, "device     {}", r.device_keyid.as_deref().unwrap_or("not named in the export"));
    let gaps = if r.gaps.is_empty() {
        "none".to_string()
    } else {
        r.gaps
            .iter()
            .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}..={b}") })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "gaps       {gaps}");
    for c in &r.checks {
        let _ = writeln!(out, "{}  {:<16} {}", if c.ok { "PASS" } else { "FAIL" }, c.name, c.detail);
    }
    let failed = r.checks.iter().filter(|c| !c.ok).count();
    if let Some(w) = warning {
        let _ = writeln!(out, "WARNING    {w}");
    }
    if r.ok {
        let _ = writeln!(out, "result     PASS ({} checks)", r.checks.len());
    } else {
        let _ = writeln!(out, "result     FAIL ({failed} of {} checks failed)", r.checks.len());
    }
    out
}

fn hmac_text(text: Option<String>, stdin: bool) -> Result<Vec<u8>> {
    match (text, stdin) {
        (Some(t), _) => Ok(t.into_bytes()),
        (None, _) => {
            let mut bytes = Vec::new();
            std::io::stdin().take(MAX_HMAC_TEXT + 1).read_to_end(&mut bytes).context("reading standard input")?;
            if bytes.len() as u64 > MAX_HMAC_TEXT {
                bail!("the text on standard input is larger than {} MiB", MAX_HMAC_TEXT >> 20);
            }
            Ok(bytes)
        }
    }
}

fn range_of(args: &ExportArgs) -> Result<ExportRange> {
    let since = args
        .since
        .as_deref()
        .map(|s| OffsetDateTime::parse(s, &Rfc3339).map_err(|e| anyhow!("--since '{s}' is not an RFC 3339 time: {e}")))
        .transpose()?;
    Ok(ExportRange { from_seq: args.from, since, to_seq: args.to })
}

/// Writes the export next to its final name, then renames it into place.
fn write_export(args: &ExportArgs, bytes: &[u8]) -> Result<()> {
    let report = verify_export(bytes, None, None).context("checking the export just made")?;
    let tmp = args.output.with_extension("partial");
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &args.output).with_context(|| format!("renaming {} into place", tmp.display()))?;
    println!(
        "exported seq {}..={} ({} entries), tree size {}, to {}",
        report.from,
        report.to,
        report.count,
        report.tree_size,
        args.output.display()
    );
    if !report.ok {
        bail!("the export does not verify: run `govbox audit verify {}` for details", args.output.display());
    }
    Ok(())
}

fn print_entries(entries: &[Entry], json: bool) -> Result<()> {
    for e in entries {
        if json {
            println!("{}", serde_json::to_string(e)?);
            continue;
        }
        // The event's own fields, in its serialized order, after its kind.
        let fields = match serde_json::to_value(&e.event)? {
            Value::Object(m) => m,
            _ => Default::default(),
        };
        let rest: Vec<String> = fields
            .into_iter()
            .filter(|(k, _)| k != "kind")
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect();
        println!("{:>8}  {}  {:<21} {}", e.seq, e.time, e.event.kind(), rest.join(" "));
    }
    Ok(())
}

/// Who a command on the state folder is, in audit entries: `uid N`.
pub(crate) fn local_actor() -> Result<String> {
    let uid = fs::metadata("/proc/self").map(|m| m.uid()).context("reading this process's uid")?;
    Ok(format!("uid {uid}"))
}

/// Through the running daemon's admin socket.
fn online(mut conn: AdminClient, cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify(_) | AuditCommand::Content { .. } | AuditCommand::Acknowledge { .. } => {
            unreachable!("verify, content and acknowledge are handled in run")
        }
        AuditCommand::Export(args) => {
            let range = range_of(&args)?;
            let answer =
                conn.call(AuditExport { from: range.from_seq, since: args.since.clone(), to: range.to_seq })?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(&answer.export_b64).map_err(|e| {
                AdminError::BadAnswer {
                    path: conn.path().to_path_buf(),
                    reason: format!("audit_export: export_b64 is not base64: {e}"),
                }
            })?;
            write_export(&args, &bytes)
        }
        AuditCommand::Tail { n, json } => print_entries(&conn.call(AuditTail { n: Some(n) })?.entries, json),
        AuditCommand::Hmac { text, stdin, client } => {
            let bytes = hmac_text(text, stdin)?;
            let text = String::from_utf8(bytes).map_err(|_| anyhow!("the admin socket takes UTF-8 text only"))?;
            println!("{}", conn.call(AuditHmac { text, client })?.hmac);
            Ok(())
        }
        AuditCommand::Prune { before, force, confirm } => {
            print_prune(&conn.call(AuditPrune { before, force, confirm })?);
            Ok(())
        }
    }
}

/// govbox-auditd's socket in the packaged setup (`dist/govbox-auditd.service`).
const DEFAULT_AUDIT_SOCKET: &str = "/run/govbox-audit/audit.sock";

/// Where the audit store is when govboxd does not answer: `--audit-socket`, else govbox-auditd's
/// packaged socket when it exists and `--state` is not given, else none (the state folder's own
/// store).
pub(crate) fn auditd_socket(explicit: Option<&Path>, state: Option<&Path>) -> Option<PathBuf> {
    explicit.map(Path::to_path_buf).or_else(|| {
        let default = Path::new(DEFAULT_AUDIT_SOCKET);
        (state.is_none() && default.exists()).then(|| default.to_path_buf())
    })
}

/// The audit log without govboxd: through govbox-auditd's socket when there is one, else the
/// state folder's store directly (govboxd is stopped, else the store is locked).
pub(crate) fn open_log(paths: &StatePaths, auditd: Option<&Path>, opts: AuditOptions) -> Result<AuditHandle> {
    Ok(match auditd {
        Some(sock) => AuditHandle::connect(sock, HmacKey::load(paths)?)
            .with_context(|| format!("govboxd does not answer; reaching govbox-auditd at {}", sock.display()))?,
        None => AuditHandle::InProcess(AuditLog::open_state(paths, opts)?),
    })
}

/// Without govboxd: govbox-auditd's socket, or the state folder directly.
fn offline(state: &Path, auditd: Option<&Path>, cmd: AuditCommand) -> Result<()> {
    let paths = StatePaths::new(state);
    match cmd {
        AuditCommand::Verify(_) | AuditCommand::Content { .. } | AuditCommand::Acknowledge { .. } => {
            unreachable!("verify, content and acknowledge are handled in run")
        }
        AuditCommand::Export(args) => {
            let range = range_of(&args)?;
            let log = open_log(&paths, auditd, AuditOptions::default())?;
            // The export is itself recorded, before it is made, so that it holds its own record.
            let show = |v: Option<u64>, none: &str| v.map_or_else(|| none.to_string(), |n| format!("seq {n}"));
            let subject = format!(
                "from {} to {}{}",
                show(args.from, "the oldest entry"),
                show(args.to, "the newest"),
                args.since.as_deref().map(|t| format!(", since {t}")).unwrap_or_default()
            );
            log.append_blocking(Event::Admin { actor: local_actor()?, action: "audit_export".into(), subject })?;
            let bytes = log.export(range)?;
            log.close()?;
            write_export(&args, &bytes)
        }
        AuditCommand::Tail { n, json } => {
            let log = open_log(&paths, auditd, AuditOptions::default())?;
            let entries = log.tail(n)?;
            log.close()?;
            print_entries(&entries, json)
        }
        AuditCommand::Hmac { text, stdin, client } => {
            let bytes = hmac_text(text, stdin)?;
            let key = HmacKey::load(&paths)?;
            let hmac = match &client {
                Some(c) => key.client_hmac(c, &bytes),
                None => key.hmac(&bytes),
            };
            // The query is an administrative action: it is recorded, as govboxd records its own.
            let log = open_log(&paths, auditd, AuditOptions::default())?;
            log.append_blocking(Event::Admin {
                actor: local_actor()?,
                action: "audit_hmac_query".into(),
                subject: hmac.clone(),
            })?;
            log.close()?;
            println!("{hmac}");
            Ok(())
        }
        AuditCommand::Prune { before, force, confirm } => {
            let req = AuditPrune { before, force, confirm };
            let opts = AuditOptions::default();
            let cutoff = prune_cutoff(req.before.as_deref(), opts.retention_days)?;
            let actor = if req.force { local_actor()? } else { String::new() };
            let intent = req.forced_entry(actor, &govbox_audit::format_time(cutoff)).map_err(|e| anyhow!(e))?;
            let log = open_log(&paths, auditd, opts)?;
            let r = match intent {
                Some(entry) => log.prune_forced(cutoff, entry)?,
                None => log.prune(cutoff, false)?,
            };
            log.close()?;
            print_prune(&r);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use govbox_audit::AuditKeys;
    use govbox_provisioning::SigningKey;

    use super::*;

    /// The export of a fresh log holding one entry.
    fn one_entry_export() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let keys = AuditKeys::new(SigningKey::generate().unwrap(), [1; 32]);
        let log = AuditLog::open(dir.path(), keys, AuditOptions::default()).unwrap();
        log.append_blocking(Event::ConfigReload).unwrap();
        log.export(ExportRange::default()).unwrap()
    }

    #[test]
    fn report_lists_range_gaps_and_each_check() {
        let r = verify_export(&one_entry_export(), None, None).unwrap();
        let text = render_report(Path::new("x.json"), &r, None);
        assert!(text.contains("range      seq 0..=0 (1 entries), tree size 1"), "{text}");
        assert!(text.contains("gaps       none"), "{text}");
        assert!(text.contains("PASS  root"), "{text}");
        assert!(text.ends_with(&format!("result     PASS ({} checks)\n", r.checks.len())), "{text}");
    }

    #[test]
    fn an_unpinned_export_fails_unless_the_embedded_key_is_trusted_with_a_warning() {
        let export = one_entry_export();
        let mut r = verify_export(&export, None, None).unwrap();
        assert_eq!(unpinned(&mut r, false), None);
        let text = render_report(Path::new("x.json"), &r, None);
        assert!(!r.ok && text.contains("FAIL  pinned key       none given"), "{text}");
        assert!(text.ends_with(&format!("result     FAIL (1 of {} checks failed)\n", r.checks.len())), "{text}");

        let mut r = verify_export(&export, None, None).unwrap();
        let warning = unpinned(&mut r, true);
        let text = render_report(Path::new("x.json"), &r, warning.as_deref());
        assert!(r.ok && text.contains("\nWARNING    no audit key pinned (--insecure-embedded-key)"), "{text}");
        assert!(text.ends_with("checks)\n") && text.contains("result     PASS"), "{text}");
    }
}
