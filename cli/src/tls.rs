//! `govbox tls renew`: a new HTTPS server certificate, signed by the box's existing CA, served by
//! a running govboxd with no restart.
//!
//! The certificate and key are written here, in the state folder (atomically, the key 0600, each
//! keeping the owner of the file it replaces). Then govboxd is asked, through its admin socket, to
//! serve them to new handshakes (`tls_reload`); open connections keep the old certificate until they
//! close. govboxd records the swap in the audit log. When govboxd is not running, the renewal is
//! recorded in the audit log here and govboxd serves the new files when it starts.
//!
//! Run as root on a state folder that another account owns (the `govbox` service account, which
//! could have turned `tls/` or `audit/` into a link to `/etc`), it first becomes that account
//! (groups, gid, uid), so every path it opens there is opened with the service account's rights.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use govbox_admin::protocol::{CertificateSummary, TlsReload};
use govbox_audit::{AuditLog, AuditOptions, Event};
use govbox_provisioning::{
    MAX_RENEW_DAYS, SERVER_VALIDITY_DAYS, ServerCertSummary, StatePaths, load_server_cert, renew_server_cert, rfc3339,
};

use crate::admin::AdminClient;
use crate::provision::state_dir;

/// `govbox tls ...`
#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// Issue a new server certificate (new key, same names, same CA) and have govboxd serve it.
    Renew(RenewArgs),
    /// Make the box's SM2 CA and the TLCP listener's signing and encryption certificates.
    #[cfg(feature = "tlcp")]
    TlcpInit,
    /// Issue a TLCP client certificate pair (signing + encryption) for a client; govboxd stopped.
    #[cfg(feature = "tlcp")]
    TlcpClient(crate::tlcp::TlcpClientArgs),
}

/// Arguments of `govbox tls renew`.
#[derive(Args, Debug)]
pub struct RenewArgs {
    /// Validity of the new certificate in days (cut short at the CA's own expiry).
    #[arg(long, value_name = "N", default_value_t = u32::try_from(SERVER_VALIDITY_DAYS).unwrap_or(3650))]
    days: u32,
    /// Do nothing unless the current certificate expires within DAYS days (for a daily timer).
    #[arg(long, value_name = "DAYS")]
    if_expiring_within: Option<u32>,
}

/// Runs `govbox tls ...`.
pub fn run(state: Option<&Path>, socket: &Path, cmd: TlsCommand) -> Result<()> {
    let state = state_dir(state);
    become_state_owner(&state)?;
    #[cfg_attr(not(feature = "tlcp"), allow(clippy::infallible_destructuring_match))]
    let args = match cmd {
        TlsCommand::Renew(args) => args,
        #[cfg(feature = "tlcp")]
        TlsCommand::TlcpInit => return crate::tlcp::init(&state),
        #[cfg(feature = "tlcp")]
        TlsCommand::TlcpClient(args) => return crate::tlcp::client(&state, args),
    };
    if !(1..=MAX_RENEW_DAYS).contains(&args.days) {
        bail!("--days must be 1 to {MAX_RENEW_DAYS}, not {}", args.days);
    }
    let current = load_server_cert(&state)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Some(within) = args.if_expiring_within {
        let horizon = now + i64::from(within) * 86_400;
        if current.not_after > horizon {
            println!(
                "the server certificate (serial {}) is valid until {}, more than {within} days from now: nothing to do",
                current.serial,
                current.not_after_rfc3339()
            );
            return Ok(());
        }
    }
    match AdminClient::connect(socket) {
        Ok(mut conn) => {
            let report = renew_server_cert(&state, args.days)?;
            print_renewal(&report.old, &report.new, report.capped_by_ca, report.ca_not_after);
            let answer = conn.call(TlsReload {}).with_context(|| {
                format!(
                    "the new certificate is in {}, but govboxd was not switched to it; run `systemctl reload \
                     govboxd` (SIGHUP) or `govbox tls renew` again",
                    StatePaths::new(&state).server_cert().display()
                )
            })?;
            let serving = &answer.new.serial;
            if *serving != report.new.serial {
                bail!(
                    "govboxd reloaded, but serves serial {serving}, not the new {}: another renewal ran at the \
                     same time; check `govbox status`",
                    report.new.serial
                );
            }
            println!("govboxd serves the new certificate to new connections; open connections keep the old one");
            println!("recorded in the audit log by govboxd");
        }
        Err(e) if e.is_not_running() => {
            // Open (and lock) the audit log first: a renewal that cannot be recorded is not made.
            let paths = StatePaths::new(&state);
            let log = AuditLog::open_state(&paths, AuditOptions::default())
                .context("opening the audit log to record the renewal (nothing was changed)")?;
            let report = renew_server_cert(&state, args.days)?;
            print_renewal(&report.old, &report.new, report.capped_by_ca, report.ca_not_after);
            let uid = fs::metadata("/proc/self").map(|m| m.uid()).context("reading this process's uid")?;
            log.append_blocking(Event::Admin {
                actor: format!("uid {uid} (govbox tls renew, govboxd not running)"),
                action: "tls_renew".into(),
                subject: subject(&report.old, &report.new),
            })
            .context("the new certificate is in place, but recording the renewal in the audit log failed")?;
            log.close()?;
            println!("govboxd is not running ({}): it serves the new certificate when it starts", e.reason());
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(
                "cannot ask govboxd to reload; nothing was changed (run as root or as a member of govbox-admin)",
            ));
        }
    }
    Ok(())
}

/// As root, takes the identity of the state folder's owner when that is another account; see the
/// module documentation. Nothing to do for its owner, or for root's own state folder.
fn become_state_owner(state: &Path) -> Result<()> {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    let meta = fs::metadata(state).with_context(|| format!("reading the state folder {}", state.display()))?;
    if !Uid::effective().is_root() || meta.uid() == 0 {
        return Ok(());
    }
    let (uid, gid) = (Uid::from_raw(meta.uid()), Gid::from_raw(meta.gid()));
    setgroups(&[gid])
        .and_then(|()| setgid(gid))
        .and_then(|()| setuid(uid))
        .with_context(|| format!("becoming uid {uid}, the owner of {}, before touching it", state.display()))
}

fn subject(old: &ServerCertSummary, new: &ServerCertSummary) -> String {
    format!(
        "server certificate serial {} expires {} (was serial {} expiring {})",
        new.serial,
        new.not_after_rfc3339(),
        old.serial,
        old.not_after_rfc3339()
    )
}

fn print_renewal(old: &ServerCertSummary, new: &ServerCertSummary, capped: bool, ca_not_after: i64) {
    println!("renewed the server certificate ({}; same names, same CA)", new.subject);
    println!("  old  serial {}  expires {}", old.serial, old.not_after_rfc3339());
    println!("  new  serial {}  expires {}", new.serial, new.not_after_rfc3339());
    if capped {
        println!("  note: cut short at the box's CA expiry ({}); re-provision before then", rfc3339(ca_not_after));
    }
}

/// The `status` row for the served certificate: its expiry and how far away it is.
pub fn status_row(cert: &CertificateSummary, now: i64) -> String {
    let not_after = cert.not_after;
    let days = (not_after - now).div_euclid(86_400);
    let when = if cert.expires.is_empty() { rfc3339(not_after) } else { cert.expires.clone() };
    let serial = &cert.serial;
    if not_after <= now {
        format!("EXPIRED {when} (serial {serial}); run `govbox tls renew`")
    } else if days < 30 {
        format!("expires {when}, in {days} days (serial {serial}); run `govbox tls renew`")
    } else {
        format!("expires {when}, in {days} days (serial {serial})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_row_warns_when_the_certificate_is_near_or_past_expiry() {
        let now = 1_700_000_000;
        let cert = |d: i64| CertificateSummary {
            serial: "ab".into(),
            not_after: now + d * 86_400 + 10,
            expires: String::new(),
            sha256: String::new(),
        };
        assert!(status_row(&cert(400), now).starts_with("expires 2024-12-"), "{:?}", status_row(&cert(400), now));
        assert!(status_row(&cert(400), now).ends_with("in 400 days (serial ab)"));
        assert!(status_row(&cert(10), now).contains("in 10 days (serial ab); run `govbox tls renew`"));
        assert!(status_row(&cert(-1), now).starts_with("EXPIRED "));
    }
}
