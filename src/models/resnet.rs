//! CIFAR ResNet-(6n+2) (He et al. 2016) with option-A shortcuts, in the layout and with the
//! names of the widely used PyTorch implementation (conv1, bn1, layer1..3.i.{conv,bn}{1,2},
//! linear), so its checkpoints load unchanged.

use crate::export::onnx::Graph;
use crate::nn::{BatchNorm2d, Conv2d, Linear, LinearInit, ParamStore};
use crate::ops::{pool, shortcut};
use crate::{Result, Tensor};
use rand::Rng;

struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    /// Channels of zero padding on each side when the shortcut changes shape (option A).
    shortcut_pad: Option<usize>,
}

impl BasicBlock {
    fn forward(&self, s: &ParamStore, x: &Tensor, training: bool) -> Result<Tensor> {
        // relu(bn1(conv1 x)) and relu(bn2(conv2 ..) + shortcut): in training each ReLU fused
        // into the batch norm before it, in evaluation all of it into the convolution's output.
        let out = self.conv1.forward_bn_relu(s, x, &self.bn1, None, training)?;
        let short = match self.shortcut_pad {
            Some(pad) => shortcut::shortcut_a(x, pad)?,
            None => x.clone(),
        };
        self.conv2.forward_bn_relu(s, &out, &self.bn2, Some(&short), training)
    }

    /// [`forward`](Self::forward) in inference, as ONNX nodes.
    fn onnx(&self, s: &ParamStore, g: &mut Graph, x: &str) -> Result<String> {
        let out = self.conv1.onnx(s, g, x)?;
        let out = self.bn1.onnx(s, g, &out)?;
        let out = g.relu(&out);
        let out = self.conv2.onnx(s, g, &out)?;
        let out = self.bn2.onnx(s, g, &out)?;
        let short = match self.shortcut_pad {
            Some(pad) => g.shortcut_a(x, pad),
            None => x.to_string(),
        };
        let sum = g.add(&out, &short);
        Ok(g.relu(&sum))
    }
}

pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<BasicBlock>,
    linear: Linear,
}

impl ResNet {
    /// ResNet-(6n+2) for `arch.classes` classes on 32x32 RGB input; block b's inner width (its
    /// conv1's filters) is `arch.width(b, planes)` (fewer in a compact, filter-pruned network).
    pub fn new(store: &mut ParamStore, n: usize, arch: &super::Arch, rng: &mut impl Rng) -> ResNet {
        let conv1 = Conv2d::new(store, "conv1", 3, 16, 3, 1, 1, false, rng);
        let bn1 = BatchNorm2d::new(store, "bn1", 16);
        let mut blocks = Vec::new();
        let mut in_planes = 16;
        for (stage, planes) in [16, 32, 64].into_iter().enumerate() {
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let name = format!("layer{}.{i}", stage + 1);
                let inner = arch.width(blocks.len(), planes);
                blocks.push(BasicBlock {
                    conv1: Conv2d::new(store, &format!("{name}.conv1"), in_planes, inner, 3, stride, 1, false, rng),
                    bn1: BatchNorm2d::new(store, &format!("{name}.bn1"), inner),
                    conv2: Conv2d::new(store, &format!("{name}.conv2"), inner, planes, 3, 1, 1, false, rng),
                    bn2: BatchNorm2d::new(store, &format!("{name}.bn2"), planes),
                    shortcut_pad: (stride != 1 || in_planes != planes).then_some(planes / 4),
                });
                in_planes = planes;
            }
        }
        let linear = Linear::new(store, "linear", 64, arch.classes, LinearInit::KaimingNormal, rng);
        ResNet { conv1, bn1, blocks, linear }
    }
}

impl super::Network for ResNet {
    /// Logits [batch, classes] for images [batch, 3, 32, 32].
    fn forward(&self, s: &ParamStore, x: &Tensor, noise: Option<u64>) -> Result<Tensor> {
        let training = noise.is_some();
        let mut out = self.conv1.forward_bn_relu(s, x, &self.bn1, None, training)?;
        for block in &self.blocks {
            out = block.forward(s, &out, training)?;
        }
        self.linear.forward(s, &pool::global_avg_pool(&out)?)
    }

    /// `forward` in inference, as ONNX nodes reading `x`; returns the logits.
    fn onnx(&self, s: &ParamStore, g: &mut Graph, x: &str) -> Result<String> {
        let out = self.conv1.onnx(s, g, x)?;
        let out = self.bn1.onnx(s, g, &out)?;
        let mut out = g.relu(&out);
        for block in &self.blocks {
            out = block.onnx(s, g, &out)?;
        }
        let pooled = g.global_avg_pool(&out);
        let flat = g.flatten(&pooled);
        self.linear.onnx(s, g, &flat)
    }

    /// One set per basic block: conv1's filters, bn1's channels and conv2's input channels. The
    /// residual stream's channels (stem, block outputs) stay.
    fn channel_sets(&self, s: &ParamStore) -> Vec<super::ChannelSet> {
        let name = |id| s.entry(id).name.clone();
        (self.blocks.iter())
            .map(|b| super::ChannelSet {
                producer: name(b.conv1.weight),
                per_channel: [b.bn1.weight, b.bn1.bias, b.bn1.running_mean, b.bn1.running_var].map(name).to_vec(),
                consumer: name(b.conv2.weight),
                span: 9,
                width: s.entry(b.conv1.weight).shape[0],
            })
            .collect()
    }

    /// 32x32 through stage 1, 16x16 and 8x8 after the stride-2 blocks.
    fn output_positions(&self, s: &ParamStore) -> Vec<(String, usize)> {
        let name = |id| s.entry(id).name.clone();
        let mut side = 32;
        let mut out = vec![(name(self.conv1.weight), side * side)];
        for b in &self.blocks {
            side /= b.conv1.stride;
            out.push((name(b.conv1.weight), side * side));
            out.push((name(b.conv2.weight), side * side));
        }
        out.push((name(self.linear.weight), 1));
        out
    }
}
