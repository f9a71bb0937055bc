//! Mixture-of-experts MLP (Qwen3-MoE, DeepSeek-V3): a router picks each token's top-k experts;
//! every expert then runs once, as ordinary matmuls over the rows of the tokens routed to it, and
//! the results are summed per token with the routing weights (plus the shared experts, run on
//! every token, for DeepSeek).

use govbox_drivers::{Backend, Tensor};

use super::names::{Names, Part};
use crate::Result;
use crate::family::{MoeConfig, MoeScoring};
use crate::weights::WeightMap;

struct Expert {
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// One layer's MoE block.
pub(crate) struct MoeBlock {
    router: Tensor,
    /// `e_score_correction_bias`, on the host (routing happens there).
    score_bias: Option<Vec<f32>>,
    experts: Vec<Expert>,
    shared: Option<Expert>,
    cfg: MoeConfig,
    hidden: usize,
}

impl MoeBlock {
    /// Loads layer `i`'s router and experts (one tensor per expert in HF folders, stacked in
    /// GGUF files).
    pub fn load(w: &WeightMap, b: &dyn Backend, names: Names, i: usize, cfg: &MoeConfig, h: usize) -> Result<Self> {
        let (ne, ff) = (cfg.n_experts, cfg.expert_ff);
        let router = w.upload(b, &format!("{}.weight", names.layer(i, Part::Router)), &[ne, h])?;
        let mut experts = Vec::with_capacity(ne);
        for e in 0..ne {
            let load = |part: Part, shape: [usize; 2]| {
                if names.gguf {
                    w.upload_part(b, &names.stacked_experts(i, part), &[ne, shape[0], shape[1]], e)
                } else {
                    w.upload(b, &names.expert(i, e, part), &shape)
                }
            };
            experts.push(Expert {
                gate: load(Part::Gate, [ff, h])?,
                up: load(Part::Up, [ff, h])?,
                down: load(Part::Down, [h, ff])?,
            });
        }
        let score_bias = if cfg.score_bias {
            let name = if names.gguf {
                format!("blk.{i}.exp_probs_b.bias")
            } else {
                names.hf_layer(i, "mlp.gate.e_score_correction_bias")
            };
            Some(w.read_f32(&name, &[ne])?)
        } else {
            None
        };
        let shared = if cfg.shared_ff > 0 {
            let sf = cfg.shared_ff;
            let name = |part: &str| {
                if names.gguf {
                    format!("blk.{i}.ffn_{part}_shexp.weight")
                } else {
                    names.hf_layer(i, &format!("mlp.shared_experts.{part}_proj.weight"))
                }
            };
            Some(Expert {
                gate: w.upload(b, &name("gate"), &[sf, h])?,
                up: w.upload(b, &name("up"), &[sf, h])?,
                down: w.upload(b, &name("down"), &[h, sf])?,
            })
        } else {
            None
        };
        Ok(Self { router, score_bias, experts, shared, cfg: cfg.clone(), hidden: h })
    }

    /// The block's output for the normed rows `x` `[rows, hidden]`.
    pub fn forward(&self, b: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let rows = x.rows();
        let ne = self.experts.len();
        let logits = b.download_f32(&b.matmul(x, &self.router)?)?;
        let routes = route(&logits, &self.cfg, self.score_bias.as_deref());
        // Per expert: the rows routed to it and their weights, in row order.
        let mut groups: Vec<(Vec<usize>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); ne];
        for (r, picks) in routes.iter().enumerate() {
            for &(e, wt) in picks {
                groups[e].0.push(r);
                groups[e].1.push(wt);
            }
        }
        let h = self.hidden;
        let mut out = vec![0f32; rows * h];
        let active: Vec<(&Expert, &[usize], &[f32])> = self
            .experts
            .iter()
            .zip(&groups)
            .filter(|(_, (rs, _))| !rs.is_empty())
            .map(|(ex, (rs, wts))| (ex, rs.as_slice(), wts.as_slice()))
            .collect();
        let run = |&(ex, rs, _): &(&Expert, &[usize], &[f32])| -> Result<Vec<f32>> {
            let xe = if rs.len() == rows { x.clone() } else { b.gather_rows(x, rs)? };
            Ok(b.download_f32(&ex.forward(b, &xe)?)?)
        };
        // The chosen experts side by side where the backend takes concurrent calls (the CPU's
        // pool: each expert's small matmuls were a parallel region of their own, one after
        // another, and a decode step of a MoE model spent a tenth of its time handing work
        // between threads). Each expert's result is the same either way, and they are summed
        // below in expert order, so the output does not depend on which ran where.
        let ys: Vec<Result<Vec<f32>>> = if b.concurrent_calls() && active.len() > 1 {
            use rayon::prelude::*;
            active.par_iter().map(run).collect()
        } else {
            active.iter().map(run).collect()
        };
        for (&(_, rs, wts), y) in active.iter().zip(ys) {
            let y = y?;
            for (j, (&r, &wt)) in rs.iter().zip(wts).enumerate() {
                for (o, &v) in out[r * h..(r + 1) * h].iter_mut().zip(&y[j * h..(j + 1) * h]) {
                    *o += v * wt;
                }
            }
        }
        let routed = b.upload_f32(&out, &[rows, h])?;
        match &self.shared {
            Some(sh) => Ok(b.add(&routed, &sh.forward(b, x)?)?),
            None => Ok(routed),
        }
    }
}

impl Expert {
    fn forward(&self, b: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let act = b.swiglu_into(b.matmul(x, &self.gate)?, &b.matmul(x, &self.up)?)?;
        Ok(b.matmul(&act, &self.down)?)
    }
}

/// For each row of router `logits` (`[rows, n_experts]`): the experts it goes to, with their
/// weights. Scores are the softmax (Qwen) or sigmoid (DeepSeek) of the logits; the choice uses
/// the scores plus `bias` when given, limited to the `topk_group` groups whose two best choice
/// scores sum highest (the others count as 0, as HF masks them); the weights are the chosen
/// experts' scores, renormalised to sum to one when `norm_topk_prob`, times `routed_scaling`.
/// Ties go to the lower index.
pub(crate) fn route(logits: &[f32], cfg: &MoeConfig, bias: Option<&[f32]>) -> Vec<Vec<(usize, f32)>> {
    let ne = cfg.n_experts;
    let top = |v: &[f32], k: usize| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
        idx.truncate(k);
        idx
    };
    logits
        .chunks_exact(ne)
        .map(|row| {
            let scores: Vec<f32> = match cfg.scoring {
                MoeScoring::Softmax => {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let exps: Vec<f32> = row.iter().map(|&l| (l - max).exp()).collect();
                    let sum: f32 = exps.iter().sum();
                    exps.iter().map(|e| e / sum).collect()
                }
                MoeScoring::Sigmoid => row.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect(),
            };
            let mut choice: Vec<f32> = match bias {
                Some(bias) => scores.iter().zip(bias).map(|(s, b)| s + b).collect(),
                None => scores.clone(),
            };
            if cfg.n_group > 1 && cfg.topk_group < cfg.n_group {
                let per = ne / cfg.n_group;
                let group_scores: Vec<f32> =
                    choice.chunks_exact(per).map(|g| top(g, 2.min(per)).iter().map(|&i| g[i]).sum()).collect();
                let keep = top(&group_scores, cfg.topk_group);
                for (gi, g) in choice.chunks_exact_mut(per).enumerate() {
                    if !keep.contains(&gi) {
                        g.fill(0.0);
                    }
                }
            }
            let mut picks: Vec<(usize, f32)> = top(&choice, cfg.top_k).into_iter().map(|e| (e, scores[e])).collect();
            if cfg.norm_topk_prob {
                let s: f32 = picks.iter().map(|p| p.1).sum::<f32>()
                    + if cfg.scoring == MoeScoring::Sigmoid { 1e-20 } else { 0.0 };
                for p in &mut picks {
                    p.1 /= s;
                }
            }
            for p in &mut picks {
                p.1 *= cfg.routed_scaling;
            }
            picks
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::route;
    use crate::family::{MoeConfig, MoeScoring};

    fn cfg(norm: bool) -> MoeConfig {
        MoeConfig::softmax(4, 2, 1, norm, vec![true])
    }

    #[test]
    fn routing_picks_the_top_k_and_renormalises_only_when_asked() {
        let logits = [0.0, 2.0, 1.0, 2.0];
        let raw = route(&logits, &cfg(false), None);
        assert_eq!(raw[0].iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3]);
        let sum: f32 = raw[0].iter().map(|p| p.1).sum();
        assert!(sum < 0.9, "softmax weights of 2 of 4 experts sum below 1: {sum}");
        let normed = route(&logits, &cfg(true), None);
        assert!((normed[0][0].1 - 0.5).abs() < 1e-6 && (normed[0][1].1 - 0.5).abs() < 1e-6);
    }

    #[test]
    fn grouped_sigmoid_routing_keeps_the_best_group_and_weights_by_unbiased_scores() {
        let c = MoeConfig {
            scoring: MoeScoring::Sigmoid,
            n_group: 2,
            topk_group: 1,
            score_bias: true,
            routed_scaling: 2.5,
            top_k: 1,
            ..cfg(true)
        };
        // Expert 0 has the best logit, but the bias makes group 1 (experts 2, 3) win.
        let bias = [0.0, 0.0, 1.0, 1.0];
        let r = route(&[3.0, -3.0, 0.0, 0.5], &c, Some(&bias));
        assert_eq!(r[0].len(), 1);
        assert_eq!(r[0][0].0, 3);
        assert!((r[0][0].1 - 2.5).abs() < 1e-5, "one pick renormalised to 1, times 2.5: {}", r[0][0].1);
    }
}
