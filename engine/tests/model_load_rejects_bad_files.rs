//! Malformed model folders give a clear error naming the file and tensor, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::*;

use std::path::{Path, PathBuf};

use govbox_engine::{Engine, EngineOptions};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("govbox-badmodel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-llama").join(f), d.join(f)).unwrap();
    }
    d
}

fn err(dir: &Path) -> String {
    let e = Engine::load(dir, backend(), &EngineOptions::default()).expect_err("load must fail");
    e.to_string()
}

fn rewrite_header(dir: &Path, f: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    f(&mut h);
    let mut hs = serde_json::to_vec(&h).unwrap();
    // Keep the data section where it was by padding the header to its old length.
    assert!(hs.len() <= n, "header grew");
    hs.resize(n, b' ');
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(&hs);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
}

#[test]
fn truncated_safetensors() {
    let d = scratch("trunc");
    let p = d.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&d);
    assert!(e.contains("model.safetensors") && e.contains("past the end"), "{e}");
}

#[test]
fn header_length_beyond_file() {
    let d = scratch("hdr");
    let p = d.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let past_end = bytes.len() as u64 + 10;
    bytes[..8].copy_from_slice(&past_end.to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    let e = err(&d);
    assert!(e.contains("model.safetensors") && e.contains("header length"), "{e}");
}

#[test]
fn unknown_architecture() {
    let d = scratch("arch");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("LlamaForCausalLM", "MambaForCausalLM");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = err(&d);
    assert!(e.contains("unknown architecture 'MambaForCausalLM'"), "{e}");
}

#[test]
fn missing_tensor() {
    let d = scratch("missing");
    rewrite_header(&d, |h| {
        let v = h.remove("model.layers.1.mlp.up_proj.weight").unwrap();
        h.insert("model.layers.1.mlp.up_proj.weightX".into(), v);
    });
    let e = err(&d);
    assert!(e.contains("missing tensor 'model.layers.1.mlp.up_proj.weight'") && e.contains("model.safetensors"), "{e}");
}

#[test]
fn shape_mismatch() {
    let d = scratch("shape");
    rewrite_header(&d, |h| {
        let t = h.get_mut("model.norm.weight").unwrap();
        // 96 f32 values seen as [48, 2]: the bytes fit, the model does not.
        t["shape"] = serde_json::json!([48, 2]);
    });
    let e = err(&d);
    assert!(e.contains("tensor 'model.norm.weight'") && e.contains("shape [48, 2]"), "{e}");
}
