// ALGORITHM.md Step 2b for the dS correction of Step 2: the Q block means rotated like Q' was, so
// that dS = qm H . (K' H) equals qm . K'. One invocation per row, in place.

@group(0) @binding(0) var<uniform> P: Params;
// rows of [.., Dp] at P.dst_offset
@group(0) @binding(1) var<storage, read_write> aux: array<f32>;

@compute @workgroup_size(64)
fn rotate_rows(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = linear_id(gid, P.threads_x);
    if (r >= P.seq) {
        return;
    }
    let dp = P.head_dim_padded;
    var x: array<f32, 128>;
    for (var c = 0u; c < dp; c++) {
        x[c] = aux[P.dst_offset + r * dp + c];
    }
    fwht(&x, dp);
    for (var c = 0u; c < dp; c++) {
        aux[P.dst_offset + r * dp + c] = x[c];
    }
}
