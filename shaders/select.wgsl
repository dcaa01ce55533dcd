// Per-layer magnitude selection on the GPU: for every layer l (a range [offset, offset + len)
// of a vector x), find the k_l-th smallest |x| by bisection over its float bits (for
// non-negative floats the bit pattern orders like the value), then mark the k_l smallest with
// 0 (ties broken by position) and the rest with 1. No sort, no host round trip: 32 rounds of
// count + update are recorded back to back.
// A vector larger than one storage binding is bound in pieces: the counting and masking kernels
// then get a table of the layers' parts in that piece (offset relative to the piece, id = the
// layer), and accumulate into the per-layer counts and state, which see every piece.
//   layers [L] of (offset, len, k, id)      state [L] of (lo, hi, quota, _)      counts [L] atomic

// mode (count only): 0 counts key <= mid of the bisection, 1 counts key < lo (the final key)
struct Params { layers: u32, mode: u32, _pad1: u32, _pad2: u32 }
@group(0) @binding(0) var<uniform> p: Params;

struct Layer { offset: u32, len: u32, k: u32, id: u32 }
struct Range { lo: u32, hi: u32, quota: u32, _pad: u32 }

fn key(v: f32) -> u32 {
    return bitcast<u32>(abs(v)) & 0x7fffffffu;
}

//#section init
@group(0) @binding(1) var<storage, read_write> state: array<Range>;
@group(0) @binding(2) var<storage, read_write> counts: array<atomic<u32>>;
@compute @workgroup_size(64)
fn init(@builtin(global_invocation_id) gid: vec3<u32>) {
    let l = gid.x;
    if (l >= p.layers) { return; }
    state[l] = Range(0u, 0x7f800000u, 0u, 0u);   // [0, +inf]
    atomicStore(&counts[l], 0u);
}

//#section count
// Workgroup (x, y = layer part): counts elements with key <= mid of its layer (mode 0) or with
// key < lo once the bisection is done (mode 1), strided over x.
@group(0) @binding(1) var<storage, read> layers: array<Layer>;
@group(0) @binding(2) var<storage, read> state: array<Range>;
@group(0) @binding(3) var<storage, read_write> counts: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
var<workgroup> local_count: atomic<u32>;
@compute @workgroup_size(WG)
fn count(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let l = wid.y;
    if (l >= p.layers) { return; }   // (uniform per workgroup, so before the barriers is fine)
    let layer = layers[l];
    let r = state[layer.id];
    let mid = r.lo + (r.hi - r.lo) / 2u;
    if (lid.x == 0u) { atomicStore(&local_count, 0u); }
    workgroupBarrier();
    var c = 0u;
    for (var i = wid.x * WG + lid.x; i < layer.len; i += nwg.x * WG) {
        let kv = key(x[layer.offset + i]);
        c += select(0u, 1u, select(kv <= mid, kv < r.lo, p.mode == 1u));
    }
    atomicAdd(&local_count, c);
    workgroupBarrier();
    if (lid.x == 0u) { atomicAdd(&counts[layer.id], atomicLoad(&local_count)); }
}

//#section set_quota
// One thread per layer: the ties (key == v) still to zero, k − #(key < v), lowest positions first.
@group(0) @binding(1) var<storage, read> layers: array<Layer>;
@group(0) @binding(2) var<storage, read_write> state: array<Range>;
@group(0) @binding(3) var<storage, read_write> counts: array<atomic<u32>>;
@compute @workgroup_size(64)
fn set_quota(@builtin(global_invocation_id) gid: vec3<u32>) {
    let l = gid.x;
    if (l >= p.layers) { return; }
    let k = layers[l].k;
    state[l].quota = k - min(atomicLoad(&counts[l]), k);
    atomicStore(&counts[l], 0u);
}

//#section update
// One thread per layer: keep the half that still holds the k-th smallest key.
@group(0) @binding(1) var<storage, read> layers: array<Layer>;
@group(0) @binding(2) var<storage, read_write> state: array<Range>;
@group(0) @binding(3) var<storage, read_write> counts: array<atomic<u32>>;
@compute @workgroup_size(64)
fn update(@builtin(global_invocation_id) gid: vec3<u32>) {
    let l = gid.x;
    if (l >= p.layers) { return; }
    var r = state[l];
    let mid = r.lo + (r.hi - r.lo) / 2u;
    if (atomicLoad(&counts[l]) >= layers[l].k) { r.hi = mid; } else { r.lo = mid + 1u; }
    state[l] = r;
    atomicStore(&counts[l], 0u);
}

//#section write_mask
// One thread per layer part, pieces in order: key < v → 0; key == v → 0 while the layer's quota
// lasts (lowest positions first; the quota carries over to the next piece); otherwise 1.
// v = the k-th smallest key (lo == hi).
@group(0) @binding(1) var<storage, read> layers: array<Layer>;
@group(0) @binding(2) var<storage, read_write> state: array<Range>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> mask: array<f32>;
@compute @workgroup_size(64)
fn write_mask(@builtin(global_invocation_id) gid: vec3<u32>) {
    let l = gid.x;
    if (l >= p.layers) { return; }
    let layer = layers[l];
    let v = state[layer.id].lo;
    var quota = state[layer.id].quota;
    for (var i = 0u; i < layer.len; i++) {
        let kv = key(x[layer.offset + i]);
        var m = 1.0;
        if (layer.k > 0u && kv < v) { m = 0.0; }
        if (layer.k > 0u && kv == v && quota > 0u) { m = 0.0; quota -= 1u; }
        mask[layer.offset + i] = m;
    }
    state[layer.id].quota = quota;
}
