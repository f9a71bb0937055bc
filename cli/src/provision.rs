//! `govbox provision`: first boot of the box, and `govbox provision --show`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use govbox_provisioning::{
    CertInfo, DEFAULT_STATE_DIR, ProvisionOptions, Role, Suite, ThresholdSpec, TrustKeySpec, TrustRoot, describe_role,
    load_public_identity, provision,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Arguments of `govbox provision`.
#[derive(Args, Debug)]
pub struct ProvisionArgs {
    /// Print the box's public identity (keys, fingerprints, trust roles) instead of provisioning.
    #[arg(long, conflicts_with_all = ["hostname", "san", "trust_key", "threshold", "force"])]
    show: bool,
    /// The box's host name, for the server certificate [default: the system host name].
    #[arg(long)]
    hostname: Option<String>,
    /// An extra IP address or DNS name for the server certificate (repeatable). 127.0.0.1, ::1,
    /// localhost and the host name are always included.
    #[arg(long = "san", value_name = "IP_OR_DNS")]
    san: Vec<String>,
    /// A trusted public key, `[ROLE[,ROLE...]:]FILE`, ROLE one of root, models, updates. Without a
    /// role the key gets all three (repeatable).
    #[arg(long = "trust-key", value_name = "[ROLE:]PUB", required_unless_present = "show")]
    trust_key: Vec<TrustKeySpec>,
    /// How many distinct keys of a role must sign, `ROLE:N` [default: 1 for each role] (repeatable).
    #[arg(long, value_name = "ROLE:N")]
    threshold: Vec<ThresholdSpec>,
    /// Replace an existing identity, CA and trust root. Client certificates from the old CA stop working.
    #[arg(long)]
    force: bool,
    /// The public key of an audit key that root made for govbox-auditd
    /// (`govbox keygen --out /etc/govbox/audit/audit.key`): the box names it and its private half
    /// never enters the state folder, so the service account cannot sign audit heads. Without it
    /// the audit key is made into identity/audit.key (the single-process mode: tests, the demo).
    #[arg(long, value_name = "PUB")]
    audit_pub: Option<PathBuf>,
    /// The crypto suite: `intl` (Ed25519, SHA-256, HMAC-SHA256, AES-256-GCM) or `gm` (国密: SM2 with
    /// SM3, SM3, HMAC-SM3, SM4-GCM). The device and audit keys are made (and `--audit-pub` must be)
    /// of the suite's algorithm; every component reads the suite from identity/suite.
    #[arg(long, value_name = "intl|gm", default_value = "intl")]
    suite: Suite,
}

/// The state folder: `--state DIR`, or the production one.
pub fn state_dir(state: Option<&Path>) -> PathBuf {
    state.map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), Path::to_path_buf)
}

/// Runs `govbox provision`.
pub fn run(state: Option<&Path>, args: ProvisionArgs) -> Result<()> {
    let state = state_dir(state);
    if args.show {
        return show(&state);
    }
    let report = provision(&ProvisionOptions {
        state_dir: state,
        hostname: args.hostname,
        extra_sans: args.san,
        trust_keys: args.trust_key,
        thresholds: args.threshold,
        force: args.force,
        audit_pub: args.audit_pub,
        suite: args.suite,
    })?;
    println!("provisioned {}", report.paths.root().display());
    println!("  crypto suite   {}", report.suite);
    println!("  host name      {}", report.hostname);
    println!("  server names   {}", report.server.sans.join(", "));
    println!("  device key id  {}", report.device_key.keyid());
    println!("  audit key id   {}", report.audit_key.keyid());
    if !report.audit_key_held_here {
        println!("                 (its private key is govbox-auditd's, not in {})", report.paths.root().display());
    }
    println!("  CA sha256      {}", report.ca.sha256_hex());
    println!("  server sha256  {}", report.server.sha256_hex());
    print_trust("  ", &report.trust);
    println!("files:");
    for f in &report.files {
        println!("  {:04o}  {}", f.mode, f.path.display());
    }
    if report.replaced {
        println!(
            "note: this replaced an earlier identity and CA; client certificates issued before no longer verify \
             (issue new ones with `govbox client renew NAME`)"
        );
    }
    Ok(())
}

fn show(state: &Path) -> Result<()> {
    let id = load_public_identity(state)?;
    println!("govbox public identity of {}", id.paths.root().display());
    println!("crypto suite   {}", id.suite);
    println!("device id      {}", id.device_id());
    print!("device public key\n{}", id.device_key.to_spki_pem());
    println!("audit key id   {}", id.audit_key.keyid());
    print!("audit public key\n{}", id.audit_key.to_spki_pem());
    print_cert("CA sha256     ", &id.ca);
    print_cert("server sha256 ", &id.server);
    println!("server names   {}", id.server.sans.join(", "));
    print_trust("", &id.trust);
    Ok(())
}

fn print_cert(label: &str, cert: &CertInfo) {
    println!("{label} {}  (expires {})", cert.sha256_hex(), format_unix(cert.not_after));
}

fn print_trust(indent: &str, trust: &TrustRoot) {
    println!("{indent}trust root     version {}, expires {}", trust.version(), trust.expires_rfc3339());
    for role in Role::ALL {
        println!("{indent}  {:<8} {}", role.as_str(), describe_role(trust, role));
    }
}

/// Unix seconds as RFC 3339 (UTC).
pub fn format_unix(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t).ok().and_then(|d| d.format(&Rfc3339).ok()).unwrap_or_else(|| t.to_string())
}
