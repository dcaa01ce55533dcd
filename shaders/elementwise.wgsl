// Element-wise kernels over flat arrays of length n (each binding f32, or f16 under mixed
// precision: t<binding>, see gpu::Kernel; the arithmetic is f32). A workgroup of 256 threads covers 1024
// consecutive elements, each thread 4 of them 256 apart: every load is coalesced across the
// workgroup and a thread has 4 independent loads in flight, which a large GPU needs to reach its
// memory bandwidth (one element per thread left the H200 at a fifth of it). The grid may be
// folded into 2-D (x up to 65535): see element().

struct Params {
    n: u32,
    seed: u32,
    alpha: f32,   // fill value / scale factor / axpy alpha / dropout probability
    beta: f32,    // dropout: 1/(1-p)
}
@group(0) @binding(0) var<uniform> p: Params;

// Element r (< 4) of thread lid in workgroup wid.
fn element(wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>, r: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 4u * WG + r * WG + lid.x;
}

// A counter-based hash (PCG output function) so dropout needs no stored mask: the backward pass
// regenerates the same keep/drop decision from (seed, index).
fn hash(v: u32) -> u32 {
    let s = v * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}
fn keep(i: u32) -> bool {
    let u = f32(hash(hash(i) ^ p.seed) >> 8u) * (1.0 / 16777216.0);
    return u >= p.alpha;
}

//#section fill
@group(0) @binding(1) var<storage, read_write> out: array<t1>;
@compute @workgroup_size(WG)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = element(wid, lid, nwg, r);
        if (i < p.n) { out[i] = t1(p.alpha); }
    }
}

//#section add
// out = a + b
@group(0) @binding(1) var<storage, read> a: array<t1>;
@group(0) @binding(2) var<storage, read> b: array<t2>;
@group(0) @binding(3) var<storage, read_write> out: array<t3>;
@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = element(wid, lid, nwg, r);
        if (i < p.n) { out[i] = t3(f32(a[i]) + f32(b[i])); }
    }
}

//#section add_relu
// out = max(a + b, 0)
@group(0) @binding(1) var<storage, read> a: array<t1>;
@group(0) @binding(2) var<storage, read> b: array<t2>;
@group(0) @binding(3) var<storage, read_write> out: array<t3>;
@compute @workgroup_size(WG)
fn add_relu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = element(wid, lid, nwg, r);
        if (i < p.n) { out[i] = t3(max(f32(a[i]) + f32(b[i]), 0.0)); }
    }
}

//#section scale
// out = alpha * x
@group(0) @binding(1) var<storage, read> x: array<t1>;
@group(0) @binding(2) var<storage, read_write> out: array<t2>;
@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = element(wid, lid, nwg, r);
        if (i < p.n) { out[i] = t2(p.alpha * f32(x[i])); }
    }
}

//#section axpy
// y += alpha * x, in place
@group(0) @binding(1) var<storage, read> x: array<t1>;
@group(0) @binding(2) var<storage, read_write> y: array<t2>;
@compute @workgroup_size(WG)
fn axpy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = element(wid, lid, nwg, r);
        if (i < p.n) { y[i] = t2(f32(y[i]) + p.alpha * f32(x[i])); }
    }
}

//#section relu
@group(0) @binding(1) var<storage, read> x: array<t1>;
@group(0) @binding(2) var<storage, read_write> out: array<t2>;
@compute @workgroup_size(WG)
fn relu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = element(wid, lid, nwg, r);
        if (i < p.n) { out[i] = t2(max(f32(x[i]), 0.0)); }
    }
}

//#section relu_backward
// dx = dy where the forward output y > 0 (equivalently x > 0), else 0
@group(0) @binding(1) var<storage, read> dy: array<t1>;
@group(0) @binding(2) var<storage, read> y: array<t2>;
@group(0) @binding(3) var<storage, read_write> dx: array<t3>;
@compute @workgroup_size(WG)
fn relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = element(wid, lid, nwg, r);
        if (i < p.n) { dx[i] = t3(select(0.0, f32(dy[i]), f32(y[i]) > 0.0)); }
    }
}

//#section dropout
// out = x * keep / (1 - p): used for both directions (the backward applies the same mask to dy)
@group(0) @binding(1) var<storage, read> x: array<t1>;
@group(0) @binding(2) var<storage, read_write> out: array<t2>;
@compute @workgroup_size(WG)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = element(wid, lid, nwg, r);
        if (i < p.n) { out[i] = t2(select(0.0, f32(x[i]) * p.beta, keep(i))); }
    }
}

//#section dropout_mask
// out = the 0/1 keep mask, so tests can check the kernel against the reference
@group(0) @binding(1) var<storage, read_write> out: array<t1>;
@compute @workgroup_size(WG)
fn dropout_mask(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = element(wid, lid, nwg, r);
        if (i < p.n) { out[i] = t1(select(0.0, 1.0, keep(i))); }
    }
}
