//! `govbox model ...`: the box's signed model store (see [`crate::store`]), and running a model
//! file or folder directly, without the daemon.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use govbox_drivers::Backend;
use govbox_drivers::cpu::CpuBackend;
use govbox_engine::chat::ChatMessage;
use govbox_engine::embed::{EmbedInput, EmbedOptions};
use govbox_engine::rerank::sigmoid;
use govbox_engine::sampler::SamplingParams;
use govbox_engine::{Engine, EngineOptions, Event, GenerateRequest, LoadAs, PrefixCache, Prompt};

/// Where the model is and how to run it.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// A .gguf file, a HuggingFace model folder, or a sentence-transformers folder.
    #[arg(long)]
    model: PathBuf,
    /// CPU worker threads (0: one per core).
    #[arg(long, default_value_t = 0, env = "GOVBOX_THREADS")]
    threads: usize,
    /// Tokens the KV cache holds (the engine's default, as govboxd's `[serving] kv_tokens`).
    #[arg(long, default_value_t = EngineOptions::default().kv_tokens)]
    kv_tokens: usize,
    /// Element type of the KV cache: f32 (exact), f16 (half the memory) or q8_0 (34 bytes per 32 values).
    #[arg(long, default_value_t = EngineOptions::default().kv_dtype)]
    kv_dtype: govbox_drivers::KvDType,
    /// Device to run on: auto (Ascend, then CUDA, then the CPU), cpu, cuda:N or ascend:N. A
    /// named accelerator that cannot be opened is an error, never a silent fall-back.
    #[arg(long, default_value = "auto", env = "GOVBOX_DEVICE")]
    device: govbox_drivers::DeviceSpec,
    /// Batch-invariant matmul for every weight format (CPU only; `[serving] batch_invariant`):
    /// slower F32/F16/BF16 and Q4_K/Q5_K, whose rows then never depend on the batch.
    #[arg(long)]
    batch_invariant: bool,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    #[command(flatten)]
    Store(crate::store::StoreCommand),
    /// Generate text, streamed to stdout.
    Generate {
        #[command(flatten)]
        m: ModelArgs,
        /// The prompt (with --chat, the user's message).
        #[arg(long)]
        prompt: String,
        /// Render the prompt with the model's chat template as one user message.
        #[arg(long)]
        chat: bool,
        /// System message for --chat.
        #[arg(long, requires = "chat")]
        system: Option<String>,
        /// Most new tokens.
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Sampling temperature (0: greedy).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Nucleus sampling mass.
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// Keep only the k most likely tokens (0: off).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Drop tokens below this share of the top token's probability.
        #[arg(long, default_value_t = 0.0)]
        min_p: f32,
        /// Repetition penalty (1: off).
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        /// Seed for reproducible sampling.
        #[arg(long)]
        seed: Option<u64>,
        /// Stop string (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        /// Print timing to stderr.
        #[arg(long)]
        stats: bool,
    },
    /// Write the logits after every position of a token sequence to a safetensors file.
    Logits {
        #[command(flatten)]
        m: ModelArgs,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<u32>,
        /// Output file (one float32 tensor `logits` of shape [len(ids), vocab]).
        #[arg(long)]
        out: PathBuf,
        /// Feed all tokens in one batch instead of one at a time through the KV cache.
        #[arg(long)]
        prefill: bool,
    },
    /// Print the architecture, shapes, weight types, parameter count and context length.
    Info {
        #[command(flatten)]
        m: ModelArgs,
    },
    /// Print sentence embeddings of the texts as a JSON array of vectors.
    Embed {
        #[command(flatten)]
        m: ModelArgs,
        /// Text to embed (repeatable).
        #[arg(long, required = true)]
        text: Vec<String>,
        /// Cut texts longer than the model takes instead of refusing them.
        #[arg(long)]
        truncate: bool,
        /// Put this prompt of the model's `config_sentence_transformers.json` before each text
        /// (e.g. `query` for Qwen3-Embedding's instruction); without it, the model's default
        /// prompt, if it names one.
        #[arg(long)]
        prompt_name: Option<String>,
    },
    /// Score documents against a query with a reranker (a cross-encoder, or a causal LM scored by
    /// its "yes"/"no" logits like Qwen3-Reranker); prints a JSON array of `{index, logit, score}`
    /// (score = sigmoid(logit)), in document order.
    Rerank {
        #[command(flatten)]
        m: ModelArgs,
        /// The query.
        #[arg(long)]
        query: String,
        /// A document (repeatable).
        #[arg(long = "doc", required = true)]
        docs: Vec<String>,
        /// Refuse pairs longer than the model takes instead of cutting them.
        #[arg(long)]
        no_truncate: bool,
    },
    /// Measure prefill and decode speed (tokens/s), like llama-bench's pp and tg tests.
    Bench {
        #[command(flatten)]
        m: ModelArgs,
        /// Prompt tokens to prefill (0: skip).
        #[arg(short = 'p', long, default_value_t = 512)]
        prompt_tokens: usize,
        /// Tokens to generate (0: skip).
        #[arg(short = 'n', long, default_value_t = 128)]
        gen_tokens: usize,
        /// Repetitions; the best and mean are reported.
        #[arg(short = 'r', long, default_value_t = 3)]
        reps: usize,
        /// Prompt tokens already in the KV cache when the generated tokens are timed (llama-bench's
        /// `-d`): decode speed at that context depth, and the prefill of those tokens as
        /// `depth_prefill`. 0 times from a one-token prompt.
        #[arg(short = 'd', long, default_value_t = 0)]
        depth: usize,
    },
}

fn load(m: &ModelArgs) -> Result<(Arc<Engine>, Arc<dyn Backend>)> {
    load_as(m, LoadAs::Detected)
}

fn load_as(m: &ModelArgs, what: LoadAs) -> Result<(Arc<Engine>, Arc<dyn Backend>)> {
    let cpu = govbox_drivers::cpu::CpuOptions { batch_invariant: m.batch_invariant };
    let backend: Arc<dyn Backend> = if m.device == govbox_drivers::DeviceSpec::Cpu {
        Arc::new(
            CpuBackend::with_options(m.threads, cpu)
                .with_context(|| if m.batch_invariant { "--batch-invariant" } else { "opening the CPU backend" })?,
        )
    } else {
        govbox_drivers::device::open_with(m.device, m.threads, cpu)
            .with_context(|| format!("opening device {} (--device)", m.device))?
            .backend
    };
    // One request at a time: a sliding-window pool needs room for one sequence's window.
    let opts = EngineOptions { kv_tokens: m.kv_tokens, kv_dtype: m.kv_dtype, max_sequences: 1 };
    let engine = Engine::load_as(&m.model, backend.clone(), &opts, what)
        .with_context(|| format!("loading {}", m.model.display()))?;
    Ok((Arc::new(engine), backend))
}

/// Runs one `govbox model` command.
pub fn run(state: Option<&Path>, socket: &Path, audit_socket: Option<&Path>, cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Store(c) => crate::store::run(state, socket, audit_socket, c),
        ModelCommand::Generate {
            m,
            prompt,
            chat,
            system,
            max_tokens,
            temperature,
            top_p,
            top_k,
            min_p,
            repetition_penalty,
            seed,
            stop,
            stats,
        } => {
            let (engine, _) = load(&m)?;
            let prompt = if chat {
                let mut msgs = Vec::new();
                if let Some(s) = system {
                    msgs.push(ChatMessage::new("system", s));
                }
                msgs.push(ChatMessage::new("user", prompt));
                Prompt::Chat(msgs)
            } else {
                // The operator's own raw prompt: special-token strings are control tokens, as in
                // llama.cpp's CLI (chat messages above stay text whoever wrote them).
                Prompt::TextWithSpecialTokens(prompt)
            };
            let req = GenerateRequest {
                prompt,
                max_tokens,
                sampling: SamplingParams {
                    temperature,
                    top_p,
                    top_k,
                    min_p,
                    repetition_penalty,
                    seed,
                    ..Default::default()
                },
                stop,
                ignore_eos: false,
                deadline: None,
                prefix_cache: PrefixCache::Off,
                grammar: None,
            };
            let start = Instant::now();
            let mut out = std::io::stdout().lock();
            let mut first: Option<f64> = None;
            let usage = engine.generate(&req, &mut |e| {
                if let Event::Text(t) = e {
                    first.get_or_insert_with(|| start.elapsed().as_secs_f64());
                    return out.write_all(t.as_bytes()).and_then(|_| out.flush()).is_ok();
                }
                true
            })?;
            writeln!(out)?;
            if stats {
                let total = start.elapsed().as_secs_f64();
                eprintln!(
                    "prompt {} tokens, generated {} tokens in {total:.2}s (first text after {:.2}s, {:.1} tokens/s)",
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    first.unwrap_or(total),
                    usage.completion_tokens as f64 / total
                );
            }
            Ok(())
        }
        ModelCommand::Logits { m, ids, out, prefill } => {
            let (engine, _) = load(&m)?;
            let vocab = engine.decoder_model().context("logits need a decoder model")?.config().vocab_size;
            let logits = engine.logits(&ids, prefill)?;
            write_logits(&out, &logits, ids.len(), vocab)
        }
        ModelCommand::Info { m } => info(&m),
        ModelCommand::Embed { m, text, truncate, prompt_name } => {
            let (engine, _) = load(&m)?;
            let model = engine.embedding_model().context("embed needs an embedding model")?;
            let text = text
                .iter()
                .map(|t| Ok(model.prompted(prompt_name.as_deref(), t)?.into_owned()))
                .collect::<Result<Vec<String>>>()?;
            let inputs: Vec<EmbedInput<'_>> = text.iter().map(|t| EmbedInput::Text(t)).collect();
            let e = engine.embed_inputs(&inputs, EmbedOptions { truncate, dimensions: None })?;
            println!("{}", serde_json::to_string(&e.vectors)?);
            Ok(())
        }
        ModelCommand::Rerank { m, query, docs, no_truncate } => {
            // A causal LM given here is a yes/no reranker (Qwen3-Reranker).
            let (engine, _) = load_as(&m, LoadAs::Reranker)?;
            let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
            let s = engine.rerank(&query, &refs, !no_truncate)?;
            let rows: Vec<serde_json::Value> = s
                .logits
                .iter()
                .enumerate()
                .map(|(i, &l)| serde_json::json!({"index": i, "logit": l, "score": sigmoid(l)}))
                .collect();
            println!("{}", serde_json::to_string(&rows)?);
            Ok(())
        }
        ModelCommand::Bench { m, prompt_tokens, gen_tokens, reps, depth } => {
            bench(&m, prompt_tokens, gen_tokens, reps, depth)
        }
    }
}

fn write_logits(out: &Path, logits: &[f32], rows: usize, vocab: usize) -> Result<()> {
    if logits.len() != rows * vocab {
        bail!("internal: {} logits for {rows} x {vocab}", logits.len());
    }
    let bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, vocab], &bytes)?;
    safetensors::serialize_to_file([("logits", view)], None, out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn info(m: &ModelArgs) -> Result<()> {
    let (engine, backend) = load(m)?;
    println!("model:        {}", m.model.display());
    println!("format:       {}", engine.format());
    if let Some(d) = engine.decoder_model() {
        let c = d.config();
        println!("architecture: {}", c.arch.hf_name());
        println!("layers:       {}", c.n_layers);
        println!("hidden:       {}", c.hidden_size);
        println!("mlp:          {}", c.intermediate_size);
        println!("heads:        {} query, {} kv, head_dim {}", c.n_heads, c.n_kv_heads, c.head_dim);
        println!("vocab:        {}", c.vocab_size);
        println!("context:      {}", c.max_position_embeddings);
        println!("rope theta:   {}", c.rope_theta);
        println!("tied embed:   {}", c.tie_word_embeddings);
        println!("qkv bias:     {}", c.attention_bias);
        let mix: Vec<String> = d.weight_dtypes().iter().map(|(t, n)| format!("{t} x{n}")).collect();
        println!("weights:      {} ({:.1} MiB)", mix.join(", "), d.weight_bytes() as f64 / (1 << 20) as f64);
        println!("parameters:   {:.1} M", d.parameter_count() as f64 / 1e6);
        if let Some(kv) = engine.kv_spec() {
            let mib = engine.kv_bytes().unwrap_or(0) as f64 / (1 << 20) as f64;
            println!("kv cache:     {} tokens, {} ({mib:.1} MiB)", kv.n_blocks * kv.block_size, kv.dtype);
        }
    } else if let Some(e) = engine.embedding_model() {
        let what = if e.family().is_some() { "encoder" } else { "decoder without its LM head" };
        println!("architecture: {} {what} (sentence embeddings, {} pooling)", e.architecture(), e.pooling().name());
        println!("dimension:    {}", e.dim());
        println!("max tokens:   {}", e.max_seq_length());
    } else if let Some(r) = engine.rerank_model() {
        let what = if r.is_yes_no() { "causal LM scored by its yes/no logits" } else { "cross-encoder" };
        println!("architecture: {} ({what} reranker)", r.architecture());
        println!("max tokens:   {} per query-document pair", r.max_tokens());
    }
    let i = backend.info();
    println!("backend:      {:?} ({}, {} threads, simd {})", i.kind, i.name, i.threads, backend.caps().simd);
    Ok(())
}

fn bench(m: &ModelArgs, pp: usize, tg: usize, reps: usize, depth: usize) -> Result<()> {
    let (engine, backend) = load(m)?;
    let vocab = engine.decoder_model().context("bench needs a decoder model")?.config().vocab_size as u32;
    // Deterministic pseudo-random token ids, away from the special tokens at the start.
    let mut x = 0x9e37_79b9u32;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        100 + x % (vocab - 100).max(1)
    };
    let mut results = serde_json::Map::new();
    let reps = reps.max(1);
    if pp > 0 {
        let mut times = Vec::new();
        for _ in 0..reps {
            // A fresh prompt each repetition: a repeated one would be answered from the engine's
            // prefix cache and measure a lookup, not a prefill.
            let ids: Vec<u32> = (0..pp).map(|_| next()).collect();
            let req = GenerateRequest { ignore_eos: true, ..GenerateRequest::new(Prompt::Tokens(ids.clone()), 1) };
            let t = Instant::now();
            engine.generate(&req, &mut |_| true)?;
            times.push(t.elapsed().as_secs_f64());
        }
        results.insert("pp".into(), rate(pp, &times));
    }
    if tg > 0 && depth == 0 {
        let mut times = Vec::new();
        for _ in 0..reps {
            let req = GenerateRequest { ignore_eos: true, ..GenerateRequest::new(Prompt::Tokens(vec![next()]), tg) };
            let t = Instant::now();
            engine.generate(&req, &mut |_| true)?;
            times.push(t.elapsed().as_secs_f64());
        }
        results.insert("tg".into(), rate(tg, &times));
    } else if tg > 1 {
        // After a fresh prompt of `depth` tokens: the clock starts at the first event (the
        // prefill's token) and stops at the end, so it times the tg - 1 decode steps alone. The
        // time to that first event is the prefill of the `depth` tokens, reported beside it, so
        // one process (one long prefill) gives both figures at a depth.
        let (mut times, mut prefills) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let ids: Vec<u32> = (0..depth).map(|_| next()).collect();
            let req = GenerateRequest { ignore_eos: true, ..GenerateRequest::new(Prompt::Tokens(ids), tg) };
            let start = Instant::now();
            let mut first = None;
            engine.generate(&req, &mut |_| {
                first.get_or_insert_with(Instant::now);
                true
            })?;
            let first = first.context("the generation at depth produced no token")?;
            prefills.push(first.duration_since(start).as_secs_f64());
            times.push(first.elapsed().as_secs_f64());
        }
        results.insert("tg".into(), rate(tg - 1, &times));
        results.insert("depth".into(), depth.into());
        if depth > 0 {
            results.insert("depth_prefill".into(), rate(depth, &prefills));
        }
    }
    let info = backend.info();
    results.insert("device".into(), govbox_drivers::device::kind_name(info.kind).into());
    results.insert("device_name".into(), info.name.into());
    results.insert("threads".into(), info.threads.into());
    results.insert("simd".into(), backend.caps().simd.into());
    if !info.notes.is_empty() {
        results.insert("notes".into(), info.notes.into());
    }
    results.insert("model".into(), m.model.display().to_string().into());
    if let Some(kv) = engine.kv_spec() {
        results.insert("kv_dtype".into(), kv.dtype.name().into());
        results.insert("kv_bytes".into(), engine.kv_bytes().unwrap_or(0).into());
    }
    println!("{}", serde_json::Value::Object(results));
    Ok(())
}

fn rate(tokens: usize, times: &[f64]) -> serde_json::Value {
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    serde_json::json!({ "tokens": tokens, "best_tps": tokens as f64 / best, "mean_tps": tokens as f64 / mean })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        m: ModelArgs,
    }

    /// `govbox model` runs with the engine's defaults, which are govboxd's `[serving]` ones.
    #[test]
    fn model_args_default_to_the_engine_options() {
        let m = Cli::try_parse_from(["govbox", "--model", "m.gguf"]).unwrap().m;
        let d = EngineOptions::default();
        assert_eq!((m.kv_tokens, m.kv_dtype), (d.kv_tokens, d.kv_dtype));
        let m = Cli::try_parse_from(["govbox", "--model", "m", "--kv-tokens", "64", "--kv-dtype", "f16"]).unwrap().m;
        assert_eq!((m.kv_tokens, m.kv_dtype), (64, govbox_drivers::KvDType::F16));
    }
}
