//! The CPU backend: every step of ALGORITHM.md in plain Rust, multi-threaded with rayon.
//! It is the implementation every other backend is checked against, so it favours the text of the
//! algorithm over speed: each step is a named function in the order of the document.

use std::sync::Arc;

use half::f16;
use rayon::prelude::*;

use crate::backend::{
    AttentionBackend, AttentionOutput, Capabilities, DeviceOutput, DeviceTensor, Problem,
    QuantizedQkv, QuantizedV,
};
use crate::config::{AttentionParams, Mode};
use crate::error::{Error, Result};
use crate::numerics::fp8::{E4M3_MAX, e4m3_decode, e4m3_encode, e4m3_round, fp8_v_scale};
use crate::numerics::hadamard::fwht_normalized;
use crate::numerics::quant::{Operand, quantize_rows, scale_group, scale_groups};
use crate::numerics::smooth::{block_means, token_mean};
use crate::numerics::{LN_2, LOG2_E, Q_SMOOTH_BLOCK};
use crate::tensor::{DType, Layout, Shape, Tensor};

const NAME: &str = "cpu";

/// Key block sizes the CPU accepts; 64 is the default, as in the SageAttention sm89 kernels.
const KV_BLOCKS: [usize; 2] = [64, 128];

/// The CPU backend. Stateless: safe to share across threads.
#[derive(Clone, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

/// One head's K and V, smoothed and quantized (Steps 1, 2b, 3, 7).
struct KvHead {
    /// `[Nk, Dp]`
    k_codes: Vec<i8>,
    k_scales: Vec<f32>,
    /// INT8 codes of K' for the dS correction (Step 2): the same as `k_codes` in INT8 modes.
    k8: Option<(Vec<i8>, Vec<f32>)>,
    /// `[D]`
    km: Vec<f32>,
    v: VHead,
    /// `[D]` when `smooth_v`
    vm: Option<Vec<f32>>,
}

enum VHead {
    /// E4M3 codes `[Nk, Dp]` and their decoded values (the PV stage reads those), scales `[Dp]`.
    Fp8 {
        codes: Vec<u8>,
        decoded: Vec<f32>,
        scales: Vec<f32>,
    },
    /// f16(V') widened back to f32, `[Nk, Dp]`.
    F16 { values: Vec<f32> },
}

/// One head's Q, smoothed and quantized.
struct QHead {
    /// `[Nq, Dp]`
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// Block means (rotated when `rotate`), `[ceil(Nq/128), Dp]`, when `smooth_q`.
    qm: Option<Vec<f32>>,
}

/// The first non-finite element of one head's rows, as an error naming it.
fn check_finite(
    tensor: &'static str,
    x: &[f32],
    d: usize,
    batch: usize,
    head: usize,
) -> Result<()> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite {
            tensor,
            batch,
            head,
            token: i / d,
            value: x[i],
        }),
    }
}

/// Copies `[rows, d]` into `[rows, dp]` with zero padding.
fn pad_rows(x: &[f32], rows: usize, d: usize, dp: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * dp];
    for r in 0..rows {
        out[r * dp..r * dp + d].copy_from_slice(&x[r * d..(r + 1) * d]);
    }
    out
}

/// Step 2b on every row of `[rows, dp]`.
fn rotate_rows(x: &mut [f32], dp: usize) {
    for row in x.chunks_exact_mut(dp) {
        fwht_normalized(row);
    }
}

/// The rows of head (b, h) of an HND f32 array of `shape`.
fn head_rows(x: &[f32], shape: Shape, b: usize, h: usize) -> &[f32] {
    let len = shape.seq * shape.head_dim;
    let start = (b * shape.heads + h) * len;
    &x[start..start + len]
}

/// Steps 1, 2b, 3 and 7 for one K/V head.
fn prepare_kv(p: &Problem, k: &[f32], v: &[f32], b: usize, h: usize) -> Result<KvHead> {
    let (n, d, dp) = (p.seq_k, p.head_dim, p.head_dim_padded);
    check_finite("K", k, d, b, h)?;
    check_finite("V", v, d, b, h)?;
    let qmax = p.mode.qk_qmax().unwrap_or(127);

    // Step 1: smooth_k
    let km = token_mean(k, n, d);
    let mut ks = pad_rows(k, n, d, dp);
    for row in ks.chunks_exact_mut(dp) {
        for (x, m) in row.iter_mut().zip(&km) {
            *x -= m;
        }
    }
    if p.rotate {
        rotate_rows(&mut ks, dp);
    }
    // Step 3: quantize_k
    let groups = scale_groups(p.granularity, Operand::K, n);
    let mut k_codes = vec![0i8; n * dp];
    let mut k_scales = vec![0.0f32; groups];
    quantize_rows(
        &ks,
        n,
        dp,
        p.granularity,
        Operand::K,
        qmax,
        &mut k_codes,
        &mut k_scales,
    );
    // Step 2: dS reads INT8 codes of K'; INT4 mode makes them by the same pass with qmax 127.
    let k8 = match (p.smooth_q, qmax) {
        (false, _) => None,
        (true, 127) => Some((k_codes.clone(), k_scales.clone())),
        (true, _) => {
            let mut c = vec![0i8; n * dp];
            let mut s = vec![0.0f32; groups];
            quantize_rows(&ks, n, dp, p.granularity, Operand::K, 127, &mut c, &mut s);
            Some((c, s))
        }
    };

    // Step 7: smooth_v and V to FP8 (or f16)
    let vm = p.smooth_v.then(|| token_mean(v, n, d));
    let mut vs = pad_rows(v, n, d, dp);
    if let Some(vm) = &vm {
        for row in vs.chunks_exact_mut(dp) {
            for (x, m) in row.iter_mut().zip(vm) {
                *x -= m;
            }
        }
    }
    let v = if p.mode.is_fp8_pv() {
        let mut amax = vec![0.0f32; dp];
        for row in vs.chunks_exact(dp) {
            for (a, x) in amax.iter_mut().zip(row) {
                *a = a.max(x.abs());
            }
        }
        let scales: Vec<f32> = amax.iter().map(|&a| fp8_v_scale(a)).collect();
        let codes: Vec<u8> = vs
            .iter()
            .enumerate()
            .map(|(i, &x)| e4m3_encode(x / scales[i % dp]))
            .collect();
        let decoded = codes.iter().map(|&c| e4m3_decode(c)).collect();
        VHead::Fp8 {
            codes,
            decoded,
            scales,
        }
    } else {
        VHead::F16 {
            values: vs.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
        }
    };
    Ok(KvHead {
        k_codes,
        k_scales,
        k8,
        km,
        v,
        vm,
    })
}

/// Steps 2, 2b and 3 for one query head.
fn prepare_q(p: &Problem, q: &[f32], b: usize, h: usize) -> Result<QHead> {
    let (n, d, dp) = (p.seq_q, p.head_dim, p.head_dim_padded);
    check_finite("Q", q, d, b, h)?;
    let qmax = p.mode.qk_qmax().unwrap_or(127);
    let mut qs = pad_rows(q, n, d, dp);
    // Step 2: smooth_q, means of blocks of 128 queries
    let qm = if p.smooth_q {
        let mut qm = pad_rows(
            &block_means(q, n, d, Q_SMOOTH_BLOCK),
            n.div_ceil(Q_SMOOTH_BLOCK),
            d,
            dp,
        );
        for (r, row) in qs.chunks_exact_mut(dp).enumerate() {
            let mean = &qm[(r / Q_SMOOTH_BLOCK) * dp..][..dp];
            for (x, m) in row.iter_mut().zip(mean) {
                *x -= m;
            }
        }
        if p.rotate {
            rotate_rows(&mut qm, dp);
        }
        Some(qm)
    } else {
        None
    };
    if p.rotate {
        rotate_rows(&mut qs, dp);
    }
    let mut codes = vec![0i8; n * dp];
    let mut scales = vec![0.0f32; scale_groups(p.granularity, Operand::Q, n)];
    quantize_rows(
        &qs,
        n,
        dp,
        p.granularity,
        Operand::Q,
        qmax,
        &mut codes,
        &mut scales,
    );
    Ok(QHead { codes, scales, qm })
}

/// The integer dot product of two code rows: exact in i32 (ALGORITHM.md Step 4).
#[inline]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

#[inline]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// State of one query row's online softmax (ALGORITHM.md Step 6).
struct OnlineSoftmax {
    /// running max of the base-2 logits
    m: f32,
    /// running sum of the unquantized p
    l: f32,
    /// running output, `[Dp]`
    acc: Vec<f32>,
    /// one block's partial PV product: the first level of the two-level accumulation
    block: Vec<f32>,
}

impl OnlineSoftmax {
    fn new(dp: usize) -> Self {
        OnlineSoftmax {
            m: f32::NEG_INFINITY,
            l: 0.0,
            acc: vec![0.0; dp],
            block: vec![0.0; dp],
        }
    }

    /// `update`: takes a block's logits, turns them into p in place and returns the factor
    /// `alpha` that rescales the running state, or `None` when every logit so far is -inf.
    fn update(&mut self, logits: &mut [f32]) -> Option<f32> {
        let block_max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let m_new = self.m.max(block_max);
        if m_new == f32::NEG_INFINITY {
            return None;
        }
        let alpha = (self.m - m_new).exp2();
        let mut sum = 0.0f32;
        for x in logits.iter_mut() {
            *x = (*x - m_new).exp2();
            sum += *x;
        }
        self.l = self.l * alpha + sum;
        self.m = m_new;
        Some(alpha)
    }

    /// `pv` + `rescale`: adds Σ p[n]·v[n, :] of one block (on its own accumulator) into acc·alpha.
    fn accumulate(&mut self, alpha: f32, p: &[f32], v_rows: &[f32], dp: usize) {
        self.block.fill(0.0);
        for (&pn, v) in p.iter().zip(v_rows.chunks_exact(dp)) {
            if pn != 0.0 {
                for (b, &x) in self.block.iter_mut().zip(v) {
                    *b += pn * x;
                }
            }
        }
        for (a, &b) in self.acc.iter_mut().zip(&self.block) {
            *a = *a * alpha + b;
        }
    }

    /// Natural log-sum-exp of the base-2 logits seen.
    fn lse(&self) -> f32 {
        if self.l == 0.0 {
            f32::NEG_INFINITY
        } else {
            (self.m + self.l.log2()) * LN_2
        }
    }
}

/// Per-row output of one query tile: `[rows, D]` and `[rows]`.
struct TileOut<'a> {
    out: &'a mut [f32],
    lse: &'a mut [f32],
}

/// Steps 4-7 for the query rows `[row0, row0 + tile rows)` of one head, quantized modes.
fn attend_tile_quantized(
    p: &Problem,
    q: &QHead,
    q_raw: &[f32],
    kv: &KvHead,
    row0: usize,
    tile: TileOut<'_>,
) {
    let (d, dp, nk) = (p.head_dim, p.head_dim_padded, p.seq_k);
    let rows = tile.lse.len();
    let logit_scale = p.sm_scale * LOG2_E;
    // dS of this tile's smooth_q block (tiles are Q_SMOOTH_BLOCK rows, aligned): [Nk]
    let ds: Option<Vec<f32>> = match (&q.qm, &kv.k8) {
        (Some(qm), Some((k8, s8))) => {
            let mean = &qm[(row0 / Q_SMOOTH_BLOCK) * dp..][..dp];
            Some(
                (0..nk)
                    .map(|n| {
                        let s = s8[scale_group(p.granularity, Operand::K, n)];
                        let codes = &k8[n * dp..(n + 1) * dp];
                        mean.iter()
                            .zip(codes)
                            .fold(0.0f32, |acc, (&m, &c)| acc + m * (f32::from(c) * s))
                    })
                    .collect(),
            )
        }
        _ => None,
    };
    let mut logits = vec![0.0f32; p.kv_block];
    for r in 0..rows {
        let m = row0 + r;
        let out = &mut tile.out[r * d..(r + 1) * d];
        let Some(last) = p.last_visible_key(m) else {
            out.fill(0.0);
            tile.lse[r] = f32::NEG_INFINITY;
            continue;
        };
        let cq = &q.codes[m * dp..(m + 1) * dp];
        let sq = q.scales[scale_group(p.granularity, Operand::Q, m)];
        let mut state = OnlineSoftmax::new(dp);
        for start in (0..=last).step_by(p.kv_block) {
            let end = (start + p.kv_block).min(last + 1);
            let l = &mut logits[..end - start];
            // scores: integer dot product, dequantized with one product per operand
            for (j, n) in (start..end).enumerate() {
                let dot = dot_i8(cq, &kv.k_codes[n * dp..(n + 1) * dp]);
                let sk = kv.k_scales[scale_group(p.granularity, Operand::K, n)];
                let mut s = dot as f32 * sq * sk;
                if let Some(ds) = &ds {
                    s += ds[n];
                }
                l[j] = s * logit_scale;
            }
            let Some(alpha) = state.update(l) else {
                continue;
            };
            match &kv.v {
                VHead::Fp8 { decoded, .. } => {
                    // P to FP8 relative to the running max: p in [0, 1] scaled to the E4M3 range
                    for x in l.iter_mut() {
                        *x = e4m3_round(E4M3_MAX * *x);
                    }
                    state.accumulate(alpha, l, &decoded[start * dp..end * dp], dp);
                }
                VHead::F16 { values } => {
                    for x in l.iter_mut() {
                        *x = f16::from_f32(*x).to_f32();
                    }
                    state.accumulate(alpha, l, &values[start * dp..end * dp], dp);
                }
            }
        }
        // finalize
        let lse = state.lse();
        if lse == f32::NEG_INFINITY {
            out.fill(0.0);
        } else {
            match &kv.v {
                VHead::Fp8 { scales, .. } => {
                    let denom = E4M3_MAX * state.l;
                    for ((o, a), s) in out.iter_mut().zip(&state.acc).zip(scales) {
                        *o = a / denom * s;
                    }
                }
                VHead::F16 { .. } => {
                    for (o, a) in out.iter_mut().zip(&state.acc) {
                        *o = a / state.l;
                    }
                }
            }
            if let Some(vm) = &kv.vm {
                for (o, m) in out.iter_mut().zip(vm) {
                    *o += m;
                }
            }
        }
        // the logits were of q.(k - km): add sm_scale * q.km back
        let q_row = &q_raw[m * d..(m + 1) * d];
        tile.lse[r] = lse + p.sm_scale * dot_f32(q_row, &kv.km);
    }
}

/// The `exact` mode: f32 flash attention with the online softmax of Step 6, no quantization.
fn attend_tile_exact(p: &Problem, q: &[f32], k: &[f32], v: &[f32], row0: usize, tile: TileOut<'_>) {
    let d = p.head_dim;
    let rows = tile.lse.len();
    let logit_scale = p.sm_scale * LOG2_E;
    let mut logits = vec![0.0f32; p.kv_block];
    for r in 0..rows {
        let m = row0 + r;
        let out = &mut tile.out[r * d..(r + 1) * d];
        let Some(last) = p.last_visible_key(m) else {
            out.fill(0.0);
            tile.lse[r] = f32::NEG_INFINITY;
            continue;
        };
        let q_row = &q[m * d..(m + 1) * d];
        let mut state = OnlineSoftmax::new(d);
        for start in (0..=last).step_by(p.kv_block) {
            let end = (start + p.kv_block).min(last + 1);
            let l = &mut logits[..end - start];
            for (j, n) in (start..end).enumerate() {
                l[j] = dot_f32(q_row, &k[n * d..(n + 1) * d]) * logit_scale;
            }
            // NaN logits propagate: the exact mode does IEEE arithmetic and no checks.
            match state.update(l) {
                Some(alpha) => state.accumulate(alpha, l, &v[start * d..end * d], d),
                None if l.iter().any(|x| x.is_nan()) => state.acc.fill(f32::NAN),
                None => {}
            }
        }
        let lse = state.lse();
        for (o, &a) in out.iter_mut().zip(&state.acc) {
            *o = if lse == f32::NEG_INFINITY && !a.is_nan() {
                0.0
            } else {
                a / state.l
            };
        }
        tile.lse[r] = lse;
    }
}

/// Runs `f(b, h, tile_index, tile)` over every query tile of every head in parallel.
fn for_each_tile<F>(p: &Problem, out: &mut [f32], lse: &mut [f32], f: F)
where
    F: Fn(usize, usize, usize, TileOut<'_>) + Sync,
{
    let (nq, d) = (p.seq_q, p.head_dim);
    if nq == 0 || d == 0 || out.is_empty() {
        return;
    }
    out.par_chunks_mut(nq * d)
        .zip(lse.par_chunks_mut(nq))
        .enumerate()
        .for_each(|(bh, (out_head, lse_head))| {
            let (b, h) = (bh / p.heads_q, bh % p.heads_q);
            out_head
                .par_chunks_mut(Q_SMOOTH_BLOCK * d)
                .zip(lse_head.par_chunks_mut(Q_SMOOTH_BLOCK))
                .enumerate()
                .for_each(|(t, (out, lse))| f(b, h, t, TileOut { out, lse }));
        });
}

/// Per-head results computed in parallel; on failure, the error of the first head in (batch, head)
/// order, whichever thread found its error first (so a report never depends on scheduling).
fn per_head<T, F>(batch: usize, heads: usize, f: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(usize, usize) -> Result<T> + Sync,
{
    let all: Vec<Result<T>> = (0..batch * heads)
        .into_par_iter()
        .map(|bh| f(bh / heads, bh % heads))
        .collect();
    all.into_iter().collect()
}

/// Inputs as the CPU computes with them: f32, HND.
struct HostInputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    q_shape: Shape,
    kv_shape: Shape,
}

impl HostInputs {
    fn new(q: &Tensor, k: &Tensor, v: &Tensor) -> Self {
        HostInputs {
            q: q.to_f32_hnd(),
            k: k.to_f32_hnd(),
            v: v.to_f32_hnd(),
            q_shape: q.shape(),
            kv_shape: k.shape(),
        }
    }

    fn prepare_all(&self, p: &Problem) -> Result<(Vec<QHead>, Vec<KvHead>)> {
        let kv = per_head(p.batch, p.heads_kv, |b, h| {
            prepare_kv(
                p,
                head_rows(&self.k, self.kv_shape, b, h),
                head_rows(&self.v, self.kv_shape, b, h),
                b,
                h,
            )
        })?;
        let q = per_head(p.batch, p.heads_q, |b, h| {
            prepare_q(p, head_rows(&self.q, self.q_shape, b, h), b, h)
        })?;
        Ok((q, kv))
    }

    /// O `[B, Hq, Nq, D]` (HND, f32) and the log-sum-exp `[B, Hq, Nq]`.
    fn attention(&self, p: &Problem) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut out = vec![0.0f32; p.out_shape().numel()];
        let mut lse = vec![f32::NEG_INFINITY; p.batch * p.heads_q * p.seq_q];
        if p.seq_k == 0 || out.is_empty() {
            return Ok((out, lse));
        }
        let group = p.group_size();
        if p.mode == Mode::Exact {
            for_each_tile(p, &mut out, &mut lse, |b, h, t, tile| {
                attend_tile_exact(
                    p,
                    head_rows(&self.q, self.q_shape, b, h),
                    head_rows(&self.k, self.kv_shape, b, h / group),
                    head_rows(&self.v, self.kv_shape, b, h / group),
                    t * Q_SMOOTH_BLOCK,
                    tile,
                )
            });
        } else {
            let (qh, kvh) = self.prepare_all(p)?;
            for_each_tile(p, &mut out, &mut lse, |b, h, t, tile| {
                attend_tile_quantized(
                    p,
                    &qh[b * p.heads_q + h],
                    head_rows(&self.q, self.q_shape, b, h),
                    &kvh[b * p.heads_kv + h / group],
                    t * Q_SMOOTH_BLOCK,
                    tile,
                )
            });
        }
        Ok((out, lse))
    }
}

impl CpuBackend {
    fn problem(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttentionParams,
    ) -> Result<Problem> {
        Problem::new(
            &q.meta(),
            &k.meta(),
            &v.meta(),
            params,
            &self.capabilities(),
        )
    }

    fn run(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttentionParams,
    ) -> Result<AttentionOutput> {
        let p = self.problem(q, k, v, params)?;
        let (out, lse) = HostInputs::new(q, k, v).attention(&p)?;
        let out = Tensor::from_f32_hnd(&out, p.out_shape(), p.dtype, p.layout)?;
        Ok(AttentionOutput {
            out,
            lse: p.return_lse.then_some(lse),
        })
    }
}

fn concat<T: Clone>(parts: impl Iterator<Item = Vec<T>>) -> Vec<T> {
    parts.flatten().collect()
}

impl AttentionBackend for CpuBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::with_all_features(
            NAME,
            format!("CPU ({} threads)", rayon::current_num_threads()),
            Mode::CONCRETE.to_vec(),
            Mode::Int8Fp8,
            KV_BLOCKS.to_vec(),
        )
    }

    fn upload(&self, t: &Tensor) -> Result<DeviceTensor> {
        Ok(DeviceTensor::new(
            t.meta(),
            NAME,
            Box::new(Arc::new(t.clone())),
        ))
    }

    fn download(&self, t: &DeviceTensor) -> Result<Tensor> {
        Ok(t.handle::<Arc<Tensor>>(NAME)?.as_ref().clone())
    }

    fn attention_device(
        &self,
        q: &DeviceTensor,
        k: &DeviceTensor,
        v: &DeviceTensor,
        params: &AttentionParams,
    ) -> Result<DeviceOutput> {
        let (q, k, v) = (
            q.handle::<Arc<Tensor>>(NAME)?,
            k.handle::<Arc<Tensor>>(NAME)?,
            v.handle::<Arc<Tensor>>(NAME)?,
        );
        let o = self.run(q, k, v, params)?;
        let lse = match o.lse {
            Some(l) => {
                let shape = Shape::new(
                    o.out.shape().batch,
                    o.out.shape().heads,
                    o.out.shape().seq,
                    1,
                );
                Some(self.upload(&Tensor::from_f32_hnd(&l, shape, DType::F32, Layout::Hnd)?)?)
            }
            None => None,
        };
        Ok(DeviceOutput {
            out: self.upload(&o.out)?,
            lse,
        })
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttentionParams,
    ) -> Result<AttentionOutput> {
        self.run(q, k, v, params)
    }

    fn quantize(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttentionParams,
    ) -> Result<QuantizedQkv> {
        let p = self.problem(q, k, v, params)?;
        if !p.mode.is_quantized() {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: "quantize in the exact mode (it has no quantization stage)".into(),
            });
        }
        let (qh, kvh) = HostInputs::new(q, k, v).prepare_all(&p)?;
        let v = if p.mode.is_fp8_pv() {
            let (mut codes, mut scales) = (Vec::new(), Vec::new());
            for h in &kvh {
                if let VHead::Fp8 {
                    codes: c,
                    scales: s,
                    ..
                } = &h.v
                {
                    codes.extend_from_slice(c);
                    scales.extend_from_slice(s);
                }
            }
            QuantizedV::Fp8 { codes, scales }
        } else {
            let mut values = Vec::new();
            for h in &kvh {
                if let VHead::F16 { values: v } = &h.v {
                    values.extend(v.iter().map(|&x| f16::from_f32(x)));
                }
            }
            QuantizedV::F16 { values }
        };
        Ok(QuantizedQkv {
            mode: p.mode,
            granularity: p.granularity,
            head_dim_padded: p.head_dim_padded,
            q_codes: concat(qh.iter().map(|h| h.codes.clone())),
            q_scales: concat(qh.iter().map(|h| h.scales.clone())),
            k_codes: concat(kvh.iter().map(|h| h.k_codes.clone())),
            k_scales: concat(kvh.iter().map(|h| h.k_scales.clone())),
            v,
            km: concat(kvh.iter().map(|h| h.km.clone())),
            qm: concat(qh.iter().filter_map(|h| h.qm.clone())),
            vm: concat(kvh.iter().filter_map(|h| h.vm.clone())),
        })
    }
}
