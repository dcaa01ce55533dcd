// Batch normalization over NCHW tensors, per channel c over count = n*hw elements, optionally
// fused with the ReLU that follows it (relu != 0: y = max(bn(x), 0), and backward masks dy by
// y > 0, so neither the pre-activation nor its gradient is ever stored).
// Training mode uses the batch mean and biased variance, and updates the running statistics as
// PyTorch does (momentum m; the running variance takes the unbiased batch variance).
// Eval mode uses the running statistics.
//   x, y, dy, dx [n, c, hw]     gamma, beta, running_* [c]
//   stat [2c]: the mean in stat[0..c], 1/sqrt(var + eps) in stat[c..2c] (one binding for
//   both keeps the backward kernel within 8 storage bindings, WebGPU's default limit)

struct Params {
    n: u32, c: u32, hw: u32, update_running: u32,
    eps: f32, momentum: f32, eval_mode: u32, relu: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, 256>;
var<workgroup> partial2: array<f32, 256>;

fn tree_sum2(lid: u32) {
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lid < s) {
            partial[lid] += partial[lid + s];
            partial2[lid] += partial2[lid + s];
        }
    }
    workgroupBarrier();
}

// Element j of channel ch (j < n*hw) in the NCHW array.
fn at(ch: u32, j: u32) -> u32 {
    return ((j / p.hw) * p.c + ch) * p.hw + j % p.hw;
}

fn element(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

//#section stats
// One workgroup per channel: mean and 1/sqrt(var + eps) of the batch (two passes over the
// channel for accuracy), and the running-statistics update.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> stat: array<f32>;
@group(0) @binding(3) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> running_var: array<f32>;
@compute @workgroup_size(256)
fn stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ch = wid.x;
    let count = p.n * p.hw;
    var s = 0.0;
    for (var j = lid.x; j < count; j += WG) { s += x[at(ch, j)]; }
    partial[lid.x] = s;
    partial2[lid.x] = 0.0;
    tree_sum2(lid.x);
    let mu = partial[0] / f32(count);
    workgroupBarrier();
    var q = 0.0;
    for (var j = lid.x; j < count; j += WG) {
        let d = x[at(ch, j)] - mu;
        q += d * d;
    }
    partial[lid.x] = q;
    partial2[lid.x] = 0.0;
    tree_sum2(lid.x);
    if (lid.x == 0u) {
        let var_biased = partial[0] / f32(count);
        stat[ch] = mu;
        stat[p.c + ch] = inverseSqrt(var_biased + p.eps);
        if (p.update_running != 0u) {
            let unbiased = var_biased * f32(count) / f32(max(count, 2u) - 1u);
            running_mean[ch] = (1.0 - p.momentum) * running_mean[ch] + p.momentum * mu;
            running_var[ch] = (1.0 - p.momentum) * running_var[ch] + p.momentum * unbiased;
        }
    }
}

//#section eval_stats
// Eval mode: stats from the running statistics, one thread per channel.
@group(0) @binding(1) var<storage, read_write> stat: array<f32>;
@group(0) @binding(2) var<storage, read> running_mean: array<f32>;
@group(0) @binding(3) var<storage, read> running_var: array<f32>;
@compute @workgroup_size(64)
fn eval_stats(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ch = gid.x;
    if (ch >= p.c) { return; }
    stat[ch] = running_mean[ch];
    stat[p.c + ch] = inverseSqrt(running_var[ch] + p.eps);
}

//#section normalize
// y = (x - mean) * invstd * gamma + beta, then max(y, 0) when fused with the ReLU.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> stat: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(256)
fn normalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.n * p.c * p.hw) { return; }
    let ch = (i / p.hw) % p.c;
    let v = (x[i] - stat[ch]) * stat[p.c + ch] * gamma[ch] + beta[ch];
    y[i] = select(v, max(v, 0.0), p.relu != 0u);
}

//#section backward_reduce
// One workgroup per channel: dbeta = sum g, dgamma = sum g * xhat, where g is dy (masked by
// y > 0 when fused with the ReLU).
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> stat: array<f32>;
@group(0) @binding(4) var<storage, read> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(6) var<storage, read_write> dbeta: array<f32>;
@compute @workgroup_size(256)
fn backward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ch = wid.x;
    let count = p.n * p.hw;
    let mu = stat[ch];
    let inv = stat[p.c + ch];
    var sd = 0.0;
    var sdx = 0.0;
    for (var j = lid.x; j < count; j += WG) {
        let k = at(ch, j);
        let g = select(dy[k], 0.0, p.relu != 0u && y[k] <= 0.0);
        sd += g;
        sdx += g * (x[k] - mu) * inv;
    }
    partial[lid.x] = sd;
    partial2[lid.x] = sdx;
    tree_sum2(lid.x);
    if (lid.x == 0u) {
        dbeta[ch] = partial[0];
        dgamma[ch] = partial2[0];
    }
}

//#section backward_input
// Training: dx = gamma*invstd/count * (count*g - dbeta - xhat*dgamma)  (the batch statistics
// depend on x). Eval: dx = g * gamma * invstd. g is dy, masked by y > 0 when fused.
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> stat: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read> dgamma: array<f32>;
@group(0) @binding(6) var<storage, read> dbeta: array<f32>;
@group(0) @binding(7) var<storage, read> y: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx: array<f32>;
@compute @workgroup_size(256)
fn backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.n * p.c * p.hw) { return; }
    let ch = (i / p.hw) % p.c;
    let g = select(dy[i], 0.0, p.relu != 0u && y[i] <= 0.0);
    let inv = stat[p.c + ch];
    if (p.eval_mode != 0u) {
        dx[i] = g * gamma[ch] * inv;
        return;
    }
    let count = f32(p.n * p.hw);
    let xhat = (x[i] - stat[ch]) * inv;
    dx[i] = gamma[ch] * inv / count * (count * g - dbeta[ch] - xhat * dgamma[ch]);
}
