//! 2-D convolution: forward, grad-input and grad-weight as implicit GEMMs on the tiled engine,
//! grad-bias as a channel sum (shaders/conv2d.wgsl). 3x3 stride-1 forward and grad-input also
//! have a direct kernel and Winograd F(2x2, 3x3), which plans (the tuner) may choose instead.
//! In evaluation without a graph the forward output can apply the batch norm, residual and ReLU
//! that follow the convolution ([`Epilogue`]).

use super::batchnorm::{self, BatchNormConfig};
use super::matmul::{gemm_kernels, run_gemm, GemmKernels, GemmShape, Special, DIRECT, WINOGRAD};
use super::{expect_rank, grad_place, place_or_new, reduce};
use crate::gpu::Kernel;
use crate::tensor::{needs_node, Backward, Node};
use crate::{Error, Result, Tensor};

static FORWARD: GemmKernels = gemm_kernels!("conv2d.forward", "conv2d.wgsl", Some("forward"));
static GRAD_INPUT: GemmKernels = gemm_kernels!("conv2d.grad_input", "conv2d.wgsl", Some("grad_input"));
static GRAD_INPUT_STRIDED: GemmKernels =
    gemm_kernels!("conv2d.grad_input_strided", "conv2d.wgsl", Some("grad_input_strided"));
static DIRECT_3X3: Kernel = Kernel {
    label: "conv2d.direct3x3",
    prelude: &[],
    source: include_str!("../../../shaders/conv2d.wgsl"),
    section: Some("direct3x3"),
    entry: "direct3x3",
};
static WINOGRAD_WEIGHTS: Kernel = Kernel {
    label: "conv2d.winograd_weights",
    prelude: &[],
    source: include_str!("../../../shaders/conv2d.wgsl"),
    section: Some("winograd_weights"),
    entry: "winograd_weights",
};
static WINOGRAD_TILES: Kernel = Kernel {
    label: "conv2d.winograd",
    prelude: &[],
    source: include_str!("../../../shaders/conv2d.wgsl"),
    section: Some("winograd"),
    entry: "winograd",
};
static GRAD_WEIGHT: GemmKernels = gemm_kernels!("conv2d.grad_weight", "conv2d.wgsl", Some("grad_weight"));

/// Geometry of one convolution: input [n, c_in, h, w], weight [c_out, c_in, kh, kw].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeom {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    /// Multiply-adds of the forward pass (each backward kernel does as many).
    pub fn macs(&self) -> usize {
        self.n * self.c_out * self.out_h() * self.out_w() * self.c_in * self.kh * self.kw
    }

    /// The kernels' uniform block (see `Params` in conv2d.wgsl); `fuse` is the forward output's
    /// [`Epilogue::bits`].
    fn params(&self, gm: usize, gn: usize, gk: usize, chunk: usize, has_bias: bool, fuse: u32) -> Vec<u8> {
        let (khw, howo, hw) = (self.kh * self.kw, self.out_h() * self.out_w(), self.h * self.w);
        let ints = [
            self.n,
            self.c_in,
            self.h,
            self.w,
            self.c_out,
            self.kh,
            self.kw,
            self.stride,
            self.pad,
            self.out_h(),
            self.out_w(),
            has_bias as usize,
            gm,
            gn,
            gk,
            chunk,
            khw,
            howo,
            hw,
            fuse as usize,
        ];
        let rcp = |d: usize| 1.0 / d as f32;
        let floats =
            [rcp(self.kw), rcp(khw), rcp(self.out_w()), rcp(howo), rcp(self.w), rcp(hw), rcp(self.stride), 0.0];
        let mut bytes: Vec<u8> = ints.iter().flat_map(|&x| (x as u32).to_ne_bytes()).collect();
        bytes.extend(floats.iter().flat_map(|x| x.to_ne_bytes()));
        bytes
    }
}

fn geometry(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize) -> Result<ConvGeom> {
    expect_rank("conv2d", "input", x, 4)?;
    expect_rank("conv2d", "weight", w, 4)?;
    let (xs, ws) = (x.shape(), w.shape());
    let g = ConvGeom { n: xs[0], c_in: xs[1], h: xs[2], w: xs[3], c_out: ws[0], kh: ws[2], kw: ws[3], stride, pad };
    let fits = ws[1] == g.c_in && stride > 0 && g.h + 2 * pad >= g.kh && g.w + 2 * pad >= g.kw;
    if !fits || bias.is_some_and(|b| b.shape() != [g.c_out]) {
        return Err(Error::shape(
            "conv2d",
            format!(
                "input {xs:?}, weight {ws:?}, bias {:?}, stride {stride}, padding {pad}: the weight's second \
                 dimension must equal the input channels and the padded input must cover the kernel",
                bias.map(|b| b.shape())
            ),
        ));
    }
    Ok(g)
}

/// Whether the direct 3x3 kernel (conv2d.wgsl, `direct3x3`) can compute this convolution with
/// `m` output channels: 3x3, stride 1, padding 1, a width that is a multiple of 4 up to 128, and
/// 16 or 32 output channels (with more, the implicit GEMM has enough work per input pixel).
fn direct_fits(g: &ConvGeom, m: usize) -> bool {
    (g.kh, g.kw, g.stride, g.pad) == (3, 3, 1, 1) && g.w.is_multiple_of(4) && g.w <= 128 && (m == 16 || m == 32)
}

/// What a forward convolution's output applies after its bias (conv2d.wgsl, `store_out`), in
/// this order; the default applies nothing. Only in evaluation without a graph: the fused
/// output has no backward. (A grad-input output applies only a residual: the gradient its
/// input already has, [`conv2d_grad_input_adding`].)
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Batch norm from the running statistics, as [`batchnorm::eval_affine`] gives it: running
    /// mean, 1/sqrt(running var + eps), gamma and beta, [4 c_out].
    pub batch_norm: Option<&'a Tensor>,
    /// Added next: [n, c_out, ho, wo], like the output.
    pub residual: Option<&'a Tensor>,
    /// max(., 0) last.
    pub relu: bool,
}

impl<'a> Epilogue<'a> {
    /// `fuse` of conv2d.wgsl's Params (FUSE_BATCH_NORM 1, FUSE_RESIDUAL 2, FUSE_RELU 4, and
    /// FUSE_DST_F16 8 with any of them where the output `out` is f16).
    fn bits(&self, out: &Tensor) -> u32 {
        let bits = self.batch_norm.is_some() as u32 | (self.residual.is_some() as u32) << 1 | (self.relu as u32) << 2;
        let f16 = out.dtype() == crate::gpu::Dtype::F16;
        if bits != 0 && f16 {
            bits | 8
        } else {
            bits
        }
    }

    /// Bindings 3 to 5 of the kernels that write a forward output: the bias, the batch-norm
    /// vectors and the residual, each bound to a stand-in the kernel does not read when absent
    /// (the weight; the input, an activation like the residual, so that the kernel variant stays
    /// the one for its activations' type).
    fn bindings(&self, bias: Option<&'a Tensor>, w: &'a Tensor, input: &'a Tensor) -> [&'a Tensor; 3] {
        [bias.unwrap_or(w), self.batch_norm.unwrap_or(w), self.residual.unwrap_or(input)]
    }

    /// Checks the tensors against the convolution's output channels and output shape.
    fn check(&self, out_shape: &[usize]) -> Result<()> {
        let c_out = out_shape[1];
        let bn_ok = self.batch_norm.is_none_or(|t| t.numel() == 4 * c_out);
        let residual_ok = self.residual.is_none_or(|t| t.shape() == out_shape);
        if bn_ok && residual_ok {
            return Ok(());
        }
        Err(Error::shape(
            "conv2d epilogue",
            format!(
                "output {out_shape:?} takes batch-norm vectors of {} values and a residual of its own shape; got {:?} \
                 and {:?}",
                4 * c_out,
                self.batch_norm.map(|t| t.numel()),
                self.residual.map(|t| t.shape()),
            ),
        ))
    }
}

/// Records the direct 3x3 kernel: `input` [n, c, h, w] -> `out` [n, m, h, w]; `grad_input`
/// reads the weight as the transposed, rotated kernel of the backward pass.
#[allow(clippy::too_many_arguments)]
fn record_direct(
    g: &ConvGeom,
    w: &Tensor,
    input: &Tensor,
    bias: Option<&Tensor>,
    epilogue: &Epilogue,
    out: &Tensor,
    (m, c): (usize, usize),
    grad_input: bool,
) -> Result<()> {
    let rows_per_group = 128 / (g.w / 4);
    let groups = [(g.n * g.h).div_ceil(rows_per_group) as u32, m.div_ceil(16) as u32, 1];
    let [b, bn, res] = epilogue.bindings(bias, w, input);
    let views = [w.view(), input.view(), b.view(), bn.view(), res.view(), out.view()];
    let params = g.params(m, 0, c, grad_input as usize, bias.is_some(), epilogue.bits(out));
    crate::gpu::get()?.dispatch(&DIRECT_3X3, &params, &views, groups)
}

/// 2x2 output tiles per Winograd workgroup (`WT` in conv2d.wgsl) and output channels (`WM`).
const WINOGRAD_GROUP: (usize, usize) = (32, 16);

/// Whether Winograd F(2x2, 3x3) (conv2d.wgsl, `winograd`) can compute this convolution: 3x3,
/// stride 1, padding up to 2; tiles that fit one dispatch (65,535 workgroups, WebGPU's
/// guaranteed limit) and transformed weights (16 c_in c_out floats) within WebGPU's guaranteed
/// 128 MiB binding.
pub fn winograd_fits(g: &ConvGeom) -> bool {
    let tiles = g.n * g.out_h().div_ceil(2) * g.out_w().div_ceil(2);
    (g.kh, g.kw, g.stride) == (3, 3, 1)
        && g.pad <= 2
        && tiles.div_ceil(WINOGRAD_GROUP.0) <= 65_535
        && g.c_in * g.c_out <= 1 << 21
}

/// The grad-input of a stride-1 convolution as the convolution it is, where it is one: dy
/// [n, c_out, ho, wo] with the weight transposed and rotated and padding kh - 1 - pad gives dx
/// [n, c_in, h, w] (None when the padding exceeds kh - 1).
fn grad_input_geometry(g: &ConvGeom) -> Option<ConvGeom> {
    let pad = (g.kh - 1).checked_sub(g.pad)?;
    Some(ConvGeom { n: g.n, c_in: g.c_out, h: g.out_h(), w: g.out_w(), c_out: g.c_in, pad, ..*g })
}

/// Records Winograd F(2x2, 3x3) for geometry `g`: `input` [n, c_in, h, w] -> `out`
/// [n, c_out, ho, wo] through the transformed weights U [c_in, 16, c_out] (f32, a temporary);
/// `grad_input` reads `w` as the forward weight of the convolution whose grad-input `g` is.
fn record_winograd(
    g: &ConvGeom,
    w: &Tensor,
    input: &Tensor,
    bias: Option<&Tensor>,
    epilogue: &Epilogue,
    out: &Tensor,
    grad_input: bool,
) -> Result<()> {
    let gpu = crate::gpu::get()?;
    let (m, c) = (g.c_out, g.c_in);
    let tiles = g.n * g.out_h().div_ceil(2) * g.out_w().div_ceil(2);
    let u = Tensor::uninit(&[c, 16, m])?;
    let params = g.params(m, tiles, c, grad_input as usize, bias.is_some(), epilogue.bits(out));
    let wg = crate::gpu::WG;
    gpu.dispatch(&WINOGRAD_WEIGHTS, &params, &[w.view(), u.view()], [(m * c).div_ceil(wg) as u32, 1, 1])?;
    let [b, bn, res] = epilogue.bindings(bias, &u, input);
    let views = [u.view(), input.view(), b.view(), bn.view(), res.view(), out.view()];
    let groups = [tiles.div_ceil(WINOGRAD_GROUP.0) as u32, m.div_ceil(WINOGRAD_GROUP.1) as u32, 1];
    gpu.dispatch(&WINOGRAD_TILES, &params, &views, groups)
}

/// The non-GEMM kernels offered for a product: the direct kernel and Winograd where they fit.
fn specials<'a>(
    direct: Option<&'a dyn Fn() -> Result<()>>,
    winograd: Option<&'a dyn Fn() -> Result<()>>,
) -> Vec<Special<'a>> {
    [(DIRECT, direct), (WINOGRAD, winograd)].into_iter().filter_map(|(tile, run)| Some((tile, run?))).collect()
}

/// Raw forward pass (no autograd).
pub fn conv2d_forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, g: &ConvGeom) -> Result<Tensor> {
    forward_with(x, w, bias, g, &Epilogue::default())
}

/// The forward pass with `epilogue` applied on the way out (no autograd).
fn forward_with(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, g: &ConvGeom, epilogue: &Epilogue) -> Result<Tensor> {
    let y = Tensor::uninit_as(x.dtype(), &[g.n, g.c_out, g.out_h(), g.out_w()])?;
    epilogue.check(y.shape())?;
    let (m, n, k) = (g.c_out, g.n * g.out_h() * g.out_w(), g.c_in * g.kh * g.kw);
    // One layer of workgroups (the forward writes y directly, bias and epilogue included).
    let make = |chunk| g.params(m, n, k, chunk, bias.is_some(), epilogue.bits(&y));
    let direct = || record_direct(g, w, x, bias, epilogue, &y, (g.c_out, g.c_in), false);
    let winograd = || record_winograd(g, w, x, bias, epilogue, &y, false);
    let specials = specials(
        direct_fits(g, m).then_some(&direct as &dyn Fn() -> Result<()>),
        winograd_fits(g).then_some(&winograd as &dyn Fn() -> Result<()>),
    );
    let [b, bn, res] = epilogue.bindings(bias, w, x);
    run_gemm(&FORWARD, make, &[w, x, b, bn, res], &y, GemmShape { m, n, k, z: 1 }, &specials)?;
    Ok(y)
}

/// `conv2d(x, w, bias, stride, pad)` with `epilogue` applied to its output in the same kernel:
/// evaluation only, so none of the tensors may need a gradient (an error says so).
pub fn conv2d_fused(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: usize,
    epilogue: Epilogue,
) -> Result<Tensor> {
    let g = geometry(x, w, bias, stride, pad)?;
    let inputs: Vec<&Tensor> =
        [Some(x), Some(w), bias, epilogue.batch_norm, epilogue.residual].into_iter().flatten().collect();
    if needs_node(&inputs) {
        return Err(Error::invalid(
            "conv2d with a fused epilogue has no backward: use it without gradients (evaluation), or the \
             separate ops",
        ));
    }
    forward_with(x, w, bias, &g, &epilogue)
}

thread_local! {
    static SEPARATE_OPS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with [`conv2d_relu`] and [`conv2d_batch_norm_relu`] on this thread running the
/// separate ops even without a graph: the comparison (bench and tests) that shows what fusing
/// them into the convolution's output gains, and that it gives the same bits.
pub fn with_separate_ops<R>(f: impl FnOnce() -> R) -> R {
    super::with_override(&SEPARATE_OPS, true, f)
}

/// Whether this thread runs the separate ops ([`with_separate_ops`]).
fn separate_ops() -> bool {
    SEPARATE_OPS.with(|c| c.get()).unwrap_or(false)
}

/// `max(conv2d(x, w, bias), 0)`: one kernel without a graph (the convolution's epilogue applies
/// the ReLU), otherwise the two differentiable ops.
pub fn conv2d_relu(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize) -> Result<Tensor> {
    let inputs: Vec<&Tensor> = [Some(x), Some(w), bias].into_iter().flatten().collect();
    if needs_node(&inputs) || separate_ops() {
        return super::elementwise::relu(&conv2d(x, w, bias, stride, pad)?);
    }
    conv2d_fused(x, w, bias, stride, pad, Epilogue { relu: true, ..Default::default() })
}

/// `max(batch_norm(conv2d(x, w, bias)) + residual, 0)` (the residual when given): a convolution
/// and the batch norm and ReLU after it, as in a ResNet block (the residual at its end). `bn` is
/// gamma, beta, running mean and running variance. In evaluation without a graph one kernel, the
/// convolution's epilogue applying the rest, with the same result as the separate ops; otherwise
/// (training, or a graph) the differentiable convolution, then batch norm with the residual and
/// ReLU in its normalize pass.
pub fn conv2d_batch_norm_relu(
    x: &Tensor,
    (w, bias): (&Tensor, Option<&Tensor>),
    (stride, pad): (usize, usize),
    bn: [&Tensor; 4],
    residual: Option<&Tensor>,
    cfg: BatchNormConfig,
) -> Result<Tensor> {
    let [gamma, beta, mean, var] = bn;
    let inputs: Vec<&Tensor> =
        [Some(x), Some(w), bias, Some(gamma), Some(beta), residual].into_iter().flatten().collect();
    if cfg.training || needs_node(&inputs) || separate_ops() {
        let y = conv2d(x, w, bias, stride, pad)?;
        return match residual {
            Some(r) => batchnorm::batch_norm_add_relu(&y, r, gamma, beta, mean, var, cfg),
            None => batchnorm::batch_norm(&y, gamma, beta, mean, var, BatchNormConfig { relu: true, ..cfg }),
        };
    }
    let affine = batchnorm::eval_affine(gamma, beta, mean, var, cfg.eps)?;
    conv2d_fused(x, w, bias, stride, pad, Epilogue { batch_norm: Some(&affine), residual, relu: true })
}

/// dL/dx given dL/dy. With stride s > 1 the input pixels are split into s² parity classes
/// (one workgroup layer each), so no multiply is spent on taps that cannot reach a pixel.
pub fn conv2d_grad_input(dy: &Tensor, w: &Tensor, g: &ConvGeom) -> Result<Tensor> {
    conv2d_grad_input_adding(dy, w, g, None)
}

/// [`conv2d_grad_input`] with `pending` ([n, c_in, h, w], dy's type: the gradient the input
/// already received from its other uses) added by the kernel that computes it, on every plan:
/// `pending + dx` with the bits of adding them afterwards (conv2d.wgsl, add_pending).
pub fn conv2d_grad_input_adding(dy: &Tensor, w: &Tensor, g: &ConvGeom, pending: Option<&Tensor>) -> Result<Tensor> {
    let dx = Tensor::uninit_as(dy.dtype(), &[g.n, g.c_in, g.h, g.w])?;
    if let Some(t) = pending.filter(|t| t.shape() != dx.shape() || t.dtype() != dx.dtype()) {
        return Err(Error::shape(
            "conv2d grad-input",
            format!(
                "the pending gradient ({:?} {:?}) must have the input's shape and the gradient's type ({:?} {:?})",
                t.shape(),
                t.dtype(),
                dx.shape(),
                dx.dtype()
            ),
        ));
    }
    let adding = Epilogue { residual: pending, ..Default::default() };
    let fuse = adding.bits(&dx);
    // (dy, unread, stands in for an absent pending gradient: an activation of dx's type)
    let pending = pending.unwrap_or(dy);
    let m = g.c_in;
    if g.stride > 1 {
        // N covers the largest class; smaller classes skip the columns past their end.
        let n = g.n * g.h.div_ceil(g.stride) * g.w.div_ceil(g.stride);
        let k = g.c_out * g.kh.div_ceil(g.stride) * g.kw.div_ceil(g.stride);
        let shape = GemmShape { m, n, k, z: g.stride * g.stride };
        let make = |chunk| g.params(m, n, k, chunk, false, fuse);
        run_gemm(&GRAD_INPUT_STRIDED, make, &[w, dy, pending], &dx, shape, &[])?;
        return Ok(dx);
    }
    let (n, k) = (g.n * g.h * g.w, g.c_out * g.kh * g.kw);
    let direct = || record_direct(g, w, dy, None, &adding, &dx, (g.c_in, g.c_out), true);
    let as_conv = grad_input_geometry(g).filter(winograd_fits);
    let (out, adding) = (&dx, &adding);
    let winograd = as_conv.map(|a| move || record_winograd(&a, w, dy, None, adding, out, true));
    let specials = specials(
        direct_fits(g, m).then_some(&direct as &dyn Fn() -> Result<()>),
        winograd.as_ref().map(|f| f as &dyn Fn() -> Result<()>),
    );
    let shape = GemmShape { m, n, k, z: 1 };
    run_gemm(&GRAD_INPUT, |chunk| g.params(m, n, k, chunk, false, fuse), &[w, dy, pending], &dx, shape, &specials)?;
    Ok(dx)
}

/// dL/dw given dL/dy (a long reduction over the batch: split-K).
pub fn conv2d_grad_weight(dy: &Tensor, x: &Tensor, g: &ConvGeom) -> Result<Tensor> {
    conv2d_grad_weight_into(dy, x, g, None)
}

/// [`conv2d_grad_weight`] written into `place` ([c_out, c_in, kh, kw]) when given.
fn conv2d_grad_weight_into(dy: &Tensor, x: &Tensor, g: &ConvGeom, place: Option<&Tensor>) -> Result<Tensor> {
    let dw = place_or_new(place, &[g.c_out, g.c_in, g.kh, g.kw])?;
    let (m, n, k) = (g.c_out, g.c_in * g.kh * g.kw, g.n * g.out_h() * g.out_w());
    run_gemm(
        &GRAD_WEIGHT,
        |chunk| g.params(m, n, k, chunk, false, 0),
        &[dy, x],
        &dw,
        GemmShape { m, n, k, z: 0 },
        &[],
    )?;
    Ok(dw)
}

/// Convolution with PyTorch semantics (differentiable in input, weight and bias).
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize) -> Result<Tensor> {
    let g = geometry(x, w, bias, stride, pad)?;
    let y = conv2d_forward(x, w, bias, &g)?;
    let refs: Vec<&Tensor> = [Some(x), Some(w), bias].into_iter().flatten().collect();
    let node = needs_node(&refs).then(|| Node {
        backward: Box::new(Conv2dBackward {
            x: x.detach(),
            w: w.detach(),
            g,
            has_bias: bias.is_some(),
            need: [x.requires_grad(), w.requires_grad()],
        }),
        inputs: refs.iter().map(|t| t.edge()).collect(),
    });
    Ok(y.with_node(node))
}

struct Conv2dBackward {
    x: Tensor,
    w: Tensor,
    g: ConvGeom,
    has_bias: bool,
    /// Whether the input / the weight need a gradient (the first conv's input never does).
    need: [bool; 2],
}
impl Backward for Conv2dBackward {
    fn backward(&self, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
        self.backward_into(dy, &[])
    }

    /// The weight's and the bias's gradients go straight into their places when given.
    fn backward_into(&self, dy: &Tensor, places: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>> {
        self.grads(dy, places, None)
    }

    /// The input's gradient with its pending gradient added by the grad-input kernel.
    fn backward_adding(
        &self,
        dy: &Tensor,
        places: &[Option<Tensor>],
        input: usize,
        pending: &Tensor,
    ) -> Result<Option<Vec<Option<Tensor>>>> {
        let g = &self.g;
        let fits = pending.shape() == [g.n, g.c_in, g.h, g.w] && pending.dtype() == dy.dtype();
        if input != 0 || !self.need[0] || !fits {
            return Ok(None);
        }
        Ok(Some(self.grads(dy, places, Some(pending))?))
    }
}

impl Conv2dBackward {
    /// The gradients of input (with `pending` added), weight and bias.
    fn grads(&self, dy: &Tensor, places: &[Option<Tensor>], pending: Option<&Tensor>) -> Result<Vec<Option<Tensor>>> {
        let g = &self.g;
        let place = |i: usize| grad_place(places, i);
        let dx = if self.need[0] { Some(conv2d_grad_input_adding(dy, &self.w, g, pending)?) } else { None };
        let dw = if self.need[1] { Some(conv2d_grad_weight_into(dy, &self.x, g, place(1))?) } else { None };
        let mut grads = vec![dx, dw];
        if self.has_bias {
            grads.push(Some(reduce::channel_sum_into(dy, g.n, g.c_out, g.out_h() * g.out_w(), place(2))?));
        }
        Ok(grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::Dtype;
    use crate::ops::matmul::TILES;

    /// Every GEMM-based kernel family with its binding count (the forward's 6: weight, input,
    /// bias, batch-norm vectors, residual, output; grad-input's 4: weight, dy, the pending
    /// gradient, dx).
    fn gemm_families() -> [(&'static GemmKernels, usize); 5] {
        [(&super::super::matmul::GEMM, 4), (&FORWARD, 6), (&GRAD_INPUT, 4), (&GRAD_INPUT_STRIDED, 4), (&GRAD_WEIGHT, 4)]
    }

    /// Every GEMM-based family on every tile compiles to SPIR-V for every mix of f32 and f16
    /// bindings (mixed precision binds f16 activations beside f32 weights and weight
    /// gradients), the cooperative-matrix tiles included (with at least one f16 binding, as they
    /// run): the software driver CI runs offers 8x8 matrices at most, so this is where the 16x16
    /// tile (NVIDIA's and AMD's) is checked without a GPU.
    #[test]
    fn every_gemm_tile_compiles_offline() {
        for (family, bindings) in gemm_families() {
            for (kernel, tile) in family.iter().zip(&TILES) {
                for mask in (tile.coop > 0) as u32..1 << bindings {
                    let types: Vec<Dtype> =
                        (0..bindings).map(|i| if mask >> i & 1 == 1 { Dtype::F16 } else { Dtype::F32 }).collect();
                    if let Err(e) = kernel.compile_offline(&types) {
                        panic!("{} ({types:?}) does not compile:\n{e}", kernel.label);
                    }
                }
            }
        }
    }

    /// The workgroup memory the planner counts for each tile (`Tile::workgroup_bytes`, which
    /// decides where an adapter with little of it runs which tile) is what every GEMM-based
    /// kernel on it declares, as naga lays it out; the direct and Winograd kernels, which have
    /// no smaller variant, fit WebGPU's guaranteed 16 KiB.
    #[test]
    fn tiles_declare_the_workgroup_memory_the_planner_counts() {
        for (family, bindings) in gemm_families() {
            for (kernel, tile) in family.iter().zip(&TILES) {
                let types = vec![if tile.coop > 0 { Dtype::F16 } else { Dtype::F32 }; bindings];
                let declared = kernel.workgroup_bytes_offline(&types).unwrap();
                assert_eq!(declared, tile.workgroup_bytes(), "{}", kernel.label);
            }
        }
        for kernel in [&DIRECT_3X3, &WINOGRAD_TILES] {
            let declared = kernel.workgroup_bytes_offline(&[Dtype::F32; 4]).unwrap();
            assert!(declared <= 16384, "{}: {declared} bytes", kernel.label);
        }
    }
}
