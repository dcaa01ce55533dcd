//! Reductions: full sum / mean / sum of squares, per-channel sums, split-K finishing
//! (shaders/reduce.wgsl).

use super::{groups_1d, kernel, launch, summing, summing_kernel};
use crate::gpu::Kernel;
use crate::tensor::{needs_node, Backward, Node};
use crate::{Error, Result, Tensor};

static SUM_STAGE: [Kernel; 2] = summing_kernel!("reduce.sum_stage", "reduce.wgsl", "sum_stage");
static CHANNEL_SUM: [Kernel; 2] = summing_kernel!("reduce.channel_sum", "reduce.wgsl", "channel_sum");
static SUBGROUP_CHECK: Kernel =
    kernel!("reduce.subgroup_check", "reduce.wgsl", "subgroup_check", ["sum_subgroup.wgsl"]);
static SUM_SPLITS: Kernel = kernel!("reduce.sum_splits", "reduce.wgsl", "sum_splits");
static BROADCAST: Kernel = kernel!("reduce.broadcast", "reduce.wgsl", "broadcast");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StageParams {
    n: u32,
    chunk: u32,
    mode: u32,
    scale: f32,
}

/// What `reduce_all` sums.
#[derive(Clone, Copy)]
enum Mode {
    Plain = 0,
    Square = 1,
    Abs = 2,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims4 {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

/// Sum (or sum of squares) of all elements times `scale`, as a one-element tensor, in two
/// stages (at most 1024 partial sums, then one workgroup), per piece of at most one storage
/// binding (the pieces' sums added up). Not differentiated.
fn reduce_all(x: &Tensor, mode: Mode, scale: f32) -> Result<Tensor> {
    if 4 * x.numel() as u64 <= super::binding_limit()? {
        return reduce_binding(x, mode, scale);
    }
    let total = Tensor::zeros(&[1])?;
    super::for_each_chunk(x.numel(), |start, len| {
        let piece = reduce_binding(&super::flat_view(x, start, len)?, mode, scale)?;
        super::elementwise::axpy(1.0, &piece, &total)
    })?;
    Ok(total)
}

/// [`reduce_all`] over a tensor that fits one binding.
fn reduce_binding(x: &Tensor, mode: Mode, scale: f32) -> Result<Tensor> {
    let n = x.numel();
    let groups = n.div_ceil(4096).clamp(1, 1024);
    let chunk = n.div_ceil(groups);
    let partial = Tensor::uninit(&[groups])?;
    let p1 = StageParams { n: n as u32, chunk: chunk as u32, mode: mode as u32, scale: 1.0 };
    launch(summing(&SUM_STAGE)?, &p1, &[x, &partial], [groups as u32, 1, 1])?;
    let out = Tensor::uninit(&[1])?;
    let p2 = StageParams { n: groups as u32, chunk: groups as u32, mode: Mode::Plain as u32, scale };
    launch(summing(&SUM_STAGE)?, &p2, &[&partial, &out], [1, 1, 1])?;
    Ok(out)
}

/// The sum of all elements (differentiable).
pub fn sum(x: &Tensor) -> Result<Tensor> {
    scaled_sum(x, 1.0)
}

/// The mean of all elements (differentiable).
pub fn mean(x: &Tensor) -> Result<Tensor> {
    scaled_sum(x, 1.0 / x.numel() as f32)
}

/// The sum of squares of all elements (not differentiated; norms and residuals).
pub fn sum_squares(x: &Tensor) -> Result<Tensor> {
    reduce_all(x, Mode::Square, 1.0)
}

/// The sum of absolute values (the L1 norm; not differentiated).
pub fn sum_abs(x: &Tensor) -> Result<Tensor> {
    reduce_all(x, Mode::Abs, 1.0)
}

fn scaled_sum(x: &Tensor, scale: f32) -> Result<Tensor> {
    let out = reduce_all(x, Mode::Plain, scale)?;
    let node = needs_node(&[x])
        .then(|| Node { backward: Box::new(SumBackward { shape: x.shape().to_vec(), scale }), inputs: vec![x.edge()] });
    Ok(out.with_node(node))
}

struct SumBackward {
    shape: Vec<usize>,
    scale: f32,
}
impl Backward for SumBackward {
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(broadcast_scalar(g, &self.shape, self.scale)?)])
    }
}

/// A tensor of `shape` filled with `scalar[0] * scale` (the scalar stays on the device).
pub fn broadcast_scalar(scalar: &Tensor, shape: &[usize], scale: f32) -> Result<Tensor> {
    let out = Tensor::uninit(shape)?;
    let n = out.numel();
    launch(&BROADCAST, &StageParams { n: n as u32, chunk: 0, mode: 0, scale }, &[scalar, &out], groups_1d(n))?;
    Ok(out)
}

/// `x` viewed as `[outer, c, inner]` summed to `[c]` (bias gradients). Not differentiated.
pub fn channel_sum(x: &Tensor, outer: usize, c: usize, inner: usize) -> Result<Tensor> {
    channel_sum_into(x, outer, c, inner, None)
}

/// [`channel_sum`] written into `place` ([c]) when given.
pub(crate) fn channel_sum_into(
    x: &Tensor,
    outer: usize,
    c: usize,
    inner: usize,
    place: Option<&Tensor>,
) -> Result<Tensor> {
    if outer * c * inner != x.numel() || place.is_some_and(|p| p.numel() != c) {
        return Err(Error::shape("channel_sum", format!("{:?} is not [{outer}, {c}, {inner}]", x.shape())));
    }
    let out = super::place_or_new(place, &[c])?;
    let p = Dims4 { a: outer as u32, b: c as u32, c: inner as u32, d: 0 };
    launch(summing(&CHANNEL_SUM)?, &p, &[x, &out], [c as u32, 1, 1])?;
    Ok(out)
}

/// `parts` holding `splits` consecutive arrays of `out`'s size, summed into `out` (the second
/// pass of a split-K product) with [`split_lanes`] threads per output.
pub(crate) fn sum_splits(parts: &Tensor, splits: usize, out: &Tensor) -> Result<()> {
    let cpu = crate::gpu::get()?.adapter.is_cpu();
    sum_splits_with_lanes(parts, splits, split_lanes(splits, cpu), out)
}

/// Threads per output when summing `splits` parts: about 8 parts each on a GPU, so that every
/// load of the pass is in flight at once (a power of two, at most 64); one on software drivers,
/// where the loop is cheaper than shared-memory barriers.
pub fn split_lanes(splits: usize, cpu: bool) -> usize {
    if cpu || splits < 16 {
        return 1;
    }
    let lanes = 1usize << (splits / 8).ilog2();
    lanes.min(64)
}

/// [`sum_splits`] with a given number of threads per output (a power of two, at most 256).
pub fn sum_splits_with_lanes(parts: &Tensor, splits: usize, lanes: usize, out: &Tensor) -> Result<()> {
    let n = out.numel();
    if !lanes.is_power_of_two() || lanes > super::WG || parts.numel() < n * splits {
        return Err(Error::shape(
            "sum_splits",
            format!("{lanes} lanes over {splits} parts of {n} in {} values", parts.numel()),
        ));
    }
    let p = Dims4 { a: n as u32, b: splits as u32, c: lanes as u32, d: 0 };
    let outputs_per_group = super::WG / lanes;
    launch(&SUM_SPLITS, &p, &[parts, out], crate::gpu::grid(n.div_ceil(outputs_per_group) as u32))
}

/// Runs `reduce.subgroup_check` over 64 workgroups: true when every thread found its subgroup
/// full, in order and summing exactly (what sum_subgroup.wgsl assumes).
pub(crate) fn subgroups_pass_check() -> Result<bool> {
    let n = 64 * super::WG;
    let ok = Tensor::zeros(&[n])?;
    launch(&SUBGROUP_CHECK, &Dims4 { a: n as u32, b: 0, c: 0, d: 0 }, &[&ok], [64, 1, 1])?;
    Ok(ok.to_vec()?.iter().all(|&v| v == 1.0))
}
