// CIFAR ResNet "option A" shortcut: keep every second pixel, zero-pad channels on both sides.
//   x, dx [n, c, h, w]     y, dy [n, c + 2*pad_c, oh, ow], oh = ceil(h/2), ow = ceil(w/2)
//   y[b, pad_c + ci, oy, ox] = x[b, ci, 2*oy, 2*ox]; the padded channels are 0.
//   (x, y, dy, dx: t<binding>, f32 or f16 under mixed precision)

// adding: backward adds `pending` (the gradient x already received from its other uses) to dx
struct Params { n: u32, c: u32, h: u32, w: u32, pad_c: u32, oh: u32, ow: u32, adding: u32 }
@group(0) @binding(0) var<uniform> p: Params;

fn element(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

//#section forward
@group(0) @binding(1) var<storage, read> x: array<t1>;
@group(0) @binding(2) var<storage, read_write> y: array<t2>;
@compute @workgroup_size(WG)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    let co_total = p.c + 2u * p.pad_c;
    if (i >= p.n * co_total * p.oh * p.ow) { return; }
    let ox = i % p.ow;
    let oy = (i / p.ow) % p.oh;
    let co = (i / (p.ow * p.oh)) % co_total;
    let b = i / (p.ow * p.oh * co_total);
    var v = 0.0;
    if (co >= p.pad_c && co < p.pad_c + p.c) {
        v = f32(x[((b * p.c + co - p.pad_c) * p.h + 2u * oy) * p.w + 2u * ox]);
    }
    y[i] = t2(v);
}

//#section backward
@group(0) @binding(1) var<storage, read> dy: array<t1>;
@group(0) @binding(2) var<storage, read> pending: array<t2>;
@group(0) @binding(3) var<storage, read_write> dx: array<t3>;
@compute @workgroup_size(WG)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element(gid, nwg);
    if (i >= p.n * p.c * p.h * p.w) { return; }
    let ix = i % p.w;
    let iy = (i / p.w) % p.h;
    let ci = (i / (p.w * p.h)) % p.c;
    let b = i / (p.w * p.h * p.c);
    var v = 0.0;
    if (iy % 2u == 0u && ix % 2u == 0u) {
        let co_total = p.c + 2u * p.pad_c;
        v = f32(dy[((b * co_total + ci + p.pad_c) * p.oh + iy / 2u) * p.ow + ix / 2u]);
    }
    // (the zeros too: -0 + 0 is +0, as autograd's add makes it)
    if (p.adding != 0u) { v = f32(pending[i]) + v; }
    dx[i] = t3(v);
}
