// General matrix product on the tiled GEMM engine (tiled_gemm.wgsl is prepended):
//   C[M, N] (+bias[n]) = A[M, K] * B[K, N] with arbitrary element strides, so transposed
//   operands cost nothing: A[m, k] = a[m * a_sm + k * a_sk], B[k, n] = b[k * b_sk + n * b_sn].
// C's rows are c_ld apart (N, or more when C is a column block of a wider matrix).
// Split-K: workgroup z sums k in [z * k_chunk, min((z + 1) * k_chunk, K)) and writes its partial
// product to c[(z * M + m) * c_ld + n]; with one split that is C itself.
// a, b, c (and the bias's stand-in, a) are bound as t<binding> (f32, or f16 activations under
// mixed precision); the arithmetic is f32.

struct Params {
    m: u32, n: u32, k: u32, k_chunk: u32,
    a_sm: u32, a_sk: u32, b_sk: u32, b_sn: u32,
    has_bias: u32, c_ld: u32, _pad1: u32, _pad2: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<t1>;
@group(0) @binding(2) var<storage, read> b: array<t2>;
@group(0) @binding(3) var<storage, read> bias: array<t3>;   // without a bias: a stand-in, unread
@group(0) @binding(4) var<storage, read_write> c: array<t4>;

fn dims() -> vec2<u32> { return vec2<u32>(p.m, p.n); }
fn k_range(z: u32) -> vec2<u32> { return vec2<u32>(z * p.k_chunk, min((z + 1u) * p.k_chunk, p.k)); }
fn load_a(m: u32, k: u32, z: u32) -> f32 { return f32(a[m * p.a_sm + k * p.a_sk]); }
fn load_b(k: u32, n: u32, z: u32) -> f32 { return f32(b[k * p.b_sk + n * p.b_sn]); }
// B through the engine's coordinate hooks, with no decoding to save.
struct BCol { n: u32 }
struct BRow { k: u32 }
fn b_col(n: u32, z: u32) -> BCol { return BCol(n); }
fn b_row(k: u32, z: u32) -> BRow { return BRow(k); }
fn b_row_next(r: BRow) -> BRow { return BRow(r.k + 1u); }
fn load_b_at(r: BRow, c: BCol, z: u32) -> f32 { return load_b(r.k, c.n, z); }

fn store_c(m: u32, n: u32, z: u32, v: f32) {
    var r = v;
    if (p.has_bias != 0u && z == 0u) { r += f32(bias[n]); }
    c[(z * p.m + m) * p.c_ld + n] = t4(r);
}
