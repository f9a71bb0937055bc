//! Content safety in govboxd: the content-safety libraries being served, and which one applies.
//!
//! Libraries are signed policy packages in `STATE/policies` (the images crate's store opened on
//! the `policy` role); the active version of each is compiled at start and again whenever the
//! admin socket imports, activates or rolls one back, and swapped in whole: a request keeps the
//! library it started with. Which library applies is `[policy] default` (see
//! [`crate::config::PolicyConfig`]); `off` is an explicit choice, recorded at every start.
//!
//! This module is the libraries as served (the table, loading them, the admin commands); what a
//! request does with one (checking its question, filtering its answer, recording each verdict)
//! is the HTTP side's (`api::policy`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use govbox_audit::Event;
use govbox_images::ModelStore;
use govbox_policy::Policy;
use govbox_provisioning::StatePaths;

use crate::auditing::Audit;

/// `[policy] default` that turns filtering off.
pub const OFF: &str = "off";

/// One library as served: its package and the compiled library.
#[derive(Debug)]
pub struct ServedPolicy {
    /// The library name.
    pub name: String,
    /// Its active version.
    pub version: String,
    /// Its signed manifest's digest label: `sha256-<hex>`, or `sm3-<hex>` for an SM3 package.
    pub digest: String,
    /// The compiled library.
    pub policy: Arc<Policy>,
}

/// Why the libraries could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyLoadError {
    /// The policy store could not be read.
    #[error("policy store: {0}")]
    Store(#[from] govbox_images::PackageError),
    /// An active library does not compile.
    #[error("policy library '{name} {version}': {source}")]
    Compile {
        /// Its name.
        name: String,
        /// Its version.
        version: String,
        /// Why.
        source: govbox_policy::PolicyError,
    },
}

/// The served libraries by name, swapped whole. When the store could not be loaded, every
/// filtered request is refused (never served unfiltered) until a reload succeeds.
#[derive(Debug, Default)]
pub struct PolicyTable {
    inner: RwLock<Arc<BTreeMap<String, Arc<ServedPolicy>>>>,
    broken: RwLock<Option<String>>,
}

impl PolicyTable {
    /// Compiles the active version of every library in `STATE/policies` (blocking) and serves
    /// them from now on.
    pub fn reload(&self, state_dir: &Path) -> Result<usize, PolicyLoadError> {
        let r = self.load(state_dir);
        *self.broken.write().unwrap_or_else(|p| p.into_inner()) = r.as_ref().err().map(ToString::to_string);
        r
    }

    fn load(&self, state_dir: &Path) -> Result<usize, PolicyLoadError> {
        let store = ModelStore::open_policies(&StatePaths::new(state_dir))?;
        let mut map = BTreeMap::new();
        for a in store.active_models()? {
            let policy = Policy::load_dir(&a.load_path).map_err(|source| PolicyLoadError::Compile {
                name: a.name.clone(),
                version: a.version.clone(),
                source,
            })?;
            let digest = a.digest_label();
            let served = ServedPolicy { name: a.name.clone(), version: a.version, digest, policy: Arc::new(policy) };
            map.insert(a.name, Arc::new(served));
        }
        let n = map.len();
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
        Ok(n)
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Arc<ServedPolicy>>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The library that `default` (`[policy] default`) selects; `None` means unfiltered.
    pub fn choose(&self, default: &str) -> Result<Option<Arc<ServedPolicy>>, PolicyUnavailable> {
        if default == OFF {
            return Ok(None);
        }
        if let Some(why) = self.broken.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Err(PolicyUnavailable::NotLoaded(why.clone()));
        }
        let all = self.snapshot();
        match default {
            "" => match all.len() {
                0 => Ok(None),
                1 => Ok(all.values().next().cloned()),
                n => Err(PolicyUnavailable::NoneChosen(n)),
            },
            name => all.get(name).cloned().map(Some).ok_or_else(|| PolicyUnavailable::NotActive(name.to_string())),
        }
    }
}

/// Why no library can filter a request that must be filtered: such a request is refused, never
/// served unfiltered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyUnavailable {
    /// The store could not be loaded (the reason is [`PolicyLoadError`]'s message).
    #[error("the content-safety libraries could not be loaded: {0}")]
    NotLoaded(String),
    /// Several libraries are imported and `[policy] default` is empty.
    #[error(
        "{0} content-safety libraries are imported and [policy] default names none; the administrator must choose one"
    )]
    NoneChosen(usize),
    /// The library that applies is not imported or has no active version.
    #[error("the content-safety library '{0}' that this box requires is not imported or not active")]
    NotActive(String),
}

/// Loads the libraries of `state_dir` into `policies` at start and records the box's choice
/// (`default`, `[policy] default`): `off` is an audit entry at every start, so that serving
/// unfiltered is never a silent state.
pub async fn start(policies: &Arc<PolicyTable>, state_dir: PathBuf, default: &str, audit: &Audit) {
    let table = policies.clone();
    let loaded = tokio::task::spawn_blocking(move || table.reload(&state_dir)).await;
    let subject = match loaded {
        Ok(Ok(n)) => format!("{n} librar{} loaded; [policy] default = '{default}'", if n == 1 { "y" } else { "ies" }),
        Ok(Err(e)) => {
            log::error!("content safety: {e}; filtered requests are refused until the libraries load");
            format!("libraries not loaded ({e}); [policy] default = '{default}'")
        }
        Err(e) => format!("libraries not loaded (task: {e}); [policy] default = '{default}'"),
    };
    if default == OFF {
        log::warn!("content safety is off ([policy] default = \"off\"): answers are not filtered");
    } else if let Ok(None) = policies.choose(default) {
        log::warn!(
            "content safety: no library is imported; answers are not filtered until one is (govbox policy import)"
        );
    }
    let event = Event::Admin { actor: "govboxd".into(), action: "policy_start".into(), subject };
    crate::auditing::record(audit, event).await;
}

/// `policy_import`, `policy_activate`, `policy_rollback`, `policy_list` on the admin socket:
/// the store change, then the served libraries are compiled again and swapped in, so that new
/// requests get the new version at once. A library that does not compile is taken out again.
pub mod admin {
    use std::path::Path;

    use govbox_images::{ImportOptions, ModelStore, PackageError, TrustRoot};
    use govbox_provisioning::{ProvisionError, StatePaths};

    use govbox_admin::protocol::{ModelSwitched, PolicyImported, PolicyListAnswer};

    use super::{PolicyLoadError, PolicyTable};
    use crate::auditing::Gate;

    /// Why a policy command failed.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum PolicyAdminError {
        /// The store or the package refused.
        #[error(transparent)]
        Package(#[from] PackageError),
        /// The trust root could not be read.
        #[error(transparent)]
        Trust(#[from] ProvisionError),
        /// The imported version does not compile; it was removed again.
        #[error("package '{name} {version}': {source}; the version was removed")]
        Invalid {
            /// The library.
            name: String,
            /// The version.
            version: String,
            /// Why it does not compile.
            source: govbox_policy::PolicyError,
        },
        /// The active libraries could not be compiled again.
        #[error(transparent)]
        Reload(#[from] PolicyLoadError),
        /// The change's audit entry could not be written, so it was undone (fail-closed).
        #[error("{what}: not done, since its audit entry cannot be written ({source})")]
        Unrecorded {
            /// What was asked.
            what: String,
            /// Why the entry was not written.
            source: govbox_audit::AuditError,
        },
    }

    impl PolicyAdminError {
        /// A stable short code.
        pub fn code(&self) -> &'static str {
            match self {
                PolicyAdminError::Package(e) => e.code(),
                PolicyAdminError::Trust(e) => e.code(),
                PolicyAdminError::Invalid { .. } | PolicyAdminError::Reload(_) => "policy_invalid",
                PolicyAdminError::Unrecorded { .. } => "audit_unavailable",
            }
        }
    }

    fn store(state_dir: &Path) -> Result<ModelStore, PackageError> {
        ModelStore::open_policies(&StatePaths::new(state_dir))
    }

    fn reload(policies: &PolicyTable, state_dir: &Path) -> Result<(), PolicyLoadError> {
        policies.reload(state_dir).map(|_| ())
    }

    /// Verifies and imports a policy package into `state_dir`'s store, compiles it, records it
    /// through `gate` (taking a new version out again when that fails), and serves it through
    /// `policies` when it is active.
    pub fn import(
        policies: &PolicyTable,
        state_dir: &Path,
        path: &Path,
        activate: bool,
        gate: &Gate<'_, PolicyImported>,
    ) -> Result<PolicyImported, PolicyAdminError> {
        let paths = StatePaths::new(state_dir);
        let root = TrustRoot::load(&paths.root_json())?;
        let store = store(state_dir)?;
        let imported = store.import_file(path, &root, &ImportOptions { activate }, &mut |_, _| {})?;
        let library = match govbox_policy::Policy::load_dir(&imported.load_path) {
            Ok(l) => l,
            Err(source) => {
                store.discard(&imported.digest)?;
                return Err(PolicyAdminError::Invalid { name: imported.name, version: imported.version, source });
            }
        };
        let answer = PolicyImported {
            name: imported.name.clone(),
            version: imported.version.clone(),
            digest: imported.digest_label(),
            keywords: library.keyword_count(),
            active: imported.activated,
            already_present: imported.already_present,
        };
        if let Err(source) = gate(&answer) {
            // A version that was stored before is left as it was; a new one is taken out again.
            if !imported.already_present {
                store.discard(&imported.digest)?;
            }
            let what = format!("importing policy '{} {}'", imported.name, imported.version);
            return Err(PolicyAdminError::Unrecorded { what, source });
        }
        reload(policies, state_dir)?;
        Ok(answer)
    }

    /// Serves another version (`Some`: that one; `None`: the previous one), once it compiles
    /// and `gate` has recorded it; otherwise the previous version stays active.
    pub fn switch(
        policies: &PolicyTable,
        state_dir: &Path,
        name: &str,
        version: Option<Option<&str>>,
        gate: &Gate<'_, ModelSwitched>,
    ) -> Result<ModelSwitched, PolicyAdminError> {
        let store = store(state_dir)?;
        let v = match version {
            Some(v) => store.activate(name, v),
            None => store.rollback(name),
        }?;
        // Go back on any failure below, so that the box keeps filtering with what it had.
        let undo = |e: PolicyAdminError| {
            let _ = store.rollback(name);
            let _ = reload(policies, state_dir);
            e
        };
        let active = store.active_models()?.into_iter().find(|a| a.name == name);
        if let Some(a) = &active
            && let Err(source) = govbox_policy::Policy::load_dir(&a.load_path)
        {
            let (name, version) = (a.name.clone(), a.version.clone());
            return Err(undo(PolicyLoadError::Compile { name, version, source }.into()));
        }
        let answer = ModelSwitched {
            name: name.to_string(),
            version: v,
            previous: None,
            digest: active.map(|a| a.digest_label()).unwrap_or_default(),
        };
        if let Err(source) = gate(&answer) {
            return Err(undo(PolicyAdminError::Unrecorded { what: format!("switching policy '{name}'"), source }));
        }
        reload(policies, state_dir).map_err(|e| undo(e.into()))?;
        Ok(answer)
    }

    /// Every stored library version of `state_dir`.
    pub fn list(state_dir: &Path) -> Result<PolicyListAnswer, PolicyAdminError> {
        Ok(PolicyListAnswer { policies: store(state_dir)?.list_labelled()? })
    }
}
