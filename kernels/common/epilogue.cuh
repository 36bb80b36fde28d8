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

template <class OUT, int CT, bool PV_FP8, bool RECIPROCAL, class SOFTMAX>
SAGE_DEVICE void store_rows(const float (&o)[CT * 4], const SOFTMAX& sm, const float* svp, const float* vmp,
                            typename OUT::T* obase, i64 o_sn, int row0, int row1, int t, int Nq, int D,
                            float* lse, const float* qkm, i64 qhead, float sm_scale) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = r == 0 ? row0 : row1;
        if (row >= Nq) continue;
        const float l = sm.l[r];
        const float inv_l = RECIPROCAL && l != 0.0f ? __fdiv_rn(1.0f, l) : 0.0f;
        typename OUT::T* orow = obase + (i64)row * o_sn;
#pragma unroll
        for (int ct = 0; ct < CT; ++ct) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int c = 8 * ct + 2 * t + e;
                if (c < D) {
                    // A row that saw no key outputs 0, nothing added back (Step 5).
                    float v = 0.0f;
                    if (l != 0.0f) {
                        const float acc = o[4 * ct + 2 * r + e];
                        v = RECIPROCAL ? __fmul_rn(acc, inv_l) : __fdiv_rn(acc, l);
                        if (PV_FP8) v = __fmul_rn(v, svp[c]);
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

#endif  // SAGE_EPILOGUE_CUH
