//! sage-cuda: the tensor-core backend. Q·Kᵀ on INT8 (`mma.m16n8k32.s8`) or INT4 (`m16n8k64.s4`)
//! codes, P·V in FP8 E4M3 (`m16n8k32.e4m3`, sm_89+) or f16, kernels in `kernels/` compiled by NVRTC
//! for the device's architecture at first use and cached on disk. The launch contract is
//! `kernels/ABI.md`.
//!
//! Without a CUDA driver or NVRTC, [`CudaBackend::new`] returns [`Error::Unavailable`] with the
//! reason: cudarc would panic on a missing library, so both are probed first.

pub mod nvrtc;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    DriverError, LaunchConfig, PushKernelArg, sys,
};
use half::f16;
use sage_core::numerics::Q_SMOOTH_BLOCK;
use sage_core::numerics::quant::{Operand, scale_groups};
use sage_core::{
    AttentionBackend, AttentionParams, Capabilities, DType, DeviceOutput, DeviceTensor, Error,
    Granularity, Layout, Mode, Problem, QuantizedQkv, QuantizedV, Result, Shape, Storage, Tensor,
    TensorMeta, Timing, first_non_finite_slot, median,
};

pub use nvrtc::{Module, arch_for};

pub const NAME: &str = "cuda";

/// Tokens per quantization tile (kernels/ABI.md, "Derived sizes").
const QT: usize = 128;

/// Tiles of QT tokens per CTA of quantize_q, quantize_k and quantize_v_e4m3 (their `tpc` argument):
/// more tiles per CTA keep the next tile's copy in flight for longer (quant.cu), but the grid must
/// still fill the GPU, so a problem of `tiles` tiles in all gets up to 8 only while that leaves at
/// least four CTAs per SM, and small problems keep one tile per CTA.
fn quant_tiles_per_cta(tiles: usize, sms: usize) -> usize {
    (tiles / (4 * sms.max(1))).clamp(1, 8)
}

/// Tiles per CTA of kv_stats_blocks (their `tpc`): a power of two (each CTA's tokens are an aligned
/// block of the pairwise mean), up to 8, and no more than leave four CTAs per SM.
fn stats_tiles_per_cta(tiles: usize, sms: usize) -> usize {
    1 << quant_tiles_per_cta(tiles, sms).ilog2()
}

/// Dynamic shared memory of kv_stats_blocks (quant.cu `StatsLayout`): a ring of three staged tiles
/// (16-bit inputs) and the warps' partial sums, maxima and minima.
fn stats_smem_bytes(dtype: DType) -> u32 {
    let ring = match dtype {
        DType::F32 => 0,
        _ => 3 * (QT * 128 * 2) as u32,
    };
    ring + 3 * 8 * 128 * 4
}

/// Dynamic shared memory of quantize_q_rows (quant.cu): two staged tiles of 16-bit rows, each
/// thread's partial group maximum and one per warp.
fn q_rows_smem_bytes(dp: usize) -> u32 {
    (2 * QT * dp * 2 + 4 * Q_ROWS_THREADS as usize + 4 * 8) as u32
}

/// Threads of a quantize_q_rows CTA (`QROWS_THREADS`).
const Q_ROWS_THREADS: u32 = 256;

/// The input the lean quantize kernels (`quantize_{q,k}_rows`, `quantize_v_cols`) read: 16-bit
/// values in a 16-byte aligned buffer with D = Dp, so rows are whole 16-byte chunks in both layouts.
fn lean_input(p: &Problem, ptr: Arg) -> bool {
    matches!(p.dtype, DType::F16 | DType::BF16)
        && matches!(ptr, Arg::Ptr(a) if a % 16 == 0)
        && p.head_dim == p.head_dim_padded
}

/// Whether quantize_q_rows can take Q's Step 3 (quant.cu): a lean input, INT8 codes, no smooth_q,
/// no rotation, no q . km (the log-sum-exp needs it).
fn q_rows_case(p: &Problem, q_ptr: Arg) -> bool {
    lean_input(p, q_ptr)
        && p.mode.qk_qmax() == Some(127)
        && !p.smooth_q
        && !p.rotate
        && !p.return_lse
}

/// Dynamic shared memory of quantize_k_rows (quant.cu): quantize_q_rows's two staged tiles and
/// partial maxima, and the head's km.
fn k_rows_smem_bytes(dp: usize) -> u32 {
    (2 * QT * dp * 2 + 4 * Q_ROWS_THREADS as usize + 4 * dp) as u32
}

/// Whether quantize_k_rows can take K's Step 3 (quant.cu): a lean input, INT8 codes (so no INT4
/// copy for dS either), no rotation.
fn k_rows_case(p: &Problem, k_ptr: Arg) -> bool {
    lean_input(p, k_ptr) && p.mode.qk_qmax() == Some(127) && !p.rotate
}

/// quantize_v_cols (quant.cu) for Step 7 where it applies: FP8 V without smooth_v (the scales are
/// then the channels' absmax alone), a lean input, and a head's slice of `cw` channels of every
/// token fitting in the shared memory of `cl` CTAs (a cluster, sm_90; `max_cl` is 1 where there are
/// none). Returns `(cw, cl)`: the widest slice of 32, 16, 8 channels (32: a 64-byte piece of every
/// row per copy; 64 measured slower, its stores less coalesced) on the fewest CTAs whose share
/// leaves room for three CTAs per multiprocessor (72 KiB, a multiple of 16 tokens); else 8 channels
/// on one CTA up to 200 KiB or the device's `max_smem` per block, whichever is less; else None (the
/// general path). `force` (8, 16, 32 or 64, from `SAGE_CUDA_V_COLS`) takes that width wherever it
/// fits.
fn v_cols_plan(
    p: &Problem,
    v_ptr: Arg,
    nk_pad: usize,
    force: Option<usize>,
    max_cl: usize,
    max_smem: usize,
) -> Option<(usize, usize)> {
    if !(p.mode.is_fp8_pv() && !p.smooth_v && lean_input(p, v_ptr)) {
        return None;
    }
    let fits = |cw: usize, cl: usize, limit: usize| {
        v_cols_smem_bytes(nk_pad, cw, cl) as usize <= (limit * 1024).min(max_smem)
    };
    let widths: Vec<usize> = force
        .map_or(vec![32, 16, 8], |cw| vec![cw])
        .into_iter()
        .filter(|&cw| cw <= p.head_dim_padded)
        .collect();
    let shared = widths.iter().find_map(|&cw| {
        [1, 2, 4, 8, 16]
            .into_iter()
            .find(|&cl| cl <= max_cl && nk_pad.is_multiple_of(16 * cl) && fits(cw, cl, 72))
            .map(|cl| (cw, cl))
    });
    let last = *widths.last()?;
    shared.or_else(|| (last <= 16 && fits(last, 1, 200)).then_some((last, 1)))
}

/// The plan `plan(max_cl)` gives for the largest `max_cl` (from `max_cl` down, halving) whose cluster
/// the device can place (`fits(cw, cl)`; one CTA always can): a smaller cluster, one CTA or the
/// general path (None) rather than a launch that fails.
fn v_cols_placed(
    max_cl: usize,
    plan: impl Fn(usize) -> Option<(usize, usize)>,
    fits: impl Fn(usize, usize) -> bool,
) -> Option<(usize, usize)> {
    let mut max_cl = max_cl;
    loop {
        let (cw, cl) = plan(max_cl)?;
        if cl == 1 || fits(cw, cl) {
            return Some((cw, cl));
        }
        max_cl = cl / 2;
    }
}

/// Dynamic shared memory of quantize_v_cols: the CTA's share of the staged slice and the warps'
/// partial maxima.
fn v_cols_smem_bytes(nk_pad: usize, cw: usize, cl: usize) -> u32 {
    (nk_pad / cl * 2 * cw + 4 * 9 * cw / 2) as u32
}

/// Query rows per attention block.
const ATTN_ROWS: usize = 64;
/// Query rows per block of the f32 exact kernel.
const EXACT_F32_ROWS: usize = 16;
/// `nonfinite` flags start here: no offending token.
const NO_TOKEN: u32 = 0x7fff_ffff;

/// A device tensor's storage: its raw bytes in its own dtype.
struct GpuTensor {
    buf: CudaSlice<u8>,
}

/// One kernel argument, stored in an 8-byte slot (i32 and f32 read the low half, little-endian).
#[derive(Clone, Copy)]
enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

impl Arg {
    fn slot(self) -> u64 {
        match self {
            Arg::Ptr(p) => p,
            Arg::I32(v) => v as u32 as u64,
            Arg::I64(v) => v as u64,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}

const NULL: Arg = Arg::Ptr(0);

/// A TMA tensor map, passed to a kernel by value (`__grid_constant__`, kernels/ABI.md "Hopper kernel").
#[repr(transparent)]
struct TensorMap(sys::CUtensorMap);

// SAFETY: a CUtensorMap is 128 plain bytes that the kernel reads as its parameter; the driver copies
// it at launch.
unsafe impl DeviceRepr for TensorMap {}

/// A loaded module: the file, and for the attention modules the input dtype its entries are for.
type ModuleKey = (Module, Option<nvrtc::EntryDtype>);

/// The Hopper kernel's CTA form (attn_wgmma.cu): `Pair` is a producer warpgroup and two consumer
/// warpgroups of 64 query rows, one CTA per multiprocessor; `Solo` one consumer warpgroup that issues
/// its own copies and runs its products in order, three CTAs per multiprocessor (at kv_block = head
/// dim = 128 only without alignment slack: [`CudaBackend::wgmma_smem_slack`]); `Trio` the pair with
/// a third consumer warpgroup (160 registers per consumer, each running its products in order);
/// `Persist` and `TrioPersist` the pair and the trio with one CTA per multiprocessor looping over
/// work items, so that the next item's loads and the last item's output copies overlap the
/// consumers' work (the persistent trio at head dim 128 runs its P V in two halves of 64 channels).
/// `TrioPersistQ` is the persistent trio that quantizes its own Q tiles from the 16-bit input (the
/// stage then has no Q pass): taken in place of `TrioPersist` where [`fused_q_case`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WgmmaForm {
    Pair,
    Solo,
    Persist,
    Trio,
    TrioPersist,
    TrioPersistQ,
}

impl WgmmaForm {
    /// Query rows per CTA.
    fn rows(self) -> usize {
        match self {
            WgmmaForm::Pair | WgmmaForm::Persist => 128,
            WgmmaForm::Solo => 64,
            WgmmaForm::Trio | WgmmaForm::TrioPersist | WgmmaForm::TrioPersistQ => 192,
        }
    }
    /// K/V ring depth at head dim `dp` and kv_block `kvt` (`WgSmem::STAGES`).
    fn stages(self, dp: usize, kvt: usize) -> usize {
        match self {
            WgmmaForm::Pair | WgmmaForm::Persist | WgmmaForm::Trio => 4,
            WgmmaForm::Solo if dp == 128 && kvt == 128 => 2,
            WgmmaForm::Solo | WgmmaForm::TrioPersist | WgmmaForm::TrioPersistQ => 3,
        }
    }
    fn threads(self) -> u32 {
        match self {
            WgmmaForm::Pair | WgmmaForm::Persist => 384,
            WgmmaForm::Solo => 128,
            WgmmaForm::Trio | WgmmaForm::TrioPersist | WgmmaForm::TrioPersistQ => 512,
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            WgmmaForm::Pair => "",
            WgmmaForm::Solo => "_solo",
            WgmmaForm::Persist => "_persist",
            WgmmaForm::Trio => "_trio",
            WgmmaForm::TrioPersist => "_trio_persist",
            WgmmaForm::TrioPersistQ => "_trio_persist_q",
        }
    }
    /// Whether its CTAs loop over work items (one per multiprocessor).
    fn persistent(self) -> bool {
        matches!(
            self,
            WgmmaForm::Persist | WgmmaForm::TrioPersist | WgmmaForm::TrioPersistQ
        )
    }
    /// Q tile and sv / vm buffers (`WgForm::BUFS`).
    fn bufs(self) -> usize {
        if self.persistent() { 2 } else { 1 }
    }
    /// Consumer warpgroups per CTA.
    fn consumers(self) -> usize {
        self.rows() / 64
    }
}

/// What `SAGE_CUDA_WGMMA_CTA` asks for: a form, and for a persistent form a cap on its CTAs.
type FormSetting = Option<(WgmmaForm, Option<usize>)>;

/// One call's Hopper kernel: its form, a cap on a persistent form's CTAs, the alignment slack the
/// form was chosen with, and for `TrioPersistQ` the tensor map of the 16-bit Q input it quantizes.
struct WgmmaPlan {
    form: WgmmaForm,
    cap: Option<usize>,
    slack: usize,
    q_map: Option<TensorMap>,
}

/// Parses `SAGE_CUDA_WGMMA_CTA`: `pair`, `solo`, `trio`, `persist`, `trio-persist`, a persistent form
/// with `:<CTAs>` (at most that many CTAs, so that each crosses many items: a test setting), or unset /
/// `auto` (`None`: chosen per shape by [`auto_form`]).
fn wgmma_form_setting(value: Option<&str>) -> std::result::Result<FormSetting, String> {
    let v = match value {
        None | Some("auto") => return Ok(None),
        Some(v) => v,
    };
    let bad = || {
        format!(
            "`{v}` is not auto, pair, solo, trio, persist, trio-persist or a persistent form with \
             :<CTAs>"
        )
    };
    let (name, cap) = match v.split_once(':') {
        Some((name, n)) => match n.parse::<usize>() {
            Ok(n) if n > 0 => (name, Some(n)),
            _ => return Err(bad()),
        },
        None => (v, None),
    };
    let form = match name {
        "pair" => WgmmaForm::Pair,
        "solo" => WgmmaForm::Solo,
        "trio" => WgmmaForm::Trio,
        "persist" => WgmmaForm::Persist,
        "trio-persist" => WgmmaForm::TrioPersist,
        _ => return Err(bad()),
    };
    if cap.is_some() && !form.persistent() {
        return Err(bad());
    }
    Ok(Some((form, cap)))
}

/// The form for head dim `dp` (padded), kv_block `kvt` and `seq_k` keys. Measured on an H200, kernel
/// only in one call (BENCHMARKS.md, sessions 10-13, kv_block 128 unless said): the trio is ahead of
/// the pair at every length measured (D = 64 from 2048 keys: +13 % at 16384; D = 128: +7 to +8.5 %
/// at 1024, 4096 and 16384, causal or not). With few keys per item the persistent forms' overlap of
/// one item's end with the next one's start is worth more: at 2048 keys the persistent trio is ahead
/// of the trio (+6 % at D = 64, +4 % at D = 128) and of the persistent pair (+13 %, +8 %); at 1024
/// keys it is ahead of the persistent pair at D = 64 (+4 %, -2 % causal) and level with it at D = 128
/// (-7 % causal). At D = 128 and kv_block 128 without a causal mask it stays ahead at every length
/// (session 17, against the trio with its P V whole, kernel only, three rounds: 4096 keys +1.8 %,
/// 8192 +1.7 %, 16384 +0.7 %), not at D = 64 (level at 4096 and 8192, -1.5 % at 16384) nor under a
/// causal mask (session 17 call 2: -14 % at 16384), where it is taken up to
/// [`TRIO_PERSIST_MAX_KEYS`]. At D = 64 with at most 1024 keys the solo form (three in-order CTAs per
/// multiprocessor) is ahead of the persistent trio (session 13, 1024 keys, end to end: +4 %, causal
/// +12.5 %; at 2048 keys -6 %, causal +2 %) and, with f32 outputs, of the pipelined solo it replaced
/// (+13 %); at kv_block 64 only under a causal mask (+8 %; -4 % without one, where the persistent trio
/// stays). With f32 outputs, which the persistent forms store lane by lane rather than staged (never
/// measured there), the trio elsewhere, whose gain is in the KV loop that f32 outputs share (not
/// measured with f32); kv_block 64 takes kv_block 128's thresholds otherwise (not measured).
/// At D = 128 and kv_block 128 the solo form (a 2-deep ring) fits three CTAs per multiprocessor only
/// without the alignment slack (`solo3`, [`CudaBackend::wgmma_smem_slack`]); there, up to 1024 keys,
/// it is ahead of the persistent pair with 16-bit outputs (session 14, 1024 keys, kernel only: +3 %,
/// causal +8 %; at 2048 keys -5 %, causal level) and of the trio with f32 outputs (512 and 1024
/// keys, end to end: +6 to +8 %); at kv_block 64 (three CTAs whatever the slack) of the persistent
/// pair with 16-bit outputs (+4 to +5 %), and taken there with f32 outputs too (not measured against
/// the trio). Under a causal mask the solo form runs up to [`SOLO_CAUSAL_MAX_KEYS`] (session 15, its
/// softmax converting dots with I2FP, kernel only against the forms taken before: 2048 keys +5 % at
/// D = 64 and +3 % at D = 128, 4096 keys +1.4 % and +3.7 %; 8192 keys -4.5 % and -0.5 %, 16384 -8 %
/// and -2 %; measured at kv_block 128 with 16-bit outputs, taken at kv_block 64 and with f32 outputs
/// too, not measured there).
fn auto_form(
    dp: usize,
    kvt: usize,
    seq_k: usize,
    causal: bool,
    out16: bool,
    solo3: bool,
) -> WgmmaForm {
    let solo = match dp {
        64 => kvt == 128 || causal || !out16,
        _ => kvt == 64 || solo3,
    };
    let solo_keys = if causal {
        SOLO_CAUSAL_MAX_KEYS
    } else {
        SOLO_MAX_KEYS
    };
    if solo && seq_k <= solo_keys {
        WgmmaForm::Solo
    } else if out16 && dp > 64 && seq_k <= PERSIST_MAX_KEYS {
        WgmmaForm::Persist
    } else if out16 && (seq_k <= TRIO_PERSIST_MAX_KEYS || (dp > 64 && kvt == 128 && !causal)) {
        WgmmaForm::TrioPersist
    } else {
        WgmmaForm::Trio
    }
}

/// The longest key sequence that [`auto_form`] gives the persistent pair (16-bit outputs, D = 128).
const PERSIST_MAX_KEYS: usize = 1024;

/// The longest key sequence that [`auto_form`] gives the persistent trio (16-bit outputs, where the
/// solo form is not taken: above [`PERSIST_MAX_KEYS`] at D = 128, above [`SOLO_MAX_KEYS`] at D = 64,
/// above [`SOLO_CAUSAL_MAX_KEYS`] (so never) under a causal mask where the solo form is taken),
/// except at D = 128 and kv_block 128 without a causal mask, where it has no limit.
const TRIO_PERSIST_MAX_KEYS: usize = 2048;

/// The longest key sequence that [`auto_form`] gives the solo form without a causal mask.
const SOLO_MAX_KEYS: usize = 1024;

/// The longest key sequence that [`auto_form`] gives the solo form under a causal mask.
const SOLO_CAUSAL_MAX_KEYS: usize = 4096;

/// Dynamic shared memory of `attn_int8_fp8_wgmma_kv<kvt>_hd<dp><form suffix>`: the Q tile(s), K and V
/// rings, mbarriers, each consumer's qm and double-buffered dS, the epilogue's sv and vm (per Q tile),
/// the persistent forms' staged 16-bit outputs, and `slack` bytes for the kernel to align its base
/// (ABI.md, `WgSmem` in attn_wgmma.cu; [`CudaBackend::wgmma_smem_slack`]).
/// `TrioPersistQ` adds four barriers, the items' Q scales (per buffer, 8 per 32 rows) and, from the
/// next 1024-byte boundary, 32 rows of 16-bit Q for each of its three quantizing warps.
fn wgmma_smem_bytes(dp: usize, kvt: usize, form: WgmmaForm, slack: usize) -> usize {
    let (stages, nc, bufs) = (form.stages(dp, kvt), form.consumers(), form.bufs());
    let persist = form.persistent();
    let fused_q = form == WgmmaForm::TrioPersistQ;
    let head_bars = if fused_q {
        12
    } else if persist {
        8
    } else {
        2
    };
    let bytes = bufs * form.rows() * dp
        + stages * 2 * kvt * dp
        + 8 * (head_bars + 4 * stages)
        + 4 * nc * dp
        + 4 * nc * 2 * kvt
        + bufs * 4 * 2 * dp
        + if persist { form.rows() * dp * 2 } else { 0 };
    let bytes = if fused_q {
        (bytes + bufs * 4 * form.rows() / 32 * 8).div_ceil(1024) * 1024 + 3 * 32 * dp * 2
    } else {
        bytes
    };
    bytes + slack
}

/// The Hopper kernel's entry point for a problem in `form`.
fn wgmma_entry(p: &Problem, form: WgmmaForm) -> String {
    format!(
        "attn_int8_fp8_wgmma_kv{}_hd{}_{}{}",
        p.kv_block,
        p.head_dim_padded,
        dtype_suffix(p.dtype),
        form.suffix()
    )
}

/// Whether the persistent trio may quantize its Q tiles itself (`_trio_persist_q`, attn_wgmma.cu,
/// unless `SAGE_CUDA_FUSE_Q=0`): quantize_q_rows's case (a lean 16-bit input, INT8 codes, no
/// smooth_q, rotation or q . km), at head dim and kv_block 128, with scale groups of 32 tokens
/// (per-thread or per-warp: the 192-row items would split per-block groups of 128).
fn fused_q_case(p: &Problem, q_ptr: Arg) -> bool {
    q_rows_case(p, q_ptr)
        && p.head_dim_padded == 128
        && p.kv_block == 128
        && matches!(p.granularity, Granularity::PerThread | Granularity::PerWarp)
}

/// The attributes set on one function: its dynamic shared memory limit (0: the default 48 KiB), the
/// shared memory carveout preference (100 %), the permission for clusters above 8 CTAs. Each launch
/// used to set them all again: driver calls on the hot path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Prepared {
    smem: u32,
    carveout: bool,
    non_portable: bool,
}

impl Prepared {
    /// What a launch with `smem` bytes of dynamic shared memory (of the wgmma module, in clusters of
    /// `cluster` CTAs) needs on top of what is set: a limit only grows (a smaller launch fits under a
    /// larger one), the carveout above 48 KiB and for every wgmma entry, the permission above 8 CTAs.
    fn wants(self, smem: u32, wgmma: bool, cluster: u32) -> Prepared {
        let large = smem > 48 * 1024;
        Prepared {
            smem: if large {
                self.smem.max(smem)
            } else {
                self.smem
            },
            carveout: self.carveout || large || wgmma,
            non_portable: self.non_portable || cluster > 8,
        }
    }
}

/// The launch attribute of clusters of `(cluster, 1, 1)` CTAs.
fn cluster_attribute(cluster: u32) -> sys::CUlaunchAttribute {
    sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
        pad: [0; 4],
        value: sys::CUlaunchAttributeValue {
            clusterDim: sys::CUlaunchAttributeValue_union__bindgen_ty_1 {
                x: cluster,
                y: 1,
                z: 1,
            },
        },
    }
}

/// The driver's CUDA version as 1000 * major + 10 * minor (0 if it does not say): launches with
/// attributes (`cuLaunchKernelEx`) need 12.0.
fn driver_version() -> i32 {
    let mut v = 0;
    // SAFETY: writes one int; called after the driver library was found and initialized.
    match unsafe { sys::cuDriverGetVersion(&mut v) }.result() {
        Ok(()) => v,
        Err(_) => 0,
    }
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    cc: (i32, i32),
    device: String,
    /// Loaded modules; the attention modules one input dtype at a time (`nvrtc::entry_dtype`).
    modules: Mutex<HashMap<ModuleKey, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    /// Fill outputs with NaN before each run, so an element no kernel writes fails the checks
    /// (`SAGE_CUDA_POISON=1`; always on in debug builds).
    poison: bool,
    /// `int8-fp8` runs on the wgmma/TMA kernel (sm_90a, unless `SAGE_CUDA_WGMMA=0`).
    wgmma: bool,
    /// The Hopper kernel's CTA form: `SAGE_CUDA_WGMMA_CTA` read once (`None`: per shape; a bad value
    /// is reported by the first call that would use it).
    wgmma_form: std::result::Result<FormSetting, String>,
    /// Q's Step 3 by quantize_q_rows where it can (unless `SAGE_CUDA_Q_ROWS=0`, for comparisons).
    q_rows: bool,
    /// Q's Step 3 inside the persistent trio where [`fused_q_case`] holds (unless
    /// `SAGE_CUDA_FUSE_Q=0`).
    fuse_q: bool,
    /// K's Step 3 by quantize_k_rows where it can (unless `SAGE_CUDA_K_ROWS=0`).
    k_rows: bool,
    /// V's FP8 scales and codes by quantize_v_cols where it can: `SAGE_CUDA_V_COLS` `0` turns it
    /// off, `8`, `16`, `32` or `64` pins the slice width (`Some(Some(cw))`), anything else or unset
    /// is automatic.
    v_cols: Option<Option<usize>>,
    /// The largest cluster quantize_v_cols may run on: 16 on sm_90 and later with driver 12.0 (launch
    /// attributes; above 8 a non-portable size, which Hopper allows), 1 (none) otherwise;
    /// `SAGE_CUDA_V_CLUSTER=1|2|4|8` lowers it.
    v_cluster: usize,
    /// Streaming multiprocessors (grid sizing of the quantization stage).
    sms: usize,
    /// Dynamic shared memory one block may opt in to (bytes).
    max_smem: usize,
    /// The quantization stage's kernels and the Hopper attention kernel launched as programmatic
    /// dependents of the kernel before them (sm_90 and later, unless `SAGE_CUDA_PDL=0` or a
    /// `SAGE_KERNEL_DIR` copy lacks the wait): each may be scheduled
    /// while that kernel ends, and waits for it in its first instruction (prelude.cuh,
    /// `grid_dependency_sync`).
    pdl: bool,
    /// Quantization-stage buffers kept between calls (none with `SAGE_CUDA_POOL_KEEP=0`).
    scratch: Option<ScratchList>,
    /// This backend's hold on the default pool's release threshold (`new`, unless
    /// `SAGE_CUDA_POOL_KEEP=0`): the last holder of a device puts the threshold back.
    pool: Option<PoolKeeper>,
    /// The Hopper kernel's alignment slack, probed at its first use ([`Self::wgmma_smem_slack`]).
    smem_slack: std::sync::OnceLock<usize>,
    /// Whether a cluster of quantize_v_cols fits the device, per (entry, CTAs, shared memory):
    /// [`Self::cluster_fits`].
    cluster_fits: Mutex<HashMap<(String, u32, u32), bool>>,
    /// The attributes set so far on each function ([`Self::function_for`],
    /// [`Self::cluster_function`]), so that a launch sets only what its function lacks.
    prepared: Mutex<HashMap<String, Prepared>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.device)
            .field("arch", &self.arch)
            .finish()
    }
}

/// Whether freed device memory is kept for the next call (unless `SAGE_CUDA_POOL_KEEP=0`): in the
/// device's default pool, and the quantization stage's buffers in the backend's scratch list.
fn pool_keep() -> bool {
    std::env::var("SAGE_CUDA_POOL_KEEP").map_or(true, |v| v != "0")
}

/// Per device, the backends open that keep freed memory in its default pool, and the pool's release
/// threshold from before the first of them: (device, holders, threshold before).
type PoolHolders = Mutex<Vec<(usize, usize, u64)>>;

static POOL_HOLDERS: PoolHolders = Mutex::new(Vec::new());

/// Counts a holder of `device`'s threshold; the first one raises it (`raise` returns the threshold
/// before, `None` where the device has no pool: then nothing is held). Whether this caller holds.
fn pool_hold(holders: &PoolHolders, device: usize, raise: impl FnOnce() -> Option<u64>) -> bool {
    let Ok(mut held) = holders.lock() else {
        return false;
    };
    if let Some(entry) = held.iter_mut().find(|e| e.0 == device) {
        entry.1 += 1;
        return true;
    }
    match raise() {
        Some(before) => {
            held.push((device, 1, before));
            true
        }
        None => false,
    }
}

/// Drops a holder of `device`'s threshold; the last one puts it back (`restore`, under the lock, so a
/// backend opening meanwhile cannot take the raised value for the original one).
fn pool_unhold(holders: &PoolHolders, device: usize, restore: impl FnOnce(u64)) {
    let Ok(mut held) = holders.lock() else {
        return;
    };
    if let Some(i) = held.iter().position(|e| e.0 == device) {
        held[i].1 -= 1;
        if held[i].1 == 0 {
            let (_, _, before) = held.swap_remove(i);
            restore(before);
        }
    }
}

/// A backend's hold on its device's pool threshold (`pool_hold`), released when it closes.
struct PoolKeeper {
    ctx: Arc<CudaContext>,
    device: usize,
}

impl PoolKeeper {
    fn new(ctx: &Arc<CudaContext>, device: usize) -> Option<PoolKeeper> {
        // best effort: a device without memory pools allocates synchronously anyway
        pool_hold(&POOL_HOLDERS, device, || {
            pool_release_threshold(ctx, Some(u64::MAX)).ok()
        })
        .then(|| PoolKeeper {
            ctx: ctx.clone(),
            device,
        })
    }
}

impl Drop for PoolKeeper {
    fn drop(&mut self) {
        pool_unhold(&POOL_HOLDERS, self.device, |before| {
            let _ = pool_release_threshold(&self.ctx, Some(before));
        });
    }
}

/// The device's default memory pool (the one stream-ordered allocations use).
fn default_pool(ctx: &CudaContext) -> std::result::Result<sys::CUmemoryPool, DriverError> {
    ctx.bind_to_thread()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` receives the device's default pool handle.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result()? };
    Ok(pool)
}

/// Sets how much freed memory the device's default pool keeps across synchronizations. The driver's
/// default, 0, hands it back at every synchronization, so each call's buffers were mapped again while
/// the GPU waited between the call's start and its first kernel (BENCHMARKS.md, session 10). `None`
/// only reads it. Returns the threshold before.
fn pool_release_threshold(
    ctx: &CudaContext,
    set: Option<u64>,
) -> std::result::Result<u64, DriverError> {
    let pool = default_pool(ctx)?;
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
    let mut old = 0u64;
    // SAFETY: the attribute takes and gives a u64.
    unsafe {
        sys::cuMemPoolGetAttribute(pool, attr, (&mut old as *mut u64).cast()).result()?;
        if let Some(mut new) = set {
            sys::cuMemPoolSetAttribute(pool, attr, (&mut new as *mut u64).cast()).result()?;
        }
    }
    Ok(old)
}

fn driver_error(what: &str, e: DriverError) -> Error {
    if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
        return Error::OutOfMemory {
            backend: NAME,
            requested: 0,
        };
    }
    Error::Launch {
        backend: NAME,
        kernel: what.to_string(),
        reason: format!("{e:?}"),
    }
}

fn dtype_suffix(d: DType) -> &'static str {
    match d {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F32 => "f32",
    }
}

/// Element strides (batch, head, token) of a tensor in its layout.
fn strides(meta: &TensorMeta) -> [Arg; 3] {
    let s = meta.shape;
    let (h, n, d) = (s.heads as i64, s.seq as i64, s.head_dim as i64);
    match meta.layout {
        Layout::Hnd => [Arg::I64(h * n * d), Arg::I64(n * d), Arg::I64(d)],
        Layout::Nhd => [Arg::I64(n * h * d), Arg::I64(d), Arg::I64(h * d)],
    }
}

fn granularity_code(g: Granularity) -> i32 {
    match g {
        Granularity::PerBlock => 0,
        Granularity::PerWarp => 1,
        Granularity::PerThread => 2,
    }
}

/// The modes a compute capability runs (FP8 mma needs sm_89).
fn modes_for(cc: (i32, i32)) -> Vec<Mode> {
    if cc >= (8, 9) {
        Mode::CONCRETE.to_vec()
    } else {
        vec![Mode::Int8Fp16, Mode::Exact]
    }
}

/// Buffers of one quantized call (kernels/ABI.md, "Buffers of a quantized-mode call").
struct QuantBuffers {
    km: Scratch,
    vm: Option<Scratch>,
    sv: Option<Scratch>,
    q_codes: Scratch,
    q_scales: Scratch,
    k_codes: Scratch,
    k_scales: Scratch,
    k8: Option<(Scratch, Scratch)>,
    qm: Option<Scratch>,
    qkm: Option<Scratch>,
    vt: Scratch,
    nonfinite: Scratch,
    groups_q: usize,
    groups_k: usize,
    nk_pad: usize,
    nq_pad: usize,
}

/// The size [`CudaBackend::alloc`] gives a buffer of `bytes`: whole 4-byte words (outputs are
/// poisoned and zero-filled with 32-bit memsets), at least one.
fn word_bytes(bytes: usize) -> usize {
    bytes.max(4).div_ceil(4) * 4
}

/// Buffers of the quantization stage that outlived their call, for the next one to take (exact
/// sizes). A call needs about a dozen; allocating them, stream-ordered as they are, still held the
/// call's first kernel back on the host while the GPU waited (BENCHMARKS.md, session 10).
type ScratchList = Arc<Mutex<Vec<CudaSlice<u8>>>>;

/// The most buffers a [`ScratchList`] keeps (beyond, the oldest is freed).
const SCRATCH_KEEP: usize = 32;

/// A buffer of the quantization stage: back to its list when dropped. Uses on the backend's one
/// stream are ordered, so the next call may take it while this call's kernels are still queued.
struct Scratch {
    buf: std::mem::ManuallyDrop<CudaSlice<u8>>,
    home: Option<ScratchList>,
}

impl std::ops::Deref for Scratch {
    type Target = CudaSlice<u8>;
    fn deref(&self) -> &CudaSlice<u8> {
        &self.buf
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: `buf` is taken once, here, and not touched after.
        let buf = unsafe { std::mem::ManuallyDrop::take(&mut self.buf) };
        // the oldest goes when the list is full (shapes that change keep the newest sizes)
        if let Some(Ok(mut list)) = self.home.as_ref().map(|h| h.lock()) {
            if list.len() >= SCRATCH_KEEP {
                list.remove(0);
            }
            list.push(buf);
        }
    }
}

/// Timing events of one call: start, attention start, end.
struct Marks {
    start: cudarc::driver::CudaEvent,
    attn: cudarc::driver::CudaEvent,
    end: cudarc::driver::CudaEvent,
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable {
        backend: NAME,
        reason,
    }
}

/// Whether libcuda can be opened (cudarc panics later if it cannot). A build that links it
/// (feature `dynamic-linking`) could not have started without it.
fn driver_present() -> bool {
    #[cfg(feature = "dynamic-loading")]
    {
        // SAFETY: only probes whether the shared library can be opened.
        unsafe { cudarc::driver::sys::is_culib_present() }
    }
    #[cfg(not(feature = "dynamic-loading"))]
    {
        true
    }
}

impl CudaBackend {
    /// Opens CUDA device `SAGE_CUDA_DEVICE` (default 0), or says why it cannot.
    pub fn new() -> Result<Self> {
        if !driver_present() {
            return Err(unavailable(
                "no CUDA driver (libcuda) on this machine".into(),
            ));
        }
        nvrtc::ensure_nvrtc()?;
        let ordinal = match std::env::var("SAGE_CUDA_DEVICE") {
            Ok(v) => v
                .parse::<usize>()
                .map_err(|_| unavailable(format!("SAGE_CUDA_DEVICE={v} is not a device number")))?,
            Err(_) => 0,
        };
        let count = CudaContext::device_count()
            .map_err(|e| unavailable(format!("the driver found no device: {e:?}")))?;
        if count <= 0 || ordinal >= count as usize {
            return Err(unavailable(format!(
                "no CUDA device {ordinal} ({count} found)"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("cannot open device {ordinal}: {e:?}")))?;
        // One stream orders everything; cudarc's per-buffer event tracking would only add overhead.
        // SAFETY: no buffer exists yet, and every buffer of this backend lives on `stream`.
        unsafe { ctx.disable_event_tracking() };
        let pool = if pool_keep() {
            PoolKeeper::new(&ctx, ordinal)
        } else {
            None
        };
        let mut backend = Self::on_stream(ctx.default_stream())?;
        backend.pool = pool;
        Ok(backend)
    }

    /// The backend on `stream` (of a context that is already open): checks the architecture.
    fn on_stream(stream: Arc<CudaStream>) -> Result<Self> {
        let ctx = stream.context().clone();
        let cc = ctx
            .compute_capability()
            .map_err(|e| unavailable(format!("{e:?}")))?;
        if cc < (8, 0) {
            return Err(unavailable(format!(
                "compute capability {}.{} (the kernels need sm_80 or newer)",
                cc.0, cc.1
            )));
        }
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_or(1, |n| n.max(1) as usize);
        let max_smem = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_or(48 * 1024, |n| n.max(0) as usize);
        Ok(CudaBackend {
            arch: arch_for(cc.0, cc.1),
            device: format!("{name} (sm_{}{})", cc.0, cc.1),
            cc,
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            poison: cfg!(debug_assertions)
                || std::env::var("SAGE_CUDA_POISON").is_ok_and(|v| v == "1"),
            wgmma: cc == (9, 0) && std::env::var("SAGE_CUDA_WGMMA").map_or(true, |v| v != "0"),
            wgmma_form: wgmma_form_setting(std::env::var("SAGE_CUDA_WGMMA_CTA").ok().as_deref()),
            q_rows: std::env::var("SAGE_CUDA_Q_ROWS").map_or(true, |v| v != "0"),
            fuse_q: std::env::var("SAGE_CUDA_FUSE_Q").map_or(true, |v| v != "0"),
            pdl: cc.0 >= 9
                && driver_version() >= 12_000
                && std::env::var("SAGE_CUDA_PDL").map_or(true, |v| v != "0")
                && nvrtc::sources_wait_for_grid_dependency(),
            k_rows: std::env::var("SAGE_CUDA_K_ROWS").map_or(true, |v| v != "0"),
            v_cols: match std::env::var("SAGE_CUDA_V_COLS").as_deref() {
                Ok("0") => None,
                Ok(w @ ("8" | "16" | "32" | "64")) => Some(w.parse().ok()),
                _ => Some(None),
            },
            v_cluster: if cc.0 >= 9 && driver_version() >= 12_000 {
                match std::env::var("SAGE_CUDA_V_CLUSTER").as_deref() {
                    Ok(n @ ("1" | "2" | "4" | "8")) => n.parse().unwrap_or(1),
                    _ => 16,
                }
            } else {
                1
            },
            sms,
            max_smem,
            scratch: pool_keep().then(|| Arc::new(Mutex::new(Vec::new()))),
            pool: None,
            smem_slack: std::sync::OnceLock::new(),
            cluster_fits: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
        })
    }

    /// Pins the Hopper kernel's CTA form as `SAGE_CUDA_WGMMA_CTA` would (`auto`, `pair`, `solo`,
    /// `trio`, `persist`, `trio-persist`, `persist:<CTAs>`, `trio-persist:<CTAs>`), for tests that must cover a form whatever the environment says.
    pub fn set_wgmma_cta(&mut self, setting: &str) -> Result<()> {
        let form = wgmma_form_setting(Some(setting))
            .map_err(|reason| Error::param("SAGE_CUDA_WGMMA_CTA", reason))?;
        self.wgmma_form = Ok(form);
        Ok(())
    }

    /// Lets the persistent trio quantize its own Q tiles where it can (on: `SAGE_CUDA_FUSE_Q`'s
    /// default) or leaves Q to the quantization stage, for tests that compare the two.
    pub fn set_fuse_q(&mut self, on: bool) {
        self.fuse_q = on;
    }

    /// The Hopper entry point that `attention` on these inputs would launch (`None` where the call
    /// takes another kernel: not sm_90a, not `int8-fp8`), for tests that must know a path ran.
    pub fn hopper_entry(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttentionParams,
    ) -> Result<Option<String>> {
        let p = self.problem(&q.meta(), &k.meta(), &v.meta(), params)?;
        if !(self.wgmma && p.mode == Mode::Int8Fp8) {
            return Ok(None);
        }
        let dq = self.upload(q)?;
        let buf = &dq.handle::<GpuTensor>(NAME)?.buf;
        let plan = self.wgmma_plan(&p, (buf, q.meta()))?;
        Ok(Some(wgmma_entry(&p, plan.form)))
    }

    /// How many freed bytes the device's default memory pool keeps across synchronizations: all of
    /// them (`u64::MAX`) while a backend from `new` is open, unless `SAGE_CUDA_POOL_KEEP=0`; the
    /// last such backend of a device to close puts back the threshold it found.
    pub fn pool_release_threshold(&self) -> Result<u64> {
        pool_release_threshold(&self.ctx, None).map_err(|e| driver_error("memory pool", e))
    }

    /// The architecture kernels are built for (`sm_90a` on Hopper).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// How many blocks of each Hopper attention entry (f16 output) the driver keeps resident on one
    /// multiprocessor, as (entry name, blocks); empty off Hopper. Loads the f16 attention module (and
    /// probes the alignment slack, [`Self::wgmma_smem_slack`]). The solo form exists for its three
    /// (two at kv_block = head dim = 128 where the kernel needs alignment slack).
    pub fn hopper_blocks_per_sm(&self) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        if !self.wgmma {
            return Ok(out);
        }
        let slack = self.wgmma_smem_slack(DType::F16);
        for (dp, kvt) in [(64, 64), (64, 128), (128, 64), (128, 128)] {
            let fused_q = (dp == 128 && kvt == 128).then_some(WgmmaForm::TrioPersistQ);
            for form in [
                WgmmaForm::Pair,
                WgmmaForm::Solo,
                WgmmaForm::Persist,
                WgmmaForm::Trio,
                WgmmaForm::TrioPersist,
            ]
            .into_iter()
            .chain(fused_q)
            {
                let name = format!("attn_int8_fp8_wgmma_kv{kvt}_hd{dp}_f16{}", form.suffix());
                let smem = wgmma_smem_bytes(dp, kvt, form, slack);
                // set up as launch_with does, so the figure is the one launches get
                let f = self.function_for(Module::AttnWgmma, &name, smem as u32)?;
                let blocks = f
                    .occupancy_max_active_blocks_per_multiprocessor(form.threads(), smem, None)
                    .map_err(|e| driver_error(&name, e))?;
                out.push((name, blocks));
            }
        }
        Ok(out)
    }

    /// The bytes the Hopper kernel gets beyond its plan to align its tiles to 1024 (ABI.md): none
    /// where the driver starts its dynamic shared memory aligned, which the module's probe entry
    /// tells; 1024 where it does not. The first call that gets an answer keeps it for the backend:
    /// it loads (and, with a cold cache, compiles) the attention module of `dtype`, the one the
    /// calling run loads anyway, launches the probe and waits for it. A probe that fails (a full
    /// device, say) answers 1024 for this call only and is tried again by the next. The solo form at
    /// kv_block = head dim = 128 fits three blocks per multiprocessor only without slack.
    pub fn wgmma_smem_slack(&self, dtype: DType) -> usize {
        if let Some(&slack) = self.smem_slack.get() {
            return slack;
        }
        match self.probe_smem_start(dtype) {
            Ok(start) => *self
                .smem_slack
                .get_or_init(|| if start == 0 { 0 } else { 1024 }),
            Err(_) => 1024,
        }
    }

    fn probe_smem_start(&self, dtype: DType) -> Result<u32> {
        let out = self.alloc(4)?;
        let name = format!("attn_wgmma_smem_probe_{}", dtype_suffix(dtype));
        let args = [self.ptr(&out)];
        self.launch_with(Module::AttnWgmma, &name, [1, 1, 1], 32, 1024, &[], &args)?;
        let bytes = self.read(&out, 4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn function(&self, module: Module, name: &str) -> Result<CudaFunction> {
        if let Some(f) = self
            .functions
            .lock()
            .ok()
            .and_then(|m| m.get(name).cloned())
        {
            return Ok(f);
        }
        let m = {
            let key = (module, nvrtc::entry_dtype(module, name));
            let mut modules = self.modules.lock().map_err(|_| self.poisoned_lock())?;
            match modules.get(&key) {
                Some(m) => m.clone(),
                None => {
                    let cubin = nvrtc::cubin(module, &self.arch, key.1)?;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
                        .map_err(|e| driver_error(module.file(), e))?;
                    modules.insert(key, m.clone());
                    m
                }
            }
        };
        let f = m.load_function(name).map_err(|e| {
            if e.0 == sys::cudaError_enum::CUDA_ERROR_NOT_FOUND {
                Error::Unsupported {
                    backend: NAME,
                    feature: format!("kernel {name} on {}", self.arch),
                }
            } else {
                driver_error(name, e)
            }
        })?;
        if let Ok(mut map) = self.functions.lock() {
            map.insert(name.to_string(), f.clone());
        }
        Ok(f)
    }

    fn poisoned_lock(&self) -> Error {
        Error::Launch {
            backend: NAME,
            kernel: "module cache".into(),
            reason: "a thread panicked while loading a module".into(),
        }
    }

    fn launch(
        &self,
        module: Module,
        name: &str,
        grid: [usize; 3],
        block: u32,
        args: &[Arg],
    ) -> Result<()> {
        self.launch_with(module, name, grid, block, 0, &[], args)
    }

    /// Entry `name` of `module`, set up for `smem` bytes of dynamic shared memory: the limit raised
    /// past 48 KiB where needed, and all of the unified L1 as shared memory for the large ones and
    /// the Hopper kernel, so that as many blocks fit as their shared memory allows (the Hopper
    /// kernel's solo form needs three per multiprocessor).
    fn function_for(&self, module: Module, name: &str, smem: u32) -> Result<CudaFunction> {
        self.cluster_function(module, name, 1, smem)
    }

    /// [`Self::function_for`], also set up for clusters of `cluster` CTAs (above 8, a non-portable
    /// size, which the function must allow): each attribute set once per function
    /// ([`Prepared::wants`]).
    fn cluster_function(
        &self,
        module: Module,
        name: &str,
        cluster: u32,
        smem: u32,
    ) -> Result<CudaFunction> {
        use sys::CUfunction_attribute_enum as A;
        let f = self.function(module, name)?;
        // One guard from the read to the record: two threads' first launches of one function
        // wanting different limits must not leave the driver with the smaller and the record with
        // the larger. (A poisoned lock: everything set again, as on every launch before.)
        let mut prepared = self.prepared.lock().ok();
        let done = prepared
            .as_ref()
            .and_then(|m| m.get(name).copied())
            .unwrap_or_default();
        let want = done.wants(smem, module == Module::AttnWgmma, cluster);
        if want == done {
            return Ok(f);
        }
        let set = |a, v: i32| f.set_attribute(a, v).map_err(|e| driver_error(name, e));
        if want.smem != done.smem {
            set(
                A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                want.smem as i32,
            )?;
        }
        if want.carveout != done.carveout {
            set(A::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100)?;
        }
        if want.non_portable != done.non_portable {
            set(A::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1)?;
        }
        if let Some(m) = prepared.as_mut() {
            m.insert(name.to_string(), want);
        }
        Ok(f)
    }

    /// `launch` with `smem` bytes of dynamic shared memory and tensor maps before the other arguments.
    #[allow(clippy::too_many_arguments)]
    fn launch_with(
        &self,
        module: Module,
        name: &str,
        grid: [usize; 3],
        block: u32,
        smem: u32,
        maps: &[TensorMap],
        args: &[Arg],
    ) -> Result<()> {
        self.launch_in_clusters(module, name, grid, block, smem, maps, args, 1)
    }

    /// `launch_with` in clusters of `(cluster, 1, 1)` CTAs (sm_90; `grid[0]` a multiple of
    /// `cluster`); 1 is no cluster.
    #[allow(clippy::too_many_arguments)]
    fn launch_in_clusters(
        &self,
        module: Module,
        name: &str,
        grid: [usize; 3],
        block: u32,
        smem: u32,
        maps: &[TensorMap],
        args: &[Arg],
        cluster: u32,
    ) -> Result<()> {
        if grid[0] == 0 || grid[1] == 0 || grid[2] == 0 {
            return Ok(());
        }
        if grid[0] > i32::MAX as usize || grid[1] > 65_535 || grid[2] > 65_535 {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: format!("a grid of {grid:?} blocks for {name}"),
            });
        }
        let f = self.cluster_function(module, name, cluster, smem)?;
        let slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
        if cluster > 1 || (self.pdl && matches!(module, Module::Quant | Module::AttnWgmma)) {
            return self.launch_ex(&f, name, grid, block, smem, maps, &slots, cluster);
        }
        let mut builder = self.stream.launch_builder(&f);
        for m in maps {
            builder.arg(m);
        }
        for s in &slots {
            builder.arg(s);
        }
        let cfg = LaunchConfig {
            grid_dim: (grid[0] as u32, grid[1] as u32, grid[2] as u32),
            block_dim: (block, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: the argument list follows kernels/ABI.md for `name` (pointers to live buffers of
        // the sizes it states, scalars in their C types); launch errors are checked below.
        unsafe { builder.launch(cfg) }.map_err(|e| driver_error(name, e))?;
        Ok(())
    }

    /// Whether the device can run at least one cluster of `cluster` CTAs of quant.cu's `name` (256
    /// threads, `smem` bytes of dynamic shared memory each) at once, as `cuOccupancyMaxActiveClusters`
    /// says (once per entry, size and shared memory); a launch it cannot place would fail the call.
    /// False where the query fails.
    fn cluster_fits(&self, name: &str, cluster: u32, smem: u32) -> bool {
        let key = (name.to_string(), cluster, smem);
        if let Some(fits) = self
            .cluster_fits
            .lock()
            .ok()
            .and_then(|m| m.get(&key).copied())
        {
            return fits;
        }
        let fits = self
            .query_cluster_fits(name, cluster, smem)
            .unwrap_or(false);
        if let Ok(mut m) = self.cluster_fits.lock() {
            m.insert(key, fits);
        }
        fits
    }

    fn query_cluster_fits(&self, name: &str, cluster: u32, smem: u32) -> Result<bool> {
        let f = self.cluster_function(Module::Quant, name, cluster, smem)?;
        let mut attr = cluster_attribute(cluster);
        let config = sys::CUlaunchConfig {
            gridDimX: cluster,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: 256,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        let mut n: std::ffi::c_int = 0;
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error(name, e))?;
        // SAFETY: `config` describes a launch of `f` (a function of this context) with one live
        // attribute; the driver writes one int.
        unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f.cu_function(), &config) }
            .result()
            .map_err(|e| driver_error(name, e))?;
        Ok(n > 0)
    }

    /// A launch through `cuLaunchKernelEx` (driver 12.0): a programmatic dependent launch where
    /// those are on (`self.pdl`; every quant.cu and attn_wgmma.cu entry starts with
    /// `grid_dependency_sync`), so that the driver may schedule the kernel before the previous one
    /// in the stream has completed; in clusters of `(cluster, 1, 1)` where `cluster` > 1.
    #[allow(clippy::too_many_arguments)]
    fn launch_ex(
        &self,
        f: &CudaFunction,
        name: &str,
        grid: [usize; 3],
        block: u32,
        smem: u32,
        maps: &[TensorMap],
        slots: &[u64],
        cluster: u32,
    ) -> Result<()> {
        // the parameter list as cuLaunchKernelEx reads it: a pointer to each argument's value (a
        // 128-byte tensor map, or a scalar or pointer in the low bytes of a u64, as launch_builder
        // passes them)
        let mut params: Vec<*mut std::ffi::c_void> = maps
            .iter()
            .map(|m| m as *const TensorMap as *mut std::ffi::c_void)
            .chain(
                slots
                    .iter()
                    .map(|s| s as *const u64 as *mut std::ffi::c_void),
            )
            .collect();
        let mut attrs = Vec::with_capacity(2);
        if self.pdl {
            attrs.push(sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
                pad: [0; 4],
                value: sys::CUlaunchAttributeValue {
                    programmaticStreamSerializationAllowed: 1,
                },
            });
        }
        if cluster > 1 {
            attrs.push(cluster_attribute(cluster));
        }
        let config = sys::CUlaunchConfig {
            gridDimX: grid[0] as u32,
            gridDimY: grid[1] as u32,
            gridDimZ: grid[2] as u32,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: self.stream.cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: attrs.len() as u32,
        };
        // the raw call needs the context current on this thread, as launch_builder makes it
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error(name, e))?;
        // SAFETY: `params` points at live values laid out as kernels/ABI.md states for `name` (the
        // same list launch_builder would pass), `f` belongs to this context, and `config` names this
        // backend's stream; the result is checked.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(|e| driver_error(name, e))
    }

    /// A TMA map of `buf` as a row-major u8 matrix of `rows` rows of `inner` bytes, copied in boxes
    /// of `box_rows` x `box_inner` bytes with the swizzle whose span is the box row (128 or 64 bytes,
    /// the layout wgmma's descriptors read: kernels/common/hopper.cuh).
    fn tensor_map(
        &self,
        buf: &CudaSlice<u8>,
        inner: usize,
        rows: usize,
        box_inner: u32,
        box_rows: u32,
    ) -> Result<TensorMap> {
        use sys::{CUtensorMapDataType, CUtensorMapSwizzle};
        let swizzle = if box_inner == 128 {
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B
        } else {
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B
        };
        self.encode_tensor_map(
            buf,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            &[inner as u64, rows as u64],
            &[inner as u64],
            &[box_inner, box_rows],
            swizzle,
        )
    }

    /// The 4-D tensor map (channels, tokens, head, batch) of a 16-bit Q input in either layout, for
    /// `_trio_persist_q`: boxes of 64 channels (128-byte rows, the 128-byte swizzle) by 32 tokens;
    /// tokens past the sequence read as zeros.
    fn q_input_map(&self, buf: &CudaSlice<u8>, meta: &TensorMeta) -> Result<TensorMap> {
        use sys::{CUtensorMapDataType, CUtensorMapSwizzle};
        let s = meta.shape;
        let bytes = |a: Arg| match a {
            Arg::I64(v) => v as u64 * 2,
            _ => 0,
        };
        let [sb, sh, sn] = strides(meta);
        self.encode_tensor_map(
            buf,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT16,
            &[
                s.head_dim as u64,
                s.seq as u64,
                s.heads as u64,
                s.batch as u64,
            ],
            &[bytes(sn), bytes(sh), bytes(sb)],
            &[64, 32, 1, 1],
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
        )
    }

    /// `cuTensorMapEncodeTiled` over `buf`: `dims` and `boxes` per dimension (the first the
    /// contiguous one), `strides` in bytes for every dimension but the first, element strides 1, no
    /// interleave, L2 promotion 256 B, zeros outside the tensor.
    fn encode_tensor_map(
        &self,
        buf: &CudaSlice<u8>,
        dtype: sys::CUtensorMapDataType,
        dims: &[u64],
        strides: &[u64],
        boxes: &[u32],
        swizzle: sys::CUtensorMapSwizzle,
    ) -> Result<TensorMap> {
        use sys::{CUtensorMapFloatOOBfill, CUtensorMapInterleave, CUtensorMapL2promotion};
        let rank = dims.len();
        assert!(
            (1..=5).contains(&rank) && strides.len() + 1 == rank && boxes.len() == rank,
            "a tensor map's dims, strides and boxes disagree"
        );
        let Arg::Ptr(ptr) = self.ptr(buf) else {
            unreachable!()
        };
        let elem = [1u32; 5];
        let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("tensor map", e))?;
        // SAFETY: `dims`, `boxes` and `elem` hold `rank` entries and `strides` rank - 1 (checked
        // above); `ptr` is the live device buffer the caller's dims and strides describe; the driver
        // writes the 128-byte map.
        unsafe {
            sys::cuTensorMapEncodeTiled(
                map.as_mut_ptr(),
                dtype,
                rank as u32,
                ptr as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                elem.as_ptr(),
                CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                swizzle,
                CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        }
        .result()
        .map_err(|e| driver_error("cuTensorMapEncodeTiled", e))?;
        // SAFETY: written by the successful call above (and zeroed before it).
        Ok(TensorMap(unsafe { map.assume_init() }))
    }

    /// A new device buffer of `bytes` (whole 4-byte words). When the device is out of memory, what
    /// this backend keeps (its scratch list, the default pool's freed memory) is handed back to the
    /// driver and the allocation tried once more.
    fn alloc(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        let words = word_bytes(bytes);
        // SAFETY: every buffer allocated here is fully written by a kernel or a memset before use.
        let first = unsafe { self.stream.alloc::<u8>(words) };
        let again = match first {
            Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY && pool_keep() => {
                self.release_kept_memory();
                // SAFETY: as above.
                unsafe { self.stream.alloc::<u8>(words) }
            }
            other => other,
        };
        again.map_err(|e| match driver_error("alloc", e) {
            Error::OutOfMemory { .. } => Error::OutOfMemory {
                backend: NAME,
                requested: bytes as u64,
            },
            other => other,
        })
    }

    /// Frees the scratch list and trims the default pool to nothing (after the stream's frees have
    /// completed), best effort: the out-of-memory path of [`Self::alloc`].
    fn release_kept_memory(&self) {
        if let Some(Ok(mut list)) = self.scratch.as_ref().map(|s| s.lock()) {
            list.clear();
        }
        if self.stream.synchronize().is_ok()
            && let Ok(pool) = default_pool(&self.ctx)
        {
            // SAFETY: trims a valid pool handle; memory in use is never released.
            let _ = unsafe { sys::cuMemPoolTrimTo(pool, 0) };
        }
    }

    /// A quantization-stage buffer of `bytes`: one a past call left, or a new one.
    fn scratch(&self, bytes: usize) -> Result<Scratch> {
        let size = word_bytes(bytes);
        let kept = self.scratch.as_ref().and_then(|s| {
            let mut list = s.lock().ok()?;
            let at = list.iter().position(|b| b.len() == size)?;
            Some(list.remove(at))
        });
        let buf = match kept {
            Some(buf) => buf,
            None => self.alloc(bytes)?,
        };
        Ok(Scratch {
            buf: std::mem::ManuallyDrop::new(buf),
            home: self.scratch.clone(),
        })
    }

    /// An optional buffer's pointer, NULL where the call has none (ABI.md: optional pointers are 0).
    fn opt_ptr(&self, s: &Option<Scratch>) -> Arg {
        s.as_ref().map_or(NULL, |s| self.ptr(s))
    }

    fn ptr(&self, s: &CudaSlice<u8>) -> Arg {
        let (p, _sync) = s.device_ptr(&self.stream);
        Arg::Ptr(p)
    }

    fn memset32(&self, s: &CudaSlice<u8>, value: u32, count: usize) -> Result<()> {
        let Arg::Ptr(p) = self.ptr(s) else {
            unreachable!()
        };
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("memset", e))?;
        // SAFETY: `count` 4-byte words fit in `s` (callers size it so), on this backend's stream.
        unsafe { sys::cuMemsetD32Async(p, value, count, self.stream.cu_stream()) }
            .result()
            .map_err(|e| driver_error("memset", e))
    }

    fn read(&self, s: &CudaSlice<u8>, bytes: usize) -> Result<Vec<u8>> {
        let mut host = self
            .stream
            .clone_dtoh(s)
            .map_err(|e| driver_error("download", e))?;
        host.truncate(bytes);
        Ok(host)
    }

    fn check_size(meta: &TensorMeta) -> Result<()> {
        let s = meta.shape;
        if s.batch * s.heads * s.seq >= i32::MAX as usize || s.numel() >= i64::MAX as usize / 4 {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: format!(
                    "a tensor of {} tokens (at most 2^31 per call: split the batch)",
                    s.batch * s.heads * s.seq
                ),
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
        let p = Problem::new(q, k, v, params, &self.capabilities())?;
        for m in [q, k, v] {
            Self::check_size(m)?;
        }
        Ok(p)
    }

    /// The Hopper attention kernel (attn_wgmma.cu) on the buffers of the quantization stage; `tail`
    /// is the argument list of the mma.sync kernel from `out` on (ABI.md, "Hopper kernel").
    /// The Hopper kernel's form for this call, decided before the quantization stage (which has no
    /// Q pass for `TrioPersistQ`).
    fn wgmma_plan(&self, p: &Problem, q: (&CudaSlice<u8>, TensorMeta)) -> Result<WgmmaPlan> {
        let slack = self.wgmma_smem_slack(p.dtype);
        let (form, cap) = self
            .wgmma_form
            .clone()
            .map_err(|reason| Error::param("SAGE_CUDA_WGMMA_CTA", reason))?
            .unwrap_or_else(|| {
                let out16 = p.dtype != DType::F32;
                (
                    auto_form(
                        p.head_dim_padded,
                        p.kv_block,
                        p.seq_k,
                        p.causal,
                        out16,
                        slack == 0,
                    ),
                    None,
                )
            });
        // (`SAGE_CUDA_Q_ROWS=0`, which asks for the general Q kernel, keeps the pass too)
        if form == WgmmaForm::TrioPersist
            && self.fuse_q
            && self.q_rows
            && fused_q_case(p, self.ptr(q.0))
        {
            // a layout the driver cannot map keeps the Q pass (the unfused form is as right)
            if let Ok(map) = self.q_input_map(q.0, &q.1) {
                return Ok(WgmmaPlan {
                    form: WgmmaForm::TrioPersistQ,
                    cap,
                    slack,
                    q_map: Some(map),
                });
            }
        }
        Ok(WgmmaPlan {
            form,
            cap,
            slack,
            q_map: None,
        })
    }

    fn launch_wgmma(
        &self,
        p: &Problem,
        bufs: &QuantBuffers,
        tail: &[Arg],
        plan: WgmmaPlan,
    ) -> Result<()> {
        let (b, hq, hk, dp) = (p.batch, p.heads_q, p.heads_kv, p.head_dim_padded);
        let kvt = p.kv_block;
        // the plan's slack: one answer for the form and the launch (a failed probe is not kept)
        let (form, cap, slack) = (plan.form, plan.cap, plan.slack);
        let q_map = match plan.q_map {
            Some(map) => map,
            None => self.tensor_map(
                &bufs.q_codes,
                dp,
                b * hq * bufs.nq_pad,
                dp as u32,
                form.rows() as u32,
            )?,
        };
        let maps = [
            q_map,
            self.tensor_map(
                &bufs.k_codes,
                dp,
                b * hk * bufs.nk_pad,
                dp as u32,
                kvt as u32,
            )?,
            self.tensor_map(&bufs.vt, bufs.nk_pad, b * hk * dp, kvt as u32, dp as u32)?,
        ];
        let mut args = vec![
            self.ptr(&bufs.q_scales),
            self.ptr(&bufs.k_scales),
            self.opt_ptr(&bufs.sv),
            self.opt_ptr(&bufs.vm),
            self.opt_ptr(&bufs.qm),
            self.opt_ptr(&bufs.qkm),
        ];
        // the mma.sync list from `out` to `lse`, then B (the grid is flat), then Hq on, then Q's
        // non-finite flag (set by `_trio_persist_q`, which quantizes Q)
        args.extend_from_slice(&tail[..5]);
        args.push(Arg::I32(b as i32));
        args.extend_from_slice(&tail[5..]);
        args.push(self.ptr(&bufs.nonfinite));
        let name = wgmma_entry(p, form);
        let items = p.seq_q.div_ceil(form.rows()) * hq * b;
        // the persistent forms: one CTA per multiprocessor (their shared memory allows no second), each
        // taking one item per round of `ctas` (attn_wgmma.cu, item_of)
        let ctas = if form.persistent() {
            items.min(cap.unwrap_or(self.sms))
        } else {
            items
        };
        self.launch_with(
            Module::AttnWgmma,
            &name,
            [ctas, 1, 1],
            form.threads(),
            wgmma_smem_bytes(dp, kvt, form, slack) as u32,
            &maps,
            &args,
        )
    }

    /// Steps 1-8 of kernels/ABI.md's launch order: the quantization stage.
    /// `fused_q`: the attention kernel quantizes Q itself (`_trio_persist_q`), so no Q pass.
    fn quantize_stage(
        &self,
        p: &Problem,
        inputs: [(&CudaSlice<u8>, TensorMeta); 3],
        fused_q: bool,
    ) -> Result<QuantBuffers> {
        let (b, hq, hk, nq, nk) = (p.batch, p.heads_q, p.heads_kv, p.seq_q, p.seq_k);
        let (d, dp) = (p.head_dim, p.head_dim_padded);
        let dt = dtype_suffix(p.dtype);
        let fp8 = p.mode.is_fp8_pv();
        let int4 = p.mode == Mode::Int4Fp8;
        let qmax = p.mode.qk_qmax().unwrap_or(127);
        let code_bytes = if int4 { dp / 2 } else { dp };
        let (nk_pad, nq_pad) = (nk.div_ceil(QT) * QT, nq.div_ceil(QT) * QT);
        let groups_q = scale_groups(p.granularity, Operand::Q, nq);
        let groups_k = scale_groups(p.granularity, Operand::K, nk);
        let gran = Arg::I32(granularity_code(p.granularity));
        let f32s = |n: usize| self.scratch(n * 4);
        let bufs = QuantBuffers {
            km: f32s(b * hk * dp)?,
            vm: if p.smooth_v {
                Some(f32s(b * hk * dp)?)
            } else {
                None
            },
            sv: if fp8 { Some(f32s(b * hk * dp)?) } else { None },
            q_codes: self.scratch(if fused_q {
                16
            } else {
                b * hq * nq_pad * code_bytes
            })?,
            q_scales: f32s(if fused_q { 1 } else { b * hq * groups_q })?,
            k_codes: self.scratch(b * hk * nk_pad * code_bytes)?,
            k_scales: f32s(b * hk * groups_k)?,
            k8: if int4 && p.smooth_q {
                Some((
                    self.scratch(b * hk * nk_pad * dp)?,
                    f32s(b * hk * groups_k)?,
                ))
            } else {
                None
            },
            qm: if p.smooth_q {
                Some(f32s(b * hq * nq.div_ceil(Q_SMOOTH_BLOCK) * dp)?)
            } else {
                None
            },
            qkm: if p.return_lse {
                Some(f32s(b * hq * nq)?)
            } else {
                None
            },
            vt: self.scratch(b * hk * dp * nk_pad * if fp8 { 1 } else { 2 })?,
            nonfinite: self.scratch(12)?,
            groups_q,
            groups_k,
            nk_pad,
            nq_pad,
        };
        let flag = |i: u64| match self.ptr(&bufs.nonfinite) {
            Arg::Ptr(p) => Arg::Ptr(p + 4 * i),
            other => other,
        };
        self.memset32(&bufs.nonfinite, NO_TOKEN, 3)?;
        let tpc_k = quant_tiles_per_cta(nk.div_ceil(QT) * hk * b, self.sms);
        let tpc_q = quant_tiles_per_cta(nq.div_ceil(QT) * hq * b, self.sms);
        let [q, k, v] = inputs;
        let (qs, ks, vs) = (strides(&q.1), strides(&k.1), strides(&v.1));
        let dims = |h: usize, n: usize| {
            [
                Arg::I32(h as i32),
                Arg::I32(n as i32),
                Arg::I32(d as i32),
                Arg::I32(dp as i32),
            ]
        };
        // Steps 1 and 7: km, and for V its mean (smooth_v) and per-channel FP8 scales: block sums
        // of each tpc tiles, then one CTA per head adds them up (kernels/ABI.md)
        let tpc_s = stats_tiles_per_cta(nk.div_ceil(QT) * hk * b, self.sms);
        let nb = nk.div_ceil(QT).div_ceil(tpc_s);
        let part = f32s(b * hk * nb * 3 * dp)?;
        let stats = |x: &CudaSlice<u8>,
                     s: &[Arg; 3],
                     minmax: bool,
                     smooth: bool,
                     mean: Arg,
                     vscale: Arg| {
            let mut args = vec![self.ptr(x), s[0], s[1], s[2]];
            args.extend(dims(hk, nk));
            args.extend([
                Arg::I32(minmax as i32),
                Arg::I32(tpc_s as i32),
                self.ptr(&part),
            ]);
            self.launch_with(
                Module::Quant,
                &format!("kv_stats_blocks_{dt}"),
                [nb, hk, b],
                256,
                stats_smem_bytes(p.dtype),
                &[],
                &args,
            )?;
            let args = [
                self.ptr(&part),
                Arg::I32(nb as i32),
                Arg::I32(hk as i32),
                Arg::I32(nk as i32),
                Arg::I32(d as i32),
                Arg::I32(dp as i32),
                Arg::I32(smooth as i32),
                mean,
                vscale,
            ];
            self.launch(Module::Quant, "kv_stats_finish", [hk, b, 1], 128, &args)
        };
        stats(k.0, &ks, false, true, self.ptr(&bufs.km), NULL)?;
        // V's scales and codes in one pass (Step 7 below) where quantize_v_cols applies
        let v_cols_name = format!("quantize_v_cols_{dt}");
        let v_cols = self.v_cols.and_then(|force| {
            v_cols_placed(
                self.v_cluster,
                |max_cl| v_cols_plan(p, self.ptr(v.0), nk_pad, force, max_cl, self.max_smem),
                |cw, cl| {
                    self.cluster_fits(&v_cols_name, cl as u32, v_cols_smem_bytes(nk_pad, cw, cl))
                },
            )
        });
        if (fp8 || p.smooth_v) && v_cols.is_none() {
            stats(
                v.0,
                &vs,
                fp8,
                p.smooth_v,
                self.opt_ptr(&bufs.vm),
                self.opt_ptr(&bufs.sv),
            )?;
        }
        // Step 3 for K: quantize_k_rows where its case allows (quant.cu), else quantize_k (with the
        // INT8 copy for dS in INT4 mode)
        if self.k_rows && k_rows_case(p, self.ptr(k.0)) {
            let args = [
                self.ptr(k.0),
                ks[0],
                ks[1],
                ks[2],
                Arg::I32(hk as i32),
                Arg::I32(nk as i32),
                Arg::I32(dp as i32),
                self.ptr(&bufs.km),
                gran,
                self.ptr(&bufs.k_codes),
                self.ptr(&bufs.k_scales),
                flag(1),
                Arg::I32(tpc_k as i32),
            ];
            self.launch_with(
                Module::Quant,
                &format!("quantize_k_rows_{dt}"),
                [nk.div_ceil(QT).div_ceil(tpc_k), hk, b],
                Q_ROWS_THREADS,
                k_rows_smem_bytes(dp),
                &[],
                &args,
            )?;
        } else {
            let (k8c, k8s) = match &bufs.k8 {
                Some((c, s)) => (self.ptr(c), self.ptr(s)),
                None => (NULL, NULL),
            };
            let mut args = vec![self.ptr(k.0), ks[0], ks[1], ks[2]];
            args.extend(dims(hk, nk));
            args.extend([
                self.ptr(&bufs.km),
                gran,
                Arg::I32(qmax),
                Arg::I32(p.rotate as i32),
            ]);
            args.extend([
                self.ptr(&bufs.k_codes),
                self.ptr(&bufs.k_scales),
                k8c,
                k8s,
                flag(1),
                Arg::I32(tpc_k as i32),
            ]);
            self.launch(
                Module::Quant,
                &format!("quantize_k_{dt}"),
                [nk.div_ceil(QT).div_ceil(tpc_k), hk, b],
                256,
                &args,
            )?;
        }
        // Steps 2-3 for Q: in the attention kernel (fused_q), quantize_q_rows where its case allows
        // (quant.cu), else quantize_q
        if fused_q {
            // nothing here: `_trio_persist_q` quantizes each Q tile as it loads it
        } else if self.q_rows && q_rows_case(p, self.ptr(q.0)) {
            let args = [
                self.ptr(q.0),
                qs[0],
                qs[1],
                qs[2],
                Arg::I32(hq as i32),
                Arg::I32(nq as i32),
                Arg::I32(dp as i32),
                gran,
                self.ptr(&bufs.q_codes),
                self.ptr(&bufs.q_scales),
                flag(0),
                Arg::I32(tpc_q as i32),
            ];
            self.launch_with(
                Module::Quant,
                &format!("quantize_q_rows_{dt}"),
                [nq.div_ceil(QT).div_ceil(tpc_q), hq, b],
                Q_ROWS_THREADS,
                q_rows_smem_bytes(dp),
                &[],
                &args,
            )?;
        } else {
            let mut args = vec![self.ptr(q.0), qs[0], qs[1], qs[2]];
            args.extend(dims(hq, nq));
            args.extend([
                Arg::I32(hk as i32),
                self.ptr(&bufs.km),
                self.opt_ptr(&bufs.qkm),
                Arg::I32(p.smooth_q as i32),
                self.opt_ptr(&bufs.qm),
            ]);
            args.extend([
                gran,
                Arg::I32(qmax),
                Arg::I32(p.rotate as i32),
                self.ptr(&bufs.q_codes),
                self.ptr(&bufs.q_scales),
                flag(0),
                Arg::I32(tpc_q as i32),
            ]);
            self.launch(
                Module::Quant,
                &format!("quantize_q_{dt}"),
                [nq.div_ceil(QT).div_ceil(tpc_q), hq, b],
                256,
                &args,
            )?;
        }
        // Step 7: V
        if let Some((cw, cl)) = v_cols {
            let args = [
                self.ptr(v.0),
                vs[0],
                vs[1],
                vs[2],
                Arg::I32(hk as i32),
                Arg::I32(nk as i32),
                Arg::I32(dp as i32),
                Arg::I32(cw as i32),
                Arg::I32(cl as i32),
                self.opt_ptr(&bufs.sv),
                self.ptr(&bufs.vt),
                flag(2),
            ];
            self.launch_in_clusters(
                Module::Quant,
                &v_cols_name,
                [dp / cw * cl, hk, b],
                256,
                v_cols_smem_bytes(nk_pad, cw, cl),
                &[],
                &args,
                cl as u32,
            )?;
            return Ok(bufs);
        }
        let mut args = vec![self.ptr(v.0), vs[0], vs[1], vs[2]];
        args.extend(dims(hk, nk));
        args.push(self.opt_ptr(&bufs.vm));
        if fp8 {
            args.push(self.opt_ptr(&bufs.sv));
        }
        args.extend([self.ptr(&bufs.vt), flag(2)]);
        if fp8 {
            args.push(Arg::I32(tpc_k as i32));
        }
        let (name, tiles_per_cta) = if fp8 {
            (format!("quantize_v_e4m3_{dt}"), tpc_k)
        } else {
            (format!("quantize_v_f16_{dt}"), 1)
        };
        let grid = [nk.div_ceil(QT).div_ceil(tiles_per_cta), hk, b];
        self.launch(Module::Quant, &name, grid, 256, &args)?;
        Ok(bufs)
    }

    /// Reads the non-finite flags (a stream sync) and names the first offending element as the CPU would.
    fn check_nonfinite(
        &self,
        bufs: &QuantBuffers,
        inputs: [(&CudaSlice<u8>, TensorMeta); 3],
    ) -> Result<()> {
        let raw = self.read(&bufs.nonfinite, 12)?;
        let flags: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let decode = |slot: usize| -> Option<(usize, usize, usize)> {
            let idx = flags[slot];
            if idx == NO_TOKEN {
                return None;
            }
            let s = inputs[slot].1.shape;
            let idx = idx as usize;
            Some((
                idx / (s.heads * s.seq),
                (idx / s.seq) % s.heads,
                idx % s.seq,
            ))
        };
        let Some((slot, (batch, head, token))) =
            first_non_finite_slot([decode(0), decode(1), decode(2)])
        else {
            return Ok(());
        };
        let (buf, meta) = inputs[slot];
        let size = meta.dtype.size_bytes();
        let start = meta.shape.index(meta.layout, batch, head, token, 0) * size;
        let host = self.read(buf, start + meta.shape.head_dim * size)?;
        let value = Storage::from_le_bytes(meta.dtype, &host[start..])
            .first_non_finite()
            .unwrap_or(f32::NAN);
        Err(Error::NonFinite {
            tensor: ["Q", "K", "V"][slot],
            batch,
            head,
            token,
            value,
        })
    }

    fn run(
        &self,
        q: &DeviceTensor,
        k: &DeviceTensor,
        v: &DeviceTensor,
        params: &AttentionParams,
        marks: Option<&Marks>,
    ) -> Result<DeviceOutput> {
        let p = self.problem(&q.meta(), &k.meta(), &v.meta(), params)?;
        let out_shape = p.out_shape();
        let out_meta = TensorMeta {
            shape: out_shape,
            dtype: p.dtype,
            layout: p.layout,
        };
        let lse_meta = TensorMeta {
            shape: Shape::new(p.batch, p.heads_q, p.seq_q, 1),
            dtype: DType::F32,
            layout: Layout::Hnd,
        };
        let out = self.alloc(out_shape.numel() * p.dtype.size_bytes())?;
        let lse = if p.return_lse {
            Some(self.alloc(p.batch * p.heads_q * p.seq_q * 4)?)
        } else {
            None
        };
        let wrap = |out: CudaSlice<u8>, lse: Option<CudaSlice<u8>>| DeviceOutput {
            out: DeviceTensor::new(out_meta, NAME, Box::new(GpuTensor { buf: out })),
            lse: lse.map(|l| DeviceTensor::new(lse_meta, NAME, Box::new(GpuTensor { buf: l }))),
        };
        if out_shape.numel() == 0 {
            return Ok(wrap(out, lse));
        }
        if p.seq_k == 0 {
            // nothing to attend to: +0.0 in every dtype, log-sum-exp -inf
            self.memset32(
                &out,
                0,
                (out_shape.numel() * p.dtype.size_bytes()).div_ceil(4),
            )?;
            if let Some(l) = &lse {
                self.memset32(
                    l,
                    f32::NEG_INFINITY.to_bits(),
                    p.batch * p.heads_q * p.seq_q,
                )?;
            }
            return Ok(wrap(out, lse));
        }
        if self.poison {
            self.memset32(
                &out,
                0xffff_ffff,
                (out_shape.numel() * p.dtype.size_bytes()).div_ceil(4),
            )?;
            if let Some(l) = &lse {
                self.memset32(l, 0xffff_ffff, p.batch * p.heads_q * p.seq_q)?;
            }
        }
        let (qb, kb, vb) = (
            &q.handle::<GpuTensor>(NAME)?.buf,
            &k.handle::<GpuTensor>(NAME)?.buf,
            &v.handle::<GpuTensor>(NAME)?.buf,
        );
        let inputs = [(qb, q.meta()), (kb, k.meta()), (vb, v.meta())];
        let record = |e: &cudarc::driver::CudaEvent| {
            e.record(&self.stream).map_err(|e| driver_error("event", e))
        };
        if let Some(m) = marks {
            record(&m.start)?;
        }
        let dt = dtype_suffix(p.dtype);
        let os = strides(&out_meta);
        let lse_arg = lse.as_ref().map_or(NULL, |l| self.ptr(l));
        let dims = [
            Arg::I32(p.heads_q as i32),
            Arg::I32(p.heads_kv as i32),
            Arg::I32(p.seq_q as i32),
            Arg::I32(p.seq_k as i32),
            Arg::I32(p.head_dim as i32),
        ];
        let quant = if p.mode.is_quantized() {
            let plan = if self.wgmma && p.mode == Mode::Int8Fp8 {
                Some(self.wgmma_plan(&p, inputs[0])?)
            } else {
                None
            };
            let fused_q = plan.as_ref().is_some_and(|plan| plan.q_map.is_some());
            let bufs = self.quantize_stage(&p, inputs, fused_q)?;
            if let Some(m) = marks {
                record(&m.attn)?;
            }
            let fp8 = p.mode.is_fp8_pv();
            let (k8c, k8s) = match (&bufs.k8, p.smooth_q) {
                (Some((c, s)), _) => (self.ptr(c), self.ptr(s)),
                (None, true) => (self.ptr(&bufs.k_codes), self.ptr(&bufs.k_scales)),
                (None, false) => (NULL, NULL),
            };
            let mut args = vec![
                self.ptr(&bufs.q_codes),
                self.ptr(&bufs.q_scales),
                self.ptr(&bufs.k_codes),
                self.ptr(&bufs.k_scales),
                self.ptr(&bufs.vt),
                if fp8 { self.opt_ptr(&bufs.sv) } else { NULL },
                self.opt_ptr(&bufs.vm),
                self.opt_ptr(&bufs.qm),
                k8c,
                k8s,
                self.opt_ptr(&bufs.qkm),
                self.ptr(&out),
                os[0],
                os[1],
                os[2],
                lse_arg,
            ];
            args.extend(dims);
            args.extend([
                Arg::I32(granularity_code(p.granularity)),
                Arg::I32(p.causal as i32),
                Arg::F32(p.sm_scale),
            ]);
            if let Some(plan) = plan {
                self.launch_wgmma(&p, &bufs, &args[11..], plan)?;
            } else {
                let kind = match p.mode {
                    Mode::Int4Fp8 => "int4_fp8",
                    Mode::Int8Fp8 => "int8_fp8",
                    _ => "int8_fp16",
                };
                let name = format!("attn_{kind}_hd{}_{dt}", p.head_dim_padded);
                self.launch(
                    Module::AttnMma,
                    &name,
                    [p.seq_q.div_ceil(ATTN_ROWS), p.heads_q, p.batch],
                    128,
                    &args,
                )?;
            }
            Some(bufs)
        } else {
            if let Some(m) = marks {
                record(&m.attn)?;
            }
            let mut args = Vec::new();
            for (buf, meta) in inputs {
                let s = strides(&meta);
                args.extend([self.ptr(buf), s[0], s[1], s[2]]);
            }
            args.extend([self.ptr(&out), os[0], os[1], os[2], lse_arg]);
            args.extend(dims);
            args.extend([Arg::I32(p.causal as i32), Arg::F32(p.sm_scale)]);
            let rows = if p.dtype == DType::F32 {
                EXACT_F32_ROWS
            } else {
                ATTN_ROWS
            };
            let name = format!("attn_exact_hd{}_{dt}", p.head_dim_padded);
            self.launch(
                Module::AttnExact,
                &name,
                [p.seq_q.div_ceil(rows), p.heads_q, p.batch],
                128,
                &args,
            )?;
            None
        };
        if let Some(m) = marks {
            record(&m.end)?;
        }
        if let Some(bufs) = &quant {
            // one sync per call: the flags are read after the attention kernel is queued
            self.check_nonfinite(bufs, inputs)?;
        }
        Ok(wrap(out, lse))
    }
}

impl AttentionBackend for CudaBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        // On sm_90 INT4 mma is emulated (~25x slower than INT8): never the automatic choice.
        let auto = if self.cc >= (8, 9) {
            Mode::Int8Fp8
        } else {
            Mode::Int8Fp16
        };
        // 64 keys is the mma.sync kernels' only KV tile (kernels/ABI.md); the Hopper kernel of
        // int8-fp8 takes 128 (its default there) or 64.
        let mut caps = Capabilities::with_all_features(
            NAME,
            self.device.clone(),
            modes_for(self.cc),
            auto,
            vec![64],
        );
        if self.wgmma {
            caps.mode_kv_blocks = vec![(Mode::Int8Fp8, vec![128, 64])];
        }
        caps
    }

    fn upload(&self, t: &Tensor) -> Result<DeviceTensor> {
        Self::check_size(&t.meta())?;
        let bytes = t.storage().to_le_bytes();
        let mut buf = self.alloc(bytes.len())?;
        if !bytes.is_empty() {
            self.stream
                .memcpy_htod(&bytes, &mut buf)
                .map_err(|e| driver_error("upload", e))?;
        }
        Ok(DeviceTensor::new(
            t.meta(),
            NAME,
            Box::new(GpuTensor { buf }),
        ))
    }

    fn download(&self, t: &DeviceTensor) -> Result<Tensor> {
        let meta = t.meta();
        let n = meta.shape.numel();
        let bytes = self.read(
            &t.handle::<GpuTensor>(NAME)?.buf,
            n * meta.dtype.size_bytes(),
        )?;
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
        self.run(q, k, v, params, None)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_error("synchronize", e))
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
        let event = || {
            self.ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| driver_error("event", e))
        };
        let marks = Marks {
            start: event()?,
            attn: event()?,
            end: event()?,
        };
        let (mut total, mut kernel) = (Vec::new(), Vec::new());
        for i in 0..warmup + iters.max(1) {
            self.run(q, k, v, params, Some(&marks))?;
            marks
                .end
                .synchronize()
                .map_err(|e| driver_error("event", e))?;
            if i >= warmup {
                let ms = |a: &cudarc::driver::CudaEvent, b: &cudarc::driver::CudaEvent| {
                    a.elapsed_ms(b)
                        .map(f64::from)
                        .map_err(|e| driver_error("event", e))
                };
                total.push(ms(&marks.start, &marks.end)?);
                kernel.push(ms(&marks.attn, &marks.end)?);
            }
        }
        Ok(Timing {
            end_to_end_ms: median(total),
            kernel_ms: Some(median(kernel)),
            clock: "cuda-events",
        })
    }

    fn quantize(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        params: &AttentionParams,
    ) -> Result<QuantizedQkv> {
        // q . km (the log-sum-exp's term) is not part of what this returns: the stage runs as for a
        // call without the log-sum-exp
        let params = &AttentionParams {
            return_lse: false,
            ..*params
        };
        let p = self.problem(&q.meta(), &k.meta(), &v.meta(), params)?;
        if !p.mode.is_quantized() {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: "quantize in the exact mode (it has no quantization stage)".into(),
            });
        }
        let (dq, dk, dv) = (self.upload(q)?, self.upload(k)?, self.upload(v)?);
        let inputs = [
            (&dq.handle::<GpuTensor>(NAME)?.buf, q.meta()),
            (&dk.handle::<GpuTensor>(NAME)?.buf, k.meta()),
            (&dv.handle::<GpuTensor>(NAME)?.buf, v.meta()),
        ];
        let empty = p.seq_k == 0 || p.out_shape().numel() == 0;
        if empty {
            return Err(Error::Unsupported {
                backend: NAME,
                feature: "quantize with an empty dimension".into(),
            });
        }
        let bufs = self.quantize_stage(&p, inputs, false)?;
        self.check_nonfinite(&bufs, inputs)?;
        let (b, hq, hk, nq, nk, d, dp) = (
            p.batch,
            p.heads_q,
            p.heads_kv,
            p.seq_q,
            p.seq_k,
            p.head_dim,
            p.head_dim_padded,
        );
        let int4 = p.mode == Mode::Int4Fp8;
        let f32v = |s: &CudaSlice<u8>, n: usize| -> Result<Vec<f32>> {
            Ok(self
                .read(s, n * 4)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        // code rows: drop the padding rows, unpack INT4 nibbles (low nibble first)
        let codes = |s: &CudaSlice<u8>, heads: usize, n: usize, n_pad: usize| -> Result<Vec<i8>> {
            let row = if int4 { dp / 2 } else { dp };
            let raw = self.read(s, b * heads * n_pad * row)?;
            let mut out = Vec::with_capacity(b * heads * n * dp);
            for bh in 0..b * heads {
                for t in 0..n {
                    let r = &raw[(bh * n_pad + t) * row..][..row];
                    if int4 {
                        out.extend(
                            r.iter()
                                .flat_map(|&x| [((x << 4) as i8) >> 4, (x as i8) >> 4]),
                        );
                    } else {
                        out.extend(r.iter().map(|&x| x as i8));
                    }
                }
            }
            Ok(out)
        };
        let strip = |vals: Vec<f32>| -> Vec<f32> {
            vals.chunks_exact(dp)
                .flat_map(|r| r[..d].to_vec())
                .collect()
        };
        // V: vt is [B, Hkv, Dp, Nk_pad], keys permuted inside groups of 16 in the FP8 modes
        let slot = |t: usize| {
            16 * (t / 16) + {
                let k = t % 16;
                4 * ((k % 8) / 2) + (k % 2) + 2 * (k / 8)
            }
        };
        let v = if p.mode.is_fp8_pv() {
            let vt = self.read(&bufs.vt, b * hk * dp * bufs.nk_pad)?;
            let mut c = vec![0u8; b * hk * nk * dp];
            for bh in 0..b * hk {
                for ch in 0..dp {
                    for t in 0..nk {
                        c[(bh * nk + t) * dp + ch] = vt[(bh * dp + ch) * bufs.nk_pad + slot(t)];
                    }
                }
            }
            let scales = match &bufs.sv {
                Some(s) => f32v(s, b * hk * dp)?,
                None => Vec::new(),
            };
            QuantizedV::Fp8 { codes: c, scales }
        } else {
            let vt = self.read(&bufs.vt, b * hk * dp * bufs.nk_pad * 2)?;
            let mut values = vec![f16::ZERO; b * hk * nk * dp];
            for bh in 0..b * hk {
                for ch in 0..dp {
                    for t in 0..nk {
                        let i = ((bh * dp + ch) * bufs.nk_pad + t) * 2;
                        values[(bh * nk + t) * dp + ch] = f16::from_le_bytes([vt[i], vt[i + 1]]);
                    }
                }
            }
            QuantizedV::F16 { values }
        };
        Ok(QuantizedQkv {
            mode: p.mode,
            granularity: p.granularity,
            head_dim_padded: dp,
            q_codes: codes(&bufs.q_codes, hq, nq, bufs.nq_pad)?,
            q_scales: f32v(&bufs.q_scales, b * hq * bufs.groups_q)?,
            k_codes: codes(&bufs.k_codes, hk, nk, bufs.nk_pad)?,
            k_scales: f32v(&bufs.k_scales, b * hk * bufs.groups_k)?,
            v,
            km: strip(f32v(&bufs.km, b * hk * dp)?),
            qm: match &bufs.qm {
                Some(s) => f32v(s, b * hq * nq.div_ceil(Q_SMOOTH_BLOCK) * dp)?,
                None => Vec::new(),
            },
            vm: match &bufs.vm {
                Some(s) => strip(f32v(s, b * hk * dp)?),
                None => Vec::new(),
            },
        })
    }
}

/// Sharing a device with another library (sage-candle's `cuda` feature: candle's stream and
/// memory). Additive: the backend made here is the same backend, on a stream it does not own.
impl CudaBackend {
    /// A backend on `stream` and its context, which another library made (candle's, for one):
    /// sage's buffers and kernels then live on that library's stream, so its device memory passes
    /// to sage without host round trips. The context's event tracking is left as its owner set it.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Self> {
        nvrtc::ensure_nvrtc()?;
        Self::on_stream(stream)
    }

    /// A device tensor of `meta` holding a copy of `src`, device memory of this backend's
    /// context (a device-to-device copy on the backend's stream).
    pub fn upload_device_bytes(
        &self,
        src: &cudarc::driver::CudaView<'_, u8>,
        meta: TensorMeta,
    ) -> Result<DeviceTensor> {
        Self::check_size(&meta)?;
        let bytes = meta.shape.numel() * meta.dtype.size_bytes();
        if src.len() != bytes {
            return Err(Error::shape(
                "upload_device_bytes",
                format!("{bytes} bytes for {} {}", meta.dtype, meta.shape),
                format!("{} bytes", src.len()),
            ));
        }
        let mut buf = self.alloc(bytes)?;
        if bytes > 0 {
            let mut dst = buf.slice_mut(0..bytes);
            self.stream
                .memcpy_dtod(src, &mut dst)
                .map_err(|e| driver_error("upload_device_bytes", e))?;
        }
        Ok(DeviceTensor::new(meta, NAME, Box::new(GpuTensor { buf })))
    }

    /// The device memory of a tensor this backend made: its elements in the first
    /// `numel * dtype size` bytes (buffers are rounded up to whole 4-byte words).
    pub fn device_bytes<'a>(&self, t: &'a DeviceTensor) -> Result<&'a CudaSlice<u8>> {
        Ok(&t.handle::<GpuTensor>(NAME)?.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_unavailable_without_panicking() {
        // On a machine with a CUDA GPU this opens it; everywhere else it must say why not.
        match CudaBackend::new() {
            Ok(b) => assert!(!b.arch().is_empty()),
            Err(e) => assert!(e.to_string().contains(NAME), "{e}"),
        }
    }

    #[test]
    fn stats_blocks_are_aligned() {
        for tiles in [
            0usize,
            1,
            5,
            527,
            528,
            1056,
            2112,
            4223,
            4224,
            8192,
            1 << 20,
        ] {
            let tpc = stats_tiles_per_cta(tiles, 132);
            assert!(tpc.is_power_of_two() && tpc <= 8, "{tiles} -> {tpc}");
            assert!(tpc == 1 || tiles / tpc >= 4 * 132, "{tiles} -> {tpc}");
        }
        assert_eq!(stats_smem_bytes(DType::BF16), 110_592);
        assert_eq!(stats_smem_bytes(DType::F32), 12_288);
    }

    #[test]
    fn the_last_backend_of_a_device_puts_the_pool_threshold_back() {
        let holders: PoolHolders = Mutex::new(Vec::new());
        let mut threshold = [0u64, 7];
        let raise = |d: usize, t: &mut [u64; 2]| {
            pool_hold(&holders, d, || Some(std::mem::replace(&mut t[d], u64::MAX)))
        };
        assert!(raise(0, &mut threshold));
        assert!(raise(0, &mut threshold));
        assert!(raise(1, &mut threshold));
        assert_eq!(threshold, [u64::MAX, u64::MAX]);
        // the second holder does not see the raised value as the original
        pool_unhold(&holders, 0, |b| threshold[0] = b);
        assert_eq!(threshold[0], u64::MAX);
        pool_unhold(&holders, 0, |b| threshold[0] = b);
        assert_eq!(threshold, [0, u64::MAX]);
        pool_unhold(&holders, 1, |b| threshold[1] = b);
        assert_eq!(threshold, [0, 7]);
        // a device without a pool holds nothing, and a release without a hold changes nothing
        assert!(!pool_hold(&holders, 2, || None));
        pool_unhold(&holders, 2, |_| panic!("nothing was held"));
        assert!(holders.lock().map(|h| h.is_empty()).unwrap_or(false));
    }

    #[test]
    fn auto_form_takes_solo_or_a_persistent_form_for_few_keys_and_the_trio_above() {
        // (head dim, kv_block, keys, causal, 16-bit output, three solo CTAs per SM at D = 128)
        for solo3 in [false, true] {
            let at = |dp, seq_k, out16| auto_form(dp, 128, seq_k, false, out16, solo3);
            for dp in [64, 128] {
                assert_eq!(at(dp, TRIO_PERSIST_MAX_KEYS, true), WgmmaForm::TrioPersist);
                // past it the trio, but at D 128 (kv_block 128, no causal mask, 16-bit outputs)
                let long = if dp == 128 {
                    WgmmaForm::TrioPersist
                } else {
                    WgmmaForm::Trio
                };
                assert_eq!(at(dp, TRIO_PERSIST_MAX_KEYS + 1, true), long);
                assert_eq!(at(dp, 16384, true), long);
                assert_eq!(at(dp, 16384, false), WgmmaForm::Trio);
                let f = auto_form(dp, 128, 16384, true, true, solo3);
                assert_eq!(f, WgmmaForm::Trio);
                for out16 in [true, false] {
                    for causal in [false, true] {
                        let f = auto_form(dp, 64, 16384, causal, out16, solo3);
                        assert_eq!(f, WgmmaForm::Trio);
                    }
                }
            }
            // D 128: up to 1024 keys (4096 under a causal mask) the solo form at kv_block 64, and at
            // 128 where three of its CTAs fit; else the persistent pair up to 1024 keys with 16-bit
            // outputs, the trio otherwise
            for causal in [false, true] {
                let most = if causal {
                    SOLO_CAUSAL_MAX_KEYS
                } else {
                    SOLO_MAX_KEYS
                };
                for seq_k in [1, SOLO_MAX_KEYS, most] {
                    for out16 in [true, false] {
                        let f = auto_form(128, 64, seq_k, causal, out16, solo3);
                        assert_eq!(f, WgmmaForm::Solo);
                        let f = auto_form(128, 128, seq_k, causal, out16, solo3);
                        let other = if out16 && seq_k <= PERSIST_MAX_KEYS {
                            WgmmaForm::Persist
                        } else {
                            WgmmaForm::Trio
                        };
                        assert_eq!(f, if solo3 { WgmmaForm::Solo } else { other });
                    }
                }
            }
            assert_eq!(at(128, PERSIST_MAX_KEYS + 1, true), WgmmaForm::TrioPersist);
            assert_eq!(at(128, SOLO_MAX_KEYS + 1, false), WgmmaForm::Trio);
            // D 64: the solo form up to 1024 keys, any output type; at kv_block 64 with 16-bit
            // outputs only under a causal mask
            for out16 in [true, false] {
                assert_eq!(at(64, 1, out16), WgmmaForm::Solo);
                assert_eq!(at(64, SOLO_MAX_KEYS, out16), WgmmaForm::Solo);
                let f = auto_form(64, 64, SOLO_MAX_KEYS, true, out16, solo3);
                assert_eq!(f, WgmmaForm::Solo);
            }
            let f = auto_form(64, 64, SOLO_MAX_KEYS, false, true, solo3);
            assert_eq!(f, WgmmaForm::TrioPersist);
            let f = auto_form(64, 64, SOLO_MAX_KEYS, false, false, solo3);
            assert_eq!(f, WgmmaForm::Solo);
            assert_eq!(at(64, SOLO_MAX_KEYS + 1, true), WgmmaForm::TrioPersist);
            assert_eq!(at(64, SOLO_MAX_KEYS + 1, false), WgmmaForm::Trio);
            // under a causal mask the solo form up to 4096 keys at D 64 (and at D 128 where it is
            // taken at all), the trio past it
            for (kvt, out16) in [(64, true), (128, true), (64, false), (128, false)] {
                let f = auto_form(64, kvt, SOLO_CAUSAL_MAX_KEYS, true, out16, solo3);
                assert_eq!(f, WgmmaForm::Solo);
                let f = auto_form(64, kvt, SOLO_CAUSAL_MAX_KEYS + 1, true, out16, solo3);
                assert_eq!(f, WgmmaForm::Trio);
                let f = auto_form(128, kvt, SOLO_CAUSAL_MAX_KEYS + 1, true, out16, solo3);
                assert_eq!(f, WgmmaForm::Trio);
            }
        }
    }

    #[test]
    fn wgmma_form_setting_parses_or_says_why() {
        assert_eq!(wgmma_form_setting(None), Ok(None));
        assert_eq!(wgmma_form_setting(Some("auto")), Ok(None));
        for (value, form, cap) in [
            ("pair", WgmmaForm::Pair, None),
            ("solo", WgmmaForm::Solo, None),
            ("trio", WgmmaForm::Trio, None),
            ("persist", WgmmaForm::Persist, None),
            ("persist:3", WgmmaForm::Persist, Some(3)),
            ("trio-persist", WgmmaForm::TrioPersist, None),
            ("trio-persist:2", WgmmaForm::TrioPersist, Some(2)),
        ] {
            assert_eq!(
                wgmma_form_setting(Some(value)),
                Ok(Some((form, cap))),
                "{value}"
            );
        }
        for bad in [
            "on",
            "2",
            "Solo",
            "",
            "persist:",
            "persist:0",
            "persist:x",
            "trio:2",
            "pair:1",
            ":3",
            "trio_persist",
        ] {
            assert!(wgmma_form_setting(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantization_tiles_per_cta_keep_the_gpu_full() {
        // 2x32x16384: 8192 tiles on 132 SMs -> 8 per CTA, 1024 CTAs
        assert_eq!(quant_tiles_per_cta(8192, 132), 8);
        // a small problem keeps one tile per CTA; in between, at least 4 CTAs per SM remain
        assert_eq!(quant_tiles_per_cta(256, 132), 1);
        assert_eq!(quant_tiles_per_cta(0, 132), 1);
        for tiles in [528, 1056, 2000, 3000, 4223] {
            let tpc = quant_tiles_per_cta(tiles, 132);
            assert!(
                (1..=8).contains(&tpc) && tiles / tpc >= 4 * 132,
                "{tiles} -> {tpc}"
            );
        }
        // no SM count (0) counts as one SM
        assert_eq!(quant_tiles_per_cta(10, 0), 2);
    }

    #[test]
    fn hopper_kernel_fits_shared_memory() {
        // ABI.md's figures for the largest instantiations; sm_90 allows 227 KiB per block and 228 KiB
        // per multiprocessor, 1 KiB of which each resident block reserves
        let at = |dp, kvt, form| wgmma_smem_bytes(dp, kvt, form, 1024);
        assert_eq!(at(128, 128, WgmmaForm::Pair), 152_720);
        assert_eq!(at(128, 128, WgmmaForm::Solo), 77_392);
        assert_eq!(at(128, 128, WgmmaForm::Persist), 202_944);
        for (dp, kvt) in [(64, 64), (64, 128), (128, 64), (128, 128)] {
            assert!(at(dp, kvt, WgmmaForm::Pair) <= 227 * 1024);
            assert!(at(dp, kvt, WgmmaForm::Persist) <= 227 * 1024);
            assert!(at(dp, kvt, WgmmaForm::Trio) <= 227 * 1024);
            assert!(at(dp, kvt, WgmmaForm::TrioPersist) <= 227 * 1024);
            // three solo blocks per multiprocessor; at kv_block = head dim = 128 only without the
            // alignment slack (two with it)
            let solo = |slack| wgmma_smem_bytes(dp, kvt, WgmmaForm::Solo, slack) + 1024;
            assert!(3 * solo(0) <= 228 * 1024);
            if dp * kvt >= 128 * 128 {
                assert!(2 * solo(1024) <= 228 * 1024 && 3 * solo(1024) > 228 * 1024);
            } else {
                assert!(3 * solo(1024) <= 228 * 1024);
            }
        }
        assert_eq!(at(64, 128, WgmmaForm::Trio), 83_344);
        assert_eq!(at(128, 128, WgmmaForm::Trio), 162_448);
        assert_eq!(at(128, 128, WgmmaForm::TrioPersist), 204_448);
        // + 4 barriers, 2 x 48 Q scales, up to 1024-byte alignment, 3 x 32 rows of 16-bit Q
        assert_eq!(at(128, 128, WgmmaForm::TrioPersistQ), 230_400);
        assert!(at(128, 128, WgmmaForm::TrioPersistQ) <= 227 * 1024);
    }

    #[test]
    fn rows_kernels_keep_two_blocks_per_sm() {
        // two staged tiles of 128 x 128 f16 rows, 256 partial maxima, 8 per-warp slots; the kernel's
        // launch bounds ask for two blocks per multiprocessor (228 KiB, 1 KiB reserved per block)
        assert_eq!(q_rows_smem_bytes(128), 65_536 + 1_024 + 32);
        assert!(2 * (q_rows_smem_bytes(128) as usize + 1024) <= 228 * 1024);
        assert_eq!(q_rows_smem_bytes(64), 32_768 + 1_056);
        // quantize_k_rows: the same tiles and maxima, no per-warp slots, the head's km in f32
        assert_eq!(k_rows_smem_bytes(128), 65_536 + 1_024 + 512);
        assert!(2 * (k_rows_smem_bytes(128) as usize + 1024) <= 228 * 1024);
        assert_eq!(k_rows_smem_bytes(64), 32_768 + 1_024 + 256);
    }

    #[test]
    fn v_cols_takes_the_common_fp8_case_where_the_slice_fits() {
        let p = Problem {
            batch: 1,
            heads_q: 1,
            heads_kv: 1,
            seq_q: 1,
            seq_k: 1,
            head_dim: 128,
            head_dim_padded: 128,
            dtype: DType::F16,
            layout: Layout::Hnd,
            mode: Mode::Int8Fp8,
            granularity: Granularity::PerThread,
            smooth_q: true,
            smooth_v: false,
            rotate: false,
            kv_block: 128,
            causal: false,
            sm_scale: 1.0,
            return_lse: false,
        };
        let ptr = Arg::Ptr(1 << 20);
        // without clusters: whole 32-byte pieces while three CTAs fit, then 16-byte ones, up to one
        // CTA's 200 KiB, then the general path
        const H200: usize = 227 * 1024;
        let plan = |n, force| v_cols_plan(&p, ptr, n, force, 1, H200);
        assert_eq!(plan(1024, None), Some((32, 1)));
        assert_eq!(plan(2048, None), Some((16, 1)));
        assert_eq!(plan(4096, None), Some((8, 1)));
        assert_eq!(plan(8192, None), Some((8, 1)));
        assert_eq!(plan(16384, None), None);
        // one CTA's slice within what the device lets a block have (sm_89: 99 KiB)
        assert_eq!(v_cols_plan(&p, ptr, 6272, None, 1, 99 * 1024), Some((8, 1)));
        assert_eq!(v_cols_plan(&p, ptr, 8192, None, 1, 99 * 1024), None);
        assert_eq!(plan(4096, Some(16)), Some((16, 1)));
        assert_eq!(plan(8192, Some(16)), None);
        // in clusters (sm_90): the widest pieces on the fewest CTAs with three per multiprocessor
        let plan = |n, force| v_cols_plan(&p, ptr, n, force, 16, H200);
        assert_eq!(plan(256, None), Some((32, 1)));
        assert_eq!(plan(1024, None), Some((32, 1)));
        assert_eq!(plan(4096, None), Some((32, 4)));
        assert_eq!(plan(8192, None), Some((32, 8)));
        assert_eq!(plan(16384, None), Some((32, 16)));
        assert_eq!(plan(32768, None), Some((16, 16)));
        assert_eq!(plan(65536, None), Some((8, 16)));
        assert_eq!(plan(131_072, None), None);
        // a share of whole 16-token groups: 16512 / 16 is not one
        assert_eq!(plan(16512, None), Some((16, 8)));
        assert_eq!(plan(1024, Some(64)), Some((64, 2)));
        assert_eq!(plan(4096, Some(8)), Some((8, 1)));
        assert_eq!(plan(4096, Some(16)), Some((16, 2)));
        assert_eq!(v_cols_plan(&p, ptr, 16384, None, 8, H200), Some((16, 8)));
        assert_eq!(v_cols_plan(&p, ptr, 16384, Some(32), 8, H200), None);
        let d64 = Problem {
            head_dim: 64,
            head_dim_padded: 64,
            ..p
        };
        assert_eq!(
            v_cols_plan(&d64, ptr, 16384, None, 16, H200),
            Some((32, 16))
        );
        assert_eq!(
            v_cols_plan(&d64, ptr, 1024, Some(64), 16, H200),
            Some((64, 2))
        );
        // clusters the device cannot place give way to smaller ones, then to one CTA or none
        let placed = |n, largest: usize| {
            v_cols_placed(
                16,
                |m| v_cols_plan(&p, ptr, n, None, m, H200),
                |_, cl| cl <= largest,
            )
        };
        assert_eq!(placed(16384, 16), Some((32, 16)));
        assert_eq!(placed(16384, 8), Some((16, 8)));
        assert_eq!(placed(16384, 4), Some((8, 4)));
        assert_eq!(placed(16384, 1), None);
        assert_eq!(placed(4096, 2), Some((16, 2)));
        assert_eq!(placed(4096, 1), Some((8, 1)));
        assert_eq!(v_cols_smem_bytes(4096, 8, 1), 4096 * 16 + 144);
        assert_eq!(v_cols_smem_bytes(16384, 32, 16), 1024 * 64 + 576);
        assert!(3 * (v_cols_smem_bytes(16384, 32, 16) as usize + 1024) <= 228 * 1024);
        // smooth_v needs V's mean; f32 rows, D < Dp, INT8-FP16 and a misaligned buffer do not apply
        let cases = [
            (
                Problem {
                    smooth_v: true,
                    ..p
                },
                None,
            ),
            (
                Problem {
                    dtype: DType::F32,
                    ..p
                },
                None,
            ),
            (Problem { head_dim: 96, ..p }, None),
            (
                Problem {
                    mode: Mode::Int8Fp16,
                    ..p
                },
                None,
            ),
            (
                Problem {
                    dtype: DType::BF16,
                    ..p
                },
                Some(32),
            ),
        ];
        for (q, want) in cases {
            assert_eq!(
                v_cols_plan(&q, ptr, 1024, None, 16, H200),
                want.map(|cw| (cw, 1)),
                "{q:?}"
            );
        }
        assert_eq!(
            v_cols_plan(&p, Arg::Ptr((1 << 20) + 8), 1024, None, 8, H200),
            None
        );
    }

    #[test]
    fn argument_slots_hold_c_values() {
        assert_eq!(Arg::I32(-1).slot(), 0xffff_ffff);
        assert_eq!(Arg::F32(1.0).slot(), 0x3f80_0000);
        assert_eq!(Arg::I64(-2).slot(), u64::MAX - 1);
        assert_eq!(arch_for(9, 0), "sm_90a");
        assert_eq!(arch_for(8, 9), "sm_89");
    }

    #[test]
    fn a_function_is_prepared_once_per_need() {
        let none = Prepared::default();
        // small launches outside the wgmma module need nothing
        assert_eq!(none.wants(16 * 1024, false, 1), none);
        // a large one: its limit and the carveout; a smaller one later changes nothing, a larger
        // one raises the limit
        let large = none.wants(100 * 1024, false, 1);
        assert_eq!(
            (large.smem, large.carveout, large.non_portable),
            (100 * 1024, true, false)
        );
        assert_eq!(large.wants(72 * 1024, false, 1), large);
        assert_eq!(large.wants(200 * 1024, false, 1).smem, 200 * 1024);
        // the wgmma entries take the carveout whatever their size
        assert!(none.wants(40 * 1024, true, 1).carveout);
        // clusters above 8 CTAs need the permission once; 8 and below do not
        assert_eq!(large.wants(72 * 1024, false, 8), large);
        let wide = large.wants(72 * 1024, false, 16);
        assert!(wide.non_portable);
        assert_eq!(wide.wants(72 * 1024, false, 16), wide);
        assert_eq!(wide.wants(72 * 1024, false, 2), wide);
    }
}
