// Tiled GEMM engine shared by matmul and the three conv2d kernels (implicit GEMM).
//
// Computes C[M, N] = sum_k A[m, k] * B[k, n] for k in k_range(z), z = workgroup_id.z (split-K
// or batch). The including kernel defines:
//   fn dims() -> vec2<u32>                          (M, N)
//   fn k_range(z: u32) -> vec2<u32>                 [k_begin, k_end)
//   fn load_a(m: u32, k: u32, z: u32) -> f32
//   fn store_c(m: u32, n: u32, z: u32, v: f32)
// and B's elements through decoded coordinates, so implicit-GEMM kernels decode a column once
// per thread and step a row like an odometer instead of dividing for every element:
//   struct BCol; fn b_col(n: u32, z: u32) -> BCol      (once per column a thread loads)
//   struct BRow; fn b_row(k: u32, z: u32) -> BRow      (once per TK chunk)
//   fn b_row_next(r: BRow) -> BRow                      (row k -> k + 1)
//   fn load_b_at(r: BRow, c: BCol, z: u32) -> f32      (B[k, n])
// Loads are only called in bounds; out-of-range tile elements are zero.
//
// A prelude line sets RM, the rows of C per thread (2, 4 or 8), so small-M products (16 or 32
// output channels) do not waste most of a 64-row tile. Workgroup: 8x8 threads computing a
// (8*RM)x64 tile of C, RMx8 outputs per thread (rows ty + 8i, columns tx + 8j: adjacent
// threads touch adjacent columns, so stores coalesce and shared-tile reads are conflict-free).
// K advances TK at a time through two shared tiles. Accumulators are vec4 halves of rows so
// compilers keep them in registers.

const TM: u32 = 8u * RM;
const TN: u32 = 64u;
const TK: u32 = 32u;

var<workgroup> a_tile: array<array<f32, TM>, TK>;   // [k][m]
var<workgroup> b_tile: array<array<f32, TN>, TK>;   // [k][n]

@compute @workgroup_size(8, 8, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let mn = dims();
    let kr = k_range(wid.z);
    let m0 = wid.y * TM;
    let n0 = wid.x * TN;
    let t = lid.y * 8u + lid.x;
    // B: each thread loads column t of every k row. A: element e = t + 64r of the tile is
    // (k = e / TM, m = e % TM); the thread's m is the same for every r.
    let load_n = n0 + t < mn.y;
    let b_c = b_col(min(n0 + t, mn.y - 1u), wid.z);
    let a_col = t % TM;
    let a_k = t / TM;
    let load_m = m0 + a_col < mn.x;
    var acc: array<vec4<f32>, 2u * RM>;   // acc[2i + h] = row i, columns tx + 8(4h..4h+3)
    for (var i = 0u; i < 2u * RM; i++) { acc[i] = vec4<f32>(0.0); }

    for (var k0 = kr.x; k0 < kr.y; k0 += TK) {
        var b_r = b_row(k0, wid.z);
        for (var kk = 0u; kk < TK; kk++) {
            var vb = 0.0;
            if (k0 + kk < kr.y && load_n) { vb = load_b_at(b_r, b_c, wid.z); }
            b_tile[kk][t] = vb;
            b_r = b_row_next(b_r);
        }
        for (var r = 0u; r < TK * TM / 64u; r++) {
            let kk = a_k + r * (64u / TM);
            let k = k0 + kk;
            var va = 0.0;
            if (k < kr.y && load_m) { va = load_a(m0 + a_col, k, wid.z); }
            a_tile[kk][a_col] = va;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let b0 = vec4<f32>(b_tile[kk][lid.x], b_tile[kk][lid.x + 8u], b_tile[kk][lid.x + 16u], b_tile[kk][lid.x + 24u]);
            let b1 = vec4<f32>(b_tile[kk][lid.x + 32u], b_tile[kk][lid.x + 40u], b_tile[kk][lid.x + 48u], b_tile[kk][lid.x + 56u]);
            for (var i = 0u; i < RM; i++) {
                let a = a_tile[kk][lid.y + 8u * i];
                acc[2u * i] += a * b0;
                acc[2u * i + 1u] += a * b1;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < RM; i++) {
        let m = m0 + lid.y + 8u * i;
        if (m >= mn.x) { continue; }
        for (var j = 0u; j < 8u; j++) {
            let n = n0 + lid.x + 8u * j;
            if (n < mn.y) { store_c(m, n, wid.z, acc[2u * i + j / 4u][j % 4u]); }
        }
    }
}
