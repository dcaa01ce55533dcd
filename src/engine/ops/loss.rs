//! Softmax cross-entropy (fused, mean over the batch) and the rank of the true class for
//! top-k accuracy (shaders/loss.wgsl).

use super::{expect_rank, groups_1d, kernel, launch, WG};
use crate::gpu::{self, Kernel};
use crate::tensor::{needs_node, Backward, Node};
use crate::{Error, Result, Tensor};

static ROW_LOSSES: Kernel = kernel!("loss.row_losses", "loss.wgsl", "row_losses");
static MEAN: Kernel = kernel!("loss.mean", "loss.wgsl", "mean");
static BACKWARD: Kernel = kernel!("loss.backward", "loss.wgsl", "backward");
static RANK: Kernel = kernel!("loss.rank", "loss.wgsl", "rank");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    classes: u32,
    /// Threads per row in the per-row kernels: the class count rounded up to a power of two,
    /// at most a workgroup.
    seg: u32,
    _pad: u32,
}

impl Params {
    /// Workgroups of the per-row kernels: 256 / seg rows each.
    fn row_groups(&self) -> [u32; 3] {
        gpu::grid(self.n.div_ceil(WG as u32 / self.seg))
    }
}

fn check(logits: &Tensor, labels: &Tensor) -> Result<Params> {
    expect_rank("cross_entropy", "logits", logits, 2)?;
    let (n, classes) = (logits.shape()[0], logits.shape()[1]);
    if labels.shape() != [n] {
        return Err(Error::shape(
            "cross_entropy",
            format!("logits {:?} need labels of shape [{n}], got {:?}", logits.shape(), labels.shape()),
        ));
    }
    let seg = classes.next_power_of_two().min(WG) as u32;
    Ok(Params { n: n as u32, classes: classes as u32, seg, _pad: 0 })
}

/// Mean softmax cross-entropy of `logits` [n, classes] against class indices `labels` `[n]`
/// (stored as f32; the caller validates their range). Differentiable in the logits.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let p = check(logits, labels)?;
    // [3, n]: per-row loss, maximum logit and reciprocal sum of exponentials
    let rows = Tensor::uninit(&[3, p.n as usize])?;
    launch(&ROW_LOSSES, &p, &[logits, labels, &rows], p.row_groups())?;
    let loss = Tensor::uninit(&[1])?;
    launch(&MEAN, &Params { seg: WG as u32, ..p }, &[&rows, &loss], [1, 1, 1])?;
    let node = needs_node(&[logits]).then(|| Node {
        backward: Box::new(CrossEntropyBackward { logits: logits.detach(), labels: labels.detach(), rows, p }),
        inputs: vec![logits.edge()],
    });
    Ok(loss.with_node(node))
}

struct CrossEntropyBackward {
    logits: Tensor,
    labels: Tensor,
    /// The forward's per-row statistics [3, n].
    rows: Tensor,
    p: Params,
}
impl Backward for CrossEntropyBackward {
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let d = Tensor::uninit_as(self.logits.dtype(), self.logits.shape())?;
        launch(&BACKWARD, &self.p, &[&self.logits, &self.labels, &self.rows, g, &d], groups_1d(d.numel()))?;
        Ok(vec![Some(d)])
    }
}

/// For each row, how many classes score strictly higher than its label (0 means top-1
/// correct, < 5 top-5 correct), as f32 `[n]`.
pub fn label_rank(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let p = check(logits, labels)?;
    let rank = Tensor::uninit(&[p.n as usize])?;
    launch(&RANK, &p, &[logits, labels, &rank], p.row_groups())?;
    Ok(rank)
}
