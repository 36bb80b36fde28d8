// dtype.cuh: the input/output element types. f16 and bf16 are raw bits (`unsigned short`).
#ifndef SAGE_DTYPE_CUH
#define SAGE_DTYPE_CUH

#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#include "common/ptx.cuh"
#endif

// bf16 is the upper half of an f32: widening is exact.
SAGE_DEVICE float bf16_to_f32(u16 bits) { return __uint_as_float(((u32)bits) << 16); }

// Element-type traits: `T` is the storage type, `load`/`store` convert to and from f32 (store
// rounds to nearest even), `pack2` rounds two f32 into one mma register (exact mode's P operand),
// `SPLIT_P` says whether the exact mode adds a second, residual P term.
struct DtF16 {
    typedef u16 T;
    static constexpr bool SPLIT_P = false;
    static SAGE_DEVICE float load(T v) { return f16_to_f32(v); }
    static SAGE_DEVICE T store(float x) { return f32_to_f16(x); }
    static SAGE_DEVICE u32 pack2(float lo, float hi) { return pack_f16x2(lo, hi); }
};
struct DtBF16 {
    typedef u16 T;
    // bf16 keeps 8 significant bits: P rounded once costs ~1e-3 relative L1 against the CPU's f32
    // P, too close to the conformance bound (2e-3). The exact mode therefore multiplies P = P_hi +
    // P_lo (both bf16, P_lo = bf16(p - P_hi)) by V: two mma, ~16 significant bits of P.
    static constexpr bool SPLIT_P = true;
    static SAGE_DEVICE float load(T v) { return bf16_to_f32(v); }
    static SAGE_DEVICE T store(float x) { return f32_to_bf16(x); }
    static SAGE_DEVICE u32 pack2(float lo, float hi) { return pack_bf16x2(lo, hi); }
};
struct DtF32 {
    typedef float T;
    static SAGE_DEVICE float load(T v) { return v; }
    static SAGE_DEVICE T store(float x) { return x; }
};

// The 16-bit float mma of the exact mode, chosen by the input type.
SAGE_DEVICE void mma_16bit(DtF16, float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) { mma_f16(d, a, b0, b1); }
SAGE_DEVICE void mma_16bit(DtBF16, float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) { mma_bf16(d, a, b0, b1); }

#endif  // SAGE_DTYPE_CUH
