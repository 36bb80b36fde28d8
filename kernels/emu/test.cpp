// Runs the real kernel sources under the host emulator, launched exactly as kernels/ABI.md says,
// and compares every stage with the C++ port of the CPU reference.
// Build and run from the repository root (g++ 12+, no GPU):
//   g++ -std=c++20 -O2 -ffp-contract=off -pthread -w -Ikernels kernels/emu/test.cpp -o /tmp/sage_emu && /tmp/sage_emu
// (or `python3 scripts/check_kernels.py --emulate`). Add -fsanitize=address to catch out-of-bounds
// accesses: every buffer is allocated at exactly the size ABI.md gives.
#include "emu.h"

#include "common/prelude.cuh"
#include "emu_ptx.cuh"
#include "common/dtype.cuh"
#include "common/fp8.cuh"
#include "common/int4.cuh"
#include "common/groups.cuh"
#include "common/hadamard.cuh"
#include "common/qcodes.cuh"
#include "common/mask.cuh"
#include "common/softmax.cuh"
#include "common/epilogue.cuh"
#include "quant.cu"
#include "attn_mma.cu"
#include "attn_exact.cu"

#include <algorithm>
#include <climits>
#include <string>

#include "ref.h"

// Tiles per CTA of the quantize kernels here: 2, so that every problem with more than one tile runs
// the staged loop (and an odd tile count leaves a CTA with one).
#define EMU_TPC 2

using namespace ref;

enum DType { F16, BF16, F32 };
static const char* dtname[] = {"f16", "bf16", "f32"};
enum Layout { HND, NHD };

static uint64_t rng_state = 12345;
static uint64_t next_u64() {
    rng_state += 0x9E3779B97F4A7C15ull;
    uint64_t z = rng_state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double uniform() { return (next_u64() >> 11) * (1.0 / (1ull << 53)); }
static float normal() {
    double u1 = std::max(uniform(), 1e-300), u2 = uniform();
    return (float)(std::sqrt(-2 * std::log(u1)) * std::cos(2 * M_PI * u2));
}

static float round_dt(float x, DType dt) {
    if (dt == F16) return f16_to_f32(f32_to_f16(x));
    if (dt == BF16) return bf16_to_f32(f32_to_bf16(x));
    return x;
}

// A device tensor: storage in its layout, plus the HND f32 values the reference sees.
struct Tens {
    int B, H, N, D;
    DType dt;
    Layout lay;
    std::vector<float> hnd;            // [B,H,N,D] values (rounded to dt)
    std::vector<unsigned char> store;  // bytes, in layout
    long long sb, sh, sn;
    int off = 0;  // elements the data starts after (misaligned base when 1)
    size_t esz() const { return dt == F32 ? 4 : 2; }
    void* ptr() { return store.data() + off * esz(); }
    void make_storage() {
        if (lay == HND) { sb = (long long)H * N * D; sh = (long long)N * D; sn = D; }
        else { sb = (long long)N * H * D; sh = D; sn = (long long)H * D; }
        store.assign(((size_t)B * H * N * D + off) * esz(), 0);
        for (int b = 0; b < B; ++b) for (int h = 0; h < H; ++h) for (int n = 0; n < N; ++n) for (int c = 0; c < D; ++c) {
            float v = hnd[(((size_t)b * H + h) * N + n) * D + c];
            size_t o = (size_t)(b * sb + h * sh + n * sn + c) + off;
            if (dt == F32) memcpy(&store[o * 4], &v, 4);
            else { u16 bits = dt == F16 ? f32_to_f16(v) : f32_to_bf16(v); memcpy(&store[o * 2], &bits, 2); }
        }
    }
    float get_store(int b, int h, int n, int c) const {
        size_t o = (size_t)(b * sb + h * sh + n * sn + c) + off;
        if (dt == F32) { float v; memcpy(&v, &store[o * 4], 4); return v; }
        u16 bits; memcpy(&bits, &store[o * 2], 2);
        return dt == F16 ? f16_to_f32(bits) : bf16_to_f32(bits);
    }
};

static Tens make_tensor(int B, int H, int N, int D, DType dt, Layout lay, const std::vector<float>& bias, int off = 0,
                        float scale = 1.0f, float scale_c1 = 0.0f) {
    Tens t{B, H, N, D, dt, lay};
    t.off = off;
    t.hnd.resize((size_t)B * H * N * D);
    for (size_t i = 0; i < t.hnd.size(); ++i) {
        const float s = scale_c1 != 0.0f && i % D % 8 == 1 ? scale_c1 : scale;
        t.hnd[i] = round_dt((normal() + bias[i % D]) * s, dt);
    }
    t.make_storage();
    return t;
}

struct Case {
    std::string name;
    int B, Hq, Hkv, Nq, Nk, D;
    DType dt;
    Layout lay;
    Mode mode;
    Gran gran;
    int smooth_q;  // -1 default
    bool smooth_v, rotate, causal;
    int misalign = 0;
    float v_scale = 1.0f;  // V's values times this (tiny: the V scales below 2^-100, quant.cu)
    float qk_scale = 1.0f;  // Q's and K's values times this (tiny bf16: 127 / amax is +Inf)
    float v_scale_c1 = 0.0f;  // nonzero: V's channels c % 8 == 1 take this scale instead of v_scale
};

static int failures = 0;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; printf("    FAIL: "); printf(__VA_ARGS__); printf("\n"); } } while (0)

template <class T>
static std::vector<T> garbage(size_t n) {
    std::vector<T> v(n);
    memset(v.data(), 0xA5, v.size() * sizeof(T));
    return v;
}
static int ulp_diff(float a, float b) {
    if (a == b) return 0;
    if (std::signbit(a) != std::signbit(b)) return INT_MAX;
    return std::abs((int)(ref::bits_of(a) - ref::bits_of(b)));
}
// A lean kernel's stage outputs against the general kernels': codes, scales and flag bit for bit.
static void check_same_stage(const char* lean, const char* general, const std::vector<u8>& codes,
                             const std::vector<u8>& want_codes, const std::vector<float>& scales,
                             const std::vector<float>& want_scales, int flag, int want_flag) {
    const bool same_codes = codes == want_codes;
    const bool same_scales = scales.size() == want_scales.size() &&
                             memcmp(scales.data(), want_scales.data(), scales.size() * 4) == 0;
    printf("    %s: codes %s, scales %s\n", lean, same_codes ? "identical" : "DIFFER", same_scales ? "identical" : "DIFFER");
    CHECK(same_codes && same_scales && flag == want_flag, "%s equals %s", lean, general);
}
static int v8_slot_host(int k) { return 4 * ((k % 8) / 2) + (k % 2) + 2 * (k / 8); }

// ABI.md steps 2-3: block sums of EMU_STATS_TPC tiles each, then one CTA per head combines them.
#define EMU_STATS_TPC 2
static void emu_stats(Tens& X, int B, int H, int N, int D, int Dp, DType dt, int smooth, float* mean, float* vscale) {
    const int nb = ((N + 127) / 128 + EMU_STATS_TPC - 1) / EMU_STATS_TPC;
    auto part = garbage<float>((size_t)B * H * nb * 3 * Dp);
    const int minmax = vscale != nullptr;
    emu_launch({(unsigned)nb, (unsigned)H, (unsigned)B}, {256, 1, 1}, [&] {
        if (dt == F32) kv_stats_blocks_f32((const float*)X.ptr(), X.sb, X.sh, X.sn, H, N, D, Dp, minmax, EMU_STATS_TPC, part.data());
        else if (dt == F16) kv_stats_blocks_f16((const u16*)X.ptr(), X.sb, X.sh, X.sn, H, N, D, Dp, minmax, EMU_STATS_TPC, part.data());
        else kv_stats_blocks_bf16((const u16*)X.ptr(), X.sb, X.sh, X.sn, H, N, D, Dp, minmax, EMU_STATS_TPC, part.data());
    });
    emu_launch({(unsigned)H, (unsigned)B, 1}, {128, 1, 1}, [&] { kv_stats_finish(part.data(), nb, H, N, D, Dp, smooth, mean, vscale); });
}

static void run_case(const Case& cs) {
    printf("== %s: B%d Hq%d Hkv%d Nq%d Nk%d D%d %s %s mode%d gran%d sq%d sv%d rot%d causal%d\n", cs.name.c_str(), cs.B,
           cs.Hq, cs.Hkv, cs.Nq, cs.Nk, cs.D, dtname[cs.dt], cs.lay == HND ? "HND" : "NHD", cs.mode, cs.gran,
           cs.smooth_q, cs.smooth_v, cs.rotate, cs.causal);
    const int B = cs.B, Hq = cs.Hq, Hkv = cs.Hkv, Nq = cs.Nq, Nk = cs.Nk, D = cs.D;
    const int Dp = D <= 64 ? 64 : 128;
    std::vector<float> qb(D), kb(D), zb(D, 0.0f);
    for (int c = 0; c < D; ++c) qb[c] = 0.5f * normal();
    for (int c = 0; c < D; ++c) kb[c] = 4.0f * normal();
    Tens Q = make_tensor(B, Hq, Nq, D, cs.dt, cs.lay, qb, cs.misalign, cs.qk_scale);
    Tens K = make_tensor(B, Hkv, Nk, D, cs.dt, cs.lay, kb, cs.misalign, cs.qk_scale);
    Tens V = make_tensor(B, Hkv, Nk, D, cs.dt, cs.lay, zb, cs.misalign, cs.v_scale, cs.v_scale_c1);

    Problem p;
    p.B = B; p.Hq = Hq; p.Hkv = Hkv; p.Nq = Nq; p.Nk = Nk; p.D = D; p.Dp = Dp;
    p.mode = cs.mode; p.gran = cs.gran;
    const bool quantized = cs.mode != EXACT;
    p.smooth_q = quantized && (cs.smooth_q < 0 ? cs.mode == INT4_FP8 : cs.smooth_q != 0);
    p.smooth_v = quantized && cs.smooth_v;
    p.rotate = quantized && cs.rotate;
    p.causal = cs.causal;
    p.sm_scale = 1.0f / std::sqrt((float)D);

    // output
    Tens O{B, Hq, Nq, D, cs.dt, cs.lay};
    O.off = cs.misalign;
    O.hnd.assign((size_t)B * Hq * Nq * D, 0.0f);
    O.make_storage();
    memset(O.store.data(), 0xA5, O.store.size());
    std::vector<float> lse = garbage<float>((size_t)B * Hq * Nq);

    // ---------------- reference ----------------
    std::vector<float> ro((size_t)B * Hq * Nq * D), rl((size_t)B * Hq * Nq);
    std::vector<KvHead> rkv;
    std::vector<QHead> rq;
    const int group = Hq / Hkv;
    if (quantized) {
        for (int b = 0; b < B; ++b)
            for (int h = 0; h < Hkv; ++h)
                rkv.push_back(prepare_kv(p, &K.hnd[((size_t)b * Hkv + h) * Nk * D], &V.hnd[((size_t)b * Hkv + h) * Nk * D]));
        for (int b = 0; b < B; ++b)
            for (int h = 0; h < Hq; ++h) rq.push_back(prepare_q(p, &Q.hnd[((size_t)b * Hq + h) * Nq * D]));
    }
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < Hq; ++h)
            for (int m = 0; m < Nq; ++m) {
                size_t bh = (size_t)b * Hq + h, bk = (size_t)b * Hkv + h / group;
                float* out = &ro[(bh * Nq + m) * D];
                if (quantized)
                    attend_row_quant(p, rq[bh], &Q.hnd[(bh * Nq + m) * D], rkv[bk], m, out, rl[bh * Nq + m]);
                else
                    attend_row_exact(p, &Q.hnd[bh * Nq * D], &K.hnd[bk * Nk * D], &V.hnd[bk * Nk * D], m, out,
                                     rl[bh * Nq + m]);
            }

    // ---------------- kernels, as ABI.md says ----------------
    long before = emu_collectives.load();
    if (!quantized) {
        EmuDim3 grid{(unsigned)((Nq + (cs.dt == F32 ? 15 : 63)) / (cs.dt == F32 ? 16 : 64)), (unsigned)Hq, (unsigned)B};
        auto fn = [&] {
#define EXACT_CALL(NAME, T)                                                                               \
    NAME((const T*)Q.ptr(), Q.sb, Q.sh, Q.sn, (const T*)K.ptr(), K.sb, K.sh, K.sn, (const T*)V.ptr(), V.sb, V.sh, \
         V.sn, (T*)O.ptr(), O.sb, O.sh, O.sn, lse.data(), Hq, Hkv, Nq, Nk, D, cs.causal, p.sm_scale)
            if (Dp == 64) {
                if (cs.dt == F16) EXACT_CALL(attn_exact_hd64_f16, u16);
                else if (cs.dt == BF16) EXACT_CALL(attn_exact_hd64_bf16, u16);
                else EXACT_CALL(attn_exact_hd64_f32, float);
            } else {
                if (cs.dt == F16) EXACT_CALL(attn_exact_hd128_f16, u16);
                else if (cs.dt == BF16) EXACT_CALL(attn_exact_hd128_bf16, u16);
                else EXACT_CALL(attn_exact_hd128_f32, float);
            }
        };
        emu_launch(grid, EmuDim3{128, 1, 1}, fn);
    } else {
        const int chunks_k = (Nk + 127) / 128, Nq_pad = (Nq + 127) / 128 * 128, Nk_pad = (Nk + 127) / 128 * 128;
        const int qblocks = (Nq + 127) / 128, qmax = p.qmax();
        const int W = cs.mode == INT4_FP8 ? Dp / 2 : Dp;
        const int groups_q = scale_groups(cs.gran, true, Nq), groups_k = scale_groups(cs.gran, false, Nk);
        const bool fp8 = p.fp8();
        const int gran = cs.gran;
                auto km = garbage<float>((size_t)B * Hkv * Dp), vm = km, sv = km;
        auto q_codes = garbage<u8>((size_t)B * Hq * Nq_pad * W);
        auto q_scales = garbage<float>((size_t)B * Hq * groups_q);
        auto k_codes = garbage<u8>((size_t)B * Hkv * Nk_pad * W);
        auto k_scales = garbage<float>((size_t)B * Hkv * groups_k);
        auto k8_codes = garbage<i8>((size_t)B * Hkv * Nk_pad * Dp);
        auto k8_scales = garbage<float>((size_t)B * Hkv * groups_k);
        auto qm = garbage<float>((size_t)B * Hq * qblocks * Dp);
        auto qkm = garbage<float>((size_t)B * Hq * Nq);
        auto vt = garbage<u8>((size_t)B * Hkv * Dp * Nk_pad * (fp8 ? 1 : 2));
        int nonfinite[3] = {INT_MAX, INT_MAX, INT_MAX};
        const bool k8 = cs.mode == INT4_FP8 && p.smooth_q;

#define BY_DT(PREFIX, ...)                                                                     \
    do {                                                                                       \
        if (cs.dt == F16) PREFIX##_f16(__VA_ARGS__);                                           \
        else if (cs.dt == BF16) PREFIX##_bf16(__VA_ARGS__);                                    \
        else PREFIX##_f32(__VA_ARGS__);                                                        \
    } while (0)
        // 2-4
        auto stats = [&](Tens& X, int smooth, float* mean, float* vscale) {
            emu_stats(X, B, Hkv, Nk, D, Dp, cs.dt, smooth, mean, vscale);
        };
        stats(K, 1, km.data(), nullptr);
        if (fp8 || p.smooth_v) stats(V, p.smooth_v, p.smooth_v ? vm.data() : nullptr, fp8 ? sv.data() : nullptr);
        // 5
        emu_launch({(unsigned)(((Nk + 127) / 128 + EMU_TPC - 1) / EMU_TPC), (unsigned)Hkv, (unsigned)B}, {256, 1, 1}, [&] {
            if (cs.dt == F32)
                quantize_k_f32((const float*)K.ptr(), K.sb, K.sh, K.sn, Hkv, Nk, D, Dp, km.data(), gran, qmax, p.rotate, k_codes.data(), k_scales.data(),
                               k8 ? k8_codes.data() : nullptr, k8 ? k8_scales.data() : nullptr, &nonfinite[1], EMU_TPC);
            else if (cs.dt == F16)
                quantize_k_f16((const u16*)K.ptr(), K.sb, K.sh, K.sn, Hkv, Nk, D, Dp, km.data(), gran, qmax, p.rotate, k_codes.data(), k_scales.data(),
                               k8 ? k8_codes.data() : nullptr, k8 ? k8_scales.data() : nullptr, &nonfinite[1], EMU_TPC);
            else
                quantize_k_bf16((const u16*)K.ptr(), K.sb, K.sh, K.sn, Hkv, Nk, D, Dp, km.data(), gran, qmax, p.rotate, k_codes.data(), k_scales.data(),
                                k8 ? k8_codes.data() : nullptr, k8 ? k8_scales.data() : nullptr, &nonfinite[1], EMU_TPC);
        });
        // 6
        emu_launch({(unsigned)(((Nq + 127) / 128 + EMU_TPC - 1) / EMU_TPC), (unsigned)Hq, (unsigned)B}, {256, 1, 1}, [&] {
            float* qkmp = qkm.data();
            float* qmp = p.smooth_q ? qm.data() : nullptr;
            if (cs.dt == F32)
                quantize_q_f32((const float*)Q.ptr(), Q.sb, Q.sh, Q.sn, Hq, Nq, D, Dp, Hkv, km.data(), qkmp, p.smooth_q, qmp, gran, qmax, p.rotate, q_codes.data(), q_scales.data(), &nonfinite[0], EMU_TPC);
            else if (cs.dt == F16)
                quantize_q_f16((const u16*)Q.ptr(), Q.sb, Q.sh, Q.sn, Hq, Nq, D, Dp, Hkv, km.data(), qkmp, p.smooth_q, qmp, gran, qmax, p.rotate, q_codes.data(), q_scales.data(), &nonfinite[0], EMU_TPC);
            else
                quantize_q_bf16((const u16*)Q.ptr(), Q.sb, Q.sh, Q.sn, Hq, Nq, D, Dp, Hkv, km.data(), qkmp, p.smooth_q, qmp, gran, qmax, p.rotate, q_codes.data(), q_scales.data(), &nonfinite[0], EMU_TPC);
        });
        // 5': quantize_k_rows where the host would take it (16-bit input, INT8 codes, D = Dp, no
        // rotation): codes, scales and flag must equal quantize_k's bit for bit
        if (cs.dt != F32 && qmax == 127 && D == Dp && !p.rotate) {
            std::vector<u8> rc(k_codes.size(), 0xAA);
            std::vector<float> rs(k_scales.size(), -1.0f);
            int rflag = INT_MAX;
            emu_launch({(unsigned)(((Nk + 127) / 128 + EMU_TPC - 1) / EMU_TPC), (unsigned)Hkv, (unsigned)B}, {256, 1, 1}, [&] {
                if (cs.dt == F16)
                    quantize_k_rows_f16((const u16*)K.ptr(), K.sb, K.sh, K.sn, Hkv, Nk, Dp, km.data(), gran, rc.data(), rs.data(), &rflag, EMU_TPC);
                else
                    quantize_k_rows_bf16((const u16*)K.ptr(), K.sb, K.sh, K.sn, Hkv, Nk, Dp, km.data(), gran, rc.data(), rs.data(), &rflag, EMU_TPC);
            });
            check_same_stage("quantize_k_rows", "quantize_k", rc, k_codes, rs, k_scales, rflag, nonfinite[1]);
        }
        // 6': quantize_q_rows where the host would take it (16-bit input, INT8 codes, D = Dp, no
        // smooth_q / rotation): codes, scales and flag must equal quantize_q's bit for bit
        if (cs.dt != F32 && qmax == 127 && D == Dp && !p.smooth_q && !p.rotate) {
            std::vector<u8> rc(q_codes.size(), 0xAA);
            std::vector<float> rs(q_scales.size(), -1.0f);
            int rflag = INT_MAX;
            emu_launch({(unsigned)(((Nq + 127) / 128 + EMU_TPC - 1) / EMU_TPC), (unsigned)Hq, (unsigned)B}, {256, 1, 1}, [&] {
                if (cs.dt == F16)
                    quantize_q_rows_f16((const u16*)Q.ptr(), Q.sb, Q.sh, Q.sn, Hq, Nq, Dp, gran, rc.data(), rs.data(), &rflag, EMU_TPC);
                else
                    quantize_q_rows_bf16((const u16*)Q.ptr(), Q.sb, Q.sh, Q.sn, Hq, Nq, Dp, gran, rc.data(), rs.data(), &rflag, EMU_TPC);
            });
            check_same_stage("quantize_q_rows", "quantize_q", rc, q_codes, rs, q_scales, rflag, nonfinite[0]);
        }
        // 7 (quantize_v_f16 takes one tile per CTA, quantize_v_e4m3 QUANT_TPC)
        emu_launch({(unsigned)(fp8 ? ((Nk + 127) / 128 + EMU_TPC - 1) / EMU_TPC : (Nk + 127) / 128), (unsigned)Hkv, (unsigned)B}, {256, 1, 1}, [&] {
            const float* vmp = p.smooth_v ? vm.data() : nullptr;
            if (fp8) {
                if (cs.dt == F32) quantize_v_e4m3_f32((const float*)V.ptr(), V.sb, V.sh, V.sn, Hkv, Nk, D, Dp, vmp, sv.data(), vt.data(), &nonfinite[2], EMU_TPC);
                else if (cs.dt == F16) quantize_v_e4m3_f16((const u16*)V.ptr(), V.sb, V.sh, V.sn, Hkv, Nk, D, Dp, vmp, sv.data(), vt.data(), &nonfinite[2], EMU_TPC);
                else quantize_v_e4m3_bf16((const u16*)V.ptr(), V.sb, V.sh, V.sn, Hkv, Nk, D, Dp, vmp, sv.data(), vt.data(), &nonfinite[2], EMU_TPC);
            } else {
                if (cs.dt == F32) quantize_v_f16_f32((const float*)V.ptr(), V.sb, V.sh, V.sn, Hkv, Nk, D, Dp, vmp, (u16*)vt.data(), &nonfinite[2]);
                else if (cs.dt == F16) quantize_v_f16_f16((const u16*)V.ptr(), V.sb, V.sh, V.sn, Hkv, Nk, D, Dp, vmp, (u16*)vt.data(), &nonfinite[2]);
                else quantize_v_f16_bf16((const u16*)V.ptr(), V.sb, V.sh, V.sn, Hkv, Nk, D, Dp, vmp, (u16*)vt.data(), &nonfinite[2]);
            }
        });
        // 7': quantize_v_cols where the host would take it (FP8 V without smooth_v, 16-bit input, D =
        // Dp), at both slice widths, alone and in clusters: scales, codes and flag must equal kv_stats +
        // quantize_v_e4m3's
        if (fp8 && !p.smooth_v && cs.dt != F32 && D == Dp) {
            for (auto [cw, cl] : {std::pair{16, 1}, {8, 1}, {16, 2}, {16, 4}, {8, 8}, {32, 2}, {64, 1}, {64, 4}, {32, 16}}) {
                if (cw > Dp || (Nk + 127) / 128 * 128 % (16 * cl) != 0) continue;
                std::vector<u8> rvt(vt.size(), 0xAA);
                std::vector<float> rsv(sv.size(), -1.0f);
                int rflag = INT_MAX;
                emu_launch_cluster({(unsigned)(Dp / cw * cl), (unsigned)Hkv, (unsigned)B}, {256, 1, 1}, cl, [&] {
                    if (cs.dt == F16)
                        quantize_v_cols_f16((const u16*)V.ptr(), V.sb, V.sh, V.sn, Hkv, Nk, Dp, cw, cl, rsv.data(), rvt.data(), &rflag);
                    else
                        quantize_v_cols_bf16((const u16*)V.ptr(), V.sb, V.sh, V.sn, Hkv, Nk, Dp, cw, cl, rsv.data(), rvt.data(), &rflag);
                });
                const std::string lean =
                    "quantize_v_cols (" + std::to_string(cw) + " channels, clusters of " + std::to_string(cl) + ")";
                check_same_stage(lean.c_str(), "kv_stats + quantize_v_e4m3", rvt, vt, rsv, sv, rflag, nonfinite[2]);
            }
        }
        CHECK(nonfinite[0] == INT_MAX && nonfinite[1] == INT_MAX && nonfinite[2] == INT_MAX, "nonfinite flags set");

        // ---- stage comparison ----
        {
            size_t n_diff = 0, tot = 0; int maxd = 0;
            auto code_at = [&](const std::vector<u8>& buf, size_t row, int c) -> int {
                if (W == Dp) return (int)(i8)buf[row * W + c];
                u8 byte = buf[row * W + c / 2];
                return unpack_int4(byte, c % 2);
            };
            for (int b = 0; b < B; ++b) for (int h = 0; h < Hq; ++h) for (int n = 0; n < Nq; ++n) for (int c = 0; c < Dp; ++c) {
                int got = code_at(q_codes, ((size_t)b * Hq + h) * Nq_pad + n, c);
                int want = rq[b * Hq + h].codes[n * Dp + c];
                tot++; if (got != want) { n_diff++; maxd = std::max(maxd, std::abs(got - want)); }
            }
            printf("    q codes: %zu/%zu differ (max %d)\n", n_diff, tot, maxd);
            CHECK(maxd <= 1 && n_diff <= tot / 1000, "q codes");
            // padding rows must be zero
            for (int b = 0; b < B; ++b) for (int h = 0; h < Hq; ++h) for (int n = Nq; n < Nq_pad; ++n) for (int c = 0; c < Dp; ++c)
                if (code_at(q_codes, ((size_t)b * Hq + h) * Nq_pad + n, c) != 0) { CHECK(false, "q pad row %d nonzero", n); goto qpad_done; }
            qpad_done:
            n_diff = tot = 0; maxd = 0;
            for (int b = 0; b < B; ++b) for (int h = 0; h < Hkv; ++h) for (int n = 0; n < Nk; ++n) for (int c = 0; c < Dp; ++c) {
                int got = code_at(k_codes, ((size_t)b * Hkv + h) * Nk_pad + n, c);
                int want = rkv[b * Hkv + h].k_codes[n * Dp + c];
                tot++; if (got != want) { n_diff++; maxd = std::max(maxd, std::abs(got - want)); }
                if (k8) {
                    int g8 = k8_codes[(((size_t)b * Hkv + h) * Nk_pad + n) * Dp + c];
                    int w8 = rkv[b * Hkv + h].k8_codes[n * Dp + c];
                    if (g8 != w8) { n_diff++; maxd = std::max(maxd, std::abs(g8 - w8)); }
                }
            }
            printf("    k codes: %zu/%zu differ (max %d)\n", n_diff, tot, maxd);
            CHECK(maxd <= 1 && n_diff <= tot / 1000 + 1, "k codes");
            int mu = 0;
            for (int bh = 0; bh < B * Hq; ++bh) for (int g = 0; g < groups_q; ++g) mu = std::max(mu, ulp_diff(q_scales[bh * groups_q + g], rq[bh].scales[g]));
            printf("    q scales max ulp %d\n", mu); CHECK(mu <= 2, "q scales");
            mu = 0;
            for (int bh = 0; bh < B * Hkv; ++bh) for (int g = 0; g < groups_k; ++g) {
                mu = std::max(mu, ulp_diff(k_scales[bh * groups_k + g], rkv[bh].k_scales[g]));
                if (k8) mu = std::max(mu, ulp_diff(k8_scales[bh * groups_k + g], rkv[bh].k8_scales[g]));
            }
            printf("    k scales max ulp %d\n", mu); CHECK(mu <= 2, "k scales");
            double mr = 0;
            for (int bh = 0; bh < B * Hkv; ++bh) for (int c = 0; c < Dp; ++c) {
                float want = c < D ? rkv[bh].km[c] : 0.0f;
                mr = std::max(mr, (double)std::fabs(km[bh * Dp + c] - want));
            }
            printf("    km max abs diff %.3g\n", mr); CHECK(mr == 0, "km (the pairwise mean is bit-identical)");
            if (p.smooth_q) {
                mr = 0;
                for (int bh = 0; bh < B * Hq; ++bh) for (int i = 0; i < qblocks * Dp; ++i) mr = std::max(mr, (double)std::fabs(qm[bh * qblocks * Dp + i] - rq[bh].qm[i]));
                printf("    qm max abs diff %.3g\n", mr); CHECK(mr < 1e-5, "qm");
            }
            if (p.smooth_v) {
                mr = 0;
                for (int bh = 0; bh < B * Hkv; ++bh) for (int c = 0; c < D; ++c) mr = std::max(mr, (double)std::fabs(vm[bh * Dp + c] - rkv[bh].vm[c]));
                printf("    vm max abs diff %.3g\n", mr); CHECK(mr == 0, "vm (the pairwise mean is bit-identical)");
            }
            // qkm
            mr = 0;
            for (int b = 0; b < B; ++b) for (int h = 0; h < Hq; ++h) for (int n = 0; n < Nq; ++n) {
                const float* qr = &Q.hnd[(((size_t)b * Hq + h) * Nq + n) * D];
                const auto& kmr = rkv[b * Hkv + h / group].km;
                double d = 0, mag = 0; for (int c = 0; c < D; ++c) { d += (double)qr[c] * kmr[c]; mag += std::fabs((double)qr[c] * kmr[c]); }
                mr = std::max(mr, std::fabs(qkm[((size_t)b * Hq + h) * Nq + n] - d) / (1e-3 + mag));
            }
            printf("    qkm max rel diff %.3g\n", mr); CHECK(mr < 1e-5, "qkm");
            n_diff = tot = 0; maxd = 0; mu = 0;
            for (int b = 0; b < B; ++b) for (int h = 0; h < Hkv; ++h) {
                const auto& r = rkv[b * Hkv + h];
                size_t bh = (size_t)b * Hkv + h;
                for (int c = 0; c < Dp; ++c) {
                    if (fp8) mu = std::max(mu, ulp_diff(sv[bh * Dp + c], r.v_scales[c]));
                    for (int n = 0; n < Nk_pad; ++n) {
                        if (fp8) {
                            int col = 16 * (n / 16) + v8_slot_host(n % 16);
                            int got = vt[(bh * Dp + c) * Nk_pad + col];
                            if (n >= Nk) { if (got != 0) { CHECK(false, "v pad col nonzero"); } continue; }
                            int want = r.v_codes[n * Dp + c];
                            tot++; if (got != want) { n_diff++; maxd = std::max(maxd, std::abs(got - want)); }
                        } else {
                            u16 got; memcpy(&got, &vt[((bh * Dp + c) * Nk_pad + n) * 2], 2);
                            if (n >= Nk) { if (got != 0) { CHECK(false, "v pad col nonzero"); } continue; }
                            tot++; if (f16_to_f32(got) != r.v_f16[n * Dp + c]) n_diff++;
                        }
                    }
                }
            }
            printf("    v: %zu/%zu differ (max %d), sv max ulp %d\n", n_diff, tot, maxd, mu);
            CHECK(n_diff <= tot / 1000 + 1 && maxd <= 1 && mu <= 2, "v");
        }

        // 9: attention
        EmuDim3 grid{(unsigned)((Nq + 63) / 64), (unsigned)Hq, (unsigned)B};
        const void* vcodes = vt.data();
        const float* vscal = fp8 ? sv.data() : nullptr;
        const float* vmp = p.smooth_v ? vm.data() : nullptr;
        const float* qmp = p.smooth_q ? qm.data() : nullptr;
        const i8* k8c = p.smooth_q ? (k8 ? k8_codes.data() : (const i8*)k_codes.data()) : nullptr;
        const float* k8s = p.smooth_q ? (k8 ? k8_scales.data() : k_scales.data()) : nullptr;
        auto fn = [&] {
#define ATT_CALL(NAME) NAME(q_codes.data(), q_scales.data(), k_codes.data(), k_scales.data(), vcodes, vscal, vmp, qmp, k8c, k8s, qkm.data(), O.ptr(), O.sb, O.sh, O.sn, lse.data(), Hq, Hkv, Nq, Nk, D, gran, cs.causal, p.sm_scale)
#define ATT_DT(PRE) do { if (cs.dt == F16) ATT_CALL(PRE##_f16); else if (cs.dt == BF16) ATT_CALL(PRE##_bf16); else ATT_CALL(PRE##_f32); } while (0)
            if (cs.mode == INT8_FP8) { if (Dp == 64) ATT_DT(attn_int8_fp8_hd64); else ATT_DT(attn_int8_fp8_hd128); }
            else if (cs.mode == INT4_FP8) { if (Dp == 64) ATT_DT(attn_int4_fp8_hd64); else ATT_DT(attn_int4_fp8_hd128); }
            else { if (Dp == 64) ATT_DT(attn_int8_fp16_hd64); else ATT_DT(attn_int8_fp16_hd128); }
        };
        emu_launch(grid, EmuDim3{128, 1, 1}, fn);
    }
    printf("    %ld warp collectives\n", emu_collectives.load() - before);

    // ---- outputs ----
    double num = 0, den = 0, maxabs = 0, lse_max = 0;
    size_t bad_lse = 0;
    for (int b = 0; b < B; ++b) for (int h = 0; h < Hq; ++h) for (int n = 0; n < Nq; ++n) {
        size_t r = ((size_t)b * Hq + h) * Nq + n;
        for (int c = 0; c < D; ++c) {
            float got = O.get_store(b, h, n, c);
            float want = round_dt(ro[r * D + c], cs.dt);
            if (!(std::isfinite(got))) { CHECK(false, "non-finite output at b%d h%d n%d c%d: %g", b, h, n, c, got); goto out_done; }
            num += std::fabs(got - want); den += std::fabs(want);
            maxabs = std::max(maxabs, (double)std::fabs(got - want));
        }
        {
            float gl = lse[r], wl = rl[r];
            if (std::isinf(wl) || std::isinf(gl)) { if (gl != wl) bad_lse++; }
            else lse_max = std::max(lse_max, (double)std::fabs(gl - wl));
        }
    }
out_done:
    double rel = den > 0 ? num / den : num;
    printf("    O rel_l1 %.3e  max abs %.3e   lse max abs %.3e (%zu inf mismatches)\n", rel, maxabs, lse_max, bad_lse);
    CHECK(rel <= 2e-3, "O rel_l1 %.3e > 2e-3", rel);
    CHECK(bad_lse == 0 && lse_max < 2e-3, "lse");
}

static void unit_tests() {
    // software e4m3 encoder (kernel) vs the reference port vs the brute-force hardware model
    size_t n = 0, bad = 0;
    for (uint32_t bits = 0; bits < 0x44000000u; bits += 997) {  // up to 512
        for (int sgn = 0; sgn < 2; ++sgn) {
            float x = ref::f32_of_bits(bits | (sgn ? 0x80000000u : 0));
            u8 a = ::e4m3_encode(x), b = ref::e4m3_encode(x), c = emu_cvt_e4m3(x);
            n++;
            if (a != b || (b != c && !(std::fabs(x) >= 448.0f))) { if (bad++ < 5) printf("    e4m3 %a: kernel %02x ref %02x hw %02x\n", x, a, b, c); }
        }
    }
    // exact midpoints between codes
    for (int c = 0; c < 0x7e; ++c) {
        float lo = ref::e4m3_decode(c), hi = ref::e4m3_decode(c + 1);
        float mid = (float)(((double)lo + hi) / 2);
        u8 a = ::e4m3_encode(mid), b = ref::e4m3_encode(mid), h = emu_cvt_e4m3(mid);
        n++;
        if (a != b || b != h) { if (bad++ < 10) printf("    e4m3 tie %a: kernel %02x ref %02x hw %02x\n", mid, a, b, h); }
    }
    float specials[] = {0.0f, -0.0f, 448.0f, 463.99f, 464.0f, 1e30f, INFINITY, -INFINITY, NAN, 1e-30f, 0x1p-10f, 0x1.0001p-10f};
    for (float x : specials) { n++; if (::e4m3_encode(x) != ref::e4m3_encode(x)) { bad++; printf("    e4m3 special %g: %02x vs %02x\n", x, ::e4m3_encode(x), ref::e4m3_encode(x)); } }
    printf("unit: e4m3 %zu values, %zu mismatches\n", n, bad);
    CHECK(bad == 0, "e4m3 encoders");
    // the Hopper softmax's integer row max (a tree of three-input maxes) against a plain max, for both
    // tile widths and every group split the kernel uses
    size_t max_bad = 0;
    for (int trial = 0; trial < 20000; ++trial) {
        int d16[16][4], d8[8][4];
        for (auto& r : d16) for (int& v : r) v = (int)(next_u64() % 4000001) - 2000000;
        for (auto& r : d8) for (int& v : r) v = (int)(next_u64() % 4000001) - 2000000;
        if (trial % 7 == 0) d16[trial % 16][trial % 4] = 2048512;  // 128 * 127^2 - 16000: near the largest dot
        for (int r = 0; r < 2; ++r) {
            for (int g = 0; g < 2; ++g) {
                int want = INT_MIN;
                for (int nt = 8 * g; nt < 8 * g + 8; ++nt) want = std::max({want, d16[nt][2 * r], d16[nt][2 * r + 1]});
                max_bad += OnlineSoftmax<16>::row_max_dot(d16, r, 8 * g, 8 * g + 8) != want;
            }
            int want = INT_MIN;
            for (int nt = 0; nt < 8; ++nt) want = std::max({want, d8[nt][2 * r], d8[nt][2 * r + 1]});
            max_bad += OnlineSoftmax<8>::row_max_dot(d8, r, 0, 8) != want;
        }
    }
    printf("unit: row_max_dot %zu mismatches\n", max_bad);
    CHECK(max_bad == 0, "row_max_dot");
    // int4 pack/unpack
    for (int a = -7; a <= 7; ++a) for (int b = -7; b <= 7; ++b) {
        u8 byte = pack_int4_pair(a, b);
        CHECK(unpack_int4(byte, 0) == a && unpack_int4(byte, 1) == b, "int4 %d %d", a, b);
    }
}

// Non-finite values: the flags hold the first bad token's linear index.
static void nonfinite_test() {
    printf("== nonfinite\n");
    const int B = 2, Hq = 4, Hkv = 2, Nq = 70, Nk = 130, D = 64, Dp = 64;
    std::vector<float> z(D, 0.0f);
    Tens Q = make_tensor(B, Hq, Nq, D, F32, NHD, z), K = make_tensor(B, Hkv, Nk, D, F32, NHD, z), V = make_tensor(B, Hkv, Nk, D, F32, NHD, z);
    auto poison = [](Tens& t, int b, int h, int n, float v) { t.hnd[(((size_t)b * t.H + h) * t.N + n) * t.D + 5] = v; t.make_storage(); };
    poison(Q, 1, 2, 37, NAN); poison(Q, 1, 3, 2, NAN);
    poison(K, 0, 1, 100, INFINITY);
    poison(V, 1, 0, 0, -INFINITY); poison(V, 1, 1, 129, NAN);
    std::vector<float> km(B * Hkv * Dp), vm = km, sv = km, qkm(B * Hq * Nq), qm(B * Hq * 1 * Dp), ks(B * Hkv * 3), qs(B * Hq * 3);
    std::vector<u8> qc(B * Hq * 128 * Dp), kc(B * Hkv * 256 * Dp), vt(B * Hkv * Dp * 256 * 2);
    int nf[3] = {INT_MAX, INT_MAX, INT_MAX};
    emu_stats(K, B, Hkv, Nk, D, Dp, F32, 1, km.data(), nullptr);
    emu_stats(V, B, Hkv, Nk, D, Dp, F32, 1, vm.data(), sv.data());
    emu_launch({2, (unsigned)Hkv, (unsigned)B}, {256, 1, 1}, [&] { quantize_k_f32((const float*)K.ptr(), K.sb, K.sh, K.sn, Hkv, Nk, D, Dp, km.data(), 1, 127, 0, kc.data(), ks.data(), nullptr, nullptr, &nf[1], 1); });
    emu_launch({1, (unsigned)Hq, (unsigned)B}, {256, 1, 1}, [&] { quantize_q_f32((const float*)Q.ptr(), Q.sb, Q.sh, Q.sn, Hq, Nq, D, Dp, Hkv, km.data(), qkm.data(), 1, qm.data(), 1, 127, 1, qc.data(), qs.data(), &nf[0], 1); });
    emu_launch({2, (unsigned)Hkv, (unsigned)B}, {256, 1, 1}, [&] { quantize_v_e4m3_f32((const float*)V.ptr(), V.sb, V.sh, V.sn, Hkv, Nk, D, Dp, vm.data(), sv.data(), vt.data(), &nf[2], 1); });
    int wq = (1 * Hq + 2) * Nq + 37, wk = (0 * Hkv + 1) * Nk + 100, wv = (1 * Hkv + 0) * Nk + 0;
    printf("    flags Q %d (want %d) K %d (want %d) V %d (want %d)\n", nf[0], wq, nf[1], wk, nf[2], wv);
    CHECK(nf[0] == wq && nf[1] == wk && nf[2] == wv, "nonfinite flags");
    int nf2 = INT_MAX;
    emu_launch({2, (unsigned)Hkv, (unsigned)B}, {256, 1, 1}, [&] { quantize_v_f16_f32((const float*)V.ptr(), V.sb, V.sh, V.sn, Hkv, Nk, D, Dp, nullptr, (u16*)vt.data(), &nf2); });
    CHECK(nf2 == wv, "nonfinite flag f16 V");
    // quantize_v_cols (16-bit V only): the same tokens from the bit-pattern maxima
    Tens V16 = make_tensor(B, Hkv, Nk, D, F16, NHD, z);
    poison(V16, 1, 0, 0, -INFINITY); poison(V16, 1, 1, 129, NAN);
    for (auto [cw, cl] : {std::pair{16, 1}, {8, 1}, {16, 2}, {64, 2}, {32, 16}}) {
        int nf3 = INT_MAX;
        emu_launch_cluster({(unsigned)(Dp / cw * cl), (unsigned)Hkv, (unsigned)B}, {256, 1, 1}, cl, [&] { quantize_v_cols_f16((const u16*)V16.ptr(), V16.sb, V16.sh, V16.sn, Hkv, Nk, Dp, cw, cl, sv.data(), vt.data(), &nf3); });
        CHECK(nf3 == wv, "nonfinite flag quantize_v_cols (%d channels, clusters of %d): %d", cw, cl, nf3);
    }
    // the first bad token in a later rank's share (tokens 128.. of 256 at cl = 2): its index, not the
    // share's own
    Tens V16b = make_tensor(B, Hkv, Nk, D, F16, NHD, z);
    poison(V16b, 0, 0, 129, NAN);
    for (auto [cw, cl] : {std::pair{16, 2}, {32, 16}}) {
        int nf4 = INT_MAX;
        emu_launch_cluster({(unsigned)(Dp / cw * cl), (unsigned)Hkv, (unsigned)B}, {256, 1, 1}, cl, [&] { quantize_v_cols_f16((const u16*)V16b.ptr(), V16b.sb, V16b.sh, V16b.sn, Hkv, Nk, Dp, cw, cl, sv.data(), vt.data(), &nf4); });
        CHECK(nf4 == 129, "nonfinite flag quantize_v_cols past rank 0 (%d channels, clusters of %d): %d", cw, cl, nf4);
    }
}

// Usage: test                 the basic cases (one per mode/feature), plus the unit tests
//        test unit            e4m3 encoders, int4 packing, non-finite flags
//        test extra           bf16/f16 exact-mode accuracy cases and three long sequences (~1 min)
//        test sweep N [seed]  N random problems (shape, dtype, layout, mode, granularity, options)
//        test case I          basic case I only
int main(int argc, char** argv) {
    const std::string what = argc > 1 ? argv[1] : "basic";
    std::vector<Case> basic = {
        {"int8-fp8 basic", 1, 2, 1, 70, 130, 64, F16, HND, INT8_FP8, PER_WARP, -1, false, false, false},
        {"int8-fp16 gqa causal f32", 2, 4, 2, 113, 203, 128, F32, NHD, INT8_FP16, PER_BLOCK, -1, true, false, true},
        {"int4-fp8 smooth rot", 1, 2, 2, 130, 200, 96, BF16, NHD, INT4_FP8, PER_THREAD, -1, false, true, true},
        {"int8-fp8 all options", 1, 3, 1, 65, 70, 32, F32, HND, INT8_FP8, PER_THREAD, 1, true, true, false},
        {"int4-fp8 hd64 no smooth", 1, 1, 1, 33, 257, 64, F16, NHD, INT4_FP8, PER_WARP, 0, false, false, true},
        {"int8-fp16 causal nq>nk", 1, 1, 1, 10, 4, 64, F16, HND, INT8_FP16, PER_WARP, -1, false, false, true},
        // odd head dims: rows of odd length (HND) and heads at odd offsets (NHD) take single-element
        // stores, the others paired ones (epilogue.cuh)
        {"int8-fp8 d77 f16", 1, 3, 1, 70, 130, 77, F16, HND, INT8_FP8, PER_WARP, -1, false, true, false},
        // several statistics blocks per head (2 tiles each), the last one short
        {"int8-fp8 long kv smooth_v bf16", 1, 2, 1, 40, 1100, 128, BF16, NHD, INT8_FP8, PER_WARP, -1, true, false, false},
        {"int8-fp16 d45 f32 nhd", 1, 2, 1, 70, 130, 45, F32, NHD, INT8_FP16, PER_WARP, -1, false, false, true},
        {"exact f16 causal", 1, 2, 1, 130, 64, 64, F16, HND, EXACT, PER_WARP, -1, false, false, true},
        {"exact bf16 d80", 1, 1, 1, 70, 150, 80, BF16, NHD, EXACT, PER_WARP, -1, false, false, false},
        {"exact f32 d128 causal", 2, 2, 1, 40, 100, 128, F32, HND, EXACT, PER_WARP, -1, false, false, true},
        {"exact f32 d48", 1, 1, 1, 17, 33, 48, F32, NHD, EXACT, PER_WARP, -1, false, false, false},
        {"exact f16 misaligned", 1, 2, 1, 70, 100, 64, F16, NHD, EXACT, PER_WARP, -1, false, false, false, 1},
        {"int8-fp8 tiny v f32", 1, 2, 1, 70, 300, 64, F32, HND, INT8_FP8, PER_WARP, -1, true, false, false, 0, 2e-39f},
        {"int8-fp8 tiny v bf16", 1, 2, 2, 70, 300, 128, BF16, NHD, INT8_FP8, PER_THREAD, -1, false, false, true, 0, 3e-36f},
        // one lane's eight channels of quantize_v_e4m3 mixing V scales below 2^-100 and above 2^40:
        // the 2^64 pre-scale is per channel (a shared one took 1 and misrounded the tiny channels)
        {"int8-fp8 tiny and huge v f32", 1, 2, 1, 70, 300, 64, F32, NHD, INT8_FP8, PER_WARP, -1, false, false, false, 0, 2e-39f, 1.0f, 1e15f},
        {"int8-fp8 tiny and huge v bf16 smooth_v", 1, 2, 1, 70, 300, 128, BF16, HND, INT8_FP8, PER_THREAD, -1, true, false, false, 0, 5e-39f, 1.0f, 2e14f},
        // V scales that underflow to 0 (values near 1e-44): sv = 1, codes 0 (ALGORITHM.md Step 7, "1 if zero")
        {"int8-fp8 underflowing v f32", 1, 2, 1, 70, 300, 64, F32, HND, INT8_FP8, PER_WARP, -1, false, false, false, 0, 1e-44f},
        // group absmax below 127 / FLT_MAX (bf16 only): 127 / amax is +Inf, codes +-127 and 0
        {"int8-fp8 tiny qk bf16", 1, 2, 1, 70, 130, 128, BF16, HND, INT8_FP8, PER_WARP, -1, false, false, false, 0, 1.0f, 1e-38f},
        // the lean quantize_*_rows kernels at the granularities the cases above leave out, over
        // several tiles per CTA with a short last one
        {"int8-fp8 rows per-block", 2, 4, 2, 300, 300, 128, F16, NHD, INT8_FP8, PER_BLOCK, -1, false, false, false},
        {"int8-fp16 rows per-thread d64", 1, 2, 1, 257, 390, 64, BF16, HND, INT8_FP16, PER_THREAD, -1, false, false, true},
    };
    std::vector<Case> extra = {
        {"exact bf16 d32", 2, 4, 2, 113, 203, 32, BF16, HND, EXACT, PER_WARP, -1, false, false, false},
        {"exact bf16 d128", 1, 2, 1, 64, 1023, 128, BF16, NHD, EXACT, PER_WARP, -1, false, false, false},
        {"exact bf16 d96 causal", 1, 3, 3, 239, 239, 96, BF16, HND, EXACT, PER_WARP, -1, false, false, true},
        {"exact bf16 d64 nk64", 1, 2, 1, 257, 64, 64, BF16, NHD, EXACT, PER_WARP, -1, false, false, false},
        {"exact f16 d128", 1, 2, 1, 64, 1023, 128, F16, NHD, EXACT, PER_WARP, -1, false, false, false},
        {"long int8-fp8 causal", 1, 2, 1, 1024, 1023, 128, F16, HND, INT8_FP8, PER_THREAD, 1, true, false, true},
        {"long int4-fp8", 1, 1, 1, 512, 1023, 128, F16, HND, INT4_FP8, PER_WARP, -1, false, false, false},
        {"long exact f16 causal", 1, 2, 1, 1024, 1023, 128, F16, HND, EXACT, PER_WARP, -1, false, false, true},
    };
    if (what == "unit") {
        unit_tests();
        nonfinite_test();
    } else if (what == "extra") {
        for (auto& c : extra) run_case(c);
    } else if (what == "sweep" && argc > 2) {
        int count = atoi(argv[2]);
        rng_state = argc > 3 ? atoll(argv[3]) : 777;
        const int pairs[][2] = {{1, 1}, {113, 203}, {239, 1}, {130, 130}, {257, 64}, {64, 64}, {1, 300}, {200, 129}};
        const int dims[] = {32, 64, 96, 128, 8, 72};
        const int gqa[][2] = {{4, 2}, {2, 1}, {3, 3}, {4, 1}};
        for (int i = 0; i < count; ++i) {
            Case c;
            c.name = "sweep " + std::to_string(i);
            auto pick = [](int n) { return (int)(next_u64() % n); };
            auto& pr = pairs[pick(8)];
            auto& g = gqa[pick(4)];
            c.B = 1 + pick(2); c.Hq = g[0]; c.Hkv = g[1]; c.Nq = pr[0]; c.Nk = pr[1]; c.D = dims[pick(6)];
            c.dt = (DType)pick(3); c.lay = (Layout)pick(2); c.mode = (Mode)pick(4); c.gran = (Gran)pick(3);
            c.smooth_q = pick(3) - 1; c.smooth_v = pick(2); c.rotate = pick(2); c.causal = pick(2); c.misalign = pick(4) == 0;
            run_case(c);
        }
    } else if (what == "case" && argc > 2) {
        run_case(basic.at(atoi(argv[2])));
    } else {
        unit_tests();
        nonfinite_test();
        for (auto& c : basic) run_case(c);
    }
    printf("%d failure(s)\n", failures);
    return failures != 0;
}
