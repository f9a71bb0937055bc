//! Optional encrypted retention of request content (`[retention] store_content`, off by default).
//!
//! When it is on, each inference request's prompt (the exact bytes whose HMAC is the audit request
//! entry's `prompt_hmac`) and response (the bytes the client received, whose HMAC is the completion
//! entry's `response_hmac`) are kept in their own sled database, `STATE/content/`, each sealed
//! under the device's content key, `STATE/identity/content.key` (random bytes, mode 0600, made on
//! first use) with the cipher of the box's suite ([`Cipher`]): AES-256-GCM (ring, 32-byte key) on
//! an `intl` box, SM4-GCM (GB/T 32907 in the GCM mode of NIST SP 800-38D, as RFC 8998 uses it;
//! RustCrypto's `sm4` in `aes-gcm`'s generic `AesGcm<Sm4, U12>`, 16-byte key) on a `gm` box.
//! Each record names its cipher, and one sealed under another is refused, never opened as this
//! box's. Every record has a fresh random 96-bit nonce, and its
//! additional data is the request id, the kind (`prompt` or `response`) and the audit entry's
//! content hash: a record moved to another request, swapped between kinds, or paired with another
//! audit entry does not open. Records older than `content_days` are deleted by the hourly
//! retention task.
//!
//! Only the admin socket reads records back (`content_read`), and every read is an audit entry
//! made before anything is decrypted. Nothing of the content is ever logged.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use base64::Engine as _;
use govbox_provisioning::{StatePaths, Suite};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The content key's length for AES-256-GCM.
pub const KEY_LEN: usize = 32;
/// The content key's length for SM4-GCM.
pub const SM4_KEY_LEN: usize = 16;

/// SM4-GCM: the SM4 block cipher in the GCM mode, 96-bit nonces, 128-bit tags (RFC 8998 §3.1).
type Sm4Gcm = aes_gcm::AesGcm<sm4::Sm4, aes_gcm::aead::consts::U12>;

/// The cipher of the sealed content store, by suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cipher {
    /// AES-256-GCM (`intl`).
    Aes256Gcm,
    /// SM4-GCM (`gm`).
    Sm4Gcm,
}

impl Cipher {
    /// The suite's cipher.
    pub fn for_suite(suite: Suite) -> Self {
        match suite {
            Suite::Gm => Cipher::Sm4Gcm,
            _ => Cipher::Aes256Gcm,
        }
    }

    /// `aes-256-gcm` or `sm4-gcm`, as records name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::Sm4Gcm => "sm4-gcm",
        }
    }

    /// The key's length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Cipher::Aes256Gcm => KEY_LEN,
            Cipher::Sm4Gcm => SM4_KEY_LEN,
        }
    }
}

/// What records made before ciphers were named were sealed with.
fn default_cipher() -> String {
    Cipher::Aes256Gcm.as_str().to_string()
}

/// A ready key of one cipher.
enum SealKey {
    Aes(Box<LessSafeKey>),
    Sm4(Box<Sm4Gcm>),
}

impl SealKey {
    fn new(cipher: Cipher, raw: &[u8]) -> Option<Self> {
        if raw.len() != cipher.key_len() {
            return None;
        }
        match cipher {
            Cipher::Aes256Gcm => {
                UnboundKey::new(&AES_256_GCM, raw).ok().map(|k| SealKey::Aes(Box::new(LessSafeKey::new(k))))
            }
            Cipher::Sm4Gcm => Sm4Gcm::new_from_slice(raw).ok().map(|k| SealKey::Sm4(Box::new(k))),
        }
    }

    fn cipher(&self) -> Cipher {
        match self {
            SealKey::Aes(_) => Cipher::Aes256Gcm,
            SealKey::Sm4(_) => Cipher::Sm4Gcm,
        }
    }

    /// Ciphertext followed by the 16-byte tag; `None` only if the cipher refuses the input size.
    fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
        match self {
            SealKey::Aes(k) => {
                let mut buf = plaintext.to_vec();
                k.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf).ok()?;
                Some(buf)
            }
            SealKey::Sm4(k) => k.encrypt(&nonce.into(), Payload { msg: plaintext, aad }).ok(),
        }
    }

    /// The plaintext, or `None` when the tag does not match.
    fn open(&self, nonce: [u8; NONCE_LEN], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        match self {
            SealKey::Aes(k) => {
                let mut buf = sealed.to_vec();
                let n = k.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf).ok()?.len();
                buf.truncate(n);
                Some(buf)
            }
            SealKey::Sm4(k) => k.decrypt(&nonce.into(), Payload { msg: sealed, aad }).ok(),
        }
    }
}
/// The most response bytes kept per request; beyond this the record is marked truncated.
pub const MAX_KEPT_RESPONSE: usize = 16 << 20;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// sled's page cache for the content store (sled's default is 1 GiB). Records are written once
/// and read back rarely (admin `content_read`, hourly expiry), so a small cache suffices and keeps
/// govboxd's memory bounded however much content is retained (tests/RELIABILITY.md, caches).
/// How long opening waits for a lock that sled is about to release.
const CONTENT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
const CONTENT_CACHE_BYTES: u64 = 8 << 20;

/// Why content could not be stored, read or expired.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// A file or folder could not be used.
    #[error("content retention: {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file exists but is not a usable key.
    #[error("content retention: the key {} {reason}", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The sled store failed.
    #[error("content retention: the store {}: {source}", path.display())]
    Store {
        /// The store folder.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// The random generator failed.
    #[error("content retention: the system random generator failed")]
    Rng,
    /// The box's suite could not be read.
    #[error("content retention: {0}")]
    Suite(#[from] govbox_provisioning::ProvisionError),
    /// A record does not open: wrong key, changed bytes, or moved to another request or entry.
    #[error("content record {key} does not decrypt: it was altered, moved, or sealed under another key")]
    Decrypt {
        /// The record's key.
        key: String,
    },
    /// A stored record is not in the expected format.
    #[error("content record {key} is damaged: {reason}")]
    Damaged {
        /// The record's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Which half of a request a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The prompt.
    Prompt,
    /// The response.
    Response,
}

impl Kind {
    /// `prompt` or `response`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Prompt => "prompt",
            Kind::Response => "response",
        }
    }
}

/// One stored, sealed record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sealed {
    /// Unix seconds when it was stored.
    created: i64,
    /// The audit entry's content hash (HMAC, hex).
    hash: String,
    /// Whether the plaintext was cut at [`MAX_KEPT_RESPONSE`].
    truncated: bool,
    /// The client whose request it is (the audit hash is keyed per client); absent in records
    /// of older govbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client: Option<String>,
    /// The cipher, `aes-256-gcm` or `sm4-gcm`; absent (AES-256-GCM) in records of older govbox.
    #[serde(default = "default_cipher")]
    cipher: String,
    /// The 96-bit nonce, base64.
    nonce: String,
    /// Ciphertext and tag, base64.
    sealed: String,
}

/// One opened record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Unix seconds when it was stored.
    pub created: i64,
    /// The audit entry's content hash it is bound to.
    pub hash: String,
    /// The client whose request it is, when recorded.
    pub client: Option<String>,
    /// Whether it was cut at [`MAX_KEPT_RESPONSE`].
    pub truncated: bool,
    /// The plaintext.
    pub plaintext: Vec<u8>,
}

/// The encrypted content store.
#[derive(Clone)]
pub struct ContentStore {
    dir: PathBuf,
    records: sled::Tree,
    by_time: sled::Tree,
    key: std::sync::Arc<SealKey>,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStore")
            .field("dir", &self.dir)
            .field("cipher", &self.key.cipher())
            .finish_non_exhaustive()
    }
}

/// `STATE/content/`.
pub fn store_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("content")
}

/// `STATE/identity/content.key`.
pub fn key_path(state_dir: &Path) -> PathBuf {
    govbox_provisioning::StatePaths::new(state_dir).identity_dir().join("content.key")
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ContentError + 'a {
    move |source| ContentError::Io { action, path: path.to_path_buf(), source }
}

/// Reads the content key of `len` bytes, making it (random, mode 0600) when it is missing and
/// `create`.
pub fn load_or_create_key(path: &Path, len: usize, create: bool) -> Result<Option<Vec<u8>>, ContentError> {
    match File::open(path) {
        Ok(f) => {
            let mode = f.metadata().map_err(io("reading", path))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(ContentError::BadKey {
                    path: path.into(),
                    reason: format!("has mode {:o}; it must be readable by its owner only (chmod 600)", mode & 0o777),
                });
            }
            let mut buf = Vec::with_capacity(len);
            f.take(len as u64 + 1).read_to_end(&mut buf).map_err(io("reading", path))?;
            if buf.len() != len {
                return Err(ContentError::BadKey {
                    path: path.into(),
                    reason: format!("holds {} bytes, not {len} (the key of this box's suite)", buf.len()),
                });
            }
            Ok(Some(buf))
        }
        Err(e) if e.kind() == ErrorKind::NotFound && !create => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let mut key = vec![0u8; len];
            SystemRandom::new().fill(&mut key).map_err(|_| ContentError::Rng)?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let tmp = dir.join(format!(".content.key.{}.tmp", std::process::id()));
            let _ = fs::remove_file(&tmp);
            let written = (|| {
                let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
                f.set_permissions(fs::Permissions::from_mode(0o600))?;
                f.write_all(&key)?;
                f.sync_all()?;
                // A link fails when the key appeared meanwhile: then that one is the key.
                fs::hard_link(&tmp, path)
            })();
            let _ = fs::remove_file(&tmp);
            match written {
                Ok(()) => {
                    if let Ok(d) = File::open(dir) {
                        let _ = d.sync_all();
                    }
                    Ok(Some(key))
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => load_or_create_key(path, len, false),
                Err(e) => Err(io("creating", path)(e)),
            }
        }
        Err(e) => Err(io("reading", path)(e)),
    }
}

fn record_key(request_id: &str, kind: Kind) -> String {
    format!("{request_id}/{}", kind.as_str())
}

fn aad(request_id: &str, kind: Kind, hash: &str) -> Vec<u8> {
    format!("govbox-content/1\n{request_id}\n{}\n{hash}", kind.as_str()).into_bytes()
}

impl ContentStore {
    /// Opens `STATE/content/` with the content key, under the cipher of the box's suite
    /// (`identity/suite`). With `create` false (retention off), a box that never stored content
    /// gets `None`, and nothing is made; one that did still has its records read and expired.
    pub fn open(state_dir: &Path, create: bool) -> Result<Option<Self>, ContentError> {
        let dir = store_dir(state_dir);
        let kp = key_path(state_dir);
        if !create && !dir.exists() {
            return Ok(None);
        }
        let cipher = Cipher::for_suite(Suite::load(&StatePaths::new(state_dir))?);
        let Some(raw) = load_or_create_key(&kp, cipher.key_len(), create)? else {
            return Err(ContentError::BadKey {
                path: kp,
                reason: format!("is missing, but {} holds content sealed under it", dir.display()),
            });
        };
        Self::open_with_key(&dir, cipher, &raw).map(Some)
    }

    /// Opens the store at `dir` under `raw`, a key of `cipher`.
    pub fn open_with_key(dir: &Path, cipher: Cipher, raw: &[u8]) -> Result<Self, ContentError> {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("setting the mode of", dir))?;
        let store = |source| ContentError::Store { path: dir.to_path_buf(), source };
        // A lock held only briefly (sled lets go of it shortly after the last handle, as when the
        // store was just closed) is waited for before it is reported.
        let config = sled::Config::new().path(dir).cache_capacity(CONTENT_CACHE_BYTES);
        let db = govbox_provisioning::open_sled(&config, CONTENT_LOCK_WAIT).map_err(store)?;
        let records = db.open_tree("records").map_err(store)?;
        let by_time = db.open_tree("by_time").map_err(store)?;
        let key = SealKey::new(cipher, raw).ok_or_else(|| ContentError::BadKey {
            path: dir.to_path_buf(),
            reason: format!("is not a {}-byte {} key", cipher.key_len(), cipher.as_str()),
        })?;
        Ok(ContentStore { dir: dir.to_path_buf(), records, by_time, key: std::sync::Arc::new(key) })
    }

    fn store_err(&self) -> impl FnOnce(sled::Error) -> ContentError + '_ {
        |source| ContentError::Store { path: self.dir.clone(), source }
    }

    /// Seals and stores `plaintext` as `kind` of `request_id`, bound to the audit hash `hash`,
    /// and flushes it to disk.
    pub fn put(
        &self,
        request_id: &str,
        kind: Kind,
        client: &str,
        hash: &str,
        plaintext: &[u8],
        truncated: bool,
    ) -> Result<(), ContentError> {
        let created = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| ContentError::Rng)?;
        let buf = self.key.seal(nonce, &aad(request_id, kind, hash), plaintext).ok_or(ContentError::Rng)?;
        let rec = Sealed {
            created,
            hash: hash.to_string(),
            truncated,
            client: Some(client.to_string()),
            cipher: self.key.cipher().as_str().to_string(),
            nonce: B64.encode(nonce),
            sealed: B64.encode(&buf),
        };
        let key = record_key(request_id, kind);
        let value = serde_json::to_vec(&rec).unwrap_or_default();
        self.records.insert(key.as_bytes(), value).map_err(self.store_err())?;
        let mut tkey = created.to_be_bytes().to_vec();
        tkey.extend_from_slice(key.as_bytes());
        self.by_time.insert(tkey, &[]).map_err(self.store_err())?;
        self.records.flush().map_err(self.store_err())?;
        Ok(())
    }

    /// Removes a record (a prompt whose audit entry could not be written).
    pub fn remove(&self, request_id: &str, kind: Kind) {
        let _ = self.records.remove(record_key(request_id, kind).as_bytes());
    }

    /// Opens `kind` of `request_id`; `None` when there is no such record.
    pub fn get(&self, request_id: &str, kind: Kind) -> Result<Option<Opened>, ContentError> {
        let key = record_key(request_id, kind);
        let Some(raw) = self.records.get(key.as_bytes()).map_err(self.store_err())? else {
            return Ok(None);
        };
        let damaged = |reason: String| ContentError::Damaged { key: key.clone(), reason };
        let rec: Sealed = serde_json::from_slice(&raw).map_err(|e| damaged(e.to_string()))?;
        let nonce: [u8; NONCE_LEN] = B64
            .decode(&rec.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| damaged("the nonce is not 12 bytes of base64".into()))?;
        let mine = self.key.cipher().as_str();
        if rec.cipher != mine {
            let shown: String = rec.cipher.chars().take(32).collect();
            return Err(damaged(format!("sealed with '{shown}', but this box's suite seals with {mine}")));
        }
        let buf = B64.decode(&rec.sealed).map_err(|e| damaged(e.to_string()))?;
        let plain = self
            .key
            .open(nonce, &aad(request_id, kind, &rec.hash), &buf)
            .ok_or_else(|| ContentError::Decrypt { key: key.clone() })?;
        Ok(Some(Opened {
            created: rec.created,
            hash: rec.hash,
            client: rec.client,
            truncated: rec.truncated,
            plaintext: plain,
        }))
    }

    /// Deletes every record stored before `cutoff` (Unix seconds); returns how many.
    pub fn prune_before(&self, cutoff: i64) -> Result<usize, ContentError> {
        let mut removed = 0;
        let end = cutoff.to_be_bytes();
        for item in self.by_time.range(..end.to_vec()) {
            let (tkey, _) = item.map_err(self.store_err())?;
            if let Some(rk) = tkey.get(8..) {
                // A record stored again later under the same key has its own, newer time entry.
                let stale = match self.records.get(rk).map_err(self.store_err())? {
                    Some(v) => serde_json::from_slice::<Sealed>(&v).map_or(true, |r| r.created < cutoff),
                    None => false,
                };
                if stale {
                    self.records.remove(rk).map_err(self.store_err())?;
                    removed += 1;
                }
            }
            self.by_time.remove(&tkey).map_err(self.store_err())?;
        }
        self.records.flush().map_err(self.store_err())?;
        Ok(removed)
    }

    /// Deletes records older than `days` days.
    pub fn prune_expired(&self, days: u32) -> Result<usize, ContentError> {
        self.prune_before(time::OffsetDateTime::now_utc().unix_timestamp() - i64::from(days) * 86_400)
    }

    /// Every record key and its raw stored bytes (tests: to tamper with them).
    #[cfg(test)]
    fn raw(&self, request_id: &str, kind: Kind) -> Sealed {
        serde_json::from_slice(&self.records.get(record_key(request_id, kind).as_bytes()).unwrap().unwrap()).unwrap()
    }

    #[cfg(test)]
    fn put_raw(&self, request_id: &str, kind: Kind, rec: &Sealed) {
        self.records.insert(record_key(request_id, kind).as_bytes(), serde_json::to_vec(rec).unwrap()).unwrap();
    }
}

/// A request id as the daemon makes them: `req-` and 16 lower-case hex digits.
pub fn is_request_id(s: &str) -> bool {
    s.len() == 20 && s.starts_with("req-") && s[4..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "req-0123456789abcdef";

    /// A store in a state folder of `suite` (its `identity/suite` written as provisioning does).
    fn store_of(suite: Suite) -> (tempfile::TempDir, ContentStore) {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("identity")).unwrap();
        fs::write(StatePaths::new(tmp.path()).suite_file(), format!("{suite}\n")).unwrap();
        let s = ContentStore::open(tmp.path(), true).unwrap().unwrap();
        // The suite's cipher, named independently of `Cipher::for_suite`.
        let want = if suite == Suite::Gm { ("sm4-gcm", SM4_KEY_LEN) } else { ("aes-256-gcm", KEY_LEN) };
        assert_eq!((s.key.cipher().as_str(), s.key.cipher().key_len()), want);
        (tmp, s)
    }

    fn store() -> (tempfile::TempDir, ContentStore) {
        store_of(Suite::Intl)
    }

    #[test]
    fn sealed_records_open_and_hold_no_plaintext() {
        for suite in Suite::ALL {
            sealed_records_open(suite);
        }
    }

    fn sealed_records_open(suite: Suite) {
        let (tmp, s) = store_of(suite);
        s.put(ID, Kind::Prompt, "app", "aa11", b"the secret prompt", false).unwrap();
        s.put(ID, Kind::Response, "app", "bb22", b"the secret answer", true).unwrap();
        let p = s.get(ID, Kind::Prompt).unwrap().unwrap();
        assert_eq!((p.plaintext.as_slice(), p.hash.as_str(), p.truncated), (&b"the secret prompt"[..], "aa11", false));
        assert!(s.get(ID, Kind::Response).unwrap().unwrap().truncated);
        assert!(s.get("req-ffffffffffffffff", Kind::Prompt).unwrap().is_none());
        // Two seals of the same text differ (fresh nonce).
        s.put("req-1111111111111111", Kind::Prompt, "app", "aa11", b"the secret prompt", false).unwrap();
        assert_ne!(s.raw(ID, Kind::Prompt).sealed, s.raw("req-1111111111111111", Kind::Prompt).sealed);
        let key = key_path(tmp.path());
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&key).unwrap().len(), Cipher::for_suite(suite).key_len());
        assert_eq!(s.raw(ID, Kind::Prompt).cipher, Cipher::for_suite(suite).as_str(), "the record names its cipher");
        drop(s);
        // Reopening uses the same key.
        let s = ContentStore::open(tmp.path(), false).unwrap().unwrap();
        assert_eq!(s.get(ID, Kind::Prompt).unwrap().unwrap().plaintext, b"the secret prompt");
    }

    #[test]
    fn opening_waits_for_a_lock_that_is_about_to_be_released() {
        let (tmp, s) = store_of(Suite::Intl);
        let holder = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(s);
        });
        let again = ContentStore::open(tmp.path(), false).unwrap().unwrap();
        assert!(again.get(ID, Kind::Prompt).unwrap().is_none());
        holder.join().unwrap();
    }

    #[test]
    fn tampered_ciphertext_or_additional_data_does_not_decrypt() {
        for suite in Suite::ALL {
            tampered_records_do_not_decrypt(suite);
        }
    }

    fn tampered_records_do_not_decrypt(suite: Suite) {
        let (_tmp, s) = store_of(suite);
        s.put(ID, Kind::Prompt, "app", "aa11", b"the secret prompt", false).unwrap();
        let good = s.raw(ID, Kind::Prompt);
        // A flipped ciphertext bit.
        let mut bad = good.clone();
        let mut ct = B64.decode(&bad.sealed).unwrap();
        ct[0] ^= 1;
        bad.sealed = B64.encode(ct);
        s.put_raw(ID, Kind::Prompt, &bad);
        assert!(matches!(s.get(ID, Kind::Prompt), Err(ContentError::Decrypt { .. })));
        // Another audit hash.
        let mut bad = good.clone();
        bad.hash = "aa12".into();
        s.put_raw(ID, Kind::Prompt, &bad);
        assert!(matches!(s.get(ID, Kind::Prompt), Err(ContentError::Decrypt { .. })));
        // Moved to another request, or to the other kind.
        s.put_raw("req-2222222222222222", Kind::Prompt, &good);
        assert!(matches!(s.get("req-2222222222222222", Kind::Prompt), Err(ContentError::Decrypt { .. })));
        s.put_raw(ID, Kind::Response, &good);
        assert!(matches!(s.get(ID, Kind::Response), Err(ContentError::Decrypt { .. })));
        // Put back, it opens again.
        s.put_raw(ID, Kind::Prompt, &good);
        assert!(s.get(ID, Kind::Prompt).unwrap().is_some());
    }

    #[test]
    fn another_key_does_not_decrypt() {
        for cipher in [Cipher::Aes256Gcm, Cipher::Sm4Gcm] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("content");
            let (seven, eight) = (vec![7u8; cipher.key_len()], vec![8u8; cipher.key_len()]);
            let s = ContentStore::open_with_key(&dir, cipher, &seven).unwrap();
            s.put(ID, Kind::Response, "app", "cc", b"answer", false).unwrap();
            drop(s);
            let other = ContentStore::open_with_key(&dir, cipher, &eight).unwrap();
            assert!(matches!(other.get(ID, Kind::Response), Err(ContentError::Decrypt { .. })));
            drop(other);
            let same = ContentStore::open_with_key(&dir, cipher, &seven).unwrap();
            assert_eq!(same.get(ID, Kind::Response).unwrap().unwrap().plaintext, b"answer");
        }
    }

    /// A record sealed under one suite's cipher is refused by a store of the other, naming both,
    /// rather than tried under the wrong cipher.
    #[test]
    fn a_record_of_another_cipher_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("content");
        let gm = ContentStore::open_with_key(&dir, Cipher::Sm4Gcm, &[7u8; SM4_KEY_LEN]).unwrap();
        gm.put(ID, Kind::Prompt, "app", "aa", b"prompt", false).unwrap();
        drop(gm);
        let intl = ContentStore::open_with_key(&dir, Cipher::Aes256Gcm, &[7u8; KEY_LEN]).unwrap();
        let e = intl.get(ID, Kind::Prompt).unwrap_err();
        assert!(e.to_string().contains("sealed with 'sm4-gcm', but this box's suite seals with aes-256-gcm"), "{e}");
        assert!(ContentStore::open_with_key(&dir, Cipher::Sm4Gcm, &[7u8; KEY_LEN]).is_err(), "a 32-byte SM4 key");
    }

    /// RFC 8998 Appendix A.1, the SM4-GCM example (also what OpenSSL 3 computes for it).
    #[test]
    fn sm4_gcm_matches_the_rfc_8998_example() {
        let unhex = |s: &str| -> Vec<u8> {
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
        };
        let key = SealKey::new(Cipher::Sm4Gcm, &unhex("0123456789ABCDEFFEDCBA9876543210")).unwrap();
        let nonce: [u8; 12] = unhex("00001234567800000000ABCD").try_into().unwrap();
        let pt = unhex(concat!(
            "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD",
            "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
        ));
        let aad = unhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2");
        let want = unhex(concat!(
            "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735",
            "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D",
            "83DE3541E4C2B58177E065A9BF7B62EC"
        ));
        let sealed = key.seal(nonce, &aad, &pt).unwrap();
        assert_eq!(sealed, want);
        assert_eq!(key.open(nonce, &aad, &sealed).unwrap(), pt);
        let mut bad = sealed.clone();
        bad[70] ^= 1;
        assert!(key.open(nonce, &aad, &bad).is_none(), "a changed tag");
    }

    /// GB/T 32907-2016 Appendix A example 1: the block cipher under the mode is the standard's.
    #[test]
    fn sm4_block_matches_the_standard_example() {
        use sm4::cipher::{BlockCipherEncrypt as _, KeyInit as _};
        let k: [u8; 16] =
            [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10];
        let cipher = sm4::Sm4::new(&k.into());
        let mut block = k.into();
        cipher.encrypt_block(&mut block);
        let want = [0x68, 0x1e, 0xdf, 0x34, 0xd2, 0x06, 0x96, 0x5e, 0x86, 0xb3, 0xe9, 0x4f, 0x53, 0x6e, 0x42, 0x46];
        assert_eq!(block.as_slice(), want);
    }

    #[test]
    fn expiry_deletes_old_records_only() {
        let (_tmp, s) = store();
        s.put(ID, Kind::Prompt, "app", "aa", b"old", false).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert_eq!(s.prune_before(now - 10).unwrap(), 0, "a fresh record stays");
        assert_eq!(s.prune_expired(30).unwrap(), 0);
        assert_eq!(s.prune_before(now + 10).unwrap(), 1);
        assert!(s.get(ID, Kind::Prompt).unwrap().is_none());
        assert_eq!(s.by_time.len(), 0, "the time index is emptied too");
    }

    #[test]
    fn off_with_nothing_stored_makes_nothing_and_a_bad_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("identity")).unwrap();
        assert!(ContentStore::open(tmp.path(), false).unwrap().is_none());
        assert!(!store_dir(tmp.path()).exists() && !key_path(tmp.path()).exists());
        let key = key_path(tmp.path());
        fs::write(&key, [1u8; 31]).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let e = ContentStore::open(tmp.path(), true).unwrap_err();
        assert!(e.to_string().contains("holds 31 bytes"), "{e}");
        fs::write(&key, [1u8; 32]).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let e = ContentStore::open(tmp.path(), true).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn request_ids_are_checked() {
        assert!(is_request_id(ID));
        for bad in ["", "req-0123", "req-0123456789ABCDEF", "xyz-0123456789abcdef", "req-0123456789abcdef0"] {
            assert!(!is_request_id(bad), "{bad}");
        }
    }
}
