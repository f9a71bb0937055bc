//! Property: a sentence-transformers folder that is incomplete or inconsistent is refused with an
//! error that names the file and says what is wrong, never loaded half-right.
//!
//! Each case is a small folder made in the temp directory. The configuration is checked before
//! any weights are read, so most cases need only JSON files; the control case links the real
//! MiniLM weights to show that the same layout, when correct, loads.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use govbox_drivers::Backend;
use govbox_drivers::cpu::CpuBackend;
use govbox_engine::embed::EmbeddingModel;

const BERT_CONFIG: &str = r#"{
  "architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 384, "intermediate_size": 1536,
  "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
  "num_hidden_layers": 6, "type_vocab_size": 2, "vocab_size": 30522
}"#;
const MODULES: &str = r#"[
  {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
  {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
  {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
]"#;
const MEAN_POOLING: &str = r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": false,
  "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false}"#;
const SBERT_CONFIG: &str = r#"{"max_seq_length": 256, "do_lower_case": false}"#;

/// A fresh, empty folder for one case, removed when dropped.
struct CaseDir(PathBuf);

impl CaseDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("govbox-embed-dir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn write(&self, rel: &str, text: &str) -> &Self {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }

    /// The usual MiniLM layout's JSON files, without weights or tokenizer.
    fn standard(name: &str) -> Self {
        let d = Self::new(name);
        d.write("config.json", BERT_CONFIG)
            .write("modules.json", MODULES)
            .write("1_Pooling/config.json", MEAN_POOLING)
            .write("sentence_bert_config.json", SBERT_CONFIG);
        d
    }

    fn load_err(&self) -> String {
        let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new(1).unwrap());
        match EmbeddingModel::load(&self.0, backend) {
            Ok(_) => panic!("{} loaded, but should have been refused", self.0.display()),
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for CaseDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn assert_has(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
}

#[test]
fn a_folder_without_modules_json_is_refused() {
    let d = CaseDir::new("no-modules");
    d.write("config.json", BERT_CONFIG);
    assert!(EmbeddingModel::is_embedding_dir(&d.0), "a BertModel folder is claimed, so the error is ours");
    let e = d.load_err();
    assert_has(&e, &["modules.json", "not found", "sentence-transformers"]);
}

#[test]
fn a_missing_pooling_config_is_refused() {
    let d = CaseDir::standard("no-pooling");
    std::fs::remove_dir_all(d.0.join("1_Pooling")).unwrap();
    let e = d.load_err();
    assert_has(&e, &["1_Pooling/config.json", "not found", "Pooling"]);
}

#[test]
fn an_unknown_pooling_mode_is_named() {
    let d = CaseDir::standard("unknown-mode");
    d.write("1_Pooling/config.json", r#"{"word_embedding_dimension": 384, "pooling_mode": "harmonic"}"#);
    assert_has(&d.load_err(), &["1_Pooling/config.json", "pooling mode 'harmonic'", "supported: mean, cls, max"]);
    d.write(
        "1_Pooling/config.json",
        r#"{"word_embedding_dimension": 384, "pooling_mode_mean_tokens": false, "pooling_mode_harmonic_tokens": true}"#,
    );
    assert_has(&d.load_err(), &["1_Pooling/config.json", "'harmonic_tokens'"]);
    d.write("1_Pooling/config.json", r#"{"word_embedding_dimension": 384, "pooling_mode_mean_tokens": false}"#);
    assert_has(&d.load_err(), &["1_Pooling/config.json", "no pooling mode is enabled"]);
}

#[test]
fn a_pooling_dimension_that_differs_from_the_encoder_is_refused() {
    let d = CaseDir::standard("dim-mismatch");
    d.write("1_Pooling/config.json", &MEAN_POOLING.replace("384", "768"));
    assert_has(&d.load_err(), &["1_Pooling/config.json", "word_embedding_dimension 768", "hidden_size 384"]);
}

#[test]
fn unsupported_pipelines_and_escaping_paths_are_refused() {
    let d = CaseDir::standard("pipeline");
    d.write("modules.json", &MODULES.replace("Normalize", "Dense"));
    assert_has(&d.load_err(), &["modules.json", "sentence_transformers.models.Dense", "not supported"]);
    d.write("modules.json", &MODULES.replace("1_Pooling", "../1_Pooling"));
    assert_has(&d.load_err(), &["modules.json", "'../1_Pooling'", "not a plain relative folder"]);
    d.write("modules.json", "{\"not\": \"a list\"}");
    assert_has(&d.load_err(), &["modules.json", "not a list of modules"]);
}

#[test]
fn a_truncation_length_beyond_the_encoder_is_refused() {
    let d = CaseDir::standard("too-long");
    d.write("sentence_bert_config.json", r#"{"max_seq_length": 4096}"#);
    assert_has(&d.load_err(), &["sentence_bert_config.json", "max_seq_length 4096", "512"]);
}

/// Control: the same layout, with the real weights and tokenizer linked in, loads, even though
/// `modules.json` names a `2_Normalize` folder that does not exist. So each refusal above is
/// caused by its one defect.
#[test]
fn control_the_standard_layout_loads() {
    let dir = std::env::var_os("GOVBOX_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/models/minilm")));
    if !dir.join("model.safetensors").is_file() {
        if std::env::var("GOVBOX_SKIP_REAL_MODELS").as_deref() == Ok("1") {
            println!("SKIPPED: real MiniLM model not found at {} (GOVBOX_SKIP_REAL_MODELS=1)", dir.display());
            return;
        }
        panic!("real MiniLM model not found at {}: run scripts/fetch-models.sh minilm", dir.display());
    }
    let d = CaseDir::standard("control");
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"] {
        link(&dir.join(f), &d.0.join(f));
    }
    assert!(!d.0.join("2_Normalize").exists());
    let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new(1).unwrap());
    let m = EmbeddingModel::load(&d.0, backend).unwrap_or_else(|e| panic!("control folder refused: {e}"));
    let v = m.embed(&["hello"]).unwrap();
    let norm: f32 = v.vectors[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "Normalize applied: norm {norm}");
}

fn link(from: &Path, to: &Path) {
    if !from.exists() {
        return; // optional tokenizer side files
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink(from.canonicalize().unwrap(), to).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(from, to).map(|_| ()).unwrap();
}
