//! The command line's flags: every subcommand's arguments, parsed by clap; closed sets are
//! `ValueEnum`s, so a value outside them is refused by the parser with the list of choices.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use sasprune::checkpoint::Normalize;
use sasprune::models::Precision;
use sasprune::prune::pipeline::{Method, Schedule};
use sasprune::prune::structure::Structure;
use sasprune::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sasprune",
    version,
    about = "Prune CNN weights with SAS-ADMM on any GPU (wgpu: Vulkan, Metal, DX12, GL)",
    long_about = "Prune CNN weights with SAS-ADMM on any GPU (wgpu: Vulkan, Metal, DX12, GL).\n\n\
                  Without a subcommand, runs the pruning pipeline: dense start, ADMM phase, hard pruning, \
                  masked retraining, report. Example: sasprune --model resnet32 --rate 6.6x"
)]
pub(crate) struct Cli {
    /// GPU backend: vulkan, metal, dx12, gl (default: any; env SASPRUNE_BACKEND)
    #[arg(long, global = true)]
    pub(crate) backend: Option<String>,
    /// Use the adapter whose name contains this text (env SASPRUNE_ADAPTER)
    #[arg(long, global = true)]
    pub(crate) adapter: Option<String>,
    /// Kernel autotuning: auto (measure GEMM/conv plans on GPUs, fixed defaults on software
    /// drivers), on, or off (fixed defaults per device type, reproducible across machines);
    /// env SASPRUNE_TUNE
    #[arg(long, global = true, value_enum)]
    pub(crate) tune: Option<sasprune::tune::Mode>,
    /// The tuner's cache file (default: the OS cache directory's sasprune/tune.json; `none`
    /// keeps choices in memory); env SASPRUNE_TUNE_CACHE
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) tune_cache: Option<std::path::PathBuf>,
    /// Wall-clock limit for the pipeline, `train` and `compare`, e.g. 9m, 2h, 1h30m (1s to 366d):
    /// the run saves its state and stops before it (counting its own save time), prints the
    /// command that continues it, and exits with code 75 (not 1, a failure); give it again on
    /// every resume
    #[arg(long, global = true, value_name = "DURATION")]
    pub(crate) time_limit: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) prune: PruneArgs,
}

/// `train --schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TrainSchedule {
    /// lr times --gamma at each of --milestones
    Multistep,
    /// lr · (1 + cos(π · step / steps)) / 2
    Cosine,
}

/// `--admm-lr-schedule`: ADMM-NN's learning rate within an iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AdmmLrSchedule {
    /// divided by 10 at 1/3 and 2/3 of each iteration, as ADMM-NN's authors do
    Thirds,
    /// the same all through
    Constant,
}

/// `--admm-train`: which parameters ADMM-NN's W-step trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AdmmTrain {
    /// every parameter, as ADMM-NN's authors do
    All,
    /// the prunable weights only (batch norm and biases frozen)
    Weights,
}

/// The pruning pipeline's flags (the default command).
/// Recorded in a run's `command.json` (serde) and read back by `--resume`; a field a record lacks
/// takes the parser's default.
#[derive(Args, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct PruneArgs {
    /// resnet20, resnet32, resnet44, resnet56, resnet110 or alexnet (ImageNet-style data:
    /// --data holds train.pack and val.pack; the class count comes from the data)
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Target: 6.6x (compression of conv + fc weights) or 85% (pruned share of each layer); the
    /// unit is required. The ResNets prune every conv layer by the same share and keep the fc
    /// layer dense (as the paper counts); alexnet prunes every conv and fc layer by the same
    /// share. Not together with --layer-rates
    #[arg(long)]
    pub(crate) rate: Option<String>,
    /// Per-layer pruned percentages: a file of `layer-name percentage` lines (see data/)
    #[arg(long)]
    pub(crate) layer_rates: Option<PathBuf>,
    /// The pruning method
    #[arg(long, value_enum, default_value = "sas-admm")]
    pub(crate) method: Method,
    /// What is removed together. filter: --rate counts the conv + fc weights the removed channels
    /// take with them (the report gives FLOPs too) and a compact model is saved; 2:4 halves every
    /// layer whose rows are whole quads (no --rate)
    #[arg(long, value_enum, default_value = "weight")]
    pub(crate) structure: Structure,
    /// How activations are stored: f32 (the paper's numerics), or mixed: f16 activations and
    /// activation gradients (half the memory traffic), f32 weights, optimizer and ADMM variables,
    /// f32 arithmetic, dynamic loss scaling (needs an adapter with f16 shaders)
    #[arg(long, value_enum, default_value = "f32")]
    pub(crate) precision: Precision,
    /// The schedule every default comes from (README lists them all)
    #[arg(long, value_enum, default_value = "paper")]
    pub(crate) schedule: Schedule,
    /// Dense weights to start from (safetensors, PyTorch names); without it a dense model is
    /// trained first
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// Run directory (default: runs/<model>-<rate>-<method>; compare: runs/<model>-compare, or
    /// runs/paper-table with --paper-table)
    #[arg(long)]
    #[serde(skip)]
    pub(crate) out: Option<PathBuf>,
    /// Continue the run in this directory (with the flags it was started with; --data and --lr
    /// may be given again)
    #[arg(long)]
    #[serde(skip)]
    pub(crate) resume: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Use only the first N training images (quick experiments)
    #[arg(long)]
    pub(crate) subset: Option<usize>,
    /// Evaluate on the first N test images only
    #[arg(long)]
    pub(crate) eval_limit: Option<usize>,
    /// SAS-ADMM β (penalty), in (0, 1e4]
    #[arg(long)]
    pub(crate) beta: Option<f32>,
    /// SAS-ADMM ρ (proximal weight), in (0, 1e4]
    #[arg(long)]
    pub(crate) rho: Option<f32>,
    /// SAS-ADMM λ (L1 weight), in [0, 1e3]
    #[arg(long)]
    pub(crate) lambda: Option<f32>,
    /// M: inner iterations before k0, at least 1 (inner loops are capped at 1e7 steps)
    #[arg(long)]
    pub(crate) inner: Option<usize>,
    /// K: outer iterations, 1 to 1,000,000 (K_avg moves with it unless given; k0 does not, so a K
    /// below k0 runs every iteration at M steps and η = 1/v)
    #[arg(long)]
    pub(crate) outer: Option<usize>,
    /// K_avg: ergodic averaging starts after this outer iteration, 0 to K (default: the
    /// schedule's, 170 of 190 or 16 of 20, moved with --outer to average the same share)
    #[arg(long)]
    pub(crate) k_avg: Option<usize>,
    /// k0: inner length grows from this outer iteration on, at least 1
    #[arg(long)]
    pub(crate) k0: Option<usize>,
    /// v: step-size constant (η = 1/v before k0), in (0, 1e6]
    #[arg(long)]
    pub(crate) v: Option<f64>,
    /// q: growth exponent of the inner length, in (0, 3]
    #[arg(long)]
    pub(crate) q: Option<f64>,
    /// r: first dual step factor; (r, s) must lie in symmetric ADMM's convergence region: r in
    /// (−1, 1), s in (0, 1.618), r + s > 0, |r| < 1 + s − s²
    #[arg(long)]
    pub(crate) r: Option<f32>,
    /// s: second dual step factor (see --r)
    #[arg(long)]
    pub(crate) s: Option<f32>,
    /// Minibatch of the ADMM phase, at least 1 (and what the adapter can hold)
    #[arg(long)]
    pub(crate) batch: Option<usize>,
    /// Epochs of masked retraining, 1 to 1,000,000 (under --schedule paper the recipe's
    /// learning-rate drops move to the same share of them: 50 epochs drop at 25 and 38)
    #[arg(long)]
    pub(crate) retrain_epochs: Option<usize>,
    /// Learning rate of masked retraining, > 0
    #[arg(long)]
    pub(crate) lr: Option<f32>,
    /// Minibatch of masked retraining, at least 1 (and what the adapter can hold)
    #[arg(long)]
    pub(crate) retrain_batch: Option<usize>,
    /// ADMM-NN ρ0, the penalty of the first iteration (> 0). Default: its authors' 1e-3 scaled to
    /// the W-subproblems' length, so that each pulls W toward Z as far as theirs of 7,820 steps do
    /// (about 3.7e-3 for --schedule paper; it moves with --admm-steps, --admm-lr and
    /// --admm-lr-schedule); 1e-3 gives their value literally
    #[arg(long)]
    pub(crate) admm_rho: Option<f32>,
    /// ADMM-NN: ρ is multiplied by this at every iteration, in [1, 10] (default 1.3; 1 keeps it
    /// constant)
    #[arg(long)]
    pub(crate) admm_rho_growth: Option<f32>,
    /// ADMM-NN: ρ never grows past this (> 0; default 100)
    #[arg(long)]
    pub(crate) admm_rho_max: Option<f32>,
    /// ADMM-NN learning rate of the W-step at the start of every iteration (> 0; default 0.01)
    #[arg(long)]
    pub(crate) admm_lr: Option<f32>,
    /// ADMM-NN learning rate within an iteration: thirds (divided by 10 at 1/3 and 2/3 of it, as
    /// its authors do; default) or constant
    #[arg(long, value_enum)]
    pub(crate) admm_lr_schedule: Option<AdmmLrSchedule>,
    /// ADMM-NN weight decay in the W-step, in [0, 1) (default 1e-4)
    #[arg(long)]
    pub(crate) admm_weight_decay: Option<f32>,
    /// ADMM-NN: which parameters the W-step trains: all (default, as its authors do) or weights
    /// (the prunable weights only; batch norm and biases frozen)
    #[arg(long, value_enum)]
    pub(crate) admm_train: Option<AdmmTrain>,
    /// ADMM-NN: clear the SGD momentum at the start of every iteration (default: it carries over)
    #[arg(long)]
    pub(crate) admm_reset_momentum: bool,
    /// ADMM-NN iterations, at least 1 (default: 10 for --schedule paper, 4 for quick)
    #[arg(long)]
    pub(crate) admm_iterations: Option<usize>,
    /// ADMM-NN SGD steps per iteration, at least 1 (default: SAS-ADMM's gradient budget shared
    /// among the iterations)
    #[arg(long)]
    pub(crate) admm_steps: Option<usize>,
    /// Before pruning, fine-tune the dense start for N epochs with the retraining recipe (no mask;
    /// its learning-rate drops at the same share of N) on the same data: the report's baseline,
    /// against which the pruned accuracy is compared
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) baseline_epochs: usize,
    /// Evaluate the dense training and the retraining every N epochs (and after the last one)
    /// instead of after every epoch: less evaluation time, coarser best-checkpoint choice
    #[arg(long, value_name = "N")]
    pub(crate) eval_every: Option<usize>,
    /// Reproducible step by step: no augmentation, ADMM minibatches in file order (batch g is
    /// images g·B … g·B+B−1, cycling), training epochs in file order; dropout masks and batch
    /// norm as usual. Results then depend only on the data, the flags and the kernels' arithmetic
    #[arg(long)]
    pub(crate) deterministic: bool,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub(crate) enum Command {
    /// List every GPU adapter on every backend
    Devices,
    /// Benchmark every kernel family and a ResNet-32 training step on the chosen adapter;
    /// results are printed and appended as JSON lines (adapter, version, commit) to --out
    Bench {
        /// A short run (small sizes, fewer repetitions)
        #[arg(long)]
        quick: bool,
        /// Only measurements whose name contains this text (e.g. gemm, conv, resnet32)
        #[arg(long)]
        filter: Option<String>,
        /// A filter-pruned run's compact.safetensors: its training steps and evaluation are
        /// measured beside those of the dense model (names end in -compact)
        #[arg(long, value_name = "FILE")]
        compact: Option<PathBuf>,
        /// File the JSON lines are appended to
        #[arg(long, default_value = "bench-results.jsonl")]
        out: PathBuf,
        /// Measure nothing: print the JSON lines in these files (this bench's and a peer's, e.g.
        /// benches/peers/pytorch_resnet32.py) as one Markdown table, each measurement's latest
        /// value beside the peer's with their ratio (later files win: list a tuning run first)
        #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with_all = ["quick", "compact", "out"])]
        table: Vec<PathBuf>,
    },
    /// Run every method (--methods) through the whole pipeline from the same dense start with the
    /// same budget, once per seed (--seeds), and write compare.md (mean ± std of top-1 after
    /// pruning and after retraining, gradients, time; per run the gradients to a common prune gap,
    /// the share of the phase's output hard pruning removes), compare.csv (every run), compare.svg
    /// (prune gap against gradients),
    /// compare_accuracy.svg (top-1 against training images) and convergence.svg (the ADMM phases) to
    /// --out. Magnitude pruning retrains for as many more epochs as the ADMM phase's gradients
    /// amount to (its learning-rate drops moved with them). Run the same command again to
    /// continue an interrupted comparison.
    /// --paper-table runs the paper's rows and writes paper_table.md
    Compare(CompareArgs),
    /// Evaluate a model on the test set
    Eval(EvalArgs),
    /// Write a model's inference graph and weights as ONNX (opset 13, free batch dimension) for
    /// deployment runtimes: ONNX Runtime, TensorRT, OpenVINO, tract, ...
    Export(ExportArgs),
    /// Train a model (dense, or resume an interrupted run)
    Train(TrainArgs),
}

#[derive(Args, Clone, Serialize, Deserialize)]
pub(crate) struct CompareArgs {
    #[command(flatten)]
    pub(crate) prune: PruneArgs,
    /// Methods to compare, comma-separated
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sas-admm,admm,magnitude")]
    pub(crate) methods: Vec<Method>,
    /// Runs per method, with seeds --seed, --seed + 1, ...
    #[arg(long, default_value_t = 1)]
    pub(crate) seeds: usize,
    /// Structures to compare, comma-separated (every method under each); default: --structure's
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) structures: Vec<Structure>,
    /// The paper's CIFAR-10 table: compare every row of --rows at the paper's rate (ResNet-32 at
    /// 85% per conv layer = 6.61x, ResNet-56 at 90% = 9.93x) into --out/<model>, then write
    /// paper_table.md / .csv with the paper's claims beside the results. Not with --model, --rate,
    /// --layer-rates or --weights (see --weights-dir)
    #[arg(long)]
    pub(crate) paper_table: bool,
    /// The paper table's rows, comma-separated: resnet32, resnet56
    #[arg(long, default_value = "resnet32,resnet56", requires = "paper_table")]
    pub(crate) rows: String,
    /// The paper table's dense starts: DIR/<model>.safetensors for each row (e.g.
    /// ../shared/pretrained); without it each row trains its dense model first
    #[arg(long, value_name = "DIR", requires = "paper_table")]
    pub(crate) weights_dir: Option<PathBuf>,
}

#[derive(Args, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DataArgs {
    /// Directory holding cifar-10-batches-bin/ (or that directory itself); for alexnet, a
    /// directory holding train.pack and val.pack. Default: data/
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// Input normalization: cifar, imagenet, MEAN,STD, or six numbers (R,G,B means then R,G,B
    /// standard deviations of pixels in [0, 1]). Default: what the weights' metadata names, else
    /// cifar for the ResNets and imagenet for alexnet (with a warning when weights name none)
    #[arg(long, value_name = "STATS")]
    pub(crate) normalize: Option<String>,
}

impl DataArgs {
    pub(crate) fn normalize(&self) -> Result<Option<Normalize>> {
        self.normalize.as_deref().map(Normalize::from_flag).transpose()
    }
}

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// resnet20, resnet32, resnet44, resnet56, resnet110 or alexnet
    #[arg(long)]
    pub(crate) model: String,
    /// Weights to evaluate (safetensors with PyTorch names)
    #[arg(long)]
    pub(crate) weights: PathBuf,
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// Images per batch (default: 500, or the largest batch the adapter can run the model with
    /// when that is less)
    #[arg(long)]
    pub(crate) batch: Option<usize>,
    /// Number of classes (default: as many as the data holds)
    #[arg(long)]
    pub(crate) classes: Option<usize>,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub(crate) json: bool,
    /// How activations are stored: f32 (the paper's numerics), or mixed: f16 activations and
    /// activation gradients (half the memory traffic), f32 weights, optimizer and ADMM variables,
    /// f32 arithmetic, dynamic loss scaling (needs an adapter with f16 shaders)
    #[arg(long, value_enum, default_value = "f32")]
    pub(crate) precision: Precision,
}

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// resnet20, resnet32, resnet44, resnet56, resnet110 or alexnet
    #[arg(long)]
    pub(crate) model: String,
    /// Weights to export (safetensors with PyTorch names, e.g. a run's pruned.safetensors)
    #[arg(long)]
    pub(crate) weights: PathBuf,
    /// The ONNX file to write
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Fold each batch norm into the convolution before it (fewer nodes; pruned weights stay
    /// exact zeros)
    #[arg(long)]
    pub(crate) fold_bn: bool,
    /// Put the input normalization in the graph, so it takes pixels in [0, 1]; without it the
    /// caller normalizes, with the mean and std the file's metadata gives
    #[arg(long)]
    pub(crate) normalize_in_graph: bool,
    /// Store each pruned weight as its non-zero values plus a bitmask (about the pruning rate
    /// smaller), rebuilt by standard operators when the file is loaded
    #[arg(long)]
    pub(crate) sparse: bool,
    /// Input normalization: cifar, imagenet, MEAN,STD, or six numbers. Default: what the weights'
    /// metadata names, else the model's default
    #[arg(long, value_name = "STATS")]
    pub(crate) normalize: Option<String>,
    /// Number of classes (default: the rows of the weights' classifier)
    #[arg(long)]
    pub(crate) classes: Option<usize>,
    /// A text file with one class name per line, in label order, recorded in the metadata
    /// (default: CIFAR-10's names for a CIFAR model with 10 classes)
    #[arg(long, value_name = "FILE")]
    pub(crate) class_names: Option<PathBuf>,
}

/// Recorded like [`PruneArgs`].
#[derive(Args, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct TrainArgs {
    /// resnet20, resnet32, resnet44, resnet56, resnet110 or alexnet
    #[arg(long)]
    pub(crate) model: Option<String>,
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// Start from these weights instead of a fresh initialization
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// Run directory (default: runs/<model>-train-seed<seed>)
    #[arg(long)]
    #[serde(skip)]
    pub(crate) out: Option<PathBuf>,
    /// Continue the run saved in this directory with the flags it was started with (--data,
    /// --steps, --save-every and --lr may be given again)
    #[arg(long)]
    #[serde(skip)]
    pub(crate) resume: Option<PathBuf>,
    /// Epochs, 1 to 1,000,000 (default: the model's recipe: 200 for the ResNets, 90 for alexnet)
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Images per step, at least 1 and what the adapter can hold (default: the model's recipe:
    /// 128 for the ResNets, 256 for alexnet)
    #[arg(long)]
    pub(crate) batch: Option<usize>,
    /// Learning rate, > 0 (default: the model's recipe: 0.1 for the ResNets, 0.01 for alexnet)
    #[arg(long)]
    pub(crate) lr: Option<f32>,
    /// SGD momentum, in [0, 1) (default: the model's recipe, 0.9)
    #[arg(long)]
    pub(crate) momentum: Option<f32>,
    /// Weight decay, 0 or more (default: the model's recipe: 1e-4 for the ResNets, 5e-4 for
    /// alexnet)
    #[arg(long)]
    pub(crate) weight_decay: Option<f32>,
    #[arg(long)]
    pub(crate) nesterov: bool,
    /// The learning-rate schedule
    #[arg(long, value_enum, default_value = "multistep")]
    pub(crate) schedule: TrainSchedule,
    /// Epochs at which multistep multiplies the learning rate by --gamma (comma-separated;
    /// default: the model's recipe, at the same share of --epochs: 100,150 of 200 for the
    /// ResNets, 30,60 of 90 for alexnet)
    #[arg(long)]
    pub(crate) milestones: Option<String>,
    /// What multistep multiplies the learning rate by at each milestone, in (0, 1] (default: the
    /// model's recipe, 0.1)
    #[arg(long)]
    pub(crate) gamma: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Stop after this many steps in all (resume to continue)
    #[arg(long)]
    pub(crate) steps: Option<usize>,
    /// Train on the first N training images only
    #[arg(long)]
    pub(crate) subset: Option<usize>,
    /// No augmentation and no shuffling (for debugging)
    #[arg(long)]
    pub(crate) deterministic: bool,
    /// Save a resumable checkpoint every N steps (and at the end of every epoch)
    #[arg(long, default_value_t = 500)]
    pub(crate) save_every: usize,
    /// Evaluate every N epochs (and after the last one) instead of after every epoch
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) eval_every: usize,
    /// How activations are stored: f32 (the paper's numerics), or mixed: f16 activations and
    /// activation gradients (half the memory traffic), f32 weights, optimizer and ADMM variables,
    /// f32 arithmetic, dynamic loss scaling (needs an adapter with f16 shaders)
    #[arg(long, value_enum, default_value = "f32")]
    pub(crate) precision: Precision,
    /// Number of classes (default: as many as the data holds)
    #[arg(long)]
    pub(crate) classes: Option<usize>,
}

/// What the parser gives a set of flags when none is given: the value a field missing from a
/// saved record takes.
fn parser_defaults<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches = cmd.try_get_matches_from(Vec::<String>::new()).expect("no flag is required");
    T::from_arg_matches(&matches).expect("the defaults parse")
}

impl Default for PruneArgs {
    fn default() -> Self {
        parser_defaults()
    }
}

impl Default for TrainArgs {
    fn default() -> Self {
        parser_defaults()
    }
}

/// Parses the command line. The pipeline's flags belong to the command without a subcommand;
/// the global ones (--backend, --adapter, --tune, --tune-cache) may stand before or after a
/// subcommand.
pub(crate) fn parse_cli() -> Result<Cli> {
    let matches = Cli::command().get_matches();
    if let Some((sub, _)) = matches.subcommand() {
        let misplaced: Vec<String> = PruneArgs::augment_args(clap::Command::new("pipeline"))
            .get_arguments()
            .filter(|arg| matches.value_source(arg.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine))
            .map(|arg| format!("--{}", arg.get_long().unwrap_or(arg.get_id().as_str())))
            .collect();
        if !misplaced.is_empty() {
            let verb = if misplaced.len() == 1 { "belongs" } else { "belong" };
            return Err(Error::invalid(format!(
                "{} {verb} to the pruning pipeline (no subcommand), not to `{sub}`; put a subcommand's own flags \
                 after its name",
                misplaced.join(", ")
            )));
        }
    }
    Cli::from_arg_matches(&matches).map_err(|e| Error::invalid(e.to_string()))
}
