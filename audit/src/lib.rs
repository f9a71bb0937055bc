//! `govbox-audit`: the appliance's tamper-evident audit log.
//!
//! **What it is for.** govboxd records every inference request and completion, every
//! administrative action, package change, update step and (aggregated) authentication failure
//! here, before the answer it records is sent. Auditors take an export off the box and check it
//! with `govbox audit verify`, offline, with nothing but the file.
//!
//! **How.** Entries (deterministic JSON, [`Entry`]) are the leaves of an RFC 6962 Merkle tree
//! ([`merkle`]). A single writer thread commits appends in groups, one fsync per group, to a sled
//! store; every N entries or T seconds, on request, at export and at close it makes a checkpoint:
//! a [`SignedTreeHead`] signed with the box's audit key, in a text form that OpenSSL can
//! verify (see [`SignedTreeHead::message`]). The algorithms are the box's suite's
//! (`identity/suite`): Ed25519 over a SHA-256 tree (`intl`), or SM2 with SM3 over an SM3 tree
//! (`gm`); every head names both, and a store records its tree hash and refuses the other. An export (`govbox-audit-export/1`) carries a range of
//! entries with their leaves, the left frontier that lets the root be recomputed without earlier
//! entries, a fresh signed head, the consistency proof from the previous export's head, and the
//! device's public identity.
//!
//! **What it trusts.** The audit signing key and HMAC secret (`identity/`), and the local disk to
//! return what was fsynced. It trusts no export it reads: [`verify_export`] caps sizes, parses
//! strictly and reports every failing check by seq.
//!
//! **What it guarantees.**
//! - `append` returns `Ok(seq)` only once the entry is durable; a failed write leaves no partial
//!   entry and fails with [`AuditError::Unavailable`] (code `audit_unavailable`).
//! - After an I/O error (a full disk) the next append reopens the store in-process, removes
//!   anything the failed batch left, and goes on: no restart is needed once space returns.
//! - After a crash (SIGKILL), opening replays the leaves written since the last checkpoint,
//!   checks each entry against its leaf, and continues the seqs without a gap.
//! - Editing, deleting or reordering entries is detected by `verify_export` and
//!   [`AuditLog::verify_store`], naming the seq. Removing the newest entries together with
//!   their leaves, checkpoints and export record is not visible in one export alone; it is
//!   detected by verifying the next export against the previous one, whose head it no longer
//!   extends. Keep the previous export. With a [`witness`] every signed head also goes to the
//!   agency's syslog server as it is made, and [`verify_export_with_witness`] fails an export
//!   that does not extend the largest head the server holds: the newest entries can then be cut
//!   only until their head is sent.
//! - In production the writer is its own process, `govbox-auditd` ([`remote`]): govboxd appends
//!   through its socket ([`AuditHandle`]) and has no operation that removes an entry.
//! - The log never holds a prompt or a completion, only their HMAC (HMAC-SHA256, or HMAC-SM3 on
//!   a `gm` box) under the audit secret ([`AuditLog::hmac`]).
//!
//! The formats are documented in `audit/README.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod anchor;
mod auth;
mod entry;
mod error;
pub mod export;
mod handle;
mod hmac;
mod log;
pub mod merkle;
pub mod migrate;
pub mod remote;
mod retention;
mod sth;
mod store;
mod verify;
mod verify_store;
pub mod witness;
mod witness_tls;
mod writer;

pub use anchor::{AnchorStatus, TpmAnchorConfig};
pub use auth::{MAX_AUTH_SOURCES, OTHER_SOURCE};
pub use entry::{Entry, Event, LifecycleAction, MAX_FIELD_BYTES, PackageAction, format_time, parse_time};
pub use error::{AuditError, Result};
pub use export::{EXPORT_FORMAT, ExportRange};
pub use handle::AuditHandle;
pub use hmac::{HmacKey, HmacStream};
pub use log::{AuditKeys, AuditLog, AuditOptions, MAX_TAIL, read_hmac_secret};
pub use retention::PruneReport;
pub use sth::{STH_CONTEXT, STH_CONTEXT_V2, SignedTreeHead};
pub use verify::{Check, MAX_EXPORT_BYTES, VerifyReport, verify_export, verify_export_with_witness};
pub use witness::{WitnessAddr, WitnessStatus, WitnessTls, WitnessTransport};
