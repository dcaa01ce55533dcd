//! Element-wise ops: fill, add, add + ReLU, scale, axpy, ReLU, dropout (shaders/elementwise.wgsl).

use super::{flat_view, for_each_chunk, groups_4x, kernel, launch, same_dtype, same_shape};
use crate::gpu::Kernel;
use crate::tensor::{needs_node, Backward, Node};
use crate::{Result, Tensor};

/// Constructors that run a kernel (the tensor module itself launches none).
impl Tensor {
    pub fn zeros(shape: &[usize]) -> Result<Tensor> {
        Tensor::full(shape, 0.0)
    }

    pub fn full(shape: &[usize], value: f32) -> Result<Tensor> {
        let t = Tensor::uninit(shape)?;
        fill(&t, value)?;
        Ok(t)
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    seed: u32,
    alpha: f32,
    beta: f32,
}

fn params(n: usize, alpha: f32) -> Params {
    Params { n: n as u32, seed: 0, alpha, beta: 0.0 }
}

static FILL: Kernel = kernel!("elementwise.fill", "elementwise.wgsl", "fill");
static ADD: Kernel = kernel!("elementwise.add", "elementwise.wgsl", "add");
static ADD_RELU: Kernel = kernel!("elementwise.add_relu", "elementwise.wgsl", "add_relu");
static SCALE: Kernel = kernel!("elementwise.scale", "elementwise.wgsl", "scale");
static AXPY: Kernel = kernel!("elementwise.axpy", "elementwise.wgsl", "axpy");
static RELU: Kernel = kernel!("elementwise.relu", "elementwise.wgsl", "relu");
static RELU_BACKWARD: Kernel = kernel!("elementwise.relu_backward", "elementwise.wgsl", "relu_backward");
static DROPOUT: Kernel = kernel!("elementwise.dropout", "elementwise.wgsl", "dropout");
static DROPOUT_MASK: Kernel = kernel!("elementwise.dropout_mask", "elementwise.wgsl", "dropout_mask");

/// Sets every element of `t` to `value` (in place, not differentiated).
/// (Tensors beyond one storage binding are filled in pieces.)
pub fn fill(t: &Tensor, value: f32) -> Result<()> {
    for_each_chunk(t.numel(), |start, n| launch(&FILL, &params(n, value), &[&flat_view(t, start, n)?], groups_4x(n)))
}

/// `y += alpha * x` in place (not differentiated; optimizer and accumulation helper; tensors
/// beyond one storage binding go in pieces).
pub fn axpy(alpha: f32, x: &Tensor, y: &Tensor) -> Result<()> {
    same_shape("axpy", x, y)?;
    for_each_chunk(x.numel(), |start, n| {
        launch(&AXPY, &params(n, alpha), &[&flat_view(x, start, n)?, &flat_view(y, start, n)?], groups_4x(n))
    })
}

/// `a + b` (same shapes; tensors beyond one storage binding go in pieces).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_shape("add", a, b)?;
    same_dtype("add", a, b)?;
    let out = Tensor::uninit_as(a.dtype(), a.shape())?;
    for_each_chunk(a.numel(), |start, n| {
        let bound = [&flat_view(a, start, n)?, &flat_view(b, start, n)?, &flat_view(&out, start, n)?];
        launch(&ADD, &params(n, 0.0), &bound, groups_4x(n))
    })?;
    let node = needs_node(&[a, b]).then(|| Node { backward: Box::new(AddBackward), inputs: vec![a.edge(), b.edge()] });
    Ok(out.with_node(node))
}

struct AddBackward;
impl Backward for AddBackward {
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.clone()), Some(g.clone())])
    }
}

/// `max(a + b, 0)` in one kernel (a residual block's output); backward masks the gradient by
/// the output, so the sum is never stored.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_shape("add_relu", a, b)?;
    same_dtype("add_relu", a, b)?;
    let out = Tensor::uninit_as(a.dtype(), a.shape())?;
    launch(&ADD_RELU, &params(a.numel(), 0.0), &[a, b, &out], groups_4x(a.numel()))?;
    let node = needs_node(&[a, b])
        .then(|| Node { backward: Box::new(AddReluBackward(out.detach())), inputs: vec![a.edge(), b.edge()] });
    Ok(out.with_node(node))
}

struct AddReluBackward(Tensor);
impl Backward for AddReluBackward {
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let d = relu_backward(g, &self.0)?;
        Ok(vec![Some(d.clone()), Some(d)])
    }
}

/// `alpha * x`.
pub fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    let out = Tensor::uninit_as(x.dtype(), x.shape())?;
    launch(&SCALE, &params(x.numel(), alpha), &[x, &out], groups_4x(x.numel()))?;
    let node = needs_node(&[x]).then(|| Node { backward: Box::new(ScaleBackward(alpha)), inputs: vec![x.edge()] });
    Ok(out.with_node(node))
}

struct ScaleBackward(f32);
impl Backward for ScaleBackward {
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(scale(&g.detach(), self.0)?)])
    }
}

/// `x` stored as `dtype` (rounded to the nearest f16 for f16). Not differentiated: it turns
/// input images into mixed precision's f16 activations.
pub fn cast(x: &Tensor, dtype: crate::gpu::Dtype) -> Result<Tensor> {
    let out = Tensor::uninit_as(dtype, x.shape())?;
    launch(&SCALE, &params(x.numel(), 1.0), &[x, &out], groups_4x(x.numel()))?;
    Ok(out)
}

/// `max(x, 0)`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    let out = Tensor::uninit_as(x.dtype(), x.shape())?;
    launch(&RELU, &params(x.numel(), 0.0), &[x, &out], groups_4x(x.numel()))?;
    let node =
        needs_node(&[x]).then(|| Node { backward: Box::new(ReluBackward(out.detach())), inputs: vec![x.edge()] });
    Ok(out.with_node(node))
}

/// The gradient of ReLU given its output `y`: `dy` where `y > 0`.
pub fn relu_backward(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    same_shape("relu_backward", dy, y)?;
    let dx = Tensor::uninit_as(dy.dtype(), dy.shape())?;
    launch(&RELU_BACKWARD, &params(dy.numel(), 0.0), &[dy, y, &dx], groups_4x(dy.numel()))?;
    Ok(dx)
}

struct ReluBackward(Tensor);
impl Backward for ReluBackward {
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(relu_backward(g, &self.0)?)])
    }
}

fn dropout_params(n: usize, p: f32, seed: u32) -> Params {
    Params { n: n as u32, seed, alpha: p, beta: 1.0 / (1.0 - p) }
}

/// Inverted dropout with probability `p`: zeroes an element when a hash of (`seed`, index) falls
/// below `p` and scales the rest by 1/(1-p). The same seed gives the same mask, so backward
/// regenerates it instead of storing it.
pub fn dropout(x: &Tensor, p: f32, seed: u32) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(crate::Error::invalid(format!("dropout probability must be in [0, 1), got {p}")));
    }
    let out = Tensor::uninit_as(x.dtype(), x.shape())?;
    launch(&DROPOUT, &dropout_params(x.numel(), p, seed), &[x, &out], groups_4x(x.numel()))?;
    let node =
        needs_node(&[x]).then(|| Node { backward: Box::new(DropoutBackward { p, seed }), inputs: vec![x.edge()] });
    Ok(out.with_node(node))
}

/// The 0/1 keep mask that `dropout` with these arguments applies (for tests and inspection).
pub fn dropout_mask(shape: &[usize], p: f32, seed: u32) -> Result<Tensor> {
    let out = Tensor::uninit(shape)?;
    launch(&DROPOUT_MASK, &dropout_params(out.numel(), p, seed), &[&out], groups_4x(out.numel()))?;
    Ok(out)
}

struct DropoutBackward {
    p: f32,
    seed: u32,
}
impl Backward for DropoutBackward {
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(dropout(&g.detach(), self.p, self.seed)?)])
    }
}
