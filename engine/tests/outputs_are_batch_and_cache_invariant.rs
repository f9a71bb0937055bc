//! Determinism: a greedy or seeded request gives the same tokens whatever the prefix cache holds
//! and whatever else shares its forward passes. For many prompts (English and Chinese, some
//! sharing a system prompt, one longer than a prefill chunk), greedy and seeded alike, the
//! first answer (prefilled fresh, or after another prompt's shared prefix), the repeat (its own
//! prefix found in the cache) and the answer with the seven other requests running beside it
//! (prefill chunks and decode rows of other streams in the same passes) must all be equal, on
//! SmolLM2 (Q4_1 layers, Q8_0 embeddings and head) and on the random-weight fixtures in F32
//! safetensors, F32 GGUF and Q8_0 GGUF, on the CPU (with `batch_invariant` for the files with
//! float tensors, as the README's contract asks) and on the Ascend simulator; and beneath the
//! tokens, every position's logits, bitwise, however the prompt is cut into passes (SmolLM2 and
//! tiny-llama Q8_0: the quantised formats; the F32 fixtures and tiny-qwen2's Q8_0 file, whose
//! float tensors need the CPU backend's `batch_invariant` option).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::runs::{Out, concurrently, run};
use common::*;

use std::path::Path;
use std::sync::Arc;

use govbox_drivers::Backend;
use govbox_engine::kv::BLOCK_SIZE;
use govbox_engine::models::decoder::{LogitsFor, SeqInput};
use govbox_engine::sampler::SamplingParams;
use govbox_engine::{Engine, EngineOptions, FinishReason, GenerateRequest, Prompt};

fn engine(path: &Path, backend: Arc<dyn Backend>) -> Engine {
    Engine::load(path, backend, &EngineOptions { kv_tokens: 8192, kv_dtype: kv_dtype(), ..Default::default() }).unwrap()
}

/// Greedy requests and seeded sampling ones (each its own seed) for `prompts`.
fn requests(prompts: &[Prompt], max_tokens: usize) -> Vec<GenerateRequest> {
    let greedy =
        prompts.iter().map(|p| GenerateRequest { ignore_eos: true, ..GenerateRequest::new(p.clone(), max_tokens) });
    let seeded = prompts.iter().enumerate().map(|(i, p)| GenerateRequest {
        ignore_eos: true,
        sampling: SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            top_k: 40,
            seed: Some(1000 + i as u64),
            ..SamplingParams::default()
        },
        ..GenerateRequest::new(p.clone(), max_tokens)
    });
    greedy.chain(seeded).collect()
}

/// Every way of running each request gives the same output.
fn check(label: &str, path: &Path, backend: Arc<dyn Backend>, prompts: &[Prompt], max_tokens: usize) {
    let all = requests(prompts, max_tokens);
    for (mode, reqs) in [("greedy", &all[..prompts.len()]), ("seeded", &all[prompts.len()..])] {
        // Each request first on one engine, in turn: later prompts may find an earlier one's
        // shared prefix in the cache; then each again, finding its own.
        let e = engine(path, backend.clone());
        let first: Vec<Out> = reqs.iter().map(|r| run(&e, r)).collect();
        let reused_before = e.kv_stats().unwrap().tokens_reused;
        let repeat: Vec<Out> = reqs.iter().map(|r| run(&e, r)).collect();
        let st = e.kv_stats().unwrap();
        assert!(st.tokens_reused > reused_before, "{label} {mode}: the repeats reused no cached prefix: {st:?}");
        // All together on the same engine (cached prefixes, eight streams in each pass)...
        let together = concurrently(&e, reqs);
        assert!(e.kv_stats().unwrap().peak_batch >= 2, "{label} {mode}: the requests never shared a pass");
        // ... and together on a fresh engine (nothing cached: prefill chunks beside decode rows).
        let fresh_together = concurrently(&engine(path, backend.clone()), reqs);
        let mut differ = Vec::new();
        for (i, f) in first.iter().enumerate() {
            assert_eq!((f.1, f.2), (Some(FinishReason::Length), max_tokens), "{label} {mode} request {i}");
            for (how, o) in [
                ("repeat", &repeat[i]),
                ("beside 7 others", &together[i]),
                ("fresh, beside 7 others", &fresh_together[i]),
            ] {
                if o != f {
                    differ.push(format!("request {i} {how}:\n    first {:?}\n    then  {:?}", f.0, o.0));
                }
            }
        }
        assert!(
            differ.is_empty(),
            "{label} {mode}: {} of {} runs differ from the first:\n{}",
            differ.len(),
            3 * reqs.len(),
            differ.join("\n")
        );
    }
}

/// Prompts of token ids inside every fixture's vocabulary: eight lengths from 3 to past one
/// prefill chunk (512), half of them behind a shared 40-token "system prompt".
fn id_prompts() -> Vec<Prompt> {
    let ids_of = |seed: u32, len: usize| -> Vec<u32> {
        (0..len as u32).map(|i| 3 + (i * 7919 + seed * 104_729) % 190).collect()
    };
    let system = ids_of(99, 40);
    [3usize, 17, 33, 70, 9, 40, 130, 600]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let own = ids_of(i as u32, len);
            Prompt::Tokens(if i % 2 == 1 { [system.clone(), own].concat() } else { own })
        })
        .collect()
}

/// A fixture with float weights (F32, or tiny-qwen2's F16 `ffn_down`: its width 176 is no
/// multiple of Q8_0's 32): `cpu` on [`invariant_cpu`], since the default CPU kernels for float
/// weights change with the number of rows in a pass (README, `batch_invariant`; a decode row beside
/// another request's prefill chunk once flipped a seeded sample), and `ascend` on the simulator.
macro_rules! float_check {
    ($name:ident, $label:expr, $file:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn cpu() {
                if let Some(b) = invariant_cpu() {
                    check($label, &fixture($file), b, &id_prompts(), 12)
                }
            }

            #[test]
            fn ascend() {
                check($label, &fixture($file), common::devices::ascend(), &id_prompts(), 12)
            }
        }
    };
}

float_check!(tiny_llama_f32_safetensors, "tiny-llama", "tiny-llama");
float_check!(tiny_qwen2_f32_safetensors, "tiny-qwen2", "tiny-qwen2");
test_device!(tiny_llama_gguf_q8_0, |b| check(
    "tiny-llama q8_0",
    &fixture("gguf/tiny-llama-q8_0.gguf"),
    b,
    &id_prompts(),
    12
));
float_check!(tiny_qwen2_gguf_q8_0, "tiny-qwen2 q8_0", "gguf/tiny-qwen2-q8_0.gguf");
float_check!(tiny_qwen2_gguf_f32, "tiny-qwen2 f32 gguf", "gguf/tiny-qwen2-f32.gguf");

/// Below the generated tokens: every position's logits, bitwise, whichever way the prompt goes
/// through the model. A fresh prefill of the whole prompt, the same prompt cut into passes (a
/// first block as a cached prefix would leave it, then the rest in uneven chunks), one token per
/// pass (decode), and all prompts in one pass together must give the same bits, since a
/// greedy choice between two near-equal logits (common in a long answer) flips on the last bit.
fn logits_every_way(label: &str, path: &Path, backend: Arc<dyn Backend>, lens: &[usize]) {
    let e = engine(path, backend);
    let model = e.decoder_model().unwrap();
    let n_blocks = 4 * lens.iter().map(|l| l.div_ceil(BLOCK_SIZE)).sum::<usize>();
    let mut cache = kv_cache_for(model, n_blocks);
    let mut next_block = 0u32;
    let mut table = |len: usize| -> Vec<u32> {
        let n = len.div_ceil(BLOCK_SIZE) as u32;
        next_block += n;
        (next_block - n..next_block).collect()
    };
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| (0..l as u32).map(|j| 3 + (j * 7919 + i as u32 * 7) % 190).collect())
        .collect();
    let mut fresh = Vec::new();
    for (pi, p) in prompts.iter().enumerate() {
        let t = table(p.len());
        let whole = model
            .forward(
                &[SeqInput { tokens: p, start_pos: 0, block_table: &t, local_table: &[] }],
                cache.as_mut(),
                LogitsFor::All,
            )
            .unwrap();
        // A first block (as a cached prefix leaves it), then uneven chunks.
        let t2 = table(p.len());
        let mut cuts = vec![0, BLOCK_SIZE.min(p.len())];
        cuts.extend([BLOCK_SIZE + 3, 2 * BLOCK_SIZE + 7, 5 * BLOCK_SIZE + 1].into_iter().filter(|&c| c < p.len()));
        cuts.push(p.len());
        cuts.dedup();
        let mut chunked = Vec::new();
        for w in cuts.windows(2) {
            let inp = SeqInput { tokens: &p[w[0]..w[1]], start_pos: w[0], block_table: &t2, local_table: &[] };
            chunked.extend(model.forward(&[inp], cache.as_mut(), LogitsFor::All).unwrap());
        }
        assert!(
            whole == chunked,
            "{label}: prompt {pi} ({} tokens) cut at {cuts:?} differs from a fresh prefill",
            p.len()
        );
        let t3 = table(p.len());
        let mut decoded = Vec::new();
        for i in 0..p.len() {
            let inp = SeqInput { tokens: &p[i..=i], start_pos: i, block_table: &t3, local_table: &[] };
            decoded.extend(model.forward(&[inp], cache.as_mut(), LogitsFor::All).unwrap());
        }
        assert!(
            whole == decoded,
            "{label}: prompt {pi} ({} tokens) one token per pass differs from a fresh prefill",
            p.len()
        );
        fresh.extend(whole);
    }
    let tables: Vec<Vec<u32>> = prompts.iter().map(|p| table(p.len())).collect();
    let batch: Vec<SeqInput<'_>> = prompts
        .iter()
        .zip(&tables)
        .map(|(p, t)| SeqInput { tokens: p, start_pos: 0, block_table: t, local_table: &[] })
        .collect();
    let together = model.forward(&batch, cache.as_mut(), LogitsFor::All).unwrap();
    assert!(fresh == together, "{label}: the prompts prefilled together differ from each alone");
}

const LENS: [usize; 5] = [5, 20, 37, 70, 130];

test_device!(tiny_llama_gguf_q8_0_logits_every_way, |b| {
    logits_every_way("tiny-llama q8_0", &fixture("gguf/tiny-llama-q8_0.gguf"), b, &LENS)
});

/// The CPU backend with batch-invariant matmul for every weight format (two threads), or `None`
/// (the test is skipped, saying so) on a CPU without AVX-512F/BW/VL, where the backend refuses
/// the option (its float kernels are not invariant there: `CpuBackend::with_options`). On a CPU
/// that has them, a refusal fails the test.
fn invariant_cpu() -> Option<Arc<dyn Backend>> {
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    if !avx512 {
        eprintln!("skipping the batch-invariant CPU backend: this CPU lacks AVX-512F/BW/VL");
        return None;
    }
    let opts = govbox_drivers::cpu::CpuOptions { batch_invariant: true };
    Some(Arc::new(govbox_drivers::cpu::CpuBackend::with_options(2, opts).unwrap()))
}

/// The float weights: `cpu` on [`invariant_cpu`] (the default CPU kernels change with the number
/// of rows, docs/ARCHITECTURE.md "Precision contract", so their logits differ in the last bits)
/// and `ascend` on the simulator. Not CUDA, whose float matmul is cuBLAS from 9 rows on.
macro_rules! float_logits_every_way {
    ($name:ident, $label:expr, $file:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn cpu() {
                if let Some(b) = invariant_cpu() {
                    logits_every_way($label, &fixture($file), b, &LENS)
                }
            }

            #[test]
            fn ascend() {
                logits_every_way($label, &fixture($file), common::devices::ascend(), &LENS)
            }
        }
    };
}

float_logits_every_way!(tiny_llama_f32_logits_every_way, "tiny-llama f32", "tiny-llama");
float_logits_every_way!(tiny_qwen2_gguf_f32_logits_every_way, "tiny-qwen2 f32 gguf", "gguf/tiny-qwen2-f32.gguf");
float_logits_every_way!(tiny_qwen2_gguf_q8_0_logits_every_way, "tiny-qwen2 q8_0", "gguf/tiny-qwen2-q8_0.gguf");
test_device!(smollm2_logits_every_way, |b| {
    if let Some(path) = smollm2() {
        logits_every_way("smollm2", &path, b, &[20, 70])
    }
});

/// Eight English and Chinese prompts, half sharing a chat system prompt (as every request of a
/// chat application does), one long enough for several KV blocks.
fn text_prompts() -> Vec<Prompt> {
    let system = "<|im_start|>system\nYou are a helpful assistant for a government office. Answer briefly and precisely.<|im_end|>\n<|im_start|>user\n";
    let own = [
        "Explain photosynthesis in one sentence.",
        "请用一句话解释什么是光合作用。",
        "The capital of France is",
        "请列出三种常见的可再生能源，并简要说明它们的优点。",
        "Write a short note to a colleague about tomorrow's meeting at 9 am in room 204.",
        "中华人民共和国的首都是",
        "Once upon a time, in a village by the sea, there lived an old fisherman who every morning walked down to the harbour before dawn, checked his nets, and told the children stories about the storms he had seen. One day",
        "政府信息公开条例规定，行政机关应当及时、准确地公开政府信息。请说明申请人如何提出政府信息公开申请，需要提供哪些材料，以及行政机关答复的期限是多少。",
    ];
    own.iter()
        .enumerate()
        .map(|(i, p)| {
            Prompt::Text(if i % 2 == 0 {
                format!("{system}{p}<|im_end|>\n<|im_start|>assistant\n")
            } else {
                p.to_string()
            })
        })
        .collect()
}

/// The CPU only: on the simulator's naive kernels these 64 SmolLM2 generations take minutes;
/// the simulator's SmolLM2 logits are checked every way above.
#[test]
fn smollm2_q4_1() {
    if let Some(path) = smollm2() {
        check("smollm2", &path, backend(), &text_prompts(), 16)
    }
}
