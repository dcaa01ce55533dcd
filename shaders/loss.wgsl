// Softmax cross-entropy over logits [n, classes] with integer labels stored as f32 [n].
// Numerically stable: log-sum-exp after subtracting the row maximum.

struct Params { n: u32, classes: u32, _pad0: u32, _pad1: u32 }
@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 256u;

fn row_max(i: u32) -> f32 {
    var m = logits[i * p.classes];
    for (var j = 1u; j < p.classes; j++) { m = max(m, logits[i * p.classes + j]); }
    return m;
}
fn row_sum_exp(i: u32, m: f32) -> f32 {
    var s = 0.0;
    for (var j = 0u; j < p.classes; j++) { s += exp(logits[i * p.classes + j] - m); }
    return s;
}

//#section forward
// One workgroup: per-row losses, then their mean into loss[0].
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
var<workgroup> partial: array<f32, 256>;
@compute @workgroup_size(256)
fn forward(@builtin(local_invocation_id) lid: vec3<u32>) {
    var s = 0.0;
    for (var i = lid.x; i < p.n; i += WG) {
        let m = row_max(i);
        let label = u32(labels[i]);
        s += log(row_sum_exp(i, m)) + m - logits[i * p.classes + label];
    }
    partial[lid.x] = s;
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        workgroupBarrier();
        if (lid.x < k) { partial[lid.x] += partial[lid.x + k]; }
    }
    if (lid.x == 0u) { loss[0] = partial[0] / f32(p.n); }
}

//#section backward
// dlogits = (softmax - onehot(label)) * grad_loss / n; one thread per row.
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read> grad_loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;
@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) { return; }
    let m = row_max(i);
    let inv = 1.0 / row_sum_exp(i, m);
    let g = grad_loss[0] / f32(p.n);
    let label = u32(labels[i]);
    for (var j = 0u; j < p.classes; j++) {
        let k = i * p.classes + j;
        dlogits[k] = (exp(logits[k] - m) * inv - select(0.0, 1.0, j == label)) * g;
    }
}

//#section rank
// rank[i] = how many classes score strictly higher than the label (0 = top-1 correct).
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read_write> ranks: array<f32>;
@compute @workgroup_size(256)
fn rank(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) { return; }
    let target_score = logits[i * p.classes + u32(labels[i])];
    var r = 0u;
    for (var j = 0u; j < p.classes; j++) {
        if (logits[i * p.classes + j] > target_score) { r++; }
    }
    ranks[i] = f32(r);
}
