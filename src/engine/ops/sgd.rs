//! The fused SGD update (shaders/sgd.wgsl).

use super::{groups_1d, launch, same_shape};
use crate::gpu::Kernel;
use crate::{Result, Tensor};

static SGD: Kernel = Kernel {
    label: "sgd.step",
    prelude: &[],
    source: include_str!("../../../shaders/sgd.wgsl"),
    section: None,
    entry: "main",
};

#[derive(Clone, Copy, Debug)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    has_mask: u32,
    nesterov: u32,
    _pad: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    _pad2: f32,
}

/// One SGD step in place on `w` and its momentum buffer `buf`, given `grad`; with `mask` (0/1)
/// the update of masked weights is zero. All four have the same shape (one launch for any size).
/// With `skip` (a flag word, see [`super::loss_scale`]) set on the device, nothing changes.
pub fn sgd_step(
    w: &Tensor,
    grad: &Tensor,
    buf: &Tensor,
    mask: Option<&Tensor>,
    cfg: &SgdConfig,
    skip: Option<&Tensor>,
) -> Result<()> {
    let skip = match skip {
        Some(s) => s,
        None => super::never_skip()?,
    };
    same_shape("sgd_step", w, grad)?;
    same_shape("sgd_step", w, buf)?;
    if let Some(m) = mask {
        same_shape("sgd_step", w, m)?;
    }
    let p = Params {
        n: w.numel() as u32,
        has_mask: mask.is_some() as u32,
        nesterov: cfg.nesterov as u32,
        _pad: 0,
        lr: cfg.lr,
        momentum: cfg.momentum,
        weight_decay: cfg.weight_decay,
        _pad2: 0.0,
    };
    // One piece unless the arena exceeds a storage binding (AlexNet's on 128 MiB drivers).
    // Without a mask the slot is bound to `grad` (never read).
    super::for_each_chunk(w.numel(), |start, len| {
        let piece = |t: &Tensor| super::flat_view(t, start, len);
        let (w, grad, buf) = (piece(w)?, piece(grad)?, piece(buf)?);
        let m = mask.map(piece).transpose()?;
        let bound = [&w, &grad, &buf, m.as_ref().unwrap_or(&grad), skip];
        launch(&SGD, &Params { n: len as u32, ..p }, &bound, groups_1d(len))
    })
}
