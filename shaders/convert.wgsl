// Stage 0: inputs in their own dtype and layout -> f32 [B, H, N, Dp], head dim zero-padded
// (ALGORITHM.md, Shapes: padded columns add nothing to any dot product). In quantized modes this pass
// also finds non-finite inputs, since it reads every element anyway.

@group(0) @binding(0) var<uniform> P: Params;
// raw input words: f32 one per word, f16/bf16 two per word (little end first)
@group(0) @binding(1) var<storage, read> src_words: array<u32>;
// [B, H, N, Dp]
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
// per tensor (Q, K, V): the smallest (b * H + h) * N + n holding a NaN or infinity; u32::MAX if none
@group(0) @binding(3) var<storage, read_write> flags: array<atomic<u32>, 4>;

@compute @workgroup_size(64)
fn to_f32_padded(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = linear_id(gid, P.threads_x);
    let dp = P.head_dim_padded;
    if (i >= P.batch * P.heads * P.seq * dp) {
        return;
    }
    let c = i % dp;
    let row = i / dp;  // (b * H + h) * N + n
    var x = 0.0;
    if (c < P.head_dim) {
        let n = row % P.seq;
        let h = (row / P.seq) % P.heads;
        let b = row / (P.seq * P.heads);
        let e = tensor_index(P.tensor_layout, b, h, n, c, P.heads, P.seq, P.head_dim);
        var word: u32;
        if (P.dtype == DTYPE_F32) {
            word = src_words[e];
        } else {
            word = src_words[e / 2u];
        }
        x = load_element(word, e, P.dtype);
        if (P.check_finite != 0u && !is_finite_f32(x)) {
            atomicMin(&flags[P.flag_slot], row);
        }
    }
    dst[i] = x;
}
