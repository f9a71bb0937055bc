//! `govbox client`: the intranet applications allowed to call the box.
//!
//! Who writes the state: while govboxd runs it holds the store's lock, so every command goes
//! through its admin socket; when the socket does not answer, the command works on the state
//! folder directly. Both ways print the same output and write the same files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use govbox_admin::protocol::{self as admin, ClientAdd, ClientAnswer, ClientList, ClientRenew, ClientRevoke};
use govbox_images::ModelStore;
use govbox_provisioning::{
    CertInfo, ClientName, ClientRecord, ClientStore, DEFAULT_CERT_DAYS, IssuedCert, IssuedClient, NewClient, Overwrite,
    ProvisionError, Scope, StatePaths, check_known_models, write_client_bundle,
};

use crate::admin::{AdminClient, AdminError};
use crate::offline::OfflineAudit;
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
    /// The models it may use, comma-separated, or `all` for every present and future model.
    /// Required for an inference client.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// What it may call, comma-separated: `inference` (the OpenAI API), `metrics` (/metrics).
    #[arg(long = "scope", value_delimiter = ',', default_value = "inference")]
    scopes: Vec<Scope>,
    /// Requests per minute [default: govboxd's [serving] default_client_rpm].
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per day [default: no limit].
    #[arg(long)]
    tokens_per_day: Option<u64>,
    /// Requests running at once [default: none of its own; freed slots go first to clients below
    /// their fair share, half of [serving] max_concurrent].
    #[arg(long)]
    max_concurrent: Option<u32>,
    /// Folder for NAME.crt, NAME.key and ca.crt [default: ./NAME].
    #[arg(long, value_name = "DIR")]
    cert_out: Option<PathBuf>,
    /// Also make a bearer token. It is printed once and stored only as a hash.
    #[arg(long)]
    token: bool,
    /// Validity of the certificate, in days.
    #[arg(long, default_value_t = DEFAULT_CERT_DAYS)]
    days: u32,
    /// Let its completions prompts write control tokens (`<|im_start|>`) as text, for an
    /// application that builds raw prompts itself. Off: such text stays plain text.
    #[arg(long)]
    allow_special_tokens: bool,
    /// The content-safety library its requests get (`govbox policy list`), or `off` for none
    /// (recorded with the client in the audit log); default: govboxd's `[policy] default`.
    #[arg(long, value_name = "NAME", value_parser = policy_name)]
    policy: Option<String>,
}

/// A library name as `policy.toml` allows it, or `off`.
fn policy_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if ok { Ok(s.to_string()) } else { Err("a library name is 1-64 of a-z, 0-9, '-', '_', '.' (or 'off')".into()) }
}

/// Runs `govbox client ...`: through the daemon at `socket` when it answers, else offline.
pub fn run(state: Option<&Path>, socket: &Path, audit_socket: Option<&Path>, cmd: ClientCommand) -> Result<()> {
    let auditd = crate::audit::auditd_socket(audit_socket, state);
    let auditd = auditd.as_deref();
    let state = state_dir(state);
    if let ClientCommand::Add(args) = &cmd {
        // Refuse before touching the store, so a refusal leaves no client without its files.
        let name = ClientName::parse(&args.name)?;
        refuse_existing_bundle(&name, &bundle_dir(&name, args.cert_out.as_deref()))?;
    }
    match AdminClient::connect(socket) {
        Ok(conn) => online(conn, cmd),
        Err(e) if !e.is_unreachable() => Err(e.into()),
        Err(unreachable) => offline(&state, auditd, cmd).map_err(|e| {
            if is_store_locked(&e) {
                anyhow!(
                    "the state store is locked by a running govboxd, but its admin socket {} does not answer: {}",
                    socket.display(),
                    unreachable.reason()
                )
            } else if matches!(unreachable, AdminError::PermissionDenied { .. }) {
                // A socket we may not open most likely belongs to a running daemon: that is the
                // error to fix, whatever the offline attempt ran into.
                anyhow!("{unreachable}; working on the state folder directly failed too: {e:#}")
            } else {
                e
            }
        }),
    }
}

fn is_store_locked(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<ProvisionError>(), Some(ProvisionError::StoreLocked { .. })))
}

fn bundle_dir(name: &ClientName, cert_out: Option<&Path>) -> PathBuf {
    cert_out.map_or_else(|| PathBuf::from(name.as_str()), Path::to_path_buf)
}

fn refuse_existing_bundle(name: &ClientName, dir: &Path) -> Result<()> {
    for f in [format!("{name}.crt"), format!("{name}.key"), "ca.crt".to_string()] {
        let p = dir.join(f);
        if p.symlink_metadata().is_ok() {
            bail!("adding client '{name}': refusing to overwrite {}: the file already exists", p.display());
        }
    }
    Ok(())
}

/// The state folder directly: govboxd is stopped (else the store is locked). Each change is
/// recorded in the audit log as govboxd records it; the log is opened first, so a change that
/// could not be recorded is not made.
fn offline(state: &Path, auditd: Option<&Path>, cmd: ClientCommand) -> Result<()> {
    if let ClientCommand::List { json } = cmd {
        return print_list(&ClientStore::open(state)?.list()?, json);
    }
    let audit = OfflineAudit::open(state, auditd)?;
    let r = offline_change(state, &audit, cmd);
    let closed = audit.close();
    r.and(closed)
}

fn offline_change(state: &Path, audit: &OfflineAudit, cmd: ClientCommand) -> Result<()> {
    match cmd {
        ClientCommand::Add(args) => {
            let name = ClientName::parse(&args.name)?;
            let dir = bundle_dir(&name, args.cert_out.as_deref());
            // The model store is the box's list of models while govboxd is stopped (no folder yet:
            // nothing imported; not created here, so that a refused add changes nothing).
            let paths = StatePaths::new(state);
            let stored = match paths.models_dir().is_dir() {
                true => ModelStore::open(&paths).and_then(|s| s.list()),
                false => Ok(Vec::new()),
            };
            match stored {
                Ok(stored) => {
                    let mut known: Vec<String> = stored.into_iter().map(|m| m.name).collect();
                    known.sort();
                    check_known_models(name.as_str(), &args.models, &known)?;
                    if known.is_empty() && !args.models.is_empty() {
                        eprintln!("note: no model is imported yet, so the model names were not checked");
                    }
                }
                Err(e) => eprintln!("note: the model names were not checked: the model store cannot be read: {e}"),
            }
            let request = add_request(&name, &args);
            let store = ClientStore::open(state)?;
            let mut issued = None;
            audit.act(&request, || {
                let i = store.add(NewClient {
                    name: name.clone(),
                    models: args.models,
                    scopes: args.scopes,
                    rpm: args.rpm,
                    tokens_per_day: args.tokens_per_day,
                    max_concurrent: args.max_concurrent,
                    cert_days: args.days,
                    with_token: args.token,
                    allow_special_tokens: args.allow_special_tokens,
                    policy: args.policy,
                })?;
                let a = answer_of(&i);
                issued = Some(i);
                Ok(a)
            })?;
            let issued = issued.ok_or_else(|| anyhow!("client_add gave no client"))?;
            let token = issued.token.as_ref().map(|t| t.expose().to_string());
            finish_add(&name, &dir, &issued, token.as_deref())
        }
        ClientCommand::List { json } => print_list(&ClientStore::open(state)?.list()?, json),
        ClientCommand::Revoke { name } => {
            let request = ClientRevoke { name };
            let store = ClientStore::open(state)?;
            let a = audit.act(&request, || Ok(ClientAnswer { client: store.revoke(&request.name)? }))?;
            print_revoked(&a.client);
            Ok(())
        }
        ClientCommand::Renew { name, cert_out, days } => {
            let name = ClientName::parse(&name)?;
            let request = ClientRenew { name: name.as_str().to_string(), cert_days: Some(days) };
            let store = ClientStore::open(state)?;
            let mut issued = None;
            audit.act(&request, || {
                let i = store.renew(name.as_str(), days)?;
                let a = answer_of(&i);
                issued = Some(i);
                Ok(a)
            })?;
            let issued = issued.ok_or_else(|| anyhow!("client_renew gave no client"))?;
            finish_renew(&name, &bundle_dir(&name, cert_out.as_deref()), &issued)
        }
    }
}

/// The request `govbox client add` makes, through govboxd or on the state folder.
fn add_request(name: &ClientName, args: &AddArgs) -> ClientAdd {
    ClientAdd {
        name: name.as_str().to_string(),
        models: args.models.clone(),
        scopes: args.scopes.clone(),
        rpm: args.rpm,
        tokens_per_day: args.tokens_per_day,
        max_concurrent: args.max_concurrent,
        cert_days: Some(args.days),
        token: args.token,
        allow_special_tokens: args.allow_special_tokens,
        policy: args.policy.clone(),
    }
}

/// Through the running daemon's admin socket.
fn online(mut conn: AdminClient, cmd: ClientCommand) -> Result<()> {
    match cmd {
        ClientCommand::Add(args) => {
            let name = ClientName::parse(&args.name)?;
            let dir = bundle_dir(&name, args.cert_out.as_deref());
            let answer = conn.call(add_request(&name, &args))?;
            let (issued, token) = issued_from_answer(answer)?;
            finish_add(&name, &dir, &issued, token.as_deref())
        }
        ClientCommand::List { json } => print_list(&conn.call(ClientList {})?.clients, json),
        ClientCommand::Revoke { name } => {
            print_revoked(&conn.call(ClientRevoke { name })?.client);
            Ok(())
        }
        ClientCommand::Renew { name, cert_out, days } => {
            let name = ClientName::parse(&name)?;
            let answer = conn.call(ClientRenew { name: name.as_str().to_string(), cert_days: Some(days) })?;
            let (issued, _) = issued_from_answer(answer)?;
            finish_renew(&name, &bundle_dir(&name, cert_out.as_deref()), &issued)
        }
    }
}

/// The `client_add` / `client_renew` answer as the store's own [`IssuedClient`] (without the
/// token, which the store's type cannot be built from text) and the token.
fn issued_from_answer(a: admin::IssuedClient) -> Result<(IssuedClient, Option<String>)> {
    let info = CertInfo::from_pem(&a.cert_pem, "the certificate govboxd issued")?;
    let issued = IssuedClient {
        record: a.client,
        cert: IssuedCert { cert_pem: a.cert_pem, key_pem: a.key_pem, info },
        ca_pem: a.ca_pem,
        token: None,
    };
    Ok((issued, a.token))
}

/// The store's [`IssuedClient`] as the protocol's answer (what the audit entries are made from).
fn answer_of(i: &IssuedClient) -> admin::IssuedClient {
    admin::IssuedClient {
        client: i.record.clone(),
        cert_pem: i.cert.cert_pem.clone(),
        key_pem: String::new(),
        ca_pem: String::new(),
        token: None,
    }
}

fn finish_add(name: &ClientName, dir: &Path, issued: &IssuedClient, token: Option<&str>) -> Result<()> {
    let files = write_client_bundle(dir, issued, Overwrite::Refuse).with_context(|| {
        format!(
            "client '{name}' was added but its certificate files could not be written; \
             issue new ones with `govbox client renew {name} --cert-out DIR`"
        )
    })?;
    println!("added client '{name}'");
    print_issued(&issued.record, &files);
    if let Some(token) = token {
        println!("bearer token (shown only now; the box keeps only its hash):");
        println!("{token}");
    }
    Ok(())
}

fn finish_renew(name: &ClientName, dir: &Path, issued: &IssuedClient) -> Result<()> {
    let files = write_client_bundle(dir, issued, Overwrite::Replace)
        .with_context(|| format!("client '{name}' was renewed but its files could not be written; run renew again"))?;
    println!("renewed client '{name}'");
    print_issued(&issued.record, &files);
    Ok(())
}

fn print_revoked(record: &ClientRecord) {
    println!(
        "revoked client '{}': certificate {} and any token are refused from now on",
        record.name,
        record.cert_sha256.as_deref().unwrap_or("-")
    );
}

fn print_issued(record: &ClientRecord, files: &[PathBuf; 3]) {
    let [crt, key, ca] = files;
    println!("  certificate   {}", crt.display());
    println!("  private key   {} (mode 0600)", key.display());
    println!("  box CA        {}", ca.display());
    println!("  scopes        {}", scopes_text(record));
    println!("  cert sha256   {}", record.cert_sha256.as_deref().unwrap_or("-"));
    println!("  expires       {}", format_unix(record.cert_not_after));
}

fn print_list(clients: &[ClientRecord], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&clients)?);
        return Ok(());
    }
    if clients.is_empty() {
        println!("no clients; add one with `govbox client add NAME`");
        return Ok(());
    }
    println!(
        "{:<24} {:<20} {:<17} {:>6} {:>12} {:<5} {:<7} {:<29} CERT SHA256",
        "NAME", "MODELS", "SCOPES", "RPM", "TOKENS/DAY", "TOKEN", "REVOKED", "CERT EXPIRES"
    );
    let or_any = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for c in clients {
        let models = match (c.has_scope(Scope::Inference), c.models.is_empty()) {
            (false, _) => "-".to_string(),
            (true, true) => "(all)".to_string(),
            (true, false) => c.models.join(","),
        };
        // An expired certificate is refused (401) until `govbox client renew`.
        let expires = match c.cert_expired(now) {
            true => format!("{} EXPIRED", format_unix(c.cert_not_after)),
            false => format_unix(c.cert_not_after),
        };
        println!(
            "{:<24} {:<20} {:<17} {:>6} {:>12} {:<5} {:<7} {:<29} {}",
            c.name,
            models,
            scopes_text(c),
            c.rpm.map_or_else(|| "default".to_string(), |v| v.to_string()),
            or_any(c.tokens_per_day.map(|v| v.to_string())),
            if c.token_sha256.is_some() { "yes" } else { "no" },
            if c.revoked { "yes" } else { "no" },
            expires,
            c.cert_sha256.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

fn scopes_text(c: &ClientRecord) -> String {
    c.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}
