//! The CIFAR ResNet option-A shortcut (shaders/shortcut.wgsl).

use super::{expect_rank, groups_1d, kernel, launch};
use crate::gpu::Kernel;
use crate::tensor::{needs_node, Backward, Node};
use crate::{Error, Result, Tensor};

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
    let p = params(s, pad_c);
    let y = Tensor::uninit_as(x.dtype(), &[s[0], s[1] + 2 * pad_c, s[2].div_ceil(2), s[3].div_ceil(2)])?;
    launch(&FORWARD, &p, &[x, &y], groups_1d(y.numel()))?;
    let node = needs_node(&[x])
        .then(|| Node { backward: Box::new(ShortcutBackward { pad_c, x_shape: s.to_vec() }), inputs: vec![x.edge()] });
    Ok(y.with_node(node))
}

/// The kernels' sizes for input shape `s` [n, c, h, w].
fn params(s: &[usize], pad_c: usize) -> Params {
    let v = |x: usize| x as u32;
    Params {
        n: v(s[0]),
        c: v(s[1]),
        h: v(s[2]),
        w: v(s[3]),
        pad_c: v(pad_c),
        oh: v(s[2].div_ceil(2)),
        ow: v(s[3].div_ceil(2)),
        adding: 0,
    }
}

/// [`shortcut_a`]'s backward: dL/dx [n, c, h, w] (`x_shape`) from dL/dy, plus `pending` (the
/// gradient x already received from its other uses, x's shape and dy's type) when given, added
/// in the same kernel with the bits of adding afterwards.
pub fn shortcut_a_backward(dy: &Tensor, x_shape: &[usize], pad_c: usize, pending: Option<&Tensor>) -> Result<Tensor> {
    expect_rank("shortcut_a_backward", "gradient", dy, 4)?;
    let y_shape = match x_shape {
        &[n, c, h, w] => vec![n, c + 2 * pad_c, h.div_ceil(2), w.div_ceil(2)],
        _ => Vec::new(),
    };
    let pending_fits = pending.is_none_or(|t| t.shape() == x_shape && t.dtype() == dy.dtype());
    if dy.shape() != y_shape || !pending_fits {
        return Err(Error::shape(
            "shortcut_a_backward",
            format!(
                "input {x_shape:?} with {pad_c} padded channels takes a gradient {y_shape:?} and a pending gradient \
                 of the input's shape and the gradient's type; got {:?} and {:?}",
                dy.shape(),
                pending.map(|t| (t.shape(), t.dtype()))
            ),
        ));
    }
    let dx = Tensor::uninit_as(dy.dtype(), x_shape)?;
    let p = Params { adding: pending.is_some() as u32, ..params(x_shape, pad_c) };
    // (dy stands in for an absent pending gradient, unread)
    launch(&BACKWARD, &p, &[dy, pending.unwrap_or(dy), &dx], groups_1d(dx.numel()))?;
    Ok(dx)
}

struct ShortcutBackward {
    pad_c: usize,
    x_shape: Vec<usize>,
}

impl Backward for ShortcutBackward {
    fn backward(&self, dy: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(shortcut_a_backward(dy, &self.x_shape, self.pad_c, None)?)])
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
        Ok(Some(vec![Some(shortcut_a_backward(dy, &self.x_shape, self.pad_c, Some(pending))?)]))
    }
}
