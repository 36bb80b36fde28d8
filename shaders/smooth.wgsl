// ALGORITHM.md Steps 1, 2, 7: channel means of K (over all tokens), of V (smooth_v) and of each block
// of 128 queries (smooth_q). One invocation per (head, block, channel) sums its tokens in order, in
// f32, exactly as the CPU does.

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
    for (var n = start; n < end; n++) {
        sum += src[(bh * P.seq + n) * dp + c];
    }
    if (end > start) {
        sum = div_exact(sum, f32(end - start));
    }
    aux[P.dst_offset + i] = sum;
}
