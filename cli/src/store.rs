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
use govbox_audit::{AuditLog, AuditOptions, Event};
use govbox_drivers::cpu::CpuBackend;
use govbox_engine::{Engine, EngineOptions};
use govbox_images::{ImportOptions, ModelRecord, ModelStore, PackageError, SelfTest, SelfTestOutput};
use govbox_provisioning::{StatePaths, TrustRoot};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::admin::AdminClient;
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
}

/// `NAME@VERSION` or `NAME`.
pub(crate) fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (spec, None),
    }
}

/// Runs a store command.
pub fn run(state: Option<&Path>, socket: &Path, cmd: StoreCommand) -> Result<()> {
    let state = state_dir(state);
    let request = match &cmd {
        StoreCommand::Import { file, activate } => {
            let abs = std::path::absolute(file).with_context(|| format!("resolving {}", file.display()))?;
            json!({"cmd": "model_import", "path": abs.to_string_lossy(), "activate": activate})
        }
        StoreCommand::List { .. } => json!({"cmd": "model_list"}),
        StoreCommand::Activate { spec } => {
            let (name, version) = split_spec(spec);
            json!({"cmd": "model_activate", "name": name, "version": version})
        }
        StoreCommand::Rollback { name } => json!({"cmd": "model_rollback", "name": name}),
        StoreCommand::Remove { spec } => {
            let (name, version) = split_spec(spec);
            let version = version.ok_or_else(|| anyhow!("give the version to remove as NAME@VERSION"))?;
            json!({"cmd": "model_remove", "name": name, "version": version})
        }
    };
    let answer = match AdminClient::connect(socket) {
        Ok(mut conn) => {
            let spinner = matches!(cmd, StoreCommand::Import { .. }).then(|| {
                conn.set_read_timeout(IMPORT_TIMEOUT);
                let s = ProgressBar::new_spinner();
                s.set_message("govboxd is verifying and importing the package");
                s.enable_steady_tick(Duration::from_millis(120));
                s
            });
            let r = conn.request(&request);
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            r?
        }
        Err(e) if !e.is_unreachable() => return Err(e.into()),
        Err(_) => offline(&state, &cmd)?,
    };
    print_answer(&cmd, &answer);
    Ok(())
}

fn print_answer(cmd: &StoreCommand, a: &Value) {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    match cmd {
        StoreCommand::Import { .. } => {
            println!(
                "imported {} {} ({}), {:.1} MB verified at {:.0} MB/s{}",
                s(&a["name"]),
                s(&a["version"]),
                s(&a["digest"]),
                a["size"].as_f64().unwrap_or(0.0) / 1e6,
                a["mb_per_s"].as_f64().unwrap_or(0.0),
                if a["active"].as_bool() == Some(true) { "; now active" } else { "; not active" }
            );
            if a["selftest"]["passed"].as_bool() == Some(true) {
                println!(
                    "self-test passed: {} values, largest difference {:.2e}",
                    a["selftest"]["checked"],
                    a["selftest"]["max_abs_diff"].as_f64().unwrap_or(0.0)
                );
            }
        }
        StoreCommand::List { json: true } => println!("{}", serde_json::to_string_pretty(a).unwrap_or_default()),
        StoreCommand::List { json: false } => print_list(a),
        StoreCommand::Activate { .. } | StoreCommand::Rollback { .. } => {
            println!("{}: now {} ({})", s(&a["name"]), s(&a["version"]), s(&a["digest"]));
        }
        StoreCommand::Remove { .. } => println!("removed {}@{}", s(&a["name"]), s(&a["version"])),
    }
}

fn print_list(a: &Value) {
    print!("{}", render_list(a));
}

/// The table of `model list`. The digest is printed whole: it is what `govbox attest verify
/// --expect-model NAME@DIGEST` and an auditor compare, and a shortened one cannot be pasted there.
fn render_list(a: &Value) -> String {
    let models = a["models"].as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        return "no models imported; import a signed package with `govbox model import FILE.gbx`\n".to_string();
    }
    let mut out = format!("{:<28} {:<12} {:>10}  {:<6} DIGEST\n", "NAME", "VERSION", "SIZE", "ACTIVE");
    for m in &models {
        let active = m["active"].as_str();
        for v in m["versions"].as_array().into_iter().flatten() {
            let version = v["version"].as_str().unwrap_or("?");
            out.push_str(&format!(
                "{:<28} {:<12} {:>9.1}M  {:<6} sha256-{}\n",
                m["name"].as_str().unwrap_or("?"),
                version,
                v["size"].as_f64().unwrap_or(0.0) / 1e6,
                if active == Some(version) { "*" } else { "" },
                v["digest"].as_str().unwrap_or("?"),
            ));
        }
    }
    out
}

fn records_json(records: &[ModelRecord]) -> Value {
    json!({"models": records})
}

fn offline(state: &Path, cmd: &StoreCommand) -> Result<Value> {
    let paths = StatePaths::new(state);
    if !paths.root_json().exists() {
        bail!(
            "{} is not a provisioned state folder (no trust/root.json); run `govbox provision` first",
            state.display()
        );
    }
    let store = ModelStore::open(&paths)?;
    match cmd {
        StoreCommand::Import { file, activate } => {
            let r = import_offline(&store, &paths, file, *activate);
            if let Err(e) = &r {
                record_refusal(&paths, file, e);
            }
            r
        }
        StoreCommand::List { .. } => Ok(records_json(&store.list()?)),
        StoreCommand::Activate { spec } => {
            let (name, version) = split_spec(spec);
            let v = store.activate(name, version)?;
            Ok(activated(&store, name, &v)?)
        }
        StoreCommand::Rollback { name } => {
            let v = store.rollback(name)?;
            Ok(activated(&store, name, &v)?)
        }
        StoreCommand::Remove { spec } => {
            let (name, version) = split_spec(spec);
            let version = version.ok_or_else(|| anyhow!("give the version to remove as NAME@VERSION"))?;
            store.remove(name, version)?;
            Ok(json!({"name": name, "version": version}))
        }
    }
}

/// Records a refused import in the audit log, as govboxd records one refused through its socket.
/// The import has failed either way: a record that cannot be written is reported beside it.
fn record_refusal(paths: &StatePaths, file: &Path, e: &anyhow::Error) {
    // The codes govboxd gives the same refusals.
    let code = e
        .chain()
        .find_map(|c| {
            c.downcast_ref::<PackageError>()
                .map(PackageError::code)
                .or_else(|| c.downcast_ref::<govbox_engine::EngineError>().map(|_| "model_load_failed"))
        })
        .unwrap_or("refused");
    let record = || -> Result<()> {
        let log = AuditLog::open_state(paths, AuditOptions::default())?;
        log.append_blocking(Event::PackageRefused {
            actor: crate::audit::local_actor()?,
            file: file.display().to_string(),
            code: code.to_string(),
            reason: format!("{e:#}"),
        })?;
        log.close()?;
        Ok(())
    };
    if let Err(a) = record() {
        eprintln!("warning: the refused import could not be recorded in the audit log: {a:#}");
    }
}

fn activated(store: &ModelStore, name: &str, version: &str) -> Result<Value> {
    let digest = store.active_models()?.into_iter().find(|a| a.name == name).map(|a| a.digest).unwrap_or_default();
    Ok(json!({"name": name, "version": version, "digest": format!("sha256-{digest}")}))
}

fn import_offline(store: &ModelStore, paths: &StatePaths, file: &Path, activate: bool) -> Result<Value> {
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
    let mut selftest = Value::Null;
    if let Some(test) = imported.manifest.model.as_ref().and_then(|m| m.selftest.as_ref()) {
        match check_selftest(&engine, test) {
            Ok(v) => selftest = v,
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
    Ok(json!({
        "name": imported.name, "version": imported.version, "digest": format!("sha256-{}", imported.digest),
        "size": imported.size, "active": active, "secs": secs,
        "mb_per_s": imported.size as f64 / 1e6 / secs.max(1e-9), "selftest": selftest,
    }))
}

/// Loads a package's model as its manifest's kind says (a `rerank` causal LM is a yes/no reranker).
fn load_cpu(load_path: &Path, kind: Option<govbox_images::ModelKind>) -> Result<Engine> {
    let backend = Arc::new(CpuBackend::new(0)?);
    let what = crate::package::load_as(kind);
    Ok(Engine::load_as(load_path, backend, &EngineOptions { kv_tokens: 1024, ..Default::default() }, what)?)
}

fn check_selftest(engine: &Engine, test: &SelfTest) -> Result<Value> {
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
    Ok(json!({"passed": true, "checked": report.checked, "max_abs_diff": report.max_abs_diff}))
}

#[cfg(test)]
mod list_tests {
    use super::render_list;

    #[test]
    fn the_list_shows_the_whole_digest_that_attest_verify_takes() {
        let digest = "88389fb3ee537870bd789e5a6739c6b24cbc0a76306a4c7391a4fb2131271f84";
        let list = serde_json::json!({"models": [{"name": "smollm2", "active": "1.0.0",
            "versions": [{"version": "1.0.0", "digest": digest, "size": 98_362_432.0}]}]});
        let text = render_list(&list);
        let row = text.lines().nth(1).unwrap_or_default();
        assert!(row.starts_with("smollm2 ") && row.contains(" 1.0.0 ") && row.contains(" * "), "{text}");
        assert!(row.ends_with(&format!("sha256-{digest}")), "{text}");
    }
}
