//! Serving signed model packages: re-verifying them at start-up, loading the active versions, and
//! the admin socket's model commands (import, list, activate, rollback, remove).
//!
//! The package format, its checks and the store are the images crate's; this module only decides
//! when to call them, runs the self-test on the daemon's own backend, and swaps engines in the
//! [`ModelTable`] it was given. A swap replaces one `Arc`: requests that already hold the old
//! model finish on it, new requests get the new one.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use govbox_admin::protocol::{
    ModelImported, ModelListAnswer, ModelRemoved, ModelSwitched, ModelToggled, SelfTestPassed, StoredModel,
};
use govbox_engine::Engine;
use govbox_images::{ActiveModel, ImportOptions, ModelStore, PackageError, SelfTest, SelfTestOutput, SelfTestReport};
use govbox_provisioning::{StatePaths, TrustRoot};
use sd_notify::NotifyState;

use crate::auditing::Gate;
use crate::config::ModelEntry;
use crate::models::{LoadedModel, Loader, ModelLoadError, ModelSource, ModelTable};
use crate::systemd;

/// How much more start-up time each `EXTEND_TIMEOUT_USEC=` asks systemd for while hashing.
const EXTEND: Duration = Duration::from_secs(30);
/// How often, at most, hashing progress goes to `STATUS=`.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A package left out at start-up: what it is, and why.
pub type NotServed = Box<(String, ServeError)>;

/// The daemon's handle on the model store, and on the served models it swaps. One model command
/// runs at a time.
#[derive(Debug)]
pub struct Packages {
    store: ModelStore,
    paths: StatePaths,
    busy: Mutex<()>,
    /// The served models, which commands change.
    models: Arc<ModelTable>,
    /// How a version is loaded onto the daemon's backend.
    loader: Loader,
}

/// Why a package could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The store or the package refused.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The trust root could not be read.
    #[error("reading the trust root: {0}")]
    Trust(#[from] govbox_provisioning::ProvisionError),
    /// The engine could not load the verified files.
    #[error(transparent)]
    Load(#[from] ModelLoadError),
    /// The change's audit entry could not be written, so it was undone (fail-closed).
    #[error("{what}: not done, since its audit entry cannot be written ({source})")]
    Unrecorded {
        /// What was asked (`importing model 'qwen 1.2.0'`).
        what: String,
        /// Why the entry was not written.
        source: govbox_audit::AuditError,
    },
    /// The self-test ran and its numbers differ.
    #[error(
        "package '{package}': self-test failed on the {backend} backend: {reason}; the version was not activated and was removed from the store"
    )]
    SelfTest {
        /// `name version`.
        package: String,
        /// The backend it ran on.
        backend: String,
        /// The mismatch, with the difference.
        reason: String,
    },
}

impl ServeError {
    /// A stable short code.
    pub fn code(&self) -> &'static str {
        match self {
            ServeError::Package(e) => e.code(),
            ServeError::Trust(e) => e.code(),
            ServeError::Load(_) => "model_load_failed",
            ServeError::SelfTest { .. } => "selftest_mismatch",
            ServeError::Unrecorded { .. } => "audit_unavailable",
        }
    }
}

/// Runs a package's self-test on `engine`.
pub fn run_selftest(engine: &Engine, test: &SelfTest) -> Result<SelfTestReport, String> {
    match test {
        SelfTest::Chat(c) => {
            let logits = engine.last_logits(&c.token_ids).map_err(|e| format!("running the model: {e}"))?;
            test.compare(&SelfTestOutput::Logits(&logits)).map_err(|m| m.to_string())
        }
        SelfTest::Embedding(e) => {
            let texts: Vec<&str> = e.texts.iter().map(String::as_str).collect();
            let out = engine.embed(&texts).map_err(|e| format!("running the model: {e}"))?;
            test.compare(&SelfTestOutput::Embeddings(&out.vectors)).map_err(|m| m.to_string())
        }
        SelfTest::Rerank(r) => {
            let docs: Vec<&str> = r.documents.iter().map(String::as_str).collect();
            let out = engine.rerank(&r.query, &docs, true).map_err(|e| format!("running the model: {e}"))?;
            test.compare(&SelfTestOutput::RerankLogits(&out.logits)).map_err(|m| m.to_string())
        }
    }
}

impl Packages {
    /// Opens the store at `STATE/models` and removes what interrupted imports left. Versions are
    /// loaded with `loader` and served through `models`.
    pub fn open(state_dir: &Path, models: Arc<ModelTable>, loader: Loader) -> Result<Self, ServeError> {
        let paths = StatePaths::new(state_dir);
        let store = ModelStore::open(&paths)?;
        let rec = store.recover()?;
        for p in rec.staging_removed.iter().chain(&rec.orphans_removed) {
            log::warn!("model store: removed {} left by an interrupted import", p.display());
        }
        Ok(Packages { store, paths, busy: Mutex::new(()), models, loader })
    }

    /// How this store's versions are loaded (for the config's dev folders too).
    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    fn trust(&self) -> Result<TrustRoot, ServeError> {
        Ok(TrustRoot::load(&self.paths.root_json())?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start-up: checks every active package again (signatures always; payload hashes too with
    /// `full_payload`), telling systemd how far hashing has got, then loads each. A package that
    /// fails its checks is not served; the others are.
    pub fn load_active(&self, full_payload: bool) -> Vec<Result<LoadedModel, NotServed>> {
        let _busy = self.lock();
        let active = match self.store.active_models().and_then(|a| Ok((a, self.disabled_names()?))) {
            // A disabled model is not served (`govbox model disable`).
            Ok((a, disabled)) => a.into_iter().filter(|m| !disabled.contains(&m.name)).collect::<Vec<_>>(),
            Err(e) => return vec![Err(Box::new(("model store".into(), e.into())))],
        };
        let trust = match self.trust() {
            Ok(t) => t,
            Err(e) => return vec![Err(Box::new(("trust root".into(), e)))],
        };
        active
            .into_iter()
            .map(|a| {
                let label = format!("{} {}", a.name, a.version);
                self.check_and_load(&a, &trust, full_payload).map_err(|e| Box::new((label, e)))
            })
            .collect()
    }

    fn check_and_load(
        &self,
        a: &ActiveModel,
        trust: &TrustRoot,
        full_payload: bool,
    ) -> Result<LoadedModel, ServeError> {
        let what = if full_payload { "signatures and payload" } else { "signatures" };
        systemd::status(&format!("verifying {what} of model '{}' {}", a.name, a.version));
        let t = Instant::now();
        let mut last = Instant::now();
        let mut progress = |done: u64, total: u64| {
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                let pct = (done * 100).checked_div(total).unwrap_or(100);
                systemd::notify(&[
                    NotifyState::ExtendTimeoutUsec(u32::try_from(EXTEND.as_micros()).unwrap_or(u32::MAX)),
                    NotifyState::Status(&format!("verifying model '{}' {}: {pct}% hashed", a.name, a.version)),
                ]);
            }
        };
        let r = self.store.reverify(&a.digest, trust, full_payload, &mut progress)?;
        let secs = t.elapsed().as_secs_f64();
        log::info!(
            "model '{}' {} {}: signed by {} key(s); {} files, {:.1} MB hashed in {secs:.1} s",
            a.name,
            a.version,
            short(&a.digest_label()),
            r.signers.len(),
            r.files_checked,
            r.bytes_hashed as f64 / 1e6
        );
        self.load(a)
    }

    /// `model_import`: verifies and stores a package, runs its self-test on this backend, records
    /// the import through `gate` (undoing it when that fails), and serves it if it became the
    /// active version.
    pub fn import(
        &self,
        path: &Path,
        activate: bool,
        gate: &Gate<'_, ModelImported>,
    ) -> Result<ModelImported, ServeError> {
        let _busy = self.lock();
        let trust = self.trust()?;
        let t = Instant::now();
        let imported = self.store.import_file(path, &trust, &ImportOptions { activate }, &mut |_, _| {})?;
        let secs = t.elapsed().as_secs_f64();
        let active_now = self.is_active(&imported.name, &imported.version)?;
        let disabled = self.disabled_names()?.contains(&imported.name);
        let selftest = imported.manifest.model.as_ref().and_then(|m| m.selftest.clone());
        // The self-test and the swap need the engine; load it once for both.
        let needs_engine = selftest.is_some() || active_now;
        let loaded = if needs_engine {
            let a = ActiveModel {
                name: imported.name.clone(),
                version: imported.version.clone(),
                digest: imported.digest.clone(),
                load_path: imported.load_path.clone(),
                manifest: imported.manifest.clone(),
            };
            match self.load(&a) {
                Ok(m) => Some(m),
                Err(e) => {
                    self.discard(&imported.digest);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let mut selftest_passed = None;
        if let (Some(test), Some(m)) = (&selftest, &loaded) {
            match run_selftest(&m.engine, test) {
                Ok(rep) => {
                    log::info!(
                        "model '{}' {}: self-test passed ({} values, largest difference {:.2e})",
                        imported.name,
                        imported.version,
                        rep.checked,
                        rep.max_abs_diff
                    );
                    selftest_passed = Some(SelfTestPassed { checked: rep.checked, max_abs_diff: rep.max_abs_diff });
                }
                Err(reason) => {
                    self.discard(&imported.digest);
                    return Err(ServeError::SelfTest {
                        package: format!("{} {}", imported.name, imported.version),
                        backend: self.loader.backend.info().name,
                        reason,
                    });
                }
            }
        }
        let answer = ModelImported {
            name: imported.name.clone(),
            version: imported.version.clone(),
            digest: imported.digest_label(),
            size: imported.size,
            active: active_now,
            secs,
            mb_per_s: imported.size as f64 / 1e6 / secs.max(1e-9),
            selftest: selftest_passed,
        };
        if let Err(source) = gate(&answer) {
            // A version that was stored before is left as it was; a new one is taken out again.
            if !imported.already_present {
                self.discard(&imported.digest);
            }
            let what = format!("importing model '{} {}'", imported.name, imported.version);
            return Err(ServeError::Unrecorded { what, source });
        }
        if active_now
            && !disabled
            && let Some(m) = loaded
        {
            self.swap_in(m);
        }
        Ok(answer)
    }

    fn discard(&self, digest: &str) {
        if let Err(e) = self.store.discard(digest) {
            log::error!("model store: undoing the import of {}: {e}", short(&self.store.digest_label(digest)));
        }
    }

    fn disabled_names(&self) -> Result<Vec<String>, PackageError> {
        Ok(self.store.list()?.into_iter().filter(|m| m.disabled).map(|m| m.name).collect())
    }

    /// `model_disable` and `model_enable`: records the choice in the store, then takes the model
    /// out of the served set at once (requests already running finish), or loads its active
    /// version and serves it again. An enable whose model does not load leaves it disabled.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<ModelToggled, ServeError> {
        let _busy = self.lock();
        let record = self.store.set_disabled(name, disabled)?;
        if disabled {
            if self.models.remove(name).is_some() {
                log::info!("model '{name}': disabled; no longer served (running requests finish)");
            }
        } else if record.active.is_some() {
            let loaded = self.active(name).and_then(|a| self.load(&a));
            match loaded {
                Ok(m) => self.swap_in(m),
                Err(e) => {
                    if let Err(e2) = self.store.set_disabled(name, true) {
                        log::error!("model '{name}': keeping it disabled after a failed load: {e2}");
                    }
                    return Err(e);
                }
            }
        }
        Ok(ModelToggled { name: record.name, disabled: record.disabled, active: record.active })
    }

    fn is_active(&self, name: &str, version: &str) -> Result<bool, ServeError> {
        Ok(self.store.list()?.iter().any(|m| m.name == name && m.active.as_deref() == Some(version)))
    }

    fn active(&self, name: &str) -> Result<ActiveModel, ServeError> {
        self.store.active_models()?.into_iter().find(|a| a.name == name).ok_or_else(|| {
            ServeError::Package(PackageError::NotFound {
                action: format!("serving model '{name}'"),
                what: "an active version".into(),
            })
        })
    }

    /// The names of the stored models.
    pub fn names(&self) -> Result<Vec<String>, ServeError> {
        Ok(self.store.list()?.into_iter().map(|m| m.name).collect())
    }

    /// `model_list`: every stored version, with which one is active and which one is served.
    pub fn list(&self) -> Result<ModelListAnswer, ServeError> {
        let served = self.models.get();
        let models = self
            .store
            .list_labelled()?
            .into_iter()
            .map(|record| {
                let serving = served
                    .as_ref()
                    .and_then(|s| s.iter().find(|l| l.name == record.name).map(|l| l.source.version().to_string()));
                StoredModel::new(record, serving)
            })
            .collect();
        Ok(ModelListAnswer { models })
    }

    /// `model_activate` and `model_rollback`: loads the chosen version first, so that a version
    /// that does not load never becomes active, then records it in the store and through `gate`,
    /// and swaps it in. When either fails, the version active before is active again.
    pub fn switch(
        &self,
        name: &str,
        target: Switch<'_>,
        gate: &Gate<'_, ModelSwitched>,
    ) -> Result<ModelSwitched, ServeError> {
        let _busy = self.lock();
        let record = self.store.list()?.into_iter().find(|m| m.name == name);
        let disabled = record.as_ref().is_some_and(|m| m.disabled);
        let before = record.and_then(|m| m.active);
        let version = match target {
            Switch::Activate(v) => self.store.activate(name, v)?,
            Switch::Rollback => self.store.rollback(name)?,
        };
        let a = self.active(name)?;
        let answer =
            ModelSwitched { name: name.to_string(), version, previous: before.clone(), digest: a.digest_label() };
        // A disabled model's new version is recorded, and served when the model is enabled again.
        let loaded = match (!disabled).then(|| self.load(&a)).transpose() {
            Ok(m) => m,
            Err(e) => {
                self.restore_active(name, before.as_deref());
                return Err(e);
            }
        };
        if let Err(source) = gate(&answer) {
            self.restore_active(name, before.as_deref());
            return Err(ServeError::Unrecorded { what: format!("switching model '{name}'"), source });
        }
        if let Some(m) = loaded {
            self.swap_in(m);
        }
        Ok(answer)
    }

    /// Makes `before` the active version of `name` again after a switch that did not happen.
    fn restore_active(&self, name: &str, before: Option<&str>) {
        if let Some(b) = before
            && let Err(e) = self.store.activate(name, Some(b))
        {
            log::error!("model '{name}': restoring version {b} as active after a failed switch: {e}");
        }
    }

    /// `model_remove`: removes a version that is not active, once `gate` has recorded it.
    pub fn remove(&self, name: &str, version: &str, gate: &Gate<'_, ModelRemoved>) -> Result<ModelRemoved, ServeError> {
        let _busy = self.lock();
        // The digest the entry names. A version that is unknown or active is left to the store to
        // refuse, with nothing recorded.
        let stored = self.store.list()?.into_iter().find(|m| m.name == name);
        let removable = stored
            .filter(|m| m.active.as_deref() != Some(version))
            .and_then(|m| m.versions.into_iter().find(|v| v.version == version));
        if let Some(v) = removable {
            let answer = removed(name, version, self.store.digest_label(&v.digest));
            gate(&answer).map_err(|source| ServeError::Unrecorded {
                what: format!("removing model '{name} {version}'"),
                source,
            })?;
        }
        let label = self.store.remove(name, version)?;
        Ok(removed(name, version, label))
    }

    fn load(&self, a: &ActiveModel) -> Result<LoadedModel, ServeError> {
        let entry = ModelEntry { name: a.name.clone(), path: a.load_path.clone() };
        let source = ModelSource::Package { version: a.version.clone(), digest: a.digest_label() };
        let what = match a.manifest.model.as_ref().map(|m| m.kind) {
            Some(govbox_images::ModelKind::Rerank) => govbox_engine::LoadAs::Reranker,
            _ => govbox_engine::LoadAs::Detected,
        };
        Ok(self.loader.load(&entry, source, what)?)
    }

    fn swap_in(&self, m: LoadedModel) {
        let (name, version) = (m.name.clone(), m.source.version().to_string());
        match self.models.replace(Arc::new(m)) {
            Some(old) => log::info!(
                "model '{name}': now serving version {version} (was {}); running requests finish on the old one",
                old.source.version()
            ),
            None => log::info!("model '{name}': now serving version {version}"),
        }
    }
}

/// Which version [`Packages::switch`] goes to.
#[derive(Debug, Clone, Copy)]
pub enum Switch<'a> {
    /// This version, or the highest one.
    Activate(Option<&'a str>),
    /// The previously active one.
    Rollback,
}

/// `digest` is the label (`sha256-<hex>` or `sm3-<hex>`, [`ModelStore::digest_label`]).
fn removed(name: &str, version: &str, digest: String) -> ModelRemoved {
    ModelRemoved { name: name.to_string(), version: version.to_string(), digest }
}

/// A digest label (`sm3-<hex>`) with its hex cut to 12 digits, for log lines.
fn short(label: &str) -> String {
    let (alg, hex) = label.split_once('-').unwrap_or(("", label));
    let hex = hex.get(..12).unwrap_or(hex);
    if alg.is_empty() { hex.to_string() } else { format!("{alg}-{hex}") }
}
