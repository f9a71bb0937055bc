//! The policy store's admin operations: import (verify, store, compile), activation and rollback,
//! list. [`PolicyOps`] runs each on a [`PolicyServing`] host: govboxd's compiles the active
//! libraries again and swaps them in; [`Offline`](super::models::Offline) serves nothing.

use std::path::Path;

use govbox_images::{ImportOptions, ModelStore, PackageError, TrustRoot};
use govbox_provisioning::{ProvisionError, StatePaths};

use super::models::Offline;
use super::{Gate, Switch};
use crate::protocol::{ModelSwitched, PolicyImported, PolicyListAnswer};

/// Why the active libraries could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyLoadError {
    /// The policy store could not be read.
    #[error("policy store: {0}")]
    Store(#[from] PackageError),
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
    /// The change's audit entry could not be written, so it was not made (fail-closed).
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

/// What serves the libraries.
pub trait PolicyServing {
    /// Compiles the active version of every library and serves them from now on.
    fn reload(&self) -> Result<(), PolicyLoadError>;
}

impl PolicyServing for Offline {
    fn reload(&self) -> Result<(), PolicyLoadError> {
        Ok(())
    }
}

/// The policy store of one state folder and the host that serves its libraries.
#[derive(Debug)]
pub struct PolicyOps<H> {
    store: ModelStore,
    paths: StatePaths,
    host: H,
}

impl<H: PolicyServing> PolicyOps<H> {
    /// The operations on `STATE/policies` of `paths`, served by `host`.
    pub fn open(paths: StatePaths, host: H) -> Result<Self, PolicyAdminError> {
        Ok(PolicyOps { store: ModelStore::open_policies(&paths)?, paths, host })
    }

    /// The host.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// `policy_import`: verifies and stores a package (inactive), compiles it, writes its entries
    /// through `gate`, and only then makes it active (when asked, or the first of its name) and
    /// serves it. A version that does not compile is taken out again; so is a new one whose
    /// entries cannot be written.
    pub fn import(
        &self,
        path: &Path,
        activate: bool,
        gate: &Gate<'_, PolicyImported>,
    ) -> Result<PolicyImported, PolicyAdminError> {
        let root = TrustRoot::load(&self.paths.root_json())?;
        let imported = self.store.import_file_held(path, &root, &ImportOptions { activate }, &mut |_, _| {})?;
        let undo = || match imported.already_present {
            // A version that was stored before is left as it was; a new one is taken out again.
            true => Ok(()),
            false => self.store.discard(&imported.digest),
        };
        let library = match govbox_policy::Policy::load_dir(&imported.load_path) {
            Ok(l) => l,
            Err(source) => {
                undo()?;
                return Err(PolicyAdminError::Invalid { name: imported.name, version: imported.version, source });
            }
        };
        let answer = PolicyImported {
            name: imported.name.clone(),
            version: imported.version.clone(),
            digest: imported.digest_label(),
            keywords: library.keyword_count(),
            active: imported.pending_activation,
            already_present: imported.already_present,
        };
        if let Err(source) = gate(&answer) {
            undo()?;
            let what = format!("importing policy '{} {}'", imported.name, imported.version);
            return Err(PolicyAdminError::Unrecorded { what, source });
        }
        self.store.activate_held(&imported)?;
        self.host.reload()?;
        Ok(answer)
    }

    /// Serves another version of `name`, once it compiles and `gate` has recorded it; otherwise
    /// the version active before stays active.
    pub fn switch(
        &self,
        name: &str,
        target: Switch<'_>,
        gate: &Gate<'_, ModelSwitched>,
    ) -> Result<ModelSwitched, PolicyAdminError> {
        let before = self.store.list()?.into_iter().find(|m| m.name == name).and_then(|m| m.active);
        let a = target.plan(&self.store, name)?;
        if let Err(source) = govbox_policy::Policy::load_dir(&a.load_path) {
            return Err(PolicyLoadError::Compile { name: a.name, version: a.version, source }.into());
        }
        let answer = ModelSwitched {
            name: name.to_string(),
            version: a.version.clone(),
            previous: None,
            digest: a.digest_label(),
        };
        gate(&answer)
            .map_err(|source| PolicyAdminError::Unrecorded { what: format!("switching policy '{name}'"), source })?;
        target.commit(&self.store, name, &a.version)?;
        if let Err(e) = self.host.reload() {
            // Go back, so that the box keeps filtering with what it had.
            if let Some(b) = &before {
                let _ = self.store.activate(name, Some(b));
            }
            let _ = self.host.reload();
            return Err(e.into());
        }
        Ok(answer)
    }

    /// `policy_list`: every stored library version.
    pub fn list(&self) -> Result<PolicyListAnswer, PolicyAdminError> {
        Ok(PolicyListAnswer { policies: self.store.list_labelled()? })
    }
}
