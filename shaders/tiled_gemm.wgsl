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
// Workgroup: 16x16 threads computing a 64x64 tile of C, 4x4 outputs per thread (rows ty + 16i,
// columns tx + 16j: adjacent threads touch adjacent columns, so stores coalesce and the shared
// tile reads are conflict-free). K advances 16 at a time through two 16x64 shared tiles.

const TILE: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> a_tile: array<array<f32, 64>, 16>;   // [k][m]
var<workgroup> b_tile: array<array<f32, 64>, 16>;   // [k][n]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let mn = dims();
    let kr = k_range(wid.z);
    let m0 = wid.y * TILE;
    let n0 = wid.x * TILE;
    let t = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }

    for (var k0 = kr.x; k0 < kr.y; k0 += TK) {
        // Each of the 256 threads loads 4 elements of each tile.
        for (var r = 0u; r < 4u; r++) {
            let e = t + r * 256u;
            let col = e % TILE;
            let kk = e / TILE;
            let k = k0 + kk;
            var va = 0.0;
            var vb = 0.0;
            if (k < kr.y) {
                if (m0 + col < mn.x) { va = load_a(m0 + col, k, wid.z); }
                if (n0 + col < mn.y) { vb = load_b(k, n0 + col, wid.z); }
            }
            a_tile[kk][col] = va;
            b_tile[kk][col] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = a_tile[kk][lid.y + 16u * i];
                b[i] = b_tile[kk][lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += a[i] * b[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + lid.x + 16u * j;
            if (m < mn.x && n < mn.y) { store_c(m, n, wid.z, acc[i * 4u + j]); }
        }
    }
}
