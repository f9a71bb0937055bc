//! A decoder's `config.json` (`DecoderConfig::from_hf_json`, with the family parts: MoE routing,
//! MLA ranks, YaRN, Gemma 3's layer types and multimodal `text_config`) on arbitrary JSON: never a
//! panic, and what it accepts has heads that group, even RoPE pairs and one MoE flag per layer.
//! Seed with the fixtures' `tests/fixtures/*/config.json` (`fuzz/seeds/decoder_config`).
#![no_main]

use govbox_engine::config::DecoderConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(c) = DecoderConfig::from_hf_json(&v, "config.json") else { return };
    assert!(c.n_heads % c.n_kv_heads == 0 && c.head_dim % 2 == 0);
    if let Some(m) = &c.family.moe {
        assert!(m.top_k >= 1 && m.top_k <= m.n_experts && m.n_experts % m.n_group == 0);
        assert_eq!(m.sparse_layers.len(), c.n_layers);
    }
    if let Some(m) = &c.family.mla {
        assert!(m.qk_rope % 2 == 0 && m.kv_lora_rank > 0);
    }
    if let Some(y) = &c.family.yarn {
        assert!(y.inv_freq(c.rope_theta, c.family.rotary_dim.unwrap_or(c.head_dim)).iter().all(|f| !f.is_nan()));
    }
});
