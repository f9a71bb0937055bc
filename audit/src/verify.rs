//! Offline verification of an export: needs nothing but the file (and, optionally, the previous
//! export and a pinned audit key).
//!
//! Each step is one function below, with its rule quoted. A step that fails adds a failing
//! [`Check`] whose detail names the seq; verification goes on, so that one report lists every
//! problem. Only input that is not an export at all (too large, not JSON, wrong format tag,
//! unparseable key) is an error.

use govbox_provisioning::{HashAlgorithm, HexCase, PublicKey, Suite, unhex};
use serde::Serialize;

use crate::entry::Entry;
use crate::error::{AuditError, Result};
use crate::export::{EXPORT_FORMAT, ExportDoc};
use crate::merkle::{Frontier, Hash, leaf_hash, verify_consistency};

use crate::sth::SignedTreeHead;
use crate::witness::{WitnessRecord, parse_witness_file};

/// Largest export accepted, in bytes (2 GiB).
pub const MAX_EXPORT_BYTES: u64 = 2 << 30;
/// Most per-seq failures listed one by one; the rest are counted in one more check.
const MAX_LISTED_FAILURES: usize = 100;

/// One verification step's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The step, e.g. `entries`, `root`, `signature`, `consistency`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found; failures name the seq, e.g. `seq 5: entry hash mismatch`.
    pub detail: String,
}

/// The outcome of verifying an export or the live store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The first seq covered.
    pub from: u64,
    /// The last seq covered (inclusive).
    pub to: u64,
    /// The number of entries present.
    pub count: u64,
    /// Missing seqs, as inclusive ranges.
    pub gaps: Vec<(u64, u64)>,
    /// The signed head's tree size.
    pub tree_size: u64,
    /// The key id of the audit key that signs the heads.
    pub audit_keyid: String,
    /// The device identity's key id, when the export names it.
    pub device_keyid: Option<String>,
    /// Every step, in order.
    pub checks: Vec<Check>,
    /// True when every check passed.
    pub ok: bool,
}

/// Collects checks, listing at most [`MAX_LISTED_FAILURES`] per-seq failures.
#[derive(Default)]
pub(crate) struct Checks {
    pub list: Vec<Check>,
    seq_failures: usize,
}

impl Checks {
    pub fn add(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.list.push(Check { name: name.to_string(), ok, detail: detail.into() });
    }

    /// A failure about one seq.
    pub fn seq_failure(&mut self, name: &str, detail: String) {
        self.seq_failures += 1;
        if self.seq_failures <= MAX_LISTED_FAILURES {
            self.add(name, false, detail);
        }
    }

    pub fn seq_failures(&self) -> usize {
        self.seq_failures
    }

    pub fn finish(mut self) -> (Vec<Check>, bool) {
        if self.seq_failures > MAX_LISTED_FAILURES {
            let more = self.seq_failures - MAX_LISTED_FAILURES;
            self.add("entries", false, format!("... and {more} more failures not listed"));
        }
        let ok = self.list.iter().all(|c| c.ok);
        (self.list, ok)
    }
}

/// Parses an export, refusing anything that is not one.
fn parse(bytes: &[u8], what: &str) -> Result<ExportDoc> {
    if bytes.len() as u64 > MAX_EXPORT_BYTES {
        return Err(AuditError::TooLarge { size: bytes.len() as u64, limit: MAX_EXPORT_BYTES });
    }
    let doc: ExportDoc =
        serde_json::from_slice(bytes).map_err(|e| AuditError::malformed(format!("{what}: not a valid export: {e}")))?;
    if doc.format != EXPORT_FORMAT {
        return Err(AuditError::malformed(format!("{what}: format is '{}', expected '{EXPORT_FORMAT}'", doc.format)));
    }
    Ok(doc)
}

/// Verifies an export; see the module documentation.
pub fn verify_export(
    bytes: &[u8],
    previous_export: Option<&[u8]>,
    pinned_key: Option<&PublicKey>,
) -> Result<VerifyReport> {
    verify(bytes, previous_export, pinned_key, None)
}

/// [`verify_export`], and also that the export extends every head of its audit key that the
/// witness file holds (see [`crate::witness`]).
pub fn verify_export_with_witness(
    bytes: &[u8],
    previous_export: Option<&[u8]>,
    pinned_key: Option<&PublicKey>,
    witness_file: &[u8],
) -> Result<VerifyReport> {
    verify(bytes, previous_export, pinned_key, Some(witness_file))
}

fn verify(
    bytes: &[u8],
    previous_export: Option<&[u8]>,
    pinned_key: Option<&PublicKey>,
    witness_file: Option<&[u8]>,
) -> Result<VerifyReport> {
    let doc = parse(bytes, "export")?;
    let witnessed = witness_file.map(parse_witness_file).transpose()?;
    let previous = previous_export.map(|b| parse(b, "previous export")).transpose()?;
    let mut checks = Checks::default();

    let key = check_identity(&doc, pinned_key, &mut checks)?;
    let hash = check_algorithms(&doc, &key, &mut checks);
    let gaps = check_entries(&doc, hash, &mut checks);
    check_root(&doc, hash, &mut checks);
    check_signatures(&doc, &key, &mut checks);
    check_consistency(&doc, hash, &mut checks);
    if let Some(prev) = &previous {
        check_previous_export(&doc, prev, &key, &mut checks);
    }
    if let Some(records) = &witnessed {
        check_witness(&doc, hash, records, &key, &mut checks);
    }

    let (checks, ok) = checks.finish();
    Ok(VerifyReport {
        from: doc.from,
        to: doc.to,
        count: doc.entries.len() as u64,
        gaps,
        tree_size: doc.head.tree_size,
        audit_keyid: key.keyid(),
        device_keyid: doc.device.device_keyid.clone(),
        checks,
        ok,
    })
}

/// "The device's public identity" names the audit key; its key id must be the SHA-256 of the
/// key, and a pinned key must be that same key.
fn check_identity(doc: &ExportDoc, pinned: Option<&PublicKey>, checks: &mut Checks) -> Result<PublicKey> {
    let key = PublicKey::from_spki_pem_at(&doc.device.audit_key_pem, "the export's audit key")
        .map_err(|e| AuditError::malformed(e.to_string()))?;
    let id_ok = doc.device.audit_keyid == key.keyid();
    checks.add("identity", id_ok, format!("audit key id {} (listed as {})", key.keyid(), doc.device.audit_keyid));
    if let Some(pem) = &doc.device.device_key_pem {
        match PublicKey::from_spki_pem_at(pem, "the export's device key") {
            Ok(dk) => {
                let ok = doc.device.device_keyid.as_deref() == Some(dk.keyid().as_str());
                checks.add("identity", ok, format!("device key id {}", dk.keyid()));
            }
            Err(e) => checks.add("identity", false, format!("device key: {e}")),
        }
    }
    if let Some(pin) = pinned {
        let (ok, detail) = if *pin == key {
            (true, format!("the audit key is the pinned key {}", pin.keyid()))
        } else if doc.device.device_key_pem.as_deref().and_then(|p| PublicKey::from_spki_pem(p).ok()) == Some(*pin) {
            (false, format!("the pinned key {} is the device identity key; pin the audit key (audit.pub)", pin.keyid()))
        } else {
            (false, format!("the export's audit key {} is not the pinned key {}", key.keyid(), pin.keyid()))
        };
        checks.add("pinned key", ok, detail);
    }
    Ok(key)
}

/// "Every head names the algorithms of the audit key's suite": the signature algorithm is the
/// audit key's (checked again with each signature), and the tree's hash is that suite's, the
/// same in every head. The tree is then recomputed with that hash, and never with another: a
/// `gm` export is not read as `intl`, nor the other way round.
fn check_algorithms(doc: &ExportDoc, key: &PublicKey, checks: &mut Checks) -> HashAlgorithm {
    let suite = Suite::of_key(key.algorithm());
    let want = suite.hash_algorithm();
    let heads = std::iter::once(&doc.head).chain(doc.checkpoints.iter()).chain(doc.previous.iter());
    let odd: Vec<String> = heads
        .filter(|h| h.hash != want || h.alg != key.algorithm())
        .map(|h| format!("size {} names {}/{}", h.tree_size, h.alg, h.hash))
        .collect();
    let detail = if odd.is_empty() {
        format!("suite {suite}: every head is {} over a {want} tree", key.algorithm())
    } else {
        format!("the audit key is {} (suite {suite}, {want} tree), but the head of {}", key.algorithm(), odd.join(", "))
    };
    checks.add("algorithms", odd.is_empty(), detail);
    want
}

/// Seqs run from `from` without gap, duplicate or reordering; each entry hashes to its listed
/// leaf ("leaf hash = H(0x00 || entry bytes)", H the suite's hash) and carries its own seq.
fn check_entries(doc: &ExportDoc, hash: HashAlgorithm, checks: &mut Checks) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    let mut expected = doc.from;
    let before = checks.seq_failures();
    for e in &doc.entries {
        if e.seq > expected {
            gaps.push((expected, e.seq - 1));
            let which = if e.seq - 1 == expected {
                format!("seq {expected}")
            } else {
                format!("seqs {expected}..={}", e.seq - 1)
            };
            checks.seq_failure("entry", format!("{which}: missing (gap)"));
            expected = e.seq + 1;
        } else if e.seq < expected {
            checks.seq_failure(
                "entry",
                format!("seq {}: out of order (or duplicated) after seq {}", e.seq, expected - 1),
            );
        } else {
            expected += 1;
        }
        match unhex::<32>(&e.leaf, HexCase::Lower) {
            Some(leaf) if leaf == leaf_hash(hash, e.entry.as_bytes()) => {}
            Some(_) => checks.seq_failure("entry", format!("seq {}: entry hash mismatch", e.seq)),
            None => checks.seq_failure("entry", format!("seq {}: leaf is not 64 hex digits", e.seq)),
        }
        match Entry::from_bytes(e.entry.as_bytes()) {
            Ok(parsed) if parsed.seq == e.seq => {}
            Ok(parsed) => checks.seq_failure("entry", format!("seq {}: entry seq field is {}", e.seq, parsed.seq)),
            Err(err) => checks.seq_failure("entry", format!("seq {}: not a valid entry: {err}", e.seq)),
        }
    }
    if doc.entries.is_empty() {
        checks.seq_failure("entry", "the export lists no entries".to_string());
    } else if expected <= doc.to {
        gaps.push((expected, doc.to));
        let which =
            if expected == doc.to { format!("seq {expected}") } else { format!("seqs {expected}..={}", doc.to) };
        checks.seq_failure("entry", format!("{which}: missing (gap)"));
    } else if expected > doc.to.saturating_add(1) {
        let last = expected - 1;
        checks.seq_failure("entry", format!("seq {last}: beyond the exported range, which ends at seq {}", doc.to));
    }
    if checks.seq_failures() == before {
        checks.add(
            "entries",
            true,
            format!(
                "{} entries, seq {}..={}, in order, no gaps, each hashes to its leaf",
                doc.entries.len(),
                doc.from,
                doc.to
            ),
        );
    }
    gaps
}

/// "The root is recomputed from the left frontier and the listed leaves"; it must equal the
/// signed head's root, and each included checkpoint's root at its size.
fn check_root(doc: &ExportDoc, hash: HashAlgorithm, checks: &mut Checks) {
    let nodes: Option<Vec<Hash>> = doc.left_frontier.iter().map(|h| unhex(h, HexCase::Lower)).collect();
    let Some(mut f) = nodes.and_then(|n| Frontier::from_parts(hash, doc.from, n)) else {
        checks.add(
            "root",
            false,
            format!("left frontier: not the {} subtree roots that seq {} needs", doc.from.count_ones(), doc.from),
        );
        return;
    };
    let mut cps: Vec<&SignedTreeHead> = doc.checkpoints.iter().collect();
    cps.sort_by_key(|c| c.tree_size);
    let mut next_cp = cps.iter().peekable();
    let check_cp = |f: &Frontier, cp: &SignedTreeHead, checks: &mut Checks| {
        let ok = cp.root() == Some(f.root());
        let detail =
            if ok { "root matches the entries".to_string() } else { "root differs from the entries".to_string() };
        checks.add("checkpoint", ok, format!("checkpoint {}: {detail}", cp.tree_size));
    };
    while let Some(cp) = next_cp.next_if(|c| c.tree_size < f.size()) {
        checks.add("checkpoint", false, format!("checkpoint {}: before the exported range", cp.tree_size));
    }
    while let Some(cp) = next_cp.next_if(|c| c.tree_size == f.size()) {
        check_cp(&f, cp, checks);
    }
    for e in &doc.entries {
        f.push(unhex(&e.leaf, HexCase::Lower).unwrap_or([0; 32]));
        while let Some(cp) = next_cp.next_if(|c| c.tree_size <= f.size()) {
            check_cp(&f, cp, checks);
        }
    }
    for cp in next_cp {
        checks.add("checkpoint", false, format!("checkpoint {}: beyond the exported range", cp.tree_size));
    }
    if doc.head.tree_size != f.size() {
        checks.add(
            "root",
            false,
            format!("the head covers {} entries, the export ends at tree size {}", doc.head.tree_size, f.size()),
        );
    } else {
        let ok = doc.head.root() == Some(f.root());
        let detail = if ok { "equals" } else { "does not equal" };
        checks.add("root", ok, format!("the recomputed root of {} entries {detail} the signed root", f.size()));
    }
}

/// Every head (the export's, each checkpoint, the previous export's) verifies under the audit key.
fn check_signatures(doc: &ExportDoc, key: &PublicKey, checks: &mut Checks) {
    let heads = std::iter::once(("head", &doc.head))
        .chain(doc.checkpoints.iter().map(|c| ("checkpoint", c)))
        .chain(doc.previous.iter().map(|p| ("previous head", p)));
    for (what, h) in heads {
        match h.verify(key) {
            Ok(()) => checks.add("signature", true, format!("{what} (size {}) signed by {}", h.tree_size, h.keyid)),
            Err(e) => checks.add("signature", false, format!("{what} (size {}): {e}", h.tree_size)),
        }
    }
}

/// "The consistency proof shows that the log at the previous export's size is a prefix of the
/// log now" (RFC 9162 §2.1.4.2). A forked or rewritten history fails here.
fn check_consistency(doc: &ExportDoc, hash: HashAlgorithm, checks: &mut Checks) {
    let Some(prev) = &doc.previous else {
        checks.add("consistency", true, "no previous export recorded: nothing to prove");
        return;
    };
    let proof: Option<Vec<Hash>> = doc.consistency.iter().map(|h| unhex(h, HexCase::Lower)).collect();
    let ok = match (proof, prev.root(), doc.head.root()) {
        (Some(p), Some(r1), Some(r2)) => verify_consistency(hash, prev.tree_size, doc.head.tree_size, &r1, &r2, &p),
        _ => false,
    };
    let detail = if ok {
        format!("the log at size {} extends the previous export's log at size {}", doc.head.tree_size, prev.tree_size)
    } else {
        format!(
            "the log at size {} is NOT consistent with the previous export at size {}",
            doc.head.tree_size, prev.tree_size
        )
    };
    checks.add("consistency", ok, detail);
}

/// "The previous export the auditor holds is the one this export proves consistency from."
/// Truncating the log's tail together with its checkpoints shows only here.
fn check_previous_export(doc: &ExportDoc, prev: &ExportDoc, key: &PublicKey, checks: &mut Checks) {
    let held = &prev.head;
    if let Err(e) = held.verify(key) {
        checks.add(
            "previous export",
            false,
            format!("its head (size {}) does not verify under this export's audit key: {e}", held.tree_size),
        );
        return;
    }
    let (ok, detail) = match &doc.previous {
        Some(p) if p.tree_size == held.tree_size && p.root_hash == held.root_hash => {
            (true, format!("this export continues from it (size {})", held.tree_size))
        }
        _ if held.tree_size == doc.head.tree_size && held.root_hash == doc.head.root_hash => {
            (true, format!("same tree head (size {})", held.tree_size))
        }
        Some(p) if p.tree_size > held.tree_size => (
            false,
            format!(
                "this export continues from a later export (size {}, made {}); verify against that one",
                p.tree_size, p.time
            ),
        ),
        Some(p) => (
            false,
            format!(
                "this export continues from size {}, not from the given previous export's size {}: the log was rewritten or truncated",
                p.tree_size, held.tree_size
            ),
        ),
        None if held.tree_size > doc.head.tree_size => (
            false,
            format!(
                "the given previous export covers {} entries but this export's log has only {}: the log was truncated",
                held.tree_size, doc.head.tree_size
            ),
        ),
        None => (
            false,
            format!(
                "this export records no previous export, but one of size {} was given: the log's export history was reset",
                held.tree_size
            ),
        ),
    };
    checks.add("previous export", ok, detail);
}

/// "The export extends every head of its audit key that the witness holds": the largest such
/// head is no larger than the export's head, and each one within the exported range has the root
/// recomputed at its size. Heads of other keys (other boxes logging to the same server) are
/// skipped; a head of this key whose signature fails, or a `govbox-sth` record that does not
/// parse, fails the check, as a witness file must not be quietly half read.
fn check_witness(
    doc: &ExportDoc,
    hash: HashAlgorithm,
    records: &[WitnessRecord],
    key: &PublicKey,
    checks: &mut Checks,
) {
    let mut heads = Vec::new();
    let mut others = 0;
    for r in records {
        match r {
            WitnessRecord::Malformed(why) => checks.add("witness", false, format!("a witness record: {why}")),
            WitnessRecord::Head(h) if h.keyid != key.keyid() => others += 1,
            WitnessRecord::Head(h) => match h.verify(key) {
                Ok(()) => heads.push(h),
                Err(e) => checks.add("witness", false, format!("witnessed head (size {}): {e}", h.tree_size)),
            },
        }
    }
    heads.sort_by_key(|h| h.tree_size);
    let Some(largest) = heads.last() else {
        let detail = format!("the witness file holds no head of audit key {} ({others} of other keys)", key.keyid());
        checks.add("witness", false, detail);
        return;
    };
    if largest.tree_size > doc.head.tree_size {
        checks.add(
            "witness",
            false,
            format!(
                "the witness holds a head of size {} (made {}), but this export's log has only {} entries: entries were removed",
                largest.tree_size, largest.time, doc.head.tree_size
            ),
        );
        return;
    }
    // Roots at each witnessed size inside the range, recomputed from the left frontier and leaves.
    let nodes: Option<Vec<Hash>> = doc.left_frontier.iter().map(|h| unhex(h, HexCase::Lower)).collect();
    let Some(mut f) = nodes.and_then(|n| Frontier::from_parts(hash, doc.from, n)) else {
        checks.add("witness", false, "the export's left frontier is malformed".to_string());
        return;
    };
    let mut in_range = heads.iter().filter(|h| h.tree_size >= doc.from).peekable();
    let mut mismatches = Vec::new();
    let mut checked = 0;
    let mut compare = |f: &Frontier, h: &SignedTreeHead| {
        checked += 1;
        if h.root() != Some(f.root()) {
            mismatches.push(h.tree_size);
        }
    };
    while let Some(h) = in_range.next_if(|h| h.tree_size == f.size()) {
        compare(&f, h);
    }
    for e in &doc.entries {
        f.push(unhex(&e.leaf, HexCase::Lower).unwrap_or([0; 32]));
        while let Some(h) = in_range.next_if(|h| h.tree_size == f.size()) {
            compare(&f, h);
        }
    }
    if !mismatches.is_empty() {
        let sizes: Vec<String> = mismatches.iter().map(u64::to_string).collect();
        checks.add(
            "witness",
            false,
            format!(
                "the export's log differs from the witnessed heads of size {}: the log was rewritten",
                sizes.join(", ")
            ),
        );
        return;
    }
    let anchored = largest.tree_size >= doc.from
        || doc.previous.as_ref().is_some_and(|p| p.tree_size == largest.tree_size && p.root_hash == largest.root_hash);
    let (ok, detail) = if !anchored {
        (
            false,
            format!(
                "the largest witnessed head (size {}) is before this export's first seq {}: export from seq {} or earlier to check it",
                largest.tree_size,
                doc.from,
                largest.tree_size.saturating_sub(1)
            ),
        )
    } else {
        (
            true,
            format!(
                "this export extends the largest witnessed head (size {}, made {}); {checked} witnessed heads in range match, {others} of other keys skipped",
                largest.tree_size, largest.time
            ),
        )
    };
    checks.add("witness", ok, detail);
}
