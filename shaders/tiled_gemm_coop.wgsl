// GEMM engine on the adapter's cooperative matrices (tensor cores on NVIDIA, matrix cores on
// AMD, Mesa's lavapipe; `Tile::cooperative_fits` decides where a tile fits): the interface of
// tiled_gemm.wgsl (the including kernel defines dims, k_range, load_a, store_c and B's b_col /
// b_row / b_row_next / load_b_at), with f16 inputs and f32 sums. Mixed precision's products
// only: A and B are rounded to f16 as they are staged (f32 master weights included, as
// PyTorch's autocast does), every product of two f16 values is exact in f32, and the sums are
// f32.
//
// A prelude sets the shape (see `coop_tile!` in src/engine/ops/gemm_plan.rs):
//   CS, the size of the adapter's CS x CS x CS matrices, and their types CA, CB, CC
//   (coop_matCSxCS<f16, A>, <f16, B>, <f32, C>);
//   a TM x TN tile of C per workgroup of THREADS threads, K advanced TK at a time.
// The tile's (TM/CS) x (TN/CS) blocks go to the subgroups in turn: subgroup s holds blocks
// s, s + S, s + 2S, s + 3S (S subgroups) in registers (acc0-acc3), so TM*TN/CS² must not exceed
// 4S; the host offers a tile only where THREADS / (the adapter's largest subgroup) * 4 blocks
// cover it (COOP_SLOTS in gemm_plan.rs). A subgroup's blocks share their A matrix where they lie
// in one block row and their B matrix where they lie in one block column (S a multiple of the
// block columns, e.g. 64x64 in 16x16 blocks with 4 or 8 subgroups), so it loads each shared
// matrix from shared memory once per K step instead of once per block.
// Cooperative operations run in subgroup-uniform control flow: every branch around them
// depends on the subgroup's index only, which the uniformity analysis cannot see (hence the
// diagnostic the prelude turns off). Shared tiles are plain rows, loaded and stored row-major:
//   a_tile[m][k] (row stride AS), b_tile[k][n] (BS), c_tile[m][n] (CSTR);
// each row is padded by 16 bytes, so the rows of one matrix start in different memory banks,
// and every row and block starts on a 16-byte boundary, as cooperative loads want.
// The staging follows tiled_gemm_gpu.wgsl: B as BC columns x RPG consecutive rows per thread
// (columns decoded once, rows stepped like an odometer), A k-fastest. Loads are only called in
// bounds; out-of-range tile elements are zero. The finished blocks pass through c_tile to
// store_c, so each kernel's own epilogue (bias, layouts, split-K partials) is unchanged.

const BLOCK_COLS: u32 = TN / CS;
const BLOCKS: u32 = (TM / CS) * BLOCK_COLS;
const BC: u32 = min(THREADS, TN);   // B columns loaded side by side
const CB_N: u32 = TN / BC;          // B columns each thread loads
const RPG: u32 = TK * BC / THREADS; // consecutive B rows each thread loads per chunk
const AR: u32 = THREADS / TK;       // A rows loaded side by side
const AM: u32 = TM / AR;            // A rows each thread loads per chunk
const AS: u32 = TK + 8u;            // row strides, in elements (16 bytes of padding each)
const BS: u32 = TN + 8u;
const CSTR: u32 = TN + 4u;

var<workgroup> a_tile: array<f16, TM * AS>;
var<workgroup> b_tile: array<f16, TK * BS>;
var<workgroup> c_tile: array<f32, TM * CSTR>;

fn block_row(blk: u32) -> u32 { return (blk / BLOCK_COLS) * CS; }
fn block_col(blk: u32) -> u32 { return (blk % BLOCK_COLS) * CS; }
fn load_a_block(blk: u32, kk: u32) -> CA { return coopLoadT<CA>(&a_tile[block_row(blk) * AS + kk], AS); }
fn load_b_block(blk: u32, kk: u32) -> CB { return coopLoadT<CB>(&b_tile[kk * BS + block_col(blk)], BS); }

// One K step (kk) of block `blk`, a later block of the subgroup whose first block `first` has
// the matrices a0 and b0: those are reused where `blk` shares first's block row or column.
fn later_block_step(c: CC, blk: u32, first: u32, a0: CA, b0: CB, kk: u32) -> CC {
    var a = a0;
    var b = b0;
    if (block_row(blk) != block_row(first)) { a = load_a_block(blk, kk); }
    if (block_col(blk) != block_col(first)) { b = load_b_block(blk, kk); }
    return coopMultiplyAdd(a, b, c);
}

fn block_store(c: CC, blk: u32) {
    coopStoreT(c, &c_tile[block_row(blk) * CSTR + block_col(blk)], CSTR);
}

@compute @workgroup_size(THREADS, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) subgroups: u32,
) {
    let mn = dims();
    let kr = k_range(wid.z);
    let m0 = wid.y * TM;
    let n0 = wid.x * TN;
    // This thread's B columns (bcol + BC*c) and first B row of each chunk.
    let bcol = t % BC;
    let brow = (t / BC) * RPG;
    var cols: array<BCol, CB_N>;
    var col_ok: array<bool, CB_N>;
    for (var c = 0u; c < CB_N; c++) {
        let n = n0 + bcol + BC * c;
        col_ok[c] = n < mn.y;
        cols[c] = b_col(min(n, mn.y - 1u), wid.z);
    }
    // This thread's A column (k) and rows (arow + AR*i).
    let akk = t % TK;
    let arow = t / TK;
    // This subgroup's blocks of C (SLOTS = 4), zero to start with.
    var acc0: CC;
    var acc1: CC;
    var acc2: CC;
    var acc3: CC;
    let blk0 = sg;
    let blk1 = sg + subgroups;
    let blk2 = sg + 2u * subgroups;
    let blk3 = sg + 3u * subgroups;

    for (var k0 = kr.x; k0 < kr.y; k0 += TK) {
        var r = b_row(k0 + brow, wid.z);
        for (var i = 0u; i < RPG; i++) {
            let k_ok = k0 + brow + i < kr.y;
            for (var c = 0u; c < CB_N; c++) {
                var v = 0.0;
                if (k_ok && col_ok[c]) { v = load_b_at(r, cols[c], wid.z); }
                b_tile[(brow + i) * BS + bcol + BC * c] = f16(v);
            }
            r = b_row_next(r);
        }
        let ka = k0 + akk;
        for (var i = 0u; i < AM; i++) {
            let m = arow + AR * i;
            var v = 0.0;
            if (ka < kr.y && m0 + m < mn.x) { v = load_a(m0 + m, ka, wid.z); }
            a_tile[m * AS + akk] = f16(v);
        }
        workgroupBarrier();
        // The chunk's contribution to the subgroup's blocks: TK / CS products of CS x CS
        // matrices each (blk1-3 exist only where blk0 does: blk0 is the smallest).
        if (blk0 < BLOCKS) {
            for (var kk = 0u; kk < TK; kk += CS) {
                let a0 = load_a_block(blk0, kk);
                let b0 = load_b_block(blk0, kk);
                acc0 = coopMultiplyAdd(a0, b0, acc0);
                if (blk1 < BLOCKS) { acc1 = later_block_step(acc1, blk1, blk0, a0, b0, kk); }
                if (blk2 < BLOCKS) { acc2 = later_block_step(acc2, blk2, blk0, a0, b0, kk); }
                if (blk3 < BLOCKS) { acc3 = later_block_step(acc3, blk3, blk0, a0, b0, kk); }
            }
        }
        workgroupBarrier();
    }
    if (blk0 < BLOCKS) { block_store(acc0, blk0); }
    if (blk1 < BLOCKS) { block_store(acc1, blk1); }
    if (blk2 < BLOCKS) { block_store(acc2, blk2); }
    if (blk3 < BLOCKS) { block_store(acc3, blk3); }
    workgroupBarrier();
    // Adjacent threads store adjacent columns.
    for (var e = t; e < TM * TN; e += THREADS) {
        let m = m0 + e / TN;
        let n = n0 + e % TN;
        if (m < mn.x && n < mn.y) { store_c(m, n, wid.z, c_tile[(e / TN) * CSTR + e % TN]); }
    }
}
