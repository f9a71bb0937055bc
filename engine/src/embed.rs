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
//! MiniLM-style models (mean pooling, then normalisation) and BGE-style models (CLS pooling) both
//! load this way.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use govbox_drivers::Backend;
use serde_json::Value;

use crate::models::bert::{BertConfig, BertModel};
use crate::weights::{WeightMap, read_small};
use crate::{EngineError, Result};

/// Largest `modules.json`, pooling or sentence-bert config read. Real ones are a few hundred bytes.
const MAX_SMALL_JSON: u64 = 64 << 10;
/// Largest `tokenizer.json` read. BERT vocabularies give about 0.7 MiB; large multilingual ones
/// about 20 MiB.
const MAX_TOKENIZER_JSON: u64 = 64 << 20;
/// Most modules a pipeline may list (real ones list two to four).
const MAX_MODULES: usize = 16;
/// Most sequences run through the encoder at once.
const MAX_BATCH_SEQS: usize = 64;
/// Most rows of the padded `[batch, longest]` attention layout in one encoder call. Batches are
/// formed from length-sorted inputs, so this rarely splits inputs of similar length.
const MAX_BATCH_PADDED_TOKENS: usize = 16 << 10;

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
}

impl PoolingMode {
    /// The name sentence-transformers uses in its `pooling_mode` setting.
    pub fn name(self) -> &'static str {
        match self {
            PoolingMode::Mean => "mean",
            PoolingMode::Cls => "cls",
            PoolingMode::Max => "max",
        }
    }

    /// Pools `rows` (`[tokens, dim]`, row-major, at least one token) into one `dim` vector.
    pub fn pool(self, rows: &[f32], dim: usize) -> Vec<f32> {
        let mut it = rows.chunks_exact(dim.max(1));
        let Some(first) = it.next() else { return vec![0.0; dim] };
        match self {
            PoolingMode::Cls => first.to_vec(),
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
                other => {
                    return Err(err(format!(
                        "unknown or unsupported pooling mode '{other}' (supported: mean, cls, max)"
                    )));
                }
            },
            many => {
                return Err(err(format!(
                    "pooling modes {} are enabled together; govbox supports exactly one of mean, cls, max",
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

fn read_json(path: &Path, cap: u64) -> Result<Value> {
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
    bert: BertModel,
    tokenizer: crate::tokenizer::Tokenizer,
    /// The HF tokenizer with truncation at `max_seq_length` and no padding.
    encoder: tokenizers::Tokenizer,
    pooling: PoolingMode,
    normalize: bool,
    lowercase: bool,
    max_seq_length: usize,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("bert", &self.bert)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .field("max_seq_length", &self.max_seq_length)
            .finish_non_exhaustive()
    }
}

impl EmbeddingModel {
    /// Whether `dir` looks like an embedding model: it has `modules.json`, or its `config.json`
    /// names `BertModel` as its first architecture. (A BERT folder without `modules.json` is
    /// claimed so that [`EmbeddingModel::load`] can say what is missing.)
    pub fn is_embedding_dir(dir: &Path) -> bool {
        if dir.join("modules.json").is_file() {
            return true;
        }
        read_json(&dir.join("config.json"), 1 << 20)
            .is_ok_and(|v| v.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str) == Some("BertModel"))
    }

    /// Loads a sentence-transformers folder onto `backend`.
    ///
    /// The configuration is checked completely (modules, pooling, truncation length, encoder
    /// shape) before any weights are mapped.
    pub fn load(dir: &Path, backend: Arc<dyn Backend>) -> Result<Self> {
        let pipeline = Pipeline::read(dir)?;
        let pooling_name = pipeline.pooling_file.display().to_string();
        if !pipeline.pooling_file.is_file() {
            return Err(EngineError::Config {
                file: pooling_name,
                detail: "not found: the Pooling module named in modules.json needs its config.json".into(),
            });
        }
        let pooling = PoolingConfig::from_json(&read_json(&pipeline.pooling_file, MAX_SMALL_JSON)?, &pooling_name)?;
        let cfg = BertConfig::from_hf_dir(&pipeline.encoder_dir)?;
        if pooling.word_embedding_dimension != cfg.hidden_size {
            return Err(EngineError::Config {
                file: pooling_name,
                detail: format!(
                    "word_embedding_dimension {} does not match the encoder's hidden_size {} ({})",
                    pooling.word_embedding_dimension,
                    cfg.hidden_size,
                    pipeline.encoder_dir.join("config.json").display()
                ),
            });
        }
        let (max_seq_length, lowercase) = read_sentence_bert_config(&pipeline.encoder_dir, dir, &cfg)?;
        let encoder = load_hf_tokenizer(&pipeline.encoder_dir.join("tokenizer.json"), max_seq_length)?;
        let tokenizer = crate::tokenizer::Tokenizer::from_hf_dir(&pipeline.encoder_dir)?;
        let weights = WeightMap::from_hf_dir(&pipeline.encoder_dir)?;
        let bert = BertModel::load(cfg, &weights, backend)?;
        Ok(Self {
            bert,
            tokenizer,
            encoder,
            pooling: pooling.mode,
            normalize: pipeline.normalize,
            lowercase,
            max_seq_length,
        })
    }

    /// The model's tokenizer (for token counting by callers).
    pub fn tokenizer(&self) -> &crate::tokenizer::Tokenizer {
        &self.tokenizer
    }

    /// Width of the sentence vectors.
    pub fn dim(&self) -> usize {
        self.bert.config().hidden_size
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

    /// The encoder input for `text`: `[CLS] … [SEP]` token ids, truncated to
    /// [`EmbeddingModel::max_seq_length`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let lowered;
        let text = if self.lowercase {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let enc = self.encoder.encode(text, true).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embeds `texts`. Inputs are grouped by length into batches internally; each vector equals
    /// the one the text gets alone, up to float rounding.
    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.encode(t)).collect::<Result<_>>()?;
        if let Some(i) = ids.iter().position(Vec::is_empty) {
            return Err(EngineError::Request(format!("input {i} produced no tokens")));
        }
        // Longest first, so that each batch holds inputs of similar length and the padded
        // attention layout wastes little.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let dim = self.dim();
        let mut vectors = vec![Vec::new(); texts.len()];
        let mut start = 0;
        while start < order.len() {
            // The first input of a batch is its longest.
            let longest = ids[order[start]].len();
            let cap = (MAX_BATCH_PADDED_TOKENS / longest).clamp(1, MAX_BATCH_SEQS);
            let batch = &order[start..(start + cap).min(order.len())];
            let seqs: Vec<&[u32]> = batch.iter().map(|&i| ids[i].as_slice()).collect();
            let out = self.bert.forward(&seqs)?;
            for (j, &i) in batch.iter().enumerate() {
                let rows = out.sequence(j).ok_or_else(|| EngineError::Request(format!("encoder lost input {i}")))?;
                let mut v = self.pooling.pool(rows, dim);
                if self.normalize {
                    l2_normalize(&mut v);
                }
                vectors[i] = v;
            }
            start += batch.len();
        }
        Ok(Embeddings { vectors, token_counts: ids.iter().map(Vec::len).collect() })
    }
}

/// `max_seq_length` and `do_lower_case` from `sentence_bert_config.json`, looked for in the
/// encoder folder and then the model folder. Without one, sentence-transformers truncates at the
/// encoder's position limit, and so does govbox.
fn read_sentence_bert_config(encoder_dir: &Path, dir: &Path, cfg: &BertConfig) -> Result<(usize, bool)> {
    let Some(path) = [encoder_dir, dir].iter().map(|d| d.join("sentence_bert_config.json")).find(|p| p.is_file())
    else {
        return Ok((cfg.max_position_embeddings, false));
    };
    let file = path.display().to_string();
    let v = read_json(&path, MAX_SMALL_JSON)?;
    let err = |detail: String| EngineError::Config { file: file.clone(), detail };
    let max = match v.get("max_seq_length") {
        None | Some(Value::Null) => cfg.max_position_embeddings,
        Some(m) => m
            .as_u64()
            .and_then(|m| usize::try_from(m).ok())
            .filter(|&m| (2..=cfg.max_position_embeddings).contains(&m))
            .ok_or_else(|| {
                err(format!(
                    "max_seq_length {m} must be between 2 and the encoder's max_position_embeddings {}",
                    cfg.max_position_embeddings
                ))
            })?,
    };
    let lower = match v.get("do_lower_case") {
        None | Some(Value::Null) => false,
        Some(b) => b.as_bool().ok_or_else(|| err(format!("do_lower_case {b} is not true or false")))?,
    };
    Ok((max, lower))
}

/// The HF tokenizer in `path`, set to truncate at `max_len` tokens and never pad (the folder's own
/// settings, such as MiniLM's fixed padding to 128, are for training and are replaced).
fn load_hf_tokenizer(path: &Path, max_len: usize) -> Result<tokenizers::Tokenizer> {
    let text = read_small(path, MAX_TOKENIZER_JSON)?;
    let mut tok: tokenizers::Tokenizer =
        text.parse().map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
    tok.with_padding(None);
    let trunc = tokenizers::TruncationParams { max_length: max_len, ..Default::default() };
    tok.with_truncation(Some(trunc)).map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
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
