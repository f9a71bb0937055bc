//! Optional encrypted retention of request content (`[retention] store_content`, off by default).
//!
//! When it is on, each inference request's prompt (the exact bytes whose HMAC is the audit request
//! entry's `prompt_hmac`) and response (the bytes the client received, whose HMAC is the completion
//! entry's `response_hmac`) are kept in their own sled database, `STATE/content/`, each sealed with
//! AES-256-GCM (ring) under the device's content key, `STATE/identity/content.key` (32 random
//! bytes, mode 0600, made on first use). Every record has a fresh random 96-bit nonce, and its
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

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The content key's length: AES-256.
pub const KEY_LEN: usize = 32;
/// The most response bytes kept per request; beyond this the record is marked truncated.
pub const MAX_KEPT_RESPONSE: usize = 16 << 20;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// sled's page cache for the content store (sled's default is 1 GiB). Records are written once
/// and read back rarely (admin `content_read`, hourly expiry), so a small cache suffices and keeps
/// govboxd's memory bounded however much content is retained (tests/RELIABILITY.md, caches).
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
    key: std::sync::Arc<LessSafeKey>,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStore").field("dir", &self.dir).finish_non_exhaustive()
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

/// Reads the content key, making it (32 random bytes, mode 0600) when it is missing and `create`.
pub fn load_or_create_key(path: &Path, create: bool) -> Result<Option<[u8; KEY_LEN]>, ContentError> {
    match File::open(path) {
        Ok(f) => {
            let mode = f.metadata().map_err(io("reading", path))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(ContentError::BadKey {
                    path: path.into(),
                    reason: format!("has mode {:o}; it must be readable by its owner only (chmod 600)", mode & 0o777),
                });
            }
            let mut buf = Vec::with_capacity(KEY_LEN);
            f.take(KEY_LEN as u64 + 1).read_to_end(&mut buf).map_err(io("reading", path))?;
            let key: [u8; KEY_LEN] = buf.as_slice().try_into().map_err(|_| ContentError::BadKey {
                path: path.into(),
                reason: format!("holds {} bytes, not {KEY_LEN}", buf.len()),
            })?;
            Ok(Some(key))
        }
        Err(e) if e.kind() == ErrorKind::NotFound && !create => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let mut key = [0u8; KEY_LEN];
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
                Err(e) if e.kind() == ErrorKind::AlreadyExists => load_or_create_key(path, false),
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
    /// Opens `STATE/content/` with the content key. With `create` false (retention off), a box
    /// that never stored content gets `None`, and nothing is made; one that did still has its
    /// records read and expired.
    pub fn open(state_dir: &Path, create: bool) -> Result<Option<Self>, ContentError> {
        let dir = store_dir(state_dir);
        let kp = key_path(state_dir);
        if !create && !dir.exists() {
            return Ok(None);
        }
        let Some(raw) = load_or_create_key(&kp, create)? else {
            return Err(ContentError::BadKey {
                path: kp,
                reason: format!("is missing, but {} holds content sealed under it", dir.display()),
            });
        };
        Self::open_with_key(&dir, &raw).map(Some)
    }

    /// Opens the store at `dir` under `raw`.
    pub fn open_with_key(dir: &Path, raw: &[u8; KEY_LEN]) -> Result<Self, ContentError> {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("setting the mode of", dir))?;
        let store = |source| ContentError::Store { path: dir.to_path_buf(), source };
        let db = sled::Config::new().path(dir).cache_capacity(CONTENT_CACHE_BYTES).open().map_err(store)?;
        let records = db.open_tree("records").map_err(store)?;
        let by_time = db.open_tree("by_time").map_err(store)?;
        let unbound = UnboundKey::new(&AES_256_GCM, raw)
            .map_err(|_| ContentError::BadKey { path: dir.to_path_buf(), reason: "is not an AES-256 key".into() })?;
        Ok(ContentStore {
            dir: dir.to_path_buf(),
            records,
            by_time,
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
        })
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
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(request_id, kind, hash)),
                &mut buf,
            )
            .map_err(|_| ContentError::Rng)?;
        let rec = Sealed {
            created,
            hash: hash.to_string(),
            truncated,
            client: Some(client.to_string()),
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
        let mut buf = B64.decode(&rec.sealed).map_err(|e| damaged(e.to_string()))?;
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad(request_id, kind, &rec.hash)), &mut buf)
            .map_err(|_| ContentError::Decrypt { key: key.clone() })?;
        Ok(Some(Opened {
            created: rec.created,
            hash: rec.hash,
            client: rec.client,
            truncated: rec.truncated,
            plaintext: plain.to_vec(),
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

    fn store() -> (tempfile::TempDir, ContentStore) {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("identity")).unwrap();
        let s = ContentStore::open(tmp.path(), true).unwrap().unwrap();
        (tmp, s)
    }

    #[test]
    fn sealed_records_open_and_hold_no_plaintext() {
        let (tmp, s) = store();
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
        assert_eq!(fs::read(&key).unwrap().len(), KEY_LEN);
        drop(s);
        // Reopening uses the same key.
        let s = ContentStore::open(tmp.path(), false).unwrap().unwrap();
        assert_eq!(s.get(ID, Kind::Prompt).unwrap().unwrap().plaintext, b"the secret prompt");
    }

    #[test]
    fn tampered_ciphertext_or_additional_data_does_not_decrypt() {
        let (_tmp, s) = store();
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
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("content");
        let s = ContentStore::open_with_key(&dir, &[7u8; KEY_LEN]).unwrap();
        s.put(ID, Kind::Response, "app", "cc", b"answer", false).unwrap();
        drop(s);
        let other = ContentStore::open_with_key(&dir, &[8u8; KEY_LEN]).unwrap();
        assert!(matches!(other.get(ID, Kind::Response), Err(ContentError::Decrypt { .. })));
        drop(other);
        let same = ContentStore::open_with_key(&dir, &[7u8; KEY_LEN]).unwrap();
        assert_eq!(same.get(ID, Kind::Response).unwrap().unwrap().plaintext, b"answer");
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
