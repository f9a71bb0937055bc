//! The TPM anchor: the latest signed tree head's size and root, kept in a TPM's non-volatile
//! memory beside a monotonic counter, so that a store found behind it is refused at open.
//!
//! **Why.** A witness (`[audit] witness`) catches a cut log only when an auditor checks an export
//! against the log server's file. With a TPM the box itself notices: whoever cuts the store back
//! with file access (an older copy put back, the newest entries deleted as issue 19 showed, a
//! disk taken out and edited) cannot move the TPM's record back with it.
//!
//! **What the TPM holds** (`[audit] tpm_anchor = "TCTI"`, indices `tpm_anchor_index` and the one
//! after it, in the owner hierarchy):
//! - index `N`, 52 bytes: `"GBA1"`, then the counter value this record was written under, the
//!   tree size and the Merkle root (u64 big-endian, u64 big-endian, 32 bytes);
//! - index `N + 1`: a TPM counter (`TPM_NT_COUNTER`), which only ever goes up.
//!
//! Each anchoring writes the record with the counter's next value, then increments the counter.
//! At open the record must carry the counter's value (or the next one: the write landed, the
//! increment did not), cover no more entries than the store has, and its root must be the
//! store's root at its size. A record with an older counter value was put back from a copy.
//!
//! Both indices are written and read under an authorization value derived from the audit
//! signing key (SHA-256 of its deterministic Ed25519 signature over [`AUTH_CONTEXT`]), so that
//! only a holder of that key (root, `govbox-auditd`) can move them; anyone who can reach the
//! TPM can still undefine them with the owner authorization (root), which the README's table
//! counts as root's power.
//!
//! **When.** Every head made on request (a checkpoint, an export, close) is anchored; heads made
//! by the timer or the entry count at most once per `tpm_anchor_interval_secs` (60 s by default),
//! because TPM non-volatile memory wears: at the default that is at most 525,600 writes a year,
//! and the interval is also how far a physical-disk attacker can cut without the box noticing.
//!
//! **When it fails.** A store behind its anchor is refused ([`crate::AuditError::Corrupt`]) by
//! [`crate::AuditLog::open`]; `govbox-auditd` opens it held instead
//! ([`crate::AuditLog::open_or_hold`]): it answers nothing but its status and an operator's
//! acknowledgement, which is itself the first entry appended and re-anchors the TPM at the
//! store's new head. A TPM that cannot be reached at open stops the start (fail closed); one that
//! fails later is reported and retried with the next head, and appends go on.

use std::time::{Duration, Instant};

use govbox_provisioning::SigningKey;

use crate::error::{AuditError, Result};
use crate::merkle::Hash;
use crate::sth::to_hex;

#[cfg(feature = "tpm")]
mod tpm;

/// The default NV index of the record; the counter is the next index. In the range the TCG's
/// registry of reserved handles leaves to the owner (`0x01000000`–`0x013fffff`).
pub const DEFAULT_NV_INDEX: u32 = 0x013a_0a00;
/// The lowest and highest NV index `tpm_anchor_index` may name (the counter takes the next one).
pub const NV_INDEX_RANGE: (u32, u32) = (0x0100_0000, 0x013f_fffe);
/// The default time between anchorings of heads made by the timer or the entry count.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// What the indices' authorization value is derived from.
pub const AUTH_CONTEXT: &[u8] = b"govbox-audit-tpm-anchor/1 authorization";
/// The record's size in the NV index.
pub const RECORD_LEN: usize = 4 + 8 + 8 + 32;
const MAGIC: [u8; 4] = *b"GBA1";

/// `[audit] tpm_anchor`: where the TPM is and which indices hold the anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmAnchorConfig {
    /// The TCTI: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, ...
    pub tcti: String,
    /// The record's NV index; the counter is the next one.
    pub nv_index: u32,
    /// The least time between anchorings of heads made by the timer or the entry count.
    pub interval: Duration,
}

impl TpmAnchorConfig {
    /// The anchor at the default indices and interval.
    pub fn new(tcti: impl Into<String>) -> Self {
        Self { tcti: tcti.into(), nv_index: DEFAULT_NV_INDEX, interval: DEFAULT_INTERVAL }
    }

    /// The counter's NV index.
    pub fn counter_index(&self) -> u32 {
        self.nv_index + 1
    }

    /// Checks the settings, naming the one that is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.tcti.trim().is_empty() {
            return Err(AuditError::Config("audit.tpm_anchor: empty TCTI".into()));
        }
        if !(NV_INDEX_RANGE.0..=NV_INDEX_RANGE.1).contains(&self.nv_index) {
            return Err(AuditError::Config(format!(
                "audit.tpm_anchor_index: {:#010x} is outside the owner NV range {:#010x}..={:#010x}",
                self.nv_index, NV_INDEX_RANGE.0, NV_INDEX_RANGE.1
            )));
        }
        if self.interval.is_zero() {
            return Err(AuditError::Config("audit.tpm_anchor_interval_secs: must be at least 1".into()));
        }
        Ok(())
    }
}

/// What the record index holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchorRecord {
    /// The counter value it was written under.
    pub counter: u64,
    /// The anchored head's tree size.
    pub tree_size: u64,
    /// The anchored head's root.
    pub root: Hash,
}

impl AnchorRecord {
    /// The record's bytes in the NV index.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..12].copy_from_slice(&self.counter.to_be_bytes());
        out[12..20].copy_from_slice(&self.tree_size.to_be_bytes());
        out[20..].copy_from_slice(&self.root);
        out
    }

    /// Parses the NV index's bytes; `None` when they are not a record.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != RECORD_LEN || bytes[..4] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| bytes.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        Some(Self { counter: u64_at(4)?, tree_size: u64_at(12)?, root: bytes[20..].try_into().ok()? })
    }
}

/// The verdict on a store against what the TPM holds: `None` when the store extends the anchor,
/// else why it is refused. `root_at(n)` is the store's root over its first `n` leaves.
pub fn judge(
    record: &AnchorRecord,
    counter: u64,
    store_size: u64,
    root_at: impl FnOnce(u64) -> Result<Hash>,
) -> Result<Option<String>> {
    if record.counter != counter && record.counter != counter.wrapping_add(1) {
        return Ok(Some(format!(
            "the TPM anchor's record was written under counter {} but the TPM counter is at {counter}: \
             the record was put back from an older copy",
            record.counter
        )));
    }
    if record.tree_size > store_size {
        return Ok(Some(format!(
            "the store has {store_size} entries but the TPM anchor holds a signed head of {} entries \
             (counter {}): entries were removed with file access",
            record.tree_size, record.counter
        )));
    }
    let root = root_at(record.tree_size)?;
    if root != record.root {
        return Ok(Some(format!(
            "the store's root over its first {} entries is {}, not the TPM anchor's {} (counter {}): the log was \
             rewritten",
            record.tree_size,
            to_hex(&root),
            to_hex(&record.root),
            record.counter
        )));
    }
    Ok(None)
}

/// The indices' authorization value for the audit key `signing`.
pub fn authorization(signing: &SigningKey) -> [u8; 32] {
    let sig = signing.sign(AUTH_CONTEXT);
    let d = ring::digest::digest(&ring::digest::SHA256, &sig);
    d.as_ref().try_into().unwrap_or([0; 32])
}

/// What anchoring reports (`govbox-auditd`'s status).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AnchorStatus {
    /// The TCTI.
    pub tcti: String,
    /// The tree size of the last head anchored.
    pub anchored_size: u64,
    /// The counter's value after it.
    pub counter: u64,
    /// The last anchoring's error, cleared by the next success.
    pub last_error: Option<String>,
}

/// The anchor as the writer uses it.
pub(crate) struct Anchor {
    cfg: TpmAnchorConfig,
    #[cfg_attr(not(feature = "tpm"), allow(dead_code))]
    auth: [u8; 32],
    counter: u64,
    anchored_size: Option<u64>,
    last: Option<Instant>,
    pub status: AnchorStatus,
}

/// What opening found in the TPM.
#[cfg_attr(not(feature = "tpm"), allow(dead_code))]
pub(crate) enum Found {
    /// No record yet: the indices were just defined.
    Fresh,
    /// A record and the counter's value.
    Record(AnchorRecord, u64),
}

impl Anchor {
    /// Reaches the TPM and reads the anchor, defining the indices on first use.
    pub fn open(cfg: TpmAnchorConfig, signing: &SigningKey) -> Result<(Self, Found)> {
        cfg.validate()?;
        let auth = authorization(signing);
        let found = backend::read_or_define(&cfg, &auth)?;
        let counter = match &found {
            Found::Fresh => 0,
            Found::Record(_, c) => *c,
        };
        let status = AnchorStatus { tcti: cfg.tcti.clone(), counter, ..AnchorStatus::default() };
        Ok((Self { cfg, auth, counter, anchored_size: None, last: None, status }, found))
    }

    /// Writes `(size, root)` unless `forced` is false and the last anchoring is more recent than
    /// the interval, or that size is already anchored. Errors are kept in the status.
    pub fn anchor(&mut self, size: u64, root: &Hash, forced: bool) -> Result<()> {
        if self.anchored_size == Some(size) {
            return Ok(());
        }
        if !forced && self.last.is_some_and(|t| t.elapsed() < self.cfg.interval) {
            return Ok(());
        }
        let record = AnchorRecord { counter: self.counter + 1, tree_size: size, root: *root };
        match backend::write(&self.cfg, &self.auth, &record) {
            Ok(counter) => {
                self.counter = counter;
                self.anchored_size = Some(size);
                self.last = Some(Instant::now());
                self.status.anchored_size = size;
                self.status.counter = counter;
                self.status.last_error = None;
                Ok(())
            }
            Err(e) => {
                self.status.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The counter's value when the record was written but the increment did not land.
    pub fn finish_increment(&mut self, record: &AnchorRecord) -> Result<()> {
        if record.counter == self.counter.wrapping_add(1) {
            self.counter = backend::increment(&self.cfg, &self.auth)?;
            self.status.counter = self.counter;
        }
        self.anchored_size = Some(record.tree_size);
        self.status.anchored_size = record.tree_size;
        Ok(())
    }
}

#[cfg(feature = "tpm")]
use tpm as backend;

/// Without the `tpm` feature every call says so.
#[cfg(not(feature = "tpm"))]
mod backend {
    use super::{AnchorRecord, Found, TpmAnchorConfig};
    use crate::error::{AuditError, Result};

    fn absent(cfg: &TpmAnchorConfig) -> AuditError {
        AuditError::Anchor(format!(
            "audit.tpm_anchor = \"{}\": this build has no TPM support (build govbox-auditd with --features tpm, \
             which needs libtss2)",
            cfg.tcti
        ))
    }

    pub fn read_or_define(cfg: &TpmAnchorConfig, _auth: &[u8; 32]) -> Result<Found> {
        Err(absent(cfg))
    }

    pub fn write(cfg: &TpmAnchorConfig, _auth: &[u8; 32], _record: &AnchorRecord) -> Result<u64> {
        Err(absent(cfg))
    }

    pub fn increment(cfg: &TpmAnchorConfig, _auth: &[u8; 32]) -> Result<u64> {
        Err(absent(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(counter: u64, size: u64, root: u8) -> AnchorRecord {
        AnchorRecord { counter, tree_size: size, root: [root; 32] }
    }

    #[test]
    fn a_record_round_trips_and_other_bytes_are_not_one() {
        let r = record(7, 1234, 9);
        assert_eq!(AnchorRecord::decode(&r.encode()), Some(r));
        let mut bad = r.encode();
        bad[0] = b'X';
        assert_eq!(AnchorRecord::decode(&bad), None);
        assert_eq!(AnchorRecord::decode(&r.encode()[..RECORD_LEN - 1]), None);
        assert_eq!(AnchorRecord::decode(&[0; RECORD_LEN]), None);
    }

    #[test]
    fn a_store_behind_or_beside_its_anchor_is_refused_and_one_ahead_is_not() {
        let ok = |_: u64| Ok([5; 32]);
        // The store extends the anchored head.
        assert_eq!(judge(&record(3, 10, 5), 3, 10, ok).unwrap(), None);
        assert_eq!(judge(&record(3, 10, 5), 3, 25, ok).unwrap(), None);
        // The record was written, the increment did not land.
        assert_eq!(judge(&record(4, 10, 5), 3, 10, ok).unwrap(), None);
        // Cut back.
        let cut = judge(&record(3, 10, 5), 3, 9, ok).unwrap().unwrap();
        assert!(cut.contains("has 9 entries") && cut.contains("10 entries"), "{cut}");
        // Rewritten: same size, another root.
        let other = judge(&record(3, 10, 5), 3, 10, |_| Ok([6; 32])).unwrap().unwrap();
        assert!(other.contains("rewritten"), "{other}");
        // An older record put back into the index: the counter moved on without it.
        let old = judge(&record(2, 10, 5), 3, 10, ok).unwrap().unwrap();
        assert!(old.contains("older copy"), "{old}");
        let ahead = judge(&record(9, 10, 5), 3, 10, ok).unwrap().unwrap();
        assert!(ahead.contains("counter 9"), "{ahead}");
    }

    #[test]
    fn settings_are_checked_by_name() {
        TpmAnchorConfig::new("device:/dev/tpmrm0").validate().unwrap();
        let e = TpmAnchorConfig::new(" ").validate().unwrap_err().to_string();
        assert!(e.contains("audit.tpm_anchor"), "{e}");
        let mut c = TpmAnchorConfig::new("device:/dev/tpmrm0");
        c.nv_index = 0x01c0_0002;
        assert!(c.validate().unwrap_err().to_string().contains("audit.tpm_anchor_index"));
        c.nv_index = DEFAULT_NV_INDEX;
        c.interval = Duration::ZERO;
        assert!(c.validate().unwrap_err().to_string().contains("tpm_anchor_interval_secs"));
    }

    #[test]
    fn the_authorization_is_the_keys_and_stable() {
        let k = SigningKey::generate().unwrap();
        assert_eq!(authorization(&k), authorization(&k));
        assert_ne!(authorization(&k), authorization(&SigningKey::generate().unwrap()));
    }

    #[cfg(not(feature = "tpm"))]
    #[test]
    fn without_the_feature_the_anchor_says_why() {
        let k = SigningKey::generate().unwrap();
        let e = Anchor::open(TpmAnchorConfig::new("swtpm:port=2321"), &k).err().unwrap();
        assert_eq!(e.code(), "audit_anchor");
        assert!(e.to_string().contains("--features tpm"), "{e}");
    }
}
