//! Grammar-constrained sampling: a request's output is kept inside a grammar (JSON, a JSON
//! schema, a Lark grammar) by masking, before each token is sampled, every token that would take
//! the text out of the grammar. The grammar engine is `llguidance` (the one llama.cpp, vLLM and
//! SGLang use); this module only adapts the model's tokenizer to it and the mask to the sampler.
//!
//! The contract: while a request's [`Constraint`] lives, every sampled token keeps the text a
//! prefix of a sentence of the grammar, and EOS is allowed only where the text is a whole
//! sentence. A request that ends by EOS therefore ends with text the grammar accepts, whatever
//! the model's weights. One that runs out of `max_tokens` first ends with a prefix (and
//! `finish_reason: "length"`), as OpenAI's own structured outputs do.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::tokenizer::Tokenizer;

/// A grammar given in a schema larger than this is refused before it is compiled.
pub const MAX_GRAMMAR_BYTES: usize = 256 << 10;

/// Why a grammar could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConstraintError {
    /// The model's tokenizer could not be turned into the byte trie the grammar engine needs.
    #[error("preparing the tokenizer for constrained decoding: {0}")]
    Tokenizer(String),
    /// The grammar or schema is too large.
    #[error("the {what} is {len} bytes; at most {MAX_GRAMMAR_BYTES} are allowed")]
    TooLarge {
        /// `json_schema` or `grammar`.
        what: &'static str,
        /// Its serialised size.
        len: usize,
    },
    /// The grammar engine refused the grammar (an unsupported schema keyword, a Lark error).
    #[error("the {what} cannot be compiled: {detail}")]
    Compile {
        /// `json_schema` or `grammar`.
        what: &'static str,
        /// The grammar engine's message.
        detail: String,
    },
    /// The grammar engine failed during generation (an internal error: a mask that allows
    /// nothing, a token it did not expect).
    #[error("constrained decoding failed: {0}")]
    Decode(String),
}

/// What a request's output must be.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid against this schema (`response_format: {"type": "json_schema"}`). With
    /// `strict`, a schema keyword the grammar engine cannot enforce is refused; without it, such
    /// a keyword is ignored (the output is still JSON of the schema's shape).
    JsonSchema {
        /// The schema.
        schema: serde_json::Value,
        /// OpenAI's `strict`.
        strict: bool,
    },
    /// A grammar in llguidance's Lark dialect (used for tool calls; it may embed JSON schemas
    /// with `%json { ... }`).
    Lark(String),
}

impl Grammar {
    fn to_top_level(&self) -> Result<TopLevelGrammar, ConstraintError> {
        Ok(match self {
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(serde_json::json!({"type": "object"})),
            Grammar::JsonSchema { schema, strict } => {
                let len = schema.to_string().len();
                if len > MAX_GRAMMAR_BYTES {
                    return Err(ConstraintError::TooLarge { what: "json_schema", len });
                }
                let mut schema = schema.clone();
                // llguidance's options: compact JSON (a weak model cannot wander off into
                // endless whitespace), and unknown keywords refused only under `strict`.
                if let Some(obj) = schema.as_object_mut() {
                    obj.insert(
                        "x-guidance".into(),
                        serde_json::json!({"whitespace_flexible": false, "coerce_one_of": true, "lenient": !strict}),
                    );
                }
                TopLevelGrammar::from_json_schema(schema)
            }
            Grammar::Lark(src) => {
                if src.len() > MAX_GRAMMAR_BYTES {
                    return Err(ConstraintError::TooLarge { what: "grammar", len: src.len() });
                }
                TopLevelGrammar::from_lark(src.clone())
            }
        })
    }

    fn what(&self) -> &'static str {
        match self {
            Grammar::JsonObject | Grammar::JsonSchema { .. } => "json_schema",
            Grammar::Lark(_) => "grammar",
        }
    }
}

/// The model's tokenizer as llguidance sees it: every token's bytes in a trie, and a way to
/// tokenise bytes.
struct Env {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // The model's own tokenisation where the bytes are text; the trie's greedy one for
        // bytes that are not UTF-8 (a grammar's literal cut inside a character).
        match std::str::from_utf8(s).ok().and_then(|t| self.tokenizer.encode_fast(t, false).ok()) {
            Some(enc) => enc.get_ids().to_vec(),
            None => self.trie.greedy_tokenize(s),
        }
    }
}

/// Compiles grammars for one model; built once per model, on the first constrained request.
pub struct GrammarCompiler {
    factory: ParserFactory,
    eos: Vec<u32>,
    vocab: usize,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler").field("vocab", &self.vocab).field("eos", &self.eos).finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// Prepares `tokenizer` for a model whose logits have `vocab` entries and which ends a
    /// sequence with any of `eos` (the first one is the grammar's end token).
    pub fn new(tokenizer: &Tokenizer, vocab: usize, eos: &[u32]) -> Result<Self, ConstraintError> {
        let &first_eos = eos.first().ok_or_else(|| ConstraintError::Tokenizer("the model has no EOS token".into()))?;
        let hf = tokenizer.hf().clone();
        let json = serde_json::to_value(&hf)
            .map_err(|e| ConstraintError::Tokenizer(format!("writing the vocabulary out: {e}")))?;
        // llguidance asserts on vocabularies it does not expect; a model file is outside data,
        // so a panic there becomes this request's error, not the server's.
        let words = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&json))
            .map_err(|_| ConstraintError::Tokenizer("the vocabulary has a token llguidance cannot read".into()))?
            .map_err(|e| ConstraintError::Tokenizer(e.to_string()))?;
        let mut words = words;
        // The logits may have more rows than the tokenizer has tokens (padding): those are
        // empty words, which no grammar ever allows.
        let n = words.len().max(vocab);
        words.resize(n, Vec::new());
        let info = TokRxInfo::new(n as u32, first_eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Env { trie, tokenizer: hf });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| ConstraintError::Tokenizer(e.to_string()))?;
        // Its messages would quote the text being generated: keep them out of the logs.
        factory.quiet();
        Ok(Self { factory, eos: eos.to_vec(), vocab })
    }

    /// A fresh constraint for one request.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, ConstraintError> {
        let what = grammar.what();
        let parser = self
            .factory
            .create_parser(grammar.to_top_level()?)
            .map_err(|e| ConstraintError::Compile { what, detail: e.to_string() })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Compile { what, detail: e });
        }
        Ok(Constraint { matcher, eos: self.eos.clone(), vocab: self.vocab })
    }
}

/// One request's grammar state: what it has accepted so far.
pub struct Constraint {
    matcher: Matcher,
    eos: Vec<u32>,
    vocab: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.matcher.is_stopped()).finish_non_exhaustive()
    }
}

impl Constraint {
    /// Sets every logit the grammar does not allow next to minus infinity. Where the grammar is
    /// complete, every EOS token of the model is allowed (the grammar knows only the first).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(|e| ConstraintError::Decode(e.to_string()))?;
        let end = allowed.is_allowed(self.eos[0]);
        let n = logits.len().min(self.vocab);
        // The grammar knows only the first EOS; where it may end, the model may end with any.
        let ends: Vec<(usize, f32)> = match end {
            true => self.eos.iter().map(|&e| e as usize).filter(|&e| e < n).map(|e| (e, logits[e])).collect(),
            false => Vec::new(),
        };
        let mut any = false;
        // A word of the bit set at a time: most words are all allowed or all refused.
        for (w, &word) in allowed.as_slice().iter().enumerate() {
            let base = w * 32;
            if base >= n {
                break;
            }
            let chunk = &mut logits[base..(base + 32).min(n)];
            if word == 0 {
                chunk.fill(f32::NEG_INFINITY);
                continue;
            }
            if word == u32::MAX && chunk.len() == 32 {
                any |= chunk.iter().any(|&l| l > f32::NEG_INFINITY);
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if word & (1 << b) != 0 {
                    any |= *l > f32::NEG_INFINITY;
                } else {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        for (e, l) in ends {
            logits[e] = l;
            any |= l > f32::NEG_INFINITY;
        }
        logits[n..].iter_mut().for_each(|l| *l = f32::NEG_INFINITY);
        if !any {
            return Err(ConstraintError::Decode("the grammar allows no token the model can produce".into()));
        }
        Ok(())
    }

    /// Advances past the sampled `id` (which [`mask`](Self::mask) allowed).
    pub fn accept(&mut self, id: u32) -> Result<(), ConstraintError> {
        if self.eos.contains(&id) {
            return Ok(()); // the sequence ends here; the grammar was complete
        }
        self.matcher.consume_token(id).map_err(|e| ConstraintError::Decode(e.to_string()))
    }
}
