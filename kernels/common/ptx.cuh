// ptx.cuh: every inline-PTX instruction sage uses, and nothing else. Conversions that NVRTC has no
// header for (f16, bf16, e4m3), the tensor-core mma shapes, ldmatrix, cp.async, exp2.
// Keeping them in one file keeps the rest of the kernels plain C++ (and lets a host-side emulator
// replace exactly this file).
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k*"); lane = 4*g + t, g = groupID
// (lane / 4), t = threadID_in_group (lane % 4):
//   accumulator C/D (m16n8, s32 or f32): c0,c1 = row g,   cols 2t, 2t+1
//                                        c2,c3 = row g+8, cols 2t, 2t+1
//   A (16 x K, row-major), 4 registers:  a[0] = row g,   k-word t      a[1] = row g+8, k-word t
//                                        a[2] = row g,   k-word t+4    a[3] = row g+8, k-word t+4
//   B (K x 8, "col" = stored as 8 rows of K), 2 registers: b0 = col g, k-word t;  b1 = col g, k-word t+4
// where a "k-word" is a 32-bit word of a row's K elements: 4 x s8/e4m3 (m16n8k32), 8 x s4
// (m16n8k64) or 2 x f16/bf16 (m16n8k16), the lowest k in the lowest bits. The three shapes share
// this word layout, which is why one loader serves INT8 and INT4 codes.
#ifndef SAGE_PTX_CUH
#define SAGE_PTX_CUH

#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#endif

// ---- conversions -----------------------------------------------------------------------------------
SAGE_DEVICE float f16_to_f32(u16 bits) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(bits));
    return r;
}
// Round to nearest even, as half::f16::from_f32 does.
SAGE_DEVICE u16 f32_to_f16(float x) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
SAGE_DEVICE u16 f32_to_bf16(float x) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
// Two f32 to one f16x2 word; `lo` goes to the low half (the lower k index of an mma fragment).
// cvt ... f16x2 puts its FIRST source in the UPPER half.
SAGE_DEVICE u32 pack_f16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
SAGE_DEVICE u32 pack_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

#if __CUDA_ARCH__ >= 890
// Four f32 to four E4M3 codes in one word, `a` in the lowest byte (the lowest k of a fragment
// register). Round to nearest even; satfinite clamps beyond 448 to 448 (the CPU's saturation), NaN
// stays NaN. cvt ... e4m3x2 puts its FIRST source in the UPPER byte.
SAGE_DEVICE u32 pack4_e4m3(float a, float b, float c, float d) {
    u16 lo, hi;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(lo) : "f"(b), "f"(a));
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(hi) : "f"(d), "f"(c));
    return (u32)lo | ((u32)hi << 16);
}
// E4M3 to f16 is exact (every E4M3 value is an f16 value); the lower byte goes to the lower half.
// Four E4M3 codes (one fragment register) to two f16x2 words: bytes 0-1 into `lo`, 2-3 into `hi`.
// The split is inside the asm so that ptxas reads each half in place (no shift per word).
SAGE_DEVICE void e4m3x4_to_f16x2x2(u32 codes, u32& lo, u32& hi) {
    asm("{\n\t.reg .b16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.rn.f16x2.e4m3x2 %0, l;\n\tcvt.rn.f16x2.e4m3x2 %1, h;\n\t}"
        : "=r"(lo), "=r"(hi)
        : "r"(codes));
}
// Two f32 to two E4M3 codes in 16 bits, `lo` in the low byte; rounding as pack4_e4m3.
SAGE_DEVICE u16 pack2_e4m3(float lo, float hi) {
    u16 r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
}
#endif

// ---- tensor cores ------------------------------------------------------------------------------------
// D += A * B, s8 x s8 -> s32, m16n8k32 (sm_80+).
SAGE_DEVICE void mma_s8(int (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A * B + (c, c, c, c), s8 x s8 -> s32, m16n8k32: the first k-step of a tile, with the
// accumulator starting from a constant (the dot bias of softmax.cuh) instead of zero.
SAGE_DEVICE void mma_s8_from(int (&d)[4], const u32 (&a)[4], u32 b0, u32 b1, int c) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(c));
}

// D += A * B, s4 x s4 -> s32, m16n8k64 (sm_80+). Native on sm_80/86/89; on sm_90 it is emulated
// and runs about 25x slower than mma_s8 (GPU-NOTES.md): correct, never fast.
SAGE_DEVICE void mma_s4(int (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A * B + (c, c, c, c), s4 x s4 -> s32, m16n8k64 (see mma_s8_from).
SAGE_DEVICE void mma_s4_from(int (&d)[4], const u32 (&a)[4], u32 b0, u32 b1, int c) {
    asm("mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(c));
}

// Where ptxas expands mma.sync e4m3 into operand unpacks (F2FP), f16 HMMAs and f32 adds instead of one
// QMMA: sm_90 to sm_11x (the SASS of NVRTC 13.0 for sm_90a, sm_100, sm_103 and sm_110; sm_89, sm_120
// and sm_121 have the QMMA). The FP8 kernels feed those the f16 HMMAs themselves (attn_mma.cu).
#define SAGE_E4M3_MMA_EXPANDED (__CUDA_ARCH__ >= 900 && __CUDA_ARCH__ < 1200)

#if __CUDA_ARCH__ >= 890
// D += A * B, e4m3 x e4m3 -> f32, m16n8k32 (sm_89+).
SAGE_DEVICE void mma_e4m3(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

// D += A * B, f16 x f16 -> f32, m16n8k16 (sm_80+).
SAGE_DEVICE void mma_f16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D += A * B, bf16 x bf16 -> f32, m16n8k16 (sm_80+).
SAGE_DEVICE void mma_bf16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- shared memory -------------------------------------------------------------------------------
SAGE_DEVICE u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
// The dynamic shared memory the launch gave the CTA, in bytes.
SAGE_DEVICE u32 dynamic_smem_bytes() {
    u32 n;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(n));
    return n;
}

// Four 8x8 matrices of 16-byte rows. Lanes 8i..8i+7 give the row addresses of matrix i; lane
// 4g+t receives in d[i] the 32-bit word t of row g of matrix i. With 16-byte rows cut from a tile
// stored row = n (key or channel), column = k, that is exactly a B fragment register (see above).
SAGE_DEVICE void ldmatrix_x4(u32 (&d)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(addr)
                 : "memory");
}

// The transposing form, 16-bit elements: lane 4g+t receives elements (row 2t, col g) and
// (row 2t+1, col g) of each matrix. Rows = keys, cols = channels gives the B fragment of P*V
// straight from V stored [key][channel].
SAGE_DEVICE void ldmatrix_x4_trans(u32 (&d)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(addr)
                 : "memory");
}

// 16-byte global -> shared copy that bypasses registers (sm_80+). Both addresses 16-byte aligned.
SAGE_DEVICE void cp_async_16(u32 smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem), "l"(gmem) : "memory");
}
SAGE_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
SAGE_DEVICE void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }
// Wait until at most N of this thread's most recently committed groups are still in flight.
template <int N>
SAGE_DEVICE void cp_async_wait_group() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// ---- thread-block clusters (sm_90) -----------------------------------------------------------------
#if __CUDA_ARCH__ >= 900
// The cluster barrier in its two halves, executed by every thread of every CTA of the cluster. The
// arrive releases this thread's earlier memory accesses (distributed shared memory reads included),
// the wait acquires those of every thread that arrived: a wait after an arrive returns once all
// have arrived.
SAGE_DEVICE void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
SAGE_DEVICE void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
// The address of this CTA's shared memory word `addr` in the same place of CTA `rank` of the cluster.
SAGE_DEVICE u32 cluster_map(u32 addr, u32 rank) {
    u32 r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(addr), "r"(rank));
    return r;
}
SAGE_DEVICE u32 ld_cluster_u32(u32 addr) {
    u32 v;
    asm volatile("ld.shared::cluster.u32 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
    return v;
}
#endif

// ---- fast math -----------------------------------------------------------------------------------
// 2^x with the hardware approximation (relative error ~2^-22; ALGORITHM.md allows exp2 to differ
// from the CPU's at that level). ex2(-inf) = +0, which is how masked keys get p = 0.
SAGE_DEVICE float ex2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

#endif  // SAGE_PTX_CUH
