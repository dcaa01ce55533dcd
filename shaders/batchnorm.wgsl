// Batch normalization over NCHW tensors, per channel c over count = n*hw elements, optionally
// fused with the ReLU that follows it (relu != 0: y = max(bn(x), 0), and backward masks dy by
// y > 0, recomputing y from x, so neither the pre-activation nor its gradient is ever stored,
// and backward reads neither y), and with a ResNet block's residual add before it (normalize
// with a graph or in training, normalize_eval without).
// Training mode uses the batch mean and biased variance, and updates the running statistics as
// PyTorch does (momentum m; the running variance takes the unbiased batch variance).
// Eval mode uses the running statistics.
//   x, y, dy, dx [n, c, hw]     gamma, beta, running_* [c]
//   (x, y, dy, dx and the residual are bound as t<binding>: f32, or f16 under mixed precision;
//   statistics, parameters and every sum are f32)
//   stat [2c]: the mean in stat[0..c], 1/sqrt(var + eps) in stat[c..2c] (one binding for
//   both keeps the backward kernel within 8 storage bindings, WebGPU's default limit)
// Per-channel reductions run in two levels so that a large GPU has work for all its cores: a
// (chunk, channel) grid of workgroups, each over `ipc` consecutive images of one channel, writes
// partial [c, chunks, 2]; a finalize kernel (one workgroup per channel) combines the chunks. The
// partial and finalize kernels add within a workgroup with workgroup_sum / workgroup_sum2, from
// the prelude (sum_tree.wgsl, or sum_subgroup.wgsl where the adapter has subgroups).

struct Params {
    n: u32, c: u32, hw: u32, update_running: u32,
    eps: f32, momentum: f32, eval_mode: u32, relu: u32,
    chunks: u32, ipc: u32, residual: u32, out_f16: u32,   // out_f16: y is stored as f16
}
@group(0) @binding(0) var<uniform> p: Params;


// Element r (< 4) of thread lid in workgroup wid: a workgroup covers 4*WG consecutive elements,
// each thread 4 of them WG apart (coalesced loads, 4 in flight per thread; see elementwise.wgsl).
fn element(wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>, r: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 4u * WG + r * WG + lid.x;
}

// The elements of chunk q of channel ch: images [q*ipc, min((q+1)*ipc, n)), as j < chunk_len;
// element j is x[at_chunk(ch, q, j)].
fn chunk_len(q: u32) -> u32 {
    return (min((q + 1u) * p.ipc, p.n) - q * p.ipc) * p.hw;
}
fn at_chunk(ch: u32, q: u32, j: u32) -> u32 {
    let b = q * p.ipc + j / p.hw;
    return (b * p.c + ch) * p.hw + j % p.hw;
}

// Batch norm of one value (before the ReLU and residual): the one expression every kernel that
// computes or recomputes an output uses, so that they agree to the bit.
fn bn_value(xv: f32, mean: f32, inv: f32, g: f32, b: f32) -> f32 {
    return (xv - mean) * inv * g + b;
}

// Whether the fused ReLU's output y = max(v, 0), as stored (f32 or f16), is <= 0, as the
// backward kernels tested the stored y before: they mask dy where it is, recomputing v from x
// rather than reading y (one read less). The same max and comparison, so a NaN is masked or not
// as it was; the same bits wherever the compiler treats bn_value's multiply-add alike in the
// forward and backward kernels (checked on lavapipe by tests/kernels.rs).
fn relu_is_zero(v: f32) -> bool {
    return as_stored(max(v, 0.0), p.out_f16 != 0u) <= 0.0;
}

// v with the residual r added, as batch norm's store followed by an add would compute it (v
// rounded to y's type first).
fn plus_residual(v: f32, r: f32) -> f32 {
    return as_stored(v, p.out_f16 != 0u) + r;
}

//#section stats_partial
// Workgroup (q, ch): the mean and sum of squared deviations (M2) of chunk q of channel ch, two
// passes over the chunk (the second reads it from cache) for accuracy.
@group(0) @binding(1) var<storage, read> x: array<t1>;
@group(0) @binding(2) var<storage, read_write> partial_out: array<f32>;
@compute @workgroup_size(WG)
fn stats_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let q = wid.x;
    let ch = wid.y;
    let len = chunk_len(q);
    var s = 0.0;
    for (var j = lid.x; j < len; j += WG) { s += f32(x[at_chunk(ch, q, j)]); }
    let mu = workgroup_sum(s, lid.x) / f32(len);
    var m2 = 0.0;
    for (var j = lid.x; j < len; j += WG) {
        let d = f32(x[at_chunk(ch, q, j)]) - mu;
        m2 += d * d;
    }
    let total_m2 = workgroup_sum(m2, lid.x);
    if (lid.x == 0u) {
        let o = 2u * (ch * p.chunks + q);
        partial_out[o] = mu;
        partial_out[o + 1u] = total_m2;
    }
}

//#section stats_finalize
// Workgroup ch: the chunks' (mean, M2) combined as in a single pass over the channel: the batch
// mean is the chunk means weighted by their sizes, and M2 = sum over chunks of M2_q +
// n_q (mean_q - mean)^2 (Chan et al.'s update, in parallel). Then mean and 1/sqrt(var + eps) of
// the batch, and the running-statistics update. The chunks are spread over the workgroup's
// threads: one thread looping over up to hundreds of chunks was a chain of dependent loads that
// cost more than the whole normalize pass on a large GPU.
@group(0) @binding(1) var<storage, read> partial_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> stat: array<f32>;
@group(0) @binding(3) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> running_var: array<f32>;
@compute @workgroup_size(WG)
fn stats_finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ch = wid.x;
    let count = f32(p.n * p.hw);
    var s = 0.0;
    for (var q = lid.x; q < p.chunks; q += WG) {
        s += f32(chunk_len(q)) * partial_in[2u * (ch * p.chunks + q)];
    }
    let mu = workgroup_sum(s, lid.x) / count;
    var m2 = 0.0;
    for (var q = lid.x; q < p.chunks; q += WG) {
        let o = 2u * (ch * p.chunks + q);
        let d = partial_in[o] - mu;
        m2 += partial_in[o + 1u] + f32(chunk_len(q)) * d * d;
    }
    let total_m2 = workgroup_sum(m2, lid.x);
    if (lid.x == 0u) {
        stat[ch] = mu;
        stat[p.c + ch] = inverseSqrt(total_m2 / count + p.eps);
        if (p.update_running != 0u) {
            let unbiased = total_m2 / max(count - 1.0, 1.0);
            running_mean[ch] = (1.0 - p.momentum) * running_mean[ch] + p.momentum * mu;
            running_var[ch] = (1.0 - p.momentum) * running_var[ch] + p.momentum * unbiased;
        }
    }
}

//#section eval_affine
// Eval mode, one thread per channel: affine [4c] = running mean, 1/sqrt(running var + eps),
// gamma, beta. Its first half is `stat` for normalize and backward; a convolution's epilogue
// (conv2d.wgsl, store_out) computes normalize_eval's expression from all four.
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read> running_mean: array<f32>;
@group(0) @binding(4) var<storage, read> running_var: array<f32>;
@group(0) @binding(5) var<storage, read_write> affine: array<f32>;
@compute @workgroup_size(64)
fn eval_affine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ch = gid.x;
    if (ch >= p.c) { return; }
    affine[ch] = running_mean[ch];
    affine[p.c + ch] = inverseSqrt(running_var[ch] + p.eps);
    affine[2u * p.c + ch] = gamma[ch];
    affine[3u * p.c + ch] = beta[ch];
}

//#section normalize
// y = (x - mean) * invstd * gamma + beta, plus the residual r when p.residual != 0 (a ResNet
// block's end: the same bits as batch norm followed by elementwise add_relu, with one write
// and one read of y fewer), then max(y, 0) when fused with the ReLU.
@group(0) @binding(1) var<storage, read> x: array<t1>;
@group(0) @binding(2) var<storage, read> stat: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read> res: array<t5>;
@group(0) @binding(6) var<storage, read_write> y: array<t6>;
@compute @workgroup_size(WG)
fn normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = element(wid, lid, nwg, r);
        if (i >= p.n * p.c * p.hw) { return; }
        let ch = (i / p.hw) % p.c;
        var v = bn_value(f32(x[i]), stat[ch], stat[p.c + ch], gamma[ch], beta[ch]);
        if (p.residual != 0u) { v = plus_residual(v, f32(res[i])); }
        y[i] = t6(select(v, max(v, 0.0), p.relu != 0u));
    }
}

//#section normalize_eval
// Evaluation without a graph, in one pass: y = bn(x) with the running statistics (no stat
// kernel before it), plus the residual r when p.residual != 0 (the second batch norm of a
// ResNet block with its shortcut), then max(y, 0) when p.relu != 0.
@group(0) @binding(1) var<storage, read> x: array<t1>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read> running_mean: array<f32>;
@group(0) @binding(5) var<storage, read> running_var: array<f32>;
@group(0) @binding(6) var<storage, read> res: array<t6>;
@group(0) @binding(7) var<storage, read_write> y: array<t7>;
@compute @workgroup_size(WG)
fn normalize_eval(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = 0u; r < 4u; r++) {
        let i = element(wid, lid, nwg, r);
        if (i >= p.n * p.c * p.hw) { return; }
        let ch = (i / p.hw) % p.c;
        var v = bn_value(f32(x[i]), running_mean[ch], inverseSqrt(running_var[ch] + p.eps), gamma[ch], beta[ch]);
        if (p.residual != 0u) { v += f32(res[i]); }
        y[i] = t7(select(v, max(v, 0.0), p.relu != 0u));
    }
}

//#section backward_partial
// Workgroup (q, ch): over chunk q of channel ch, the sums of g and of g * xhat, where g is dy
// (masked by y > 0 when fused with the ReLU, y recomputed from x).
@group(0) @binding(1) var<storage, read> dy: array<t1>;
@group(0) @binding(2) var<storage, read> x: array<t2>;
@group(0) @binding(3) var<storage, read> stat: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read> beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> partial_out: array<f32>;
@compute @workgroup_size(WG)
fn backward_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let q = wid.x;
    let ch = wid.y;
    let len = chunk_len(q);
    let mu = stat[ch];
    let inv = stat[p.c + ch];
    let gm = gamma[ch];
    let bt = beta[ch];
    var sd = 0.0;
    var sdx = 0.0;
    for (var j = lid.x; j < len; j += WG) {
        let k = at_chunk(ch, q, j);
        let xv = f32(x[k]);
        let g = select(f32(dy[k]), 0.0, p.relu != 0u && relu_is_zero(bn_value(xv, mu, inv, gm, bt)));
        sd += g;
        sdx += g * (xv - mu) * inv;
    }
    let total = workgroup_sum2(vec2<f32>(sd, sdx), lid.x);
    if (lid.x == 0u) {
        let o = 2u * (ch * p.chunks + q);
        partial_out[o] = total.x;
        partial_out[o + 1u] = total.y;
    }
}

//#section backward_finalize
// Workgroup ch: dbeta = sum g, dgamma = sum g * xhat over the chunks, spread over the threads.
@group(0) @binding(1) var<storage, read> partial_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> dbeta: array<f32>;
@compute @workgroup_size(WG)
fn backward_finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ch = wid.x;
    var s = vec2<f32>(0.0);
    for (var q = lid.x; q < p.chunks; q += WG) {
        let o = 2u * (ch * p.chunks + q);
        s += vec2<f32>(partial_in[o], partial_in[o + 1u]);
    }
    let total = workgroup_sum2(s, lid.x);
    if (lid.x == 0u) {
        dbeta[ch] = total.x;
        dgamma[ch] = total.y;
    }
}

//#section backward_input
// Training: dx = gamma*invstd/count * (count*g - dbeta - xhat*dgamma)  (the batch statistics
// depend on x). Eval: dx = g * gamma * invstd. g is dy, masked by y > 0 when fused (y
// recomputed from x).
@group(0) @binding(1) var<storage, read> dy: array<t1>;
@group(0) @binding(2) var<storage, read> x: array<t2>;
@group(0) @binding(3) var<storage, read> stat: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read> dgamma: array<f32>;
@group(0) @binding(6) var<storage, read> dbeta: array<f32>;
@group(0) @binding(7) var<storage, read> beta: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx: array<t8>;
@compute @workgroup_size(WG)
fn backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let count = f32(p.n * p.hw);
    for (var r = 0u; r < 4u; r++) {
        let i = element(wid, lid, nwg, r);
        if (i >= p.n * p.c * p.hw) { return; }
        let ch = (i / p.hw) % p.c;
        let xv = f32(x[i]);
        let inv = stat[p.c + ch];
        let g = select(f32(dy[i]), 0.0, p.relu != 0u && relu_is_zero(bn_value(xv, stat[ch], inv, gamma[ch], beta[ch])));
        if (p.eval_mode != 0u) {
            dx[i] = t8(g * gamma[ch] * inv);
        } else {
            let xhat = (xv - stat[ch]) * inv;
            dx[i] = t8(gamma[ch] * inv / count * (count * g - dbeta[ch] - xhat * dgamma[ch]));
        }
    }
}
