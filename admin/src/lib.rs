//! govboxd's admin protocol, shared by the daemon that serves it and the `govbox` CLI that calls
//! it, so that a change on one side that the other does not follow is a compile error.
//!
//! - [`protocol`]: each request is a struct implementing [`Call`], whose `Answer` is the typed
//!   result; [`AdminRequest`] is the enum of them all, as a request line holds it, and
//!   [`Reply`] is an answer line.
//! - [`socket`]: where the socket is, its mode and group, its line and idle limits.
//! - [`roles`]: who may send which request (operators, auditors), from the peer's credentials.
//! - [`events`]: the audit entries a successful admin action makes, so that an action made through
//!   govboxd and the same action made by `govbox` on a stopped box leave the same entries.
//! - [`ops`]: the one implementation of each model and policy operation (import with its
//!   self-test, activation, rollback, removal, disable, list), which govboxd runs with its serving
//!   swap and `govbox` runs on a stopped box.
#![forbid(unsafe_code)]

pub mod events;
#[cfg(feature = "ops")]
pub mod ops;
pub mod protocol;
pub mod roles;
pub mod socket;

pub use protocol::{AdminRequest, Call, Refusal, Reply};
