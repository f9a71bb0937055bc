//! `govbox package ...`: build, inspect and verify signed model packages (offline, no daemon).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use govbox_engine::MappedFile;
use govbox_engine::embed::EmbeddingModel;
use govbox_engine::gguf::parse_gguf;
use govbox_engine::rerank::RerankModel;
use govbox_images::{ModelKind, ModelMeta, PackageBuilder, Policy, SelfTest, SelfTestOutput, read_head, verify_file};
use govbox_provisioning::{PublicKey, Role, SigningKey, StatePaths, TrustRoot};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// Texts embedded by an embedding model's self-test (a reranker's scores both against the second).
const SELFTEST_TEXTS: [&str; 2] = ["govbox self-test: the quick brown fox", "政府模型一体机自检"];
/// Embedding values recorded per text.
const SELFTEST_VALUES: usize = 16;
/// Logits recorded at the last position.
const SELFTEST_TOP_K: usize = 5;
/// Prompt length of a chat model's self-test.
const SELFTEST_TOKENS: usize = 8;

/// The kind of model, when detection should be overridden.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum KindArg {
    /// A chat (decoder) model.
    Chat,
    /// A sentence-embedding model.
    Embedding,
    /// A cross-encoder reranker.
    Rerank,
}

/// The trust role a package is checked against.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    /// Model packages.
    Models,
    /// Update bundles.
    Updates,
    /// Content-safety policy packages.
    Policy,
}

/// `govbox package build`.
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// A model folder (HuggingFace or sentence-transformers) or a single .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Package name, `[A-Za-z0-9][A-Za-z0-9._-]*`; clients ask for the model by it.
    #[arg(long)]
    name: String,
    /// Semantic version, e.g. 1.0.0.
    #[arg(long)]
    version: String,
    /// Run the model on the CPU and record its output, for the box to check after import.
    #[arg(long)]
    selftest: bool,
    /// Allowed relative difference of the self-test's values.
    #[arg(long, default_value_t = 1e-3, requires = "selftest")]
    selftest_tolerance: f32,
    /// A signing key (PKCS#8 PEM from `govbox keygen`); repeat for a threshold of keys.
    #[arg(long = "sign", value_name = "KEY", required = true)]
    sign: Vec<PathBuf>,
    /// The hash of the files' digests and of the package's digest, named in the manifest:
    /// `sha256`, or `sm3` (国密).
    #[arg(long, value_name = "sha256|sm3", default_value = "sha256")]
    hash: govbox_provisioning::HashAlgorithm,
    /// Also sign the digest of every piece of this many MiB (a power of two, 1 to 1024) of each
    /// larger file, so that a box checks a large model on all its cores at start; 0 signs
    /// whole-file digests only, for boxes whose govbox predates piece digests (it refuses them).
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    chunk_mib: u64,
    /// The package file to write (atomically).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: PathBuf,
    /// Override the detected kind.
    #[arg(long, value_enum)]
    kind: Option<KindArg>,
    /// Override the detected architecture.
    #[arg(long)]
    architecture: Option<String>,
    /// Override the detected context length.
    #[arg(long)]
    context_length: Option<u64>,
    /// Override the detected weight type.
    #[arg(long)]
    dtype: Option<String>,
    /// CPU threads for the self-test (0: one per core).
    #[arg(long, default_value_t = 0, env = "GOVBOX_THREADS")]
    threads: usize,
}

/// `govbox package verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The package file.
    pub file: PathBuf,
    /// A trust root (root.json) [default: STATE/trust/root.json unless --key is given].
    #[arg(long, value_name = "ROOT_JSON", conflicts_with = "key")]
    pub trust: Option<PathBuf>,
    /// Check against this one public key instead of a trust root (the vendor's own check).
    #[arg(long, value_name = "PUB")]
    pub key: Option<PathBuf>,
    /// The role whose threshold must sign.
    #[arg(long, value_enum, default_value_t = RoleArg::Models)]
    pub role: RoleArg,
}

/// `govbox package ...`.
#[derive(Subcommand, Debug)]
pub enum PackageCommand {
    /// Build and sign a model package (.gbx) from a model folder or .gguf file.
    #[command(disable_version_flag = true)]
    Build(BuildArgs),
    /// Print a package's manifest and signing key ids. Nothing is checked: the output is UNVERIFIED.
    Inspect {
        /// The package file.
        file: PathBuf,
    },
    /// Check a package's signatures against a trust root or key, and every payload file's SHA-256.
    Verify(VerifyArgs),
}

/// Runs one `govbox package` command.
pub fn run(state: Option<&Path>, cmd: PackageCommand) -> Result<()> {
    match cmd {
        PackageCommand::Build(a) => build(a),
        PackageCommand::Inspect { file } => inspect(&file),
        PackageCommand::Verify(a) => verify(state, a),
    }
}

/// A byte progress bar on stderr (hidden when stderr is not a terminal).
pub fn byte_bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style =
        ProgressStyle::with_template("{msg:>9} [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// The error as one line: its message already names the cause, so the source chain that
/// `{:#}` would add only repeats it.
pub fn flat(e: govbox_images::PackageError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

pub(crate) fn update(bar: &ProgressBar) -> impl FnMut(u64, u64) + '_ {
    move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }
}

fn build(a: BuildArgs) -> Result<()> {
    let keys: Vec<SigningKey> = a
        .sign
        .iter()
        .map(|p| SigningKey::load_pem(p).with_context(|| format!("loading {}", p.display())))
        .collect::<Result<_>>()?;
    let mut meta = detect(&a.model)?;
    if let Some(k) = a.kind {
        meta.kind = match k {
            KindArg::Chat => ModelKind::Chat,
            KindArg::Embedding => ModelKind::Embedding,
            KindArg::Rerank => ModelKind::Rerank,
        };
    }
    meta.architecture = a.architecture.unwrap_or(meta.architecture);
    meta.context_length = a.context_length.unwrap_or(meta.context_length);
    meta.dtype = a.dtype.unwrap_or(meta.dtype);
    let kind = meta.kind;
    let chunk = (a.chunk_mib > 0).then(|| a.chunk_mib.saturating_mul(1 << 20));
    let mut b = PackageBuilder::model(&a.name, &a.version, &a.model, meta.clone())
        .map_err(flat)?
        .with_hash(a.hash)
        .with_chunk_size(chunk)
        .map_err(flat)?;
    if a.selftest {
        let test = record_selftest(&a.model, kind, a.threads, a.selftest_tolerance)?;
        b = b.with_selftest(test);
    }
    let start = Instant::now();
    let bar = byte_bar("hashing");
    b.hash(&mut update(&bar)).map_err(flat)?;
    bar.finish_and_clear();
    let bar = byte_bar("writing");
    let key_refs: Vec<&SigningKey> = keys.iter().collect();
    let built = b.write(&a.out, &key_refs, &mut update(&bar)).map_err(flat)?;
    bar.finish_and_clear();
    let m = &built.manifest;
    println!(
        "built        {} ({} {} {}, {} files, {})",
        a.out.display(),
        meta.architecture,
        meta.dtype,
        kind_name(kind),
        m.files.len(),
        mb(m.payload_bytes())
    );
    println!("package      {} {}, digest {}, files {}", m.name, m.version, m.digest_label(&built.digest), m.hash);
    println!("loads        {}", m.model.as_ref().map_or(".", |x| x.load.as_str()));
    if let Some(t) = m.model.as_ref().and_then(|x| x.selftest.as_ref()) {
        println!("self-test    {}", describe_selftest(t));
    }
    for k in &keys {
        println!("signed by    {}", k.public_key().keyid());
    }
    println!("time         {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn kind_name(k: ModelKind) -> &'static str {
    match k {
        ModelKind::Chat => "chat",
        ModelKind::Embedding => "embedding",
        ModelKind::Rerank => "rerank",
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn describe_selftest(t: &SelfTest) -> String {
    match t {
        SelfTest::Chat(c) => {
            format!("{} token ids, top-{} logits, tolerance {}", c.token_ids.len(), c.top_k.len(), c.tolerance)
        }
        SelfTest::Embedding(e) => {
            format!("{} texts, {} values each, tolerance {}", e.texts.len(), SELFTEST_VALUES, e.tolerance)
        }
        SelfTest::Rerank(r) => format!("1 query, {} document logits, tolerance {}", r.logits.len(), r.tolerance),
    }
}

fn read_json(path: &Path) -> Value {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null)
}

/// What the model is, from its `config.json` or GGUF metadata.
fn detect(model: &Path) -> Result<ModelMeta> {
    if model.is_dir() {
        let cfg = read_json(&model.join("config.json"));
        let kind = if RerankModel::is_rerank_dir(model) {
            ModelKind::Rerank
        } else if EmbeddingModel::is_embedding_dir(model) {
            ModelKind::Embedding
        } else {
            ModelKind::Chat
        };
        return Ok(ModelMeta {
            kind,
            architecture: cfg["model_type"].as_str().unwrap_or("unknown").to_string(),
            context_length: cfg["max_position_embeddings"].as_u64().unwrap_or(0),
            dtype: cfg["torch_dtype"].as_str().or(cfg["dtype"].as_str()).unwrap_or("float32").to_string(),
        });
    }
    let file = MappedFile::open(model).with_context(|| format!("opening {}", model.display()))?;
    let g = parse_gguf(file.bytes()).map_err(|e| anyhow::anyhow!("reading {}: {e}", model.display()))?;
    let arch = g.architecture().unwrap_or("unknown").to_string();
    let context_length = g.get_u64(&format!("{arch}.context_length")).unwrap_or(0);
    // The storage type holding most of the bytes names the quantisation.
    let mut by_type: std::collections::BTreeMap<String, usize> = Default::default();
    for t in &g.tensors {
        *by_type.entry(format!("{:?}", t.dtype).to_lowercase()).or_default() += t.n_bytes;
    }
    let dtype = by_type.into_iter().max_by_key(|(_, n)| *n).map_or_else(|| "unknown".into(), |(t, _)| t);
    Ok(ModelMeta { kind: ModelKind::Chat, architecture: arch, context_length, dtype })
}

/// Runs the model on the CPU backend and records its self-test.
fn record_selftest(model: &Path, kind: ModelKind, threads: usize, tolerance: f32) -> Result<SelfTest> {
    let engine = govbox_admin::ops::models::cpu_engine(model, Some(kind), threads)
        .with_context(|| format!("loading {} for the self-test", model.display()))?;
    match kind {
        ModelKind::Chat => {
            let vocab =
                engine.decoder_model().map(|m| m.config().vocab_size).context("the model is not a chat model")?;
            let ids: Vec<u32> = (0..SELFTEST_TOKENS).map(|i| ((i * 7919 + 11) % vocab) as u32).collect();
            let logits = engine.logits(&ids, true)?;
            let last = &logits[logits.len() - vocab..];
            let test = SelfTest::record_chat(ids, last, SELFTEST_TOP_K, tolerance);
            test.compare(&SelfTestOutput::Logits(last))
                .map_err(|e| anyhow::anyhow!("self-test does not reproduce: {e}"))?;
            Ok(test)
        }
        ModelKind::Embedding => {
            let emb = engine.embed(&SELFTEST_TEXTS)?;
            let texts = SELFTEST_TEXTS.iter().map(|s| s.to_string()).collect();
            Ok(SelfTest::record_embedding(texts, &emb.vectors, SELFTEST_VALUES, tolerance))
        }
        ModelKind::Rerank => {
            let (query, docs) = (SELFTEST_TEXTS[1], &SELFTEST_TEXTS[..]);
            let s = engine.rerank(query, docs, true)?;
            let docs = docs.iter().map(|s| s.to_string()).collect();
            Ok(SelfTest::record_rerank(query.to_string(), docs, s.logits, tolerance))
        }
    }
}

fn inspect(file: &Path) -> Result<()> {
    let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let head = read_head(f, &govbox_images::file_label(file)).map_err(flat)?;
    println!("UNVERIFIED: nothing below has been checked against a trust root; use `govbox package verify`.");
    println!("digest       {}", head.manifest.digest_label(&head.digest));
    for s in &head.signatures.signatures {
        println!("signature    {} ({})", s.keyid, s.alg);
    }
    if head.signatures.signatures.is_empty() {
        println!("signature    none");
    }
    println!("{}", serde_json::to_string_pretty(&head.manifest)?);
    Ok(())
}

fn verify(state: Option<&Path>, a: VerifyArgs) -> Result<()> {
    let role = match a.role {
        RoleArg::Models => Role::Models,
        RoleArg::Updates => Role::Updates,
        RoleArg::Policy => Role::Policy,
    };
    let root;
    let key;
    let policy = if let Some(k) = &a.key {
        key = PublicKey::load_pem(k)?;
        Policy::Key(key)
    } else {
        let path = a.trust.unwrap_or_else(|| StatePaths::new(crate::provision::state_dir(state)).root_json());
        root =
            TrustRoot::load(&path).with_context(|| "loading the trust root (give --trust ROOT_JSON or --key PUB)")?;
        Policy::Trust(&root, role)
    };
    let bar = byte_bar("verifying");
    let result = verify_file(&a.file, &policy, &mut update(&bar));
    bar.finish_and_clear();
    let v = result.map_err(flat)?;
    let m = &v.head.manifest;
    let secs = v.secs.max(1e-9);
    println!("OK           package '{} {}' ({}), digest {}", m.name, m.version, m.kind, m.digest_label(&v.head.digest));
    let c = &v.signature_check;
    match policy {
        Policy::Trust(..) => println!(
            "signatures   {} of threshold {} keys of {}: {}",
            c.signers.len(),
            c.threshold,
            c.policy,
            c.signers.join(", ")
        ),
        Policy::Key(_) => println!("signatures   by the given {}", c.policy),
    }
    println!(
        "payload      {} files, {} hashed in {:.2} s ({:.0} MB/s)",
        m.files.len(),
        mb(v.payload_bytes),
        secs,
        v.payload_bytes as f64 / 1e6 / secs
    );
    println!("read         {} bytes (the archive, once)", v.archive_bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    #[test]
    fn detects_folder_and_gguf_models() {
        let m = detect(&fixtures().join("tiny-qwen2")).unwrap();
        assert_eq!((m.kind, m.architecture.as_str()), (ModelKind::Chat, "qwen2"));
        assert!(m.context_length > 0);
        let g = detect(&fixtures().join("gguf/tiny-qwen2-q8_0.gguf")).unwrap();
        assert_eq!((g.architecture.as_str(), g.dtype.as_str()), ("qwen2", "q8_0"));
    }

    #[test]
    fn chat_selftest_reproduces_token_by_token() {
        let model = fixtures().join("tiny-qwen2");
        let test = record_selftest(&model, ModelKind::Chat, 2, 1e-3).unwrap();
        let SelfTest::Chat(c) = &test else { panic!("{test:?}") };
        assert_eq!((c.token_ids.len(), c.top_k.len()), (SELFTEST_TOKENS, SELFTEST_TOP_K));
        // The box may run the prompt through the KV cache one token at a time; that must pass too.
        let engine = govbox_admin::ops::models::cpu_engine(&model, Some(ModelKind::Chat), 2).unwrap();
        let all = engine.logits(&c.token_ids, false).unwrap();
        let vocab = all.len() / c.token_ids.len();
        test.compare(&SelfTestOutput::Logits(&all[all.len() - vocab..])).unwrap();
    }
}
