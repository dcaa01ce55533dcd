// Softmax cross-entropy over logits [n, classes] with integer labels stored as f32 [n].
// Numerically stable: log-sum-exp after subtracting the row maximum.
// The per-row kernels give each row a segment of p.seg threads (the class count rounded up to
// a power of two, at most 256) and each workgroup 256 / p.seg rows: 1000 classes are read by 256
// threads side by side (coalesced, hundreds of workgroups on a large GPU) instead of by one
// thread in a loop, and 10 classes put 16 rows in a workgroup instead of leaving it idle.
//   rows [3, n]: per row its loss, its maximum logit and 1 / sum(exp(logit - max)); backward
//   reuses the last two instead of reading the row twice more.
// logits and dlogits are bound as t<binding> (f32, or f16 under mixed precision); the rest and
// all arithmetic are f32.

struct Params { n: u32, classes: u32, seg: u32, _pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;


var<workgroup> slots: array<f32, WG>;

// The row of thread lid in workgroup wid (may be >= n in the last workgroup).
fn segment_row(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * (WG / p.seg) + lid / p.seg;
}

// The maximum (take_max) or the sum of v over the thread's segment, for every thread of it, by
// halving in shared memory (a fixed order, so the same result on every run). Every thread of
// the workgroup must call it (it contains barriers).
fn segment_reduce(v: f32, lid: u32, take_max: bool) -> f32 {
    slots[lid] = v;
    for (var s = p.seg / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lid % p.seg < s) {
            let other = slots[lid + s];
            slots[lid] = select(slots[lid] + other, max(slots[lid], other), take_max);
        }
    }
    workgroupBarrier();
    let total = slots[lid - lid % p.seg];
    workgroupBarrier(); // the slots may be written again right after
    return total;
}

//#section row_losses
// Per row i: rows[i] = log(sum exp(logit - max)) + max - logit[label], with the max and the
// reciprocal sum kept for backward.
@group(0) @binding(1) var<storage, read> logits: array<t1>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read_write> rows: array<f32>;
@compute @workgroup_size(WG)
fn row_losses(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = segment_row(wid, nwg, lid.x);
    let lane = lid.x % p.seg;
    let valid = i < p.n;
    var m = bitcast<f32>(0xff7fffffu); // the lowest finite f32: the identity of max for finite logits
    if (valid) {
        for (var j = lane; j < p.classes; j += p.seg) { m = max(m, f32(logits[i * p.classes + j])); }
    }
    m = segment_reduce(m, lid.x, true);
    var s = 0.0;
    if (valid) {
        for (var j = lane; j < p.classes; j += p.seg) { s += exp(f32(logits[i * p.classes + j]) - m); }
    }
    s = segment_reduce(s, lid.x, false);
    if (valid && lane == 0u) {
        rows[i] = log(s) + m - f32(logits[i * p.classes + u32(labels[i])]);
        rows[p.n + i] = m;
        rows[2u * p.n + i] = 1.0 / s;
    }
}

//#section mean
// One workgroup: loss[0] = the mean of the n row losses (launched with seg = 256, so that the
// segment is the whole workgroup).
@group(0) @binding(1) var<storage, read> rows: array<f32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@compute @workgroup_size(WG)
fn mean(@builtin(local_invocation_id) lid: vec3<u32>) {
    var s = 0.0;
    for (var i = lid.x; i < p.n; i += WG) { s += rows[i]; }
    let total = segment_reduce(s, lid.x, false);
    if (lid.x == 0u) { loss[0] = total / f32(p.n); }
}

//#section backward
// dlogits = (softmax - onehot(label)) * grad_loss / n, one thread per logit.
@group(0) @binding(1) var<storage, read> logits: array<t1>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read> rows: array<f32>;
@group(0) @binding(4) var<storage, read> grad_loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> dlogits: array<t5>;
@compute @workgroup_size(WG)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let k = gid.x + gid.y * nwg.x * WG;
    if (k >= p.n * p.classes) { return; }
    let i = k / p.classes;
    let onehot = select(0.0, 1.0, k % p.classes == u32(labels[i]));
    let softmax = exp(f32(logits[k]) - rows[p.n + i]) * rows[2u * p.n + i];
    dlogits[k] = t5((softmax - onehot) * (grad_loss[0] / f32(p.n)));
}

//#section rank
// rank[i] = how many classes score strictly higher than the label (0 = top-1 correct).
@group(0) @binding(1) var<storage, read> logits: array<t1>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read_write> ranks: array<f32>;
@compute @workgroup_size(WG)
fn rank(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = segment_row(wid, nwg, lid.x);
    let lane = lid.x % p.seg;
    let valid = i < p.n;
    var higher = 0.0; // a count, exact in f32 below 2^24 classes
    if (valid) {
        let target_score = f32(logits[i * p.classes + u32(labels[i])]);
        for (var j = lane; j < p.classes; j += p.seg) {
            if (f32(logits[i * p.classes + j]) > target_score) { higher += 1.0; }
        }
    }
    higher = segment_reduce(higher, lid.x, false);
    if (valid && lane == 0u) { ranks[i] = higher; }
}
