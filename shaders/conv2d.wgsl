// 2-D convolution (cross-correlation, zero padding, PyTorch semantics) as implicit GEMMs on the
// tiled GEMM engine (tiled_gemm.wgsl is prepended). No im2col buffer is materialized: the
// engine's load functions gather directly from the NCHW tensors.
//   x  [n, c_in, h, w]     w  [c_out, c_in, kh, kw]     y, dy  [n, c_out, ho, wo]
// forward      y[co, (b,oy,ox)]      = sum_{(ci,ky,kx)} w[co, ci,ky,kx] * x[b, ci, oy*s+ky-pad, ox*s+kx-pad]
// grad_input   dx[ci, (b,iy,ix)]     = sum_{(co,ky,kx)} w[co, ci,ky,kx] * dy[b, co, (iy+pad-ky)/s, (ix+pad-kx)/s]
// grad_weight  dw[co, (ci,ky,kx)]    = sum_{(b,oy,ox)}  dy[b, co, oy, ox] * x[b, ci, oy*s+ky-pad, ox*s+kx-pad]
// (grad_weight reduces over the batch: it is split over workgroup z into partial sums.)
// Activations (x, y, dy, dx) are bound as t<binding> (f32, or f16 under mixed precision, see
// gpu::Kernel); weights, bias and dw are f32. Every product and sum is f32.

struct Params {
    n: u32, c_in: u32, h: u32, w: u32,
    c_out: u32, kh: u32, kw: u32, stride: u32,
    pad: u32, ho: u32, wo: u32, has_bias: u32,
    gm: u32, gn: u32, gk: u32, k_chunk: u32,   // GEMM sizes M, N, K and the split-K chunk
    khw: u32, howo: u32, hw: u32, fuse: u32,  // fuse: what the output applies (FUSE_*)
    // 1/d for the divisors above, for div() below
    r_kw: f32, r_khw: f32, r_wo: f32, r_howo: f32,
    r_w: f32, r_hw: f32, r_stride: f32, _pad2: f32,
}
@group(0) @binding(0) var<uniform> p: Params;

// a / d without an integer division (which CPUs and GPUs emulate slowly, and SIMD CPU drivers
// scalarize): a float estimate corrected by one step, exact while a / d < 2^23.
fn div(a: u32, d: u32, rcp: f32) -> u32 {
    var q = u32(f32(a) * rcp);
    let r = i32(a) - i32(q * d);
    q = select(q, q - 1u, r < 0);
    q = select(q, q + 1u, r >= i32(d));
    return q;
}

// What an output applies after its sum (p.fuse): forward outputs in evaluation without a graph
// the batch norm, the residual and ReLU (store_out); grad-input outputs the gradient their
// input already received from its other uses (FUSE_RESIDUAL alone, add_pending).
const FUSE_BATCH_NORM: u32 = 1u;
const FUSE_RESIDUAL: u32 = 2u;
const FUSE_RELU: u32 = 4u;
const FUSE_DST_F16: u32 = 8u;                      // (set with the others where dst is f16)

// A grad-input sum v with `pending` added when p.fuse asks (FUSE_RESIDUAL): the sum of the two
// gradients as autograd's add would form it from the stored v (rounded to f16 first where the
// output is f16), so the result has the same bits.
fn add_pending(v: f32, pending: f32) -> f32 {
    if ((p.fuse & FUSE_RESIDUAL) == 0u) { return v; }
    return as_stored(v, (p.fuse & FUSE_DST_F16) != 0u) + pending;
}

fn dims() -> vec2<u32> { return vec2<u32>(p.gm, p.gn); }
// The k-range of split z of the reduction (sections whose z splits K use it as k_range).
fn split_range(z: u32) -> vec2<u32> { return vec2<u32>(z * p.k_chunk, min((z + 1u) * p.k_chunk, p.gk)); }

// B of the forward and grad-weight GEMMs is an image gather: x[b, ci, y0 + ky', x0 + kx'] where
// one GEMM index supplies the base offset and origin and the other the tap. Both sides are
// decoded into a (base offset, y, x) triple; the element is x[base + iy * w + ix] with
// iy = y_col + y_row and ix = x_col + x_row, zero outside the image. Rows advance like an
// odometer over two digits (d0 fastest, then d1, then the outer index), so no division runs per
// element.
struct BCol { off: u32, y: i32, x: i32, ok: bool }
// d0 < n0 and d1 < n1 are the row's two digits.
struct BRow { off: u32, y: i32, x: i32, d0: u32, d1: u32, n0: u32, n1: u32 }

// (outer, d1, d0) of i = outer * inner + d1 * n0 + d0, e.g. (b, oy, ox) of a pixel index with
// inner = ho*wo, n0 = wo; the reciprocals feed div().
fn split3(i: u32, inner: u32, r_inner: f32, n0: u32, r_n0: f32) -> vec3<u32> {
    let outer = div(i, inner, r_inner);
    let q = i - outer * inner;
    let d1 = div(q, n0, r_n0);
    return vec3<u32>(outer, d1, q - d1 * n0);
}

// Whether (y, x) lies inside an h x w plane.
fn inside(y: i32, x: i32, h: u32, w: u32) -> bool {
    return y >= 0 && x >= 0 && y < i32(h) && x < i32(w);
}

// The next row: x moves by `step` (y by `step` when d0 wraps), and the base offset by `outer`
// when d1 wraps too.
fn odometer(r: BRow, step: i32, outer: u32) -> BRow {
    var n = r;
    n.d0 += 1u;
    n.x += step;
    if (n.d0 == n.n0) {
        n.d0 = 0u;
        n.x = 0;
        n.d1 += 1u;
        n.y += step;
        if (n.d1 == n.n1) { n.d1 = 0u; n.y = 0; n.off += outer; }
    }
    return n;
}

//#section forward direct3x3 winograd
// The output of a forward convolution (every kernel that computes one: the implicit GEMM, the
// direct kernel, Winograd), the conv's sum v with its bias: stored as it is, or, in evaluation
// without a graph, with what follows the convolution in the network applied on the way out
// (p.fuse): batch norm from the running statistics, the residual, ReLU. Applied after the sum
// is rounded to dst's type and in the unfused kernels' order of operations (batchnorm.wgsl,
// normalize_eval), so fused and unfused outputs are the same bits; the fused output saves a
// write and a read of the activation.
//   bias [M]   bn [4M]: running mean, 1/sqrt(running var + eps), gamma, beta (M = p.gm)
//   res, dst [n, M, ho, wo]. Grad-input runs of the direct kernel and Winograd (dst = dx) only
//   ever add a pending gradient as the residual (add_pending's sum).
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> bn: array<f32>;
@group(0) @binding(5) var<storage, read> res: array<t5>;
@group(0) @binding(6) var<storage, read_write> dst: array<t6>;
// dst[i] (output channel m) from the sum v.
fn store_out(m: u32, i: u32, v: f32) {
    if (p.fuse == 0u) {
        dst[i] = t6(v);
        return;
    }
    var r = as_stored(v, (p.fuse & FUSE_DST_F16) != 0u);
    if ((p.fuse & FUSE_BATCH_NORM) != 0u) {
        r = (r - bn[m]) * bn[p.gm + m] * bn[2u * p.gm + m] + bn[3u * p.gm + m];
    }
    if ((p.fuse & FUSE_RESIDUAL) != 0u) { r += f32(res[i]); }
    if ((p.fuse & FUSE_RELU) != 0u) { r = max(r, 0.0); }
    dst[i] = t6(r);
}

//#section forward
fn k_range(z: u32) -> vec2<u32> { return split_range(z); }
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<t2>;
fn load_a(m: u32, k: u32, z: u32) -> f32 { return wt[m * p.gk + k]; }
// column j = (b, oy, ox): image b, origin (oy*s - pad, ox*s - pad)
fn b_col(j: u32, z: u32) -> BCol {
    let q = split3(j, p.howo, p.r_howo, p.wo, p.r_wo);
    let s = p.stride;
    return BCol(q.x * p.c_in * p.hw, i32(q.y * s) - i32(p.pad), i32(q.z * s) - i32(p.pad), true);
}
// row k = (ci, ky, kx): d0 = kx, d1 = ky
fn b_row(k: u32, z: u32) -> BRow {
    let t = split3(k, p.khw, p.r_khw, p.kw, p.r_kw);
    return BRow(t.x * p.hw, i32(t.y), i32(t.z), t.z, t.y, p.kw, p.kh);
}
fn b_row_next(r: BRow) -> BRow { return odometer(r, 1, p.hw); }
fn load_b_at(r: BRow, c: BCol, z: u32) -> f32 {
    let iy = c.y + r.y;
    let ix = c.x + r.x;
    if (!inside(iy, ix, p.h, p.w)) { return 0.0; }
    return f32(x[c.off + r.off + u32(iy) * p.w + u32(ix)]);
}
fn store_c(co: u32, j: u32, z: u32, v: f32) {
    var r = v;
    if (p.has_bias != 0u) { r += bias[co]; }
    let b = div(j, p.howo, p.r_howo);
    store_out(co, (b * p.c_out + co) * p.howo + j - b * p.howo, r);
}

//#section grad_input
fn k_range(z: u32) -> vec2<u32> { return split_range(z); }
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<t2>;
@group(0) @binding(3) var<storage, read> pending: array<t3>;   // [n, c_in, h, w], see add_pending
@group(0) @binding(4) var<storage, read_write> dx: array<t4>;
fn load_a(ci: u32, k: u32, z: u32) -> f32 {
    // k = (co, ky, kx)
    let co = div(k, p.khw, p.r_khw);
    return wt[(co * p.c_in + ci) * p.khw + k - co * p.khw];
}
// Stride 1 only (stride > 1 runs grad_input_strided): B[(co, ky, kx), (b, iy, ix)] =
// dy[b, co, iy + pad - ky, ix + pad - kx].
// column j = (b, iy, ix): image b of dy, origin (iy + pad, ix + pad)
fn b_col(j: u32, z: u32) -> BCol {
    let q = split3(j, p.hw, p.r_hw, p.w, p.r_w);
    return BCol(q.x * p.c_out * p.howo, i32(q.y + p.pad), i32(q.z + p.pad), true);
}
// row k = (co, ky, kx): offset (-ky, -kx); d0 = kx, d1 = ky
fn b_row(k: u32, z: u32) -> BRow {
    let t = split3(k, p.khw, p.r_khw, p.kw, p.r_kw);
    return BRow(t.x * p.howo, -i32(t.y), -i32(t.z), t.z, t.y, p.kw, p.kh);
}
fn b_row_next(r: BRow) -> BRow { return odometer(r, -1, p.howo); }
fn load_b_at(r: BRow, c: BCol, z: u32) -> f32 {
    let oy = c.y + r.y;
    let ox = c.x + r.x;
    if (!inside(oy, ox, p.ho, p.wo)) { return 0.0; }
    return f32(dy[c.off + r.off + u32(oy) * p.wo + u32(ox)]);
}
fn store_c(ci: u32, j: u32, z: u32, v: f32) {
    let b = div(j, p.hw, p.r_hw);
    let i = (b * p.c_in + ci) * p.hw + j - b * p.hw;
    dx[i] = t4(add_pending(v, f32(pending[i])));
}

//#section grad_weight
fn k_range(z: u32) -> vec2<u32> { return split_range(z); }
@group(0) @binding(1) var<storage, read> dy: array<t1>;
@group(0) @binding(2) var<storage, read> x: array<t2>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;
fn load_a(co: u32, k: u32, z: u32) -> f32 {
    // k = (b, oy, ox)
    let b = div(k, p.howo, p.r_howo);
    return f32(dy[(b * p.c_out + co) * p.howo + k - b * p.howo]);
}
// column j = (ci, ky, kx): channel ci, tap (ky - pad, kx - pad)
fn b_col(j: u32, z: u32) -> BCol {
    let t = split3(j, p.khw, p.r_khw, p.kw, p.r_kw);
    return BCol(t.x * p.hw, i32(t.y) - i32(p.pad), i32(t.z) - i32(p.pad), true);
}
// row k = (b, oy, ox): image b, origin (oy·s, ox·s); d0 = ox, d1 = oy
fn b_row(k: u32, z: u32) -> BRow {
    let q = split3(k, p.howo, p.r_howo, p.wo, p.r_wo);
    let s = p.stride;
    return BRow(q.x * p.c_in * p.hw, i32(q.y * s), i32(q.z * s), q.z, q.y, p.wo, p.ho);
}
fn b_row_next(r: BRow) -> BRow { return odometer(r, i32(p.stride), p.c_in * p.hw); }
fn load_b_at(r: BRow, c: BCol, z: u32) -> f32 {
    let iy = c.y + r.y;
    let ix = c.x + r.x;
    if (!inside(iy, ix, p.h, p.w)) { return 0.0; }
    return f32(x[c.off + r.off + u32(iy) * p.w + u32(ix)]);
}
fn store_c(co: u32, j: u32, z: u32, v: f32) { dw[(z * p.gm + co) * p.gn + j] = v; }

//#section grad_input_strided
// grad_input for stride > 1, split by the parity class of the input pixel: workgroup z handles
// class (py, px) = (z / s, z % s), the pixels iy ≡ py, ix ≡ px (mod s). Only the taps
// ky ≡ (py + pad) mod s (and likewise kx) reach such a pixel, so each class is a dense GEMM with
// K_z = c_out · ty · tx instead of c_out · kh · kw mostly multiplied by zeros.
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<t2>;
@group(0) @binding(3) var<storage, read> pending: array<t3>;   // [n, c_in, h, w], see add_pending
@group(0) @binding(4) var<storage, read_write> dx: array<t4>;

struct Class { py: u32, px: u32, ky0: u32, kx0: u32, ty: u32, tx: u32, hq: u32, wq: u32 }

fn class_of(z: u32) -> Class {
    let s = p.stride;
    var c: Class;
    c.py = z / s;
    c.px = z % s;
    c.ky0 = (c.py + p.pad) % s;
    c.kx0 = (c.px + p.pad) % s;
    c.ty = select(0u, (p.kh - c.ky0 + s - 1u) / s, c.ky0 < p.kh);
    c.tx = select(0u, (p.kw - c.kx0 + s - 1u) / s, c.kx0 < p.kw);
    c.hq = select(0u, (p.h - c.py + s - 1u) / s, c.py < p.h);
    c.wq = select(0u, (p.w - c.px + s - 1u) / s, c.px < p.w);
    return c;
}

fn k_range(z: u32) -> vec2<u32> {
    let c = class_of(z);
    return vec2<u32>(0u, p.c_out * c.ty * c.tx);
}

fn load_a(ci: u32, k: u32, z: u32) -> f32 {
    // k = (co, a, b): ky = ky0 + s·a, kx = kx0 + s·b
    let c = class_of(z);
    let taps = c.ty * c.tx;
    let co = div(k, taps, 1.0 / f32(taps));
    let r = k - co * taps;
    let a = div(r, c.tx, 1.0 / f32(c.tx));
    let ky = c.ky0 + p.stride * a;
    let kx = c.kx0 + p.stride * (r - a * c.tx);
    return wt[((co * p.c_in + ci) * p.kh + ky) * p.kw + kx];
}
// column j = (b, qy, qx), the pixel (py + s·qy, px + s·qx) of image b: with tap (a, b') of
// the class, ky = ky0 + s·a, the output row is oy = (py + s·qy + pad − ky0)/s − a (exact: the
// numerator is a multiple of s by construction); likewise ox. So the column holds (oy0, ox0)
// and a row subtracts its tap.
fn b_col(j: u32, z: u32) -> BCol {
    let c = class_of(z);
    let plane = c.hq * c.wq;
    let b = div(j, plane, 1.0 / f32(plane));
    let q = j - b * plane;
    let qy = div(q, c.wq, 1.0 / f32(c.wq));
    let qx = q - qy * c.wq;
    let oy0 = (c.py + p.stride * qy + p.pad - c.ky0) / p.stride;
    let ox0 = (c.px + p.stride * qx + p.pad - c.kx0) / p.stride;
    return BCol(b * p.c_out * p.howo, i32(oy0), i32(ox0), j < p.n * plane);
}
// row k = (co, a, b'): d0 = b' (< tx), d1 = a (< ty)
fn b_row(k: u32, z: u32) -> BRow {
    let c = class_of(z);
    let taps = c.ty * c.tx;
    let co = div(k, taps, 1.0 / f32(taps));
    let r = k - co * taps;
    let a = div(r, c.tx, 1.0 / f32(c.tx));
    let bb = r - a * c.tx;
    return BRow(co * p.howo, -i32(a), -i32(bb), bb, a, c.tx, c.ty);
}
fn b_row_next(r: BRow) -> BRow { return odometer(r, -1, p.howo); }
fn load_b_at(r: BRow, c: BCol, z: u32) -> f32 {
    let oy = c.y + r.y;
    let ox = c.x + r.x;
    if (!c.ok || !inside(oy, ox, p.ho, p.wo)) { return 0.0; }
    return f32(dy[c.off + r.off + u32(oy) * p.wo + u32(ox)]);
}
fn store_c(ci: u32, j: u32, z: u32, v: f32) {
    let c = class_of(z);
    let plane = c.hq * c.wq;
    if (j >= p.n * plane) { return; }
    let b = div(j, plane, 1.0 / f32(plane));
    let q = j - b * plane;
    let qy = div(q, c.wq, 1.0 / f32(c.wq));
    let iy = c.py + p.stride * qy;
    let ix = c.px + p.stride * (q - qy * c.wq);
    let i = ((b * p.c_in + ci) * p.h + iy) * p.w + ix;
    dx[i] = t4(add_pending(v, f32(pending[i])));
}

//#section direct3x3
// Direct 3x3 convolution, stride 1, padding 1, for layers with few channels (16, 32), where an
// implicit GEMM gathers every input pixel nine times and spends more instructions on that than
// on multiply-adds. Here a workgroup stages an input tile with its halo and the weights of 4
// input channels at a time in shared memory and computes all nine taps from there.
//   input [n, C, h, w] -> output [n, M, h, w], M = p.gm (a multiple of 16), C = p.gk.
//   p.k_chunk = 0: forward, weights [M, C, 3, 3]; 1: grad-input (input = dy, output = dx),
//   weights [C, M, 3, 3] read transposed and rotated by 180 degrees.
// The batch's rows are stacked (row R = image R / h, row R % h); a workgroup covers `tr` stacked
// rows of the full width (w / 4 threads per row, 4 adjacent pixels each, 128 threads) and 16
// output channels (workgroup y), so tiles may span images: the row above an image's first row
// and below its last is taken as zero. Needs w % 4 == 0 and w <= 128.
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<t2>;

const DT: u32 = 128u;                              // threads
const DC: u32 = 4u;                                // input channels per step
var<workgroup> dtile: array<f32, 3120>;            // [DC][tr + 2][w + 2]; (512/w + 2)(w + 2) <= 780
var<workgroup> dw: array<vec4<f32>, 144>;          // [DC][9 taps][16 channels / 4]

@compute @workgroup_size(128)
fn direct3x3(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let w = p.w;
    let h = p.h;
    let m_all = p.gm;
    let c_all = p.gk;
    let rows = p.n * h;
    let tpr = w / 4u;
    let tr = DT / tpr;
    let tw = w + 2u;
    let plane = (tr + 2u) * tw;
    let r0 = wid.x * tr;
    let m0 = wid.y * 16u;
    let lr = t / tpr;
    let x0 = 4u * (t % tpr);
    let row = r0 + lr;
    let live = lr < tr && row < rows;
    let b = row / h;
    let y = row - b * h;
    var acc: array<vec4<f32>, 16>;                 // acc[4p + j]: pixel x0 + p, channels m0 + 4j..4j+3
    for (var c0 = 0u; c0 < c_all; c0 += DC) {
        for (var e = t; e < DC * plane; e += DT) {
            let ci = e / plane;
            let q = e - ci * plane;
            let sr = q / tw;
            let sx = q - sr * tw;
            let gr = i32(r0 + sr) - 1;
            let gx = i32(sx) - 1;
            var v = 0.0;
            if (c0 + ci < c_all && gr >= 0 && gr < i32(rows) && gx >= 0 && gx < i32(w)) {
                let gb = u32(gr) / h;
                let gy = u32(gr) - gb * h;
                v = f32(src[((gb * c_all + c0 + ci) * h + gy) * w + u32(gx)]);
            }
            dtile[e] = v;
        }
        for (var e = t; e < DC * 9u * 16u; e += DT) {
            let co = e % 16u;
            let rest = e / 16u;
            let tap = rest % 9u;
            let ci = rest / 9u;
            let c = c0 + ci;
            let m = m0 + co;
            var v = 0.0;
            if (c < c_all && m < m_all) {
                if (p.k_chunk == 0u) {
                    v = wt[(m * c_all + c) * 9u + tap];
                } else {
                    v = wt[(c * m_all + m) * 9u + 8u - tap];
                }
            }
            dw[rest * 4u + co / 4u][co % 4u] = v;
        }
        workgroupBarrier();
        if (live) {
            for (var ci = 0u; ci < DC; ci++) {
                for (var ky = 0u; ky < 3u; ky++) {
                    // rows outside this image are the zero padding
                    if ((ky == 0u && y == 0u) || (ky == 2u && y + 1u == h)) { continue; }
                    let base = ci * plane + (lr + ky) * tw + x0;
                    var v: array<f32, 6>;
                    for (var i = 0u; i < 6u; i++) { v[i] = dtile[base + i]; }
                    for (var kx = 0u; kx < 3u; kx++) {
                        let wbase = (ci * 9u + ky * 3u + kx) * 4u;
                        for (var j = 0u; j < 4u; j++) {
                            let wv = dw[wbase + j];
                            for (var px = 0u; px < 4u; px++) {
                                acc[4u * px + j] = fma(vec4<f32>(v[px + kx]), wv, acc[4u * px + j]);
                            }
                        }
                    }
                }
            }
        }
        workgroupBarrier();
    }
    if (!live) { return; }
    for (var j = 0u; j < 4u; j++) {
        for (var e = 0u; e < 4u; e++) {
            let m = m0 + 4u * j + e;
            if (m >= m_all) { continue; }
            var bv = 0.0;
            if (p.has_bias != 0u) { bv = bias[m]; }
            let o = ((b * m_all + m) * h + y) * w + x0;
            for (var px = 0u; px < 4u; px++) { store_out(m, o + px, acc[4u * px + j][e] + bv); }
        }
    }
}

//#section winograd_weights
// Winograd F(2x2, 3x3), step 1: the weight transform U = G g Gᵀ (4x4) of every 3x3 kernel g,
//   G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1],
// stored as u[(c · 16 + ξ) · M + m], ξ = 4 · row + column, one thread per (c, m):
//   p.k_chunk = 0 (forward): g = w[m, c] of w [M, C, 3, 3];
//   p.k_chunk = 1 (grad-input): g = w[c, m] rotated by 180 degrees, w [C, M, 3, 3].
// M = p.gm, C = p.gk. The weights and U are f32 in both precisions.
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read_write> u: array<f32>;

@compute @workgroup_size(WG)
fn winograd_weights(@builtin(global_invocation_id) gid: vec3<u32>) {
    let m_all = p.gm;
    let c_all = p.gk;
    let i = gid.x;
    if (i >= m_all * c_all) { return; }
    let c = i / m_all;
    let m = i - c * m_all;
    var g: array<f32, 9>;
    for (var k = 0u; k < 9u; k++) {
        if (p.k_chunk == 0u) {
            g[k] = wt[(m * c_all + c) * 9u + k];
        } else {
            g[k] = wt[(c * m_all + m) * 9u + 8u - k];
        }
    }
    // t = G g (4x3, by columns), then the rows of t Gᵀ
    var t: array<f32, 12>;
    for (var j = 0u; j < 3u; j++) {
        let a = g[j];
        let b = g[3u + j];
        let e = g[6u + j];
        t[j] = a;
        t[3u + j] = 0.5 * (a + b + e);
        t[6u + j] = 0.5 * (a - b + e);
        t[9u + j] = e;
    }
    for (var r = 0u; r < 4u; r++) {
        let a = t[3u * r];
        let b = t[3u * r + 1u];
        let e = t[3u * r + 2u];
        let o = (c * 16u + 4u * r) * m_all + m;
        u[o] = a;
        u[o + m_all] = 0.5 * (a + b + e);
        u[o + 2u * m_all] = 0.5 * (a - b + e);
        u[o + 3u * m_all] = e;
    }
}

//#section winograd
// Winograd F(2x2, 3x3), step 2: a stride-1 3x3 convolution whose every 2x2 output tile is
//   Y = Aᵀ [ Σ_c U_c ⊙ (Bᵀ d_c B) ] A,   Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
//                                        Aᵀ = [1 1 1 0; 0 1 -1 -1],
// d_c the tile's 4x4 input patch in channel c and U_c its transformed weights (step 1): 16
// multiplies per tile and channel pair where the direct form spends 36. The transforms only add
// (the ½ sits in U), so the result differs from the direct sum by a few f32 roundings.
//   src [n, C, h, w] -> dst [n, M, ho, wo], ho = h + 2·pad - 2, C = p.gk, M = p.gm;
//   tiles P = p.gn = n · ⌈ho/2⌉ · ⌈wo/2⌉; tile (b, ty, tx) reads the patch at (2ty - pad, 2tx - pad).
// Workgroup: 32 tiles (x) by 16 output channels (y), 128 threads, 4 input channels per step.
//   Transform: thread t puts channel t / 32 of tile t % 32 (Bᵀ d B, 16 values) in shared memory.
//   Products: thread t = (channel quad cq = t / 32, tile quad tq = (t / 4) % 8, ξ quarter
//   xq = t % 4) accumulates 4 ξ x 4 tiles x 4 channels, one vec4 of tiles and one of channels
//   read per 4 vec4 multiply-adds.
//   Output: the accumulators go through shared memory, one channel of each quad per round, so
//   that thread (cq, tile t % 32) has a tile's 16 sums for its Aᵀ M A.
@group(0) @binding(1) var<storage, read> u: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<t2>;

const WT: u32 = 32u;                               // tiles per workgroup
const WM: u32 = 16u;                               // output channels per workgroup
const WC: u32 = 4u;                                // input channels per step
var<workgroup> v_s: array<vec4<f32>, 512>;         // [WC][16 ξ][WT / 4]: Bᵀ d B; then [cq][16 ξ][WT / 4] sums
var<workgroup> u_s: array<vec4<f32>, 256>;         // [WC][16 ξ][WM / 4]

@compute @workgroup_size(128)
fn winograd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let tiles_x = (p.wo + 1u) / 2u;
    let plane = tiles_x * ((p.ho + 1u) / 2u);
    // this thread's tile in the transforms (input and output) and its channel (quad)
    let lt = t % WT;
    let lc = t / WT;
    let tile = wid.x * WT + lt;
    let live = tile < p.gn;
    let b = tile / plane;
    let q = tile - b * plane;
    let ty = q / tiles_x;
    let tx = q - ty * tiles_x;
    let y0 = i32(2u * ty) - i32(p.pad);
    let x0 = i32(2u * tx) - i32(p.pad);
    let m0 = wid.y * WM;
    // its place in the products
    let xq = t % 4u;
    let tq = (t / 4u) % 8u;
    var acc: array<vec4<f32>, 16>;                 // acc[4i + j]: ξ = 4 xq + i, tile 4 tq + j, channels 4 lc ..
    for (var c0 = 0u; c0 < p.gk; c0 += WC) {
        let c = c0 + lc;
        var d: array<f32, 16>;
        for (var r = 0u; r < 4u; r++) {
            for (var s = 0u; s < 4u; s++) {
                let iy = y0 + i32(r);
                let ix = x0 + i32(s);
                var v = 0.0;
                if (live && c < p.gk && inside(iy, ix, p.h, p.w)) {
                    v = f32(src[((b * p.gk + c) * p.h + u32(iy)) * p.w + u32(ix)]);
                }
                d[4u * r + s] = v;
            }
        }
        // Bᵀ d (by columns), then (Bᵀ d) B (by rows)
        var e: array<f32, 16>;
        for (var s = 0u; s < 4u; s++) {
            e[s] = d[s] - d[8u + s];
            e[4u + s] = d[4u + s] + d[8u + s];
            e[8u + s] = d[8u + s] - d[4u + s];
            e[12u + s] = d[4u + s] - d[12u + s];
        }
        let o = lc * 16u * 8u + lt / 4u;
        let lane = lt % 4u;
        for (var r = 0u; r < 4u; r++) {
            v_s[o + (4u * r) * 8u][lane] = e[4u * r] - e[4u * r + 2u];
            v_s[o + (4u * r + 1u) * 8u][lane] = e[4u * r + 1u] + e[4u * r + 2u];
            v_s[o + (4u * r + 2u) * 8u][lane] = e[4u * r + 2u] - e[4u * r + 1u];
            v_s[o + (4u * r + 3u) * 8u][lane] = e[4u * r + 1u] - e[4u * r + 3u];
        }
        for (var i = t; i < WC * 16u * WM; i += 128u) {
            let mm = i % WM;
            let cx = i / WM;                       // (ci, ξ)
            let m = m0 + mm;
            var v = 0.0;
            if (c0 + cx / 16u < p.gk && m < p.gm) { v = u[(c0 * 16u + cx) * p.gm + m]; }
            u_s[cx * 4u + mm / 4u][mm % 4u] = v;
        }
        workgroupBarrier();
        for (var ci = 0u; ci < WC; ci++) {
            for (var i = 0u; i < 4u; i++) {
                let cx = ci * 16u + 4u * xq + i;
                let v = v_s[cx * 8u + tq];
                let w = u_s[cx * 4u + lc];
                for (var j = 0u; j < 4u; j++) { acc[4u * i + j] = fma(vec4<f32>(v[j]), w, acc[4u * i + j]); }
            }
        }
        workgroupBarrier();
    }
    let oy = 2u * ty;
    let ox = 2u * tx;
    let right = ox + 1u < p.wo;
    for (var k = 0u; k < 4u; k++) {
        // round k: channel 4 lc + k's sums, as [lc][ξ][tile]
        for (var i = 0u; i < 4u; i++) {
            let a = 4u * i;
            v_s[(lc * 16u + 4u * xq + i) * 8u + tq] = vec4<f32>(acc[a][k], acc[a + 1u][k], acc[a + 2u][k], acc[a + 3u][k]);
        }
        workgroupBarrier();
        let m = m0 + 4u * lc + k;
        if (live && m < p.gm) {
            var mx: array<f32, 16>;
            for (var x = 0u; x < 16u; x++) { mx[x] = v_s[(lc * 16u + x) * 8u + lt / 4u][lt % 4u]; }
            // Aᵀ M (by columns), then the two outputs of each row
            var r0: array<f32, 4>;
            var r1: array<f32, 4>;
            for (var s = 0u; s < 4u; s++) {
                r0[s] = mx[s] + mx[4u + s] + mx[8u + s];
                r1[s] = mx[4u + s] - mx[8u + s] - mx[12u + s];
            }
            var bv = 0.0;
            if (p.has_bias != 0u) { bv = bias[m]; }
            let base = ((b * p.gm + m) * p.ho + oy) * p.wo + ox;
            store_out(m, base, r0[0] + r0[1] + r0[2] + bv);
            if (right) { store_out(m, base + 1u, r0[1] - r0[2] - r0[3] + bv); }
            if (oy + 1u < p.ho) {
                store_out(m, base + p.wo, r1[0] + r1[1] + r1[2] + bv);
                if (right) { store_out(m, base + p.wo + 1u, r1[1] - r1[2] - r1[3] + bv); }
            }
        }
        workgroupBarrier();
    }
}
