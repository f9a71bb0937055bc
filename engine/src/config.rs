//! Decoder model configuration from `config.json` (transformers 4.x and 5.x styles) or GGUF
//! metadata.

use std::path::Path;

use serde_json::Value;

use crate::family::FamilyConfig;
use crate::gguf::GgufFile;
use crate::weights::read_small;
use crate::{EngineError, Result};

/// Decoder architectures govbox implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecoderArch {
    /// `LlamaForCausalLM` / GGUF `llama`.
    Llama,
    /// `Qwen2ForCausalLM` / GGUF `qwen2` (q/k/v biases).
    Qwen2,
    /// `Qwen3ForCausalLM`: Qwen2 without biases, with per-head q/k RMSNorm.
    Qwen3,
    /// `Qwen3MoeForCausalLM`: Qwen3 attention with mixture-of-experts MLPs.
    Qwen3Moe,
    /// `Glm4ForCausalLM`: partial interleaved rotary, norms after attention and MLP, fused gate/up.
    Glm4,
    /// `Gemma3ForCausalLM` (text): GeGLU, (1 + w) norms, q/k norms, sliding-window layers.
    Gemma3,
    /// `DeepseekV3ForCausalLM` (also R1): multi-head latent attention and MoE with shared experts.
    DeepseekV3,
}

impl DecoderArch {
    /// The HF class name.
    pub fn hf_name(self) -> &'static str {
        match self {
            DecoderArch::Llama => "LlamaForCausalLM",
            DecoderArch::Qwen2 => "Qwen2ForCausalLM",
            DecoderArch::Qwen3 => "Qwen3ForCausalLM",
            DecoderArch::Qwen3Moe => "Qwen3MoeForCausalLM",
            DecoderArch::Glm4 => "Glm4ForCausalLM",
            DecoderArch::Gemma3 => "Gemma3ForCausalLM",
            DecoderArch::DeepseekV3 => "DeepseekV3ForCausalLM",
        }
    }
}

/// Llama-3-style RoPE frequency scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3Scaling {
    /// `factor`.
    pub factor: f32,
    /// `low_freq_factor`.
    pub low_freq_factor: f32,
    /// `high_freq_factor`.
    pub high_freq_factor: f32,
    /// `original_max_position_embeddings`.
    pub original_max_position: f32,
}

/// Everything the decoder forward pass needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Architecture.
    pub arch: DecoderArch,
    /// Vocabulary size (rows of the embedding table).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// KV heads.
    pub n_kv_heads: usize,
    /// Head dimension (explicit `head_dim`, else `hidden_size / n_heads`).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// Optional llama3 RoPE scaling.
    pub rope_scaling: Option<Llama3Scaling>,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the embedding table.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections have biases.
    pub attention_bias: bool,
    /// End-of-sequence token ids from the config (generation_config adds more).
    pub eos_token_ids: Vec<u32>,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// What the family adds to the Llama shape.
    pub family: FamilyConfig,
}

fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => vec![],
    }
}

impl DecoderConfig {
    /// Reads `config.json` (and `generation_config.json` when present) from a HF folder.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let file = path.display().to_string();
        let text = read_small(&path, 4 << 20)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::Config { file: file.clone(), detail: format!("not valid JSON: {e}") })?;
        let mut cfg = Self::from_hf_json(&v, &file)?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let g: Value = serde_json::from_str(&read_small(&gen_path, 1 << 20)?).map_err(|e| EngineError::Config {
                file: gen_path.display().to_string(),
                detail: format!("not valid JSON: {e}"),
            })?;
            for id in ids_of(g.get("eos_token_id")) {
                if !cfg.eos_token_ids.contains(&id) {
                    cfg.eos_token_ids.push(id);
                }
            }
            if cfg.bos_token_id.is_none() {
                cfg.bos_token_id = ids_of(g.get("bos_token_id")).first().copied();
            }
        }
        Ok(cfg)
    }

    /// Parses a `config.json` value.
    pub fn from_hf_json(v: &Value, file: &str) -> Result<Self> {
        // A multimodal checkpoint's language model: its text_config (vision towers ignored).
        if let Some(text) = FamilyConfig::text_config_of(v, file) {
            return Self::from_hf_json(&text, file);
        }
        let err = |detail: String| EngineError::Config { file: file.into(), detail };
        let arch_name = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .ok_or_else(|| err("no \"architectures\" entry".into()))?;
        let arch = match arch_name {
            "LlamaForCausalLM" => DecoderArch::Llama,
            "Qwen2ForCausalLM" => DecoderArch::Qwen2,
            "Qwen3ForCausalLM" => DecoderArch::Qwen3,
            "Qwen3MoeForCausalLM" => DecoderArch::Qwen3Moe,
            "Glm4ForCausalLM" => DecoderArch::Glm4,
            "Gemma3ForCausalLM" => DecoderArch::Gemma3,
            "DeepseekV3ForCausalLM" => DecoderArch::DeepseekV3,
            other => return Err(EngineError::UnknownArchitecture(other.into())),
        };
        let int = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| err(format!("missing or non-integer \"{k}\"")))
        };
        let hidden_size = int("hidden_size")?;
        let n_heads = int("num_attention_heads")?;
        let n_kv_heads = v.get("num_key_value_heads").and_then(|x| x.as_u64()).map_or(n_heads, |x| x as usize);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(err(format!("{n_heads} attention heads cannot share {n_kv_heads} KV heads")));
        }
        let head_dim = match v.get("head_dim").and_then(|x| x.as_u64()) {
            Some(h) => h as usize,
            None => {
                if hidden_size % n_heads != 0 {
                    return Err(err(format!("hidden_size {hidden_size} is not a multiple of {n_heads} heads")));
                }
                hidden_size / n_heads
            }
        };
        // transformers 5.x moved RoPE settings into "rope_parameters"; 4.x keeps "rope_theta" and
        // "rope_scaling" at the top level.
        let rope = v.get("rope_parameters");
        let rope_theta = rope
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| v.get("rope_theta"))
            .and_then(|x| x.as_f64())
            .map(|x| x as f32)
            .or_else(|| FamilyConfig::global_rope_theta(v, arch))
            .unwrap_or(10_000.0);
        // Gemma 3 (per layer type) and DeepSeek (YaRN) scaling are read in the family part.
        let scaling = rope
            .filter(|r| r.get("rope_type").is_some())
            .or_else(|| v.get("rope_scaling"))
            .filter(|_| !matches!(arch, DecoderArch::Gemma3 | DecoderArch::DeepseekV3));
        let rope_scaling = match scaling.filter(|s| !s.is_null()) {
            None => None,
            Some(s) => {
                let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => {
                        let f = |k: &str| {
                            s.get(k)
                                .and_then(|x| x.as_f64())
                                .map(|x| x as f32)
                                .ok_or_else(|| err(format!("rope scaling: no {k}")))
                        };
                        Some(Llama3Scaling {
                            factor: f("factor")?,
                            low_freq_factor: f("low_freq_factor")?,
                            high_freq_factor: f("high_freq_factor")?,
                            original_max_position: f("original_max_position_embeddings")?,
                        })
                    }
                    other => return Err(err(format!("RoPE scaling type '{other}' is not supported"))),
                }
            }
        };
        let cfg = Self {
            arch,
            vocab_size: int("vocab_size")?,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            n_layers: int("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_norm_eps: v.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: v.get("max_position_embeddings").and_then(|x| x.as_u64()).unwrap_or(4096) as usize,
            tie_word_embeddings: v.get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false),
            attention_bias: v
                .get("attention_bias")
                .and_then(|x| x.as_bool())
                .unwrap_or(matches!(arch, DecoderArch::Qwen2 | DecoderArch::Glm4)),
            eos_token_ids: ids_of(v.get("eos_token_id")),
            bos_token_id: ids_of(v.get("bos_token_id")).first().copied(),
            family: FamilyConfig::from_hf_json(v, arch, int("num_hidden_layers")?, head_dim, file)?,
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Reads the configuration from GGUF metadata (`{arch}.*` keys).
    pub fn from_gguf(g: &GgufFile, file: &str) -> Result<Self> {
        let err = |detail: String| EngineError::Config { file: file.into(), detail };
        let arch_name = g.architecture().ok_or_else(|| err("no general.architecture".into()))?;
        let arch = match arch_name {
            "llama" => DecoderArch::Llama,
            "qwen2" => DecoderArch::Qwen2,
            "qwen3" => DecoderArch::Qwen3,
            "qwen3moe" => DecoderArch::Qwen3Moe,
            "deepseek2" => DecoderArch::DeepseekV3,
            "gemma3" => DecoderArch::Gemma3,
            "glm4" => DecoderArch::Glm4,
            other => return Err(EngineError::UnknownArchitecture(other.into())),
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let n_layers = main_layers(g, arch_name, int_of(g, &key("block_count"), file)?, file)?;
        let int = |k: &str| g.get_usize(&key(k)).ok_or_else(|| err(format!("missing metadata {}", key(k))));
        let hidden_size = int("embedding_length")?;
        let n_heads = int("attention.head_count")?;
        let (n_kv_heads, head_dim) = if arch == DecoderArch::DeepseekV3 {
            Self::deepseek_heads_from_gguf(g, arch_name, n_heads, file)?
        } else {
            let n_kv_heads = g.get_usize(&key("attention.head_count_kv")).unwrap_or(n_heads);
            let head_dim = match g.get_usize(&key("attention.key_length")) {
                Some(h) => h,
                None if n_heads > 0 && hidden_size % n_heads == 0 => hidden_size / n_heads,
                None => {
                    return Err(err(format!("embedding_length {hidden_size} is not a multiple of {n_heads} heads")));
                }
            };
            (n_kv_heads, head_dim)
        };
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(err(format!("{n_heads} attention heads cannot share {n_kv_heads} KV heads")));
        }
        let towers = g.tensors.iter().filter(|t| t.name.starts_with("v.") || t.name.starts_with("mm.")).count();
        if towers > 0 {
            log::info!("{file}: {towers} vision-tower tensors (v.*, mm.*) are not used; running the language model");
        }
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| EngineError::MissingTensor { file: file.into(), tensor: "token_embd.weight".into() })?;
        let vocab_size = embd.shape().first().copied().unwrap_or(0);
        let cfg = Self {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length").or_else(|e| {
                // A MoE file whose every layer is sparse may leave the dense width out.
                g.get_usize(&key("expert_feed_forward_length"))
                    .filter(|_| matches!(arch, DecoderArch::Qwen3Moe | DecoderArch::DeepseekV3))
                    .ok_or(e)
            })?,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_norm_eps: g.get_f32(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            rope_theta: g.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling: None,
            max_position_embeddings: g.get_usize(&key("context_length")).unwrap_or(2048),
            tie_word_embeddings: g.tensor("output.weight").is_none(),
            attention_bias: g.tensor("blk.0.attn_q.bias").is_some(),
            eos_token_ids: g.get_usize("tokenizer.ggml.eos_token_id").map(|x| vec![x as u32]).unwrap_or_default(),
            bos_token_id: g.get_usize("tokenizer.ggml.bos_token_id").map(|x| x as u32),
            family: FamilyConfig::from_gguf(g, arch, arch_name, n_layers, file)?,
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// DeepSeek's KV heads and head size as the HF path has them: llama.cpp's converter writes
    /// its MLA as one KV head of `kv_lora_rank + rope` values, but every attention head has its
    /// own keys and values, and `head_dim` is the RoPE part (`rope.dimension_count`), as HF's
    /// config has it. The MLA sizes themselves are in [`FamilyConfig::mla`].
    fn deepseek_heads_from_gguf(g: &GgufFile, arch_name: &str, n_heads: usize, file: &str) -> Result<(usize, usize)> {
        let k = format!("{arch_name}.rope.dimension_count");
        let rope = g
            .get_usize(&k)
            .ok_or_else(|| EngineError::Config { file: file.into(), detail: format!("missing metadata {k}") })?;
        Ok((n_heads, rope))
    }

    fn validate(&self, file: &str) -> Result<()> {
        let err = |detail: String| Err(EngineError::Config { file: file.into(), detail });
        const MAX_DIM: usize = 1 << 20;
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.n_layers),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 || v > MAX_DIM {
                return err(format!("{name} = {v} is out of range"));
            }
        }
        if self.n_heads > 4096 || self.n_layers > 1024 {
            return err(format!("{} heads / {} layers is out of range", self.n_heads, self.n_layers));
        }
        if !self.head_dim.is_multiple_of(2) {
            return err(format!("head_dim {} is odd; RoPE needs pairs", self.head_dim));
        }
        Ok(())
    }

    /// RoPE inverse frequencies, `theta^(-2i/d)`, with llama3 scaling when configured.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / (self.rope_theta as f64).powf((2 * i) as f64 / d as f64);
                match &self.rope_scaling {
                    None => f as f32,
                    Some(s) => {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let low = s.original_max_position as f64 / s.low_freq_factor as f64;
                        let high = s.original_max_position as f64 / s.high_freq_factor as f64;
                        let r = if wavelen < high {
                            f
                        } else if wavelen > low {
                            f / s.factor as f64
                        } else {
                            let t = (s.original_max_position as f64 / wavelen - s.low_freq_factor as f64)
                                / (s.high_freq_factor - s.low_freq_factor) as f64;
                            (1.0 - t) * f / s.factor as f64 + t * f
                        };
                        r as f32
                    }
                }
            })
            .collect()
    }
}

fn int_of(g: &GgufFile, key: &str, file: &str) -> Result<usize> {
    g.get_usize(key).ok_or_else(|| EngineError::Config { file: file.into(), detail: format!("missing metadata {key}") })
}

/// The decoder layers a GGUF file runs: llama.cpp's converter counts a model's multi-token-
/// prediction layers (`{arch}.nextn_predict_layers`, GLM-4.x and DeepSeek) in `block_count` and
/// puts them last; they are not used here, so they are left out (with a log line).
fn main_layers(g: &GgufFile, arch_name: &str, block_count: usize, file: &str) -> Result<usize> {
    let nextn = g.get_usize(&format!("{arch_name}.nextn_predict_layers")).unwrap_or(0);
    if nextn == 0 {
        return Ok(block_count);
    }
    if nextn >= block_count {
        return Err(EngineError::Config {
            file: file.into(),
            detail: format!("{arch_name}.nextn_predict_layers {nextn} leaves none of {block_count} blocks"),
        });
    }
    log::info!("{file}: the last {nextn} of {block_count} blocks are multi-token-prediction layers; they are not used");
    Ok(block_count - nextn)
}
