//! The CIFAR ResNet option-A shortcut (shaders/shortcut.wgsl).

use super::{expect_rank, groups_1d, kernel, launch};
use crate::gpu::Kernel;
use crate::tensor::{needs_node, Backward, Node};
use crate::{Result, Tensor};

static FORWARD: Kernel = kernel!("shortcut.forward", "shortcut.wgsl", "forward");
static BACKWARD: Kernel = kernel!("shortcut.backward", "shortcut.wgsl", "backward");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    pad_c: u32,
    oh: u32,
    ow: u32,
    /// Backward adds the input's pending gradient (see `backward_adding`).
    adding: u32,
}

/// `x[:, :, ::2, ::2]` zero-padded with `pad_c` channels on each side: [n, c, h, w] →
/// [n, c + 2*pad_c, ceil(h/2), ceil(w/2)] (differentiable).
pub fn shortcut_a(x: &Tensor, pad_c: usize) -> Result<Tensor> {
    expect_rank("shortcut_a", "input", x, 4)?;
    let s = x.shape();
    let v = |x: usize| x as u32;
    let p = Params {
        n: v(s[0]),
        c: v(s[1]),
        h: v(s[2]),
        w: v(s[3]),
        pad_c: v(pad_c),
        oh: v(s[2].div_ceil(2)),
        ow: v(s[3].div_ceil(2)),
        adding: 0,
    };
    let y = Tensor::uninit_as(x.dtype(), &[s[0], s[1] + 2 * pad_c, s[2].div_ceil(2), s[3].div_ceil(2)])?;
    launch(&FORWARD, &p, &[x, &y], groups_1d(y.numel()))?;
    let node = needs_node(&[x])
        .then(|| Node { backward: Box::new(ShortcutBackward { p, x_shape: s.to_vec() }), inputs: vec![x.edge()] });
    Ok(y.with_node(node))
}

struct ShortcutBackward {
    p: Params,
    x_shape: Vec<usize>,
}
impl ShortcutBackward {
    /// dx, plus `pending` when given (dy stands in for it, unread, when not).
    fn grad(&self, dy: &Tensor, pending: Option<&Tensor>) -> Result<Tensor> {
        let dx = Tensor::uninit_as(dy.dtype(), &self.x_shape)?;
        let p = Params { adding: pending.is_some() as u32, ..self.p };
        launch(&BACKWARD, &p, &[dy, pending.unwrap_or(dy), &dx], groups_1d(dx.numel()))?;
        Ok(dx)
    }
}

impl Backward for ShortcutBackward {
    fn backward(&self, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(self.grad(dy, None)?)])
    }

    /// The input's gradient with the gradient it already has added in the same kernel.
    fn backward_adding(
        &self,
        dy: &Tensor,
        _places: &[Option<Tensor>],
        input: usize,
        pending: &Tensor,
    ) -> Result<Option<Vec<Option<Tensor>>>> {
        if input != 0 || pending.shape() != self.x_shape || pending.dtype() != dy.dtype() {
            return Ok(None);
        }
        Ok(Some(vec![Some(self.grad(dy, Some(pending))?)]))
    }
}
