//! Exact attention in f64: softmax(sm_scale · Q Kᵀ) V with the causal mask and GQA of ALGORITHM.md,
//! the yardstick of every accuracy figure.

use rayon::prelude::*;

use crate::backend::{Capabilities, Problem};
use crate::config::{AttentionParams, Granularity, Mode};
use crate::error::Result;
use crate::numerics::MAX_HEAD_DIM;
use crate::tensor::{DType, Layout, Tensor};

/// Exact O (`[B, Hq, Nq, D]`, HND) and natural log-sum-exp (`[B, Hq, Nq]`) in f64.
pub struct Reference {
    pub out: Vec<f64>,
    pub lse: Vec<f64>,
}

fn reference_caps() -> Capabilities {
    Capabilities {
        backend: "reference",
        device: "f64 on the CPU".into(),
        modes: vec![Mode::Exact],
        auto_mode: Mode::Exact,
        granularities: Granularity::ALL.to_vec(),
        native_head_dims: vec![],
        max_head_dim: MAX_HEAD_DIM,
        kv_blocks: vec![64, 128],
        default_kv_block: 64,
        mode_kv_blocks: Vec::new(),
        dtypes: DType::ALL.to_vec(),
        layouts: Layout::ALL.to_vec(),
        causal: true,
        gqa: true,
        lse: true,
        smooth_q: false,
        smooth_v: false,
        rotate: false,
    }
}

/// Exact attention of `q`, `k`, `v` with `causal` and `sm_scale` taken from `params`.
pub fn reference_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    params: &AttentionParams,
) -> Result<Reference> {
    let exact = AttentionParams {
        mode: Mode::Exact,
        kv_block: None,
        ..*params
    };
    let p = Problem::new(&q.meta(), &k.meta(), &v.meta(), &exact, &reference_caps())?;
    let (qf, kf, vf) = (q.to_f32_hnd(), k.to_f32_hnd(), v.to_f32_hnd());
    let (nq, nk, d) = (p.seq_q, p.seq_k, p.head_dim);
    let group = p.group_size();
    let sm_scale = p.sm_scale as f64;
    let mut out = vec![0.0f64; p.out_shape().numel()];
    let mut lse = vec![f64::NEG_INFINITY; p.batch * p.heads_q * nq];
    if out.is_empty() {
        return Ok(Reference { out, lse });
    }
    out.par_chunks_mut(d)
        .zip(lse.par_iter_mut())
        .enumerate()
        .for_each(|(row, (o, lse))| {
            let m = row % nq;
            let bh = row / nq;
            let (b, h) = (bh / p.heads_q, bh % p.heads_q);
            let Some(last) = p.last_visible_key(m) else {
                return; // zeros and -inf already
            };
            let qr = &qf[row * d..(row + 1) * d];
            let kv_base = (b * p.heads_kv + h / group) * nk * d;
            let logits: Vec<f64> = (0..=last)
                .map(|n| {
                    let kr = &kf[kv_base + n * d..kv_base + (n + 1) * d];
                    qr.iter()
                        .zip(kr)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        * sm_scale
                })
                .collect();
            let max = logits.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let mut sum = 0.0f64;
            for (n, &s) in logits.iter().enumerate() {
                let w = (s - max).exp();
                sum += w;
                let vr = &vf[kv_base + n * d..kv_base + (n + 1) * d];
                for (acc, &x) in o.iter_mut().zip(vr) {
                    *acc += w * x as f64;
                }
            }
            for acc in o.iter_mut() {
                *acc /= sum;
            }
            *lse = max + sum.ln();
        });
    Ok(Reference { out, lse })
}
