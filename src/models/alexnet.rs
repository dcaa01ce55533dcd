//! AlexNet in torchvision's layout and names (features.{0,3,6,8,10}, classifier.{1,4,6}),
//! for 224x224 RGB input and any number of classes.

use crate::export::onnx::Graph;
use crate::nn::{Conv2d, Linear, LinearInit, ParamStore};
use crate::ops::{elementwise, pool};
use crate::{Result, Tensor};
use rand::Rng;

pub struct AlexNet {
    convs: Vec<Conv2d>,
    fc: Vec<Linear>,
}

/// Dropout probability of the classifier (torchvision's default).
const DROPOUT: f32 = 0.5;

impl AlexNet {
    /// Conv weights start Kaiming-normal and fc weights normal(0, 0.01) with zero biases
    /// (our choice; torchvision keeps PyTorch's default uniform init).
    /// A compact (filter-pruned) network has `arch.widths`: the filters of the five convs and
    /// the neurons of the first two fc layers.
    pub fn new(store: &mut ParamStore, arch: &super::Arch, rng: &mut impl Rng) -> AlexNet {
        let standard = [64, 192, 384, 256, 256, 4096, 4096];
        let w: Vec<usize> = (0..7).map(|i| arch.width(i, standard[i])).collect();
        let spec =
            [(0, 3, w[0], 11, 4, 2), (3, w[0], w[1], 5, 1, 2), (6, w[1], w[2], 3, 1, 1), (8, w[2], w[3], 3, 1, 1)];
        let last = (10, w[3], w[4], 3, 1, 1);
        let convs = (spec.iter().chain([&last]))
            .map(|&(i, c_in, c_out, k, s, p)| {
                Conv2d::new(store, &format!("features.{i}"), c_in, c_out, k, s, p, true, rng)
            })
            .collect();
        let fc = [(1, w[4] * 6 * 6, w[5]), (4, w[5], w[6]), (6, w[6], arch.classes)]
            .iter()
            .map(|&(i, in_f, out_f)| {
                Linear::new(store, &format!("classifier.{i}"), in_f, out_f, LinearInit::Normal(0.01), rng)
            })
            .collect();
        AlexNet { convs, fc }
    }

    fn features(&self) -> usize {
        self.convs.len()
    }
}

impl super::Network for AlexNet {
    /// Logits [batch, classes] for images [batch, 3, 224, 224]. `noise` is `Some(key)` in
    /// training: dropout is on, each dropout layer's mask seeded from (key, layer).
    fn forward(&self, s: &ParamStore, x: &Tensor, noise: Option<u64>) -> Result<Tensor> {
        let mut out = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            out = conv.forward_relu(s, &out)?;
            if matches!(i, 0 | 1 | 4) {
                out = pool::max_pool2d(&out, 3, 2, 0)?;
            }
        }
        let out = pool::adaptive_avg_pool2d(&out, 6, 6)?;
        let channels = out.shape()[1];
        let mut out = out.reshape(&[x.shape()[0], channels * 6 * 6])?;
        for (i, fc) in self.fc.iter().enumerate() {
            if let Some(key) = noise.filter(|_| i < 2) {
                out = elementwise::dropout(&out, DROPOUT, dropout_seed(key, i as u64))?;
            }
            out = fc.forward(s, &out)?;
            if i < 2 {
                out = elementwise::relu(&out)?;
            }
        }
        Ok(out)
    }

    /// `forward` in inference (no dropout), as ONNX nodes reading `x`; returns the logits. The
    /// adaptive average pool to 6x6 is left out: at the 224x224 input the model takes, the
    /// features are 6x6 already and the pool is the identity.
    fn onnx(&self, s: &ParamStore, g: &mut Graph, x: &str) -> Result<String> {
        let mut out = x.to_string();
        for (i, conv) in self.convs.iter().enumerate() {
            let c = conv.onnx(s, g, &out)?;
            out = g.relu(&c);
            if matches!(i, 0 | 1 | 4) {
                out = g.max_pool(&out, 3, 2, 0);
            }
        }
        let mut out = g.flatten(&out);
        for (i, fc) in self.fc.iter().enumerate() {
            out = fc.onnx(s, g, &out)?;
            if i < 2 {
                out = g.relu(&out);
            }
        }
        Ok(out)
    }

    /// Each conv's filters (with its bias; the next conv's input channels, or for the last conv
    /// the first fc layer's 36 columns per channel) and the first two fc layers' neurons (with
    /// their biases; the next fc layer's columns).
    fn channel_sets(&self, s: &ParamStore) -> Vec<super::ChannelSet> {
        let weights: Vec<_> = (self.convs.iter().map(|c| (c.weight, c.bias.expect("AlexNet's convs have biases"))))
            .chain(self.fc.iter().map(|f| (f.weight, f.bias)))
            .collect();
        (0..weights.len() - 1)
            .map(|i| super::ChannelSet {
                producer: s.entry(weights[i].0).name.clone(),
                per_channel: vec![s.entry(weights[i].1).name.clone()],
                consumer: s.entry(weights[i + 1].0).name.clone(),
                span: match i + 1 {
                    n if n < self.features() => s.entry(weights[n].0).shape[2..].iter().product(),
                    n if n == self.features() => 36,
                    _ => 1,
                },
                width: s.entry(weights[i].0).shape[0],
            })
            .collect()
    }

    /// 55x55, 27x27, then 13x13 for the last three convs; 1 for the fc layers.
    fn output_positions(&self, s: &ParamStore) -> Vec<(String, usize)> {
        let sides = [55, 27, 13, 13, 13];
        (self.convs.iter().zip(sides).map(|(c, side)| (s.entry(c.weight).name.clone(), side * side)))
            .chain(self.fc.iter().map(|f| (s.entry(f.weight).name.clone(), 1)))
            .collect()
    }
}

/// The 32-bit seed of dropout layer `layer` in the pass with noise key `key`: neighbouring keys
/// and layers give unrelated masks.
fn dropout_seed(key: u64, layer: u64) -> u32 {
    (super::key_for(key, layer, 0) >> 32) as u32
}
