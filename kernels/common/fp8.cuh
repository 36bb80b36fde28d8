// fp8.cuh: FP8 E4M3 ("e4m3fn", OCP): 1 sign, 4 exponent bits (bias 7), 3 mantissa bits, no
// infinities, 0x7F/0xFF NaN, largest finite 448, subnormals m/8 * 2^-6 (ALGORITHM.md, "FP8 E4M3").
//
// Two encoders with the same rounding rule (nearest, ties to even, saturating at +-448, NaN stays NaN):
// - `e4m3_encode` (here): integer/f32 arithmetic, every architecture; the rule of numerics/fp8.rs
//   step by step.
// - `pack4_e4m3` / `pack2_e4m3` (ptx.cuh): the hardware `cvt.rn.satfinite.e4m3x2.f32` (sm_89+), for P
//   inside the attention kernels and for V in quantize_v_e4m3 (the FP8 modes need sm_89+ anyway).
#ifndef SAGE_FP8_CUH
#define SAGE_FP8_CUH

#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#endif

#define E4M3_CODE_MAX 0x7Eu
#define E4M3_CODE_NAN 0x7Fu

// f32 -> E4M3 code, round to nearest even, saturating. Exact in every step: scaling by powers of two
// never rounds, so the only rounding is the final `__float2int_rn` (round half to even).
SAGE_DEVICE u8 e4m3_encode(float x) {
    const u32 sign = (__float_as_uint(x) >> 24) & 0x80u;
    if (x != x) return (u8)(sign | E4M3_CODE_NAN);
    const float a = fabsf(x);
    // 464 is the midpoint between 448 and the next (absent) step 480: from there up rounding would
    // overflow; below it, it lands on 448 at most. Infinities land here too.
    if (a >= 464.0f) return (u8)(sign | E4M3_CODE_MAX);
    // Below the smallest normal (2^-6) the step is 2^-9: count steps and round (0..8; 8 is the
    // smallest normal's code, so the carry is already right).
    if (a < 0.015625f) return (u8)(sign | (u32)__float2int_rn(a * 512.0f));
    // Normal: a = 2^e * 1.f with e in [-6, 8]; a * 2^(3-e) lies in [8, 16) and is exact.
    int e = (int)((__float_as_uint(a) >> 23) & 0xffu) - 127;
    const float scaled = a * __uint_as_float((u32)(127 + 3 - e) << 23);
    int m = __float2int_rn(scaled);  // 8..16
    if (m == 16) {
        e += 1;
        m = 8;
    }
    u32 code = ((u32)(e + 7) << 3) | (u32)(m - 8);
    if (code > E4M3_CODE_MAX) code = E4M3_CODE_MAX;  // 448 < a < 464 rounds to 448 anyway; belt and braces
    return (u8)(sign | code);
}

// True when q may lie within a few ulp of an E4M3 rounding boundary (a midpoint between two codes):
// there an error of an ulp or two in q could change its code. Normal range (|q| >= 2^-6): the 20
// mantissa bits below E4M3's three are 0x80000 at a midpoint; subnormal range: q * 512 is a half
// integer there. Generous margins: a false alarm only costs one exact division.
SAGE_DEVICE bool e4m3_near_tie(float q) {
    const float a = fabsf(q);
    if (a < 0.015625f) {
        const float t = a * 512.0f;  // exact
        return fabsf(t - floorf(t) - 0.5f) < 1e-4f;
    }
    return (__float_as_uint(a) & 0xFFFFFu) - 0x7FFF0u <= 0x20u;
}

// fl(x / s), as far as its E4M3 code is concerned: x * rcp (rcp = fl(1 / s), within 2 ulp of the
// quotient) unless that lands near a rounding boundary, then the correctly rounded division. So
// e4m3 codes of the result equal those of __fdiv_rn(x, s) (the CPU's V' / sv), at a product's cost.
SAGE_DEVICE float div_for_e4m3(float x, float s, float rcp) {
    const float q = __fmul_rn(x, rcp);
    return e4m3_near_tie(q) ? __fdiv_rn(x, s) : q;
}

#endif  // SAGE_FP8_CUH
