//! The admin operations on the box's signed stores, written once: [`models`] (import with its
//! self-test, activation, rollback, removal, disable and enable, list) and [`policies`] (import,
//! activation, rollback, list). govboxd runs them with a host that swaps what it serves; `govbox`
//! runs them on a stopped box's state folder with one that serves nothing. Each caller adds only
//! its own audit wrapper, which writes the entries of `crate::events` and hands the operation a
//! [`Gate`] for the entries of its outcome.
//!
//! They live here, beside the protocol whose answers they build, because both the daemon and the
//! CLI depend on this crate and on nothing else in common that knows the store, the engine and
//! the audit log together; `images` keeps the store itself and knows neither.
//!
//! # Order: the entry, then the record
//!
//! Every operation that changes which version is active (an import that activates, an
//! activation, a rollback) first does every check (signatures, digests, loading, the self-test,
//! compiling a library), then writes its audit entries through the gate, and only then changes
//! the store's record and what is served. An import stores its version inactive first
//! ([`ModelStore::import_file_held`](govbox_images::ModelStore::import_file_held)) and an
//! activation is planned on a copy of the registry
//! ([`ModelStore::plan_activate`](govbox_images::ModelStore::plan_activate)).
//!
//! A crash between the entry and the record therefore leaves an entry for a change that did not
//! happen, and the version active before is served at the next start: the log may claim too
//! much, never too little. An entry that cannot be written refuses the change, and nothing is
//! changed. A removal is gated the same way, before the version's folder is deleted.

pub mod models;
pub mod policies;

use govbox_audit::AuditError;

/// Writes the audit entries of an operation's outcome (`answer`), durably, or fails. An operation
/// calls it after its checks and before the change takes effect, and changes nothing when it
/// fails: no change is made without its entry.
pub type Gate<'a, A> = dyn Fn(&A) -> Result<(), AuditError> + 'a;

/// Which version an activation goes to.
#[derive(Debug, Clone, Copy)]
pub enum Switch<'a> {
    /// This version, or the highest one.
    Activate(Option<&'a str>),
    /// The previously active one.
    Rollback,
}

impl Switch<'_> {
    /// The version `store` would make active, changing nothing.
    fn plan(
        self,
        store: &govbox_images::ModelStore,
        name: &str,
    ) -> Result<govbox_images::ActiveModel, govbox_images::PackageError> {
        match self {
            Switch::Activate(v) => store.plan_activate(name, v),
            Switch::Rollback => store.plan_rollback(name),
        }
    }

    /// Makes the planned version active in `store`'s record; returns it.
    fn commit(
        self,
        store: &govbox_images::ModelStore,
        name: &str,
        planned: &str,
    ) -> Result<String, govbox_images::PackageError> {
        match self {
            Switch::Activate(_) => store.activate(name, Some(planned)),
            Switch::Rollback => store.rollback(name),
        }
    }
}

/// A digest label (`sm3-<hex>`) with its hex cut to 12 digits, for log lines.
pub fn short(label: &str) -> String {
    let (alg, hex) = label.split_once('-').unwrap_or(("", label));
    let hex = hex.get(..12).unwrap_or(hex);
    if alg.is_empty() { hex.to_string() } else { format!("{alg}-{hex}") }
}
