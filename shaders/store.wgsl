// Last stage: O in f32 [B, H, N, D] (HND) -> the caller's dtype and layout.

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
// f32 one element per word, f16/bf16 two
@group(0) @binding(2) var<storage, read_write> dst_words: array<u32>;

// f32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
fn bf16_bits(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    if (!is_finite_f32(x) && (bits & 0x007fffffu) != 0u) {
        return (bits >> 16u) | 0x40u;
    }
    return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
}

// The value of output element e (in the caller's layout order), or 0 past the end.
fn element(e: u32) -> f32 {
    let numel = P.batch * P.heads * P.seq * P.head_dim;
    if (e >= numel) {
        return 0.0;
    }
    let d = e % P.head_dim;
    let r = e / P.head_dim;
    var b: u32;
    var h: u32;
    var n: u32;
    if (P.tensor_layout == LAYOUT_NHD) {
        h = r % P.heads;
        n = (r / P.heads) % P.seq;
        b = r / (P.heads * P.seq);
    } else {
        n = r % P.seq;
        h = (r / P.seq) % P.heads;
        b = r / (P.seq * P.heads);
    }
    return src[((b * P.heads + h) * P.seq + n) * P.head_dim + d];
}

@compute @workgroup_size(64)
fn store_output(@builtin(global_invocation_id) gid: vec3<u32>) {
    let w = linear_id(gid, P.threads_x);
    let numel = P.batch * P.heads * P.seq * P.head_dim;
    if (P.dtype == DTYPE_F32) {
        if (w < numel) {
            dst_words[w] = bitcast<u32>(element(w));
        }
        return;
    }
    if (w >= (numel + 1u) / 2u) {
        return;
    }
    let lo = element(2u * w);
    let hi = element(2u * w + 1u);
    if (P.dtype == DTYPE_F16) {
        dst_words[w] = pack2x16float(vec2<f32>(lo, hi));
    } else {
        dst_words[w] = bf16_bits(lo) | (bf16_bits(hi) << 16u);
    }
}
