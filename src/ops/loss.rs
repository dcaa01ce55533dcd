//! Softmax cross-entropy (fused, mean over the batch) and the rank of the true class for
//! top-k accuracy (shaders/loss.wgsl).

use super::{expect_rank, kernel, launch};
use crate::autograd::{needs_node, Backward, Node};
use crate::gpu::Kernel;
use crate::{Error, Result, Tensor};

static FORWARD: Kernel = kernel!("loss.forward", "loss.wgsl", "forward");
static BACKWARD: Kernel = kernel!("loss.backward", "loss.wgsl", "backward");
static RANK: Kernel = kernel!("loss.rank", "loss.wgsl", "rank");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    classes: u32,
    _pad: [u32; 2],
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
    Ok(Params { n: n as u32, classes: classes as u32, _pad: [0; 2] })
}

/// Mean softmax cross-entropy of `logits` [n, classes] against class indices `labels` [n]
/// (stored as f32; the caller validates their range). Differentiable in the logits.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let p = check(logits, labels)?;
    let loss = Tensor::uninit(&[1])?;
    launch(&FORWARD, &p, &[logits, labels, &loss], [1, 1, 1])?;
    let node = needs_node(&[logits]).then(|| Node {
        backward: Box::new(CrossEntropyBackward { logits: logits.detach(), labels: labels.detach(), p }),
        inputs: vec![logits.edge()],
    });
    Ok(loss.with_node(node))
}

struct CrossEntropyBackward {
    logits: Tensor,
    labels: Tensor,
    p: Params,
}
impl Backward for CrossEntropyBackward {
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let d = Tensor::uninit(self.logits.shape())?;
        launch(&BACKWARD, &self.p, &[&self.logits, &self.labels, g, &d], [self.p.n.div_ceil(256), 1, 1])?;
        Ok(vec![Some(d)])
    }
}

/// For each row, how many classes score strictly higher than its label (0 means top-1
/// correct, < 5 top-5 correct), as f32 [n].
pub fn label_rank(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let p = check(logits, labels)?;
    let rank = Tensor::uninit(&[p.n as usize])?;
    launch(&RANK, &p, &[logits, labels, &rank], [p.n.div_ceil(256), 1, 1])?;
    Ok(rank)
}
