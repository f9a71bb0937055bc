//! `govbox policy ...`: the box's content-safety libraries, which arrive as signed policy
//! packages (`.gbp`, signed by the trust root's `policy` role) the way models do.
//!
//! `build` compiles a library folder (so that a library that does not compile is never signed)
//! and signs it; `verify` checks a package offline. `import`, `activate`, `rollback` and `list`
//! go through govboxd's admin socket while it runs, so that the served library changes at once
//! for new requests; when it does not run they work on `STATE/policies` directly, with govboxd's
//! own operations (`govbox_admin::ops::policies`). Every step is
//! recorded in the audit log, and so is a refused import. `eval` and `eval-verify` (the test
//! banks through the API, and their signed reports) live in `policy_eval`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use govbox_admin::events::Audited;
use govbox_admin::ops::models::Offline;
use govbox_admin::ops::policies::PolicyOps;
use govbox_admin::ops::{Gate, Switch};
use govbox_admin::protocol::{
    ModelSwitched, PolicyActivate, PolicyImport, PolicyImported, PolicyList, PolicyListAnswer, PolicyRollback,
};
use govbox_images::{PackageBuilder, PolicyInfo};
use govbox_policy::Policy;
use govbox_provisioning::SigningKey;

use crate::admin::AdminClient;
use crate::offline::OfflineAudit;
use crate::package::{RoleArg, VerifyArgs, byte_bar, flat};
use crate::provision::state_dir;
use crate::store::{provisioned, split_spec};

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
    let ops = || -> Result<PolicyOps<Offline>> { Ok(PolicyOps::open(provisioned(&dir)?, Offline)?) };
    // A change on the state folder with govboxd's operation, recorded as govboxd would: the audit
    // log is opened first, so that a change that could not be recorded is refused, not made.
    fn offline<C: Audited>(
        ops: PolicyOps<Offline>,
        audit: OfflineAudit,
        req: &C,
        change: impl FnOnce(&PolicyOps<Offline>, &OfflineAudit, &Gate<'_, C::Answer>) -> Result<C::Answer>,
    ) -> Result<C::Answer> {
        let r = audit.act_gated(req, |gate| change(&ops, &audit, gate));
        let closed = audit.close();
        let a = r?;
        closed?;
        Ok(a)
    }
    let audit = || OfflineAudit::open(&dir, auditd.as_deref());
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
                None => print(&offline(ops()?, audit()?, &req, |ops, audit, gate| {
                    let a = ops.import(&file, activate, gate);
                    if let Err(e) = &a {
                        let refused = govbox_admin::events::refused(audit.actor(), &file, e.code(), e);
                        if let Err(w) = audit.append(refused) {
                            eprintln!("warning: the refused import could not be recorded in the audit log: {w:#}");
                        }
                    }
                    Ok(a?)
                })?),
            }
        }
        PolicyCommand::List { json } => {
            let a = match conn.as_mut() {
                Some(c) => c.call(PolicyList {})?,
                None => ops()?.list()?,
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
                None => print_switched(&offline(ops()?, audit()?, &req, |ops, _, gate| {
                    Ok(ops.switch(&req.name, Switch::Activate(req.version.as_deref()), gate)?)
                })?),
            }
        }
        PolicyCommand::Rollback { name } => {
            let req = PolicyRollback { name };
            match conn.as_mut() {
                Some(c) => print_switched(&c.call(req)?),
                None => print_switched(&offline(ops()?, audit()?, &req, |ops, _, gate| {
                    Ok(ops.switch(&req.name, Switch::Rollback, gate)?)
                })?),
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
