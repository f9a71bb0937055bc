//! `govbox model ...` end to end: the binary's logits file agrees with HF transformers in both
//! feeding modes, generate streams text, info describes the model, bad input gets a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")).join(rel)
}

fn govbox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_govbox")).args(args).env("GOVBOX_THREADS", "2").output().unwrap()
}

fn read_f32(path: &std::path::Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    (t.shape().to_vec(), t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

#[test]
fn logits_command_matches_hf_incremental_and_prefill() {
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny-qwen2/expected.json")).unwrap()).unwrap();
    let case = &exp["cases"][2];
    let ids: Vec<String> = case["input_ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    let ids = ids.join(",");
    let bytes = std::fs::read(fixture("tiny-qwen2/expected_logits.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want: Vec<f32> = st
        .tensor("case2.logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let dir = std::env::temp_dir().join(format!("govbox-cli-logits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = fixture("tiny-qwen2");
    for prefill in [false, true] {
        let out = dir.join(format!("l{prefill}.safetensors"));
        // An f32 KV cache: the default f16 one moves these logits by up to ~1e-3, past the 1e-4 here.
        let mut args = vec![
            "model",
            "logits",
            "--model",
            model.to_str().unwrap(),
            "--ids",
            &ids,
            "--kv-dtype",
            "f32",
            "--out",
            out.to_str().unwrap(),
        ];
        if prefill {
            args.push("--prefill");
        }
        let o = govbox(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (shape, got) = read_f32(&out, "logits");
        assert_eq!(shape, vec![case["input_ids"].as_array().unwrap().len(), 1024]);
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err <= 1e-4, "prefill={prefill}: max abs error {err}");
    }
}

#[test]
fn generate_and_info_work_and_bad_paths_fail_clearly() {
    let model = fixture("gguf/tiny-llama-q8_0.gguf");
    let m = model.to_str().unwrap();
    let o = govbox(&["model", "generate", "--model", m, "--prompt", "The quick brown fox", "--max-tokens", "8"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!String::from_utf8_lossy(&o.stdout).trim().is_empty());
    let o = govbox(&["model", "info", "--model", m]);
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(info.contains("LlamaForCausalLM") && info.contains("q8_0") && info.contains("context"), "{info}");
    let o = govbox(&["model", "info", "--model", "/nonexistent/model.gguf"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    // A file that is not GGUF at all.
    let junk = std::env::temp_dir().join(format!("govbox-junk-{}.gguf", std::process::id()));
    std::fs::write(&junk, b"definitely not a gguf file").unwrap();
    let o = govbox(&["model", "info", "--model", junk.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("magic"), "{err}");
}
