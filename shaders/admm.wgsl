// Element-wise ADMM updates over the vector W of all prunable weights (one launch each over
// the whole vector; see src/prune/ALGORITHM.md). All vectors have length n.
//   w      the outer iterate W            w_breve  W̆ of the accelerated inner loop
//   w_hat  Ŵ, where gradients are taken (the network's weights during the inner loop)
//   z, u   splitting variable and dual    h        ρ·W + U − β·(W − Z), fixed per outer iteration
//   d      the minibatch gradient ∇f(Ŵ)

struct Params {
    n: u32, _pad0: u32, _pad1: u32, _pad2: u32,
    a: f32, b: f32, c: f32, e: f32,   // per-kernel scalars, named in each section
}
@group(0) @binding(0) var<uniform> p: Params;

fn element(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

//#section sas_h
// h = ρ·W + U − β·(W − Z)       a = ρ, b = β
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read> u: array<f32>;
@group(0) @binding(4) var<storage, read_write> h: array<f32>;
@compute @workgroup_size(WG)
fn sas_h(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i < p.n) { h[i] = p.a * w[i] + u[i] - p.b * (w[i] - z[i]); }
}

//#section sas_inner
// One inner step given d = ∇f(Ŵ):  W̆ ← (γ·W̆ + h − d) / (γ + ρ);  W ← b_t·W̆ + (1 − b_t)·W;
// then the next step's point Ŵ = b_next·W̆ + (1 − b_next)·W.
// a = γ_t, b = ρ, c = b_t, e = b_{t+1}. skip[0] != 0 (mixed precision: d overflowed) leaves W̆, W
// and Ŵ as they are.
@group(0) @binding(1) var<storage, read> d: array<f32>;
@group(0) @binding(2) var<storage, read> h: array<f32>;
@group(0) @binding(3) var<storage, read_write> w_breve: array<f32>;
@group(0) @binding(4) var<storage, read_write> w: array<f32>;
@group(0) @binding(5) var<storage, read_write> w_hat: array<f32>;
@group(0) @binding(6) var<storage, read> skip: array<u32>;
@compute @workgroup_size(WG)
fn sas_inner(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.n || skip[0] != 0u) { return; }
    let wb = (p.a * w_breve[i] + h[i] - d[i]) / (p.a + p.b);
    let wn = p.c * wb + (1.0 - p.c) * w[i];
    w_breve[i] = wb;
    w[i] = wn;
    w_hat[i] = p.e * wb + (1.0 - p.e) * wn;
}

//#section mix
// out = a·x + (1 − a)·y   (Ŵ before the first inner step; the ergodic average with a = 1/count)
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(WG)
fn mix(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i < p.n) { out[i] = p.a * x[i] + (1.0 - p.a) * y[i]; }
}

//#section sas_dual
// Steps 4–6 of an outer iteration, fused:
//   U½ = U − r·β·(W − Z);  Z = soft(W − U½/β, λ/β);  U = U½ − s·β·(W − Z)
// with soft(x, τ) = sign(x)·max(|x| − τ, 0). Also writes dz = Z_new − Z_old and
// res = W − Z_new for the monitored norms.     a = β, b = λ, c = r, e = s
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> z: array<f32>;
@group(0) @binding(3) var<storage, read_write> u: array<f32>;
@group(0) @binding(4) var<storage, read_write> dz: array<f32>;
@group(0) @binding(5) var<storage, read_write> res: array<f32>;
@compute @workgroup_size(WG)
fn sas_dual(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.n) { return; }
    let beta = p.a;
    let wi = w[i];
    let z_old = z[i];
    let u_half = u[i] - p.c * beta * (wi - z_old);
    let x = wi - u_half / beta;
    let z_new = sign(x) * max(abs(x) - p.b / beta, 0.0);
    u[i] = u_half - p.e * beta * (wi - z_new);
    z[i] = z_new;
    dz[i] = z_new - z_old;
    res[i] = wi - z_new;
}

//#section sas_split
// The structured Z-step's first half (the prox between runs on groups, shaders/group.wgsl):
//   U½ = U − r·β·(W − Z) into u;  V = W − U½/β into v;  dz = −Z_old.     a = β, c = r
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read_write> u: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> dz: array<f32>;
@compute @workgroup_size(WG)
fn sas_split(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.n) { return; }
    let u_half = u[i] - p.c * p.a * (w[i] - z[i]);
    u[i] = u_half;
    v[i] = w[i] - u_half / p.a;
    dz[i] = -z[i];
}

//#section sas_close
// The structured Z-step's second half, given the new Z:
//   U = U½ − s·β·(W − Z);  dz += Z (so dz = Z_new − Z_old);  res = W − Z.     a = β, e = s
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read_write> u: array<f32>;
@group(0) @binding(4) var<storage, read_write> dz: array<f32>;
@group(0) @binding(5) var<storage, read_write> res: array<f32>;
@compute @workgroup_size(WG)
fn sas_close(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.n) { return; }
    u[i] = u[i] - p.e * p.a * (w[i] - z[i]);
    dz[i] += z[i];
    res[i] = w[i] - z[i];
}

//#section soft_threshold
// x = soft(x, a) = sign(x)·max(|x| − a, 0) in place (the element-wise prox of a·‖·‖₁).
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(WG)
fn soft_threshold(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i < p.n) { x[i] = sign(x[i]) * max(abs(x[i]) - p.a, 0.0); }
}

//#section admm_grad
// ADMM-NN's W-step gradient of f(W) + (ρ/2)‖W − Z + U‖²:  g += ρ·(W − Z + U).   a = ρ
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read> u: array<f32>;
@group(0) @binding(4) var<storage, read_write> g: array<f32>;
@compute @workgroup_size(WG)
fn admm_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i < p.n) { g[i] += p.a * (w[i] - z[i] + u[i]); }
}

//#section admm_dual
// ADMM-NN's Z and U updates given the 0/1 mask of Π (top-k of |W + U| per layer):
//   Z = mask·(W + U);  U ← U + W − Z.  Also dz = Z_new − Z_old and res = W − Z_new.
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> z: array<f32>;
@group(0) @binding(4) var<storage, read_write> u: array<f32>;
@group(0) @binding(5) var<storage, read_write> dz: array<f32>;
@group(0) @binding(6) var<storage, read_write> res: array<f32>;
@compute @workgroup_size(WG)
fn admm_dual(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.n) { return; }
    let z_new = mask[i] * (w[i] + u[i]);
    u[i] = u[i] + w[i] - z_new;
    dz[i] = z_new - z[i];
    z[i] = z_new;
    res[i] = w[i] - z_new;
}

//#section multiply
// x *= y element-wise, in place (hard pruning: W *= mask).
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(WG)
fn multiply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i < p.n) { x[i] = x[i] * y[i]; }
}
