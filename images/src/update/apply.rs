//! The update state machine: stage, switch, restart, confirm or revert; the boot counter; and
//! the operator's rollback. The host (restarting govboxd, waiting for readiness, recording
//! audit entries) is the caller's: see [`UpdateHost`].
//!
//! Ordering rules that make every instant safe to lose power at:
//! - a slot appears under `slots/X` only complete and fsynced (one rename of its staging folder);
//! - before switching to a new slot, `update-state.json` is written with phase `trial`; after a
//!   revert or rollback switch, it is written after the switch. So whenever the state file and
//!   the link disagree, the link is on a complete slot and [`boot_check`] makes the state agree;
//! - the stored security version is raised only when a version is committed, so an automatic
//!   revert can always go back, and it never falls.

use std::cell::RefCell;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use govbox_provisioning::{Role, TrustRoot, to_canonical_json};
use serde::Serialize;

use super::bundle::{CLI_PATH, DAEMON_PATH};
use super::error::UpdateError;
use super::layout::{BOOT_LIMIT, InstallRoot, Phase, SLOT_META, Slot, SlotMeta, UpdateLock, UpdateState, now_rfc3339};
use super::sink::SlotSink;
use crate::error::PackageError;
use crate::fsutil::{random_hex, sync_dir, write_atomic};
use crate::manifest::Manifest;
use crate::path::MANIFEST_NAME;
use crate::signature::Policy;
use crate::staging::PAYLOAD_DIR;
use crate::verify::{file_label, verify_into};

type Result<T> = std::result::Result<T, UpdateError>;

/// Where a test may make `govbox update apply` die (`GOVBOX_UPDATE_FAULT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultPoint {
    /// The new slot is staged; `current` is untouched.
    AfterStage,
    /// The new link exists under its temporary name; `current` is not yet replaced.
    MidSwitch,
    /// `current` points at the new slot; govboxd was not restarted.
    AfterSwitch,
    /// govboxd was restarted on the new slot and is not confirmed ready.
    DuringTrial,
}

impl FaultPoint {
    /// `after_stage`, `mid_switch`, `after_switch`, `during_trial`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultPoint::AfterStage => "after_stage",
            FaultPoint::MidSwitch => "mid_switch",
            FaultPoint::AfterSwitch => "after_switch",
            FaultPoint::DuringTrial => "during_trial",
        }
    }
}

/// What the state machine needs from its surroundings.
pub trait UpdateHost {
    /// Records one step in the audit log (`update` entry). Best effort: an update must be able
    /// to revert even when the audit store cannot be written, so failures are the host's to report.
    fn record(&mut self, step: &str, detail: &str);
    /// Restarts govboxd so that it runs `ROOT/current/govboxd`.
    fn restart(&mut self) -> std::result::Result<(), String>;
    /// Waits, with the host's deadline, until govboxd is ready.
    fn wait_ready(&mut self) -> std::result::Result<(), String>;
    /// Called at each [`FaultPoint`]; production hosts do nothing.
    fn fault(&mut self, point: FaultPoint);
}

/// A bundle staged into a slot.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The slot it went into.
    pub slot: Slot,
    /// Its metadata.
    pub meta: SlotMeta,
}

/// What [`apply`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// The slot now current.
    pub slot: Slot,
    /// The version now running.
    pub version: String,
    /// The stored security version now.
    pub security_version: u64,
    /// Whether a new trust root was installed.
    pub root_rotated: bool,
}

/// What [`boot_check`] or [`boot_ok`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BootAction {
    /// A `govbox update apply` holds the lock and is in charge.
    ApplyRunning,
    /// Nothing to do.
    Nothing,
    /// A trial start was counted.
    Counted {
        /// Starts so far.
        boot_count: u32,
    },
    /// The trial was committed.
    Committed,
    /// `current` was put back on the previous slot.
    Reverted {
        /// Why.
        reason: String,
    },
    /// The state file was brought in line with `current`.
    Repaired {
        /// What was wrong.
        reason: String,
    },
}

fn state(phase: Phase, current: Slot, previous: Option<Slot>, boot_count: u32) -> UpdateState {
    UpdateState { phase, current, previous, boot_count, since: now_rfc3339() }
}

/// Steps 1–3: verifies `bundle` against `trust`'s `updates` threshold, refuses a security version
/// below the stored one, and stages it into the slot `current` does not point at. Nothing of the
/// bundle is written before its signatures and security version pass; the staged slot replaces
/// the inactive one with one rename, complete and fsynced.
pub fn stage(root: &InstallRoot, _lock: &UpdateLock, bundle: &Path, trust: &TrustRoot) -> Result<Staged> {
    let target = root.current()?.map_or(Slot::A, Slot::other);
    let stored = root.security_version()?;
    let refusal: RefCell<Option<UpdateError>> = RefCell::new(None);
    let precheck = |m: &Manifest| -> std::result::Result<(), PackageError> {
        let r = precheck(m, stored, trust);
        r.map_err(|e| {
            let msg = e.to_string();
            *refusal.borrow_mut() = Some(e);
            PackageError::Build { package: m.label(), reason: msg }
        })
    };
    let slots = root.slots_dir();
    let mut sink = SlotSink::new(&slots, &precheck);
    let file = File::open(bundle).map_err(|e| UpdateError::io("opening update bundle", bundle, e))?;
    let policy = Policy::Trust(trust, Role::Updates);
    let verified = match verify_into(file, &file_label(bundle), &policy, &mut sink, &mut |_, _| {}) {
        Ok(v) => v,
        Err(e) => return Err(refusal.borrow_mut().take().unwrap_or(UpdateError::Bundle(e))),
    };
    sink.sync_dirs()?;
    let staging = sink.staging.take().ok_or_else(|| UpdateError::SlotInvalid {
        slot: target.to_string(),
        reason: "internal: nothing was staged".into(),
    })?;
    let dir = staging.path().to_path_buf();
    let m = &verified.head.manifest;
    for bin in [DAEMON_PATH, CLI_PATH] {
        let p = dir.join(PAYLOAD_DIR).join(bin);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).map_err(|e| UpdateError::io("chmod", &p, e))?;
        let name = bin.rsplit('/').next().unwrap_or(bin);
        let link = dir.join(name);
        std::os::unix::fs::symlink(Path::new(PAYLOAD_DIR).join(bin), &link)
            .map_err(|e| UpdateError::io("creating link", &link, e))?;
    }
    let meta = SlotMeta {
        version: m.version.to_string(),
        security_version: m.update.as_ref().map_or(0, |u| u.security_version),
        digest: verified.head.digest.clone(),
        staged: now_rfc3339(),
    };
    let meta_bytes = serde_json::to_vec_pretty(&meta)
        .map_err(|e| UpdateError::CorruptState { path: dir.join(SLOT_META), reason: e.to_string() })?;
    write_atomic(&dir.join(SLOT_META), &meta_bytes, 0o644)?;
    // The staging folder is private (0700); the unprivileged daemon must be able to run from it.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(|e| UpdateError::io("chmod", &dir, e))?;
    sync_dir(&dir)?;
    // The inactive slot is renamed away first, so that `slots/X` is never half removed.
    let dest = root.slot_dir(target);
    if dest.exists() {
        let old = slots.join(format!(".old-{target}-{}", random_hex(8)?));
        fs::rename(&dest, &old).map_err(|e| UpdateError::io("moving aside", &dest, e))?;
        sync_dir(&slots)?;
        fs::remove_dir_all(&old).map_err(|e| UpdateError::io("removing", &old, e))?;
    }
    staging.commit_to(&dest)?;
    Ok(Staged { slot: target, meta })
}

/// The checks on a trusted manifest before anything is written.
fn precheck(m: &Manifest, stored: u64, trust: &TrustRoot) -> Result<()> {
    let package = m.label();
    let info = m.update.as_ref().ok_or_else(|| UpdateError::NotAnUpdate {
        package: package.clone(),
        reason: "the manifest has no \"update\" section".into(),
    })?;
    // "Update bundles must carry a security_version at least the stored one" (ARCHITECTURE.md).
    if info.security_version < stored {
        return Err(UpdateError::SecurityVersionTooLow { package, bundle: info.security_version, stored });
    }
    for need in [DAEMON_PATH, CLI_PATH] {
        if !m.files.iter().any(|f| f.path.as_str() == need) {
            return Err(UpdateError::NotAnUpdate { package, reason: format!("the payload has no '{need}'") });
        }
    }
    // "A new root is accepted only if the current root's threshold signed it": checked now, so
    // that a bundle with a bad root is refused before it is staged; installed on commit.
    if let Some(new_root) = &info.root {
        let bytes = to_canonical_json(new_root);
        if TrustRoot::parse(bytes.as_bytes(), "update.root")?.version() > trust.version() {
            crate::root::accept_new_root(trust, bytes.as_bytes())?;
        }
    }
    Ok(())
}

/// Step 7: the new root (if the slot's bundle carries one) and the security version take
/// effect, and the trial ends. The new root replaces the root-owned update trust anchor only if
/// the current anchor's `root` threshold signed it (checked again here: the slot is on disk).
fn commit(root: &InstallRoot, slot: Slot, previous: Option<Slot>) -> Result<(SlotMeta, bool)> {
    let meta = root
        .slot_meta(slot)?
        .ok_or_else(|| UpdateError::SlotInvalid { slot: slot.to_string(), reason: "missing (no slot.json)".into() })?;
    let mpath = root.slot_dir(slot).join(MANIFEST_NAME);
    let bytes = crate::fsutil::read_capped(&mpath, crate::manifest::MANIFEST_LIMIT, "manifest")?;
    let manifest = Manifest::parse(&bytes, slot.as_str())?;
    let mut rotated = false;
    if let Some(new_root) = manifest.update.as_ref().and_then(|u| u.root.as_ref()) {
        let new_bytes = to_canonical_json(new_root);
        let new_version = TrustRoot::parse(new_bytes.as_bytes(), "update.root")?.version();
        let anchor = root.anchor()?;
        // Already installed when an earlier commit of this slot was interrupted.
        if new_version > anchor.version() {
            root.rotate_anchor(&anchor, new_bytes.as_bytes())?;
            rotated = true;
        }
    }
    root.raise_security_version(meta.security_version)?;
    root.write_state(&state(Phase::Committed, slot, previous, 0))?;
    Ok((meta, rotated))
}

/// Step 8: `current` back on `to`, the state says why.
fn revert_to(root: &InstallRoot, to: Slot, failed: Slot) -> Result<()> {
    root.switch_current(to, &mut || {})?;
    root.write_state(&state(Phase::Reverted, to, Some(failed), 0))
}

/// `govbox update apply`: every step, recorded through `host`. An unconfirmed trial left by an
/// earlier apply that died is reverted first. Bundles are checked against the install folder's
/// update trust anchor ([`InstallRoot::anchor`]), never against a file of the service's.
pub fn apply(root: &InstallRoot, bundle: &Path, host: &mut dyn UpdateHost) -> Result<Applied> {
    let lock = root.lock()?;
    root.clean_leftovers(&lock)?;
    if let Some(s) = root.state()?
        && s.phase == Phase::Trial
        && let Some(prev) = s.previous
    {
        revert_to(root, prev, s.current)?;
        host.record("reverted", &format!("slot {}: an unconfirmed trial was found; back on slot {prev}", s.current));
    }
    // Step 1: the update trust anchor's `updates` threshold.
    let trust = match root.anchor() {
        Ok(t) => t,
        Err(e) => {
            host.record("refused", &format!("{}: {} ({})", file_label(bundle), e, e.code()));
            return Err(e);
        }
    };
    let label = file_label(bundle);
    let previous = root.current()?;
    let staged = match stage(root, &lock, bundle, &trust) {
        Ok(s) => s,
        Err(e) => {
            host.record("refused", &format!("{label}: {} ({})", e, e.code()));
            return Err(e);
        }
    };
    let (slot, version) = (staged.slot, staged.meta.version.clone());
    host.record(
        "staged",
        &format!(
            "{label}: version {version}, security_version {}, digest {}, slot {slot}",
            staged.meta.security_version, staged.meta.digest
        ),
    );
    host.fault(FaultPoint::AfterStage);
    // Step 4: the trial marker first, then the link.
    root.write_state(&state(Phase::Trial, slot, previous, 0))?;
    root.switch_current(slot, &mut || host.fault(FaultPoint::MidSwitch))?;
    let from = previous.map_or_else(|| "nothing".to_string(), |p| format!("slot {p}"));
    host.record("switched", &format!("current: {from} -> slot {slot} ({version})"));
    host.fault(FaultPoint::AfterSwitch);
    // Steps 5 and 6: restart and wait for readiness.
    let ready = host.restart().and_then(|()| {
        host.fault(FaultPoint::DuringTrial);
        host.wait_ready()
    });
    match ready {
        Ok(()) => {
            let (meta, root_rotated) = commit(root, slot, previous)?;
            let sv = root.security_version()?;
            let rot = if root_rotated { "; trust root rotated" } else { "" };
            host.record("committed", &format!("slot {slot} ({version}), security_version {sv}{rot}"));
            Ok(Applied { slot, version: meta.version, security_version: sv, root_rotated })
        }
        Err(reason) => {
            let Some(prev) = previous else {
                host.record("failed", &format!("slot {slot} ({version}): {reason}; no previous slot to revert to"));
                return Err(UpdateError::Reverted { version, reason: format!("{reason}; no previous slot") });
            };
            revert_to(root, prev, slot)?;
            let back = host.restart().and_then(|()| host.wait_ready());
            let after = match &back {
                Ok(()) => "the previous version is ready".to_string(),
                Err(e) => format!("the previous version is not ready either: {e}"),
            };
            host.record("reverted", &format!("slot {slot} ({version}): {reason}; back on slot {prev}; {after}"));
            Err(UpdateError::Reverted { version, reason })
        }
    }
}

/// `govbox update boot-check` (`ExecStartPre=+`): makes the state file agree with `current`,
/// counts a start of an unconfirmed trial, and reverts it after [`BOOT_LIMIT`] starts or when
/// its slot no longer verifies. It never restarts anything: the start it runs before proceeds
/// with whatever `current` then points at.
pub fn boot_check(root: &InstallRoot, trust: Option<&TrustRoot>, host: &mut dyn UpdateHost) -> Result<BootAction> {
    let lock = match root.lock() {
        Ok(l) => l,
        Err(UpdateError::Busy { .. }) => return Ok(BootAction::ApplyRunning),
        Err(e) => return Err(e),
    };
    root.clean_leftovers(&lock)?;
    let (Some(s), Some(link)) = (root.state()?, root.current()?) else {
        return Ok(BootAction::Nothing);
    };
    if link != s.current {
        // A switch was interrupted between the link and the state file.
        let (phase, reason) = if s.phase == Phase::Trial {
            (Phase::Reverted, format!("the switch to slot {} did not complete; slot {link} stays", s.current))
        } else {
            (Phase::RolledBack, format!("a switch to slot {link} completed before its state was written"))
        };
        root.write_state(&state(phase, link, Some(s.current), 0))?;
        host.record("repaired", &reason);
        return Ok(BootAction::Repaired { reason });
    }
    if s.phase != Phase::Trial {
        return Ok(BootAction::Nothing);
    }
    let Some(prev) = s.previous else {
        return Ok(BootAction::Nothing);
    };
    let boot_count = s.boot_count.saturating_add(1);
    let reason = match root.verify_slot(link, trust) {
        Err(e) => Some(format!("slot {link} does not verify: {e}")),
        Ok(_) if boot_count > BOOT_LIMIT => {
            Some(format!("slot {link} started {} times without being confirmed ready", boot_count - 1))
        }
        Ok(_) => None,
    };
    if let Some(reason) = reason {
        revert_to(root, prev, link)?;
        host.record("reverted", &format!("{reason}; back on slot {prev}"));
        return Ok(BootAction::Reverted { reason });
    }
    root.write_state(&UpdateState { boot_count, ..s })?;
    host.record("trial_boot", &format!("slot {link}: start {boot_count} of {BOOT_LIMIT} before a revert"));
    Ok(BootAction::Counted { boot_count })
}

/// `govbox update boot-ok` (`ExecStartPost=+`, after READY=1): commits a trial whose apply is
/// gone (a power loss during the trial), now that its daemon reported ready.
pub fn boot_ok(root: &InstallRoot, host: &mut dyn UpdateHost) -> Result<BootAction> {
    let lock = match root.lock() {
        Ok(l) => l,
        Err(UpdateError::Busy { .. }) => return Ok(BootAction::ApplyRunning),
        Err(e) => return Err(e),
    };
    root.clean_leftovers(&lock)?;
    match (root.state()?, root.current()?) {
        (Some(s), Some(link)) if s.phase == Phase::Trial && link == s.current => {
            let (meta, _) = commit(root, link, s.previous)?;
            host.record("committed", &format!("slot {link} ({}) confirmed ready at start", meta.version));
            Ok(BootAction::Committed)
        }
        _ => Ok(BootAction::Nothing),
    }
}

/// `govbox update rollback`: back to the other slot, if it verifies and its security version is
/// not below the stored one; then restart and wait for readiness.
pub fn rollback(root: &InstallRoot, trust: &TrustRoot, host: &mut dyn UpdateHost) -> Result<SlotMeta> {
    let lock = root.lock()?;
    root.clean_leftovers(&lock)?;
    let current = root.current()?.ok_or_else(|| UpdateError::NoPreviousSlot { root: root.path().to_path_buf() })?;
    let target = current.other();
    if root.slot_meta(target)?.is_none() {
        return Err(UpdateError::NoPreviousSlot { root: root.path().to_path_buf() });
    }
    let meta = root.verify_slot(target, Some(trust))?;
    let stored = root.security_version()?;
    if meta.security_version < stored {
        let e = UpdateError::RollbackRefused {
            slot: target.to_string(),
            version: meta.version.clone(),
            slot_security_version: meta.security_version,
            stored,
        };
        host.record("rollback_refused", &e.to_string());
        return Err(e);
    }
    root.switch_current(target, &mut || {})?;
    root.write_state(&state(Phase::RolledBack, target, Some(current), 0))?;
    host.record("rolled_back", &format!("current: slot {current} -> slot {target} ({})", meta.version));
    host.restart().and_then(|()| host.wait_ready()).map_err(|reason| UpdateError::Restart { reason })?;
    Ok(meta)
}

/// One slot in [`status`].
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// `a` or `b`.
    pub slot: Slot,
    /// Whether `current` points here.
    pub current: bool,
    /// Its metadata, when staged.
    pub meta: Option<SlotMeta>,
    /// `None` when it verifies (or was not checked); else why not.
    pub problem: Option<String>,
}

/// `govbox update status`.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateStatus {
    /// The install folder.
    pub root: String,
    /// The slot `current` points at.
    pub current: Option<Slot>,
    /// The stored security version.
    pub security_version: u64,
    /// `update-state.json`.
    pub state: Option<UpdateState>,
    /// Both slots.
    pub slots: Vec<SlotStatus>,
}

/// Reads everything (changes nothing); with `verify`, re-hashes each staged slot against its
/// signed manifest (and `trust`'s `updates` threshold, when given).
pub fn status(root: &InstallRoot, trust: Option<&TrustRoot>, verify: bool) -> Result<UpdateStatus> {
    let current = root.current()?;
    let mut slots = Vec::new();
    for slot in [Slot::A, Slot::B] {
        let meta = root.slot_meta(slot)?;
        let problem =
            if verify && meta.is_some() { root.verify_slot(slot, trust).err().map(|e| e.to_string()) } else { None };
        slots.push(SlotStatus { slot, current: current == Some(slot), meta, problem });
    }
    Ok(UpdateStatus {
        root: root.path().display().to_string(),
        current,
        security_version: root.security_version()?,
        state: root.state()?,
        slots,
    })
}
