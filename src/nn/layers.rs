//! Layers: each registers its tensors in the store under PyTorch's names and applies the ops.

use super::{ParamId, ParamStore, Role};
use crate::export::onnx::Graph;
use crate::ops::{batchnorm, conv2d, matmul};
use crate::{Result, Tensor};
use rand::Rng;
use rand_distr::{Distribution, Normal, Uniform};

fn normal(n: usize, std: f32, rng: &mut impl Rng) -> Vec<f32> {
    let d = Normal::new(0.0f32, std).expect("std is finite and positive");
    (0..n).map(|_| d.sample(rng)).collect()
}

fn uniform(n: usize, bound: f32, rng: &mut impl Rng) -> Vec<f32> {
    let d = Uniform::new_inclusive(-bound, bound).expect("bound is finite");
    (0..n).map(|_| d.sample(rng)).collect()
}

pub struct Conv2d {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    /// `name.weight` [c_out, c_in, k, k] with Kaiming-normal init (std sqrt(2 / fan_in), as
    /// `torch.nn.init.kaiming_normal_`), and `name.bias` (zeros) when `bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
        rng: &mut impl Rng,
    ) -> Conv2d {
        let fan_in = c_in * k * k;
        let w = normal(c_out * fan_in, (2.0 / fan_in as f32).sqrt(), rng);
        let weight = store.add(format!("{name}.weight"), &[c_out, c_in, k, k], Role::PrunableWeight, w);
        let bias = bias.then(|| store.add(format!("{name}.bias"), &[c_out], Role::Param, vec![0.0; c_out]));
        Conv2d { weight, bias, stride, pad }
    }

    /// This layer as an ONNX `Conv` reading `x`; returns its output's name.
    pub fn onnx(&self, s: &ParamStore, g: &mut Graph, x: &str) -> Result<String> {
        let bias = self.bias.map(|b| s.entry(b).name.clone());
        g.conv(x, &s.entry(self.weight).name, bias.as_deref(), self.stride, self.pad)
    }

    pub fn forward(&self, s: &ParamStore, x: &Tensor) -> Result<Tensor> {
        conv2d::conv2d(x, s.get(self.weight), self.bias.map(|b| s.get(b)), self.stride, self.pad)
    }

    /// `relu(self.forward(x))`; one kernel without a graph.
    pub fn forward_relu(&self, s: &ParamStore, x: &Tensor) -> Result<Tensor> {
        conv2d::conv2d_relu(x, s.get(self.weight), self.bias.map(|b| s.get(b)), self.stride, self.pad)
    }

    /// `relu(bn(self.forward(x)) + residual)` (the residual when given), as a ResNet block's
    /// convolutions are used; one kernel in evaluation without a graph.
    pub fn forward_bn_relu(
        &self,
        s: &ParamStore,
        x: &Tensor,
        bn: &BatchNorm2d,
        residual: Option<&Tensor>,
        training: bool,
    ) -> Result<Tensor> {
        conv2d::conv2d_batch_norm_relu(
            x,
            (s.get(self.weight), self.bias.map(|b| s.get(b))),
            (self.stride, self.pad),
            [bn.weight, bn.bias, bn.running_mean, bn.running_var].map(|id| s.get(id)),
            residual,
            batchnorm::BatchNormConfig { training, ..Default::default() },
        )
    }
}

pub struct BatchNorm2d {
    pub weight: ParamId,
    pub bias: ParamId,
    pub running_mean: ParamId,
    pub running_var: ParamId,
}

impl BatchNorm2d {
    /// PyTorch's init: weight 1, bias 0, running mean 0, running variance 1.
    pub fn new(store: &mut ParamStore, name: &str, c: usize) -> BatchNorm2d {
        BatchNorm2d {
            weight: store.add(format!("{name}.weight"), &[c], Role::Param, vec![1.0; c]),
            bias: store.add(format!("{name}.bias"), &[c], Role::Param, vec![0.0; c]),
            running_mean: store.add(format!("{name}.running_mean"), &[c], Role::Buffer, vec![0.0; c]),
            running_var: store.add(format!("{name}.running_var"), &[c], Role::Buffer, vec![1.0; c]),
        }
    }

    /// This layer in inference (running statistics) as ONNX, reading `x`; returns its output.
    pub fn onnx(&self, s: &ParamStore, g: &mut Graph, x: &str) -> Result<String> {
        let prefix = s.entry(self.weight).name.trim_end_matches(".weight").to_string();
        g.batch_norm(x, &prefix, batchnorm::BatchNormConfig::default().eps)
    }

    pub fn forward(&self, s: &ParamStore, x: &Tensor, training: bool) -> Result<Tensor> {
        batchnorm::batch_norm(
            x,
            s.get(self.weight),
            s.get(self.bias),
            s.get(self.running_mean),
            s.get(self.running_var),
            batchnorm::BatchNormConfig { training, ..Default::default() },
        )
    }
}

/// How a fully connected layer's weight starts.
#[derive(Clone, Copy)]
pub enum LinearInit {
    /// Kaiming normal (the CIFAR ResNets); bias uniform in ±1/sqrt(fan_in) as PyTorch's default.
    KaimingNormal,
    /// Normal with this std, bias 0.
    Normal(f32),
}

pub struct Linear {
    pub weight: ParamId,
    pub bias: ParamId,
}

impl Linear {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        in_f: usize,
        out_f: usize,
        init: LinearInit,
        rng: &mut impl Rng,
    ) -> Linear {
        let (w, b) = match init {
            LinearInit::KaimingNormal => {
                (normal(out_f * in_f, (2.0 / in_f as f32).sqrt(), rng), uniform(out_f, 1.0 / (in_f as f32).sqrt(), rng))
            }
            LinearInit::Normal(std) => (normal(out_f * in_f, std, rng), vec![0.0; out_f]),
        };
        Linear {
            weight: store.add(format!("{name}.weight"), &[out_f, in_f], Role::PrunableWeight, w),
            bias: store.add(format!("{name}.bias"), &[out_f], Role::Param, b),
        }
    }

    /// This layer as an ONNX `Gemm` reading `x` [batch, in]; returns its output's name.
    pub fn onnx(&self, s: &ParamStore, g: &mut Graph, x: &str) -> Result<String> {
        g.linear(x, &s.entry(self.weight).name, &s.entry(self.bias).name)
    }

    pub fn forward(&self, s: &ParamStore, x: &Tensor) -> Result<Tensor> {
        matmul::linear(x, s.get(self.weight), Some(s.get(self.bias)))
    }
}
