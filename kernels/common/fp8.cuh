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

// fl(x / s), correctly rounded, from rcp = fl(1 / s) with one correction step: q0 = x * rcp is within
// an ulp of x / s, the FMA gives its remainder x - q0 s exactly, and q0 + remainder * rcp rounds to
// the correctly rounded quotient whenever that is a normal number (Markstein's theorem; the fast
// path of __fdiv_rn without its range check and slow path). Here |x / s| <= 448 (s = amax / 448);
// a quotient below the normal range rounds to the E4M3 code 0 either way. So the codes equal those
// of the CPU's V' / sv, at three operations and no branch (2e8 host trials, a quarter of them on
// E4M3 midpoints: identical to x / s). Session 2's form, x * rcp with an exact division near a
// rounding boundary, cost a branch per element.
// A zero quotient is returned as it is: the correction would turn -0 (from x = -0) into +0, whose
// E4M3 code differs (0x80 against 0x00).
SAGE_DEVICE float div_for_e4m3(float x, float s, float rcp) {
    const float q0 = __fmul_rn(x, rcp);
    const float r = __fmaf_rn(-q0, s, x);
    return q0 == 0.0f ? q0 : __fmaf_rn(r, rcp, q0);
}

#endif  // SAGE_FP8_CUH
