// Start-up probe of a software driver's loop limit (WgpuBackend::loop_budget): one invocation counts
// the iterations of a loop asked to run P.seq times. llvmpipe (lavapipe) silently ends the loops of
// an invocation after 65535 back-edges, so its count comes back short; a driver without such a limit
// counts them all.

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> count: array<atomic<u32>>;

@compute @workgroup_size(1)
fn loop_probe() {
    var i = 0u;
    loop {
        if (i >= P.seq) {
            break;
        }
        // an atomic per iteration, so that no compiler folds the loop into its trip count
        atomicAdd(&count[1], 1u);
        i++;
    }
    atomicStore(&count[0], i);
}
