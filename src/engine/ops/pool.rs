//! Max pooling (indices saved for backward), adaptive and global average pooling
//! (shaders/pool.wgsl).

use super::{expect_rank, groups_1d, kernel, launch};
use crate::gpu::Kernel;
use crate::tensor::{needs_node, Backward, Node};
use crate::{Error, Result, Tensor};

static MAX_FORWARD: Kernel = kernel!("pool.max_forward", "pool.wgsl", "max_forward");
static MAX_BACKWARD: Kernel = kernel!("pool.max_backward", "pool.wgsl", "max_backward");
static AVG_FORWARD: Kernel = kernel!("pool.avg_forward", "pool.wgsl", "avg_forward");
static AVG_BACKWARD: Kernel = kernel!("pool.avg_backward", "pool.wgsl", "avg_backward");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    planes: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    k: u32,
    stride: u32,
    pad: u32,
}

impl Params {
    fn new(x_shape: &[usize], oh: usize, ow: usize, k: usize, stride: usize, pad: usize) -> Params {
        let v = |x: usize| x as u32;
        Params {
            planes: v(x_shape[0] * x_shape[1]),
            h: v(x_shape[2]),
            w: v(x_shape[3]),
            oh: v(oh),
            ow: v(ow),
            k: v(k),
            stride: v(stride),
            pad: v(pad),
        }
    }
}

/// Max pooling with a `k`x`k` window (padding counts as -inf). Returns the output and the
/// argmax of each window (`iy*w + ix` in its input plane, as f32).
pub fn max_pool2d_with_indices(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<(Tensor, Tensor)> {
    expect_rank("max_pool2d", "input", x, 4)?;
    let s = x.shape();
    if k == 0 || stride == 0 || 2 * pad > k || s[2] + 2 * pad < k || s[3] + 2 * pad < k {
        return Err(Error::shape("max_pool2d", format!("input {s:?} with kernel {k}, stride {stride}, padding {pad}")));
    }
    let (oh, ow) = ((s[2] + 2 * pad - k) / stride + 1, (s[3] + 2 * pad - k) / stride + 1);
    let y = Tensor::uninit_as(x.dtype(), &[s[0], s[1], oh, ow])?;
    let idx = Tensor::uninit(&[s[0], s[1], oh, ow])?;
    let p = Params::new(s, oh, ow, k, stride, pad);
    launch(&MAX_FORWARD, &p, &[x, &y, &idx], groups_1d(y.numel()))?;
    Ok((y, idx))
}

/// Max pooling (differentiable).
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    let (y, idx) = max_pool2d_with_indices(x, k, stride, pad)?;
    let p = Params::new(x.shape(), y.shape()[2], y.shape()[3], k, stride, pad);
    let node = needs_node(&[x]).then(|| Node {
        backward: Box::new(MaxPoolBackward { idx, p, x_shape: x.shape().to_vec() }),
        inputs: vec![x.edge()],
    });
    Ok(y.with_node(node))
}

struct MaxPoolBackward {
    idx: Tensor,
    p: Params,
    x_shape: Vec<usize>,
}
impl Backward for MaxPoolBackward {
    fn backward(&self, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let dx = Tensor::uninit_as(dy.dtype(), &self.x_shape)?;
        launch(&MAX_BACKWARD, &self.p, &[dy, &self.idx, &dx], groups_1d(dx.numel()))?;
        Ok(vec![Some(dx)])
    }
}

/// Adaptive average pooling of `x` [n, c, h, w] to [n, c, oh, ow] with PyTorch's windows
/// (differentiable).
pub fn adaptive_avg_pool2d(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    expect_rank("adaptive_avg_pool2d", "input", x, 4)?;
    let s = x.shape();
    if oh == 0 || ow == 0 {
        return Err(Error::shape("adaptive_avg_pool2d", format!("output size {oh}x{ow}")));
    }
    let y = Tensor::uninit_as(x.dtype(), &[s[0], s[1], oh, ow])?;
    let p = Params::new(s, oh, ow, 0, 1, 0);
    launch(&AVG_FORWARD, &p, &[x, &y], groups_1d(y.numel()))?;
    let node = needs_node(&[x])
        .then(|| Node { backward: Box::new(AvgPoolBackward { p, x_shape: s.to_vec() }), inputs: vec![x.edge()] });
    Ok(y.with_node(node))
}

/// Global average pooling: [n, c, h, w] → [n, c] (differentiable).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let y = adaptive_avg_pool2d(x, 1, 1)?;
    y.reshape(&[x.shape()[0], x.shape()[1]])
}

struct AvgPoolBackward {
    p: Params,
    x_shape: Vec<usize>,
}
impl Backward for AvgPoolBackward {
    fn backward(&self, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let dx = Tensor::uninit_as(dy.dtype(), &self.x_shape)?;
        launch(&AVG_BACKWARD, &self.p, &[dy, &dx], groups_1d(dx.numel()))?;
        Ok(vec![Some(dx)])
    }
}
