// Batch normalization over NCHW tensors, per channel c over count = n*hw elements.
// Training mode uses the batch mean and biased variance, and updates the running statistics as
// PyTorch does (momentum m; the running variance takes the unbiased batch variance).
// Eval mode uses the running statistics: invstd = 1/sqrt(running_var + eps).
//   x, y, dy, dx [n, c, hw]     gamma, beta, mean, invstd, running_* [c]

struct Params {
    n: u32, c: u32, hw: u32, update_running: u32,
    eps: f32, momentum: f32, eval_mode: u32, _pad: u32,
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
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> invstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> running_var: array<f32>;
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
        mean[ch] = mu;
        invstd[ch] = inverseSqrt(var_biased + p.eps);
        if (p.update_running != 0u) {
            let unbiased = var_biased * f32(count) / f32(max(count, 2u) - 1u);
            running_mean[ch] = (1.0 - p.momentum) * running_mean[ch] + p.momentum * mu;
            running_var[ch] = (1.0 - p.momentum) * running_var[ch] + p.momentum * unbiased;
        }
    }
}

//#section normalize
// y = (x - mean) * invstd * gamma + beta; in eval mode `stat` holds the running variance.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> mean: array<f32>;
@group(0) @binding(3) var<storage, read> stat: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read> beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(256)
fn normalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.n * p.c * p.hw) { return; }
    let ch = (i / p.hw) % p.c;
    var inv = stat[ch];
    if (p.eval_mode != 0u) { inv = inverseSqrt(stat[ch] + p.eps); }
    y[i] = (x[i] - mean[ch]) * inv * gamma[ch] + beta[ch];
}

//#section backward_reduce
// One workgroup per channel: dbeta = sum dy, dgamma = sum dy * xhat.
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> mean: array<f32>;
@group(0) @binding(4) var<storage, read> stat: array<f32>;
@group(0) @binding(5) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(6) var<storage, read_write> dbeta: array<f32>;
@compute @workgroup_size(256)
fn backward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ch = wid.x;
    let count = p.n * p.hw;
    var inv = stat[ch];
    if (p.eval_mode != 0u) { inv = inverseSqrt(stat[ch] + p.eps); }
    let mu = mean[ch];
    var sd = 0.0;
    var sdx = 0.0;
    for (var j = lid.x; j < count; j += WG) {
        let k = at(ch, j);
        sd += dy[k];
        sdx += dy[k] * (x[k] - mu) * inv;
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
// Training: dx = gamma*invstd/count * (count*dy - dbeta - xhat*dgamma)  (the batch statistics
// depend on x). Eval: dx = dy * gamma * invstd.
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> mean: array<f32>;
@group(0) @binding(4) var<storage, read> stat: array<f32>;
@group(0) @binding(5) var<storage, read> gamma: array<f32>;
@group(0) @binding(6) var<storage, read> dgamma: array<f32>;
@group(0) @binding(7) var<storage, read> dbeta: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx: array<f32>;
@compute @workgroup_size(256)
fn backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.n * p.c * p.hw) { return; }
    let ch = (i / p.hw) % p.c;
    if (p.eval_mode != 0u) {
        dx[i] = dy[i] * gamma[ch] * inverseSqrt(stat[ch] + p.eps);
        return;
    }
    let inv = stat[ch];
    let count = f32(p.n * p.hw);
    let xhat = (x[i] - mean[ch]) * inv;
    dx[i] = gamma[ch] * inv / count * (count * dy[i] - dbeta[ch] - xhat * dgamma[ch]);
}
