//! Serving signed model packages: re-verifying them at start-up, loading the active versions, and
//! the admin socket's model commands (import, list, activate, rollback, remove, disable).
//!
//! The commands themselves are `govbox_admin::ops::models`' (the one implementation, which
//! `govbox` runs on a stopped box too); this module adds what only the daemon does: [`Live`], the
//! host that loads versions onto the daemon's backend and swaps them in the [`ModelTable`] it was
//! given, and the start-up checks. A swap replaces one `Arc`: requests that already hold the old
//! model finish on it, new requests get the new one.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use govbox_admin::ops::models::{ModelOps, Serving, load_as};
use govbox_admin::ops::{Gate, short};
use govbox_admin::protocol::{ModelImported, ModelListAnswer, ModelRemoved, ModelSwitched, ModelToggled};
use govbox_engine::Engine;
use govbox_images::{ActiveModel, TrustRoot};
use govbox_provisioning::StatePaths;
use sd_notify::NotifyState;

pub use govbox_admin::ops::Switch;
/// Why a package could not be served or a model command failed.
pub use govbox_admin::ops::models::ModelOpsError as ServeError;

use crate::config::ModelEntry;
use crate::models::{LoadedModel, Loader, ModelLoadError, ModelSource, ModelTable};
use crate::systemd;

/// How much more start-up time each `EXTEND_TIMEOUT_USEC=` asks systemd for while hashing.
const EXTEND: Duration = Duration::from_secs(30);
/// How often, at most, hashing progress goes to `STATUS=`.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A package left out at start-up: what it is, and why.
pub type NotServed = Box<(String, ServeError)>;

/// govboxd as the model commands' host: versions are loaded with its [`Loader`] and served
/// through its [`ModelTable`].
#[derive(Debug)]
pub struct Live {
    /// The served models, which commands change.
    models: Arc<ModelTable>,
    /// How a version is loaded onto the daemon's backend.
    loader: Loader,
}

impl Serving for Live {
    type Model = LoadedModel;

    fn load(&self, a: &ActiveModel) -> Result<LoadedModel, ModelLoadError> {
        let entry = ModelEntry { name: a.name.clone(), path: a.load_path.clone() };
        let source = ModelSource::Package { version: a.version.clone(), digest: a.digest_label() };
        self.loader.load(&entry, source, load_as(a.manifest.model.as_ref().map(|m| m.kind)))
    }

    fn engine<'m>(&self, m: &'m LoadedModel) -> &'m Engine {
        &m.engine
    }

    fn backend(&self) -> String {
        self.loader.backend.info().name
    }

    fn serves(&self) -> bool {
        true
    }

    fn serve(&self, m: LoadedModel) {
        let (name, version) = (m.name.clone(), m.source.version().to_string());
        match self.models.replace(Arc::new(m)) {
            Some(old) => log::info!(
                "model '{name}': now serving version {version} (was {}); running requests finish on the old one",
                old.source.version()
            ),
            None => log::info!("model '{name}': now serving version {version}"),
        }
    }

    fn withdraw(&self, name: &str) {
        if self.models.remove(name).is_some() {
            log::info!("model '{name}': disabled; no longer served (running requests finish)");
        }
    }

    fn serving(&self, name: &str) -> Option<String> {
        let served = self.models.get()?;
        served.iter().find(|l| l.name == name).map(|l| l.source.version().to_string())
    }
}

/// The daemon's handle on the model store, and on the served models it swaps. One model command
/// runs at a time.
#[derive(Debug)]
pub struct Packages {
    ops: ModelOps<Live>,
    busy: Mutex<()>,
}

impl Packages {
    /// Opens the store at `STATE/models` and removes what interrupted imports left. Versions are
    /// loaded with `loader` and served through `models`.
    pub fn open(state_dir: &Path, models: Arc<ModelTable>, loader: Loader) -> Result<Self, ServeError> {
        let ops = ModelOps::open(StatePaths::new(state_dir), Live { models, loader })?;
        let rec = ops.store().recover()?;
        for p in rec.staging_removed.iter().chain(&rec.orphans_removed) {
            log::warn!("model store: removed {} left by an interrupted import", p.display());
        }
        Ok(Packages { ops, busy: Mutex::new(()) })
    }

    /// How this store's versions are loaded (for the config's dev folders too).
    pub fn loader(&self) -> &Loader {
        &self.ops.host().loader
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start-up: checks every active package again (signatures always; payload hashes too with
    /// `full_payload`), telling systemd how far hashing has got, then loads each. A package that
    /// fails its checks is not served; the others are.
    pub fn load_active(&self, full_payload: bool) -> Vec<Result<LoadedModel, NotServed>> {
        let _busy = self.lock();
        let active = match self.ops.store().active_models().and_then(|a| Ok((a, self.ops.disabled_names()?))) {
            // A disabled model is not served (`govbox model disable`).
            Ok((a, disabled)) => a.into_iter().filter(|m| !disabled.contains(&m.name)).collect::<Vec<_>>(),
            Err(e) => return vec![Err(Box::new(("model store".into(), e.into())))],
        };
        let trust = match self.ops.trust() {
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
        // The signatures first, always: nothing of a package whose manifest is not signed by a
        // trusted key is read further.
        let signed = self.ops.store().reverify(&a.digest, trust, false, &mut progress)?;
        if !full_payload {
            log::info!(
                "model '{}' {} {}: signed by {} key(s); payload not re-hashed (verify_payload_on_start = false)",
                a.name,
                a.version,
                short(&a.digest_label()),
                signed.signers.len()
            );
            return self.ops.load(a);
        }
        // Then the payload hash and the load side by side, so that start-up takes about the
        // longer of the two instead of their sum (hashing is one sequential SHA-256/SM3 stream
        // per file, on one core; loading maps the same file and packs its weights on the others).
        // The loaded model is returned only when every byte has hashed to what the signed
        // manifest says; otherwise it is dropped unserved. The load therefore parses a file
        // whose bytes are not yet re-checked: the same bounded, fuzzed parser that refuses
        // malformed files, on a file that passed the same check at import and that only root can
        // change in the store.
        let (hashed, loaded) = std::thread::scope(|s| {
            let loading = s.spawn(|| self.ops.load(a));
            let hashed = self.ops.store().reverify(&a.digest, trust, true, &mut progress);
            (hashed, loading.join())
        });
        // A payload that does not hash right is refused as such, however its load ended.
        let r = hashed?;
        let loaded = loaded.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let secs = t.elapsed().as_secs_f64();
        log::info!(
            "model '{}' {} {}: signed by {} key(s); {} files, {:.1} MB hashed and loaded in {secs:.1} s",
            a.name,
            a.version,
            short(&a.digest_label()),
            r.signers.len(),
            r.files_checked,
            r.bytes_hashed as f64 / 1e6
        );
        loaded
    }

    /// `model_import`: verifies, stores and self-tests a package, records it through `gate`, and
    /// then activates and serves it ([`ModelOps::import`]).
    pub fn import(
        &self,
        path: &Path,
        activate: bool,
        gate: &Gate<'_, ModelImported>,
    ) -> Result<ModelImported, ServeError> {
        let _busy = self.lock();
        self.ops.import(path, activate, &mut |_, _| {}, gate)
    }

    /// `model_disable` and `model_enable` ([`ModelOps::set_disabled`]).
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<ModelToggled, ServeError> {
        let _busy = self.lock();
        self.ops.set_disabled(name, disabled)
    }

    /// The names of the stored models.
    pub fn names(&self) -> Result<Vec<String>, ServeError> {
        self.ops.names()
    }

    /// `model_list`: every stored version, with which one is active and which one is served.
    pub fn list(&self) -> Result<ModelListAnswer, ServeError> {
        self.ops.list()
    }

    /// `model_activate` and `model_rollback` ([`ModelOps::switch`]).
    pub fn switch(
        &self,
        name: &str,
        target: Switch<'_>,
        gate: &Gate<'_, ModelSwitched>,
    ) -> Result<ModelSwitched, ServeError> {
        let _busy = self.lock();
        self.ops.switch(name, target, gate)
    }

    /// `model_remove` ([`ModelOps::remove`]).
    pub fn remove(&self, name: &str, version: &str, gate: &Gate<'_, ModelRemoved>) -> Result<ModelRemoved, ServeError> {
        let _busy = self.lock();
        self.ops.remove(name, version, gate)
    }
}
