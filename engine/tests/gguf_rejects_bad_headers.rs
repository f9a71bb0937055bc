//! The GGUF parser refuses malformed headers with a message that says what is wrong, and reads
//! the real fixture files (llama.cpp conversions) with the tensor types llama.cpp wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use govbox_drivers::DType;
use govbox_engine::MappedFile;
use govbox_engine::gguf::writer::{GgufWriter, f32_bytes};
use govbox_engine::gguf::{GgufError, GgufFile, GgufValue, parse_gguf};

fn err(bytes: &[u8]) -> String {
    match parse_gguf(bytes) {
        Ok(_) => panic!("malformed file parsed"),
        Err(e) => e.to_string(),
    }
}

fn assert_says(bytes: &[u8], needles: &[&str]) {
    let e = err(bytes);
    for n in needles {
        assert!(e.contains(n), "expected {n:?} in error {e:?}");
    }
}

fn valid() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", GgufValue::String("llama".into())).tensor(
        "token_embd.weight",
        &[4, 2],
        0,
        f32_bytes(&[0.5; 8]),
    );
    w
}

#[test]
fn the_valid_baseline_parses() {
    let g = parse_gguf(&valid().to_bytes()).unwrap();
    assert_eq!(g.tensors.len(), 1);
    assert_eq!(g.tensor("token_embd.weight").unwrap().shape(), vec![2, 4]);
}

#[test]
fn bad_magic() {
    let mut b = valid().to_bytes();
    b[..4].copy_from_slice(b"GGML");
    assert_says(&b, &["bad magic", "GGML"]);
    assert_says(b"", &["bad magic"]);
}

#[test]
fn versions_1_and_2() {
    for v in [1, 2] {
        let mut w = valid();
        w.version(v);
        assert_says(&w.to_bytes(), &[&format!("GGUF version {v} is not supported"), "only version 3"]);
    }
}

#[test]
fn absurd_tensor_count() {
    let mut w = valid();
    w.declare_counts(Some(1 << 40), None);
    let b = w.to_bytes();
    assert_says(&b, &["absurd tensor count 1099511627776"]);
    assert!(matches!(parse_gguf(&b), Err(GgufError::TooManyTensors { .. })));
}

#[test]
fn absurd_kv_count() {
    let mut w = valid();
    w.declare_counts(None, Some(u64::MAX));
    assert_says(&w.to_bytes(), &["absurd metadata key/value (KV) count"]);
    // An in-limit count that the file cannot hold fails as truncation, not as an allocation.
    let mut w = GgufWriter::new();
    w.declare_counts(None, Some(1_000_000));
    let mut b = w.to_bytes();
    b.truncate(24); // the header alone, no alignment padding
    assert_says(&b, &["truncated file", "metadata key #0"]);
}

#[test]
fn tensor_beyond_eof() {
    let mut w = valid();
    w.tensor_at("blk.0.attn_q.weight", &[64, 64], 0, 64);
    assert_says(&w.to_bytes(), &["tensor 'blk.0.attn_q.weight'", "beyond the end of the file"]);

    // A real file cut short: the first tensor whose data is gone is named.
    let real = std::fs::read(fixture("tiny-llama-f32.gguf")).unwrap();
    let e = err(&real[..real.len() / 2]);
    assert!(e.contains("tensor '") && e.contains("beyond the end of the file"), "{e}");
}

#[test]
fn unknown_tensor_type() {
    let mut w = valid();
    w.tensor_at("output.weight", &[32, 2], 99, 64);
    assert_says(&w.to_bytes(), &["tensor 'output.weight'", "unknown/unsupported tensor type 99"]);
}

fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/gguf")).join(name)
}

fn parse_file(path: &Path) -> GgufFile {
    let file = MappedFile::open(path).unwrap();
    let g = parse_gguf(file.bytes()).unwrap();
    // Every tensor's data is inside the file, aligned, and of the size its type and dims need.
    for t in &g.tensors {
        assert_eq!(t.offset % g.alignment as u64, 0, "{}", t.name);
        assert!(t.offset as usize + t.n_bytes <= file.bytes().len(), "{}", t.name);
        let row = t.dtype.row_bytes(t.dims[0] as usize).unwrap();
        assert_eq!(t.n_bytes as u64, row as u64 * t.dims[1..].iter().product::<u64>(), "{}", t.name);
    }
    g
}

fn count(g: &GgufFile, dtype: DType) -> usize {
    g.tensors.iter().filter(|t| t.dtype == dtype).count()
}

#[test]
fn real_fixtures_parse_with_their_tensor_types() {
    let g = parse_file(&fixture("tiny-llama-f32.gguf"));
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!((g.tensors.len(), count(&g, DType::F32)), (30, 30));
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 1024);
    assert_eq!(g.get_u32("llama.block_count"), Some(3));
    assert_eq!(g.get_u32("llama.embedding_length"), Some(96));

    let g = parse_file(&fixture("tiny-llama-q8_0.gguf"));
    assert_eq!((g.tensors.len(), count(&g, DType::Q8_0), count(&g, DType::F32)), (30, 23, 7));
    assert_eq!(g.tensor("blk.0.ffn_down.weight").unwrap().dtype, DType::Q8_0);

    let g = parse_file(&fixture("tiny-qwen2-f32.gguf"));
    assert_eq!(g.architecture(), Some("qwen2"));
    assert_eq!((g.tensors.len(), count(&g, DType::F32)), (26, 26));

    let g = parse_file(&fixture("tiny-qwen2-q8_0.gguf"));
    assert_eq!(g.tensors.len(), 26);
    assert!(count(&g, DType::Q8_0) > 0);
    for layer in 0..2 {
        // Rows of 176 values are not whole Q8_0 blocks, so llama.cpp kept ffn_down in F16.
        let t = g.tensor(&format!("blk.{layer}.ffn_down.weight")).unwrap();
        assert_eq!((t.dtype, t.ggml_type), (DType::F16, 1));
        assert_eq!((t.dims.as_slice(), t.shape()), (&[176, 64][..], vec![64, 176]));
    }
    assert_eq!(count(&g, DType::F16), 2);
}

#[test]
fn real_smollm2_parses_when_present() {
    let path = std::env::var_os("GOVBOX_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
            .to_path_buf()
    });
    if !path.is_file() {
        // tokenizer_matches_hf fails loudly on a missing SmolLM2; here it only adds coverage.
        eprintln!("SKIPPED: {} not found (scripts/fetch-models.sh smollm2)", path.display());
        return;
    }
    let g = parse_file(&path);
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get_u32("llama.block_count"), Some(30));
    assert_eq!(g.get_u32("llama.attention.head_count_kv"), Some(3));
    assert_eq!((count(&g, DType::Q4_1), count(&g, DType::Q8_0), count(&g, DType::F32)), (210, 1, 61));
}
