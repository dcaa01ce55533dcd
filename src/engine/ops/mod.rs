//! Ops: one file per family, each with its public functions, its parameter structs, its
//! `Backward` rules and its WGSL shader from `shaders/`.

pub mod admm;
pub mod batchnorm;
pub mod conv2d;
pub mod elementwise;
pub mod gemm_plan;
pub mod group;
pub mod loss;
pub mod loss_scale;
pub mod matmul;
pub mod pool;
pub mod reduce;
pub mod select;
pub mod sgd;
pub mod shortcut;

use crate::gpu::{self, Kernel};
use crate::{Error, Result, Tensor};

/// Threads per workgroup of the 1-D kernels (the shaders' `WG`).
pub(crate) use crate::gpu::WG;

/// Input i's gradient place among a backward's `places` (see `Backward::backward_into`).
pub(crate) fn grad_place(places: &[Option<Tensor>], i: usize) -> Option<&Tensor> {
    places.get(i).and_then(Option::as_ref)
}

/// The tensor an op writes its result into: `place` when given (of `shape`), else a new one.
pub(crate) fn place_or_new(place: Option<&Tensor>, shape: &[usize]) -> Result<Tensor> {
    match place {
        Some(p) => Ok(p.clone()),
        None => Tensor::uninit(shape),
    }
}

/// Records `kernel` with `params` and the tensors bound at bindings 1.. in order.
pub(crate) fn launch<P: bytemuck::Pod>(
    kernel: &Kernel,
    params: &P,
    tensors: &[&Tensor],
    groups: [u32; 3],
) -> Result<()> {
    let views: Vec<_> = tensors.iter().map(|t| t.view()).collect();
    gpu::get()?.dispatch(kernel, bytemuck::bytes_of(params), &views, groups)
}

thread_local! {
    static FORCED_BINDING_LIMIT: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` as if this device allowed storage bindings of at most `bytes` (kernels that work
/// in pieces then use pieces of that size): how tests reach the pieces-of-a-binding paths that
/// AlexNet takes on drivers with a 128 MiB limit, at small sizes.
pub fn with_binding_limit<R>(bytes: u64, f: impl FnOnce() -> R) -> R {
    with_override(&FORCED_BINDING_LIMIT, bytes, f)
}

/// Runs `f` with a test's setting in `cell` (this thread only), then restores the previous one.
pub(crate) fn with_override<T: Copy + 'static, R>(
    cell: &'static std::thread::LocalKey<std::cell::Cell<Option<T>>>,
    value: T,
    f: impl FnOnce() -> R,
) -> R {
    let old = cell.with(|c| c.replace(Some(value)));
    let out = f();
    cell.with(|c| c.set(old));
    out
}

/// The largest storage binding kernels may use, in bytes (the device's, or a test's smaller one).
pub(crate) fn binding_limit() -> Result<u64> {
    let device = gpu::get()?.adapter.max_storage_binding;
    Ok(FORCED_BINDING_LIMIT.with(|c| c.get()).map_or(device, |f| f.min(device)))
}

/// Elements per piece for [`for_each_chunk`]: the binding limit, rounded down to the storage
/// offset alignment counted in f16 elements (so that pieces of f16 tensors start aligned too;
/// for f32 the pieces are those of the alignment in f32 elements whenever the limit is a
/// multiple of twice the alignment, as the usual power-of-two limits are).
fn chunk_elements() -> Result<usize> {
    let align = (gpu::get()?.storage_alignment() as usize / 2).max(1);
    Ok(((binding_limit()? as usize / 4) / align * align).max(align))
}

/// Calls `f(start, len)` over `[0, total)` elements in the fewest aligned chunks that each fit
/// one storage binding of this device (one chunk unless a tensor exceeds the binding limit, as
/// AlexNet's parameters do on some drivers).
pub(crate) fn for_each_chunk(total: usize, mut f: impl FnMut(usize, usize) -> Result<()>) -> Result<()> {
    let chunk = chunk_elements()?;
    let mut start = 0;
    while start < total {
        let len = chunk.min(total - start);
        f(start, len)?;
        start += len;
    }
    Ok(())
}

/// A step-skip flag that is never set: what optimizers bind without loss scaling (one per
/// process, so no step allocates it).
pub(crate) fn never_skip() -> Result<&'static Tensor> {
    static NEVER: std::sync::OnceLock<Tensor> = std::sync::OnceLock::new();
    if let Some(t) = NEVER.get() {
        return Ok(t);
    }
    let t = loss_scale::skip_flag()?;
    Ok(NEVER.get_or_init(|| t))
}

/// A tensor holding raw 32-bit words (kernels read them as u32: tables of offsets and counts).
pub(crate) fn words(data: &[u32]) -> Result<Tensor> {
    let as_f32: Vec<f32> = data.iter().map(|&w| f32::from_bits(w)).collect();
    Tensor::from_slice(&as_f32, &[data.len()])
}

/// One piece of a vector as [`for_each_chunk`] binds it, with the table of the parts of some
/// ranges that lie inside it: `count` rows of (offset − start, len, aux, id), id = the range's
/// index. Kernels that work on ranges (layers, groups) take one launch per piece.
pub(crate) struct PieceParts {
    pub start: usize,
    pub len: usize,
    pub table: Tensor,
    pub count: u32,
}

/// The pieces of a vector of `total` elements that hold some of `ranges` (offset, len, aux),
/// each with its table of parts; a range may span several pieces, an empty one is in none.
pub(crate) fn parts_by_piece(total: usize, ranges: &[(usize, usize, u32)]) -> Result<Vec<PieceParts>> {
    let mut pieces = Vec::new();
    for_each_chunk(total, |start, len| {
        let rows: Vec<u32> = (ranges.iter().enumerate())
            .filter_map(|(id, &(offset, n, aux))| {
                let (from, to) = (offset.max(start), (offset + n).min(start + len));
                (from < to).then(|| [(from - start) as u32, (to - from) as u32, aux, id as u32])
            })
            .flatten()
            .collect();
        if !rows.is_empty() {
            pieces.push(PieceParts { start, len, table: words(&rows)?, count: (rows.len() / 4) as u32 });
        }
        Ok(())
    })?;
    Ok(pieces)
}

/// `len` elements of `t` from element `start` (an aligned place), for binding to a kernel:
/// `t` itself when that is all of it (the common, single-chunk case allocates nothing), else a
/// flat view sharing its buffer.
pub(crate) fn flat_view(t: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    if start == 0 && len == t.numel() {
        return Ok(t.clone());
    }
    Tensor::view_into_as(t.dtype(), t.storage().clone(), t.byte_offset() + t.dtype().bytes() * start as u64, &[len])
}

/// Workgroups for one thread per element over `n` elements (folded into 2-D when large).
pub(crate) fn groups_1d(n: usize) -> [u32; 3] {
    gpu::grid(n.div_ceil(WG) as u32)
}

/// Workgroups for kernels whose 256 threads cover 1024 elements, 4 per thread (element-wise and
/// batch-norm kernels; folded into 2-D when large).
pub(crate) fn groups_4x(n: usize) -> [u32; 3] {
    gpu::grid(n.div_ceil(4 * WG) as u32)
}

/// A kernel declaration for one `//#section` of a shader file, optionally with preludes (shader
/// files placed before it).
macro_rules! kernel {
    ($label:expr, $file:literal, $section:literal) => {
        $crate::ops::kernel!($label, $file, $section, [])
    };
    ($label:expr, $file:literal, $section:literal, [$($prelude:literal),*]) => {
        $crate::gpu::Kernel {
            label: $label,
            prelude: &[$(include_str!(concat!("../../../shaders/", $prelude))),*],
            source: include_str!(concat!("../../../shaders/", $file)),
            section: Some($section),
            entry: $section,
        }
    };
}
pub(crate) use kernel;

/// A kernel that adds within workgroups, in its two variants: [shared-memory halving
/// (sum_tree.wgsl), subgroup operations (sum_subgroup.wgsl)]; [`summing`] picks one.
macro_rules! summing_kernel {
    ($label:literal, $file:literal, $section:literal) => {
        [
            $crate::ops::kernel!($label, $file, $section, ["sum_tree.wgsl"]),
            $crate::ops::kernel!(concat!($label, ".subgroup"), $file, $section, ["sum_subgroup.wgsl"]),
        ]
    };
}
pub(crate) use summing_kernel;

thread_local! {
    static FORCED_SUBGROUPS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the subgroup variants of the summing kernels (`true`, where the device has
/// subgroups that pass the check) or the shared-memory ones (`false`): how tests check both
/// against the reference on one device.
pub fn with_subgroups<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_override(&FORCED_SUBGROUPS, on, f)
}

/// Whether the device's subgroups can be used (checked once per process): the adapter has them,
/// `SASPRUNE_SUBGROUPS` is not `off`, and `reduce.subgroup_check` finds them full, laid out in
/// order and summing exactly.
pub fn subgroups_usable() -> Result<bool> {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if let Some(&u) = USABLE.get() {
        return Ok(u);
    }
    let off = std::env::var("SASPRUNE_SUBGROUPS").is_ok_and(|v| v.trim().eq_ignore_ascii_case("off"));
    // a driver whose subgroup kernels fail to build or to check out gets the other variant
    let usable = gpu::get()?.adapter.subgroups && !off && reduce::subgroups_pass_check().unwrap_or(false);
    Ok(*USABLE.get_or_init(|| usable))
}

/// Whether summing kernels launched now use subgroups: where they can, by default on GPUs; not
/// on software drivers, where llvmpipe ran batch-norm backward ~1.5x slower with them (its
/// barriers are cheap and its subgroup adds are not).
pub fn subgroups_in_use() -> Result<bool> {
    let default = !gpu::get()?.adapter.is_cpu();
    Ok(FORCED_SUBGROUPS.with(|c| c.get()).unwrap_or(default) && subgroups_usable()?)
}

/// The variant of a summing kernel to launch now.
pub(crate) fn summing(variants: &[Kernel; 2]) -> Result<&Kernel> {
    Ok(&variants[subgroups_in_use()? as usize])
}

pub(crate) fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(op, format!("{:?} vs {:?}", a.shape(), b.shape())));
    }
    Ok(())
}

pub(crate) fn same_dtype(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::shape(op, format!("{:?} and {:?} operands", a.dtype(), b.dtype())));
    }
    Ok(())
}

pub(crate) fn expect_rank(op: &'static str, what: &str, t: &Tensor, rank: usize) -> Result<()> {
    if t.shape().len() != rank {
        return Err(Error::shape(op, format!("{what} must have {rank} dimensions, got {:?}", t.shape())));
    }
    Ok(())
}
