//! Streaming verification of a package, one function per step, each quoting the rule it
//! enforces (ARCHITECTURE.md, "Signed container").
//!
//! The first two members are read with [`BlockReader`], which reads nothing past them, so a
//! package whose signatures fail has had no payload byte read. The payload is then read once,
//! in large chunks on a reader thread, and hashed as it streams.

use std::fs::File;
use std::io::{BufRead, Read};
use std::path::Path;
use std::time::Instant;

use govbox_provisioning::{HashAlgorithm, Role};
use time::OffsetDateTime;

use crate::error::{PackageError, Result};
use crate::manifest::{FileEntry, MANIFEST_LIMIT, Manifest, PackageKind, SIGNATURES_LIMIT};
use crate::path::{MANIFEST_NAME, SIGNATURES_NAME};
use crate::signature::{Policy, SignatureCheck, SignatureFile, check_signatures, hex};
use crate::stream::{BlockReader, Prefetch};
use crate::tar::{MemberName, TarError, TarReader};

/// Payload read size: large reads keep system-call and channel overhead negligible.
pub const CHUNK: usize = 4 << 20;

/// Where verified member bytes go (nowhere, or a staging folder).
pub(crate) trait MemberSink {
    /// The manifest and signatures, once the signatures are accepted.
    fn head(&mut self, manifest: &Manifest, manifest_bytes: &[u8], sig_bytes: &[u8]) -> Result<()>;
    /// A payload member starts.
    fn begin(&mut self, entry: &FileEntry) -> Result<()>;
    /// Its next bytes (not yet known to be good).
    fn data(&mut self, chunk: &[u8]) -> Result<()>;
    /// Its last byte was written and its digest matched.
    fn end(&mut self, entry: &FileEntry) -> Result<()>;
}

/// Discards everything: plain verification.
pub(crate) struct NoSink;

impl MemberSink for NoSink {
    fn head(&mut self, _: &Manifest, _: &[u8], _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn begin(&mut self, _: &FileEntry) -> Result<()> {
        Ok(())
    }
    fn data(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn end(&mut self, _: &FileEntry) -> Result<()> {
        Ok(())
    }
}

/// The first two members, unverified.
#[derive(Debug, Clone)]
pub struct PackageHead {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// Its exact bytes.
    pub manifest_bytes: Vec<u8>,
    /// The parsed signature member.
    pub signatures: SignatureFile,
    /// Its exact bytes.
    pub signature_bytes: Vec<u8>,
    /// The package's digest: lower-case hex of the manifest's own `hash` (SHA-256 or SM3) over
    /// the manifest bytes ([`Manifest::digest`]).
    pub digest: String,
}

/// A package that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest, signatures and digest.
    pub head: PackageHead,
    /// The signature check that passed.
    pub signature_check: SignatureCheck,
    /// Payload bytes hashed.
    pub payload_bytes: u64,
    /// Archive bytes read, padding included.
    pub archive_bytes: u64,
    /// Seconds spent.
    pub secs: f64,
}

/// Verifies the package file at `path` against `policy`, calling `progress(done, total)` with
/// payload bytes as they are hashed.
pub fn verify_file(path: &Path, policy: &Policy<'_>, progress: &mut dyn FnMut(u64, u64)) -> Result<Verified> {
    let file = File::open(path).map_err(|e| PackageError::io("opening package", path, e))?;
    verify_reader(file, &file_label(path), policy, progress)
}

/// Verifies a package read from `reader`; `label` names it in errors until its manifest is read.
pub fn verify_reader<R: Read + Send>(
    reader: R,
    label: &str,
    policy: &Policy<'_>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Verified> {
    verify_into(reader, label, policy, &mut NoSink, progress)
}

/// Reads only the first two members, checking nothing but their form (`govbox package inspect`).
pub fn read_head<R: Read>(reader: R, label: &str) -> Result<PackageHead> {
    let mut tar = TarReader::new(BlockReader::new(reader));
    read_head_members(&mut tar, label)
}

/// How a file is named in errors before its manifest is read.
pub fn file_label(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

pub(crate) fn verify_into<R: Read + Send>(
    mut reader: R,
    label: &str,
    policy: &Policy<'_>,
    sink: &mut dyn MemberSink,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Verified> {
    let start = Instant::now();
    let mut tar = TarReader::new(BlockReader::new(&mut reader));
    let head = read_head_members(&mut tar, label)?;
    let package = head.manifest.label();
    let signature_check = check_trust(&head, policy, &package)?;
    check_kind(&head.manifest, policy, &package)?;
    sink.head(&head.manifest, &head.manifest_bytes, &head.signature_bytes)?;

    let offset = tar.offset();
    // Every read so far ended on a block boundary, so the block reader holds nothing unread.
    let Some(_) = tar.into_inner().into_inner() else {
        return Err(PackageError::MalformedTar {
            package,
            at: format!("byte {offset}"),
            reason: "internal: the header reader stopped inside a block".into(),
        });
    };
    let (payload_bytes, archive_bytes) = std::thread::scope(|scope| {
        let mut tar = TarReader::resume(Prefetch::spawn(scope, &mut reader, CHUNK), offset);
        let total = head.manifest.payload_bytes();
        let mut done = 0u64;
        progress(0, total);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..head.manifest.files.len() {
            read_payload_member(&mut tar, &head.manifest, i, &mut seen, &package, sink, &mut |n| {
                done += n;
                progress(done, total);
            })?;
        }
        read_end(&mut tar, &head.manifest, &package)?;
        Ok::<_, PackageError>((done, tar.offset()))
    })?;
    Ok(Verified { head, signature_check, payload_bytes, archive_bytes, secs: start.elapsed().as_secs_f64() })
}

fn tar_err(package: &str) -> impl Fn(TarError) -> PackageError + '_ {
    move |e| e.into_package(package)
}

impl From<TarError> for PackageError {
    fn from(e: TarError) -> Self {
        e.into_package("?")
    }
}

/// Step 1 and 2 together, as `inspect` needs them.
fn read_head_members<R: BufRead>(tar: &mut TarReader<R>, label: &str) -> Result<PackageHead> {
    let manifest_bytes = read_manifest_bytes(tar, label)?;
    let manifest = Manifest::parse(&manifest_bytes, label)?;
    let package = manifest.label();
    let (signatures, signature_bytes) = read_signatures(tar, &package)?;
    let digest = manifest.digest(&manifest_bytes);
    Ok(PackageHead { manifest, manifest_bytes, signatures, signature_bytes, digest })
}

/// Step 1. "Member 1 is `govbox-manifest.json`" — at most [`MANIFEST_LIMIT`] bytes, refused on
/// its header's size before a byte of it is read.
fn read_manifest_bytes<R: BufRead>(tar: &mut TarReader<R>, label: &str) -> Result<Vec<u8>> {
    let member = tar.next_member().map_err(tar_err(label))?;
    let missing = |found: String| PackageError::MissingMember {
        package: label.to_string(),
        member: MANIFEST_NAME.into(),
        found: format!("member 1 is {found}"),
    };
    match member {
        Some(m) if m.name == MemberName::Manifest => {
            if m.size > MANIFEST_LIMIT {
                return Err(PackageError::TooLarge {
                    package: label.to_string(),
                    member: MANIFEST_NAME.into(),
                    size: m.size,
                    limit: MANIFEST_LIMIT,
                });
            }
            tar.read_to_vec().map_err(tar_err(label))
        }
        Some(m) => Err(missing(format!("'{}'", m.name.as_str()))),
        None => Err(missing("the end of the archive".into())),
    }
}

/// Step 2. "Member 2 is `govbox-manifest.sig`: `{signatures: [{keyid, alg: "ed25519", sig}]}`"
/// — at most [`SIGNATURES_LIMIT`] bytes.
fn read_signatures<R: BufRead>(tar: &mut TarReader<R>, package: &str) -> Result<(SignatureFile, Vec<u8>)> {
    let missing = |found: String| PackageError::MissingMember {
        package: package.to_string(),
        member: SIGNATURES_NAME.into(),
        found: format!("member 2 is {found}"),
    };
    match tar.next_member().map_err(tar_err(package))? {
        Some(m) if m.name == MemberName::Signatures => {
            if m.size > SIGNATURES_LIMIT {
                return Err(PackageError::TooLarge {
                    package: package.to_string(),
                    member: SIGNATURES_NAME.into(),
                    size: m.size,
                    limit: SIGNATURES_LIMIT,
                });
            }
            let bytes = tar.read_to_vec().map_err(tar_err(package))?;
            Ok((SignatureFile::parse(&bytes, package)?, bytes))
        }
        Some(m) => Err(missing(format!("'{}'", m.name.as_str()))),
        None => Err(missing("the end of the archive".into())),
    }
}

/// Step 3. "The signatures cover the exact bytes of member 1. The manifest and its signatures
/// are checked first, against the trust policy's threshold for that kind" — before any payload
/// byte is read.
fn check_trust(head: &PackageHead, policy: &Policy<'_>, package: &str) -> Result<SignatureCheck> {
    check_signatures(&head.manifest_bytes, &head.signatures, policy, OffsetDateTime::now_utc(), package)
}

/// Step 3b. A role signs one kind: `models` signs model packages, `updates` update bundles,
/// `policy` content-safety policy packages.
fn check_kind(manifest: &Manifest, policy: &Policy<'_>, package: &str) -> Result<()> {
    let expected = match policy {
        Policy::Trust(_, Role::Models) => PackageKind::Model,
        Policy::Trust(_, Role::Updates) => PackageKind::Update,
        Policy::Trust(_, Role::Policy) => PackageKind::Policy,
        Policy::Trust(_, _) | Policy::Key(_) => return Ok(()),
    };
    if manifest.kind == expected {
        return Ok(());
    }
    Err(PackageError::WrongKind { package: package.to_string(), expected, found: manifest.kind })
}

/// Step 4. "The payload members follow, in manifest order. Each payload member is hashed while
/// it is extracted": its header size must equal the manifest's, and the SHA-256 of its bytes,
/// computed as they stream, must equal the manifest's.
fn read_payload_member<R: BufRead>(
    tar: &mut TarReader<R>,
    manifest: &Manifest,
    index: usize,
    seen: &mut std::collections::BTreeSet<String>,
    package: &str,
    sink: &mut dyn MemberSink,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let entry = &manifest.files[index];
    let member = tar.next_member().map_err(tar_err(package))?;
    let found = match member {
        None => {
            return Err(PackageError::MissingMember {
                package: package.to_string(),
                member: entry.path.to_string(),
                found: "the archive ends".into(),
            });
        }
        Some(m) => m,
    };
    if found.name != MemberName::Payload(entry.path.clone()) {
        return Err(misplaced(manifest, found.name.as_str(), Some(entry), seen, package));
    }
    seen.insert(entry.path.to_string());
    if found.size != entry.size {
        return Err(PackageError::SizeMismatch {
            package: package.to_string(),
            member: entry.path.to_string(),
            expected: entry.size,
            actual: found.size,
        });
    }
    sink.begin(entry)?;
    let mut ctx = manifest.hash.hasher();
    // Piece digests, when the manifest has them, are checked as well: a package whose piece
    // digests disagree with its whole-file digests would verify differently at start. They are
    // hashed on a thread of their own, from copies of what streams past, so that import does
    // not take twice as long.
    let (read, pieces) = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let worker = match &entry.chunks {
            Some(c) => {
                let (hash, size) = (manifest.hash, c.size);
                Some(s.spawn(move || piece_digests(hash, size, rx)))
            }
            None => {
                drop(rx);
                None
            }
        };
        let read = tar.read_data(|chunk| {
            ctx.update(chunk);
            if worker.is_some() {
                // A worker that is gone shows as missing digests below.
                let _ = tx.send(chunk.to_vec());
            }
            sink.data(chunk)?;
            progress(chunk.len() as u64);
            Ok::<(), PackageError>(())
        });
        drop(tx);
        (read, worker.map(|w| w.join().unwrap_or_default()))
    });
    read.map_err(|e| match e {
        PackageError::Truncated { member, .. } => PackageError::Truncated { package: package.to_string(), member },
        PackageError::Read { source, .. } => PackageError::Read { package: package.to_string(), source },
        PackageError::MalformedTar { at, reason, .. } => {
            PackageError::MalformedTar { package: package.to_string(), at, reason }
        }
        other => other,
    })?;
    let actual = hex(&ctx.finish());
    if actual != entry.sha256 {
        return Err(PackageError::DigestMismatch {
            package: package.to_string(),
            member: entry.path.to_string(),
            expected: entry.sha256.clone(),
            actual,
        });
    }
    if let (Some(c), Some(got)) = (&entry.chunks, pieces) {
        for (i, want) in c.digests.iter().enumerate() {
            let actual = got.get(i).cloned().unwrap_or_default();
            if &actual != want {
                return Err(PackageError::DigestMismatch {
                    package: package.to_string(),
                    member: entry.piece_label(i),
                    expected: want.clone(),
                    actual,
                });
            }
        }
    }
    sink.end(entry)
}

/// The digests of the bytes received on `rx`, cut into pieces of `size` bytes (the last one
/// shorter).
fn piece_digests(hash: HashAlgorithm, size: u64, rx: std::sync::mpsc::Receiver<Vec<u8>>) -> Vec<String> {
    let mut out = Vec::new();
    let mut ctx = hash.hasher();
    let mut filled = 0u64;
    for buf in rx {
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let take = usize::try_from(size - filled).map_or(rest.len(), |left| left.min(rest.len()));
            ctx.update(&rest[..take]);
            filled += take as u64;
            rest = &rest[take..];
            if filled == size {
                out.push(hex(&std::mem::replace(&mut ctx, hash.hasher()).finish()));
                filled = 0;
            }
        }
    }
    if filled > 0 {
        out.push(hex(&ctx.finish()));
    }
    out
}

/// Step 5. "Nothing else may be present: no duplicates, and no member that the manifest does
/// not list" — and nothing but padding after the end-of-archive marker.
fn read_end<R: BufRead>(tar: &mut TarReader<R>, manifest: &Manifest, package: &str) -> Result<()> {
    match tar.next_member().map_err(tar_err(package))? {
        None => Ok(()),
        Some(m) => {
            let seen = manifest.files.iter().map(|f| f.path.to_string()).collect();
            Err(misplaced(manifest, m.name.as_str(), None, &seen, package))
        }
    }
}

/// The error for member `name` found where `expected` (or the end) should be.
fn misplaced(
    manifest: &Manifest,
    name: &str,
    expected: Option<&FileEntry>,
    seen: &std::collections::BTreeSet<String>,
    package: &str,
) -> PackageError {
    let package = package.to_string();
    if seen.contains(name) || name == MANIFEST_NAME || name == SIGNATURES_NAME {
        return PackageError::DuplicateMember { package, member: name.to_string() };
    }
    match expected {
        Some(e) if manifest.files.iter().any(|f| f.path.as_str() == name) => PackageError::MissingMember {
            package,
            member: e.path.to_string(),
            found: format!("'{name}' comes in its place"),
        },
        _ => PackageError::UnexpectedMember { package, member: name.to_string() },
    }
}
