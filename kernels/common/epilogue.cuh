// epilogue.cuh: the end of ALGORITHM.md Steps 6-7 for the quantized attention kernels (attn_mma.cu,
// attn_wgmma.cu): O = acc / l (FP8 modes: l sums 448 p, and O is multiplied by sv), plus vm when V
// was smoothed, into the two rows a lane holds, and the natural log-sum-exp plus sm_scale * (q . km).
//
// `o` is the lane's accumulator in the m16n8 layout both kernels use (per 8-channel slice ct:
// o[4 ct + 2 r + e] = row r, channel 8 ct + 2 t + e). RECIPROCAL takes 1/l once per row and
// multiplies (within an ulp of the division, rounding-level like the kernels' other folds; the
// Hopper kernel's choice), else each element is divided (attn_mma.cu's measured form).
#ifndef SAGE_EPILOGUE_CUH
#define SAGE_EPILOGUE_CUH

#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#endif

// Two adjacent output elements in one store (`p` aligned to their combined size).
SAGE_DEVICE void store_pair(u16* p, u16 a, u16 b) { *(u32*)p = (u32)a | ((u32)b << 16); }
SAGE_DEVICE void store_pair(float* p, float a, float b) { *(float2*)p = make_float2(a, b); }

// 1/l of the lane's two rows where RECIPROCAL (0 for a row that saw no key).
template <bool RECIPROCAL, class SOFTMAX>
SAGE_DEVICE void row_inverses(const SOFTMAX& sm, float (&inv_l)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) inv_l[r] = RECIPROCAL && sm.l[r] != 0.0f ? __fdiv_rn(1.0f, sm.l[r]) : 0.0f;
}

// One output element from its accumulator `acc` (row sum l, 1/l, the channel's sv and vm).
template <class OUT, bool PV_FP8, bool RECIPROCAL>
SAGE_DEVICE typename OUT::T out_value(float acc, float l, float inv_l, float sv, const float* vmp, float vmv) {
    // A row that saw no key outputs 0, nothing added back (Step 5).
    float x = 0.0f;
    if (l != 0.0f) {
        x = RECIPROCAL ? __fmul_rn(acc, inv_l) : __fdiv_rn(acc, l);
        if (PV_FP8) x = __fmul_rn(x, sv);
        if (vmp != nullptr) x = __fadd_rn(x, vmv);
    }
    return OUT::store(x);
}

// The natural log-sum-exp of the lane's rows (lanes t = 0), plus sm_scale * q.km: the logits were of
// q.(k - km) (Step 1).
template <class SOFTMAX>
SAGE_DEVICE void store_lse(const SOFTMAX& sm, int row0, int row1, int t, int Nq, float* lse, const float* qkm,
                           i64 qhead, float sm_scale) {
    if (lse == nullptr || t != 0) return;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = r == 0 ? row0 : row1;
        if (row >= Nq) continue;
        float x = sm.lse(r);
        if (qkm != nullptr && sm.l[r] != 0.0f) x = __fadd_rn(x, __fmul_rn(sm_scale, qkm[qhead * Nq + row]));
        lse[qhead * Nq + row] = x;
    }
}

template <class OUT, int CT, bool PV_FP8, bool RECIPROCAL, class SOFTMAX>
SAGE_DEVICE void store_rows(const float (&o)[CT * 4], const SOFTMAX& sm, const float* svp, const float* vmp,
                            typename OUT::T* obase, i64 o_sn, int row0, int row1, int t, int Nq, int D,
                            float* lse, const float* qkm, i64 qhead, float sm_scale) {
    typedef typename OUT::T T;
    // A lane's channels come in pairs (2t, 2t + 1): one store of both where the row allows it.
    const bool paired = ((unsigned long long)obase % (2 * sizeof(T))) == 0 && (o_sn % 2) == 0;
    float inv_l[2];
    row_inverses<RECIPROCAL>(sm, inv_l);
    T* orow[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = r == 0 ? row0 : row1;
        orow[r] = obase + (i64)(row < Nq ? row : 0) * o_sn;  // only rows < Nq are written
    }
    // sv and vm by chunks of CH slices, each chunk's loads issued together before its stores: as far
    // as the compiler knows a store may alias them, so a load left next to its use waits alone.
    constexpr int CH = CT % 4 == 0 ? 4 : CT;
#pragma unroll
    for (int c0 = 0; c0 < CT; c0 += CH) {
        float sv[CH][2], vmv[CH][2];
#pragma unroll
        for (int u = 0; u < CH; ++u)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int c = 8 * (c0 + u) + 2 * t + e;
                sv[u][e] = PV_FP8 && c < D ? svp[c] : 1.0f;
                vmv[u][e] = vmp != nullptr && c < D ? vmp[c] : 0.0f;
            }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            if ((r == 0 ? row0 : row1) >= Nq) continue;
#pragma unroll
            for (int u = 0; u < CH; ++u) {
                const int ct = c0 + u;
                T v[2];
#pragma unroll
                for (int e = 0; e < 2; ++e)
                    v[e] = out_value<OUT, PV_FP8, RECIPROCAL>(o[4 * ct + 2 * r + e], sm.l[r], inv_l[r], sv[u][e],
                                                              vmp, vmv[u][e]);
                const int c = 8 * ct + 2 * t;
                if (paired && c + 1 < D) {
                    store_pair(orow[r] + c, v[0], v[1]);
                } else {
                    if (c < D) orow[r][c] = v[0];
                    if (c + 1 < D) orow[r][c + 1] = v[1];
                }
            }
        }
    }
    store_lse(sm, row0, row1, t, Nq, lse, qkm, qhead, sm_scale);
}

#endif  // SAGE_EPILOGUE_CUH
