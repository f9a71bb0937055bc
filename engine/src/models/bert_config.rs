//! The shape of a BERT-family encoder (BERT, XLM-RoBERTa), read from `config.json`.
//!
//! The two families share the encoder blocks; they differ in the embeddings. XLM-RoBERTa
//! (and RoBERTa) number positions from `pad_token_id + 1`, a leftover of fairseq, where padding
//! tokens took position `pad_token_id` and real tokens followed it. An input therefore has room
//! for `max_position_embeddings - pad_token_id - 1` tokens (bge-m3: 8,194 - 2 = 8,192), not
//! `max_position_embeddings`.

use std::path::Path;

use serde_json::Value;

use crate::weights::read_small;
use crate::{EngineError, Result};

/// Largest `config.json` read. Real BERT configs are about 1 KiB.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Sanity caps on the shape a config may declare, far above any real BERT (BERT-large is 1024
/// wide, 24 layers, 16 heads, 4096 intermediate), so that a hostile config cannot make the
/// loader compute absurd sizes.
const MAX_HIDDEN: usize = 1 << 16;
const MAX_LAYERS: usize = 1024;
const MAX_INTERMEDIATE: usize = 1 << 18;
const MAX_POSITIONS: usize = 1 << 20;
const MAX_VOCAB: usize = 1 << 24;
const MAX_TYPE_VOCAB: usize = 1 << 10;
/// Most labels a sequence-classification head may have (rerankers have one).
const MAX_LABELS: usize = 1 << 10;

/// Architectures read as plain BERT (positions from 0).
const BERT_ARCHS: [&str; 2] = ["BertModel", "BertForSequenceClassification"];
/// Architectures read as XLM-RoBERTa (positions from `pad_token_id + 1`).
const XLMR_ARCHS: [&str; 4] =
    ["XLMRobertaModel", "XLMRobertaForSequenceClassification", "RobertaModel", "RobertaForSequenceClassification"];

/// Which encoder family a config describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncoderFamily {
    /// BERT: positions from 0, weights optionally under `bert.`.
    Bert,
    /// XLM-RoBERTa / RoBERTa: positions from `pad_token_id + 1`, weights optionally under
    /// `roberta.`.
    XlmRoberta,
}

impl EncoderFamily {
    /// The prefix task-head checkpoints put before the encoder's weight names.
    pub fn weight_prefix(self) -> &'static str {
        match self {
            EncoderFamily::Bert => "bert.",
            EncoderFamily::XlmRoberta => "roberta.",
        }
    }
}

/// The shape of a BERT-family encoder, from `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// BERT or XLM-RoBERTa.
    pub family: EncoderFamily,
    /// The first architecture the config names (`BertModel` when it names none).
    pub architecture: String,
    /// Rows of the word embedding table.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Encoder layers.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Rows of the position embedding table.
    pub max_position_embeddings: usize,
    /// The position of an input's first token: 0 for BERT, `pad_token_id + 1` for XLM-RoBERTa.
    pub position_offset: usize,
    /// Rows of the token-type embedding table.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
    /// Outputs of a sequence-classification head (`…ForSequenceClassification`), from
    /// `id2label` or `num_labels`; `None` for a bare encoder.
    pub num_labels: Option<usize>,
}

impl BertConfig {
    /// Reads `dir/config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let file = path.display().to_string();
        let text = read_small(&path, MAX_CONFIG_BYTES)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::Config { file: file.clone(), detail: format!("not valid JSON: {e}") })?;
        Self::from_json(&v, &file)
    }

    /// The first architecture `config.json` names, if any (for telling model kinds apart
    /// without parsing the whole config).
    pub fn architecture_of(v: &Value) -> Option<&str> {
        v.get("architectures").and_then(|a| a.as_array()).and_then(|a| a.first()).and_then(Value::as_str)
    }

    /// Whether `arch` is an encoder architecture this module reads.
    pub fn is_encoder_architecture(arch: &str) -> bool {
        BERT_ARCHS.contains(&arch) || XLMR_ARCHS.contains(&arch)
    }

    /// Parses a `config.json` object; `file` names it in errors.
    ///
    /// Fields that transformers' configs default (`layer_norm_eps`, `type_vocab_size`,
    /// `hidden_act`, `position_embedding_type`, `pad_token_id`) take the same defaults here; the
    /// sizes must be present.
    pub fn from_json(v: &Value, file: &str) -> Result<Self> {
        let err = |detail: String| EngineError::Config { file: file.to_string(), detail };
        let size = |key: &str, max: usize| -> Result<usize> {
            let n = v
                .get(key)
                .ok_or_else(|| err(format!("'{key}' is missing")))?
                .as_u64()
                .ok_or_else(|| err(format!("'{key}' is not a non-negative integer")))?;
            match usize::try_from(n) {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(err(format!("'{key}' is {n}; it must be between 1 and {max}"))),
            }
        };
        let architecture = match v.get("architectures") {
            None => "BertModel".to_string(),
            Some(_) => Self::architecture_of(v).unwrap_or("?").to_string(),
        };
        let family = if BERT_ARCHS.contains(&architecture.as_str()) {
            EncoderFamily::Bert
        } else if XLMR_ARCHS.contains(&architecture.as_str()) {
            EncoderFamily::XlmRoberta
        } else {
            return Err(err(format!(
                "architecture '{architecture}' is not a supported encoder (supported: {}, {})",
                BERT_ARCHS.join(", "),
                XLMR_ARCHS.join(", ")
            )));
        };
        let act = v.get("hidden_act").map_or(Some("gelu"), |a| a.as_str());
        if act != Some("gelu") {
            return Err(err(format!(
                "hidden_act {} is not supported: BERT encoders need \"gelu\" (the exact erf form)",
                v.get("hidden_act").map_or_else(String::new, |a| a.to_string())
            )));
        }
        let pos = v.get("position_embedding_type").map_or(Some("absolute"), |a| a.as_str());
        if pos != Some("absolute") {
            return Err(err(format!(
                "position_embedding_type {} is not supported (only \"absolute\")",
                v.get("position_embedding_type").map_or_else(String::new, |a| a.to_string())
            )));
        }
        let max_position_embeddings = size("max_position_embeddings", MAX_POSITIONS)?;
        let position_offset = match family {
            EncoderFamily::Bert => 0,
            EncoderFamily::XlmRoberta => {
                // transformers' XLMRobertaConfig defaults pad_token_id to 1.
                let pad = match v.get("pad_token_id") {
                    None | Some(Value::Null) => 1,
                    Some(p) => p
                        .as_u64()
                        .and_then(|p| usize::try_from(p).ok())
                        .ok_or_else(|| err(format!("pad_token_id {p} is not a non-negative integer")))?,
                };
                if pad + 2 > max_position_embeddings {
                    return Err(err(format!(
                        "pad_token_id {pad} leaves no positions of max_position_embeddings {max_position_embeddings} \
                         (XLM-RoBERTa positions start at pad_token_id + 1)"
                    )));
                }
                pad + 1
            }
        };
        let num_labels = if architecture.ends_with("ForSequenceClassification") {
            Some(match v.get("id2label").and_then(Value::as_object) {
                Some(labels) if !labels.is_empty() && labels.len() <= MAX_LABELS => labels.len(),
                _ => size("num_labels", MAX_LABELS)
                    .map_err(|_| err("a …ForSequenceClassification config needs id2label or num_labels".into()))?,
            })
        } else {
            None
        };
        let cfg = Self {
            family,
            architecture,
            vocab_size: size("vocab_size", MAX_VOCAB)?,
            hidden_size: size("hidden_size", MAX_HIDDEN)?,
            n_layers: size("num_hidden_layers", MAX_LAYERS)?,
            n_heads: size("num_attention_heads", MAX_HIDDEN)?,
            intermediate_size: size("intermediate_size", MAX_INTERMEDIATE)?,
            max_position_embeddings,
            position_offset,
            type_vocab_size: if v.get("type_vocab_size").is_some() {
                size("type_vocab_size", MAX_TYPE_VOCAB)?
            } else {
                2
            },
            layer_norm_eps: match v.get("layer_norm_eps") {
                None => 1e-12,
                Some(e) => e
                    .as_f64()
                    .filter(|e| e.is_finite() && *e > 0.0 && *e < 1.0)
                    .ok_or_else(|| err(format!("layer_norm_eps {e} is not a small positive number")))?
                    as f32,
            },
            num_labels,
        };
        if !cfg.hidden_size.is_multiple_of(cfg.n_heads) {
            return Err(err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.n_heads
            )));
        }
        Ok(cfg)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.n_heads
    }

    /// The most tokens (special tokens included) one input may have: the position rows left
    /// after the offset.
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings - self.position_offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlmr_json() -> Value {
        serde_json::json!({
            "architectures": ["XLMRobertaForSequenceClassification"], "hidden_act": "gelu", "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 12,
            "max_position_embeddings": 514, "type_vocab_size": 1, "vocab_size": 20, "pad_token_id": 1,
            "id2label": {"0": "LABEL_0"}
        })
    }

    #[test]
    fn xlm_roberta_positions_start_after_the_padding_index() {
        let c = BertConfig::from_json(&xlmr_json(), "c.json").unwrap();
        assert_eq!(
            (c.family, c.position_offset, c.max_tokens(), c.num_labels),
            (EncoderFamily::XlmRoberta, 2, 512, Some(1))
        );
        let mut j = xlmr_json();
        j["architectures"] = serde_json::json!(["BertModel"]);
        let b = BertConfig::from_json(&j, "c.json").unwrap();
        assert_eq!((b.family, b.position_offset, b.max_tokens(), b.num_labels), (EncoderFamily::Bert, 0, 514, None));
        j["pad_token_id"] = 513.into();
        j["architectures"] = serde_json::json!(["XLMRobertaModel"]);
        let e = BertConfig::from_json(&j, "c.json").unwrap_err().to_string();
        assert!(e.contains("pad_token_id 513 leaves no positions"), "{e}");
    }

    #[test]
    fn a_classifier_needs_its_labels_and_unknown_architectures_are_named() {
        let mut j = xlmr_json();
        j.as_object_mut().unwrap().remove("id2label");
        let e = BertConfig::from_json(&j, "c.json").unwrap_err().to_string();
        assert!(e.contains("needs id2label or num_labels"), "{e}");
        j["num_labels"] = 3.into();
        assert_eq!(BertConfig::from_json(&j, "c.json").unwrap().num_labels, Some(3));
        j["architectures"] = serde_json::json!(["DebertaV2Model"]);
        let e = BertConfig::from_json(&j, "c.json").unwrap_err().to_string();
        assert!(e.contains("'DebertaV2Model' is not a supported encoder"), "{e}");
    }
}
