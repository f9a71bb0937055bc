//! `govbox policy ...`: the box's content-safety libraries, which arrive as signed policy
//! packages (`.gbp`, signed by the trust root's `policy` role) the way models do.
//!
//! `build` compiles a library folder (so that a library that does not compile is never signed)
//! and signs it; `verify` checks a package offline. `import`, `activate`, `rollback` and `list`
//! go through govboxd's admin socket while it runs, so that the served library changes at once
//! for new requests; when it does not run they work on `STATE/policies` directly. Every step is
//! recorded in the audit log, and so is a refused import. `eval` and `eval-verify` (the test
//! banks through the API, and their signed reports) live in `policy_eval`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use govbox_admin::protocol::{
    ModelSwitched, PolicyActivate, PolicyImport, PolicyImported, PolicyList, PolicyListAnswer, PolicyRollback,
};
use govbox_audit::Event;
use govbox_images::{ImportOptions, ModelStore, PackageBuilder, PackageError, PolicyInfo};
use govbox_policy::Policy;
use govbox_provisioning::{SigningKey, StatePaths, TrustRoot};

use crate::admin::AdminClient;
use crate::offline::OfflineAudit;
use crate::package::{RoleArg, VerifyArgs, byte_bar, flat};
use crate::provision::state_dir;
use crate::store::split_spec;

/// `govbox policy build`.
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The library folder: `policy.toml` and the lists and banks it names.
    library: PathBuf,
    /// Package version [default: the library's own `version`].
    #[arg(long)]
    version: Option<String>,
    /// A signing key of the `policy` role (PKCS#8 PEM from `govbox keygen`); repeat for a threshold.
    #[arg(long = "sign", value_name = "KEY", required = true)]
    sign: Vec<PathBuf>,
    /// The package file to write (atomically).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: PathBuf,
}

/// `govbox policy ...`.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Compile a library folder and build a signed policy package (.gbp) from it.
    #[command(disable_version_flag = true)]
    Build(BuildArgs),
    /// Check a policy package's signatures against the `policy` role and every file's SHA-256.
    Verify {
        /// The package file.
        file: PathBuf,
        /// A trust root (root.json) [default: STATE/trust/root.json].
        #[arg(long, value_name = "ROOT_JSON")]
        trust: Option<PathBuf>,
    },
    /// Verify a policy package and add it to the box (through govboxd when it runs).
    Import {
        /// The package file.
        file: PathBuf,
        /// Serve this version at once (the first version of a library always is).
        #[arg(long)]
        activate: bool,
    },
    /// The imported libraries: name, version, digest and which version is active.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve NAME at VERSION (or its highest version) to new requests.
    Activate {
        /// NAME or NAME@VERSION.
        spec: String,
    },
    /// Serve the previously active version of NAME again.
    Rollback {
        /// The library name.
        name: String,
    },
    /// Run a test bank through a box's API as a client, judge the refusal rates against the
    /// package's thresholds, and write a signed report (exit 1 when a threshold is missed).
    Eval(crate::policy_eval::EvalArgs),
    /// Check a signed eval report offline against its signer's public key, and recount its figures.
    EvalVerify(crate::policy_eval::EvalVerifyArgs),
}

/// Runs one `govbox policy` command.
pub fn run(state: Option<&Path>, socket: &Path, audit_socket: Option<&Path>, cmd: PolicyCommand) -> Result<ExitCode> {
    let auditd = crate::audit::auditd_socket(audit_socket, state);
    let dir = state_dir(state);
    let mut conn = match &cmd {
        PolicyCommand::Eval(a) => return crate::policy_eval::eval(state, a),
        PolicyCommand::EvalVerify(a) => return crate::policy_eval::verify(a),
        PolicyCommand::Build(a) => return build(a).map(|()| ExitCode::SUCCESS),
        PolicyCommand::Verify { file, trust } => {
            let args = VerifyArgs { file: file.clone(), trust: trust.clone(), key: None, role: RoleArg::Policy };
            return crate::package::run(state, crate::package::PackageCommand::Verify(args))
                .map(|()| ExitCode::SUCCESS);
        }
        _ => match AdminClient::connect(socket) {
            Ok(c) => Some(c),
            Err(e) if !e.is_unreachable() => return Err(e.into()),
            Err(_) => None,
        },
    };
    let offline = |req: &dyn Fn(&ModelStore, &StatePaths, &OfflineAudit) -> Result<()>| -> Result<()> {
        let (paths, store) = open_store(&dir)?;
        let audit = OfflineAudit::open(&dir, auditd.as_deref())?;
        let r = req(&store, &paths, &audit);
        let closed = audit.close();
        r.and(closed)
    };
    match cmd {
        PolicyCommand::Import { file, activate } => {
            let abs = std::path::absolute(&file).with_context(|| format!("resolving {}", file.display()))?;
            let req = PolicyImport { path: abs.to_string_lossy().into_owned(), activate };
            let print = |a: &PolicyImported| {
                println!(
                    "imported {} {} ({}), {} keywords{}",
                    a.name,
                    a.version,
                    a.digest,
                    a.keywords,
                    if a.active { "; now active" } else { "; not active" }
                );
            };
            match conn.as_mut() {
                Some(c) => print(&c.call(req)?),
                None => offline(&|store, paths, audit| {
                    let a = import_offline(store, paths, &file, activate);
                    if let Err(e) = &a {
                        let code = e.chain().find_map(|c| c.downcast_ref::<PackageError>().map(PackageError::code));
                        let refused = Event::PackageRefused {
                            actor: audit.actor().to_string(),
                            file: file.display().to_string(),
                            code: code.unwrap_or("policy_invalid").to_string(),
                            reason: format!("{e:#}"),
                        };
                        if let Err(w) = audit.append(refused) {
                            eprintln!("warning: the refused import could not be recorded in the audit log: {w:#}");
                        }
                    }
                    let a = audit.act(&req, || a)?;
                    print(&a);
                    Ok(())
                })?,
            }
        }
        PolicyCommand::List { json } => {
            let a = match conn.as_mut() {
                Some(c) => c.call(PolicyList {})?,
                None => PolicyListAnswer { policies: open_store(&dir)?.1.list_labelled()? },
            };
            match json {
                true => println!("{}", serde_json::to_string_pretty(&a)?),
                false => print!("{}", render_list(&a)),
            }
        }
        PolicyCommand::Activate { spec } => {
            let (name, version) = split_spec(&spec);
            let req = PolicyActivate { name: name.to_string(), version: version.map(str::to_string) };
            match conn.as_mut() {
                Some(c) => print_switched(&c.call(req)?),
                None => offline(&|store, _, audit| {
                    let a = audit.act(&req, || {
                        let v = store.activate(&req.name, req.version.as_deref())?;
                        switched(store, &req.name, v)
                    })?;
                    print_switched(&a);
                    Ok(())
                })?,
            }
        }
        PolicyCommand::Rollback { name } => {
            let req = PolicyRollback { name };
            match conn.as_mut() {
                Some(c) => print_switched(&c.call(req)?),
                None => offline(&|store, _, audit| {
                    let a = audit.act(&req, || {
                        let v = store.rollback(&req.name)?;
                        switched(store, &req.name, v)
                    })?;
                    print_switched(&a);
                    Ok(())
                })?,
            }
        }
        PolicyCommand::Build(_)
        | PolicyCommand::Verify { .. }
        | PolicyCommand::Eval(_)
        | PolicyCommand::EvalVerify(_) => unreachable!("handled before"),
    }
    Ok(ExitCode::SUCCESS)
}

fn build(a: &BuildArgs) -> Result<()> {
    let keys: Vec<SigningKey> = a
        .sign
        .iter()
        .map(|p| SigningKey::load_pem(p).with_context(|| format!("loading {}", p.display())))
        .collect::<Result<_>>()?;
    let library =
        Policy::load_dir(&a.library).with_context(|| format!("compiling the library in {}", a.library.display()))?;
    let info = PolicyInfo {
        format: govbox_policy::FORMAT.to_string(),
        categories: library.categories().iter().map(|c| c.id.clone()).collect(),
        keywords: library.keyword_count() as u64,
    };
    let version = a.version.as_deref().unwrap_or(library.version());
    let mut b = PackageBuilder::policy(library.name(), version, &a.library, info).map_err(flat)?;
    let bar = byte_bar("writing");
    let key_refs: Vec<&SigningKey> = keys.iter().collect();
    let built = b.write(&a.out, &key_refs, &mut |d, t| {
        bar.set_length(t);
        bar.set_position(d);
    });
    bar.finish_and_clear();
    let built = built.map_err(flat)?;
    println!("built        {} ({} files)", a.out.display(), built.manifest.files.len());
    println!(
        "package      {} {}, digest {}",
        built.manifest.name,
        built.manifest.version,
        built.manifest.digest_label(&built.digest)
    );
    println!(
        "library      {} categories ({}), {} keywords, longest match {} characters",
        library.categories().len(),
        library.categories().iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", "),
        library.keyword_count(),
        library.longest()
    );
    for k in &keys {
        println!("signed by    {}", k.public_key().keyid());
    }
    Ok(())
}

fn print_switched(a: &ModelSwitched) {
    println!("{}: now {} ({})", a.name, a.version, a.digest);
}

/// The table of `policy list`, with whole digests (what audit entries name).
fn render_list(a: &PolicyListAnswer) -> String {
    if a.policies.is_empty() {
        return "no policy libraries imported; import a signed package with `govbox policy import FILE.gbp`\n".into();
    }
    let mut out = format!("{:<28} {:<12} {:<6} DIGEST\n", "NAME", "VERSION", "ACTIVE");
    for m in &a.policies {
        for v in &m.versions {
            out.push_str(&format!(
                "{:<28} {:<12} {:<6} {}\n",
                m.name,
                v.version,
                if m.active.as_deref() == Some(v.version.as_str()) { "*" } else { "" },
                v.digest,
            ));
        }
    }
    out
}

/// The state folder's policy store (govboxd is stopped).
fn open_store(state: &Path) -> Result<(StatePaths, ModelStore)> {
    let paths = StatePaths::new(state);
    if !paths.root_json().exists() {
        bail!(
            "{} is not a provisioned state folder (no trust/root.json); run `govbox provision` first",
            state.display()
        );
    }
    let store = ModelStore::open_policies(&paths)?;
    Ok((paths, store))
}

fn import_offline(store: &ModelStore, paths: &StatePaths, file: &Path, activate: bool) -> Result<PolicyImported> {
    let root = TrustRoot::load(&paths.root_json())?;
    let imported = store.import_file(file, &root, &ImportOptions { activate }, &mut |_, _| {})?;
    // Compiled here as govboxd compiles it, so that a library it could not serve is refused now.
    let library = match Policy::load_dir(&imported.load_path) {
        Ok(l) => l,
        Err(e) => {
            store.discard(&imported.digest).context("undoing the import of a library that does not compile")?;
            bail!(
                "package '{} {}': the library does not compile: {e}; the version was removed",
                imported.name,
                imported.version
            );
        }
    };
    Ok(PolicyImported {
        digest: imported.digest_label(),
        name: imported.name,
        version: imported.version,
        keywords: library.keyword_count(),
        active: imported.activated,
        already_present: imported.already_present,
    })
}

fn switched(store: &ModelStore, name: &str, version: String) -> Result<ModelSwitched> {
    let digest =
        store.active_models()?.into_iter().find(|a| a.name == name).map(|a| a.digest_label()).unwrap_or_default();
    Ok(ModelSwitched { name: name.to_string(), version, previous: None, digest })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::render_list;

    #[test]
    fn the_list_marks_the_active_version_and_shows_whole_digests() {
        // Answers carry digest labels; an SM3 package keeps its own.
        let d = format!("sm3-{}", "ab".repeat(32));
        let v = |version: &str| serde_json::json!({"version": version, "digest": d, "size": 1, "imported": "x"});
        let list = serde_json::from_value(serde_json::json!({"policies": [{"name": "baseline", "active": "2026.12.1",
            "history": [], "versions": [v("2026.12.1"), v("2026.11.0")]}]}))
        .unwrap();
        let text = render_list(&list);
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows[1].contains(" * ") && rows[1].ends_with(&format!(" {d}")), "{text}");
        assert!(!rows[2].contains(" * "), "{text}");
    }
}
