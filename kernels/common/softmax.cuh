// softmax.cuh: the online softmax of ALGORITHM.md Step 6 on mma accumulator tiles.
//
// A warp owns 16 query rows of a tile; lane 4g+t holds rows g and g+8 ("r = 0, 1") and, for each
// n-tile nt of 8 keys, keys 8nt + 2t and 8nt + 2t + 1: s[nt][2r], s[nt][2r+1]. A row's values are
// spread over the quad of lanes 4g..4g+3, so its max is a quad reduction. Its sum `l` is kept
// per lane (each lane's share of the row) and only reduced at the end: l = sum over lanes of
// (l_lane * alpha + sum_lane p) is the CPU's l * alpha + sum p with the additions regrouped.
#ifndef SAGE_SOFTMAX_CUH
#define SAGE_SOFTMAX_CUH

#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#include "common/ptx.cuh"
#endif

// Dot products as "biased" floats, without the (quarter-rate) I2F unit: the f32 with bits
// DOT_BIAS_BITS + n is exactly 1.5 * 2^23 + n for |n| < 2^22 (the ulp is 1 there); |dot| <=
// 128 * 127^2 < 2^21 for INT8 codes (INT4 less). Subtracting DOT_BIAS gives n exactly, the same value
// as (float)n, and the biased values are ordered as the dots (one exponent), so a row max can be taken
// on them. The mma.sync kernel gets them for free by starting its accumulators at DOT_BIAS_BITS
// (mma_s8_from); the wgmma kernel's pair and trio add the bits (update_biased), its solo form
// converts with dot_to_float (update_dots).
#define DOT_BIAS_BITS 0x4B400000
#define DOT_BIAS 12582912.0f
SAGE_DEVICE float biased_dot(int n) { return __int_as_float(DOT_BIAS_BITS + n); }
SAGE_DEVICE float unbias_dot(float f) { return __fsub_rn(f, DOT_BIAS); }
SAGE_DEVICE float int_to_float_exact(int n) { return unbias_dot(biased_dot(n)); }
// (float)n, exact for |n| < 2^24, as one I2FP on sm_89+: an ALU-pipe instruction, where the bias add
// and the FADD or FFMA that use it take FMA-pipe slots, which wgmma shares (kernels/NOTES.md, session
// 15). sm_80's I2F is quarter rate on the MUFU unit: the mma.sync kernel biases its accumulators.
SAGE_DEVICE float dot_to_float(int n) { return __int2float_rn(n); }

template <int NT>
struct OnlineSoftmax {
    float m[2];  // running max of the base-2 logits of rows g, g+8 (-inf: nothing seen yet)
    float l[2];  // this lane's share of the running sum of the unquantized p (times the gain)
    float gain;  // log2 of the factor p is produced at: p = 2^gain * exp2(L - m)

    // `log2_gain`: the FP8 modes want 448 p (the E4M3 range); producing it as exp2(L - (m - log2 448))
    // saves one multiply per score, and l, the sum of the same values, carries the factor to the
    // final division. A rounding-level difference from 448 * exp2(L - m), like exp2.approx itself.
    SAGE_DEVICE void init(float log2_gain = 0.0f) {
        m[0] = m[1] = neg_inf();
        l[0] = l[1] = 0.0f;
        gain = log2_gain;
    }

    // `update`: turns one KV tile's logits s into p = exp2(L - m_new) in place and returns the
    // factor alpha = exp2(m_old - m_new) that rescales the running state of each row (see advance).
    SAGE_DEVICE void update(float (&s)[NT][4], float (&alpha)[2]) {
        const float none[1] = {0.0f};
        update_rows<false>(s, none, alpha);
    }

    // `update` for logits L = s * scale given as the unscaled s (scale > 0, no -inf; the INT8-FP8
    // kernels' unmasked tiles): multiplying by a positive scale keeps the order, so the block max is
    // fl(max s * scale), and each p takes one FMA. With NS scales, n-tile nt takes scale[nt / (NT/NS)]
    // (a KV tile of 128 keys spans two 64-key K scale groups): the max of the groups' fl(max s * scale)
    // is still the max of every fl(s * scale).
    template <int NS>
    SAGE_DEVICE void update_scaled(float (&s)[NT][4], const float (&scale)[NS], float (&alpha)[2]) {
        update_rows<true>(s, scale, alpha);
    }
    SAGE_DEVICE void update_scaled(float (&s)[NT][4], float scale, float (&alpha)[2]) {
        const float one[1] = {scale};
        update_rows<true>(s, one, alpha);
    }

    // The largest of row r's values in n-tiles [nt0, nt1).
    SAGE_DEVICE static float row_max(const float (&s)[NT][4], int r, int nt0, int nt1) {
        float m = neg_inf();
#pragma unroll
        for (int nt = nt0; nt < nt1; ++nt) m = fmaxf(m, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
        return m;
    }

    // The largest of row r's dot products in n-tiles [nt0, nt1), on the integers: sm_90 has a
    // three-input integer max (VIMNMX3), half the instructions of the float max on biased values.
    // Reduced as a tree of depth ~log3(n): a chain would make the softmax wait on its latency.
    SAGE_DEVICE static int row_max_dot(const int (&d)[NT][4], int r, int nt0, int nt1) {
        constexpr int MAXV = 2 * NT;
        int v[MAXV];
        int n = 0;
#pragma unroll
        for (int nt = nt0; nt < nt1; ++nt) {
            v[n++] = d[nt][2 * r];
            v[n++] = d[nt][2 * r + 1];
        }
#pragma unroll
        for (int level = 0; level < 8; ++level) {
            if (n <= 1) break;
            int m = 0;
#pragma unroll
            for (int i = 0; i < MAXV; i += 3) {
                if (i + 2 < n)
                    v[m++] = __vimax3_s32(v[i], v[i + 1], v[i + 2]);
                else if (i + 1 < n)
                    v[m++] = max(v[i], v[i + 1]);
                else if (i < n)
                    v[m++] = v[i];
            }
            n = m;
        }
        return v[0];
    }

    // update_biased's result (below) with each dot converted by dot_to_float and p = exp2(x * scale - base):
    // no fold, so exactly update_scaled's logits (the solo form's softmax: BENCHMARKS.md, session 15).
    template <int NS>
    SAGE_DEVICE void update_dots(const int (&dot)[NT][4], float (&s)[NT][4], const float (&scale)[NS],
                                 float (&alpha)[2]) {
        float base[2];
        const float no_c[2][NS] = {};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = dot_to_float(dot[nt][e]);
#pragma unroll
        for (int r = 0; r < 2; ++r) base[r] = advance(r, dots_block_max<true>(dot, r, scale), alpha);
        float part[2][4];
        exp_steps<EXP_PLAIN>(s, scale, no_c, base, part);
        add_parts(part, alpha);
    }

    // `update_scaled` for the int32 dot products `dot` of an unmasked tile without dS; `s` receives
    // p (the biased values first). The block max is fl(max dot * scale), exactly update_scaled's, and
    // each p takes one FMA on the biased dot f = DOT_BIAS + dot, exp2(f * scale + c) with
    // c = fl(-DOT_BIAS * scale - base) per row and scale group, instead of an unbiasing FADD and an
    // FMA. c is rounded once, so all logits of a (row, group) move together by the same delta,
    // |delta| <= ulp(c) / 2; this form is taken only when every |c| of the warp is below
    // FOLD_LIMIT = 2^12 (delta <= 2^-12: p moves by < 1.7e-4 relative, a constant factor per row and
    // group, against 2^-4 for its E4M3 rounding), else the exact form runs.
    template <int NS>
    SAGE_DEVICE void update_biased(const int (&dot)[NT][4], float (&s)[NT][4], const float (&scale)[NS],
                                   float (&alpha)[2]) {
        constexpr float FOLD_LIMIT = 4096.0f;
        float base[2], c[2][NS];
        bool fold = true;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = biased_dot(dot[nt][e]);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            base[r] = advance(r, dots_block_max<false>(dot, r, scale), alpha);
#pragma unroll
            for (int gi = 0; gi < NS; ++gi) {
                c[r][gi] = __fmaf_rn(-DOT_BIAS, scale[gi], -base[r]);
                fold = fold && fabsf(c[r][gi]) < FOLD_LIMIT;
            }
        }
        float part[2][4];
        if (__all_sync(FULL_MASK, fold))
            exp_steps<EXP_FOLD>(s, scale, c, base, part);
        else
            exp_steps<EXP_UNBIAS>(s, scale, c, base, part);
        add_parts(part, alpha);
    }

    // Row r's block max over the NS scale groups of a tile of dot products: the integer maxima as
    // exact floats (I2FP, or through the bias) times their scale.
    template <bool I2F, int NS>
    SAGE_DEVICE static float dots_block_max(const int (&dot)[NT][4], int r, const float (&scale)[NS]) {
        constexpr int PER = NT / NS;
        float bm = neg_inf();
#pragma unroll
        for (int gi = 0; gi < NS; ++gi) {
            const int m = row_max_dot(dot, r, gi * PER, (gi + 1) * PER);
            bm = fmaxf(bm, __fmul_rn(I2F ? dot_to_float(m) : int_to_float_exact(m), scale[gi]));
        }
        return bm;
    }

    // l = l * alpha + the tile's four partial sums per row (exp_steps)
    SAGE_DEVICE void add_parts(const float (&part)[2][4], const float (&alpha)[2]) {
#pragma unroll
        for (int r = 0; r < 2; ++r)
            l[r] = l[r] * alpha[r] + ((part[r][0] + part[r][1]) + (part[r][2] + part[r][3]));
    }

    // The exponentials of update_biased, p = exp2(f * scale + c) on the biased dots f (EXP_FOLD) or
    // exp2((f - DOT_BIAS) * scale - base) (EXP_UNBIAS), and of update_dots, exp2(x * scale - base) on
    // the dots' floats (EXP_PLAIN), and the row sums in four partial sums per row (regrouped
    // additions, as across the quad: one chain of NT dependent adds would hold the warp after its
    // last ex2), four n-tiles at a time. Written so, ptxas puts each step's adds between the next
    // steps' ex2s, which hold the MUFU unit 8 cycles each, instead of after the last one, where they
    // delayed the P V issue (BENCHMARKS.md, session 14). Each partial sum starts from its first pair:
    // 0 + x is not x for the compiler (x may be -0), so a zero start cost an add each.
    enum { EXP_FOLD, EXP_UNBIAS, EXP_PLAIN };
    template <int ARG, int NS>
    SAGE_DEVICE static void exp_steps(float (&s)[NT][4], const float (&scale)[NS], const float (&c)[2][NS],
                                      const float (&base)[2], float (&part)[2][4]) {
        constexpr int PER = NT / NS;
        static_assert(NT % 4 == 0 && PER % 4 == 0, "steps of four n-tiles inside one scale group");
#pragma unroll
        for (int ks = 0; ks < NT / 4; ++ks) {
            const int gi = 4 * ks / PER;
#pragma unroll
            for (int nt = 4 * ks; nt < 4 * ks + 4; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    s[nt][e] = ARG == EXP_FOLD ? ex2(__fmaf_rn(s[nt][e], scale[gi], c[e / 2][gi]))
                               : ARG == EXP_UNBIAS ? ex2(__fmaf_rn(unbias_dot(s[nt][e]), scale[gi], -base[e / 2]))
                                                   : ex2(__fmaf_rn(s[nt][e], scale[gi], -base[e / 2]));
#pragma unroll
            for (int r = 0; r < 2; ++r)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float pair = s[4 * ks + i][2 * r] + s[4 * ks + i][2 * r + 1];
                    part[r][i] = ks == 0 ? pair : part[r][i] + pair;
                }
        }
    }

    template <bool SCALED, int NS>
    SAGE_DEVICE void update_rows(float (&s)[NT][4], const float (&scale)[NS], float (&alpha)[2]) {
        constexpr int PER = NT / NS;  // n-tiles per scale group
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float bm = neg_inf();
#pragma unroll
            for (int gi = 0; gi < NS; ++gi) {
                const float gm = row_max(s, r, gi * PER, (gi + 1) * PER);
                bm = fmaxf(bm, SCALED ? __fmul_rn(gm, scale[gi]) : gm);
            }
            const float base = advance(r, bm, alpha);
            float sum;  // from the first pair (see exp_steps)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                for (int c = 2 * r; c < 2 * r + 2; ++c)
                    s[nt][c] = ex2(SCALED ? __fmaf_rn(s[nt][c], scale[nt / PER], -base) : s[nt][c] - base);
                const float pair = s[nt][2 * r] + s[nt][2 * r + 1];
                sum = nt == 0 ? pair : sum + pair;
            }
            l[r] = l[r] * alpha[r] + sum;
        }
    }

    // The running max of row r takes this lane's block max `bm` (reduced over the quad here); sets
    // alpha[r] = exp2(m_old - m_new) and returns the exponent base m_new - gain. When every logit so
    // far is -inf (causal rows that see nothing yet) the reference skips the block; here m_new = -inf
    // is replaced by 0 so that alpha = p = 0 and the state stays exactly zero, which is the same
    // thing without a branch (and -inf - -inf never happens).
    SAGE_DEVICE float advance(int r, float bm, float (&alpha)[2]) {
        const float m_new = fmaxf(m[r], quad_max(bm));
        const float mb = m_new == neg_inf() ? 0.0f : m_new;
        alpha[r] = ex2(m[r] - mb);
        m[r] = m_new;
        return mb - gain;
    }

    // `finalize`, part one: the row sums over the quad. Call once, after the last tile.
    SAGE_DEVICE void reduce_rows() {
        l[0] = quad_sum(l[0]);
        l[1] = quad_sum(l[1]);
    }

    // Natural log-sum-exp of the base-2 logits of row r (after reduce_rows): (m + log2 l) * ln 2
    // (less the gain), -inf for a row that saw no key (l == 0).
    SAGE_DEVICE float lse(int r) const {
        if (l[r] == 0.0f) return neg_inf();
        return __fmul_rn(__fadd_rn(m[r], __fsub_rn(log2f(l[r]), gain)), LN_2);
    }
};


#if __CUDA_ARCH__ >= 890
// P (already 448 p) of NT n-tiles as the A operands of NT/4 k32 FP8 steps, straight from the
// accumulator layout: for k-step ks, register 0 of lane 4g+t = row g, keys {2t, 2t+1, 8+2t, 9+2t}
// of n-tiles 4ks, 4ks+1, which the mma reads as k = 4t..4t+3; V^T is stored with the same key
// permutation (quant.cu, v8_slot), so the product is over matching keys. The same holds for
// wgmma's register A operand, which per warp is this fragment.
template <int NT>
SAGE_DEVICE void p_to_e4m3_a(const float (&s)[NT][4], u32 (&pf)[NT / 4][4]) {
#pragma unroll
    for (int ks = 0; ks < NT / 4; ++ks) {
        const int a = 4 * ks;
        pf[ks][0] = pack4_e4m3(s[a][0], s[a][1], s[a + 1][0], s[a + 1][1]);
        pf[ks][1] = pack4_e4m3(s[a][2], s[a][3], s[a + 1][2], s[a + 1][3]);
        pf[ks][2] = pack4_e4m3(s[a + 2][0], s[a + 2][1], s[a + 3][0], s[a + 3][1]);
        pf[ks][3] = pack4_e4m3(s[a + 2][2], s[a + 2][3], s[a + 3][2], s[a + 3][3]);
    }
}
#endif

#endif  // SAGE_SOFTMAX_CUH
