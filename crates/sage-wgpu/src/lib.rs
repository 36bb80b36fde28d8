//! sage-wgpu: the portable backend. WGSL shaders emulate the packed INT8/INT4 dot products
//! (`dot4I8Packed`) and FP8 E4M3 decode so that the numerics of ALGORITHM.md run on any GPU wgpu
//! reaches (Vulkan, Metal, DX12), and on lavapipe where there is none.
//!
//! Stages, each its own shader in `shaders/`: `convert` (inputs to f32, padded; non-finite check),
//! `smooth` (channel and block means), `quantize` (Q/K codes at every granularity, rotation),
//! `quantize_v` (FP8 or f16 V), `attn` (scores, online softmax, PV) or `attn_exact`, then `store`.

mod context;
mod params;
pub mod pipelines;

use half::f16;
use sage_core::numerics::Q_SMOOTH_BLOCK;
use sage_core::numerics::quant::{Operand, group_shape, scale_groups};
use sage_core::{
    AttentionBackend, AttentionParams, Capabilities, DType, DeviceOutput, DeviceTensor, Error,
    Granularity, Layout, Mode, Problem, QuantizedQkv, QuantizedV, Result, Shape, Storage, Tensor,
    TensorMeta, Timing, first_non_finite_slot, median, time_with_host_clock,
};
use wgpu::util::DeviceExt;

use context::Gpu;
pub use context::{AdapterSummary, list_adapters};
use params::Params;
use pipelines::Pipelines;

pub const NAME: &str = "wgpu";

/// Query rows per attention workgroup (one invocation per row).
const ROWS_PER_GROUP: u64 = 64;
/// Invocations per workgroup of the one-dimensional passes.
const THREADS_1D: u64 = 64;

/// The wgpu backend: one adapter, its device, and the compiled pipelines. `Send + Sync`: wgpu's
/// device and queue are thread-safe, and error scopes are per thread.
pub struct WgpuBackend {
    gpu: Gpu,
    pipes: Pipelines,
    /// The driver's loop limit, probed once on a CPU-type adapter ([`WgpuBackend::loop_budget`]).
    loop_limit: std::sync::OnceLock<Option<u64>>,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("device", &self.gpu.describe())
            .finish()
    }
}

/// A device tensor's storage: its raw bytes (dtype bits), padded to whole words.
struct GpuTensor {
    buffer: wgpu::Buffer,
}

/// Where each section of the f32 aux buffer starts (in elements).
#[derive(Clone, Copy, Debug, Default)]
struct AuxLayout {
    q_scales: u32,
    k_scales: u32,
    k8_scales: u32,
    v_scales: u32,
    km: u32,
    vm: u32,
    qm: u32,
    total: u32,
    q_groups: u32,
    k_groups: u32,
}

/// The buffers the quantization stage leaves for the attention pass.
struct Quantized {
    q32: wgpu::Buffer,
    q_codes: wgpu::Buffer,
    k_codes: wgpu::Buffer,
    k8_codes: Option<wgpu::Buffer>,
    v_codes: wgpu::Buffer,
    aux: wgpu::Buffer,
    layout: AuxLayout,
    flags: wgpu::Buffer,
    shapes: [Shape; 3],
}

fn dtype_code(d: DType) -> u32 {
    match d {
        DType::F16 => 0,
        DType::BF16 => 1,
        DType::F32 => 2,
    }
}

fn layout_code(l: Layout) -> u32 {
    match l {
        Layout::Hnd => 0,
        Layout::Nhd => 1,
    }
}

fn mode_code(m: Mode) -> u32 {
    match m {
        Mode::Int4Fp8 => 0,
        Mode::Int8Fp8 => 1,
        Mode::Int8Fp16 => 2,
        Mode::Exact | Mode::Auto => 3,
    }
}

fn granularity_code(g: Granularity) -> u32 {
    match g {
        Granularity::PerBlock => 0,
        Granularity::PerWarp => 1,
        Granularity::PerThread => 2,
    }
}

/// A count that must fit the shaders' u32 indices.
fn u32_of(what: &str, x: u64) -> Result<u32> {
    u32::try_from(x).map_err(|_| Error::Unsupported {
        backend: NAME,
        feature: format!("{what} of {x} (more than 2^32 elements in one buffer)"),
    })
}

/// The loop limit of llvmpipe (lavapipe): back-edges per shader invocation.
const LAVAPIPE_LOOP_LIMIT: u64 = 65_535;

/// Iterations the loop probe asks for: a driver that runs them all is given this many (a lower
/// bound of its limit), which allows sequences of 1.4M tokens (`check_loop_budget`, three loop
/// iterations per token) and attention chunks of ~13k keys at D = 128 (`keys_per_dispatch`).
const PROBE_ITERATIONS: u32 = 1 << 22;

impl WgpuBackend {
    /// Opens an adapter (`SAGE_WGPU_ADAPTER` picks one by name) and compiles the shaders.
    pub fn new() -> Result<Self> {
        let gpu = Gpu::open()?;
        let pipes = Pipelines::new(&gpu.device).map_err(|e| Error::Unavailable {
            backend: NAME,
            reason: format!("the shaders do not build on {}: {e}", gpu.describe()),
        })?;
        Ok(WgpuBackend {
            gpu,
            pipes,
            loop_limit: std::sync::OnceLock::new(),
        })
    }

    /// True when the adapter is real hardware (not a software rasterizer such as llvmpipe).
    pub fn is_hardware(&self) -> bool {
        self.gpu.is_hardware()
    }

    /// Every adapter wgpu finds here.
    pub fn adapters() -> Vec<AdapterSummary> {
        list_adapters()
    }

    /// Destroys the device, as a driver reset or a removed GPU would: every later call on this
    /// backend fails with `Error::DeviceLost`. For tests of that path (and for a caller that must
    /// release the GPU before the backend is dropped).
    pub fn lose_device(&self) {
        self.gpu.device.destroy();
        // The lost callback runs from the device's maintenance; one poll delivers it.
        let _ = self.gpu.device.poll(wgpu::PollType::Poll);
    }

    /// True when the device can time passes with timestamp queries.
    pub fn has_timestamps(&self) -> bool {
        self.gpu.timestamps
    }

    /// Loop iterations one shader invocation may run in all, where the driver limits them: llvmpipe
    /// (lavapipe) ends every loop of an invocation once 65535 back-edges have run, silently. Software
    /// drivers (CPU-type adapters) are probed once ([`Self::probe_loop_limit`]): another one may
    /// have another limit, or none (then the probe's length stands for it); hardware adapters are
    /// taken to have none. A probe that fails answers lavapipe's limit.
    fn loop_budget(&self) -> Option<u64> {
        if self.gpu.info.device_type != wgpu::DeviceType::Cpu {
            return None;
        }
        *self
            .loop_limit
            .get_or_init(|| Some(self.probe_loop_limit().unwrap_or(LAVAPIPE_LOOP_LIMIT)))
    }

    /// Runs probe.wgsl's loop of [`PROBE_ITERATIONS`] in one invocation: the iterations it
    /// completed, where the driver ended it early its limit; where it ran them all, a lower bound
    /// (the attention then still runs in chunks of keys, which costs nothing in results).
    fn probe_loop_limit(&self) -> Result<u64> {
        let count = self.storage("loop probe", 8)?;
        let params = Params {
            seq: PROBE_ITERATIONS,
            ..Default::default()
        };
        let scope = self
            .gpu
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        self.dispatch(
            &mut enc,
            &self.pipes.loop_probe,
            &params,
            &[&count],
            [1, 1, 1],
        );
        self.gpu.queue.submit([enc.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(self.launch_error("loop_probe", e.to_string()));
        }
        let ran = self
            .read(&count, 0, 4)?
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| self.launch_error("loop_probe", "a short readback".into()))?;
        Ok(u64::from(ran))
    }

    /// Refuses sequences whose per-invocation loops (the means and the V quantization walk every
    /// token) would outrun the driver's loop limit, rather than return a wrong answer. Three per
    /// token, as measured: the pairwise means' binary counter (smooth.wgsl) gave wrong K and V codes
    /// at 32000 keys on lavapipe, where two per token would still fit.
    fn check_loop_budget(&self, p: &Problem) -> Result<()> {
        let Some(budget) = self.loop_budget() else {
            return Ok(());
        };
        let longest = 3 * p.seq_q.max(p.seq_k) as u64 + 1024;
        if longest > budget {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: format!(
                    "sequences of {} tokens on {}: this software driver stops shader loops after {budget} iterations (use a GPU adapter or the cpu backend)",
                    p.seq_q.max(p.seq_k),
                    self.gpu.describe()
                ),
            });
        }
        Ok(())
    }

    /// Keys one attention dispatch covers: all of them on real GPUs; on a driver with a loop limit,
    /// as many whole kv blocks as stay well inside it (the online softmax state carries over).
    fn keys_per_dispatch(&self, p: &Problem) -> usize {
        let all = p.seq_k.div_ceil(p.kv_block).max(1) * p.kv_block;
        let Some(budget) = self.loop_budget() else {
            return all;
        };
        let dp = p.head_dim_padded as u64;
        // back-edges per key of the loops that run per key (ALGORITHM.md Steps 4-6), with slack
        let per_key = match p.mode {
            Mode::Exact => 3 * p.head_dim as u64,
            // QK over packed words, PV over decoded values
            Mode::Int4Fp8 => dp / 8 + dp,
            Mode::Int8Fp8 | Mode::Int8Fp16 | Mode::Auto => dp / 4 + dp,
        } + if p.smooth_q { dp / 4 } else { 0 }
            + 24;
        let keys = ((budget * 6 / 10) / per_key) as usize;
        (keys / p.kv_block).max(1) * p.kv_block
    }

    /// A storage buffer of `bytes`, refused with a clear error beyond the adapter's limits.
    fn storage(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let bytes = bytes.max(4).div_ceil(4) * 4;
        let max = self
            .gpu
            .limits
            .max_storage_buffer_binding_size
            .min(self.gpu.limits.max_buffer_size);
        if bytes > max {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: format!(
                    "a {label} buffer of {bytes} bytes on {}: the adapter binds at most {max} bytes (split the batch or heads)",
                    self.gpu.describe()
                ),
            });
        }
        let scope = self
            .gpu
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if pollster::block_on(scope.pop()).is_some() {
            return Err(Error::OutOfMemory {
                backend: NAME,
                requested: bytes,
            });
        }
        Ok(buffer)
    }

    /// A storage buffer holding `data` (padded to whole words).
    fn storage_with(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
        let buffer = self.storage(label, data.len() as u64)?;
        if !data.is_empty() {
            let mut padded = data.to_vec();
            padded.resize(data.len().div_ceil(4) * 4, 0);
            self.gpu.queue.write_buffer(&buffer, 0, &padded);
        }
        Ok(buffer)
    }

    /// Reads `len` bytes of `buffer` from `offset` back to the host (waits for queued work).
    fn read(&self, buffer: &wgpu::Buffer, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let size = len.div_ceil(4) * 4;
        let staging = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
        self.gpu.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.poll_wait()?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.launch_error("readback", e.to_string())),
            Err(_) => {
                return Err(self.launch_error("readback", "the map callback never ran".into()));
            }
        }
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| self.launch_error("readback", e.to_string()))?;
        let bytes = view[..len as usize].to_vec();
        drop(view);
        staging.unmap();
        Ok(bytes)
    }

    fn poll_wait(&self) -> Result<()> {
        self.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.launch_error("poll", e.to_string()))?;
        self.gpu.check_lost()
    }

    fn launch_error(&self, kernel: &str, reason: String) -> Error {
        if let Err(lost) = self.gpu.check_lost() {
            return lost;
        }
        Error::Launch {
            backend: NAME,
            kernel: kernel.to_string(),
            reason,
        }
    }

    /// Workgroups for `threads` invocations of a one-dimensional pass, as a 2-D grid within the
    /// per-dimension limit; returns the grid and the row width the shaders' `linear_id` needs.
    fn grid_1d(&self, threads: u64) -> Result<([u32; 3], u32)> {
        let groups = threads.div_ceil(THREADS_1D).max(1);
        let max = u64::from(self.gpu.limits.max_compute_workgroups_per_dimension);
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: format!(
                    "a pass of {threads} invocations (more than the adapter dispatches)"
                ),
            });
        }
        Ok(([x as u32, y as u32, 1], (x * THREADS_1D) as u32))
    }

    /// Checks a 3-D grid against the adapter's limit.
    fn grid(&self, g: [u64; 3]) -> Result<[u32; 3]> {
        let max = u64::from(self.gpu.limits.max_compute_workgroups_per_dimension);
        if g.iter().any(|&x| x > max) {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: format!(
                    "a grid of {g:?} workgroups (the adapter allows {max} per dimension)"
                ),
            });
        }
        Ok([g[0] as u32, g[1] as u32, g[2] as u32])
    }

    /// Records one dispatch of `pipe` with `params` in binding 0 and `buffers` in bindings 1...
    fn dispatch(
        &self,
        enc: &mut wgpu::CommandEncoder,
        pipe: &wgpu::ComputePipeline,
        params: &Params,
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) {
        let uniform = self
            .gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: &params.to_bytes(),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        let bind = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipe.get_bind_group_layout(0),
                entries: &entries,
            });
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        pass.set_pipeline(pipe);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }

    /// The parameter block with the problem's fields filled in.
    fn base_params(&self, p: &Problem) -> Params {
        Params {
            batch: p.batch as u32,
            heads_q: p.heads_q as u32,
            heads_kv: p.heads_kv as u32,
            seq_q: p.seq_q as u32,
            seq_k: p.seq_k as u32,
            head_dim: p.head_dim as u32,
            head_dim_padded: p.head_dim_padded as u32,
            kv_block: p.kv_block as u32,
            mode: mode_code(p.mode),
            granularity: granularity_code(p.granularity),
            causal: p.causal as u32,
            sm_scale: p.sm_scale,
            smooth_q: p.smooth_q as u32,
            smooth_v: p.smooth_v as u32,
            rotate: p.rotate as u32,
            want_lse: p.return_lse as u32,
            exact_div: self.gpu.is_hardware() as u32,
            ..Default::default()
        }
    }

    /// Stage 0 for one tensor: raw input -> f32 [B, H, N, Dp], optionally flagging non-finite values.
    #[allow(clippy::too_many_arguments)] // one dispatch's worth of plain values
    fn encode_convert(
        &self,
        enc: &mut wgpu::CommandEncoder,
        p: &Problem,
        input: &wgpu::Buffer,
        meta: &TensorMeta,
        flags: &wgpu::Buffer,
        slot: u32,
        label: &str,
    ) -> Result<wgpu::Buffer> {
        let s = meta.shape;
        let elems = (s.batch * s.heads * s.seq) as u64 * p.head_dim_padded as u64;
        u32_of(label, elems)?;
        let dst = self.storage(label, elems * 4)?;
        let (groups, threads_x) = self.grid_1d(elems)?;
        let params = Params {
            heads: s.heads as u32,
            seq: s.seq as u32,
            dtype: dtype_code(meta.dtype),
            tensor_layout: layout_code(meta.layout),
            flag_slot: slot,
            check_finite: p.mode.is_quantized() as u32,
            threads_x,
            batch: s.batch as u32,
            ..self.base_params(p)
        };
        self.dispatch(
            enc,
            &self.pipes.to_f32_padded,
            &params,
            &[input, &dst, flags],
            groups,
        );
        Ok(dst)
    }

    /// Channel means of `src` ([.., seq, Dp]) over blocks of `block` tokens, into aux at `offset`;
    /// summed pairwise (km, vm) or in token order (the smooth_q blocks).
    #[allow(clippy::too_many_arguments)]
    fn encode_mean(
        &self,
        enc: &mut wgpu::CommandEncoder,
        p: &Problem,
        src: &wgpu::Buffer,
        aux: &wgpu::Buffer,
        heads: usize,
        seq: usize,
        block: usize,
        pairwise: bool,
        offset: u32,
    ) -> Result<()> {
        let blocks = seq.div_ceil(block) as u64;
        let (groups, threads_x) =
            self.grid_1d((p.batch * heads) as u64 * blocks * p.head_dim_padded as u64)?;
        let params = Params {
            heads: heads as u32,
            seq: seq as u32,
            block: block as u32,
            pairwise: pairwise as u32,
            dst_offset: offset,
            threads_x,
            ..self.base_params(p)
        };
        self.dispatch(enc, &self.pipes.block_mean, &params, &[src, aux], groups);
        Ok(())
    }

    /// Steps 1-3 and 7: means, codes and scales of Q, K and V, all on the device.
    fn encode_quantize(
        &self,
        enc: &mut wgpu::CommandEncoder,
        p: &Problem,
        inputs: [(&wgpu::Buffer, TensorMeta); 3],
    ) -> Result<Quantized> {
        let dp = p.head_dim_padded as u64;
        let (b, hq, hk, nq, nk) = (
            p.batch as u64,
            p.heads_q as u64,
            p.heads_kv as u64,
            p.seq_q as u64,
            p.seq_k as u64,
        );
        let flags = self.storage_with("flags", &[0xff; 16])?;
        let q32 = self.encode_convert(enc, p, inputs[0].0, &inputs[0].1, &flags, 0, "Q f32")?;
        let k32 = self.encode_convert(enc, p, inputs[1].0, &inputs[1].1, &flags, 1, "K f32")?;
        let v32 = self.encode_convert(enc, p, inputs[2].0, &inputs[2].1, &flags, 2, "V f32")?;

        let q_groups = scale_groups(p.granularity, Operand::Q, p.seq_q) as u64;
        let k_groups = scale_groups(p.granularity, Operand::K, p.seq_k) as u64;
        let nqb = nq.div_ceil(Q_SMOOTH_BLOCK as u64);
        let int4 = p.mode == Mode::Int4Fp8;
        let k8_copy = int4 && p.smooth_q;
        // sections of the aux buffer, in f32 elements
        let mut at = 0u64;
        let mut take = |n: u64| {
            let start = at;
            at += n;
            start
        };
        let km = take(b * hk * dp);
        let vm = take(if p.smooth_v { b * hk * dp } else { 0 });
        let qm = take(if p.smooth_q { b * hq * nqb * dp } else { 0 });
        let q_scales = take(b * hq * q_groups);
        let k_scales = take(b * hk * k_groups);
        let k8_scales = if k8_copy {
            take(b * hk * k_groups)
        } else {
            k_scales
        };
        let v_scales = take(b * hk * dp);
        let layout = AuxLayout {
            q_scales: u32_of("aux", q_scales)?,
            k_scales: u32_of("aux", k_scales)?,
            k8_scales: u32_of("aux", k8_scales)?,
            v_scales: u32_of("aux", v_scales)?,
            km: u32_of("aux", km)?,
            vm: u32_of("aux", vm)?,
            qm: u32_of("aux", qm)?,
            total: u32_of("aux", at)?,
            q_groups: q_groups as u32,
            k_groups: k_groups as u32,
        };
        let aux = self.storage("aux", at * 4)?;

        // Step 1 (and 7, 2): means
        self.encode_mean(
            enc,
            p,
            &k32,
            &aux,
            p.heads_kv,
            p.seq_k,
            p.seq_k.max(1),
            true,
            layout.km,
        )?;
        if p.smooth_v {
            self.encode_mean(
                enc,
                p,
                &v32,
                &aux,
                p.heads_kv,
                p.seq_k,
                p.seq_k.max(1),
                true,
                layout.vm,
            )?;
        }
        if p.smooth_q {
            self.encode_mean(
                enc,
                p,
                &q32,
                &aux,
                p.heads_q,
                p.seq_q,
                Q_SMOOTH_BLOCK,
                false,
                layout.qm,
            )?;
        }
        // Step 3: codes
        let qmax = p.mode.qk_qmax().unwrap_or(127);
        let words = |n: u64| n * if int4 { dp / 8 } else { dp / 4 };
        let q_codes = self.storage("Q codes", words(b * hq * nq) * 4)?;
        let k_codes = self.storage("K codes", words(b * hk * nk) * 4)?;
        let k8_codes = if k8_copy {
            Some(self.storage("K INT8 codes", b * hk * nk * dp)?)
        } else {
            None
        };
        let quant = |enc: &mut wgpu::CommandEncoder,
                     src: &wgpu::Buffer,
                     codes: &wgpu::Buffer,
                     codes8: &wgpu::Buffer,
                     operand: Operand,
                     heads: u64,
                     seq: u64|
         -> Result<()> {
            let (block, _) = group_shape(p.granularity, operand);
            let is_k = operand == Operand::K;
            let params = Params {
                heads: heads as u32,
                seq: seq as u32,
                operand: is_k as u32,
                qmax,
                mean_block: if is_k {
                    seq as u32
                } else if p.smooth_q {
                    Q_SMOOTH_BLOCK as u32
                } else {
                    0
                },
                mean_offset: if is_k { layout.km } else { layout.qm },
                scale_offset: if is_k {
                    layout.k_scales
                } else {
                    layout.q_scales
                },
                scale8_offset: layout.k8_scales,
                emit_int8: (is_k && k8_copy) as u32,
                ..self.base_params(p)
            };
            let grid = self.grid([seq.div_ceil(block as u64), b * heads, 1])?;
            self.dispatch(
                enc,
                &self.pipes.quantize_qk,
                &params,
                &[src, &aux, codes, codes8],
                grid,
            );
            Ok(())
        };
        quant(enc, &q32, &q_codes, &q_codes, Operand::Q, hq, nq)?;
        quant(
            enc,
            &k32,
            &k_codes,
            k8_codes.as_ref().unwrap_or(&k_codes),
            Operand::K,
            hk,
            nk,
        )?;
        if p.smooth_q && p.rotate {
            // Step 2b for the dS correction: qm rotated like Q' (after Q used it unrotated)
            let rows = b * hq * nqb;
            let (groups, threads_x) = self.grid_1d(rows)?;
            let params = Params {
                seq: rows as u32,
                dst_offset: layout.qm,
                threads_x,
                ..self.base_params(p)
            };
            self.dispatch(enc, &self.pipes.rotate_rows, &params, &[&aux], groups);
        }
        // Step 7: V
        let v_bytes = b * hk * nk * dp * if p.mode.is_fp8_pv() { 1 } else { 2 };
        let v_codes = self.storage("V codes", v_bytes)?;
        let (groups, threads_x) = self.grid_1d(b * hk * dp / 4)?;
        let params = Params {
            heads: hk as u32,
            seq: nk as u32,
            mean_offset: layout.vm,
            scale_offset: layout.v_scales,
            threads_x,
            ..self.base_params(p)
        };
        self.dispatch(
            enc,
            &self.pipes.quantize_v,
            &params,
            &[&v32, &aux, &v_codes],
            groups,
        );
        Ok(Quantized {
            q32,
            q_codes,
            k_codes,
            k8_codes,
            v_codes,
            aux,
            layout,
            flags,
            shapes: [inputs[0].1.shape, inputs[1].1.shape, inputs[2].1.shape],
        })
    }

    /// Reads the non-finite flags after a submission and names the first offending element:
    /// tensor, batch, head, token, and its value read back from the caller's own buffer.
    fn check_flags(
        &self,
        quant: &Quantized,
        inputs: [&wgpu::Buffer; 3],
        metas: [TensorMeta; 3],
    ) -> Result<()> {
        let bytes = self.read(&quant.flags, 0, 12)?;
        let decode = |slot: usize| {
            let c = &bytes[4 * slot..4 * slot + 4];
            let row = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let s = quant.shapes[slot];
            let row = row as usize;
            (row != u32::MAX as usize).then(|| {
                (
                    row / (s.seq * s.heads),
                    (row / s.seq) % s.heads,
                    row % s.seq,
                )
            })
        };
        if let Some((slot, (batch, head, token))) =
            first_non_finite_slot([decode(0), decode(1), decode(2)])
        {
            return Err(Error::NonFinite {
                tensor: ["Q", "K", "V"][slot],
                batch,
                head,
                token,
                value: self.first_non_finite(inputs[slot], metas[slot], batch, head, token),
            });
        }
        Ok(())
    }

    fn problem(
        &self,
        q: &TensorMeta,
        k: &TensorMeta,
        v: &TensorMeta,
        params: &AttentionParams,
    ) -> Result<Problem> {
        Problem::new(q, k, v, params, &self.capabilities())
    }

    /// A device tensor of `shape` filled on the host (the zero and empty cases).
    fn constant(
        &self,
        values: &[f32],
        shape: Shape,
        dtype: DType,
        layout: Layout,
    ) -> Result<DeviceTensor> {
        self.upload(&Tensor::from_f32_hnd(values, shape, dtype, layout)?)
    }

    /// One attention call. With `timer`, timestamps 0..4 mark the start, the end of the
    /// quantization (or conversion) passes, the end of the attention passes and the end of the call.
    fn run_attention(
        &self,
        q: &DeviceTensor,
        k: &DeviceTensor,
        v: &DeviceTensor,
        params: &AttentionParams,
        timer: Option<&wgpu::QuerySet>,
    ) -> Result<DeviceOutput> {
        self.gpu.check_lost()?;
        let p = self.problem(&q.meta(), &k.meta(), &v.meta(), params)?;
        let out_shape = p.out_shape();
        let lse_shape = Shape::new(p.batch, p.heads_q, p.seq_q, 1);
        if out_shape.numel() == 0 || p.seq_k == 0 {
            // nothing to attend to: zeros and a log-sum-exp of -inf (ALGORITHM.md, Shapes)
            let out = self.constant(&vec![0.0; out_shape.numel()], out_shape, p.dtype, p.layout)?;
            let lse = if p.return_lse {
                Some(self.constant(
                    &vec![f32::NEG_INFINITY; lse_shape.numel()],
                    lse_shape,
                    DType::F32,
                    Layout::Hnd,
                )?)
            } else {
                None
            };
            return Ok(DeviceOutput { out, lse });
        }
        let (qb, kb, vb) = (
            &q.handle::<GpuTensor>(NAME)?.buffer,
            &k.handle::<GpuTensor>(NAME)?.buffer,
            &v.handle::<GpuTensor>(NAME)?.buffer,
        );
        self.check_loop_budget(&p)?;
        let o_elems = out_shape.numel() as u64;
        let lse_elems = (p.batch * p.heads_q * p.seq_q) as u64;
        let chunk = self.keys_per_dispatch(&p);
        let chunks: Vec<(usize, usize)> = (0..p.seq_k)
            .step_by(chunk)
            .map(|s| (s, (s + chunk).min(p.seq_k)))
            .collect();
        // the online softmax state (m, l, flags, acc[Dp]) of each row, between chunks of keys
        let state_elems = if chunks.len() > 1 {
            lse_elems * (p.head_dim_padded as u64 + 4)
        } else {
            0
        };
        let out32 = self.storage("O f32", (o_elems + lse_elems + state_elems) * 4)?;
        let lse_offset = u32_of("O", o_elems)?;
        let state_offset = u32_of("O", o_elems + lse_elems + state_elems)? - state_elems as u32;
        let chunk_params = |base: Params, i: usize| Params {
            kv_start: chunks[i].0 as u32,
            kv_end: chunks[i].1 as u32,
            chunk_first: (i == 0) as u32,
            chunk_last: (i + 1 == chunks.len()) as u32,
            state_offset,
            ..base
        };
        let attn_grid = self.grid([
            (p.seq_q as u64).div_ceil(ROWS_PER_GROUP),
            p.heads_q as u64,
            p.batch as u64,
        ])?;

        let scope = self
            .gpu
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        let stamp = |enc: &mut wgpu::CommandEncoder, i: u32| {
            if let Some(qs) = timer {
                enc.write_timestamp(qs, i);
            }
        };
        stamp(&mut enc, 0);
        let quantized = if p.mode.is_quantized() {
            let quant = self.encode_quantize(
                &mut enc,
                &p,
                [(qb, q.meta()), (kb, k.meta()), (vb, v.meta())],
            )?;
            stamp(&mut enc, 1);
            let l = quant.layout;
            let params = Params {
                off_q_scales: l.q_scales,
                off_k_scales: l.k_scales,
                off_k8_scales: l.k8_scales,
                off_v_scales: l.v_scales,
                off_km: l.km,
                off_vm: l.vm,
                off_qm: l.qm,
                off_lse: lse_offset,
                q_groups: l.q_groups,
                k_groups: l.k_groups,
                ..self.base_params(&p)
            };
            let k8 = quant.k8_codes.as_ref().unwrap_or(&quant.k_codes);
            for i in 0..chunks.len() {
                self.dispatch(
                    &mut enc,
                    &self.pipes.attn_quantized,
                    &chunk_params(params, i),
                    &[
                        &quant.q_codes,
                        &quant.k_codes,
                        k8,
                        &quant.v_codes,
                        &quant.aux,
                        &quant.q32,
                        &out32,
                    ],
                    attn_grid,
                );
            }
            stamp(&mut enc, 2);
            Some(quant)
        } else {
            let flags = self.storage_with("flags", &[0xff; 16])?;
            let q32 = self.encode_convert(&mut enc, &p, qb, &q.meta(), &flags, 0, "Q f32")?;
            let k32 = self.encode_convert(&mut enc, &p, kb, &k.meta(), &flags, 1, "K f32")?;
            let v32 = self.encode_convert(&mut enc, &p, vb, &v.meta(), &flags, 2, "V f32")?;
            stamp(&mut enc, 1);
            let params = Params {
                off_lse: lse_offset,
                ..self.base_params(&p)
            };
            for i in 0..chunks.len() {
                self.dispatch(
                    &mut enc,
                    &self.pipes.attn_exact,
                    &chunk_params(params, i),
                    &[&q32, &k32, &v32, &out32],
                    attn_grid,
                );
            }
            stamp(&mut enc, 2);
            None
        };
        // store: O to the caller's dtype and layout
        let out_bytes = o_elems * p.dtype.size_bytes() as u64;
        let out = self.storage("O", out_bytes)?;
        let words = if p.dtype == DType::F32 {
            o_elems
        } else {
            o_elems.div_ceil(2)
        };
        let (groups, threads_x) = self.grid_1d(words)?;
        let params = Params {
            heads: p.heads_q as u32,
            seq: p.seq_q as u32,
            dtype: dtype_code(p.dtype),
            tensor_layout: layout_code(p.layout),
            threads_x,
            ..self.base_params(&p)
        };
        self.dispatch(
            &mut enc,
            &self.pipes.store_output,
            &params,
            &[&out32, &out],
            groups,
        );
        let lse = if p.return_lse {
            let buf = self.storage("LSE", lse_elems * 4)?;
            enc.copy_buffer_to_buffer(&out32, o_elems * 4, &buf, 0, lse_elems * 4);
            Some(buf)
        } else {
            None
        };
        stamp(&mut enc, 3);
        self.gpu.queue.submit([enc.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(self.launch_error("attention", e.to_string()));
        }
        if let Some(quant) = &quantized {
            self.check_flags(quant, [qb, kb, vb], [q.meta(), k.meta(), v.meta()])?;
        }
        Ok(DeviceOutput {
            out: DeviceTensor::new(
                TensorMeta {
                    shape: out_shape,
                    dtype: p.dtype,
                    layout: p.layout,
                },
                NAME,
                Box::new(GpuTensor { buffer: out }),
            ),
            lse: lse.map(|buf| {
                DeviceTensor::new(
                    TensorMeta {
                        shape: lse_shape,
                        dtype: DType::F32,
                        layout: Layout::Hnd,
                    },
                    NAME,
                    Box::new(GpuTensor { buffer: buf }),
                )
            }),
        })
    }

    /// The offending value of a flagged token, read from the caller's own buffer.
    fn first_non_finite(
        &self,
        buffer: &wgpu::Buffer,
        meta: TensorMeta,
        b: usize,
        h: usize,
        n: usize,
    ) -> f32 {
        let s = meta.shape;
        let size = meta.dtype.size_bytes();
        let start = s.index(meta.layout, b, h, n, 0) * size;
        let aligned = start / 4 * 4;
        let len = (start - aligned + s.head_dim * size) as u64;
        let Ok(bytes) = self.read(buffer, aligned as u64, len) else {
            return f32::NAN;
        };
        Storage::from_le_bytes(meta.dtype, &bytes[start - aligned..])
            .first_non_finite()
            .unwrap_or(f32::NAN)
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Rows of `[rows, dp]` cut to their first `d` columns.
fn strip(values: &[f32], dp: usize, d: usize) -> Vec<f32> {
    values
        .chunks_exact(dp)
        .flat_map(|r| r[..d].iter().copied())
        .collect()
}

/// Packed codes back to one i8 per element.
fn unpack_codes(bytes: &[u8], int4: bool) -> Vec<i8> {
    if !int4 {
        return bytes.iter().map(|&b| b as i8).collect();
    }
    bytes
        .iter()
        .flat_map(|&b| [((b << 4) as i8) >> 4, (b as i8) >> 4])
        .collect()
}

impl AttentionBackend for WgpuBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::with_all_features(
            NAME,
            self.gpu.describe(),
            Mode::CONCRETE.to_vec(),
            Mode::Int8Fp8,
            vec![64, 128],
        )
    }

    fn upload(&self, t: &Tensor) -> Result<DeviceTensor> {
        self.gpu.check_lost()?;
        let buffer = self.storage_with("tensor", &t.storage().to_le_bytes())?;
        Ok(DeviceTensor::new(
            t.meta(),
            NAME,
            Box::new(GpuTensor { buffer }),
        ))
    }

    fn download(&self, t: &DeviceTensor) -> Result<Tensor> {
        self.gpu.check_lost()?;
        let meta = t.meta();
        let buffer = &t.handle::<GpuTensor>(NAME)?.buffer;
        let n = meta.shape.numel();
        let bytes = self.read(buffer, 0, (n * meta.dtype.size_bytes()) as u64)?;
        let storage = Storage::from_le_bytes(meta.dtype, &bytes);
        Tensor::new(storage, meta.shape, meta.layout)
    }

    fn attention_device(
        &self,
        q: &DeviceTensor,
        k: &DeviceTensor,
        v: &DeviceTensor,
        params: &AttentionParams,
    ) -> Result<DeviceOutput> {
        self.run_attention(q, k, v, params, None)
    }

    fn synchronize(&self) -> Result<()> {
        self.poll_wait()
    }

    fn time_attention(
        &self,
        q: &DeviceTensor,
        k: &DeviceTensor,
        v: &DeviceTensor,
        params: &AttentionParams,
        warmup: usize,
        iters: usize,
    ) -> Result<Timing> {
        if !self.gpu.timestamps {
            return time_with_host_clock(self, q, k, v, params, warmup, iters);
        }
        let queries = self.gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("attention timer"),
            ty: wgpu::QueryType::Timestamp,
            count: 4,
        });
        let resolved = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: 32,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let period_ms = f64::from(self.gpu.queue.get_timestamp_period()) * 1e-6;
        let (mut total, mut kernel) = (Vec::new(), Vec::new());
        for i in 0..warmup + iters.max(1) {
            self.run_attention(q, k, v, params, Some(&queries))?;
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            enc.resolve_query_set(&queries, 0..4, &resolved, 0);
            self.gpu.queue.submit([enc.finish()]);
            let bytes = self.read(&resolved, 0, 32)?;
            let t: Vec<u64> = bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            if i >= warmup {
                total.push(t[3].saturating_sub(t[0]) as f64 * period_ms);
                kernel.push(t[2].saturating_sub(t[1]) as f64 * period_ms);
            }
        }
        Ok(Timing {
            end_to_end_ms: median(total),
            kernel_ms: Some(median(kernel)),
            clock: "wgpu-timestamps",
        })
    }

    fn quantize(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttentionParams,
    ) -> Result<QuantizedQkv> {
        self.gpu.check_lost()?;
        let p = self.problem(&q.meta(), &k.meta(), &v.meta(), params)?;
        if !p.mode.is_quantized() {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: "quantize in the exact mode (it has no quantization stage)".into(),
            });
        }
        self.check_loop_budget(&p)?;
        let (dq, dk, dv) = (self.upload(q)?, self.upload(k)?, self.upload(v)?);
        let bufs = [
            &dq.handle::<GpuTensor>(NAME)?.buffer,
            &dk.handle::<GpuTensor>(NAME)?.buffer,
            &dv.handle::<GpuTensor>(NAME)?.buffer,
        ];
        let scope = self
            .gpu
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        let quant = self.encode_quantize(
            &mut enc,
            &p,
            [
                (bufs[0], q.meta()),
                (bufs[1], k.meta()),
                (bufs[2], v.meta()),
            ],
        )?;
        self.gpu.queue.submit([enc.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(self.launch_error("quantize", e.to_string()));
        }
        self.check_flags(&quant, bufs, [q.meta(), k.meta(), v.meta()])?;
        let (dp, d) = (p.head_dim_padded, p.head_dim);
        let int4 = p.mode == Mode::Int4Fp8;
        let code_bytes = |n: usize| (n * dp / if int4 { 2 } else { 1 }) as u64;
        let q_codes = unpack_codes(
            &self.read(&quant.q_codes, 0, code_bytes(p.batch * p.heads_q * p.seq_q))?,
            int4,
        );
        let k_codes = unpack_codes(
            &self.read(
                &quant.k_codes,
                0,
                code_bytes(p.batch * p.heads_kv * p.seq_k),
            )?,
            int4,
        );
        let aux = f32s(&self.read(&quant.aux, 0, u64::from(quant.layout.total) * 4)?);
        let l = quant.layout;
        let section = |start: u32, len: usize| aux[start as usize..start as usize + len].to_vec();
        let nkv = p.batch * p.heads_kv;
        let v_bytes = self.read(
            &quant.v_codes,
            0,
            (nkv * p.seq_k * dp * if p.mode.is_fp8_pv() { 1 } else { 2 }) as u64,
        )?;
        let v = if p.mode.is_fp8_pv() {
            QuantizedV::Fp8 {
                codes: v_bytes,
                scales: section(l.v_scales, nkv * dp),
            }
        } else {
            QuantizedV::F16 {
                values: v_bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            }
        };
        let nqb = p.seq_q.div_ceil(Q_SMOOTH_BLOCK);
        Ok(QuantizedQkv {
            mode: p.mode,
            granularity: p.granularity,
            head_dim_padded: dp,
            q_codes,
            q_scales: section(l.q_scales, p.batch * p.heads_q * l.q_groups as usize),
            k_codes,
            k_scales: section(l.k_scales, nkv * l.k_groups as usize),
            v,
            km: strip(&section(l.km, nkv * dp), dp, d),
            qm: if p.smooth_q {
                section(l.qm, p.batch * p.heads_q * nqb * dp)
            } else {
                Vec::new()
            },
            vm: if p.smooth_v {
                strip(&section(l.vm, nkv * dp), dp, d)
            } else {
                Vec::new()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backend, or `None` where no adapter opens and `SAGE_REQUIRE` does not name wgpu (it
    /// fails the test where it does: CI must not skip).
    fn backend_unless_required() -> Option<WgpuBackend> {
        match WgpuBackend::new() {
            Ok(b) => Some(b),
            Err(e) => {
                assert!(
                    std::env::var("SAGE_REQUIRE")
                        .unwrap_or_default()
                        .split(',')
                        .all(|r| r != NAME),
                    "{e}"
                );
                None
            }
        }
    }

    /// Every shader parses and validates with naga, adapter or not.
    #[test]
    fn shaders_validate_with_naga() {
        for (file, source, _) in pipelines::STAGES {
            let module = naga::front::wgsl::parse_str(&pipelines::full_source(source))
                .unwrap_or_else(|e| {
                    panic!(
                        "{file}: {}",
                        e.emit_to_string(&pipelines::full_source(source))
                    )
                });
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::all(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{file}: {e:?}"));
        }
    }

    /// The loop probe sees llvmpipe's limit (lavapipe in CI: the budget the length checks were
    /// measured against, 65535 back-edges); a hardware adapter has none.
    #[test]
    fn the_loop_probe_finds_the_drivers_limit() {
        let Some(backend) = backend_unless_required() else {
            return;
        };
        let probed = backend.probe_loop_limit().expect("the probe runs");
        assert!(probed <= u64::from(PROBE_ITERATIONS), "{probed}");
        if backend.gpu.info.device_type != wgpu::DeviceType::Cpu {
            assert_eq!(backend.loop_budget(), None);
        } else {
            if backend.gpu.describe().contains("llvmpipe") {
                let lavapipe = LAVAPIPE_LOOP_LIMIT..=LAVAPIPE_LOOP_LIMIT + 1;
                assert!(lavapipe.contains(&probed), "{probed}");
            }
            assert_eq!(backend.loop_budget(), Some(probed));
        }
    }

    /// `div_exact` rounds like IEEE division on the adapter (lavapipe in CI), over quotients of
    /// every magnitude, ties and near-ties included.
    #[test]
    fn div_exact_matches_ieee_division() {
        let Some(backend) = backend_unless_required() else {
            return;
        };
        let gpu = &backend.gpu;
        let shader = format!(
            "{}\n@group(0) @binding(0) var<storage, read_write> xs: array<f32>;\n\
             @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {{\n\
             let i = g.x; if (2u * i + 1u < arrayLength(&xs)) {{ xs[2u * i] = div_exact(xs[2u * i], xs[2u * i + 1u]); }} }}",
            pipelines::COMMON
        );
        let module = gpu
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: None,
                source: wgpu::ShaderSource::Wgsl(shader.into()),
            });
        let pipe = gpu
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: None,
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        let mut pairs: Vec<(f32, f32)> = Vec::new();
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        for _ in 0..20000 {
            let a = f32::from_bits(0x3000_0000 + next() % 0x1e00_0000)
                * if next() % 2 == 0 { 1.0 } else { -1.0 };
            let b = f32::from_bits(0x3000_0000 + next() % 0x1e00_0000);
            pairs.push((a, b));
        }
        // the divisions sage does: amax / qmax, qmax / amax, sums / counts
        for k in 1..2000u32 {
            pairs.push((k as f32 * 0.37, 127.0));
            pairs.push((7.0, k as f32 * 0.0123));
            pairs.push((k as f32 * 3.0 + 0.5, 448.0));
            pairs.push((-(k as f32) * 1.5, (k % 97 + 1) as f32));
        }
        let data: Vec<u8> = pairs
            .iter()
            .flat_map(|(a, b)| [a.to_le_bytes(), b.to_le_bytes()])
            .flatten()
            .collect();
        let buf = backend
            .storage_with("pairs", &data)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipe.get_bind_group_layout(0),
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: buf.as_entire_binding(),
                }],
            });
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipe);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups((pairs.len() as u32).div_ceil(64), 1, 1);
        }
        gpu.queue.submit([enc.finish()]);
        let out = f32s(
            &backend
                .read(&buf, 0, data.len() as u64)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let wrong: Vec<String> = pairs
            .iter()
            .enumerate()
            .filter(|(i, (a, b))| out[2 * i].to_bits() != (a / b).to_bits())
            .take(5)
            .map(|(i, (a, b))| format!("{a:e} / {b:e} = {:e}, gpu {:e}", a / b, out[2 * i]))
            .collect();
        assert!(
            wrong.is_empty(),
            "div_exact differs from IEEE division: {wrong:?}"
        );
    }

    #[test]
    fn int4_codes_unpack_with_their_sign() {
        // nibbles (low first): 7, -7 | -1, 0
        assert_eq!(unpack_codes(&[0x97, 0x0f], true), vec![7, -7, -1, 0]);
        assert_eq!(unpack_codes(&[0x81, 0x7f], false), vec![-127, 127]);
    }
}
