// quant.cu: the quantization stage, ALGORITHM.md Steps 1 (smooth_k), 2 (smooth_q), 2b (rotate),
// 3 (quantize_q / quantize_k) and 7 (V to FP8 or f16), for the quantized modes.
//
// The quantize_* kernels work on tiles of QUANT_TOKENS = 128 consecutive tokens of one head, 256
// threads: warp w holds tile rows 16w..16w+15, and lane l holds channels l, l+32, l+64, l+96 of
// each row (hadamard.cuh, "lane-strided"). Loads are 32 consecutive elements per instruction.
// channel_stats_* (the means and V scales they need first) sums each channel in token order.
//
// Launch order and buffer sizes: kernels/ABI.md. The CPU reference: crates/sage-core/src/cpu.rs
// (prepare_kv, prepare_q) and numerics/{quant,smooth,hadamard,fp8}.rs.
#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#include "common/ptx.cuh"
#include "common/dtype.cuh"
#include "common/fp8.cuh"
#include "common/int4.cuh"
#include "common/groups.cuh"
#include "common/hadamard.cuh"
#endif

#define QUANT_THREADS 256
#define QUANT_WARPS 8
#define ROWS_PER_WARP 16  // QUANT_TOKENS / QUANT_WARPS
// Row stride (bytes) of the transposed FP8 V tile in shared memory: 128 keys + 4, so that the 32
// lanes writing one key's channels l + 32e hit 32 different banks (33 words per row).
#define VT8_STRIDE 132
// The same for the f16 V tile, in halves: 128 + 2 (65 words per row).
#define VT16_STRIDE 130
// quantize_v_*: rows loaded per batch (all loads of a batch in flight together).
#define V_BATCH 8

// ---- helpers --------------------------------------------------------------------------------------

// One row's channels into the lane-strided layout; channels >= D (head-dim padding) and invalid
// rows (tokens >= N, sequence padding) read as 0.
template <class DT>
SAGE_DEVICE void load_row(const typename DT::T* row, bool valid, int d, int lane, float (&x)[4]) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const int c = lane + 32 * e;
        x[e] = (valid && c < d) ? DT::load(row[c]) : 0.0f;
    }
}

// True on every lane when some lane holds a NaN or Inf.
SAGE_DEVICE bool row_nonfinite(const float (&x)[4]) {
    bool bad = false;
#pragma unroll
    for (int e = 0; e < 4; ++e) bad |= !isfinite(x[e]);
    return __any_sync(FULL_MASK, bad) != 0;
}

// A per-head vector of Dp floats (km, vm, sv) in the lane-strided layout; `fill` where absent.
SAGE_DEVICE void load_channel_vec(const float* v, int dp, int lane, float fill, float (&x)[4]) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const int c = lane + 32 * e;
        x[e] = (v != nullptr && c < dp) ? v[c] : fill;
    }
}

// Quantizes a CTA's rows `x` (already smoothed and rotated) into `stage`, the tile's code rows as
// they go to global memory: INT8 one byte per channel (row = Dp bytes), INT4 two channels per byte
// (row = Dp/2 bytes, int4.cuh). Code = clamp(rint(x * (qmax/amax)), -qmax, qmax), rint = round half
// to even (`__float2int_rn`), exactly numerics/quant.rs. `ginv` holds qmax/amax of each of the
// tile's scale groups (0 for an all-zero group, which gives code 0).
SAGE_DEVICE void stage_codes(const float (&x)[ROWS_PER_WARP][4], int warp, int lane, int dp, int qmax,
                             int gran, bool is_q, const float* ginv, u8* stage) {
    const int row_bytes = qmax == 7 ? dp / 2 : dp;
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        const int lr = warp * ROWS_PER_WARP + r;
        const float inv = ginv[is_q ? q_scale_group(gran, lr) : k_scale_group(gran, lr)];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int c = lane + 32 * e;
            int code = __float2int_rn(__fmul_rn(x[r][e], inv));
            code = max(-qmax, min(qmax, code));
            if (qmax == 7) {
                // channel 2j (even lane) and 2j+1 (the odd neighbour lane) share byte j
                const int odd = __shfl_xor_sync(FULL_MASK, code, 1);
                if ((lane & 1) == 0 && c < dp) stage[lr * row_bytes + c / 2] = pack_int4_pair(code, odd);
            } else if (c < dp) {
                stage[lr * row_bytes + c] = (u8)(i8)code;
            }
        }
    }
}

// The tile's code rows are contiguous in the padded global buffer: copy them with 16-byte stores.
SAGE_DEVICE void copy_out_16(const u8* stage, u8* dst, int bytes) {
    for (int i = threadIdx.x * 16; i < bytes; i += QUANT_THREADS * 16)
        *(U32x4*)(dst + i) = *(const U32x4*)(stage + i);
}

// Group absmax of the tile: every row's absmax (a warp reduction) is max-ed into its scale
// group's slot of `gmax` (tile-local group index) by the row's lane 0. The slots hold f32 bit
// patterns: for values >= 0 (and +inf) the unsigned integer order is the float order, so an
// integer atomicMax is an exact float max, in any order. fmaxf ignores NaN, like the CPU's
// f32::max, so the row maxima are never NaN. `gmax` must be zeroed before (a barrier between).
SAGE_DEVICE void tile_group_amax(const float (&x)[ROWS_PER_WARP][4], int warp, int lane, int gran, bool is_q,
                                 u32* gmax) {
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        float a = 0.0f;
#pragma unroll
        for (int e = 0; e < 4; ++e) a = fmaxf(a, fabsf(x[r][e]));
        a = warp_max(a);
        const int lr = warp * ROWS_PER_WARP + r;
        if (lane == 0) atomicMax(&gmax[is_q ? q_scale_group(gran, lr) : k_scale_group(gran, lr)], __float_as_uint(a));
    }
}

// scale = amax / qmax (1 when amax == 0); the multiplier qmax / amax (0 when amax == 0).
SAGE_DEVICE float quant_scale(float amax, int qmax) { return amax == 0.0f ? 1.0f : __fdiv_rn(amax, (float)qmax); }
SAGE_DEVICE float quant_inv(float amax, int qmax) { return amax == 0.0f ? 0.0f : __fdiv_rn((float)qmax, amax); }

// Position of tile-local key k (0..15 inside a group of 16) in the FP8 V^T rows. The FP8 PV mma
// takes P's A fragment straight from the S accumulator (attn_mma.cu, "pv"): there lane 4g+t holds
// keys 2t, 2t+1, 8+2t, 9+2t of each 16 where the mma expects k = 4t..4t+3. Storing key k at
// slot 4*((k%8)/2) + (k%2) + 2*(k/8) makes the B fragment agree. Inverse (host side, to recover
// canonical [Nk, Dp] codes): slot p holds key 2*(p/4) + (p%2) + 8*((p%4)/2).
SAGE_DEVICE int v8_slot(int k) { return 4 * ((k % 8) / 2) + (k % 2) + 2 * (k / 8); }

// ---- channel_stats: km, vm and the FP8 V scales sv (Steps 1 and 7) ------------------------------
//
// mean[c] = (x[0][c] + x[1][c] + ... + x[N-1][c]) / N, summed in f32 in token order, exactly the
// CPU's channel_mean: the means are bit-identical, and so is everything computed from them. (A
// tree sum would be more accurate but differ from the CPU by its rounding error, which moves the K
// scales by several ulp on data with large channel means.) A sequential sum is a dependent chain
// of N additions per channel; it is kept fed by the other warps of the CTA:
//   CTA = one (b, h) and 32 channels c0..c0+31. Warp 0 lane l owns channel c0 + l and adds up
//   chunk i (16 KiB of input: 256 tokens of f16/bf16, 128 of f32) from shared memory while warps
//   1-7 load chunk i+1 into the other buffer; one barrier per chunk.
// With `vscale_out`: sv[c] = amax / 448 (1 when amax == 0) where amax = max_n |V'[n,c]|; for
// V' = V - vm that is max(vmax - vm, vm - vmin) EXACTLY: f32 subtraction is monotonic, so the
// largest |fl(v - vm)| is reached at vmax or at vmin.
#define STATS_THREADS 256
#define STATS_LOADERS (STATS_THREADS - 32)
// Bytes of one staged chunk: the tokens of a chunk are stored in the input type, so f16/bf16 chunks
// hold twice the tokens of f32 ones (more bytes in flight per loader for the same shared memory).
#define STATS_CHUNK_BYTES 16384

template <class DT>
struct StatsChunk {
    typedef typename DT::T T;
    static constexpr int TOKENS = STATS_CHUNK_BYTES / (32 * (int)sizeof(T));  // 256 (16-bit) or 128 (f32)
    // Loader warps: all of a chunk's loads are issued before the first store, so a chunk costs
    // one memory round trip (LOAD_PER loads in flight per thread), not one per element.
    static constexpr int LOAD_PER = (TOKENS * 32 + STATS_LOADERS - 1) / STATS_LOADERS;
};

template <class DT>
SAGE_DEVICE void stats_load_chunk(typename DT::T (*buf)[32], const typename DT::T* base, i64 sn, int n0, int N,
                                  int c0, int D) {
    typedef StatsChunk<DT> C;
    // Loader li always reads channel c0 + li % 32 (STATS_LOADERS is a multiple of 32) of tokens
    // n0 + li / 32 + k * (STATS_LOADERS / 32): a warp reads 32 consecutive channels of one token.
    const int li = threadIdx.x - 32;
    const int cl = li % 32, r0 = li / 32;
    const bool c_ok = c0 + cl < D;
    typename DT::T v[C::LOAD_PER];
#pragma unroll
    for (int k = 0; k < C::LOAD_PER; ++k) {
        const int r = r0 + k * (STATS_LOADERS / 32);
        const int n = n0 + r;
        v[k] = (r < C::TOKENS && n < N && c_ok) ? base[(i64)n * sn + c0 + cl] : (typename DT::T)0;
    }
#pragma unroll
    for (int k = 0; k < C::LOAD_PER; ++k) {
        const int r = r0 + k * (STATS_LOADERS / 32);
        if (r < C::TOKENS) buf[r][cl] = v[k];
    }
}

template <class DT>
SAGE_DEVICE void channel_stats(const typename DT::T* x, i64 sb, i64 sh, i64 sn, int H, int N, int D, int Dp,
                               int smooth, float* mean_out, float* vscale_out) {
    typedef typename DT::T T;
    typedef StatsChunk<DT> C;
    __shared__ __align__(16) T s_buf[2][C::TOKENS][32];
    const int c0 = blockIdx.x * 32, h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const i64 head = (i64)b * H + h;
    const T* base = x + (i64)b * sb + (i64)h * sh;
    const int chunks = ceil_div(N, C::TOKENS);

    float sum = 0.0f, mx = neg_inf(), mn = pos_inf();
    if (warp != 0) stats_load_chunk<DT>(s_buf[0], base, sn, 0, N, c0, D);
    __syncthreads();
    for (int i = 0; i < chunks; ++i) {
        if (warp != 0) {
            if (i + 1 < chunks) stats_load_chunk<DT>(s_buf[(i + 1) & 1], base, sn, (i + 1) * C::TOKENS, N, c0, D);
        } else {
            const int rows = min(C::TOKENS, N - i * C::TOKENS);
            const T(*buf)[32] = s_buf[i & 1];
#pragma unroll 8
            for (int r = 0; r < rows; ++r) {
                const float v = DT::load(buf[r][lane]);  // channels >= D were staged as 0
                sum = sum + v;  // the CPU's order: ((0 + x0) + x1) + ...
                mx = fmaxf(mx, v);
                mn = fminf(mn, v);
            }
        }
        __syncthreads();
    }
    if (warp == 0) {
        const int c = c0 + lane;
        if (c < Dp) {
            float mean = 0.0f, amax = 0.0f;
            if (c < D) {
                mean = __fdiv_rn(sum, (float)N);
                amax = smooth ? fmaxf(mx - mean, mean - mn) : fmaxf(mx, -mn);
            }
            if (mean_out != nullptr) mean_out[head * Dp + c] = smooth ? mean : 0.0f;
            if (vscale_out != nullptr) vscale_out[head * Dp + c] = amax == 0.0f ? 1.0f : __fdiv_rn(amax, E4M3_MAX);
        }
    }
}

// ---- quantize_k: Steps 1 (subtract km), 2b, 3 ----------------------------------------------------
template <class DT>
SAGE_DEVICE void quantize_k(const typename DT::T* k, i64 sb, i64 sh, i64 sn, int H, int N, int D, int Dp,
                            const float* km, int gran, int qmax, int rotate, u8* codes, float* scales,
                            i8* codes8, float* scales8, int* nonfinite) {
    __shared__ u32 s_gmax[32];
    __shared__ float s_ginv[32];
    __shared__ float s_ginv8[32];
    // INT4 codes need only half of s_codes; the INT8 copy (INT4 mode only) has its own buffer.
    __shared__ __align__(16) u8 s_codes[QUANT_TOKENS * MAX_DP];
    __shared__ __align__(16) u8 s_codes8[QUANT_TOKENS * MAX_DP];
    const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int t0 = tile * QUANT_TOKENS;
    const i64 head = (i64)b * H + h;
    const typename DT::T* base = k + (i64)b * sb + (i64)h * sh;
    if (threadIdx.x < 32) s_gmax[threadIdx.x] = 0u;  // +0.0f; visible after the barrier below

    float kmv[4];
    load_channel_vec(km + head * Dp, Dp, lane, 0.0f, kmv);

    float x[ROWS_PER_WARP][4];
    // All 16 rows' loads first: a global store (the non-finite flag) between them would keep the
    // compiler from hoisting later loads above it (possible aliasing), one round trip per row.
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        const int n = t0 + warp * ROWS_PER_WARP + r;
        load_row<DT>(base + (i64)n * sn, n < N, D, lane, x[r]);
    }
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        const int n = t0 + warp * ROWS_PER_WARP + r;
        const bool valid = n < N;
        if (row_nonfinite(x[r]) && lane == 0) flag_nonfinite(nonfinite, head * N + n);
        // smooth_k: K' = K - km (padding rows stay 0: they must not enter any amax)
        if (valid) {
#pragma unroll
            for (int e = 0; e < 4; ++e) x[r][e] = x[r][e] - kmv[e];
        }
    }
    if (rotate) {
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; ++r) fwht_row(x[r], Dp, lane);
    }
    __syncthreads();
    tile_group_amax(x, warp, lane, gran, false, s_gmax);
    __syncthreads();

    const GroupShape gs = k_group_shape(gran);
    const int tile_groups = (QUANT_TOKENS / gs.block) * gs.subs;
    const int total = k_scale_groups(gran, N);
    const int g0 = (t0 / gs.block) * gs.subs;
    if ((int)threadIdx.x < tile_groups) {
        const int i = threadIdx.x;
        const float amax = __uint_as_float(s_gmax[i]);
        s_ginv[i] = quant_inv(amax, qmax);
        s_ginv8[i] = quant_inv(amax, 127);
        if (g0 + i < total) {
            scales[head * total + g0 + i] = quant_scale(amax, qmax);
            if (scales8 != nullptr) scales8[head * total + g0 + i] = quant_scale(amax, 127);
        }
    }
    __syncthreads();

    const int npad = round_up(N, QUANT_TOKENS);
    const int row_bytes = qmax == 7 ? Dp / 2 : Dp;
    stage_codes(x, warp, lane, Dp, qmax, gran, false, s_ginv, s_codes);
    // Step 2: the INT8 codes of K' for dS, made by the same pass (INT4 mode with smooth_q).
    if (codes8 != nullptr) stage_codes(x, warp, lane, Dp, 127, gran, false, s_ginv8, s_codes8);
    __syncthreads();
    copy_out_16(s_codes, codes + (head * npad + t0) * row_bytes, QUANT_TOKENS * row_bytes);
    if (codes8 != nullptr) copy_out_16(s_codes8, (u8*)codes8 + (head * npad + t0) * Dp, QUANT_TOKENS * Dp);
}

// ---- quantize_q: Steps 2 (smooth_q), 2b, 3, and q.km for the log-sum-exp -----------------------
template <class DT>
SAGE_DEVICE void quantize_q(const typename DT::T* q, i64 sb, i64 sh, i64 sn, int H, int N, int D, int Dp, int Hkv,
                            const float* km, float* qkm, int smooth_q, float* qm_out, int gran, int qmax,
                            int rotate, u8* codes, float* scales, int* nonfinite) {
    __shared__ float s_carry[MAX_DP];
    __shared__ float s_mean[MAX_DP];
    __shared__ u32 s_gmax[32];
    __shared__ float s_ginv[32];
    __shared__ __align__(16) u8 s_codes[QUANT_TOKENS * MAX_DP];
    const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int t0 = tile * QUANT_TOKENS;
    const i64 head = (i64)b * H + h;
    const typename DT::T* base = q + (i64)b * sb + (i64)h * sh;
    if (threadIdx.x < 32) s_gmax[threadIdx.x] = 0u;  // +0.0f; visible after the barrier below

    // km of the K/V head this query head reads (GQA), for q.km with the ORIGINAL q (Step 1).
    float kmv[4];
    const int hk = h / (H / Hkv);
    load_channel_vec(qkm != nullptr ? km + ((i64)b * Hkv + hk) * Dp : nullptr, Dp, lane, 0.0f, kmv);

    float x[ROWS_PER_WARP][4];
    // All 16 rows' loads first (see quantize_k): the flag and q.km stores come after.
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        const int n = t0 + warp * ROWS_PER_WARP + r;
        load_row<DT>(base + (i64)n * sn, n < N, D, lane, x[r]);
    }
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        const int n = t0 + warp * ROWS_PER_WARP + r;
        const bool valid = n < N;
        if (row_nonfinite(x[r]) && lane == 0) flag_nonfinite(nonfinite, head * N + n);
        if (qkm != nullptr && valid) {
            float d = 0.0f;
#pragma unroll
            for (int e = 0; e < 4; ++e) d += x[r][e] * kmv[e];
            d = warp_sum(d);
            if (lane == 0) qkm[head * N + n] = d;
        }
    }

    if (smooth_q) {
        // qm = mean of this tile's rows (the tile IS one smooth_q block: QUANT_TOKENS ==
        // Q_SMOOTH_BLOCK), summed in row order as the CPU's channel_mean does: warp w continues the
        // running sums of warp w-1, eight short serial steps, so qm is bit-identical to the CPU's.
        for (int w = 0; w < QUANT_WARPS; ++w) {
            if (warp == w) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int c = lane + 32 * e;
                    float s = w == 0 ? 0.0f : s_carry[c];
#pragma unroll
                    for (int r = 0; r < ROWS_PER_WARP; ++r)
                        if (t0 + w * ROWS_PER_WARP + r < N) s = s + x[r][e];
                    s_carry[c] = s;
                }
            }
            __syncthreads();
        }
        if ((int)threadIdx.x < Dp) {
            const int c = threadIdx.x;
            const int count = min(QUANT_TOKENS, N - t0);
            s_mean[c] = c < D ? __fdiv_rn(s_carry[c], (float)count) : 0.0f;
        }
        __syncthreads();
        float mv[4];
        load_channel_vec(s_mean, Dp, lane, 0.0f, mv);
        if (warp == 0) {
            // qm goes out rotated (it meets the rotated K' codes in dS); the rows subtract it unrotated
            // and are rotated afterwards, as in the CPU's prepare_q.
            float qmr[4] = {mv[0], mv[1], mv[2], mv[3]};
            if (rotate) fwht_row(qmr, Dp, lane);
            const i64 blocks = ceil_div(N, Q_SMOOTH_BLOCK);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int c = lane + 32 * e;
                if (c < Dp) qm_out[(head * blocks + tile) * Dp + c] = qmr[e];
            }
        }
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; ++r) {
            if (t0 + warp * ROWS_PER_WARP + r < N) {
#pragma unroll
                for (int e = 0; e < 4; ++e) x[r][e] = x[r][e] - mv[e];
            }
        }
    }
    if (rotate) {
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; ++r) fwht_row(x[r], Dp, lane);
    }
    __syncthreads();
    tile_group_amax(x, warp, lane, gran, true, s_gmax);
    __syncthreads();

    const GroupShape gs = q_group_shape(gran);
    const int tile_groups = (QUANT_TOKENS / gs.block) * gs.subs;
    const int total = q_scale_groups(gran, N);
    const int g0 = (t0 / gs.block) * gs.subs;
    if ((int)threadIdx.x < tile_groups) {
        const int i = threadIdx.x;
        const float amax = __uint_as_float(s_gmax[i]);
        s_ginv[i] = quant_inv(amax, qmax);
        if (g0 + i < total) scales[head * total + g0 + i] = quant_scale(amax, qmax);
    }
    __syncthreads();

    const int npad = round_up(N, QUANT_TOKENS);
    const int row_bytes = qmax == 7 ? Dp / 2 : Dp;
    stage_codes(x, warp, lane, Dp, qmax, gran, true, s_ginv, s_codes);
    __syncthreads();
    copy_out_16(s_codes, codes + (head * npad + t0) * row_bytes, QUANT_TOKENS * row_bytes);
}

// ---- quantize_v_e4m3: Step 7, FP8 modes ----------------------------------------------------------
// v8[n, c] = e4m3(V'[n, c] / sv[c]), written transposed and key-permuted: V^T [B, H, Dp, Npad]
// bytes, key n of a 16-key group at slot v8_slot(n % 16).
template <class DT>
SAGE_DEVICE void quantize_v_e4m3(const typename DT::T* v, i64 sb, i64 sh, i64 sn, int H, int N, int D, int Dp,
                                 const float* vm, const float* sv, u8* vt, int* nonfinite) {
    __shared__ __align__(16) u8 s_vt[MAX_DP * VT8_STRIDE];
    const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int t0 = tile * QUANT_TOKENS;
    const i64 head = (i64)b * H + h;
    const typename DT::T* base = v + (i64)b * sb + (i64)h * sh;

    float vmv[4], svv[4];
    load_channel_vec(vm != nullptr ? vm + head * Dp : nullptr, Dp, lane, 0.0f, vmv);
    load_channel_vec(sv + head * Dp, Dp, lane, 1.0f, svv);

    // Rows in batches of V_BATCH: the batch's loads are issued before any flag store (see quantize_k).
    for (int r0 = 0; r0 < ROWS_PER_WARP; r0 += V_BATCH) {
    float xb[V_BATCH][4];
#pragma unroll
    for (int rb = 0; rb < V_BATCH; ++rb) {
        const int n = t0 + warp * ROWS_PER_WARP + r0 + rb;
        load_row<DT>(base + (i64)n * sn, n < N, D, lane, xb[rb]);
    }
#pragma unroll
    for (int rb = 0; rb < V_BATCH; ++rb) {
        const int lr = warp * ROWS_PER_WARP + r0 + rb;
        const int n = t0 + lr;
        const bool valid = n < N;
        const float(&x)[4] = xb[rb];
        if (row_nonfinite(x) && lane == 0) flag_nonfinite(nonfinite, head * N + n);
        const int slot = (lr & ~15) | v8_slot(lr & 15);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int c = lane + 32 * e;
            if (c < Dp) {
                // smooth_v: V' = V - vm (vm is 0 on padded channels and when smooth_v is off)
                const u8 code = valid ? e4m3_encode(__fdiv_rn(x[e] - vmv[e], svv[e])) : (u8)0;
                s_vt[c * VT8_STRIDE + slot] = code;
            }
        }
    }
    }
    __syncthreads();
    // Each channel row of the tile is 128 contiguous bytes of V^T: a warp stores one row.
    const int npad = round_up(N, QUANT_TOKENS);
    for (int i = threadIdx.x; i < Dp * (QUANT_TOKENS / 4); i += QUANT_THREADS) {
        const int c = i / (QUANT_TOKENS / 4), w = i % (QUANT_TOKENS / 4);
        const u32 word = *(const u32*)(s_vt + c * VT8_STRIDE + 4 * w);
        *(u32*)(vt + (head * Dp + c) * npad + t0 + 4 * w) = word;
    }
}

// ---- quantize_v_f16: Step 7, int8-fp16 mode ------------------------------------------------------
// f16(V'[n, c]), written transposed: V^T [B, H, Dp, Npad] f16, keys in natural order.
template <class DT>
SAGE_DEVICE void quantize_v_f16(const typename DT::T* v, i64 sb, i64 sh, i64 sn, int H, int N, int D, int Dp,
                                const float* vm, u16* vt, int* nonfinite) {
    __shared__ __align__(16) u16 s_vt[MAX_DP * VT16_STRIDE];
    const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int t0 = tile * QUANT_TOKENS;
    const i64 head = (i64)b * H + h;
    const typename DT::T* base = v + (i64)b * sb + (i64)h * sh;

    float vmv[4];
    load_channel_vec(vm != nullptr ? vm + head * Dp : nullptr, Dp, lane, 0.0f, vmv);

    for (int r0 = 0; r0 < ROWS_PER_WARP; r0 += V_BATCH) {
    float xb[V_BATCH][4];
#pragma unroll
    for (int rb = 0; rb < V_BATCH; ++rb) {
        const int n = t0 + warp * ROWS_PER_WARP + r0 + rb;
        load_row<DT>(base + (i64)n * sn, n < N, D, lane, xb[rb]);
    }
#pragma unroll
    for (int rb = 0; rb < V_BATCH; ++rb) {
        const int lr = warp * ROWS_PER_WARP + r0 + rb;
        const int n = t0 + lr;
        const bool valid = n < N;
        const float(&x)[4] = xb[rb];
        if (row_nonfinite(x) && lane == 0) flag_nonfinite(nonfinite, head * N + n);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int c = lane + 32 * e;
            if (c < Dp) s_vt[c * VT16_STRIDE + lr] = valid ? f32_to_f16(x[e] - vmv[e]) : (u16)0;
        }
    }
    }
    __syncthreads();
    const int npad = round_up(N, QUANT_TOKENS);
    for (int i = threadIdx.x; i < Dp * (QUANT_TOKENS / 2); i += QUANT_THREADS) {
        const int c = i / (QUANT_TOKENS / 2), w = i % (QUANT_TOKENS / 2);
        const u32 word = *(const u32*)(s_vt + c * VT16_STRIDE + 2 * w);
        *(u32*)(vt + (head * Dp + c) * npad + t0 + 2 * w) = word;
    }
}

// ---- entry points ---------------------------------------------------------------------------------
// One set per input dtype; parameter lists in ABI.md. quantize_*: grid (ceil(N/128), H, B), 256
// threads; channel_stats_*: grid (Dp/32, H, B), 256 threads.

#define SAGE_QUANT_ENTRIES(SUFFIX, DT)                                                                    \
    extern "C" __global__ void __launch_bounds__(STATS_THREADS)                                           \
        channel_stats_##SUFFIX(const DT::T* x, i64 stride_b, i64 stride_h, i64 stride_n, int H, int N,    \
                               int D, int Dp, int smooth, float* mean_out, float* vscale_out) {           \
        channel_stats<DT>(x, stride_b, stride_h, stride_n, H, N, D, Dp, smooth, mean_out, vscale_out);    \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(QUANT_THREADS, 2)                                         \
        quantize_k_##SUFFIX(const DT::T* k, i64 stride_b, i64 stride_h, i64 stride_n, int H, int N, int D, \
                            int Dp, const float* km, int granularity, int qmax, int rotate, u8* codes,    \
                            float* scales, i8* codes8, float* scales8, int* nonfinite) {                  \
        quantize_k<DT>(k, stride_b, stride_h, stride_n, H, N, D, Dp, km, granularity, qmax, rotate, codes, \
                       scales, codes8, scales8, nonfinite);                                               \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(QUANT_THREADS, 2)                                         \
        quantize_q_##SUFFIX(const DT::T* q, i64 stride_b, i64 stride_h, i64 stride_n, int H, int N, int D, \
                            int Dp, int Hkv, const float* km, float* qkm, int smooth_q, float* qm,        \
                            int granularity, int qmax, int rotate, u8* codes, float* scales,              \
                            int* nonfinite) {                                                             \
        quantize_q<DT>(q, stride_b, stride_h, stride_n, H, N, D, Dp, Hkv, km, qkm, smooth_q, qm,          \
                       granularity, qmax, rotate, codes, scales, nonfinite);                              \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(QUANT_THREADS, 2)                                         \
        quantize_v_e4m3_##SUFFIX(const DT::T* v, i64 stride_b, i64 stride_h, i64 stride_n, int H, int N,  \
                                 int D, int Dp, const float* vm, const float* sv, u8* vt, int* nonfinite) { \
        quantize_v_e4m3<DT>(v, stride_b, stride_h, stride_n, H, N, D, Dp, vm, sv, vt, nonfinite);          \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(QUANT_THREADS, 2)                                         \
        quantize_v_f16_##SUFFIX(const DT::T* v, i64 stride_b, i64 stride_h, i64 stride_n, int H, int N,   \
                                int D, int Dp, const float* vm, u16* vt, int* nonfinite) {                \
        quantize_v_f16<DT>(v, stride_b, stride_h, stride_n, H, N, D, Dp, vm, vt, nonfinite);               \
    }

#ifdef SAGE_WANT_F16
SAGE_QUANT_ENTRIES(f16, DtF16)
#endif
#ifdef SAGE_WANT_BF16
SAGE_QUANT_ENTRIES(bf16, DtBF16)
#endif
#ifdef SAGE_WANT_F32
SAGE_QUANT_ENTRIES(f32, DtF32)
#endif
