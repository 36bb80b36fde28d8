// Emulated replacement of kernels/common/ptx.cuh (same function names and signatures), for the
// host emulator (README.md). The mma fragment tables below are transcribed from the PTX ISA
// ("Matrix Fragments for mma.m16n8k16 / m16n8k32 / m16n8k64"), independently of the kernels.
#pragma once

// ---- conversions ----
SAGE_DEVICE float f16_to_f32(u16 bits) {
    _Float16 h;
    memcpy(&h, &bits, 2);
    return (float)h;
}
SAGE_DEVICE u16 f32_to_f16(float x) {
    _Float16 h = (_Float16)x;  // round to nearest even
    u16 b;
    memcpy(&b, &h, 2);
    return b;
}
SAGE_DEVICE u16 f32_to_bf16(float x) {
    u32 b = __float_as_uint(x);
    if (std::isnan(x)) return (u16)((b >> 16) | 0x40);
    u32 lsb = (b >> 16) & 1;
    b += 0x7fff + lsb;
    return (u16)(b >> 16);
}
SAGE_DEVICE u32 pack_f16x2(float lo, float hi) { return (u32)f32_to_f16(lo) | ((u32)f32_to_f16(hi) << 16); }
SAGE_DEVICE u32 pack_bf16x2(float lo, float hi) { return (u32)f32_to_bf16(lo) | ((u32)f32_to_bf16(hi) << 16); }

// E4M3 decode table, from the format definition.
inline float emu_e4m3_decode(u8 c) {
    int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
    if (e == 15 && m == 7) return NAN;
    double v = e == 0 ? m / 8.0 * std::pow(2.0, -6) : (1 + m / 8.0) * std::pow(2.0, e - 7);
    return (float)(s ? -v : v);
}
// Hardware cvt.rn.satfinite.e4m3x2: nearest (ties to even code), |x| > 448 -> 448, NaN -> NaN.
// Brute force over the table: independent of the kernels' and the CPU's encoder.
inline u8 emu_cvt_e4m3(float x) {
    if (std::isnan(x)) return 0x7f;
    u8 sign = std::signbit(x) ? 0x80 : 0;
    double a = std::fabs((double)x);
    if (a >= 448.0) return sign | 0x7e;
    int best = 0;
    double bd = 1e300;
    for (int c = 0; c <= 0x7e; ++c) {
        double d = std::fabs(emu_e4m3_decode((u8)c) - a);
        if (d < bd || (d == bd && (c & 1) == 0)) {
            bd = d;
            best = c;
        }
    }
    return sign | (u8)best;
}
SAGE_DEVICE u32 pack4_e4m3(float a, float b, float c, float d) {
    return (u32)emu_cvt_e4m3(a) | ((u32)emu_cvt_e4m3(b) << 8) | ((u32)emu_cvt_e4m3(c) << 16) |
           ((u32)emu_cvt_e4m3(d) << 24);
}
SAGE_DEVICE void e4m3x4_to_f16x2x2(u32 codes, u32& lo, u32& hi) {
    u16 h[4];
    for (int i = 0; i < 4; ++i) h[i] = f32_to_f16(emu_e4m3_decode((u8)(codes >> (8 * i))));
    lo = (u32)h[0] | ((u32)h[1] << 16);
    hi = (u32)h[2] | ((u32)h[3] << 16);
}
SAGE_DEVICE u16 pack2_e4m3(float lo, float hi) { return (u16)(emu_cvt_e4m3(lo) | ((u16)emu_cvt_e4m3(hi) << 8)); }

// ---- mma: from the PTX ISA fragment tables ----
// Element access: reg `i` of a lane holds elements [i*per, (i+1)*per) "low to high".
enum EmuKind { EK_S8, EK_S4, EK_E4M3, EK_F16, EK_BF16 };
inline double emu_elem(EmuKind k, u32 reg, int j) {
    switch (k) {
        case EK_S8: return (double)(int8_t)(reg >> (8 * j));
        case EK_S4: {
            int v = (reg >> (4 * j)) & 15;
            return v >= 8 ? v - 16 : v;
        }
        case EK_E4M3: return emu_e4m3_decode((u8)(reg >> (8 * j)));
        case EK_F16: return f16_to_f32((u16)(reg >> (16 * j)));
        case EK_BF16: return (double)__uint_as_float(((reg >> (16 * j)) & 0xffff) << 16);
    }
    return 0;
}

// Full A (16 x K) and B (K x 8) from all lanes' fragments.
inline void emu_assemble(EmuKind kind, uint64_t (*s)[16], std::vector<double>& A, std::vector<double>& B, int& K) {
    int per;  // elements per register
    if (kind == EK_S4) {
        K = 64;
        per = 8;
    } else if (kind == EK_F16 || kind == EK_BF16) {
        K = 16;
        per = 2;
    } else {
        K = 32;
        per = 4;
    }
    A.assign(16 * K, NAN);
    B.assign(K * 8, NAN);
    std::vector<int> seen_a(16 * K, 0), seen_b(K * 8, 0);  // each element exactly once
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 4; ++i) {
            const u32 reg = (u32)s[lane][i];
            for (int j = 0; j < per; ++j) {
                const int idx = i * per + j;
                int row, col;
                if (kind == EK_S4) {
                    row = (idx < 8 || (idx >= 16 && idx < 24)) ? g : g + 8;
                    col = t * 8 + (idx & 7) + (idx >= 16 ? 32 : 0);
                } else if (kind == EK_F16 || kind == EK_BF16) {
                    row = (idx < 2 || (idx >= 4 && idx < 6)) ? g : g + 8;
                    col = t * 2 + (idx & 1) + (idx >= 4 ? 8 : 0);
                } else {
                    row = (idx < 4 || (idx >= 8 && idx < 12)) ? g : g + 8;
                    col = t * 4 + (idx & 3) + (idx >= 8 ? 16 : 0);
                }
                seen_a[row * K + col]++;
                A[row * K + col] = emu_elem(kind, reg, j);
            }
        }
        for (int i = 0; i < 2; ++i) {
            const u32 reg = (u32)s[lane][4 + i];
            for (int j = 0; j < per; ++j) {
                const int idx = i * per + j;
                int row;
                if (kind == EK_S4) row = t * 8 + (idx & 7) + (idx >= 8 ? 32 : 0);
                else if (kind == EK_F16 || kind == EK_BF16) row = t * 2 + (idx & 1) + (idx >= 2 ? 8 : 0);
                else row = t * 4 + (idx & 3) + (idx >= 4 ? 16 : 0);
                seen_b[row * 8 + g]++;
                B[row * 8 + g] = emu_elem(kind, reg, j);
            }
        }
    }
    for (int v : seen_a) assert(v == 1);
    for (int v : seen_b) assert(v == 1);
}

template <class Acc>
inline void emu_mma(EmuKind kind, Acc (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    uint64_t in[10] = {a[0], a[1], a[2], a[3], b0, b1};
    for (int i = 0; i < 4; ++i) in[6 + i] = emu_bits(d[i]);
    Acc out[4];
    emu_warp_exchange(in, 10, [&](uint64_t (*s)[16]) {
        std::vector<double> A, B;
        int K;
        emu_assemble(kind, s, A, B, K);
        const int g = emu_lane >> 2, t = emu_lane & 3;
        for (int idx = 0; idx < 4; ++idx) {
            const int row = idx < 2 ? g : g + 8, col = 2 * t + (idx & 1);
            double acc = 0;
            for (int k = 0; k < K; ++k) acc += A[row * K + k] * B[k * 8 + col];
            Acc c = emu_from<Acc>(s[emu_lane][6 + idx]);
            if constexpr (sizeof(Acc) == 4 && Acc(0.5) == 0) {
                out[idx] = (Acc)((long long)c + (long long)acc);
            } else {
                out[idx] = (Acc)((float)c + (float)acc);
            }
        }
    });
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

SAGE_DEVICE void mma_s8(int (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) { emu_mma(EK_S8, d, a, b0, b1); }
SAGE_DEVICE void mma_s4(int (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) { emu_mma(EK_S4, d, a, b0, b1); }
SAGE_DEVICE void mma_s8_from(int (&d)[4], const u32 (&a)[4], u32 b0, u32 b1, int c) {
    d[0] = d[1] = d[2] = d[3] = c;
    emu_mma(EK_S8, d, a, b0, b1);
}
SAGE_DEVICE void mma_s4_from(int (&d)[4], const u32 (&a)[4], u32 b0, u32 b1, int c) {
    d[0] = d[1] = d[2] = d[3] = c;
    emu_mma(EK_S4, d, a, b0, b1);
}
SAGE_DEVICE void mma_e4m3(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) { emu_mma(EK_E4M3, d, a, b0, b1); }
SAGE_DEVICE void mma_f16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) { emu_mma(EK_F16, d, a, b0, b1); }
SAGE_DEVICE void mma_bf16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) { emu_mma(EK_BF16, d, a, b0, b1); }

// ---- shared memory ----
SAGE_DEVICE u32 smem_addr(const void* p) {
    uintptr_t d = (uintptr_t)p - emu_smem_base();
    assert(d < (1ull << 32));
    return (u32)d;
}
SAGE_DEVICE void ldmatrix_x4(u32 (&d)[4], u32 addr) {
    uint64_t in = addr;
    u32 out[4];
    emu_warp_exchange(&in, 1, [&](uint64_t (*s)[16]) {
        const int g = emu_lane >> 2, t = emu_lane & 3;
        for (int i = 0; i < 4; ++i) {
            u32 row = (u32)s[8 * i + g][0];
            assert(row % 16 == 0);
            memcpy(&out[i], (char*)emu_smem_ptr(row) + 4 * t, 4);
        }
    });
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}
SAGE_DEVICE void ldmatrix_x4_trans(u32 (&d)[4], u32 addr) {
    uint64_t in = addr;
    u32 out[4];
    emu_warp_exchange(&in, 1, [&](uint64_t (*s)[16]) {
        const int g = emu_lane >> 2, t = emu_lane & 3;
        for (int i = 0; i < 4; ++i) {
            u32 r0 = (u32)s[8 * i + 2 * t][0], r1 = (u32)s[8 * i + 2 * t + 1][0];
            assert(r0 % 16 == 0 && r1 % 16 == 0);
            u16 lo, hi;
            memcpy(&lo, (char*)emu_smem_ptr(r0) + 2 * g, 2);
            memcpy(&hi, (char*)emu_smem_ptr(r1) + 2 * g, 2);
            out[i] = (u32)lo | ((u32)hi << 16);
        }
    });
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}
SAGE_DEVICE void cp_async_16(u32 smem, const void* gmem) {
    assert(smem % 16 == 0 && ((uintptr_t)gmem) % 16 == 0);
    memcpy(emu_smem_ptr(smem), gmem, 16);
}
SAGE_DEVICE void cp_async_commit() {}
SAGE_DEVICE void cp_async_wait_all() {}
template <int N>
SAGE_DEVICE void cp_async_wait_group() {}

SAGE_DEVICE float ex2(float x) { return std::exp2(x); }

// Clusters: emu_launch_cluster runs a cluster's CTAs at once, each with its own dynamic shared
// memory (emu.h); the barrier is a real one over all their threads.
SAGE_DEVICE void cluster_arrive() { emu_cluster_token = emu_cluster->bar->arrive(); }
SAGE_DEVICE void cluster_wait() {
    emu_cluster->bar->wait(std::move(*emu_cluster_token));
    emu_cluster_token.reset();
}
SAGE_DEVICE u32 cluster_map(u32 addr, u32 rank) {
    const uintptr_t own = (uintptr_t)emu_cluster->smem[emu_cluster_rank], at = emu_smem_base() + addr;
    assert(at >= own && at < own + EMU_DYN_SMEM);  // only the dynamic shared memory is mapped
    return (u32)((uintptr_t)emu_cluster->smem[rank] + (at - own) - emu_smem_base());
}
SAGE_DEVICE u32 ld_cluster_u32(u32 addr) {
    u32 v;
    memcpy(&v, emu_smem_ptr(addr), 4);
    return v;
}
