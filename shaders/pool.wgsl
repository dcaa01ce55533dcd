// Pooling over NCHW planes. Every output element has one writer: forward kernels run a thread
// per output, backward kernels a thread per input element that gathers from the outputs whose
// window contains it (no atomics needed).
//   x, dx [n*c, h, w]     y, dy [n*c, oh, ow]     idx [n*c, oh, ow] (argmax as iy*w+ix, stored as f32)
// x, y, dy, dx are bound as t<binding> (f32, or f16 under mixed precision); sums are f32.

struct Params {
    planes: u32, h: u32, w: u32, oh: u32,
    ow: u32, k: u32, stride: u32, pad: u32,
}
@group(0) @binding(0) var<uniform> p: Params;

fn element(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// PyTorch's adaptive pooling windows along one axis: [floor(o*len/out), ceil((o+1)*len/out)).
fn window(o: u32, len: u32, out: u32) -> vec2<u32> {
    return vec2<u32>((o * len) / out, ((o + 1u) * len + out - 1u) / out);
}

//#section max_forward
@group(0) @binding(1) var<storage, read> x: array<t1>;
@group(0) @binding(2) var<storage, read_write> y: array<t2>;
@group(0) @binding(3) var<storage, read_write> idx: array<f32>;
@compute @workgroup_size(WG)
fn max_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = element(gid, nwg);
    if (o >= p.planes * p.oh * p.ow) { return; }
    let plane = o / (p.oh * p.ow);
    let oy = (o / p.ow) % p.oh;
    let ox = o % p.ow;
    var best = -3.4028235e38;
    var best_i = 0u;
    var found = false;
    for (var ky = 0u; ky < p.k; ky++) {
        let iy = i32(oy * p.stride + ky) - i32(p.pad);
        if (iy < 0 || iy >= i32(p.h)) { continue; }
        for (var kx = 0u; kx < p.k; kx++) {
            let ix = i32(ox * p.stride + kx) - i32(p.pad);
            if (ix < 0 || ix >= i32(p.w)) { continue; }
            let at = u32(iy) * p.w + u32(ix);
            let v = f32(x[plane * p.h * p.w + at]);
            if (!found || v > best) { best = v; best_i = at; found = true; }
        }
    }
    y[o] = t2(best);
    idx[o] = f32(best_i);
}

//#section max_backward
@group(0) @binding(1) var<storage, read> dy: array<t1>;
@group(0) @binding(2) var<storage, read> idx: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<t3>;
@compute @workgroup_size(WG)
fn max_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.planes * p.h * p.w) { return; }
    let plane = i / (p.h * p.w);
    let at = i % (p.h * p.w);
    let iy = at / p.w + p.pad;
    let ix = at % p.w + p.pad;
    // outputs oy with oy*s <= iy+pad < oy*s + k
    let oy_lo = select(0u, (iy + p.stride - p.k) / p.stride, iy + p.stride >= p.k);
    let ox_lo = select(0u, (ix + p.stride - p.k) / p.stride, ix + p.stride >= p.k);
    var s = 0.0;
    for (var oy = oy_lo; oy <= iy / p.stride && oy < p.oh; oy++) {
        for (var ox = ox_lo; ox <= ix / p.stride && ox < p.ow; ox++) {
            let o = (plane * p.oh + oy) * p.ow + ox;
            if (u32(idx[o]) == at) { s += f32(dy[o]); }
        }
    }
    dx[i] = t3(s);
}

//#section avg_forward
@group(0) @binding(1) var<storage, read> x: array<t1>;
@group(0) @binding(2) var<storage, read_write> y: array<t2>;
@compute @workgroup_size(WG)
fn avg_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = element(gid, nwg);
    if (o >= p.planes * p.oh * p.ow) { return; }
    let plane = o / (p.oh * p.ow);
    let wy = window((o / p.ow) % p.oh, p.h, p.oh);
    let wx = window(o % p.ow, p.w, p.ow);
    var s = 0.0;
    for (var iy = wy.x; iy < wy.y; iy++) {
        for (var ix = wx.x; ix < wx.y; ix++) { s += f32(x[(plane * p.h + iy) * p.w + ix]); }
    }
    y[o] = t2(s / f32((wy.y - wy.x) * (wx.y - wx.x)));
}

//#section avg_backward
@group(0) @binding(1) var<storage, read> dy: array<t1>;
@group(0) @binding(2) var<storage, read_write> dx: array<t2>;
@compute @workgroup_size(WG)
fn avg_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.planes * p.h * p.w) { return; }
    let plane = i / (p.h * p.w);
    let iy = (i / p.w) % p.h;
    let ix = i % p.w;
    var s = 0.0;
    for (var oy = 0u; oy < p.oh; oy++) {
        let wy = window(oy, p.h, p.oh);
        if (iy < wy.x || iy >= wy.y) { continue; }
        for (var ox = 0u; ox < p.ow; ox++) {
            let wx = window(ox, p.w, p.ow);
            if (ix < wx.x || ix >= wx.y) { continue; }
            s += f32(dy[(plane * p.oh + oy) * p.ow + ox]) / f32((wy.y - wy.x) * (wx.y - wx.x));
        }
    }
    dx[i] = t2(s);
}
