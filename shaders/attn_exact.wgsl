// The `exact` mode: plain f32 flash attention with the online softmax of ALGORITHM.md Step 6, no
// smoothing, no quantization: the in-project baseline for speed and accuracy.
// Non-finite inputs propagate: a row whose query, or any key or value it sees, holds a NaN or an
// infinity comes out NaN. Vulkan and WGSL do not promise IEEE NaN propagation (drivers may assume
// there are none), so the shader finds them by their bits instead of trusting the arithmetic.

@group(0) @binding(0) var<uniform> P: Params;
// [B, Hq, Nq, Dp], [B, Hkv, Nk, Dp], [B, Hkv, Nk, Dp] in f32
@group(0) @binding(1) var<storage, read> q32: array<f32>;
@group(0) @binding(2) var<storage, read> k32: array<f32>;
@group(0) @binding(3) var<storage, read> v32: array<f32>;
// O [B, Hq, Nq, D], the log-sum-exp [B, Hq, Nq] at P.off_lse, and the online softmax state
// (m, l, poisoned, acc[Dp]) per row at P.state_offset between chunks
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const ROWS: u32 = 64u;
const TILE_WORDS: u32 = 4096u;

var<workgroup> tile: array<f32, 4096>;
// per key of the current sub-tile: 1 when its K or V row holds a NaN or an infinity
var<workgroup> bad_key: array<u32, 128>;

// True when the d values of a tile row are all finite.
fn row_is_finite(base: u32, d: u32) -> bool {
    var ok = true;
    for (var c = 0u; c < d; c++) {
        ok = ok && is_finite_f32(tile[base + c]);
    }
    return ok;
}

@compute @workgroup_size(64)
fn attn_exact(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = lid.x;
    let h = wid.y;
    let b = wid.z;
    let m = wid.x * ROWS + t;
    let dp = P.head_dim_padded;
    let d = P.head_dim;
    let bh = b * P.heads_q + h;
    let bhk = b * P.heads_kv + h / (P.heads_q / P.heads_kv);
    let kv_tile = min(P.kv_block, TILE_WORDS / dp);
    let in_range = m < P.seq_q;
    var q: array<f32, 128>;
    var bad_q = false;
    var my_last = -1;
    if (in_range) {
        for (var c = 0u; c < d; c++) {
            q[c] = q32[(bh * P.seq_q + m) * dp + c];
            bad_q = bad_q || !is_finite_f32(q[c]);
        }
        my_last = last_visible(m, P.seq_q, P.seq_k, P.causal);
    }
    let wg_last = last_visible(min(wid.x * ROWS + ROWS - 1u, P.seq_q - 1u), P.seq_q, P.seq_k, P.causal);
    let logit_scale = P.sm_scale * LOG2_E;
    var logits: array<f32, 128>;
    var acc: array<f32, 128>;
    var blk: array<f32, 128>;
    // online softmax state: fresh in the first chunk of keys, carried over in the others
    let state = P.state_offset + (bh * P.seq_q + m) * (dp + 4u);
    var m_run = neg_inf();
    var l = 0.0;
    var poisoned = false;
    for (var c = 0u; c < dp; c++) {
        acc[c] = 0.0;
    }
    if (P.chunk_first == 0u && in_range) {
        m_run = out[state];
        l = out[state + 1u];
        poisoned = out[state + 2u] != 0.0;
        for (var c = 0u; c < dp; c++) {
            acc[c] = out[state + 4u + c];
        }
    }
    let keys_end = min(u32(max(wg_last + 1, 0)), P.kv_end);
    for (var start = P.kv_start; start < keys_end; start += P.kv_block) {
        let end = min(start + P.kv_block, keys_end);
        for (var s0 = start; s0 < end; s0 += kv_tile) {
            let s1 = min(s0 + kv_tile, end);
            workgroupBarrier();
            for (var i = t; i < (s1 - s0) * dp; i += ROWS) {
                tile[i] = k32[(bhk * P.seq_k + s0) * dp + i];
            }
            workgroupBarrier();
            if (t < s1 - s0) {
                bad_key[t] = select(1u, 0u, row_is_finite(t * dp, d));
            }
            workgroupBarrier();
            if (in_range) {
                for (var n = s0; n < s1; n++) {
                    var s = neg_inf();
                    if (i32(n) <= my_last) {
                        poisoned = poisoned || bad_q || bad_key[n - s0] != 0u;
                        var dot = 0.0;
                        for (var c = 0u; c < d; c++) {
                            dot += q[c] * tile[(n - s0) * dp + c];
                        }
                        s = dot * logit_scale;
                    }
                    logits[n - start] = s;
                }
            }
        }
        var alpha = 0.0;
        var live = false;
        if (in_range) {
            var block_max = neg_inf();
            var nan = false;
            for (var j = 0u; j < end - start; j++) {
                block_max = max(block_max, logits[j]);
                nan = nan || (!is_finite_f32(logits[j]) && logits[j] != neg_inf());
            }
            poisoned = poisoned || nan;
            let m_new = max(m_run, block_max);
            if (m_new != neg_inf()) {
                live = true;
                alpha = exp2(m_run - m_new);
                var sum = 0.0;
                for (var j = 0u; j < end - start; j++) {
                    logits[j] = exp2(logits[j] - m_new);
                    sum += logits[j];
                }
                l = l * alpha + sum;
                m_run = m_new;
            }
        }
        for (var c = 0u; c < dp; c++) {
            blk[c] = 0.0;
        }
        for (var s0 = start; s0 < end; s0 += kv_tile) {
            let s1 = min(s0 + kv_tile, end);
            workgroupBarrier();
            for (var i = t; i < (s1 - s0) * dp; i += ROWS) {
                tile[i] = v32[(bhk * P.seq_k + s0) * dp + i];
            }
            workgroupBarrier();
            if (t < s1 - s0) {
                bad_key[t] = select(1u, 0u, row_is_finite(t * dp, d));
            }
            workgroupBarrier();
            if (in_range) {
                for (var n = s0; n < s1; n++) {
                    let p = select(0.0, logits[n - start], live);
                    poisoned = poisoned || (i32(n) <= my_last && bad_key[n - s0] != 0u);
                    if (p == 0.0) {
                        continue;
                    }
                    for (var c = 0u; c < d; c++) {
                        blk[c] += p * tile[(n - s0) * dp + c];
                    }
                }
            }
        }
        if (live) {
            for (var c = 0u; c < dp; c++) {
                acc[c] = acc[c] * alpha + blk[c];
            }
        }
    }
    // online_softmax.finalize (or hand the state to the next chunk of keys)
    if (!in_range) {
        return;
    }
    if (P.chunk_last == 0u) {
        out[state] = m_run;
        out[state + 1u] = l;
        out[state + 2u] = select(0.0, 1.0, poisoned);
        for (var c = 0u; c < dp; c++) {
            out[state + 4u + c] = acc[c];
        }
        return;
    }
    let nan = bitcast<f32>(0x7fc00000u);
    for (var c = 0u; c < d; c++) {
        var o = 0.0;
        if (poisoned) {
            o = nan;
        } else if (l != 0.0) {
            o = acc[c] / l;
        }
        out[(bh * P.seq_q + m) * d + c] = o;
    }
    if (P.want_lse != 0u) {
        var lse = neg_inf();
        if (poisoned) {
            lse = nan;
        } else if (l != 0.0) {
            lse = (m_run + log2(l)) * LN_2;
        }
        out[P.off_lse + bh * P.seq_q + m] = lse;
    }
}
