//! Where each decoder tensor lives in HF's and GGUF's naming schemes, per family.

use crate::config::DecoderArch;

/// The parts of a decoder layer the loader asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    AttnNorm,
    Q,
    K,
    V,
    O,
    QNorm,
    KNorm,
    /// Norm of the attention output before the residual add (GLM-4, Gemma 3).
    PostAttnNorm,
    /// Norm before the MLP.
    FfnNorm,
    /// Norm of the MLP output before the residual add (GLM-4, Gemma 3).
    PostFfnNorm,
    Gate,
    Up,
    Down,
    /// Gate and up projections in one matrix, gate first (GLM-4).
    GateUp,
    /// The MoE router.
    Router,
}

/// The parts of a multi-head latent attention layer (DeepSeek) besides `Q` and `O`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MlaPart {
    /// Query compression and its norm.
    QA,
    QANorm,
    /// Query expansion from the compressed query.
    QB,
    /// The latent and the RoPE key, in one matrix (`kv_a_proj_with_mqa`).
    KvA,
    KvANorm,
    /// Per-head keys and values from the latent, in one matrix (HF, older GGUF files).
    KvB,
    /// `KvB`'s key part, per head and transposed (`[heads, rank, nope]`), and its value part
    /// (`[heads, v_head, rank]`): what llama.cpp's converter writes now.
    KB,
    VB,
}

/// A naming scheme: HF (per family) or GGUF.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Names {
    pub gguf: bool,
    pub arch: DecoderArch,
    /// HF: what precedes `layers.`, `embed_tokens` and `norm` (`model.`, or the language model's
    /// part of a multimodal checkpoint).
    pub prefix: &'static str,
}

impl Names {
    /// HF multimodal checkpoints keep the text model under one of these (transformers 5.x saves
    /// the first, the published Gemma 3 checkpoints use the second). A bare decoder saved without
    /// its causal-LM wrapper (Qwen3-Embedding) has no prefix at all.
    pub const HF_PREFIXES: [&'static str; 4] = ["model.", "model.language_model.", "language_model.model.", ""];

    pub fn embed(self) -> String {
        if self.gguf { "token_embd.weight".into() } else { format!("{}embed_tokens.weight", self.prefix) }
    }

    pub fn norm(self) -> String {
        if self.gguf { "output_norm.weight".into() } else { format!("{}norm.weight", self.prefix) }
    }

    /// HF: `rest` of layer `i` (`self_attn.q_proj.weight`, ...).
    pub fn hf_layer(self, i: usize, rest: &str) -> String {
        format!("{}layers.{i}.{rest}", self.prefix)
    }

    pub fn lm_head(self) -> &'static str {
        if self.gguf { "output.weight" } else { "lm_head.weight" }
    }

    /// The prefix of layer `i`'s tensor for `part` (`.weight` or `.bias` follows).
    pub fn layer(self, i: usize, part: Part) -> String {
        let (gemma, glm) = (self.arch == DecoderArch::Gemma3, self.arch == DecoderArch::Glm4);
        if self.gguf {
            let p = match part {
                Part::AttnNorm => "attn_norm",
                Part::Q => "attn_q",
                Part::K => "attn_k",
                Part::V => "attn_v",
                Part::O => "attn_output",
                Part::QNorm => "attn_q_norm",
                Part::KNorm => "attn_k_norm",
                Part::PostAttnNorm => "post_attention_norm",
                Part::FfnNorm => "ffn_norm",
                Part::PostFfnNorm => "post_ffw_norm",
                Part::Gate => "ffn_gate",
                Part::Up | Part::GateUp => "ffn_up",
                Part::Down => "ffn_down",
                Part::Router => "ffn_gate_inp",
            };
            return format!("blk.{i}.{p}");
        }
        let p = match part {
            Part::AttnNorm => "input_layernorm",
            Part::Q => "self_attn.q_proj",
            Part::K => "self_attn.k_proj",
            Part::V => "self_attn.v_proj",
            Part::O => "self_attn.o_proj",
            Part::QNorm => "self_attn.q_norm",
            Part::KNorm => "self_attn.k_norm",
            Part::PostAttnNorm if glm => "post_self_attn_layernorm",
            Part::PostAttnNorm => "post_attention_layernorm",
            Part::FfnNorm if gemma => "pre_feedforward_layernorm",
            Part::FfnNorm => "post_attention_layernorm",
            Part::PostFfnNorm if glm => "post_mlp_layernorm",
            Part::PostFfnNorm => "post_feedforward_layernorm",
            Part::Gate => "mlp.gate_proj",
            Part::Up => "mlp.up_proj",
            Part::Down => "mlp.down_proj",
            Part::GateUp => "mlp.gate_up_proj",
            Part::Router => "mlp.gate",
        };
        self.hf_layer(i, p)
    }

    /// Layer `i`'s MLA tensor `part` (`.weight` included). HF has no split `KB`/`VB`.
    pub fn mla(self, i: usize, part: MlaPart) -> String {
        let (gguf, hf) = match part {
            MlaPart::QA => ("attn_q_a", "q_a_proj"),
            MlaPart::QANorm => ("attn_q_a_norm", "q_a_layernorm"),
            MlaPart::QB => ("attn_q_b", "q_b_proj"),
            MlaPart::KvA => ("attn_kv_a_mqa", "kv_a_proj_with_mqa"),
            MlaPart::KvANorm => ("attn_kv_a_norm", "kv_a_layernorm"),
            MlaPart::KvB => ("attn_kv_b", "kv_b_proj"),
            MlaPart::KB => ("attn_k_b", "k_b_proj"),
            MlaPart::VB => ("attn_v_b", "v_b_proj"),
        };
        if self.gguf { format!("blk.{i}.{gguf}.weight") } else { self.hf_layer(i, &format!("self_attn.{hf}.weight")) }
    }

    /// Expert `e`'s projection (`Gate`, `Up` or `Down`) of layer `i`, HF naming; GGUF stacks the
    /// experts in one tensor per projection (see [`Names::stacked_experts`]).
    pub fn expert(self, i: usize, e: usize, part: Part) -> String {
        let p = match part {
            Part::Gate => "gate_proj",
            Part::Up => "up_proj",
            _ => "down_proj",
        };
        self.hf_layer(i, &format!("mlp.experts.{e}.{p}.weight"))
    }

    /// GGUF's stacked expert tensor of layer `i` for `part`.
    pub fn stacked_experts(self, i: usize, part: Part) -> String {
        let p = match part {
            Part::Gate => "ffn_gate_exps",
            Part::Up => "ffn_up_exps",
            _ => "ffn_down_exps",
        };
        format!("blk.{i}.{p}.weight")
    }
}
