// qcodes.cuh: Step 3's INT8 codes of 16-bit inputs, shared by quantize_q_rows / quantize_k_rows
// (quant.cu) and the Hopper kernel's in-kernel Q quantization (attn_wgmma.cu), so that both give
// exactly the codes and scales of numerics/quant.rs.
#ifndef SAGE_QCODES_CUH
#define SAGE_QCODES_CUH

#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#include "common/dtype.cuh"
#include "common/groups.cuh"
#endif

// scale = amax / qmax (1 when amax == 0); the multiplier qmax / amax (0 when amax == 0).
SAGE_DEVICE float quant_scale(float amax, int qmax) { return amax == 0.0f ? 1.0f : __fdiv_rn(amax, (float)qmax); }
SAGE_DEVICE float quant_inv(float amax, int qmax) { return amax == 0.0f ? 0.0f : __fdiv_rn((float)qmax, amax); }

// Unsigned max (the integer max of non-negative float bit patterns).
SAGE_DEVICE u32 max_u32(u32 a, u32 b) { return a > b ? a : b; }

// The f16 / bf16 patterns at or above which |x| is Inf or NaN.
SAGE_DEVICE u32 inf_bits16(DtF16) { return 0x7c00u; }
SAGE_DEVICE u32 inf_bits16(DtBF16) { return 0x7f80u; }

// rint(x * inv) as the low byte of a float: x * inv rounded first (as __fmul_rn in quantize_q), then
// adding 1.5 * 2^23 rounds it to an integer, half to even, exactly as __float2int_rn does for
// |v| < 2^22 (here |v| <= 127: |x| <= amax, while inv is finite). The integer's two's-complement
// byte is the float's low byte, and no clamp is needed. It keeps 16K codes per tile off the
// quarter-rate conversion unit.
SAGE_DEVICE u32 code_bits(float x, float inv) { return __float_as_uint(__fadd_rn(__fmul_rn(x, inv), 12582912.0f)); }
// The same bits when inv = 127 / amax is +Inf (a bf16 group whose absmax is below 127 / FLT_MAX):
// x * inv is +-Inf, or NaN for x = 0, which quantize_q's clamp(__float2int_rn(.)) and the CPU turn
// into +-127 and 0.
SAGE_DEVICE u32 code_bits_inf(float x) { return 0x4B400000u + (x > 0.0f ? 127u : (x < 0.0f ? (u32)-127 : 0u)); }

// A Q row's absmax (`gm`, a 16-bit pattern or any non-negative float's bits) max-ed over its scale
// group, where the warp's 32 lanes hold the rows of one 32-token block: per-thread subgroups are the
// lanes l, l ^ 8, l ^ 16, l ^ 24 (rows r % 8), per-warp groups (and per-block ones, before their
// tile-wide step) the whole warp.
SAGE_DEVICE u32 q_warp_group_amax(u32 gm, int gran) {
    if (gran != GRAN_PER_THREAD) {
        gm = max_u32(gm, __shfl_xor_sync(FULL_MASK, gm, 1));
        gm = max_u32(gm, __shfl_xor_sync(FULL_MASK, gm, 2));
        gm = max_u32(gm, __shfl_xor_sync(FULL_MASK, gm, 4));
    }
    gm = max_u32(gm, __shfl_xor_sync(FULL_MASK, gm, 8));
    return max_u32(gm, __shfl_xor_sync(FULL_MASK, gm, 16));
}

SAGE_DEVICE u32 pack_code_bytes(u32 a, u32 b, u32 c, u32 d) {
    return __byte_perm(__byte_perm(a, b, 0x0040), __byte_perm(c, d, 0x0040), 0x5410);
}

#endif  // SAGE_QCODES_CUH
