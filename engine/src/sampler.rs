//! Turning logits into the next token: penalties, temperature, top-k, top-p, min-p, seeded
//! sampling.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings of one request. The defaults are greedy decoding with no penalties.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one (0 = off).
    pub min_p: f32,
    /// HF/CTRL repetition penalty over prompt and output tokens (1 = off).
    pub repetition_penalty: f32,
    /// OpenAI presence penalty over output tokens (0 = off).
    pub presence_penalty: f32,
    /// OpenAI frequency penalty over output tokens (0 = off).
    pub frequency_penalty: f32,
    /// Seed for reproducible sampling; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// Added to these tokens' logits before anything else (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    /// Report each sampled token's log-probability with this many alternatives (`None`: no
    /// log-probabilities). Not a sampling setting, but it travels with them to the scheduler.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logit_bias: Vec::new(),
            logprobs: None,
        }
    }
}

/// A sampler with its own random stream.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    counts: std::collections::HashMap<u32, u32>,
    seen: std::collections::HashSet<u32>,
}

impl Sampler {
    /// A sampler; `prompt` feeds the repetition penalty.
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self { params, rng, counts: Default::default(), seen: prompt.iter().copied().collect() }
    }

    /// Records a generated token (for the penalties).
    pub fn accept(&mut self, id: u32) {
        *self.counts.entry(id).or_default() += 1;
        self.seen.insert(id);
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let mut l = logits.to_vec();
        for &(id, bias) in &p.logit_bias {
            if let Some(x) = l.get_mut(id as usize) {
                *x += bias;
            }
        }
        if p.repetition_penalty != 1.0 {
            for &id in &self.seen {
                if let Some(x) = l.get_mut(id as usize) {
                    *x = if *x > 0.0 { *x / p.repetition_penalty } else { *x * p.repetition_penalty };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&id, &n) in &self.counts {
                if let Some(x) = l.get_mut(id as usize) {
                    *x -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(&l);
        }
        // Candidates sorted by logit, most likely first.
        let mut idx: Vec<u32> = (0..l.len() as u32).collect();
        idx.sort_unstable_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
        if p.top_k > 0 && p.top_k < idx.len() {
            idx.truncate(p.top_k);
        }
        let max = l[idx[0] as usize];
        let mut probs: Vec<f64> = idx.iter().map(|&i| (((l[i as usize] - max) / p.temperature) as f64).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        if p.min_p > 0.0 {
            let cut = probs[0] * p.min_p as f64;
            let keep = probs.iter().take_while(|&&x| x >= cut).count().max(1);
            idx.truncate(keep);
            probs.truncate(keep);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, &x) in probs.iter().enumerate() {
                acc += x;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            idx.truncate(keep);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (&i, &x) in idx.iter().zip(&probs) {
            if r < x {
                return i;
            }
            r -= x;
        }
        idx[idx.len() - 1]
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded_sampling() {
        let logits = [0.1f32, 2.0, 1.9, -1.0];
        let mut s = Sampler::new(SamplingParams::default(), &[]);
        assert_eq!(s.sample(&logits), 1);
        let p = SamplingParams { temperature: 1.0, seed: Some(7), ..Default::default() };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p.clone(), &[]);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p.clone(), &[]);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        assert!(a.contains(&1) && a.contains(&2), "temperature 1 explores: {a:?}");
    }

    #[test]
    fn filters_and_penalties() {
        let logits = [0.0f32, 5.0, 4.9, 1.0];
        let mut s =
            Sampler::new(SamplingParams { temperature: 1.0, top_k: 1, seed: Some(1), ..Default::default() }, &[]);
        assert!((0..20).all(|_| s.sample(&logits) == 1));
        let mut s =
            Sampler::new(SamplingParams { temperature: 1.0, min_p: 0.5, seed: Some(1), ..Default::default() }, &[]);
        assert!((0..50).all(|_| matches!(s.sample(&logits), 1 | 2)));
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..Default::default() }, &[1]);
        assert_eq!(s.sample(&logits), 2, "the prompt's token 1 is penalised below 2");
        let mut s = Sampler::new(SamplingParams { presence_penalty: 1.0, ..Default::default() }, &[]);
        s.accept(1);
        assert_eq!(s.sample(&logits), 2);
        let mut s = Sampler::new(SamplingParams { logit_bias: vec![(3, 4.5), (1, -100.0)], ..Default::default() }, &[]);
        assert_eq!(s.sample(&logits), 3, "logit_bias lifts token 3 (1.0 + 4.5) over token 2 (4.9)");
    }
}
