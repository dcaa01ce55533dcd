//! Element-wise ADMM kernels over the vector of prunable weights (shaders/admm.wgsl). None is
//! differentiated; each is one launch over the whole vector, or one per piece when the vector
//! is larger than a storage binding (AlexNet's 61 M weights on drivers with a 128 MiB limit).

use super::{flat_view, for_each_chunk, groups_1d, kernel, launch, same_shape};
use crate::gpu::Kernel;
use crate::{Result, Tensor};

static SAS_H: Kernel = kernel!("admm.sas_h", "admm.wgsl", "sas_h");
static SAS_INNER: Kernel = kernel!("admm.sas_inner", "admm.wgsl", "sas_inner");
static MIX: Kernel = kernel!("admm.mix", "admm.wgsl", "mix");
static SAS_DUAL: Kernel = kernel!("admm.sas_dual", "admm.wgsl", "sas_dual");
static SAS_SPLIT: Kernel = kernel!("admm.sas_split", "admm.wgsl", "sas_split");
static SAS_CLOSE: Kernel = kernel!("admm.sas_close", "admm.wgsl", "sas_close");
static SOFT: Kernel = kernel!("admm.soft_threshold", "admm.wgsl", "soft_threshold");
static ADMM_GRAD: Kernel = kernel!("admm.admm_grad", "admm.wgsl", "admm_grad");
static ADMM_DUAL: Kernel = kernel!("admm.admm_dual", "admm.wgsl", "admm_dual");
static MULTIPLY: Kernel = kernel!("admm.multiply", "admm.wgsl", "multiply");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
    a: f32,
    b: f32,
    c: f32,
    e: f32,
}

fn params(n: usize, a: f32, b: f32, c: f32, e: f32) -> Params {
    Params { n: n as u32, _pad: [0; 3], a, b, c, e }
}

fn run(kernel: &Kernel, p: Params, tensors: &[&Tensor]) -> Result<()> {
    run_with(kernel, p, tensors, &[])
}

/// [`run`] with `whole` bound after the pieces, as they are (flags, not vectors).
fn run_with(kernel: &Kernel, p: Params, tensors: &[&Tensor], whole: &[&Tensor]) -> Result<()> {
    for t in &tensors[1..] {
        same_shape(kernel.label, tensors[0], t)?;
    }
    // one piece unless the vectors exceed a storage binding (AlexNet's on 128 MiB drivers)
    for_each_chunk(p.n as usize, |start, len| {
        let pieces = tensors.iter().map(|t| flat_view(t, start, len)).collect::<Result<Vec<_>>>()?;
        let bound: Vec<&Tensor> = pieces.iter().chain(whole.iter().copied()).collect();
        launch(kernel, &Params { n: len as u32, ..p }, &bound, groups_1d(len))
    })
}

/// `h = ρ·W + U − β·(W − Z)`.
pub fn sas_h(w: &Tensor, z: &Tensor, u: &Tensor, h: &Tensor, rho: f32, beta: f32) -> Result<()> {
    run(&SAS_H, params(w.numel(), rho, beta, 0.0, 0.0), &[w, z, u, h])
}

/// One accelerated inner step given `d = ∇f(Ŵ)`: updates W̆ and W, and writes the next
/// step's Ŵ (with `b_next`) into `w_hat`; nothing when `skip` (a flag word, see
/// [`super::loss_scale`]) is set on the device.
#[allow(clippy::too_many_arguments)]
pub fn sas_inner(
    d: &Tensor,
    h: &Tensor,
    w_breve: &Tensor,
    w: &Tensor,
    w_hat: &Tensor,
    gamma: f32,
    rho: f32,
    b: f32,
    b_next: f32,
    skip: Option<&Tensor>,
) -> Result<()> {
    let skip = match skip {
        Some(s) => s,
        None => super::never_skip()?,
    };
    run_with(&SAS_INNER, params(w.numel(), gamma, rho, b, b_next), &[d, h, w_breve, w, w_hat], &[skip])
}

/// `out = a·x + (1 − a)·y` (`out` may not alias `x` or `y`).
pub fn mix(x: &Tensor, y: &Tensor, out: &Tensor, a: f32) -> Result<()> {
    run(&MIX, params(x.numel(), a, 0.0, 0.0, 0.0), &[x, y, out])
}

/// SAS-ADMM's two dual updates around the soft-threshold Z-step, fused; writes
/// `dz = Z_new − Z_old` and `res = W − Z_new`.
#[allow(clippy::too_many_arguments)]
pub fn sas_dual(
    w: &Tensor,
    z: &Tensor,
    u: &Tensor,
    dz: &Tensor,
    res: &Tensor,
    beta: f32,
    lambda: f32,
    r: f32,
    s: f32,
) -> Result<()> {
    run(&SAS_DUAL, params(w.numel(), beta, lambda, r, s), &[w, z, u, dz, res])
}

/// The structured Z-step's first half: `U ← U½ = U − r·β·(W − Z)`, `v = W − U½/β` (the point
/// the prox is taken at), `dz = −Z`.
pub fn sas_split(w: &Tensor, z: &Tensor, u: &Tensor, v: &Tensor, dz: &Tensor, beta: f32, r: f32) -> Result<()> {
    run(&SAS_SPLIT, params(w.numel(), beta, 0.0, r, 0.0), &[w, z, u, v, dz])
}

/// The structured Z-step's second half given the new `z`: `U ← U½ − s·β·(W − Z)`, `dz += Z`,
/// `res = W − Z`.
pub fn sas_close(w: &Tensor, z: &Tensor, u: &Tensor, dz: &Tensor, res: &Tensor, beta: f32, s: f32) -> Result<()> {
    run(&SAS_CLOSE, params(w.numel(), beta, 0.0, 0.0, s), &[w, z, u, dz, res])
}

/// `x = soft(x, τ)` in place.
pub fn soft_threshold_in_place(x: &Tensor, tau: f32) -> Result<()> {
    run(&SOFT, params(x.numel(), tau, 0.0, 0.0, 0.0), &[x])
}

/// ADMM-NN: `g += ρ·(W − Z + U)`.
pub fn admm_grad(w: &Tensor, z: &Tensor, u: &Tensor, g: &Tensor, rho: f32) -> Result<()> {
    run(&ADMM_GRAD, params(w.numel(), rho, 0.0, 0.0, 0.0), &[w, z, u, g])
}

/// ADMM-NN: `Z = mask·(W + U)`, `U += W − Z`; writes `dz` and `res` like `sas_dual`.
pub fn admm_dual(w: &Tensor, mask: &Tensor, z: &Tensor, u: &Tensor, dz: &Tensor, res: &Tensor) -> Result<()> {
    run(&ADMM_DUAL, params(w.numel(), 0.0, 0.0, 0.0, 0.0), &[w, mask, z, u, dz, res])
}

/// `x *= y` in place.
pub fn multiply_in_place(x: &Tensor, y: &Tensor) -> Result<()> {
    run(&MULTIPLY, params(x.numel(), 0.0, 0.0, 0.0, 0.0), &[y, x])
}
