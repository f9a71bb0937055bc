//! Update bundles (`.gbu`) and the A/B install folder they are applied to.
//!
//! A bundle is the signed container of this crate with kind `update`, signed by the trust root's
//! `updates` role, carrying `bin/govboxd`, `bin/govbox`, optionally `dist/...` and a new signed
//! trust root. [`apply`] verifies it, refuses a security version below the stored one, stages it
//! into the inactive slot, switches `current` with one rename, and commits once the host reports
//! govboxd ready, or reverts. [`boot_check`] and [`boot_ok`] finish what a power loss
//! interrupted. The layout of the install folder is described in [`InstallRoot`]'s module.
//!
//! Everything here runs as root and touches only the install folder: bundles are checked against
//! the root-owned update trust anchor (`ROOT/trust/root.json`, see [`InstallRoot::anchor`]), and
//! steps that govboxd cannot take over its admin socket go to the root-owned update journal
//! (`ROOT/update-journal.jsonl`, [`read_journal`]), which govboxd imports into its audit log. No
//! function here opens a path in the service's state folder.
//!
//! **Guarantees:** `current` only ever points at a complete, fsynced slot whose bundle passed
//! verification; the stored security version never falls; no byte of a refused bundle is written.

mod anchor;
mod apply;
mod bundle;
mod error;
mod journal;
mod layout;
mod sink;

pub use apply::{
    Applied, BootAction, FaultPoint, SlotStatus, Staged, UpdateHost, UpdateStatus, apply, boot_check, boot_ok,
    rollback, stage, status,
};
pub use bundle::{BUNDLE_NAME, BundleSpec, CLI_PATH, DAEMON_PATH, build_bundle};
pub use error::UpdateError;
pub use journal::{JOURNAL_LIMIT, JOURNAL_NAME, JournalEntry, JournalMark, after_mark, read_journal};
pub use layout::{BOOT_LIMIT, InstallRoot, Phase, SLOT_META, Slot, SlotMeta, UpdateLock, UpdateState};
