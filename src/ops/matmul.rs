//! Matrix products on the tiled GEMM engine: `gemm` (strided operands, optional bias, split-K),
//! `matmul` and the `linear` layer with their backward rules (shaders/matmul.wgsl).

use super::expect_rank;
use crate::autograd::{needs_node, Backward, Node};
use crate::gpu::Kernel;
use crate::{Error, Result, Tensor};

/// The three tile shapes of the GEMM engine: the wide 16x256 tile (tiled_gemm_wide.wgsl) for
/// products with at most 16 rows, and (8·RM)x64 tiles with RM = 4 or 8 rows per thread
/// (tiled_gemm.wgsl). Each GEMM-based kernel is declared once per shape (`gemm_kernels!`) and
/// `pick_tile` chooses by M, so 16- and 32-channel layers do not waste most of a 64-row tile.
macro_rules! gemm_kernels {
    ($label:literal, $file:literal, $section:expr) => {
        [
            $crate::ops::matmul::gemm_kernel!(
                concat!($label, ".wide16"),
                "",
                "../../shaders/tiled_gemm_wide.wgsl",
                $file,
                $section
            ),
            $crate::ops::matmul::gemm_kernel!(
                concat!($label, ".rm4"),
                "const RM: u32 = 4u;",
                "../../shaders/tiled_gemm.wgsl",
                $file,
                $section
            ),
            $crate::ops::matmul::gemm_kernel!(
                concat!($label, ".rm8"),
                "const RM: u32 = 8u;",
                "../../shaders/tiled_gemm.wgsl",
                $file,
                $section
            ),
        ]
    };
}
macro_rules! gemm_kernel {
    ($label:expr, $rm:literal, $engine:literal, $file:literal, $section:expr) => {
        $crate::gpu::Kernel {
            label: $label,
            prelude: &[$rm, include_str!($engine)],
            source: include_str!(concat!("../../shaders/", $file)),
            section: $section,
            entry: "main",
        }
    };
}
pub(crate) use {gemm_kernel, gemm_kernels};

/// Index into a `gemm_kernels!` array and that tile's (rows, columns) for a product with `m` rows.
pub(crate) fn pick_tile(m: usize) -> (usize, (usize, usize)) {
    match m {
        0..=16 => (0, (16, 256)),
        17..=32 => (1, (32, 64)),
        _ => (2, (64, 64)),
    }
}

/// Workgroups covering an m x n product, `splits` deep.
pub(crate) fn gemm_groups(m: usize, n: usize, splits: usize) -> [u32; 3] {
    let (rows, cols) = pick_tile(m).1;
    [n.div_ceil(cols) as u32, m.div_ceil(rows) as u32, splits as u32]
}

static GEMM: [Kernel; 3] = gemm_kernels!("matmul.gemm", "matmul.wgsl", None);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    k_chunk: u32,
    a_sm: u32,
    a_sk: u32,
    b_sk: u32,
    b_sn: u32,
    has_bias: u32,
    _pad: [u32; 3],
}

/// How many K-splits a GEMM of this shape gets: enough workgroups to fill a large GPU when the
/// output is small and the reduction long (weight gradients), none otherwise.
pub(crate) fn split_k(m: usize, n: usize, k: usize) -> usize {
    let (rows, cols) = pick_tile(m).1;
    let tiles = m.div_ceil(rows) * n.div_ceil(cols);
    if tiles >= 64 || k < 1024 {
        return 1;
    }
    (128 / tiles).clamp(1, k / 256).max(1)
}

/// Runs a GEMM given its parameters: writes `out` (shape [m, n]) directly, or through a split-K
/// partial buffer and a reduction.
pub(crate) fn run_split_k(
    kernels: &[Kernel; 3],
    make: impl Fn(usize) -> Vec<u8>,
    bufs: &[&Tensor],
    out: &Tensor,
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    let splits = split_k(m, n, k);
    let chunk = k.div_ceil(splits).div_ceil(16) * 16;
    let splits = k.div_ceil(chunk).max(1);
    let groups = gemm_groups(m, n, splits);
    let kernel = &kernels[pick_tile(m).0];
    let gpu = crate::gpu::get()?;
    let params = make(chunk);
    if splits == 1 {
        let mut views: Vec<_> = bufs.iter().map(|t| t.view()).collect();
        views.push(out.view());
        return gpu.dispatch(kernel, &params, &views, groups);
    }
    let parts = Tensor::uninit(&[splits, m * n])?;
    let mut views: Vec<_> = bufs.iter().map(|t| t.view()).collect();
    views.push(parts.view());
    gpu.dispatch(kernel, &params, &views, groups)?;
    super::reduce::sum_splits(&parts, splits, out)
}

/// `op(A)[m, k] * op(B)[k, n] (+ bias[n])` with no autograd. `a` is stored [m, k] (or [k, m]
/// when `trans_a`), `b` is stored [k, n] (or [n, k] when `trans_b`).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
) -> Result<Tensor> {
    if a.numel() != m * k || b.numel() != k * n || bias.is_some_and(|t| t.numel() != n) {
        return Err(Error::shape(
            "gemm",
            format!(
                "A {:?}, B {:?}, bias {:?} do not fit m={m} k={k} n={n}",
                a.shape(),
                b.shape(),
                bias.map(|t| t.shape())
            ),
        ));
    }
    let (a_sm, a_sk) = if trans_a { (1, m) } else { (k, 1) };
    let (b_sk, b_sn) = if trans_b { (1, k) } else { (n, 1) };
    let out = Tensor::uninit(&[m, n])?;
    let make = |chunk: usize| {
        let p = Params {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            k_chunk: chunk as u32,
            a_sm: a_sm as u32,
            a_sk: a_sk as u32,
            b_sk: b_sk as u32,
            b_sn: b_sn as u32,
            has_bias: bias.is_some() as u32,
            _pad: [0; 3],
        };
        bytemuck::bytes_of(&p).to_vec()
    };
    // Without a bias the slot is bound to `a` (never read).
    run_split_k(&GEMM, make, &[a, b, bias.unwrap_or(a)], &out, m, n, k)?;
    Ok(out)
}

/// `a[m, k] @ b[k, n]` (differentiable).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    expect_rank("matmul", "A", a, 2)?;
    expect_rank("matmul", "B", b, 2)?;
    let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
    if b.shape()[0] != k {
        return Err(Error::shape("matmul", format!("A {:?} times B {:?}: inner sizes differ", a.shape(), b.shape())));
    }
    let out = gemm(a, b, None, m, k, n, false, false)?;
    let node = needs_node(&[a, b]).then(|| Node {
        backward: Box::new(MatmulBackward { a: a.detach(), b: b.detach() }),
        inputs: vec![a.edge(), b.edge()],
    });
    Ok(out.with_node(node))
}

struct MatmulBackward {
    a: Tensor,
    b: Tensor,
}
impl Backward for MatmulBackward {
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (m, k, n) = (self.a.shape()[0], self.a.shape()[1], self.b.shape()[1]);
        // dA = dC B^T, dB = A^T dC
        let da = gemm(g, &self.b, None, m, n, k, false, true)?;
        let db = gemm(&self.a, g, None, k, m, n, true, false)?;
        Ok(vec![Some(da), Some(db)])
    }
}

/// `x[n, in] W^T + b` with `W` stored `[out, in]` as in PyTorch (differentiable).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    expect_rank("linear", "input", x, 2)?;
    expect_rank("linear", "weight", weight, 2)?;
    let (n, in_f, out_f) = (x.shape()[0], x.shape()[1], weight.shape()[0]);
    if weight.shape()[1] != in_f || bias.is_some_and(|b| b.shape() != [out_f]) {
        return Err(Error::shape(
            "linear",
            format!("input {:?}, weight {:?}, bias {:?}", x.shape(), weight.shape(), bias.map(|b| b.shape())),
        ));
    }
    let out = gemm(x, weight, bias, n, in_f, out_f, false, true)?;
    let refs: Vec<&Tensor> = [Some(x), Some(weight), bias].into_iter().flatten().collect();
    let node = needs_node(&refs).then(|| Node {
        backward: Box::new(LinearBackward { x: x.detach(), weight: weight.detach(), has_bias: bias.is_some() }),
        inputs: refs.iter().map(|t| t.edge()).collect(),
    });
    Ok(out.with_node(node))
}

struct LinearBackward {
    x: Tensor,
    weight: Tensor,
    has_bias: bool,
}
impl Backward for LinearBackward {
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (n, in_f, out_f) = (self.x.shape()[0], self.x.shape()[1], self.weight.shape()[0]);
        let dx = gemm(g, &self.weight, None, n, out_f, in_f, false, false)?; // dy W
        let dw = gemm(g, &self.x, None, out_f, n, in_f, true, false)?; // dy^T x
        let mut grads = vec![Some(dx), Some(dw)];
        if self.has_bias {
            grads.push(Some(super::reduce::channel_sum(g, n, out_f, 1)?));
        }
        Ok(grads)
    }
}
