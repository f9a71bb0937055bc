//! The model store's admin operations: import (verify, store, load, self-test), activation and
//! rollback, removal, disable and enable, list. [`ModelOps`] runs each on a [`Serving`] host:
//! govboxd's loads versions onto its backend and swaps them into the served set; [`Offline`]
//! (`govbox` on a stopped box) loads an imported version on the CPU backend, to refuse one that
//! govboxd could not serve, and serves nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use govbox_drivers::cpu::CpuBackend;
use govbox_engine::{Engine, EngineOptions, LoadAs};
use govbox_images::{
    ActiveModel, ImportOptions, ModelKind, ModelStore, PackageError, SelfTest, SelfTestOutput, SelfTestReport,
};
use govbox_provisioning::{StatePaths, TrustRoot};

use super::{Gate, Switch, short};
use crate::protocol::{
    ModelImported, ModelListAnswer, ModelRemoved, ModelSwitched, ModelToggled, SelfTestPassed, StoredModel,
};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelLoadError {
    /// The engine refused the model files.
    #[error("loading model '{name}' from {}: {source}", path.display())]
    Engine {
        /// The configured name.
        name: String,
        /// The path.
        path: PathBuf,
        /// The engine's error.
        source: govbox_engine::EngineError,
    },
}

/// Why a model operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelOpsError {
    /// The store or the package refused.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The trust root could not be read.
    #[error("reading the trust root: {0}")]
    Trust(#[from] govbox_provisioning::ProvisionError),
    /// The engine could not load the verified files.
    #[error(transparent)]
    Load(#[from] ModelLoadError),
    /// The change's audit entry could not be written, so it was not made (fail-closed).
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

impl ModelOpsError {
    /// A stable short code.
    pub fn code(&self) -> &'static str {
        match self {
            ModelOpsError::Package(e) => e.code(),
            ModelOpsError::Trust(e) => e.code(),
            ModelOpsError::Load(_) => "model_load_failed",
            ModelOpsError::SelfTest { .. } => "selftest_mismatch",
            ModelOpsError::Unrecorded { .. } => "audit_unavailable",
        }
    }
}

/// Where the operations' versions are loaded, and what serves them.
pub trait Serving {
    /// A loaded version.
    type Model;
    /// Loads a stored version as this host would serve it (blocking).
    fn load(&self, a: &ActiveModel) -> Result<Self::Model, ModelLoadError>;
    /// The engine of a loaded version, for its self-test.
    fn engine<'m>(&self, m: &'m Self::Model) -> &'m Engine;
    /// The backend's name, for messages.
    fn backend(&self) -> String;
    /// Whether this host serves what it loads. One that does not (a stopped box) loads only
    /// imported versions, to check them; one that does loads what becomes active and swaps it in.
    fn serves(&self) -> bool;
    /// Serves `m` from now on in place of its name's version.
    fn serve(&self, m: Self::Model);
    /// Stops serving `name` (requests already running finish).
    fn withdraw(&self, name: &str);
    /// The version of `name` being served now, if any.
    fn serving(&self, name: &str) -> Option<String>;
}

/// How a package of `kind` is loaded: a `rerank` model may be a causal LM, scored by its yes/no
/// logits, which only the kind tells from a chat model.
pub fn load_as(kind: Option<ModelKind>) -> LoadAs {
    if kind == Some(ModelKind::Rerank) { LoadAs::Reranker } else { LoadAs::Detected }
}

/// Loads the model at `path` on the CPU backend with `threads` threads (0: all) and the
/// self-test's engine options: how a package's self-test is both recorded (`govbox package
/// build`) and checked on a stopped box.
pub fn cpu_engine(path: &Path, kind: Option<ModelKind>, threads: usize) -> Result<Engine, govbox_engine::EngineError> {
    let backend = Arc::new(CpuBackend::new(threads)?);
    Engine::load_as(path, backend, &EngineOptions::self_test(), load_as(kind))
}

/// Runs a package's self-test on `engine`.
pub fn run_selftest(engine: &Engine, test: &SelfTest) -> Result<SelfTestReport, String> {
    let running = |e: govbox_engine::EngineError| format!("running the model: {e}");
    let report = match test {
        SelfTest::Chat(c) => test.compare(&SelfTestOutput::Logits(&engine.last_logits(&c.token_ids).map_err(running)?)),
        SelfTest::Embedding(e) => {
            let texts: Vec<&str> = e.texts.iter().map(String::as_str).collect();
            test.compare(&SelfTestOutput::Embeddings(&engine.embed(&texts).map_err(running)?.vectors))
        }
        SelfTest::Rerank(r) => {
            let docs: Vec<&str> = r.documents.iter().map(String::as_str).collect();
            test.compare(&SelfTestOutput::RerankLogits(&engine.rerank(&r.query, &docs, true).map_err(running)?.logits))
        }
    };
    report.map_err(|m| m.to_string())
}

/// `govbox` on a stopped box: imported versions are loaded on the CPU backend (their self-test
/// runs there), and nothing is served.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offline;

impl Serving for Offline {
    type Model = Engine;

    fn load(&self, a: &ActiveModel) -> Result<Engine, ModelLoadError> {
        cpu_engine(&a.load_path, a.manifest.model.as_ref().map(|m| m.kind), 0)
            .map_err(|source| ModelLoadError::Engine { name: a.name.clone(), path: a.load_path.clone(), source })
    }

    fn engine<'m>(&self, m: &'m Engine) -> &'m Engine {
        m
    }

    fn backend(&self) -> String {
        "CPU".to_string()
    }

    fn serves(&self) -> bool {
        false
    }

    fn serve(&self, _: Engine) {}

    fn withdraw(&self, _: &str) {}

    fn serving(&self, _: &str) -> Option<String> {
        None
    }
}

/// The model store of one state folder and the host that serves its versions.
#[derive(Debug)]
pub struct ModelOps<S> {
    store: ModelStore,
    paths: StatePaths,
    host: S,
}

impl<S: Serving> ModelOps<S> {
    /// The operations on `STATE/models` of `paths`, served by `host`.
    pub fn open(paths: StatePaths, host: S) -> Result<Self, ModelOpsError> {
        Ok(ModelOps { store: ModelStore::open(&paths)?, paths, host })
    }

    /// The store.
    pub fn store(&self) -> &ModelStore {
        &self.store
    }

    /// The host.
    pub fn host(&self) -> &S {
        &self.host
    }

    /// The box's trust root.
    pub fn trust(&self) -> Result<TrustRoot, ModelOpsError> {
        Ok(TrustRoot::load(&self.paths.root_json())?)
    }

    /// `model_import`: verifies and stores a package (inactive), loads it and runs its self-test
    /// on the host's backend, then writes its entries through `gate`, and only then makes it the
    /// active version (when asked, or the first of its name) and serves it. A version that fails
    /// a check is taken out of the store again; so is a new one whose entries cannot be written.
    pub fn import(
        &self,
        path: &Path,
        activate: bool,
        progress: &mut dyn FnMut(u64, u64),
        gate: &Gate<'_, ModelImported>,
    ) -> Result<ModelImported, ModelOpsError> {
        let trust = self.trust()?;
        let t = Instant::now();
        let imported = self.store.import_file_held(path, &trust, &ImportOptions { activate }, progress)?;
        let secs = t.elapsed().as_secs_f64();
        let record = self.store.list()?.into_iter().find(|m| m.name == imported.name);
        let active_now = imported.pending_activation
            || record.as_ref().is_some_and(|m| m.active.as_deref() == Some(imported.version.as_str()));
        let disabled = record.is_some_and(|m| m.disabled);
        let undo = || {
            // A version that was stored before is left as it was; a new one is taken out again.
            if !imported.already_present
                && let Err(e) = self.store.discard(&imported.digest)
            {
                log::error!("model store: undoing the import of {}: {e}", short(&imported.digest_label()));
            }
        };
        let selftest = imported.manifest.model.as_ref().and_then(|m| m.selftest.as_ref());
        // The self-test and the swap need the engine; it is loaded once for both.
        let loaded = match selftest.is_some() || active_now || !self.host.serves() {
            true => Some(self.load(&held(&imported)).inspect_err(|_| undo())?),
            false => None,
        };
        let mut passed = None;
        if let (Some(test), Some(m)) = (selftest, &loaded) {
            let rep = run_selftest(self.host.engine(m), test).map_err(|reason| {
                undo();
                ModelOpsError::SelfTest {
                    package: format!("{} {}", imported.name, imported.version),
                    backend: self.host.backend(),
                    reason,
                }
            })?;
            log::info!(
                "model '{}' {}: self-test passed ({} values, largest difference {:.2e})",
                imported.name,
                imported.version,
                rep.checked,
                rep.max_abs_diff
            );
            passed = Some(SelfTestPassed { checked: rep.checked, max_abs_diff: rep.max_abs_diff });
        }
        let answer = ModelImported {
            name: imported.name.clone(),
            version: imported.version.clone(),
            digest: imported.digest_label(),
            size: imported.size,
            active: active_now,
            secs,
            mb_per_s: imported.size as f64 / 1e6 / secs.max(1e-9),
            selftest: passed,
        };
        if let Err(source) = gate(&answer) {
            undo();
            let what = format!("importing model '{} {}'", imported.name, imported.version);
            return Err(ModelOpsError::Unrecorded { what, source });
        }
        self.store.activate_held(&imported)?;
        if active_now
            && !disabled
            && self.host.serves()
            && let Some(m) = loaded
        {
            self.host.serve(m);
        }
        Ok(answer)
    }

    /// `model_activate` and `model_rollback`: plans the version, loads it (so that a version
    /// that does not load never becomes active), writes the entry through `gate`, and only then
    /// records it in the store and serves it. A disabled model's new version is recorded, and
    /// served when the model is enabled again.
    pub fn switch(
        &self,
        name: &str,
        target: Switch<'_>,
        gate: &Gate<'_, ModelSwitched>,
    ) -> Result<ModelSwitched, ModelOpsError> {
        let record = self.store.list()?.into_iter().find(|m| m.name == name);
        let disabled = record.as_ref().is_some_and(|m| m.disabled);
        let previous = record.and_then(|m| m.active);
        let a = target.plan(&self.store, name)?;
        let loaded = match !disabled && self.host.serves() {
            true => Some(self.load(&a)?),
            false => None,
        };
        let answer =
            ModelSwitched { name: name.to_string(), version: a.version.clone(), previous, digest: a.digest_label() };
        gate(&answer)
            .map_err(|source| ModelOpsError::Unrecorded { what: format!("switching model '{name}'"), source })?;
        target.commit(&self.store, name, &a.version)?;
        if let Some(m) = loaded {
            self.host.serve(m);
        }
        Ok(answer)
    }

    /// `model_remove`: removes a version that is not active, once `gate` has recorded it.
    pub fn remove(
        &self,
        name: &str,
        version: &str,
        gate: &Gate<'_, ModelRemoved>,
    ) -> Result<ModelRemoved, ModelOpsError> {
        // The digest the entry names. A version that is unknown or active is left to the store to
        // refuse, with nothing recorded.
        let stored = self.store.list()?.into_iter().find(|m| m.name == name);
        let removable = stored
            .filter(|m| m.active.as_deref() != Some(version))
            .and_then(|m| m.versions.into_iter().find(|v| v.version == version));
        if let Some(v) = removable {
            gate(&removed(name, version, self.store.digest_label(&v.digest))).map_err(|source| {
                ModelOpsError::Unrecorded { what: format!("removing model '{name} {version}'"), source }
            })?;
        }
        let label = self.store.remove(name, version)?;
        Ok(removed(name, version, label))
    }

    /// `model_disable` and `model_enable` (whose entries are written before, by the caller):
    /// records the choice in the store, then takes the model out of the served set at once, or
    /// loads its active version and serves it again. An enable whose model does not load leaves
    /// it disabled.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<ModelToggled, ModelOpsError> {
        let record = self.store.set_disabled(name, disabled)?;
        if disabled {
            self.host.withdraw(name);
        } else if record.active.is_some() && self.host.serves() {
            match self.active(name).and_then(|a| self.load(&a)) {
                Ok(m) => self.host.serve(m),
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

    /// `model_list`: every stored version, with which one is active and which one is served.
    pub fn list(&self) -> Result<ModelListAnswer, ModelOpsError> {
        let models = self
            .store
            .list_labelled()?
            .into_iter()
            .map(|record| {
                let serving = self.host.serving(&record.name);
                StoredModel::new(record, serving)
            })
            .collect();
        Ok(ModelListAnswer { models })
    }

    /// The names of the stored models.
    pub fn names(&self) -> Result<Vec<String>, ModelOpsError> {
        Ok(self.store.list()?.into_iter().map(|m| m.name).collect())
    }

    /// The names of the models taken out of service.
    pub fn disabled_names(&self) -> Result<Vec<String>, PackageError> {
        Ok(self.store.list()?.into_iter().filter(|m| m.disabled).map(|m| m.name).collect())
    }

    /// Loads a stored version on the host.
    pub fn load(&self, a: &ActiveModel) -> Result<S::Model, ModelOpsError> {
        Ok(self.host.load(a)?)
    }

    fn active(&self, name: &str) -> Result<ActiveModel, ModelOpsError> {
        self.store.active_models()?.into_iter().find(|a| a.name == name).ok_or_else(|| {
            ModelOpsError::Package(PackageError::NotFound {
                action: format!("serving model '{name}'"),
                what: "an active version".into(),
            })
        })
    }
}

/// An imported version as the engine loads it, before it is active.
fn held(i: &govbox_images::Imported) -> ActiveModel {
    ActiveModel {
        name: i.name.clone(),
        version: i.version.clone(),
        digest: i.digest.clone(),
        load_path: i.load_path.clone(),
        manifest: i.manifest.clone(),
    }
}

/// `digest` is the label (`sha256-<hex>` or `sm3-<hex>`, [`ModelStore::digest_label`]).
fn removed(name: &str, version: &str, digest: String) -> ModelRemoved {
    ModelRemoved { name: name.to_string(), version: version.to_string(), digest }
}
