//! `govbox model import|list|activate|rollback|remove`: the box's signed model store.
//!
//! While govboxd runs, each command goes through its admin socket, so that activation swaps the
//! served model at once. When the socket does not answer, the command works on `STATE/models`
//! directly (the store has its own lock), with govboxd's own operations (`govbox_admin::ops`):
//! an offline import runs the package's self-test on the CPU backend before the version can be
//! served.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use govbox_admin::events::Audited;
use govbox_admin::ops::models::{ModelOps, ModelOpsError, Offline};
use govbox_admin::ops::{Gate, Switch};
use govbox_admin::protocol::{
    ModelActivate, ModelDisable, ModelEnable, ModelImport, ModelImported, ModelList, ModelListAnswer, ModelRemove,
    ModelRollback, ModelSwitched,
};
use govbox_provisioning::StatePaths;
use indicatif::{ProgressBar, ProgressStyle};

use crate::admin::AdminClient;
use crate::offline::OfflineAudit;
use crate::provision::state_dir;

/// An import of tens of GB through the daemon may take minutes.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The store commands (variants of `govbox model`).
#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Verify a signed model package (.gbx) and add it to the box (through govboxd when it runs).
    Import {
        /// The package file.
        file: PathBuf,
        /// Serve it at once (the first version of a model always is).
        #[arg(long)]
        activate: bool,
    },
    /// The imported models: name, version, digest, size and which version is active.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve NAME at VERSION (or its highest version), with no restart.
    Activate {
        /// NAME or NAME@VERSION.
        spec: String,
    },
    /// Serve the previously active version of NAME again.
    Rollback {
        /// The model name.
        name: String,
    },
    /// Remove NAME@VERSION from the box (never the active version).
    Remove {
        /// NAME@VERSION.
        spec: String,
    },
    /// Take NAME out of service: requests for it answer 404 until `enable` (running ones finish).
    Disable {
        /// The model name.
        name: String,
    },
    /// Serve NAME's active version again after `disable`.
    Enable {
        /// The model name.
        name: String,
    },
    /// Check stored versions at rest as govboxd does at start: the signatures against the box's
    /// trust root, then every payload byte against the signed digests (piece digests on every
    /// core where the package has them). Reads only; works while govboxd runs. Exits non-zero if
    /// a version fails.
    Verify {
        /// NAME or NAME@VERSION [default: every stored version].
        spec: Option<String>,
    },
}

/// `NAME@VERSION` or `NAME`.
pub(crate) fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (spec, None),
    }
}

/// Runs a store command: through govboxd when its socket answers, else on the state folder, with
/// the same audit entries.
pub fn run(state: Option<&Path>, socket: &Path, audit_socket: Option<&Path>, cmd: StoreCommand) -> Result<()> {
    let auditd = crate::audit::auditd_socket(audit_socket, state);
    let box_ = Box_ {
        state: state_dir(state),
        auditd,
        conn: match AdminClient::connect(socket) {
            Ok(c) => Some(c),
            Err(e) if !e.is_unreachable() => return Err(e.into()),
            Err(_) => None,
        },
    };
    box_.run(cmd)
}

/// Where a store command goes: govboxd's socket, or the state folder.
struct Box_ {
    state: PathBuf,
    auditd: Option<PathBuf>,
    conn: Option<AdminClient>,
}

impl Box_ {
    fn run(mut self, cmd: StoreCommand) -> Result<()> {
        match cmd {
            StoreCommand::Import { file, activate } => {
                let abs = std::path::absolute(&file).with_context(|| format!("resolving {}", file.display()))?;
                let req = ModelImport { path: abs.to_string_lossy().into_owned(), activate };
                let a = match self.conn.as_mut() {
                    Some(conn) => {
                        conn.set_read_timeout(IMPORT_TIMEOUT);
                        let s = ProgressBar::new_spinner();
                        s.set_message("govboxd is verifying and importing the package");
                        s.enable_steady_tick(Duration::from_millis(120));
                        let r = conn.call(req);
                        s.finish_and_clear();
                        r?
                    }
                    None => self.change(&req, |ops, audit, gate| {
                        let r = import_offline(ops, &file, activate, gate);
                        if let Err(e) = &r {
                            let refused = govbox_admin::events::refused(audit.actor(), &file, e.code(), e);
                            if let Err(w) = audit.append(refused) {
                                eprintln!("warning: the refused import could not be recorded in the audit log: {w:#}");
                            }
                        }
                        Ok(r?)
                    })?,
                };
                print_imported(&a);
            }
            StoreCommand::List { json } => {
                let a = match self.conn.as_mut() {
                    Some(conn) => conn.call(ModelList {})?,
                    None => self.ops()?.list()?,
                };
                match json {
                    true => println!("{}", serde_json::to_string_pretty(&a)?),
                    false => print!("{}", render_list(&a)),
                }
            }
            StoreCommand::Activate { spec } => {
                let (name, version) = split_spec(&spec);
                let req = ModelActivate { name: name.to_string(), version: version.map(str::to_string) };
                let a = match self.conn.as_mut() {
                    Some(conn) => conn.call(req)?,
                    None => self.change(&req, |ops, _, gate| {
                        Ok(ops.switch(&req.name, Switch::Activate(req.version.as_deref()), gate)?)
                    })?,
                };
                print_switched(&a);
            }
            StoreCommand::Rollback { name } => {
                let req = ModelRollback { name };
                let a = match self.conn.as_mut() {
                    Some(conn) => conn.call(req)?,
                    None => self.change(&req, |ops, _, gate| Ok(ops.switch(&req.name, Switch::Rollback, gate)?))?,
                };
                print_switched(&a);
            }
            StoreCommand::Remove { spec } => {
                let (name, version) = split_spec(&spec);
                let version = version.ok_or_else(|| anyhow!("give the version to remove as NAME@VERSION"))?;
                let req = ModelRemove { name: name.to_string(), version: version.to_string() };
                let a = match self.conn.as_mut() {
                    Some(conn) => conn.call(req)?,
                    None => self.change(&req, |ops, _, gate| Ok(ops.remove(&req.name, &req.version, gate)?))?,
                };
                println!("removed {}@{}", a.name, a.version);
            }
            StoreCommand::Disable { name } => {
                let req = ModelDisable { name };
                let a = match self.conn.as_mut() {
                    Some(conn) => conn.call(req)?,
                    None => self.change(&req, |ops, _, _| Ok(ops.set_disabled(&req.name, true)?))?,
                };
                println!(
                    "{}: disabled; requests for it are answered 404 until `govbox model enable {}`",
                    a.name, a.name
                );
            }
            StoreCommand::Enable { name } => {
                let req = ModelEnable { name };
                let a = match self.conn.as_mut() {
                    Some(conn) => conn.call(req)?,
                    None => self.change(&req, |ops, _, _| Ok(ops.set_disabled(&req.name, false)?))?,
                };
                println!("{}: enabled; serving version {}", a.name, a.active.as_deref().unwrap_or("(none active)"));
            }
            StoreCommand::Verify { spec } => self.verify(spec.as_deref())?,
        }
        Ok(())
    }

    /// `govbox model verify`: re-checks the chosen stored versions, one line each.
    fn verify(&self, spec: Option<&str>) -> Result<()> {
        let ops = self.ops()?;
        let trust = ops.trust()?;
        let (name, version) = spec.map_or((None, None), |s| {
            let (n, v) = split_spec(s);
            (Some(n), v)
        });
        let mut chosen = Vec::new();
        for m in ops.store().list()? {
            for v in &m.versions {
                if name.is_none_or(|n| n == m.name) && version.is_none_or(|want| want == v.version) {
                    chosen.push((m.name.clone(), v.clone()));
                }
            }
        }
        if chosen.is_empty() {
            bail!("no stored version matches '{}'", spec.unwrap_or("*"));
        }
        let mut failed = 0;
        for (name, v) in chosen {
            let label = ops.store().digest_label(&v.digest);
            let bar = crate::package::byte_bar("hashing");
            let t = std::time::Instant::now();
            let r = ops.store().reverify(&v.digest, &trust, true, &mut crate::package::update(&bar));
            bar.finish_and_clear();
            let secs = t.elapsed().as_secs_f64();
            match r {
                Ok(r) => println!(
                    "ok      {name} {} {label}: signed by {} key(s); {} files, {:.1} MB hashed in {secs:.1} s ({:.2} GB/s)",
                    v.version,
                    r.signers.len(),
                    r.files_checked,
                    r.bytes_hashed as f64 / 1e6,
                    r.bytes_hashed as f64 / 1e9 / secs.max(1e-9)
                ),
                Err(e) => {
                    failed += 1;
                    println!("FAILED  {name} {} {label}: {e}", v.version);
                }
            }
        }
        if failed > 0 {
            bail!("{failed} stored version(s) failed the check; govboxd does not serve a version that fails it");
        }
        Ok(())
    }

    /// The state folder's model operations (govboxd is stopped).
    fn ops(&self) -> Result<ModelOps<Offline>> {
        Ok(ModelOps::open(provisioned(&self.state)?, Offline)?)
    }

    /// Makes a change on the state folder with govboxd's operation and records it as govboxd
    /// would. The audit log is opened first: a change that could not be recorded is refused, not
    /// made.
    fn change<C: Audited>(
        &self,
        req: &C,
        change: impl FnOnce(&ModelOps<Offline>, &OfflineAudit, &Gate<'_, C::Answer>) -> Result<C::Answer>,
    ) -> Result<C::Answer> {
        let ops = self.ops()?;
        let audit = OfflineAudit::open(&self.state, self.auditd.as_deref())?;
        let r = audit.act_gated(req, |gate| change(&ops, &audit, gate));
        let closed = audit.close();
        let a = r?;
        closed?;
        Ok(a)
    }
}

fn print_imported(a: &ModelImported) {
    println!(
        "imported {} {} ({}), {:.1} MB verified at {:.0} MB/s{}",
        a.name,
        a.version,
        a.digest,
        a.size as f64 / 1e6,
        a.mb_per_s,
        if a.active { "; now active" } else { "; not active" }
    );
    if let Some(t) = &a.selftest {
        println!("self-test passed: {} values, largest difference {:.2e}", t.checked, t.max_abs_diff);
    }
}

fn print_switched(a: &ModelSwitched) {
    println!("{}: now {} ({})", a.name, a.version, a.digest);
}

/// The table of `model list`. The digest is printed whole: it is what `govbox attest verify
/// --expect-model NAME@DIGEST` and an auditor compare, and a shortened one cannot be pasted there.
fn render_list(a: &ModelListAnswer) -> String {
    if a.models.is_empty() {
        return "no models imported; import a signed package with `govbox model import FILE.gbx`\n".to_string();
    }
    let mut out = format!("{:<28} {:<12} {:>10}  {:<9} DIGEST\n", "NAME", "VERSION", "SIZE", "ACTIVE");
    for m in &a.models {
        for v in &m.versions {
            out.push_str(&format!(
                "{:<28} {:<12} {:>9.1}M  {:<9} {}\n",
                m.name,
                v.version,
                v.size as f64 / 1e6,
                match (m.active.as_deref() == Some(v.version.as_str()), m.disabled) {
                    (true, false) => "*",
                    (true, true) => "*disabled",
                    (false, _) => "",
                },
                v.digest,
            ));
        }
    }
    out
}

/// The paths of `state`, once it is known to be a provisioned state folder.
pub(crate) fn provisioned(state: &Path) -> Result<StatePaths> {
    let paths = StatePaths::new(state);
    if !paths.root_json().exists() {
        bail!(
            "{} is not a provisioned state folder (no trust/root.json); run `govbox provision` first",
            state.display()
        );
    }
    Ok(paths)
}

/// `model import` on a stopped box, with a progress bar.
fn import_offline(
    ops: &ModelOps<Offline>,
    file: &Path,
    activate: bool,
    gate: &Gate<'_, ModelImported>,
) -> Result<ModelImported, ModelOpsError> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("verifying and importing");
    let r = ops.import(
        file,
        activate,
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
        gate,
    );
    bar.finish_and_clear();
    r
}

#[cfg(test)]
mod list_tests {
    #![allow(clippy::unwrap_used)]
    use super::render_list;

    #[test]
    fn the_list_shows_the_whole_digest_that_attest_verify_takes() {
        let digest = "sha256-88389fb3ee537870bd789e5a6739c6b24cbc0a76306a4c7391a4fb2131271f84";
        let list = serde_json::from_value(serde_json::json!({"models": [{"name": "smollm2", "active": "1.0.0",
            "history": [], "disabled": false,
            "versions": [{"version": "1.0.0", "digest": digest, "size": 98_362_432u64, "imported": "2026-01-01T00:00:00Z"}]}]}))
        .unwrap();
        let text = render_list(&list);
        let row = text.lines().nth(1).unwrap_or_default();
        assert!(row.starts_with("smollm2 ") && row.contains(" 1.0.0 ") && row.contains(" * "), "{text}");
        assert!(row.ends_with(&format!(" {digest}")), "{text}");
        let mut off = list;
        off.models[0].disabled = true;
        assert!(render_list(&off).lines().nth(1).unwrap_or_default().contains(" *disabled "), "{}", render_list(&off));
    }
}
