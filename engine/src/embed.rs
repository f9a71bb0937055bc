//! Sentence embeddings from a sentence-transformers folder.
//!
//! The folder layout is sentence-transformers' own:
//! - `modules.json` lists the pipeline: a `Transformer` (the BERT encoder, in the folder the
//!   module's `path` names, usually the root), a `Pooling` module (its `path` holds
//!   `config.json`), and optionally `Normalize` (no parameters, so its folder may be absent, as it
//!   is in real published models);
//! - `sentence_bert_config.json` gives `max_seq_length`, the truncation length;
//! - the encoder folder holds `config.json`, `model.safetensors` and `tokenizer.json`.
//!
//! Every file is read with a size cap, and every module path must stay inside the model folder.
//! MiniLM-style models (mean pooling, then normalisation), BGE-style models (CLS pooling) and
//! bge-m3 (XLM-RoBERTa, CLS pooling) all load this way.
//!
//! A decoder embedder (Qwen3-Embedding: a `…ForCausalLM` config, weights without the LM head)
//! loads the same way; its encoder is the decoder run without its head
//! ([`CausalRunner`](crate::causal::CausalRunner)), and it must pool the last token. Prompts
//! named in `config_sentence_transformers.json` (Qwen3-Embedding's query instruction) are put
//! before a text when the caller names them, or by default when the file names a
//! `default_prompt_name` ([`EmbeddingModel::prompted`]).
//!
//! An input longer than the model's limit is an error unless the caller asks for truncation
//! ([`EmbedOptions::truncate`]); [`EmbeddingModel::embed`] truncates, as sentence-transformers
//! does. A model whose `config.json` lists `matryoshka_dimensions` (it was trained so that a
//! prefix of its vector is itself an embedding) gives those shorter vectors on request.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use govbox_drivers::Backend;
use serde_json::Value;

use crate::causal::{CausalRunner, Read};
pub use crate::embed_config::Prompts;
use crate::embed_config::{Backbone, Net};
use crate::models::bert::{BertConfig, BertModel, EncoderFamily};
use crate::models::decoder::DecoderModel;
use crate::weights::{WeightMap, read_small};
use crate::{EngineError, EngineOptions, Result};

/// Largest `modules.json`, pooling or sentence-bert config read. Real ones are a few hundred bytes.
const MAX_SMALL_JSON: u64 = 64 << 10;
/// Largest `tokenizer.json` read. BERT vocabularies give about 0.7 MiB; large multilingual ones
/// about 20 MiB.
const MAX_TOKENIZER_JSON: u64 = 64 << 20;
/// Most modules a pipeline may list (real ones list two to four).
const MAX_MODULES: usize = 16;

const TRANSFORMER: &str = "sentence_transformers.models.Transformer";
const POOLING: &str = "sentence_transformers.models.Pooling";
const NORMALIZE: &str = "sentence_transformers.models.Normalize";

/// How token vectors become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolingMode {
    /// The average of the token vectors (`pooling_mode_mean_tokens`).
    Mean,
    /// The first token's vector, `[CLS]` (`pooling_mode_cls_token`).
    Cls,
    /// The elementwise maximum over the tokens (`pooling_mode_max_tokens`).
    Max,
    /// The last token's vector (`pooling_mode_lasttoken`; decoder embedders).
    LastToken,
}

impl PoolingMode {
    /// The name sentence-transformers uses in its `pooling_mode` setting.
    pub fn name(self) -> &'static str {
        match self {
            PoolingMode::Mean => "mean",
            PoolingMode::Cls => "cls",
            PoolingMode::Max => "max",
            PoolingMode::LastToken => "lasttoken",
        }
    }

    /// Pools `rows` (`[tokens, dim]`, row-major, at least one token) into one `dim` vector.
    pub fn pool(self, rows: &[f32], dim: usize) -> Vec<f32> {
        let mut it = rows.chunks_exact(dim.max(1));
        let Some(first) = it.next() else { return vec![0.0; dim] };
        match self {
            PoolingMode::Cls => first.to_vec(),
            PoolingMode::LastToken => rows.chunks_exact(dim.max(1)).last().unwrap_or(first).to_vec(),
            PoolingMode::Mean => {
                let mut acc = first.to_vec();
                let mut n = 1usize;
                for r in it {
                    acc.iter_mut().zip(r).for_each(|(a, &b)| *a += b);
                    n += 1;
                }
                acc.iter_mut().for_each(|a| *a /= n as f32);
                acc
            }
            PoolingMode::Max => {
                let mut acc = first.to_vec();
                for r in it {
                    acc.iter_mut().zip(r).for_each(|(a, &b)| *a = a.max(b));
                }
                acc
            }
        }
    }
}

/// Scales `v` to unit L2 norm, as `torch.nn.functional.normalize` does (norms below `1e-12` are
/// taken as `1e-12`, so a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x = (f64::from(*x) / norm) as f32);
}

/// One input to embed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbedInput<'a> {
    /// Text, tokenised with the model's tokenizer.
    Text(&'a str),
    /// Token ids of the model's vocabulary, without special tokens: the model's own markers
    /// (`[CLS] … [SEP]`, `<s> … </s>`) are put around them as around a text's.
    Tokens(&'a [u32]),
}

/// What the caller chose for a batch of inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmbedOptions {
    /// Cut inputs longer than [`EmbeddingModel::max_seq_length`] to it (keeping the closing
    /// marker) instead of refusing them.
    pub truncate: bool,
    /// Width of the vectors, for a model trained for shorter ones; `None` for the full width.
    pub dimensions: Option<usize>,
}

/// Why a batch of inputs cannot be embedded as asked: the caller's fault, not the model's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmbedInputError {
    /// An input is longer than the model takes and truncation was not asked for.
    #[error("input {index} has {tokens} tokens, over the model's limit of {limit}; shorten it or set truncate")]
    TooLong {
        /// The input's position in the batch.
        index: usize,
        /// Its tokens, special tokens included.
        tokens: usize,
        /// The limit.
        limit: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("input {index}: token id {id} is outside the vocabulary of {vocab}")]
    BadToken {
        /// The input's position.
        index: usize,
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// An input has no tokens.
    #[error("input {index} produced no tokens")]
    Empty {
        /// The input's position.
        index: usize,
    },
    /// The prompt name is not one the model defines.
    #[error("prompt '{name}' is not defined by the model ({known})")]
    UnknownPrompt {
        /// The name asked for.
        name: String,
        /// The names the model defines, in words.
        known: String,
    },
    /// The model was not trained for the asked width.
    #[error("{asked} dimensions are not available: {allowed}")]
    Dimensions {
        /// What was asked.
        asked: usize,
        /// What the model offers, in words.
        allowed: String,
    },
}

/// Sentence vectors of a batch of texts, in input order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Embeddings {
    /// One vector of [`EmbeddingModel::dim`] values per text.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens each text became, special tokens included, after truncation.
    pub token_counts: Vec<usize>,
}

/// The pooling module's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolingConfig {
    /// Width of the token vectors the module expects.
    pub word_embedding_dimension: usize,
    /// The mode.
    pub mode: PoolingMode,
}

impl PoolingConfig {
    /// Parses a pooling module's `config.json`; `file` names it in errors.
    ///
    /// Both forms sentence-transformers writes are read: one boolean `pooling_mode_*` flag per
    /// mode, or a `pooling_mode` string. Exactly one mode must be on, and it must be one govbox
    /// implements.
    pub fn from_json(v: &Value, file: &str) -> Result<Self> {
        let err = |detail: String| EngineError::Config { file: file.to_string(), detail };
        let obj = v.as_object().ok_or_else(|| err("not a JSON object".into()))?;
        let dim = obj
            .get("word_embedding_dimension")
            .and_then(Value::as_u64)
            .and_then(|d| usize::try_from(d).ok())
            .filter(|&d| d > 0)
            .ok_or_else(|| err("'word_embedding_dimension' is missing or not a positive integer".into()))?;
        let mut on: Vec<String> = Vec::new();
        if let Some(m) = obj.get("pooling_mode") {
            let m = m.as_str().ok_or_else(|| err(format!("'pooling_mode' {m} is not a string")))?;
            on.push(m.to_string());
        }
        for (k, val) in obj {
            let Some(flag) = k.strip_prefix("pooling_mode_") else { continue };
            match val.as_bool() {
                Some(true) => on.push(flag.to_string()),
                Some(false) => {}
                None => return Err(err(format!("'{k}' is {val}, not true or false"))),
            }
        }
        // The flag names and the `pooling_mode` names differ for the same mode.
        for m in &mut on {
            let canonical = match m.as_str() {
                "mean_tokens" => "mean",
                "cls_token" => "cls",
                "max_tokens" => "max",
                "lasttoken" => "lasttoken",
                _ => continue,
            };
            *m = canonical.to_string();
        }
        on.sort();
        on.dedup();
        let mode = match on.as_slice() {
            [] => return Err(err("no pooling mode is enabled".into())),
            [one] => match one.as_str() {
                "mean" => PoolingMode::Mean,
                "cls" => PoolingMode::Cls,
                "max" => PoolingMode::Max,
                "lasttoken" => PoolingMode::LastToken,
                other => {
                    return Err(err(format!(
                        "unknown or unsupported pooling mode '{other}' (supported: mean, cls, max, lasttoken)"
                    )));
                }
            },
            many => {
                return Err(err(format!(
                    "pooling modes {} are enabled together; govbox supports exactly one of mean, cls, max, lasttoken",
                    many.join(", ")
                )));
            }
        };
        Ok(Self { word_embedding_dimension: dim, mode })
    }
}

/// One entry of `modules.json`.
#[derive(Clone, Debug, serde::Deserialize)]
struct ModuleEntry {
    /// Folder of the module's files, relative to the model folder ("" for the root).
    #[serde(default)]
    path: String,
    /// The sentence-transformers class.
    #[serde(rename = "type")]
    kind: String,
}

/// A module folder inside `root`: `path` must be relative and must not climb out.
fn module_dir(root: &Path, path: &str, file: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    if !p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(EngineError::Config {
            file: file.to_string(),
            detail: format!("module path '{path}' is not a plain relative folder inside the model folder"),
        });
    }
    Ok(root.join(p))
}

pub(crate) fn read_json(path: &Path, cap: u64) -> Result<Value> {
    let text = read_small(path, cap)?;
    serde_json::from_str(&text)
        .map_err(|e| EngineError::Config { file: path.display().to_string(), detail: format!("not valid JSON: {e}") })
}

/// The pipeline `modules.json` describes.
struct Pipeline {
    encoder_dir: PathBuf,
    pooling_file: PathBuf,
    normalize: bool,
}

impl Pipeline {
    /// Reads `dir/modules.json`: a Transformer, then Pooling, then optionally Normalize.
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("modules.json");
        let file = path.display().to_string();
        if !path.is_file() {
            return Err(EngineError::Config {
                file,
                detail: "not found: an embedding model must be a sentence-transformers folder with modules.json \
                         (Transformer, Pooling and optionally Normalize modules)"
                    .into(),
            });
        }
        let err = |detail: String| EngineError::Config { file: file.clone(), detail };
        let modules: Vec<ModuleEntry> = serde_json::from_value(read_json(&path, MAX_SMALL_JSON)?)
            .map_err(|e| err(format!("not a list of modules: {e}")))?;
        if modules.len() > MAX_MODULES {
            return Err(err(format!("{} modules, over the limit of {MAX_MODULES}", modules.len())));
        }
        let kinds: Vec<&str> = modules.iter().map(|m| m.kind.as_str()).collect();
        let (transformer, pooling, normalize) = match kinds.as_slice() {
            [TRANSFORMER, POOLING] => (&modules[0], &modules[1], false),
            [TRANSFORMER, POOLING, NORMALIZE] => (&modules[0], &modules[1], true),
            _ => {
                return Err(err(format!(
                    "module pipeline [{}] is not supported: govbox runs Transformer, Pooling and optionally \
                     Normalize, in that order",
                    kinds.join(", ")
                )));
            }
        };
        let encoder_dir = module_dir(dir, &transformer.path, &file)?;
        let pooling_file = module_dir(dir, &pooling.path, &file)?.join("config.json");
        Ok(Self { encoder_dir, pooling_file, normalize })
    }
}

/// A sentence-embedding model: a BERT encoder, pooling and optional normalisation.
pub struct EmbeddingModel {
    net: Net,
    tokenizer: crate::tokenizer::Tokenizer,
    /// Prompts by name, from `config_sentence_transformers.json`.
    prompts: Prompts,
    /// The HF tokenizer with truncation at `max_seq_length` and no padding.
    encoder: tokenizers::Tokenizer,
    pooling: PoolingMode,
    normalize: bool,
    lowercase: bool,
    max_seq_length: usize,
    /// Shorter widths the model was trained for (`matryoshka_dimensions`), ascending.
    matryoshka: Vec<usize>,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("net", &self.net)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .field("max_seq_length", &self.max_seq_length)
            .finish_non_exhaustive()
    }
}

impl EmbeddingModel {
    /// Whether `dir` looks like an embedding model: it has `modules.json`, or its `config.json`
    /// names a bare encoder (`BertModel`, `XLMRobertaModel`) as its first architecture. (An
    /// encoder folder without `modules.json` is claimed so that [`EmbeddingModel::load`] can say
    /// what is missing.)
    pub fn is_embedding_dir(dir: &Path) -> bool {
        if dir.join("modules.json").is_file() {
            return true;
        }
        read_json(&dir.join("config.json"), 1 << 20).is_ok_and(|v| {
            matches!(BertConfig::architecture_of(&v), Some("BertModel" | "XLMRobertaModel" | "RobertaModel"))
        })
    }

    /// Loads a sentence-transformers folder onto `backend`, a decoder embedder with the engine's
    /// default KV pool ([`EngineOptions::default`]), so that the same folder takes the same inputs
    /// however it is loaded.
    pub fn load(dir: &Path, backend: Arc<dyn Backend>) -> Result<Self> {
        Self::load_with(dir, backend, EngineOptions::default().kv_tokens)
    }

    /// Loads a sentence-transformers folder onto `backend`. `kv_tokens` sizes a decoder
    /// embedder's KV pool, which bounds its inputs (and the tokens of one forward pass); an
    /// encoder does not use it.
    ///
    /// The configuration is checked completely (modules, pooling, truncation length, encoder
    /// shape) before any weights are mapped.
    pub fn load_with(dir: &Path, backend: Arc<dyn Backend>, kv_tokens: usize) -> Result<Self> {
        let pipeline = Pipeline::read(dir)?;
        let pooling_name = pipeline.pooling_file.display().to_string();
        if !pipeline.pooling_file.is_file() {
            return Err(EngineError::Config {
                file: pooling_name,
                detail: "not found: the Pooling module named in modules.json needs its config.json".into(),
            });
        }
        let pooling = PoolingConfig::from_json(&read_json(&pipeline.pooling_file, MAX_SMALL_JSON)?, &pooling_name)?;
        let config_path = pipeline.encoder_dir.join("config.json");
        let backbone = Backbone::read(&config_path, &pipeline.encoder_dir, pooling.mode)?;
        let hidden = backbone.hidden_size();
        let matryoshka = read_matryoshka(&config_path, hidden)?;
        if pooling.word_embedding_dimension != hidden {
            return Err(EngineError::Config {
                file: pooling_name,
                detail: format!(
                    "word_embedding_dimension {} does not match the encoder's hidden_size {hidden} ({})",
                    pooling.word_embedding_dimension,
                    config_path.display()
                ),
            });
        }
        let (mut max_seq_length, lowercase) =
            read_sentence_bert_config(&pipeline.encoder_dir, dir, backbone.positions())?;
        if let Backbone::Decoder(_) = backbone {
            // One sequence must fit the pool (see `CausalRunner`).
            max_seq_length = max_seq_length.min(kv_tokens.max(crate::kv::BLOCK_SIZE));
        }
        let prompts = Prompts::read(&pipeline.encoder_dir, dir)?;
        let encoder = load_hf_tokenizer(&pipeline.encoder_dir.join("tokenizer.json"))?;
        let tokenizer = crate::tokenizer::Tokenizer::from_hf_dir(&pipeline.encoder_dir)?;
        let weights = WeightMap::from_hf_dir(&pipeline.encoder_dir)?;
        let net = match backbone {
            Backbone::Bert(cfg) => Net::Bert(Box::new(BertModel::load(cfg, &weights, backend)?)),
            Backbone::Decoder(cfg) => {
                let model = DecoderModel::from_hf_without_head(*cfg, &weights, backend)?;
                Net::Decoder(Box::new(CausalRunner::new(model, kv_tokens)?))
            }
        };
        Ok(Self {
            net,
            tokenizer,
            prompts,
            encoder,
            pooling: pooling.mode,
            normalize: pipeline.normalize,
            lowercase,
            max_seq_length,
            matryoshka,
        })
    }

    /// `text` as the model embeds it under the prompt `name`, or under the model's default prompt
    /// when `name` is `None` (none when `config_sentence_transformers.json` names no default):
    /// the prompt, then the text, as sentence-transformers joins them. An unknown name is the
    /// caller's mistake ([`EmbedInputError::UnknownPrompt`]).
    pub fn prompted<'t>(&self, name: Option<&str>, text: &'t str) -> Result<std::borrow::Cow<'t, str>> {
        Ok(match self.prompts.get(name)? {
            Some(p) if !p.is_empty() => format!("{p}{text}").into(),
            _ => text.into(),
        })
    }

    /// The prompt names the model's `config_sentence_transformers.json` defines, sorted.
    pub fn prompt_names(&self) -> Vec<&str> {
        self.prompts.by_name.keys().map(String::as_str).collect()
    }

    /// The shorter widths the model was trained for, ascending (empty: only [`dim`](Self::dim)).
    pub fn matryoshka_dimensions(&self) -> &[usize] {
        &self.matryoshka
    }

    /// The encoder family (BERT or XLM-RoBERTa); `None` for a decoder embedder.
    pub fn family(&self) -> Option<EncoderFamily> {
        match &self.net {
            Net::Bert(b) => Some(b.config().family),
            Net::Decoder(_) => None,
        }
    }

    /// The architecture `config.json` names.
    pub fn architecture(&self) -> &str {
        match &self.net {
            Net::Bert(b) => &b.config().architecture,
            Net::Decoder(d) => d.model().config().arch.hf_name(),
        }
    }

    /// The model's tokenizer (for token counting by callers).
    pub fn tokenizer(&self) -> &crate::tokenizer::Tokenizer {
        &self.tokenizer
    }

    /// Width of the sentence vectors.
    pub fn dim(&self) -> usize {
        match &self.net {
            Net::Bert(b) => b.config().hidden_size,
            Net::Decoder(d) => d.model().config().hidden_size,
        }
    }

    /// Tokens a text is truncated to, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// The pooling mode.
    pub fn pooling(&self) -> PoolingMode {
        self.pooling
    }

    /// Whether vectors are L2-normalised.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// The encoder input for `text`: `[CLS] … [SEP]` (or `<s> … </s>`) token ids, truncated
    /// to [`EmbeddingModel::max_seq_length`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_whole(EmbedInput::Text(text))?;
        truncate_keeping_last(&mut ids, self.max_seq_length);
        Ok(ids)
    }

    /// The encoder input for one input, with the model's markers and without truncation.
    pub fn encode_whole(&self, input: EmbedInput<'_>) -> Result<Vec<u32>> {
        let enc = match input {
            EmbedInput::Text(text) => {
                let lowered;
                let text = if self.lowercase {
                    lowered = text.to_lowercase();
                    lowered.as_str()
                } else {
                    text
                };
                self.encoder.encode(text, true)
            }
            EmbedInput::Tokens(ids) => {
                let n = ids.len();
                let raw = tokenizers::Encoding::new(
                    ids.to_vec(),
                    vec![0; n],
                    vec![String::new(); n],
                    vec![None; n],
                    vec![(0, 0); n],
                    vec![0; n],
                    vec![1; n],
                    Vec::new(),
                    Default::default(),
                );
                self.encoder.post_process(raw, None, true)
            }
        };
        Ok(enc.map_err(|e| EngineError::Tokenizer(e.to_string()))?.get_ids().to_vec())
    }

    /// Embeds `texts`, truncating long ones as sentence-transformers does. Inputs are grouped by
    /// length into batches internally; each vector equals the one the text gets alone, up to
    /// float rounding.
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        let inputs: Vec<EmbedInput<'_>> = texts.iter().map(|t| EmbedInput::Text(t)).collect();
        self.embed_inputs(&inputs, EmbedOptions { truncate: true, dimensions: None })
    }

    /// Checks a batch against the model (lengths, token ids, width) and returns the encoder
    /// inputs; the caller's mistakes come back as [`EmbedInputError`] inside
    /// [`EngineError::Input`].
    pub fn prepare(&self, inputs: &[EmbedInput<'_>], opts: EmbedOptions) -> Result<Vec<Vec<u32>>> {
        if let Some(asked) = opts.dimensions {
            self.check_dimensions(asked)?;
        }
        let vocab = match &self.net {
            Net::Bert(b) => b.config().vocab_size,
            Net::Decoder(d) => d.model().config().vocab_size,
        };
        let mut all = Vec::with_capacity(inputs.len());
        for (index, input) in inputs.iter().enumerate() {
            if let EmbedInput::Tokens(ids) = input
                && let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab)
            {
                return Err(EmbedInputError::BadToken { index, id, vocab }.into());
            }
            let mut ids = self.encode_whole(*input)?;
            if ids.is_empty() {
                return Err(EmbedInputError::Empty { index }.into());
            }
            if ids.len() > self.max_seq_length {
                if !opts.truncate {
                    let e = EmbedInputError::TooLong { index, tokens: ids.len(), limit: self.max_seq_length };
                    return Err(e.into());
                }
                truncate_keeping_last(&mut ids, self.max_seq_length);
            }
            all.push(ids);
        }
        Ok(all)
    }

    /// Whether the model can give vectors of `asked` dimensions (its own width, or one it was
    /// trained for); the error says which it can.
    pub fn check_dimensions(&self, asked: usize) -> Result<()> {
        if asked == self.dim() || self.matryoshka.contains(&asked) {
            return Ok(());
        }
        let allowed = if self.matryoshka.is_empty() {
            format!("the model gives only {} (it was not trained for shorter vectors)", self.dim())
        } else {
            let list: Vec<String> = self.matryoshka.iter().chain([&self.dim()]).map(usize::to_string).collect();
            format!("the model was trained for {}", list.join(", "))
        };
        Err(EmbedInputError::Dimensions { asked, allowed }.into())
    }

    /// Embeds a batch as `opts` asks (see [`prepare`](Self::prepare)).
    pub fn embed_inputs(&self, inputs: &[EmbedInput<'_>], opts: EmbedOptions) -> Result<Embeddings> {
        let ids = self.prepare(inputs, opts)?;
        let mut out = self.embed_ids(&ids)?;
        if let Some(d) = opts.dimensions.filter(|&d| d < self.dim()) {
            for v in &mut out.vectors {
                v.truncate(d);
                if self.normalize {
                    l2_normalize(v);
                }
            }
        }
        Ok(out)
    }

    /// Embeds encoder inputs made by [`prepare`](Self::prepare).
    fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Embeddings> {
        if let Some(index) = ids.iter().position(Vec::is_empty) {
            return Err(EmbedInputError::Empty { index }.into());
        }
        let dim = self.dim();
        let mut vectors = vec![Vec::new(); ids.len()];
        let mut each = |i: usize, rows: &[f32]| {
            let mut v = self.pooling.pool(rows, dim);
            if self.normalize {
                l2_normalize(&mut v);
            }
            vectors[i] = v;
            Ok(())
        };
        match &self.net {
            Net::Bert(b) => b.forward_batched(ids, None, &mut each)?,
            // The runner gives the last token's row only, which is what `LastToken` pools.
            Net::Decoder(d) => d.run(ids, Read::Hidden, &mut each)?,
        }
        Ok(Embeddings { vectors, token_counts: ids.iter().map(Vec::len).collect() })
    }
}

/// Cuts `ids` to `max` tokens, keeping the last one (the closing marker), as the tokenizer's
/// own truncation does for single inputs.
fn truncate_keeping_last(ids: &mut Vec<u32>, max: usize) {
    if ids.len() > max && max >= 1 {
        let last = ids[ids.len() - 1];
        ids.truncate(max - 1);
        ids.push(last);
    }
}

/// `matryoshka_dimensions` from the encoder's `config.json`: the shorter widths the model was
/// trained for (each between 1 and `hidden`), ascending.
fn read_matryoshka(config: &Path, hidden: usize) -> Result<Vec<usize>> {
    let v = read_json(config, 1 << 20)?;
    let Some(list) = v.get("matryoshka_dimensions") else { return Ok(Vec::new()) };
    let err = || EngineError::Config {
        file: config.display().to_string(),
        detail: format!("matryoshka_dimensions {list} must be a list of widths between 1 and hidden_size {hidden}"),
    };
    let mut dims: Vec<usize> = list
        .as_array()
        .ok_or_else(err)?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()).filter(|d| (1..=hidden).contains(d)))
        .collect::<Option<_>>()
        .ok_or_else(err)?;
    dims.sort_unstable();
    dims.dedup();
    dims.retain(|&d| d < hidden);
    Ok(dims)
}

/// `max_seq_length` and `do_lower_case` from `sentence_bert_config.json`, looked for in the
/// encoder folder and then the model folder. Without one, sentence-transformers truncates at the
/// encoder's position limit, and so does govbox.
fn read_sentence_bert_config(encoder_dir: &Path, dir: &Path, positions: usize) -> Result<(usize, bool)> {
    let Some(path) = [encoder_dir, dir].iter().map(|d| d.join("sentence_bert_config.json")).find(|p| p.is_file())
    else {
        return Ok((positions, false));
    };
    let file = path.display().to_string();
    let v = read_json(&path, MAX_SMALL_JSON)?;
    let err = |detail: String| EngineError::Config { file: file.clone(), detail };
    let max = match v.get("max_seq_length") {
        None | Some(Value::Null) => positions,
        Some(m) => {
            m.as_u64().and_then(|m| usize::try_from(m).ok()).filter(|&m| (2..=positions).contains(&m)).ok_or_else(
                || err(format!("max_seq_length {m} must be between 2 and the encoder's {positions} positions")),
            )?
        }
    };
    let lower = match v.get("do_lower_case") {
        None | Some(Value::Null) => false,
        Some(b) => b.as_bool().ok_or_else(|| err(format!("do_lower_case {b} is not true or false")))?,
    };
    Ok((max, lower))
}

/// The HF tokenizer in `path`, set never to truncate nor pad (the folder's own settings, such as
/// MiniLM's fixed padding to 128, are for training and are replaced; truncation is the caller's
/// choice, made in [`EmbeddingModel::prepare`]).
pub(crate) fn load_hf_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    let text = read_small(path, MAX_TOKENIZER_JSON)?;
    let mut tok: tokenizers::Tokenizer =
        text.parse().map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
    tok.with_padding(None);
    tok.with_truncation(None).map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three tokens of width 2.
    const ROWS: [f32; 6] = [1.0, -2.0, 3.0, 4.0, -1.0, 0.5];

    #[test]
    fn mean_pooling_averages_every_token() {
        assert_eq!(PoolingMode::Mean.pool(&ROWS, 2), vec![1.0, 2.5 / 3.0]);
        assert_eq!(PoolingMode::Mean.pool(&ROWS[..2], 2), vec![1.0, -2.0]);
    }

    #[test]
    fn cls_pooling_takes_the_first_token() {
        assert_eq!(PoolingMode::Cls.pool(&ROWS, 2), vec![1.0, -2.0]);
        assert_eq!(PoolingMode::Cls.pool(&ROWS[2..], 2), vec![3.0, 4.0]);
    }

    #[test]
    fn max_pooling_takes_each_dimensions_largest() {
        assert_eq!(PoolingMode::Max.pool(&ROWS, 2), vec![3.0, 4.0]);
        assert_eq!(PoolingMode::Max.pool(&[-5.0, -7.0, -6.0, -8.0], 2), vec![-5.0, -7.0]);
    }

    #[test]
    fn normalisation_gives_unit_length_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0; 3];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }

    fn parse(j: Value) -> std::result::Result<PoolingConfig, String> {
        PoolingConfig::from_json(&j, "m/1_Pooling/config.json").map_err(|e| e.to_string())
    }

    #[test]
    fn pooling_config_reads_both_forms() {
        let flags = serde_json::json!({
            "word_embedding_dimension": 384, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true,
            "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false
        });
        assert_eq!(parse(flags).unwrap(), PoolingConfig { word_embedding_dimension: 384, mode: PoolingMode::Mean });
        let s = serde_json::json!({"word_embedding_dimension": 512, "pooling_mode": "cls"});
        assert_eq!(parse(s).unwrap().mode, PoolingMode::Cls);
        let m = serde_json::json!({"word_embedding_dimension": 8, "pooling_mode_max_tokens": true});
        assert_eq!(parse(m).unwrap().mode, PoolingMode::Max);
    }

    #[test]
    fn pooling_config_errors_name_the_problem_and_file() {
        let e = parse(serde_json::json!({"word_embedding_dimension": 8, "pooling_mode": "harmonic"})).unwrap_err();
        assert!(e.starts_with("m/1_Pooling/config.json: ") && e.contains("'harmonic'"), "{e}");
        let e = parse(serde_json::json!({"word_embedding_dimension": 8, "pooling_mode_weightedmean_tokens": true}))
            .unwrap_err();
        assert!(e.contains("'weightedmean_tokens'"), "{e}");
        let e = parse(serde_json::json!({"word_embedding_dimension": 8, "pooling_mode_cls_token": true,
            "pooling_mode_mean_tokens": true}))
        .unwrap_err();
        assert!(e.contains("enabled together"), "{e}");
        assert!(parse(serde_json::json!({"word_embedding_dimension": 8})).unwrap_err().contains("no pooling mode"));
        assert!(parse(serde_json::json!({"pooling_mode": "mean"})).unwrap_err().contains("word_embedding_dimension"));
    }

    #[test]
    fn module_paths_must_stay_inside_the_model_folder() {
        let root = Path::new("/models/m");
        assert_eq!(module_dir(root, "", "f").unwrap(), root);
        assert_eq!(module_dir(root, "1_Pooling", "f").unwrap(), root.join("1_Pooling"));
        for bad in ["../x", "/etc", "a/../../b"] {
            assert!(module_dir(root, bad, "f").unwrap_err().to_string().contains("not a plain relative folder"));
        }
    }
}
