//! Audit entries for changes `govbox` makes on a stopped box's state folder.
//!
//! govboxd records each admin action it serves (`govbox_admin::events`); when it is stopped, the
//! CLI makes the change itself and records the same entries, with `uid N` as the actor, in the
//! same log: through govbox-auditd's socket when it runs (the packaged layout), else the state
//! folder's own store. The log is opened before the change, so that a change that could not be
//! recorded is refused instead of made (fail-closed, like inference). The model and policy
//! changes are `govbox_admin::ops`' (govboxd's own), given a gate that writes their entries
//! before their record changes.

use std::path::Path;

use anyhow::{Context, Result};
use std::cell::Cell;

use govbox_admin::events::{Audited, failed};
use govbox_admin::ops::Gate;
use govbox_audit::{AuditHandle, AuditOptions, Event};
use govbox_provisioning::StatePaths;

/// The open audit log and who is acting.
pub struct OfflineAudit {
    log: AuditHandle,
    actor: String,
}

impl OfflineAudit {
    /// Opens the audit log of `state` (through `auditd` when given), refusing when it cannot be.
    pub fn open(state: &Path, auditd: Option<&Path>) -> Result<Self> {
        let paths = StatePaths::new(state);
        let log = crate::audit::open_log(&paths, auditd, AuditOptions::default()).context(
            "govboxd is stopped and the audit log cannot be opened, so the change is refused (it would go unrecorded)",
        )?;
        Ok(Self { log, actor: crate::audit::local_actor()? })
    }

    /// Who acts: `uid N`.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Does `action` for `req` with the audit entries govboxd would write: those the request
    /// decides first (refusing the action when they cannot be written), those of its outcome
    /// after, and a `…_failed` entry when it fails after a first entry was written.
    pub fn act<C: Audited>(&self, req: &C, action: impl FnOnce() -> Result<C::Answer>) -> Result<C::Answer> {
        self.act_gated(req, |_| action())
    }

    /// [`OfflineAudit::act`] for an operation of `govbox_admin::ops`, which writes the entries of
    /// its outcome through the [`Gate`] it is given, after its checks and before its change: they
    /// are written after its success only when it did not.
    pub fn act_gated<C: Audited>(
        &self,
        req: &C,
        action: impl FnOnce(&Gate<'_, C::Answer>) -> Result<C::Answer>,
    ) -> Result<C::Answer> {
        let before = req.before(&self.actor);
        let wrote = !before.is_empty();
        for ev in before {
            self.log
                .append_blocking(ev)
                .with_context(|| format!("{}: refused, its audit entry cannot be written", C::CMD))?;
        }
        let gated = Cell::new(false);
        let gate = |answer: &C::Answer| {
            gated.set(true);
            req.events(&self.actor, answer).into_iter().try_for_each(|ev| self.log.append_blocking(ev).map(drop))
        };
        match action(&gate) {
            Ok(a) => {
                if !gated.get() {
                    for ev in req.events(&self.actor, &a) {
                        self.append(ev)?;
                    }
                }
                Ok(a)
            }
            Err(e) => {
                if (wrote || gated.get())
                    && let Err(w) = self.append(failed(&self.actor, C::CMD, "failed", &format!("{e:#}")))
                {
                    eprintln!("warning: the failure could not be recorded in the audit log: {w:#}");
                }
                Err(e)
            }
        }
    }

    /// Appends one entry.
    pub fn append(&self, ev: Event) -> Result<()> {
        let kind = ev.kind();
        self.log.append_blocking(ev).with_context(|| {
            format!("the change was made, but its {kind} entry could not be written to the audit log")
        })?;
        Ok(())
    }

    /// Closes the log (flushing it).
    pub fn close(self) -> Result<()> {
        self.log.close()?;
        Ok(())
    }
}
