// prelude.cuh: what every sage kernel shares. No CUDA headers: NVRTC 13.0 ships none, so f16 and
// bf16 travel as raw bits (`unsigned short`) and are converted with inline PTX.
//
// The numerics follow /work/shared/docs/ALGORITHM.md; the CPU backend (crates/sage-core/src/cpu.rs)
// is the reference every kernel here is checked against.
#ifndef SAGE_PRELUDE_CUH
#define SAGE_PRELUDE_CUH

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef signed char i8;
typedef long long i64;

#define SAGE_DEVICE __device__ __forceinline__
#define FULL_MASK 0xffffffffu
// The kernel's dynamic shared memory (the host emulator gives it a static buffer instead).
#ifndef SAGE_DYNAMIC_SMEM
#define SAGE_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// ---- constants of ALGORITHM.md (the same f32 values as crates/sage-core/src/numerics) ----
// log2(e) as an f32 (0x3fb8aa3b): logits are taken to base 2 so the softmax uses exp2 (Step 4).
#define LOG2_E 1.44269504088896340736f
// ln(2) as an f32 (0x3f317218): turns the base-2 log-sum-exp back into the natural one.
#define LN_2 0.69314718055994530942f
// Largest finite E4M3 value; P is scaled by it before encoding (Step 6), V' is divided by sv = amax/448 (Step 7).
#define E4M3_MAX 448.0f
// log2(448), rounded to f32
#define LOG2_E4M3_MAX 8.80735492f
// Queries per smooth_q mean (Step 2).
#define Q_SMOOTH_BLOCK 128
// Tokens per quantization CTA: a multiple of every scale-group block (128, 64, 32) and equal to
// Q_SMOOTH_BLOCK, so no scale group and no smooth_q block straddles two CTAs. The quantized Q/K/V
// buffers are padded to a multiple of it (ABI.md, "Padded lengths").
#define QUANT_TOKENS 128
// The largest padded head dim.
#define MAX_DP 128

// Which input dtypes get entry points: all three, unless the launcher defines one or more of
// SAGE_ONLY_F16, SAGE_ONLY_BF16, SAGE_ONLY_F32 (e.g. `-DSAGE_ONLY_F16`) to compile only those,
// which cuts NVRTC time about threefold (ABI.md, "Compiling").
#if defined(SAGE_ONLY_F16) || defined(SAGE_ONLY_BF16) || defined(SAGE_ONLY_F32)
#ifdef SAGE_ONLY_F16
#define SAGE_WANT_F16 1
#endif
#ifdef SAGE_ONLY_BF16
#define SAGE_WANT_BF16 1
#endif
#ifdef SAGE_ONLY_F32
#define SAGE_WANT_F32 1
#endif
#else
#define SAGE_WANT_F16 1
#define SAGE_WANT_BF16 1
#define SAGE_WANT_F32 1
#endif

// Programmatic dependent launch (sm_90 and later; ABI.md, "Launch order"): the host launches the quantization
// stage's kernels and the Hopper attention kernel so that each may be scheduled before the previous
// kernel in the stream has finished (its launch and block placement then overlap that kernel's
// tail). Every such kernel calls this before it touches global memory: it waits until the previous
// grid has completed and its writes are visible, then lets the next kernel launch as soon as every
// block of this one has started. Launched without the attribute (other GPUs, SAGE_CUDA_PDL=0), both
// instructions return at once.
SAGE_DEVICE void grid_dependency_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(SAGE_HOST_EMULATOR)
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// 16 bytes moved as one vector access (ld/st .v4.u32); needs 16-byte aligned addresses.
struct __align__(16) U32x4 {
    u32 x, y, z, w;
};
// 8 bytes as one vector access; needs 8-byte aligned addresses.
struct __align__(8) U32x2 {
    u32 x, y;
};

SAGE_DEVICE float neg_inf() { return __int_as_float(0xff800000); }
SAGE_DEVICE float pos_inf() { return __int_as_float(0x7f800000); }
SAGE_DEVICE int ceil_div(int a, int b) { return (a + b - 1) / b; }
SAGE_DEVICE int round_up(int a, int b) { return ceil_div(a, b) * b; }

// ---- warp reductions ---------------------------------------------------------------------------
SAGE_DEVICE float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
// fmaxf ignores NaN like Rust's f32::max: amax over a group is the same value on both sides.
SAGE_DEVICE float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}
// The four threads of an mma quad (lanes 4g..4g+3) own one accumulator row between them.
SAGE_DEVICE float quad_sum(float v) {
    v += __shfl_xor_sync(FULL_MASK, v, 1);
    v += __shfl_xor_sync(FULL_MASK, v, 2);
    return v;
}
SAGE_DEVICE float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 1));
    v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 2));
    return v;
}

// The non-finite flag of one tensor: the smallest linear token index ((b*H + h)*N + n) holding a
// NaN or Inf. The host initialises it to INT_MAX (0x7fffffff) and reads it after the quantization
// pass (ABI.md, "Non-finite inputs").
SAGE_DEVICE void flag_nonfinite(int* flag, i64 linear_token) {
    if (flag != nullptr) atomicMin(flag, (int)linear_token);
}

#endif  // SAGE_PRELUDE_CUH
