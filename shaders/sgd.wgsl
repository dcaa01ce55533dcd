// Fused SGD step over a flat parameter array (usually the whole parameter arena in one launch),
// PyTorch semantics with dampening 0 and the momentum buffer starting at 0:
//   g = grad + weight_decay * w;  g *= mask (when has_mask)
//   buf = momentum * buf + g;     step = nesterov ? g + momentum * buf : buf;   w -= lr * step
// A masked weight that is 0 stays exactly 0 and its buffer stays 0.
// skip[0] != 0 (mixed precision: this step's gradients overflowed, see loss_scale.wgsl) leaves
// w and buf as they are.

struct Params {
    n: u32, has_mask: u32, nesterov: u32, _pad: u32,
    lr: f32, momentum: f32, weight_decay: f32, _pad2: f32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> buf: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read> skip: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n || skip[0] != 0u) { return; }
    var g = grad[i] + p.weight_decay * w[i];
    if (p.has_mask != 0u) { g *= mask[i]; }
    let b = p.momentum * buf[i] + g;
    buf[i] = b;
    let step = select(b, g + p.momentum * b, p.nesterov != 0u);
    w[i] = w[i] - p.lr * step;
}
