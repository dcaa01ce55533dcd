//! Dynamic loss scaling for mixed precision (shaders/loss_scale.wgsl): the scale S, the check
//! of the weight gradients for inf and NaN, and the step-skip flag the optimizer kernels read.
//! Everything stays on the device: a step never waits for a read-back to learn whether it was
//! skipped.

use super::{flat_view, for_each_chunk, groups_4x, kernel, launch, words};
use crate::gpu::Kernel;
use crate::{Error, Result, Tensor};

static UNSCALE: Kernel = kernel!("loss_scale.unscale", "loss_scale.wgsl", "unscale");
static UPDATE: Kernel = kernel!("loss_scale.update", "loss_scale.wgsl", "update");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    interval: u32,
    _pad: [u32; 2],
}

/// PyTorch's GradScaler defaults: S starts at 2^16 and doubles after 2,000 steps in a row
/// without an overflow.
pub const INITIAL_SCALE: f32 = 65536.0;
pub const GROWTH_INTERVAL: u32 = 2000;

/// A step-skip flag: one u32 word, 0 = apply the step. Optimizers bind it; with no loss scaling
/// it stays 0.
pub fn skip_flag() -> Result<Tensor> {
    words(&[0])
}

/// The loss scale's device state and the skip flag it sets.
pub struct LossScale {
    /// [S, steps since S changed, steps skipped in all, pending]
    state: Tensor,
    /// The skip flag (shared with the optimizer that reads it).
    skip: Tensor,
    interval: u32,
    initial: f32,
}

/// What the loss scale has done, read back from the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaleStatus {
    pub scale: f32,
    pub skipped: u64,
}

impl LossScale {
    /// Scaling that sets `skip` on overflow; S starts at `initial` and doubles after
    /// `interval` good steps.
    pub fn new(skip: &Tensor, initial: f32, interval: u32) -> Result<LossScale> {
        if !(initial.is_finite() && initial > 0.0) || interval == 0 {
            return Err(Error::invalid(format!(
                "a loss scale needs a positive initial scale and growth interval, got {initial} and {interval}"
            )));
        }
        let state = Tensor::from_slice(&[initial, 0.0, 0.0, 0.0], &[4])?;
        Ok(LossScale { state, skip: skip.clone(), interval, initial })
    }

    /// The gradient to start backward from: S, as a one-element tensor on the device.
    pub fn seed(&self) -> Result<Tensor> {
        Tensor::view_into(self.state.storage().clone(), self.state.byte_offset(), &[1])
    }

    /// Divides the first `len` gradients of `grads` by S and sets the skip flag if any is inf or
    /// NaN. Call once per step, after backward and before the optimizer.
    pub fn unscale(&self, grads: &Tensor, len: usize) -> Result<()> {
        for_each_chunk(len, |start, n| {
            let p = Params { n: n as u32, interval: self.interval, _pad: [0; 2] };
            launch(&UNSCALE, &p, &[&self.state, &flat_view(grads, start, n)?, &self.skip], groups_4x(n))
        })
    }

    /// Applies the last step's outcome to S and clears the skip flag: after the optimizer has
    /// read it. Does nothing when no unscale ran since the last update.
    pub fn update(&self) -> Result<()> {
        launch(&UPDATE, &Params { n: 0, interval: self.interval, _pad: [0; 2] }, &[&self.state, &self.skip], [1, 1, 1])
    }

    /// S and the steps skipped so far, the last step's outcome included (a read-back: call at
    /// epoch ends and saves, not per step).
    pub fn status(&self) -> Result<LossScaleStatus> {
        self.update()?;
        let v = self.state.to_vec()?;
        Ok(LossScaleStatus { scale: v[0], skipped: v[2] as u64 })
    }

    /// The state as saved in checkpoints ([S, steps since S changed, steps skipped, pending]),
    /// with the last step's update applied first.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.update()?;
        self.state.to_vec()
    }

    /// Back to the initial scale with no step counted: where a phase starts afresh, so that a
    /// run resumed at a phase boundary scales as an uninterrupted one does.
    pub fn reset(&self) -> Result<()> {
        self.load(&[self.initial, 0.0, 0.0, 0.0])
    }

    /// Restores a state saved by [`LossScale::to_vec`].
    pub fn load(&self, saved: &[f32]) -> Result<()> {
        if saved.len() != 4 || !(saved[0].is_finite() && saved[0] > 0.0) {
            return Err(Error::invalid(format!(
                "a saved loss scale must be 4 values with a positive scale, got {saved:?}"
            )));
        }
        self.state.write(&[saved[0], saved[1], saved[2], 0.0])?;
        self.skip.write(&[0.0])
    }
}
