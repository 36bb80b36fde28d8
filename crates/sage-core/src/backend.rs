//! The seam between sage and its backends: [`AttentionBackend`]. Nothing above this trait knows
//! which backend runs, and every backend answers the same calls with the same numerics (ALGORITHM.md).

use std::any::Any;

use half::f16;
use serde::Serialize;

use crate::config::{AttentionParams, Granularity, Mode};
use crate::error::{Error, Result};
use crate::numerics::{MAX_HEAD_DIM, PADDED_HEAD_DIMS, padded_head_dim};
use crate::tensor::{DType, Layout, Shape, Tensor};

/// What a backend can do on its device, as `sage info` reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Capabilities {
    /// `cpu`, `wgpu`, `cuda`.
    pub backend: &'static str,
    /// The device's own name (a GPU's, or the CPU's thread count).
    pub device: String,
    pub modes: Vec<Mode>,
    /// What `Mode::Auto` becomes on this device.
    pub auto_mode: Mode,
    pub granularities: Vec<Granularity>,
    /// Head dims computed natively; others up to `max_head_dim` are zero-padded.
    pub native_head_dims: Vec<usize>,
    pub max_head_dim: usize,
    /// Accepted `kv_block` values and the default one (the result depends on it: ALGORITHM.md Step 6).
    pub kv_blocks: Vec<usize>,
    pub default_kv_block: usize,
    /// Modes whose accepted `kv_block` values differ from `kv_blocks`, the first being that mode's
    /// default (the Hopper kernel of `int8-fp8` works on blocks of 128 keys).
    pub mode_kv_blocks: Vec<(Mode, Vec<usize>)>,
    pub dtypes: Vec<DType>,
    pub layouts: Vec<Layout>,
    pub causal: bool,
    pub gqa: bool,
    pub lse: bool,
    pub smooth_q: bool,
    pub smooth_v: bool,
    pub rotate: bool,
}

impl Capabilities {
    /// The `kv_block` values `mode` accepts; the first is its default.
    pub fn kv_blocks_for(&self, mode: Mode) -> &[usize] {
        self.mode_kv_blocks
            .iter()
            .find(|(m, _)| *m == mode)
            .map_or(&self.kv_blocks, |(_, v)| v)
    }

    /// `params` with `kv_block` set to the value this backend takes for them, so that another backend
    /// (the CPU, as reference) computes with the same blocks (ALGORITHM.md Step 6: the result depends
    /// on it, and backends' defaults may differ).
    pub fn pin_kv_block(&self, params: &AttentionParams) -> AttentionParams {
        let mode = match params.mode {
            Mode::Auto => self.auto_mode,
            m => m,
        };
        AttentionParams {
            kv_block: Some(params.kv_block.unwrap_or(self.default_kv_block_for(mode))),
            ..*params
        }
    }

    /// The `kv_block` of `mode` when the caller sets none.
    pub fn default_kv_block_for(&self, mode: Mode) -> usize {
        self.kv_blocks_for(mode)
            .first()
            .copied()
            .unwrap_or(self.default_kv_block)
    }

    /// A backend with every granularity, dtype, layout and option (causal, GQA, LSE, smoothing,
    /// rotation) and head dims up to 128 padded to 64 or 128; the first of `kv_blocks` is the default.
    pub fn with_all_features(
        backend: &'static str,
        device: String,
        modes: Vec<Mode>,
        auto_mode: Mode,
        kv_blocks: Vec<usize>,
    ) -> Self {
        Capabilities {
            backend,
            device,
            modes,
            auto_mode,
            granularities: Granularity::ALL.to_vec(),
            native_head_dims: PADDED_HEAD_DIMS.to_vec(),
            max_head_dim: MAX_HEAD_DIM,
            default_kv_block: kv_blocks.first().copied().unwrap_or(64),
            kv_blocks,
            mode_kv_blocks: Vec::new(),
            dtypes: DType::ALL.to_vec(),
            layouts: Layout::ALL.to_vec(),
            causal: true,
            gqa: true,
            lse: true,
            smooth_q: true,
            smooth_v: true,
            rotate: true,
        }
    }
}

/// Dtype, shape and layout of a tensor, host or device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TensorMeta {
    pub shape: Shape,
    pub dtype: DType,
    pub layout: Layout,
}

impl Tensor {
    pub fn meta(&self) -> TensorMeta {
        TensorMeta {
            shape: self.shape(),
            dtype: self.dtype(),
            layout: self.layout(),
        }
    }
}

/// A tensor resident on a backend's device: uploaded once, used by many calls, downloaded once.
/// The handle is the backend's own; handing it to another backend is an error, not undefined behaviour.
pub struct DeviceTensor {
    meta: TensorMeta,
    owner: &'static str,
    handle: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTensor")
            .field("meta", &self.meta)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl DeviceTensor {
    pub fn new(meta: TensorMeta, owner: &'static str, handle: Box<dyn Any + Send + Sync>) -> Self {
        DeviceTensor {
            meta,
            owner,
            handle,
        }
    }

    pub fn meta(&self) -> TensorMeta {
        self.meta
    }

    pub fn owner(&self) -> &'static str {
        self.owner
    }

    /// The backend's handle, checked to be `backend`'s and of type `T`.
    pub fn handle<T: 'static>(&self, backend: &'static str) -> Result<&T> {
        if self.owner != backend {
            return Err(Error::WrongBackend {
                owner: self.owner,
                backend,
            });
        }
        self.handle.downcast_ref::<T>().ok_or(Error::WrongBackend {
            owner: self.owner,
            backend,
        })
    }
}

/// The result of a host call: O with the dtype and layout of Q, and the optional log-sum-exp.
#[derive(Clone, Debug)]
pub struct AttentionOutput {
    pub out: Tensor,
    /// Natural log-sum-exp of the logits `sm_scale * q.k`, `[B, Hq, Nq]`; -inf for a row that sees no key.
    pub lse: Option<Vec<f32>>,
}

/// The result of a device call: O and the optional log-sum-exp (`[B, Hq, Nq, 1]`, f32, HND), on the device.
#[derive(Debug)]
pub struct DeviceOutput {
    pub out: DeviceTensor,
    pub lse: Option<DeviceTensor>,
}

/// How long one attention call takes, by the device's own clock where it has one.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Timing {
    /// Median milliseconds of the whole call, quantization included.
    pub end_to_end_ms: f64,
    /// Median milliseconds of the attention stage alone, where the backend can time it apart.
    pub kernel_ms: Option<f64>,
    /// `cuda-events`, `wgpu-timestamps` or `wall-clock`.
    pub clock: &'static str,
}

/// Which of several flagged non-finite tokens a backend reports, as the CPU finds them: K/V heads
/// first in (batch, head) order, K before V within a head, then Q. `flagged[i]` is the first
/// offending (batch, head, token) of Q, K, V (i = 0, 1, 2); returns the slot and its token.
pub fn first_non_finite_slot(
    flagged: [Option<(usize, usize, usize)>; 3],
) -> Option<(usize, (usize, usize, usize))> {
    let kv = match (flagged[1], flagged[2]) {
        (Some(k), Some(v)) if (v.0, v.1) < (k.0, k.1) => Some((2, v)),
        (Some(k), _) => Some((1, k)),
        (None, Some(v)) => Some((2, v)),
        (None, None) => None,
    };
    kv.or_else(|| flagged[0].map(|q| (0, q)))
}

/// Times `iters` synchronized calls with the host clock after `warmup` untimed ones: the trait's
/// default timing, and the fallback of GPU backends whose device has no timers.
pub fn time_with_host_clock<B: AttentionBackend + ?Sized>(
    backend: &B,
    q: &DeviceTensor,
    k: &DeviceTensor,
    v: &DeviceTensor,
    params: &AttentionParams,
    warmup: usize,
    iters: usize,
) -> Result<Timing> {
    for _ in 0..warmup {
        backend.attention_device(q, k, v, params)?;
    }
    backend.synchronize()?;
    let mut times = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let start = std::time::Instant::now();
        backend.attention_device(q, k, v, params)?;
        backend.synchronize()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Timing {
        end_to_end_ms: median(times),
        kernel_ms: None,
        clock: "wall-clock",
    })
}

/// The median of some timings (the upper one of an even count); 0 for none.
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Values of V as the PV stage consumes them.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantizedV {
    /// FP8 modes: E4M3 codes `[B, Hkv, Nk, Dp]` and per-channel scales `[B, Hkv, Dp]`.
    Fp8 { codes: Vec<u8>, scales: Vec<f32> },
    /// `int8-fp16`: V' rounded to f16, `[B, Hkv, Nk, Dp]`.
    F16 { values: Vec<f16> },
}

/// Quantization stage output, in one canonical layout for every backend, so that the conformance suite
/// compares backends stage by stage. `Dp` is the padded head dim; groups follow `numerics::quant`.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedQkv {
    pub mode: Mode,
    pub granularity: Granularity,
    pub head_dim_padded: usize,
    /// `[B, Hq, Nq, Dp]`, in `[-qmax, qmax]`.
    pub q_codes: Vec<i8>,
    /// `[B, Hq, scale_groups(Q, Nq)]`
    pub q_scales: Vec<f32>,
    /// `[B, Hkv, Nk, Dp]`
    pub k_codes: Vec<i8>,
    /// `[B, Hkv, scale_groups(K, Nk)]`
    pub k_scales: Vec<f32>,
    pub v: QuantizedV,
    /// K channel means, `[B, Hkv, D]` (Step 1).
    pub km: Vec<f32>,
    /// Q block means after rotation when `smooth_q`, `[B, Hq, ceil(Nq/128), Dp]`; empty otherwise.
    pub qm: Vec<f32>,
    /// V channel means when `smooth_v`, `[B, Hkv, D]`; empty otherwise.
    pub vm: Vec<f32>,
}

/// One attention implementation on one device.
///
/// Backends are `Send + Sync`: one object may serve several threads at once, and calls with the same
/// inputs on the same device give bit-identical outputs.
pub trait AttentionBackend: Send + Sync {
    /// `cpu`, `wgpu` or `cuda`.
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Copies a host tensor to the device.
    fn upload(&self, t: &Tensor) -> Result<DeviceTensor>;

    /// Copies a device tensor back to the host.
    fn download(&self, t: &DeviceTensor) -> Result<Tensor>;

    /// Attention on device-resident tensors: the call a benchmark times.
    fn attention_device(
        &self,
        q: &DeviceTensor,
        k: &DeviceTensor,
        v: &DeviceTensor,
        params: &AttentionParams,
    ) -> Result<DeviceOutput>;

    /// The quantization stage alone (quantized modes), for stage-by-stage comparison.
    fn quantize(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttentionParams,
    ) -> Result<QuantizedQkv>;

    /// Waits for all queued device work.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Times `iters` calls on resident tensors after `warmup` untimed ones. This default uses the host
    /// clock around synchronized calls; GPU backends override it with their device timers.
    fn time_attention(
        &self,
        q: &DeviceTensor,
        k: &DeviceTensor,
        v: &DeviceTensor,
        params: &AttentionParams,
        warmup: usize,
        iters: usize,
    ) -> Result<Timing> {
        time_with_host_clock(self, q, k, v, params, warmup, iters)
    }

    /// Host tensors in, host tensors out.
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttentionParams,
    ) -> Result<AttentionOutput> {
        // Validate before spending any transfer on bad input.
        Problem::new(
            &q.meta(),
            &k.meta(),
            &v.meta(),
            params,
            &self.capabilities(),
        )?;
        let (dq, dk, dv) = (self.upload(q)?, self.upload(k)?, self.upload(v)?);
        let o = self.attention_device(&dq, &dk, &dv, params)?;
        let out = self.download(&o.out)?;
        let lse = match &o.lse {
            Some(l) => Some(self.download(l)?.to_f32_hnd()),
            None => None,
        };
        Ok(AttentionOutput { out, lse })
    }
}

/// One attention call, validated and with every default resolved against a backend's capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Problem {
    pub batch: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub seq_q: usize,
    pub seq_k: usize,
    /// The caller's head dim.
    pub head_dim: usize,
    /// The head dim kernels compute with (ALGORITHM.md, Shapes).
    pub head_dim_padded: usize,
    pub dtype: DType,
    pub layout: Layout,
    pub mode: Mode,
    pub granularity: Granularity,
    pub smooth_q: bool,
    pub smooth_v: bool,
    pub rotate: bool,
    pub kv_block: usize,
    pub causal: bool,
    pub sm_scale: f32,
    pub return_lse: bool,
}

impl Problem {
    /// Checks Q, K, V and the parameters against each other and `caps`.
    pub fn new(
        q: &TensorMeta,
        k: &TensorMeta,
        v: &TensorMeta,
        params: &AttentionParams,
        caps: &Capabilities,
    ) -> Result<Problem> {
        const OP: &str = "attention";
        let (qs, ks, vs) = (q.shape, k.shape, v.shape);
        if k.dtype != q.dtype || v.dtype != q.dtype {
            return Err(Error::shape(
                OP,
                format!("Q, K and V of one dtype (Q is {})", q.dtype),
                format!("K {}, V {}", k.dtype, v.dtype),
            ));
        }
        if k.layout != q.layout || v.layout != q.layout {
            return Err(Error::shape(
                OP,
                format!("Q, K and V in one layout (Q is {})", q.layout),
                format!("K {}, V {}", k.layout, v.layout),
            ));
        }
        if ks != vs {
            return Err(Error::shape(OP, format!("V of K's shape {ks}"), vs));
        }
        if ks.batch != qs.batch {
            return Err(Error::shape(
                OP,
                format!("K and V with Q's batch {}", qs.batch),
                ks.batch,
            ));
        }
        if ks.head_dim != qs.head_dim {
            return Err(Error::shape(
                OP,
                format!("K and V with Q's head dim {}", qs.head_dim),
                ks.head_dim,
            ));
        }
        if ks.heads == 0 && qs.heads > 0 || ks.heads > 0 && qs.heads % ks.heads != 0 {
            return Err(Error::shape(
                OP,
                format!("Q heads ({}) a multiple of K/V heads", qs.heads),
                format!("{} K/V heads", ks.heads),
            ));
        }
        let d = qs.head_dim;
        if d == 0 {
            return Err(Error::param("head_dim", "must be at least 1"));
        }
        let max = caps.max_head_dim.min(MAX_HEAD_DIM);
        let head_dim_padded = match padded_head_dim(d) {
            Some(p) if d <= max => p,
            _ => return Err(Error::HeadDim { got: d, max }),
        };
        for meta in [q, k, v] {
            if meta.shape.checked_numel().is_none() {
                return Err(Error::shape(
                    OP,
                    "a tensor whose size fits in memory",
                    meta.shape,
                ));
            }
        }
        let unsupported = |feature: String| Error::Unsupported {
            backend: caps.backend,
            feature,
        };
        if !caps.dtypes.contains(&q.dtype) {
            return Err(unsupported(format!("dtype {}", q.dtype)));
        }
        if !caps.layouts.contains(&q.layout) {
            return Err(unsupported(format!("layout {}", q.layout)));
        }
        let mode = match params.mode {
            Mode::Auto => caps.auto_mode,
            m => m,
        };
        if !caps.modes.contains(&mode) {
            return Err(unsupported(format!("mode {mode} on {}", caps.device)));
        }
        if mode.is_quantized() && !caps.granularities.contains(&params.granularity) {
            return Err(unsupported(format!("granularity {}", params.granularity)));
        }
        let kv_block = params.kv_block.unwrap_or(caps.default_kv_block_for(mode));
        if !caps.kv_blocks_for(mode).contains(&kv_block) {
            return Err(Error::param(
                "kv_block",
                format!(
                    "{kv_block} is not one of {:?} for {mode} on backend {}",
                    caps.kv_blocks_for(mode),
                    caps.backend
                ),
            ));
        }
        let quantized = mode.is_quantized();
        let smooth_q = quantized && params.smooth_q.unwrap_or(mode.default_smooth_q());
        let smooth_v = quantized && params.smooth_v;
        let rotate = quantized && params.rotate;
        for (on, name, have) in [
            (smooth_q, "smooth_q", caps.smooth_q),
            (smooth_v, "smooth_v", caps.smooth_v),
            (rotate, "rotate", caps.rotate),
            (params.causal, "causal", caps.causal),
            (params.return_lse, "log-sum-exp output", caps.lse),
            (
                qs.heads != ks.heads,
                "grouped-query attention (Hq != Hkv)",
                caps.gqa,
            ),
        ] {
            if on && !have {
                return Err(unsupported(name.to_string()));
            }
        }
        let sm_scale = params.sm_scale.unwrap_or(1.0 / (d as f32).sqrt());
        if !sm_scale.is_finite() {
            return Err(Error::param(
                "sm_scale",
                format!("{sm_scale} is not finite"),
            ));
        }
        Ok(Problem {
            batch: qs.batch,
            heads_q: qs.heads,
            heads_kv: ks.heads,
            seq_q: qs.seq,
            seq_k: ks.seq,
            head_dim: d,
            head_dim_padded,
            dtype: q.dtype,
            layout: q.layout,
            mode,
            granularity: params.granularity,
            smooth_q,
            smooth_v,
            rotate,
            kv_block,
            causal: params.causal,
            sm_scale,
            return_lse: params.return_lse,
        })
    }

    /// Query heads per K/V head.
    pub fn group_size(&self) -> usize {
        self.heads_q.checked_div(self.heads_kv).unwrap_or(1)
    }

    /// The output's shape: Q's.
    pub fn out_shape(&self) -> Shape {
        Shape::new(self.batch, self.heads_q, self.seq_q, self.head_dim)
    }

    /// The last key that query `m` sees, or `None` when it sees none (ALGORITHM.md Step 5).
    pub fn last_visible_key(&self, m: usize) -> Option<usize> {
        if self.seq_k == 0 {
            return None;
        }
        if !self.causal {
            return Some(self.seq_k - 1);
        }
        let last = m as i64 + self.seq_k as i64 - self.seq_q as i64;
        if last < 0 {
            None
        } else {
            Some((last as usize).min(self.seq_k - 1))
        }
    }

    /// Multiply-adds of one call, 4·B·Hq·Nq·Nk·D, halved for causal (as FlashAttention reports it).
    pub fn ops(&self) -> f64 {
        let full = 4.0
            * self.batch as f64
            * self.heads_q as f64
            * self.seq_q as f64
            * self.seq_k as f64
            * self.head_dim as f64;
        if self.causal { full / 2.0 } else { full }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_block_defaults_and_choices_are_per_mode() {
        let mut caps = Capabilities::with_all_features(
            "test",
            "device".into(),
            Mode::CONCRETE.to_vec(),
            Mode::Int8Fp8,
            vec![64],
        );
        caps.mode_kv_blocks = vec![(Mode::Int8Fp8, vec![128, 64])];
        assert_eq!(caps.kv_blocks_for(Mode::Int8Fp8), &[128, 64]);
        assert_eq!(caps.kv_blocks_for(Mode::Int8Fp16), &[64]);
        assert_eq!(caps.default_kv_block_for(Mode::Int8Fp8), 128);
        assert_eq!(caps.default_kv_block_for(Mode::Exact), 64);
        let meta = TensorMeta {
            shape: Shape::new(1, 1, 8, 64),
            dtype: DType::F16,
            layout: Layout::Hnd,
        };
        let problem = |mode, kv_block| {
            let params = AttentionParams {
                mode,
                kv_block,
                ..Default::default()
            };
            Problem::new(&meta, &meta, &meta, &params, &caps)
        };
        // Auto resolves to int8-fp8 first, then takes that mode's default
        assert_eq!(
            problem(Mode::Auto, None).map(|p| p.kv_block).ok(),
            Some(128)
        );
        assert_eq!(
            problem(Mode::Int8Fp16, None).map(|p| p.kv_block).ok(),
            Some(64)
        );
        assert_eq!(
            problem(Mode::Int8Fp8, Some(64)).map(|p| p.kv_block).ok(),
            Some(64)
        );
        assert!(matches!(
            problem(Mode::Int8Fp16, Some(128)),
            Err(Error::InvalidParam { .. })
        ));
        // pinning: what another backend must use to compute the same blocks
        let pinned = caps.pin_kv_block(&AttentionParams::default());
        assert_eq!(pinned.kv_block, Some(128));
        let explicit = AttentionParams {
            kv_block: Some(64),
            ..Default::default()
        };
        assert_eq!(caps.pin_kv_block(&explicit).kv_block, Some(64));
    }

    #[test]
    fn non_finite_reports_follow_the_cpu_order() {
        // K/V heads in order, K before V in one head, Q last
        assert_eq!(
            first_non_finite_slot([Some((0, 0, 1)), Some((0, 1, 5)), Some((0, 0, 9))]),
            Some((2, (0, 0, 9)))
        );
        assert_eq!(
            first_non_finite_slot([None, Some((1, 0, 5)), Some((1, 0, 2))]),
            Some((1, (1, 0, 5)))
        );
        assert_eq!(
            first_non_finite_slot([Some((0, 3, 1)), None, None]),
            Some((0, (0, 3, 1)))
        );
        assert_eq!(first_non_finite_slot([None, None, None]), None);
    }
}
