// ALGORITHM.md Steps 1, 2, 7: channel means of K (over all tokens), of V (smooth_v) and of each block
// of 128 queries (smooth_q). One invocation per (head, block, channel), in f32, exactly as the CPU:
// km and vm (P.pairwise = 1) sum pairwise, sum(x[0..n]) = sum(x[0..h]) + sum(x[h..n]) with h the
// largest power of two below n, then + 0.0 (numerics/smooth.rs token_mean); the smooth_q blocks sum
// in token order.

@group(0) @binding(0) var<uniform> P: Params;
// [B, H, N, Dp]
@group(0) @binding(1) var<storage, read> src: array<f32>;
// means written at P.dst_offset as [B, H, ceil(N / block), Dp]
@group(0) @binding(2) var<storage, read_write> aux: array<f32>;

@compute @workgroup_size(64)
fn block_mean(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = linear_id(gid, P.threads_x);
    let dp = P.head_dim_padded;
    let blocks = (P.seq + P.block - 1u) / P.block;
    if (i >= P.batch * P.heads * blocks * dp) {
        return;
    }
    let c = i % dp;
    let blk = (i / dp) % blocks;
    let bh = i / (dp * blocks);
    let start = blk * P.block;
    let end = min(start + P.block, P.seq);
    var sum = 0.0;
    if (P.pairwise == 1u) {
        // a binary counter: lv[k] is the sum of the last complete run of 2^k tokens
        var lv: array<f32, 32>;
        for (var n = start; n < end; n++) {
            var carry = src[(bh * P.seq + n) * dp + c];
            var k = 0u;
            while (((n - start) >> k) & 1u) == 1u {
                carry = lv[k] + carry;
                k++;
            }
            lv[k] = carry;
        }
        // the runs from the smallest up, each added to the larger one before it
        let count = end - start;
        var have = false;
        for (var k = 0u; k < 32u; k++) {
            if (((count >> k) & 1u) == 1u) {
                sum = select(lv[k], lv[k] + sum, have);
                have = true;
            }
        }
        // + 0.0 by its bits: shader compilers fold `sum + 0.0` to `sum` (lavapipe does), which
        // would keep the sign of a -0.0 sum
        sum = bitcast<f32>(select(bitcast<u32>(sum), 0u, bitcast<u32>(sum) == 0x80000000u));
    } else {
        for (var n = start; n < end; n++) {
            sum += src[(bh * P.seq + n) * dp + c];
        }
    }
    if (end > start) {
        sum = div_exact(sum, f32(end - start));
    }
    aux[P.dst_offset + i] = sum;
}
