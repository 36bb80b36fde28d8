// hadamard.cuh: the `rotate` option (ALGORITHM.md Step 2b) on rows held by a lane group.
//
// Row layout of the quantization kernels ("row-contiguous", quant.cu): a row of DP channels is
// held by DP/8 consecutive lanes, lane `sub` holding channels 8*sub .. 8*sub+7 in x[0..7]. Bits
// 0-2 of a channel index are the register, bits 3-6 the lane within the group.
//
// The transform is numerics/hadamard.rs step by step: butterfly stages h = 1, 2, 4, ..., DP/2 in
// that order, row[i] = a + b and row[i+h] = a - b for a = row[i], b = row[i+h] (i without bit h),
// then one multiplication by 1/sqrt(DP). Each output is the same f32 operation on the same operands
// as on the CPU, so the rotated rows are bit-identical to the CPU's for bit-identical inputs.
#ifndef SAGE_HADAMARD_CUH
#define SAGE_HADAMARD_CUH

#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#endif

// 1/sqrt(Dp) as the CPU computes it in f32: 1.0 / (Dp as f32).sqrt().
// Dp = 64: 0.125 exactly; Dp = 128: 1/11.3137083 = 0x3db504f3.
SAGE_DEVICE float hadamard_norm(int dp) { return dp == 64 ? 0.125f : __uint_as_float(0x3db504f3u); }

// In place: x <- x * H / sqrt(DP), DP in {64, 128}. All 32 lanes must call it (shuffles); every
// lane group transforms its own row.
template <int DP>
SAGE_DEVICE void fwht_row(float (&x)[8], int sub) {
    // Stages h = 1, 2, 4: both channels of a pair are in this lane.
#pragma unroll
    for (int h = 1; h < 8; h <<= 1) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            if ((i & h) == 0) {
                const float a = x[i], b = x[i + h];
                x[i] = a + b;
                x[i + h] = a - b;
            }
        }
    }
    // Stages h = 8 .. DP/2: the partner channel c ^ h is register i of lane sub ^ (h / 8).
#pragma unroll
    for (int h = 8; h < DP; h <<= 1) {
        const bool upper = (sub & (h / 8)) != 0;  // this lane holds row[i + h]
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float p = __shfl_xor_sync(FULL_MASK, x[i], h / 8);
            x[i] = upper ? p - x[i] : x[i] + p;  // a - b for the upper, a + b for the lower
        }
    }
    const float norm = hadamard_norm(DP);
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = __fmul_rn(x[i], norm);
}

#endif  // SAGE_HADAMARD_CUH
