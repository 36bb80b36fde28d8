// attn_wgmma.cu: the attention stage of `int8-fp8` on Hopper (sm_90a), ALGORITHM.md Steps 4-7, with
// wgmma on tiles that TMA copies into shared memory. Same numerics as attn_mma.cu's INT8-FP8 kernel
// (kv_block 64, the same scale groups, folds and two-level accumulation): only the machinery differs.
//
// CTA = three warpgroups, 128 query rows of one (batch, query head):
//   producer (warpgroup 0): one thread issues the bulk tensor copies (TMA) of the Q tile once and of
//     K_j, V_j for every KV tile j into a ring of STAGES slots; each copy completes on its slot's
//     `full` mbarrier; a slot is refilled once every consumer warp has arrived on its `empty` barrier.
//     It gives its registers away (setmaxnreg) to the consumers.
//   consumers (warpgroups 1, 2): 64 query rows each. Per KV tile:
//     scores:         S = Q K_j^T by wgmma m64n64k32 s8 (Q and K_j from shared memory), int32 exact;
//                     K_j's slot is released as soon as the product is complete
//     online_softmax: dequantized with one product per score (sq * sk * sm_scale * log2 e), causal /
//                     padding mask, exp2 with 448 folded into the exponent (softmax.cuh)
//     pv:             P (e4m3, from registers, in the accumulator layout) times V_j^T by wgmma
//                     m64nDPk32 e4m3 into a FRESH f32 accumulator, then acc = acc * alpha + that:
//                     no tensor-core accumulator outlives one KV block (Step 6's two-level sum)
//   The two consumers run on the same K_j, V_j; while one does its softmax the other's wgmmas run.
// Finally O = acc / (448 l) * sv (+ vm), and the log-sum-exp, as attn_mma.cu.
//
// Operands in shared memory are K-major, swizzled (common/hopper.cuh): Q and K_j rows are DP bytes of
// INT8 codes (128-byte swizzle for DP = 128, 64-byte for DP = 64); V_j^T rows are 64 keys of E4M3
// codes (64-byte swizzle), keys permuted inside groups of 16 exactly as for mma.sync (ABI.md, "V"),
// because wgmma's register A operand has mma.m16n8k32's layout per warp.
//
// Buffers, tensor maps and launch: kernels/ABI.md ("Hopper kernel").
#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#include "common/ptx.cuh"
#include "common/dtype.cuh"
#include "common/groups.cuh"
#include "common/mask.cuh"
#include "common/softmax.cuh"
#include "common/hopper.cuh"
#endif

#ifdef SAGE_HAVE_WGMMA

#define WG_THREADS 128
#define WG_CONSUMERS 2
#define WG_CTA_THREADS (WG_THREADS * (1 + WG_CONSUMERS))
#define WG_Q_TILE (64 * WG_CONSUMERS)  // query rows per CTA
#define WG_KV_TILE 64                  // keys per tile: the kv_block of ALGORITHM.md Step 6
#define WG_STAGES 4                    // K/V ring depth
// Register split (setmaxnreg): 128 * 40 + 256 * 232 <= 64K registers of the SM.
#define WG_PRODUCER_REGS 40
#define WG_CONSUMER_REGS 232

// A 128-byte CUtensorMap, passed by value (__grid_constant__) so TMA reads it from parameter space.
struct __align__(64) TmaMap {
    u64 words[16];
};

// Shared-memory plan (bytes from a 1024-aligned base): Q | K ring | V ring | mbarriers. The host asks
// for `BYTES + 1024` of dynamic shared memory (ABI.md) and the kernel aligns the base itself.
template <int DP>
struct WgSmem {
    static constexpr int Q_BYTES = WG_Q_TILE * DP;
    static constexpr int K_BYTES = WG_KV_TILE * DP;
    static constexpr int V_BYTES = DP * WG_KV_TILE;
    static constexpr int K_OFF = Q_BYTES;
    static constexpr int V_OFF = K_OFF + WG_STAGES * K_BYTES;
    static constexpr int BAR_OFF = V_OFF + WG_STAGES * V_BYTES;
    // barriers: q_full, then k_full, k_empty, v_full, v_empty for each stage
    static constexpr int BYTES = BAR_OFF + 8 * (1 + 4 * WG_STAGES);
    // Q/K rows are DP bytes: the swizzle whose span is one row; V^T rows are 64 bytes.
    static constexpr u32 QK_SWIZZLE = DP == 128 ? 1 : 2;  // descriptor modes: 1 = 128 B, 2 = 64 B
    static constexpr u32 V_SWIZZLE = 2;
};

// f = P V for one KV block (issued, not waited for): two k32 steps of 32 keys, a fresh accumulator.
template <int DP>
SAGE_DEVICE void pv_issue(float (&f)[DP / 2], const u32 (&pf)[2][4], u32 v_tile) {
    const u64 v_desc = smem_desc(v_tile, 8 * 64, WgSmem<DP>::V_SWIZZLE);
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
        if constexpr (DP == 128)
            wgmma_e4m3_m64n128k32(f, pf[ks], v_desc + 2 * ks, ks);
        else
            wgmma_e4m3_m64n64k32(f, pf[ks], v_desc + 2 * ks, ks);
    }
    wgmma_commit();
}

// acc = acc * alpha + f: the second level of Step 6's accumulation (alpha of the block's rows g, g+8).
template <int N>
SAGE_DEVICE void merge_block(float (&o)[N], const float (&f)[N], const float (&alpha)[2]) {
#pragma unroll
    for (int i = 0; i < N; ++i) o[i] = o[i] * alpha[(i >> 1) & 1] + f[i];
}

template <int DP, class OUT>
SAGE_DEVICE void attn_wgmma(const TmaMap& q_map, const TmaMap& k_map, const TmaMap& v_map,
                            const float* __restrict__ q_scales, const float* __restrict__ k_scales,
                            const float* __restrict__ v_scales, const float* __restrict__ vm,
                            const float* __restrict__ qkm, void* __restrict__ out_ptr, i64 o_sb, i64 o_sh, i64 o_sn,
                            float* __restrict__ lse, int Hq, int Hkv, int Nq, int Nk, int D, int gran, int causal,
                            float sm_scale) {
    typedef WgSmem<DP> L;
    constexpr int NT = WG_KV_TILE / 8;  // 8-key slices of S
    constexpr int CT = DP / 8;          // 8-channel slices of O
    typedef typename OUT::T OutT;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const u32 base = (smem_addr(smem_raw) + 1023u) & ~1023u;
    const u32 s_q = base, s_k = base + L::K_OFF, s_v = base + L::V_OFF;
    const u32 q_full = base + L::BAR_OFF;
    auto k_full = [&](int s) { return q_full + 8 * (1 + s); };
    auto k_empty = [&](int s) { return q_full + 8 * (1 + WG_STAGES + s); };
    auto v_full = [&](int s) { return q_full + 8 * (1 + 2 * WG_STAGES + s); };
    auto v_empty = [&](int s) { return q_full + 8 * (1 + 3 * WG_STAGES + s); };

    const int tid = threadIdx.x;
    // The warpgroup index through a shuffle, so the compiler knows it is warp-uniform: wgmma code on a
    // path it believes divergent gets serialized (ptxas C7520).
    const int wg = __shfl_sync(FULL_MASK, tid / WG_THREADS, 0);
    // Causal: the last query tiles see the most keys; start them first.
    const int qt = gridDim.x - 1 - blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (Hq / Hkv);  // GQA
    const i64 qhead = (i64)b * Hq + h, khead = (i64)b * Hkv + hk;
    const int nq_pad = round_up(Nq, QUANT_TOKENS), nk_pad = round_up(Nk, QUANT_TOKENS);
    const bool is_causal = causal != 0;
    const int q0_cta = qt * WG_Q_TILE;
    const int cta_key_end = tile_key_end(q0_cta, WG_Q_TILE, Nq, Nk, is_causal);
    const int n_tiles = cta_key_end > 0 ? ceil_div(cta_key_end, WG_KV_TILE) : 0;

    if (tid == 0) {
        mbar_init(q_full, 1);
        for (int s = 0; s < WG_STAGES; ++s) {
            mbar_init(k_full(s), 1);
            mbar_init(v_full(s), 1);
            // every consumer warp releases a slot once it is done with it
            mbar_init(k_empty(s), 4 * WG_CONSUMERS);
            mbar_init(v_empty(s), 4 * WG_CONSUMERS);
        }
        fence_barrier_init();
    }
    __syncthreads();

    if (wg == 0) {
        // ---- producer ----
        regs_release<WG_PRODUCER_REGS>();
        if (tid == 0) {
            tma_prefetch_map(&q_map);
            tma_prefetch_map(&k_map);
            tma_prefetch_map(&v_map);
            // The Q tile: rows [q0_cta, q0_cta + 128) of the padded code buffer (always inside it).
            mbar_arrive_expect_tx(q_full, L::Q_BYTES);
            tma_load_2d(s_q, &q_map, 0, (int)(qhead * nq_pad + q0_cta), q_full);
            for (int j = 0; j < n_tiles; ++j) {
                const int s = j % WG_STAGES;
                const u32 parity = (j / WG_STAGES) & 1;
                mbar_wait(k_empty(s), parity ^ 1);
                mbar_arrive_expect_tx(k_full(s), L::K_BYTES);
                tma_load_2d(s_k + s * L::K_BYTES, &k_map, 0, (int)(khead * nk_pad + j * WG_KV_TILE), k_full(s));
                mbar_wait(v_empty(s), parity ^ 1);
                mbar_arrive_expect_tx(v_full(s), L::V_BYTES);
                tma_load_2d(s_v + s * L::V_BYTES, &v_map, j * WG_KV_TILE, (int)(khead * DP), v_full(s));
            }
        }
        return;
    }

    // ---- consumers ----
    regs_claim<WG_CONSUMER_REGS>();
    const int cw = wg - 1;
    const int wtid = tid % WG_THREADS, warp = wtid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int q0 = q0_cta + 64 * cw;
    const int row0 = q0 + warp * 16 + g, row1 = row0 + 8;  // the two rows this lane holds
    const int my_end = q0 < Nq ? tile_key_end(q0, 64, Nq, Nk, is_causal) : 0;
    const int my_tiles = my_end > 0 ? ceil_div(my_end, WG_KV_TILE) : 0;
    const float logit_scale = __fmul_rn(sm_scale, LOG2_E);

    // One Q scale per lane (rows g and g+8 of a warp's 16 share their group at every granularity),
    // with sm_scale * log2(e) folded in as attn_mma.cu does.
    const int groups_q = q_scale_groups(gran, Nq);
    const int gq = q_scale_group(gran, row0);
    const float sq = __fmul_rn(gq < groups_q ? q_scales[qhead * groups_q + gq] : 1.0f, logit_scale);
    const int groups_k = k_scale_groups(gran, Nk);
    const int ksubs = k_group_shape(gran).subs;
    const float* sk_lane = k_scales + khead * groups_k + (gran == GRAN_PER_THREAD ? t : 0);

    const u64 q_desc = smem_desc(s_q + cw * 64 * DP, 8 * DP, L::QK_SWIZZLE);

    OnlineSoftmax<NT> sm;
    sm.init(LOG2_E4M3_MAX);  // p comes out as 448 p, ready for e4m3
    float o[CT * 4];  // wgmma accumulator layout: o[4 ct + 2 r + e] = row r, channel 8 ct + 2 t + e
#pragma unroll
    for (int i = 0; i < CT * 4; ++i) o[i] = 0.0f;

    mbar_wait(q_full, 0);
    // Software pipeline inside the warpgroup: iteration j issues S_j = Q K_j^T and then P_{j-1} V_{j-1},
    // waits only for S_j, and runs the softmax of tile j while the tensor cores do P_{j-1} V_{j-1};
    // then it folds that product into acc with tile j-1's alpha and packs P_j for the next iteration.
    u32 pf[NT / 4][4];  // P_{j-1} as e4m3 A fragments (read by the wgmma in flight: not touched until it is done)
    float f[CT * 4];    // P_{j-1} V_{j-1}: the KV block's own accumulator
    float alpha_prev[2] = {1.0f, 1.0f};
    float sk_next = my_tiles > 0 ? sk_lane[0] : 0.0f;
    for (int j = 0; j < my_tiles; ++j) {
        const int s = j % WG_STAGES;
        const u32 parity = (j / WG_STAGES) & 1;
        const int sp = (j + WG_STAGES - 1) % WG_STAGES;  // tile j-1's slot
        const u32 parity_p = ((j - 1) / WG_STAGES) & 1;
        const float sk = sk_next;
        if (j + 1 < my_tiles) sk_next = sk_lane[(j + 1) * ksubs];

        int acc[NT][4];
        int(&acc_flat)[NT * 4] = reinterpret_cast<int(&)[NT * 4]>(acc);
        mbar_wait(k_full(s), parity);
        wgmma_fence();
        {
            // ---- scores (issued) ----
            const u64 k_desc = smem_desc(s_k + s * L::K_BYTES, 8 * DP, L::QK_SWIZZLE);
#pragma unroll
            for (int ks = 0; ks < DP / 32; ++ks)  // a 32-byte k-step is +2 in the 16-byte address field
                wgmma_s8_m64n64k32(acc_flat, q_desc + 2 * ks, k_desc + 2 * ks, ks);
            wgmma_commit();
        }
        if (j > 0) {
            // ---- pv of tile j-1 (issued) ----
            mbar_wait(v_full(sp), parity_p);
            pv_issue<DP>(f, pf, s_v + sp * L::V_BYTES);
            wgmma_wait<1>();  // S_j is done (groups complete in order)
        } else {
            wgmma_wait<0>();
        }
        reg_fence(acc_flat);
        __syncwarp();
        if (lane == 0) mbar_arrive(k_empty(s));

        // ---- online_softmax of tile j (overlaps P_{j-1} V_{j-1}) ----
        // Unmasked tiles take the softmax straight from the unscaled dot products (attn_mma.cu).
        const float sqk = __fmul_rn(sq, sk);
        const bool masked = tile_needs_mask(j * WG_KV_TILE, WG_KV_TILE, q0, Nq, Nk, is_causal);
        const bool fused = logit_scale > 0.0f && !masked;
        float sc[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float v = int_to_float_exact(acc[nt][e]);
                sc[nt][e] = fused ? v : __fmul_rn(v, sqk);
            }
        }
        float alpha[2];
        if (fused) {
            sm.update_scaled(sc, sqk, alpha);
        } else {
            // ---- causal_mask (and keys >= Nk) ----
            if (masked) {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int key = j * WG_KV_TILE + 8 * nt + 2 * t + (e & 1);
                        if (!key_visible(key, e < 2 ? row0 : row1, Nq, Nk, is_causal)) sc[nt][e] = neg_inf();
                    }
                }
            }
            sm.update(sc, alpha);
        }

        if (j > 0) {
            wgmma_wait<0>();
            reg_fence(f);
            __syncwarp();
            if (lane == 0) mbar_arrive(v_empty(sp));
            merge_block(o, f, alpha_prev);
        }
        p_to_e4m3_a(sc, pf);
        alpha_prev[0] = alpha[0];
        alpha_prev[1] = alpha[1];
    }
    if (my_tiles > 0) {
        // ---- pv of the last tile ----
        const int sp = (my_tiles - 1) % WG_STAGES;
        mbar_wait(v_full(sp), ((my_tiles - 1) / WG_STAGES) & 1);
        wgmma_fence();
        pv_issue<DP>(f, pf, s_v + sp * L::V_BYTES);
        wgmma_wait<0>();
        reg_fence(f);
        __syncwarp();
        if (lane == 0) mbar_arrive(v_empty(sp));
        merge_block(o, f, alpha_prev);
    }
    // Past this warpgroup's last visible key (causal): nothing to compute, but the slots are released
    // in order like any other, or the ring's phases would slip.
    for (int j = my_tiles; j < n_tiles; ++j) {
        const int s = j % WG_STAGES;
        const u32 parity = (j / WG_STAGES) & 1;
        mbar_wait(k_full(s), parity);
        if (lane == 0) mbar_arrive(k_empty(s));
        mbar_wait(v_full(s), parity);
        if (lane == 0) mbar_arrive(v_empty(s));
    }

    // ---- finalize ----
    sm.reduce_rows();
    const float* svp = v_scales + khead * DP;
    const float* vmp = vm != nullptr ? vm + khead * DP : nullptr;
    OutT* obase = (OutT*)out_ptr + (i64)b * o_sb + (i64)h * o_sh;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = r == 0 ? row0 : row1;
        if (row >= Nq) continue;
        const float l = sm.l[r];  // sums 448 p
        OutT* orow = obase + (i64)row * o_sn;
#pragma unroll
        for (int ct = 0; ct < CT; ++ct) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int c = 8 * ct + 2 * t + e;
                if (c < D) {
                    // A row that saw no key outputs 0, nothing added back (Step 5).
                    float v = 0.0f;
                    if (l != 0.0f) {
                        v = __fmul_rn(__fdiv_rn(o[4 * ct + 2 * r + e], l), svp[c]);
                        if (vmp != nullptr) v = __fadd_rn(v, vmp[c]);
                    }
                    orow[c] = OUT::store(v);
                }
            }
        }
        if (lse != nullptr && t == 0) {
            float x = sm.lse(r);
            // the logits were of q.(k - km): add sm_scale * q.km back (Step 1)
            if (qkm != nullptr && l != 0.0f) x = __fadd_rn(x, __fmul_rn(sm_scale, qkm[qhead * Nq + row]));
            lse[qhead * Nq + row] = x;
        }
    }
}

// ---- entry points ---------------------------------------------------------------------------------
// attn_int8_fp8_wgmma_hd{64|128}_{f16|bf16|f32}: sm_90a only; grid (ceil(Nq/128), Hq, B), 384
// threads, dynamic shared memory WgSmem<DP>::BYTES + 1024. Parameters: ABI.md ("Hopper kernel").
#define SAGE_WGMMA_ENTRY(NAME, DP, OUT)                                                                    \
    extern "C" __global__ void __launch_bounds__(WG_CTA_THREADS, 1)                                       \
        NAME(const __grid_constant__ TmaMap q_map, const __grid_constant__ TmaMap k_map,                  \
             const __grid_constant__ TmaMap v_map, const float* q_scales, const float* k_scales,          \
             const float* v_scales, const float* vm, const float* qkm, void* out, i64 o_stride_b,         \
             i64 o_stride_h, i64 o_stride_n, float* lse, int Hq, int Hkv, int Nq, int Nk, int D,          \
             int granularity, int causal, float sm_scale) {                                              \
        attn_wgmma<DP, OUT>(q_map, k_map, v_map, q_scales, k_scales, v_scales, vm, qkm, out, o_stride_b, \
                            o_stride_h, o_stride_n, lse, Hq, Hkv, Nq, Nk, D, granularity, causal,        \
                            sm_scale);                                                                    \
    }

#ifdef SAGE_WANT_F16
SAGE_WGMMA_ENTRY(attn_int8_fp8_wgmma_hd64_f16, 64, DtF16)
SAGE_WGMMA_ENTRY(attn_int8_fp8_wgmma_hd128_f16, 128, DtF16)
#endif
#ifdef SAGE_WANT_BF16
SAGE_WGMMA_ENTRY(attn_int8_fp8_wgmma_hd64_bf16, 64, DtBF16)
SAGE_WGMMA_ENTRY(attn_int8_fp8_wgmma_hd128_bf16, 128, DtBF16)
#endif
#ifdef SAGE_WANT_F32
SAGE_WGMMA_ENTRY(attn_int8_fp8_wgmma_hd64_f32, 64, DtF32)
SAGE_WGMMA_ENTRY(attn_int8_fp8_wgmma_hd128_f32, 128, DtF32)
#endif

#endif  // SAGE_HAVE_WGMMA
