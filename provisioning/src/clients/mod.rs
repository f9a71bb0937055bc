//! The intranet applications allowed to call the box, kept in the sled store at `state/db`.
//!
//! Tree `clients` maps a client name to its [`ClientRecord`] as JSON; tree `client_certs` maps a
//! certificate fingerprint (hex) to the client name, so the daemon finds the client of a TLS
//! connection without a scan. Both trees change together, in one sled transaction, and every
//! change is flushed to disk before the call returns.
//!
//! sled takes an exclusive lock on the database, so while govboxd runs it alone writes here and
//! the CLI must go through its admin socket; [`ClientStore::open`] says so when the lock is held.

mod name;
mod token;

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use time::OffsetDateTime;

pub use self::name::{ClientName, check_known_models};
use self::token::ConstantTimeEq;
pub use self::token::{BearerToken, MAX_TOKEN_LEN, TOKEN_PREFIX, token_sha256_hex};
use crate::error::{ProvisionError, Result};
use crate::fsio::{self, Overwrite, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, PUBLIC_FILE_MODE};
use crate::paths::StatePaths;
use crate::tls::{self, BoxCa, IssuedCert};

const CLIENTS_TREE: &str = "clients";
/// How long opening the store waits for a lock that another opener is just releasing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// sled's page cache for the client registry (sled's default is 1 GiB): a few records per client,
/// read at every authentication by govboxd, so 8 MiB caches it whole on any real box while keeping
/// the daemon's memory bounded (tests/RELIABILITY.md, caches).
const CACHE_BYTES: u64 = 8 << 20;
const CERTS_TREE: &str = "client_certs";
/// The `--models` value that grants every present and future model.
pub const ALL_MODELS: &str = "all";
/// Client certificates last a year unless asked otherwise.
pub const DEFAULT_CERT_DAYS: u32 = 365;

/// One client as stored.
///
/// Unknown fields are ignored when reading, so that a record written by a newer govbox can still
/// be read after a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// The client's name.
    pub name: String,
    /// The models it may use; empty means every model (chosen as `--models all`).
    pub models: Vec<String>,
    /// What it may call; records from before scopes existed are inference clients.
    #[serde(default = "Scope::inference_only")]
    pub scopes: Vec<Scope>,
    /// Requests per minute; `None` means govboxd's `[serving] default_client_rpm`.
    pub rpm: Option<u32>,
    /// Tokens per day; `None` means no limit.
    pub tokens_per_day: Option<u64>,
    /// Requests running at once at most; `None` means no limit of its own (govboxd still hands
    /// freed slots to clients below their fair share first). Absent in records of older govbox.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// SHA-256 (hex) of the DER of its current client certificate.
    pub cert_sha256: Option<String>,
    /// When that certificate expires, Unix seconds.
    pub cert_not_after: i64,
    /// SHA-256 (hex) of its bearer token, if it has one. The token itself is never stored.
    pub token_sha256: Option<String>,
    /// Revoked clients are refused, whatever credential they present.
    pub revoked: bool,
    /// When the client was added, Unix seconds.
    pub created: i64,
    /// Its completions prompts may write control tokens (`<|im_start|>`) as text; otherwise
    /// such text is plain text. Chat messages are plain text whatever this says.
    #[serde(default)]
    pub allow_special_tokens: bool,
    /// The content-safety library its requests get (a library name, or `off`); `None` means
    /// govboxd's `[policy] default`. Absent in records of older govbox.
    #[serde(default)]
    pub policy: Option<String>,
}

impl ClientRecord {
    /// Whether the client holds `scope`.
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Whether its current certificate has expired at `now` (Unix seconds). Its token, if any,
    /// still works: only the certificate needs renewing.
    pub fn cert_expired(&self, now: i64) -> bool {
        self.cert_not_after <= now
    }
}

/// What a client may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Scope {
    /// The OpenAI API (`/v1/...`), on the models the client is allowed.
    Inference,
    /// `/metrics` (a Prometheus scraper): traffic counts, model names, device memory.
    Metrics,
}

impl Scope {
    /// Every scope, in the order `--scope` lists them.
    pub const ALL: [Scope; 2] = [Scope::Inference, Scope::Metrics];

    /// Its name in the CLI and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Inference => "inference",
            Scope::Metrics => "metrics",
        }
    }

    fn inference_only() -> Vec<Scope> {
        vec![Scope::Inference]
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown scope '{s}': expected {}", Scope::ALL.map(Scope::as_str).join(" or ")))
    }
}

/// A request to add a client.
#[derive(Debug, Clone)]
pub struct NewClient {
    /// Its name.
    pub name: ClientName,
    /// The models it may use, required for the `inference` scope: names, or exactly
    /// [`ALL_MODELS`] for every present and future model.
    pub models: Vec<String>,
    /// What it may call; at least one.
    pub scopes: Vec<Scope>,
    /// Requests per minute, at least 1; `None` means govboxd's `[serving] default_client_rpm`.
    pub rpm: Option<u32>,
    /// Tokens per day, at least 1; `None` means no limit.
    pub tokens_per_day: Option<u64>,
    /// Requests running at once, at least 1; `None` means no limit of its own.
    pub max_concurrent: Option<u32>,
    /// Validity of its certificate in days.
    pub cert_days: u32,
    /// Also make a bearer token.
    pub with_token: bool,
    /// See [`ClientRecord::allow_special_tokens`].
    pub allow_special_tokens: bool,
    /// See [`ClientRecord::policy`].
    pub policy: Option<String>,
}

/// What [`ClientStore::add`] and [`ClientStore::renew`] hand back: the stored record, and the
/// secrets that exist only now: the certificate's private key and the token.
#[derive(Debug, Clone)]
pub struct IssuedClient {
    /// The record as stored.
    pub record: ClientRecord,
    /// The new certificate and its private key.
    pub cert: IssuedCert,
    /// The box's CA certificate, PEM, for the client to trust the server.
    pub ca_pem: String,
    /// The new bearer token, shown once (only from `add` with `with_token`).
    pub token: Option<BearerToken>,
}

/// The client database.
pub struct ClientStore {
    paths: StatePaths,
    db: sled::Db,
    clients: sled::Tree,
    certs: sled::Tree,
    ct_eq: Option<ConstantTimeEq>,
}

impl std::fmt::Debug for ClientStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStore").field("db", &self.paths.db()).finish_non_exhaustive()
    }
}

impl ClientStore {
    /// Opens the store of a provisioned state folder.
    ///
    /// Fails with [`ProvisionError::StoreLocked`] when another process (normally govboxd) has it open.
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Self> {
        let paths = StatePaths::new(state_dir.as_ref());
        tls::require_provisioned(&paths)?;
        Self::open_at(paths)
    }

    /// Opens the store without checking that the box is provisioned: provisioning itself uses
    /// this to hold the lock while it (re)writes the identity.
    pub(crate) fn open_at(paths: StatePaths) -> Result<Self> {
        fsio::ensure_dir(&paths.state_dir(), PRIVATE_DIR_MODE)?;
        let db_path = paths.db();
        // A lock held only briefly (sled lets go of it shortly after the last handle) is waited
        // for, up to LOCK_WAIT, before it is reported.
        let config = sled::Config::new().path(&db_path).cache_capacity(CACHE_BYTES);
        let db = fsio::open_sled(&config, LOCK_WAIT).map_err(|source| match fsio::is_sled_lock_error(&source) {
            true => ProvisionError::StoreLocked { path: db_path.clone() },
            false => {
                ProvisionError::Store { action: "opening the state store".to_string(), path: db_path.clone(), source }
            }
        })?;
        let store_err = |source| ProvisionError::Store {
            action: "opening the clients tree".to_string(),
            path: db_path.clone(),
            source,
        };
        let clients = db.open_tree(CLIENTS_TREE).map_err(store_err)?;
        let certs = db.open_tree(CERTS_TREE).map_err(store_err)?;
        Ok(ClientStore { paths, db, clients, certs, ct_eq: ConstantTimeEq::new() })
    }

    /// Adds a client and issues its certificate (and token, if asked).
    pub fn add(&self, new: NewClient) -> Result<IssuedClient> {
        let name = new.name.as_str().to_string();
        if let Some(existing) = self.get(&name)? {
            return Err(name_taken(existing));
        }
        if new.max_concurrent == Some(0) {
            return Err(ProvisionError::InvalidClientSetting {
                name,
                reason: "a limit of 0 concurrent requests would refuse every request; omit it for the fair share"
                    .into(),
            });
        }
        let scopes = name::check_scopes(&name, &new.scopes)?;
        let models = name::check_models(&name, &new.models, scopes.contains(&Scope::Inference))?;
        check_limits(&name, new.rpm, new.tokens_per_day, new.cert_days)?;
        let ca = BoxCa::load(&self.paths)?;
        let now = OffsetDateTime::now_utc();
        let cert = ca.issue_client(&name, new.cert_days, now)?;
        let token = if new.with_token { Some(BearerToken::generate()?) } else { None };
        let record = ClientRecord {
            name: name.clone(),
            models,
            scopes,
            rpm: new.rpm,
            tokens_per_day: new.tokens_per_day,
            max_concurrent: new.max_concurrent,
            cert_sha256: Some(cert.info.sha256_hex()),
            cert_not_after: cert.info.not_after,
            token_sha256: token.as_ref().map(BearerToken::sha256_hex),
            revoked: false,
            created: now.unix_timestamp(),
            allow_special_tokens: new.allow_special_tokens,
            policy: new.policy,
        };
        let path = self.paths.db();
        let value = encode(&record, &path)?;
        let fp = cert.info.sha256_hex();
        self.transact(&format!("adding client '{name}'"), |clients, certs| {
            // Checked again inside the transaction: a concurrent add of the same name loses here.
            if let Some(v) = clients.get(name.as_bytes())? {
                return abort(name_taken(decode_at(&v, &path).or_else(abort)?));
            }
            clients.insert(name.as_bytes(), value.as_slice())?;
            certs.insert(fp.as_bytes(), name.as_bytes())?;
            Ok(())
        })?;
        Ok(IssuedClient { record, cert, ca_pem: ca.cert_pem, token })
    }

    /// Every client, sorted by name.
    pub fn list(&self) -> Result<Vec<ClientRecord>> {
        let mut out = Vec::new();
        for item in self.clients.iter() {
            let (_, v) = item.map_err(|e| self.store_err("listing clients", e))?;
            out.push(self.decode(&v)?);
        }
        Ok(out)
    }

    /// The client called `name`, if there is one.
    pub fn get(&self, name: &str) -> Result<Option<ClientRecord>> {
        let name = ClientName::parse(name)?;
        let v = self.clients.get(name.as_str()).map_err(|e| self.store_err(&format!("reading client '{name}'"), e))?;
        v.map(|v| self.decode(&v)).transpose()
    }

    /// Revokes a client: from now on neither its certificate nor its token is accepted.
    /// Revoking a revoked client is not an error.
    pub fn revoke(&self, name: &str) -> Result<ClientRecord> {
        let name = ClientName::parse(name)?.to_string();
        let path = self.paths.db();
        self.transact(&format!("revoking client '{name}'"), |clients, _| {
            let Some(v) = clients.get(name.as_bytes())? else {
                return abort(ProvisionError::ClientNotFound { action: "revoking".into(), name: name.clone() });
            };
            let mut record = decode_at(&v, &path).or_else(abort)?;
            record.revoked = true;
            clients.insert(name.as_bytes(), encode(&record, &path).or_else(abort)?)?;
            Ok(record)
        })
    }

    /// Issues a new certificate for a client; the old certificate's fingerprint is no longer accepted.
    /// The token, if any, stays as it is.
    pub fn renew(&self, name: &str, cert_days: u32) -> Result<IssuedClient> {
        self.renew_at(name, cert_days, OffsetDateTime::now_utc())
    }

    /// [`ClientStore::renew`] with a certificate valid from `now` instead of the present moment
    /// (tests use a past moment to hold an expired certificate).
    pub fn renew_at(&self, name: &str, cert_days: u32, now: OffsetDateTime) -> Result<IssuedClient> {
        let name = ClientName::parse(name)?.to_string();
        check_limits(&name, None, None, cert_days)?;
        let Some(current) = self.get(&name)? else {
            return Err(ProvisionError::ClientNotFound { action: "renewing".into(), name });
        };
        if current.revoked {
            return Err(ProvisionError::ClientRevoked { action: "renewing".into(), name });
        }
        let ca = BoxCa::load(&self.paths)?;
        let cert = ca.issue_client(&name, cert_days, now)?;
        let fp = cert.info.sha256_hex();
        let path = self.paths.db();
        let record = self.transact(&format!("renewing client '{name}'"), |clients, certs| {
            let Some(v) = clients.get(name.as_bytes())? else {
                return abort(ProvisionError::ClientNotFound { action: "renewing".into(), name: name.clone() });
            };
            let mut record = decode_at(&v, &path).or_else(abort)?;
            // A revoke that slipped in between the check above and now must win.
            if record.revoked {
                return abort(ProvisionError::ClientRevoked { action: "renewing".into(), name: name.clone() });
            }
            if let Some(old) = &record.cert_sha256 {
                certs.remove(old.as_bytes())?;
            }
            record.cert_sha256 = Some(fp.clone());
            record.cert_not_after = cert.info.not_after;
            clients.insert(name.as_bytes(), encode(&record, &path).or_else(abort)?)?;
            certs.insert(fp.as_bytes(), name.as_bytes())?;
            Ok(record)
        })?;
        Ok(IssuedClient { record, cert, ca_pem: ca.cert_pem, token: None })
    }

    /// The active client whose bearer token this is.
    ///
    /// Every stored hash is compared, in constant time, so the time taken does not depend on which
    /// record matched or where a hash differed. Revoked clients, over-long tokens and store errors
    /// all give `None`: authentication fails closed.
    pub fn find_by_token(&self, token: &str) -> Option<ClientRecord> {
        if token.len() > MAX_TOKEN_LEN || !token.starts_with(TOKEN_PREFIX) {
            return None;
        }
        let ct = self.ct_eq.as_ref()?;
        let presented = token_sha256_hex(token);
        let mut found = None;
        for item in self.clients.iter() {
            let (_, v) = item.ok()?;
            let record = self.decode(&v).ok()?;
            let stored = record.token_sha256.as_deref().unwrap_or("");
            if ct.eq(stored.as_bytes(), presented.as_bytes()) && !stored.is_empty() {
                found = Some(record);
            }
        }
        found.filter(|r| !r.revoked)
    }

    /// The active client whose current certificate has this SHA-256 fingerprint.
    ///
    /// Revoked clients, renewed-away certificates, expired certificates and store errors give `None`.
    pub fn find_by_cert_fingerprint(&self, sha256: &[u8; 32]) -> Option<ClientRecord> {
        let fp = fsio::hex(sha256);
        let name = self.certs.get(fp.as_bytes()).ok()??;
        let record = self.decode(&self.clients.get(name).ok()??).ok()?;
        let current = record.cert_sha256.as_deref() == Some(fp.as_str());
        let unexpired = record.cert_not_after > OffsetDateTime::now_utc().unix_timestamp();
        (current && unexpired && !record.revoked).then_some(record)
    }

    /// [`ClientStore::find_by_cert_fingerprint`] with the fingerprint as hex (either case).
    pub fn find_by_cert_fingerprint_hex(&self, sha256_hex: &str) -> Option<ClientRecord> {
        self.find_by_cert_fingerprint(&fsio::unhex::<32>(sha256_hex, fsio::HexCase::Either)?)
    }

    fn transact<T>(
        &self,
        action: &str,
        f: impl Fn(&TransactionalTree, &TransactionalTree) -> Result<T, ConflictableTransactionError<ProvisionError>>,
    ) -> Result<T> {
        let out = (&self.clients, &self.certs).transaction(|(c, i)| f(c, i)).map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => self.store_err(action, e),
        })?;
        self.db.flush().map_err(|e| self.store_err(&format!("{action}: flushing to disk"), e))?;
        Ok(out)
    }

    /// The sled database, for the TLCP pair registry (`tlcp_ca`), which keeps its own trees.
    #[cfg_attr(not(feature = "tlcp"), allow(dead_code))]
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The state folder's paths.
    #[cfg_attr(not(feature = "tlcp"), allow(dead_code))]
    pub(crate) fn paths(&self) -> &StatePaths {
        &self.paths
    }

    fn decode(&self, bytes: &[u8]) -> Result<ClientRecord> {
        decode_at(bytes, &self.paths.db())
    }

    fn store_err(&self, action: &str, source: sled::Error) -> ProvisionError {
        ProvisionError::Store { action: action.to_string(), path: self.paths.db(), source }
    }
}

/// Why a name cannot be added again: it is in use, or it was revoked. A revoked name is never
/// reused, so that every audit entry that names a client names one client only.
fn name_taken(existing: ClientRecord) -> ProvisionError {
    if existing.revoked {
        ProvisionError::ClientNameRetired { name: existing.name }
    } else {
        ProvisionError::ClientExists { name: existing.name }
    }
}

fn abort<T>(e: ProvisionError) -> Result<T, ConflictableTransactionError<ProvisionError>> {
    Err(ConflictableTransactionError::Abort(e))
}

fn encode(record: &ClientRecord, path: &Path) -> Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(|e| ProvisionError::CorruptRecord {
        what: format!("client '{}'", record.name),
        path: path.to_path_buf(),
        reason: format!("encoding failed: {e}"),
    })
}

fn decode_at(bytes: &[u8], path: &Path) -> Result<ClientRecord> {
    serde_json::from_slice(bytes).map_err(|e| ProvisionError::CorruptRecord {
        what: "a client record".to_string(),
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn check_limits(name: &str, rpm: Option<u32>, tokens_per_day: Option<u64>, days: u32) -> Result<()> {
    let invalid =
        |reason: &str| Err(ProvisionError::InvalidClientSetting { name: name.to_string(), reason: reason.to_string() });
    if rpm == Some(0) {
        return invalid("a rate of 0 requests per minute would refuse every request; omit it for the box's default");
    }
    if tokens_per_day == Some(0) {
        return invalid("a budget of 0 tokens per day would refuse every request; omit it for no limit");
    }
    if days == 0 {
        return invalid("a certificate must be valid for at least 1 day");
    }
    Ok(())
}

/// Writes a client's certificate bundle into `dir` (created with mode 0700 if missing):
/// `NAME.crt` (0644), `NAME.key` (0600) and `ca.crt` (0644). Returns the three paths.
pub fn write_client_bundle(dir: &Path, issued: &IssuedClient, overwrite: Overwrite) -> Result<[std::path::PathBuf; 3]> {
    let name = &issued.record.name;
    if !dir.exists() {
        fsio::ensure_dir(dir, PRIVATE_DIR_MODE)?;
    }
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let ca = dir.join("ca.crt");
    if overwrite == Overwrite::Refuse {
        // Check all three first so that a refusal leaves no partial bundle behind.
        for p in [&crt, &key, &ca] {
            if fs::symlink_metadata(p).is_ok() {
                return Err(ProvisionError::AlreadyExists { what: "client bundle file".into(), path: p.clone() });
            }
        }
    }
    fsio::write_file(&key, issued.cert.key_pem.as_bytes(), PRIVATE_FILE_MODE, overwrite, "client private key")?;
    fsio::write_file(&crt, issued.cert.cert_pem.as_bytes(), PUBLIC_FILE_MODE, overwrite, "client certificate")?;
    fsio::write_file(&ca, issued.ca_pem.as_bytes(), PUBLIC_FILE_MODE, overwrite, "CA certificate")?;
    Ok([crt, key, ca])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::keys::SigningKey;
    use crate::provision::{ProvisionOptions, provision};
    use crate::trust::{Role, TrustKeySpec};

    fn provisioned() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let vendor = tmp.path().join("v.pub");
        SigningKey::generate().unwrap().public_key().write_pem(&vendor, Overwrite::Refuse).unwrap();
        provision(&ProvisionOptions {
            state_dir: tmp.path().join("s"),
            hostname: Some("box".into()),
            extra_sans: vec![],
            trust_keys: vec![TrustKeySpec { roles: Role::ALL.to_vec(), path: vendor }],
            thresholds: vec![],
            force: false,
            audit_pub: None,
            suite: crate::Suite::Intl,
        })
        .unwrap();
        tmp
    }

    fn new_client(name: &str, with_token: bool) -> NewClient {
        NewClient {
            name: name.parse().unwrap(),
            models: vec!["qwen2".into()],
            scopes: vec![Scope::Inference],
            rpm: Some(60),
            tokens_per_day: None,
            max_concurrent: None,
            cert_days: 30,
            with_token,
            allow_special_tokens: false,
            policy: None,
        }
    }

    #[test]
    fn add_find_renew_revoke() {
        let tmp = provisioned();
        let store = ClientStore::open(tmp.path().join("s")).unwrap();
        let issued = store.add(new_client("app", true)).unwrap();
        let token = issued.token.clone().unwrap();
        assert_eq!(issued.record.token_sha256.as_deref(), Some(token.sha256_hex().as_str()));
        assert!(store.add(new_client("app", false)).unwrap_err().to_string().contains("already exists"));

        assert_eq!(store.find_by_token(token.expose()).unwrap().name, "app");
        assert!(store.find_by_token("gbx_wrong").is_none());
        assert!(store.find_by_token(&token.sha256_hex()).is_none(), "the stored hash is not a credential");
        let fp1 = issued.cert.info.sha256;
        assert_eq!(store.find_by_cert_fingerprint(&fp1).unwrap().name, "app");
        assert_eq!(store.find_by_cert_fingerprint_hex(&fsio::hex(&fp1).to_uppercase()).unwrap().name, "app");

        let renewed = store.renew("app", 10).unwrap();
        assert_ne!(renewed.cert.info.sha256, fp1);
        assert!(store.find_by_cert_fingerprint(&fp1).is_none());
        assert!(store.find_by_cert_fingerprint(&renewed.cert.info.sha256).is_some());
        assert_eq!(store.find_by_token(token.expose()).unwrap().name, "app", "renew keeps the token");

        assert!(store.revoke("app").unwrap().revoked);
        assert!(store.find_by_token(token.expose()).is_none());
        assert!(store.find_by_cert_fingerprint(&renewed.cert.info.sha256).is_none());
        assert!(matches!(store.renew("app", 10), Err(ProvisionError::ClientRevoked { .. })));
        assert!(matches!(store.revoke("nobody"), Err(ProvisionError::ClientNotFound { .. })));
        let again = store.add(new_client("app", false)).unwrap_err();
        assert!(matches!(again, ProvisionError::ClientNameRetired { .. }), "{again}");
        assert!(again.to_string().contains("a revoked client had this name"), "{again}");
        assert!(matches!(store.get("Bad Name"), Err(ProvisionError::InvalidClientName { .. })));
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn a_second_open_reports_the_lock() {
        let tmp = provisioned();
        let _first = ClientStore::open(tmp.path().join("s")).unwrap();
        let err = ClientStore::open(tmp.path().join("s")).unwrap_err();
        assert!(matches!(err, ProvisionError::StoreLocked { .. }), "{err}");
        assert!(err.to_string().contains("locked by a running govboxd; use the daemon's admin socket"), "{err}");
    }

    #[test]
    fn open_requires_provisioning_and_limits_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(ClientStore::open(tmp.path()), Err(ProvisionError::NotProvisioned { .. })));
        let tmp = provisioned();
        let store = ClientStore::open(tmp.path().join("s")).unwrap();
        let mut c = new_client("zero", false);
        c.rpm = Some(0);
        assert!(matches!(store.add(c), Err(ProvisionError::InvalidClientSetting { .. })));
        assert!(store.list().unwrap().is_empty());
    }
}
