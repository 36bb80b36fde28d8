// pipes.cu: which instructions of other warps slow Hopper's wgmma down (kernels/NOTES.md, session 15).
//
// One CTA per SM, 384 threads: warpgroup 0 runs a loop of wgmma (int8 m64n128k32 with both operands
// in shared memory, as S = Q K^T; or e4m3 m64n64k32 with A from registers, as P V), warpgroups 1-2 a
// loop of one kind of independent instruction (ex2, FFMA, FADD, 3-input IADD, I2FP); each warp times
// itself with clock64. Every pair runs alone and together: a kind that leaves the wgmma loop's cycles
// unchanged shares nothing with the tensor cores. The operands are garbage (uninitialized shared
// memory, a fixed byte in registers): only the timing is read.
//
// Build and run on an sm_90a GPU (not part of the Rust build):
//   nvcc -gencode arch=compute_90a,code=sm_90a -O3 -o pipes benches/gpu/pipes.cu && ./pipes
#ifndef __CUDACC_RTC__
#include <cstdint>
#include <cstdio>
#include <cuda_runtime.h>
#else
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
#endif
typedef uint32_t u32;
typedef uint64_t u64;

__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
// 128-byte swizzle, 8-row atoms 1024 bytes apart (the layout does not matter for timing, only validity)
__device__ __forceinline__ u64 desc(u32 a) {
    return (u64)((a & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)64 << 32) | ((u64)1 << 62);
}
#define R8(i) "+r"(d[i]), "+r"(d[i + 1]), "+r"(d[i + 2]), "+r"(d[i + 3]), "+r"(d[i + 4]), "+r"(d[i + 5]), "+r"(d[i + 6]), "+r"(d[i + 7])
#define F8(i) "+f"(f[i]), "+f"(f[i + 1]), "+f"(f[i + 2]), "+f"(f[i + 3]), "+f"(f[i + 4]), "+f"(f[i + 5]), "+f"(f[i + 6]), "+f"(f[i + 7])
__device__ __forceinline__ void igmma(int (&d)[64], u64 a, u64 b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, 1;\n"
        : R8(0), R8(8), R8(16), R8(24), R8(32), R8(40), R8(48), R8(56)
        : "l"(a), "l"(b));
}
__device__ __forceinline__ void qgmma(float (&f)[32], const u32 (&a)[4], u64 b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, 1, 1, 1;\n"
        : F8(0), F8(8), F8(16), F8(24)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }

enum Gemm { NO_GEMM, IGMMA_SS, QGMMA_RS };
enum Work { NO_WORK, EX2, FFMA, FADD, IADD3, I2FP, EX2_FFMA };

// 16 independent chains per thread, so that only the pipe's rate bounds a warp; one loop per kind
// (a branch on the kind inside the loop would be timed too)
template <int W>
__device__ __forceinline__ void work_loop(float (&x)[16], int iters, int lane) {
    const float y = 0.001f * lane;
    const int k = lane * 7 + 1;
    for (int it = 0; it < iters; ++it) {
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            if constexpr (W == EX2) {
                asm volatile("ex2.approx.ftz.f32 %0, %0;" : "+f"(x[i]));
            } else if constexpr (W == FFMA) {
                asm volatile("fma.rn.f32 %0, %0, 0f3F7FFFFF, 0f3A800000;" : "+f"(x[i]));
            } else if constexpr (W == FADD) {
                asm volatile("add.rn.f32 %0, %0, %1;" : "+f"(x[i]) : "f"(y));
            } else if constexpr (W == IADD3) {
                // x + neighbour + k: one IADD3 that ptxas cannot fold across iterations
                int a = __float_as_int(x[i]);
                asm volatile("add.s32 %0, %0, %1;" : "+r"(a) : "r"(__float_as_int(x[(i + 1) & 15])));
                asm volatile("add.s32 %0, %0, %1;" : "+r"(a) : "r"(k));
                x[i] = __int_as_float(a);
            } else if constexpr (W == I2FP) {
                float f;
                asm volatile("cvt.rn.f32.s32 %0, %1;" : "=f"(f) : "r"(__float_as_int(x[i])));
                x[i] = f;
            } else if constexpr (W == EX2_FFMA) {
                if (i % 2 == 0) {
                    asm volatile("ex2.approx.ftz.f32 %0, %0;" : "+f"(x[i]));
                    asm volatile("fma.rn.f32 %0, %0, 0f3F7FFFFF, 0f3A800000;" : "+f"(x[i + 1]));
                    asm volatile("fma.rn.f32 %0, %0, 0f3F7FFFFF, 0f3A800000;" : "+f"(x[i + 1]));
                }
            }
        }
    }
}

// out[warp] = the warp's cycles; sink keeps the results alive
__global__ void __launch_bounds__(384, 1) pipes(int gemm, int work, int gemm_iters, int work_iters, long long* out,
                                                float* sink) {
    extern __shared__ __align__(1024) unsigned char sm[];
    const u32 base = (smem_addr(sm) + 1023) & ~1023u;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    const long long t0 = clock64();
    float keep = 0;
    if (threadIdx.x < 128) {
        if (gemm == IGMMA_SS) {
            int d[64] = {};
            for (int it = 0; it < gemm_iters; ++it) {
                wg_fence();
                for (int ks = 0; ks < 4; ++ks) igmma(d, desc(base) + 2 * ks, desc(base + 16384) + 2 * ks);
                wg_commit();
                wg_wait<1>();
            }
            wg_wait<0>();
            for (int i = 0; i < 64; ++i) keep += d[i];
        } else if (gemm == QGMMA_RS) {
            float f[32] = {};
            const u32 a[4] = {0x38383838u, 0x38383838u, 0x38383838u, 0x38383838u};
            for (int it = 0; it < gemm_iters; ++it) {
                wg_fence();
                for (int ks = 0; ks < 4; ++ks) qgmma(f, a, desc(base + 16384) + 2 * ks);
                wg_commit();
                wg_wait<1>();
            }
            wg_wait<0>();
            for (int i = 0; i < 32; ++i) keep += f[i];
        }
    } else {
        float x[16];
        for (int i = 0; i < 16; ++i) x[i] = -1.0f - 0.001f * (i + lane);
        switch (work) {
            case EX2: work_loop<EX2>(x, work_iters, lane); break;
            case FFMA: work_loop<FFMA>(x, work_iters, lane); break;
            case FADD: work_loop<FADD>(x, work_iters, lane); break;
            case IADD3: work_loop<IADD3>(x, work_iters, lane); break;
            case I2FP: work_loop<I2FP>(x, work_iters, lane); break;
            case EX2_FFMA: work_loop<EX2_FFMA>(x, work_iters, lane); break;
            default: break;
        }
        for (int i = 0; i < 16; ++i) keep += x[i];
    }
    const long long t1 = clock64();
    if (lane == 0) out[warp] = t1 - t0;
    if (keep == 12345.678f) *sink = keep;
}

#ifndef __CUDACC_RTC__
#define CHECK(x)                                                                  \
    do {                                                                          \
        cudaError_t e = (x);                                                      \
        if (e != cudaSuccess) {                                                   \
            printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
            return 1;                                                             \
        }                                                                         \
    } while (0)

int main() {
    long long* out;
    float* sink;
    CHECK(cudaMalloc(&out, 12 * sizeof(long long)));
    CHECK(cudaMalloc(&sink, 4));
    CHECK(cudaFuncSetAttribute(pipes, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024));
    const char* gemm_name[] = {"none", "igmma SS m64n128k32", "qgmma RS m64n64k32"};
    const char* work_name[] = {"none", "ex2", "ffma", "fadd", "iadd3", "i2fp", "ex2+2 ffma"};
    // about 512k cycles each alone: 64 cycles per igmma, 32 per qgmma; two warps per scheduler
    const int gemm_iters[] = {0, 2000, 4000};
    const int work_iters[] = {0, 2000, 16000, 16000, 8000, 8000, 4000};
    printf("%-20s %-11s %12s %12s\n", "wgmma (warpgroup 0)", "work (1-2)", "wgmma cyc", "work cyc");
    for (int g = NO_GEMM; g <= QGMMA_RS; ++g)
        for (int w = NO_WORK; w <= EX2_FFMA; ++w) {
            if (g == NO_GEMM && w == NO_WORK) continue;
            long long h[12];
            for (int rep = 0; rep < 2; ++rep) {  // the first run warms up
                pipes<<<132, 384, 64 * 1024>>>(g, w, gemm_iters[g], work_iters[w], out, sink);
                CHECK(cudaGetLastError());
                CHECK(cudaDeviceSynchronize());
                CHECK(cudaMemcpy(h, out, sizeof h, cudaMemcpyDeviceToHost));
            }
            long long gc = 0, wc = 0;
            for (int i = 0; i < 4; ++i) gc = h[i] > gc ? h[i] : gc;
            for (int i = 4; i < 12; ++i) wc = h[i] > wc ? h[i] : wc;
            printf("%-20s %-11s %12lld %12lld\n", gemm_name[g], work_name[w], g ? gc : 0, w ? wc : 0);
        }
    return 0;
}
#endif
