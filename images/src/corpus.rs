//! The bad-package corpus: one package per way a package can be wrong, each with the error code
//! and message text that verification (or, for the self-test, import) must produce.
//!
//! Tests here and in the daemon import every case and check that it is refused with that code
//! and leaves the store unchanged; the committed copy in `tests/fixtures/packages/` seeds the
//! fuzzers. The cases assume the trust root of [`CorpusKeys::trust_root`]: `models` threshold 2
//! (`models[0]`, `models[1]`), `updates` threshold 1 and `root` threshold 1 (the `updates` key).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use govbox_provisioning::{KeyAlgorithm, PublicKey, Role, SigningKey, ThresholdSpec, TrustRoot, to_canonical_json};
use serde_json::Value;
use time::OffsetDateTime;

use crate::build::{ModelMeta, PackageBuilder};
use crate::error::{PackageError, Result};
use crate::manifest::{MANIFEST_LIMIT, ModelKind};
use crate::path::{MANIFEST_NAME, SIGNATURES_NAME};
use crate::selftest::SelfTest;
use crate::signature::SignatureFile;
use crate::tar::{TarWriter, header_block};

/// The `expect_code` of the good package, which must verify and import.
pub const GOOD: &str = "ok";

/// The keys a corpus is signed with.
#[derive(Debug)]
pub struct CorpusKeys {
    /// The two `models` keys (threshold 2).
    pub models: [SigningKey; 2],
    /// The `updates` key (also the `root` key).
    pub updates: SigningKey,
    /// A key the root does not know.
    pub unknown: SigningKey,
}

impl CorpusKeys {
    /// Fresh Ed25519 keys.
    pub fn generate() -> Result<Self> {
        Self::generate_with(KeyAlgorithm::Ed25519)
    }

    /// Fresh keys of `alg`: the same corpus, cases and messages hold for either algorithm.
    pub fn generate_with(alg: KeyAlgorithm) -> Result<Self> {
        let k = || SigningKey::generate_with(alg);
        Ok(Self { models: [k()?, k()?], updates: k()?, unknown: k()? })
    }

    /// The trust root the cases assume, valid until `expires`.
    pub fn trust_root(&self, expires: OffsetDateTime) -> Result<TrustRoot> {
        let assignments: Vec<(Vec<Role>, PublicKey)> = vec![
            (vec![Role::Models], self.models[0].public_key()),
            (vec![Role::Models], self.models[1].public_key()),
            (vec![Role::Root, Role::Updates], self.updates.public_key()),
        ];
        let t = [ThresholdSpec { role: Role::Models, threshold: 2 }];
        Ok(TrustRoot::build(&assignments, &t, expires)?)
    }
}

/// One generated package and what checking it must report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCase {
    /// The package file.
    pub file: PathBuf,
    /// The case, e.g. `payload_byte_flipped`; also the file's stem.
    pub name: &'static str,
    /// The [`PackageError::code`] expected; [`GOOD`] for the good package. `selftest_mismatch`
    /// marks the package that verifies but whose self-test fails when the model is run.
    pub expect_code: &'static str,
    /// Text the error message must contain (it names the member).
    pub expect_in_message: String,
}

/// One member of a hand-assembled archive.
enum Item<'a> {
    File(&'a str, &'a [u8]),
    Raw(Box<[u8; 512]>, &'a [u8]),
}

fn assemble(manifest: &[u8], sig: &[u8], items: &[Item<'_>]) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| PackageError::io("assembling corpus package", "memory", e);
    let mut w = TarWriter::new(Vec::new());
    w.append(MANIFEST_NAME, manifest).map_err(io)?;
    w.append(SIGNATURES_NAME, sig).map_err(io)?;
    for item in items {
        match item {
            Item::File(name, data) => w.append(name, data).map_err(io)?,
            Item::Raw(h, data) => {
                w.raw_header(h, data.len() as u64).map_err(io)?;
                w.write_data(data).map_err(io)?;
            }
        }
    }
    w.finish().map_err(io)
}

fn raw(name: &[u8], size: u64, flag: u8) -> Result<[u8; 512]> {
    header_block(name, size, flag).map_err(|reason| PackageError::Build { package: "corpus".into(), reason })
}

fn meta_of(model_dir: &Path) -> ModelMeta {
    let cfg: Value = fs::read(model_dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    ModelMeta {
        kind: ModelKind::Chat,
        architecture: cfg["model_type"].as_str().unwrap_or("synthetic").to_string(),
        context_length: cfg["max_position_embeddings"].as_u64().unwrap_or(128),
        dtype: cfg["torch_dtype"].as_str().unwrap_or("f32").to_string(),
    }
}

/// Writes the good package and every bad case into `dir` from the model folder `model_dir`
/// (which needs at least two files), and returns them, the good one first.
pub fn write_corpus(dir: &Path, keys: &CorpusKeys, model_dir: &Path) -> Result<Vec<BadCase>> {
    fs::create_dir_all(dir).map_err(|e| PackageError::io("creating", dir, e))?;
    let created = OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut b = PackageBuilder::model("tiny", "1.0.0", model_dir, meta_of(model_dir))?.with_created(created);
    b.hash(&mut |_, _| {})?;
    let manifest = b.manifest()?;
    let m_bytes = manifest.to_canonical_bytes()?;
    let [k0, k1] = &keys.models;
    let sign = |bytes: &[u8], ks: &[&SigningKey]| SignatureFile::sign(bytes, ks).to_bytes();
    let good_sig = sign(&m_bytes, &[k0, k1]);
    let mut files = Vec::new();
    for (p, src, _) in b.files() {
        files.push((p.to_string(), fs::read(src).map_err(|e| PackageError::io("reading", src, e))?));
    }
    if files.len() < 2 {
        return Err(PackageError::Build { package: manifest.label(), reason: "the corpus needs 2+ files".into() });
    }
    let items: Vec<Item<'_>> = files.iter().map(|(n, d)| Item::File(n, d)).collect();
    let good = assemble(&m_bytes, &good_sig, &items)?;
    let (first, first_data) = (&files[0].0, &files[0].1);
    let last = &files[files.len() - 1].0;
    let sigm = format!("member '{SIGNATURES_NAME}'");
    let mut out: Vec<(&'static str, &'static str, String, Vec<u8>)> = Vec::new();

    out.push(("good", GOOD, String::new(), good.clone()));
    out.push((
        "unsigned",
        "unsigned",
        format!("{sigm}: the package is unsigned"),
        assemble(&m_bytes, &sign(&m_bytes, &[]), &items)?,
    ));
    out.push((
        "unknown_key",
        "below_threshold",
        format!("unknown keys: {}", keys.unknown.public_key().keyid()),
        assemble(&m_bytes, &sign(&m_bytes, &[&keys.unknown]), &items)?,
    ));
    out.push((
        "below_threshold",
        "below_threshold",
        format!("{sigm}: signed by 1 of threshold 2 keys of role 'models'"),
        assemble(&m_bytes, &sign(&m_bytes, &[k0]), &items)?,
    ));
    out.push((
        "updates_role_instead_of_models",
        "wrong_role",
        format!("{sigm}: signed by 0 of threshold 2 keys of role 'models'; keys of other roles do not count"),
        assemble(&m_bytes, &sign(&m_bytes, &[&keys.updates]), &items)?,
    ));
    let mut flipped = first_data.clone();
    if let Some(byte) = flipped.last_mut() {
        *byte ^= 0x01;
    }
    let mut flip_items: Vec<Item<'_>> = files.iter().map(|(n, d)| Item::File(n, d)).collect();
    flip_items[0] = Item::File(first, &flipped);
    out.push((
        "payload_byte_flipped",
        "sha256_mismatch",
        format!("member '{first}': sha256 mismatch"),
        assemble(&m_bytes, &good_sig, &flip_items)?,
    ));
    // One bit of the name's first byte: still canonical JSON and a valid name, so the failure
    // is the signatures', as it would be for any change an attacker makes.
    let mut m_flip = m_bytes.clone();
    let at = find(&m_bytes, b"\"name\":\"").map(|i| i + 8).unwrap_or(0);
    m_flip[at] ^= 0x01;
    out.push((
        "manifest_byte_flipped",
        "bad_signature",
        format!("{sigm}: signed by 0 of threshold 2"),
        assemble(&m_flip, &good_sig, &items)?,
    ));
    let mut extra: Vec<Item<'_>> = files.iter().map(|(n, d)| Item::File(n, d)).collect();
    extra.push(Item::File("extra.bin", b"not listed"));
    out.push((
        "unlisted_member",
        "unexpected_member",
        "member 'extra.bin': not listed".into(),
        assemble(&m_bytes, &good_sig, &extra)?,
    ));
    let missing: Vec<Item<'_>> = files[..files.len() - 1].iter().map(|(n, d)| Item::File(n, d)).collect();
    out.push((
        "missing_member",
        "missing_member",
        format!("member '{last}': listed in the manifest but missing"),
        assemble(&m_bytes, &good_sig, &missing)?,
    ));
    let mut dup: Vec<Item<'_>> = vec![Item::File(first, first_data)];
    dup.extend(files.iter().map(|(n, d)| Item::File(n, d)));
    out.push((
        "duplicate_member",
        "duplicate_member",
        format!("member '{first}': appears more than once"),
        assemble(&m_bytes, &good_sig, &dup)?,
    ));
    for (name, member, flag, code, why) in [
        ("dotdot_path", &b"../evil.bin"[..], b'0', "invalid_path", "member '../evil.bin': `..` components"),
        ("absolute_path", b"/etc/evil.bin", b'0', "invalid_path", "member '/etc/evil.bin': absolute paths"),
        ("symlink", b"link.bin", b'2', "unsupported_member", "member 'link.bin': symbolic link members"),
        ("hardlink", b"hard.bin", b'1', "unsupported_member", "member 'hard.bin': hard link members"),
        ("device", b"dev.bin", b'3', "unsupported_member", "member 'dev.bin': character device members"),
        (
            "invalid_utf8_name",
            b"bad\xff.bin",
            b'0',
            "invalid_path",
            "member 'bad\u{FFFD}.bin': the name is not valid UTF-8",
        ),
    ] {
        let mut its = vec![Item::Raw(Box::new(raw(member, 0, flag)?), b"")];
        its.extend(files.iter().map(|(n, d)| Item::File(n, d)));
        out.push((name, code, why.to_string(), assemble(&m_bytes, &good_sig, &its)?));
    }
    // The manifest header claims more than the cap, and the bytes are really there.
    let big = vec![b' '; usize::try_from(MANIFEST_LIMIT).unwrap_or(0) + 1];
    let mut w = TarWriter::new(Vec::new());
    let io = |e: std::io::Error| PackageError::io("assembling corpus package", "memory", e);
    w.raw_header(&raw(MANIFEST_NAME.as_bytes(), big.len() as u64, b'0')?, big.len() as u64).map_err(io)?;
    w.write_data(&big).map_err(io)?;
    out.push((
        "manifest_over_1mib",
        "too_large",
        format!("member '{MANIFEST_NAME}': 1048577 bytes"),
        w.finish().map_err(io)?,
    ));
    let cut = 3 * 512 + m_bytes.len().div_ceil(512) * 512 + good_sig.len().div_ceil(512) * 512 + first_data.len() / 2;
    out.push((
        "truncated",
        "truncated",
        format!("member '{first}': the archive is truncated"),
        good[..cut.min(good.len() - 1)].to_vec(),
    ));
    let mut longer = first_data.clone();
    longer.push(0);
    let mut size_items: Vec<Item<'_>> = files.iter().map(|(n, d)| Item::File(n, d)).collect();
    size_items[0] = Item::File(first, &longer);
    out.push((
        "size_differs",
        "size_mismatch",
        format!("member '{first}': size mismatch"),
        assemble(&m_bytes, &good_sig, &size_items)?,
    ));
    let mut v: Value = serde_json::from_slice(&m_bytes)
        .map_err(|e| PackageError::Build { package: "corpus".into(), reason: e.to_string() })?;
    v["format"] = "govbox/2".into();
    let f2 = to_canonical_json(&v).into_bytes();
    out.push((
        "unknown_format",
        "unknown_format",
        format!("member '{MANIFEST_NAME}': unknown format 'govbox/2'"),
        assemble(&f2, &sign(&f2, &[k0, k1]), &items)?,
    ));
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"trailing garbage");
    out.push(("trailing_garbage", "trailing_data", "member 'end of archive': data after the end".into(), trailing));
    v["format"] = crate::manifest::FORMAT.into();
    v["kind"] = "update".into();
    if let Value::Object(o) = &mut v {
        o.remove("model");
        o.insert("update".into(), serde_json::json!({"security_version": 1}));
    }
    let upd = to_canonical_json(&v).into_bytes();
    out.push((
        "update_as_model",
        "wrong_kind",
        format!("member '{MANIFEST_NAME}': this is a 'update' package, expected 'model'"),
        assemble(&upd, &sign(&upd, &[k0, k1]), &items)?,
    ));
    // Container-valid; the recorded logits are impossible, so running the model must fail it.
    let wrong = SelfTest::Chat(crate::selftest::ChatSelfTest {
        token_ids: vec![1, 2, 3, 4, 5, 6, 7, 8],
        top_k: vec![(1, 1.0e4), (2, -1.0e4)],
        tolerance: 1e-3,
    });
    // Its own version, so that it can be imported beside the good package.
    let mut sb = PackageBuilder::model("tiny", "1.1.0", model_dir, meta_of(model_dir))?.with_created(created);
    sb.hash(&mut |_, _| {})?;
    let st = sb.with_selftest(wrong).manifest()?.to_canonical_bytes()?;
    out.push((
        "selftest_fails",
        "selftest_mismatch",
        "self-test failed".into(),
        assemble(&st, &sign(&st, &[k0, k1]), &items)?,
    ));

    let mut cases = Vec::with_capacity(out.len());
    for (name, expect_code, expect_in_message, bytes) in out {
        let file = dir.join(format!("{name}.gbx"));
        let mut f = fs::File::create(&file).map_err(|e| PackageError::io("writing", &file, e))?;
        f.write_all(&bytes).map_err(|e| PackageError::io("writing", &file, e))?;
        cases.push(BadCase { file, name, expect_code, expect_in_message });
    }
    Ok(cases)
}

/// Writes `mamba-1.0.0.gbx` into `dir`: a package that verifies (signed by both `models` keys)
/// but holds a model govbox does not implement (`model_dir`'s files with `config.json` naming
/// `MambaForCausalLM`), so that importing it must fail when the model is loaded. Not part of
/// [`write_corpus`]: verification alone accepts it.
pub fn write_unsupported_architecture(dir: &Path, keys: &CorpusKeys, model_dir: &Path) -> Result<PathBuf> {
    let model = dir.join("mamba");
    fs::create_dir_all(&model).map_err(|e| PackageError::io("creating", &model, e))?;
    for e in fs::read_dir(model_dir).map_err(|e| PackageError::io("reading", model_dir, e))?.flatten() {
        let to = model.join(e.file_name());
        fs::copy(e.path(), &to).map_err(|err| PackageError::io("copying", &to, err))?;
    }
    let cfg_path = model.join("config.json");
    let mut cfg: Value = fs::read(&cfg_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| Value::Object(Default::default()));
    cfg["architectures"] = serde_json::json!(["MambaForCausalLM"]);
    cfg["model_type"] = serde_json::json!("mamba");
    fs::write(&cfg_path, cfg.to_string()).map_err(|e| PackageError::io("writing", &cfg_path, e))?;
    let meta = ModelMeta { architecture: "mamba".into(), ..meta_of(model_dir) };
    let out = dir.join("mamba-1.0.0.gbx");
    PackageBuilder::model("mamba", "1.0.0", &model, meta)?.write(
        &out,
        &[&keys.models[0], &keys.models[1]],
        &mut |_, _| {},
    )?;
    Ok(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
