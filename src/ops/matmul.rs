//! Matrix products on the tiled GEMM engine: `gemm` (strided operands, optional bias, split-K),
//! `matmul` and the `linear` layer with their backward rules (shaders/matmul.wgsl).

use super::{expect_rank, flat_view};
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
    c_ld: u32,
    _pad: [u32; 2],
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
    let a_strides = if trans_a { [1, m] } else { [k, 1] };
    let b_strides = if trans_b { [1, k] } else { [n, 1] };
    let out = Tensor::uninit(&[m, n])?;
    gemm_strided(Operands { a, a_strides, b, b_strides, bias, c: &out, c_ld: n }, m, k, n)?;
    Ok(out)
}

/// The operands of [`gemm_strided`]: A[i, j] = a[i * a_strides[0] + j * a_strides[1]] (same
/// for B), C's rows `c_ld` apart. The tensors may be views into larger buffers (column blocks).
struct Operands<'a> {
    a: &'a Tensor,
    a_strides: [usize; 2],
    b: &'a Tensor,
    b_strides: [usize; 2],
    bias: Option<&'a Tensor>,
    c: &'a Tensor,
    c_ld: usize,
}

/// C[m, n] = A[m, k] B[k, n] (+ bias) with explicit strides; split-K only when C is contiguous.
fn gemm_strided(o: Operands, m: usize, k: usize, n: usize) -> Result<()> {
    let make = |chunk: usize| {
        let p = Params {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            k_chunk: chunk as u32,
            a_sm: o.a_strides[0] as u32,
            a_sk: o.a_strides[1] as u32,
            b_sk: o.b_strides[0] as u32,
            b_sn: o.b_strides[1] as u32,
            has_bias: o.bias.is_some() as u32,
            c_ld: o.c_ld as u32,
            _pad: [0; 2],
        };
        bytemuck::bytes_of(&p).to_vec()
    };
    // Without a bias the slot is bound to `a` (never read).
    let bufs = [o.a, o.b, o.bias.unwrap_or(o.a)];
    if o.c_ld == n {
        return run_split_k(&GEMM, make, &bufs, o.c, m, n, k);
    }
    let views = [o.a.view(), o.b.view(), bufs[2].view(), o.c.view()];
    crate::gpu::get()?.dispatch(&GEMM[pick_tile(m).0], &make(k), &views, gemm_groups(m, n, 1))
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

/// `x[n, in] W^T + b` with `W` stored `[out, in]` as in PyTorch (differentiable). A weight
/// larger than one storage binding of the device (AlexNet's fc6 on drivers with a 128 MiB
/// limit) is used in row blocks that each fit.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let rows = weight_block_rows(weight)?;
    linear_impl(x, weight, bias, rows)
}

/// [`linear`] with the weight used `rows_per_block` rows at a time (a multiple of the device's
/// storage alignment in floats, [`row_block_granularity`]): what `linear` does for weights
/// beyond the binding limit, callable at any size so it can be tested.
pub fn linear_in_row_blocks(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    rows_per_block: usize,
) -> Result<Tensor> {
    let unit = row_block_granularity()?;
    if rows_per_block == 0 || !rows_per_block.is_multiple_of(unit) {
        return Err(Error::invalid(format!("rows per weight block must be a positive multiple of {unit}")));
    }
    linear_impl(x, weight, bias, Some(rows_per_block))
}

/// Row blocks must start at aligned offsets of the weight, bias and output columns.
pub fn row_block_granularity() -> Result<usize> {
    Ok((crate::gpu::get()?.storage_alignment() as usize / 4).max(1))
}

/// Rows per block when `weight` [out, in] exceeds one storage binding, else None.
fn weight_block_rows(weight: &Tensor) -> Result<Option<usize>> {
    let limit = crate::gpu::get()?.adapter.max_storage_binding as usize;
    if weight.numel() * 4 <= limit || weight.shape().len() != 2 {
        return Ok(None);
    }
    let unit = row_block_granularity()?;
    let rows = limit / (4 * weight.shape()[1]) / unit * unit;
    if rows == 0 {
        return Err(Error::invalid(format!(
            "a linear weight of shape {:?} cannot be split into row blocks within this device's {:.0} MiB \
             storage-binding limit",
            weight.shape(),
            limit as f64 / 1048576.0
        )));
    }
    Ok(Some(rows))
}

/// (first row, rows) of each block of `total` rows.
fn blocks(total: usize, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..total).step_by(rows).map(move |r0| (r0, rows.min(total - r0)))
}

fn linear_impl(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, rows: Option<usize>) -> Result<Tensor> {
    expect_rank("linear", "input", x, 2)?;
    expect_rank("linear", "weight", weight, 2)?;
    let (n, in_f, out_f) = (x.shape()[0], x.shape()[1], weight.shape()[0]);
    if weight.shape()[1] != in_f || bias.is_some_and(|b| b.shape() != [out_f]) {
        return Err(Error::shape(
            "linear",
            format!("input {:?}, weight {:?}, bias {:?}", x.shape(), weight.shape(), bias.map(|b| b.shape())),
        ));
    }
    let out = match rows {
        None => gemm(x, weight, bias, n, in_f, out_f, false, true)?,
        Some(rows) => {
            // y[:, r0..r0+r] = x W[r0..r0+r]^T + b[r0..r0+r]: a column block of y
            let y = Tensor::uninit(&[n, out_f])?;
            for (r0, r) in blocks(out_f, rows) {
                let w_blk = flat_view(weight, r0 * in_f, r * in_f)?;
                let b_blk = bias.map(|b| flat_view(b, r0, r)).transpose()?;
                let y_blk = flat_view(&y, r0, n * out_f - r0)?;
                let o = Operands {
                    a: x,
                    a_strides: [in_f, 1],
                    b: &w_blk,
                    b_strides: [1, in_f],
                    bias: b_blk.as_ref(),
                    c: &y_blk,
                    c_ld: out_f,
                };
                gemm_strided(o, n, in_f, r)?;
            }
            y
        }
    };
    let refs: Vec<&Tensor> = [Some(x), Some(weight), bias].into_iter().flatten().collect();
    let node = needs_node(&refs).then(|| Node {
        backward: Box::new(LinearBackward { x: x.detach(), weight: weight.detach(), has_bias: bias.is_some(), rows }),
        inputs: refs.iter().map(|t| t.edge()).collect(),
    });
    Ok(out.with_node(node))
}

struct LinearBackward {
    x: Tensor,
    weight: Tensor,
    has_bias: bool,
    /// Rows per weight block, when the weight is used in blocks.
    rows: Option<usize>,
}
impl Backward for LinearBackward {
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (n, in_f, out_f) = (self.x.shape()[0], self.x.shape()[1], self.weight.shape()[0]);
        let (dx, dw) = match self.rows {
            None => (
                gemm(g, &self.weight, None, n, out_f, in_f, false, false)?, // dy W
                gemm(g, &self.x, None, out_f, n, in_f, true, false)?,       // dy^T x
            ),
            Some(rows) => {
                // dx = sum over blocks of dy[:, blk] W[blk]; dW[blk] = dy[:, blk]^T x
                let dx = Tensor::uninit(&[n, in_f])?;
                let dw = Tensor::uninit(&[out_f, in_f])?;
                let part = Tensor::uninit(&[n, in_f])?; // each later block's share of dx
                for (r0, r) in blocks(out_f, rows) {
                    let dy_blk = flat_view(g, r0, n * out_f - r0)?;
                    let w_blk = flat_view(&self.weight, r0 * in_f, r * in_f)?;
                    let part = if r0 == 0 { &dx } else { &part };
                    let o = Operands {
                        a: &dy_blk,
                        a_strides: [out_f, 1],
                        b: &w_blk,
                        b_strides: [in_f, 1],
                        bias: None,
                        c: part,
                        c_ld: in_f,
                    };
                    gemm_strided(o, n, r, in_f)?;
                    if r0 > 0 {
                        super::elementwise::axpy(1.0, part, &dx)?;
                    }
                    let dw_blk = flat_view(&dw, r0 * in_f, r * in_f)?;
                    let o = Operands {
                        a: &dy_blk,
                        a_strides: [1, out_f],
                        b: &self.x,
                        b_strides: [in_f, 1],
                        bias: None,
                        c: &dw_blk,
                        c_ld: in_f,
                    };
                    gemm_strided(o, r, n, in_f)?;
                }
                (dx, dw)
            }
        };
        let mut grads = vec![Some(dx), Some(dw)];
        if self.has_bias {
            grads.push(Some(super::reduce::channel_sum(g, n, out_f, 1)?));
        }
        Ok(grads)
    }
}
