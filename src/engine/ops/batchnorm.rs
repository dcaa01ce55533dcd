//! Batch normalization 2-D, training and eval mode, forward and backward, optionally fused with
//! the ReLU that follows it, or with a ResNet block's residual add and ReLU
//! (shaders/batchnorm.wgsl).

use super::{grad_place, groups_4x, kernel, launch, place_or_new, same_dtype, same_shape, summing, summing_kernel};
use crate::gpu::Kernel;
use crate::tensor::{needs_node, Backward, Node};
use crate::{Error, Result, Tensor};

static STATS_PARTIAL: [Kernel; 2] = summing_kernel!("batchnorm.stats_partial", "batchnorm.wgsl", "stats_partial");
static STATS_FINALIZE: [Kernel; 2] = summing_kernel!("batchnorm.stats_finalize", "batchnorm.wgsl", "stats_finalize");
static NORMALIZE: [Kernel; 2] = summing_kernel!("batchnorm.normalize", "batchnorm.wgsl", "normalize");
static EVAL_AFFINE: Kernel = kernel!("batchnorm.eval_affine", "batchnorm.wgsl", "eval_affine");
static NORMALIZE_EVAL: Kernel = kernel!("batchnorm.normalize_eval", "batchnorm.wgsl", "normalize_eval");
static BACKWARD_PARTIAL: [Kernel; 2] =
    summing_kernel!("batchnorm.backward_partial", "batchnorm.wgsl", "backward_partial");
static BACKWARD_PARTIAL_MASKED: [Kernel; 2] =
    summing_kernel!("batchnorm.backward_partial_masked", "batchnorm.wgsl", "backward_partial_masked");
static BACKWARD_FINALIZE: [Kernel; 2] =
    summing_kernel!("batchnorm.backward_finalize", "batchnorm.wgsl", "backward_finalize");
static BACKWARD_INPUT: [Kernel; 2] = summing_kernel!("batchnorm.backward_input", "batchnorm.wgsl", "backward_input");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    hw: u32,
    update_running: u32,
    eps: f32,
    momentum: f32,
    eval_mode: u32,
    relu: u32,
    /// Chunks per channel of the two-level reductions, and images per chunk.
    chunks: u32,
    ipc: u32,
    /// normalize, normalize_eval: add the residual binding before the ReLU.
    residual: u32,
    /// The output (y, the same type as x) is f16: fused kernels round as its store would.
    out_f16: u32,
    /// normalize, backward_input: combine the chunks' partial sums in each workgroup rather
    /// than read what a finalize kernel stored.
    finalize: u32,
    _pad: [u32; 3],
}

impl Params {
    /// The sizes of `x` [n, c, ...] and the settings of `cfg`; no running-statistics update, no
    /// reduction chunks, no residual.
    fn new(x: &Tensor, cfg: BatchNormConfig) -> Params {
        let (n, c) = (x.shape()[0], x.shape()[1]);
        Params {
            n: n as u32,
            c: c as u32,
            hw: (x.numel() / (n * c)) as u32,
            update_running: 0,
            eps: cfg.eps,
            momentum: cfg.momentum,
            eval_mode: (!cfg.training) as u32,
            relu: cfg.relu as u32,
            chunks: 0,
            ipc: 0,
            residual: 0,
            out_f16: (x.dtype() == crate::gpu::Dtype::F16) as u32,
            finalize: 0,
            _pad: [0; 3],
        }
    }
}

/// Elements per chunk the per-channel reductions aim for: enough work per workgroup to hide
/// its start, enough chunks that a large GPU gets hundreds of workgroups.
const CHUNK_ELEMENTS: usize = 2048;

/// Settings of a batch-norm layer (PyTorch defaults: eps 1e-5, momentum 0.1).
#[derive(Clone, Copy, Debug)]
pub struct BatchNormConfig {
    pub eps: f32,
    pub momentum: f32,
    /// Batch statistics (and running-statistics update) when true; running statistics when false.
    pub training: bool,
    /// Apply ReLU to the output in the same kernel (`max(bn(x), 0)`); backward masks the
    /// gradient where the output is zero, recomputed from x, so the pre-activation is never
    /// stored and the output never read back.
    pub relu: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig { eps: 1e-5, momentum: 0.1, training: true, relu: false }
    }
}

/// Batch norm over `x` [n, c, h, w] (or [n, c]) with per-channel `gamma`, `beta` and running
/// statistics (updated in place in training mode). Differentiable in x, gamma and beta. The
/// running statistics are written beside reads of x, gamma and beta in one kernel, so they
/// must not be views of the same buffer as those (a model's store keeps them apart).
pub fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    cfg: BatchNormConfig,
) -> Result<Tensor> {
    check_shapes(x, [gamma, beta, running_mean, running_var])?;
    if !cfg.training && !needs_node(&[x, gamma, beta]) {
        // Evaluation without a graph: one kernel from the running statistics.
        return normalize_eval(x, [gamma, beta, running_mean, running_var], None, cfg);
    }
    let (y, backward) = normalize(x, [gamma, beta, running_mean, running_var], None, cfg)?;
    let node = needs_node(&[x, gamma, beta])
        .then(|| Node { backward: Box::new(backward), inputs: vec![x.edge(), gamma.edge(), beta.edge()] });
    Ok(y.with_node(node))
}

/// Batch norm with a graph or in training: the statistics (of the batch, or the running ones),
/// then one normalize pass, plus `residual` when given; with what its backward needs.
fn normalize(
    x: &Tensor,
    params: [&Tensor; 4],
    residual: Option<&Tensor>,
    cfg: BatchNormConfig,
) -> Result<(Tensor, BatchNormBackward)> {
    let [gamma, beta, running_mean, running_var] = params;
    let s = x.shape();
    let (n, c) = (s[0], s[1]);
    let hw = x.numel() / (n * c);
    if cfg.training && n * hw < 2 {
        return Err(Error::shape(
            "batch_norm",
            format!("training mode needs more than one value per channel, got input {s:?}"),
        ));
    }
    let ipc = CHUNK_ELEMENTS.div_ceil(hw).clamp(1, n);
    let chunks = n.div_ceil(ipc);
    // (folded only while each thread combines at most one chunk: past that the workgroups'
    // repeated reads of the partials grow with chunks² and a finalize launch costs less)
    let finalize = (folded_finalize()? && chunks <= super::WG) as u32;
    let p = Params { update_running: 1, ipc: ipc as u32, chunks: chunks as u32, finalize, ..Params::new(x, cfg) };
    // The forward pass adds the residual, and combines the chunks only in training (in
    // evaluation eval_affine prepares the statistics); the backward's p never adds.
    let p_out = Params { residual: residual.is_some() as u32, finalize: finalize * cfg.training as u32, ..p };
    // [2c + 2c·chunks]: per channel the mean and 1/sqrt(var + eps), of the batch in training,
    // else of the running statistics (the first half of eval_affine's [4c], whose copy of gamma
    // and beta the backward's partial sums then overwrite, unread); then the partial sums of
    // the forward's and backward's reductions.
    let stats = Tensor::uninit(&[2 * c * (1 + chunks)])?;
    let grid = [p.chunks, c as u32, 1];
    if cfg.training {
        launch(summing(&STATS_PARTIAL)?, &p, &[x, &stats], grid)?;
        if p.finalize == 0 {
            launch(summing(&STATS_FINALIZE)?, &p, &[&stats, running_mean, running_var], [c as u32, 1, 1])?;
        }
    } else {
        eval_affine_into(&stats, [gamma, beta, running_mean, running_var], cfg.eps)?;
    }
    let y = Tensor::uninit_as(x.dtype(), s)?;
    // (without a residual, x stands in for its binding, unread)
    let bufs = [x, &stats, gamma, beta, residual.unwrap_or(x), &y, running_mean, running_var];
    launch(summing(&NORMALIZE)?, &p_out, &bufs, grid)?;
    Ok((y, BatchNormBackward { x: x.detach(), gamma: gamma.detach(), beta: beta.detach(), stats, p }))
}

thread_local! {
    static FORCED_FOLDED_FINALIZE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with batch norm's per-channel sums combined over the chunks in every workgroup of
/// normalize and backward_input (`true`: a launch fewer each way, wherever a channel has at
/// most 256 chunks, one per thread; more take the finalize kernels) or by their own finalize
/// kernels, one workgroup per channel (`false`); the same bits either way where the compiler
/// treats their shared code alike (shaders/batchnorm.wgsl). How tests and the
/// bench compare the two on one device; otherwise [`folded_finalize`] decides.
pub fn with_folded_finalize<R>(on: bool, f: impl FnOnce() -> R) -> R {
    super::with_override(&FORCED_FOLDED_FINALIZE, on, f)
}

/// Whether batch norm launched now combines its sums where they are used: by default on GPUs,
/// where a launch (with the wait for the one before) costs more than every workgroup reading
/// the channel's few chunk partials from cache; not on software drivers, where llvmpipe ran the
/// b500 16x32x32 forward ~1.6x slower so (4,000 workgroups each combining 250 chunks).
/// `SASPRUNE_BN_FINALIZE=folded|separate` overrides the default (to compare whole steps).
pub fn folded_finalize() -> Result<bool> {
    if let Some(forced) = FORCED_FOLDED_FINALIZE.with(|c| c.get()) {
        return Ok(forced);
    }
    // (read once: the per-step path neither allocates nor locks the environment for it)
    static FROM_ENV: std::sync::OnceLock<std::result::Result<Option<bool>, String>> = std::sync::OnceLock::new();
    let from_env = FROM_ENV.get_or_init(|| {
        match std::env::var("SASPRUNE_BN_FINALIZE").unwrap_or_default().trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "folded" => Ok(Some(true)),
            "separate" => Ok(Some(false)),
            other => Err(format!(
                "SASPRUNE_BN_FINALIZE={other} is not understood: use folded (the default on GPUs) or separate (on \
                 software drivers)"
            )),
        }
    });
    match from_env {
        Ok(Some(folded)) => Ok(*folded),
        Ok(None) => Ok(!crate::gpu::get()?.adapter.is_cpu()),
        Err(message) => Err(Error::invalid(message.clone())),
    }
}

/// `max(batch_norm(x) + residual, 0)`: the end of a ResNet block, in one normalize pass (one read
/// of x and of the residual, one write). In training or with a graph, after the statistics,
/// with the bits of batch norm followed by [`elementwise::add_relu`](super::elementwise::add_relu),
/// differentiable in x, residual, gamma and beta; in evaluation without a graph, one kernel from
/// the running statistics that adds the residual to the unrounded value (as the convolutions'
/// fused output does, conv2d.wgsl `store_out`).
pub fn batch_norm_add_relu(
    x: &Tensor,
    residual: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    cfg: BatchNormConfig,
) -> Result<Tensor> {
    check_shapes(x, [gamma, beta, running_mean, running_var])?;
    same_shape("batch_norm_add_relu", x, residual)?;
    same_dtype("batch_norm_add_relu", x, residual)?;
    let params = [gamma, beta, running_mean, running_var];
    let cfg = BatchNormConfig { relu: true, ..cfg };
    if !cfg.training && !needs_node(&[x, residual, gamma, beta]) {
        return normalize_eval(x, params, Some(residual), cfg);
    }
    // The ReLU comes after the residual: the batch norm's own backward runs unfused, on the
    // gradient the ReLU lets through.
    let (out, bn) = normalize(x, params, Some(residual), cfg)?;
    let bn = BatchNormBackward { p: Params { relu: 0, ..bn.p }, ..bn };
    let node = needs_node(&[x, gamma, beta, residual]).then(|| Node {
        backward: Box::new(BatchNormAddReluBackward { bn, out: out.detach() }),
        inputs: vec![x.edge(), gamma.edge(), beta.edge(), residual.edge()],
    });
    Ok(out.with_node(node))
}

/// One-kernel evaluation-mode batch norm (+ residual, + ReLU per `cfg.relu`), no graph.
fn normalize_eval(x: &Tensor, params: [&Tensor; 4], residual: Option<&Tensor>, cfg: BatchNormConfig) -> Result<Tensor> {
    let p = Params { residual: residual.is_some() as u32, ..Params::new(x, cfg) };
    let y = Tensor::uninit_as(x.dtype(), x.shape())?;
    let [gamma, beta, mean, var] = params;
    launch(&NORMALIZE_EVAL, &p, &[x, gamma, beta, mean, var, residual.unwrap_or(x), &y], groups_4x(x.numel()))?;
    Ok(y)
}

/// Evaluation-mode batch norm as a convolution's epilogue applies it (conv2d::Epilogue): running
/// mean, 1/sqrt(running variance + eps), gamma and beta, `[4c]`, from the four `[c]` tensors (the
/// first half is also the statistics the normalize and backward kernels read).
pub fn eval_affine(
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let affine = Tensor::uninit(&[4 * gamma.numel()])?;
    eval_affine_into(&affine, [gamma, beta, running_mean, running_var], eps)?;
    Ok(affine)
}

/// [`eval_affine`] into the first `4c` elements of `affine`.
fn eval_affine_into(affine: &Tensor, params: [&Tensor; 4], eps: f32) -> Result<()> {
    let c = params[0].numel();
    check_params("batch norm in evaluation needs", Some(c), params)?;
    let p = Params { c: c as u32, eps, eval_mode: 1, ..bytemuck::Zeroable::zeroed() };
    let [gamma, beta, running_mean, running_var] = params;
    launch(&EVAL_AFFINE, &p, &[gamma, beta, running_mean, running_var, affine], [(c as u32).div_ceil(64), 1, 1])
}

/// Input [n, c, ...] with gamma, beta and running statistics of shape [c].
fn check_shapes(x: &Tensor, params: [&Tensor; 4]) -> Result<()> {
    let s = x.shape();
    check_params(&format!("input {s:?} needs [n, c, ...] with"), s.get(1).copied(), params)
}

/// Gamma, beta and running statistics of shape [c] (none fits without a c); `what` starts the
/// message.
fn check_params(what: &str, c: Option<usize>, params: [&Tensor; 4]) -> Result<()> {
    if params.iter().all(|t| c.is_some_and(|c| t.shape() == [c])) {
        return Ok(());
    }
    let [gamma, beta, running_mean, running_var] = params;
    Err(Error::shape(
        "batch_norm",
        format!(
            "{what} gamma, beta and running statistics of shape [c]; got {:?} {:?} {:?} {:?}",
            gamma.shape(),
            beta.shape(),
            running_mean.shape(),
            running_var.shape()
        ),
    ))
}

/// (Its backward passes use `stats`' tail for their partial sums: two of the same node must not
/// be recorded at once from two threads; one after the other is fine.)
struct BatchNormBackward {
    /// (with the ReLU fused, the kernels recompute the output's sign from x, gamma and beta)
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    /// [2c + 2c·chunks]: mean, then 1/sqrt(var + eps), then room for the partial sums.
    stats: Tensor,
    p: Params,
}
impl Backward for BatchNormBackward {
    fn backward(&self, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
        self.backward_into(dy, &[])
    }

    /// dgamma and dbeta go straight into their places when given.
    fn backward_into(&self, dy: &Tensor, places: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
        self.gradients(dy, None, places)
    }
}

impl BatchNormBackward {
    /// The gradients of x, gamma and beta for the upstream gradient `dy`. With `relu_out`, the
    /// output of a ReLU after batch norm and a residual add, dy is first masked where that
    /// output is not > 0, by the partial-sums kernel as it reads it, and the masked gradient
    /// (which the residual gets) comes fourth.
    fn gradients(
        &self,
        dy: &Tensor,
        relu_out: Option<&Tensor>,
        places: &[Option<Tensor>],
    ) -> Result<Vec<Option<Tensor>>> {
        let c = self.p.c as usize;
        let dgamma = place_or_new(grad_place(places, 1), &[c])?;
        let dbeta = place_or_new(grad_place(places, 2), &[c])?;
        let grid = [self.p.chunks, c as u32, 1];
        let bufs = [dy, &self.x, &self.stats, &self.gamma, &self.beta];
        let through = match relu_out {
            None => {
                launch(summing(&BACKWARD_PARTIAL)?, &self.p, &bufs, grid)?;
                None
            }
            Some(out) => {
                let through = Tensor::uninit_as(dy.dtype(), dy.shape())?;
                let [dy, x, stats, gamma, beta] = bufs;
                let bufs = [dy, x, stats, gamma, beta, out, &through];
                launch(summing(&BACKWARD_PARTIAL_MASKED)?, &self.p, &bufs, grid)?;
                Some(through)
            }
        };
        if self.p.finalize == 0 {
            launch(summing(&BACKWARD_FINALIZE)?, &self.p, &[&self.stats, &dgamma, &dbeta], [c as u32, 1, 1])?;
        }
        let dx = Tensor::uninit_as(dy.dtype(), self.x.shape())?;
        let g = through.as_ref().unwrap_or(dy);
        let bufs = [g, &self.x, &self.stats, &self.gamma, &self.beta, &dgamma, &dbeta, &dx];
        launch(summing(&BACKWARD_INPUT)?, &self.p, &bufs, grid)?;
        let mut grads = vec![Some(dx), Some(dgamma), Some(dbeta)];
        grads.extend(through.map(Some));
        Ok(grads)
    }
}

/// `max(batch_norm(x) + residual, 0)`'s backward: the gradient the ReLU lets through (masked by
/// the output) goes to the residual as it is and through batch norm's backward to x, gamma and
/// beta: the bits of the separate ops' backward, with the mask applied by batch norm's
/// partial-sums kernel (no separate relu_backward pass).
struct BatchNormAddReluBackward {
    bn: BatchNormBackward,
    out: Tensor,
}
impl Backward for BatchNormAddReluBackward {
    fn backward(&self, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
        self.backward_into(dy, &[])
    }

    fn backward_into(&self, dy: &Tensor, places: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
        same_shape("batch_norm_add_relu backward", dy, &self.out)?;
        self.bn.gradients(dy, Some(&self.out), places)
    }
}
