//! DeepSeek-V3 (`deepseek2`) GGUF files compute HF's logits, with the compressed latent in the
//! KV cache as the HF path has it.
//!
//! The files under `tests/fixtures/gguf/` come from llama.cpp's own converter and
//! `llama-quantize` (`tests/fixtures/gguf/make_deepseek_ggufs.sh`): `kv_b_proj` split per head
//! into `attn_k_b` (transposed) and `attn_v_b`, one "KV head" of `kv_lora_rank + rope` in the
//! metadata, the experts stacked, YaRN as `rope.scaling.*`. Older converters wrote the whole
//! `attn_kv_b`; [`with_whole_kv_b`] rewrites a converter file into that layout.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::*;

use std::path::PathBuf;
use std::sync::Arc;

use govbox_drivers::{Backend, KvDType};
use govbox_engine::gguf::writer::GgufWriter;
use govbox_engine::gguf::{GgufFile, GgufValue, parse_gguf};
use govbox_engine::{Engine, EngineOptions};

const TOL: f32 = 1e-4;

/// Every position's logits of every case, incremental and prefill, within `TOL` of `refs`.
fn check_logits(engine: &Engine, what: &str, cases: &str, refs: &str) {
    let exp = json(cases);
    let refs = load_tensors(refs);
    for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
        let ids = ids(&case["input_ids"]);
        let want = &refs[&format!("case{i}.logits")].1;
        for prefill in [false, true] {
            let got = engine.logits(&ids, prefill).unwrap();
            let err = max_abs(&got, want);
            assert!(err <= TOL, "{what} case {i} prefill={prefill}: max abs error {err}");
        }
    }
}

/// tiny-deepseek-v3 written as an F32 `deepseek2` GGUF file the way older llama.cpp converters
/// did (the whole `attn_kv_b`), with `config`'s RoPE settings (YaRN as `rope.scaling.*`). The
/// tokenizer metadata is taken from the converter's file.
fn older_layout(config: &serde_json::Value) -> PathBuf {
    let st_bytes = std::fs::read(fixture("tiny-deepseek-v3/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let conv_bytes = std::fs::read(f32_file()).unwrap();
    let conv: GgufFile = parse_gguf(&conv_bytes).unwrap();
    let c = |k: &str| config[k].as_u64().unwrap_or_else(|| panic!("config has no {k}"));
    let mut w = GgufWriter::new();
    for (k, v) in conv.metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.")) {
        w.kv(k, v.clone());
    }
    let u = |x: u64| GgufValue::U32(x as u32);
    let f = |x: f64| GgufValue::F32(x as f32);
    let k = |s: &str| format!("deepseek2.{s}");
    w.kv("general.architecture", GgufValue::String("deepseek2".into()));
    for (key, field) in [
        ("block_count", "num_hidden_layers"),
        ("context_length", "max_position_embeddings"),
        ("embedding_length", "hidden_size"),
        ("feed_forward_length", "intermediate_size"),
        ("attention.head_count", "num_attention_heads"),
        ("attention.head_count_kv", "num_attention_heads"),
        // No `_mla` keys: the MHA head sizes are in these.
        ("attention.value_length", "v_head_dim"),
        ("attention.q_lora_rank", "q_lora_rank"),
        ("attention.kv_lora_rank", "kv_lora_rank"),
        ("rope.dimension_count", "qk_rope_head_dim"),
        ("leading_dense_block_count", "first_k_dense_replace"),
        ("expert_count", "n_routed_experts"),
        ("expert_used_count", "num_experts_per_tok"),
        ("expert_shared_count", "n_shared_experts"),
        ("expert_feed_forward_length", "moe_intermediate_size"),
        ("expert_group_count", "n_group"),
        ("expert_group_used_count", "topk_group"),
    ] {
        w.kv(&k(key), u(c(field)));
    }
    w.kv(&k("attention.key_length"), u(c("qk_nope_head_dim") + c("qk_rope_head_dim")))
        .kv(&k("attention.layer_norm_rms_epsilon"), f(config["rms_norm_eps"].as_f64().unwrap()))
        .kv(&k("rope.freq_base"), f(config["rope_parameters"]["rope_theta"].as_f64().unwrap()))
        .kv(&k("expert_weights_scale"), f(config["routed_scaling_factor"].as_f64().unwrap()))
        .kv(&k("expert_weights_norm"), GgufValue::Bool(true))
        .kv(&k("expert_gating_func"), u(2));
    let r = &config["rope_parameters"];
    if r["rope_type"] == "yarn" {
        let m = |x: &str| r[x].as_f64().unwrap();
        let ms = |s: f64| 0.1 * s * m("factor").ln() + 1.0;
        w.kv(&k("rope.scaling.type"), GgufValue::String("yarn".into()))
            .kv(&k("rope.scaling.factor"), f(m("factor")))
            .kv(&k("rope.scaling.original_context_length"), u(m("original_max_position_embeddings") as u64))
            .kv(&k("rope.scaling.yarn_beta_fast"), f(m("beta_fast")))
            .kv(&k("rope.scaling.yarn_beta_slow"), f(m("beta_slow")))
            .kv(&k("rope.scaling.yarn_log_multiplier"), f(0.1 * m("mscale_all_dim")))
            // HF's attention factor from mscale and mscale_all_dim, as a config's explicit
            // `attention_factor` would be written.
            .kv(&k("rope.scaling.yarn_attn_factor"), f(ms(m("mscale")) / ms(m("mscale_all_dim"))));
    }
    let put = |w: &mut GgufWriter, gguf: &str, data: Vec<u8>, shape: &[usize]| {
        w.tensor(gguf, &shape.iter().rev().map(|&d| d as u64).collect::<Vec<_>>(), 0, data);
    };
    let hf = |name: &str| {
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        (t.data().to_vec(), t.shape().to_vec())
    };
    let put_hf = |w: &mut GgufWriter, gguf: &str, name: &str| {
        let (d, s) = hf(name);
        put(w, gguf, d, &s);
    };
    put_hf(&mut w, "token_embd.weight", "model.embed_tokens.weight");
    put_hf(&mut w, "output_norm.weight", "model.norm.weight");
    put_hf(&mut w, "output.weight", "lm_head.weight");
    let (n_experts, first_dense) = (c("n_routed_experts") as usize, c("first_k_dense_replace"));
    for i in 0..c("num_hidden_layers") {
        let l = |p: &str| format!("model.layers.{i}.{p}.weight");
        let mut pairs = vec![
            ("attn_norm", "input_layernorm"),
            ("attn_q_a", "self_attn.q_a_proj"),
            ("attn_q_a_norm", "self_attn.q_a_layernorm"),
            ("attn_q_b", "self_attn.q_b_proj"),
            ("attn_kv_a_mqa", "self_attn.kv_a_proj_with_mqa"),
            ("attn_kv_a_norm", "self_attn.kv_a_layernorm"),
            ("attn_kv_b", "self_attn.kv_b_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_norm", "post_attention_layernorm"),
        ];
        if i < first_dense {
            pairs.extend([("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj")]);
        } else {
            pairs.extend([
                ("ffn_gate_inp", "mlp.gate"),
                ("ffn_gate_shexp", "mlp.shared_experts.gate_proj"),
                ("ffn_up_shexp", "mlp.shared_experts.up_proj"),
                ("ffn_down_shexp", "mlp.shared_experts.down_proj"),
            ]);
            let (bias, shape) = hf(&format!("model.layers.{i}.mlp.gate.e_score_correction_bias"));
            put(&mut w, &format!("blk.{i}.exp_probs_b.bias"), bias, &shape);
            for part in ["gate", "up", "down"] {
                let (mut data, mut shape) = (Vec::new(), Vec::new());
                for e in 0..n_experts {
                    let (d, s) = hf(&l(&format!("mlp.experts.{e}.{part}_proj")));
                    data.extend_from_slice(&d);
                    shape = s;
                }
                shape.insert(0, n_experts);
                put(&mut w, &format!("blk.{i}.ffn_{part}_exps.weight"), data, &shape);
            }
        }
        for (g, h) in pairs {
            put_hf(&mut w, &format!("blk.{i}.{g}.weight"), &l(h));
        }
    }
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("govbox-deepseek-kv_b-{}-{n}.gguf", std::process::id()));
    std::fs::write(&path, w.to_bytes()).unwrap();
    path
}

fn f32_file() -> PathBuf {
    fixture("gguf/tiny-deepseek-v3-f32.gguf")
}

/// The converter's file `gguf/{file}` (F32, KV pool f32) against `refs` for the cases of fixture
/// `name`.
fn check_converted(backend: Arc<dyn Backend>, file: &str, name: &str, refs: &str) {
    let engine = load_f32_on(&fixture(&format!("gguf/{file}")), backend);
    check_logits(&engine, file, &format!("{name}/expected.json"), refs);
}

test_device!(deepseek_v3_f32_gguf_logits_match_hf, |b| check_converted(
    b,
    "tiny-deepseek-v3-f32.gguf",
    "tiny-deepseek-v3",
    "tiny-deepseek-v3/expected_logits.safetensors"
));

// The converter's `blk.N.exp_probs_b.bias` from tiny-deepseek-v3-bias (non-zero
// `e_score_correction_bias`, which changes most routes; the base fixture's is all zeros).
test_device!(deepseek_v3_routing_bias_f32_gguf_logits_match_hf, |b| check_converted(
    b,
    "tiny-deepseek-v3-bias-f32.gguf",
    "tiny-deepseek-v3-bias",
    "tiny-deepseek-v3-bias/expected_logits.safetensors"
));

fn config(name: &str) -> serde_json::Value {
    json(&format!("{name}/config.json"))
}

/// The older `attn_kv_b` layout, without and with YaRN.
fn check_older_layout(backend: Arc<dyn Backend>, name: &str) {
    let path = older_layout(&config(name));
    let engine = load_f32_on(&path, backend);
    check_logits(
        &engine,
        &format!("{name} (whole attn_kv_b) gguf"),
        &format!("{name}/expected.json"),
        &format!("{name}/expected_logits.safetensors"),
    );
    let _ = std::fs::remove_file(&path);
}

test_device!(deepseek_v3_older_kv_b_layout_matches_hf, |b| check_older_layout(b, "tiny-deepseek-v3"));

test_device!(deepseek_v3_yarn_gguf_keys_match_hf, |b| check_older_layout(b, "tiny-deepseek-v3-yarn"));

// The converter's YaRN keys (`yarn_log_multiplier` = 0.1 · mscale_all_dim, no attention factor):
// HF's logits for the -yarn config with mscale = mscale_all_dim (see make_deepseek_ggufs.sh).
test_device!(deepseek_v3_yarn_f32_gguf_logits_match_hf, |b| check_converted(
    b,
    "tiny-deepseek-v3-yarn-f32.gguf",
    "tiny-deepseek-v3-yarn",
    "gguf/tiny-deepseek-v3-yarn.hf_logits.safetensors"
));

/// The KV pool holds one "head" of `qk_rope + kv_lora_rank` values per token and layer (the RoPE
/// key and the compressed latent), as for the HF folder, not per-head keys and values.
fn check_latent_cache(backend: Arc<dyn Backend>) {
    let gguf = load_f32_on(&f32_file(), backend.clone()).kv_spec().unwrap();
    let hf = load_f32_on(&fixture("tiny-deepseek-v3"), backend).kv_spec().unwrap();
    let c = config("tiny-deepseek-v3");
    let width = (c["qk_rope_head_dim"].as_u64().unwrap() + c["kv_lora_rank"].as_u64().unwrap()) as usize;
    assert_eq!((gguf.n_kv_heads, gguf.head_dim, gguf.n_layers), (1, width, 3));
    assert_eq!(gguf, hf, "the GGUF file's KV pool differs from the HF folder's");
}

test_device!(deepseek_v3_gguf_caches_the_latent, check_latent_cache);

/// Q8_0: at least as accurate as llama.cpp on the same file ([`check_q8_against_llama_cpp`]), over
/// all positions together: with top-2 of 8 random experts, a rounding difference flips a near-tie
/// in routing at a few positions (llama.cpp's own Q8_0 run flips 28 of 530 positions here, by up
/// to 1.9), and which positions flip differs between two correct implementations.
fn check_q8(backend: Arc<dyn Backend>) {
    let engine = load_f32_on(&fixture("gguf/tiny-deepseek-v3-q8_0.gguf"), backend);
    let logits = "gguf/tiny-deepseek-v3-q8_0.llamacpp_logits.safetensors";
    check_q8_against_llama_cpp(&engine, "tiny-deepseek-v3", logits, Q8Rule::Aggregate);
}

test_device!(deepseek_v3_q8_0_gguf_is_at_least_as_accurate_as_llama_cpp, check_q8);

/// The tokenizer the converter wrote gives HF's ids for every fixture prompt.
#[test]
fn deepseek_v3_gguf_tokenizer_matches_hf() {
    let engine = load_f32_on(&f32_file(), backend());
    let exp = json("tiny-deepseek-v3/expected.json");
    let mut checked = 0;
    for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
        if let Some(p) = case["prompt"].as_str() {
            assert_eq!(engine.tokenizer().encode(p).unwrap(), ids(&case["input_ids"]), "case {i}: {p:?}");
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} cases have a prompt");
}

/// The error loading the converter's F32 file with its metadata `edit`ed (`None`: key left out),
/// the keys of `add` set, and only the tensors `keep` accepts.
fn load_error_of_edited(
    edit: impl Fn(&str, &GgufValue) -> Option<GgufValue>,
    add: &[(&str, GgufValue)],
    keep: impl Fn(&str) -> bool,
) -> String {
    let bytes = std::fs::read(f32_file()).unwrap();
    let g = parse_gguf(&bytes).unwrap();
    let mut w = GgufWriter::new();
    // `add` replaces a key the file has.
    let kept = |k: &str| k != "general.alignment" && !add.iter().any(|(a, _)| *a == k);
    for (k, v) in g.metadata.iter().filter(|(k, _)| kept(k)) {
        if let Some(v) = edit(k, v) {
            w.kv(k, v);
        }
    }
    for (k, v) in add {
        w.kv(k, v.clone());
    }
    for t in g.tensors.iter().filter(|t| keep(&t.name)) {
        let off = t.offset as usize;
        w.tensor(&t.name, &t.dims, t.ggml_type, bytes[off..off + t.n_bytes].to_vec());
    }
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("govbox-deepseek-edited-{}-{n}.gguf", std::process::id()));
    std::fs::write(&path, w.to_bytes()).unwrap();
    let opts = EngineOptions { kv_dtype: KvDType::F32, ..EngineOptions::default() };
    let e = Engine::load(&path, backend(), &opts).map(|_| ()).unwrap_err().to_string();
    let _ = std::fs::remove_file(&path);
    e
}

/// A file with neither the split nor the whole `kv_b` names the tensor it needs.
#[test]
fn deepseek_v3_gguf_without_kv_b_is_refused_by_name() {
    let e = load_error_of_edited(|_, v| Some(v.clone()), &[], |t| !t.starts_with("blk.1.attn_k_b"));
    assert!(e.contains("blk.1.attn_k_b.weight (or blk.1.attn_kv_b.weight)"), "{e}");
}

/// What the loader cannot run is refused naming the key: a missing latent rank, a gating
/// function other than softmax and sigmoid, RoPE scaling other than YaRN.
#[test]
fn deepseek_v3_gguf_refuses_unsupported_metadata_by_key() {
    let key = "deepseek2.attention.kv_lora_rank";
    let e = load_error_of_edited(|k, v| (k != key).then(|| v.clone()), &[], |_| true);
    assert!(e.contains(key), "{e}");
    // llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SQRTSOFTPLUS.
    let gating = [("deepseek2.expert_gating_func", GgufValue::U32(3))];
    let e = load_error_of_edited(|_, v| Some(v.clone()), &gating, |_| true);
    assert!(e.contains("deepseek2.expert_gating_func = 3 is not supported"), "{e}");
    let linear = [
        ("deepseek2.rope.scaling.type", GgufValue::String("linear".into())),
        ("deepseek2.rope.scaling.factor", GgufValue::F32(2.0)),
    ];
    let e = load_error_of_edited(|_, v| Some(v.clone()), &linear, |_| true);
    assert!(e.contains("deepseek2.rope.scaling.type 'linear' is not supported"), "{e}");
}
