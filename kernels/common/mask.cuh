// mask.cuh: which keys a query sees (ALGORITHM.md Step 5) and which KV tiles a query tile needs.
//
// Causal, bottom-right aligned: key n is visible to query m iff n <= m + (Nk - Nq). Keys >= Nk are
// padding of the quantized buffers and never visible.
#ifndef SAGE_MASK_CUH
#define SAGE_MASK_CUH

#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#endif

SAGE_DEVICE bool key_visible(int key, int row, int nq, int nk, bool causal) {
    return key < nk && (!causal || key <= row + (nk - nq));
}

// One past the last key any row of the query tile [q0, q0 + rows) sees (<= 0: none).
SAGE_DEVICE int tile_key_end(int q0, int rows, int nq, int nk, bool causal) {
    if (!causal) return nk;
    const int last_row = min(q0 + rows, nq) - 1;
    return min(nk, last_row + (nk - nq) + 1);
}

// True when some key of the KV tile [k0, k0 + kv_tile) is invisible to some row of the query tile:
// only such tiles pay for the mask (the last one or two of a row range).
SAGE_DEVICE bool tile_needs_mask(int k0, int kv_tile, int q0, int nq, int nk, bool causal) {
    if (k0 + kv_tile > nk) return true;
    return causal && (k0 + kv_tile - 1 > q0 + (nk - nq));
}

// causal_mask (and keys >= Nk) on one KV tile of mma/wgmma accumulators: lane 4g+t holds rows row0
// and row1 (= row0 + 8) and, per n-tile nt, keys key0 + 8nt + 2t and + 1 (softmax.cuh's layout).
template <int NT>
SAGE_DEVICE void mask_tile(float (&s)[NT][4], int key0, int t, int row0, int row1, int nq, int nk, bool causal) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int key = key0 + 8 * nt + 2 * t + (e & 1);
            if (!key_visible(key, e < 2 ? row0 : row1, nq, nk, causal)) s[nt][e] = neg_inf();
        }
    }
}

#endif  // SAGE_MASK_CUH
