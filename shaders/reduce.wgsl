// Reductions. Workgroups of 256 threads add with workgroup_sum from the prelude (sum_tree.wgsl,
// or sum_subgroup.wgsl where the adapter has subgroups).


//#section sum_stage
// Stage of a full sum: workgroup g sums x[g*chunk .. (g+1)*chunk) (of x when mode = 0, x² when
// mode = 1, |x| when mode = 2; times scale) into out[g]. Run once with many workgroups, then
// once with one workgroup.
struct Params { n: u32, chunk: u32, mode: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<t1>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(WG)
fn sum_stage(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let begin = wid.x * p.chunk;
    let end = min(begin + p.chunk, p.n);
    var s = 0.0;
    for (var i = begin + lid.x; i < end; i += WG) {
        let v = f32(x[i]);
        s += select(select(v, v * v, p.mode == 1u), abs(v), p.mode == 2u);
    }
    let total = workgroup_sum(s, lid.x);
    if (lid.x == 0u) { out[wid.x] = total * p.scale; }
}

//#section channel_sum
// x viewed as [outer, c, inner]: out[ch] = sum over outer and inner of x. One workgroup per channel.
struct Params { outer: u32, c: u32, inner: u32, _pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<t1>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(WG)
fn channel_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ch = wid.x;
    let count = p.outer * p.inner;
    var s = 0.0;
    for (var j = lid.x; j < count; j += WG) {
        let o = j / p.inner;
        let i = j % p.inner;
        s += f32(x[(o * p.c + ch) * p.inner + i]);
    }
    let total = workgroup_sum(s, lid.x);
    if (lid.x == 0u) { out[ch] = total; }
}

//#section sum_splits
// out[i] = sum over z < splits of parts[z * n + i]: finishes a split-K GEMM. A workgroup covers
// 256 / lanes consecutive outputs; an output's `lanes` threads add every lanes-th part in order
// (z = lane, lane + lanes, ...) and then halve in shared memory in a fixed order: the same sum on
// every run, and with ~8 parts per thread a big GPU has all the loads in flight at once (one
// thread per output leaves 2,304 threads looping over 256 parts for a 16-channel weight
// gradient). lanes is a power of two <= 256; with lanes = 1 the parts are added in order.
struct Params { n: u32, splits: u32, lanes: u32, _pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> parts: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<t2>;   // f32, or f16 activations
var<workgroup> acc: array<f32, WG>;
@compute @workgroup_size(WG)
fn sum_splits(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let cols = WG / p.lanes;
    let lane = lid.x / cols;
    let i = (wid.x + wid.y * nwg.x) * cols + lid.x % cols;
    var s = 0.0;
    if (i < p.n) {
        for (var z = lane; z < p.splits; z += p.lanes) { s += parts[z * p.n + i]; }
    }
    if (p.lanes == 1u) {
        if (i < p.n) { out[i] = t2(s); }
        return;
    }
    acc[lid.x] = s;
    workgroupBarrier();
    for (var half = p.lanes / 2u; half > 0u; half /= 2u) {
        if (lane < half) { acc[lid.x] += acc[lid.x + half * cols]; }
        workgroupBarrier();
    }
    if (lane == 0u && i < p.n) { out[i] = t2(acc[lid.x]); }
}

//#section broadcast
// out[i] = scalar[0] * scale: the backward of a full sum or mean.
struct Params { n: u32, _pad0: u32, _pad1: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> scalar: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(WG)
fn broadcast(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i < p.n) { out[i] = scalar[0] * p.scale; }
}

//#section subgroup_check
// Whether this adapter's subgroups suit sum_subgroup.wgsl (compiled with it): ok[i] = 1.0 for
// thread i when its subgroup is full and holds consecutive local indices starting at a multiple
// of its size, and the workgroup sum of (local index, 1) is exact.
struct Params { n: u32, _pad0: u32, _pad1: u32, _pad2: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> ok: array<f32>;
@compute @workgroup_size(WG)
fn subgroup_check(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let size = subgroupAdd(1u);
    let low = subgroupMin(lid.x);
    let high = subgroupMax(lid.x);
    let total = workgroup_sum2(vec2<f32>(f32(lid.x), 1.0), lid.x);
    let laid_out = size > 0u && WG % size == 0u && low == lid.x - lid.x % size && high == low + size - 1u;
    let exact = total.x == f32(WG * (WG - 1u) / 2u) && total.y == f32(WG);
    let i = wid.x * WG + lid.x;
    if (i < p.n) { ok[i] = select(0.0, 1.0, laid_out && exact); }
}
