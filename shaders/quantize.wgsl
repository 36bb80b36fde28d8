// ALGORITHM.md Steps 2b and 3: Q' and K' (means already subtracted here) rotated when asked, then
// quantized per scale group to INT8 (4 codes per u32) or INT4 (8 codes per u32).
// One workgroup per outer scale block of one head, one invocation per token.

@group(0) @binding(0) var<uniform> P: Params;
// [B, H, N, Dp]
@group(0) @binding(1) var<storage, read> src: array<f32>;
// means at P.mean_offset ([B, H, ceil(N / mean_block), Dp]); scales written at P.scale_offset
// ([B, H, groups]) and, for the INT8 copy, at P.scale8_offset
@group(0) @binding(2) var<storage, read_write> aux: array<f32>;
// [B, H, N, Dp / 4] (INT8) or [B, H, N, Dp / 8] (INT4)
@group(0) @binding(3) var<storage, read_write> codes: array<u32>;
// the INT8 copy of K' that the dS correction reads in INT4 mode: [B, H, N, Dp / 4]
@group(0) @binding(4) var<storage, read_write> codes8: array<u32>;

var<workgroup> row_amax: array<f32, 128>;

// Sub-group of a token inside its outer block (0 unless per-thread).
fn sub_of(t: u32) -> u32 {
    return scale_group(P.granularity, P.operand, t) % group_subs(P.granularity, P.operand);
}

// Codes of one row, packed; the nibble or byte of column c sits at bits (c % per_word) * width.
fn write_codes(dst_base: u32, x: ptr<function, array<f32, 128>>, inv: f32, qmax: i32, int4: bool, eight: bool) {
    let dp = P.head_dim_padded;
    let width = select(8u, 4u, int4);
    let per_word = 32u / width;
    let mask = (1u << width) - 1u;
    let q = f32(qmax);
    for (var w = 0u; w < dp / per_word; w++) {
        var word = 0u;
        for (var k = 0u; k < per_word; k++) {
            let code = i32(clamp(round((*x)[w * per_word + k] * inv), -q, q));
            word |= (u32(code) & mask) << (k * width);
        }
        if (eight) {
            codes8[dst_base + w] = word;
        } else {
            codes[dst_base + w] = word;
        }
    }
}

@compute @workgroup_size(128)
fn quantize_qk(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let dp = P.head_dim_padded;
    let block = group_block(P.granularity, P.operand);
    let subs = group_subs(P.granularity, P.operand);
    let bh = wid.y;
    let t = lid.x;
    let first = wid.x * block;
    let rows = min(block, P.seq - first);
    let n = first + t;
    let in_range = t < rows;

    var x: array<f32, 128>;
    var amax = 0.0;
    if (in_range) {
        let base = (bh * P.seq + n) * dp;
        // K: km of the whole head (mean_block = N); Q with smooth_q: the mean of its 128-query block
        let mean_block = max(P.mean_block, 1u);
        let mean_blocks = (P.seq + mean_block - 1u) / mean_block;
        let mean_base = P.mean_offset + (bh * mean_blocks + n / mean_block) * dp;
        for (var c = 0u; c < dp; c++) {
            x[c] = src[base + c];
            if (P.mean_block != 0u) {
                x[c] -= aux[mean_base + c];
            }
        }
        if (P.rotate != 0u) {
            fwht(&x, dp);
        }
        for (var c = 0u; c < dp; c++) {
            amax = max(amax, abs(x[c]));
        }
    }
    if (t < 128u) {
        row_amax[t] = amax;
    }
    workgroupBarrier();

    // amax of this row's scale group, and of sub-group t for the scale it writes
    let groups = ((P.seq + block - 1u) / block) * subs;
    let scale_index = bh * groups + wid.x * subs;
    var g_amax = 0.0;
    var t_amax = 0.0;
    for (var r = 0u; r < rows; r++) {
        if (sub_of(r) == sub_of(t)) {
            g_amax = max(g_amax, row_amax[r]);
        }
        if (sub_of(r) == t) {
            t_amax = max(t_amax, row_amax[r]);
        }
    }
    let q = f32(P.qmax);
    if (t < subs) {
        aux[P.scale_offset + scale_index + t] = select(div_exact(t_amax, q), 1.0, t_amax == 0.0);
        if (P.emit_int8 != 0u) {
            aux[P.scale8_offset + scale_index + t] = select(div_exact(t_amax, 127.0), 1.0, t_amax == 0.0);
        }
    }
    if (!in_range) {
        return;
    }
    let int4 = P.qmax == 7;
    let words = select(dp / 4u, dp / 8u, int4);
    write_codes((bh * P.seq + n) * words, &x, select(div_exact(q, g_amax), 0.0, g_amax == 0.0), P.qmax, int4, false);
    if (P.emit_int8 != 0u) {
        write_codes((bh * P.seq + n) * (dp / 4u), &x, select(div_exact(127.0, g_amax), 0.0, g_amax == 0.0), 127, false, true);
    }
}
