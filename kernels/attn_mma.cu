// attn_mma.cu: the attention stage of the quantized modes with mma.sync, ALGORITHM.md Steps 4
// (scores), 5 (causal_mask), 6 (online_softmax, pv) and the finalisation of Step 7.
//
// CTA = 4 warps = 64 query rows (16 per warp), one (batch, query head); KV tiles of KV_TILE = 64
// keys, which is the declared kv_block of this backend. Per KV tile j:
//   (A) wait for K_j in shared memory; start copying V_j (cp.async)
//       [smooth_q] dS of the tile's 64 keys into shared memory
//   scores:  S = Q K_j^T with INT8 m16n8k32 or INT4 m16n8k64 mma, int32 exact; dequantized as
//            S = dot * sq * sk (+ dS), L = S * sm_scale * log2(e); causal/padding mask -> -inf
//   online_softmax: m, alpha, p = exp2(L - m), l
//   (C) wait for V_j; start copying K_{j+1}
//   (INT8-FP8 double-buffers K and V: (A) starts K_{j+1} and (C) starts V_{j+1}, each into the
//   slot its tile j-1 left, so every copy has one whole KV tile of compute to land in.)
//   pv:      FP8: p8 = e4m3(448 p); per 8-channel slice a FRESH f32 accumulator sums the tile's
//            p8 * v8 (two mma k32 steps) and is then added to acc * alpha: no mma accumulator
//            lives longer than one KV tile (the two-level accumulation of Step 6).
//            f16: f16(p) * f16(V') with m16n8k16, same structure.
// Finally O = acc / (448 l) * sv (+ vm) or acc / l (+ vm), and the log-sum-exp
// (m + log2 l) ln 2 + sm_scale * (q . km).
//
// Buffers and launch: kernels/ABI.md. Fragment layouts: common/ptx.cuh.
#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#include "common/ptx.cuh"
#include "common/dtype.cuh"
#include "common/fp8.cuh"
#include "common/groups.cuh"
#include "common/mask.cuh"
#include "common/softmax.cuh"
#include "common/epilogue.cuh"
#endif

#define ATT_THREADS 128
#define ATT_WARPS 4
#define Q_TILE 64   // query rows per CTA
#define KV_TILE 64  // keys per tile: the kv_block of ALGORITHM.md Step 6
#define S_NTILES (KV_TILE / 8)

// Shared-memory tiles are stored with rows padded by 4 words (16 bytes). A B-fragment ldmatrix
// reads 8 rows x 16 bytes per phase; with a row stride of (8k + 4) words those land in 8 distinct
// groups of 4 banks, so no bank conflicts; the padding keeps every row 16-byte aligned for cp.async.
#define ROW_PAD_WORDS 4


// O = O * alpha + P V_tile for one KV tile with the f16 mma (m16n8k16). P is the A operand in the
// S accumulator layout: the layout of S n-tiles 2ks, 2ks+1 is already the A layout (k = 2t, 2t+1
// and 2t+8, 2t+9), no permutation. `v_tile`: V^T, DP channel rows of `vrow` words (f16, keys in
// natural order). A fresh accumulator per tile: no mma accumulator outlives one KV block.
template <int CT>
SAGE_DEVICE void pv_f16_tile(float (&o)[CT][4], const u32 (&pf)[4][4], u32 v_tile, int vrow, const float (&alpha)[2],
                             int lane) {
#pragma unroll
    for (int ct = 0; ct < CT; ++ct) {
        float f[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int kp = 0; kp < 2; ++kp) {
            // 16-byte chunks 4kp..4kp+3 of the channel rows = k-steps 2kp (b0, b1), 2kp+1 (b0, b1)
            u32 vb[4];
            ldmatrix_x4(vb, v_tile + ((8 * ct + lane % 8) * vrow + (4 * kp + lane / 8) * 4) * 4);
            mma_f16(f, pf[2 * kp], vb[0], vb[1]);
            mma_f16(f, pf[2 * kp + 1], vb[2], vb[3]);
        }
        o[ct][0] = o[ct][0] * alpha[0] + f[0];
        o[ct][1] = o[ct][1] * alpha[0] + f[1];
        o[ct][2] = o[ct][2] * alpha[1] + f[2];
        o[ct][3] = o[ct][3] * alpha[1] + f[3];
    }
}

template <int QBITS, bool PV_FP8, int DP, class OUT>
SAGE_DEVICE void attn_quant(const u8* __restrict__ q_codes, const float* __restrict__ q_scales,
                            const u8* __restrict__ k_codes, const float* __restrict__ k_scales,
                            const void* __restrict__ v_data, const float* __restrict__ v_scales,
                            const float* __restrict__ vm, const float* __restrict__ qm,
                            const i8* __restrict__ k8_codes, const float* __restrict__ k8_scales,
                            const float* __restrict__ qkm, void* __restrict__ out_ptr, i64 o_sb, i64 o_sh,
                            i64 o_sn, float* __restrict__ lse, int Hq, int Hkv, int Nq, int Nk, int D, int gran,
                            int causal, float sm_scale) {
    // A Q/K code row is DP * QBITS bits = W 32-bit words; one mma k-step consumes 8 words of it
    // (32 INT8 or 64 INT4 codes) with the same word layout (common/ptx.cuh).
    constexpr int W = DP * QBITS / 32;
    constexpr int KSTEPS = W / 8;
    constexpr int KROW = W + ROW_PAD_WORDS;
    // INT8 copy of K' for dS (INT4 mode): DP bytes per key.
    constexpr int K8W = DP / 4;
    constexpr int K8ROW = K8W + ROW_PAD_WORDS;
    // V^T tile: DP rows (channels) of KV_TILE keys, 1 byte (e4m3) or 2 bytes (f16) each.
    constexpr int VW = PV_FP8 ? KV_TILE / 4 : KV_TILE / 2;
    constexpr int VROW = VW + ROW_PAD_WORDS;
    constexpr int CT = DP / 8;  // 8-channel slices of O
    constexpr int NT = S_NTILES;
    typedef typename OUT::T OutT;
    // INT8-FP8: K and V tiles are double-buffered (39.7 KiB for Dp = 128, under the 48 KiB static
    // limit), so each tile's copy is issued one whole KV tile ahead of its use. The other modes
    // (f16 V^T is twice as large; INT4 carries an INT8 twin of K) keep one buffer of each, where K_{j+1}
    // overlaps only the pv of tile j and V_j only the scores of tile j.
    constexpr bool DB = QBITS == 8 && PV_FP8;
    constexpr int STAGES = DB ? 2 : 1;
    constexpr int K_STAGE_BYTES = KV_TILE * KROW * 4, V_STAGE_BYTES = DP * VROW * 4;

    __shared__ __align__(16) u32 s_k[STAGES * KV_TILE * KROW];
    __shared__ __align__(16) u32 s_v[STAGES * DP * VROW];
    __shared__ __align__(16) u32 s_k8[QBITS == 4 ? KV_TILE * K8ROW : 4];
    __shared__ float s_qm[DP];
    __shared__ float s_ds[KV_TILE];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    // Causal: the last query tiles see the most keys; start them first.
    const int qt = gridDim.x - 1 - blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (Hq / Hkv);  // GQA
    const i64 qhead = (i64)b * Hq + h, khead = (i64)b * Hkv + hk;
    const int nq_pad = round_up(Nq, QUANT_TOKENS), nk_pad = round_up(Nk, QUANT_TOKENS);
    const int q0 = qt * Q_TILE;
    const int row0 = q0 + warp * 16 + g, row1 = row0 + 8;  // the two rows this lane holds
    const bool is_causal = causal != 0;
    const bool smooth = qm != nullptr;
    const float logit_scale = __fmul_rn(sm_scale, LOG2_E);

    // Q fragments, kept in registers for the whole KV loop. Rows up to nq_pad exist (zero codes).
    u32 qf[KSTEPS][4];
    {
        const u32* qw = (const u32*)q_codes + qhead * nq_pad * W;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
            qf[ks][0] = qw[(i64)row0 * W + 8 * ks + t];
            qf[ks][1] = qw[(i64)row1 * W + 8 * ks + t];
            qf[ks][2] = qw[(i64)row0 * W + 8 * ks + 4 + t];
            qf[ks][3] = qw[(i64)row1 * W + 8 * ks + 4 + t];
        }
    }
    // One Q scale per lane: rows g and g+8 of a 16-row warp slice are in the same group for every
    // granularity (same 32-row block, same r % 8). Padding rows past the last group use 1.
    const int groups_q = q_scale_groups(gran, Nq);
    const int gq = q_scale_group(gran, row0);
    // sm_scale * log2(e) is folded into the Q scale (ALGORITHM.md Step 3 allows it): one multiply
    // per score fewer.
    const float sq = __fmul_rn(gq < groups_q ? q_scales[qhead * groups_q + gq] : 1.0f, logit_scale);
    const int groups_k = k_scale_groups(gran, Nk);
    const int ksubs = k_group_shape(gran).subs;

    if (smooth) {
        // qm of this tile's smooth_q block (Q_TILE divides Q_SMOOTH_BLOCK).
        const i64 blocks = ceil_div(Nq, Q_SMOOTH_BLOCK);
        for (int c = tid; c < DP; c += ATT_THREADS) s_qm[c] = qm[(qhead * blocks + q0 / Q_SMOOTH_BLOCK) * DP + c];
    }

    const u32* kw = (const u32*)k_codes + khead * nk_pad * W;
    const u32* k8w = (const u32*)k8_codes + khead * nk_pad * K8W;
    const int v_row_words = nk_pad * (PV_FP8 ? 1 : 2) / 4;
    const u32* vw = (const u32*)v_data + khead * DP * v_row_words;
    const u32 s_k_base = smem_addr(s_k), s_v_base = smem_addr(s_v);

    const int key_end = tile_key_end(q0, Q_TILE, Nq, Nk, is_causal);
    const int n_tiles = key_end > 0 ? ceil_div(key_end, KV_TILE) : 0;

    // Tile copies: chunk i = tid + ATT_THREADS * u of a tile is row i / CH, 16-byte column i % CH.
    // ATT_THREADS is a multiple of CH, so a thread's column never changes and its rows step by
    // ATT_THREADS / CH: a tile's copy is one address computation and unrolled constant offsets (the
    // per-chunk division and 64-bit arithmetic of a plain loop were ~15 % of the loop's instructions).
    // The thread's offsets are recomputed per tile from tid rather than kept: at Dp = 128 the
    // kernel has no registers to spare.
    constexpr int KCH = W / 4, K_PER = KV_TILE * KCH / ATT_THREADS, K_ROWS_STEP = ATT_THREADS / KCH;
    constexpr int VCH = VW / 4, V_PER = DP * VCH / ATT_THREADS, V_ROWS_STEP = ATT_THREADS / VCH;
    static_assert(K_PER * ATT_THREADS == KV_TILE * KCH && V_PER * ATT_THREADS == DP * VCH, "whole copies");

    // The K tile (and its INT8 twin) is a contiguous block of the padded code buffer.
    auto load_k = [&](int j, int slot) {
        const int r = tid / KCH, ch = tid % KCH;
        const u32* src = kw + (i64)j * KV_TILE * W + r * W + ch * 4;
        const u32 dst = s_k_base + slot * K_STAGE_BYTES + (r * KROW + ch * 4) * 4;
#pragma unroll
        for (int u = 0; u < K_PER; ++u) cp_async_16(dst + u * K_ROWS_STEP * KROW * 4, src + u * K_ROWS_STEP * W);
        if (QBITS == 4 && smooth) {
            const u32* src8 = k8w + (i64)j * KV_TILE * K8W;
            for (int i = tid; i < KV_TILE * (K8W / 4); i += ATT_THREADS) {
                const int r = i / (K8W / 4), ch = i % (K8W / 4);
                cp_async_16(smem_addr(s_k8) + (r * K8ROW + ch * 4) * 4, src8 + r * K8W + ch * 4);
            }
        }
    };
    // V^T: DP rows of the padded [Dp, Npad] matrix, columns [64j, 64j + 64).
    auto load_v = [&](int j, int slot) {
        const int c = tid / VCH, ch = tid % VCH;
        const u32* src = vw + (i64)c * v_row_words + j * VW + ch * 4;
        const u32 dst = s_v_base + slot * V_STAGE_BYTES + (c * VROW + ch * 4) * 4;
        // Not unrolled: issued where P and the accumulators are live, one address at a time.
#pragma unroll 1
        for (int u = 0; u < V_PER; ++u) cp_async_16(dst + u * V_ROWS_STEP * VROW * 4, src + (i64)u * V_ROWS_STEP * v_row_words);
    };
    // The K scale of tile j for this lane (one per lane for every granularity).
    const float* sk_lane = k_scales + khead * groups_k + (gran == GRAN_PER_THREAD ? t : 0);
    auto load_sk = [&](int j) { return sk_lane[j * ksubs]; };
    // (C): V_j has landed and every warp is done with K_j (and dS); start the next copy. DB: pending
    // are V_j then K_{j+1}; V_{j+1} goes into the slot V_{j-1} left (free since (A) of tile j).
    // Single buffer: K_{j+1} into the only K slot. Empty groups are committed on the last tile so
    // the wait_group counts stay uniform.
    auto stage_c = [&](int j, int slot) {
        if (DB) {
            cp_async_wait_group<1>();
            __syncthreads();
            if (j + 1 < n_tiles) load_v(j + 1, slot ^ 1);
            cp_async_commit();
        } else {
            cp_async_wait_all();
            __syncthreads();
            if (j + 1 < n_tiles) {
                load_k(j + 1, 0);
                cp_async_commit();
            }
        }
    };

    OnlineSoftmax<NT> sm;
    sm.init(PV_FP8 ? LOG2_E4M3_MAX : 0.0f);  // FP8: p comes out as 448 p, ready for e4m3
    float o[CT][4];
#pragma unroll
    for (int ct = 0; ct < CT; ++ct) o[ct][0] = o[ct][1] = o[ct][2] = o[ct][3] = 0.0f;

    if (n_tiles > 0) {
        load_k(0, 0);
        cp_async_commit();
        if (DB) {
            load_v(0, 0);
            cp_async_commit();
        }
    }
    float sk_next = DB && n_tiles > 0 ? load_sk(0) : 0.0f;
    for (int j = 0; j < n_tiles; ++j) {
        const int slot = DB ? (j & 1) : 0;
        const u32 k_tile = s_k_base + slot * K_STAGE_BYTES, v_tile = s_v_base + slot * V_STAGE_BYTES;
        // DB: the K scale is fetched one tile ahead, so its global-load latency is off the scores'
        // path (a load placed after the ldmatrix/mma asm cannot be moved above them). The
        // single-buffer modes load it where it is used, as before (moving it tipped the INT8-FP16
        // Dp = 128 kernel into spills).
        const float sk_pre = sk_next;
        if (DB && j + 1 < n_tiles) sk_next = load_sk(j + 1);
        if (DB) {
            cp_async_wait_group<1>();  // pending were K_j, V_j: K_j landed
            __syncthreads();  // (A): K_j landed for everyone; every warp is done with K_{j-1}, V_{j-1}
            if (j + 1 < n_tiles) load_k(j + 1, slot ^ 1);
            cp_async_commit();
        } else {
            cp_async_wait_all();
            __syncthreads();  // (A): K_j landed for everyone; every warp is done with V_{j-1}
            load_v(j, 0);
            cp_async_commit();
        }

        if (smooth) {
            // dS[n] = sum_d qm[d] * c8k[n, d] * s8k(n) (Step 2), for the 64 keys of this tile: warp w
            // takes keys 16w..16w+15, two lanes per key, half of the channels each.
            const u32* k8s = QBITS == 8 ? s_k + slot * (KV_TILE * KROW) : s_k8;  // INT8: the K codes are the INT8 codes
            constexpr int K8S = QBITS == 8 ? KROW : K8ROW;
            constexpr int HALF = DP / 8;  // words per half row
            const int key = warp * 16 + lane / 2, half = lane % 2;
            float acc = 0.0f;
#pragma unroll
            for (int i = 0; i < HALF; ++i) {
                const u32 wd = k8s[key * K8S + half * HALF + i];
                const float* m = s_qm + (half * HALF + i) * 4;
                acc += m[0] * (float)(i8)(wd & 0xff) + m[1] * (float)(i8)((wd >> 8) & 0xff) +
                       m[2] * (float)(i8)((wd >> 16) & 0xff) + m[3] * (float)(i8)(wd >> 24);
            }
            acc += __shfl_xor_sync(FULL_MASK, acc, 1);
            if (half == 0) {
                const int n = j * KV_TILE + key;
                float ds = 0.0f;
                if (n < Nk) ds = acc * k8_scales[khead * groups_k + j * ksubs + k_sub_group(gran, key)];
                s_ds[key] = __fmul_rn(ds, logit_scale);  // in base-2 logits, like sq
            }
            __syncthreads();  // (B)
        }

        // ---- scores ----
        float s[NT][4];
        float sqk;
        // Unmasked tiles without dS (most of them) take the softmax straight from the unscaled dot
        // products: sqk > 0, so the row max of dot * sqk is fl(max dot * sqk), and each logit's
        // product folds into the exponent's subtraction (one FMA; rounding-level, as exp2.approx).
        // (INT8-FP8 only: in the INT8-FP16 kernel the second path made ptxas spill.)
        const bool fused = PV_FP8 && QBITS == 8 && !smooth && logit_scale > 0.0f &&
                           !tile_needs_mask(j * KV_TILE, KV_TILE, q0, Nq, Nk, is_causal);
        {
            // The accumulators start at DOT_BIAS_BITS (the first k-step's C operand), so they end as
            // biased dot products (softmax.cuh): no zeroing and no int -> float conversion.
            int acc[NT][4];
#pragma unroll
            for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
                for (int jp = 0; jp < NT / 2; ++jp) {
                    // matrices: (n-tile 2jp, words 8ks..+3), (2jp, 8ks+4..+7), (2jp+1, ...), (2jp+1, ...)
                    const int key = 16 * jp + (lane / 16) * 8 + (lane % 8);
                    u32 bf[4];
                    ldmatrix_x4(bf, k_tile + (key * KROW + 8 * ks + ((lane / 8) % 2) * 4) * 4);
                    if (QBITS == 8 && ks == 0) {
                        mma_s8_from(acc[2 * jp], qf[ks], bf[0], bf[1], DOT_BIAS_BITS);
                        mma_s8_from(acc[2 * jp + 1], qf[ks], bf[2], bf[3], DOT_BIAS_BITS);
                    } else if (QBITS == 8) {
                        mma_s8(acc[2 * jp], qf[ks], bf[0], bf[1]);
                        mma_s8(acc[2 * jp + 1], qf[ks], bf[2], bf[3]);
                    } else if (ks == 0) {
                        mma_s4_from(acc[2 * jp], qf[ks], bf[0], bf[1], DOT_BIAS_BITS);
                        mma_s4_from(acc[2 * jp + 1], qf[ks], bf[2], bf[3], DOT_BIAS_BITS);
                    } else {
                        mma_s4(acc[2 * jp], qf[ks], bf[0], bf[1]);
                        mma_s4(acc[2 * jp + 1], qf[ks], bf[2], bf[3]);
                    }
                }
            }
            const float sk = DB ? sk_pre : load_sk(j);
            // Dequantize with one product per score: dot * (sq' * sk) (+ dS'), sq' = sq * sm_scale *
            // log2(e) (dS' likewise). The CPU's ((dot * sq) * sk) * sm_scale * log2(e) rounds three
            // times instead of twice: a rounding-level difference (ALGORITHM.md Step 3 allows the
            // fold). The _rn intrinsics keep the compiler from contracting these into FMAs.
            sqk = __fmul_rn(sq, sk);
            if (fused) {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[nt][e] = unbias_dot(__int_as_float(acc[nt][e]));
            } else {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float v = __fmul_rn(unbias_dot(__int_as_float(acc[nt][e])), sqk);
                        if (smooth) v = __fadd_rn(v, s_ds[8 * nt + 2 * t + (e & 1)]);
                        s[nt][e] = v;
                    }
                }
            }
        }
        // ---- online_softmax: s becomes p ----
        float alpha[2];
        if (fused) {
            sm.update_scaled(s, sqk, alpha);
        } else {
            // ---- causal_mask (and keys >= Nk) ----
            if (tile_needs_mask(j * KV_TILE, KV_TILE, q0, Nq, Nk, is_causal))
                mask_tile(s, j * KV_TILE, t, row0, row1, Nq, Nk, is_causal);
            sm.update(s, alpha);
        }

        // ---- pv ----
        if constexpr (PV_FP8) {
#if __CUDA_ARCH__ >= 890
            // P as the A operand of m16n8k32 e4m3, straight from the accumulator layout (softmax.cuh).
            u32 pf[2][4];
            p_to_e4m3_a(s, pf);
            stage_c(j, slot);  // (C): V_j landed; every warp is done with K_j and dS
#if SAGE_E4M3_MMA_EXPANDED
            // sm_90 (to sm_11x) has no e4m3 mma.sync datapath: ptxas expands each m16n8k32 e4m3 into operand
            // conversions, two f16 HMMAs and f32 adds of their results (128 FADDs per warp and tile
            // at Dp = 128). Converting here and chaining the HMMAs through one accumulator gives the
            // same exact products (every E4M3 value is an f16 value) without the adds. Register i of
            // an e4m3 fragment holds k = 4t..4t+3 (softmax.cuh); its halves lo = {4t, 4t+1} and
            // hi = {4t+2, 4t+3} go where m16n8k16 expects k-words t and t+4, for A and B alike, so
            // the products pair the same keys.
            u32 ph[2][2][4];  // [k32 step][half of it][m16n8k16 A register]
#pragma unroll
            for (int ks = 0; ks < 2; ++ks) {
#pragma unroll
                for (int hf = 0; hf < 2; ++hf) {
                    e4m3x4_to_f16x2x2(pf[ks][2 * hf], ph[ks][hf][0], ph[ks][hf][2]);
                    e4m3x4_to_f16x2x2(pf[ks][2 * hf + 1], ph[ks][hf][1], ph[ks][hf][3]);
                }
            }
#endif
#pragma unroll
            for (int ct = 0; ct < CT; ++ct) {
                // channels 8ct..8ct+7: matrices = word groups 0-3, 4-7 (k-step 0), 8-11, 12-15 (k-step 1)
                u32 vb[4];
                ldmatrix_x4(vb, v_tile + ((8 * ct + lane % 8) * VROW + (lane / 8) * 4) * 4);
                float f[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // this tile's own accumulator
#if SAGE_E4M3_MMA_EXPANDED
#pragma unroll
                for (int i = 0; i < 4; ++i) {  // vb[i]: k32 step i / 2, its half i % 2
                    u32 b0, b1;
                    e4m3x4_to_f16x2x2(vb[i], b0, b1);
                    mma_f16(f, ph[i / 2][i % 2], b0, b1);
                }
#else
                mma_e4m3(f, pf[0], vb[0], vb[1]);
                mma_e4m3(f, pf[1], vb[2], vb[3]);
#endif
                o[ct][0] = o[ct][0] * alpha[0] + f[0];
                o[ct][1] = o[ct][1] * alpha[0] + f[1];
                o[ct][2] = o[ct][2] * alpha[1] + f[2];
                o[ct][3] = o[ct][3] * alpha[1] + f[3];
            }
#else
            __trap();  // FP8 variants are only compiled for sm_89+ (ABI.md)
#endif
        } else {
            // P as the A operand of m16n8k16 f16 (see pv_f16_tile)
            u32 pf[4][4];
#pragma unroll
            for (int ks = 0; ks < 4; ++ks) {
                pf[ks][0] = pack_f16x2(s[2 * ks][0], s[2 * ks][1]);
                pf[ks][1] = pack_f16x2(s[2 * ks][2], s[2 * ks][3]);
                pf[ks][2] = pack_f16x2(s[2 * ks + 1][0], s[2 * ks + 1][1]);
                pf[ks][3] = pack_f16x2(s[2 * ks + 1][2], s[2 * ks + 1][3]);
            }
            stage_c(j, slot);  // (C)
            pv_f16_tile<CT>(o, pf, v_tile, VROW, alpha, lane);
        }
    }

    // ---- finalize ----
    sm.reduce_rows();
    const float* svp = v_scales + khead * DP;
    const float* vmp = vm != nullptr ? vm + khead * DP : nullptr;
    OutT* obase = (OutT*)out_ptr + (i64)b * o_sb + (i64)h * o_sh;
    store_rows<OUT, CT, PV_FP8, false>(reinterpret_cast<const float(&)[CT * 4]>(o), sm, svp, vmp, obase, o_sn, row0,
                                       row1, t, Nq, D, lse, qkm, qhead, sm_scale);
}

// ---- entry points ---------------------------------------------------------------------------------
// attn_{int8|int4}_{fp8|fp16}_hd{64|128}_{f16|bf16|f32}: grid (ceil(Nq/64), Hq, B), 128 threads,
// static shared memory only. Parameters: ABI.md.

// LB: the launch bounds. INT8-FP8 (the main mode) asks for 3 CTAs (12 warps) per SM, i.e. <= 168
// registers (no spills, check_kernels.py) instead of 255 (2 CTAs); the other modes keep the plain
// bound (a minBlocks of 1 changes ptxas's choices and made INT8-FP16 Dp = 128 spill).
#define SAGE_LB_DEFAULT __launch_bounds__(ATT_THREADS)
#if SAGE_E4M3_MMA_EXPANDED
#define SAGE_LB_3CTA __launch_bounds__(ATT_THREADS, 3)
#else
// sm_89 (and sm_120, with the same QMMA path): ptxas spills a few bytes at 168 registers; keep 2
// CTAs per SM there.
#define SAGE_LB_3CTA __launch_bounds__(ATT_THREADS)
#endif

#define SAGE_ATTN_ENTRY(NAME, QBITS, PV_FP8, DP, OUT, LB)                                                 \
    extern "C" __global__ void LB                                                                         \
        NAME(const u8* q_codes, const float* q_scales, const u8* k_codes, const float* k_scales,          \
             const void* v_codes, const float* v_scales, const float* vm, const float* qm,               \
             const i8* k8_codes, const float* k8_scales, const float* qkm, void* out, i64 o_stride_b,     \
             i64 o_stride_h, i64 o_stride_n, float* lse, int Hq, int Hkv, int Nq, int Nk, int D,          \
             int granularity, int causal, float sm_scale) {                                              \
        attn_quant<QBITS, PV_FP8, DP, OUT>(q_codes, q_scales, k_codes, k_scales, v_codes, v_scales, vm,  \
                                           qm, k8_codes, k8_scales, qkm, out, o_stride_b, o_stride_h,    \
                                           o_stride_n, lse, Hq, Hkv, Nq, Nk, D, granularity, causal,     \
                                           sm_scale);                                                    \
    }

#ifdef SAGE_WANT_F16
#define SAGE_ATTN_F16(PREFIX, QBITS, PV_FP8, DP, LB) SAGE_ATTN_ENTRY(PREFIX##_f16, QBITS, PV_FP8, DP, DtF16, LB)
#else
#define SAGE_ATTN_F16(PREFIX, QBITS, PV_FP8, DP, LB)
#endif
#ifdef SAGE_WANT_BF16
#define SAGE_ATTN_BF16(PREFIX, QBITS, PV_FP8, DP, LB) SAGE_ATTN_ENTRY(PREFIX##_bf16, QBITS, PV_FP8, DP, DtBF16, LB)
#else
#define SAGE_ATTN_BF16(PREFIX, QBITS, PV_FP8, DP, LB)
#endif
#ifdef SAGE_WANT_F32
#define SAGE_ATTN_F32(PREFIX, QBITS, PV_FP8, DP, LB) SAGE_ATTN_ENTRY(PREFIX##_f32, QBITS, PV_FP8, DP, DtF32, LB)
#else
#define SAGE_ATTN_F32(PREFIX, QBITS, PV_FP8, DP, LB)
#endif
#define SAGE_ATTN_DTYPES(PREFIX, QBITS, PV_FP8, DP, LB) \
    SAGE_ATTN_F16(PREFIX, QBITS, PV_FP8, DP, LB)        \
    SAGE_ATTN_BF16(PREFIX, QBITS, PV_FP8, DP, LB)       \
    SAGE_ATTN_F32(PREFIX, QBITS, PV_FP8, DP, LB)

// int8-fp16 (SageAttention1-style): every architecture (sm_80+).
SAGE_ATTN_DTYPES(attn_int8_fp16_hd64, 8, false, 64, SAGE_LB_DEFAULT)
SAGE_ATTN_DTYPES(attn_int8_fp16_hd128, 8, false, 128, SAGE_LB_DEFAULT)

#if __CUDA_ARCH__ >= 890
// FP8 PV needs the e4m3 mma of sm_89+. int4-fp8 is correct on sm_90 but the s4 mma is emulated there.
SAGE_ATTN_DTYPES(attn_int8_fp8_hd64, 8, true, 64, SAGE_LB_DEFAULT)
SAGE_ATTN_DTYPES(attn_int8_fp8_hd128, 8, true, 128, SAGE_LB_3CTA)
SAGE_ATTN_DTYPES(attn_int4_fp8_hd64, 4, true, 64, SAGE_LB_DEFAULT)
SAGE_ATTN_DTYPES(attn_int4_fp8_hd128, 4, true, 128, SAGE_LB_DEFAULT)
#endif
