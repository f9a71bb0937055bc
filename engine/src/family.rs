//! What the newer decoder families add to the Llama shape: per-head q/k norms (Qwen3, Gemma 3),
//! partial rotary (GLM-4), sliding-window layers with their own RoPE base (Gemma 3) and
//! mixture-of-experts MLPs (Qwen3-MoE), read from `config.json`.

use serde_json::Value;

use crate::config::DecoderArch;
use crate::gguf::{GgufArray, GgufFile, GgufValue};
use crate::{EngineError, Result};

/// How router logits become expert scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeScoring {
    /// Softmax over all experts (Qwen3-MoE).
    Softmax,
    /// Sigmoid of each logit (DeepSeek-V3).
    Sigmoid,
}

/// A mixture-of-experts MLP's shape and routing rule.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Score function.
    pub scoring: MoeScoring,
    /// Expert groups (`n_group`); the experts of the best `topk_group` groups compete.
    pub n_group: usize,
    /// Groups kept per token (`topk_group`).
    pub topk_group: usize,
    /// Whether a per-expert bias (`e_score_correction_bias`) is added to the scores for choosing
    /// (not for weighting).
    pub score_bias: bool,
    /// Factor on the routing weights (`routed_scaling_factor`).
    pub routed_scaling: f32,
    /// Hidden width of the shared experts run on every token (0: none).
    pub shared_ff: usize,
    /// Routed experts per MoE layer.
    pub n_experts: usize,
    /// Experts each token goes to.
    pub top_k: usize,
    /// Hidden width of one expert.
    pub expert_ff: usize,
    /// Whether the top-k routing weights are renormalised to sum to 1.
    pub norm_topk_prob: bool,
    /// Per layer: whether its MLP is a MoE block (else a dense MLP of `intermediate_size`).
    pub sparse_layers: Vec<bool>,
}

impl MoeConfig {
    /// Softmax routing over ungrouped experts without bias, scaling or shared experts (Qwen).
    pub fn softmax(n_experts: usize, top_k: usize, expert_ff: usize, norm: bool, sparse_layers: Vec<bool>) -> Self {
        MoeConfig {
            scoring: MoeScoring::Softmax,
            n_group: 1,
            topk_group: 1,
            score_bias: false,
            routed_scaling: 1.0,
            shared_ff: 0,
            n_experts,
            top_k,
            expert_ff,
            norm_topk_prob: norm,
            sparse_layers,
        }
    }
}

impl MoeConfig {
    /// Grouped routing needs the experts to split evenly into `n_group` groups and at most that
    /// many groups kept.
    fn check_groups(&self) -> std::result::Result<(), String> {
        if self.n_experts.is_multiple_of(self.n_group) && self.topk_group <= self.n_group {
            Ok(())
        } else {
            Err(format!("{} experts in {} groups, {} kept", self.n_experts, self.n_group, self.topk_group))
        }
    }
}

/// Family-specific parts of a decoder's configuration. The default is the Llama shape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FamilyConfig {
    /// RMSNorm of each query and key head before RoPE (`q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// Values of each head that rotate (`partial_rotary_factor` × head_dim); `None`: all.
    pub rotary_dim: Option<usize>,
    /// Sliding window of the local layers, in positions (the query's own included).
    pub sliding_window: Option<usize>,
    /// Per layer: whether it is a sliding-window (local) layer.
    pub sliding_layers: Vec<bool>,
    /// RoPE base of the sliding-window layers.
    pub local_rope_theta: Option<f32>,
    /// Linear RoPE scaling factor of the global layers (`rope_type: linear`).
    pub rope_linear_factor: Option<f32>,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5` instead of `head_dim^-0.5`.
    pub query_pre_attn_scalar: Option<f32>,
    /// Mixture-of-experts MLPs.
    pub moe: Option<MoeConfig>,
    /// Multi-head latent attention (DeepSeek-V3).
    pub mla: Option<MlaConfig>,
    /// YaRN RoPE scaling (DeepSeek-V3/R1).
    pub yarn: Option<Yarn>,
}

/// YaRN RoPE scaling parameters (`rope_type: yarn`), as transformers computes them.
#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    /// Context extension factor.
    pub factor: f64,
    /// Pre-training context (`original_max_position_embeddings`).
    pub original_max: f64,
    /// Rotations bounding the ramp (`beta_fast`, `beta_slow`).
    pub beta_fast: f64,
    /// See `beta_fast`.
    pub beta_slow: f64,
    /// Factor on cos and sin (`attention_factor`, else from `mscale` / `mscale_all_dim`).
    pub attention_factor: f64,
    /// `mscale_all_dim`: MLA also multiplies its softmax scale by `mscale(factor, this)²`.
    pub mscale_all_dim: f64,
    /// Whether the ramp bounds are rounded outward (`truncate`).
    pub truncate: bool,
}

fn yarn_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 }
}

impl Yarn {
    fn from_json(s: &Value, err: &dyn Fn(String) -> EngineError) -> Result<Self> {
        let f = |k: &str| s.get(k).and_then(|x| x.as_f64());
        let factor = f("factor").ok_or_else(|| err("YaRN scaling without factor".into()))?;
        let original_max = f("original_max_position_embeddings")
            .ok_or_else(|| err("YaRN scaling without original_max_position_embeddings".into()))?;
        if !(factor.is_finite() && factor > 0.0 && original_max >= 1.0) {
            return Err(err(format!("YaRN factor {factor}, original context {original_max}")));
        }
        let (mscale, mscale_all_dim) = (f("mscale").unwrap_or(0.0), f("mscale_all_dim").unwrap_or(0.0));
        let attention_factor = match f("attention_factor") {
            Some(a) => a,
            None if mscale != 0.0 && mscale_all_dim != 0.0 => {
                yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
            }
            None => yarn_mscale(factor, 1.0),
        };
        Ok(Self {
            factor,
            original_max,
            beta_fast: f("beta_fast").filter(|&b| b != 0.0).unwrap_or(32.0),
            beta_slow: f("beta_slow").filter(|&b| b != 0.0).unwrap_or(1.0),
            attention_factor,
            mscale_all_dim,
            truncate: s.get("truncate").and_then(|x| x.as_bool()).unwrap_or(true),
        })
    }

    /// YaRN from GGUF `{arch}.rope.scaling.*` keys, with llama.cpp's meaning: `None` unless the
    /// type is `yarn`. The converter writes `yarn_log_multiplier` as `0.1 · mscale_all_dim` (for
    /// `deepseek2`) and drops `mscale`: llama.cpp takes `mscale` to be `mscale_all_dim`, which
    /// makes the factor on cos and sin 1 (the published V3/R1 configs have both at 1). The
    /// ramp bounds are rounded outward, as ggml does.
    pub fn from_gguf(g: &GgufFile, arch_name: &str, err: &dyn Fn(String) -> EngineError) -> Result<Option<Self>> {
        let key = |k: &str| format!("{arch_name}.rope.scaling.{k}");
        match g.get_str(&key("type")) {
            None | Some("none") => return Ok(None),
            Some("yarn") => {}
            Some(other) => return Err(err(format!("{} '{other}' is not supported", key("type")))),
        }
        let f = |k: &str| g.get_f32(&key(k));
        let factor =
            f("factor").map(f64::from).ok_or_else(|| err(format!("YaRN scaling without {}", key("factor"))))?;
        let original_max = g
            .get_usize(&key("original_context_length"))
            .ok_or_else(|| err(format!("YaRN scaling without {}", key("original_context_length"))))?
            as f64;
        if !(factor.is_finite() && factor > 0.0 && original_max >= 1.0) {
            return Err(err(format!("YaRN factor {factor}, original context {original_max}")));
        }
        if let Some(ext) = f("yarn_ext_factor").filter(|&e| e != 1.0) {
            return Err(err(format!("{} = {ext} is not supported (only 1)", key("yarn_ext_factor"))));
        }
        // Divided in f32 as llama.cpp does, so that 0.1f / 0.1f is exactly 1.
        let mscale_all_dim = f("yarn_log_multiplier").map_or(0.0, |m| f64::from(m / 0.1));
        let attention_factor = match f("yarn_attn_factor") {
            // Only written when HF's config had `attention_factor`, which HF then uses as is.
            Some(a) => f64::from(a),
            None if mscale_all_dim != 0.0 => 1.0,
            None => yarn_mscale(factor, 1.0),
        } * f64::from(f("attn_factor").unwrap_or(1.0));
        Ok(Some(Self {
            factor,
            original_max,
            beta_fast: f("yarn_beta_fast").map(f64::from).filter(|&b| b != 0.0).unwrap_or(32.0),
            beta_slow: f("yarn_beta_slow").map(f64::from).filter(|&b| b != 0.0).unwrap_or(1.0),
            attention_factor,
            mscale_all_dim,
            truncate: true,
        }))
    }

    /// Inverse frequencies over `dim` rotary values with base `theta`: interpolated (divided by
    /// the factor) for long wavelengths, extrapolated (unchanged) for short ones, a linear ramp
    /// between.
    pub fn inv_freq(&self, theta: f32, dim: usize) -> Vec<f32> {
        let base = f64::from(theta);
        let d = dim as f64;
        let corr = |rot: f64| d * (self.original_max / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
        let (mut low, mut high) = (corr(self.beta_fast), corr(self.beta_slow));
        if self.truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
        if low == high {
            high += 0.001;
        }
        (0..dim / 2)
            .map(|i| {
                // torch computes these in f32.
                let pos = base.powf((2 * i) as f64 / d) as f32;
                let (extra, inter) = (1.0 / pos, 1.0 / (self.factor as f32 * pos));
                let ramp = (((i as f64 - low) / (high - low)).clamp(0.0, 1.0)) as f32;
                let keep = 1.0 - ramp;
                inter * (1.0 - keep) + extra * keep
            })
            .collect()
    }

    /// The factor MLA's softmax scale gets (`mscale(factor, mscale_all_dim)²`, 1 without it).
    pub fn softmax_scale_factor(&self) -> f32 {
        if self.mscale_all_dim == 0.0 {
            return 1.0;
        }
        let m = yarn_mscale(self.factor, self.mscale_all_dim);
        (m * m) as f32
    }
}

/// Multi-head latent attention's shape (DeepSeek-V2/V3).
#[derive(Clone, Debug, PartialEq)]
pub struct MlaConfig {
    /// Rank of the query compression (`None`: a plain `q_proj`).
    pub q_lora_rank: Option<usize>,
    /// Rank of the shared key/value latent, what the KV cache holds per token.
    pub kv_lora_rank: usize,
    /// Per-head query/key values without position (`qk_nope_head_dim`).
    pub qk_nope: usize,
    /// Per-head query/key values with RoPE (`qk_rope_head_dim`), shared by all heads for keys.
    pub qk_rope: usize,
    /// Per-head value width (`v_head_dim`).
    pub v_head: usize,
    /// RoPE on adjacent pairs (`rope_interleave`) rather than halves.
    pub rope_interleave: bool,
}

fn f32_of(v: Option<&Value>) -> Option<f32> {
    v.and_then(|x| x.as_f64()).map(|x| x as f32)
}

impl FamilyConfig {
    /// Reads the family parts of a HF `config.json` for `arch` with `n_layers` layers and heads of
    /// `head_dim`.
    pub fn from_hf_json(v: &Value, arch: DecoderArch, n_layers: usize, head_dim: usize, file: &str) -> Result<Self> {
        let err = |detail: String| EngineError::Config { file: file.into(), detail };
        let rope = v.get("rope_parameters");
        let mut f = FamilyConfig::default();
        match arch {
            DecoderArch::Llama | DecoderArch::Qwen2 => {}
            DecoderArch::Qwen3 => f.qk_norm = true,
            DecoderArch::Qwen3Moe => {
                f.qk_norm = true;
                f.moe = Some(moe_from_hf(v, n_layers, file)?);
            }
            DecoderArch::DeepseekV3 => {
                let int = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
                let need = |k: &str| {
                    int(k)
                        .filter(|&x| x > 0 && x <= 1 << 16)
                        .ok_or_else(|| err(format!("missing or out-of-range \"{k}\"")))
                };
                let mla = MlaConfig {
                    q_lora_rank: int("q_lora_rank").filter(|&x| x > 0),
                    kv_lora_rank: need("kv_lora_rank")?,
                    qk_nope: need("qk_nope_head_dim")?,
                    qk_rope: need("qk_rope_head_dim")?,
                    v_head: need("v_head_dim")?,
                    rope_interleave: v.get("rope_interleave").and_then(|x| x.as_bool()).unwrap_or(true),
                };
                if !mla.qk_rope.is_multiple_of(2) {
                    return Err(err(format!("qk_rope_head_dim {} is odd; RoPE needs pairs", mla.qk_rope)));
                }
                if v.get("num_nextn_predict_layers").and_then(|x| x.as_u64()).unwrap_or(0) > 0 {
                    log::info!(
                        "{file}: the multi-token-prediction layers are not used; decoding is one token at a time"
                    );
                }
                f.rotary_dim = Some(mla.qk_rope);
                f.mla = Some(mla);
                let scaling = rope.filter(|r| r.get("rope_type").is_some()).or_else(|| v.get("rope_scaling"));
                if let Some(s) = scaling.filter(|s| !s.is_null()) {
                    match s.get("rope_type").or_else(|| s.get("type")).and_then(|t| t.as_str()).unwrap_or("default") {
                        "default" => {}
                        "yarn" => f.yarn = Some(Yarn::from_json(s, &err)?),
                        other => return Err(err(format!("RoPE scaling type '{other}' is not supported for DeepSeek"))),
                    }
                }
                let mut moe = moe_from_hf(v, n_layers, file)?;
                let first_dense = int("first_k_dense_replace").unwrap_or(0);
                moe.sparse_layers = (0..n_layers).map(|i| i >= first_dense).collect();
                moe.scoring = match v.get("scoring_func").and_then(|x| x.as_str()).unwrap_or("sigmoid") {
                    "sigmoid" => MoeScoring::Sigmoid,
                    "softmax" => MoeScoring::Softmax,
                    other => return Err(err(format!("scoring_func '{other}' is not supported"))),
                };
                moe.n_group = int("n_group").unwrap_or(1).max(1);
                moe.topk_group = int("topk_group").unwrap_or(1).max(1);
                moe.check_groups().map_err(err)?;
                moe.score_bias = moe.scoring == MoeScoring::Sigmoid;
                moe.routed_scaling = f32_of(v.get("routed_scaling_factor")).unwrap_or(1.0);
                moe.shared_ff = int("n_shared_experts").unwrap_or(0) * moe.expert_ff;
                f.moe = Some(moe);
            }
            DecoderArch::Glm4 => {
                let factor = f32_of(rope.and_then(|r| r.get("partial_rotary_factor")))
                    .or_else(|| f32_of(v.get("partial_rotary_factor")))
                    .unwrap_or(1.0);
                let dim = (head_dim as f32 * factor).round() as usize;
                if !(factor > 0.0 && factor <= 1.0) || dim == 0 || !dim.is_multiple_of(2) {
                    return Err(err(format!("partial_rotary_factor {factor} gives {dim} rotary values of {head_dim}")));
                }
                f.rotary_dim = (dim != head_dim).then_some(dim);
            }
            DecoderArch::Gemma3 => {
                for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
                    if v.get(k).is_some_and(|x| !x.is_null()) {
                        return Err(err(format!("\"{k}\" is set; Gemma 3 soft-capping is not supported")));
                    }
                }
                f.qk_norm = true;
                f.query_pre_attn_scalar = f32_of(v.get("query_pre_attn_scalar"));
                let window = v.get("sliding_window").and_then(|x| x.as_u64()).map(|x| x as usize);
                f.sliding_window = window.filter(|&w| w > 0);
                f.sliding_layers = match v.get("layer_types").and_then(|x| x.as_array()) {
                    Some(types) => {
                        if types.len() != n_layers {
                            return Err(err(format!("{} layer_types for {n_layers} layers", types.len())));
                        }
                        types
                            .iter()
                            .map(|t| match t.as_str() {
                                Some("sliding_attention") => Ok(true),
                                Some("full_attention") => Ok(false),
                                _ => {
                                    Err(err(format!("layer type {t} is neither sliding_attention nor full_attention")))
                                }
                            })
                            .collect::<Result<_>>()?
                    }
                    None => {
                        let p = v
                            .get("sliding_window_pattern")
                            .or_else(|| v.get("_sliding_window_pattern"))
                            .and_then(|x| x.as_u64())
                            .unwrap_or(6)
                            .max(1) as usize;
                        (0..n_layers).map(|i| (i + 1) % p != 0).collect()
                    }
                };
                if f.sliding_layers.iter().any(|&s| s) && f.sliding_window.is_none() {
                    return Err(err("sliding-window layers but no \"sliding_window\"".into()));
                }
                // transformers 5.x: rope_parameters per layer type; 4.x: rope_local_base_freq and
                // a top-level rope_scaling for the global layers.
                let local = rope.and_then(|r| r.get("sliding_attention"));
                f.local_rope_theta = f32_of(local.and_then(|r| r.get("rope_theta")))
                    .or_else(|| f32_of(v.get("rope_local_base_freq")))
                    .or(Some(10_000.0));
                let global_scaling = rope
                    .and_then(|r| r.get("full_attention"))
                    .or_else(|| v.get("rope_scaling"))
                    .filter(|s| !s.is_null());
                if let Some(s) = global_scaling {
                    match s.get("rope_type").or_else(|| s.get("type")).and_then(|t| t.as_str()).unwrap_or("default") {
                        "default" => {}
                        "linear" => {
                            f.rope_linear_factor = Some(
                                f32_of(s.get("factor"))
                                    .ok_or_else(|| err("linear RoPE scaling without factor".into()))?,
                            )
                        }
                        other => return Err(err(format!("RoPE scaling type '{other}' is not supported for Gemma 3"))),
                    }
                }
            }
        }
        Ok(f)
    }

    /// Reads the family parts from GGUF metadata (`{arch_name}.*` keys) the way llama.cpp's
    /// converter writes them: Qwen3 has q/k norms; a Qwen3-MoE layer is sparse when it has a
    /// router (`blk.N.ffn_gate_inp.weight`), and its top-k weights are renormalised unless
    /// `{arch}.expert_weights_norm` says otherwise (llama.cpp always renormalises them). GLM-4
    /// and Gemma 3: see [`glm4_rotary_from_gguf`] and [`gemma3_from_gguf`].
    pub fn from_gguf(g: &GgufFile, arch: DecoderArch, arch_name: &str, n_layers: usize, file: &str) -> Result<Self> {
        let err = |detail: String| EngineError::Config { file: file.into(), detail };
        let key = |k: &str| format!("{arch_name}.{k}");
        let mut f = FamilyConfig::default();
        match arch {
            DecoderArch::Qwen3 => f.qk_norm = true,
            DecoderArch::Qwen3Moe => {
                f.qk_norm = true;
                let int = |k: &str| g.get_usize(&key(k)).ok_or_else(|| err(format!("missing metadata {}", key(k))));
                let (n_experts, top_k, expert_ff) =
                    (int("expert_count")?, int("expert_used_count")?, int("expert_feed_forward_length")?);
                if n_experts == 0 || n_experts > 4096 || top_k == 0 || top_k > n_experts || expert_ff == 0 {
                    return Err(err(format!(
                        "{n_experts} experts, {top_k} per token, {expert_ff} wide is out of range"
                    )));
                }
                let sparse = (0..n_layers).map(|i| g.tensor(&format!("blk.{i}.ffn_gate_inp.weight")).is_some());
                let norm = g.get_bool(&key("expert_weights_norm")).unwrap_or(true);
                f.moe = Some(MoeConfig::softmax(n_experts, top_k, expert_ff, norm, sparse.collect()));
            }
            DecoderArch::DeepseekV3 => return Self::deepseek_from_gguf(g, arch_name, n_layers, file),
            DecoderArch::Glm4 => f.rotary_dim = glm4_rotary_from_gguf(g, arch_name, &err)?,
            DecoderArch::Gemma3 => gemma3_from_gguf(g, arch_name, n_layers, &mut f, &err)?,
            _ => {}
        }
        Ok(f)
    }

    /// DeepSeek-V2/V3 (`deepseek2`) as llama.cpp's converter writes it. Its MLA is described as
    /// MQA over the latent (`attention.key_length` = `kv_lora_rank + rope`), so the per-head
    /// sizes come from the `_mla` keys (older files without them give them in `key_length` /
    /// `value_length`); `rope.dimension_count` is the RoPE part. llama.cpp rotates adjacent pairs
    /// (its `NORM` RoPE) on unpermuted rows for this architecture, which is HF's
    /// `rope_interleave`. Routing follows llama.cpp's defaults for keys the converter leaves out:
    /// softmax scores without `expert_gating_func`, no renormalisation without
    /// `expert_weights_norm`, no scaling without `expert_weights_scale`, one group without
    /// `expert_group_count`; the score bias is used when the file has `exp_probs_b`.
    fn deepseek_from_gguf(g: &GgufFile, arch_name: &str, n_layers: usize, file: &str) -> Result<Self> {
        let err = |detail: String| EngineError::Config { file: file.into(), detail };
        let key = |k: &str| format!("{arch_name}.{k}");
        let opt = |k: &str| g.get_usize(&key(k));
        let need = |k: &str| {
            opt(k).filter(|&x| x > 0 && x <= 1 << 16).ok_or_else(|| err(format!("missing or out-of-range {}", key(k))))
        };
        let kv_lora_rank = need("attention.kv_lora_rank")?;
        let qk_rope = need("rope.dimension_count")?;
        let (qk, qk_key) = match opt("attention.key_length_mla") {
            Some(x) => (x, "attention.key_length_mla"),
            None => (need("attention.key_length")?, "attention.key_length"),
        };
        let v_head = opt("attention.value_length_mla").map_or_else(|| need("attention.value_length"), Ok)?;
        if qk <= qk_rope || !qk_rope.is_multiple_of(2) || v_head == 0 || v_head > 1 << 16 {
            return Err(err(format!(
                "{} = {qk} with rope.dimension_count {qk_rope} and value length {v_head}: no room for the \
                 no-RoPE part, or an odd RoPE part",
                key(qk_key)
            )));
        }
        let mla = MlaConfig {
            q_lora_rank: opt("attention.q_lora_rank").filter(|&x| x > 0),
            kv_lora_rank,
            qk_nope: qk - qk_rope,
            qk_rope,
            v_head,
            rope_interleave: true,
        };
        let mut f = FamilyConfig { rotary_dim: Some(qk_rope), mla: Some(mla), ..FamilyConfig::default() };
        f.yarn = Yarn::from_gguf(g, arch_name, &err)?;
        let (n_experts, top_k, expert_ff) =
            (need("expert_count")?, need("expert_used_count")?, need("expert_feed_forward_length")?);
        if top_k > n_experts {
            return Err(err(format!("{top_k} experts per token of {n_experts}")));
        }
        let first_dense = opt("leading_dense_block_count").unwrap_or(0);
        let mut moe = MoeConfig::softmax(
            n_experts,
            top_k,
            expert_ff,
            g.get_bool(&key("expert_weights_norm")).unwrap_or(false),
            (0..n_layers).map(|i| i >= first_dense).collect(),
        );
        // llama.cpp's `llama_expert_gating_func_type`.
        moe.scoring = match opt("expert_gating_func") {
            None | Some(1) => MoeScoring::Softmax,
            Some(2) => MoeScoring::Sigmoid,
            Some(other) => return Err(err(format!("{} = {other} is not supported", key("expert_gating_func")))),
        };
        moe.n_group = opt("expert_group_count").unwrap_or(1).max(1);
        moe.topk_group = opt("expert_group_used_count").unwrap_or(moe.n_group).max(1);
        moe.check_groups().map_err(err)?;
        moe.score_bias =
            (first_dense..n_layers).next().is_some_and(|i| g.tensor(&format!("blk.{i}.exp_probs_b.bias")).is_some());
        moe.routed_scaling = g.get_f32(&key("expert_weights_scale")).unwrap_or(1.0);
        moe.shared_ff = opt("expert_shared_count").unwrap_or(0) * expert_ff;
        f.moe = Some(moe);
        Ok(f)
    }

    /// For a multimodal checkpoint whose language model govbox runs (`Gemma3ForConditionalGeneration`):
    /// its `text_config` as a text model's config, with the defaults transformers' config class
    /// fills in for the keys the published configs leave out, and the top-level token ids. The
    /// vision tower is not used; that is logged.
    pub fn text_config_of(v: &Value, file: &str) -> Option<Value> {
        let arch = v.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str())?;
        if arch != "Gemma3ForConditionalGeneration" {
            return None;
        }
        let mut text = v.get("text_config").and_then(|t| t.as_object()).cloned().unwrap_or_default();
        // Gemma3TextConfig's defaults for the keys the published checkpoints omit.
        let defaults = serde_json::json!({
            "vocab_size": 262208,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "query_pre_attn_scalar": 256,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "sliding_window": 4096,
            "sliding_window_pattern": 6,
            "max_position_embeddings": 131072,
            "tie_word_embeddings": true,
        });
        for (k, d) in defaults.as_object().into_iter().flatten() {
            text.entry(k.clone()).or_insert_with(|| d.clone());
        }
        for k in ["eos_token_id", "bos_token_id"] {
            if let Some(x) = v.get(k).filter(|_| !text.contains_key(k)) {
                text.insert(k.into(), x.clone());
            }
        }
        text.insert("architectures".into(), serde_json::json!(["Gemma3ForCausalLM"]));
        log::info!("{file}: {arch}: running its language model; the vision tower is not used");
        Some(Value::Object(text))
    }

    /// The global layers' RoPE base for `arch`, where the family keeps it somewhere other than
    /// `rope_theta` (Gemma 3 in transformers 5.x).
    pub fn global_rope_theta(v: &Value, arch: DecoderArch) -> Option<f32> {
        match arch {
            DecoderArch::Gemma3 => {
                f32_of(v.get("rope_parameters").and_then(|r| r.get("full_attention")).and_then(|r| r.get("rope_theta")))
            }
            _ => None,
        }
    }

    /// RoPE inverse frequencies for a base `theta` over `rotary_dim` values, divided by the
    /// linear factor when there is one.
    pub fn inv_freq(theta: f32, rotary_dim: usize, linear: Option<f32>) -> Vec<f32> {
        let l = f64::from(linear.unwrap_or(1.0));
        (0..rotary_dim / 2)
            .map(|i| (1.0 / f64::from(theta).powf((2 * i) as f64 / rotary_dim as f64) / l) as f32)
            .collect()
    }
}

/// The head width a GGUF file declares (`attention.key_length`, else width / heads).
fn gguf_head_dim(g: &GgufFile, arch_name: &str, err: &dyn Fn(String) -> EngineError) -> Result<usize> {
    let key = |k: &str| format!("{arch_name}.{k}");
    if let Some(h) = g.get_usize(&key("attention.key_length")) {
        return Ok(h);
    }
    match (g.get_usize(&key("embedding_length")), g.get_usize(&key("attention.head_count"))) {
        (Some(w), Some(n)) if n > 0 => Ok(w / n),
        _ => Err(err(format!("missing metadata {}", key("attention.key_length")))),
    }
}

/// GLM-4's partial rotary: llama.cpp's converter writes the rotating values per head as
/// `glm4.rope.dimension_count` (`head_dim × partial_rotary_factor`) and keeps HF's q/k layout,
/// which llama.cpp rotates as adjacent pairs ("normal" RoPE) like HF's GLM-4. Without the key the
/// whole head rotates.
fn glm4_rotary_from_gguf(g: &GgufFile, arch_name: &str, err: &dyn Fn(String) -> EngineError) -> Result<Option<usize>> {
    let head_dim = gguf_head_dim(g, arch_name, err)?;
    let key = format!("{arch_name}.rope.dimension_count");
    let Some(dim) = g.get_usize(&key) else { return Ok(None) };
    if dim == 0 || dim > head_dim || !dim.is_multiple_of(2) {
        return Err(err(format!("{key} = {dim}: not an even count of at most the head's {head_dim} values")));
    }
    if g.get(&format!("{arch_name}.rope.dimension_sections")).is_some() {
        return Err(err(format!("{arch_name}.rope.dimension_sections: multimodal (M-RoPE) GLM-4 is not supported")));
    }
    Ok((dim != head_dim).then_some(dim))
}

/// Gemma 3's text model as llama.cpp's converter writes it (`gemma3.*`) and llama.cpp reads it:
/// - the window is `attention.sliding_window` (none: every layer is global);
/// - which layers slide: `attention.sliding_window_pattern`, an array of one flag per layer or
///   a period `n` (layer `i` slides unless `i % n == n - 1`), else llama.cpp's default period 6;
/// - the global layers' RoPE base is `rope.freq_base`, scaled by `rope.scaling.factor` (linear
///   unless `rope.scaling.type` says otherwise; Gemma 3 4B and larger have 8), the sliding
///   layers' base `rope.freq_base_swa`, else 10,000 (llama.cpp's default, and every released
///   Gemma 3's), unscaled;
/// - the converter does not write `query_pre_attn_scalar`: llama.cpp scales scores by
///   `key_length^-0.5`, except for the 62-layer 27B model, whose scalar is width / heads (as its
///   HF config says), and so does this;
/// - the converter has already added Gemma's `1 +` to every norm weight and dropped the
///   embedding rows past the vocabulary (the loader knows; nothing to do here).
fn gemma3_from_gguf(
    g: &GgufFile,
    arch_name: &str,
    n_layers: usize,
    f: &mut FamilyConfig,
    err: &dyn Fn(String) -> EngineError,
) -> Result<()> {
    let key = |k: &str| format!("{arch_name}.{k}");
    if let Some(cap) = g.get_f32(&key("final_logit_softcapping")).filter(|&c| c != 0.0) {
        return Err(err(format!("{} = {cap}: Gemma 3 soft-capping is not supported", key("final_logit_softcapping"))));
    }
    f.qk_norm = true;
    let head_dim = gguf_head_dim(g, arch_name, err)?;
    let scalar = match (n_layers, g.get_usize(&key("embedding_length")), g.get_usize(&key("attention.head_count"))) {
        (62, Some(w), Some(n)) if n > 0 => w / n,
        _ => head_dim,
    };
    f.query_pre_attn_scalar = Some(scalar as f32);
    f.sliding_window = g.get_usize(&key("attention.sliding_window")).filter(|&w| w > 0);
    f.sliding_layers = match (f.sliding_window, g.get(&key("attention.sliding_window_pattern"))) {
        (None, _) => vec![false; n_layers],
        (Some(_), Some(GgufValue::Array(GgufArray::Bool(flags)))) => {
            if flags.len() < n_layers {
                return Err(err(format!(
                    "{} has {} flags for {n_layers} layers",
                    key("attention.sliding_window_pattern"),
                    flags.len()
                )));
            }
            flags[..n_layers].to_vec()
        }
        (Some(_), Some(v)) => {
            let n = v.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                err(format!("{} is neither a period nor one flag per layer", key("attention.sliding_window_pattern")))
            })? as usize;
            (0..n_layers).map(|i| i % n < n - 1).collect()
        }
        (Some(_), None) => (0..n_layers).map(|i| i % 6 < 5).collect(),
    };
    f.local_rope_theta = Some(g.get_f32(&key("rope.freq_base_swa")).unwrap_or(10_000.0));
    // llama.cpp: the type defaults to linear, the factor may be under its old key, and it scales
    // the global layers only.
    let factor = g.get_f32(&key("rope.scaling.factor")).or_else(|| g.get_f32(&key("rope.scale_linear")));
    f.rope_linear_factor = match g.get_str(&key("rope.scaling.type")).unwrap_or("linear") {
        "none" => None,
        "linear" => match factor {
            None => None,
            Some(x) if x.is_finite() && x > 0.0 => (x != 1.0).then_some(x),
            Some(x) => return Err(err(format!("{} = {x} is not a positive factor", key("rope.scaling.factor")))),
        },
        other => return Err(err(format!("{} '{other}' is not supported for Gemma 3", key("rope.scaling.type")))),
    };
    Ok(())
}

fn moe_from_hf(v: &Value, n_layers: usize, file: &str) -> Result<MoeConfig> {
    let err = |detail: String| EngineError::Config { file: file.into(), detail };
    let int = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
    let n_experts = int("num_experts")
        .or_else(|| int("num_local_experts"))
        .or_else(|| int("n_routed_experts"))
        .ok_or_else(|| err("missing \"num_experts\"".into()))?;
    let top_k = int("num_experts_per_tok").ok_or_else(|| err("missing \"num_experts_per_tok\"".into()))?;
    let expert_ff = int("moe_intermediate_size").ok_or_else(|| err("missing \"moe_intermediate_size\"".into()))?;
    if n_experts == 0 || n_experts > 4096 || top_k == 0 || top_k > n_experts || expert_ff == 0 || expert_ff > 1 << 20 {
        return Err(err(format!("{n_experts} experts, {top_k} per token, {expert_ff} wide is out of range")));
    }
    let step = int("decoder_sparse_step").unwrap_or(1);
    let dense: Vec<usize> = v
        .get("mlp_only_layers")
        .and_then(|x| x.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect())
        .unwrap_or_default();
    let sparse_layers = (0..n_layers).map(|i| !dense.contains(&i) && step > 0 && (i + 1) % step == 0).collect();
    let norm = v.get("norm_topk_prob").and_then(|x| x.as_bool()).unwrap_or(false);
    Ok(MoeConfig::softmax(n_experts, top_k, expert_ff, norm, sparse_layers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::parse_gguf;
    use crate::gguf::writer::GgufWriter;

    /// A `gemma3` or `glm4` file's metadata: 12 layers of 4 heads of 16 over a width of 64, plus
    /// `extra`.
    fn family(arch: DecoderArch, name: &str, extra: &[(&str, GgufValue)]) -> Result<FamilyConfig> {
        let mut w = GgufWriter::new();
        w.kv("general.architecture", GgufValue::String(name.into()))
            .kv(&format!("{name}.embedding_length"), GgufValue::U32(64))
            .kv(&format!("{name}.attention.head_count"), GgufValue::U32(4))
            .kv(&format!("{name}.attention.key_length"), GgufValue::U32(16));
        for (k, v) in extra {
            w.kv(&format!("{name}.{k}"), v.clone());
        }
        let g = parse_gguf(&w.to_bytes()).unwrap();
        FamilyConfig::from_gguf(&g, arch, name, 12, "test.gguf")
    }

    fn gemma(extra: &[(&str, GgufValue)]) -> Result<FamilyConfig> {
        family(DecoderArch::Gemma3, "gemma3", extra)
    }

    #[test]
    fn gemma3_layers_slide_as_llama_cpp_reads_the_file() {
        let window = ("attention.sliding_window", GgufValue::U32(512));
        // No pattern: llama.cpp's default period of 6, every sixth layer global.
        let f = gemma(std::slice::from_ref(&window)).unwrap();
        let globals: Vec<usize> = (0..12).filter(|&i| !f.sliding_layers[i]).collect();
        assert_eq!(globals, [5, 11]);
        assert_eq!(
            (f.sliding_window, f.local_rope_theta, f.query_pre_attn_scalar),
            (Some(512), Some(10_000.0), Some(16.0))
        );
        // A period.
        let f = gemma(&[window.clone(), ("attention.sliding_window_pattern", GgufValue::U32(3))]).unwrap();
        assert_eq!((0..12).filter(|&i| !f.sliding_layers[i]).collect::<Vec<_>>(), [2, 5, 8, 11]);
        // One flag per layer, and the sliding layers' own base.
        let flags: Vec<bool> = (0..12).map(|i| i != 0).collect();
        let f = gemma(&[
            window.clone(),
            ("attention.sliding_window_pattern", GgufValue::Array(GgufArray::Bool(flags.clone()))),
            ("rope.freq_base_swa", GgufValue::F32(5_000.0)),
        ])
        .unwrap();
        assert_eq!((f.sliding_layers, f.local_rope_theta), (flags, Some(5_000.0)));
        // No window: every layer global.
        assert!(gemma(&[]).unwrap().sliding_layers.iter().all(|&s| !s));
        // Linear scaling of the global layers; other kinds are refused by name.
        let linear = gemma(&[
            ("rope.scaling.type", GgufValue::String("linear".into())),
            ("rope.scaling.factor", GgufValue::F32(8.0)),
        ])
        .unwrap();
        assert_eq!(linear.rope_linear_factor, Some(8.0));
        let untyped = gemma(&[("rope.scaling.factor", GgufValue::F32(4.0))]).unwrap();
        assert_eq!(untyped.rope_linear_factor, Some(4.0));
        let e = gemma(&[("rope.scaling.type", GgufValue::String("yarn".into()))]).unwrap_err().to_string();
        assert!(e.contains("gemma3.rope.scaling.type 'yarn'"), "{e}");
        let e = gemma(&[window, ("attention.sliding_window_pattern", GgufValue::Array(GgufArray::Bool(vec![true])))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 flags for 12 layers"), "{e}");
    }

    #[test]
    fn glm4_rotates_the_dimension_count_the_converter_writes() {
        let glm = |extra: &[(&str, GgufValue)]| family(DecoderArch::Glm4, "glm4", extra);
        assert_eq!(glm(&[("rope.dimension_count", GgufValue::U32(8))]).unwrap().rotary_dim, Some(8));
        assert_eq!(glm(&[("rope.dimension_count", GgufValue::U32(16))]).unwrap().rotary_dim, None);
        assert_eq!(glm(&[]).unwrap().rotary_dim, None);
        for bad in [0, 7, 18] {
            let e = glm(&[("rope.dimension_count", GgufValue::U32(bad))]).unwrap_err().to_string();
            assert!(e.contains("glm4.rope.dimension_count"), "{e}");
        }
    }
}
