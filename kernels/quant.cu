// quant.cu: the quantization stage, ALGORITHM.md Steps 1 (smooth_k), 2 (smooth_q), 2b (rotate),
// 3 (quantize_q / quantize_k) and 7 (V to FP8 or f16), for the quantized modes.
//
// The quantize_* kernels work on tiles of QUANT_TOKENS = 128 consecutive tokens of one head, 256
// threads, in the "row-contiguous" layout: a row of Dp channels is held by LPR = Dp/8 consecutive
// lanes, lane `sub` holding channels 8*sub .. 8*sub+7, so a row is read with one 16-byte load per
// lane (f16/bf16) and its INT8 codes are written with one 8-byte store per lane, straight to global
// memory. Warp w owns tile rows 16w .. 16w+15; lane group `grp` takes STEPS = Dp/16 of them,
// consecutive (rows 16w + grp*STEPS + s), so the smooth_q mean can be summed in row order.
// kv_stats_* (the means and V scales they need first) sum the tokens pairwise, in blocks of tiles.
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
#include "common/qcodes.cuh"
#endif

#define QUANT_THREADS 256
#define QUANT_WARPS 8
#define ROWS_PER_WARP 16  // QUANT_TOKENS / QUANT_WARPS
// quantize_v_f16: steps per batch of row loads (divides RowLayout::STEPS = 4 or 8).
#define V_BATCH 4

// ---- the row-contiguous layout -------------------------------------------------------------------

template <int DP>
struct RowLayout {
    static constexpr int LPR = DP / 8;            // lanes per row
    static constexpr int RPI = 32 / LPR;          // rows a warp holds at once (lane groups)
    static constexpr int STEPS = ROWS_PER_WARP / RPI;  // rows per lane group
    int sub, grp;
    SAGE_DEVICE explicit RowLayout(int lane) : sub(lane % LPR), grp(lane / LPR) {}
    // The tile-local row of step s.
    SAGE_DEVICE int row(int warp, int s) const { return warp * ROWS_PER_WARP + grp * STEPS + s; }
};

// Whether a head's rows can be read with 16-byte loads: whole 8-channel chunks, aligned rows.
template <class DT>
SAGE_DEVICE bool rows_vectorizable(const typename DT::T* base, i64 sn, int d) {
    const unsigned long long addr = (unsigned long long)(size_t)base;
    const unsigned long long stride = (unsigned long long)sn * sizeof(typename DT::T);
    return d % 8 == 0 && ((addr | stride) & 15ull) == 0;
}

// Channels 8*sub .. 8*sub+7 of one row; channels >= D (head-dim padding) and invalid rows (tokens
// >= N, sequence padding) read as 0.
template <class DT>
SAGE_DEVICE void load_row8(const typename DT::T* row, bool valid, int d, int sub, bool vec, float (&x)[8]) {
    typedef typename DT::T T;
    const int c0 = 8 * sub;
    if (vec) {
        if (valid && c0 < d) {
            if constexpr (sizeof(T) == 2) {
                const U32x4 w = *(const U32x4*)(row + c0);
                const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    x[2 * k] = DT::load((T)(ws[k] & 0xffffu));
                    x[2 * k + 1] = DT::load((T)(ws[k] >> 16));
                }
            } else {
                const U32x4 a = *(const U32x4*)(row + c0), b = *(const U32x4*)(row + c0 + 4);
                const u32 ws[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
                for (int k = 0; k < 8; ++k) x[k] = __uint_as_float(ws[k]);
            }
        } else {
#pragma unroll
            for (int k = 0; k < 8; ++k) x[k] = 0.0f;
        }
    } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) x[k] = (valid && c0 + k < d) ? DT::load(row[c0 + k]) : 0.0f;
    }
}

// ---- tiles per CTA, the next one's copy in flight -----------------------------------------------
// A quantize_* CTA takes `tpc` consecutive tiles of one head (a launch parameter, 1-8: grid.x =
// ceil(ceil(N/128) / tpc), ABI.md; the host picks it from the problem's size and the SM count, so
// that small problems keep one tile per CTA). With 16-bit inputs whose rows allow 16-byte loads,
// tile i+1 is copied into shared memory (cp.async) as soon as every lane holds tile i in registers,
// so the copy runs under tile i's reductions, barriers and stores; a CTA that loaded, computed and
// stored in turn kept the memory busy only a third of the time (ncu on an H200: ~30 % of DRAM
// bandwidth, 2 CTAs per SM).

template <class DT>
struct Staging {
    // One 16-bit tile of QUANT_TOKENS rows x MAX_DP channels (32 KiB); f32 inputs are not staged.
    static constexpr bool ON = sizeof(typename DT::T) == 2;
    static constexpr int ELEMS = ON ? QUANT_TOKENS * MAX_DP : 8;
};

// Copies rows t0 .. t0+127 (those < N; channel chunks < D) of a head into `tile` ([row][Dp]).
template <class DT, int DP>
SAGE_DEVICE void stage_tile(const typename DT::T* base, i64 sn, int N, int D, int t0, typename DT::T* tile) {
    constexpr int CPR = DP / 8;  // 16-byte chunks per row
    constexpr int PER = QUANT_TOKENS * CPR / QUANT_THREADS;
    const u32 dst0 = smem_addr(tile);
#pragma unroll
    for (int u = 0; u < PER; ++u) {
        const int i = threadIdx.x + u * QUANT_THREADS;
        const int r = i / CPR, c = i % CPR;
        if (t0 + r < N && 8 * c < D)
            cp_async_16(dst0 + (r * DP + 8 * c) * 2, base + (i64)(t0 + r) * sn + 8 * c);
    }
    cp_async_commit();
}

// Called by a tile's body once its lane holds its rows: waits until every lane does, then starts the
// copy of the CTA's next tile (if any) into the shared buffer. A no-op when nothing is staged.
template <class DT, int DP>
struct NextTile {
    const typename DT::T* base;
    i64 sn;
    int N, D, next;  // next: the tile to stage, or -1
    bool staged;
    typename DT::T* tile;
    SAGE_DEVICE void operator()() const {
        if (!staged) return;
        __syncthreads();
        if (next >= 0) stage_tile<DT, DP>(base, sn, N, D, next * QUANT_TOKENS, tile);
    }
};

// Runs body(tile, x_ready) for the CTA's tiles. Staged: body loads its rows from the shared tile
// (load_rows below) and then calls x_ready() (NextTile). Not staged: rows come from global memory.
// A barrier separates consecutive tiles (their shared arrays are reused).
template <class DT, int DP, class BODY>
SAGE_DEVICE void for_each_tile(const typename DT::T* base, i64 sn, int N, int D, int tpc, bool staged,
                               typename DT::T* tile, BODY body) {
    const int ntiles = ceil_div(N, QUANT_TOKENS);
    const int first = blockIdx.x * tpc, last = min(first + tpc, ntiles);
    if (staged && first < last) stage_tile<DT, DP>(base, sn, N, D, first * QUANT_TOKENS, tile);
    for (int t = first; t < last; ++t) {
        if (staged) cp_async_wait_all();
        __syncthreads();
        body(t, NextTile<DT, DP>{base, sn, N, D, t + 1 < last ? t + 1 : -1, staged, tile});
    }
}

// Rows s0 .. s0 + NB - 1 of the lane's part of tile t0 (tokens t0 + rl.row(warp, s)), from the staged
// copy (`tile` != nullptr) or from global memory. All loads are issued before anything else: a
// global store (the non-finite flag) between them would keep the compiler from hoisting later loads
// above it (possible aliasing), one round trip per row.
template <class DT, int DP, int NB>
SAGE_DEVICE void load_rows(const typename DT::T* base, i64 sn, int N, int D, int t0, int warp, RowLayout<DP> rl,
                           bool vec, const typename DT::T* tile, float (&x)[NB][8], int s0 = 0) {
    if (tile == nullptr) {
#pragma unroll
        for (int i = 0; i < NB; ++i) {
            const int n = t0 + rl.row(warp, s0 + i);
            load_row8<DT>(base + (i64)n * sn, n < N, D, rl.sub, vec, x[i]);
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < NB; ++i) {
        const int lr = rl.row(warp, s0 + i);
        load_row8<DT>(tile + lr * DP, t0 + lr < N, D, rl.sub, true, x[i]);
    }
}

// A per-head vector of Dp floats (km, vm, sv) in the row layout; `fill` where absent.
SAGE_DEVICE void load_channel_vec8(const float* v, int sub, float fill, float (&x)[8]) {
#pragma unroll
    for (int k = 0; k < 8; ++k) x[k] = v != nullptr ? v[8 * sub + k] : fill;
}

// Max / sum over the LPR lanes of a row (lane groups are aligned, so xor stays inside the group).
template <int LPR>
SAGE_DEVICE float row_max(float v) {
#pragma unroll
    for (int o = LPR / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}
template <int LPR>
SAGE_DEVICE float row_sum(float v) {
#pragma unroll
    for (int o = LPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// True on every lane of a row when some lane of that row holds a NaN or Inf.
template <int LPR>
SAGE_DEVICE bool row_nonfinite(const float (&x)[8], int grp) {
    bool bad = false;
#pragma unroll
    for (int k = 0; k < 8; ++k) bad |= !isfinite(x[k]);
    const u32 rows = __ballot_sync(FULL_MASK, bad);
    return ((rows >> (grp * LPR)) & ((1u << LPR) - 1u)) != 0;
}

// Group absmax of the tile: every row's absmax is max-ed into its scale group's slot of `gmax`
// (tile-local group index) by the row's first lane. The slots hold f32 bit patterns: for values
// >= 0 (and +inf) the unsigned integer order is the float order, so an integer atomicMax is an
// exact float max, in any order. fmaxf ignores NaN, like the CPU's f32::max, so the row maxima are
// never NaN. `gmax` must be zeroed before (a barrier between).
template <int DP>
SAGE_DEVICE void tile_group_amax(const float (&x)[RowLayout<DP>::STEPS][8], int warp, RowLayout<DP> rl, int gran,
                                 bool is_q, u32* gmax) {
#pragma unroll
    for (int s = 0; s < RowLayout<DP>::STEPS; ++s) {
        float a = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) a = fmaxf(a, fabsf(x[s][k]));
        a = row_max<RowLayout<DP>::LPR>(a);
        const int lr = rl.row(warp, s);
        if (rl.sub == 0) atomicMax(&gmax[is_q ? q_scale_group(gran, lr) : k_scale_group(gran, lr)], __float_as_uint(a));
    }
}

// A channel's FP8 V scale (Step 7): amax / 448, and 1 where that is zero: amax == 0, or an f32 amax
// below ~3e-43 (448 * 2^-150) whose quotient underflows (V / 0 would code every value as NaN or 448; with 1 the
// channel's codes are 0, off by less than its amax).
SAGE_DEVICE float v_scale(float amax) {
    const float s = __fdiv_rn(amax, E4M3_MAX);
    return s == 0.0f ? 1.0f : s;
}

// The tile's scale groups from their absmax in `gmax`: qmax/amax of each into `ginv` (for K also
// 127/amax into `ginv8`, for quantize_k's INT8 copy), and the scales of the groups that exist into
// `scales` (`scales8`). A barrier must follow before `ginv` is read.
template <bool IS_Q>
SAGE_DEVICE void tile_group_scales(int gran, int qmax, int N, int t0, i64 head, const u32* gmax, float* ginv,
                                   float* scales, float* ginv8 = nullptr, float* scales8 = nullptr) {
    const bool is_q = IS_Q;
    const GroupShape gs = is_q ? q_group_shape(gran) : k_group_shape(gran);
    const int tile_groups = (QUANT_TOKENS / gs.block) * gs.subs;
    const int total = is_q ? q_scale_groups(gran, N) : k_scale_groups(gran, N);
    const int g0 = (t0 / gs.block) * gs.subs;
    if ((int)threadIdx.x < tile_groups) {
        const int i = threadIdx.x;
        const float amax = __uint_as_float(gmax[i]);
        ginv[i] = quant_inv(amax, qmax);
        if (!IS_Q) ginv8[i] = quant_inv(amax, 127);
        if (g0 + i < total) {
            scales[head * total + g0 + i] = quant_scale(amax, qmax);
            if (scales8 != nullptr) scales8[head * total + g0 + i] = quant_scale(amax, 127);
        }
    }
}

// Quantizes the lane's rows (already smoothed and rotated) and stores the codes straight into
// `dst`, the tile's first code row in the padded global buffer: INT8 one byte per channel (row =
// DP bytes, 8 bytes per lane), INT4 two channels per byte (row = DP/2 bytes, 4 bytes per lane;
// int4.cuh). Code = clamp(rint(x * (qmax/amax)), -qmax, qmax), rint = round half to even
// (`__float2int_rn`), exactly numerics/quant.rs. `ginv` holds qmax/amax of each of the tile's
// scale groups (0 for an all-zero group, which gives code 0).
template <int DP>
SAGE_DEVICE void store_code_row(const float (&x)[8], int lr, RowLayout<DP> rl, int qmax, float inv, u8* dst) {
    int code[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) code[k] = max(-qmax, min(qmax, __float2int_rn(__fmul_rn(x[k], inv))));
    if (qmax == 7) {
        u32 w = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) w |= (u32)pack_int4_pair(code[2 * k], code[2 * k + 1]) << (8 * k);
        *(u32*)(dst + lr * (DP / 2) + 4 * rl.sub) = w;
    } else {
        u32 w[2] = {0u, 0u};
#pragma unroll
        for (int k = 0; k < 8; ++k) w[k / 4] |= ((u32)(u8)(i8)code[k]) << (8 * (k % 4));
        *(U32x2*)(dst + lr * DP + 8 * rl.sub) = U32x2{w[0], w[1]};
    }
}

// Every row of the lane: codes with `ginv` into `dst`, and, when `dst8` is set, INT8 codes with
// `ginv8` into `dst8` from the same values (quantize_k's copy for dS), row by row so that each row's
// values die after its stores.
template <int DP>
SAGE_DEVICE void store_codes(const float (&x)[RowLayout<DP>::STEPS][8], int warp, RowLayout<DP> rl, int qmax,
                             int gran, bool is_q, const float* ginv, u8* dst, const float* ginv8 = nullptr,
                             u8* dst8 = nullptr) {
#pragma unroll
    for (int s = 0; s < RowLayout<DP>::STEPS; ++s) {
        const int lr = rl.row(warp, s);
        const int g = is_q ? q_scale_group(gran, lr) : k_scale_group(gran, lr);
        store_code_row<DP>(x[s], lr, rl, qmax, ginv[g], dst);
        if (dst8 != nullptr) store_code_row<DP>(x[s], lr, rl, 127, ginv8[g], dst8);
    }
}

// Position of tile-local key k (0..15 inside a group of 16) in the FP8 V^T rows. The FP8 PV mma
// takes P's A fragment straight from the S accumulator (attn_mma.cu, "pv"): there lane 4g+t holds
// keys 2t, 2t+1, 8+2t, 9+2t of each 16 where the mma expects k = 4t..4t+3. Storing key k at
// slot 4*((k%8)/2) + (k%2) + 2*(k/8) makes the B fragment agree. Inverse (host side, to recover
// canonical [Nk, Dp] codes): slot p holds key 2*(p/4) + (p%2) + 8*((p%4)/2).
SAGE_DEVICE int v8_slot(int k) { return 4 * ((k % 8) / 2) + (k % 2) + 2 * (k / 8); }

// ---- the token sums behind km and vm: one fixed pairwise order -----------------------------------
// sum(x[0..n]) = sum(x[0..h]) + sum(x[h..n]), h the largest power of two below n, in f32, then + 0.0
// (a zero sum is +0); mean = sum / n. It is the CPU's token_mean (numerics/smooth.rs) and WGSL
// block_mean's pairwise branch: all backends get bit-identical means, so everything computed from
// them agrees too.
// (K' = K - km cancels: a mean off by its rounding error moves the K scales by several ulp on data
// with large channel means, so the order is part of the contract.) Every power-of-two-aligned block
// of tokens is one subtree, so the sums of aligned blocks (a lane's rows, a warp's, a tile's, a
// CTA's) combine into exactly that value, and a GPU is free to split the tokens that way; tokens
// past n count as +0, which can change only the sign of a zero sum.
//
// The sums of consecutive aligned blocks of equal size, pushed in order, combined as a binary
// counter: lv[k * stride] holds the sum of the last complete run of 2^k blocks (while bit k of the
// count is set). Levels are unrolled: a local array stays in registers, or lv is shared memory.
// Block i (0, 1, 2, ...) is merged with the runs its trailing one bits close.
template <int LEVELS>
SAGE_DEVICE void pairwise_push(float* lv, int stride, float x, u32 i) {
    bool done = false;
#pragma unroll
    for (int k = 0; k < LEVELS; ++k) {
        if (!done) {
            if ((i >> k) & 1u) {
                x = lv[k * stride] + x;
            } else {
                lv[k * stride] = x;
                done = true;
            }
        }
    }
}
// The sum of `count` pushed blocks: the runs from the smallest up, each added to the larger one before
// it (the blocks missing to the next power of two would only add zeros). 0 blocks: +0.
template <int LEVELS>
SAGE_DEVICE float pairwise_total(const float* lv, int stride, u32 count) {
    float acc = 0.0f;
    bool have = false;
#pragma unroll
    for (int k = 0; k < LEVELS; ++k) {
        if ((count >> k) & 1u) {
            acc = have ? lv[k * stride] + acc : lv[k * stride];
            have = true;
        }
    }
    return acc;
}

// A perfect pairwise tree over x[0..P) (P a power of two) into x[0].
template <int P>
SAGE_DEVICE void tree_reduce(float* x) {
#pragma unroll
    for (int w = 1; w < P; w *= 2) {
#pragma unroll
        for (int i = 0; i < P; i += 2 * w) x[i] = x[i] + x[i + w];
    }
}

// ---- kv_stats: km, vm and the FP8 V scales sv (Steps 1 and 7), token-parallel -------------------
// Two launches per tensor. kv_stats_blocks: CTA (i, h, b) takes tiles i*tpc .. i*tpc+tpc-1 of one
// head (tpc a power of two: an aligned block of the pairwise sum) and writes the block's channel
// sums, and with `minmax` its channel maxima and minima over real tokens, to part[b, h, i, 0..2, :].
// kv_stats_finish: one CTA per head combines the blocks in order (pairwise_push) and finishes as
// the CPU: mean = (sum + 0.0) / N; with `vscale_out`: sv[c] = v_scale(amax) where
// amax = max_n |V'[n,c]|; for V' = V - vm that is max(vmax - vm, vm - vmin) EXACTLY: f32 subtraction
// is monotonic, so the largest |fl(v - vm)| is reached at vmax or at vmin.
// (Before: one CTA per 32 channels of a head, a chain of N dependent additions in token order, the
// CPU's order then; its CTAs spent their time waiting, ~50 % of DRAM bandwidth.)
#define STATS_LEVELS 24      // kv_stats_finish's counter: up to 2^24 blocks
#define BLOCK_LEVELS 4       // kv_stats_blocks' counter: tpc up to 8

// Dynamic shared memory of kv_stats_blocks: a ring of STATS_RING staged tiles (16-bit inputs with
// 16-byte rows; f32 and other rows are read from global memory), then the warps' partial results.
#define STATS_RING 3
template <class DT>
struct StatsLayout {
    static constexpr int RING_BYTES = Staging<DT>::ON ? STATS_RING * QUANT_TOKENS * MAX_DP * 2 : 0;
    static constexpr int BYTES = RING_BYTES + 3 * QUANT_WARPS * MAX_DP * 4;
};

// The lane's rows of tile t0 (from the staged copy, or global memory) as one pairwise tree per
// channel, two rows at a time: ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)) for STEPS = 8 (rows
// past N were loaded as 0), and their maxima / minima over real tokens.
template <class DT, int DP, bool MINMAX>
SAGE_DEVICE void lane_rows_tree(const typename DT::T* base, i64 sn, int N, int D, int t0, int warp,
                                RowLayout<DP> rl, bool vec, const typename DT::T* tile, float (&sum)[8],
                                float (&mx)[8], float (&mn)[8]) {
    constexpr int PAIRS = RowLayout<DP>::STEPS / 2;
    float lv[3][8];  // a counter over the row pairs (up to 4: levels 0-2)
#pragma unroll
    for (int pr = 0; pr < PAIRS; ++pr) {
        float x[2][8];
        load_rows<DT, DP>(base, sn, N, D, t0, warp, rl, vec, tile, x, 2 * pr);
        float pair[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            pair[e] = x[0][e] + x[1][e];
            if (MINMAX) {
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    if (t0 + rl.row(warp, 2 * pr + i) < N) {
                        mx[e] = fmaxf(mx[e], x[i][e]);
                        mn[e] = fminf(mn[e], x[i][e]);
                    }
                }
            }
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) pairwise_push<3>(&lv[0][e], 8, pair[e], pr);
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) sum[e] = pairwise_total<3>(&lv[0][e], 8, PAIRS);
}

// The block's sums (a lane's rows, then the lane groups', the warps', the tiles' through
// pairwise_push) into part (sums, maxima, minima: 3 x Dp floats). Staged tiles go through a ring of
// STATS_RING copies in flight (the kernel only reads: the more bytes in flight, the closer to the
// DRAM rate).
template <class DT, int DP, bool MINMAX>
SAGE_DEVICE void kv_stats_blocks(const typename DT::T* x, i64 sb, i64 sh, i64 sn, int H, int N, int D, int tpc,
                                 float* part, unsigned char* dyn) {
    typedef typename DT::T T;
    typedef RowLayout<DP> RL;
    T* ring = (T*)dyn;
    float(*scratch)[QUANT_WARPS][MAX_DP] = (float(*)[QUANT_WARPS][MAX_DP])(dyn + StatsLayout<DT>::RING_BYTES);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const RL rl(lane);
    const T* base = x + (i64)blockIdx.z * sb + (i64)blockIdx.y * sh;
    const bool vec = rows_vectorizable<DT>(base, sn, D);
    const bool staged = Staging<DT>::ON && vec;
    const int first = blockIdx.x * tpc, last = min(first + tpc, ceil_div(N, QUANT_TOKENS));
    auto slot = [&](int t) { return ring + ((t - first) % STATS_RING) * (QUANT_TOKENS * MAX_DP); };
    if (staged) {
        for (int t = first; t < first + STATS_RING - 1; ++t) {
            if (t < last) stage_tile<DT, DP>(base, sn, N, D, t * QUANT_TOKENS, slot(t));
            else cp_async_commit();  // uniform group counts
        }
    }
    float lv[BLOCK_LEVELS];  // thread c < DP: channel c's counter over the tiles
    float cmx = neg_inf(), cmn = pos_inf();
    for (int t = first; t < last; ++t) {
        if (staged) {
            // tile t + RING - 1 into the slot tile t - 1 used (free after the barrier that ended it)
            if (t + STATS_RING - 1 < last) stage_tile<DT, DP>(base, sn, N, D, (t + STATS_RING - 1) * QUANT_TOKENS, slot(t + STATS_RING - 1));
            else cp_async_commit();
            cp_async_wait_group<STATS_RING - 1>();  // this thread's copies of tile t landed
            __syncthreads();
        }
        const int t0 = t * QUANT_TOKENS;
        float acc[8], lmx[8], lmn[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            lmx[e] = neg_inf();
            lmn[e] = pos_inf();
        }
        lane_rows_tree<DT, DP, MINMAX>(base, sn, N, D, t0, warp, rl, vec, staged ? slot(t) : nullptr, acc, lmx, lmn);
        // lane groups hold consecutive blocks of STEPS rows: xor LPR pairs 0-1 (2-3), xor 2 LPR the pairs
#pragma unroll
        for (int e = 0; e < 8; ++e) {
#pragma unroll
            for (int o = RL::LPR; o < 32; o *= 2) {
                acc[e] = acc[e] + __shfl_xor_sync(FULL_MASK, acc[e], o);
                if (MINMAX) {
                    lmx[e] = fmaxf(lmx[e], __shfl_xor_sync(FULL_MASK, lmx[e], o));
                    lmn[e] = fminf(lmn[e], __shfl_xor_sync(FULL_MASK, lmn[e], o));
                }
            }
        }
        if (rl.grp == 0) {
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                scratch[0][warp][8 * rl.sub + e] = acc[e];
                if (MINMAX) {
                    scratch[1][warp][8 * rl.sub + e] = lmx[e];
                    scratch[2][warp][8 * rl.sub + e] = lmn[e];
                }
            }
        }
        __syncthreads();
        if ((int)threadIdx.x < DP) {
            const int c = threadIdx.x;
            float w[QUANT_WARPS];
#pragma unroll
            for (int i = 0; i < QUANT_WARPS; ++i) {
                w[i] = scratch[0][i][c];
                if (MINMAX) {
                    cmx = fmaxf(cmx, scratch[1][i][c]);
                    cmn = fminf(cmn, scratch[2][i][c]);
                }
            }
            tree_reduce<QUANT_WARPS>(w);
            pairwise_push<BLOCK_LEVELS>(lv, 1, w[0], t - first);
        }
        __syncthreads();  // the scratch and tile t's slot are free again
    }
    if ((int)threadIdx.x < DP) {
        const int c = threadIdx.x;
        float* out = part + (((i64)blockIdx.z * H + blockIdx.y) * gridDim.x + blockIdx.x) * 3 * DP;
        out[c] = pairwise_total<BLOCK_LEVELS>(lv, 1, last > first ? last - first : 0);
        if (MINMAX) {
            out[DP + c] = cmx;
            out[2 * DP + c] = cmn;
        }
    }
}

SAGE_DEVICE void finish_stats(const float* part, int nb, int H, int N, int D, int Dp, int smooth, float* mean_out,
                              float* vscale_out) {
    const int c = threadIdx.x;
    if (c >= Dp) return;
    const i64 head = (i64)blockIdx.y * H + blockIdx.x;
    const float* p = part + head * nb * 3 * Dp;
    float lv[STATS_LEVELS];
    float mx = neg_inf(), mn = pos_inf();
    // eight blocks' loads in flight at a time (one by one, 32 blocks took ~15 us of latency)
    for (int i0 = 0; i0 < nb; i0 += 8) {
        float v[8], a[8], z[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) {
            const i64 o = (i64)min(i0 + u, nb - 1) * 3 * Dp + c;
            v[u] = p[o];
            a[u] = vscale_out != nullptr ? p[o + Dp] : 0.0f;
            z[u] = vscale_out != nullptr ? p[o + 2 * Dp] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) {
            if (i0 + u < nb) {
                pairwise_push<STATS_LEVELS>(lv, 1, v[u], i0 + u);
                mx = fmaxf(mx, a[u]);
                mn = fminf(mn, z[u]);
            }
        }
    }
    float mean = 0.0f, amax = 0.0f;
    if (c < D) {
        mean = __fdiv_rn(__fadd_rn(pairwise_total<STATS_LEVELS>(lv, 1, nb), 0.0f), (float)N);
        amax = smooth ? fmaxf(mx - mean, mean - mn) : fmaxf(mx, -mn);
    }
    if (mean_out != nullptr) mean_out[head * Dp + c] = smooth ? mean : 0.0f;
    if (vscale_out != nullptr) vscale_out[head * Dp + c] = v_scale(amax);
}

// ---- quantize_k: Steps 1 (subtract km), 2b, 3 ----------------------------------------------------
template <class DT, int DP, class READY>
SAGE_DEVICE void quantize_k(const typename DT::T* k, i64 sb, i64 sh, i64 sn, int H, int N, int D, const float* km,
                            int gran, int qmax, int rotate, u8* codes, float* scales, i8* codes8, float* scales8,
                            int* nonfinite, int tile, const typename DT::T* s_tile, READY x_ready) {
    typedef RowLayout<DP> RL;
    __shared__ u32 s_gmax[32];
    __shared__ float s_ginv[32];
    __shared__ float s_ginv8[32];
    const int h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const RL rl(lane);
    const int t0 = tile * QUANT_TOKENS;
    const i64 head = (i64)b * H + h;
    const typename DT::T* base = k + (i64)b * sb + (i64)h * sh;
    const bool vec = rows_vectorizable<DT>(base, sn, D);
    if (threadIdx.x < 32) s_gmax[threadIdx.x] = 0u;  // +0.0f; visible after the barrier below

    float x[RL::STEPS][8];
    load_rows<DT, DP>(base, sn, N, D, t0, warp, rl, vec, s_tile, x);
    x_ready();
    float kmv[8];
    load_channel_vec8(km + head * DP, rl.sub, 0.0f, kmv);
#pragma unroll
    for (int s = 0; s < RL::STEPS; ++s) {
        const int n = t0 + rl.row(warp, s);
        if (row_nonfinite<RL::LPR>(x[s], rl.grp) && rl.sub == 0) flag_nonfinite(nonfinite, head * N + n);
        // smooth_k: K' = K - km (padding rows stay 0: they must not enter any amax)
        if (n < N) {
#pragma unroll
            for (int e = 0; e < 8; ++e) x[s][e] = x[s][e] - kmv[e];
        }
    }
    if (rotate) {
#pragma unroll
        for (int s = 0; s < RL::STEPS; ++s) fwht_row<DP>(x[s], rl.sub);
    }
    __syncthreads();
    tile_group_amax<DP>(x, warp, rl, gran, false, s_gmax);
    __syncthreads();

    tile_group_scales<false>(gran, qmax, N, t0, head, s_gmax, s_ginv, scales, s_ginv8, scales8);
    __syncthreads();

    const int npad = round_up(N, QUANT_TOKENS);
    const int row_bytes = qmax == 7 ? DP / 2 : DP;
    // Step 2: the INT8 codes of K' for dS come from the same pass (INT4 mode with smooth_q).
    store_codes<DP>(x, warp, rl, qmax, gran, false, s_ginv, codes + (head * npad + t0) * row_bytes, s_ginv8,
                    codes8 != nullptr ? (u8*)codes8 + (head * npad + t0) * DP : nullptr);
}

// ---- quantize_q: Steps 2 (smooth_q), 2b, 3, and q.km for the log-sum-exp -----------------------
template <class DT, int DP, class READY>
SAGE_DEVICE void quantize_q(const typename DT::T* q, i64 sb, i64 sh, i64 sn, int H, int N, int D, int Hkv,
                            const float* km, float* qkm, int smooth_q, float* qm_out, int gran, int qmax,
                            int rotate, u8* codes, float* scales, int* nonfinite, int tile,
                            const typename DT::T* s_tile, READY x_ready) {
    typedef RowLayout<DP> RL;
    __shared__ float s_carry[MAX_DP];
    __shared__ float s_mean[MAX_DP];
    __shared__ u32 s_gmax[32];
    __shared__ float s_ginv[32];
    const int h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const RL rl(lane);
    const int t0 = tile * QUANT_TOKENS;
    const i64 head = (i64)b * H + h;
    const typename DT::T* base = q + (i64)b * sb + (i64)h * sh;
    const bool vec = rows_vectorizable<DT>(base, sn, D);
    if (threadIdx.x < 32) s_gmax[threadIdx.x] = 0u;  // +0.0f; visible after the barrier below

    float x[RL::STEPS][8];
    load_rows<DT, DP>(base, sn, N, D, t0, warp, rl, vec, s_tile, x);
    x_ready();
    // km of the K/V head this query head reads (GQA), for q.km with the ORIGINAL q (Step 1).
    float kmv[8];
    const int hk = h / (H / Hkv);
    load_channel_vec8(qkm != nullptr ? km + ((i64)b * Hkv + hk) * DP : nullptr, rl.sub, 0.0f, kmv);
#pragma unroll
    for (int s = 0; s < RL::STEPS; ++s) {
        const int n = t0 + rl.row(warp, s);
        if (row_nonfinite<RL::LPR>(x[s], rl.grp) && rl.sub == 0) flag_nonfinite(nonfinite, head * N + n);
        if (qkm != nullptr) {
            float d = 0.0f;
#pragma unroll
            for (int e = 0; e < 8; ++e) d += x[s][e] * kmv[e];
            d = row_sum<RL::LPR>(d);
            if (rl.sub == 0 && n < N) qkm[head * N + n] = d;
        }
    }

    if (smooth_q) {
        // qm = mean of this tile's rows (the tile IS one smooth_q block: QUANT_TOKENS ==
        // Q_SMOOTH_BLOCK), summed in row order as the CPU's channel_mean does: inside a warp each
        // lane group adds its consecutive rows and hands the running sums to the next group; warp w
        // continues the sums of warp w-1. Short serial steps, and qm is bit-identical to the CPU's.
        for (int w = 0; w < QUANT_WARPS; ++w) {
            if (warp == w) {
                float c[8];
#pragma unroll
                // Only group 0 reads the carry (the others' start is replaced by the first hand-over),
                // so the lanes that read s_carry are the ones that write it back.
                for (int e = 0; e < 8; ++e) c[e] = (w == 0 || rl.grp != 0) ? 0.0f : s_carry[8 * rl.sub + e];
#pragma unroll
                for (int g = 0; g < RL::RPI; ++g) {
                    if (rl.grp == g) {
#pragma unroll
                        for (int s = 0; s < RL::STEPS; ++s) {
                            if (t0 + rl.row(warp, s) < N) {
#pragma unroll
                                for (int e = 0; e < 8; ++e) c[e] = c[e] + x[s][e];
                            }
                        }
                    }
#pragma unroll
                    for (int e = 0; e < 8; ++e) c[e] = __shfl_sync(FULL_MASK, c[e], g * RL::LPR + rl.sub);
                }
                if (rl.grp == 0) {
#pragma unroll
                    for (int e = 0; e < 8; ++e) s_carry[8 * rl.sub + e] = c[e];
                }
            }
            __syncthreads();
        }
        if ((int)threadIdx.x < DP) {
            const int c = threadIdx.x;
            const int count = min(QUANT_TOKENS, N - t0);
            s_mean[c] = c < D ? __fdiv_rn(s_carry[c], (float)count) : 0.0f;
        }
        __syncthreads();
        float mv[8];
        load_channel_vec8(s_mean, rl.sub, 0.0f, mv);
        if (warp == 0) {
            // qm goes out rotated (it meets the rotated K' codes in dS); the rows subtract it unrotated
            // and are rotated afterwards, as in the CPU's prepare_q.
            float qmr[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) qmr[e] = mv[e];
            if (rotate) fwht_row<DP>(qmr, rl.sub);
            const i64 blocks = ceil_div(N, Q_SMOOTH_BLOCK);
            if (rl.grp == 0) {
#pragma unroll
                for (int e = 0; e < 8; ++e) qm_out[(head * blocks + tile) * DP + 8 * rl.sub + e] = qmr[e];
            }
        }
#pragma unroll
        for (int s = 0; s < RL::STEPS; ++s) {
            if (t0 + rl.row(warp, s) < N) {
#pragma unroll
                for (int e = 0; e < 8; ++e) x[s][e] = x[s][e] - mv[e];
            }
        }
    }
    if (rotate) {
#pragma unroll
        for (int s = 0; s < RL::STEPS; ++s) fwht_row<DP>(x[s], rl.sub);
    }
    __syncthreads();
    tile_group_amax<DP>(x, warp, rl, gran, true, s_gmax);
    __syncthreads();

    tile_group_scales<true>(gran, qmax, N, t0, head, s_gmax, s_ginv, scales);
    __syncthreads();

    const int npad = round_up(N, QUANT_TOKENS);
    const int row_bytes = qmax == 7 ? DP / 2 : DP;
    store_codes<DP>(x, warp, rl, qmax, gran, true, s_ginv, codes + (head * npad + t0) * row_bytes);
}

// ---- quantize_q_rows: Step 3 for Q alone, the common case ------------------------------------------
// quantize_q's body carries smooth_q, the rotation, q.km and every input type, and holds its rows as
// f32 in 128 registers: two CTAs per multiprocessor, latency-bound at half the memory bandwidth
// (kernels/NOTES.md, sessions 6-8). Without those options (16-bit input, INT8 codes, D = Dp, 16-byte
// aligned rows: the host checks, ABI.md) the codes need no f32 copy of a row: the group absmax is an
// integer max on the 16-bit patterns (non-negative floats order as unsigned integers, Inf and NaN on
// top), and each value is converted once, to be scaled and rounded. So a thread takes half a row
// as packed 16-bit values.
//
// CTA: 256 threads, `tpc` consecutive 128-token tiles of one head, each copied into shared memory
// (cp.async, two buffers: tile t+1's copy runs under tile t's work) as rows of 2 DP bytes whose
// 16-byte chunk c sits at c ^ (row % 8): eight lanes read eight rows' chunk from eight different
// banks. Warp w holds rows 32 (w % 4) .. + 31, channel half w / 4: a 32-token group block is a warp's
// rows, so per-thread subgroups (rows r % 8) and per-warp groups reduce by shuffles, then with the
// warp of the other half (w ^ 4) and, for per-block groups (128 tokens), across the tile, through
// shared memory. For finite inputs the codes, scales and the non-finite flag are quantize_q's
// exactly (the same quant_scale / quant_inv; rint(fl(x * inv)) as below). A NaN or Inf wins the
// bit-pattern max here (fmaxf ignores NaN there), so its group's scale and codes differ; the flag
// is set alike, and the call fails on it either way.
#define QROWS_THREADS 256



// Copies tile rows t0 .. t0+127 (those < N) of a head into `buf` (the swizzled layout above).
template <class DT, int DP>
SAGE_DEVICE void stage_q_rows(const typename DT::T* base, i64 sn, int N, int t0, u32 buf) {
    constexpr int CPR = DP / 8;  // 16-byte chunks per row
#pragma unroll
    for (int u = 0; u < QUANT_TOKENS * CPR / QROWS_THREADS; ++u) {
        const int i = threadIdx.x + u * QROWS_THREADS;
        const int r = i / CPR, c = i % CPR;
        if (t0 + r < N) cp_async_16(buf + r * 2 * DP + ((c ^ (r % 8)) * 16), base + (i64)(t0 + r) * sn + 8 * c);
    }
    cp_async_commit();
}

// Byte offset of 16-byte code chunk c of tile row r (DP-byte rows): XOR-swizzled so that the eight
// rows that eight lanes write at once fall in eight different banks.
template <int DP>
SAGE_DEVICE int code_slot(int r, int c) {
    return DP == 128 ? r * 128 + ((c ^ (r % 8)) * 16) : r * 64 + ((c ^ ((r / 2) % 4)) * 16);
}

// A thread's half row of codes (packed 16-bit values `x`) into the staged code tile: code chunk
// half * CH/2 + m of the row at code_slot. INF: inv is +Inf (its own copy keeps the common path lean).
template <class DT, int DP, bool INF>
SAGE_DEVICE void stage_q_codes(const u32 (&x)[DP / 16][4], float inv, unsigned char* ctile, int row, int half) {
    constexpr int CH = DP / 16;
    auto code = [&](u32 bits16) {
        const float v = DT::load((u16)bits16);
        return INF ? code_bits_inf(v) : code_bits(v, inv);
    };
#pragma unroll
    for (int m = 0; m < CH / 2; ++m) {
        u32 word[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u32 a = x[2 * m + k / 2][2 * (k % 2)], c = x[2 * m + k / 2][2 * (k % 2) + 1];
            word[k] = pack_code_bytes(code(a & 0xffffu), code(a >> 16), code(c & 0xffffu), code(c >> 16));
        }
        *(U32x4*)(ctile + code_slot<DP>(row, half * (CH / 2) + m)) = U32x4{word[0], word[1], word[2], word[3]};
    }
}

// Tile t (buffer `slot`) of a quantize_*_rows CTA's tiles [first, last): starts the copy of tile t + 1
// into the other buffer, waits for tile t, and reads the thread's CH 16-byte chunks of its half row
// (zeros past N). Returns the half row's absmax as a 16-bit pattern (sign masked: non-negative values
// order as unsigned integers, Inf and NaN on top) and flags the row when that is Inf or NaN.
template <class DT, int DP, int CH = DP / 16>
SAGE_DEVICE u32 rows_tile_in(const typename DT::T* base, i64 sn, int N, int t, int last, int slot, u32 buf0,
                             const unsigned char* smem, int row, int half, u32 (&x)[CH][4], int* nonfinite,
                             i64 head) {
    constexpr int TILE_BYTES = QUANT_TOKENS * DP * 2;
    const int t0 = t * QUANT_TOKENS;
    if (t + 1 < last) {
        stage_q_rows<DT, DP>(base, sn, N, t0 + QUANT_TOKENS, buf0 + (1 - slot) * TILE_BYTES);
        cp_async_wait_group<1>();
    } else {
        cp_async_wait_all();
    }
    __syncthreads();
    const bool valid = t0 + row < N;
    const unsigned char* rp = smem + slot * TILE_BYTES + row * 2 * DP;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
        const U32x4 v = *(const U32x4*)(rp + (((half * CH + c) ^ (row % 8)) * 16));
        x[c][0] = valid ? v.x : 0u;
        x[c][1] = valid ? v.y : 0u;
        x[c][2] = valid ? v.z : 0u;
        x[c][3] = valid ? v.w : 0u;
    }
    u32 m2 = 0u;
#pragma unroll
    for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int e = 0; e < 4; ++e) m2 = __vmaxu2(m2, x[c][e] & 0x7fff7fffu);
    const u32 amax = max_u32(m2 & 0xffffu, m2 >> 16);
    if (amax >= inf_bits16(DT())) flag_nonfinite(nonfinite, head * N + t0 + row);
    return amax;
}

template <class DT, int DP>
SAGE_DEVICE void quantize_q_rows(const typename DT::T* q, i64 sb, i64 sh, i64 sn, int H, int N, int gran,
                                 u8* codes, float* scales, int* nonfinite, int tpc, unsigned char* smem) {
    constexpr int CH = DP / 16;  // 16-byte chunks of a half row
    constexpr int TILE_BYTES = QUANT_TOKENS * DP * 2;
    const int h = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, w = tid / 32, l = tid % 32;
    const int half = w / 4, row = 32 * (w % 4) + l;
    const i64 head = (i64)b * H + h;
    const typename DT::T* base = q + (i64)b * sb + (i64)h * sh;
    const int ntiles = ceil_div(N, QUANT_TOKENS), npad = ntiles * QUANT_TOKENS;
    const int first = blockIdx.x * tpc, last = min(first + tpc, ntiles);
    const int total = q_scale_groups(gran, N);
    u32* part = (u32*)(smem + 2 * TILE_BYTES);  // each thread's half-row group max, then per warp
    u32* block_max = part + QROWS_THREADS;
    const u32 buf0 = smem_addr(smem);
    if (first < last) stage_q_rows<DT, DP>(base, sn, N, first * QUANT_TOKENS, buf0);
    for (int t = first; t < last; ++t) {
        const int t0 = t * QUANT_TOKENS;
        const int slot = (t - first) % 2;
        // rows past N are zeros: codes 0, no amax
        u32 x[CH][4];
        u32 gm = rows_tile_in<DT, DP>(base, sn, N, t, last, slot, buf0, smem, row, half, x, nonfinite, head);
        // the group's absmax: over the warp's 32-token block (qcodes.cuh), per-block groups then
        // over the tile; first with the other half of the same rows (warp w ^ 4)
        gm = q_warp_group_amax(gm, gran);
        part[tid] = gm;
        __syncthreads();
        gm = max_u32(gm, part[tid ^ 128]);
        if (gran == GRAN_PER_BLOCK) {
            if (l == 0) block_max[w] = gm;
            __syncthreads();
            gm = max_u32(max_u32(block_max[0], block_max[1]), max_u32(block_max[2], block_max[3]));
        }
        const float amax = DT::load((u16)gm);
        const int group = q_scale_group(gran, t0 + row);
        // one writer per group: lane g of a per-thread block, lane 0 of a per-warp one, thread 0 of
        // a per-block one; groups exist from the first token of their block on
        const bool writer = half == 0 && (gran == GRAN_PER_THREAD ? l < 8 : (gran == GRAN_PER_WARP ? l == 0 : w == 0 && l == 0));
        if (writer && group < total) scales[head * total + group] = quant_scale(amax, 127);
        const float inv = quant_inv(amax, 127);
        // The codes go into the tile's buffer (every thread holds its values since the barrier
        // above), then out in whole rows: a lane's own 16-byte pieces of 32 rows per store
        // instruction wrote half sectors. Code chunk c of row r sits at slot code_slot(r, c).
        unsigned char* ctile = smem + slot * TILE_BYTES;
        if (inv <= 3.40282347e38f)
            stage_q_codes<DT, DP, false>(x, inv, ctile, row, half);
        else
            stage_q_codes<DT, DP, true>(x, inv, ctile, row, half);  // bf16 only, rare
        __syncthreads();
        u8* dst = codes + (head * npad + t0) * DP;
#pragma unroll
        for (int u = 0; u < QUANT_TOKENS * DP / 16 / QROWS_THREADS; ++u) {
            const int i = tid + u * QROWS_THREADS, r = i / (DP / 16), c = i % (DP / 16);
            *(U32x4*)(dst + r * DP + 16 * c) = *(const U32x4*)(ctile + code_slot<DP>(r, c));
        }
        __syncthreads();  // the buffer is restaged two tiles on; part and block_max are reused
    }
}

// ---- quantize_k_rows: Steps 1 and 3 for K, the common case ---------------------------------------
// quantize_q_rows's layout for K (16-bit input, D = Dp, INT8 codes, no rotation; the host checks):
// half a row per thread as packed 16-bit values, two staged tiles, codes through shared memory. K'
// = K - km is an f32 subtraction (ALGORITHM.md Step 1), so the absmax takes a first pass over the
// converted values and the codes a second (km from shared memory each time: 64 more registers would
// halve the CTAs per SM). K groups are 64 tokens (two warps' rows; per-thread subgroups are the
// tokens with equal (t % 8) / 2), so the group maxima meet across four warps: the 32-row partner
// (w ^ 1) and the other half of both (w ^ 4, w ^ 5). Codes, scales and flag equal quantize_k's.
template <class DT, int DP>
SAGE_DEVICE void quantize_k_rows(const typename DT::T* k, i64 sb, i64 sh, i64 sn, int H, int N, const float* km,
                                 int gran, u8* codes, float* scales, int* nonfinite, int tpc, unsigned char* smem) {
    constexpr int CH = DP / 16;  // 16-byte chunks of a half row
    constexpr int TILE_BYTES = QUANT_TOKENS * DP * 2;
    const int h = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, w = tid / 32, l = tid % 32;
    const int half = w / 4, row = 32 * (w % 4) + l;
    const i64 head = (i64)b * H + h;
    const typename DT::T* base = k + (i64)b * sb + (i64)h * sh;
    const int ntiles = ceil_div(N, QUANT_TOKENS), npad = ntiles * QUANT_TOKENS;
    const int first = blockIdx.x * tpc, last = min(first + tpc, ntiles);
    const int total = k_scale_groups(gran, N);
    u32* part = (u32*)(smem + 2 * TILE_BYTES);  // each thread's half-row group max
    float* s_km = (float*)(part + QROWS_THREADS);
    if (tid < DP) s_km[tid] = km[head * DP + tid];  // visible after the first tile's barrier
    const float* kmh = s_km + half * (DP / 2);
    const u32 buf0 = smem_addr(smem);
    if (first < last) stage_q_rows<DT, DP>(base, sn, N, first * QUANT_TOKENS, buf0);
    for (int t = first; t < last; ++t) {
        const int t0 = t * QUANT_TOKENS;
        const int slot = (t - first) % 2;
        // rows past N stay 0 (no km subtracted): codes 0, no amax
        const bool valid = t0 + row < N;
        u32 x[CH][4];
        rows_tile_in<DT, DP>(base, sn, N, t, last, slot, buf0, smem, row, half, x, nonfinite, head);
        // K' value e (0..7) of chunk c: fl(k - km), the CPU's order; 0 on rows past N
        auto kprime = [&](int c, int e) {
            const u32 wd = x[c][e / 2];
            const float v = DT::load((u16)(e % 2 ? wd >> 16 : wd & 0xffffu));
            return valid ? __fsub_rn(v, kmh[8 * c + e]) : 0.0f;
        };
        float am = 0.0f;
#pragma unroll
        for (int c = 0; c < CH; ++c)
#pragma unroll
            for (int e = 0; e < 8; ++e) am = fmaxf(am, fabsf(kprime(c, e)));
        // the group's absmax (bit patterns of values >= 0 order as unsigned integers): per-thread
        // subgroups are lanes with equal (l % 8) / 2 (xor 1, 8, 16), 64-token groups the warp; then
        // the warps w ^ 1, w ^ 4, w ^ 5 (the group's other 32 rows and the other half)
        u32 gm = __float_as_uint(am);
        gm = max_u32(gm, __shfl_xor_sync(FULL_MASK, gm, 1));
        if (gran != GRAN_PER_THREAD) {
            gm = max_u32(gm, __shfl_xor_sync(FULL_MASK, gm, 2));
            gm = max_u32(gm, __shfl_xor_sync(FULL_MASK, gm, 4));
        }
        gm = max_u32(gm, __shfl_xor_sync(FULL_MASK, gm, 8));
        gm = max_u32(gm, __shfl_xor_sync(FULL_MASK, gm, 16));
        part[tid] = gm;
        __syncthreads();
        gm = max_u32(max_u32(gm, part[tid ^ 32]), max_u32(part[tid ^ 128], part[tid ^ 160]));
        const float amax = __uint_as_float(gm);
        const int group = k_scale_group(gran, t0 + row);
        // one writer per group: the first warp of the 64-token block, half 0; lanes 0, 2, 4, 6 for
        // per-thread subgroups, lane 0 else
        const bool writer = half == 0 && w % 2 == 0 && (gran == GRAN_PER_THREAD ? l < 8 && l % 2 == 0 : l == 0);
        if (writer && group < total) scales[head * total + group] = quant_scale(amax, 127);
        const float inv = quant_inv(amax, 127);
        unsigned char* ctile = smem + slot * TILE_BYTES;
        // `inf`: 127 / amax is +Inf (bf16 groups below 127 / FLT_MAX); called with constants, so each
        // call is its own straight-line copy
        auto stage_codes = [&](bool inf) {
            auto code = [&](int c, int e) { return inf ? code_bits_inf(kprime(c, e)) : code_bits(kprime(c, e), inv); };
#pragma unroll
            for (int m = 0; m < CH / 2; ++m) {
                u32 word[4];
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int c = 2 * m + q / 2, e0 = 4 * (q % 2);
                    word[q] = pack_code_bytes(code(c, e0), code(c, e0 + 1), code(c, e0 + 2), code(c, e0 + 3));
                }
                *(U32x4*)(ctile + code_slot<DP>(row, half * (CH / 2) + m)) = U32x4{word[0], word[1], word[2], word[3]};
            }
        };
        if (inv <= 3.40282347e38f)
            stage_codes(false);
        else
            stage_codes(true);
        __syncthreads();
        u8* dst = codes + (head * npad + t0) * DP;
#pragma unroll
        for (int u = 0; u < QUANT_TOKENS * DP / 16 / QROWS_THREADS; ++u) {
            const int i = tid + u * QROWS_THREADS, r = i / (DP / 16), c = i % (DP / 16);
            *(U32x4*)(dst + r * DP + 16 * c) = *(const U32x4*)(ctile + code_slot<DP>(r, c));
        }
        __syncthreads();  // the buffer is restaged two tiles on; part is reused
    }
}

// ---- quantize_v_e4m3 / quantize_v_f16: Step 7 ----------------------------------------------------
// The V tile goes out transposed, V^T [B, H, Dp, Npad], through shared memory: each lane writes its
// 8 channels of a key into 8 channel rows of the tile. Row c of the shared tile is stored rotated by
// rot(c) words so that the lanes of one store, which write the same key column of different
// channel rows, hit different banks; the copy-out undoes the rotation. `s_vt` is the entry point's
// shared tile (one for both DP instantiations): DP * QUANT_TOKENS bytes (FP8) or halves (f16).

// FP8: v8[n, c] = e4m3(V'[n, c] / sv[c]), bytes, key n of a 16-key group at slot v8_slot(n % 16).
// A channel row is 32 words (128 keys). Rotating row c = 8*sub + e by sub * 256/DP words spreads
// the 16 (DP = 128) or 8 (DP = 64) lanes of a lane group over distinct banks; the other lane groups
// write keys whose slots share a word with group 0's (DP = 128) or sit 2 words on (DP = 64).
template <int DP>
SAGE_DEVICE int vt8_rot(int c) { return (c / 8) * (256 / DP); }

// Two values to two E4M3 codes (`lo` in the low byte), nearest even, saturating: the hardware
// conversion where there is one (the FP8 modes run on sm_89+ only), the same rule in software else.
SAGE_DEVICE u16 e4m3_pair(float lo, float hi) {
#if __CUDA_ARCH__ >= 890
    return pack2_e4m3(lo, hi);
#else
    return (u16)(e4m3_encode(lo) | ((u16)e4m3_encode(hi) << 8));
#endif
}

template <class DT, int DP, class READY>
SAGE_DEVICE void quantize_v_e4m3(const typename DT::T* v, i64 sb, i64 sh, i64 sn, int H, int N, int D,
                                 const float* vm, const float* sv, u8* vt, int* nonfinite, u32* s_vt, int tile,
                                 const typename DT::T* s_tile, READY x_ready) {
    typedef RowLayout<DP> RL;
    const int h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const RL rl(lane);
    const int t0 = tile * QUANT_TOKENS;
    const i64 head = (i64)b * H + h;
    const typename DT::T* base = v + (i64)b * sb + (i64)h * sh;
    const bool vec = rows_vectorizable<DT>(base, sn, D);

    float vmv[8], svv[8];
    load_channel_vec8(vm != nullptr ? vm + head * DP : nullptr, rl.sub, 0.0f, vmv);
    load_channel_vec8(sv + head * DP, rl.sub, 1.0f, svv);
    // V' / sv = (V' * pre) / (sv * pre) exactly for a power of two `pre`: 2^64 for a channel whose
    // scale is below 2^-100 (values below ~1e-28, bf16/f32 only), whose reciprocal div_for_e4m3
    // needs would overflow or lose its precision; 1 otherwise. Chosen per channel (bit e of `tiny`,
    // one register rather than eight): a lane's eight channels may mix such a scale with one above
    // 2^40, where a shared factor would overflow the large channel's V * pre. With sv < 2^-100 every
    // V of the channel that differs from vm is below ~2^-67, so V * 2^64 stays finite. vm and sv are
    // scaled here once; fma(v, pre, -vm * pre) is fl(v - vm) * pre exactly.
    u32 tiny = 0u;
    float rcp[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        const float pre = svv[e] < 7.8886091e-31f ? 18446744073709551616.0f : 1.0f;  // 2^-100, 2^64
        tiny |= (pre != 1.0f ? 1u : 0u) << e;
        svv[e] = __fmul_rn(svv[e], pre);
        vmv[e] = __fmul_rn(vmv[e], pre);
        rcp[e] = __frcp_rn(svv[e]);
    }
    // Step s's row (tile-local lr, token n): the non-finite flag, then V' / sv in place.
    auto scale_row = [&](float(&xs)[8], int s) {
        const int n = t0 + rl.row(warp, s);
        if (row_nonfinite<RL::LPR>(xs, rl.grp) && rl.sub == 0) flag_nonfinite(nonfinite, head * N + n);
        // smooth_v: V' = V - vm (vm is 0 on padded channels and when smooth_v is off); V' / sv
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const float pre = (tiny >> e) & 1u ? 18446744073709551616.0f : 1.0f;
            xs[e] = n < N ? div_for_e4m3(__fmaf_rn(xs[e], pre, -vmv[e]), svv[e], rcp[e]) : 0.0f;
        }
    };
    // Keys lr and lr + 1 (s even) sit in adjacent slots (v8_slot keeps k % 2): one 16-bit store per
    // channel for the pair. Channel rows 8*sub + e are 128 bytes apart and share the rotation of
    // channel 8*sub.
    u16* s_pairs = (u16*)s_vt;
    auto store_pair = [&](const float(&xa)[8], const float(&xb)[8], int s) {
        const int lr = rl.row(warp, s);
        const int slot = (lr & ~15) | v8_slot(lr & 15);
        u16* dst = s_pairs + (8 * rl.sub * 32 + (((slot / 4) + vt8_rot<DP>(8 * rl.sub)) & 31)) * 2 + (slot % 4) / 2;
#pragma unroll
        for (int e = 0; e < 8; ++e) dst[e * 64] = e4m3_pair(xa[e], xb[e]);
    };
    if (s_tile != nullptr) {
        // Staged: two rows at a time straight from shared memory (few registers), then the next
        // tile's copy starts.
#pragma unroll
        for (int s = 0; s < RL::STEPS; s += 2) {
            float x[2][8];
            load_rows<DT, DP>(base, sn, N, D, t0, warp, rl, vec, s_tile, x, s);
            scale_row(x[0], s);
            scale_row(x[1], s + 1);
            store_pair(x[0], x[1], s);
        }
        x_ready();
    } else {
        // From global memory (f32, or rows that 16-byte loads cannot read): V_BATCH rows' loads in
        // flight at a time (all of them made ptxas spill at the 128-register bound).
        x_ready();
#pragma unroll
        for (int s0 = 0; s0 < RL::STEPS; s0 += V_BATCH) {
            float x[V_BATCH][8];
            load_rows<DT, DP>(base, sn, N, D, t0, warp, rl, vec, nullptr, x, s0);
#pragma unroll
            for (int bi = 0; bi < V_BATCH; ++bi) scale_row(x[bi], s0 + bi);
#pragma unroll
            for (int bi = 0; bi < V_BATCH; bi += 2) store_pair(x[bi], x[bi + 1], s0 + bi);
        }
    }
    __syncthreads();
    // Each channel row of the tile is 128 contiguous bytes of V^T: a warp stores one row.
    const int npad = round_up(N, QUANT_TOKENS);
    for (int i = threadIdx.x; i < DP * 32; i += QUANT_THREADS) {
        const int c = i / 32, w = i % 32;
        *(u32*)(vt + (head * DP + c) * npad + t0 + 4 * w) = s_vt[c * 32 + ((w + vt8_rot<DP>(c)) & 31)];
    }
}

// f16: f16(V'[n, c]), keys in natural order. A channel row is 64 words (two keys per word); the
// lane groups write keys 8 (DP = 128) or 4 (DP = 64) apart, i.e. 4 or 2 words on, so the rotation
// interleaves the lanes of a group with those gaps: all 32 lanes of a store hit distinct banks.
template <int DP>
SAGE_DEVICE int vt16_rot(int c) {
    constexpr int A = DP == 128 ? 4 : 2;
    const int sub = c / 8;
    return (sub % A) + 8 * (sub / A);
}

template <class DT, int DP>
SAGE_DEVICE void quantize_v_f16(const typename DT::T* v, i64 sb, i64 sh, i64 sn, int H, int N, int D,
                                const float* vm, u16* vt, int* nonfinite, u32* s_vt) {
    typedef RowLayout<DP> RL;
    const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const RL rl(lane);
    const int t0 = tile * QUANT_TOKENS;
    const i64 head = (i64)b * H + h;
    const typename DT::T* base = v + (i64)b * sb + (i64)h * sh;
    const bool vec = rows_vectorizable<DT>(base, sn, D);

    float vmv[8];
    load_channel_vec8(vm != nullptr ? vm + head * DP : nullptr, rl.sub, 0.0f, vmv);
    u16* s_halves = (u16*)s_vt;
    // Rows in batches of V_BATCH steps (each batch's loads in flight together): all rows at once
    // made ptxas spill at the 128-register bound.
    for (int s0 = 0; s0 < RL::STEPS; s0 += V_BATCH) {
        float x[V_BATCH][8];
        load_rows<DT, DP>(base, sn, N, D, t0, warp, rl, vec, nullptr, x, s0);
#pragma unroll
        for (int bi = 0; bi < V_BATCH; ++bi) {
            const int s = s0 + bi;
            const int lr = rl.row(warp, s);
            const int n = t0 + lr;
            if (row_nonfinite<RL::LPR>(x[bi], rl.grp) && rl.sub == 0) flag_nonfinite(nonfinite, head * N + n);
            // channel rows 8*sub + e are 128 halves apart and share the rotation of channel 8*sub
            u16* dst = s_halves + (8 * rl.sub * 64 + (((lr / 2) + vt16_rot<DP>(8 * rl.sub)) & 63)) * 2 + lr % 2;
#pragma unroll
            for (int e = 0; e < 8; ++e) dst[e * 128] = n < N ? f32_to_f16(x[bi][e] - vmv[e]) : (u16)0;
        }
    }
    __syncthreads();
    const int npad = round_up(N, QUANT_TOKENS);
    for (int i = threadIdx.x; i < DP * 64; i += QUANT_THREADS) {
        const int c = i / 64, w = i % 64;
        *(u32*)(vt + (head * DP + c) * npad + t0 + 2 * w) = s_vt[c * 64 + ((w + vt16_rot<DP>(c)) & 63)];
    }
}

// ---- quantize_v_cols: Step 7's scales and FP8 codes in one pass, the common case -----------------
// The FP8 V scale of a channel is its absmax over every token of the head (sv = amax / 448), so the
// general path reads V twice: kv_stats (maxima, minima) and quantize_v_e4m3. Without smooth_v (no
// mean) and for 16-bit V with D = Dp in 16-byte rows (the host checks, ABI.md) a CTA can instead
// hold CW channels of every token of one head in shared memory (N_pad * CW * 2 bytes): V is read
// once, and the codes go out as whole channel rows of V^T, which is the layout they are stored in.
// The absmax is an integer max on the 16-bit patterns with the sign masked (non-negative floats
// order as unsigned integers, Inf and NaN on top): max |v| = max(max v, -min v), kv_stats_finish's
// amax without smooth_v. The codes are quantize_v_e4m3's: the correctly rounded V / sv
// (div_for_e4m3, scaled by 2^64 where sv < 2^-100), E4M3 nearest even, saturating.
//
// Token n of the CTA's tokens is row vcol_row(n) of the staged slice, rows of 2 * CW bytes: the rows
// that the lanes of one code load read (equal key of consecutive 16-key groups) then fall in
// different banks. The swap stays inside a 16-key group, and N_pad / CL is a multiple of 16.
//
// Long heads (sm_90): a cluster of CL CTAs shares a slice, rank r staging tokens [r, r + 1) * N_pad
// / CL (a multiple of 16), so that whole sectors (CW >= 16; at CW = 8 two CTAs read each one) still
// leave room for three CTAs per multiprocessor. The ranks' maxima meet through distributed shared
// memory: one cluster barrier before the reads, and each CTA waits for the others' reads before it
// exits (its shared memory must outlive them). The host prefers CW = 32 (64-byte pieces of a row;
// NOTES.md, session 16, for CW = 64, slower).
#define VCOLS_THREADS 256

template <int CW>
SAGE_DEVICE int vcol_row(int n) {
    return CW >= 64 ? n : n ^ ((n >> 4) & (64 / CW - 1));  // 64 / CW rows of 2 CW bytes fill the 32 banks
}

template <class DT, int CW>
SAGE_DEVICE void quantize_v_cols(const typename DT::T* v, i64 sb, i64 sh, i64 sn, int H, int N, int Dp,
                                 int cl, float* sv, u8* vt, int* nonfinite, unsigned char* smem) {
    constexpr int CPT = CW / 8;     // 16-byte chunks of a token's slice
    constexpr int P = CW / 2;       // channel pairs (32-bit words) of a slice row
    constexpr int RB = 2 * CW;      // bytes per staged row
    const int h = blockIdx.y, b = blockIdx.z, ch0 = (int)(blockIdx.x / cl) * CW;
    const int rank = (int)blockIdx.x % cl;  // = %cluster_ctarank: clusters of (cl, 1, 1)
    const int tid = threadIdx.x, w = tid / 32, l = tid % 32;
    const i64 head = (i64)b * H + h;
    const int npad = round_up(N, QUANT_TOKENS);
    const int nt = npad / cl, t0 = rank * nt;  // the CTA's tokens
    const typename DT::T* base = v + (i64)b * sb + (i64)h * sh + (i64)t0 * sn + ch0;
    const u32 s0 = smem_addr(smem);
    u32* s_red = (u32*)(smem + nt * RB);  // [QUANT_WARPS][P] partial maxima, then [P] the CTA's
    // The slice in: chunk i is token t0 + i / CPT's chunk i % CPT (a thread's chunks share c = tid %
    // CPT); tokens past N are zeros (codes 0).
    for (int i = tid; i < nt * CPT; i += VCOLS_THREADS) {
        const int n = i / CPT, c = i % CPT;
        const u32 dst = s0 + vcol_row<CW>(n) * RB + 16 * c;
        if (t0 + n < N) cp_async_16(dst, base + (i64)n * sn + 8 * c);
        else *(U32x4*)(smem + (dst - s0)) = U32x4{0u, 0u, 0u, 0u};
    }
    cp_async_commit();
    cp_async_wait_all();
    // The thread's own chunks (no barrier needed: its copies landed): channel-pair maxima of |v| as
    // bit patterns, and the non-finite flag per token.
    u32 m[4] = {0u, 0u, 0u, 0u};
    for (int i = tid; i < nt * CPT; i += VCOLS_THREADS) {
        const int n = i / CPT, c = i % CPT;
        const U32x4 x = *(const U32x4*)(smem + vcol_row<CW>(n) * RB + 16 * c);
        const u32 a0 = x.x & 0x7fff7fffu, a1 = x.y & 0x7fff7fffu, a2 = x.z & 0x7fff7fffu, a3 = x.w & 0x7fff7fffu;
        const u32 cm = __vmaxu2(__vmaxu2(a0, a1), __vmaxu2(a2, a3));
        if (max_u32(cm & 0xffffu, cm >> 16) >= inf_bits16(DT())) flag_nonfinite(nonfinite, head * N + t0 + n);
        m[0] = __vmaxu2(m[0], a0);
        m[1] = __vmaxu2(m[1], a1);
        m[2] = __vmaxu2(m[2], a2);
        m[3] = __vmaxu2(m[3], a3);
    }
    // Over the lanes with the same chunk, then the warps.
#pragma unroll
    for (int e = 0; e < 4; ++e)
#pragma unroll
        for (int o = CPT; o < 32; o *= 2) m[e] = __vmaxu2(m[e], __shfl_xor_sync(FULL_MASK, m[e], o));
    if (l < CPT) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s_red[w * P + 4 * l + e] = m[e];
    }
    __syncthreads();
    if (tid < P) {
        u32 a = 0u;
#pragma unroll
        for (int i = 0; i < QUANT_WARPS; ++i) a = __vmaxu2(a, s_red[i * P + tid]);
        s_red[QUANT_WARPS * P + tid] = a;
    }
    __syncthreads();
    // Thread: channel pair p (channels ch0 + 2p, + 1), 16-key groups g = tid / P + k * (256 / P).
    const int p = tid % P;
    u32 ab = s_red[QUANT_WARPS * P + p];
    if (cl > 1) {
#if __CUDA_ARCH__ >= 900
        cluster_arrive();
        cluster_wait();  // every rank's maxima are in its shared memory
        const u32 mine = smem_addr(&s_red[QUANT_WARPS * P + p]);
        for (int r = 0; r < cl; ++r)
            if (r != rank) ab = __vmaxu2(ab, ld_cluster_u32(cluster_map(mine, (u32)r)));
        cluster_arrive();  // this thread's reads are done (waited for before the exit)
#else
        __trap();  // clusters need sm_90; the host never asks for one below
#endif
    }
    float svp[2], rcp[2], pre[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
        const float amax = DT::load((u16)(e ? ab >> 16 : ab & 0xffffu));
        const float s = v_scale(amax);
        if (tid < P && rank == 0) sv[head * Dp + ch0 + 2 * p + e] = s;
        // V / sv = (V * pre) / (sv * pre) exactly for a power of two: 2^64 where 1 / sv would
        // overflow or lose precision (sv < 2^-100); |V| <= 448 sv keeps V * pre finite
        pre[e] = s < 7.8886091e-31f ? 18446744073709551616.0f : 1.0f;
        svp[e] = __fmul_rn(s, pre[e]);
        rcp[e] = __frcp_rn(svp[e]);
    }
    for (int g = tid / P; g < nt / 16; g += VCOLS_THREADS / P) {
        u32 x[16];
#pragma unroll
        for (int j = 0; j < 16; ++j) x[j] = *(const u32*)(smem + vcol_row<CW>(16 * g + j) * RB + 4 * p);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            // key k at byte v8_slot(k) of the group (v8_slot keeps k % 2: keys k, k + 1 are one u16)
            u16 pair[8];
#pragma unroll
            for (int k = 0; k < 16; k += 2) {
                const float lo = DT::load((u16)(e ? x[k] >> 16 : x[k] & 0xffffu));
                const float hi = DT::load((u16)(e ? x[k + 1] >> 16 : x[k + 1] & 0xffffu));
                pair[v8_slot(k) / 2] = e4m3_pair(div_for_e4m3(__fmul_rn(lo, pre[e]), svp[e], rcp[e]),
                                                 div_for_e4m3(__fmul_rn(hi, pre[e]), svp[e], rcp[e]));
            }
            const U32x4 out{pair[0] | ((u32)pair[1] << 16), pair[2] | ((u32)pair[3] << 16),
                            pair[4] | ((u32)pair[5] << 16), pair[6] | ((u32)pair[7] << 16)};
            *(U32x4*)(vt + (head * Dp + ch0 + 2 * p + e) * npad + t0 + 16 * g) = out;
        }
    }
#if __CUDA_ARCH__ >= 900
    if (cl > 1) cluster_wait();
#endif
}

// ---- entry points ---------------------------------------------------------------------------------
// One set per input dtype; parameter lists and grids in ABI.md (256 threads). The kernels are
// compiled per padded head dim (Dp = 64 or 128) and picked by the uniform branch on Dp.

#define SAGE_DP_DISPATCH(CALL, DT) \
    if (Dp == 128) {               \
        CALL(DT, 128);             \
    } else {                       \
        CALL(DT, 64);              \
    }

#define SAGE_QUANT_ENTRIES(SUFFIX, DT)                                                                    \
    /* grid (ceil(ceil(N/128)/tpc), H, B): the block sums (and maxima, minima) of each tpc tiles */     \
    extern "C" __global__ void __launch_bounds__(QUANT_THREADS, 2)                                         \
        kv_stats_blocks_##SUFFIX(const DT::T* x, i64 stride_b, i64 stride_h, i64 stride_n, int H, int N,  \
                                 int D, int Dp, int minmax, int tpc, float* part) {                       \
        grid_dependency_sync();                                                                           \
        SAGE_DYNAMIC_SMEM(s_dyn);                                                                         \
        if (Dp == 128) {                                                                                  \
            if (minmax) kv_stats_blocks<DT, 128, true>(x, stride_b, stride_h, stride_n, H, N, D, tpc, part, s_dyn); \
            else kv_stats_blocks<DT, 128, false>(x, stride_b, stride_h, stride_n, H, N, D, tpc, part, s_dyn); \
        } else {                                                                                          \
            if (minmax) kv_stats_blocks<DT, 64, true>(x, stride_b, stride_h, stride_n, H, N, D, tpc, part, s_dyn); \
            else kv_stats_blocks<DT, 64, false>(x, stride_b, stride_h, stride_n, H, N, D, tpc, part, s_dyn); \
        }                                                                                                 \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(QUANT_THREADS, 2)                                         \
        quantize_k_##SUFFIX(const DT::T* k, i64 stride_b, i64 stride_h, i64 stride_n, int H, int N, int D, \
                            int Dp, const float* km, int granularity, int qmax, int rotate, u8* codes,    \
                            float* scales, i8* codes8, float* scales8, int* nonfinite, int tpc) {         \
        grid_dependency_sync();                                                                           \
        __shared__ __align__(16) DT::T s_tile[Staging<DT>::ELEMS];                                        \
        SAGE_DP_DISPATCH(SAGE_QK_CALL, DT)                                                                    \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(QUANT_THREADS, 2)                                         \
        quantize_q_##SUFFIX(const DT::T* q, i64 stride_b, i64 stride_h, i64 stride_n, int H, int N, int D, \
                            int Dp, int Hkv, const float* km, float* qkm, int smooth_q, float* qm,        \
                            int granularity, int qmax, int rotate, u8* codes, float* scales,              \
                            int* nonfinite, int tpc) {                                                    \
        grid_dependency_sync();                                                                           \
        __shared__ __align__(16) DT::T s_tile[Staging<DT>::ELEMS];                                        \
        SAGE_DP_DISPATCH(SAGE_QQ_CALL, DT)                                                                    \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(QUANT_THREADS, 2)                                         \
        quantize_v_e4m3_##SUFFIX(const DT::T* v, i64 stride_b, i64 stride_h, i64 stride_n, int H, int N,  \
                                 int D, int Dp, const float* vm, const float* sv, u8* vt, int* nonfinite,  \
                                 int tpc) {                                                               \
        grid_dependency_sync();                                                                           \
        __shared__ __align__(16) u32 s_vt[MAX_DP * QUANT_TOKENS / 4];                                     \
        __shared__ __align__(16) DT::T s_tile[Staging<DT>::ELEMS];                                        \
        SAGE_DP_DISPATCH(SAGE_QV8_CALL, DT)                                                                   \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(QUANT_THREADS, 2)                                         \
        quantize_v_f16_##SUFFIX(const DT::T* v, i64 stride_b, i64 stride_h, i64 stride_n, int H, int N,   \
                                int D, int Dp, const float* vm, u16* vt, int* nonfinite) {                \
        grid_dependency_sync();                                                                           \
        __shared__ __align__(16) u32 s_vt[MAX_DP * QUANT_TOKENS / 2];                                     \
        SAGE_DP_DISPATCH(SAGE_QV16_CALL, DT)                                                                  \
    }

// quantize_v_cols_{f16|bf16}: grid (Dp / cw * cl, H, B) in clusters of (cl, 1, 1), 256 threads,
// dynamic shared memory round_up(N, 128) / cl * 2 * cw + 4 * 9 * cw / 2 bytes, cw = 8, 16, 32 or
// 64 channels per CTA (at most Dp), cl = 1 (or 2, 4, 8, 16 on sm_90) CTAs per slice (ABI.md).
#define SAGE_VCOLS_ENTRY(SUFFIX, DT)                                                                       \
    extern "C" __global__ void __launch_bounds__(VCOLS_THREADS, 2)                                          \
        quantize_v_cols_##SUFFIX(const DT::T* v, i64 stride_b, i64 stride_h, i64 stride_n, int H, int N,    \
                                 int Dp, int cw, int cl, float* sv, u8* vt, int* nonfinite) {             \
        grid_dependency_sync();                                                                           \
        SAGE_DYNAMIC_SMEM(s_dyn);                                                                         \
        if (cw == 64)                                                                                     \
            quantize_v_cols<DT, 64>(v, stride_b, stride_h, stride_n, H, N, Dp, cl, sv, vt, nonfinite, s_dyn); \
        else if (cw == 32)                                                                                \
            quantize_v_cols<DT, 32>(v, stride_b, stride_h, stride_n, H, N, Dp, cl, sv, vt, nonfinite, s_dyn); \
        else if (cw == 16)                                                                                \
            quantize_v_cols<DT, 16>(v, stride_b, stride_h, stride_n, H, N, Dp, cl, sv, vt, nonfinite, s_dyn); \
        else                                                                                              \
            quantize_v_cols<DT, 8>(v, stride_b, stride_h, stride_n, H, N, Dp, cl, sv, vt, nonfinite, s_dyn); \
    }

// quantize_q_rows_{f16|bf16}: grid (ceil(ceil(N / 128) / tpc), H, B), 256 threads, dynamic shared
// memory 2 * 128 * 2 * Dp + 1056 bytes (ABI.md).
#define SAGE_QROWS_ENTRY(SUFFIX, DT)                                                                       \
    extern "C" __global__ void __launch_bounds__(QROWS_THREADS, 2)                                          \
        quantize_q_rows_##SUFFIX(const DT::T* q, i64 stride_b, i64 stride_h, i64 stride_n, int H, int N,    \
                                 int Dp, int granularity, u8* codes, float* scales, int* nonfinite, int tpc) { \
        grid_dependency_sync();                                                                           \
        SAGE_DYNAMIC_SMEM(s_dyn);                                                                         \
        if (Dp == 128)                                                                                    \
            quantize_q_rows<DT, 128>(q, stride_b, stride_h, stride_n, H, N, granularity, codes, scales,    \
                                     nonfinite, tpc, s_dyn);                                              \
        else                                                                                              \
            quantize_q_rows<DT, 64>(q, stride_b, stride_h, stride_n, H, N, granularity, codes, scales,     \
                                    nonfinite, tpc, s_dyn);                                               \
    }

// quantize_k_rows_{f16|bf16}: grid (ceil(ceil(N / 128) / tpc), H, B), 256 threads, dynamic shared
// memory 2 * 128 * 2 * Dp + 1024 + 4 * Dp bytes (ABI.md).
#define SAGE_KROWS_ENTRY(SUFFIX, DT)                                                                       \
    extern "C" __global__ void __launch_bounds__(QROWS_THREADS, 2)                                          \
        quantize_k_rows_##SUFFIX(const DT::T* k, i64 stride_b, i64 stride_h, i64 stride_n, int H, int N,    \
                                 int Dp, const float* km, int granularity, u8* codes, float* scales,      \
                                 int* nonfinite, int tpc) {                                               \
        grid_dependency_sync();                                                                           \
        SAGE_DYNAMIC_SMEM(s_dyn);                                                                         \
        if (Dp == 128)                                                                                    \
            quantize_k_rows<DT, 128>(k, stride_b, stride_h, stride_n, H, N, km, granularity, codes, scales, \
                                     nonfinite, tpc, s_dyn);                                              \
        else                                                                                              \
            quantize_k_rows<DT, 64>(k, stride_b, stride_h, stride_n, H, N, km, granularity, codes, scales,  \
                                    nonfinite, tpc, s_dyn);                                               \
    }

// The staged quantize_* kernels: the CTA's tiles in turn (for_each_tile), each through `FN`.
#define SAGE_TILES(DT, DPV, X, BODY)                                                                        \
    {                                                                                                     \
        const DT::T* head_base = X + (i64)blockIdx.z * stride_b + (i64)blockIdx.y * stride_h;              \
        const bool staged = Staging<DT>::ON && rows_vectorizable<DT>(head_base, stride_n, D);              \
        const DT::T* st = staged ? s_tile : nullptr;                                                      \
        for_each_tile<DT, DPV>(head_base, stride_n, N, D, tpc, staged, s_tile,                                 \
                               [&](int tile, const NextTile<DT, DPV>& x_ready) { BODY; });                                    \
    }
#define SAGE_QK_CALL(DT, DPV)                                                                                 \
    SAGE_TILES(DT, DPV, k,                                                                                \
               (quantize_k<DT, DPV>(k, stride_b, stride_h, stride_n, H, N, D, km, granularity, qmax, rotate, \
                                    codes, scales, codes8, scales8, nonfinite, tile, st, x_ready)))
#define SAGE_QQ_CALL(DT, DPV)                                                                                 \
    SAGE_TILES(DT, DPV, q,                                                                                \
               (quantize_q<DT, DPV>(q, stride_b, stride_h, stride_n, H, N, D, Hkv, km, qkm, smooth_q, qm,  \
                                    granularity, qmax, rotate, codes, scales, nonfinite, tile, st, x_ready)))
#define SAGE_QV8_CALL(DT, DPV)                                                                                \
    SAGE_TILES(DT, DPV, v,                                                                                \
               (quantize_v_e4m3<DT, DPV>(v, stride_b, stride_h, stride_n, H, N, D, vm, sv, vt, nonfinite, s_vt, \
                                         tile, st, x_ready)))
#define SAGE_QV16_CALL(DT, DPV) \
    quantize_v_f16<DT, DPV>(v, stride_b, stride_h, stride_n, H, N, D, vm, vt, nonfinite, s_vt)

// grid (H, B), block 128: the head's km (or vm) and sv from the nb blocks of kv_stats_blocks.
extern "C" __global__ void __launch_bounds__(MAX_DP)
    kv_stats_finish(const float* part, int nb, int H, int N, int D, int Dp, int smooth, float* mean_out,
                    float* vscale_out) {
    grid_dependency_sync();
    finish_stats(part, nb, H, N, D, Dp, smooth, mean_out, vscale_out);
}

#ifdef SAGE_WANT_F16
SAGE_QUANT_ENTRIES(f16, DtF16)
SAGE_QROWS_ENTRY(f16, DtF16)
SAGE_KROWS_ENTRY(f16, DtF16)
SAGE_VCOLS_ENTRY(f16, DtF16)
#endif
#ifdef SAGE_WANT_BF16
SAGE_QUANT_ENTRIES(bf16, DtBF16)
SAGE_QROWS_ENTRY(bf16, DtBF16)
SAGE_KROWS_ENTRY(bf16, DtBF16)
SAGE_VCOLS_ENTRY(bf16, DtBF16)
#endif
#ifdef SAGE_WANT_F32
SAGE_QUANT_ENTRIES(f32, DtF32)
#endif
