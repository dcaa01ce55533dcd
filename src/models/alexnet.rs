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
    pub fn new(store: &mut ParamStore, classes: usize, rng: &mut impl Rng) -> AlexNet {
        let spec = [
            (0, 3, 64, 11, 4, 2),
            (3, 64, 192, 5, 1, 2),
            (6, 192, 384, 3, 1, 1),
            (8, 384, 256, 3, 1, 1),
            (10, 256, 256, 3, 1, 1),
        ];
        let convs = spec
            .iter()
            .map(|&(i, c_in, c_out, k, s, p)| {
                Conv2d::new(store, &format!("features.{i}"), c_in, c_out, k, s, p, true, rng)
            })
            .collect();
        let fc = [(1, 256 * 6 * 6, 4096), (4, 4096, 4096), (6, 4096, classes)]
            .iter()
            .map(|&(i, in_f, out_f)| {
                Linear::new(store, &format!("classifier.{i}"), in_f, out_f, LinearInit::Normal(0.01), rng)
            })
            .collect();
        AlexNet { convs, fc }
    }
}

impl super::Network for AlexNet {
    /// Logits [batch, classes] for images [batch, 3, 224, 224]. `noise` is `Some(key)` in
    /// training: dropout is on, each dropout layer's mask seeded from (key, layer).
    fn forward(&self, s: &ParamStore, x: &Tensor, noise: Option<u64>) -> Result<Tensor> {
        let mut out = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            out = elementwise::relu(&conv.forward(s, &out)?)?;
            if matches!(i, 0 | 1 | 4) {
                out = pool::max_pool2d(&out, 3, 2, 0)?;
            }
        }
        let out = pool::adaptive_avg_pool2d(&out, 6, 6)?;
        let mut out = out.reshape(&[x.shape()[0], 256 * 6 * 6])?;
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
}

/// The 32-bit seed of dropout layer `layer` in the pass with noise key `key`: neighbouring keys
/// and layers give unrelated masks.
fn dropout_seed(key: u64, layer: u64) -> u32 {
    (super::key_for(key, layer, 0) >> 32) as u32
}
