//! The audit entries each admin action makes, from its request and typed answer.
//!
//! govboxd appends them when it serves a request on the admin socket (`actor` is
//! `admin-socket uid N`); `govbox` appends the same ones when it makes the change on a stopped
//! box's state folder (`actor` is `uid N`).
//!
//! - [`Audited::before`]: entries whose content the request alone decides (who adds, revokes or
//!   renews which client; who takes which model out of service). They are written before the
//!   action, and the action is refused when they cannot be (fail-closed, like inference); an
//!   action that then fails leaves a second entry, [`failed`], naming why.
//! - [`Audited::events`]: entries that need the outcome (a package's digest, whether it became
//!   active, a certificate's serial), written after it.
//!
//! Actions that record themselves inside their own implementation before they act (an export, an
//! HMAC query, a content read, an attestation, an update step) make none here.

use govbox_audit::{Event, PackageAction};

use crate::protocol::*;

/// What a request leaves in the audit log.
pub trait Audited: Call {
    /// The entries to write before acting; `actor` says who asked.
    fn before(&self, actor: &str) -> Vec<Event> {
        let _ = actor;
        Vec::new()
    }

    /// The entries a success makes, in order.
    fn events(&self, actor: &str, answer: &Self::Answer) -> Vec<Event> {
        let _ = (actor, answer);
        Vec::new()
    }
}

/// The entry of an action whose [`Audited::before`] entry was written, and which then failed.
pub fn failed(actor: &str, cmd: &str, code: &str, message: &str) -> Event {
    admin(actor, &format!("{cmd}_failed"), format!("{code}: {message}"))
}

/// The entry of a package import (model or policy library) that was refused, by govboxd or by
/// `govbox` on a stopped box: `code` is the refusal's stable code.
pub fn refused(actor: &str, file: &std::path::Path, code: &str, reason: &dyn std::fmt::Display) -> Event {
    Event::PackageRefused {
        actor: actor.to_string(),
        file: file.display().to_string(),
        code: code.to_string(),
        reason: reason.to_string(),
    }
}

/// The hex of a digest label (`sha256-<hex>`, `sm3-<hex>`): entries name packages by their hex.
fn bare(digest: &str) -> String {
    govbox_provisioning::HashAlgorithm::strip_label(digest).to_string()
}

fn package(action: PackageAction, name: &str, version: &str, digest: &str) -> Event {
    Event::Package { action, name: name.to_string(), version: version.to_string(), digest: bare(digest) }
}

fn policy(action: PackageAction, actor: &str, name: &str, version: &str, digest: &str) -> Event {
    Event::PolicyPackage {
        action,
        actor: actor.to_string(),
        name: name.to_string(),
        version: version.to_string(),
        digest: digest.to_string(),
    }
}

fn admin(actor: &str, action: &str, subject: String) -> Event {
    Event::Admin { actor: actor.to_string(), action: action.to_string(), subject }
}

impl Audited for ModelImport {
    fn events(&self, _: &str, a: &ModelImported) -> Vec<Event> {
        let mut v = vec![package(PackageAction::Imported, &a.name, &a.version, &a.digest)];
        if a.active {
            v.push(package(PackageAction::Activated, &a.name, &a.version, &a.digest));
        }
        v
    }
}

impl Audited for ModelActivate {
    fn events(&self, _: &str, a: &ModelSwitched) -> Vec<Event> {
        vec![package(PackageAction::Activated, &a.name, &a.version, &a.digest)]
    }
}

impl Audited for ModelRollback {
    fn events(&self, _: &str, a: &ModelSwitched) -> Vec<Event> {
        vec![package(PackageAction::RolledBack, &a.name, &a.version, &a.digest)]
    }
}

impl Audited for ModelRemove {
    fn events(&self, _: &str, a: &ModelRemoved) -> Vec<Event> {
        vec![package(PackageAction::Removed, &a.name, &a.version, &a.digest)]
    }
}

impl Audited for ModelDisable {
    fn before(&self, actor: &str) -> Vec<Event> {
        vec![admin(actor, Self::CMD, self.name.clone())]
    }
}

impl Audited for ModelEnable {
    fn before(&self, actor: &str) -> Vec<Event> {
        vec![admin(actor, Self::CMD, self.name.clone())]
    }
}

impl Audited for PolicyImport {
    fn events(&self, actor: &str, a: &PolicyImported) -> Vec<Event> {
        let step = |action| policy(action, actor, &a.name, &a.version, &a.digest);
        match (a.already_present, a.active) {
            (true, _) => vec![],
            (false, true) => vec![step(PackageAction::Imported), step(PackageAction::Activated)],
            (false, false) => vec![step(PackageAction::Imported)],
        }
    }
}

impl Audited for PolicyActivate {
    fn events(&self, actor: &str, a: &ModelSwitched) -> Vec<Event> {
        vec![policy(PackageAction::Activated, actor, &a.name, &a.version, &a.digest)]
    }
}

impl Audited for PolicyRollback {
    fn events(&self, actor: &str, a: &ModelSwitched) -> Vec<Event> {
        vec![policy(PackageAction::RolledBack, actor, &a.name, &a.version, &a.digest)]
    }
}

impl Audited for ClientAdd {
    fn before(&self, actor: &str) -> Vec<Event> {
        // A client's own content-safety library (`off` included) is part of what was decided.
        let subject = match &self.policy {
            Some(p) => format!("{} (policy {p})", self.name),
            None => self.name.clone(),
        };
        vec![admin(actor, Self::CMD, subject)]
    }
}

impl Audited for ClientRevoke {
    fn before(&self, actor: &str) -> Vec<Event> {
        vec![admin(actor, Self::CMD, self.name.clone())]
    }
}

impl Audited for ClientRenew {
    fn before(&self, actor: &str) -> Vec<Event> {
        vec![admin(actor, Self::CMD, self.name.clone())]
    }
}

impl Audited for TlsReload {
    fn events(&self, actor: &str, a: &TlsReloaded) -> Vec<Event> {
        let subject = format!(
            "server certificate serial {} expires {} (was serial {} expiring {})",
            a.new.serial, a.new.expires, a.old.serial, a.old.expires
        );
        vec![admin(actor, Self::CMD, subject)]
    }
}

// Read-only, or recorded by the operation itself before it acts.
impl Audited for Status {}
impl Audited for ClientList {}
impl Audited for ModelList {}
impl Audited for PolicyList {}
impl Audited for AuditExport {}
impl Audited for AuditTail {}
impl Audited for AuditHmac {}
impl Audited for AuditPrune {}
impl Audited for Attest {}
impl Audited for ContentRead {}
impl Audited for UpdateEvent {}
#[cfg(debug_assertions)]
impl Audited for DebugEgressProbe {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_import_that_activates_makes_two_package_entries_with_the_bare_digest() {
        let a = ModelImported {
            name: "m".into(),
            version: "1.0.0".into(),
            digest: "sha256-ab".into(),
            size: 1,
            active: true,
            secs: 0.1,
            mb_per_s: 1.0,
            selftest: None,
        };
        let ev = ModelImport { path: "/p".into(), activate: false }.events("uid 0", &a);
        assert_eq!(ev.len(), 2);
        assert!(matches!(&ev[0], Event::Package { action: PackageAction::Imported, digest, .. } if digest == "ab"));
        let ev =
            ModelImport { path: "/p".into(), activate: false }.events("uid 0", &ModelImported { active: false, ..a });
        assert_eq!(ev.len(), 1);
    }
}
