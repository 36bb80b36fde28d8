// hadamard.cuh: the `rotate` option (ALGORITHM.md Step 2b) on one row held by a warp.
//
// Row layout of the quantization kernels ("lane-strided"): lane l holds channels c = l + 32*e,
// e = 0..3, in x[e] (x[2], x[3] are zero when Dp = 64). Bits 0-4 of c are the lane, bits 5-6 are e.
//
// The transform is numerics/hadamard.rs step by step: butterfly stages h = 1, 2, 4, ..., Dp/2 in
// that order, row[i] = a + b and row[i+h] = a - b for a = row[i], b = row[i+h] (i without bit h),
// then one multiplication by 1/sqrt(Dp). Each output is the same f32 operation on the same operands
// as on the CPU, so the rotated rows are bit-identical to the CPU's for bit-identical inputs.
#ifndef SAGE_HADAMARD_CUH
#define SAGE_HADAMARD_CUH

#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#endif

// 1/sqrt(Dp) as the CPU computes it in f32: 1.0 / (Dp as f32).sqrt().
// Dp = 64: 0.125 exactly; Dp = 128: 1/11.3137083 = 0x3db504f3.
SAGE_DEVICE float hadamard_norm(int dp) { return dp == 64 ? 0.125f : __uint_as_float(0x3db504f3u); }

// In place: x <- x * H / sqrt(Dp), Dp in {64, 128}. All 32 lanes must call it (shuffles).
SAGE_DEVICE void fwht_row(float (&x)[4], int dp, int lane) {
    // Stages h = 1..16: the partner channel c ^ h is in lane l ^ h, same e.
#pragma unroll
    for (int h = 1; h < 32; h <<= 1) {
        const bool upper = (lane & h) != 0;  // this lane holds row[i + h]
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float p = __shfl_xor_sync(FULL_MASK, x[e], h);
            x[e] = upper ? p - x[e] : x[e] + p;  // a - b for the upper, a + b for the lower
        }
    }
    // Stage h = 32: pairs (e=0, e=1) and (e=2, e=3) inside the lane.
    {
        const float a0 = x[0], b0 = x[1], a1 = x[2], b1 = x[3];
        x[0] = a0 + b0;
        x[1] = a0 - b0;
        x[2] = a1 + b1;
        x[3] = a1 - b1;
    }
    // Stage h = 64 (Dp = 128 only): pairs (e=0, e=2) and (e=1, e=3).
    if (dp == 128) {
        const float a0 = x[0], b0 = x[2], a1 = x[1], b1 = x[3];
        x[0] = a0 + b0;
        x[2] = a0 - b0;
        x[1] = a1 + b1;
        x[3] = a1 - b1;
    }
    const float norm = hadamard_norm(dp);
#pragma unroll
    for (int e = 0; e < 4; ++e) x[e] = __fmul_rn(x[e], norm);
}

#endif  // SAGE_HADAMARD_CUH
