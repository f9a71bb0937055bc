//! `govbox-images`: the signed container for model packages (`.gbx`) and update bundles
//! (`.gbu`): build, sign, verify, extract into the content-addressed model store, and rotate the
//! trust root.
//!
//! A package is a POSIX ustar archive, read and written by our own [`tar`] module: member 1 is
//! `govbox-manifest.json` (canonical JSON listing every payload file's size and SHA-256),
//! member 2 is `govbox-manifest.sig` (Ed25519 or SM2 signatures over the exact manifest bytes), and the
//! payload files follow in manifest order. Nothing else may be present.
//!
//! **What it trusts:** the provisioned trust root (`trust/root.json`) that the caller passes in,
//! and nothing in a package until the signatures over its manifest meet that root's threshold
//! for the package's role. Every read is capped, and every name checked, before it is used.
//!
//! **What it guarantees:** [`verify_reader`] reads nothing of the payload before the signatures
//! pass, then reads each byte once, hashing as it streams; any mismatch, missing, extra,
//! duplicated, linked or oddly named member is an error naming the member and the reason.
//! [`ModelStore::import`] extracts only into a staging folder and moves it into the store with
//! one rename after everything matched and was fsynced; on any failure the staging folder is
//! removed and the store and its registry are unchanged.
//!
//! **Format decisions** (the design plan left these open; `docs/ARCHITECTURE.md` lists the formats):
//! - Signatures are lower-case hex, like the signatures of `root.json`; `alg` is `ed25519` or
//!   `sm2` (SM2 over SM3, DER), and must be the algorithm of the pinned key it names.
//! - The manifest must be exactly the canonical JSON of what it parses to (sorted keys, no
//!   whitespace), so one manifest has one byte form and one digest; `format` is checked before
//!   the schema, so a newer format is reported as such.
//! - A package's digest is its manifest's own `hash` (SHA-256, or SM3 when the manifest says
//!   `"hash":"sm3"`) over the manifest bytes ([`Manifest::digest`]); the store keeps it in
//!   `models/sha256-<digest>/` or `models/sm3-<digest>/`, so a `gm` package never has a SHA-256
//!   identity. Update bundles choose their `hash` the same way (`BundleSpec::hash`).
//! - A file entry may also list piece digests ([`ChunkDigests`]: the digest of each piece of a
//!   power-of-two size from 1 MiB to 1 GiB), which the builder writes for files larger than
//!   [`DEFAULT_CHUNK_SIZE`] unless asked not to. Import checks them as well as the whole-file
//!   digest; the check of a stored version ([`ModelStore::reverify`]) checks only the pieces,
//!   in parallel, since they are signed with the rest and prove the same bytes. One whole-file
//!   digest is a sequential stream, so without pieces a large file's check takes as long as
//!   one core hashes, however many cores the box has.
//! - Member sizes of 8 GiB and more use the base-256 size field (GNU tar, libarchive and Go
//!   read it); names up to 255 bytes use the ustar `prefix` field. Only zero padding up to one
//!   10 KiB tar record may follow the end-of-archive marker.
//! - A trust policy binds kinds to roles: `models` signs model packages, `updates` update
//!   bundles, `policy` content-safety policy packages (`.gbp`, kept by a [`ModelStore`] opened
//!   on `STATE/policies` with [`ModelStore::open_policies`]). An expired trust root accepts
//!   nothing.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod build;
pub mod corpus;
mod error;
mod fsutil;
mod manifest;
mod path;
mod registry;
mod root;
mod selftest;
mod signature;
mod staging;
mod store;
mod stream;
pub mod tar;
pub mod update;
mod verify;
mod version;
mod writer;

pub use build::{Built, DEFAULT_CHUNK_SIZE, ModelMeta, PackageBuilder};
pub use error::{PackageError, Result};
pub use manifest::{
    CHUNK_SIZE_RANGE, ChunkDigests, FORMAT, FileEntry, MANIFEST_LIMIT, Manifest, ModelInfo, ModelKind, PackageKind,
    PolicyInfo, SIGNATURES_LIMIT, UpdateInfo, check_name,
};
pub use path::{MANIFEST_NAME, MAX_PATH_LEN, PackagePath, SIGNATURES_NAME};
pub use registry::{ModelRecord, VersionRecord};
pub use root::{accept_new_root, accept_new_root_at, install_root, sign_root};
pub use selftest::{ChatSelfTest, EmbeddingSelfTest, SelfTest, SelfTestMismatch, SelfTestOutput, SelfTestReport};
pub use signature::{ALG_ED25519, ALG_SM2, Policy, Signature, SignatureCheck, SignatureFile, check_signatures};
pub use store::{ActiveModel, ImportOptions, Imported, ModelStore, Recovered, Reverified};
pub use verify::{CHUNK, PackageHead, Verified, file_label, read_head, verify_file, verify_reader};
pub use version::Version;

/// The key and trust-root types this crate's API takes, so that callers need not name the
/// provisioning crate.
pub use govbox_provisioning::{PublicKey, Role, SigningKey, TrustRoot};
