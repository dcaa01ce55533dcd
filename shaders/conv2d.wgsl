// 2-D convolution (cross-correlation, zero padding, PyTorch semantics) as implicit GEMMs on the
// tiled GEMM engine (tiled_gemm.wgsl is prepended). No im2col buffer is materialized: the
// engine's load functions gather directly from the NCHW tensors.
//   x  [n, c_in, h, w]     w  [c_out, c_in, kh, kw]     y, dy  [n, c_out, ho, wo]
// forward      y[co, (b,oy,ox)]      = sum_{(ci,ky,kx)} w[co, ci,ky,kx] * x[b, ci, oy*s+ky-pad, ox*s+kx-pad]
// grad_input   dx[ci, (b,iy,ix)]     = sum_{(co,ky,kx)} w[co, ci,ky,kx] * dy[b, co, (iy+pad-ky)/s, (ix+pad-kx)/s]
// grad_weight  dw[co, (ci,ky,kx)]    = sum_{(b,oy,ox)}  dy[b, co, oy, ox] * x[b, ci, oy*s+ky-pad, ox*s+kx-pad]
// (grad_weight reduces over the batch: it is split over workgroup z into partial sums.)

struct Params {
    n: u32, c_in: u32, h: u32, w: u32,
    c_out: u32, kh: u32, kw: u32, stride: u32,
    pad: u32, ho: u32, wo: u32, has_bias: u32,
    gm: u32, gn: u32, gk: u32, k_chunk: u32,   // GEMM sizes M, N, K and the split-K chunk
}
@group(0) @binding(0) var<uniform> p: Params;

fn dims() -> vec2<u32> { return vec2<u32>(p.gm, p.gn); }
fn k_range(z: u32) -> vec2<u32> { return vec2<u32>(z * p.k_chunk, min((z + 1u) * p.k_chunk, p.gk)); }

// Index of x at (b, ci, oy*s+ky-pad, ox*s+kx-pad), or -1 in the padding.
// `r` = (ky, kx) as ky*kw+kx, `q` = (oy, ox) as oy*wo+ox.
fn x_index(b: u32, ci: u32, r: u32, q: u32) -> i32 {
    let iy = i32((q / p.wo) * p.stride + r / p.kw) - i32(p.pad);
    let ix = i32((q % p.wo) * p.stride + r % p.kw) - i32(p.pad);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) { return -1; }
    return i32(((b * p.c_in + ci) * p.h + u32(iy)) * p.w + u32(ix));
}

//#section forward
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
fn load_a(m: u32, k: u32, z: u32) -> f32 { return wt[m * p.gk + k]; }
fn load_b(k: u32, j: u32, z: u32) -> f32 {
    let khw = p.kh * p.kw;
    let howo = p.ho * p.wo;
    let i = x_index(j / howo, k / khw, k % khw, j % howo);
    if (i < 0) { return 0.0; }
    return x[i];
}
fn store_c(co: u32, j: u32, z: u32, v: f32) {
    let howo = p.ho * p.wo;
    var r = v;
    if (p.has_bias != 0u) { r += bias[co]; }
    y[((j / howo) * p.c_out + co) * howo + j % howo] = r;
}

//#section grad_input
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
fn load_a(ci: u32, k: u32, z: u32) -> f32 {
    // k = (co, ky, kx)
    let khw = p.kh * p.kw;
    return wt[((k / khw) * p.c_in + ci) * khw + k % khw];
}
fn load_b(k: u32, j: u32, z: u32) -> f32 {
    let khw = p.kh * p.kw;
    let hw = p.h * p.w;
    let co = k / khw;
    let r = k % khw;
    let b = j / hw;
    let ty = i32((j % hw) / p.w + p.pad) - i32(r / p.kw);
    let tx = i32((j % hw) % p.w + p.pad) - i32(r % p.kw);
    if (ty < 0 || tx < 0) { return 0.0; }
    let s = p.stride;
    let oy = u32(ty) / s;
    let ox = u32(tx) / s;
    if (u32(ty) % s != 0u || u32(tx) % s != 0u || oy >= p.ho || ox >= p.wo) { return 0.0; }
    return dy[((b * p.c_out + co) * p.ho + oy) * p.wo + ox];
}
fn store_c(ci: u32, j: u32, z: u32, v: f32) {
    let hw = p.h * p.w;
    dx[((j / hw) * p.c_in + ci) * hw + j % hw] = v;
}

//#section grad_weight
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;
fn load_a(co: u32, k: u32, z: u32) -> f32 {
    // k = (b, oy, ox)
    let howo = p.ho * p.wo;
    return dy[((k / howo) * p.c_out + co) * howo + k % howo];
}
fn load_b(k: u32, j: u32, z: u32) -> f32 {
    // j = (ci, ky, kx)
    let khw = p.kh * p.kw;
    let howo = p.ho * p.wo;
    let i = x_index(k / howo, j / khw, j % khw, k % howo);
    if (i < 0) { return 0.0; }
    return x[i];
}
fn store_c(co: u32, j: u32, z: u32, v: f32) { dw[(z * p.gm + co) * p.gn + j] = v; }
