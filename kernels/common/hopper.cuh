// hopper.cuh: the sm_90a instructions of the Hopper attention kernel (attn_wgmma.cu), and nothing
// else: mbarriers, bulk tensor copies (TMA), wgmma and its shared-memory descriptors, setmaxnreg.
// Like ptx.cuh, one file holds all the inline PTX so the kernel reads as plain C++.
//
// Shared-memory operands of wgmma are "K-major with the 128- or 64-byte swizzle": rows of R bytes
// (R = 128 or 64, the K extent of the tile), 16-byte chunk c of row r stored at chunk c ^ (r % (R/16)),
// 8-row atoms of 8R bytes one after another. That is exactly what a TMA copy with
// CU_TENSOR_MAP_SWIZZLE_128B / _64B writes when its box is R bytes wide, so no thread ever touches
// the tiles. A k-step of 32 bytes inside the row is addressed by adding 32 to the descriptor's start
// address (the hardware applies the swizzle to absolute address bits, hence tiles 1024-byte aligned).
//
// Accumulator layout of wgmma m64nN (s32 or f32): warp w of the warpgroup holds rows 16w..16w+15;
// lane 4g+t holds, for each 8-column slice i, d[4i+0..1] = row 16w+g, columns 8i+2t, 8i+2t+1 and
// d[4i+2..3] = row 16w+g+8, same columns: per warp, the m16n8 layout of ptx.cuh repeated N/8 times.
// An 8-bit A operand from registers (m64nNk32) is, per warp, the A fragment of mma.m16n8k32.
#ifndef SAGE_HOPPER_CUH
#define SAGE_HOPPER_CUH

#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SAGE_HAVE_WGMMA 1

typedef unsigned long long u64;

// ---- mbarriers -------------------------------------------------------------------------------------
SAGE_DEVICE void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the copy engine (the async proxy).
SAGE_DEVICE void fence_barrier_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
SAGE_DEVICE void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// One arrival that also announces `bytes` of copies that will complete on this barrier.
SAGE_DEVICE void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
// Waits until the phase of parity `parity` has completed (a fresh barrier counts the phase before
// its first as completed with parity 1, so producers wait on parity 1 first and pass).
SAGE_DEVICE void mbar_wait(u32 bar, u32 parity) {
    asm volatile(
        "{\n.reg .pred done;\nWAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}

// ---- bulk tensor copies (TMA) --------------------------------------------------------------------
// A 2-D box of the tensor map at element coordinates (c0 = innermost, c1) into shared memory at
// `dst`; its bytes complete on `bar`. `map` is the generic address of a __grid_constant__ parameter.
SAGE_DEVICE void tma_load_2d(u32 dst, const void* map, int c0, int c1, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
            dst),
        "l"(map), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}
// A 4-D box at (c0 = innermost, c1, c2, c3): the Hopper kernel's 16-bit Q tiles (channels, tokens,
// head, batch), whatever the input's layout.
SAGE_DEVICE void tma_load_4d(u32 dst, const void* map, int c0, int c1, int c2, int c3, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];" ::"r"(
            dst),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
        : "memory");
}
// Orders this thread's shared-memory accesses (generic proxy) before later ones of the async proxy
// (wgmma operands, bulk copies into the same bytes).
SAGE_DEVICE void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
// tma_load_2d with its barrier's expect_tx, issued by the lanes where `issue` holds, as predicated
// instructions: a branch around them would be a divergent path inside a wgmma pipeline, and ptxas
// then serializes every wgmma of the kernel (C7520).
SAGE_DEVICE void tma_load_2d_by(bool issue, u32 dst, const void* map, int c0, int c1, u32 bar, u32 bytes) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.u32 p, %5, 0;\n"
        "@p mbarrier.arrive.expect_tx.shared::cta.b64 _, [%4], %6;\n"
        "@p cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n}\n" ::"r"(
            dst),
        "l"(map), "r"(c0), "r"(c1), "r"(bar), "r"((u32)issue), "r"(bytes)
        : "memory");
}
// A contiguous copy of `bytes` (a multiple of 16; both addresses 16-byte aligned) from global memory
// into shared memory at `dst`; its bytes complete on `bar`.
SAGE_DEVICE void bulk_load(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile(
        "{\n.reg .u64 g;\ncvta.to.global.u64 g, %1;\n"
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [g], %2, [%3];\n}\n" ::"r"(dst),
        "l"(src), "r"(bytes), "r"(bar)
        : "memory");
}
SAGE_DEVICE void tma_prefetch_map(const void* map) {
    asm volatile("prefetch.tensormap [%0];" ::"l"(map) : "memory");
}

// ---- named barriers ------------------------------------------------------------------------------
// Barrier `id` (1..15; 0 is __syncthreads) completes once `count` threads have arrived; sync waits,
// arrive does not.
SAGE_DEVICE void named_sync(int id, int count) {
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(count) : "memory");
}
SAGE_DEVICE void named_arrive(int id, int count) {
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(count) : "memory");
}

// ---- register budget -----------------------------------------------------------------------------
template <int N>
SAGE_DEVICE void regs_release() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N));
}
template <int N>
SAGE_DEVICE void regs_claim() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N));
}

// ---- wgmma -----------------------------------------------------------------------------------------
// Shared-memory matrix descriptor: start address, leading byte offset (unused by swizzled K-major
// operands; 1 as CUTLASS sets it), stride byte offset = bytes from one 8-row atom to the next,
// swizzle mode (1 = 128 B, 2 = 64 B). Base offset 0: tiles are aligned to their swizzle pattern.
SAGE_DEVICE u64 smem_desc(u32 addr, u32 atom_bytes, u32 swizzle_mode) {
    return (u64)((addr & 0x3ffff) >> 4) | ((u64)1 << 16) | ((u64)(atom_bytes >> 4) << 32) | ((u64)swizzle_mode << 62);
}
// Orders this thread's register writes (accumulators, A fragments) before the wgmma that reads them.
SAGE_DEVICE void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
SAGE_DEVICE void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
// Waits until at most N of this warpgroup's committed wgmma groups are pending.
template <int N>
SAGE_DEVICE void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Keeps the compiler from moving reads or writes of an accumulator across a wgmma wait: the asm
// "changes" the register, so uses stay after it.
template <int N>
SAGE_DEVICE void reg_fence(int (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}
template <int N>
SAGE_DEVICE void reg_fence(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// S (+)= A * B, m64nNk32, s8 x s8 -> s32; A (64 x 32) and B (N x 32) from shared memory, both
// K-major (descriptors). `accumulate` = 0 overwrites d (the first k-step of a tile).
SAGE_DEVICE void wgmma_s8_m64n64k32(int (&d)[32], u64 a_desc, u64 b_desc, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p;\n}\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
        : "l"(a_desc), "l"(b_desc), "r"(accumulate));
}

SAGE_DEVICE void wgmma_s8_m64n128k32(int (&d)[64], u64 a_desc, u64 b_desc, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p;\n}\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
        : "l"(a_desc), "l"(b_desc), "r"(accumulate));
}

// F (+)= P * V, m64n64k32, e4m3 x e4m3 -> f32; P (64 x 32) from registers (the layout of
// mma.m16n8k32's A per warp), V^T (64 channels x 32 keys) from shared memory, K-major.
SAGE_DEVICE void wgmma_e4m3_m64n64k32(float (&d)[32], const u32 (&a)[4], u64 b_desc, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(accumulate));
}

// F (+)= P * V, m64n128k32, e4m3 x e4m3 -> f32; P (64 x 32) from registers (the layout of
// mma.m16n8k32's A per warp), V^T (128 channels x 32 keys) from shared memory, K-major.
SAGE_DEVICE void wgmma_e4m3_m64n128k32(float (&d)[64], const u32 (&a)[4], u64 b_desc, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(accumulate));
}

#endif  // sm_90a

#endif  // SAGE_HOPPER_CUH
