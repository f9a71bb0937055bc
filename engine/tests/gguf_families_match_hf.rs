//! Qwen3, Qwen3-MoE, GLM-4 and Gemma 3 GGUF files (F32) compute HF's logits. The files are
//! written here from the HF fixtures with llama.cpp's converter's names, metadata and tensor
//! changes for these architectures, since llama.cpp itself is not part of the build:
//! - `qwen3`, `qwen3moe`: `attn_q_norm`/`attn_k_norm`, the router `ffn_gate_inp`, the experts
//!   stacked in `ffn_{gate,up,down}_exps`, `expert_count`/`expert_used_count`/
//!   `expert_feed_forward_length`;
//! - `glm4` (`conversion/glm.py`): `rope.dimension_count` = head_dim × partial_rotary_factor,
//!   q/k/v biases, HF's q/k rows unpermuted, the fused `gate_up_proj` as `ffn_up`,
//!   `post_attention_norm`/`post_ffw_norm`;
//! - `gemma3` (`conversion/gemma.py`): 1 added to every norm weight, `attention.sliding_window`,
//!   `rope.freq_base` (global) and `rope.freq_base_swa`, `post_attention_norm`/`ffn_norm`/
//!   `post_ffw_norm`, no `query_pre_attn_scalar`. The converter leaves the layer pattern to
//!   llama.cpp's default (every sixth layer global); the fixture's three layers are
//!   sliding, sliding, global, so the file carries llama.cpp's per-layer
//!   `attention.sliding_window_pattern` flags as `tests/fixtures/gguf/make_family_ggufs.sh` adds
//!   them;
//! - byte-level BPE tokenizer metadata.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::*;

use std::sync::Arc;

use govbox_drivers::Backend;
use govbox_engine::gguf::writer::GgufWriter;
use govbox_engine::gguf::{GgufArray, GgufValue};

const TOL: f32 = 1e-4;

struct Hf {
    cfg: serde_json::Value,
    st: Vec<u8>,
}

impl Hf {
    fn load(name: &str) -> Self {
        let dir = fixture(name);
        let cfg = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        Self { cfg, st: std::fs::read(dir.join("model.safetensors")).unwrap() }
    }

    fn int(&self, k: &str) -> u64 {
        self.cfg[k].as_u64().unwrap_or_else(|| panic!("config has no {k}"))
    }

    /// A tensor's f32 bytes and its GGUF dims (innermost first).
    fn tensor(&self, name: &str) -> (Vec<u8>, Vec<u64>) {
        let st = safetensors::SafeTensors::deserialize(&self.st).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        (t.data().to_vec(), t.shape().iter().rev().map(|&d| d as u64).collect())
    }

    fn has(&self, name: &str) -> bool {
        safetensors::SafeTensors::deserialize(&self.st).unwrap().names().contains(&name)
    }
}

fn strs(v: Vec<String>) -> GgufValue {
    GgufValue::Array(GgufArray::String(v))
}

/// The fixture's `tokenizer.json` as llama.cpp's `gpt2` tokenizer metadata.
fn tokenizer_kvs(w: &mut GgufWriter, name: &str, eos: u32) {
    let tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("tokenizer.json")).unwrap()).unwrap();
    let mut tokens: Vec<(u64, String, i32)> =
        tj["model"]["vocab"].as_object().unwrap().iter().map(|(t, id)| (id.as_u64().unwrap(), t.clone(), 1)).collect();
    for a in tj["added_tokens"].as_array().unwrap() {
        let id = a["id"].as_u64().unwrap();
        let kind = if a["special"].as_bool().unwrap_or(false) { 3 } else { 4 };
        match tokens.iter_mut().find(|t| t.0 == id) {
            Some(t) => t.2 = kind,
            None => tokens.push((id, a["content"].as_str().unwrap().to_string(), kind)),
        }
    }
    tokens.sort();
    assert!(tokens.iter().enumerate().all(|(i, t)| t.0 == i as u64), "token ids are not 0..n");
    let merges: Vec<String> = tj["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            other => panic!("merge {other}"),
        })
        .collect();
    w.kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
        // The fixtures' tokenizers split as GPT-2 does (not as the real models' do), which is what
        // the converter writes for them (bench/get-llama-cpp.sh).
        .kv("tokenizer.ggml.pre", GgufValue::String("gpt-2".into()))
        .kv("tokenizer.ggml.tokens", strs(tokens.iter().map(|t| t.1.clone()).collect()))
        .kv("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(tokens.iter().map(|t| t.2).collect())))
        .kv("tokenizer.ggml.merges", strs(merges))
        .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(eos));
}

fn f32_of(v: &serde_json::Value) -> GgufValue {
    GgufValue::F32(v.as_f64().unwrap_or_else(|| panic!("{v} is not a number")) as f32)
}

/// Writes fixture `name` (Qwen3, Qwen3-MoE, GLM-4 or Gemma 3) as an F32 GGUF file and returns its
/// path.
fn convert(name: &str) -> std::path::PathBuf {
    let hf = Hf::load(name);
    let arch = match hf.cfg["architectures"][0].as_str().unwrap() {
        "Qwen3MoeForCausalLM" => "qwen3moe",
        "Qwen3ForCausalLM" => "qwen3",
        "Glm4ForCausalLM" => "glm4",
        "Gemma3ForCausalLM" => "gemma3",
        other => panic!("no GGUF conversion for {other}"),
    };
    let (moe, gemma, glm) = (arch == "qwen3moe", arch == "gemma3", arch == "glm4");
    let mut w = GgufWriter::new();
    let u32v = |x: u64| GgufValue::U32(x as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let rope = &hf.cfg["rope_parameters"];
    let global_rope = if gemma { &rope["full_attention"] } else { rope };
    w.kv("general.architecture", GgufValue::String(arch.into()))
        .kv(&key("block_count"), u32v(hf.int("num_hidden_layers")))
        .kv(&key("context_length"), u32v(hf.int("max_position_embeddings")))
        .kv(&key("embedding_length"), u32v(hf.int("hidden_size")))
        .kv(&key("feed_forward_length"), u32v(hf.int("intermediate_size")))
        .kv(&key("attention.head_count"), u32v(hf.int("num_attention_heads")))
        .kv(&key("attention.head_count_kv"), u32v(hf.int("num_key_value_heads")))
        .kv(&key("attention.key_length"), u32v(hf.int("head_dim")))
        .kv(&key("attention.value_length"), u32v(hf.int("head_dim")))
        .kv(&key("attention.layer_norm_rms_epsilon"), f32_of(&hf.cfg["rms_norm_eps"]))
        .kv(&key("rope.freq_base"), f32_of(&global_rope["rope_theta"]));
    if glm {
        let factor = rope["partial_rotary_factor"].as_f64().unwrap();
        w.kv(&key("rope.dimension_count"), u32v((hf.int("head_dim") as f64 * factor) as u64));
    }
    if gemma {
        let flags = hf.cfg["layer_types"].as_array().unwrap().iter().map(|t| t == "sliding_attention").collect();
        w.kv(&key("rope.freq_base_swa"), f32_of(&rope["sliding_attention"]["rope_theta"]))
            .kv(&key("attention.sliding_window"), u32v(hf.int("sliding_window")))
            .kv(&key("attention.sliding_window_pattern"), GgufValue::Array(GgufArray::Bool(flags)));
    }
    let n_experts = hf.cfg["num_experts"].as_u64().or(hf.cfg["num_local_experts"].as_u64()).unwrap_or(0);
    if moe {
        w.kv(&key("expert_count"), u32v(n_experts))
            .kv(&key("expert_used_count"), u32v(hf.int("num_experts_per_tok")))
            .kv(&key("expert_feed_forward_length"), u32v(hf.int("moe_intermediate_size")));
        if !hf.cfg["norm_topk_prob"].as_bool().unwrap_or(false) {
            w.kv(&key("expert_weights_norm"), GgufValue::Bool(false));
        }
    }
    tokenizer_kvs(&mut w, name, hf.int("eos_token_id") as u32);
    let put = |w: &mut GgufWriter, gguf: &str, hf_name: &str| {
        let (mut data, dims) = hf.tensor(hf_name);
        // Gemma3Model.modify_tensors: "Gemma3RMSNorm adds 1.0 to the norm value".
        if gemma && hf_name.ends_with("norm.weight") {
            for x in data.chunks_exact_mut(4) {
                let v = f32::from_le_bytes((&*x).try_into().unwrap()) + 1.0;
                x.copy_from_slice(&v.to_le_bytes());
            }
        }
        w.tensor(gguf, &dims, 0, data);
    };
    put(&mut w, "token_embd.weight", "model.embed_tokens.weight");
    put(&mut w, "output_norm.weight", "model.norm.weight");
    if hf.has("lm_head.weight") {
        put(&mut w, "output.weight", "lm_head.weight");
    }
    for i in 0..hf.int("num_hidden_layers") {
        let l = |p: &str| format!("model.layers.{i}.{p}.weight");
        let mut parts = vec![
            ("attn_norm", "input_layernorm"),
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
        ];
        parts.extend(match arch {
            "glm4" => vec![
                ("post_attention_norm", "post_self_attn_layernorm"),
                ("ffn_norm", "post_attention_layernorm"),
                ("post_ffw_norm", "post_mlp_layernorm"),
            ],
            "gemma3" => vec![
                ("attn_q_norm", "self_attn.q_norm"),
                ("attn_k_norm", "self_attn.k_norm"),
                ("post_attention_norm", "post_attention_layernorm"),
                ("ffn_norm", "pre_feedforward_layernorm"),
                ("post_ffw_norm", "post_feedforward_layernorm"),
            ],
            _ => vec![
                ("attn_q_norm", "self_attn.q_norm"),
                ("attn_k_norm", "self_attn.k_norm"),
                ("ffn_norm", "post_attention_layernorm"),
            ],
        });
        for (g, h) in parts {
            put(&mut w, &format!("blk.{i}.{g}.weight"), &l(h));
        }
        if glm {
            for p in ["q", "k", "v"] {
                let b = format!("model.layers.{i}.self_attn.{p}_proj.bias");
                put(&mut w, &format!("blk.{i}.attn_{p}.bias"), &b);
            }
            put(&mut w, &format!("blk.{i}.ffn_up.weight"), &l("mlp.gate_up_proj"));
            put(&mut w, &format!("blk.{i}.ffn_down.weight"), &l("mlp.down_proj"));
        } else if hf.has(&l("mlp.gate")) {
            put(&mut w, &format!("blk.{i}.ffn_gate_inp.weight"), &l("mlp.gate"));
            for part in ["gate", "up", "down"] {
                let mut data = Vec::new();
                let mut dims = Vec::new();
                for e in 0..n_experts {
                    let (d, s) = hf.tensor(&l(&format!("mlp.experts.{e}.{part}_proj")));
                    data.extend_from_slice(&d);
                    dims = s;
                }
                dims.push(n_experts);
                w.tensor(&format!("blk.{i}.ffn_{part}_exps.weight"), &dims, 0, data);
            }
        } else {
            for part in ["gate", "up", "down"] {
                put(&mut w, &format!("blk.{i}.ffn_{part}.weight"), &l(&format!("mlp.{part}_proj")));
            }
        }
    }
    // One file per call: the CPU and simulator variants of a test run at once in this process.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("govbox-{name}-{}-{n}.gguf", std::process::id()));
    std::fs::write(&path, w.to_bytes()).unwrap();
    path
}

fn check(backend: Arc<dyn Backend>, name: &str) {
    let path = convert(name);
    // An f32 KV pool: the default f16 one moves logits by up to ~3e-3, past the 1e-4 here.
    let engine = load_f32_on(&path, backend);
    let exp = json(&format!("{name}/expected.json"));
    let refs = load_tensors(&format!("{name}/expected_logits.safetensors"));
    for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
        let ids = ids(&case["input_ids"]);
        for prefill in [false, true] {
            let got = engine.logits(&ids, prefill).unwrap();
            let err = max_abs(&got, &refs[&format!("case{i}.logits")].1);
            assert!(err <= TOL, "{name} gguf case {i} prefill={prefill}: max abs error {err}");
        }
    }
    // The tokenizer came from the file: the fixture's prompts encode to the same ids.
    for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
        if let Some(p) = case["prompt"].as_str() {
            assert_eq!(engine.tokenizer().encode(p).unwrap(), ids(&case["input_ids"]), "{name} case {i}: ids");
        }
    }
    let _ = std::fs::remove_file(&path);
}

test_device!(qwen3_f32_gguf_logits_match_hf, |b| check(b, "tiny-qwen3"));

test_device!(qwen3_moe_f32_gguf_logits_match_hf, |b| check(b, "tiny-qwen3-moe"));

// norm_topk_prob off (expert_weights_norm false) and dense layers among the sparse ones.
test_device!(qwen3_moe_mixed_f32_gguf_logits_match_hf, |b| check(b, "tiny-qwen3-moe-mixed"));

test_device!(glm4_f32_gguf_logits_match_hf, |b| check(b, "tiny-glm4"));

// Norm weights with the 1 already added, the window crossed by the 268-token case, and the two
// RoPE bases.
test_device!(gemma3_f32_gguf_logits_match_hf, |b| check(b, "tiny-gemma3"));
