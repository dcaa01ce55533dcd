// Register-tiled GEMM engine for GPUs with many cores (same interface as tiled_gemm.wgsl: the
// including kernel defines dims, k_range, load_a, store_c and B's b_col / b_row / b_row_next /
// load_b_at). tiled_gemm.wgsl keeps 64 threads and scalar shared reads, which suits CPU drivers;
// a discrete GPU wants many warps in flight and few shared-memory instructions per FMA.
//
// A prelude line sets the shape (see the `gpu_tile!` entries of `TILES` in src/engine/ops/gemm_plan.rs):
//   TX x TY threads; each computes RM x RN outputs (multiples of 4) of a TM x TN tile,
//   TM = TY*RM, TN = TX*RN, as 4x4 blocks: rows 4(ty + TY*i) + 0..3, columns 4(tx + TX*j) + 0..3,
//   so one vec4 shared read feeds 4 rows or 4 columns and neighbouring threads read neighbouring
//   vec4s (no bank conflicts);
//   TK, the k-depth of one chunk; BC = min(TX*TY, TN), the B columns loaded side by side.
// Loads: B is read as BC columns x (TK*BC/threads) consecutive rows per thread, so each thread
// decodes its columns once and steps its rows like an odometer; A is read k-fastest (adjacent
// threads take adjacent k: contiguous for weights [m, k], activations [b, c, pixel] and
// row-major matrices). The A tile's rows are padded by one vec4 so those k-strided stores do not
// collide in one bank. Loads are only called in bounds; out-of-range tile elements are zero.

const TM: u32 = TY * RM;
const TN: u32 = TX * RN;
const THREADS: u32 = TX * TY;
const CB: u32 = TN / BC;            // B columns each thread loads
const RPG: u32 = TK * BC / THREADS; // consecutive B rows each thread loads per chunk
const AR: u32 = THREADS / TK;       // A rows loaded side by side
const AM: u32 = TM / AR;            // A rows each thread loads per chunk
const RM4: u32 = RM / 4u;
const RN4: u32 = RN / 4u;
const AW: u32 = TM / 4u + 1u;       // an A tile row in vec4s, padded

var<workgroup> a_tile: array<array<vec4<f32>, AW>, TK>;          // [k][m / 4]
var<workgroup> b_tile: array<array<vec4<f32>, TN / 4u>, TK>;     // [k][n / 4]

@compute @workgroup_size(TX, TY, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let mn = dims();
    let kr = k_range(wid.z);
    let m0 = wid.y * TM;
    let n0 = wid.x * TN;
    let t = lid.y * TX + lid.x;
    // This thread's B columns (bcol + BC*c) and first B row of each chunk.
    let bcol = t % BC;
    let brow = (t / BC) * RPG;
    var cols: array<BCol, CB>;
    var col_ok: array<bool, CB>;
    for (var c = 0u; c < CB; c++) {
        let n = n0 + bcol + BC * c;
        col_ok[c] = n < mn.y;
        cols[c] = b_col(min(n, mn.y - 1u), wid.z);
    }
    // This thread's A column (k) and rows (arow + AR*i).
    let akk = t % TK;
    let arow = t / TK;
    var acc: array<vec4<f32>, RM * RN4>;   // acc[r * RN4 + j]: row r of the thread, column block j

    for (var k0 = kr.x; k0 < kr.y; k0 += TK) {
        var r = b_row(k0 + brow, wid.z);
        for (var i = 0u; i < RPG; i++) {
            let k_ok = k0 + brow + i < kr.y;
            for (var c = 0u; c < CB; c++) {
                var v = 0.0;
                if (k_ok && col_ok[c]) { v = load_b_at(r, cols[c], wid.z); }
                let col = bcol + BC * c;
                b_tile[brow + i][col / 4u][col % 4u] = v;
            }
            r = b_row_next(r);
        }
        let ka = k0 + akk;
        for (var i = 0u; i < AM; i++) {
            let m = arow + AR * i;
            var v = 0.0;
            if (ka < kr.y && m0 + m < mn.x) { v = load_a(m0 + m, ka, wid.z); }
            a_tile[akk][m / 4u][m % 4u] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var a: array<vec4<f32>, RM4>;
            for (var i = 0u; i < RM4; i++) { a[i] = a_tile[kk][lid.y + TY * i]; }
            var b: array<vec4<f32>, RN4>;
            for (var j = 0u; j < RN4; j++) { b[j] = b_tile[kk][lid.x + TX * j]; }
            for (var i = 0u; i < RM4; i++) {
                for (var c = 0u; c < 4u; c++) {
                    let av = vec4<f32>(a[i][c]);
                    for (var j = 0u; j < RN4; j++) {
                        let s = (4u * i + c) * RN4 + j;
                        acc[s] = fma(av, b[j], acc[s]);
                    }
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < RM4; i++) {
        for (var c = 0u; c < 4u; c++) {
            let m = m0 + 4u * (lid.y + TY * i) + c;
            if (m >= mn.x) { continue; }
            for (var j = 0u; j < RN4; j++) {
                let nb = n0 + 4u * (lid.x + TX * j);
                let v = acc[(4u * i + c) * RN4 + j];
                for (var e = 0u; e < 4u; e++) {
                    if (nb + e < mn.y) { store_c(m, nb + e, wid.z, v[e]); }
                }
            }
        }
    }
}
