//! `govbox-auditd`: the audit writer as a process of its own, under its own account.
//!
//! It owns `STATE/audit` (the store, the witness spool) and signs with the audit key, and serves
//! govboxd on a Unix socket (see `govbox_audit::remote`): append, checkpoint, export, tail,
//! status, and prune by the retention rule. Nothing that removes or changes an entry. Settings
//! come from the `[audit]` section of govboxd's config file (`checkpoint_every`,
//! `checkpoint_interval_secs`, `retention_days`, `witness`, `witness_ca`, `witness_server_name`,
//! `witness_client_cert`, `witness_client_key`, `tpm_anchor`, `tpm_anchor_index`, `tpm_anchor_interval_secs`); other sections are not read.
//!
//! With a TPM anchor, a store found behind it (cut back with file access) is opened held: the
//! socket serves the status (which says why) and an operator's acknowledgement
//! (`govbox audit acknowledge`, root or this account), nothing else, until then.
#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use govbox_audit::{AuditKeys, AuditLog, AuditOptions, TpmAnchorConfig, WitnessAddr, read_hmac_secret};
use govbox_provisioning::{PublicKey, SigningKey};

/// Config files are a few kilobytes.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// How often retention runs.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

const USAGE: &str = "usage: govbox-auditd --audit-dir DIR --keys DIR --socket PATH [--config FILE] \
     [--allow-user NAME]...\n       govbox-auditd --audit-dir DIR --migrate-from STATE/audit   (as root, once)";

/// `--keys DIR` holds these (under systemd: `$CREDENTIALS_DIRECTORY`, from `LoadCredential=`).
const KEY_FILES: [&str; 3] = ["audit.key", "audit-hmac.key", "device.pub"];

/// Optional in `--keys DIR`: the audit public key the box's identity names
/// (`identity/audit.pub`). When present, the signing key must be its private half.
const NAMED_KEY_FILE: &str = "audit.pub";

/// Refuses to sign with a key the box does not name: every head would then fail verification,
/// which an auditor would find only at the next export.
fn check_named_key(signing: &SigningKey, named: &Path) -> Result<(), String> {
    if !named.exists() {
        return Ok(());
    }
    let named_key = PublicKey::load_pem(named).map_err(|e| e.to_string())?;
    if named_key != signing.public_key() {
        return Err(format!(
            "the audit key (key id {}) is not the one the box's identity names in {} (key id {}): \
             provision with --audit-pub naming this key's public half, or give govbox-auditd the right key",
            signing.public_key().keyid(),
            named.display(),
            named_key.keyid()
        ));
    }
    Ok(())
}

struct Args {
    /// `--migrate-from`: move that store into `audit_dir` and exit.
    migrate_from: Option<PathBuf>,
    audit_dir: PathBuf,
    keys: PathBuf,
    socket: PathBuf,
    config: Option<PathBuf>,
    allow_users: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut audit_dir, mut keys, mut socket, mut config, mut allow_users) = (None, None, None, None, Vec::new());
    let mut migrate_from = None;
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value; {USAGE}"));
        match a.as_str() {
            "--audit-dir" => audit_dir = Some(PathBuf::from(value()?)),
            "--keys" => keys = Some(PathBuf::from(value()?)),
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--config" => config = Some(PathBuf::from(value()?)),
            "--allow-user" => allow_users.push(value()?),
            "--migrate-from" => migrate_from = Some(PathBuf::from(value()?)),
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument '{other}'; {USAGE}")),
        }
    }
    let audit_dir = audit_dir.ok_or_else(|| format!("--audit-dir is required; {USAGE}"))?;
    if migrate_from.is_some() {
        return Ok(Args { migrate_from, audit_dir, keys: PathBuf::new(), socket: PathBuf::new(), config, allow_users });
    }
    Ok(Args {
        migrate_from,
        audit_dir,
        keys: keys.ok_or_else(|| format!("--keys is required; {USAGE}"))?,
        socket: socket.ok_or_else(|| format!("--socket is required; {USAGE}"))?,
        config,
        allow_users,
    })
}

/// The `[audit]` settings of `path`, over the defaults.
fn options(path: &Path) -> Result<AuditOptions, String> {
    let err = |e: &dyn std::fmt::Display| format!("config file {}: {e}", path.display());
    let size = std::fs::metadata(path).map_err(|e| err(&e))?.len();
    if size > MAX_CONFIG_BYTES {
        return Err(err(&"larger than 1 MiB"));
    }
    let table: toml::Table =
        toml::from_str(&std::fs::read_to_string(path).map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    let mut opts = AuditOptions::default();
    let Some(audit) = table.get("audit") else { return Ok(opts) };
    let audit = audit.as_table().ok_or_else(|| err(&"[audit] is not a table"))?;
    let positive = |key: &str| -> Result<Option<u64>, String> {
        match audit.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(v)) if *v >= 1 => Ok(Some(*v as u64)),
            Some(_) => Err(err(&format!("audit.{key}: must be an integer of at least 1"))),
        }
    };
    if let Some(v) = positive("checkpoint_every")? {
        opts.checkpoint_every = v;
    }
    if let Some(v) = positive("checkpoint_interval_secs")? {
        opts.checkpoint_interval = Duration::from_secs(v);
    }
    if let Some(v) = positive("retention_days")? {
        opts.retention_days = u32::try_from(v).map_err(|_| err(&"audit.retention_days: too large"))?;
    }
    match audit.get("witness") {
        None => {}
        Some(toml::Value::String(s)) if s.is_empty() => {}
        Some(toml::Value::String(s)) => {
            opts.witness = Some(s.parse::<WitnessAddr>().map_err(|e| err(&format!("audit.witness: {e}")))?);
        }
        Some(_) => return Err(err(&"audit.witness: must be a string")),
    }
    let text = |key: &str| -> Result<Option<String>, String> {
        match audit.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) if s.is_empty() => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(err(&format!("audit.{key}: must be a string"))),
        }
    };
    opts.witness_tls.ca = text("witness_ca")?.map(PathBuf::from);
    opts.witness_tls.server_name = text("witness_server_name")?;
    opts.witness_tls.client_cert = text("witness_client_cert")?.map(PathBuf::from);
    opts.witness_tls.client_key = text("witness_client_key")?.map(PathBuf::from);
    if let Some(tcti) = text("tpm_anchor")? {
        let mut anchor = TpmAnchorConfig::new(tcti);
        if let Some(v) = positive("tpm_anchor_index")? {
            anchor.nv_index = u32::try_from(v).map_err(|_| err(&"audit.tpm_anchor_index: too large"))?;
        }
        if let Some(v) = positive("tpm_anchor_interval_secs")? {
            anchor.interval = Duration::from_secs(v);
        }
        anchor.validate().map_err(|e| err(&e))?;
        opts.tpm_anchor = Some(anchor);
    }
    Ok(opts)
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    if let Some(from) = &args.migrate_from {
        return match govbox_audit::migrate::migrate(from, &args.audit_dir).map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(m) => {
                eprintln!(
                    "govbox-auditd: moved the audit store {} ({}) into {} and gave its {} files and folders to {}'s owner",
                    from.display(),
                    m.moved.join(", "),
                    args.audit_dir.display(),
                    m.chowned,
                    args.audit_dir.display()
                );
                Ok(())
            }
        };
    }
    let opts = match &args.config {
        Some(p) => options(p)?,
        None => AuditOptions::default(),
    };
    let mut uids = Vec::new();
    for name in &args.allow_users {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| format!("--allow-user {name}: {e}"))?
            .ok_or_else(|| format!("--allow-user {name}: no such user"))?;
        uids.push(user.uid.as_raw());
    }
    let [key, hmac, device] = KEY_FILES.map(|f| args.keys.join(f));
    let signing = SigningKey::load_pem(&key).map_err(|e| e.to_string())?;
    check_named_key(&signing, &args.keys.join(NAMED_KEY_FILE))?;
    let keys = AuditKeys {
        // The audit key's algorithm is the suite's (checked when the box was provisioned).
        suite: govbox_provisioning::Suite::of_key(signing.algorithm()),
        signing,
        hmac_secret: read_hmac_secret(&hmac).map_err(|e| e.to_string())?,
        device_key: Some(PublicKey::load_pem(&device).map_err(|e| e.to_string())?),
    };
    let log = AuditLog::open_or_hold(&args.audit_dir, keys, opts).map_err(|e| e.to_string())?;
    if let Some(why) = log.held() {
        eprintln!("govbox-auditd: THE AUDIT STORE IS HELD: {why}");
    }
    let _ = std::fs::remove_file(&args.socket);
    let listener = std::os::unix::net::UnixListener::bind(&args.socket)
        .map_err(|e| format!("binding the audit socket {}: {e}", args.socket.display()))?;
    // Anyone may connect; the server serves only the allowed uids (SO_PEERCRED).
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("setting the mode of {}: {e}", args.socket.display()))?;
    let pruner = log.clone();
    let _ = std::thread::Builder::new().name("auditd-retention".into()).spawn(move || {
        loop {
            if let Err(e) = pruner.prune_expired() {
                eprintln!("govbox-auditd: retention: {e}");
            }
            std::thread::sleep(PRUNE_EVERY);
        }
    });
    eprintln!(
        "govbox-auditd: serving {} on {} ({} entries)",
        args.audit_dir.display(),
        args.socket.display(),
        log.tree_size()
    );
    govbox_audit::remote::serve(log, listener, uids).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("govbox-auditd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use govbox_provisioning::Overwrite;

    #[test]
    fn signs_only_with_the_key_the_box_names() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("audit.pub");
        let key = SigningKey::generate().unwrap();
        // No audit.pub given: nothing to compare with (the tests' own setups).
        check_named_key(&key, &named).unwrap();
        key.public_key().write_pem(&named, Overwrite::Refuse).unwrap();
        check_named_key(&key, &named).unwrap();
        let other = SigningKey::generate().unwrap();
        let e = check_named_key(&other, &named).unwrap_err();
        assert!(e.contains(&other.public_key().keyid()) && e.contains(&key.public_key().keyid()), "{e}");
        assert!(e.contains("--audit-pub"), "{e}");
    }

    #[test]
    fn reads_only_the_audit_section_of_govboxds_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("govbox.toml");
        let config = "listen = \"0.0.0.0:8443\"\n[sandbox]\negress = \"auto\"\n[audit]\ncheckpoint_every = 7\n\
                      checkpoint_interval_secs = 2\nwitness = \"tcp://10.0.0.5:6514\"\nsocket = \"/run/x.sock\"\n";
        std::fs::write(&p, config).unwrap();
        let o = options(&p).unwrap();
        assert_eq!((o.checkpoint_every, o.checkpoint_interval, o.retention_days), (7, Duration::from_secs(2), 180));
        assert_eq!(o.witness.unwrap().to_string(), "tcp://10.0.0.5:6514");

        std::fs::write(&p, "[audit]\nwitness = \"tcp://logs.example:514\"\n").unwrap();
        let e = options(&p).unwrap_err();
        assert!(e.contains("audit.witness") && e.contains("govbox.toml"), "{e}");
        std::fs::write(&p, "[audit]\ncheckpoint_every = 0\n").unwrap();
        assert!(options(&p).unwrap_err().contains("audit.checkpoint_every"));

        std::fs::write(&p, "[audit]\ntpm_anchor = \"device:/dev/tpmrm0\"\ntpm_anchor_interval_secs = 300\n").unwrap();
        let a = options(&p).unwrap().tpm_anchor.unwrap();
        assert_eq!(
            (a.tcti.as_str(), a.nv_index, a.interval),
            ("device:/dev/tpmrm0", 0x013a_0a00, Duration::from_secs(300))
        );
        std::fs::write(&p, "[audit]\ntpm_anchor = \"device:/dev/tpmrm0\"\ntpm_anchor_index = 0x01c00002\n").unwrap();
        assert!(options(&p).unwrap_err().contains("audit.tpm_anchor_index"));
        std::fs::write(&p, "[audit]\ntpm_anchor = 5\n").unwrap();
        assert!(options(&p).unwrap_err().contains("audit.tpm_anchor"));
    }
}
