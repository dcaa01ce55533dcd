//! The models: CIFAR ResNet-20/32/44/56/110 and AlexNet, each with its parameters in a
//! [`ParamStore`] under PyTorch's names.

pub mod alexnet;
pub mod resnet;

use crate::nn::ParamStore;
use crate::{Error, Result, Tensor};
use rand::SeedableRng;

enum Net {
    ResNet(resnet::ResNet),
    AlexNet(alexnet::AlexNet),
}

/// A 64-bit key for (seed, stream, index): SplitMix64-style mixing so neighbouring indices give
/// unrelated values. Streams: 1 epoch shuffles, 2 training augmentation, 3 ADMM minibatches,
/// 4 training dropout, 5 ADMM dropout; AlexNet derives each dropout layer's seed from a pass key
/// the same way (stream = layer).
pub(crate) fn key_for(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a forward pass is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Inference: running batch-norm statistics, no dropout.
    Eval,
    /// Training: batch statistics; dropout masks are a function of `noise` (the training loops
    /// derive it from the run's seed and the step, so a resumed run draws the same masks).
    Train { noise: u64 },
}

pub struct Model {
    /// e.g. "resnet32"
    pub name: String,
    pub store: ParamStore,
    net: Net,
    /// Input image size (channels, height, width).
    pub input: (usize, usize, usize),
    pub classes: usize,
}

/// The model names the command line accepts.
pub const MODEL_NAMES: &[&str] = &["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "alexnet"];

/// The most classes a model may have (ImageNet-21k has 21,841); bounds `--classes` before anything
/// is allocated from it.
pub const MAX_CLASSES: usize = 100_000;

/// Checks a class count (`--classes`) before anything is allocated from it.
pub fn check_classes(classes: usize) -> Result<()> {
    if !(2..=MAX_CLASSES).contains(&classes) {
        return Err(Error::invalid(format!(
            "--classes {classes}: a classifier needs between 2 and {MAX_CLASSES} classes"
        )));
    }
    Ok(())
}

/// Bytes of `model`'s largest activation per image (ResNets: 16 channels at 32x32; AlexNet: 64 at
/// 55x55): what one storage binding must hold, times the batch.
fn largest_activation_bytes(model: &str) -> u64 {
    if model == "alexnet" {
        64 * 55 * 55 * 4
    } else {
        16 * 32 * 32 * 4
    }
}

/// The largest batch whose largest activation fits one storage binding of the adapter.
pub fn largest_batch(model: &str) -> Result<usize> {
    let limit = crate::gpu::get()?.adapter.max_storage_binding;
    Ok((limit / largest_activation_bytes(model)).max(1) as usize)
}

/// Checks a batch size given with `flag` before anything is allocated from it: at least 1, and
/// at most [`largest_batch`].
pub fn check_batch(model: &str, batch: usize, flag: &str) -> Result<()> {
    if batch == 0 {
        return Err(Error::invalid(format!("{flag} must be at least 1")));
    }
    let most = largest_batch(model)?;
    if batch > most {
        let gpu = crate::gpu::get()?;
        return Err(Error::invalid(format!(
            "{flag} {batch} is more than {} can run {model} with: its largest activation would need {:.0} MiB in one \
             storage binding, and the adapter allows {:.0} MiB; use {flag} {most} or less",
            gpu.adapter.name,
            (batch as u64 * largest_activation_bytes(model)) as f64 / 1048576.0,
            gpu.adapter.max_storage_binding as f64 / 1048576.0
        )));
    }
    Ok(())
}

impl Model {
    /// Builds `name` with freshly initialized weights (seeded) on the GPU.
    pub fn build(name: &str, classes: usize, seed: u64) -> Result<Model> {
        check_classes(classes)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut store = ParamStore::new();
        let (net, input) = match name {
            "alexnet" => (Net::AlexNet(alexnet::AlexNet::new(&mut store, classes, &mut rng)), (3, 224, 224)),
            _ => {
                let depth = name.strip_prefix("resnet").and_then(|d| d.parse::<usize>().ok());
                match depth {
                    Some(d) if d >= 8 && (d - 2) % 6 == 0 && MODEL_NAMES.contains(&name) => {
                        (Net::ResNet(resnet::ResNet::new(&mut store, (d - 2) / 6, classes, &mut rng)), (3, 32, 32))
                    }
                    _ => {
                        return Err(Error::invalid(format!(
                            "unknown model '{name}': choose one of {}",
                            MODEL_NAMES.join(", ")
                        )))
                    }
                }
            }
        };
        store.materialize()?;
        Ok(Model { name: name.to_string(), store, net, input, classes })
    }

    /// Logits [batch, classes]. A training pass uses batch statistics (and updates the running
    /// ones) in batch norm and applies dropout with masks drawn from the pass's `noise` key.
    pub fn forward(&mut self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let (c, h, w) = self.input;
        if x.shape().len() != 4 || x.shape()[1..] != [c, h, w] {
            return Err(Error::shape(
                "model input",
                format!("{} takes images [batch, {c}, {h}, {w}], got {:?}", self.name, x.shape()),
            ));
        }
        let noise = match pass {
            Pass::Eval => None,
            Pass::Train { noise } => {
                self.store.batches_tracked += 1;
                Some(noise)
            }
        };
        match &self.net {
            Net::ResNet(n) => n.forward(&self.store, x, noise.is_some()),
            Net::AlexNet(n) => n.forward(&self.store, x, noise),
        }
    }
}
