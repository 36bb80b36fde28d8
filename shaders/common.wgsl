// Prelude of every sage shader: the parameter block, the number formats, and index helpers.
// The Rust side (crates/sage-wgpu/src/pipelines.rs) prepends this file to each stage's source.
requires packed_4x8_integer_dot_product;

// One uniform block for every pass; each pass reads the fields it needs. The layout must match
// `Params` in crates/sage-wgpu/src/params.rs field for field (52 x 4 bytes).
struct Params {
    // the attention problem (ALGORITHM.md, Shapes)
    batch: u32, heads_q: u32, heads_kv: u32, seq_q: u32,
    seq_k: u32, head_dim: u32, head_dim_padded: u32, kv_block: u32,
    mode: u32, granularity: u32, causal: u32, sm_scale: f32,
    smooth_q: u32, smooth_v: u32, rotate: u32, want_lse: u32,
    // the tensor this pass works on
    heads: u32, seq: u32, dtype: u32, tensor_layout: u32,
    operand: u32, qmax: i32, block: u32, flag_slot: u32,
    src_offset: u32, dst_offset: u32, mean_offset: u32, scale_offset: u32,
    scale8_offset: u32, check_finite: u32, mean_block: u32, emit_int8: u32,
    // where the attention pass finds each section of the aux buffer (in f32 elements)
    off_q_scales: u32, off_k_scales: u32, off_k8_scales: u32, off_v_scales: u32,
    off_km: u32, off_vm: u32, off_qm: u32, off_lse: u32,
    q_groups: u32, k_groups: u32, threads_x: u32, state_offset: u32,
    // the keys [kv_start, kv_end) this dispatch of the attention covers; the first dispatch starts the
    // online softmax, the last one finalizes it, the others carry its state through out[state_offset..]
    kv_start: u32, kv_end: u32, chunk_first: u32, chunk_last: u32,
    // 1 where the adapter's `/` is not IEEE division (hardware GPUs): per-element quotients then
    // take `div_exact`; software adapters divide exactly already and have a loop budget to keep
    // block_mean: 1 sums pairwise (km, vm), 0 in token order (the smooth_q blocks)
    exact_div: u32, pairwise: u32, _pad2: u32, _pad3: u32,
}

const MODE_INT4_FP8: u32 = 0u;
const MODE_INT8_FP8: u32 = 1u;
const MODE_INT8_FP16: u32 = 2u;
const MODE_EXACT: u32 = 3u;

const DTYPE_F16: u32 = 0u;
const DTYPE_BF16: u32 = 1u;
const DTYPE_F32: u32 = 2u;

const LAYOUT_HND: u32 = 0u;
const LAYOUT_NHD: u32 = 1u;

const GRAN_PER_BLOCK: u32 = 0u;
const GRAN_PER_WARP: u32 = 1u;
const GRAN_PER_THREAD: u32 = 2u;

const OPERAND_Q: u32 = 0u;
const OPERAND_K: u32 = 1u;

const NORM128_BITS: u32 = 0x3db504f3u;
const LOG2_E: f32 = 1.4426950408889634;
const LN_2: f32 = 0.6931471805599453;
const E4M3_MAX: f32 = 448.0;

// -inf as a bit pattern: WGSL has no infinity literal and const-evaluation rejects overflow.
fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

// a / b rounded to nearest even, as IEEE division (and so the CPU) rounds it. WGSL's `/` may be off by
// 2.5 ulp (NVIDIA's is), and the few divisions whose results every code depends on (channel means,
// scales, their inverses) must match the CPU's exactly: a mean that is one ulp off shifts every
// smoothed value of its channel. Long division of the 24-bit significands in u32 arithmetic;
// zeros, subnormals, infinities and NaN fall back to `/` (none occur in those divisions).
fn div_exact(a: f32, b: f32) -> f32 {
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    let ea = i32((ua >> 23u) & 0xffu);
    let eb = i32((ub >> 23u) & 0xffu);
    if (ea == 0 || eb == 0 || ea == 255 || eb == 255) {
        return a / b;
    }
    let sign = (ua ^ ub) & 0x80000000u;
    let mb = (ub & 0x7fffffu) | 0x800000u;
    var rem = (ua & 0x7fffffu) | 0x800000u;
    var e = ea - eb + 127;
    if (rem < mb) {
        // quotient below 1: take one more bit of the dividend so the first quotient bit is 1
        rem = rem << 1u;
        e -= 1;
    }
    // 24 significand bits and one rounding bit; rem < 2 * mb < 2^25 throughout
    var q = 0u;
    for (var i = 0u; i < 25u; i++) {
        q = q << 1u;
        if (rem >= mb) {
            rem -= mb;
            q |= 1u;
        }
        rem = rem << 1u;
    }
    let round_bit = q & 1u;
    q = q >> 1u;
    if (round_bit == 1u && (rem != 0u || (q & 1u) == 1u)) {
        q += 1u;
        if (q == 0x1000000u) {
            q = 0x800000u;
            e += 1;
        }
    }
    if (e <= 0 || e >= 255) {
        return a / b;
    }
    return bitcast<f32>(sign | (u32(e) << 23u) | (q & 0x7fffffu));
}

// NaN and infinities have an all-ones exponent; WGSL has no isnan/isinf.
fn is_finite_f32(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// Scale group of token t (ALGORITHM.md Step 3): outer blocks of 128/32 (Q) or 64 (K) tokens; the
// per-thread sub-groups are the rows (Q) and columns (K) one thread of an m16n8 mma fragment owns.
fn group_block(granularity: u32, operand: u32) -> u32 {
    if (operand == OPERAND_K) { return 64u; }
    if (granularity == GRAN_PER_BLOCK) { return 128u; }
    return 32u;
}

fn group_subs(granularity: u32, operand: u32) -> u32 {
    if (granularity != GRAN_PER_THREAD) { return 1u; }
    if (operand == OPERAND_Q) { return 8u; }
    return 4u;
}

fn scale_group(granularity: u32, operand: u32, t: u32) -> u32 {
    var sub = 0u;
    if (granularity == GRAN_PER_THREAD) {
        if (operand == OPERAND_Q) { sub = t % 8u; } else { sub = (t % 8u) / 2u; }
    }
    return (t / group_block(granularity, operand)) * group_subs(granularity, operand) + sub;
}

// E4M3 decode through f16 (GPU-NOTES: through f32 bit patterns NVIDIA flushes the subnormal codes):
// the 7 magnitude bits land in the f16 exponent/mantissa fields, which leaves the value 2^-8 too small.
fn e4m3_decode(code: u32) -> f32 {
    let half_bits = ((code & 0x80u) << 8u) | ((code & 0x7fu) << 7u);
    return unpack2x16float(half_bits).x * 256.0;
}

// E4M3 encode: round to nearest, ties to even (WGSL round() is half-to-even), saturating at 448.
// Inputs are finite (the quantization pass rejects NaN/Inf).
fn e4m3_encode(x: f32) -> u32 {
    let sign = (bitcast<u32>(x) >> 24u) & 0x80u;
    let a = abs(x);
    if (a >= 464.0) {
        return sign | 0x7eu;  // from the midpoint 448|480 up everything saturates
    }
    if (a < 0.015625) {
        // subnormal range: steps of 2^-9; a count of 8 is the smallest normal's code
        return sign | u32(round(a * 512.0));
    }
    let e = i32((bitcast<u32>(a) >> 23u) & 0xffu) - 127;
    // a * 2^(3-e) in [8, 16), exact (ldexp only moves the exponent)
    var m = u32(round(ldexp(a, 3 - e)));
    var ee = e;
    if (m == 16u) {
        ee = e + 1;
        m = 8u;
    }
    let code = (u32(ee + 7) << 3u) | (m - 8u);
    return sign | min(code, 0x7eu);
}

// True when the E4M3 rounding of `x` is within a hair of a tie, where a quotient that is a few ulp
// off (WGSL division on NVIDIA) could round the other way.
fn e4m3_near_tie(x: f32) -> bool {
    let a = abs(x);
    if (a >= 448.0) {
        return false;
    }
    var t = a * 512.0;
    if (a >= 0.015625) {
        let e = i32((bitcast<u32>(a) >> 23u) & 0xffu) - 127;
        t = ldexp(a, 3 - e);
    }
    return abs(fract(t) - 0.5) < 1e-4;
}

// One element of a raw input buffer (dtype bits packed in u32 words) widened to f32; exact.
fn load_element(word: u32, index: u32, dtype: u32) -> f32 {
    if (dtype == DTYPE_F32) {
        return bitcast<f32>(word);
    }
    let half_bits = (word >> (16u * (index % 2u))) & 0xffffu;
    if (dtype == DTYPE_F16) {
        return unpack2x16float(half_bits).x;
    }
    return bitcast<f32>(half_bits << 16u);
}

// Flat index of (b, h, n, d) in a [B, H, N, D] tensor of the given layout.
fn tensor_index(memory_layout: u32, b: u32, h: u32, n: u32, d: u32, heads: u32, seq: u32, dim: u32) -> u32 {
    if (memory_layout == LAYOUT_NHD) {
        return ((b * seq + n) * heads + h) * dim + d;
    }
    return ((b * heads + h) * seq + n) * dim + d;
}

// The last key query m sees (ALGORITHM.md Step 5, bottom-right aligned), or -1 when it sees none.
fn last_visible(m: u32, seq_q: u32, seq_k: u32, causal: u32) -> i32 {
    if (seq_k == 0u) {
        return -1;
    }
    if (causal == 0u) {
        return i32(seq_k) - 1;
    }
    return min(i32(m) + i32(seq_k) - i32(seq_q), i32(seq_k) - 1);
}

// Linear invocation id of a 1-D problem dispatched as a 2-D grid of 64-wide workgroups.
fn linear_id(gid: vec3<u32>, threads_x: u32) -> u32 {
    return gid.y * threads_x + gid.x;
}

// In-place normalized fast Walsh-Hadamard transform (Sylvester order) of the first n entries.
fn fwht(row: ptr<function, array<f32, 128>>, n: u32) {
    var h = 1u;
    while (h < n) {
        for (var start = 0u; start < n; start += 2u * h) {
            for (var i = start; i < start + h; i++) {
                let a = (*row)[i];
                let b = (*row)[i + h];
                (*row)[i] = a + b;
                (*row)[i + h] = a - b;
            }
        }
        h *= 2u;
    }
    // 1/sqrt(n) as the CPU rounds it (GPU sqrt need not be correctly rounded)
    var norm = 0.125;
    if (n == 128u) { norm = bitcast<f32>(NORM128_BITS); }
    for (var i = 0u; i < n; i++) {
        (*row)[i] *= norm;
    }
}
