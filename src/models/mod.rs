//! The models: CIFAR ResNet-20/32/44/56/110 and AlexNet, each with its parameters in a
//! [`ParamStore`] under PyTorch's names.

pub mod alexnet;
pub mod resnet;

use crate::nn::ParamStore;
use crate::{Error, Result, Tensor};
use rand::SeedableRng;

/// A network's layers: what a model's file implements. The parameters live in the model's
/// [`ParamStore`] (registered by its `build` function under PyTorch's names); the network holds
/// their handles and applies the ops.
pub trait Network: Send + Sync {
    /// Logits [batch, classes] for images [batch, c, h, w] already checked against the spec's
    /// input size. `noise` is `Some(key)` in a training pass (batch statistics in batch norm,
    /// dropout masks drawn from the key), `None` in inference.
    fn forward(&self, store: &ParamStore, x: &Tensor, noise: Option<u64>) -> Result<Tensor>;

    /// The inference pass as ONNX nodes in `g` reading `x`; returns the logits' name.
    fn onnx(&self, store: &ParamStore, g: &mut crate::export::onnx::Graph, x: &str) -> Result<String>;

    /// The channel sets filter pruning may remove, in the order [`Arch::widths`] lists them
    /// (none: the network cannot be filter-pruned).
    fn channel_sets(&self, _store: &ParamStore) -> Vec<ChannelSet> {
        Vec::new()
    }

    /// Output positions per image of each prunable weight, by name (a conv's output height x
    /// width, 1 for an fc layer): its multiply-adds per image are that times its weights (none:
    /// FLOPs are not counted).
    fn output_positions(&self, _store: &ParamStore) -> Vec<(String, usize)> {
        Vec::new()
    }
}

/// What a network is built with: its class count and, for a compact (filter-pruned) network,
/// the width of each of its channel sets (`None`: the standard widths).
#[derive(Clone, Copy, Debug, Default)]
pub struct Arch<'a> {
    pub classes: usize,
    pub widths: Option<&'a [usize]>,
}

impl Arch<'_> {
    /// Channel set `i`'s width: the compact one, else `standard`.
    pub fn width(&self, i: usize, standard: usize) -> usize {
        self.widths.and_then(|w| w.get(i).copied()).unwrap_or(standard)
    }
}

/// A set of channels filter pruning removes together (src/prune/ALGORITHM.md, "Structured
/// variants"): output channel c of the `producer` weight (its row c), entry c of each tensor in
/// `per_channel` (the producer's bias, or its batch norm's scale, shift and running statistics:
/// without them a removed channel would be a non-zero constant), and input channel c of the
/// `consumer` weight (in each of its rows, the `span` columns from c·span).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSet {
    pub producer: String,
    pub per_channel: Vec<String>,
    pub consumer: String,
    pub span: usize,
    /// Channels it has.
    pub width: usize,
}

/// How a spec builds its network: registers the parameters in the store (for `arch`'s classes
/// and widths, initialized from the rng) and returns the layers.
pub type BuildFn = fn(&mut ParamStore, &Arch, &mut rand::rngs::StdRng) -> Box<dyn Network>;

/// The random streams of a run, each keyed by (seed, stream, index) with [`key_for`], so that
/// any step's randomness can be recomputed on resume. The numbers are part of what a seed means:
/// changing one changes every run's results.
pub mod stream {
    /// The order of epoch e's images (index: epoch).
    pub const EPOCH_SHUFFLE: u64 = 1;
    /// Training step s's crops and flips (index: step).
    pub const TRAIN_AUGMENT: u64 = 2;
    /// ADMM minibatch g's images and their crops and flips (index: gradient number).
    pub const ADMM_MINIBATCH: u64 = 3;
    /// Training step s's dropout masks (index: step).
    pub const TRAIN_DROPOUT: u64 = 4;
    /// ADMM minibatch g's dropout masks (index: gradient number).
    pub const ADMM_DROPOUT: u64 = 5;
}

/// A 64-bit key for (seed, stream, index): SplitMix64-style mixing so neighbouring indices give
/// unrelated values. The streams are named in [`stream`]; AlexNet derives each dropout layer's
/// seed from a pass key the same way (stream = layer).
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
    /// What sasprune knows about it.
    pub spec: &'static ModelSpec,
    pub store: ParamStore,
    net: Box<dyn Network>,
    /// Input image size (channels, height, width).
    pub input: (usize, usize, usize),
    pub classes: usize,
    /// A compact (filter-pruned) network's channel-set widths; `None` for the standard one.
    pub widths: Option<Vec<usize>>,
    /// How activations are stored (see [`Precision`]); set with [`Model::set_precision`].
    precision: Precision,
}

/// How a model's activations are stored (`--precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere: the paper's numerics
    #[default]
    F32,
    /// f16 activations (and activation gradients), f32 weights, gradients, optimizer and ADMM
    /// variables, f32 arithmetic in every kernel, dynamic loss scaling
    Mixed,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Mixed => "mixed",
        })
    }
}

/// Where a model's images come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// CIFAR-10's binary release: `--data DIR` holds `cifar-10-batches-bin/`.
    Cifar10,
    /// Packed image folders (`data/pack_imagefolder.py`): `--data DIR` holds `train.pack` and
    /// `val.pack`; the class count comes from the data.
    Packed,
}

/// How a model is trained from scratch: SGD with momentum and a multistep schedule (lr times
/// `gamma` at each milestone epoch). The pipeline's dense phase and `sasprune train` start from
/// it, and masked retraining uses its optimizer settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recipe {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub milestones: &'static [usize],
    pub gamma: f32,
}

/// He et al.'s CIFAR recipe (also the paper's retraining): 200 epochs of batch 128, lr 0.1 / 10
/// at epochs 100 and 150, momentum 0.9, weight decay 1e-4.
pub const CIFAR_RECIPE: Recipe =
    Recipe { epochs: 200, batch: 128, lr: 0.1, momentum: 0.9, weight_decay: 1e-4, milestones: &[100, 150], gamma: 0.1 };

/// The standard ImageNet AlexNet recipe (PyTorch's ImageNet example): 90 epochs of batch 256,
/// lr 0.01 / 10 every 30 epochs, momentum 0.9, weight decay 5e-4. (The CIFAR recipe's lr 0.1
/// diverges on AlexNet within a few steps.)
const IMAGENET_RECIPE: Recipe =
    Recipe { epochs: 90, batch: 256, lr: 0.01, momentum: 0.9, weight_decay: 5e-4, milestones: &[30, 60], gamma: 0.1 };

/// Everything sasprune knows about one model; the only place a model is named. To add a model:
/// its file under `src/models/` (a [`Network`] and a [`BuildFn`]) and one entry in [`MODELS`]
/// (`tests/models.rs` adds a toy one that way).
pub struct ModelSpec {
    /// The name `--model` takes, e.g. "resnet32".
    pub name: &'static str,
    /// Input image size (channels, height, width).
    pub input: (usize, usize, usize),
    /// The class count it is usually built with (what `bench` builds).
    pub classes: usize,
    /// Default input normalization (pixels in [0, 1]): per-channel mean and standard deviation.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub data: DataKind,
    /// Bytes of its largest activation per image (ResNets: 16 channels at 32x32; AlexNet: 64 at
    /// 55x55): what one storage binding must hold, times the batch.
    pub largest_activation_per_image: u64,
    /// Whether a uniform `--rate` keeps the fc layers dense: yes for the CIFAR ResNets (the
    /// paper counts their rates so), no for AlexNet (its fc layers hold 96% of the weights).
    pub fc_dense: bool,
    pub recipe: Recipe,
    /// The final layer's weight [classes, features]: its rows say a checkpoint's class count.
    pub classifier: &'static str,
    pub build: BuildFn,
}

/// A CIFAR ResNet-(6n+2) entry (`build` makes its n blocks per stage).
const fn cifar_resnet(name: &'static str, build: BuildFn) -> ModelSpec {
    ModelSpec {
        name,
        input: (3, 32, 32),
        classes: 10,
        mean: crate::data::CIFAR_MEAN,
        std: crate::data::CIFAR_STD,
        data: DataKind::Cifar10,
        largest_activation_per_image: 16 * 32 * 32 * 4,
        fc_dense: true,
        recipe: CIFAR_RECIPE,
        classifier: "linear.weight",
        build,
    }
}

/// Every model sasprune runs.
pub const MODELS: [ModelSpec; 6] = [
    cifar_resnet("resnet20", |s, a, r| Box::new(resnet::ResNet::new(s, 3, a, r))),
    cifar_resnet("resnet32", |s, a, r| Box::new(resnet::ResNet::new(s, 5, a, r))),
    cifar_resnet("resnet44", |s, a, r| Box::new(resnet::ResNet::new(s, 7, a, r))),
    cifar_resnet("resnet56", |s, a, r| Box::new(resnet::ResNet::new(s, 9, a, r))),
    cifar_resnet("resnet110", |s, a, r| Box::new(resnet::ResNet::new(s, 18, a, r))),
    ModelSpec {
        name: "alexnet",
        input: (3, 224, 224),
        classes: 1000,
        mean: crate::data::IMAGENET_MEAN,
        std: crate::data::IMAGENET_STD,
        data: DataKind::Packed,
        largest_activation_per_image: 64 * 55 * 55 * 4,
        fc_dense: false,
        recipe: IMAGENET_RECIPE,
        classifier: "classifier.6.weight",
        build: |s, a, r| Box::new(alexnet::AlexNet::new(s, a, r)),
    },
];

/// The metadata key of a compact checkpoint's channel-set widths ("16,9,16,...").
pub const WIDTHS_KEY: &str = "widths";

/// The compact widths a checkpoint's metadata records (`None`: a standard network); `path` is
/// named in errors.
pub fn widths_in(
    meta: &std::collections::HashMap<String, String>,
    path: &std::path::Path,
) -> Result<Option<Vec<usize>>> {
    let Some(text) = meta.get(WIDTHS_KEY) else { return Ok(None) };
    text.split(',').map(|w| w.trim().parse::<usize>()).collect::<std::result::Result<Vec<_>, _>>().map(Some).map_err(
        |_| Error::invalid(format!("{}: metadata '{WIDTHS_KEY}' is not a list of widths: '{text}'", path.display())),
    )
}

/// The model names the command line accepts, comma-separated.
pub fn model_names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// The spec of the model `--model` names, or an error listing the ones there are.
pub fn spec(name: &str) -> Result<&'static ModelSpec> {
    MODELS
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| Error::invalid(format!("unknown model '{name}': choose one of {}", model_names())))
}

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

fn largest_activation_bytes(model: &str) -> Result<u64> {
    Ok(spec(model)?.largest_activation_per_image)
}

/// The largest batch whose largest activation fits one storage binding of the adapter.
pub fn largest_batch(model: &str) -> Result<usize> {
    let limit = crate::gpu::get()?.adapter.max_storage_binding;
    Ok((limit / largest_activation_bytes(model)?).max(1) as usize)
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
            (batch as u64 * largest_activation_bytes(model)?) as f64 / 1048576.0,
            gpu.adapter.max_storage_binding as f64 / 1048576.0
        )));
    }
    Ok(())
}

impl Model {
    /// Builds `name` with freshly initialized weights (seeded) on the GPU.
    pub fn build(name: &str, classes: usize, seed: u64) -> Result<Model> {
        Model::from_spec(spec(name)?, classes, seed)
    }

    /// Builds the model `spec` describes (one of [`MODELS`], or a spec of the caller's own).
    pub fn from_spec(spec: &'static ModelSpec, classes: usize, seed: u64) -> Result<Model> {
        Model::with_arch(spec, Arch { classes, widths: None }, seed)
    }

    /// Builds `name` as the compact network of a filter-pruned one: channel set i (in
    /// [`Model::channel_sets`]' order) with `widths[i]` channels; each between 1 and the standard
    /// width, one per set.
    pub fn build_compact(name: &str, classes: usize, widths: &[usize], seed: u64) -> Result<Model> {
        let spec = spec(name)?;
        check_classes(classes)?;
        let mut scratch = ParamStore::new();
        let standard =
            (spec.build)(&mut scratch, &Arch { classes, widths: None }, &mut rand::rngs::StdRng::seed_from_u64(0))
                .channel_sets(&scratch);
        if standard.len() != widths.len() {
            return Err(Error::invalid(format!(
                "{name} has {} prunable channel sets, and the compact widths name {}",
                standard.len(),
                widths.len()
            )));
        }
        if let Some((set, &w)) = standard.iter().zip(widths).find(|(s, &w)| w == 0 || w > s.width) {
            return Err(Error::invalid(format!(
                "compact width {w} for {} (a {name} has {} channels there; a compact one keeps 1 to {})",
                set.producer, set.width, set.width
            )));
        }
        Model::with_arch(spec, Arch { classes, widths: Some(widths) }, seed)
    }

    fn with_arch(spec: &'static ModelSpec, arch: Arch, seed: u64) -> Result<Model> {
        check_classes(arch.classes)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut store = ParamStore::new();
        let net = (spec.build)(&mut store, &arch, &mut rng);
        store.materialize()?;
        let widths = arch.widths.map(<[usize]>::to_vec);
        let (name, input, classes) = (spec.name.to_string(), spec.input, arch.classes);
        Ok(Model { name, spec, store, net, input, classes, widths, precision: Precision::F32 })
    }

    /// Builds `name` standard (`widths` None) or compact ([`Model::build_compact`]).
    pub fn build_arch(name: &str, classes: usize, widths: Option<&[usize]>, seed: u64) -> Result<Model> {
        match widths {
            Some(w) => Model::build_compact(name, classes, w, seed),
            None => Model::build(name, classes, seed),
        }
    }

    /// Builds `name` for the weights in the file `path`: the compact network its metadata's
    /// `widths` describe (a filter-pruned model's `compact.safetensors`), else the standard one.
    /// The weights are not loaded.
    pub fn for_weights(name: &str, classes: usize, path: &std::path::Path, seed: u64) -> Result<Model> {
        let widths = widths_in(&crate::checkpoint::read_metadata(path)?, path)?;
        Model::build_arch(name, classes, widths.as_deref(), seed)
    }

    /// The channel sets filter pruning may remove, with their current widths.
    pub fn channel_sets(&self) -> Vec<ChannelSet> {
        self.net.channel_sets(&self.store)
    }

    /// The widths of its channel sets (what a compact checkpoint's metadata records).
    pub fn widths(&self) -> Vec<usize> {
        self.channel_sets().iter().map(|s| s.width).collect()
    }

    /// Output positions per image of each prunable weight (see [`Network::output_positions`]).
    pub fn output_positions(&self) -> Vec<(String, usize)> {
        self.net.output_positions(&self.store)
    }

    /// One minibatch gradient, the core of every training step (training, the ADMM phases, the
    /// bench, the memory check): zero the gradients, forward in training mode (dropout masks
    /// from `noise`), mean cross-entropy against `labels`, backward. The gradients land in the
    /// store's gradient arena; returns the loss, still on the device.
    ///
    /// In mixed precision backward starts from the loss scale S and the gradients are divided by
    /// it before this returns; a step whose gradients overflowed has the store's skip flag set,
    /// which the optimizers read on the device (the previous step's outcome is applied to S
    /// first, its optimizer having been recorded by then).
    pub fn gradient(&mut self, x: &Tensor, labels: &Tensor, noise: u64) -> Result<Tensor> {
        self.store.update_loss_scale()?;
        self.store.zero_grad()?;
        let l = crate::ops::loss::cross_entropy(&self.forward(x, Pass::Train { noise })?, labels)?;
        self.backward(&l)?;
        Ok(l.detach())
    }

    /// Backward from the loss `l` into the gradient arena: from 1, or in mixed precision from
    /// the loss scale S with the gradients divided by S afterwards (the skip flag set when they
    /// overflowed).
    pub fn backward(&self, l: &Tensor) -> Result<()> {
        match self.store.loss_seed()? {
            Some(seed) => l.backward_with(seed)?,
            None => l.backward()?,
        }
        self.store.unscale_gradients()
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Stores activations per `precision` from now on. Mixed precision needs an adapter with
    /// f16 shaders; it turns on dynamic loss scaling.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision == Precision::Mixed {
            let adapter = &crate::gpu::get()?.adapter;
            if !adapter.shader_f16 {
                return Err(Error::invalid(format!(
                    "--precision mixed stores activations as f16, and {adapter} has no f16 shader support \
                     (wgpu's SHADER_F16); use --precision f32"
                )));
            }
            self.store.enable_loss_scaling()?;
        } else if self.store.loss_scale().is_some() {
            return Err(Error::invalid(
                "a model trained with loss scaling cannot go back to --precision f32 in the same run",
            ));
        }
        self.precision = precision;
        Ok(())
    }

    /// The inference pass as ONNX nodes in `g`, reading the (normalized) images `x`; returns the
    /// logits' name. Each model's graph sits next to its forward pass.
    pub fn onnx(&self, g: &mut crate::export::onnx::Graph, x: &str) -> Result<String> {
        self.net.onnx(&self.store, g, x)
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
        if self.precision == Precision::Mixed && x.dtype() != crate::gpu::Dtype::F16 {
            // the images as f16: every activation after them follows
            let x = crate::ops::elementwise::cast(x, crate::gpu::Dtype::F16)?;
            return self.net.forward(&self.store, &x, noise);
        }
        self.net.forward(&self.store, x, noise)
    }
}
