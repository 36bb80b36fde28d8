// ALGORITHM.md Step 7: V' = V - vm, then FP8 E4M3 codes with one scale per channel (4 codes per u32),
// or f16(V') for the int8-fp16 mode (2 values per u32). One invocation per 4 channels of one head.

@group(0) @binding(0) var<uniform> P: Params;
// [B, Hkv, Nk, Dp]
@group(0) @binding(1) var<storage, read> src: array<f32>;
// vm at P.mean_offset ([B, Hkv, Dp]) when smooth_v; scales written at P.scale_offset ([B, Hkv, Dp])
@group(0) @binding(2) var<storage, read_write> aux: array<f32>;
// FP8: [B, Hkv, Nk, Dp / 4]; f16: [B, Hkv, Nk, Dp / 2]
@group(0) @binding(3) var<storage, read_write> codes: array<u32>;

@compute @workgroup_size(64)
fn quantize_v(@builtin(global_invocation_id) gid: vec3<u32>) {
    let dp = P.head_dim_padded;
    let i = linear_id(gid, P.threads_x);
    if (i >= P.batch * P.heads * (dp / 4u)) {
        return;
    }
    let c4 = i % (dp / 4u);
    let bh = i / (dp / 4u);
    var vm = vec4<f32>(0.0);
    if (P.smooth_v != 0u) {
        for (var k = 0u; k < 4u; k++) {
            vm[k] = aux[P.mean_offset + bh * dp + 4u * c4 + k];
        }
    }
    if (P.mode == MODE_INT8_FP16) {
        for (var n = 0u; n < P.seq; n++) {
            let base = (bh * P.seq + n) * dp + 4u * c4;
            let x = vec4<f32>(src[base], src[base + 1u], src[base + 2u], src[base + 3u]) - vm;
            let out = (bh * P.seq + n) * (dp / 2u) + 2u * c4;
            codes[out] = pack2x16float(x.xy);
            codes[out + 1u] = pack2x16float(x.zw);
        }
        return;
    }
    var amax = vec4<f32>(0.0);
    for (var n = 0u; n < P.seq; n++) {
        let base = (bh * P.seq + n) * dp + 4u * c4;
        let x = vec4<f32>(src[base], src[base + 1u], src[base + 2u], src[base + 3u]) - vm;
        amax = max(amax, abs(x));
    }
    var scale = vec4<f32>(1.0);
    for (var k = 0u; k < 4u; k++) {
        // 1 where amax / 448 is zero: amax == 0, or a quotient that underflows (ALGORITHM.md Step 7)
        let s = div_exact(amax[k], E4M3_MAX);
        if (s != 0.0) {
            scale[k] = s;
        }
        aux[P.scale_offset + bh * dp + 4u * c4 + k] = scale[k];
    }
    // One loop iteration per token, the four channels written out: a software driver's loop limit
    // (lavapipe's 65535 back-edges per invocation, WgpuBackend::loop_budget) counts the iterations
    // of inner loops too, and this walk and the absmax's must stay within 2 per token.
    for (var n = 0u; n < P.seq; n++) {
        let base = (bh * P.seq + n) * dp + 4u * c4;
        let x = vec4<f32>(src[base], src[base + 1u], src[base + 2u], src[base + 3u]) - vm;
        codes[(bh * P.seq + n) * (dp / 4u) + c4] = v_code(x.x, scale.x) | (v_code(x.y, scale.y) << 8u)
            | (v_code(x.z, scale.z) << 16u) | (v_code(x.w, scale.w) << 24u);
    }
}

// The E4M3 code of x / s: `/`, re-divided exactly only near a rounding tie (rare), and only where
// `/` is inexact.
fn v_code(x: f32, s: f32) -> u32 {
    var v = x / s;
    if (P.exact_div != 0u && e4m3_near_tie(v)) {
        v = div_exact(x, s);
    }
    return e4m3_encode(v);
}
