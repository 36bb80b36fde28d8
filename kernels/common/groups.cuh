// groups.cuh: the scale groups of ALGORITHM.md Step 3, as numerics/quant.rs defines them.
//
//   granularity    Q groups                               K groups
//   0 per-block    128 consecutive tokens                 64 consecutive tokens
//   1 per-warp     32 consecutive tokens                  64 consecutive tokens
//   2 per-thread   32-token blocks, row r -> sub r%8      64-token blocks, token t -> sub (t%8)/2
//
// Group index of token t = (t / block) * subs + sub(t); groups per head = ceil(N / block) * subs.
// Per-thread subgroups are the rows (Q) and columns (K) one lane owns in an m16n8 accumulator:
// rows g and g+8 (same r%8), columns 2t and 2t+1 (same (c%8)/2). So every lane dequantizes a whole
// S tile with one Q scale and one K scale.
#ifndef SAGE_GROUPS_CUH
#define SAGE_GROUPS_CUH

#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#endif

#define GRAN_PER_BLOCK 0
#define GRAN_PER_WARP 1
#define GRAN_PER_THREAD 2

struct GroupShape {
    int block;  // tokens per outer group (a power of two)
    int shift;  // log2(block)
    int subs;   // sub-scales inside it
};

SAGE_DEVICE GroupShape q_group_shape(int gran) {
    GroupShape s;
    s.shift = gran == GRAN_PER_BLOCK ? 7 : 5;
    s.block = 1 << s.shift;
    s.subs = gran == GRAN_PER_THREAD ? 8 : 1;
    return s;
}

SAGE_DEVICE GroupShape k_group_shape(int gran) {
    GroupShape s;
    s.shift = 6;
    s.block = 64;
    s.subs = gran == GRAN_PER_THREAD ? 4 : 1;
    return s;
}

SAGE_DEVICE int q_sub_group(int gran, int t) { return gran == GRAN_PER_THREAD ? (t & 7) : 0; }
SAGE_DEVICE int k_sub_group(int gran, int t) { return gran == GRAN_PER_THREAD ? ((t & 7) >> 1) : 0; }

// The scale group of token t >= 0 (also valid for a token index local to a QUANT_TOKENS-aligned
// tile, since every block size divides QUANT_TOKENS and the sub-group depends on t % 8 only).
// Shifts, not divisions: the block sizes are powers of two.
SAGE_DEVICE int q_scale_group(int gran, int t) {
    const GroupShape s = q_group_shape(gran);
    return (t >> s.shift) * s.subs + q_sub_group(gran, t);
}
SAGE_DEVICE int k_scale_group(int gran, int t) {
    const GroupShape s = k_group_shape(gran);
    return (t >> s.shift) * s.subs + k_sub_group(gran, t);
}

SAGE_DEVICE int q_scale_groups(int gran, int n) {
    const GroupShape s = q_group_shape(gran);
    return ceil_div(n, s.block) * s.subs;
}
SAGE_DEVICE int k_scale_groups(int gran, int n) {
    const GroupShape s = k_group_shape(gran);
    return ceil_div(n, s.block) * s.subs;
}

#endif  // SAGE_GROUPS_CUH
