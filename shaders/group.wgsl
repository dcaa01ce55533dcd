// Structured pruning over the vector W of prunable weights (src/prune/ALGORITHM.md, "Structured
// variants"): group norms, the group soft threshold (the prox of τ·Σ_g √|g|·‖v_g‖₂) and the 2:4
// selection. A group is a contiguous range of the vector (an output filter of a conv, a row of an
// fc weight); a 2:4 layer is a range whose length and offset are multiples of 4 (its quads are 4
// consecutive weights of one filter row: the GEMM's reduction dimension, as sparse tensor cores
// take it).
// A vector larger than one storage binding is bound in pieces: every kernel here then gets a
// table of the parts of its groups (or layers) inside that piece, with offsets relative to the
// piece and id = the group's (layer's) number; pieces run in order, so a group split across two
// pieces sums its parts in a fixed order (deterministic results).
//   parts [P] of (offset, len, _, id)

struct Params { parts: u32, mode: u32, _pad0: u32, _pad1: u32, tau: f32, _pad2: f32, _pad3: f32, _pad4: f32 }
@group(0) @binding(0) var<uniform> p: Params;

struct Part { offset: u32, len: u32, aux: u32, id: u32 }

fn part_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

//#section sum_squares
// One workgroup per part: out[id] += Σ x² over the part (a tree sum in shared memory; pieces in
// order, so a split group adds its second part after its first).
@group(0) @binding(1) var<storage, read> parts: array<Part>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
var<workgroup> partial: array<f32, WG>;
@compute @workgroup_size(WG)
fn sum_squares(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = part_index(wid, nwg);
    if (g >= p.parts) { return; }   // uniform per workgroup, so before the barriers is fine
    let part = parts[g];
    var s = 0.0;
    for (var i = lid.x; i < part.len; i += WG) {
        let v = x[part.offset + i];
        s += v * v;
    }
    partial[lid.x] = s;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid.x < half) { partial[lid.x] += partial[lid.x + half]; }
        workgroupBarrier();
    }
    if (lid.x == 0u) { out[part.id] += partial[0]; }
}

//#section shrink
// One thread per group (the whole table, offsets absolute): the group soft threshold's factor
// factor = max(0, 1 − τ·√len / ‖v_g‖₂), 0 for a zero group, from sumsq = ‖v_g‖₂².
@group(0) @binding(1) var<storage, read> parts: array<Part>;
@group(0) @binding(2) var<storage, read> sumsq: array<f32>;
@group(0) @binding(3) var<storage, read_write> factor: array<f32>;
@compute @workgroup_size(WG)
fn shrink(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = gid.x + gid.y * nwg.x * WG;
    if (g >= p.parts) { return; }
    let part = parts[g];
    let norm = sqrt(sumsq[part.id]);
    let t = p.tau * sqrt(f32(part.len));
    factor[part.id] = select(0.0, 1.0 - t / norm, norm > t);
}

//#section scale
// One workgroup per part: x *= factor[id] over the part, in place.
@group(0) @binding(1) var<storage, read> parts: array<Part>;
@group(0) @binding(2) var<storage, read> factor: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = part_index(wid, nwg);
    if (g >= p.parts) { return; }
    let part = parts[g];
    let f = factor[part.id];
    for (var i = lid.x; i < part.len; i += WG) {
        x[part.offset + i] *= f;
    }
}

//#section two_four
// Workgroup (x, y = layer part), threads strided over the part's quads: the 2 largest |x| of
// each quad are kept (a tie goes to the lower position), the other 2 become 0. mode 0 writes
// soft(x, τ) for the kept ones (SAS-ADMM's Z-step under 2:4, ALGORITHM.md), mode 1 writes the
// 0/1 mask.
@group(0) @binding(1) var<storage, read> parts: array<Part>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(WG)
fn two_four(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let l = wid.y;
    if (l >= p.parts) { return; }
    let part = parts[l];
    for (var q = wid.x * WG + lid.x; q < part.len / 4u; q += nwg.x * WG) {
        let base = part.offset + 4u * q;
        let v = vec4<f32>(x[base], x[base + 1u], x[base + 2u], x[base + 3u]);
        let a = abs(v);
        for (var i = 0u; i < 4u; i++) {
            // rank of element i: the elements ahead of it (larger, or equal and lower)
            var rank = 0u;
            for (var j = 0u; j < 4u; j++) {
                if (a[j] > a[i] || (a[j] == a[i] && j < i)) { rank += 1u; }
            }
            let keep = rank < 2u;
            var r = select(0.0, 1.0, keep);
            if (p.mode == 0u) {
                r = select(0.0, sign(v[i]) * max(a[i] - p.tau, 0.0), keep);
            }
            out[base + i] = r;
        }
    }
}
