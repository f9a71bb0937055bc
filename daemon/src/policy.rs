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

/// Why the libraries could not be loaded (the admin operations' type, which reloads give).
pub use govbox_admin::ops::policies::PolicyLoadError;

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

/// `policy_import`, `policy_activate`, `policy_rollback`, `policy_list` on the admin socket: the
/// commands are `govbox_admin::ops::policies`' (which `govbox` runs on a stopped box too); govboxd
/// adds [`admin::Reload`], which compiles the active libraries again and swaps them in, so that
/// new requests get the new version at once.
pub mod admin {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use govbox_admin::ops::policies::{PolicyLoadError, PolicyOps, PolicyServing};
    use govbox_provisioning::StatePaths;

    pub use govbox_admin::ops::policies::PolicyAdminError;

    use super::PolicyTable;

    /// govboxd as the policy commands' host: a change is served by reloading `policies` from
    /// the state folder.
    #[derive(Debug)]
    pub struct Reload {
        policies: Arc<PolicyTable>,
        state_dir: PathBuf,
    }

    impl PolicyServing for Reload {
        fn reload(&self) -> Result<(), PolicyLoadError> {
            self.policies.reload(&self.state_dir).map(|_| ())
        }
    }

    /// The policy commands on `state_dir`'s store, served through `policies`.
    pub fn ops(policies: &Arc<PolicyTable>, state_dir: &Path) -> Result<PolicyOps<Reload>, PolicyAdminError> {
        let host = Reload { policies: policies.clone(), state_dir: state_dir.to_path_buf() };
        PolicyOps::open(StatePaths::new(state_dir), host)
    }
}
