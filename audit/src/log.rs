//! [`AuditLog`]: the handle that govboxd and the CLI hold.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use govbox_provisioning::{PublicKey, SigningKey, StatePaths, Suite};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::anchor::{Anchor, AnchorStatus, Found, TpmAnchorConfig, judge};
use crate::auth::AuthAggregator;
use crate::entry::{Entry, Event};
use crate::error::{AuditError, Result};
use crate::hmac::{HmacKey, HmacStream};
use crate::sth::SignedTreeHead;
use crate::store::Store;
use crate::witness::{Witness, WitnessAddr, WitnessStatus, WitnessTls};
use crate::writer::{Msg, Writer};

/// Most entries [`AuditLog::tail`] returns.
pub const MAX_TAIL: usize = 10_000;

/// The keys the log works with. `Debug` shows key ids only.
pub struct AuditKeys {
    /// The audit key, which signs checkpoints (`identity/audit.key`).
    pub signing: SigningKey,
    /// The HMAC secret for prompts and responses (`identity/audit-hmac.key`).
    pub hmac_secret: [u8; 32],
    /// The device identity key (`identity/device.pub`), named in exports; `None` leaves it out.
    pub device_key: Option<PublicKey>,
    /// The box's crypto suite (`identity/suite`): the tree's hash, the HMAC's, and the
    /// algorithm the audit key must have.
    pub suite: Suite,
}

impl AuditKeys {
    /// Keys without a device identity, of the suite whose signatures the key makes.
    pub fn new(signing: SigningKey, hmac_secret: [u8; 32]) -> Self {
        let suite = Suite::of_key(signing.algorithm());
        Self { signing, hmac_secret, device_key: None, suite }
    }

    /// The keys of a provisioned state folder, checked against its suite.
    pub fn load(paths: &StatePaths) -> Result<Self> {
        let suite = Suite::load(paths)?;
        let signing = SigningKey::load_pem(paths.audit_key())?;
        suite.check_key(&format!("the audit key {}", paths.audit_key().display()), signing.algorithm())?;
        Ok(Self {
            signing,
            hmac_secret: read_hmac_secret(&paths.audit_hmac_key())?,
            device_key: Some(PublicKey::load_pem(paths.device_pub())?),
            suite,
        })
    }
}

/// Reads the 32-byte HMAC secret file.
pub fn read_hmac_secret(path: &Path) -> Result<[u8; 32]> {
    let io =
        |source| AuditError::Io { action: "reading the audit HMAC secret".into(), path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len != 32 {
        let msg = format!("the audit HMAC secret is {len} bytes, not 32");
        return Err(io(std::io::Error::new(std::io::ErrorKind::InvalidData, msg)));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    bytes.as_slice().try_into().map_err(|_| io(std::io::ErrorKind::InvalidData.into()))
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeys")
            .field("signing", &self.signing)
            .field("device_key", &self.device_key)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// When checkpoints are made and how long entries are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// A checkpoint after this many entries. Default 1000: a crash replays at most that many
    /// entries on open, and a verifier never waits long for a signed head.
    pub checkpoint_every: u64,
    /// A checkpoint after this long, if any entry was added. Default 60 s.
    pub checkpoint_interval: Duration,
    /// [`AuditLog::prune_expired`] removes entries older than this. Default 180 days, the usual
    /// retention for access logs of government systems.
    pub retention_days: u32,
    /// Where every signed tree head is also sent ([`crate::witness`]). Default none: the
    /// agency's log server is site-specific.
    pub witness: Option<WitnessAddr>,
    /// The CA and name a `tls://` witness must prove (`witness_ca`, `witness_server_name`).
    pub witness_tls: WitnessTls,
    /// The TPM that anchors the latest head ([`crate::anchor`]). Default none: not every box
    /// has a TPM, and the indices are the agency's to allot.
    pub tpm_anchor: Option<TpmAnchorConfig>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
            retention_days: 180,
            witness: None,
            witness_tls: WitnessTls::default(),
            tpm_anchor: None,
        }
    }
}

/// What the handle and the writer thread share.
pub(crate) struct Shared {
    /// `None` while the writer reopens the store after a failure.
    pub store: RwLock<Option<Arc<Store>>>,
    pub db_path: PathBuf,
    pub signing: SigningKey,
    pub public: PublicKey,
    pub device_key: Option<PublicKey>,
    pub suite: Suite,
    pub hmac: HmacKey,
    pub opts: AuditOptions,
    /// The durable tree size: readers never look past it.
    pub committed: AtomicU64,
    pub failures: AtomicU64,
    pub auth: Mutex<AuthAggregator>,
    /// Serializes export and prune, which both read and write `meta`.
    pub export_lock: Mutex<()>,
    /// The witness's spool and sender, when one is configured.
    pub witness: Option<Witness>,
    /// The TPM anchor, when one is configured (used by the writer thread).
    pub anchor: Mutex<Option<Anchor>>,
    /// Why the store is held (behind its TPM anchor) until an operator acknowledges it.
    pub held: Mutex<Option<String>>,
    #[cfg(test)]
    pub fail_flushes: std::sync::atomic::AtomicU32,
}

impl Shared {
    /// The refusal while the store is held, else nothing.
    pub fn refuse_if_held(&self) -> Result<()> {
        match self.held.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            None => Ok(()),
            Some(why) => Err(AuditError::Corrupt { path: self.db_path.clone(), detail: held_detail(why) }),
        }
    }

    pub fn store(&self) -> Result<Arc<Store>> {
        self.store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| AuditError::unavailable("the audit store is being reopened after an error"))
    }
}

/// The refusal of a held store: why, and what to do.
pub(crate) fn held_detail(why: &str) -> String {
    format!(
        "{why}; refused until an operator acknowledges it (`govbox audit acknowledge --reason TEXT`, as root or \
         the audit account), which is recorded as the next entry"
    )
}

struct Inner {
    shared: Arc<Shared>,
    tx: RwLock<Option<Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the sender makes the writer shut down as close() would; wait for it, so that
        // the store's lock is released when the last handle goes.
        self.tx.write().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = t.join();
        }
        if let Some(w) = &self.shared.witness {
            w.finish();
        }
    }
}

/// The audit log: a cheap-to-clone handle on the store and its writer thread.
///
/// Appends are durable when they return `Ok(seq)`. After an I/O error, the failed batch's
/// appends get [`AuditError::Unavailable`] and the next append reopens the store in-process,
/// removes what the failed batch may have left, and goes on (see the crate documentation).
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("db", &self.inner.shared.db_path).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) the log in `dir` (normally `STATE/audit`; the sled store is `dir/db`).
    ///
    /// Recovers from a crash: replays the leaves after the last checkpoint, checking that each
    /// entry hashes to its leaf, and continues the seqs. Fails with [`AuditError::Locked`] when
    /// another process holds the store, and [`AuditError::Corrupt`] when it contradicts itself.
    ///
    /// With a TPM anchor ([`AuditOptions::tpm_anchor`]) a store behind the anchored head is
    /// refused with [`AuditError::Corrupt`]; see [`AuditLog::open_or_hold`].
    pub fn open(dir: impl AsRef<Path>, keys: AuditKeys, opts: AuditOptions) -> Result<Self> {
        Self::open_inner(dir.as_ref(), keys, opts, false)
    }

    /// As [`AuditLog::open`], but a store behind its TPM anchor is opened held: every append,
    /// checkpoint and export is refused with [`AuditError::Corrupt`] until
    /// [`AuditLog::acknowledge`] records an operator's acknowledgement (what `govbox-auditd` does,
    /// so that the operator can reach it over its socket).
    pub fn open_or_hold(dir: impl AsRef<Path>, keys: AuditKeys, opts: AuditOptions) -> Result<Self> {
        Self::open_inner(dir.as_ref(), keys, opts, true)
    }

    fn open_inner(dir: &Path, keys: AuditKeys, opts: AuditOptions, hold: bool) -> Result<Self> {
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|source| AuditError::Io {
                action: "creating the audit folder".into(),
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let db_path = dir.join("db");
        let store = Arc::new(Store::open(&db_path, keys.suite.hash_algorithm())?);
        let recovered = store.recover()?;
        let mut held = None;
        let anchor = match opts.tpm_anchor.clone() {
            None => None,
            Some(cfg) => {
                let (mut anchor, found) = Anchor::open(cfg, &keys.signing)?;
                if let Found::Record(record, counter) = found {
                    match judge(&record, counter, recovered.frontier.size(), |n| store.root_at(n))? {
                        None => anchor.finish_increment(&record)?,
                        Some(why) if hold => held = Some(why),
                        Some(why) => return Err(store.corrupt(held_detail(&why))),
                    }
                }
                if held.is_none()
                    && let Some(cp) = &recovered.last_checkpoint
                    && let Some(root) = cp.root()
                {
                    // A failure here is in the status; the next head tries again.
                    let _ = anchor.anchor(cp.tree_size, &root, true);
                }
                Some(anchor)
            }
        };
        let witness =
            opts.witness.map(|addr| Witness::start(addr, &opts.witness_tls, &dir.join("witness"))).transpose()?;
        if let (Some(w), Some(head)) = (&witness, &recovered.last_checkpoint) {
            // A crash between saving a checkpoint and spooling it would otherwise lose that head;
            // sending the latest one again at every start costs one message.
            w.enqueue(head);
        }
        // A key of another suite's algorithm would sign heads no verifier of this box accepts.
        keys.suite.check_key("the audit signing key", keys.signing.algorithm())?;
        let public = keys.signing.public_key();
        let shared = Arc::new(Shared {
            store: RwLock::new(Some(store.clone())),
            db_path,
            hmac: HmacKey::with_hash(keys.suite.hash_algorithm(), &keys.hmac_secret),
            suite: keys.suite,
            signing: keys.signing,
            public,
            device_key: keys.device_key,
            opts,
            committed: AtomicU64::new(recovered.frontier.size()),
            failures: AtomicU64::new(0),
            auth: Mutex::new(AuthAggregator::default()),
            export_lock: Mutex::new(()),
            witness,
            anchor: Mutex::new(anchor),
            held: Mutex::new(held),
            #[cfg(test)]
            fail_flushes: std::sync::atomic::AtomicU32::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer::new(shared.clone(), store, recovered, rx);
        let thread =
            std::thread::Builder::new().name("audit-writer".into()).spawn(move || writer.run()).map_err(|source| {
                AuditError::Io { action: "starting the audit writer".into(), path: dir.into(), source }
            })?;
        Ok(Self { inner: Arc::new(Inner { shared, tx: RwLock::new(Some(tx)), thread: Mutex::new(Some(thread)) }) })
    }

    /// Opens the log of a provisioned state folder with its keys.
    pub fn open_state(paths: &StatePaths, opts: AuditOptions) -> Result<Self> {
        Self::open(paths.audit_dir(), AuditKeys::load(paths)?, opts)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    fn send(&self, msg: Msg) -> Result<()> {
        let tx = self.inner.tx.read().unwrap_or_else(PoisonError::into_inner);
        tx.as_ref().ok_or(AuditError::Closed)?.send(msg).map_err(|_| AuditError::Closed)
    }

    /// Appends an entry and waits until it is durable; returns its seq.
    ///
    /// Blocks the calling thread: from async code use [`AuditLog::append`] (this one panics when
    /// called on a tokio runtime thread).
    pub fn append_blocking(&self, event: Event) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Append(event, tx))?;
        rx.blocking_recv().map_err(|_| AuditError::unavailable("the audit writer stopped"))?
    }

    /// Appends an entry; resolves once it is durable, with its seq.
    pub async fn append(&self, event: Event) -> Result<u64> {
        self.submit(event)?.await.map_err(|_| AuditError::unavailable("the audit writer stopped"))?
    }

    /// Hands an entry to the writer without waiting; the receiver gets its seq once it is durable.
    pub fn submit(&self, event: Event) -> Result<oneshot::Receiver<Result<u64>>> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Append(event, tx))?;
        Ok(rx)
    }

    /// Counts a failed authentication from `source`. Failures are tallied in memory per source
    /// and minute and written as one `auth_failure` entry each when the minute ends, at the next
    /// checkpoint request, or at close. At most [`crate::MAX_AUTH_SOURCES`] sources are tallied;
    /// the rest count under `other`.
    pub fn record_auth_failure(&self, source: IpAddr, reason: &str) {
        let now = OffsetDateTime::now_utc();
        self.inner.shared.auth.lock().unwrap_or_else(PoisonError::into_inner).record(source, reason, now);
    }

    /// Writes pending auth tallies, then makes, stores and returns a fresh signed tree head.
    /// Blocking, like [`AuditLog::append_blocking`].
    pub fn checkpoint(&self) -> Result<SignedTreeHead> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Checkpoint(tx))?;
        rx.blocking_recv().map_err(|_| AuditError::unavailable("the audit writer stopped"))?
    }

    /// Clean shutdown: writes pending auth tallies, makes a final checkpoint if the tree grew,
    /// and stops the writer. Later appends fail with [`AuditError::Closed`]. Returns the last head.
    /// Blocking. Dropping the last handle does the same.
    pub fn close(&self) -> Result<SignedTreeHead> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Close(tx))?;
        let head = rx.blocking_recv().map_err(|_| AuditError::unavailable("the audit writer stopped"));
        self.inner.tx.write().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(t) = self.inner.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = t.join();
        }
        if let Some(w) = &self.inner.shared.witness {
            w.finish();
        }
        head?
    }

    /// Records an operator's acknowledgement of a store found behind its TPM anchor: an `admin`
    /// entry (action `audit_anchor_acknowledged`, by `actor`, with `reason` and what was found),
    /// then a fresh head, which the TPM anchors. From then on the log serves. Fails when the
    /// store is not held. Blocking.
    pub fn acknowledge(&self, actor: &str, reason: &str) -> Result<SignedTreeHead> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Acknowledge { actor: actor.to_string(), reason: reason.to_string(), reply: tx })?;
        rx.blocking_recv().map_err(|_| AuditError::unavailable("the audit writer stopped"))?
    }

    /// Why the store is held behind its TPM anchor, while it is.
    pub fn held(&self) -> Option<String> {
        self.inner.shared.held.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|w| held_detail(w))
    }

    /// How the TPM anchor is doing, when one is configured.
    pub fn anchor_status(&self) -> Option<AnchorStatus> {
        self.inner.shared.anchor.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|a| a.status.clone())
    }

    /// How the witness is doing, when one is configured.
    pub fn witness_status(&self) -> Option<WitnessStatus> {
        self.inner.shared.witness.as_ref().map(Witness::status)
    }

    /// HMAC-SHA256 of `bytes` under the box's audit secret, lower-case hex.
    pub fn hmac(&self, bytes: &[u8]) -> String {
        self.inner.shared.hmac.hmac(bytes)
    }

    /// An incremental HMAC under the audit secret, for streamed answers.
    pub fn hmac_context(&self) -> HmacStream {
        self.inner.shared.hmac.stream()
    }

    /// How many appends have failed since open (each failed waiter counts once).
    pub fn failures(&self) -> u64 {
        self.inner.shared.failures.load(Ordering::Relaxed)
    }

    /// The number of durable entries (the next seq).
    pub fn tree_size(&self) -> u64 {
        self.inner.shared.committed.load(Ordering::Acquire)
    }

    /// The audit public key, which verifies the checkpoints.
    pub fn public_key(&self) -> PublicKey {
        self.inner.shared.public
    }

    /// The last `n` entries (at most [`MAX_TAIL`]), oldest first. Entries hold only metadata and
    /// keyed hashes, never content.
    pub fn tail(&self, n: usize) -> Result<Vec<Entry>> {
        let store = self.inner.shared.store()?;
        let size = self.tree_size();
        let first = size.saturating_sub(n.min(MAX_TAIL) as u64).max(store.pruned_before()?);
        (first..size).map(|seq| store.entry(seq)).collect()
    }

    /// Makes the next `n` flushes fail, as a full disk would.
    #[cfg(test)]
    pub(crate) fn inject_flush_failures(&self, n: u32) {
        self.inner.shared.fail_flushes.store(n, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, pem: &str) -> AuditLog {
        let keys = AuditKeys::new(SigningKey::from_pkcs8_pem(pem, "test").unwrap(), [7; 32]);
        AuditLog::open(dir, keys, AuditOptions::default()).unwrap()
    }

    fn event(i: u64) -> Event {
        Event::Admin { actor: "uid 0".into(), action: "client_add".into(), subject: format!("client-{i}") }
    }

    #[test]
    fn a_failed_flush_fails_the_batch_and_the_next_append_reopens_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let pem = SigningKey::generate().unwrap().to_pkcs8_pem();
        let log = open(dir.path(), &pem);
        for i in 0..3 {
            assert_eq!(log.append_blocking(event(i)).unwrap(), i);
        }
        log.inject_flush_failures(1);
        let err = log.append_blocking(event(100)).unwrap_err();
        assert_eq!(err.code(), "audit_unavailable", "{err}");
        assert_eq!((log.failures(), log.tree_size()), (1, 3));

        // The failed entry reached sled's memory but was never acknowledged: the reopen removes
        // it, and seq 3 goes to the next append.
        assert_eq!(log.append_blocking(event(3)).unwrap(), 3);
        let tail = log.tail(1).unwrap();
        assert_eq!(tail[0].event, event(3));

        // Several failures in a row, a failed checkpoint: each fails alone, then all recovers.
        log.inject_flush_failures(2);
        assert!(log.append_blocking(event(100)).is_err());
        assert!(log.checkpoint().is_err());
        assert_eq!(log.failures(), 2);
        assert_eq!(log.append_blocking(event(4)).unwrap(), 4);
        let report = log.verify_store().unwrap();
        assert!(report.ok, "{report:#?}");
        assert_eq!((report.count, report.to), (5, 4));
        log.close().unwrap();
        assert!(matches!(log.append_blocking(event(5)), Err(AuditError::Closed)));
        drop(log);

        let log = open(dir.path(), &pem);
        assert_eq!(log.tree_size(), 5);
        assert_eq!(log.append_blocking(event(5)).unwrap(), 5);
        assert!(log.verify_store().unwrap().ok);
    }

    #[test]
    fn a_reopen_that_cannot_get_the_store_keeps_failing_until_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let pem = SigningKey::generate().unwrap().to_pkcs8_pem();
        let log = open(dir.path(), &pem);
        log.append_blocking(event(0)).unwrap();
        // A reader holding the old store keeps sled's lock, as a slow export would.
        let held = log.shared().store().unwrap();
        log.inject_flush_failures(1);
        assert!(log.append_blocking(event(1)).is_err());
        let err = log.append_blocking(event(1)).unwrap_err();
        assert!(err.to_string().contains("reopening the audit store"), "{err}");
        assert!(log.tail(1).is_err(), "readers see the store as unavailable while it is being reopened");
        drop(held);
        assert_eq!(log.append_blocking(event(1)).unwrap(), 1);
        assert_eq!(log.failures(), 2);
        assert!(log.verify_store().unwrap().ok);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn async_appends_share_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), &SigningKey::generate().unwrap().to_pkcs8_pem());
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                tokio::spawn({
                    let log = log.clone();
                    async move { log.append(event(i)).await.unwrap() }
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (0..50).collect::<Vec<_>>());
        let log2 = log.clone();
        tokio::task::spawn_blocking(move || log2.close().unwrap()).await.unwrap();
    }
}
