//! Tokenizers: text to token ids and back, from a HuggingFace folder or from GGUF metadata.
//!
//! Both sources end up as a HuggingFace `tokenizers` pipeline, so a model gives the same ids
//! whichever way it was shipped. [`Tokenizer::encode`] parses special tokens written in the text
//! (`<|im_start|>`) to their control ids, as llama.cpp and transformers do when rendering chat
//! prompts; [`Tokenizer::encode_plain`] keeps them as text, for what callers write (see
//! `control.rs`). The
//! [`IncrementalDecoder`] turns a stream of generated ids into text without ever emitting half a
//! UTF-8 character.

use std::collections::HashSet;
use std::ops::Deref;
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::chat::{ChatTemplate, MAX_TEMPLATE_LEN};
use crate::control::SpecialStrings;
use crate::gguf::GgufFile;
use crate::weights::read_small;
use crate::{EngineError, Result};

/// Largest `tokenizer.json` read. Real ones are at most a few tens of MiB (Gemma's is 33 MiB).
pub const MAX_TOKENIZER_JSON: u64 = 64 << 20;
/// Largest `tokenizer_config.json` or `generation_config.json` read.
pub const MAX_TOKENIZER_CONFIG: u64 = 16 << 20;
/// Most tokens a GGUF vocabulary may have. The largest real vocabularies are about 260,000.
pub const MAX_VOCAB: usize = 1 << 20;

/// Qwen2's pre-tokenizer split: contractions, letters with one leading non-letter, single
/// digits, punctuation runs, newlines, and whitespace.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split: as Qwen2's, but digits in runs of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Tokens that end a chat turn whatever the file's EOS id says; llama.cpp's vocabulary loader
/// stops on them by their text too (with more: this is the part that ends turns in the templates
/// of the families govbox runs): Gemma, ChatML (Qwen) and Llama 3.
const END_OF_TURN: [&str; 4] = ["<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>"];

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
mod token_type {
    /// A control token (BOS, EOS, `<|im_start|>`): special, never produced by plain text.
    pub const CONTROL: i32 = 3;
    /// A token the model's authors added; matched verbatim in text.
    pub const USER_DEFINED: i32 = 4;
}

/// A model's tokenizer, with its special ids and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special_ids: HashSet<u32>,
    specials: SpecialStrings,
    /// `inner` with special-token matching off, made when first needed (a clone of the whole
    /// vocabulary).
    plain: OnceLock<tokenizers::Tokenizer>,
    eos_ids: Vec<u32>,
    bos_id: Option<u32>,
    add_bos: bool,
    chat_template: Option<ChatTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    // The inner tokenizer's Debug prints the whole vocabulary.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .finish_non_exhaustive()
    }
}

fn tok_err(what: &str) -> impl FnOnce(tokenizers::Error) -> EngineError + '_ {
    move |e| EngineError::Tokenizer(format!("{what}: {e}"))
}

impl Tokenizer {
    /// Loads `tokenizer.json` from a HuggingFace folder, with `tokenizer_config.json` (BOS and
    /// EOS tokens, `add_bos_token`, the chat template), `chat_template.jinja` when the config has
    /// no template, and `generation_config.json` (extra EOS ids) when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let text = read_small(&path, MAX_TOKENIZER_JSON)?;
        let inner = tokenizers::Tokenizer::from_str(&text).map_err(|e| EngineError::Format {
            file: path.display().to_string(),
            detail: format!("not a usable tokenizer.json: {e}"),
        })?;
        let config = read_json_if_present(&dir.join("tokenizer_config.json"))?;
        let generation = read_json_if_present(&dir.join("generation_config.json"))?;

        let bos_token = config_token(&config, "bos_token");
        let eos_token = config_token(&config, "eos_token");
        let bos_id = bos_token.as_deref().and_then(|t| inner.token_to_id(t));
        let mut eos_ids: Vec<u32> = eos_token.as_deref().and_then(|t| inner.token_to_id(t)).into_iter().collect();
        match generation.get("eos_token_id") {
            Some(serde_json::Value::Array(ids)) => eos_ids.extend(ids.iter().filter_map(json_u32)),
            Some(v) => eos_ids.extend(json_u32(v)),
            None => {}
        }
        dedup_in_order(&mut eos_ids);

        // Without an explicit add_bos_token, the tokenizer's own post-processor decides: see
        // whether it puts BOS in front of an empty encoding.
        let add_bos = match config.get("add_bos_token").and_then(|v| v.as_bool()) {
            Some(b) => b,
            None => {
                let probe = inner.encode_fast("", true).map_err(tok_err("probing for BOS"))?;
                bos_id.is_some() && probe.get_ids().first().copied() == bos_id
            }
        };

        let template_source = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // Several named templates: [{"name": "default", "template": "..."}, ...].
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(String::from)),
            _ => None,
        };
        let template_source = match template_source {
            Some(s) => Some(s),
            None => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.exists() { Some(read_small(&jinja, MAX_TEMPLATE_LEN as u64)?) } else { None }
            }
        };
        let chat_template = template_source
            .map(|s| ChatTemplate::new(&s, bos_token.as_deref().unwrap_or(""), eos_token.as_deref().unwrap_or("")))
            .transpose()?;

        let special: Vec<(u32, String)> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (id, t.content))
            .collect();
        Ok(Self::assemble(inner, special, eos_ids, bos_id, add_bos, chat_template))
    }

    /// Builds the tokenizer that a GGUF file's metadata describes.
    ///
    /// `tokenizer.ggml.model = gpt2` is byte-level BPE; its pre-tokenizer follows
    /// `tokenizer.ggml.pre`: `smollm` splits digits one by one before the GPT-2 split, `qwen2` and
    /// `llama-bpe` use their own splits, and anything else (`gpt-2`, `default`, ...) the GPT-2
    /// split. `llama` is a SentencePiece vocabulary with scores (Llama 2, Gemma 3): see
    /// [`sentencepiece_bpe`]. Control tokens become special added tokens, user-defined ones plain
    /// added tokens, so both are matched verbatim in text.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let bad = |detail: String| EngineError::Tokenizer(format!("GGUF metadata: {detail}"));
        let tokens = g
            .get_str_array("tokenizer.ggml.tokens")
            .ok_or_else(|| bad("tokenizer.ggml.tokens is missing or not a string array".into()))?;
        let n = tokens.len();
        if n == 0 || n > MAX_VOCAB {
            return Err(bad(format!("{n} tokens in tokenizer.ggml.tokens (allowed: 1 to {MAX_VOCAB})")));
        }
        let types = match g.get("tokenizer.ggml.token_type") {
            None => vec![1; n],
            Some(_) => g
                .get_i32_array("tokenizer.ggml.token_type")
                .filter(|t| t.len() == n)
                .ok_or_else(|| bad(format!("tokenizer.ggml.token_type is not an integer array of {n} entries")))?,
        };
        let mut inner = match g.get_str("tokenizer.ggml.model") {
            Some("gpt2") => byte_level_bpe(g, &tokens)?,
            Some("llama") => sentencepiece_bpe(g, &tokens)?,
            Some(other) => {
                return Err(bad(format!(
                    "tokenizer.ggml.model '{other}' is not supported (gpt2: byte-level BPE; llama: SentencePiece)"
                )));
            }
            None => return Err(bad("no tokenizer.ggml.model: the file carries no tokenizer".into())),
        };

        let mut added = Vec::new();
        for (t, &ty) in tokens.iter().zip(&types) {
            match ty {
                token_type::CONTROL => added.push(AddedToken::from(*t, true).normalized(false)),
                token_type::USER_DEFINED => added.push(AddedToken::from(*t, false).normalized(false)),
                _ => {}
            }
        }
        // One call: the added-token matcher is rebuilt on every call.
        inner.add_tokens(&added);

        let id_of = |key: &str| -> Result<Option<u32>> {
            match g.get(key) {
                None => Ok(None),
                Some(_) => match g.get_u32(key) {
                    Some(id) if (id as usize) < n => Ok(Some(id)),
                    _ => Err(bad(format!("{key} is not a token id below the vocabulary size {n}"))),
                },
            }
        };
        let bos_id = id_of("tokenizer.ggml.bos_token_id")?;
        let mut eos_ids: Vec<u32> = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            eos_ids.extend(id_of(key)?);
        }
        // The converter writes one EOS id (Gemma 3: `<eos>`), while the model ends its turns with
        // another (`<end_of_turn>`); llama.cpp stops on these by their text, and so does govbox.
        eos_ids.extend(tokens.iter().enumerate().filter(|(_, t)| END_OF_TURN.contains(t)).map(|(id, _)| id as u32));
        dedup_in_order(&mut eos_ids);
        let add_bos = g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
        if add_bos && bos_id.is_none() {
            return Err(bad("tokenizer.ggml.add_bos_token is true but there is no bos_token_id".into()));
        }

        let token_str = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).copied()).unwrap_or("");
        let chat_template = g
            .get_str("tokenizer.chat_template")
            .map(|s| ChatTemplate::new(s, token_str(bos_id), token_str(eos_ids.first().copied())))
            .transpose()?;

        let special: Vec<(u32, String)> = added
            .iter()
            .filter(|t| t.special)
            .filter_map(|t| Some((inner.token_to_id(&t.content)?, t.content.clone())))
            .collect();
        Ok(Self::assemble(inner, special, eos_ids, bos_id, add_bos, chat_template))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        special: Vec<(u32, String)>,
        eos_ids: Vec<u32>,
        bos_id: Option<u32>,
        add_bos: bool,
        chat_template: Option<ChatTemplate>,
    ) -> Self {
        let special_ids = special.iter().map(|(id, _)| *id).collect();
        let specials = SpecialStrings::new(special.into_iter().map(|(_, s)| s).collect());
        Self { inner, special_ids, specials, plain: OnceLock::new(), eos_ids, bos_id, add_bos, chat_template }
    }

    /// Token ids of `text`, with no BOS or EOS added. Special tokens written in the text are
    /// parsed to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(tok_err("encoding failed"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text`, with no BOS or EOS added. Special-token strings in the text are
    /// text: they never become control ids. Text without any gives what [`encode`](Self::encode)
    /// gives.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        if !self.specials.any_in(text) {
            return self.encode(text);
        }
        let plain = self.plain.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        let enc = plain.encode_fast(text, false).map_err(tok_err("encoding failed"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text`, split where [`encode`](Self::encode) finds control tokens: those
    /// stay, and the text between them becomes `fix(text)` encoded with
    /// [`encode_plain`](Self::encode_plain).
    pub(crate) fn encode_between_specials(&self, text: &str, fix: impl Fn(&str) -> String) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err("encoding failed"))?;
        let mut out = Vec::with_capacity(enc.len());
        let mut at = 0;
        let gap = |out: &mut Vec<u32>, from: usize, to: usize| -> Result<()> {
            let piece = text.get(from..to).ok_or_else(|| {
                EngineError::Tokenizer(format!("a control token's offsets {from}..{to} split the text"))
            })?;
            if !piece.is_empty() {
                out.extend(self.encode_plain(&fix(piece))?);
            }
            Ok(())
        };
        for (&id, &(start, end)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            if self.special_ids.contains(&id) {
                gap(&mut out, at, start)?;
                out.push(id);
                at = end;
            }
        }
        gap(&mut out, at, text.len())?;
        Ok(out)
    }

    /// The special-token strings of the vocabulary.
    pub(crate) fn special_strings(&self) -> &SpecialStrings {
        &self.specials
    }

    /// The text of `ids`; with `skip_special`, special tokens (EOS, `<|im_start|>`) are left out.
    /// Ids outside the vocabulary are left out too. Bytes that do not form UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err("decoding failed"))
    }

    /// The underlying HuggingFace tokenizer (for the grammar engine's vocabulary).
    pub(crate) fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string (as the vocabulary writes it, `Ġthe` for byte-level BPE).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The beginning-of-sequence id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether prompts should start with [`Tokenizer::bos_id`]. [`Tokenizer::encode`] never adds it.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The model's chat template, if it has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Whether `id` is a special token (control token), which decodes to no text when skipped.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// A decoder for a stream of generated ids.
    pub fn incremental(&self) -> IncrementalDecoder<&Self> {
        IncrementalDecoder::new(self)
    }
}

/// The first id of each token string: a repeated string keeps its first id, as llama.cpp's
/// lookup does. Ids are below [`MAX_VOCAB`], so they fit u32.
fn vocab_of(tokens: &[&str]) -> Vocab {
    let mut vocab = Vocab::default();
    for (id, t) in tokens.iter().enumerate() {
        vocab.entry((*t).to_string()).or_insert(id as u32);
    }
    vocab
}

/// `tokenizer.ggml.model = gpt2`: byte-level BPE with the file's merges.
fn byte_level_bpe(g: &GgufFile, tokens: &[&str]) -> Result<tokenizers::Tokenizer> {
    let bad = |detail: String| EngineError::Tokenizer(format!("GGUF metadata: {detail}"));
    let merges = g
        .get_str_array("tokenizer.ggml.merges")
        .ok_or_else(|| bad("tokenizer.ggml.merges is missing or not a string array".into()))?;
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| bad(format!("merge #{i} is not two tokens separated by a space")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe =
        BPE::builder().vocab_and_merges(vocab_of(tokens), merges).build().map_err(tok_err("building the BPE model"))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer_for(g.get_str("tokenizer.ggml.pre").unwrap_or("default"))?));
    inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(false, true, true))));
    Ok(inner)
}

/// SentencePiece's word boundary, which stands for a space in the pieces.
const SPM_SPACE: &str = "\u{2581}";

/// `tokenizer.ggml.model = llama`: a SentencePiece BPE vocabulary with a score per piece, as
/// llama.cpp's converter writes Llama 2's and Gemma's. llama.cpp tokenizes it by repeatedly
/// joining the adjacent pair that makes the highest-scoring piece; transformers' converter
/// expresses the same as BPE merges ranked by that score, which is what is built here: every
/// split of a piece into two pieces is a merge, ranked by the piece's score (higher first), then
/// longer left and right parts first, then by id. Spaces become `▁`, a `▁` is put in front unless
/// `tokenizer.ggml.add_space_prefix` is false (Gemma), and characters no piece covers fall back
/// to the `<0xXX>` byte pieces.
fn sentencepiece_bpe(g: &GgufFile, tokens: &[&str]) -> Result<tokenizers::Tokenizer> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence};

    let bad = |detail: String| EngineError::Tokenizer(format!("GGUF metadata: {detail}"));
    let n = tokens.len();
    let scores = g
        .get_f32_array("tokenizer.ggml.scores")
        .filter(|s| s.len() == n)
        .ok_or_else(|| bad(format!("tokenizer.ggml.scores is not a float array of {n} entries")))?;
    if scores.iter().any(|s| !s.is_finite()) {
        return Err(bad("tokenizer.ggml.scores holds a value that is not finite".into()));
    }
    let vocab = vocab_of(tokens);
    struct Merge {
        score: f32,
        left_chars: usize,
        right_chars: usize,
        ids: (u32, u32, u32),
    }
    let mut ranked = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        for (left_chars, (at, _)) in piece.char_indices().enumerate().skip(1) {
            let (l, r) = piece.split_at(at);
            if let (Some(&lid), Some(&rid)) = (vocab.get(l), vocab.get(r)) {
                ranked.push(Merge {
                    score: scores[id],
                    left_chars,
                    right_chars: r.chars().count(),
                    ids: (id as u32, lid, rid),
                });
            }
        }
    }
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
            .then(a.ids.cmp(&b.ids))
    });
    let merges =
        ranked.iter().map(|m| (tokens[m.ids.1 as usize].to_string(), tokens[m.ids.2 as usize].to_string())).collect();
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = g.get_u32("tokenizer.ggml.unknown_token_id") {
        let t = tokens
            .get(unk as usize)
            .ok_or_else(|| bad(format!("tokenizer.ggml.unknown_token_id {unk} is not below {n}")))?;
        builder = builder.unk_token((*t).to_string());
    }
    let bpe = builder.build().map_err(tok_err("building the SentencePiece model"))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let prefix = g.get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
    let space = Replace::new(" ", SPM_SPACE).map_err(tok_err("the space normalizer"))?;
    let mut normalizers = Vec::new();
    if prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new(SPM_SPACE.into())));
    }
    normalizers.push(NormalizerWrapper::Replace(space));
    inner.with_normalizer(Some(NormalizerWrapper::Sequence(NormalizerSequence::new(normalizers))));
    let mut decoders = vec![
        DecoderWrapper::Replace(Replace::new(SPM_SPACE, " ").map_err(tok_err("the space decoder"))?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    inner.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(decoders))));
    Ok(inner)
}

fn pre_tokenizer_for(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
        Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
            .map(PreTokenizerWrapper::Split)
            .map_err(tok_err("compiling the pre-tokenizer regex"))
    };
    Ok(match pre {
        "smollm" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level(true),
        ])),
        "qwen2" => PreTokenizerWrapper::Sequence(Sequence::new(vec![split(QWEN2_SPLIT)?, byte_level(false)])),
        "llama-bpe" | "llama3" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![split(LLAMA3_SPLIT)?, byte_level(false)]))
        }
        _ => byte_level(true),
    })
}

/// A JSON config file, or `null` when the file does not exist.
fn read_json_if_present(path: &Path) -> Result<serde_json::Value> {
    if !path.exists() {
        return Ok(serde_json::Value::Null);
    }
    let text = read_small(path, MAX_TOKENIZER_CONFIG)?;
    serde_json::from_str(&text)
        .map_err(|e| EngineError::Format { file: path.display().to_string(), detail: format!("not valid JSON: {e}") })
}

/// `bos_token` / `eos_token` of a tokenizer config: a string, or an object with `content`.
fn config_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        v => v.get("content")?.as_str().map(String::from),
    }
}

fn json_u32(v: &serde_json::Value) -> Option<u32> {
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

fn dedup_in_order(ids: &mut Vec<u32>) {
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(*id));
}

/// Most non-special tokens held back while the text ends in U+FFFD. An unfinished UTF-8
/// character needs at most three more bytes, so at most three more tokens; past this the
/// replacement character is real (invalid bytes) and is emitted.
const MAX_HELD_TOKENS: usize = 8;

/// Turns generated ids into text as they arrive.
///
/// It keeps every id and decodes a short window: the tokens already emitted by the previous step
/// (for context: some decoders treat a sequence's first token specially) plus the new ones, and
/// emits what the new ones add. While the window's text ends in U+FFFD, a UTF-8 character is
/// still incomplete and nothing is emitted. For byte-level tokenizers, the pieces returned by
/// [`IncrementalDecoder::push`] and [`IncrementalDecoder::finish`] join to exactly
/// `decode(ids, true)`.
#[derive(Debug)]
pub struct IncrementalDecoder<T: Deref<Target = Tokenizer>> {
    tok: T,
    ids: Vec<u32>,
    /// Start of the window: the first token emitted by the previous step.
    prefix_offset: usize,
    /// End of what has been emitted.
    read_offset: usize,
}

impl<T: Deref<Target = Tokenizer>> IncrementalDecoder<T> {
    /// A decoder over `tok` (a reference, or a shared handle that a sequence keeps with it).
    pub fn new(tok: T) -> Self {
        Self { tok, ids: Vec::new(), prefix_offset: 0, read_offset: 0 }
    }

    /// Adds one id and returns the text it completes (often empty: a special token, or part of
    /// a character).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        if self.tok.is_special(id) {
            return Ok(String::new());
        }
        self.step(false)
    }

    /// Returns whatever is still held back, replacement characters included.
    pub fn finish(&mut self) -> Result<String> {
        self.step(true)
    }

    /// Every id pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    fn step(&mut self, force: bool) -> Result<String> {
        let window = &self.ids[self.prefix_offset..];
        let emitted_len = self.read_offset - self.prefix_offset;
        let prefix = self.tok.decode(&window[..emitted_len], true)?;
        let full = self.tok.decode(window, true)?;
        if !force && full.ends_with('\u{FFFD}') {
            let held = window[emitted_len..].iter().filter(|&&id| !self.tok.is_special(id)).count();
            if held < MAX_HELD_TOKENS {
                return Ok(String::new());
            }
        }
        let new_text = match full.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            // The decoder rewrote earlier text (a clean-up rule). Wait for more context; at the
            // end, emit what differs from the common prefix.
            None if !force => return Ok(String::new()),
            None => {
                let common = full
                    .char_indices()
                    .zip(prefix.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(full.len().min(prefix.len()), |((i, _), _)| i);
                full.get(common..).unwrap_or_default().to_string()
            }
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(new_text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::gguf::writer::GgufWriter;
    use crate::gguf::{GgufArray, GgufValue, parse_gguf};

    /// A byte-level BPE over single bytes for "ab", with one merge and two special tokens.
    fn tiny_gguf(model: &str, pre: &str) -> GgufFile {
        let strs = |v: &[&str]| GgufValue::Array(GgufArray::String(v.iter().map(|s| s.to_string()).collect()));
        let mut w = GgufWriter::new();
        w.kv("tokenizer.ggml.model", GgufValue::String(model.into()))
            .kv("tokenizer.ggml.pre", GgufValue::String(pre.into()))
            .kv("tokenizer.ggml.tokens", strs(&["<s>", "</s>", "a", "b", "ab", "1", "2", "Ġ", "<tool>", "12"]))
            .kv("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(vec![3, 3, 1, 1, 1, 1, 1, 1, 4, 1])))
            .kv("tokenizer.ggml.merges", strs(&["a b", "1 2"]))
            .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(0))
            .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(1))
            .kv(
                "tokenizer.chat_template",
                GgufValue::String("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}".into()),
            );
        parse_gguf(&w.to_bytes()).unwrap()
    }

    #[test]
    fn gguf_tokenizer_encodes_specials_merges_and_digits() {
        let t = Tokenizer::from_gguf(&tiny_gguf("gpt2", "smollm")).unwrap();
        assert_eq!(t.encode("ab<s>ab</s>12<tool>").unwrap(), vec![4, 0, 4, 1, 5, 6, 8]);
        assert_eq!(t.decode(&[4, 0, 4, 1, 8], true).unwrap(), "abab<tool>");
        assert_eq!(t.decode(&[4, 0, 4, 1], false).unwrap(), "ab<s>ab</s>");
        assert_eq!((t.bos_id(), t.eos_ids(), t.add_bos()), (Some(0), &[1u32][..], false));
        assert!(t.is_special(0) && t.is_special(1) && !t.is_special(8) && !t.is_special(4));
        let rendered = t.chat_template().unwrap().render(&[crate::chat::ChatMessage::new("user", "hi")], true).unwrap();
        assert_eq!(rendered, "<s>hi</s>");
    }

    #[test]
    fn gguf_tokenizer_refuses_other_models() {
        // SentencePiece needs its piece scores.
        let e = Tokenizer::from_gguf(&tiny_gguf("llama", "default")).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.scores is not a float array of"), "{e}");
        let e = Tokenizer::from_gguf(&tiny_gguf("bert", "default")).unwrap_err().to_string();
        assert!(e.contains("'bert' is not supported"), "{e}");
    }

    #[test]
    fn pre_tokenizer_follows_tokenizer_ggml_pre() {
        // "12" is one token unless the pre-tokenizer splits digits apart first.
        for (pre, digits) in [
            ("smollm", vec![5, 6]),
            ("qwen2", vec![5, 6]),
            ("llama-bpe", vec![9]),
            ("gpt-2", vec![9]),
            ("new", vec![9]),
        ] {
            let t = Tokenizer::from_gguf(&tiny_gguf("gpt2", pre)).unwrap();
            assert_eq!(t.encode("ab").unwrap(), vec![4], "{pre}");
            assert_eq!(t.encode("12").unwrap(), digits, "{pre}");
        }
    }
}
