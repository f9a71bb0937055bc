//! `govbox`: the command line for agency IT, vendors and auditors.
//!
//! A thin clap front over the library crates. Each command group lives in its own module.
#![forbid(unsafe_code)]

mod admin;
mod attest;
mod audit;
mod client;
mod doctor;
mod https;
mod keys;
mod model;
mod offline;
mod package;
mod policy;
mod policy_eval;
mod provision;
mod status;
mod store;
#[cfg(feature = "tlcp")]
mod tlcp;
mod tls;
mod trust;
mod update;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// govbox: the government model appliance's command line.
#[derive(Parser, Debug)]
#[command(name = "govbox", version, about, propagate_version = true)]
struct Cli {
    /// State folder (production: /var/lib/govbox).
    #[arg(long, global = true, env = "GOVBOX_STATE")]
    state: Option<PathBuf>,
    /// govboxd's admin socket [default: STATE/admin.sock with --state, else /run/govbox/admin.sock].
    #[arg(long, global = true, env = "GOVBOX_ADMIN_SOCKET", value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// govbox-auditd's socket, used by `govbox audit` when govboxd does not answer [default:
    /// /run/govbox-audit/audit.sock when it exists and --state is not given; with --state, the
    /// state folder's own audit store].
    #[arg(long, global = true, env = "GOVBOX_AUDIT_SOCKET", value_name = "PATH")]
    audit_socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The box's signed models (import, list, activate, rollback, remove), and running model files directly.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Make a signing key pair, Ed25519 or SM2 (vendors: for signing model packages and update bundles).
    Keygen(keys::KeygenArgs),
    /// First boot: create the box's identity, CA, server certificate and trust root (or --show them).
    Provision(provision::ProvisionArgs),
    /// Manage the intranet applications allowed to call the box (through govboxd when it runs).
    #[command(subcommand)]
    Client(client::ClientCommand),
    /// Show the running govboxd's state (exit code 3 when it is not running).
    Status(status::StatusArgs),
    /// Export the audit log (through govboxd when it runs), tail it, or verify an export offline.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Build, inspect and verify signed model packages (offline).
    #[command(subcommand)]
    Package(package::PackageCommand),
    /// Show, sign and rotate the trust root (offline).
    #[command(subcommand)]
    Trust(trust::TrustCommand),
    /// Get a signed attestation report from govboxd (--nonce HEX -o FILE), or `verify` one offline.
    Attest(attest::AttestArgs),
    /// Check the box: state modes and owners, certificates, trust root, disk, daemon, egress, identity
    /// (exit 1 when a check fails).
    Doctor(doctor::DoctorArgs),
    /// Renew the HTTPS server certificate (same CA, new key); a running govboxd serves it with no restart.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// Content-safety libraries: build, verify, import, activate, roll back and list signed policy
    /// packages; run a test bank through the box (eval) and verify its signed report.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Build signed update bundles; apply, inspect and roll back govbox updates (A/B slots).
    #[command(subcommand)]
    Update(update::UpdateCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = admin::socket_path(cli.admin_socket.as_deref(), cli.state.as_deref());
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let r = match cli.command {
        Command::Model(c) => done(model::run(cli.state.as_deref(), &socket, cli.audit_socket.as_deref(), c)),
        Command::Keygen(a) => done(keys::run(a)),
        Command::Provision(a) => done(provision::run(cli.state.as_deref(), a)),
        Command::Client(c) => done(client::run(cli.state.as_deref(), &socket, cli.audit_socket.as_deref(), c)),
        Command::Status(a) => status::run(&socket, a),
        Command::Audit(c) => audit::run(cli.state.as_deref(), &socket, cli.audit_socket.as_deref(), c),
        Command::Package(c) => done(package::run(cli.state.as_deref(), c)),
        Command::Trust(c) => done(trust::run(cli.state.as_deref(), c)),
        Command::Attest(a) => attest::run(&socket, a),
        Command::Doctor(a) => doctor::run(cli.state.as_deref(), &socket, a),
        Command::Tls(c) => done(tls::run(cli.state.as_deref(), &socket, c)),
        Command::Update(c) => done(update::run(&socket, c)),
        Command::Policy(c) => policy::run(cli.state.as_deref(), &socket, cli.audit_socket.as_deref(), c),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `outer: inner: …`, leaving out a cause whose text the
/// line already holds: many library errors print their source in their own message
/// (`#[error("reading {path}: {0}")]`) and also return it from `source()`, which made
/// `No such file or directory (os error 2): No such file or directory (os error 2)`.
fn error_text(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_text;

    /// Like a thiserror `#[error("reading …: {0}")]` variant with `#[source]`.
    #[derive(Debug)]
    struct Wraps(std::io::Error);
    impl std::fmt::Display for Wraps {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "reading trust/root.json: {}", self.0)
        }
    }
    impl std::error::Error for Wraps {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let io_text = io.to_string();
        let e = anyhow::Error::new(Wraps(io)).context("provisioning /tmp/s");
        assert_eq!(error_text(&e), format!("provisioning /tmp/s: reading trust/root.json: {io_text}"));
    }

    #[test]
    fn causes_not_in_the_message_are_kept_in_order() {
        let e = anyhow::anyhow!("member 'a.bin': sha256 mismatch").context("package 'p 1.0'").context("importing");
        assert_eq!(error_text(&e), "importing: package 'p 1.0': member 'a.bin': sha256 mismatch");
    }
}
