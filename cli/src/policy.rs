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
use govbox_audit::{AuditLog, AuditOptions, Event, PackageAction};
use govbox_images::{ImportOptions, ModelStore, PackageBuilder, PackageError, PolicyInfo};
use govbox_policy::Policy;
use govbox_provisioning::{SigningKey, StatePaths, TrustRoot};
use serde_json::{Value, json};

use crate::admin::AdminClient;
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
pub fn run(state: Option<&Path>, socket: &Path, cmd: PolicyCommand) -> Result<ExitCode> {
    let request = match &cmd {
        PolicyCommand::Eval(a) => return crate::policy_eval::eval(state, a),
        PolicyCommand::EvalVerify(a) => return crate::policy_eval::verify(a),
        PolicyCommand::Build(a) => return build(a).map(|()| ExitCode::SUCCESS),
        PolicyCommand::Verify { file, trust } => {
            let args = VerifyArgs { file: file.clone(), trust: trust.clone(), key: None, role: RoleArg::Policy };
            return crate::package::run(state, crate::package::PackageCommand::Verify(args))
                .map(|()| ExitCode::SUCCESS);
        }
        PolicyCommand::Import { file, activate } => {
            let abs = std::path::absolute(file).with_context(|| format!("resolving {}", file.display()))?;
            json!({"cmd": "policy_import", "path": abs.to_string_lossy(), "activate": activate})
        }
        PolicyCommand::List { .. } => json!({"cmd": "policy_list"}),
        PolicyCommand::Activate { spec } => {
            let (name, version) = split_spec(spec);
            json!({"cmd": "policy_activate", "name": name, "version": version})
        }
        PolicyCommand::Rollback { name } => json!({"cmd": "policy_rollback", "name": name}),
    };
    let answer = match AdminClient::connect(socket) {
        Ok(mut conn) => conn.request(&request)?,
        Err(e) if !e.is_unreachable() => return Err(e.into()),
        Err(_) => offline(&state_dir(state), &cmd)?,
    };
    print_answer(&cmd, &answer);
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
    println!("package      {} {}, digest sha256-{}", built.manifest.name, built.manifest.version, built.digest);
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

fn print_answer(cmd: &PolicyCommand, a: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    match cmd {
        PolicyCommand::Import { .. } => println!(
            "imported {} {} ({}), {} keywords{}",
            s(&a["name"]),
            s(&a["version"]),
            s(&a["digest"]),
            a["keywords"],
            if a["active"].as_bool() == Some(true) { "; now active" } else { "; not active" }
        ),
        PolicyCommand::List { json: true } => println!("{}", serde_json::to_string_pretty(a).unwrap_or_default()),
        PolicyCommand::List { json: false } => print!("{}", render_list(a)),
        PolicyCommand::Activate { .. } | PolicyCommand::Rollback { .. } => {
            println!("{}: now {} ({})", s(&a["name"]), s(&a["version"]), s(&a["digest"]));
        }
        PolicyCommand::Build(_)
        | PolicyCommand::Verify { .. }
        | PolicyCommand::Eval(_)
        | PolicyCommand::EvalVerify(_) => {}
    }
}

/// The table of `policy list`, with whole digests (what audit entries name).
fn render_list(a: &Value) -> String {
    let libs = a["policies"].as_array().cloned().unwrap_or_default();
    if libs.is_empty() {
        return "no policy libraries imported; import a signed package with `govbox policy import FILE.gbp`\n".into();
    }
    let mut out = format!("{:<28} {:<12} {:<6} DIGEST\n", "NAME", "VERSION", "ACTIVE");
    for m in &libs {
        let active = m["active"].as_str();
        for v in m["versions"].as_array().into_iter().flatten() {
            let version = v["version"].as_str().unwrap_or("?");
            out.push_str(&format!(
                "{:<28} {:<12} {:<6} sha256-{}\n",
                m["name"].as_str().unwrap_or("?"),
                version,
                if active == Some(version) { "*" } else { "" },
                v["digest"].as_str().unwrap_or("?"),
            ));
        }
    }
    out
}

/// Works on `STATE/policies` directly, recording each step in the audit log.
fn offline(state: &Path, cmd: &PolicyCommand) -> Result<Value> {
    let paths = StatePaths::new(state);
    if !paths.root_json().exists() {
        bail!(
            "{} is not a provisioned state folder (no trust/root.json); run `govbox provision` first",
            state.display()
        );
    }
    let store = ModelStore::open_policies(&paths)?;
    match cmd {
        PolicyCommand::Import { file, activate } => {
            let r = import_offline(&store, &paths, file, *activate);
            if let Err(e) = &r {
                let code = e.chain().find_map(|c| c.downcast_ref::<PackageError>().map(PackageError::code));
                record(&paths, |actor| Event::PackageRefused {
                    actor,
                    file: file.display().to_string(),
                    code: code.unwrap_or("policy_invalid").to_string(),
                    reason: format!("{e:#}"),
                });
            }
            r
        }
        PolicyCommand::List { .. } => Ok(json!({"policies": store.list()?})),
        PolicyCommand::Activate { spec } => {
            let (name, version) = split_spec(spec);
            let v = store.activate(name, version)?;
            switched(&store, &paths, name, &v, PackageAction::Activated)
        }
        PolicyCommand::Rollback { name } => {
            let v = store.rollback(name)?;
            switched(&store, &paths, name, &v, PackageAction::RolledBack)
        }
        PolicyCommand::Build(_)
        | PolicyCommand::Verify { .. }
        | PolicyCommand::Eval(_)
        | PolicyCommand::EvalVerify(_) => unreachable!("handled before"),
    }
}

fn import_offline(store: &ModelStore, paths: &StatePaths, file: &Path, activate: bool) -> Result<Value> {
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
    let digest = format!("sha256-{}", imported.digest);
    let step = |action| step_event(action, &imported.name, &imported.version, &digest);
    if !imported.already_present {
        record(paths, step(PackageAction::Imported));
    }
    if imported.activated {
        record(paths, step(PackageAction::Activated));
    }
    Ok(json!({
        "name": imported.name, "version": imported.version, "digest": digest,
        "keywords": library.keyword_count(), "active": imported.activated,
    }))
}

fn switched(store: &ModelStore, paths: &StatePaths, name: &str, version: &str, action: PackageAction) -> Result<Value> {
    let digest = store.active_models()?.into_iter().find(|a| a.name == name).map(|a| a.digest).unwrap_or_default();
    let digest = format!("sha256-{digest}");
    record(paths, step_event(action, name, version, &digest));
    Ok(json!({"name": name, "version": version, "digest": digest}))
}

/// The audit entry of one step on a policy package, for [`record`] to complete with the actor.
fn step_event(action: PackageAction, name: &str, version: &str, digest: &str) -> impl FnOnce(String) -> Event {
    let (name, version, digest) = (name.to_string(), version.to_string(), digest.to_string());
    move |actor| Event::PolicyPackage { action, actor, name, version, digest }
}

/// Appends one entry to the audit log; a step that happened but could not be recorded is
/// reported beside it.
fn record(paths: &StatePaths, event: impl FnOnce(String) -> Event) {
    let write = || -> Result<()> {
        let log = AuditLog::open_state(paths, AuditOptions::default())?;
        log.append_blocking(event(crate::audit::local_actor()?))?;
        log.close()?;
        Ok(())
    };
    if let Err(e) = write() {
        eprintln!("warning: this step could not be recorded in the audit log: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::render_list;

    #[test]
    fn the_list_marks_the_active_version_and_shows_whole_digests() {
        let d = "ab".repeat(32);
        let list = serde_json::json!({"policies": [{"name": "baseline", "active": "2026.12.1",
            "versions": [{"version": "2026.12.1", "digest": d}, {"version": "2026.11.0", "digest": d}]}]});
        let text = render_list(&list);
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows[1].contains(" * ") && rows[1].ends_with(&format!("sha256-{d}")), "{text}");
        assert!(!rows[2].contains(" * "), "{text}");
    }
}
