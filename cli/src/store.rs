//! `govbox model import|list|activate|rollback|remove`: the box's signed model store.
//!
//! While govboxd runs, each command goes through its admin socket, so that activation swaps the
//! served model at once. When the socket does not answer, the command works on `STATE/models`
//! directly (the store has its own lock); an offline import runs the package's self-test on the
//! CPU backend before the version can be served.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use govbox_admin::events::Audited;
use govbox_admin::protocol::{
    ModelActivate, ModelDisable, ModelEnable, ModelImport, ModelImported, ModelList, ModelListAnswer, ModelRemove,
    ModelRemoved, ModelRollback, ModelSwitched, ModelToggled, SelfTestPassed, StoredModel,
};
use govbox_audit::Event;
use govbox_drivers::cpu::CpuBackend;
use govbox_engine::{Engine, EngineOptions};
use govbox_images::{ImportOptions, ModelRecord, ModelStore, PackageError, SelfTest, SelfTestOutput};
use govbox_provisioning::{StatePaths, TrustRoot};
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
                    None => self.change(&req, |store, paths, audit| {
                        let r = import_offline(store, paths, &file, activate);
                        if let Err(e) = &r {
                            record_refusal(audit, &file, e);
                        }
                        r
                    })?,
                };
                print_imported(&a);
            }
            StoreCommand::List { json } => {
                let a = match self.conn.as_mut() {
                    Some(conn) => conn.call(ModelList {})?,
                    None => {
                        let models = self.store()?.1.list_labelled()?;
                        ModelListAnswer {
                            models: models.into_iter().map(|record| StoredModel::new(record, None)).collect(),
                        }
                    }
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
                    None => self.change(&req, |store, _, _| {
                        let before = active_version(store, &req.name)?;
                        let v = store.activate(&req.name, req.version.as_deref())?;
                        activated(store, &req.name, v, before)
                    })?,
                };
                print_switched(&a);
            }
            StoreCommand::Rollback { name } => {
                let req = ModelRollback { name };
                let a = match self.conn.as_mut() {
                    Some(conn) => conn.call(req)?,
                    None => self.change(&req, |store, _, _| {
                        let before = active_version(store, &req.name)?;
                        let v = store.rollback(&req.name)?;
                        activated(store, &req.name, v, before)
                    })?,
                };
                print_switched(&a);
            }
            StoreCommand::Remove { spec } => {
                let (name, version) = split_spec(&spec);
                let version = version.ok_or_else(|| anyhow!("give the version to remove as NAME@VERSION"))?;
                let req = ModelRemove { name: name.to_string(), version: version.to_string() };
                let a = match self.conn.as_mut() {
                    Some(conn) => conn.call(req)?,
                    None => self.change(&req, |store, _, _| {
                        let digest = store.remove(&req.name, &req.version)?;
                        Ok(ModelRemoved { name: req.name.clone(), version: req.version.clone(), digest })
                    })?,
                };
                println!("removed {}@{}", a.name, a.version);
            }
            StoreCommand::Disable { name } => {
                let req = ModelDisable { name };
                let a = match self.conn.as_mut() {
                    Some(conn) => conn.call(req)?,
                    None => self.change(&req, |store, _, _| toggled(store.set_disabled(&req.name, true)?))?,
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
                    None => self.change(&req, |store, _, _| toggled(store.set_disabled(&req.name, false)?))?,
                };
                println!("{}: enabled; serving version {}", a.name, a.active.as_deref().unwrap_or("(none active)"));
            }
        }
        Ok(())
    }

    /// The state folder's model store (govboxd is stopped).
    fn store(&self) -> Result<(StatePaths, ModelStore)> {
        let paths = StatePaths::new(&self.state);
        if !paths.root_json().exists() {
            bail!(
                "{} is not a provisioned state folder (no trust/root.json); run `govbox provision` first",
                self.state.display()
            );
        }
        let store = ModelStore::open(&paths)?;
        Ok((paths, store))
    }

    /// Makes a change on the state folder and records it as govboxd would. The audit log is
    /// opened first: a change that could not be recorded is refused, not made.
    fn change<C: Audited>(
        &self,
        req: &C,
        change: impl FnOnce(&ModelStore, &StatePaths, &OfflineAudit) -> Result<C::Answer>,
    ) -> Result<C::Answer> {
        let (paths, store) = self.store()?;
        let audit = OfflineAudit::open(&self.state, self.auditd.as_deref())?;
        let r = audit.act(req, || change(&store, &paths, &audit));
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

/// Records a refused import in the audit log, as govboxd records one refused through its socket.
/// The import has failed either way: a record that cannot be written is reported beside it.
fn record_refusal(audit: &OfflineAudit, file: &Path, e: &anyhow::Error) {
    // The codes govboxd gives the same refusals.
    let code = e
        .chain()
        .find_map(|c| {
            c.downcast_ref::<PackageError>()
                .map(PackageError::code)
                .or_else(|| c.downcast_ref::<govbox_engine::EngineError>().map(|_| "model_load_failed"))
        })
        .unwrap_or("refused");
    let refused = Event::PackageRefused {
        actor: audit.actor().to_string(),
        file: file.display().to_string(),
        code: code.to_string(),
        reason: format!("{e:#}"),
    };
    if let Err(a) = audit.append(refused) {
        eprintln!("warning: the refused import could not be recorded in the audit log: {a:#}");
    }
}

fn toggled(r: ModelRecord) -> Result<ModelToggled> {
    Ok(ModelToggled { name: r.name, disabled: r.disabled, active: r.active })
}

fn active_version(store: &ModelStore, name: &str) -> Result<Option<String>> {
    Ok(store.list()?.into_iter().find(|m| m.name == name).and_then(|m| m.active))
}

fn activated(store: &ModelStore, name: &str, version: String, previous: Option<String>) -> Result<ModelSwitched> {
    let digest =
        store.active_models()?.into_iter().find(|a| a.name == name).map(|a| a.digest_label()).unwrap_or_default();
    Ok(ModelSwitched { name: name.to_string(), version, previous, digest })
}

fn import_offline(store: &ModelStore, paths: &StatePaths, file: &Path, activate: bool) -> Result<ModelImported> {
    let root = TrustRoot::load(&paths.root_json())?;
    let total = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?.len();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("verifying and importing");
    let t = Instant::now();
    let imported = store.import_file(file, &root, &ImportOptions { activate }, &mut |done, _| bar.set_position(done));
    bar.finish_and_clear();
    let imported = imported?;
    let secs = t.elapsed().as_secs_f64();
    // Loaded here as govboxd loads it, so that a model it could not serve (an architecture it does
    // not implement, a missing tensor) is refused now rather than at its next start.
    let kind = imported.manifest.model.as_ref().map(|m| m.kind);
    let engine = match load_cpu(&imported.load_path, kind) {
        Ok(e) => e,
        Err(e) => {
            store.discard(&imported.digest).context("undoing the import of a model that does not load")?;
            return Err(e.context(format!(
                "package '{} {}': the model cannot be loaded; the version was removed from the store",
                imported.name, imported.version
            )));
        }
    };
    let mut selftest = None;
    if let Some(test) = imported.manifest.model.as_ref().and_then(|m| m.selftest.as_ref()) {
        match check_selftest(&engine, test) {
            Ok(v) => selftest = Some(v),
            Err(e) => {
                store.discard(&imported.digest).context("undoing the import after the failed self-test")?;
                bail!(
                    "package '{} {}': self-test failed on the CPU backend: {e:#}; the version was not activated and was removed from the store",
                    imported.name,
                    imported.version
                );
            }
        }
    }
    let active =
        store.list()?.iter().any(|m| m.name == imported.name && m.active.as_deref() == Some(&imported.version));
    Ok(ModelImported {
        digest: imported.digest_label(),
        name: imported.name,
        version: imported.version,
        size: imported.size,
        active,
        secs,
        mb_per_s: imported.size as f64 / 1e6 / secs.max(1e-9),
        selftest,
    })
}

/// Loads a package's model as its manifest's kind says (a `rerank` causal LM is a yes/no reranker).
fn load_cpu(load_path: &Path, kind: Option<govbox_images::ModelKind>) -> Result<Engine> {
    let backend = Arc::new(CpuBackend::new(0)?);
    let what = crate::package::load_as(kind);
    Ok(Engine::load_as(load_path, backend, &EngineOptions::self_test(), what)?)
}

fn check_selftest(engine: &Engine, test: &SelfTest) -> Result<SelfTestPassed> {
    let report = match test {
        SelfTest::Chat(c) => test.compare(&SelfTestOutput::Logits(&engine.last_logits(&c.token_ids)?)),
        SelfTest::Embedding(e) => {
            let texts: Vec<&str> = e.texts.iter().map(String::as_str).collect();
            test.compare(&SelfTestOutput::Embeddings(&engine.embed(&texts)?.vectors))
        }
        SelfTest::Rerank(r) => {
            let docs: Vec<&str> = r.documents.iter().map(String::as_str).collect();
            test.compare(&SelfTestOutput::RerankLogits(&engine.rerank(&r.query, &docs, true)?.logits))
        }
    }?;
    Ok(SelfTestPassed { checked: report.checked, max_abs_diff: report.max_abs_diff })
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
