// Tiled GEMM engine shared by matmul and the three conv2d kernels (implicit GEMM).
//
// Computes C[M, N] = sum_k A[m, k] * B[k, n] for k in k_range(z), z = workgroup_id.z (split-K
// or batch). The including kernel defines:
//   fn dims() -> vec2<u32>                          (M, N)
//   fn k_range(z: u32) -> vec2<u32>                 [k_begin, k_end)
//   fn load_a(m: u32, k: u32, z: u32) -> f32
//   fn load_b(k: u32, n: u32, z: u32) -> f32
//   fn store_c(m: u32, n: u32, z: u32, v: f32)
// Loads are only called in bounds; out-of-range tile elements are zero.
//
// Workgroup: 8x8 threads computing a 64x64 tile of C, 8x8 outputs per thread (rows ty + 8i,
// columns tx + 8j: adjacent threads touch adjacent columns, so stores coalesce and shared-tile
// reads are conflict-free). K advances TK at a time through two TKx64 shared tiles.
// Accumulators are vec4 halves of rows so compilers keep them in registers; 64 multiply-adds
// per thread per 16 shared loads keeps arithmetic ahead of memory traffic.

const TILE: u32 = 64u;
const TK: u32 = 32u;

var<workgroup> a_tile: array<array<f32, 64>, 32>;   // [k][m]
var<workgroup> b_tile: array<array<f32, 64>, 32>;   // [k][n]

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let mn = dims();
    let kr = k_range(wid.z);
    let m0 = wid.y * TILE;
    let n0 = wid.x * TILE;
    let t = lid.y * 8u + lid.x;
    // Each thread loads the same tile row/column (t) of A and B for every k.
    let load_m = m0 + t < mn.x;
    let load_n = n0 + t < mn.y;
    var acc: array<vec4<f32>, 16>;   // acc[2i + h] = row i, columns 4h..4h+3 (strided by 8)
    for (var i = 0u; i < 16u; i++) { acc[i] = vec4<f32>(0.0); }

    for (var k0 = kr.x; k0 < kr.y; k0 += TK) {
        for (var kk = 0u; kk < TK; kk++) {
            let k = k0 + kk;
            var va = 0.0;
            var vb = 0.0;
            if (k < kr.y) {
                if (load_m) { va = load_a(m0 + t, k, wid.z); }
                if (load_n) { vb = load_b(k, n0 + t, wid.z); }
            }
            a_tile[kk][t] = va;
            b_tile[kk][t] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let b0 = vec4<f32>(b_tile[kk][lid.x], b_tile[kk][lid.x + 8u], b_tile[kk][lid.x + 16u], b_tile[kk][lid.x + 24u]);
            let b1 = vec4<f32>(b_tile[kk][lid.x + 32u], b_tile[kk][lid.x + 40u], b_tile[kk][lid.x + 48u], b_tile[kk][lid.x + 56u]);
            for (var i = 0u; i < 8u; i++) {
                let a = a_tile[kk][lid.y + 8u * i];
                acc[2u * i] += a * b0;
                acc[2u * i + 1u] += a * b1;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 8u; i++) {
        let m = m0 + lid.y + 8u * i;
        if (m >= mn.x) { continue; }
        for (var j = 0u; j < 8u; j++) {
            let n = n0 + lid.x + 8u * j;
            if (n < mn.y) { store_c(m, n, wid.z, acc[2u * i + j / 4u][j % 4u]); }
        }
    }
}
