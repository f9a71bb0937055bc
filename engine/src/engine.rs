//! The engine's public face: load a model, generate text as a stream of events, compute logits,
//! embed texts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use govbox_drivers::{Backend, KvDType, KvSpec};

use crate::chat::{ChatInput, ChatMessage};
use crate::config::DecoderConfig;
use crate::constraint::{Constraint, Grammar, GrammarCompiler};
use crate::gguf::parse_gguf;
use crate::kv::{BLOCK_SIZE, BlockAllocator, KvStats, PrefixCache};
use crate::logprobs::{Alternative, IdLogprobs, Pending, TokenLogprob, token_logprobs};
use crate::models::decoder::{DecoderModel, LogitsFor, SeqInput};
use crate::sampler::SamplingParams;
use crate::scheduler::{Job, KvState, Msg, Scheduler, lock};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightMap;
use crate::{EngineError, MappedFile, Result};

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Tokens the KV pool holds across all live sequences. 4096 covers one full-context request
    /// of the small models the box ships with, at a memory cost shown by `govbox model info`.
    /// This is also the prefix cache's cap: blocks of ended sequences stay cached in whatever
    /// part of the pool running sequences do not use, and are evicted least recently used first.
    pub kv_tokens: usize,
    /// The element type of the KV pool. `f32` by default: exact, so logits stay within 1e-4 of
    /// the f32 references. `f16` halves the pool's memory (llama.cpp's default type) and keeps
    /// greedy answers and batch/cache invariance (a key or value is rounded once, when written,
    /// whatever the batch), but moves the tiny fixtures' logits by up to about 3e-3.
    pub kv_dtype: KvDType,
}

/// What the caller knows a model folder to be, where its files alone cannot say: a
/// Qwen3-Reranker's folder is a causal LM like any chat model's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadAs {
    /// What the files say (a causal LM is a chat model).
    #[default]
    Detected,
    /// A reranker: a cross-encoder, or a causal LM scored by its "yes" and "no" logits.
    Reranker,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { kv_tokens: 4096, kv_dtype: KvDType::F32 }
    }
}

/// What to generate from.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Plain text (BOS added when the tokenizer asks for it). Special-token strings in it
    /// (`<|im_start|>`) are text, never control tokens.
    Text(String),
    /// Text in which special-token strings become their control tokens, as a raw prompt for a
    /// base model needs (BOS added as for [`Prompt::Text`]). For callers trusted to write them.
    TextWithSpecialTokens(String),
    /// A conversation, rendered by the model's chat template with a generation prompt. Only
    /// the template's own markers become control tokens; the messages' text is always text
    /// (see `control.rs`).
    Chat(Vec<ChatMessage>),
    /// A conversation with tools and template variables, rendered as [`Prompt::Chat`] is.
    Conversation(ChatInput),
    /// Token ids, used as given.
    Tokens(Vec<u32>),
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// Most new tokens; generation stops with [`FinishReason::Length`] there.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Stop strings: the output is cut before the first one, which is not included.
    pub stop: Vec<String>,
    /// Keep going past EOS (benchmarks and reference comparisons).
    pub ignore_eos: bool,
    /// When the answer must be complete. The deadline is checked while the request waits for
    /// its next token (in the scheduler's queue for KV blocks, or behind a long prefill), not
    /// only when a token arrives: once it passes, the request is cancelled, its blocks are freed
    /// and [`generate`](Engine::generate) returns [`EngineError::Deadline`]. `None`: no limit.
    pub deadline: Option<std::time::Instant>,
    /// Which cached prefixes this request may reuse, and who may reuse its blocks.
    pub prefix_cache: PrefixCache,
    /// A grammar the output must follow (constrained sampling, see `constraint.rs`).
    pub grammar: Option<Grammar>,
}

impl GenerateRequest {
    /// A greedy request for `max_tokens` tokens.
    pub fn new(prompt: Prompt, max_tokens: usize) -> Self {
        Self {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            stop: vec![],
            ignore_eos: false,
            deadline: None,
            prefix_cache: PrefixCache::Shared,
            grammar: None,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` or the context window.
    Length,
    /// The daemon's content-safety filter stopped the answer (the engine never ends so itself).
    ContentFilter,
}

impl FinishReason {
    /// The OpenAI name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// Token counts of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache (counted at the request's first
    /// admission; always a multiple of the block size, and less than `prompt_tokens`).
    pub cached_tokens: usize,
}

/// What a generation stream carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// New text: always whole UTF-8 characters, never part of a stop string.
    Text(String),
    /// The end, with the reason and token counts.
    Done {
        /// Why it ended.
        finish_reason: FinishReason,
        /// Token counts.
        usage: Usage,
    },
    /// Generation failed part-way.
    Error(String),
    /// Log-probabilities of generated tokens (only when the request's
    /// [`SamplingParams::logprobs`] asks for them), sent just before the [`Event::Text`] their
    /// tokens produced. Tokens wholly inside a stop string, and the EOS token, have none.
    Logprobs(Vec<TokenLogprob>),
}

enum Kind {
    Decoder {
        model: Arc<DecoderModel>,
        kv: Arc<Mutex<KvState>>,
        tokenizer: Box<Tokenizer>,
        eos: Vec<u32>,
        scheduler: Scheduler,
        /// Built on the first constrained request (it walks the whole vocabulary).
        grammars: Mutex<Option<Arc<GrammarCompiler>>>,
    },
    Encoder(EncoderModel),
}

/// The two kinds of encoder model: both run a BERT-family encoder once per input.
enum EncoderModel {
    Embedding(Box<crate::embed::EmbeddingModel>),
    Reranker(Box<crate::rerank::RerankModel>),
}

/// A loaded model, ready to serve requests from many threads.
pub struct Engine {
    kind: Kind,
    path: PathBuf,
    format: &'static str,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("path", &self.path).field("format", &self.format).finish_non_exhaustive()
    }
}

impl Engine {
    /// How many prompt tokens [`Engine::prompt_logprobs`] runs at once.
    pub const PROMPT_LOGPROBS_CHUNK: usize = 64;

    /// Loads a model: a `.gguf` file, a HF decoder folder, or a sentence-transformers folder.
    pub fn load(path: &Path, backend: Arc<dyn Backend>, opts: &EngineOptions) -> Result<Self> {
        Self::load_as(path, backend, opts, LoadAs::Detected)
    }

    /// Loads a model as `what` says: [`LoadAs::Reranker`] takes a cross-encoder folder, or a HF
    /// causal-LM folder scored Qwen3-Reranker's way, and refuses anything else.
    pub fn load_as(path: &Path, backend: Arc<dyn Backend>, opts: &EngineOptions, what: LoadAs) -> Result<Self> {
        if what == LoadAs::Reranker {
            if !path.is_dir() || crate::embed::EmbeddingModel::is_embedding_dir(path) {
                return Err(EngineError::Request(format!(
                    "{}: a reranker is a folder holding a cross-encoder or a causal LM, not {}",
                    path.display(),
                    if path.is_dir() { "an embedding model" } else { "a single file" }
                )));
            }
            let m = crate::rerank::RerankModel::load_any(path, backend, opts.kv_tokens)?;
            let kind = Kind::Encoder(EncoderModel::Reranker(Box::new(m)));
            return Ok(Self { kind, path: path.into(), format: "safetensors" });
        }
        if path.is_file() {
            return Self::load_gguf(path, backend, opts);
        }
        if !path.is_dir() {
            return Err(EngineError::Io {
                path: path.into(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file or folder"),
            });
        }
        let encoder = if crate::rerank::RerankModel::is_rerank_dir(path) {
            Some(EncoderModel::Reranker(Box::new(crate::rerank::RerankModel::load(path, backend.clone())?)))
        } else if crate::embed::EmbeddingModel::is_embedding_dir(path) {
            let m = crate::embed::EmbeddingModel::load_with(path, backend.clone(), opts.kv_tokens)?;
            Some(EncoderModel::Embedding(Box::new(m)))
        } else {
            None
        };
        if let Some(m) = encoder {
            return Ok(Self { kind: Kind::Encoder(m), path: path.into(), format: "safetensors" });
        }
        let cfg = DecoderConfig::from_hf_dir(path)?;
        let weights = WeightMap::from_hf_dir(path)?;
        let tokenizer = Tokenizer::from_hf_dir(path)?;
        let model = DecoderModel::from_hf(cfg, &weights, backend)?;
        Self::decoder(model, tokenizer, path, "safetensors", opts)
    }

    fn load_gguf(path: &Path, backend: Arc<dyn Backend>, opts: &EngineOptions) -> Result<Self> {
        let file = MappedFile::open(path)?;
        let g = parse_gguf(file.bytes())
            .map_err(|e| EngineError::Format { file: file.name().to_string(), detail: e.to_string() })?;
        let cfg = DecoderConfig::from_gguf(&g, file.name())?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        let model = DecoderModel::from_gguf(cfg, &g, &file, backend)?;
        Self::decoder(model, tokenizer, path, "gguf", opts)
    }

    fn decoder(
        model: DecoderModel,
        tokenizer: Tokenizer,
        path: &Path,
        format: &'static str,
        opts: &EngineOptions,
    ) -> Result<Self> {
        let c = model.config();
        let n_blocks = opts.kv_tokens.max(BLOCK_SIZE).div_ceil(BLOCK_SIZE);
        let (n_kv_heads, head_dim) = model.kv_layout();
        let spec = KvSpec {
            n_layers: c.n_layers,
            n_kv_heads,
            head_dim,
            block_size: BLOCK_SIZE,
            n_blocks,
            dtype: opts.kv_dtype,
        };
        let cache = model.backend().new_kv_cache(spec)?;
        let kv = Arc::new(Mutex::new(KvState { cache, alloc: BlockAllocator::new(n_blocks) }));
        let mut eos: Vec<u32> = c.eos_token_ids.iter().chain(tokenizer.eos_ids()).copied().collect();
        eos.sort_unstable();
        eos.dedup();
        let model = Arc::new(model);
        let scheduler = Scheduler::start(model.clone(), kv.clone(), eos.clone())?;
        Ok(Self {
            kind: Kind::Decoder {
                model,
                kv,
                tokenizer: Box::new(tokenizer),
                eos,
                scheduler,
                grammars: Mutex::new(None),
            },
            path: path.into(),
            format,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        match &self.kind {
            Kind::Decoder { tokenizer, .. } => tokenizer,
            Kind::Encoder(m) => match m {
                EncoderModel::Embedding(e) => e.tokenizer(),
                EncoderModel::Reranker(r) => r.tokenizer(),
            },
        }
    }

    /// The decoder, when this is one.
    pub fn decoder_model(&self) -> Option<&DecoderModel> {
        match &self.kind {
            Kind::Decoder { model, .. } => Some(model),
            Kind::Encoder(_) => None,
        }
    }

    /// The embedding model, when this is one.
    pub fn embedding_model(&self) -> Option<&crate::embed::EmbeddingModel> {
        match &self.kind {
            Kind::Encoder(m) => match m {
                EncoderModel::Embedding(e) => Some(e),
                EncoderModel::Reranker(_) => None,
            },
            Kind::Decoder { .. } => None,
        }
    }

    /// The cross-encoder reranker, when this is one.
    pub fn rerank_model(&self) -> Option<&crate::rerank::RerankModel> {
        match &self.kind {
            Kind::Encoder(m) => match m {
                EncoderModel::Reranker(r) => Some(r),
                EncoderModel::Embedding(_) => None,
            },
            Kind::Decoder { .. } => None,
        }
    }

    /// KV-cache blocks in use and in all, for a decoder (`None` for an embedding model).
    pub fn kv_usage(&self) -> Option<(usize, usize)> {
        match &self.kind {
            Kind::Decoder { kv, .. } => {
                let st = lock(kv);
                Some((st.alloc.used_blocks(), st.alloc.total_blocks()))
            }
            Kind::Encoder(_) => None,
        }
    }

    /// The KV pool's shape and element type, for a decoder (`None` for an embedding model);
    /// [`KvSpec::bytes`] is the memory its keys and values take.
    pub fn kv_spec(&self) -> Option<KvSpec> {
        match &self.kind {
            Kind::Decoder { kv, .. } => Some(lock(kv).cache.spec()),
            Kind::Encoder(_) => None,
        }
    }

    /// The KV pool's and the prefix cache's counters, for a decoder (`None` for an embedding
    /// model). Cached blocks are not "used": they are reusable prefixes, evicted on demand.
    pub fn kv_stats(&self) -> Option<KvStats> {
        match &self.kind {
            Kind::Decoder { kv, .. } => Some(lock(kv).alloc.stats()),
            Kind::Encoder(_) => None,
        }
    }

    /// `"gguf"` or `"safetensors"`.
    pub fn format(&self) -> &'static str {
        self.format
    }

    fn decoder_parts(&self) -> Result<(&DecoderModel, &Mutex<KvState>)> {
        match &self.kind {
            Kind::Decoder { model, kv, .. } => Ok((model.as_ref(), kv.as_ref())),
            Kind::Encoder(_) => Err(EngineError::Request("this is an embedding model; it cannot generate".into())),
        }
    }

    /// A fresh constraint that keeps one request's output inside `grammar`. Refuses a grammar
    /// the engine cannot compile, so a caller can check a request's grammar before it queues.
    pub fn compile_grammar(&self, grammar: &Grammar) -> Result<Constraint> {
        let Kind::Decoder { model, tokenizer, eos, grammars, .. } = &self.kind else {
            return Err(EngineError::Request("this is an embedding model; it cannot generate".into()));
        };
        let compiler = {
            let mut g = grammars.lock().unwrap_or_else(|p| p.into_inner());
            match &*g {
                Some(c) => c.clone(),
                None => {
                    let c = Arc::new(GrammarCompiler::new(tokenizer, model.config().vocab_size, eos)?);
                    *g = Some(c.clone());
                    c
                }
            }
        };
        Ok(compiler.compile(grammar)?)
    }

    /// Token ids of a prompt, as generation would feed them.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let tok = self.tokenizer();
        let mut ids = match prompt {
            Prompt::Tokens(t) => return Ok(t.clone()),
            // A chat template writes its own BOS when the model wants one.
            Prompt::Chat(msgs) => return crate::control::chat_ids(tok, msgs),
            Prompt::Conversation(c) => return crate::control::conversation_ids(tok, c),
            Prompt::Text(t) => tok.encode_plain(t)?,
            Prompt::TextWithSpecialTokens(t) => tok.encode(t)?,
        };
        if tok.add_bos()
            && let Some(b) = tok.bos_id()
        {
            ids.insert(0, b);
        }
        Ok(ids)
    }

    /// Logits after every position of `ids` (`[ids.len(), vocab]` flattened). Tokens go one at a
    /// time through the KV cache, or all in one pass with `prefill`.
    pub fn logits(&self, ids: &[u32], prefill: bool) -> Result<Vec<f32>> {
        let (model, kv) = self.decoder_parts()?;
        let mut st = lock(kv);
        let mut table = Vec::new();
        let st = &mut *st;
        st.alloc.reserve(&mut table, ids.len())?;
        let r = (|| {
            if prefill {
                let s = SeqInput { tokens: ids, start_pos: 0, block_table: &table };
                return model.forward(&[s], st.cache.as_mut(), LogitsFor::All);
            }
            let mut out = Vec::new();
            for (i, t) in ids.iter().enumerate() {
                let s = SeqInput { tokens: std::slice::from_ref(t), start_pos: i, block_table: &table };
                out.extend(model.forward(&[s], st.cache.as_mut(), LogitsFor::All)?);
            }
            Ok(out)
        })();
        st.alloc.release(&mut table);
        r
    }

    /// Logits after the last of `ids` (one pass, like a prefill): what a package self-test checks.
    pub fn last_logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let all = self.logits(ids, true)?;
        let vocab = all.len() / ids.len().max(1);
        Ok(all[all.len() - vocab..].to_vec())
    }

    /// The log-probability of each prompt token but the first, given the tokens before it, with
    /// the `top` most likely tokens at its place: what completions' `echo` with `logprobs`
    /// reports. The prompt goes through in chunks of [`Self::PROMPT_LOGPROBS_CHUNK`] tokens, so
    /// only one chunk's logits are held at a time, and the KV lock is taken per chunk, so running
    /// requests go on between chunks.
    pub fn prompt_logprobs(&self, ids: &[u32], top: usize) -> Result<Vec<TokenLogprob>> {
        let (model, kv) = self.decoder_parts()?;
        let mut table = Vec::new();
        lock(kv).alloc.reserve(&mut table, ids.len())?;
        let r = (|| {
            let mut out = Vec::with_capacity(ids.len().saturating_sub(1));
            for (c, chunk) in ids.chunks(Self::PROMPT_LOGPROBS_CHUNK).enumerate() {
                let start = c * Self::PROMPT_LOGPROBS_CHUNK;
                let s = SeqInput { tokens: chunk, start_pos: start, block_table: &table };
                let logits = model.forward(&[s], lock(kv).cache.as_mut(), LogitsFor::All)?;
                let vocab = logits.len() / chunk.len();
                for (j, row) in logits.chunks(vocab).enumerate() {
                    if let Some(&next) = ids.get(start + j + 1) {
                        out.push(self.as_text(&token_logprobs(row, next, top))?);
                    }
                }
            }
            Ok(out)
        })();
        lock(kv).alloc.release(&mut table);
        r
    }

    /// Generates for `req`, calling `on_event` with each event; `on_event` returns false to
    /// cancel (the client went away), which frees the request's KV blocks at once.
    ///
    /// The request joins the decoder's scheduler (continuous batching with every other running
    /// request, see `scheduler.rs`); this call blocks until it ends and runs `on_event` on the
    /// caller's thread. When `generate` returns, and before `Event::Done` is sent, the request's
    /// KV blocks are released (its full blocks stay in the prefix cache). A prompt the whole KV
    /// pool cannot hold is refused; one that only has to wait for blocks waits in the queue.
    /// When the pool cannot grow a request that is running alone, it ends with
    /// [`FinishReason::Length`].
    pub fn generate(&self, req: &GenerateRequest, on_event: &mut dyn FnMut(Event) -> bool) -> Result<Usage> {
        let Kind::Decoder { model, kv, eos, scheduler, .. } = &self.kind else {
            return Err(EngineError::Request("this is an embedding model; it cannot generate".into()));
        };
        let prompt = self.prompt_ids(&req.prompt)?;
        let constraint = req.grammar.as_ref().map(|g| self.compile_grammar(g)).transpose()?;
        if prompt.is_empty() {
            return Err(EngineError::Request("the prompt is empty".into()));
        }
        let c = model.config();
        let ctx = c.max_position_embeddings;
        if prompt.len() >= ctx {
            return Err(EngineError::Request(format!(
                "the prompt has {} tokens; the model's context is {ctx}",
                prompt.len()
            )));
        }
        // Checked here so that a bad id fails its own request, not a batch of others.
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(EngineError::Request(format!(
                "prompt token id {id} is outside the model's vocabulary of {}",
                c.vocab_size
            )));
        }
        let total = lock(kv).alloc.total_blocks();
        if prompt.len().div_ceil(BLOCK_SIZE) > total {
            return Err(EngineError::Request(format!(
                "KV cache is full: the prompt's {} tokens need more than the whole pool of {} tokens \
                 (raise kv_tokens)",
                prompt.len(),
                total * BLOCK_SIZE
            )));
        }
        let budget = req.max_tokens.min(ctx - prompt.len());
        let mut decoder = self.tokenizer().incremental();
        let mut stops = StopMatcher::new(&req.stop);
        let mut logprobs = req.sampling.logprobs.map(|_| Pending::default());
        let mut usage = Usage { prompt_tokens: prompt.len(), ..Usage::default() };

        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            prompt,
            budget,
            sampling: req.sampling.clone(),
            ignore_eos: req.ignore_eos,
            constraint,
            cache_root: req.prefix_cache.root(),
            cancel: cancel.clone(),
            tx,
        };
        scheduler.submit(job)?;
        let mut ticket = Ticket { rx, cancel, released: false, cached: None };
        let finish = loop {
            if usage.completion_tokens >= budget {
                break FinishReason::Length;
            }
            // On any error the ticket is dropped on return, which frees the blocks first.
            let next = match ticket.next(req.deadline) {
                Err(EngineError::Deadline { .. }) => {
                    return Err(EngineError::Deadline {
                        prompt_tokens: usage.prompt_tokens,
                        completion_tokens: usage.completion_tokens,
                    });
                }
                r => r?,
            };
            usage.cached_tokens = ticket.cached.unwrap_or(0);
            let Some((id, lp)) = next else {
                break FinishReason::Length; // the KV pool could not hold it any longer
            };
            usage.completion_tokens += 1;
            if !req.ignore_eos && eos.contains(&id) {
                break FinishReason::Stop;
            }
            let piece = decoder.push(id)?;
            if let (Some(p), Some(lp)) = (logprobs.as_mut(), lp) {
                p.push(self.as_text(&lp)?, piece.len());
            }
            let (emit, hit) = stops.push(&piece);
            let entries = match logprobs.as_mut() {
                Some(p) if hit => p.cut(emit.len()),
                Some(p) => p.emitted(emit.len()),
                None => vec![],
            };
            if !entries.is_empty() && !on_event(Event::Logprobs(entries)) {
                return Ok(usage);
            }
            if !emit.is_empty() && !on_event(Event::Text(emit)) {
                return Ok(usage); // dropping the ticket frees the blocks
            }
            if hit {
                break FinishReason::Stop;
            }
        };
        ticket.close();
        let rest = if finish == FinishReason::Length {
            let rest = decoder.finish()?;
            let (emit, _) = stops.push(&rest);
            emit + &stops.flush()
        } else {
            // After EOS, text held back as a possible start of a stop string is the answer's
            // end (after a stop string, nothing is held back).
            stops.flush()
        };
        // Whatever is still waiting belongs to the tail (or to text a stop string held back).
        if let Some(entries) = logprobs.as_mut().map(Pending::rest).filter(|e| !e.is_empty())
            && !on_event(Event::Logprobs(entries))
        {
            return Ok(usage);
        }
        if !rest.is_empty() && !on_event(Event::Text(rest)) {
            return Ok(usage);
        }
        on_event(Event::Done { finish_reason: finish, usage });
        Ok(usage)
    }

    /// A token's log-probabilities with the tokens as text.
    fn as_text(&self, lp: &IdLogprobs) -> Result<TokenLogprob> {
        let tok = self.tokenizer();
        let alt = |id: u32, logprob: f32| -> Result<Alternative> {
            Ok(Alternative { token: tok.decode(&[id], false)?, logprob })
        };
        Ok(TokenLogprob {
            chosen: alt(lp.id, lp.logprob)?,
            top: lp.top.iter().map(|&(id, l)| alt(id, l)).collect::<Result<_>>()?,
        })
    }

    /// Starts generation on its own thread and returns the event stream. Dropping the receiver
    /// cancels the generation.
    pub fn submit(self: &Arc<Self>, req: GenerateRequest) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::sync_channel(64);
        let me = self.clone();
        std::thread::spawn(move || {
            let r = me.generate(&req, &mut |e| tx.send(e).is_ok());
            if let Err(e) = r {
                let _ = tx.send(Event::Error(e.to_string()));
            }
        });
        rx
    }

    /// Sentence embeddings of `texts`, with each text's token count.
    pub fn embed(&self, texts: &[&str]) -> Result<crate::embed::Embeddings> {
        self.embedder()?.embed(texts)
    }

    /// Sentence embeddings of `inputs` (texts or token ids) as `opts` asks.
    pub fn embed_inputs(
        &self,
        inputs: &[crate::embed::EmbedInput<'_>],
        opts: crate::embed::EmbedOptions,
    ) -> Result<crate::embed::Embeddings> {
        self.embedder()?.embed_inputs(inputs, opts)
    }

    fn embedder(&self) -> Result<&crate::embed::EmbeddingModel> {
        self.embedding_model()
            .ok_or_else(|| EngineError::Request("this is not an embedding model; it does not embed".into()))
    }

    /// Relevance logits of `documents` to `query`, from a cross-encoder reranker.
    pub fn rerank(&self, query: &str, documents: &[&str], truncate: bool) -> Result<crate::rerank::RerankScores> {
        self.rerank_model()
            .ok_or_else(|| EngineError::Request("this is not a reranker; it does not score documents".into()))?
            .score(query, documents, truncate)
    }
}

/// A queued or running request's side of the scheduler channel. Closing it (or dropping it,
/// however `generate` ends) cancels the sequence and waits until its blocks are released.
struct Ticket {
    rx: mpsc::Receiver<Msg>,
    cancel: Arc<AtomicBool>,
    released: bool,
    /// Prompt tokens taken from the prefix cache at the first admission.
    cached: Option<usize>,
}

impl Ticket {
    /// The next token, or `None` when the scheduler ended the sequence (the pool is full).
    /// Waits at most until `deadline`, then fails with [`EngineError::Deadline`] (counts zero:
    /// the caller knows them) and leaves the sequence to [`close`](Self::close).
    fn next(&mut self, deadline: Option<std::time::Instant>) -> Result<Option<(u32, Option<IdLogprobs>)>> {
        if self.released {
            return Ok(None);
        }
        loop {
            let passed = Err(EngineError::Deadline { prompt_tokens: 0, completion_tokens: 0 });
            let msg = match deadline.map(|d| d.saturating_duration_since(std::time::Instant::now())) {
                None => self.rx.recv().map_err(|_| ()),
                // Checked before taking anything: tokens the caller has not taken yet must not
                // carry it past the deadline.
                Some(left) if left.is_zero() => return passed,
                Some(left) => match self.rx.recv_timeout(left) {
                    Ok(m) => Ok(m),
                    Err(mpsc::RecvTimeoutError::Timeout) => return passed,
                    Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
                },
            };
            return match msg {
                Ok(Msg::Admitted { cached }) => {
                    // Not a token: note it (the first admission counts) and wait on.
                    self.cached.get_or_insert(cached);
                    continue;
                }
                Ok(Msg::Token(id, lp)) => Ok(Some((id, lp))),
                Ok(Msg::Released { pool_full }) => {
                    self.released = true;
                    if pool_full {
                        Ok(None)
                    } else {
                        Err(EngineError::Request("the scheduler ended the request early".into()))
                    }
                }
                Ok(Msg::Error(e)) => {
                    self.released = true;
                    Err(e)
                }
                Err(_) => {
                    self.released = true;
                    Err(EngineError::Request("the engine's scheduler stopped".into()))
                }
            };
        }
    }

    /// Cancels the sequence (a no-op when it has ended) and waits until its blocks are freed.
    fn close(&mut self) {
        if self.released {
            return;
        }
        self.cancel.store(true, Ordering::Relaxed);
        // Tokens sampled after the cancel are dropped; anything else means the blocks are freed.
        while let Ok(Msg::Token(..) | Msg::Admitted { .. }) = self.rx.recv() {}
        self.released = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.close();
    }
}

/// Holds back text that might be the start of a stop string, and cuts at the first full one.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    /// Adds generated text; returns the text safe to emit and whether a stop string was hit
    /// (everything from the stop string on is dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(cut) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..cut].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let tail = &self.pending[i..];
                if s.starts_with(tail) {
                    keep = keep.max(tail.len());
                    break;
                }
            }
        }
        let split = self.pending.len() - keep;
        let out = self.pending[..split].to_string();
        self.pending.drain(..split);
        (out, false)
    }

    /// Whatever is still held back (at the end of generation).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_stops_waiting_at_its_deadline() {
        use std::time::{Duration, Instant};
        let (tx, rx) = mpsc::channel();
        let mut t = Ticket { rx, cancel: Arc::new(AtomicBool::new(false)), released: false, cached: None };
        // Nothing arrives for 2 s (a request queued for KV blocks): the wait ends at the deadline.
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            let _ = tx.send(Msg::Token(7, None));
            let _ = tx.send(Msg::Token(8, None));
        });
        let start = Instant::now();
        let r = t.next(Some(start + Duration::from_millis(50)));
        assert!(matches!(r, Err(EngineError::Deadline { .. })), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
        late.join().unwrap_or_else(|_| panic!("sender thread"));
        // A token already waiting does not carry the request past a deadline that has passed.
        let r = t.next(Some(Instant::now()));
        assert!(matches!(r, Err(EngineError::Deadline { .. })), "{r:?}");
        assert!(matches!(t.next(None), Ok(Some((7, None)))));
        // Closing takes the rest and ends when the scheduler side has let go.
        t.close();
        assert!(t.cancel.load(Ordering::Relaxed) && t.released);
    }

    #[test]
    fn stop_matcher_cuts_exactly_and_holds_back_prefixes() {
        let mut m = StopMatcher::new(&["END".into(), "\n\n".into()]);
        assert_eq!(m.push("hello E"), ("hello ".into(), false));
        assert_eq!(m.push("N"), (String::new(), false));
        assert_eq!(m.push("Xs"), ("ENXs".into(), false));
        assert_eq!(m.push(" fin\n"), (" fin".into(), false));
        assert_eq!(m.push("\nmore"), (String::new(), true));
        let mut m = StopMatcher::new(&["是".into()]);
        assert_eq!(m.push("这是一"), ("这".into(), true));
    }
}
