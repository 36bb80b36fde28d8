// Host-side emulation of the CUDA features the sage kernels use. Each CTA runs as blockDim real
// OS threads with real barriers; warp collectives (shuffles, ldmatrix, mma) exchange through
// per-warp slots. The mma/ldmatrix semantics are written from the PTX ISA fragment tables, independently
// of the kernels' own assumptions.
#pragma once
#include <atomic>
#include <barrier>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __CUDA_ARCH__ 900
// one grid at a time: nothing to wait for (prelude.cuh, grid_dependency_sync)
#define SAGE_HOST_EMULATOR 1
// Dynamic shared memory: a static buffer per CTA of a cluster (the emulator runs one block, or one
// cluster, at a time).
#define EMU_DYN_SMEM (256 * 1024)
#define SAGE_DYNAMIC_SMEM(name) unsigned char* name = emu_dyn_smem[emu_cluster_rank]
#define SAGE_AMALGAMATED 1

struct EmuDim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline thread_local EmuDim3 threadIdx, blockIdx;
inline EmuDim3 gridDim, blockDim;

struct WarpCtx {
    std::barrier<> bar{32};
    uint64_t slot[32][16];
};
struct CtaCtx {
    std::unique_ptr<std::barrier<>> cta;
    WarpCtx warps[8];
};
inline thread_local CtaCtx* emu_ctx;
inline thread_local int emu_lane, emu_warp;
// Thread-block clusters (emu_launch_cluster): the cluster's barrier and its CTAs' dynamic shared memory.
struct ClusterCtx {
    std::unique_ptr<std::barrier<>> bar;
    unsigned char* smem[16];
};
alignas(1024) inline unsigned char emu_dyn_smem[16][EMU_DYN_SMEM];
inline thread_local ClusterCtx* emu_cluster;
inline thread_local int emu_cluster_rank;
inline thread_local std::optional<std::barrier<>::arrival_token> emu_cluster_token;
inline std::mutex emu_atomic_mutex;
inline std::atomic<long> emu_collectives{0};

inline void __syncthreads() { emu_ctx->cta->arrive_and_wait(); }
[[noreturn]] inline void __trap() {
    fprintf(stderr, "__trap\n");
    abort();
}

template <class T>
inline uint64_t emu_bits(T v) {
    uint64_t b = 0;
    static_assert(sizeof(T) <= 8);
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
inline T emu_from(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

// Generic warp exchange: every lane deposits n words, then reads.
template <class F>
inline void emu_warp_exchange(const uint64_t* in, int n, F&& read) {
    WarpCtx& w = emu_ctx->warps[emu_warp];
    for (int i = 0; i < n; ++i) w.slot[emu_lane][i] = in[i];
    w.bar.arrive_and_wait();
    read(w.slot);
    w.bar.arrive_and_wait();
    emu_collectives++;
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int m) {
    assert(mask == 0xffffffffu);
    uint64_t in = emu_bits(v), out = 0;
    emu_warp_exchange(&in, 1, [&](uint64_t (*s)[16]) { out = s[emu_lane ^ m][0]; });
    return emu_from<T>(out);
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src) {
    assert(mask == 0xffffffffu);
    uint64_t in = emu_bits(v), out = 0;
    emu_warp_exchange(&in, 1, [&](uint64_t (*s)[16]) { out = s[src & 31][0]; });
    return emu_from<T>(out);
}
inline int __any_sync(unsigned mask, int pred) {
    assert(mask == 0xffffffffu);
    uint64_t in = pred != 0, out = 0;
    emu_warp_exchange(&in, 1, [&](uint64_t (*s)[16]) {
        for (int l = 0; l < 32; ++l) out |= s[l][0];
    });
    return (int)out;
}
inline int __all_sync(unsigned mask, int pred) { return !__any_sync(mask, !pred); }

inline unsigned __ballot_sync(unsigned mask, int pred) {
    assert(mask == 0xffffffffu);
    uint64_t in = pred != 0;
    unsigned out = 0;
    emu_warp_exchange(&in, 1, [&](uint64_t (*s)[16]) {
        for (int l = 0; l < 32; ++l) out |= (unsigned)(s[l][0] & 1) << l;
    });
    return out;
}

inline int atomicMin(int* p, int v) {
    std::lock_guard<std::mutex> g(emu_atomic_mutex);
    int old = *p;
    if (v < old) *p = v;
    return old;
}

inline unsigned atomicMax(unsigned* p, unsigned v) {
    std::lock_guard<std::mutex> g(emu_atomic_mutex);
    unsigned old = *p;
    if (v > old) *p = v;
    return old;
}

inline int __float2int_rn(float x) {
    if (std::isnan(x)) return 0;
    double r = std::nearbyint((double)x);
    if (r > 2147483647.0) return 2147483647;
    if (r < -2147483648.0) return (-2147483647 - 1);
    return (int)r;
}
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __int_as_float(int x) { return emu_from<float>((uint32_t)x); }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint_as_float(unsigned x) { return emu_from<float>(x); }
inline unsigned __float_as_uint(float x) { return (unsigned)emu_bits(x); }
using std::isfinite;
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int __vimax3_s32(int a, int b, int c) { return max(max(a, b), c); }
// the per-halfword unsigned max and the byte permute (PRMT, default mode) of CUDA
inline unsigned __vmaxu2(unsigned a, unsigned b) {
    const unsigned lo = (a & 0xffffu) > (b & 0xffffu) ? (a & 0xffffu) : (b & 0xffffu);
    const unsigned hi = (a >> 16) > (b >> 16) ? (a >> 16) : (b >> 16);
    return lo | (hi << 16);
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t v = (uint64_t)x | ((uint64_t)y << 32);
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
struct float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline long long min(long long a, long long b) { return a < b ? a : b; }

// ---- shared memory addresses: offsets from a base below every static ------------------------------
inline char emu_anchor;
inline uintptr_t emu_smem_base() { return (uintptr_t)&emu_anchor - 0x40000000ull; }
inline void* emu_smem_ptr(uint32_t a) { return (void*)(emu_smem_base() + a); }

// ---- launching ---------------------------------------------------------------------------------------
// Runs fn once per thread of every CTA of the grid, one CTA at a time.
inline void emu_launch(EmuDim3 grid, EmuDim3 block, const std::function<void()>& fn) {
    gridDim = grid;
    blockDim = block;
    const int nt = block.x * block.y * block.z;
    assert(nt % 32 == 0 && nt <= 256);
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                CtaCtx ctx;
                ctx.cta = std::make_unique<std::barrier<>>(nt);
                std::vector<std::thread> th;
                for (int t = 0; t < nt; ++t) {
                    th.emplace_back([&, t] {
                        threadIdx = EmuDim3{(unsigned)t, 0, 0};
                        blockIdx = EmuDim3{x, y, z};
                        emu_ctx = &ctx;
                        emu_lane = t % 32;
                        emu_warp = t / 32;
                        fn();
                    });
                }
                for (auto& t : th) t.join();
            }
}

// emu_launch for clusters of (cl, 1, 1): the cl CTAs of a cluster run at once.
inline void emu_launch_cluster(EmuDim3 grid, EmuDim3 block, unsigned cl, const std::function<void()>& fn) {
    gridDim = grid;
    blockDim = block;
    const int nt = block.x * block.y * block.z;
    assert(nt % 32 == 0 && nt <= 256 && cl >= 1 && cl <= 16 && grid.x % cl == 0);
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; x += cl) {
                ClusterCtx cluster;
                cluster.bar = std::make_unique<std::barrier<>>(nt * cl);
                std::vector<CtaCtx> ctx(cl);
                for (unsigned r = 0; r < cl; ++r) {
                    cluster.smem[r] = emu_dyn_smem[r];
                    ctx[r].cta = std::make_unique<std::barrier<>>(nt);
                }
                std::vector<std::thread> th;
                for (unsigned r = 0; r < cl; ++r)
                    for (int t = 0; t < nt; ++t) {
                        th.emplace_back([&, r, t] {
                            threadIdx = EmuDim3{(unsigned)t, 0, 0};
                            blockIdx = EmuDim3{x + r, y, z};
                            emu_ctx = &ctx[r];
                            emu_cluster = &cluster;
                            emu_cluster_rank = (int)r;
                            emu_lane = t % 32;
                            emu_warp = t / 32;
                            fn();
                        });
                    }
                for (auto& t : th) t.join();
            }
}
