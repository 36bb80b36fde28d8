// C++ port of crates/sage-core/src/cpu.rs + numerics (the reference), for the emulator tests.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace ref {

enum Mode { INT4_FP8, INT8_FP8, INT8_FP16, EXACT };
enum Gran { PER_BLOCK = 0, PER_WARP = 1, PER_THREAD = 2 };

struct Problem {
    int B, Hq, Hkv, Nq, Nk, D, Dp;
    Mode mode;
    Gran gran;
    bool smooth_q, smooth_v, rotate, causal;
    float sm_scale;
    int kv_block = 64;
    int qmax() const { return mode == INT4_FP8 ? 7 : 127; }
    bool fp8() const { return mode == INT4_FP8 || mode == INT8_FP8; }
    std::optional<int> last_visible_key(int m) const {
        if (Nk == 0) return std::nullopt;
        if (!causal) return Nk - 1;
        long long last = (long long)m + Nk - Nq;
        if (last < 0) return std::nullopt;
        return (int)std::min<long long>(last, Nk - 1);
    }
};

inline float f32_of_bits(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
inline uint32_t bits_of(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

// numerics/fp8.rs
inline float e4m3_decode(uint8_t code) {
    float sign = (code & 0x80) ? -1.0f : 1.0f;
    int exp = (code >> 3) & 0x0f, mant = code & 7;
    if (exp == 15 && mant == 7) return NAN;
    if (exp == 0) return sign * (float)mant * (1.0f / 512.0f);
    uint32_t bits = ((uint32_t)(exp - 7 + 127) << 23) | ((uint32_t)mant << 20);
    return sign * f32_of_bits(bits);
}
inline float rte(float x) { return std::nearbyint(x); }
inline uint8_t e4m3_encode(float x) {
    uint8_t sign = std::signbit(x) ? 0x80 : 0;
    if (std::isnan(x)) return sign | 0x7f;
    float a = std::fabs(x);
    if (a >= 464.0f) return sign | 0x7e;
    if (a < 1.0f / 64.0f) return sign | (uint8_t)rte(a * 512.0f);
    int e = (int)(bits_of(a) >> 23) - 127;
    float scaled = a * f32_of_bits((uint32_t)(127 + 3 - e) << 23);
    int m = (int)rte(scaled);
    if (m == 16) { e += 1; m = 8; }
    uint32_t code = ((uint32_t)(e + 7) << 3) | (uint32_t)(m - 8);
    if (code > 0x7e) return sign | 0x7e;
    return sign | (uint8_t)code;
}
inline float e4m3_round(float x) { return e4m3_decode(e4m3_encode(x)); }
inline float f16_round(float x) { return (float)(_Float16)x; }

// numerics/hadamard.rs
inline void fwht(float* row, int n) {
    for (int h = 1; h < n; h *= 2)
        for (int s = 0; s < n; s += 2 * h)
            for (int i = s; i < s + h; ++i) {
                float a = row[i], b = row[i + h];
                row[i] = a + b;
                row[i + h] = a - b;
            }
    float norm = 1.0f / std::sqrt((float)n);
    for (int i = 0; i < n; ++i) row[i] *= norm;
}

// numerics/quant.rs
inline void group_shape(Gran g, bool q, int& block, int& subs) {
    if (q) { block = g == PER_BLOCK ? 128 : 32; subs = g == PER_THREAD ? 8 : 1; }
    else { block = 64; subs = g == PER_THREAD ? 4 : 1; }
}
inline int scale_group(Gran g, bool q, int t) {
    int block, subs; group_shape(g, q, block, subs);
    int sub = g != PER_THREAD ? 0 : (q ? t % 8 : (t % 8) / 2);
    return (t / block) * subs + sub;
}
inline int scale_groups(Gran g, bool q, int n) {
    int block, subs; group_shape(g, q, block, subs);
    return (n + block - 1) / block * subs;
}
inline void quantize_rows(const std::vector<float>& x, int rows, int d, Gran g, bool q, int qmax,
                          std::vector<int8_t>& codes, std::vector<float>& scales) {
    int groups = scale_groups(g, q, rows);
    std::vector<float> amax(groups, 0.0f);
    for (int r = 0; r < rows; ++r) {
        float m = 0.0f;
        for (int c = 0; c < d; ++c) m = std::fmax(m, std::fabs(x[r * d + c]));
        int gi = scale_group(g, q, r);
        amax[gi] = std::fmax(amax[gi], m);
    }
    float qf = (float)qmax;
    std::vector<float> inv(groups);
    scales.assign(groups, 0);
    for (int i = 0; i < groups; ++i) {
        inv[i] = amax[i] == 0 ? 0.0f : qf / amax[i];
        scales[i] = amax[i] == 0 ? 1.0f : amax[i] / qf;
    }
    codes.assign(rows * d, 0);
    for (int r = 0; r < rows; ++r) {
        float k = inv[scale_group(g, q, r)];
        for (int c = 0; c < d; ++c) {
            float v = rte(x[r * d + c] * k);
            // 0 * inf (a zero in a group of absmax below qmax / FLT_MAX) is NaN: code 0, as the
            // CPU's `as i8` and __float2int_rn give it
            v = std::isnan(v) ? 0.0f : std::fmin(std::fmax(v, -qf), qf);
            codes[r * d + c] = (int8_t)v;
        }
    }
}

// numerics/smooth.rs: token_mean (km, vm: pairwise, + 0.0) and channel_mean (smooth_q blocks: in order)
inline float pairwise_sum(const float* x, int d, int c, int lo, int n) {
    if (n == 1) return x[(size_t)lo * d + c];
    int h = 1;
    while (2 * h < n) h *= 2;  // the largest power of two below n
    return pairwise_sum(x, d, c, lo, h) + pairwise_sum(x, d, c, lo + h, n - h);
}
inline std::vector<float> token_mean(const float* x, int rows, int d) {
    std::vector<float> s(d, 0.0f);
    if (rows > 0)
        for (int c = 0; c < d; ++c) s[c] = (pairwise_sum(x, d, c, 0, rows) + 0.0f) / (float)rows;
    return s;
}
inline std::vector<float> channel_mean(const float* x, int rows, int d) {
    std::vector<float> s(d, 0.0f);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < d; ++c) s[c] += x[r * d + c];
    if (rows > 0)
        for (int c = 0; c < d; ++c) s[c] /= (float)rows;
    return s;
}

struct KvHead {
    std::vector<int8_t> k_codes; std::vector<float> k_scales;
    bool has_k8 = false; std::vector<int8_t> k8_codes; std::vector<float> k8_scales;
    std::vector<float> km;
    bool fp8; std::vector<uint8_t> v_codes; std::vector<float> v_decoded, v_scales, v_f16;
    bool has_vm = false; std::vector<float> vm;
};
struct QHead {
    std::vector<int8_t> codes; std::vector<float> scales;
    bool has_qm = false; std::vector<float> qm;
};

inline std::vector<float> pad_rows(const float* x, int rows, int d, int dp) {
    std::vector<float> o(rows * dp, 0.0f);
    for (int r = 0; r < rows; ++r) memcpy(&o[r * dp], &x[r * d], d * 4);
    return o;
}

// k, v: one head [Nk, D] f32
inline KvHead prepare_kv(const Problem& p, const float* k, const float* v) {
    KvHead h;
    int n = p.Nk, d = p.D, dp = p.Dp, qmax = p.qmax();
    h.km = token_mean(k, n, d);
    auto ks = pad_rows(k, n, d, dp);
    for (int r = 0; r < n; ++r) for (int c = 0; c < d; ++c) ks[r * dp + c] -= h.km[c];
    if (p.rotate) for (int r = 0; r < n; ++r) fwht(&ks[r * dp], dp);
    quantize_rows(ks, n, dp, p.gran, false, qmax, h.k_codes, h.k_scales);
    if (p.smooth_q) {
        h.has_k8 = true;
        if (qmax == 127) { h.k8_codes = h.k_codes; h.k8_scales = h.k_scales; }
        else quantize_rows(ks, n, dp, p.gran, false, 127, h.k8_codes, h.k8_scales);
    }
    if (p.smooth_v) { h.has_vm = true; h.vm = token_mean(v, n, d); }
    auto vs = pad_rows(v, n, d, dp);
    if (h.has_vm) for (int r = 0; r < n; ++r) for (int c = 0; c < d; ++c) vs[r * dp + c] -= h.vm[c];
    h.fp8 = p.fp8();
    if (h.fp8) {
        std::vector<float> amax(dp, 0.0f);
        for (int r = 0; r < n; ++r) for (int c = 0; c < dp; ++c) amax[c] = std::fmax(amax[c], std::fabs(vs[r * dp + c]));
        h.v_scales.resize(dp);
        for (int c = 0; c < dp; ++c) { const float sv = amax[c] / 448.0f; h.v_scales[c] = sv == 0.0f ? 1.0f : sv; }  // 1 where it underflows too
        h.v_codes.resize(n * dp); h.v_decoded.resize(n * dp);
        for (int i = 0; i < n * dp; ++i) {
            h.v_codes[i] = e4m3_encode(vs[i] / h.v_scales[i % dp]);
            h.v_decoded[i] = e4m3_decode(h.v_codes[i]);
        }
    } else {
        h.v_f16.resize(n * dp);
        for (int i = 0; i < n * dp; ++i) h.v_f16[i] = f16_round(vs[i]);
    }
    return h;
}

inline QHead prepare_q(const Problem& p, const float* q) {
    QHead h;
    int n = p.Nq, d = p.D, dp = p.Dp;
    auto qs = pad_rows(q, n, d, dp);
    if (p.smooth_q) {
        h.has_qm = true;
        int blocks = (n + 127) / 128;
        std::vector<float> means;
        for (int g = 0; g < blocks; ++g) {
            int s = g * 128, e = std::min(s + 128, n);
            auto m = channel_mean(q + s * d, e - s, d);
            means.insert(means.end(), m.begin(), m.end());
        }
        h.qm = pad_rows(means.data(), blocks, d, dp);
        for (int r = 0; r < n; ++r) for (int c = 0; c < dp; ++c) qs[r * dp + c] -= h.qm[(r / 128) * dp + c];
        if (p.rotate) for (int b = 0; b < blocks; ++b) fwht(&h.qm[b * dp], dp);
    }
    if (p.rotate) for (int r = 0; r < n; ++r) fwht(&qs[r * dp], dp);
    quantize_rows(qs, n, dp, p.gran, true, p.qmax(), h.codes, h.scales);
    return h;
}

// One query row (m) of one head, quantized modes. out: [D]
inline void attend_row_quant(const Problem& p, const QHead& q, const float* q_raw_row, const KvHead& kv, int m,
                             float* out, float& lse) {
    int d = p.D, dp = p.Dp;
    const float LOG2E = 1.44269504088896340736f, LN2 = 0.69314718055994530942f;
    float logit_scale = p.sm_scale * LOG2E;
    auto last = p.last_visible_key(m);
    if (!last) { for (int c = 0; c < d; ++c) out[c] = 0; lse = -INFINITY; return; }
    std::vector<float> ds;
    if (q.has_qm && kv.has_k8) {
        const float* mean = &q.qm[(m / 128) * dp];
        ds.resize(p.Nk);
        for (int n = 0; n < p.Nk; ++n) {
            float s = kv.k8_scales[scale_group(p.gran, false, n)];
            float acc = 0;
            for (int c = 0; c < dp; ++c) acc = acc + mean[c] * ((float)kv.k8_codes[n * dp + c] * s);
            ds[n] = acc;
        }
    }
    const int8_t* cq = &q.codes[m * dp];
    float sq = q.scales[scale_group(p.gran, true, m)];
    float mrun = -INFINITY, l = 0;
    std::vector<float> acc(dp, 0.0f), blk(dp);
    std::vector<float> lg(p.kv_block);
    for (int start = 0; start <= *last; start += p.kv_block) {
        int end = std::min(start + p.kv_block, *last + 1);
        int cnt = end - start;
        for (int j = 0; j < cnt; ++j) {
            int n = start + j;
            int dot = 0;
            for (int c = 0; c < dp; ++c) dot += (int)cq[c] * (int)kv.k_codes[n * dp + c];
            float sk = kv.k_scales[scale_group(p.gran, false, n)];
            float s = (float)dot * sq * sk;
            if (!ds.empty()) s += ds[n];
            lg[j] = s * logit_scale;
        }
        float bm = -INFINITY;
        for (int j = 0; j < cnt; ++j) bm = std::fmax(bm, lg[j]);
        float mn = std::fmax(mrun, bm);
        if (mn == -INFINITY) continue;
        float alpha = std::exp2(mrun - mn);
        float sum = 0;
        for (int j = 0; j < cnt; ++j) { lg[j] = std::exp2(lg[j] - mn); sum += lg[j]; }
        l = l * alpha + sum;
        mrun = mn;
        for (int j = 0; j < cnt; ++j) lg[j] = kv.fp8 ? e4m3_round(448.0f * lg[j]) : f16_round(lg[j]);
        std::fill(blk.begin(), blk.end(), 0.0f);
        const std::vector<float>& vals = kv.fp8 ? kv.v_decoded : kv.v_f16;
        for (int j = 0; j < cnt; ++j)
            if (lg[j] != 0)
                for (int c = 0; c < dp; ++c) blk[c] += lg[j] * vals[(start + j) * dp + c];
        for (int c = 0; c < dp; ++c) acc[c] = acc[c] * alpha + blk[c];
    }
    lse = l == 0 ? -INFINITY : (mrun + std::log2(l)) * LN2;
    if (lse == -INFINITY) { for (int c = 0; c < d; ++c) out[c] = 0; }
    else {
        for (int c = 0; c < d; ++c) out[c] = kv.fp8 ? acc[c] / (448.0f * l) * kv.v_scales[c] : acc[c] / l;
        if (kv.has_vm) for (int c = 0; c < d; ++c) out[c] += kv.vm[c];
    }
    float dot = 0;
    for (int c = 0; c < d; ++c) dot += q_raw_row[c] * kv.km[c];
    lse = lse + p.sm_scale * dot;
}

inline void attend_row_exact(const Problem& p, const float* q, const float* k, const float* v, int m, float* out,
                             float& lse) {
    int d = p.D;
    const float LOG2E = 1.44269504088896340736f, LN2 = 0.69314718055994530942f;
    float logit_scale = p.sm_scale * LOG2E;
    auto last = p.last_visible_key(m);
    if (!last) { for (int c = 0; c < d; ++c) out[c] = 0; lse = -INFINITY; return; }
    float mrun = -INFINITY, l = 0;
    std::vector<float> acc(d, 0.0f), blk(d), lg(p.kv_block);
    for (int start = 0; start <= *last; start += p.kv_block) {
        int end = std::min(start + p.kv_block, *last + 1), cnt = end - start;
        for (int j = 0; j < cnt; ++j) {
            float s = 0;
            for (int c = 0; c < d; ++c) s += q[m * d + c] * k[(start + j) * d + c];
            lg[j] = s * logit_scale;
        }
        float bm = -INFINITY;
        for (int j = 0; j < cnt; ++j) bm = std::fmax(bm, lg[j]);
        float mn = std::fmax(mrun, bm);
        if (mn == -INFINITY) {
            bool nan = false;
            for (int j = 0; j < cnt; ++j) nan |= std::isnan(lg[j]);
            if (nan) std::fill(acc.begin(), acc.end(), NAN);
            continue;
        }
        float alpha = std::exp2(mrun - mn), sum = 0;
        for (int j = 0; j < cnt; ++j) { lg[j] = std::exp2(lg[j] - mn); sum += lg[j]; }
        l = l * alpha + sum;
        mrun = mn;
        std::fill(blk.begin(), blk.end(), 0.0f);
        for (int j = 0; j < cnt; ++j)
            if (lg[j] != 0) for (int c = 0; c < d; ++c) blk[c] += lg[j] * v[(start + j) * d + c];
        for (int c = 0; c < d; ++c) acc[c] = acc[c] * alpha + blk[c];
    }
    lse = l == 0 ? -INFINITY : (mrun + std::log2(l)) * LN2;
    for (int c = 0; c < d; ++c) out[c] = (lse == -INFINITY && !std::isnan(acc[c])) ? 0.0f : acc[c] / l;
}

}  // namespace ref
