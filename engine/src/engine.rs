//! The engine's public face: load a model, generate text as a stream of events (see
//! `generation.rs`), compute logits, embed texts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use govbox_drivers::{Backend, KvDType, KvSpec};

use crate::chat::{ChatInput, ChatMessage};
use crate::config::DecoderConfig;
use crate::constraint::{Constraint, Grammar, GrammarCompiler};
use crate::generation::{Event, Generation, Output, Prepared, Usage, as_text};
use crate::gguf::parse_gguf;
use crate::kv::{BLOCK_SIZE, BlockAllocator, KvStats, PrefixCache, SplitKv, windowed_kv};
use crate::logprobs::{TokenLogprob, token_logprobs};
use crate::models::decoder::{DecoderModel, LogitsFor, SeqInput};
use crate::sampler::SamplingParams;
use crate::scheduler::{Job, KvState, PREFILL_CHUNK, Scheduler, lock};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightMap;
use crate::{EngineError, MappedFile, PromptError, Result};

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Tokens the KV pool holds across all live sequences, at a memory cost shown by `govbox
    /// model info`. This is also the prefix cache's cap: blocks of ended sequences stay cached in whatever
    /// part of the pool running sequences do not use, and are evicted least recently used first.
    pub kv_tokens: usize,
    /// The element type of the KV pool. `f16` by default (llama.cpp's default type too): half
    /// of `f32`'s memory, greedy answers and batch/cache invariance kept (a key or value is
    /// rounded once, when written, whatever the batch), logits of the tiny fixtures moved by up
    /// to about 3e-3. `f32` is exact (within 1e-4 of the f32 references); `q8_0` takes 27 % of
    /// `f32`'s memory.
    pub kv_dtype: KvDType,
    /// Sequences expected to run at once (govboxd: `[serving] max_concurrent`). It sizes the KV
    /// pool of a model's sliding-window layers (Gemma 3): room for this many windows and
    /// prefill chunks, which is the most a running sequence holds there, and never more than
    /// the full pool. Sequences beyond it still run side by side while their windows fit (a
    /// short one reserves only its length); the others wait in the engine's queue for one to
    /// end. Models without sliding-window layers ignore it.
    pub max_sequences: usize,
}

impl EngineOptions {
    /// The pool of a package's self-test (`govbox package build`, `govbox model import`): a few
    /// short prompts, or the longest pair of a reranker's check, never a served load.
    ///
    /// Always `f32`, whatever the serving default: a self-test recorded by the package's
    /// builder is checked on every box that imports it, at the tolerance the builder chose
    /// (1e-3 relative by default), and packages recorded before `f16` became the default were
    /// recorded on `f32`. `f16` moves logits by up to ~3e-3, more than that tolerance, so a
    /// self-test on the serving type would fail packages that are fine; on `f32` the figures
    /// are reproducible on any box. The self-test checks the weights and the arithmetic, not
    /// the operator's choice of cache type.
    pub fn self_test() -> Self {
        Self { kv_tokens: 1024, kv_dtype: KvDType::F32, ..Self::default() }
    }
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

/// The defaults of every engine, govboxd's `[serving]` and `govbox model run` included.
impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            // 8192 tokens: two full 4k-context requests, or several short ones, per chat model.
            kv_tokens: 8192,
            // f16: half of f32's memory for the same tokens (at 7B and 32k tokens the cache
            // is as large as the weights), llama.cpp's default too. Greedy answers and batch/
            // cache invariance stay; logits move by up to ~3e-3 against f32 references, which
            // is why the reference tests pin "f32" (exact, within 1e-4) explicitly.
            kv_dtype: KvDType::F16,
            // 8: govboxd's default `[serving] max_concurrent`, the requests it runs at once.
            max_sequences: 8,
        }
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
    /// When the answer must be complete. The scheduler checks it at every step, whether the
    /// request is running, queued for KV blocks or paused behind a slow reader: once it passes,
    /// the request's blocks are freed and it ends with [`EngineError::DeadlineExceeded`].
    /// `None`: no limit.
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

enum Kind {
    Decoder {
        model: Arc<DecoderModel>,
        kv: Arc<Mutex<KvState>>,
        tokenizer: Arc<Tokenizer>,
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
        let loaded = Self::load_model(path, backend, opts, what);
        // The load's temporaries (parsed metadata, tokenizer build, staging copies) are freed by
        // now, scattered between live blocks: hand their pages back (drivers' `allocator`).
        govbox_drivers::cpu::give_back_freed_memory();
        loaded
    }

    fn load_model(path: &Path, backend: Arc<dyn Backend>, opts: &EngineOptions, what: LoadAs) -> Result<Self> {
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
        // As in `load_gguf`: the files' mappings go before the KV cache is allocated.
        drop(weights);
        Self::decoder(model, tokenizer, path, "safetensors", opts)
    }

    fn load_gguf(path: &Path, backend: Arc<dyn Backend>, opts: &EngineOptions) -> Result<Self> {
        let file = MappedFile::open(path)?;
        let g = parse_gguf(file.bytes())
            .map_err(|e| EngineError::Format { file: file.name().to_string(), detail: e.to_string() })?;
        let cfg = DecoderConfig::from_gguf(&g, file.name())?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        let model = DecoderModel::from_gguf(cfg, &g, &file, backend)?;
        // The file's mapping goes before the KV cache is allocated. A backend hands back the
        // pages of the weights it packed as it goes, but not every page: 120 MB of a 7B Q4_K_M
        // file stayed mapped until the mapping was dropped, and with the KV cache allocated
        // first they came on top of it in the peak resident size.
        drop(g);
        drop(file);
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
        let (cache, window) = windowed_kv(&model, spec, opts.max_sequences)?;
        let kv = Arc::new(Mutex::new(KvState { cache, alloc: BlockAllocator::new(n_blocks), window }));
        let mut eos: Vec<u32> = c.eos_token_ids.iter().chain(tokenizer.eos_ids()).copied().collect();
        eos.sort_unstable();
        eos.dedup();
        let model = Arc::new(model);
        let scheduler = Scheduler::start(model.clone(), kv.clone(), eos.clone())?;
        Ok(Self {
            kind: Kind::Decoder {
                model,
                kv,
                tokenizer: Arc::new(tokenizer),
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

    /// Bytes the KV pool's data takes: [`KvSpec::bytes`], or both pools' for a model with
    /// sliding-window layers, whose pool for those layers holds only each sequence's window.
    pub fn kv_bytes(&self) -> Option<usize> {
        match &self.kind {
            Kind::Decoder { kv, .. } => {
                let mut st = lock(kv);
                let cache = st.cache.as_mut();
                match cache.as_any_mut().downcast_mut::<SplitKv>() {
                    Some(split) => split.bytes(),
                    None => cache.spec().bytes(),
                }
            }
            Kind::Encoder(_) => None,
        }
    }

    /// The KV pool's and the prefix cache's counters, for a decoder (`None` for an embedding
    /// model). Cached blocks are not "used": they are reusable prefixes, evicted on demand.
    pub fn kv_stats(&self) -> Option<KvStats> {
        match &self.kind {
            Kind::Decoder { kv, .. } => {
                let st = lock(kv);
                let mut stats = st.alloc.stats();
                if let Some(w) = &st.window {
                    w.add_stats(&mut stats);
                }
                Some(stats)
            }
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
        if ids.is_empty() {
            return Err(EngineError::Request("a sequence in the batch has no new tokens".into()));
        }
        let mut st = lock(kv);
        let mut table = Vec::new();
        let st = &mut *st;
        st.alloc.reserve(&mut table, ids.len())?;
        // With sliding-window layers, a prefill goes in the scheduler's chunks, so that those
        // layers hold one window and one chunk whatever the prompt's length.
        let pass = match (prefill, &st.window) {
            (false, _) => 1,
            (true, Some(_)) => PREFILL_CHUNK,
            (true, None) => ids.len().max(1),
        };
        let mut local = Vec::new();
        let reserved = match st.window.as_mut() {
            Some(w) => {
                let n = w.cap(ids.len(), pass);
                if let Err(e) = w.reserve(n) {
                    st.alloc.release(&mut table);
                    return Err(e);
                }
                n
            }
            None => 0,
        };
        let r = (|| {
            let mut out = Vec::new();
            for (c, chunk) in ids.chunks(pass).enumerate() {
                let start = c * pass;
                if let Some(w) = st.window.as_mut() {
                    w.fit(&mut local, start, start + chunk.len())?;
                }
                let s = SeqInput { tokens: chunk, start_pos: start, block_table: &table, local_table: &local };
                out.extend(model.forward(&[s], st.cache.as_mut(), LogitsFor::All)?);
            }
            Ok(out)
        })();
        st.alloc.release(&mut table);
        if let Some(w) = st.window.as_mut() {
            w.release(&mut local, reserved);
        }
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
        let (mut local, mut reserved) = (Vec::new(), 0);
        {
            let mut st = lock(kv);
            let st = &mut *st;
            st.alloc.reserve(&mut table, ids.len())?;
            if let Some(w) = st.window.as_mut() {
                reserved = w.cap(ids.len(), Self::PROMPT_LOGPROBS_CHUNK);
                if let Err(e) = w.reserve(reserved) {
                    st.alloc.release(&mut table);
                    return Err(e);
                }
            }
        }
        let r = (|| {
            let mut out = Vec::with_capacity(ids.len().saturating_sub(1));
            for (c, chunk) in ids.chunks(Self::PROMPT_LOGPROBS_CHUNK).enumerate() {
                let start = c * Self::PROMPT_LOGPROBS_CHUNK;
                let mut st = lock(kv);
                if let Some(w) = st.window.as_mut() {
                    w.fit(&mut local, start, start + chunk.len())?;
                }
                let s = SeqInput { tokens: chunk, start_pos: start, block_table: &table, local_table: &local };
                let logits = model.forward(&[s], st.cache.as_mut(), LogitsFor::All)?;
                drop(st);
                let vocab = logits.len() / chunk.len();
                for (j, row) in logits.chunks(vocab).enumerate() {
                    if let Some(&next) = ids.get(start + j + 1) {
                        out.push(as_text(self.tokenizer(), &token_logprobs(row, next, top))?);
                    }
                }
            }
            Ok(out)
        })();
        let mut st = lock(kv);
        st.alloc.release(&mut table);
        if let Some(w) = st.window.as_mut() {
            w.release(&mut local, reserved);
        }
        r
    }

    /// Checks `req` and makes it ready to queue: renders and tokenises its prompt, refuses one
    /// the model cannot take ([`EngineError::InvalidPrompt`], or [`EngineError::KvCacheFull`]
    /// when even the whole KV pool cannot hold it; one that only has to wait for blocks waits in
    /// the queue) and compiles its grammar. CPU work: an async caller runs it off its runtime's
    /// threads.
    pub fn prepare(&self, req: GenerateRequest) -> Result<Prepared> {
        let (model, kv) = self.decoder_parts()?;
        let ids = self.prompt_ids(&req.prompt)?;
        let c = model.config();
        let ctx = c.max_position_embeddings;
        if ids.is_empty() {
            return Err(PromptError::Empty.into());
        }
        if ids.len() >= ctx {
            return Err(PromptError::TooLong { tokens: ids.len(), context: ctx }.into());
        }
        // Checked here so that a bad id fails its own request, not a batch of others.
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(PromptError::UnknownToken { id, vocab: c.vocab_size }.into());
        }
        let total = lock(kv).alloc.total_blocks();
        if ids.len().div_ceil(BLOCK_SIZE) > total {
            return Err(EngineError::KvCacheFull { need: ids.len(), available: total * BLOCK_SIZE });
        }
        let constraint = req.grammar.as_ref().map(|g| self.compile_grammar(g)).transpose()?;
        let budget = req.max_tokens.min(ctx - ids.len());
        Ok(Prepared { request: req, ids, constraint, budget, guard: None })
    }

    /// Queues a prepared request in the decoder's scheduler (continuous batching with every
    /// other running request, see `scheduler.rs`) and returns its stream of events. Cheap: it
    /// only hands the request to the scheduler thread.
    pub fn start(&self, mut p: Prepared) -> Result<Generation> {
        let Kind::Decoder { tokenizer, scheduler, .. } = &self.kind else {
            return Err(EngineError::Request("this is an embedding model; it cannot generate".into()));
        };
        let (out, generation) = Output::new(&mut p, tokenizer.clone(), scheduler.waker());
        let Prepared { request, ids, constraint, .. } = p;
        scheduler.submit(Job {
            prompt: ids,
            sampling: request.sampling,
            ignore_eos: request.ignore_eos,
            constraint,
            cache_root: request.prefix_cache.root(),
            out,
        })?;
        Ok(generation)
    }

    /// [`prepare`](Self::prepare) and [`start`](Self::start) in one call.
    pub fn submit(&self, req: GenerateRequest) -> Result<Generation> {
        self.start(self.prepare(req)?)
    }

    /// Generates for `req` and waits for the end, calling `on_event` with each event on the
    /// caller's thread: a small blocking helper for the CLI and tests (the daemon reads the
    /// [`Generation`] of [`submit`](Self::submit) itself). `on_event` returns false to cancel;
    /// `generate` then returns once the request's KV blocks are freed, with the counts so far.
    /// A failure ([`Event::Error`]) is returned as the error, not passed to `on_event`. It
    /// must not be called on an async runtime's thread.
    pub fn generate(&self, req: &GenerateRequest, on_event: &mut dyn FnMut(Event) -> bool) -> Result<Usage> {
        let mut generation = self.submit(req.clone())?;
        while let Some(ev) = generation.blocking_next() {
            match ev {
                Event::Error(e) => return Err(e),
                Event::Done { usage, .. } => {
                    on_event(ev);
                    return Ok(usage);
                }
                ev => {
                    if !on_event(ev) {
                        let usage = generation.usage();
                        generation.cancel_and_wait();
                        return Ok(usage);
                    }
                }
            }
        }
        Err(EngineError::SchedulerStopped)
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
