//! `govbox client`: the intranet applications allowed to call the box.
//!
//! These commands work on the state folder directly, so govboxd must be stopped; while it runs,
//! the store is locked and the error says to use the daemon's admin socket.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use govbox_provisioning::{
    ClientName, ClientRecord, ClientStore, DEFAULT_CERT_DAYS, NewClient, Overwrite, write_client_bundle,
};

use crate::provision::{format_unix, state_dir};

/// `govbox client ...`
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Add a client and issue its mTLS client certificate (and, with --token, a bearer token).
    Add(AddArgs),
    /// List the clients: models, limits, certificate fingerprint and expiry, revocation.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a client: its certificate and token are refused from now on.
    Revoke {
        /// The client's name.
        name: String,
    },
    /// Issue a new certificate for a client; the old one is refused from now on. The token stays.
    Renew {
        /// The client's name.
        name: String,
        /// Folder for NAME.crt, NAME.key and ca.crt (replaced if present) [default: ./NAME].
        #[arg(long, value_name = "DIR")]
        cert_out: Option<PathBuf>,
        /// Validity of the new certificate, in days.
        #[arg(long, default_value_t = DEFAULT_CERT_DAYS)]
        days: u32,
    },
}

/// Arguments of `govbox client add`.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// The client's name: [a-z0-9][a-z0-9._-]{0,62}.
    name: String,
    /// The models it may use, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Requests per minute [default: no limit].
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per day [default: no limit].
    #[arg(long)]
    tokens_per_day: Option<u64>,
    /// Folder for NAME.crt, NAME.key and ca.crt [default: ./NAME].
    #[arg(long, value_name = "DIR")]
    cert_out: Option<PathBuf>,
    /// Also make a bearer token. It is printed once and stored only as a hash.
    #[arg(long)]
    token: bool,
    /// Validity of the certificate, in days.
    #[arg(long, default_value_t = DEFAULT_CERT_DAYS)]
    days: u32,
}

/// Runs `govbox client ...`.
pub fn run(state: Option<&Path>, cmd: ClientCommand) -> Result<()> {
    let state = state_dir(state);
    match cmd {
        ClientCommand::Add(args) => add(&state, args),
        ClientCommand::List { json } => list(&state, json),
        ClientCommand::Revoke { name } => {
            let record = ClientStore::open(&state)?.revoke(&name)?;
            println!(
                "revoked client '{}': certificate {} and any token are refused from now on",
                record.name,
                record.cert_sha256.as_deref().unwrap_or("-")
            );
            Ok(())
        }
        ClientCommand::Renew { name, cert_out, days } => {
            let name = ClientName::parse(&name)?;
            let dir = cert_out.unwrap_or_else(|| PathBuf::from(name.as_str()));
            let issued = ClientStore::open(&state)?.renew(name.as_str(), days)?;
            let files = write_client_bundle(&dir, &issued, Overwrite::Replace).with_context(|| {
                format!("client '{name}' was renewed but its files could not be written; run renew again")
            })?;
            println!("renewed client '{name}'");
            print_issued(&issued.record, &files);
            Ok(())
        }
    }
}

fn add(state: &Path, args: AddArgs) -> Result<()> {
    let name = ClientName::parse(&args.name)?;
    let dir = args.cert_out.unwrap_or_else(|| PathBuf::from(name.as_str()));
    // Refuse before touching the store, so a refusal leaves no client without its files.
    for f in [format!("{name}.crt"), format!("{name}.key"), "ca.crt".to_string()] {
        let p = dir.join(f);
        if p.symlink_metadata().is_ok() {
            bail!("adding client '{name}': refusing to overwrite {}: the file already exists", p.display());
        }
    }
    let store = ClientStore::open(state)?;
    let issued = store.add(NewClient {
        name: name.clone(),
        models: args.models,
        rpm: args.rpm,
        tokens_per_day: args.tokens_per_day,
        cert_days: args.days,
        with_token: args.token,
    })?;
    let files = write_client_bundle(&dir, &issued, Overwrite::Refuse).with_context(|| {
        format!(
            "client '{name}' was added but its certificate files could not be written; \
             issue new ones with `govbox client renew {name} --cert-out DIR`"
        )
    })?;
    println!("added client '{name}'");
    print_issued(&issued.record, &files);
    if let Some(token) = &issued.token {
        println!("bearer token (shown only now; the box keeps only its hash):");
        println!("{}", token.expose());
    }
    Ok(())
}

fn print_issued(record: &ClientRecord, files: &[PathBuf; 3]) {
    let [crt, key, ca] = files;
    println!("  certificate   {}", crt.display());
    println!("  private key   {} (mode 0600)", key.display());
    println!("  box CA        {}", ca.display());
    println!("  cert sha256   {}", record.cert_sha256.as_deref().unwrap_or("-"));
    println!("  expires       {}", format_unix(record.cert_not_after));
}

fn list(state: &Path, json: bool) -> Result<()> {
    let clients = ClientStore::open(state)?.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&clients)?);
        return Ok(());
    }
    if clients.is_empty() {
        println!("no clients; add one with `govbox client add NAME`");
        return Ok(());
    }
    println!(
        "{:<24} {:<20} {:>6} {:>12} {:<5} {:<7} {:<20} CERT SHA256",
        "NAME", "MODELS", "RPM", "TOKENS/DAY", "TOKEN", "REVOKED", "CERT EXPIRES"
    );
    let or_any = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    for c in clients {
        let models = if c.models.is_empty() { "(all)".to_string() } else { c.models.join(",") };
        println!(
            "{:<24} {:<20} {:>6} {:>12} {:<5} {:<7} {:<20} {}",
            c.name,
            models,
            or_any(c.rpm.map(|v| v.to_string())),
            or_any(c.tokens_per_day.map(|v| v.to_string())),
            if c.token_sha256.is_some() { "yes" } else { "no" },
            if c.revoked { "yes" } else { "no" },
            format_unix(c.cert_not_after),
            c.cert_sha256.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}
