//! `govbox attest`: ask the running govboxd for a signed attestation report, and
//! `govbox attest verify`: check one offline.
//!
//! ```text
//! govbox attest --nonce HEX -o report.json
//! govbox attest verify report.json --nonce HEX (--device-key PEM | --insecure-embedded-key)
//!     [--expect-binary SHA256] [--expect-model NAME@DIGEST]... [--audit-key PEM]
//!     [--allow-dev-models] [--allow-egress]
//! ```
//!
//! The report's format is documented in `govbox-attestation`. Verification prints one
//! `PASS`/`FAIL`/`SKIP` line per named check and exits 1 when any check fails. A report only
//! proves something against a device key the verifier already trusts: without `--device-key`
//! anyone with a fresh key could have made it, so the verdict is FAIL unless the caller asks for
//! `--insecure-embedded-key`, and then it says so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use govbox_attestation::{Check, Expectations, Nonce, Outcome, verify_report, verify_report_bytes};
use govbox_provisioning::PublicKey;

use crate::admin::AdminClient;

/// `govbox attest [--nonce HEX -o FILE] | govbox attest verify ...`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AttestArgs {
    #[command(subcommand)]
    command: Option<AttestCommand>,
    /// The verifier's fresh random nonce: 16 to 64 bytes, hex (e.g. `openssl rand -hex 32`).
    #[arg(long, value_name = "HEX")]
    nonce: Option<String>,
    /// Where to write the report [default: standard output].
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
}

/// The subcommands of `govbox attest`.
#[derive(Subcommand, Debug)]
pub enum AttestCommand {
    /// Check a report offline: format, signature, device key, nonce, binary and model digests.
    Verify(VerifyArgs),
}

/// `govbox attest verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The report file.
    report: PathBuf,
    /// The nonce the report must answer (the one given to `govbox attest`).
    #[arg(long, value_name = "HEX")]
    nonce: String,
    /// The device public key to trust (`STATE/identity/device.pub` of the box, taken at install).
    #[arg(long, value_name = "PEM")]
    device_key: Option<PathBuf>,
    /// Trust whatever key the report carries (it then proves nothing about which box made it).
    #[arg(long, conflicts_with = "device_key")]
    insecure_embedded_key: bool,
    /// The expected SHA-256 of govboxd (hex, with or without `sha256-`).
    #[arg(long, value_name = "SHA256")]
    expect_binary: Option<String>,
    /// A model that must be served from this package (repeatable): NAME@DIGEST.
    #[arg(long, value_name = "NAME@DIGEST")]
    expect_model: Vec<String>,
    /// The audit public key (`STATE/identity/audit.pub`), to check the embedded audit head.
    #[arg(long, value_name = "PEM")]
    audit_key: Option<PathBuf>,
    /// Accept a box that runs with --insecure-dev-models.
    #[arg(long)]
    allow_dev_models: bool,
    /// Accept a box whose egress lockdown is off (`[sandbox] egress = "off"`).
    #[arg(long)]
    allow_egress: bool,
}

/// Runs `govbox attest`.
pub fn run(socket: &Path, args: AttestArgs) -> Result<ExitCode> {
    match args.command {
        Some(AttestCommand::Verify(v)) => verify(&v),
        None => {
            let nonce = args.nonce.ok_or_else(|| {
                anyhow!(
                    "give the verifier's nonce: govbox attest --nonce HEX -o report.json (e.g. `openssl rand -hex 32`)"
                )
            })?;
            report(socket, &nonce, args.output.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn report(socket: &Path, nonce: &str, output: Option<&Path>) -> Result<()> {
    // Refuse a bad nonce here, before asking the daemon (which would refuse it too).
    let nonce = Nonce::parse(nonce)?;
    let mut conn =
        AdminClient::connect(socket).context("an attestation report comes from the running govboxd; is it running?")?;
    let result = conn.call(govbox_admin::protocol::Attest { nonce: nonce.as_hex().to_string() })?;
    let mut text = serde_json::to_string_pretty(&result)?;
    text.push('\n');
    // A report this client cannot verify against its own nonce is not worth writing.
    let mut expect = Expectations::new(nonce.clone());
    // Whether a box may open connections is the verifier's policy (`attest verify`), not a defect
    // of the report: the report states it either way.
    expect.allow_egress = true;
    let check = verify_report_bytes(text.as_bytes(), &expect);
    if let Some(f) = check.checks.iter().find(|c| c.outcome == Outcome::Fail) {
        bail!("govboxd answered with a report that does not verify: {f}");
    }
    match output {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
            if let Some(r) = check.report {
                let r = r.report;
                eprintln!(
                    "wrote {}: device {}, nonce {}, {} model(s), audit tree size {}",
                    path.display(),
                    r.device.keyid,
                    r.nonce,
                    r.measurements.models.len(),
                    r.audit_head.tree_size
                );
            }
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}

fn load_key(path: &Path, what: &str) -> Result<PublicKey> {
    PublicKey::load_pem(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn verify(args: &VerifyArgs) -> Result<ExitCode> {
    let mut expect = Expectations::new(Nonce::parse(&args.nonce)?);
    expect.device_key = args.device_key.as_deref().map(|p| load_key(p, "device key")).transpose()?;
    expect.audit_key = args.audit_key.as_deref().map(|p| load_key(p, "audit key")).transpose()?;
    expect.binary_sha256 = args.expect_binary.clone();
    expect.allow_dev_models = args.allow_dev_models;
    expect.allow_egress = args.allow_egress;
    for spec in &args.expect_model {
        let (name, digest) = spec
            .split_once('@')
            .filter(|(n, d)| !n.is_empty() && !d.is_empty())
            .ok_or_else(|| anyhow!("--expect-model '{spec}': expected NAME@DIGEST"))?;
        expect.models.push((name.to_string(), digest.to_string()));
    }
    let mut v = verify_report(&args.report, &expect)?;
    let warning = if args.device_key.is_none() { unpinned(&mut v.checks, args.insecure_embedded_key) } else { None };
    for c in &v.checks {
        println!("{c}");
    }
    let failed: Vec<&str> = v.checks.iter().filter(|c| c.outcome == Outcome::Fail).map(|c| c.name.as_str()).collect();
    if let Some(w) = warning {
        println!("WARNING: {w}");
    }
    if failed.is_empty() {
        println!("attestation report {} verified", args.report.display());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("attestation report {} FAILED: {}", args.report.display(), failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

/// With no device key pinned, the report only proves it was signed by the key it carries, which
/// anyone can make: the `device-key` check FAILs, unless the caller chose `--insecure-embedded-key`,
/// and then the verdict carries the returned warning.
fn unpinned(checks: &mut [Check], insecure: bool) -> Option<String> {
    let check = checks.iter_mut().find(|c| c.name == "device-key")?;
    if insecure {
        check.detail = "none pinned: trusted the key the report carries (--insecure-embedded-key)".into();
        Some("no device key pinned (--insecure-embedded-key): any box, or anyone with a fresh key, could have made this report".into())
    } else {
        check.outcome = Outcome::Fail;
        check.detail = "no device key pinned, so a report signed by any fresh key would pass: give --device-key \
                        (the box's identity/device.pub, taken at install), or --insecure-embedded-key to trust the \
                        key the report carries"
            .into();
        None
    }
}
