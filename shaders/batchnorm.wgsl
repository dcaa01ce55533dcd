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
//   stat [2c + 2c*chunks]: the mean in stat[0..c], 1/sqrt(var + eps) in stat[c..2c], then the
//   reductions' partials [c, chunks, 2] (partial_at): the forward's, then the backward's over
//   them (one binding for all keeps every kernel within 8 storage bindings, WebGPU's default
//   limit)
// Per-channel reductions run in two levels so that a large GPU has work for all its cores: a
// (chunk, channel) grid of workgroups, each over `ipc` consecutive images of one channel, writes
// the partials; then the chunks are combined per channel (batch_stats, grad_sums). Normalize and
// backward_input run on the same grid and, with p.finalize, combine them themselves: every
// workgroup of a channel computes the same sums in the same order, and those of chunk 0 store
// them. The bits are those of the separate finalize kernels (one workgroup per channel, which
// p.finalize = 0 runs) wherever the compiler treats the shared code alike in both pipelines
// and gives them the same subgroup size (checked on lavapipe by tests/kernels.rs). That saves a
// launch per pass (62 per ResNet-32 training step), each a dependent step on a GPU. Sums within
// a workgroup use workgroup_sum / workgroup_sum2, from the prelude (sum_tree.wgsl, or
// sum_subgroup.wgsl where the adapter has subgroups).

struct Params {
    n: u32, c: u32, hw: u32, update_running: u32,
    eps: f32, momentum: f32, eval_mode: u32, relu: u32,
    chunks: u32, ipc: u32, residual: u32, out_f16: u32,   // out_f16: y is stored as f16
    finalize: u32, _pad0: u32, _pad1: u32, _pad2: u32,    // finalize: combine the chunks here
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

// Where chunk q of channel ch keeps its two partial sums in stat.
fn partial_at(ch: u32, q: u32) -> u32 {
    return 2u * (p.c + ch * p.chunks + q);
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
@group(0) @binding(2) var<storage, read_write> stat: array<f32>;
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
        let o = partial_at(ch, q);
        stat[o] = mu;
        stat[o + 1u] = total_m2;
    }
}

//#section stats_finalize normalize
// The batch mean and 1/sqrt(var + eps) of channel ch, as every thread of the workgroup gets
// them, from its chunks' (mean, M2): the batch mean is the chunk means weighted by their sizes,
// and M2 = sum over chunks of M2_q + n_q (mean_q - mean)^2 (Chan et al.'s update, in parallel).
// With `store`, thread 0 writes them to stat and updates the running statistics. The chunks are
// spread over the workgroup's threads: one thread looping over up to hundreds of chunks was a
// chain of dependent loads that cost more than the whole normalize pass on a large GPU.
fn batch_stats(ch: u32, lid: u32, store: bool) -> vec2<f32> {
    let count = f32(p.n * p.hw);
    var s = 0.0;
    for (var q = lid; q < p.chunks; q += WG) {
        s += f32(chunk_len(q)) * stat[partial_at(ch, q)];
    }
    let mu = workgroup_sum(s, lid) / count;
    var m2 = 0.0;
    for (var q = lid; q < p.chunks; q += WG) {
        let o = partial_at(ch, q);
        let d = stat[o] - mu;
        m2 += stat[o + 1u] + f32(chunk_len(q)) * d * d;
    }
    let total_m2 = workgroup_sum(m2, lid);
    let inv = inverseSqrt(total_m2 / count + p.eps);
    if (store && lid == 0u) {
        stat[ch] = mu;
        stat[p.c + ch] = inv;
        if (p.update_running != 0u) {
            let unbiased = total_m2 / max(count - 1.0, 1.0);
            running_mean[ch] = (1.0 - p.momentum) * running_mean[ch] + p.momentum * mu;
            running_var[ch] = (1.0 - p.momentum) * running_var[ch] + p.momentum * unbiased;
        }
    }
    return vec2<f32>(mu, inv);
}

//#section stats_finalize
// Workgroup ch: the statistics of channel ch, stored (normalize without p.finalize reads them).
@group(0) @binding(1) var<storage, read_write> stat: array<f32>;
@group(0) @binding(2) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> running_var: array<f32>;
@compute @workgroup_size(WG)
fn stats_finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    batch_stats(wid.x, lid.x, true);
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
// Workgroup (q, ch), over chunk q of channel ch: y = (x - mean) * invstd * gamma + beta, plus
// the residual r when p.residual != 0 (a ResNet block's end: the same bits as batch norm
// followed by elementwise add_relu, with one write and one read of y fewer), then max(y, 0)
// when fused with the ReLU. With p.finalize the workgroup combines the channel's chunks itself
// (chunk 0's stores the statistics and updates the running ones); else it reads stat (the
// finalize kernel's, or eval_affine's in evaluation).
@group(0) @binding(1) var<storage, read> x: array<t1>;
@group(0) @binding(2) var<storage, read_write> stat: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read> res: array<t5>;
@group(0) @binding(6) var<storage, read_write> y: array<t6>;
@group(0) @binding(7) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read_write> running_var: array<f32>;
@compute @workgroup_size(WG)
fn normalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let q = wid.x;
    let ch = wid.y;
    var ms: vec2<f32>;
    if (p.finalize != 0u) {
        ms = batch_stats(ch, lid.x, q == 0u);
    } else {
        ms = vec2<f32>(stat[ch], stat[p.c + ch]);
    }
    let gm = gamma[ch];
    let bt = beta[ch];
    let len = chunk_len(q);
    for (var j = lid.x; j < len; j += WG) {
        let i = at_chunk(ch, q, j);
        var v = bn_value(f32(x[i]), ms.x, ms.y, gm, bt);
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

//#section backward_partial backward_partial_masked
// Workgroup (q, ch): over chunk q of channel ch, the sums of g and of g * xhat, where g is the
// upstream gradient (below; masked by y > 0 when fused with the ReLU, y recomputed from x).
// The partials go over the forward's in stat, which no kernel reads after the statistics.
@group(0) @binding(1) var<storage, read> dy: array<t1>;
@group(0) @binding(2) var<storage, read> x: array<t2>;
@group(0) @binding(3) var<storage, read_write> stat: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read> beta: array<f32>;
fn backward_sums(q: u32, ch: u32, lid: u32) {
    let len = chunk_len(q);
    let mu = stat[ch];
    let inv = stat[p.c + ch];
    let gm = gamma[ch];
    let bt = beta[ch];
    var sd = 0.0;
    var sdx = 0.0;
    for (var j = lid; j < len; j += WG) {
        let k = at_chunk(ch, q, j);
        let xv = f32(x[k]);
        let g = select(upstream(k), 0.0, p.relu != 0u && relu_is_zero(bn_value(xv, mu, inv, gm, bt)));
        sd += g;
        sdx += g * (xv - mu) * inv;
    }
    let total = workgroup_sum2(vec2<f32>(sd, sdx), lid);
    if (lid == 0u) {
        let o = partial_at(ch, q);
        stat[o] = total.x;
        stat[o + 1u] = total.y;
    }
}

//#section backward_partial
// The upstream gradient of element k: dy.
fn upstream(k: u32) -> f32 {
    return f32(dy[k]);
}

@compute @workgroup_size(WG)
fn backward_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    backward_sums(wid.x, wid.y, lid.x);
}

//#section backward_partial_masked
// A ResNet block's end, max(bn(x) + r, 0): the upstream gradient of element k is dy where the
// output is > 0, else 0 (elementwise relu_backward's test, so a NaN output is masked as there),
// stored as `through` (the residual's gradient, and backward_input's dy), so no separate pass
// masks dy first.
@group(0) @binding(6) var<storage, read> out: array<t6>;
@group(0) @binding(7) var<storage, read_write> through: array<t7>;
fn upstream(k: u32) -> f32 {
    let g = t7(select(0.0, f32(dy[k]), f32(out[k]) > 0.0));
    through[k] = g;
    return f32(g);
}

@compute @workgroup_size(WG)
fn backward_partial_masked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    backward_sums(wid.x, wid.y, lid.x);
}

//#section backward_finalize backward_input
// (dbeta, dgamma) of channel ch = (sum g, sum g * xhat) over its chunks' partials, spread over
// the threads, as every thread of the workgroup gets them; with `store`, thread 0 writes them.
fn grad_sums(ch: u32, lid: u32, store: bool) -> vec2<f32> {
    var s = vec2<f32>(0.0);
    for (var q = lid; q < p.chunks; q += WG) {
        let o = partial_at(ch, q);
        s += vec2<f32>(stat[o], stat[o + 1u]);
    }
    let total = workgroup_sum2(s, lid);
    if (store && lid == 0u) {
        dbeta[ch] = total.x;
        dgamma[ch] = total.y;
    }
    return total;
}

//#section backward_finalize
// Workgroup ch: dgamma and dbeta of channel ch, stored (backward_input without p.finalize reads
// them).
@group(0) @binding(1) var<storage, read> stat: array<f32>;
@group(0) @binding(2) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> dbeta: array<f32>;
@compute @workgroup_size(WG)
fn backward_finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    grad_sums(wid.x, lid.x, true);
}

//#section backward_input
// Workgroup (q, ch), over chunk q of channel ch. Training: dx = gamma*invstd/count *
// (count*g - dbeta - xhat*dgamma) (the batch statistics depend on x). Eval: dx = g * gamma *
// invstd. g is dy, masked by y > 0 when fused (y recomputed from x). With p.finalize the
// workgroup sums dgamma and dbeta from the partials itself (chunk 0's stores them); else it
// reads them.
@group(0) @binding(1) var<storage, read> dy: array<t1>;
@group(0) @binding(2) var<storage, read> x: array<t2>;
@group(0) @binding(3) var<storage, read> stat: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read> beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(7) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx: array<t8>;
@compute @workgroup_size(WG)
fn backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let q = wid.x;
    let ch = wid.y;
    var sums = vec2<f32>(0.0);
    if (p.finalize == 0u) {
        sums = vec2<f32>(dbeta[ch], dgamma[ch]);
    } else if (p.eval_mode == 0u || q == 0u) {   // (in evaluation dx does not need them)
        sums = grad_sums(ch, lid.x, q == 0u);
    }
    let count = f32(p.n * p.hw);
    let mu = stat[ch];
    let inv = stat[p.c + ch];
    let gm = gamma[ch];
    let bt = beta[ch];
    let len = chunk_len(q);
    for (var j = lid.x; j < len; j += WG) {
        let i = at_chunk(ch, q, j);
        let xv = f32(x[i]);
        let g = select(f32(dy[i]), 0.0, p.relu != 0u && relu_is_zero(bn_value(xv, mu, inv, gm, bt)));
        if (p.eval_mode != 0u) {
            dx[i] = t8(g * gm * inv);
        } else {
            let xhat = (xv - mu) * inv;
            dx[i] = t8(gm * inv / count * (count * g - sums.x - xhat * sums.y));
        }
    }
}
