//! `govbox-provisioning`: the first-boot identity of a govbox appliance, and the credentials it
//! hands out afterwards.
//!
//! It makes the vendor's and the device's Ed25519 keys (PKCS#8 v1 PEM, which OpenSSL 3.0 reads;
//! vendor keys may also be SM2 with SM3, see [`gm`]),
//! the box's own ECDSA P-256 certificate authority, the HTTPS server certificate, the mTLS client
//! certificates and bearer tokens of intranet applications (kept in the sled store at
//! `state/db`), and the TUF-style trust policy `trust/root.json`.
//!
//! **What it trusts:** the operating system's CSPRNG (through ring), the public key files that
//! agency IT names at provisioning (they become the trust roots, unsigned, because a person put
//! them there), and the state folder's permissions. It trusts no file it reads to be well formed:
//! every read is size-capped and parsed strictly.
//!
//! **What it guarantees:** private keys and secrets are written with mode 0600 from their first
//! byte, public material 0644, folders 0700; every file is replaced atomically; provisioning checks
//! all input before writing anything and never silently replaces an existing identity; bearer
//! tokens are stored only as SHA-256 hashes and compared in constant time; a revoked client or a
//! renewed-away certificate is never returned as an authenticated client.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod canonical;
mod clients;
mod error;
mod fsio;
pub mod gm;
mod keys;
mod paths;
mod provision;
mod renew;
mod suite;
#[cfg(feature = "tlcp")]
pub mod tlcp_ca;
mod tls;
mod trust;

pub use canonical::to_canonical_json;
pub use clients::{
    ALL_MODELS, BearerToken, ClientName, ClientRecord, ClientStore, DEFAULT_CERT_DAYS, IssuedClient, MAX_TOKEN_LEN,
    NewClient, Scope, TOKEN_PREFIX, check_known_models, token_sha256_hex, write_client_bundle,
};
pub use error::{ProvisionError, Result};
pub use fsio::{
    HexCase, Overwrite, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, PUBLIC_FILE_MODE, hex, is_sled_lock_error, open_sled,
    read_unfollowed, unhex, unhex_vec, write_file,
};
pub use keys::{KEY_DER_LIMIT, KeyAlgorithm, PublicKey, SigningKey};
pub use paths::{DEFAULT_STATE_DIR, StatePaths};
pub use provision::{
    ProvisionOptions, ProvisionReport, PublicIdentity, ROOT_VALIDITY_DAYS, WrittenFile, describe_role,
    load_public_identity, provision,
};
pub use renew::{MAX_RENEW_DAYS, RenewReport, ServerCertSummary, load_server_cert, renew_server_cert, rfc3339};
pub use suite::{HashAlgorithm, Hasher, Suite};
pub use tls::{CA_VALIDITY_DAYS, CertInfo, IssuedCert, SERVER_VALIDITY_DAYS, ServerName, ServerTls, load_server_tls};
pub use trust::{Role, RoleKeys, RootSignature, ThresholdSpec, TrustKeySpec, TrustRoot};
