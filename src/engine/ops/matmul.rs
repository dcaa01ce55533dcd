//! Matrix products on the tiled GEMM engine: `gemm` (strided operands, optional bias, split-K),
//! `matmul` and the `linear` layer with their backward rules (shaders/matmul.wgsl).

use super::{expect_rank, flat_view, grad_place, place_or_new};
use crate::gpu::Kernel;
use crate::tensor::{needs_node, Backward, Node};
use crate::{Error, Result, Tensor};

pub(crate) use super::gemm_plan::gemm_kernels;
pub use super::gemm_plan::{tile_index, tile_name, Plan, Tile, DIRECT, DIRECT_NAME, TILES, WINOGRAD, WINOGRAD_NAME};

/// A GEMM-based kernel declared for every tile shape.
pub(crate) type GemmKernels = [Kernel; TILES.len()];

/// A family's own (non-GEMM) kernel for one product, offered beside the GEMM plans: its plan
/// tile ([`DIRECT`] or [`WINOGRAD`]) and what records it.
pub(crate) type Special<'a> = (usize, &'a dyn Fn() -> Result<()>);

/// The product a plan is for. `z` > 0 fixes the workgroup layers (e.g. the parity classes of
/// the strided grad-input), 0 lets the planner split K over them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub z: usize,
}

impl GemmShape {
    fn can_split(&self) -> bool {
        self.z == 0
    }

    fn tiles(&self, tile: usize) -> usize {
        let t = &TILES[tile];
        self.m.div_ceil(t.rows) * self.n.div_ceil(t.cols)
    }

    /// The fixed plan for software (CPU) drivers: the 64-thread tiles by M, split-K only for
    /// long reductions into few tiles.
    fn cpu_default(&self) -> Plan {
        let tile = match self.m {
            0..=16 => 0,
            17..=32 => 1,
            _ => 2,
        };
        let tiles = self.tiles(tile);
        let splits = if !self.can_split() || tiles >= 64 || self.k < 1024 {
            1
        } else {
            (128 / tiles).clamp(1, self.k / 256).max(1)
        };
        Plan { tile, splits }
    }

    /// The fixed plan for GPUs (`--tune off`): what the tuner chose most often on an H200 — the
    /// direct kernel for 16-channel 3x3 convolutions, else the 256-thread register tile whose rows
    /// fit M (128x128 only for products with at least 256 such tiles) — with K split until about
    /// `GPU_TARGET_GROUPS` workgroups run (chunks of at least 128).
    /// On an adapter whose workgroup memory (`storage_max`) holds less than a tile's shared
    /// tiles (the 16x256 and 128x128 ones need a little more than WebGPU's guaranteed 16 KiB),
    /// the next tile that fits: 32x128 for M up to 32, else 64x64.
    fn gpu_default(&self, direct: bool, storage_max: u32) -> Plan {
        if direct && self.m == 16 {
            return Plan { tile: DIRECT, splits: 1 };
        }
        let preferred = match self.m {
            0..=16 => 4,
            17..=32 => 6,
            33..=64 => 7,
            _ if self.tiles(9) >= 256 => 9,
            _ => 7,
        };
        let tile = if TILES[preferred].fits_workgroup(storage_max) {
            preferred
        } else if self.m <= 32 {
            6
        } else {
            7
        };
        Plan { tile, splits: self.gpu_splits(tile) }
    }

    fn gpu_splits(&self, tile: usize) -> usize {
        let tiles = self.tiles(tile);
        if !self.can_split() || tiles >= GPU_TARGET_GROUPS / 2 || self.k < 512 {
            return 1;
        }
        (GPU_TARGET_GROUPS / tiles).clamp(1, self.k / 128)
    }

    /// The plans the tuner times on a GPU: register tiles no taller than M needs that fit the
    /// adapter's workgroup memory (`storage_max`; at most the four tallest, and always the fixed
    /// default's) and the cooperative-matrix tiles this product can run on (`coop`), each with
    /// its default split, a quarter of it and four times it; and the family's own kernels
    /// (`specials`: plan tiles past the GEMM ones) for this product.
    fn candidates(&self, specials: &[usize], coop: &[usize], storage_max: u32) -> Vec<Plan> {
        let tallest = self.m.next_power_of_two().max(16);
        let fits = |i: usize| TILES[i].gpu && TILES[i].rows <= tallest && TILES[i].fits_workgroup(storage_max);
        let mut tiles: Vec<usize> = (0..TILES.len()).filter(|&i| fits(i)).collect();
        tiles.sort_by_key(|&i| std::cmp::Reverse(TILES[i].rows));
        tiles.truncate(4);
        // (where the tiles M needs do not fit, the default is a taller one)
        let default = self.gpu_default(false, storage_max).tile;
        if !tiles.contains(&default) {
            tiles.push(default);
        }
        tiles.extend(coop);
        let mut plans = Vec::new();
        for tile in tiles {
            let s = self.gpu_splits(tile);
            let options =
                if self.can_split() { vec![s, (s / 4).max(1), (s * 4).min(self.k / 64).max(1)] } else { vec![1] };
            for splits in options {
                let plan = Plan { tile, splits };
                if !plans.contains(&plan) {
                    plans.push(plan);
                }
            }
        }
        plans.extend(specials.iter().map(|&tile| Plan { tile, splits: 1 }));
        plans
    }
}

/// Workgroups a GPU plan aims for: a few per streaming multiprocessor of a large GPU (the
/// H200 has 132), so that small layers still fill it.
const GPU_TARGET_GROUPS: usize = 1024;

thread_local! {
    static FORCED_PLAN: std::cell::Cell<Option<Plan>> = const { std::cell::Cell::new(None) };
    /// The plans this thread's products ran with, while [`plans_used`] records them.
    static PLAN_LOG: std::cell::RefCell<Option<Vec<(&'static str, Plan)>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` and returns, beside its result, the plan every GEMM-based product it recorded on
/// this thread ran with, by kernel family (e.g. `conv2d.forward`): how tests tell that a forced
/// kernel ran rather than the default a product without it falls back to.
pub fn plans_used<R>(f: impl FnOnce() -> R) -> (R, Vec<(&'static str, Plan)>) {
    let old = PLAN_LOG.with(|l| l.replace(Some(Vec::new())));
    let out = f();
    let log = PLAN_LOG.with(|l| l.replace(old)).unwrap_or_default();
    (out, log)
}

/// Runs `f` with every GEMM-based kernel this thread records using tile `tile` (an index into
/// [`TILES`], or [`DIRECT`] / [`WINOGRAD`]: that kernel where the product has it, else the default
/// plan) and `splits` K-splits where the kernel allows splitting: how tests reach every
/// configuration the planner or the tuner can choose.
pub fn with_plan<R>(tile: usize, splits: usize, f: impl FnOnce() -> R) -> R {
    assert!(tile <= WINOGRAD && splits > 0, "no tile {tile} or zero splits");
    let old = FORCED_PLAN.with(|c| c.replace(Some(Plan { tile, splits })));
    let out = f();
    FORCED_PLAN.with(|c| c.set(old));
    out
}

/// Records one product of a GEMM-based kernel family: chooses the plan (forced, tuned or the
/// device type's default) and dispatches `kernels[plan.tile]` with `bufs` then `out` bound,
/// through split-K partials and a reduction when the plan splits, or runs one of `specials` (the
/// family's own kernels that can compute this product). `make(chunk)` builds the uniform block
/// for a K-chunk of `chunk` (K itself when unsplit).
pub(crate) fn run_gemm(
    kernels: &GemmKernels,
    make: impl Fn(usize) -> Vec<u8>,
    bufs: &[&Tensor],
    out: &Tensor,
    shape: GemmShape,
    specials: &[Special],
) -> Result<()> {
    let gpu = crate::gpu::get()?;
    let special = |tile: usize| specials.iter().find(|(t, _)| *t == tile).map(|(_, run)| run);
    // f16 operands (mixed precision): the cooperative-matrix tiles' products, where they fit
    let f16 = bufs.iter().chain([&out]).any(|t| t.dtype() == crate::gpu::Dtype::F16);
    let a = &gpu.adapter;
    let coop_fits = |tile: usize| f16 && cooperative_fit(a, tile);
    // whether this product can run on a plan's tile: a special kernel it has, a cooperative
    // tile that fits, or an FMA tile whose shared tiles fit the adapter's workgroup memory
    let runnable = |tile: usize| {
        if tile >= TILES.len() {
            special(tile).is_some()
        } else if TILES[tile].coop != 0 {
            coop_fits(tile)
        } else {
            TILES[tile].fits_workgroup(a.max_workgroup_storage)
        }
    };
    let default = if a.is_cpu() {
        shape.cpu_default()
    } else {
        shape.gpu_default(special(DIRECT).is_some(), a.max_workgroup_storage)
    };
    let record = |plan: Plan| match special(plan.tile) {
        Some(run) => run(),
        // (a plan this product cannot run, forced or cached: the default, never special then)
        None if !runnable(plan.tile) => record_gemm(&kernels[default.tile], &make, bufs, out, shape, default),
        None => record_gemm(&kernels[plan.tile], &make, bufs, out, shape, plan),
    };
    let family = kernels[0].label.rsplit_once('.').map_or(kernels[0].label, |(f, _)| f);
    let plan = match FORCED_PLAN.with(|c| c.get()) {
        Some(plan) if !runnable(plan.tile) => default,
        Some(plan) => Plan { splits: if shape.can_split() { plan.splits.min(shape.k).max(1) } else { 1 }, ..plan },
        None => {
            // The key fixes the default and the candidates (as `choose` needs): same family and
            // sizes, which of the family's own kernels and which cooperative tiles are among
            // them, and f16 operands (a product of their own: other loads, other speed).
            let layers = if shape.z > 1 { format!(" z{}", shape.z) } else { String::new() };
            // (an iterator: the key is built on every product of a step, the list only to tune)
            let coop = || (0..TILES.len()).filter(|&t| coop_fits(t));
            // (the direct kernel keeps the mark it had before there were others)
            let mark = |tile: usize| if tile == DIRECT { "direct" } else { tile_name(tile) };
            let marks: String =
                specials.iter().map(|&(tile, _)| tile).chain(coop()).map(|tile| format!(" +{}", mark(tile))).collect();
            let f16_mark = if f16 { " f16" } else { "" };
            let key = format!("{family} {}x{}x{}{layers}{marks}{f16_mark}", shape.m, shape.n, shape.k);
            let tiles = || specials.iter().map(|&(tile, _)| tile).collect::<Vec<_>>();
            // f32: plans differ by their summation order only (~1e-6 of the largest value);
            // f16 outputs round to 2^-11, and the cooperative tiles also round f32 weights to
            // f16 (relative error within 2^-11 times the sum of |products|, a few times the
            // result on realistic layers). A kernel that is wrong is off by the whole value.
            let check = crate::tune::ResultCheck {
                read: &|| out.to_vec(),
                write: &|v| out.write(v),
                tolerance: if f16 { 1e-2 } else { 1e-3 },
            };
            crate::tune::choose(
                &key,
                default,
                || shape.candidates(&tiles(), &coop().collect::<Vec<_>>(), a.max_workgroup_storage),
                record,
                check,
            )?
        }
    };
    PLAN_LOG.with(|l| l.borrow_mut().as_mut().map(|log| log.push((family, plan))));
    record(plan)
}

/// Whether the adapter can run cooperative tile `tile` (its engine also needs subgroups: it
/// hands blocks out by `subgroup_id`).
fn cooperative_fit(a: &crate::gpu::AdapterSummary, tile: usize) -> bool {
    a.subgroups && TILES[tile].cooperative_fits(&a.cooperative_f16_sizes, a.subgroup_max_size, a.max_workgroup_storage)
}

/// The cooperative-matrix tiles this adapter can run mixed precision's f16 products on (none
/// where it offers no matrices that fit them).
pub fn cooperative_tiles() -> Result<Vec<usize>> {
    let a = &crate::gpu::get()?.adapter;
    Ok((0..TILES.len()).filter(|&t| cooperative_fit(a, t)).collect())
}

fn record_gemm(
    kernel: &Kernel,
    make: &impl Fn(usize) -> Vec<u8>,
    bufs: &[&Tensor],
    out: &Tensor,
    shape: GemmShape,
    plan: Plan,
) -> Result<()> {
    let gpu = crate::gpu::get()?;
    let t = &TILES[plan.tile];
    let groups = |z: usize| [shape.n.div_ceil(t.cols) as u32, shape.m.div_ceil(t.rows) as u32, z.max(1) as u32];
    let mut views: Vec<_> = bufs.iter().map(|t| t.view()).collect();
    if !shape.can_split() || plan.splits <= 1 {
        views.push(out.view());
        return gpu.dispatch(kernel, &make(shape.k), &views, groups(shape.z));
    }
    let chunk = shape.k.div_ceil(plan.splits).div_ceil(16) * 16;
    let splits = shape.k.div_ceil(chunk).max(1);
    if splits == 1 {
        views.push(out.view());
        return gpu.dispatch(kernel, &make(shape.k), &views, groups(1));
    }
    let parts = Tensor::uninit(&[splits, shape.m * shape.n])?;
    views.push(parts.view());
    gpu.dispatch(kernel, &make(chunk), &views, groups(splits))?;
    super::reduce::sum_splits(&parts, splits, out)
}

pub(super) static GEMM: GemmKernels = gemm_kernels!("matmul.gemm", "matmul.wgsl", None);

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
    // an activation operand (f16 under mixed precision) makes an activation
    let out = Tensor::uninit_as(product_dtype(a, b), &[m, n])?;
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
/// The storage type of a product of `a` and `b`: f16 when either is (an activation under mixed
/// precision), else f32.
fn product_dtype(a: &Tensor, b: &Tensor) -> crate::gpu::Dtype {
    use crate::gpu::Dtype;
    if a.dtype() == Dtype::F16 || b.dtype() == Dtype::F16 {
        Dtype::F16
    } else {
        Dtype::F32
    }
}

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
    // Split-K partials are contiguous [m, n]: only a contiguous C can take them.
    let z = if o.c_ld == n { 0 } else { 1 };
    run_gemm(&GEMM, make, &bufs, o.c, GemmShape { m, n, k, z }, &[])
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
        // dA = dC B^T, dB = A^T dC, each in its operand's type (an f32 weight beside an f16
        // activation gets an f32 gradient)
        let da = Tensor::uninit_as(self.a.dtype(), &[m, k])?;
        gemm_strided(
            Operands { a: g, a_strides: [n, 1], b: &self.b, b_strides: [1, n], bias: None, c: &da, c_ld: k },
            m,
            n,
            k,
        )?;
        let db = Tensor::uninit_as(self.b.dtype(), &[k, n])?;
        gemm_strided(
            Operands { a: &self.a, a_strides: [1, k], b: g, b_strides: [n, 1], bias: None, c: &db, c_ld: n },
            k,
            m,
            n,
        )?;
        Ok(vec![Some(da), Some(db)])
    }
}

/// `x[n, in] W^T + b` with `W` stored `[out, in]` as in PyTorch (differentiable). A weight
/// larger than one storage binding of the device (AlexNet's fc6 on drivers with a 128 MiB
/// limit) is used in row blocks that each fit.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let rows = weight_block_rows(weight, x.dtype())?;
    linear_impl(x, weight, bias, rows)
}

/// [`linear`] with the weight used `rows_per_block` rows at a time (a multiple of the device's
/// storage alignment in elements of `x`'s type, [`row_block_granularity_for`]): what `linear` does for weights
/// beyond the binding limit, callable at any size so it can be tested.
pub fn linear_in_row_blocks(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    rows_per_block: usize,
) -> Result<Tensor> {
    let unit = row_block_granularity_for(x.dtype())?;
    if rows_per_block == 0 || !rows_per_block.is_multiple_of(unit) {
        return Err(Error::invalid(format!("rows per weight block must be a positive multiple of {unit}")));
    }
    linear_impl(x, weight, bias, Some(rows_per_block))
}

/// Row blocks must start at aligned offsets of the weight, bias and output columns: a multiple
/// of the storage alignment in f32 elements (see [`row_block_granularity_for`]).
pub fn row_block_granularity() -> Result<usize> {
    row_block_granularity_for(crate::gpu::Dtype::F32)
}

/// Rows per block granule when the activations (the output columns) are `dtype`: the storage
/// alignment in its elements (twice as many rows for f16, which keeps the f32 weight blocks
/// aligned as well).
pub fn row_block_granularity_for(dtype: crate::gpu::Dtype) -> Result<usize> {
    Ok((crate::gpu::get()?.storage_alignment() / dtype.bytes()).max(1) as usize)
}

/// Rows per block when `weight` [out, in] exceeds one storage binding, else None; the blocks
/// start at rows aligned for activations of `dtype`.
fn weight_block_rows(weight: &Tensor, dtype: crate::gpu::Dtype) -> Result<Option<usize>> {
    let limit = super::binding_limit()? as usize;
    if weight.numel() * 4 <= limit || weight.shape().len() != 2 {
        return Ok(None);
    }
    let unit = row_block_granularity_for(dtype)?;
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
            let y = Tensor::uninit_as(x.dtype(), &[n, out_f])?;
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
        self.backward_into(g, &[])
    }

    /// The weight's and the bias's gradients go straight into their places when given.
    fn backward_into(&self, g: &Tensor, places: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
        let (n, in_f, out_f) = (self.x.shape()[0], self.x.shape()[1], self.weight.shape()[0]);
        let dw = place_or_new(grad_place(places, 1), &[out_f, in_f])?;
        // dW[rows] = dy[:, rows]^T x, for `rows` output features from dy's first column on
        let grad_weight_rows = |dy: &Tensor, dw_rows: &Tensor, rows: usize| {
            let o = Operands {
                a: dy,
                a_strides: [1, out_f],
                b: &self.x,
                b_strides: [in_f, 1],
                bias: None,
                c: dw_rows,
                c_ld: in_f,
            };
            gemm_strided(o, rows, n, in_f)
        };
        let dx = match self.rows {
            None => {
                grad_weight_rows(g, &dw, out_f)?;
                gemm(g, &self.weight, None, n, out_f, in_f, false, false)? // dy W
            }
            Some(rows) => {
                // dx = sum over blocks of dy[:, blk] W[blk]; dW[blk] = dy[:, blk]^T x. The sum is
                // kept in f32 and stored in dy's type at the end (f16 partial sums would lose the
                // low bits of what cancels between blocks).
                let dx = Tensor::uninit(&[n, in_f])?;
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
                    grad_weight_rows(&dy_blk, &flat_view(&dw, r0 * in_f, r * in_f)?, r)?;
                }
                if g.dtype() == dx.dtype() {
                    dx
                } else {
                    super::elementwise::cast(&dx, g.dtype())?
                }
            }
        };
        let mut grads = vec![Some(dx), Some(dw)];
        if self.has_bias {
            grads.push(Some(super::reduce::channel_sum_into(g, n, out_f, 1, grad_place(places, 2))?));
        }
        Ok(grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(m: usize, n: usize, k: usize, z: usize) -> GemmShape {
        GemmShape { m, n, k, z }
    }

    #[test]
    fn gpu_defaults_follow_m_and_are_among_the_tuner_candidates() {
        // an adapter's workgroup memory that holds every FMA tile (NVIDIA's 48 KiB)
        const BIG: u32 = 49152;
        // WebGPU's guaranteed workgroup memory
        const WEBGPU: u32 = 16384;
        let name = |p: Plan| tile_name(p.tile);
        assert_eq!(name(shape(16, 131072, 144, 1).gpu_default(true, BIG)), DIRECT_NAME);
        assert_eq!(name(shape(16, 131072, 144, 1).gpu_default(false, BIG)), "g16s");
        assert_eq!(name(shape(32, 32768, 288, 1).gpu_default(true, BIG)), "g32s");
        assert_eq!(name(shape(64, 8192, 576, 1).gpu_default(false, BIG)), "g64");
        assert_eq!(name(shape(4096, 4096, 4096, 0).gpu_default(false, BIG)), "g128");
        assert_eq!(name(shape(192, 2704, 1600, 0).gpu_default(false, BIG)), "g64");
        for s in [shape(3, 500, 27, 1), shape(16, 9, 9000, 0), shape(33, 70, 130, 0), shape(100, 4096, 64, 1)] {
            let coop: Vec<usize> = (0..TILES.len()).filter(|&t| TILES[t].coop > 0).collect();
            let cases: [(&[usize], u32); 7] = [
                (&[], BIG),
                (&[DIRECT], BIG),
                (&[DIRECT, WINOGRAD], BIG),
                (&[WINOGRAD], BIG),
                (&[], WEBGPU),
                (&[WINOGRAD], WEBGPU),
                (&[DIRECT], WEBGPU),
            ];
            for (specials, storage) in cases {
                let d = s.gpu_default(specials.contains(&DIRECT), storage);
                let c = s.candidates(specials, &coop, storage);
                let fma = c.iter().filter(|p| p.tile < TILES.len() && TILES[p.tile].coop == 0);
                assert!(fma.clone().count() > 0, "{s:?}: no FMA tile among {c:?}");
                assert!(fma.clone().all(|p| TILES[p.tile].fits_workgroup(storage)), "{s:?}: {c:?}");
                assert!(c.contains(&d), "{s:?}: default {d:?} not among {c:?}");
                assert!(specials.iter().all(|&t| c.contains(&Plan { tile: t, splits: 1 })), "{c:?}");
                assert!(coop.iter().all(|&t| c.iter().any(|p| p.tile == t)), "{c:?}");
                // no cooperative tile unless the product can run on one
                assert!(s
                    .candidates(specials, &[], storage)
                    .iter()
                    .all(|p| p.tile >= TILES.len() || TILES[p.tile].coop == 0));
                assert!(c.iter().all(|p| p.splits >= 1 && (p.splits == 1 || s.can_split())), "{c:?}");
            }
        }
        // Split-K: a long reduction into one tile is split up to k/128 ways; an unsplittable
        // product (fixed layers) never is.
        let gw = shape(16, 144, 131072, 0);
        assert_eq!(gw.gpu_default(false, BIG).splits, 1024);
        assert_eq!(shape(16, 144, 131072, 1).gpu_default(false, BIG).splits, 1);
        // A cooperative tile needs its matrix size, enough subgroups for its blocks (4 each)
        // and its shared tiles' bytes: c16h (64x64, 256 threads) holds 16 blocks of 16x16 in
        // subgroups of up to 64 threads and 27,136 bytes; c8h (32x64) 32 blocks of 8x8 in
        // subgroups of up to 32 threads and 15,872 bytes.
        let (c8, c16) = (&TILES[tile_index("c8h").unwrap()], &TILES[tile_index("c16h").unwrap()]);
        assert!(c16.cooperative_fits(&[16], 32, 49152) && c16.cooperative_fits(&[8, 16], 64, 27136));
        assert!(!c16.cooperative_fits(&[8], 32, 49152), "no 16x16 matrices");
        assert!(!c16.cooperative_fits(&[16], 128, 49152), "two subgroups of 128 hold 8 of its 16 blocks");
        assert!(!c16.cooperative_fits(&[16], 32, 27135), "its tiles do not fit");
        assert!(c8.cooperative_fits(&[8], 8, 16384) && c8.cooperative_fits(&[8], 32, 15872));
        assert!(!c8.cooperative_fits(&[8], 8, 15871), "its tiles do not fit");
        assert!(!c8.cooperative_fits(&[8], 64, 65536) && !c8.cooperative_fits(&[16], 8, 65536));
        // With fewer threads each subgroup holds up to 4 blocks: c16q (64x64, 128 threads) fits
        // 32-thread subgroups (NVIDIA's), not 64-thread ones; c8q (32x64, 64 threads) 8-thread
        // ones (lavapipe's), not 16; the narrow c16n (16x128, 128 threads, 8 blocks) both, in
        // 18,432 bytes; c8n (8x128, 64 threads, 16 blocks) up to 16 in 13,568.
        let tile = |name: &str| &TILES[tile_index(name).unwrap()];
        assert!(tile("c16q").cooperative_fits(&[16], 32, 27136) && !tile("c16q").cooperative_fits(&[16], 64, 65536));
        assert!(tile("c8q").cooperative_fits(&[8], 8, 15872) && !tile("c8q").cooperative_fits(&[8], 16, 65536));
        assert!(tile("c16n").cooperative_fits(&[16], 64, 18432) && tile("c16n").cooperative_fits(&[16], 32, 18432));
        assert!(!tile("c16n").cooperative_fits(&[16], 32, 18431));
        assert!(tile("c8n").cooperative_fits(&[8], 16, 13568) && !tile("c8n").cooperative_fits(&[8], 32, 65536));
        // c8s (32x32, 256 threads, 16 blocks) fits subgroups of up to 64 threads, the size wgpu
        // reports for Apple GPUs, in 9,728 bytes.
        assert!(tile("c8s").cooperative_fits(&[8], 64, 9728) && !tile("c8s").cooperative_fits(&[8], 64, 9727));
        assert!(!TILES[7].cooperative_fits(&[8, 16], 8, 65536), "g64 is no cooperative tile");
        // Where a workgroup gets only WebGPU's guaranteed 16 KiB, the 16x256 tiles (17,664
        // bytes: a vec4 A tile of 16 x (16/4 + 1) and a B tile of 16 x 256/4) and the 128x128
        // one (16,640) give way to the next that fits; the 64-thread tiles all fit.
        let bytes = |name: &str| TILES[tile_index(name).unwrap()].workgroup_bytes();
        assert_eq!(
            [bytes("g16"), bytes("g16s"), bytes("g128"), bytes("g32s"), bytes("g64"), bytes("g64w")],
            [17664, 17664, 16640, 10496, 8448, 12544]
        );
        assert_eq!(
            [bytes("wide16"), bytes("rm4"), bytes("rm8"), bytes("c16h"), bytes("c8h")],
            [2048, 12288, 16384, 27136, 15872]
        );
        assert_eq!(name(shape(4096, 4096, 4096, 0).gpu_default(false, WEBGPU)), "g64");
        assert_eq!(name(shape(16, 131072, 144, 1).gpu_default(false, WEBGPU)), "g32s");
        assert_eq!(name(shape(16, 131072, 144, 1).gpu_default(true, WEBGPU)), DIRECT_NAME);
        assert_eq!(name(shape(64, 8192, 576, 1).gpu_default(false, WEBGPU)), "g64");
        // CPU drivers keep the 64-thread tiles.
        assert_eq!(name(shape(16, 131072, 144, 1).cpu_default()), "wide16");
        assert_eq!(name(shape(64, 8192, 576, 1).cpu_default()), "rm8");
    }
}
