// Wide variant of the tiled GEMM engine (same interface as tiled_gemm.wgsl: the including
// kernel defines dims, k_range, load_a, store_c and B's b_col / b_row / b_row_next / load_b_at) for products with at most 16 rows,
// such as convolutions with 16 output channels, where a 64-row tile would waste 3/4 of its work.
//
// Workgroup: 64 threads computing a 16x256 tile of C; thread t owns columns n0 + t + 64j
// (j < 4) for all 16 rows. A (16 x TK) is staged in shared memory and read by every thread
// (a broadcast); each element of B is used by one thread only, so B goes straight from memory
// to registers without a shared tile. 64 multiply-adds per 16 shared reads and 4 loads.

const TM: u32 = 16u;
const TN: u32 = 256u;
const TK: u32 = 32u;

var<workgroup> a_tile: array<array<f32, 16>, 32>;   // [k][m]

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let mn = dims();
    let kr = k_range(wid.z);
    let m0 = wid.y * TM;
    let n0 = wid.x * TN;
    let t = lid.x;
    var acc: array<vec4<f32>, 16>;   // acc[i][j] = C[m0 + i, n0 + t + 64j]
    for (var i = 0u; i < 16u; i++) { acc[i] = vec4<f32>(0.0); }
    let n = vec4<u32>(n0 + t, n0 + t + 64u, n0 + t + 128u, n0 + t + 192u);
    let n_ok = n < vec4<u32>(mn.y);
    let n_last = vec4<u32>(mn.y - 1u);
    let nc = min(n, n_last);
    let c0 = b_col(nc.x, wid.z);
    let c1 = b_col(nc.y, wid.z);
    let c2 = b_col(nc.z, wid.z);
    let c3 = b_col(nc.w, wid.z);

    for (var k0 = kr.x; k0 < kr.y; k0 += TK) {
        // A tile: 16 x 32 elements, 8 per thread; element e = t + 64r is (k = e / 16, m = e % 16).
        for (var r = 0u; r < 8u; r++) {
            let e = t + 64u * r;
            let kk = e / TM;
            let m = m0 + e % TM;
            var va = 0.0;
            if (k0 + kk < kr.y && m < mn.x) { va = load_a(m, k0 + kk, wid.z); }
            a_tile[kk][e % TM] = va;
        }
        workgroupBarrier();
        let k_end = min(TK, kr.y - k0);
        var r = b_row(k0, wid.z);
        for (var kk = 0u; kk < k_end; kk++) {
            var b = vec4<f32>(0.0);
            if (n_ok.x) { b.x = load_b_at(r, c0, wid.z); }
            if (n_ok.y) { b.y = load_b_at(r, c1, wid.z); }
            if (n_ok.z) { b.z = load_b_at(r, c2, wid.z); }
            if (n_ok.w) { b.w = load_b_at(r, c3, wid.z); }
            r = b_row_next(r);
            for (var i = 0u; i < 16u; i++) {
                acc[i] += a_tile[kk][i] * b;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 16u; i++) {
        let m = m0 + i;
        if (m >= mn.x) { break; }
        for (var j = 0u; j < 4u; j++) {
            if (n_ok[j]) { store_c(m, n[j], wid.z, acc[i][j]); }
        }
    }
}
