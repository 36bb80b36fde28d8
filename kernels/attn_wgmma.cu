// attn_wgmma.cu: the attention stage of `int8-fp8` on Hopper (sm_90a), ALGORITHM.md Steps 2 (dS),
// 4-7, with wgmma on tiles that TMA copies into shared memory. The numerics are attn_mma.cu's INT8-FP8
// kernel's (the same scale groups, folds and two-level accumulation) with kv_block = KVT, the KV tile:
// 128 (this backend's default for int8-fp8 on Hopper) or 64 (the mma.sync kernels' value).
//
// Five CTA forms (ABI.md, "Hopper kernel"), the same per-tile code:
//   pair (entries without suffix): three warpgroups, 128 query rows of one (batch, query head), one CTA
//     per SM. Warpgroup 0 is the producer: one thread issues the bulk tensor copies (TMA) of the Q tile
//     and of K_j, V_j for every KV tile j into a ring of STAGES slots; each copy completes on its slot's
//     `full` mbarrier; a slot is refilled once every consumer warp has arrived on its `empty` barrier.
//     It gives its registers away (setmaxnreg) to the consumers, warpgroups 1 and 2.
//   solo (`_solo`): one consumer warpgroup of 64 rows whose first warp also issues the copies (a
//     slot is refilled as soon as the four warps release it), three CTAs per SM (at KVT = DP = 128
//     with a 2-deep ring, and only where the host needs no alignment slack) at up to 168 registers,
//     each running its products in order like the trio's consumers (at DP = 128 the P V in two
//     halves), its softmax converting the dots with I2FP (update_dots). Its CTAs share nothing; up to
//     1024 keys ahead of the persistent trio at DP = 64 and of the persistent pair at DP = 128, and
//     under a causal mask of the persistent trio and the trio up to 4096 keys (BENCHMARKS.md,
//     sessions 13 to 15), where the host takes it.
//   trio (`_trio`): the pair with three consumer warpgroups, 192 query rows, 160 registers per
//     consumer, which therefore run each tile's products in order (F::PIPE below), the P V whole
//     (the persistent trio's at DP = 128 in two halves of 64 channels: PV_CH). Three consumer warps
//     per scheduler instead of two: ahead of the pair at every length measured (sessions 11 and 12).
//   persistent (`_persist`, `_trio_persist`): the pair or the trio with one CTA per SM looping over
//     work items (a round of gridDim.x items at a time, walked in alternate directions). The ring runs
//     on across items; the Q tile and sv / vm are double-buffered, so the producer loads item n + 1's
//     while item n's last tiles and epilogue run; the outputs go through their own staging area,
//     copied out by the producer's other three warps while the consumers start the next item. Ahead
//     where a CTA's fixed costs are a large share, up to 2048 keys (BENCHMARKS.md, sessions 10-12),
//     and the persistent trio at D = 128 without a causal mask at every length (session 17).
//   persistent trio quantizing Q (`_trio_persist_q`, DP = KVT = 128, 16-bit inputs): its producer
//     warpgroup's warps 1-3 also quantize item n + 1's Q tile from the 16-bit input while item n
//     runs (quantize_q_tile below), so the quantization stage has no Q pass.
//   The host's choice per shape: sage-cuda's `auto_form` (and `fused_q_case` for the last).
//   A consumer warpgroup does 64 query rows. Per KV tile:
//     scores:         S = Q K_j^T by wgmma m64nKVTk32 s8 (Q and K_j from shared memory), int32 exact;
//                     [smooth_q] dS of the tile's keys from K_j's codes while the wgmma runs
//     online_softmax: dequantized with one product per score (sq * sk * sm_scale * log2 e), causal /
//                     padding mask, exp2 with 448 folded into the exponent (softmax.cuh)
//     pv:             P (e4m3, from registers, in the accumulator layout) times V_j^T by wgmma
//                     m64nDPk32 e4m3 into a FRESH f32 accumulator, then acc = acc * alpha + that:
//                     no tensor-core accumulator outlives one KV block (Step 6's two-level sum)
//   The pair's consumers overlap their softmax of tile j with their own P_{j-1} V_{j-1} (F::PIPE); every
//   consumer overlaps with the products of the other consumer warpgroups on the SM (the pair's
//   partner, the trio's two others, or the other solo CTAs).
// Finally O = acc / (448 l) * sv (+ vm), and the log-sum-exp, as attn_mma.cu.
//
// Operands in shared memory are K-major, swizzled (common/hopper.cuh): Q and K_j rows are DP bytes of
// INT8 codes, V_j^T rows KVT keys of E4M3 codes (the 128-byte swizzle for 128-byte rows, 64-byte for
// 64), keys permuted inside groups of 16 exactly as for mma.sync (ABI.md, "V"), because wgmma's
// register A operand has mma.m16n8k32's layout per warp.
//
// Buffers, tensor maps and launch: kernels/ABI.md ("Hopper kernel").
#ifndef SAGE_AMALGAMATED
#include "common/prelude.cuh"
#include "common/ptx.cuh"
#include "common/dtype.cuh"
#include "common/groups.cuh"
#include "common/mask.cuh"
#include "common/softmax.cuh"
#include "common/epilogue.cuh"
#include "common/hopper.cuh"
#include "common/qcodes.cuh"
#endif

#ifdef SAGE_HAVE_WGMMA

#define WG_THREADS 128
// Register split of the pair form (setmaxnreg): 128 * 24 + 256 * 240 <= 64K registers of the SM.
#define WG_PRODUCER_REGS 24
#define WG_CONSUMER_REGS 240
#define WG_BAR_OWN 1  // 1 .. NC: each consumer's own barrier (dS, the staged outputs)
#define WG_BAR_EPI 4  // every consumer past its last P V: the ring can hold the outputs

// The CTA form with NC consumer warpgroups: 2 = pair (with a producer warpgroup), 1 = solo, 3 = trio
// (the pair's layout with a third consumer: 160 registers each). PERSIST (pair and trio): one CTA per
// SM that loops over work items, so the next item's Q tile, sv / vm and first K/V tiles load while the
// current one ends, and the producer's other warps copy the staged outputs out while the consumers
// start the next item.
template <int NC, bool PERSIST = false>
struct WgForm {
    static_assert(!PERSIST || NC > 1, "a persistent form has a producer warpgroup");
    static constexpr int CONSUMERS = NC;
    static constexpr bool PRODUCER = NC > 1;
    static constexpr int THREADS = WG_THREADS * (NC + (NC > 1 ? 1 : 0));
    static constexpr int Q_TILE = 64 * NC;  // query rows per CTA (the pair's and solo's divide Q_SMOOTH_BLOCK)
    // K/V ring depth (WgSmem::STAGES, which also sees the tile shapes): the solo form's shared memory
    // must leave room for two more CTAs on the SM, the persistent trio's for two 192-row Q tiles and
    // its staged outputs (at KVT = DP = 128: 4 * 32 + 2 * 24 + 48 KiB, with the barriers, qm, dS,
    // sv / vm and the alignment slack 237 248 bytes > 227 KiB).
    static constexpr int STAGES = NC > 1 && !(PERSIST && NC > 2) ? 4 : 3;
    static constexpr int MIN_CTAS = NC > 1 ? 1 : 3;
    // consumer registers after setmaxnreg: 128 * 24 + NC * 128 * REGS <= 64K
    static constexpr int CONSUMER_REGS = NC > 2 ? 160 : WG_CONSUMER_REGS;
    // PIPE: each consumer overlaps its softmax of tile j with its own P_{j-1} V_{j-1}, so S_j, that
    // product's accumulator and acc are live at once. The trio's consumers (160 registers) and the
    // solo's (168, three CTAs per SM) cannot hold both: each runs S_j, the softmax and P_j V_j in
    // order, and the consumer warps sharing a scheduler overlap one another (at DP = 64 the
    // softmax, not the tensor cores, bounds the pair).
    static constexpr bool PIPE = NC == 2;
    // Q tile and sv / vm buffers: the persistent form fills item n + 1's while item n runs
    static constexpr int BUFS = PERSIST ? 2 : 1;
};

// A 128-byte CUtensorMap, passed by value (__grid_constant__) so TMA reads it from parameter space.
struct __align__(64) TmaMap {
    u64 words[16];
};

// Descriptor swizzle mode of a tile of `row_bytes`-byte rows (1 = 128 B, 2 = 64 B): the one whose span
// is a row, as the host's tensor maps write it.
__host__ __device__ constexpr u32 swizzle_mode(int row_bytes) { return row_bytes == 128 ? 1u : 2u; }

// Shared-memory plan (bytes from a 1024-aligned base): Q (x BUFS) | K ring | V ring | mbarriers | qm |
// dS | sv, vm (x BUFS) | [persistent] staged outputs. The host asks for `BYTES + slack` of dynamic
// shared memory (slack 1024, or 0 where its probe found the start aligned: ABI.md) and the kernel
// aligns the base.
template <int DP, int KVT, int NC, bool PERSIST = false, bool QF = false>
struct WgSmem {
    typedef WgForm<NC, PERSIST> F;
    // The solo form at KVT = DP = 128 keeps two slots: three CTAs' 3 * 75 KiB (the 64 KiB ring, its
    // Q tile, the rest; no alignment slack where the driver's dynamic shared memory starts aligned,
    // sage-cuda's `wgmma_smem_slack`) then fit the SM's 228 KiB, less 1 KiB per CTA; with three
    // slots two.
    static constexpr int STAGES = NC == 1 && KVT == 128 && DP == 128 ? 2 : F::STAGES;
    static constexpr int Q_BYTES = F::Q_TILE * DP;
    static constexpr int K_BYTES = KVT * DP;
    static constexpr int V_BYTES = DP * KVT;
    static constexpr int K_OFF = F::BUFS * Q_BYTES;
    static constexpr int V_OFF = K_OFF + STAGES * K_BYTES;
    static constexpr int BAR_OFF = V_OFF + STAGES * V_BYTES;
    // barriers: q_full and epi_full per buffer, [persistent] item_empty per buffer, out_full,
    // out_empty; then k_full, k_empty, v_full, v_empty for each stage
    // (QF: qx_full of each quantizing warp, its 16-bit Q rows' copy, and one unused: 32 bytes keep
    // the offsets below aligned)
    static constexpr int HEAD_BARS = QF ? 12 : PERSIST ? 8 : 2;
    static constexpr int QM_OFF = BAR_OFF + 8 * (HEAD_BARS + 4 * STAGES);
    // smooth_q: qm of the CTA's block per consumer, and dS of a tile per consumer, double-buffered
    static constexpr int DS_OFF = QM_OFF + 4 * NC * DP;
    // the epilogue's sv and vm of the item's head (16-byte aligned for the bulk copy)
    static constexpr int EPI_OFF = DS_OFF + 4 * NC * 2 * KVT;
    static constexpr int EPI_BYTES = 4 * 2 * DP;
    // persistent: the consumers' 16-bit outputs (the pair form stages them in its ring, which the
    // persistent form is already filling with the next item's tiles by then)
    static constexpr int STAGE_OFF = EPI_OFF + F::BUFS * EPI_BYTES;
    static constexpr int QS_OFF = STAGE_OFF + (PERSIST ? F::Q_TILE * DP * 2 : 0);
    // QF (the Q tile quantized in the kernel): the item's Q scales per buffer (per-thread groups:
    // 8 per 32 rows), then for each of the three quantizing warps 32 rows of 16-bit Q as two boxes
    // of 64 channels (128-byte rows, the 128-byte swizzle: 1024-byte aligned)
    static constexpr int QS_COUNT = F::Q_TILE / 32 * 8;
    static constexpr int QX_OFF = (QS_OFF + (QF ? F::BUFS * 4 * QS_COUNT : 0) + 1023) / 1024 * 1024;
    static constexpr int QX_BOX = 32 * 128;
    static constexpr int BYTES = QF ? QX_OFF + 3 * 2 * QX_BOX : QS_OFF;
    static_assert(EPI_OFF % 16 == 0, "bulk copies need 16-byte aligned destinations");
    static constexpr u32 QK_SWIZZLE = swizzle_mode(DP);
    static constexpr u32 V_SWIZZLE = swizzle_mode(KVT);
};

// Byte offset of byte `c` of row `r` in a swizzled tile of `row_bytes`-byte rows (128 or 64): the
// 16-byte chunk index is XORed with address bits 7-9 (128 B) or 7-8 (64 B) of the row start.
SAGE_DEVICE u32 swizzled(int r, int c, int row_bytes) {
    const u32 a = (u32)(r * row_bytes + c);
    return a ^ (((a >> 7) & (row_bytes == 128 ? 7u : 3u)) << 4);
}

template <int KVT>
SAGE_DEVICE void wgmma_scores(int (&d)[KVT / 2], u64 a_desc, u64 b_desc, int accumulate) {
    if constexpr (KVT == 128)
        wgmma_s8_m64n128k32(d, a_desc, b_desc, accumulate);
    else
        wgmma_s8_m64n64k32(d, a_desc, b_desc, accumulate);
}

// f = P V for one KV block and NCH of its channels from channel c0 (issued, not waited for): KVT/32
// k-steps of 32 keys, a fresh accumulator. V^T's rows are channels, so channel c0 starts c0 * KVT bytes
// into the tile (a whole number of 8-row swizzle atoms for c0 = 64).
template <int NCH, int KVT>
SAGE_DEVICE void pv_issue(float (&f)[NCH / 2], const u32 (&pf)[KVT / 32][4], u32 v_tile, int c0) {
    const u64 v_desc = smem_desc(v_tile + (u32)(c0 * KVT), 8 * KVT, swizzle_mode(KVT));
#pragma unroll
    for (int ks = 0; ks < KVT / 32; ++ks) {
        if constexpr (NCH == 128)
            wgmma_e4m3_m64n128k32(f, pf[ks], v_desc + 2 * ks, ks);
        else
            wgmma_e4m3_m64n64k32(f, pf[ks], v_desc + 2 * ks, ks);
    }
    wgmma_commit();
}

// acc = acc * alpha + f: the second level of Step 6's accumulation (alpha of the block's rows g, g+8).
template <int N>
SAGE_DEVICE void merge_block(float (&o)[N], const float (&f)[N], const float (&alpha)[2]) {
#pragma unroll
    for (int i = 0; i < N; ++i) o[i] = o[i] * alpha[(i >> 1) & 1] + f[i];
}

// dS of the KV tile (Step 2): ds[n] = (sum_d qm[d] * c8k[n, d]) * s8k(n) * sm_scale * log2(e), from the
// INT8 K codes the tile holds anyway (int8-fp8: those of Step 3). KVT/128 keys per thread of the
// warpgroup (KVT = 64: two threads per key, half of the channels each).
template <int DP, int KVT, int UNROLL>
SAGE_DEVICE void tile_ds(u32 k_tile, const float* s_qm, float* ds_out, const float* k_scales, int k_head_at, int gran,
                         int k0, int Nk, float logit_scale, int wtid) {
    constexpr int SPLIT = 128 / KVT;  // threads per key
    constexpr int CHUNKS = DP / 16 / SPLIT;
    const int key = wtid / SPLIT, part = wtid % SPLIT;
    float acc = 0.0f;
#pragma unroll UNROLL
    for (int i = 0; i < CHUNKS; ++i) {
        const int c = (part * CHUNKS + i) * 16;
        U32x4 w;
        asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(w.x), "=r"(w.y), "=r"(w.z), "=r"(w.w)
                     : "r"(k_tile + swizzled(key, c, DP)));
        const u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const float* m = s_qm + c + 4 * q;
            const u32 wd = words[q];
            acc += m[0] * (float)(i8)(wd & 0xff) + m[1] * (float)(i8)((wd >> 8) & 0xff) +
                   m[2] * (float)(i8)((wd >> 16) & 0xff) + m[3] * (float)(i8)(wd >> 24);
        }
    }
    if (SPLIT == 2) acc += __shfl_xor_sync(FULL_MASK, acc, 1);
    if (part == 0) {
        const int n = k0 + key;
        const int groups_k = k_scale_groups(gran, Nk);
        const float ds = n < Nk ? acc * k_scales[k_head_at + (k_scale_group(gran, n) < groups_k ? k_scale_group(gran, n) : 0)] : 0.0f;
        ds_out[key] = __fmul_rn(ds, logit_scale);  // in base-2 logits, like sq
    }
}

// A consumer's outputs (rows of RB bytes) into shared memory at `stage`, 16-byte chunks XOR-swizzled
// with the row (mod 8) so that the 8 rows of a warp's store land in different banks (16-bit outputs;
// f32's 8-byte stores still meet 2-way conflicts in each half-warp).
template <class OUT, int CT, int RB, bool HAS_VM, class SOFTMAX>
SAGE_DEVICE void stage_outputs(const float (&o)[CT * 4], const SOFTMAX& sm, const float* svp, const float* vmp,
                               unsigned char* stage) {
    typedef typename OUT::T OutT;
    // The lane's place from a fresh read of %tid.x: a value derived before the KV loop and kept for
    // this would be one register more through the loop (ptxas spilled it).
    u32 tid;
    asm volatile("mov.u32 %0, %%tid.x;" : "=r"(tid));
    const int warp = (int)(tid % WG_THREADS) / 32, g = (int)(tid % 32) / 4, t = (int)tid % 4;
    float inv_l[2];
    row_inverses<true>(sm, inv_l);
    unsigned char* rows = stage + (warp * 16 + g) * RB;  // row g; row g + 8 is 8 RB further
#pragma unroll
    for (int ct = 0; ct < CT; ++ct) {
        float sv[2], vmv[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            sv[e] = svp[8 * ct + 2 * t + e];
            vmv[e] = HAS_VM ? vmp[8 * ct + 2 * t + e] : 0.0f;
        }
        const int byte = (8 * ct + 2 * t) * (int)sizeof(OutT);
        unsigned char* at = rows + ((byte >> 4) ^ g) * 16 + (byte & 15);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            OutT v[2];
#pragma unroll
            for (int e = 0; e < 2; ++e)
                v[e] = out_value<OUT, true, true>(o[4 * ct + 2 * r + e], sm.l[r], inv_l[r], sv[e],
                                                  HAS_VM ? vmp : nullptr, vmv[e]);
            store_pair((OutT*)(at + 8 * r * RB), v[0], v[1]);
        }
    }
}

// ROWS staged output rows (stage_outputs' layout) out to rows r0, r0 + 1, ... of the head at `obase`,
// a whole 16-byte chunk per thread and step (threads first, first + STRIDE, ...): full 32-byte sectors
// per warp instead of a lane's two channels. Rows at or past Nq are not written.
template <int RB, int ROWS, int STRIDE, int UNROLL, class OutT>
SAGE_DEVICE void copy_out_rows(const unsigned char* stage, OutT* obase, i64 o_sn, int r0, int Nq, int first) {
    constexpr int CHUNKS = RB / 16;
#pragma unroll UNROLL
    for (int i = first; i < ROWS * CHUNKS; i += STRIDE) {
        const int row = i / CHUNKS, ch = i % CHUNKS;
        if (r0 + row < Nq) {
            const uint4 v = *(const uint4*)(stage + row * RB + (ch ^ (row & 7)) * 16);
            *(uint4*)((unsigned char*)(obase + (i64)(r0 + row) * o_sn) + ch * 16) = v;
        }
    }
}

// ---- quantize_q in the kernel (QF) -----------------------------------------------------------
// The persistent trio at DP = 128 can quantize its Q tiles itself (ALGORITHM.md Step 3 for Q, without
// smooth_q or the rotation: quantize_q_rows's case), so that the quantization stage has no Q pass:
// the producer warpgroup's warps 1-3, idle but for the output copies, quantize item n + 1's tile into
// its Q buffer while the consumers run item n. Each warp takes 32-row blocks (one scale-group block:
// items start at multiples of 192) in turn, each copied by TMA into the warp's own staging buffer as
// two boxes of 64 channels with the 128-byte swizzle (chunk k of row r at k ^ (r % 8): a phase's
// eight lanes read eight rows from eight bank groups); lane l takes row l. Three warps rather than
// two: the work takes issue slots on the schedulers the consumers share (NOTES.md, session 18), so
// it is spread over three. Its codes and scale are quantize_q_rows's exactly (qcodes.cuh): the group
// absmax an integer max on the 16-bit patterns (per-thread groups: lanes l, l ^ 8, l ^ 16, l ^ 24;
// per-warp groups: the warp), rint(x * 127 / amax) through code_bits. The codes go where TMA put
// them before: row-major 128-byte rows, 128-byte swizzle. Per-block groups (128 tokens) straddle the
// 192-row items: the host quantizes Q first there.
#define QX_ROWS 32

// Shared-memory accesses by 32-bit address: the quantizing warps have 32 registers, and generic
// pointers take two each.
SAGE_DEVICE U32x4 lds128(u32 addr) {
    U32x4 v;
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
    return v;
}
SAGE_DEVICE void sts128(u32 addr, U32x4 v) {
    asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
}
SAGE_DEVICE void sts32(u32 addr, float v) { asm volatile("st.shared.f32 [%0], %1;" ::"r"(addr), "f"(v) : "memory"); }

// Staged 16-bit chunk k (8 channels) of row r, whose row starts at `row`: box k / 8, chunk k % 8
// swizzled with the row.
SAGE_DEVICE u32 qx_chunk(u32 row, int r, int k) { return row + (k / 8) * (QX_ROWS * 128) + (((k % 8) ^ (r % 8)) * 16); }

template <class DT, bool INF>
SAGE_DEVICE void q_row_codes(u32 row, int r, float inv, u32 dst_row, int local) {
    auto code = [&](u32 bits16) {
        const float v = DT::load((u16)bits16);
        return INF ? code_bits_inf(v) : code_bits(v, inv);
    };
    auto pack = [&](u32 a, u32 c) { return pack_code_bytes(code(a & 0xffffu), code(a >> 16), code(c & 0xffffu), code(c >> 16)); };
#pragma unroll 1
    for (int m = 0; m < 8; ++m) {
        const U32x4 a = lds128(qx_chunk(row, r, 2 * m)), b = lds128(qx_chunk(row, r, 2 * m + 1));
        sts128(dst_row + (swizzled(local, 16 * m, 128) - local * 128),
               U32x4{pack(a.x, a.y), pack(a.z, a.w), pack(b.x, b.y), pack(b.z, b.w)});
    }
}

// Warp `wq` (0-2) of the quantizing warps: its 32-row blocks of item w's Q tile (`item_at(w)`: its
// query tile, head, batch), into the tile at shared address `q_tile` and its scales at `scales`,
// through its staging buffer `qx` (whose copies complete on `qx_full`, `qx_uses` so far).
template <class DT, int Q_TILE, class ITEM>
SAGE_DEVICE void quantize_q_tile(const TmaMap& q_map, const ITEM& item_at, int w, int Nq, int gran, u32 q_tile,
                                 u32 scales, u32 qx, u32 qx_full, int& qx_uses, int* q_flag, int wq, int lane) {
    const u32 row = qx + lane * 128;
#pragma unroll 1
    for (int c = wq; c < Q_TILE / QX_ROWS; c += 3) {
        if (lane == 0) {
            const auto it = item_at(w);
            mbar_arrive_expect_tx(qx_full, 2 * QX_ROWS * 128);
            tma_load_4d(qx, &q_map, 0, it.qt * Q_TILE + QX_ROWS * c, it.h, it.b, qx_full);
            tma_load_4d(qx + QX_ROWS * 128, &q_map, 64, it.qt * Q_TILE + QX_ROWS * c, it.h, it.b, qx_full);
        }
        mbar_wait(qx_full, (u32)(qx_uses & 1));
        ++qx_uses;
        u32 m2 = 0u;
#pragma unroll 4
        for (int k = 0; k < 16; ++k) {
            const U32x4 v = lds128(qx_chunk(row, lane, k));
            m2 = __vmaxu2(m2, __vmaxu2(__vmaxu2(v.x & 0x7fff7fffu, v.y & 0x7fff7fffu),
                                       __vmaxu2(v.z & 0x7fff7fffu, v.w & 0x7fff7fffu)));
        }
        u32 gm = max_u32(m2 & 0xffffu, m2 >> 16);
        const int local = QX_ROWS * c + lane;
        if (gm >= inf_bits16(DT())) {
            const auto it = item_at(w);
            const int token = it.qt * Q_TILE + local;
            if (token < Nq) flag_nonfinite(q_flag, it.qhead * Nq + token);
        }
        gm = q_warp_group_amax(gm, gran);
        const float amax = DT::load((u16)gm);
        if (gran == GRAN_PER_THREAD ? lane < 8 : lane == 0)
            sts32(scales + 4 * q_scale_group(gran, local), quant_scale(amax, 127));
        const float inv = quant_inv(amax, 127);
        const u32 dst_row = q_tile + local * 128;
        if (inv <= 3.40282347e38f)
            q_row_codes<DT, false>(row, lane, inv, dst_row, local);
        else
            q_row_codes<DT, true>(row, lane, inv, dst_row, local);  // bf16 only, rare
        // the codes for the consumers' wgmma (async proxy), and the staged rows free for the next copy
        fence_proxy_async();
        __syncwarp();
    }
}

template <int DP, int KVT, int NC, bool PERSIST, class OUT, bool QF = false>
SAGE_DEVICE void attn_wgmma(const TmaMap& q_map, const TmaMap& k_map, const TmaMap& v_map,
                            const float* __restrict__ q_scales, const float* __restrict__ k_scales,
                            const float* __restrict__ v_scales, const float* __restrict__ vm,
                            const float* __restrict__ qm, const float* __restrict__ qkm, void* __restrict__ out_ptr,
                            i64 o_sb, i64 o_sh, i64 o_sn, float* __restrict__ lse, int B, int Hq, int Hkv, int Nq,
                            int Nk, int D, int gran, int causal, float sm_scale, int* __restrict__ q_flag) {
    typedef WgForm<NC, PERSIST> F;
    typedef WgSmem<DP, KVT, NC, PERSIST, QF> L;
    static_assert(!QF || (PERSIST && NC == 3 && DP == 128 && sizeof(typename OUT::T) == 2),
                  "the Q tile is quantized in the kernel by the persistent trio at DP = 128, 16-bit inputs");
    constexpr int STAGES = L::STAGES;
    constexpr int NT = KVT / 8;   // 8-key slices of S
    constexpr int NG = KVT / 64;  // 64-key K scale groups per tile
    constexpr int CT = DP / 8;    // 8-channel slices of O
    // Channels of one P V product. The solo and persistent trio consumers at DP = 128 cannot hold acc
    // and a block's P V accumulator (64 registers each) beside S and their other live values: their
    // P V runs as products of 64 channels, each merged into acc before the next (the same sums:
    // channels are independent), so that accumulator is 32 registers. The trio's consumers hold the
    // whole product (TRIO_WHOLE: one wgmma wait per tile instead of two, +3 to +4.5 % at 4k-16k keys,
    // BENCHMARKS.md session 17) once two values leave their registers: the item's indices, which
    // the epilogue recomputes from an opaque copy of w, and the dS loop's loads, unrolled by 4 (fully
    // unrolled, 4 bytes spilled on the smooth_q path; by 2, 2 % slower: ptxas's schedules differ).
    // At DP = 64 the trio keeps its former code (the same changes cost it 4 %), and at KVT = 64
    // (not measured).
    constexpr bool TRIO_WHOLE = NC == 3 && !PERSIST && DP == 128 && KVT == 128;
    constexpr int PV_CH = F::PIPE || TRIO_WHOLE ? DP : 64;
    // The solo form converts the int32 dot products with I2FP (dot_to_float, an ALU instruction), the
    // others through the bias (the fold of update_biased): +2 to +4 % at 1024 keys for the solo form,
    // -1.7 to +0.8 % for the trio so converted (BENCHMARKS.md, session 15).
    constexpr bool DOTS_I2F = NC == 1;
    typedef typename OUT::T OutT;
    constexpr int RB = DP * (int)sizeof(OutT);  // bytes of an output row
    // whether the consumers' output rows fit where the form stages them (the trio's f32 rows at KVT = 64
    // do not fit the ring: lane by lane)
    constexpr bool STAGE_FITS = PERSIST || NC * 64 * RB <= STAGES * (L::K_BYTES + L::V_BYTES);
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const u32 base = (smem_addr(smem_raw) + 1023u) & ~1023u;
    unsigned char* base_ptr = smem_raw + (base - smem_addr(smem_raw));
    const u32 s_k = base + L::K_OFF, s_v = base + L::V_OFF;
    const u32 bars = base + L::BAR_OFF;
    auto q_full = [&](int b) { return bars + 8 * b; };
    auto epi_full = [&](int b) { return bars + 8 * (F::BUFS + b); };
    // persistent form: buffer b's Q tile and sv / vm are free again (every consumer warp is past the
    // epilogue of the item that used them); the staged outputs are written (every consumer warp) and
    // copied out (the producer's three copying warps)
    auto item_empty = [&](int b) { return bars + 8 * (2 * F::BUFS + b); };
    const u32 out_full = bars + 8 * 6, out_empty = bars + 8 * 7;
    auto qx_full = [&](int q) { return bars + 8 * (8 + q); };  // QF: quantizing warp q's staged rows
    auto k_full = [&](int s) { return bars + 8 * (L::HEAD_BARS + s); };
    auto k_empty = [&](int s) { return bars + 8 * (L::HEAD_BARS + STAGES + s); };
    auto v_full = [&](int s) { return bars + 8 * (L::HEAD_BARS + 2 * STAGES + s); };
    auto v_empty = [&](int s) { return bars + 8 * (L::HEAD_BARS + 3 * STAGES + s); };

    const int tid = threadIdx.x;
    // The warpgroup index through a shuffle, so the compiler knows it is warp-uniform: wgmma code on a
    // path it believes divergent gets serialized (ptxas C7520).
    const int wg = __shfl_sync(FULL_MASK, tid / WG_THREADS, 0);
    const int nq_pad = round_up(Nq, QUANT_TOKENS), nk_pad = round_up(Nk, QUANT_TOKENS);
    const bool is_causal = causal != 0;
    const bool smooth = qm != nullptr;
    // Work item w (query tile, head, batch): the CTA's blockIdx.x, or (persistent) one per round of
    // gridDim.x items (item_of). Query tile fastest so that the CTAs running at one time share K/V heads
    // in L2; causal: the last query tiles see the most keys, so they come first. Registers are scarce in
    // the consumers (the pair's kv128 x hd128 kernel is at its 240), so the item is recomputed from w
    // where needed rather than kept live through the KV loop.
    const int n_qt = ceil_div(Nq, F::Q_TILE);
    const int n_items = n_qt * Hq * B;
    // The persistent CTA's item of round n (>= n_items: none left): the rounds are walked in alternate
    // directions. Under a causal mask an item's cost falls along a head's query tiles, and a fixed
    // stride would give some CTAs the heavy tiles of every round; alternating pairs heavy with light.
    auto item_of = [&](int n) {
        const int grid = (int)gridDim.x, c = (int)blockIdx.x;
        return n * grid + ((n & 1) ? grid - 1 - c : c);
    };
    // the item after w, and how many the CTA had before w (the other forms: one item, none before)
    auto next_item = [&](int w) { return PERSIST ? item_of(w / (int)gridDim.x + 1) : w + n_items; };
    auto items_before = [&](int w) { return PERSIST ? w / (int)gridDim.x : (w - (int)blockIdx.x) / n_items; };
    struct Item {
        int qt, h, b, n_tiles;
        i64 qhead, khead;
    };
    auto item = [&](int w) {
        Item it;
        it.qt = n_qt - 1 - w % n_qt;
        it.h = (w / n_qt) % Hq;
        it.b = w / (n_qt * Hq);
        it.qhead = (i64)it.b * Hq + it.h;
        it.khead = (i64)it.b * Hkv + it.h / (Hq / Hkv);  // GQA
        const int key_end = tile_key_end(it.qt * F::Q_TILE, F::Q_TILE, Nq, Nk, is_causal);
        it.n_tiles = key_end > 0 ? ceil_div(key_end, KVT) : 0;
        return it;
    };
    auto out_base = [&](const Item& it) { return (OutT*)out_ptr + (i64)it.b * o_sb + (i64)it.h * o_sh; };
    // Whether an item's rows go out through shared memory as whole 16-byte chunks (else lane by lane:
    // a padded head dim, an unaligned row; the persistent form's staging area holds 16-bit rows).
    auto staged_out = [&](const Item& it) {
        return D == DP && (u64)out_base(it) % 16 == 0 && (o_sn * (i64)sizeof(OutT)) % 16 == 0 &&
               (!PERSIST || sizeof(OutT) == 2) && STAGE_FITS;
    };
    // Copies of the padded code buffers: the Q tile (rows [Q_TILE qt, + Q_TILE): inside the head's
    // padded rows for the pair and solo; the trio's 192 may run past them into the next head, or past
    // the buffer, which TMA fills with zeros, but every consumer with a row below Nq has all its 64
    // rows inside, as both are multiples of 64) into buffer b, and KV tile j of the item's head into
    // ring slot s.
    auto load_q = [&](int w, int b) {
        const Item it = item(w);
        mbar_arrive_expect_tx(q_full(b), L::Q_BYTES);
        tma_load_2d(base + b * L::Q_BYTES, &q_map, 0, (int)(it.qhead * nq_pad + it.qt * F::Q_TILE), q_full(b));
    };
    // The epilogue's sv (and vm) of the head, copied at the start: read from global memory at the end,
    // their latency sat between the last P V and the stores of every CTA (BENCHMARKS.md, session 7).
    auto load_epilogue = [&](int w, int b) {
        const i64 at = item(w).khead * DP;
        const u32 dst = base + L::EPI_OFF + b * L::EPI_BYTES;
        mbar_arrive_expect_tx(epi_full(b), (vm != nullptr ? 2 : 1) * 4 * DP);
        bulk_load(dst, v_scales + at, 4 * DP, epi_full(b));
        if (vm != nullptr) bulk_load(dst + 4 * DP, vm + at, 4 * DP, epi_full(b));
    };
    // KV tile j's box: K rows of the head's padded codes, V^T columns (its rows are the head's DP).
    auto k_row = [&](int w, int j) { return (int)(item(w).khead * nk_pad + j * KVT); };
    auto v_row = [&](int w) { return (int)(item(w).khead * DP); };
    auto load_k = [&](int w, int j, int s) {
        mbar_arrive_expect_tx(k_full(s), L::K_BYTES);
        tma_load_2d(s_k + s * L::K_BYTES, &k_map, 0, k_row(w, j), k_full(s));
    };
    auto load_v = [&](int w, int j, int s) {
        mbar_arrive_expect_tx(v_full(s), L::V_BYTES);
        tma_load_2d(s_v + s * L::V_BYTES, &v_map, j * KVT, v_row(w), v_full(s));
    };

    if (tid == 0) {
        // The host asks for no alignment slack where its probe found the dynamic shared memory
        // aligned (ABI.md): should that ever not hold, stop rather than write past the allocation
        // (the trap ends the CUDA context, as any device-side fault would: never a wrong answer).
        if (base - smem_addr(smem_raw) + L::BYTES > dynamic_smem_bytes()) __trap();
        for (int b = 0; b < F::BUFS; ++b) {
            // QF: the producer's three quantizing warps arrive once the tile's codes are in
            mbar_init(q_full(b), QF ? WG_THREADS - 32 : 1);
            mbar_init(epi_full(b), 1);
            if (PERSIST) mbar_init(item_empty(b), NC * WG_THREADS);
        }
        // every thread that wrote or read the staged outputs arrives itself (an arrival by one lane after
        // __syncwarp orders the warp's accesses as well, but compute-sanitizer's racecheck does not see it)
        if (PERSIST) {
            mbar_init(out_full, NC * WG_THREADS);
            mbar_init(out_empty, WG_THREADS - 32);
        }
        if (QF)
            for (int q = 0; q < 3; ++q) mbar_init(qx_full(q), 1);
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(k_full(s), 1);
            mbar_init(v_full(s), 1);
            // every consumer warp releases a slot once it is done with it
            mbar_init(k_empty(s), 4 * NC);
            mbar_init(v_empty(s), 4 * NC);
        }
        fence_barrier_init();
    }
    __syncthreads();

    if constexpr (F::PRODUCER) {
        if (wg == 0) {
            // ---- producer (pair form) ----
            // (QF: 32, the quantizing warps' values; 128 * 32 + 3 * 128 * 160 is the whole register file)
            regs_release<QF ? 32 : WG_PRODUCER_REGS>();
            if (tid == 0) {
                tma_prefetch_map(&q_map);
                tma_prefetch_map(&k_map);
                tma_prefetch_map(&v_map);
                int g = 0;  // KV tiles issued before this item: the ring's position
                for (int n = 0, w = blockIdx.x; w < n_items; w = next_item(w), ++n) {
                    const int b = n % F::BUFS;
                    if (PERSIST) mbar_wait(item_empty(b), ((n / 2) & 1) ^ 1);  // item n - 2 is done with it
                    if (!QF) load_q(w, b);
                    load_epilogue(w, b);
                    const int n_tiles = item(w).n_tiles;
                    // rolled: the producer has 24 registers (unrolled, the persistent loop spilled)
#pragma unroll 1
                    for (int j = 0; j < n_tiles; ++j) {
                        const int s = (g + j) % STAGES;
                        const u32 parity = ((g + j) / STAGES) & 1;
                        mbar_wait(k_empty(s), parity ^ 1);
                        load_k(w, j, s);
                        mbar_wait(v_empty(s), parity ^ 1);
                        load_v(w, j, s);
                    }
                    g += n_tiles;
                }
            } else if (PERSIST && tid >= 32) {
                // Warps 1-3 copy each item's staged outputs out (whole 16-byte chunks of rows) while the
                // consumers go on with the next item.
                // QF: they also quantize each item's Q tile, the next item's while the consumers run
                // this one (its buffer is free once they are done with item n - 1).
                const unsigned char* stage = base_ptr + L::STAGE_OFF;
                const bool quantizer = QF;
                const int wq = tid / 32 - 1;
                int qx_uses = 0;  // blocks this warp staged so far: the phase of its qx_full
                auto quantize_q = [&](int w, int qbuf) {
                    if constexpr (QF) {
                        quantize_q_tile<OUT, F::Q_TILE>(q_map, item, w, Nq, gran, base + qbuf * L::Q_BYTES,
                                                        base + L::QS_OFF + qbuf * 4 * L::QS_COUNT,
                                                        base + L::QX_OFF + wq * 2 * L::QX_BOX, qx_full(wq),
                                                        qx_uses, q_flag, wq, tid % 32);
                        // the buffer's barrier from an opaque copy of qbuf: its address, shared with the
                        // wait before the call, was otherwise kept through it in local memory
                        int qb = qbuf;
                        asm volatile("mov.b32 %0, %1;" : "=r"(qb) : "r"(qbuf));
                        mbar_arrive(q_full(qb));
                    }
                };
                if (quantizer && (int)blockIdx.x < n_items) quantize_q(blockIdx.x, 0);
                for (int n = 0, w = blockIdx.x; w < n_items; w = next_item(w), ++n) {
                    if (quantizer && next_item(w) < n_items) {
                        mbar_wait(item_empty((n + 1) % 2), (((n + 1) / 2) & 1) ^ 1);
                        quantize_q(next_item(w), (n + 1) % 2);
                    }
                    mbar_wait(out_full, n & 1);
                    const Item it = item(w);
                    // rolled (24 registers)
                    if (staged_out(it))
                        copy_out_rows<RB, F::Q_TILE, WG_THREADS - 32, 1>(stage, out_base(it), o_sn,
                                                                         it.qt * F::Q_TILE, Nq, tid - 32);
                    mbar_arrive(out_empty);
                }
            }
            return;
        }
        regs_claim<F::CONSUMER_REGS>();
    } else if (tid == 0) {
        // solo: the ring's first STAGES tiles; the rest as slots come free (refill_k / refill_v)
        load_q(blockIdx.x, 0);
        load_epilogue(blockIdx.x, 0);
        const int first = min(item(blockIdx.x).n_tiles, STAGES);
        for (int j = 0; j < first; ++j) {
            load_k(blockIdx.x, j, j);
            load_v(blockIdx.x, j, j);
        }
    }

    // ---- consumers ----
    const int cw = F::PRODUCER ? wg - 1 : 0;
    const int wtid = tid % WG_THREADS, warp = wtid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const float logit_scale = __fmul_rn(sm_scale, LOG2_E);
    const int groups_q = q_scale_groups(gran, Nq);
    const int groups_k = k_scale_groups(gran, Nk);
    const int ksubs = k_group_shape(gran).subs;
    float* s_qm = (float*)(base_ptr + L::QM_OFF) + cw * DP;
    float* s_ds = (float*)(base_ptr + L::DS_OFF) + cw * 2 * KVT;
    // solo: once every warp has released tile j's K (V) slot, warp 0 has the copy of tile j + STAGES
    // go into it. The wait is for the other warps only, which run the same wgmmas in step; the branch
    // is warp-uniform and one lane issues by predicate (tma_load_2d_by: C7520 otherwise).
    const bool issuer = !F::PRODUCER && __shfl_sync(FULL_MASK, wtid < 32, 0);

    int gb = 0;  // KV tiles of the CTA's earlier items (persistent form): the ring's position
    for (int w = blockIdx.x; w < n_items; w = next_item(w)) {
        // the CTA's items before this one (from w: one register less through the KV loop)
        const int n = items_before(w);
        // the item's Q / sv / vm buffer and the phase of its barriers (evaluated where used, from n)
        auto qb = [&]() { return n % F::BUFS; };
        auto q_phase = [&]() { return (u32)((n / 2) & 1); };
        const int n_tiles = item(w).n_tiles;
        // the ring slot of the item's tile j, and the phase of its barriers
        auto slot = [&](int j) { return (gb + j) % STAGES; };
        auto phase = [&](int j) { return (u32)(((gb + j) / STAGES) & 1); };
        auto refill_k = [&](int j) {
            if (issuer && j + STAGES < n_tiles) {
                const int s = slot(j);
                mbar_wait(k_empty(s), phase(j));
                tma_load_2d_by(lane == 0, s_k + s * L::K_BYTES, &k_map, 0, k_row(w, j + STAGES), k_full(s),
                               L::K_BYTES);
            }
        };
        auto refill_v = [&](int j) {
            if (issuer && j + STAGES < n_tiles) {
                const int s = slot(j);
                mbar_wait(v_empty(s), phase(j));
                tma_load_2d_by(lane == 0, s_v + s * L::V_BYTES, &v_map, (j + STAGES) * KVT, v_row(w), v_full(s),
                               L::V_BYTES);
            }
        };
        // A slot this consumer does not compute on: wait for it to land, hand it back.
        auto release_k = [&](int j) {
            mbar_wait(k_full(slot(j)), phase(j));
            __syncwarp();
            if (lane == 0) mbar_arrive(k_empty(slot(j)));
        };
        auto release_v = [&](int j) {
            mbar_wait(v_full(slot(j)), phase(j));
            __syncwarp();
            if (lane == 0) mbar_arrive(v_empty(slot(j)));
        };

        const int q0 = item(w).qt * F::Q_TILE + 64 * cw;
        const int row0 = q0 + warp * 16 + g, row1 = row0 + 8;  // the two rows this lane holds
        const int my_end = q0 < Nq ? tile_key_end(q0, 64, Nq, Nk, is_causal) : 0;
        const int my_tiles = my_end > 0 ? ceil_div(my_end, KVT) : 0;
        // One Q scale per lane (rows g and g+8 of a warp's 16 share their group at every granularity),
        // with sm_scale * log2(e) folded in as attn_mma.cu does.
        const int gq = q_scale_group(gran, row0);
        // (QF: from the scales the producer's warps wrote beside the tile, once it is in)
        float sq = QF ? 0.0f : __fmul_rn(gq < groups_q ? q_scales[item(w).qhead * groups_q + gq] : 1.0f, logit_scale);
        // the lane's K scale column (per-thread groups), from a fresh %laneid: kept from the prologue, the
        // value spilled in the persistent kv64 x hd128 form
        auto t_k = [&]() {
            u32 ln;
            asm volatile("mov.u32 %0, %%laneid;" : "=r"(ln));
            return gran == GRAN_PER_THREAD ? (int)(ln % 4) : 0;
        };
        const int sk_base = (int)(item(w).khead * groups_k) + t_k();
        auto sk_lane = [&](int i) { return k_scales[sk_base + i]; };
        if (smooth) {
            // the consumer's rows lie in one smooth_q block (the pair's and solo's Q_TILE divides
            // Q_SMOOTH_BLOCK, the trio's consumers start at multiples of 64)
            const i64 blocks = ceil_div(Nq, Q_SMOOTH_BLOCK);
            const Item it = item(w);
            // (a trio consumer wholly past Nq, which computes nothing, would index one block past the end)
            const i64 block = NC > 2 ? min((i64)(it.qt * F::Q_TILE + 64 * cw) / Q_SMOOTH_BLOCK, blocks - 1)
                                     : (i64)(it.qt * F::Q_TILE / Q_SMOOTH_BLOCK);
            if (n > 0) named_sync(WG_BAR_OWN + cw, WG_THREADS);  // every thread is done with the last item's
            for (int c = wtid; c < DP; c += WG_THREADS) s_qm[c] = qm[(it.qhead * blocks + block) * DP + c];
            named_sync(WG_BAR_OWN + cw, WG_THREADS);
        }
        const u64 q_desc = smem_desc(base + qb() * L::Q_BYTES + cw * 64 * DP, 8 * DP, L::QK_SWIZZLE);

        OnlineSoftmax<NT> sm;
        sm.init(LOG2_E4M3_MAX);  // p comes out as 448 p, ready for e4m3
        float o[CT * 4];  // wgmma accumulator layout: o[4 ct + 2 r + e] = row r, channel 8 ct + 2 t + e
#pragma unroll
        for (int i = 0; i < CT * 4; ++i) o[i] = 0.0f;

        mbar_wait(q_full(qb()), q_phase());
        if constexpr (QF) {
            // the lane's row in the item from a fresh %tid.x: derived before the wait, ptxas kept the
            // index through it in local memory
            u32 x;
            asm volatile("mov.u32 %0, %%tid.x;" : "=r"(x));
            x -= WG_THREADS;
            const int local = (int)(x / WG_THREADS) * 64 + (int)(x % WG_THREADS) / 32 * 16 + (int)(x % 32) / 4;
            sq = __fmul_rn(((const float*)(base_ptr + L::QS_OFF))[qb() * L::QS_COUNT + q_scale_group(gran, local)],
                           logit_scale);
        }
        // F::PIPE (the pair forms): a software pipeline inside the warpgroup. Iteration j issues
        // S_j = Q K_j^T and then P_{j-1} V_{j-1}, waits only for S_j, and runs the softmax of tile j
        // while the tensor cores do P_{j-1} V_{j-1}; then it folds that product into acc with tile
        // j-1's alpha and packs P_j. (Folding it after the next S issue instead, to start S sooner,
        // makes ptxas serialize every wgmma: C7514, an accumulator read inside a pipeline stage.)
        // The in-order forms (trio, solo) issue and wait for P_j V_j at the end of iteration j.
        u32 pf[NT / 4][4];  // P as e4m3 A fragments (read by the wgmma in flight: not touched until done)
        float f[PV_CH / 2]; // P V (of PV_CH channels): the KV block's own accumulator
        // P V of tile jj from pf, issued and waited for PV_CH channels at a time, its V slot handed back
        // and each part merged into acc with `alpha` (the last tile of the pipelined forms; every tile of
        // the in-order ones)
        auto pv_waited = [&](int jj, const float (&alpha)[2]) {
            const int sj = slot(jj);
            mbar_wait(v_full(sj), phase(jj));
#pragma unroll
            for (int c0 = 0; c0 < DP; c0 += PV_CH) {
                wgmma_fence();
                pv_issue<PV_CH, KVT>(f, pf, s_v + sj * L::V_BYTES, c0);
                wgmma_wait<0>();
                reg_fence(f);
                if (c0 + PV_CH == DP) {
                    __syncwarp();
                    if (lane == 0) mbar_arrive(v_empty(sj));
                }
                merge_block(reinterpret_cast<float(&)[PV_CH / 2]>(o[c0 / 2]), f, alpha);
            }
        };
        float alpha_prev[2] = {1.0f, 1.0f};
        for (int j = 0; j < my_tiles; ++j) {
            const int s = slot(j);
            const u32 parity = phase(j);
            const int sp = slot(j - 1);  // tile j-1's slot
            const u32 parity_p = phase(j - 1);
            // The K scales of the tile, one per 64-key group (loaded here: a register each through the
            // loop would cost more than their latency, which the wgmma issue below hides).
            float sk[NG];
#pragma unroll
            for (int gi = 0; gi < NG; ++gi) {
                const int kg = j * NG + gi;
                sk[gi] = kg < ceil_div(Nk, 64) ? sk_lane(kg * ksubs) : 1.0f;
            }

            int acc[NT][4];
            int(&acc_flat)[NT * 4] = reinterpret_cast<int(&)[NT * 4]>(acc);
            mbar_wait(k_full(s), parity);
            wgmma_fence();
            {
                // ---- scores (issued) ----
                const u64 k_desc = smem_desc(s_k + s * L::K_BYTES, 8 * DP, L::QK_SWIZZLE);
#pragma unroll
                for (int ks = 0; ks < DP / 32; ++ks)  // a 32-byte k-step is +2 in the 16-byte address field
                    wgmma_scores<KVT>(acc_flat, q_desc + 2 * ks, k_desc + 2 * ks, ks);
                wgmma_commit();
            }
            float* ds = s_ds + (j & 1) * KVT;
            if (smooth) {
                // dS of tile j while the tensor cores run (double-buffered: one barrier per tile suffices,
                // as no thread can pass the next barrier before every thread is done reading this buffer).
                // (the head's scales as an index: a 64-bit pointer kept for this spilled in the
                // persistent form)
                tile_ds<DP, KVT, TRIO_WHOLE ? 4 : DP / 16 / (128 / KVT)>(s_k + s * L::K_BYTES, s_qm, ds, k_scales,
                                 sk_base - t_k(), gran, j * KVT, Nk, logit_scale, wtid);
                named_sync(WG_BAR_OWN + cw, WG_THREADS);
            }
            // Each wait sits in the branch of the wgmma it waits for: ptxas serializes every wgmma (C7514)
            // when it cannot pair them.
            if constexpr (!F::PIPE) {
                wgmma_wait<0>();
            } else if (j > 0) {
                // ---- pv of tile j-1 (issued) ----
                mbar_wait(v_full(sp), parity_p);
                pv_issue<DP, KVT>(f, pf, s_v + sp * L::V_BYTES, 0);
                wgmma_wait<1>();  // S_j is done (groups complete in order)
            } else {
                wgmma_wait<0>();
            }
            reg_fence(acc_flat);
            __syncwarp();
            if (lane == 0) mbar_arrive(k_empty(s));
            refill_k(j);

            // ---- online_softmax of tile j (F::PIPE: overlaps P_{j-1} V_{j-1}) ----
            // Unmasked tiles without dS take the softmax straight from the unscaled dot products
            // (attn_mma.cu), one scale per 64-key group.
            float sqk[NG];
#pragma unroll
            for (int gi = 0; gi < NG; ++gi) sqk[gi] = __fmul_rn(sq, sk[gi]);
            const bool masked = tile_needs_mask(j * KVT, KVT, q0, Nq, Nk, is_causal);
            const bool fused = !smooth && logit_scale > 0.0f && !masked;
            float sc[NT][4];
            float alpha[2];
            if (fused) {
                // the max on the integers, p from the dots as floats (DOTS_I2F) or biased (softmax.cuh)
                if constexpr (DOTS_I2F)
                    sm.update_dots(acc, sc, sqk, alpha);
                else
                    sm.update_biased(acc, sc, sqk, alpha);
            } else {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float x = DOTS_I2F ? dot_to_float(acc[nt][e]) : int_to_float_exact(acc[nt][e]);
                        float v = __fmul_rn(x, sqk[nt / 8]);
                        if (smooth) v = __fadd_rn(v, ds[8 * nt + 2 * t + (e & 1)]);
                        sc[nt][e] = v;
                    }
                }
                // ---- causal_mask (and keys >= Nk) ----
                if (masked) mask_tile(sc, j * KVT, t, row0, row1, Nq, Nk, is_causal);
                sm.update(sc, alpha);
            }

            if constexpr (F::PIPE) {
                if (j > 0) {
                    wgmma_wait<0>();
                    reg_fence(f);
                    __syncwarp();
                    if (lane == 0) mbar_arrive(v_empty(sp));
                    refill_v(j - 1);
                    merge_block(o, f, alpha_prev);
                }
            }
            p_to_e4m3_a(sc, pf);
            if (!F::PIPE) {
                // ---- pv of tile j, waited for ----
                pv_waited(j, alpha);
                refill_v(j);
            }
            alpha_prev[0] = alpha[0];
            alpha_prev[1] = alpha[1];
        }
        if (!F::PIPE) {
            if (my_tiles > 0 && my_tiles < n_tiles) release_k(my_tiles);
        } else if (my_tiles > 0) {
            // ---- pv of the last tile ----
            pv_waited(my_tiles - 1, alpha_prev);
            if (my_tiles < n_tiles) release_k(my_tiles);
        }
        // Past this warpgroup's last visible key (pair and trio forms: causal, or rows past Nq; never the
        // solo, whose one warpgroup is the whole item): nothing to compute,
        // but the slots are released in order like any other, or the ring's phases would slip.
        for (int j = my_tiles > 0 ? my_tiles + 1 : 0; j <= n_tiles; ++j) {
            if (j < n_tiles) release_k(j);
            if (j >= 1) release_v(j - 1);
        }

        // ---- finalize ----
        // the item from an opaque copy of w (TRIO_WHOLE): ptxas otherwise keeps the prologue's indices
        // of item(w) through the KV loop, a spill in the trio with its P V whole
        int w_again = w;
        if constexpr (TRIO_WHOLE) asm volatile("mov.b32 %0, %1;" : "=r"(w_again) : "r"(w));
        const Item it = item(w_again);
        sm.reduce_rows();
        mbar_wait(epi_full(qb()), q_phase());
        const float* svp = (const float*)(base_ptr + L::EPI_OFF + qb() * L::EPI_BYTES);
        const float* vmp = vm != nullptr ? svp + DP : nullptr;
        OutT* obase = out_base(it);
        // persistent: the staging area is free once the producer's warps copied the last item out
        if (PERSIST) mbar_wait(out_empty, (n & 1) ^ 1);
        if (!staged_out(it)) {
            // 1/l once per row: 64 correctly rounded divisions per row cost about a KV tile's softmax
            store_rows<OUT, CT, true, true>(o, sm, svp, vmp, obase, o_sn, row0, row1, t, Nq, D, lse, qkm, it.qhead,
                                            sm_scale);
        } else if constexpr (STAGE_FITS) {
            // The consumer's 64 x DP outputs are written into shared memory (the pair form: the K/V ring,
            // free once every consumer is past its last P V), then copied out a 16-byte chunk per thread
            // and step: whole rows per warp instead of a lane's two channels of 8 rows per store (half of
            // each 32-byte sector). BENCHMARKS.md, session 7.
            if (!PERSIST) named_sync(WG_BAR_EPI, NC * WG_THREADS);
            unsigned char* stage = base_ptr + (PERSIST ? L::STAGE_OFF : L::K_OFF) + cw * 64 * RB;
            // one instantiation with vm and one without, so the path taken is straight-line code: the
            // epilogue runs cold in every CTA, and instruction fetch was its largest stall (session 7)
            if (vmp != nullptr)
                stage_outputs<OUT, CT, RB, true>(o, sm, svp, vmp, stage);
            else
                stage_outputs<OUT, CT, RB, false>(o, sm, svp, nullptr, stage);
            if (!PERSIST) {
                named_sync(WG_BAR_OWN + cw, WG_THREADS);
                copy_out_rows<RB, 64, WG_THREADS, 4>(stage, obase, o_sn, it.qt * F::Q_TILE + 64 * cw, Nq, wtid);
            }
            store_lse(sm, row0, row1, t, Nq, lse, qkm, it.qhead, sm_scale);
        }
        if (!PERSIST) break;
        // the outputs are staged (or stored), Q and sv / vm of buffer qb read: hand them over
        mbar_arrive(out_full);
        mbar_arrive(item_empty(qb()));
        gb += n_tiles;
    }
}

// ---- entry points ---------------------------------------------------------------------------------
// attn_int8_fp8_wgmma_kv{64|128}_hd{64|128}_{f16|bf16|f32}[_solo|_persist|_trio|_trio_persist]: sm_90a
// only; 384 threads (pair, `_persist`), 128 (`_solo`) or 512 (`_trio`, `_trio_persist`), dynamic
// shared memory WgSmem<DP, KVT, NC, PERSIST>::BYTES + 1024, grid (ceil(Nq / Q_TILE) * Hq * B, 1, 1),
// or at most that many for the persistent forms (one per SM), Q_TILE = 128 (pair, `_persist`), 64
// (`_solo`) or 192 (`_trio`, `_trio_persist`).
// Parameters: ABI.md ("Hopper kernel").
#define SAGE_WGMMA_ENTRY_QF(NAME, DP, KVT, NC, PERSIST, OUT, QF)                                              \
    extern "C" __global__ void __launch_bounds__(WgForm<NC>::THREADS, WgForm<NC>::MIN_CTAS)                   \
        NAME(const __grid_constant__ TmaMap q_map, const __grid_constant__ TmaMap k_map,                      \
             const __grid_constant__ TmaMap v_map, const float* q_scales, const float* k_scales,              \
             const float* v_scales, const float* vm, const float* qm, const float* qkm, void* out,            \
             i64 o_stride_b, i64 o_stride_h, i64 o_stride_n, float* lse, int B, int Hq, int Hkv, int Nq,      \
             int Nk, int D, int granularity, int causal, float sm_scale, int* q_flag) {                      \
        grid_dependency_sync();                                                                               \
        attn_wgmma<DP, KVT, NC, PERSIST, OUT, QF>(q_map, k_map, v_map, q_scales, k_scales, v_scales, vm, qm,  \
                                                  qkm, out, o_stride_b, o_stride_h, o_stride_n, lse, B, Hq,   \
                                                  Hkv, Nq, Nk, D, granularity, causal, sm_scale, q_flag);     \
    }
#define SAGE_WGMMA_ENTRY(NAME, DP, KVT, NC, PERSIST, OUT) SAGE_WGMMA_ENTRY_QF(NAME, DP, KVT, NC, PERSIST, OUT, false)
#define SAGE_WGMMA_FORMS(NAME, DP, KVT, OUT)                \
    SAGE_WGMMA_ENTRY(NAME, DP, KVT, 2, false, OUT)          \
    SAGE_WGMMA_ENTRY(NAME##_solo, DP, KVT, 1, false, OUT)   \
    SAGE_WGMMA_ENTRY(NAME##_persist, DP, KVT, 2, true, OUT) \
    SAGE_WGMMA_ENTRY(NAME##_trio, DP, KVT, 3, false, OUT)   \
    SAGE_WGMMA_ENTRY(NAME##_trio_persist, DP, KVT, 3, true, OUT)
#define SAGE_WGMMA_SHAPES(DT, OUT)                                   \
    SAGE_WGMMA_FORMS(attn_int8_fp8_wgmma_kv64_hd64_##DT, 64, 64, OUT)   \
    SAGE_WGMMA_FORMS(attn_int8_fp8_wgmma_kv64_hd128_##DT, 128, 64, OUT) \
    SAGE_WGMMA_FORMS(attn_int8_fp8_wgmma_kv128_hd64_##DT, 64, 128, OUT) \
    SAGE_WGMMA_FORMS(attn_int8_fp8_wgmma_kv128_hd128_##DT, 128, 128, OUT)
// `_trio_persist_q`: the persistent trio quantizing its Q tiles itself (QF; q_map a 4-D map of the
// 16-bit Q, ABI.md), 16-bit inputs only
#define SAGE_WGMMA_QF_ENTRY(DT, OUT) \
    SAGE_WGMMA_ENTRY_QF(attn_int8_fp8_wgmma_kv128_hd128_##DT##_trio_persist_q, 128, 128, 3, true, OUT, true)

// attn_wgmma_smem_probe_{f16|bf16|f32}(u32* out): one thread writes where the CTA's dynamic shared
// memory starts, modulo 1024 (declared with attn_wgmma's alignment, under its own name: one name for
// two block-scope declarations draws NVRTC warning 1556); the host gives the entries no alignment
// slack when that is 0 (ABI.md). One per dtype build, so it loads with the entries a process uses.
#define SAGE_WGMMA_PROBE(DT)                                                 \
    extern "C" __global__ void attn_wgmma_smem_probe_##DT(u32* out) {      \
        grid_dependency_sync();                                              \
        extern __shared__ __align__(1024) unsigned char smem_probe[];        \
        if (threadIdx.x == 0) *out = smem_addr(smem_probe) & 1023u;          \
    }

#ifdef SAGE_WANT_F16
SAGE_WGMMA_SHAPES(f16, DtF16)
SAGE_WGMMA_QF_ENTRY(f16, DtF16)
SAGE_WGMMA_PROBE(f16)
#endif
#ifdef SAGE_WANT_BF16
SAGE_WGMMA_SHAPES(bf16, DtBF16)
SAGE_WGMMA_QF_ENTRY(bf16, DtBF16)
SAGE_WGMMA_PROBE(bf16)
#endif
#ifdef SAGE_WANT_F32
SAGE_WGMMA_SHAPES(f32, DtF32)
SAGE_WGMMA_PROBE(f32)
#endif

#endif  // SAGE_HAVE_WGMMA
