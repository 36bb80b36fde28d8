// attn_exact.cu: the `exact` mode (ALGORITHM.md, Modes): flash attention straight from the inputs,
// no smoothing, no quantization, the online softmax of Step 6 over KV tiles of 64 (f16/bf16) or 32
// (f32) keys, f32 accumulation. NaN/Inf in the inputs propagate (no checks).
//
// - f16 / bf16 inputs: m16n8k16 mma in the input type with f32 accumulators, for Q K^T and for P V,
//   P rounded to the input type (the row sum l is of the unrounded p); for bf16, P V is computed as
//   P_hi V + P_lo V with P_hi = bf16(p), P_lo = bf16(p - P_hi) (dtype.cuh, SPLIT_P). Same CTA shape and pipeline
//   as attn_mma.cu: 4 warps x 16 query rows, K_{j+1} and V_j copied while the other is used.
// - f32 inputs: a plain CUDA-core kernel, all f32: 4 warps x 4 query rows; lane l computes the score
//   of key l of a 32-key tile, then accumulates channels l, l+32, l+64, l+96 of P V.
//
// Buffers and launch: kernels/ABI.md.
#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#include "common/ptx.cuh"
#include "common/dtype.cuh"
#include "common/mask.cuh"
#include "common/softmax.cuh"
#endif

#define EX_THREADS 128
#define EX_Q_TILE 64
#define EX_KV_TILE 64
#define EX_NTILES (EX_KV_TILE / 8)

// ---- f16 / bf16: tensor cores ----------------------------------------------------------------------

// Copies rows [key0, key0 + EX_KV_TILE) x DP channels of one head of a strided input into a shared
// tile [EX_KV_TILE][DP + 8 halves]; rows >= n and channels >= d read as 0 (V must be 0 there: p = 0
// times a NaN garbage value would still be NaN). `vec`: D == DP and 16-byte aligned rows, so whole
// 16-byte chunks can go by cp.async; otherwise element by element.
template <int DP>
SAGE_DEVICE void load_tile_16bit(u32* s, const u16* head, i64 sn, int key0, int n, int d, bool vec) {
    constexpr int CHUNKS = DP / 8;  // 16-byte chunks per row
    constexpr int ROWW = DP / 2 + 4;
    for (int i = threadIdx.x; i < EX_KV_TILE * CHUNKS; i += EX_THREADS) {
        const int r = i / CHUNKS, ch = i % CHUNKS;
        const int key = key0 + r;
        u32* dst = s + r * ROWW + ch * 4;
        if (key < n && vec) {
            cp_async_16(smem_addr(dst), head + (i64)key * sn + ch * 8);
        } else {
            u32 w[4] = {0u, 0u, 0u, 0u};
            if (key < n) {
                const u16* src = head + (i64)key * sn;
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    const int c = ch * 8 + e;
                    if (c < d) w[e / 2] |= (u32)src[c] << (16 * (e % 2));
                }
            }
            *(U32x4*)dst = U32x4{w[0], w[1], w[2], w[3]};
        }
    }
}

template <int DP, class DT>
SAGE_DEVICE void attn_exact_mma(const u16* __restrict__ q, i64 q_sb, i64 q_sh, i64 q_sn, const u16* __restrict__ k,
                                i64 k_sb, i64 k_sh, i64 k_sn, const u16* __restrict__ v, i64 v_sb, i64 v_sh,
                                i64 v_sn, u16* __restrict__ out, i64 o_sb, i64 o_sh, i64 o_sn,
                                float* __restrict__ lse, int Hq, int Hkv, int Nq, int Nk, int D, int causal,
                                float sm_scale) {
    constexpr int ROWW = DP / 2 + 4;  // words per shared row: DP halves + 8 halves of padding
    constexpr int KSTEPS = DP / 16;
    constexpr int CT = DP / 8;
    constexpr int NT = EX_NTILES;
    __shared__ __align__(16) u32 s_k[EX_KV_TILE * ROWW];
    __shared__ __align__(16) u32 s_v[EX_KV_TILE * ROWW];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int qt = gridDim.x - 1 - blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (Hq / Hkv);
    const int q0 = qt * EX_Q_TILE;
    const int row0 = q0 + warp * 16 + g, row1 = row0 + 8;
    const bool is_causal = causal != 0;
    const float logit_scale = __fmul_rn(sm_scale, LOG2_E);

    // Q fragments (m16n8k16 A): register 0 = row g, channels 16ks + 2t, 2t+1; 1 = row g+8;
    // 2 = row g, channels 16ks + 8 + 2t, +1; 3 = row g+8. Loaded once, zero past Nq and D.
    u32 qf[KSTEPS][4];
    {
        const u16* qh = q + (i64)b * q_sb + (i64)h * q_sh;
        const u16* r0 = qh + (i64)row0 * q_sn;
        const u16* r1 = qh + (i64)row1 * q_sn;
        const bool v0 = row0 < Nq, v1 = row1 < Nq;
        auto pair = [&](const u16* row, bool valid, int c) -> u32 {
            const u32 lo = (valid && c < D) ? row[c] : 0u;
            const u32 hi = (valid && c + 1 < D) ? row[c + 1] : 0u;
            return lo | (hi << 16);
        };
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
            qf[ks][0] = pair(r0, v0, 16 * ks + 2 * t);
            qf[ks][1] = pair(r1, v1, 16 * ks + 2 * t);
            qf[ks][2] = pair(r0, v0, 16 * ks + 8 + 2 * t);
            qf[ks][3] = pair(r1, v1, 16 * ks + 8 + 2 * t);
        }
    }

    const u16* kh = k + (i64)b * k_sb + (i64)hk * k_sh;
    const u16* vh = v + (i64)b * v_sb + (i64)hk * v_sh;
    const bool k_vec = D == DP && (((unsigned long long)kh | (unsigned long long)(k_sn * 2)) % 16 == 0);
    const bool v_vec = D == DP && (((unsigned long long)vh | (unsigned long long)(v_sn * 2)) % 16 == 0);
    const u32 s_k_base = smem_addr(s_k), s_v_base = smem_addr(s_v);

    const int key_end = tile_key_end(q0, EX_Q_TILE, Nq, Nk, is_causal);
    const int n_tiles = key_end > 0 ? ceil_div(key_end, EX_KV_TILE) : 0;

    OnlineSoftmax<NT> sm;
    sm.init();
    float o[CT][4];
#pragma unroll
    for (int ct = 0; ct < CT; ++ct) o[ct][0] = o[ct][1] = o[ct][2] = o[ct][3] = 0.0f;

    if (n_tiles > 0) {
        load_tile_16bit<DP>(s_k, kh, k_sn, 0, Nk, D, k_vec);
        cp_async_commit();
    }
    for (int j = 0; j < n_tiles; ++j) {
        cp_async_wait_all();
        __syncthreads();  // K_j resident; every warp done with V_{j-1}
        load_tile_16bit<DP>(s_v, vh, v_sn, j * EX_KV_TILE, Nk, D, v_vec);
        cp_async_commit();

        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
            for (int jp = 0; jp < NT / 2; ++jp) {
                // K stored [key][channel]: 16-byte chunks 2ks, 2ks+1 of keys 16jp.. are the B fragments
                const int key = 16 * jp + (lane / 16) * 8 + (lane % 8);
                u32 bf[4];
                ldmatrix_x4(bf, s_k_base + (key * ROWW + 8 * ks + ((lane / 8) % 2) * 4) * 4);
                mma_16bit(DT(), s[2 * jp], qf[ks], bf[0], bf[1]);
                mma_16bit(DT(), s[2 * jp + 1], qf[ks], bf[2], bf[3]);
            }
        }
        const bool need_mask = tile_needs_mask(j * EX_KV_TILE, EX_KV_TILE, q0, Nq, Nk, is_causal);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[nt][e] = __fmul_rn(s[nt][e], logit_scale);
                if (need_mask) {
                    const int key = j * EX_KV_TILE + 8 * nt + 2 * t + (e & 1);
                    if (!key_visible(key, e < 2 ? row0 : row1, Nq, Nk, is_causal)) s[nt][e] = neg_inf();
                }
            }
        }
        float alpha[2];
        sm.update(s, alpha);

        // P rounded to the input type, as the A operand (accumulator layout == A layout for k16).
        // bf16: plus the residual p - bf16(p), also in bf16 (dtype.cuh, SPLIT_P).
        u32 pf[4][4], pr[4][4];
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int nt = 2 * ks + (i >> 1), e = 2 * (i & 1);
                pf[ks][i] = DT::pack2(s[nt][e], s[nt][e + 1]);
                if constexpr (DT::SPLIT_P) {
                    // the two rounded values back as f32 (bf16 = upper half of an f32); p - them is exact
                    const float r0 = __uint_as_float(pf[ks][i] << 16), r1 = __uint_as_float(pf[ks][i] & 0xffff0000u);
                    pr[ks][i] = DT::pack2(s[nt][e] - r0, s[nt][e + 1] - r1);
                }
            }
        }
        cp_async_wait_all();
        __syncthreads();  // V_j resident; every warp done with K_j
        if (j + 1 < n_tiles) {
            load_tile_16bit<DP>(s_k, kh, k_sn, (j + 1) * EX_KV_TILE, Nk, D, k_vec);
            cp_async_commit();
        }
#pragma unroll
        for (int ct = 0; ct < CT; ++ct) {
            o[ct][0] *= alpha[0];
            o[ct][1] *= alpha[0];
            o[ct][2] *= alpha[1];
            o[ct][3] *= alpha[1];
        }
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
#pragma unroll
            for (int cp = 0; cp < CT / 2; ++cp) {
                // V stored [key][channel]; the transposing ldmatrix gives (keys 2t, 2t+1; channel g):
                // matrices (keys 16ks+0..7 | 16ks+8..15) x (channels 16cp..+7 | 16cp+8..+15)
                const int key = 16 * ks + ((lane / 8) % 2) * 8 + (lane % 8);
                const int chunk = 2 * cp + lane / 16;
                u32 vb[4];
                ldmatrix_x4_trans(vb, s_v_base + (key * ROWW + chunk * 4) * 4);
                mma_16bit(DT(), o[2 * cp], pf[ks], vb[0], vb[1]);
                mma_16bit(DT(), o[2 * cp + 1], pf[ks], vb[2], vb[3]);
                if constexpr (DT::SPLIT_P) {
                    mma_16bit(DT(), o[2 * cp], pr[ks], vb[0], vb[1]);
                    mma_16bit(DT(), o[2 * cp + 1], pr[ks], vb[2], vb[3]);
                }
            }
        }
    }

    sm.reduce_rows();
    u16* obase = out + (i64)b * o_sb + (i64)h * o_sh;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = r == 0 ? row0 : row1;
        if (row >= Nq) continue;
        const float l = sm.l[r];
        u16* orow = obase + (i64)row * o_sn;
#pragma unroll
        for (int ct = 0; ct < CT; ++ct) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int c = 8 * ct + 2 * t + e;
                if (c < D) orow[c] = DT::store(l == 0.0f ? 0.0f : __fdiv_rn(o[ct][2 * r + e], l));
            }
        }
        if (lse != nullptr && t == 0) lse[((i64)b * Hq + h) * Nq + row] = sm.lse(r);
    }
}

// ---- f32: CUDA cores ---------------------------------------------------------------------------------
#define EXF_WARPS 4
#define EXF_ROWS_PER_WARP 4
#define EXF_Q_TILE (EXF_WARPS * EXF_ROWS_PER_WARP)  // 16 query rows per CTA
#define EXF_KV_TILE 32                              // one key per lane

template <int DP>
SAGE_DEVICE void attn_exact_f32(const float* __restrict__ q, i64 q_sb, i64 q_sh, i64 q_sn,
                                const float* __restrict__ k, i64 k_sb, i64 k_sh, i64 k_sn,
                                const float* __restrict__ v, i64 v_sb, i64 v_sh, i64 v_sn, float* __restrict__ out,
                                i64 o_sb, i64 o_sh, i64 o_sn, float* __restrict__ lse, int Hq, int Hkv, int Nq,
                                int Nk, int D, int causal, float sm_scale) {
    constexpr int E = DP / 32;  // channels per lane
    __shared__ float s_q[EXF_Q_TILE][DP];
    __shared__ float s_k[EXF_KV_TILE][DP + 1];  // +1: lane = key reads column d conflict-free
    __shared__ float s_v[EXF_KV_TILE][DP];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int qt = gridDim.x - 1 - blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (Hq / Hkv);
    const int q0 = qt * EXF_Q_TILE;
    const bool is_causal = causal != 0;
    const float logit_scale = __fmul_rn(sm_scale, LOG2_E);

    const float* qh = q + (i64)b * q_sb + (i64)h * q_sh;
    const float* kh = k + (i64)b * k_sb + (i64)hk * k_sh;
    const float* vh = v + (i64)b * v_sb + (i64)hk * v_sh;
    for (int i = tid; i < EXF_Q_TILE * DP; i += EX_THREADS) {
        const int r = i / DP, c = i % DP;
        const int row = q0 + r;
        s_q[r][c] = (row < Nq && c < D) ? qh[(i64)row * q_sn + c] : 0.0f;
    }

    float m[EXF_ROWS_PER_WARP], l[EXF_ROWS_PER_WARP], acc[EXF_ROWS_PER_WARP][E];
#pragma unroll
    for (int rr = 0; rr < EXF_ROWS_PER_WARP; ++rr) {
        m[rr] = neg_inf();
        l[rr] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[rr][e] = 0.0f;
    }

    const int key_end = tile_key_end(q0, EXF_Q_TILE, Nq, Nk, is_causal);
    const int n_tiles = key_end > 0 ? ceil_div(key_end, EXF_KV_TILE) : 0;
    for (int j = 0; j < n_tiles; ++j) {
        __syncthreads();  // the previous tile is consumed (and s_q is written, on the first pass)
        for (int i = tid; i < EXF_KV_TILE * DP; i += EX_THREADS) {
            const int r = i / DP, c = i % DP;
            const int key = j * EXF_KV_TILE + r;
            const bool ok = key < Nk && c < D;
            s_k[r][c] = ok ? kh[(i64)key * k_sn + c] : 0.0f;
            s_v[r][c] = ok ? vh[(i64)key * v_sn + c] : 0.0f;
        }
        __syncthreads();
        const int key = j * EXF_KV_TILE + lane;
#pragma unroll
        for (int rr = 0; rr < EXF_ROWS_PER_WARP; ++rr) {
            const int lr = warp * EXF_ROWS_PER_WARP + rr;
            const int row = q0 + lr;
            float dot = 0.0f;
#pragma unroll 16
            for (int c = 0; c < DP; ++c) dot = fmaf(s_q[lr][c], s_k[lane][c], dot);
            float x = __fmul_rn(dot, logit_scale);
            if (!key_visible(key, row, Nq, Nk, is_causal)) x = neg_inf();
            // online_softmax for one row over the warp (see softmax.cuh for the all-masked guard)
            const float m_new = fmaxf(m[rr], warp_max(x));
            const float base = m_new == neg_inf() ? 0.0f : m_new;
            const float alpha = ex2(m[rr] - base);
            const float p = ex2(x - base);
            l[rr] = l[rr] * alpha + warp_sum(p);
            m[rr] = m_new;
#pragma unroll
            for (int e = 0; e < E; ++e) acc[rr][e] *= alpha;
#pragma unroll 8
            for (int kk = 0; kk < EXF_KV_TILE; ++kk) {
                const float pk = __shfl_sync(FULL_MASK, p, kk);
#pragma unroll
                for (int e = 0; e < E; ++e) acc[rr][e] = fmaf(pk, s_v[kk][lane + 32 * e], acc[rr][e]);
            }
        }
    }

    float* obase = out + (i64)b * o_sb + (i64)h * o_sh;
#pragma unroll
    for (int rr = 0; rr < EXF_ROWS_PER_WARP; ++rr) {
        const int row = q0 + warp * EXF_ROWS_PER_WARP + rr;
        if (row >= Nq) continue;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const int c = lane + 32 * e;
            if (c < D) obase[(i64)row * o_sn + c] = l[rr] == 0.0f ? 0.0f : __fdiv_rn(acc[rr][e], l[rr]);
        }
        if (lse != nullptr && lane == 0)
            lse[((i64)b * Hq + h) * Nq + row] =
                l[rr] == 0.0f ? neg_inf() : __fmul_rn(__fadd_rn(m[rr], log2f(l[rr])), LN_2);
    }
}

// ---- entry points ---------------------------------------------------------------------------------
// attn_exact_hd{64|128}_{f16|bf16}: grid (ceil(Nq/64), Hq, B), 128 threads.
// attn_exact_hd{64|128}_f32:        grid (ceil(Nq/16), Hq, B), 128 threads.

#define SAGE_EXACT_ENTRY_16(NAME, DP, DT)                                                                 \
    extern "C" __global__ void __launch_bounds__(EX_THREADS)                                              \
        NAME(const u16* q, i64 q_stride_b, i64 q_stride_h, i64 q_stride_n, const u16* k, i64 k_stride_b,  \
             i64 k_stride_h, i64 k_stride_n, const u16* v, i64 v_stride_b, i64 v_stride_h, i64 v_stride_n, \
             u16* out, i64 o_stride_b, i64 o_stride_h, i64 o_stride_n, float* lse, int Hq, int Hkv, int Nq, \
             int Nk, int D, int causal, float sm_scale) {                                                 \
        attn_exact_mma<DP, DT>(q, q_stride_b, q_stride_h, q_stride_n, k, k_stride_b, k_stride_h,           \
                               k_stride_n, v, v_stride_b, v_stride_h, v_stride_n, out, o_stride_b,        \
                               o_stride_h, o_stride_n, lse, Hq, Hkv, Nq, Nk, D, causal, sm_scale);        \
    }

#define SAGE_EXACT_ENTRY_F32(NAME, DP)                                                                    \
    extern "C" __global__ void __launch_bounds__(EX_THREADS)                                              \
        NAME(const float* q, i64 q_stride_b, i64 q_stride_h, i64 q_stride_n, const float* k,              \
             i64 k_stride_b, i64 k_stride_h, i64 k_stride_n, const float* v, i64 v_stride_b,              \
             i64 v_stride_h, i64 v_stride_n, float* out, i64 o_stride_b, i64 o_stride_h, i64 o_stride_n,  \
             float* lse, int Hq, int Hkv, int Nq, int Nk, int D, int causal, float sm_scale) {            \
        attn_exact_f32<DP>(q, q_stride_b, q_stride_h, q_stride_n, k, k_stride_b, k_stride_h, k_stride_n,  \
                           v, v_stride_b, v_stride_h, v_stride_n, out, o_stride_b, o_stride_h, o_stride_n, \
                           lse, Hq, Hkv, Nq, Nk, D, causal, sm_scale);                                    \
    }

#ifdef SAGE_WANT_F16
SAGE_EXACT_ENTRY_16(attn_exact_hd64_f16, 64, DtF16)
SAGE_EXACT_ENTRY_16(attn_exact_hd128_f16, 128, DtF16)
#endif
#ifdef SAGE_WANT_BF16
SAGE_EXACT_ENTRY_16(attn_exact_hd64_bf16, 64, DtBF16)
SAGE_EXACT_ENTRY_16(attn_exact_hd128_bf16, 128, DtBF16)
#endif
#ifdef SAGE_WANT_F32
SAGE_EXACT_ENTRY_F32(attn_exact_hd64_f32, 64)
SAGE_EXACT_ENTRY_F32(attn_exact_hd128_f32, 128)
#endif
