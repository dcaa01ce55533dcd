// Dynamic loss scaling (mixed precision): backward starts from the loss gradient S instead of 1,
// so small activation gradients stay above f16's smallest values; the weight gradients (f32)
// are then divided by S before any optimizer reads them. When any of them is inf or NaN (an f16
// activation gradient overflowed), the step is skipped: `found` [1] (u32) is set, and the
// optimizer kernels read it (sgd.wgsl, admm.wgsl's sas_inner) and leave everything as it was.
//   state [4] f32: S, steps since S last changed, steps skipped in all, pending (1 after an
//   unscale whose step update has not run yet)
// An f16 activation gradient that overflows becomes ±inf (WGSL: an f32 of magnitude 2^16 or more
// converts to the infinity of its sign; between 65,504 and 2^16 it may round to 65,504), and the
// weight gradients computed from it become inf or NaN: what `unscale` looks for.
// The update after each step: overflow → S / 2 (at least 2^-24), the step counted as skipped;
// else after `interval` good steps in a row → S · 2 (at most 2^24). PyTorch's GradScaler rule.

struct Params { n: u32, interval: u32, _pad0: u32, _pad1: u32 }
@group(0) @binding(0) var<uniform> p: Params;

// Element r (< 4) of thread lid in workgroup wid (as in elementwise.wgsl).
fn element(wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>, r: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 4u * WG + r * WG + lid.x;
}

//#section unscale
// g[i] /= S; found = 1 where g[i] is inf or NaN. The test is on the bits (exponent all ones):
// WGSL lets compilers assume that float arithmetic never sees inf or NaN, so a float
// comparison could be folded away.
@group(0) @binding(1) var<storage, read_write> state: array<f32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> found: array<atomic<u32>>;
@compute @workgroup_size(WG)
fn unscale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let inv = 1.0 / state[0];   // S is a power of two: exact
    if (wid.x == 0u && wid.y == 0u && lid.x == 0u) { state[3] = 1.0; }
    for (var r = 0u; r < 4u; r++) {
        let i = element(wid, lid, nwg, r);
        if (i >= p.n) { return; }
        let v = g[i];
        if ((bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u) { atomicStore(&found[0], 1u); }
        g[i] = v * inv;
    }
}

//#section update
// One thread: the step's outcome applied to S and the counters (nothing when no unscale ran
// since the last update, so running it twice changes nothing), and `found` cleared.
@group(0) @binding(1) var<storage, read_write> state: array<f32>;
@group(0) @binding(2) var<storage, read_write> found: array<u32>;
@compute @workgroup_size(1)
fn update() {
    if (state[3] == 0.0) { return; }
    state[3] = 0.0;
    if (found[0] != 0u) {
        state[0] = max(state[0] * 0.5, 5.9604645e-8);
        state[1] = 0.0;
        state[2] += 1.0;
        found[0] = 0u;
    } else {
        state[1] += 1.0;
        if (state[1] >= f32(p.interval)) {
            state[0] = min(state[0] * 2.0, 16777216.0);
            state[1] = 0.0;
        }
    }
}
