// ALGORITHM.md Steps 4-6 for the quantized modes: scores from packed INT8/INT4 codes with
// dot4I8Packed, the dS correction of smooth_q, the causal mask, the online softmax over kv_block keys,
// P to FP8 relative to the running max, and PV with the two-level accumulation.
// One workgroup per 64 query rows of one head; one invocation per query row. K and V pass through
// workgroup memory in sub-tiles that fit 16 KiB (lavapipe offers 32 KiB in all).

@group(0) @binding(0) var<uniform> P: Params;
// [B, Hq, Nq, Dp / 4] INT8 or [.., Dp / 8] INT4
@group(0) @binding(1) var<storage, read> q_codes: array<u32>;
// [B, Hkv, Nk, Dp / 4] or [.., Dp / 8]
@group(0) @binding(2) var<storage, read> k_codes: array<u32>;
// INT8 codes of K' for dS, [B, Hkv, Nk, Dp / 4] (the K codes themselves in INT8 modes)
@group(0) @binding(3) var<storage, read> k8_codes: array<u32>;
// FP8 codes [B, Hkv, Nk, Dp / 4] or f16 pairs [B, Hkv, Nk, Dp / 2]
@group(0) @binding(4) var<storage, read> v_codes: array<u32>;
// scales, means and qm at the P.off_* offsets
@group(0) @binding(5) var<storage, read> aux: array<f32>;
// Q in f32 [B, Hq, Nq, Dp], for the sm_scale * q.km that the log-sum-exp adds back
@group(0) @binding(6) var<storage, read> q32: array<f32>;
// O [B, Hq, Nq, D] in f32, the log-sum-exp [B, Hq, Nq] at P.off_lse, and the online softmax state
// (m, l, flags, acc[Dp]) per row at P.state_offset between chunks
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

const ROWS: u32 = 64u;
const TILE_WORDS: u32 = 4096u;

var<workgroup> tile: array<u32, 4096>;
var<workgroup> ds_tile: array<f32, 128>;
var<workgroup> fp8_lut: array<f32, 256>;

// INT4 x INT4 over one word of 8 nibbles each: the nibbles moved to the high half of each byte make
// two exact dot4I8Packed products, each 256 times too large.
fn dot_int4(a: u32, b: u32) -> i32 {
    let even = dot4I8Packed((a & 0x0f0f0f0fu) << 4u, (b & 0x0f0f0f0fu) << 4u);
    let odd = dot4I8Packed(a & 0xf0f0f0f0u, b & 0xf0f0f0f0u);
    return (even + odd) >> 8u;
}

// Step 2: dS = sum_d qm[d] * (c8k[n, d] * s8k(n)), in f32 in channel order as the CPU sums it.
fn delta_s(qm_base: u32, bhk: u32, n: u32) -> f32 {
    let dp = P.head_dim_padded;
    let s8 = aux[P.off_k8_scales + bhk * P.k_groups + scale_group(P.granularity, OPERAND_K, n)];
    var acc = 0.0;
    for (var w = 0u; w < dp / 4u; w++) {
        let word = k8_codes[(bhk * P.seq_k + n) * (dp / 4u) + w];
        for (var k = 0u; k < 4u; k++) {
            let code = f32(extractBits(i32(word), 8u * k, 8u));
            acc += aux[qm_base + 4u * w + k] * (code * s8);
        }
    }
    return acc;
}

@compute @workgroup_size(64)
fn attn_quantized(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = lid.x;
    let h = wid.y;
    let b = wid.z;
    let m = wid.x * ROWS + t;
    let dp = P.head_dim_padded;
    let bh = b * P.heads_q + h;
    let bhk = b * P.heads_kv + h / (P.heads_q / P.heads_kv);
    let int4 = P.mode == MODE_INT4_FP8;
    let fp8 = P.mode != MODE_INT8_FP16;
    let qk_words = select(dp / 4u, dp / 8u, int4);
    let v_words = select(dp / 2u, dp / 4u, fp8);
    let k_tile = min(P.kv_block, TILE_WORDS / qk_words);
    // V sub-tiles are held decoded, one f32 per value
    let v_tile = min(P.kv_block, TILE_WORDS / dp);
    for (var i = t; i < 256u; i += ROWS) {
        fp8_lut[i] = e4m3_decode(i);
    }

    let in_range = m < P.seq_q;
    var qc: array<u32, 32>;
    var sq = 0.0;
    var my_last = -1;
    if (in_range) {
        for (var w = 0u; w < qk_words; w++) {
            qc[w] = q_codes[(bh * P.seq_q + m) * qk_words + w];
        }
        sq = aux[P.off_q_scales + bh * P.q_groups + scale_group(P.granularity, OPERAND_Q, m)];
        my_last = last_visible(m, P.seq_q, P.seq_k, P.causal);
    }
    // the rows of one workgroup lie in one 128-query smooth_q block
    let qm_base = P.off_qm + (bh * ((P.seq_q + 127u) / 128u) + (wid.x * ROWS) / 128u) * dp;
    // keys the workgroup needs: up to what its last row sees (uniform: from the workgroup id)
    let wg_last = last_visible(min(wid.x * ROWS + ROWS - 1u, P.seq_q - 1u), P.seq_q, P.seq_k, P.causal);
    let logit_scale = P.sm_scale * LOG2_E;

    var logits: array<f32, 128>;
    var acc: array<f32, 128>;
    var blk: array<f32, 128>;
    // online softmax state: fresh in the first chunk of keys, carried over in the others
    let state = P.state_offset + (bh * P.seq_q + m) * (dp + 4u);
    var m_run = neg_inf();
    var l = 0.0;
    for (var c = 0u; c < dp; c++) {
        acc[c] = 0.0;
    }
    if (P.chunk_first == 0u && in_range) {
        m_run = out[state];
        l = out[state + 1u];
        for (var c = 0u; c < dp; c++) {
            acc[c] = out[state + 4u + c];
        }
    }
    let keys_end = min(u32(max(wg_last + 1, 0)), P.kv_end);
    for (var start = P.kv_start; start < keys_end; start += P.kv_block) {
        let end = min(start + P.kv_block, keys_end);
        // scores
        for (var s0 = start; s0 < end; s0 += k_tile) {
            let s1 = min(s0 + k_tile, end);
            workgroupBarrier();
            for (var i = t; i < (s1 - s0) * qk_words; i += ROWS) {
                tile[i] = k_codes[(bhk * P.seq_k + s0) * qk_words + i];
            }
            if (P.smooth_q != 0u) {
                for (var j = t; j < s1 - s0; j += ROWS) {
                    ds_tile[j] = delta_s(qm_base, bhk, s0 + j);
                }
            }
            workgroupBarrier();
            if (in_range) {
                for (var n = s0; n < s1; n++) {
                    var s = neg_inf();
                    if (i32(n) <= my_last) {
                        var dot = 0;
                        let row = (n - s0) * qk_words;
                        for (var w = 0u; w < qk_words; w++) {
                            if (int4) {
                                dot += dot_int4(qc[w], tile[row + w]);
                            } else {
                                dot += dot4I8Packed(qc[w], tile[row + w]);
                            }
                        }
                        let sk = aux[P.off_k_scales + bhk * P.k_groups + scale_group(P.granularity, OPERAND_K, n)];
                        var score = f32(dot) * sq * sk;
                        if (P.smooth_q != 0u) {
                            score += ds_tile[n - s0];
                        }
                        s = score * logit_scale;
                    }
                    logits[n - start] = s;
                }
            }
        }
        // online_softmax.update: new max, rescale factor, p in place (then P to FP8 or f16)
        var alpha = 0.0;
        var live = false;
        if (in_range) {
            var block_max = neg_inf();
            for (var j = 0u; j < end - start; j++) {
                block_max = max(block_max, logits[j]);
            }
            let m_new = max(m_run, block_max);
            if (m_new != neg_inf()) {
                live = true;
                alpha = exp2(m_run - m_new);
                var sum = 0.0;
                for (var j = 0u; j < end - start; j++) {
                    let p = exp2(logits[j] - m_new);
                    sum += p;
                    if (fp8) {
                        logits[j] = fp8_lut[e4m3_encode(E4M3_MAX * p)];
                    } else {
                        logits[j] = unpack2x16float(pack2x16float(vec2<f32>(p, 0.0))).x;
                    }
                }
                l = l * alpha + sum;
                m_run = m_new;
            }
        }
        // pv: this block's partial product on its own accumulator (the first level)
        for (var c = 0u; c < dp; c++) {
            blk[c] = 0.0;
        }
        for (var s0 = start; s0 < end; s0 += v_tile) {
            let s1 = min(s0 + v_tile, end);
            workgroupBarrier();
            // decode the V sub-tile once for the whole workgroup (f32 bits in the tile), rather
            // than once per query row: the PV loop is then plain f32 multiply-adds
            for (var i = t; i < (s1 - s0) * v_words; i += ROWS) {
                let word = v_codes[(bhk * P.seq_k + s0) * v_words + i];
                let base = (i / v_words) * dp;
                let w = i % v_words;
                if (fp8) {
                    for (var k = 0u; k < 4u; k++) {
                        tile[base + 4u * w + k] = bitcast<u32>(fp8_lut[(word >> (8u * k)) & 0xffu]);
                    }
                } else {
                    let pair = unpack2x16float(word);
                    tile[base + 2u * w] = bitcast<u32>(pair.x);
                    tile[base + 2u * w + 1u] = bitcast<u32>(pair.y);
                }
            }
            workgroupBarrier();
            if (live) {
                for (var n = s0; n < s1; n++) {
                    let p = logits[n - start];
                    if (p == 0.0) {
                        continue;
                    }
                    let row = (n - s0) * dp;
                    for (var c = 0u; c < dp; c++) {
                        blk[c] += p * bitcast<f32>(tile[row + c]);
                    }
                }
            }
        }
        // online_softmax.rescale and the second level of the accumulation
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
        for (var c = 0u; c < dp; c++) {
            out[state + 4u + c] = acc[c];
        }
        return;
    }
    let d = P.head_dim;
    let o_base = (bh * P.seq_q + m) * d;
    for (var c = 0u; c < d; c++) {
        var o = 0.0;
        if (l != 0.0) {
            if (fp8) {
                o = acc[c] / (E4M3_MAX * l) * aux[P.off_v_scales + bhk * dp + c];
            } else {
                o = acc[c] / l;
            }
            if (P.smooth_v != 0u) {
                o += aux[P.off_vm + bhk * dp + c];
            }
        }
        out[o_base + c] = o;
    }
    if (P.want_lse != 0u) {
        var lse = neg_inf();
        if (l != 0.0) {
            // the logits were of q.(k - km): add sm_scale * q.km back
            var qkm = 0.0;
            for (var c = 0u; c < d; c++) {
                qkm += q32[(bh * P.seq_q + m) * dp + c] * aux[P.off_km + bhk * dp + c];
            }
            lse = (m_run + log2(l)) * LN_2 + P.sm_scale * qkm;
        }
        out[P.off_lse + bh * P.seq_q + m] = lse;
    }
}
