//! What an embedding model's folder says about the network under its pooling (an encoder, or
//! a decoder used without its LM head) and about the prompts put before its inputs
//! (`config_sentence_transformers.json`). Read before any weight is mapped.

use std::path::Path;

use serde_json::Value;

use crate::causal::CausalRunner;
use crate::config::DecoderConfig;
use crate::embed::{EmbedInputError, PoolingMode, read_json};
use crate::models::bert::{BertConfig, BertModel};
use crate::{EngineError, Result};

/// Largest `config_sentence_transformers.json` read: a few prompts of a few hundred bytes.
const MAX_ST_CONFIG: u64 = 256 << 10;

/// The network under the pooling.
#[derive(Debug)]
pub(crate) enum Net {
    /// A BERT or XLM-RoBERTa encoder.
    Bert(Box<BertModel>),
    /// A decoder without its LM head (Qwen3-Embedding).
    Decoder(Box<CausalRunner>),
}

/// The encoder's `config.json`, read before any weight.
pub(crate) enum Backbone {
    Bert(BertConfig),
    Decoder(Box<DecoderConfig>),
}

impl Backbone {
    /// Reads `config`: an encoder architecture (`BertModel`, `XLMRobertaModel`, …) or a decoder
    /// (`Qwen3ForCausalLM` as Qwen3-Embedding names itself), which must pool the last token.
    pub(crate) fn read(config: &Path, encoder_dir: &Path, pooling: PoolingMode) -> Result<Self> {
        let v = read_json(config, 1 << 20)?;
        let file = config.display().to_string();
        if BertConfig::architecture_of(&v).is_none_or(BertConfig::is_encoder_architecture) {
            let cfg = BertConfig::from_hf_dir(encoder_dir)?;
            if cfg.num_labels.is_some() {
                return Err(EngineError::Config {
                    file,
                    detail: format!(
                        "{} is a classifier (a cross-encoder reranker), not an embedding encoder",
                        cfg.architecture
                    ),
                });
            }
            return Ok(Self::Bert(cfg));
        }
        let cfg = DecoderConfig::from_hf_dir(encoder_dir)?;
        if pooling != PoolingMode::LastToken {
            return Err(EngineError::Config {
                file,
                detail: format!(
                    "{} is a decoder: its embedding is its last token's state (pooling 'lasttoken'), not '{}' pooling",
                    cfg.arch.hf_name(),
                    pooling.name()
                ),
            });
        }
        Ok(Self::Decoder(Box::new(cfg)))
    }

    pub(crate) fn hidden_size(&self) -> usize {
        match self {
            Self::Bert(c) => c.hidden_size,
            Self::Decoder(c) => c.hidden_size,
        }
    }

    /// The most tokens the network's positions allow.
    pub(crate) fn positions(&self) -> usize {
        match self {
            Self::Bert(c) => c.max_tokens(),
            Self::Decoder(c) => c.max_position_embeddings,
        }
    }
}

/// `prompts` and `default_prompt_name` of `config_sentence_transformers.json`.
#[derive(Debug, Default)]
pub struct Prompts {
    pub(crate) by_name: std::collections::BTreeMap<String, String>,
    default: Option<String>,
}

impl Prompts {
    /// Reads the file from the encoder folder or the model folder; without one there are none.
    pub(crate) fn read(encoder_dir: &Path, dir: &Path) -> Result<Self> {
        let Some(path) =
            [encoder_dir, dir].iter().map(|d| d.join("config_sentence_transformers.json")).find(|p| p.is_file())
        else {
            return Ok(Self::default());
        };
        let v = read_json(&path, MAX_ST_CONFIG)?;
        Self::from_json(&v, &path.display().to_string())
    }

    /// Parses the file's JSON (`file` names it in errors): `prompts` an object of strings,
    /// `default_prompt_name` null or one of its keys.
    pub fn from_json(v: &Value, file: &str) -> Result<Self> {
        let err = |detail: String| EngineError::Config { file: file.to_string(), detail };
        let mut by_name = std::collections::BTreeMap::new();
        match v.get("prompts") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, p) in m {
                    let p = p.as_str().ok_or_else(|| err(format!("prompts.{k} is {p}, not a string")))?;
                    by_name.insert(k.clone(), p.to_string());
                }
            }
            Some(other) => return Err(err(format!("prompts is {other}, not an object of strings"))),
        }
        let default = match v.get("default_prompt_name") {
            None | Some(Value::Null) => None,
            Some(Value::String(n)) if by_name.contains_key(n) => Some(n.clone()),
            Some(n) => return Err(err(format!("default_prompt_name {n} is not one of the prompts"))),
        };
        Ok(Self { by_name, default })
    }

    /// The prompt `name` names, or the default one for `None`.
    pub fn get(&self, name: Option<&str>) -> Result<Option<&str>> {
        let Some(name) = name.or(self.default.as_deref()) else { return Ok(None) };
        match self.by_name.get(name) {
            Some(p) => Ok(Some(p)),
            None => {
                let known = if self.by_name.is_empty() {
                    "it defines none".to_string()
                } else {
                    self.by_name.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
                };
                Err(EmbedInputError::UnknownPrompt { name: name.to_string(), known }.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_read_by_name_with_the_default() {
        let p = Prompts::from_json(
            &serde_json::json!({"prompts": {"query": "Instruct: x\nQuery:", "document": ""},
                "default_prompt_name": null}),
            "f",
        )
        .unwrap();
        assert_eq!(p.get(Some("query")).unwrap(), Some("Instruct: x\nQuery:"));
        assert_eq!(p.get(None).unwrap(), None);
        let e = p.get(Some("passage")).unwrap_err().to_string();
        assert!(e.contains("'passage'") && e.contains("document, query"), "{e}");
        let d = Prompts::from_json(&serde_json::json!({"prompts": {"q": "Q: "}, "default_prompt_name": "q"}), "f");
        assert_eq!(d.unwrap().get(None).unwrap(), Some("Q: "));
        let bad = Prompts::from_json(&serde_json::json!({"prompts": {"q": 1}}), "f").unwrap_err().to_string();
        assert!(bad.starts_with("f: ") && bad.contains("prompts.q"), "{bad}");
        let bad = Prompts::from_json(&serde_json::json!({"prompts": {}, "default_prompt_name": "q"}), "f");
        assert!(bad.unwrap_err().to_string().contains("default_prompt_name"));
    }
}
