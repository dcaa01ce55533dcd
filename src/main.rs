//! The `sasprune` command line: parses arguments and calls the library.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use sasprune::checkpoint::{self, Normalize};
use sasprune::data::{cifar::Cifar10, packed::PackedSplit, Dataset};
use sasprune::models::{DataKind, Model};
use sasprune::prune::{
    self,
    admm::{AdmmNnConfig, SasConfig},
    pipeline::{Method, PipelineConfig},
};
use sasprune::run_dir::{self, DataRecord, RunLock, RunRecord};
use sasprune::train::{self, LrSchedule, Progress, TrainConfig};
use sasprune::{gpu, Error, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "sasprune",
    version,
    about = "Prune CNN weights with SAS-ADMM on any GPU (wgpu: Vulkan, Metal, DX12, GL)",
    long_about = "Prune CNN weights with SAS-ADMM on any GPU (wgpu: Vulkan, Metal, DX12, GL).\n\n\
                  Without a subcommand, runs the pruning pipeline: dense start, ADMM phase, hard pruning, \
                  masked retraining, report. Example: sasprune --model resnet32 --rate 6.6x"
)]
struct Cli {
    /// GPU backend: vulkan, metal, dx12, gl (default: any; env SASPRUNE_BACKEND)
    #[arg(long, global = true)]
    backend: Option<String>,
    /// Use the adapter whose name contains this text (env SASPRUNE_ADAPTER)
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Kernel autotuning: auto (measure GEMM/conv plans on GPUs, fixed defaults on software
    /// drivers), on, or off (fixed defaults per device type, reproducible across machines);
    /// env SASPRUNE_TUNE
    #[arg(long, global = true, value_parser = ["auto", "on", "off"])]
    tune: Option<String>,
    /// The tuner's cache file (default: the OS cache directory's sasprune/tune.json; `none`
    /// keeps choices in memory); env SASPRUNE_TUNE_CACHE
    #[arg(long, global = true, value_name = "FILE")]
    tune_cache: Option<std::path::PathBuf>,
    /// Wall-clock limit for the pipeline, `train` and `compare`, e.g. 9m, 2h, 1h30m (1s to 366d):
    /// the run saves its state and stops before it (counting its own save time), prints the
    /// command that continues it, and exits with code 75 (not 1, a failure); give it again on
    /// every resume
    #[arg(long, global = true, value_name = "DURATION")]
    time_limit: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    prune: PruneArgs,
}

/// The pruning pipeline's flags (the default command).
#[derive(Args, Clone)]
struct PruneArgs {
    /// resnet20, resnet32, resnet44, resnet56, resnet110 or alexnet (ImageNet-style data:
    /// --data holds train.pack and val.pack; the class count comes from the data)
    #[arg(long)]
    model: Option<String>,
    /// Target: 6.6x (compression of conv + fc weights) or 85% (pruned share of each layer); the
    /// unit is required. The ResNets prune every conv layer by the same share and keep the fc
    /// layer dense (as the paper counts); alexnet prunes every conv and fc layer by the same
    /// share. Not together with --layer-rates
    #[arg(long)]
    rate: Option<String>,
    /// Per-layer pruned percentages: a file of `layer-name percentage` lines (see data/)
    #[arg(long)]
    layer_rates: Option<PathBuf>,
    /// sas-admm, admm (ADMM-NN) or magnitude (one-shot)
    #[arg(long, default_value = "sas-admm")]
    method: String,
    /// paper (the paper's and its authors' code's defaults: K=190, 200 retraining epochs; README
    /// lists them all) or quick (scaled down)
    #[arg(long, default_value = "paper")]
    schedule: String,
    /// Dense weights to start from (safetensors, PyTorch names); without it a dense model is
    /// trained first
    #[arg(long)]
    weights: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Run directory (default: runs/<model>-<rate>-<method>)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory (with the flags it was started with)
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use only the first N training images (quick experiments)
    #[arg(long)]
    subset: Option<usize>,
    /// Evaluate on the first N test images only
    #[arg(long)]
    eval_limit: Option<usize>,
    /// SAS-ADMM β (penalty), in (0, 1e4]
    #[arg(long)]
    beta: Option<f32>,
    /// SAS-ADMM ρ (proximal weight), in (0, 1e4]
    #[arg(long)]
    rho: Option<f32>,
    /// SAS-ADMM λ (L1 weight), in [0, 1e3]
    #[arg(long)]
    lambda: Option<f32>,
    /// M: inner iterations before k0, at least 1 (inner loops are capped at 1e7 steps)
    #[arg(long)]
    inner: Option<usize>,
    /// K: outer iterations, 1 to 1,000,000
    #[arg(long)]
    outer: Option<usize>,
    /// K_avg: ergodic averaging starts after this outer iteration (0 or more)
    #[arg(long)]
    k_avg: Option<usize>,
    /// k0: inner length grows from this outer iteration on, at least 1
    #[arg(long)]
    k0: Option<usize>,
    /// v: step-size constant (η = 1/v before k0), in (0, 1e6]
    #[arg(long)]
    v: Option<f64>,
    /// q: growth exponent of the inner length, in (0, 3]
    #[arg(long)]
    q: Option<f64>,
    /// r: first dual step factor; (r, s) must lie in symmetric ADMM's convergence region: r in
    /// (−1, 1), s in (0, 1.618), r + s > 0, |r| < 1 + s − s²
    #[arg(long)]
    r: Option<f32>,
    /// s: second dual step factor (see --r)
    #[arg(long)]
    s: Option<f32>,
    /// Minibatch of the ADMM phase, at least 1 (and what the adapter can hold)
    #[arg(long)]
    batch: Option<usize>,
    /// Epochs of masked retraining, 1 to 1,000,000
    #[arg(long)]
    retrain_epochs: Option<usize>,
    /// Learning rate of masked retraining, > 0
    #[arg(long)]
    lr: Option<f32>,
    /// Minibatch of masked retraining, at least 1 (and what the adapter can hold)
    #[arg(long)]
    retrain_batch: Option<usize>,
    /// ADMM-NN ρ0, the penalty of the first iteration (> 0). Default: its authors' 1e-3 scaled to
    /// the W-subproblems' length, so that each pulls W toward Z as far as theirs of 7,820 steps do
    /// (about 3.7e-3 for --schedule paper); 1e-3 gives their value literally
    #[arg(long)]
    admm_rho: Option<f32>,
    /// ADMM-NN: ρ is multiplied by this at every iteration, in [1, 10] (default 1.3; 1 keeps it
    /// constant)
    #[arg(long)]
    admm_rho_growth: Option<f32>,
    /// ADMM-NN: ρ never grows past this (> 0; default 1)
    #[arg(long)]
    admm_rho_max: Option<f32>,
    /// ADMM-NN learning rate of the W-step at the start of every iteration (> 0; default 0.01)
    #[arg(long)]
    admm_lr: Option<f32>,
    /// ADMM-NN learning rate within an iteration: thirds (divided by 10 at 1/3 and 2/3 of it, as
    /// its authors do; default) or constant
    #[arg(long, value_parser = ["thirds", "constant"])]
    admm_lr_schedule: Option<String>,
    /// ADMM-NN weight decay in the W-step, in [0, 1) (default 1e-4)
    #[arg(long)]
    admm_weight_decay: Option<f32>,
    /// ADMM-NN: which parameters the W-step trains: all (default, as its authors do) or weights
    /// (the prunable weights only; batch norm and biases frozen)
    #[arg(long, value_parser = ["all", "weights"])]
    admm_train: Option<String>,
    /// ADMM-NN: clear the SGD momentum at the start of every iteration (default: it carries over)
    #[arg(long)]
    admm_reset_momentum: bool,
    /// ADMM-NN iterations, at least 1 (default: 10 for --schedule paper, 4 for quick)
    #[arg(long)]
    admm_iterations: Option<usize>,
    /// ADMM-NN SGD steps per iteration, at least 1 (default: SAS-ADMM's gradient budget shared
    /// among the iterations)
    #[arg(long)]
    admm_steps: Option<usize>,
    /// Before pruning, fine-tune the dense start for N epochs with the retraining recipe (no mask)
    /// on the same data: the report's baseline, against which the pruned accuracy is compared
    #[arg(long, default_value_t = 0, value_name = "N")]
    baseline_epochs: usize,
    /// Reproducible step by step: no augmentation, ADMM minibatches in file order (batch g is
    /// images g·B … g·B+B−1, cycling), training epochs in file order; dropout masks and batch
    /// norm as usual. Results then depend only on the data, the flags and the kernels' arithmetic
    #[arg(long)]
    deterministic: bool,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
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
        /// File the JSON lines are appended to
        #[arg(long, default_value = "bench-results.jsonl")]
        out: PathBuf,
    },
    /// Run every method (--methods) through the whole pipeline from the same dense start with the
    /// same budget, once per seed (--seeds), and write compare.md (mean ± std of top-1 after
    /// pruning and after retraining, gradients, time; per run the gradients to a common relative
    /// residual), compare.csv (every run), compare.svg (relative residual against gradients),
    /// compare_accuracy.svg (top-1 against gradients) and convergence.svg (the ADMM phases) to
    /// --out. Magnitude pruning retrains for as many more epochs as the ADMM phase's gradients
    /// amount to. Run the same command again to continue an interrupted comparison.
    /// --paper-table runs the paper's rows and writes paper_table.md
    Compare(CompareArgs),
    /// Evaluate a model on the test set
    Eval(EvalArgs),
    /// Train a model (dense, or resume an interrupted run)
    Train(TrainArgs),
}

#[derive(Args, Clone)]
struct CompareArgs {
    #[command(flatten)]
    prune: PruneArgs,
    /// Methods to compare, comma-separated
    #[arg(long, default_value = "sas-admm,admm,magnitude")]
    methods: String,
    /// Runs per method, with seeds --seed, --seed + 1, ...
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// The paper's CIFAR-10 table: compare every row of --rows at the paper's rate (ResNet-32 at
    /// 85% per conv layer = 6.61x, ResNet-56 at 90% = 9.93x) into --out/<model>, then write
    /// paper_table.md / .csv with the paper's claims beside the results. Not with --model, --rate,
    /// --layer-rates or --weights (see --weights-dir)
    #[arg(long)]
    paper_table: bool,
    /// The paper table's rows, comma-separated: resnet32, resnet56
    #[arg(long, default_value = "resnet32,resnet56", requires = "paper_table")]
    rows: String,
    /// The paper table's dense starts: DIR/<model>.safetensors for each row (e.g.
    /// ../shared/pretrained); without it each row trains its dense model first
    #[arg(long, value_name = "DIR", requires = "paper_table")]
    weights_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Directory holding cifar-10-batches-bin/ (or that directory itself); for alexnet, a
    /// directory holding train.pack and val.pack. Default: data/
    #[arg(long)]
    data: Option<PathBuf>,
    /// Input normalization: cifar, imagenet, MEAN,STD, or six numbers (R,G,B means then R,G,B
    /// standard deviations of pixels in [0, 1]). Default: what the weights' metadata names, else
    /// cifar for the ResNets and imagenet for alexnet (with a warning when weights name none)
    #[arg(long, value_name = "STATS")]
    normalize: Option<String>,
}

impl DataArgs {
    fn normalize(&self) -> Result<Option<Normalize>> {
        self.normalize.as_deref().map(Normalize::from_flag).transpose()
    }
}

#[derive(Args)]
struct EvalArgs {
    /// resnet20, resnet32, resnet44, resnet56, resnet110 or alexnet
    #[arg(long)]
    model: String,
    /// Weights to evaluate (safetensors with PyTorch names)
    #[arg(long)]
    weights: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Images per batch (default: 500, or the largest batch the adapter can run the model with
    /// when that is less)
    #[arg(long)]
    batch: Option<usize>,
    /// Number of classes (default: as many as the data holds)
    #[arg(long)]
    classes: Option<usize>,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// resnet20, resnet32, resnet44, resnet56, resnet110 or alexnet
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    data: DataArgs,
    /// Start from these weights instead of a fresh initialization
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Run directory (default: runs/<model>-train-<seed>)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in this directory with the flags it was started with (--data,
    /// --steps and --save-every may be given again)
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Epochs, 1 to 1,000,000 (default: the model's recipe: 200 for the ResNets, 90 for alexnet)
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per step, at least 1 and what the adapter can hold (default: the model's recipe:
    /// 128 for the ResNets, 256 for alexnet)
    #[arg(long)]
    batch: Option<usize>,
    /// Learning rate, > 0 (default: the model's recipe: 0.1 for the ResNets, 0.01 for alexnet)
    #[arg(long)]
    lr: Option<f32>,
    /// SGD momentum, in [0, 1) (default: the model's recipe, 0.9)
    #[arg(long)]
    momentum: Option<f32>,
    /// Weight decay, 0 or more (default: the model's recipe: 1e-4 for the ResNets, 5e-4 for
    /// alexnet)
    #[arg(long)]
    weight_decay: Option<f32>,
    #[arg(long)]
    nesterov: bool,
    /// multistep or cosine
    #[arg(long, default_value = "multistep")]
    schedule: String,
    /// Epochs at which multistep multiplies the learning rate by --gamma (comma-separated;
    /// default: the model's recipe: 100,150 for the ResNets, 30,60 for alexnet)
    #[arg(long)]
    milestones: Option<String>,
    /// What multistep multiplies the learning rate by at each milestone, in (0, 1] (default: the
    /// model's recipe, 0.1)
    #[arg(long)]
    gamma: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many steps in all (resume to continue)
    #[arg(long)]
    steps: Option<usize>,
    /// Train on the first N training images only
    #[arg(long)]
    subset: Option<usize>,
    /// No augmentation and no shuffling (for debugging)
    #[arg(long)]
    deterministic: bool,
    /// Save a resumable checkpoint every N steps (and at the end of every epoch)
    #[arg(long, default_value_t = 500)]
    save_every: usize,
    /// Number of classes (default: as many as the data holds)
    #[arg(long)]
    classes: Option<usize>,
}

/// `--classes`, or as many classes as the data holds (CIFAR-10: 10; a pack: its header's count),
/// checked before anything is allocated from it.
fn classes_for(given: Option<usize>, data: &dyn Dataset) -> Result<usize> {
    let classes = given.unwrap_or(data.classes());
    sasprune::models::check_classes(classes)?;
    Ok(classes)
}

/// (train, test) datasets for `model`.
fn open_data(model: &str, dir: Option<&Path>) -> Result<(Box<dyn Dataset>, Box<dyn Dataset>)> {
    match sasprune::models::spec(model)?.data {
        DataKind::Packed => {
            let dir = dir.unwrap_or(Path::new("data"));
            let open = |f: &str| PackedSplit::open(&dir.join(f)).map(|s| Box::new(s) as Box<dyn Dataset>);
            Ok((open("train.pack")?, open("val.pack")?))
        }
        DataKind::Cifar10 => {
            let c = Cifar10::locate(dir)?;
            Ok((Box::new(c.train), Box::new(c.test)))
        }
    }
}

fn say_adapter() -> Result<()> {
    eprintln!("adapter: {}", gpu::get()?.adapter);
    Ok(())
}

/// The pipeline configuration the flags describe (validated before any work starts).
fn pipeline_config(a: &PruneArgs) -> Result<PipelineConfig> {
    let Some(model) = a.model.clone() else {
        return Err(Error::invalid(
            "say which model to prune, e.g. `sasprune --model resnet32 --rate 6.6x` (or run a subcommand; see --help)",
        ));
    };
    let spec = sasprune::models::spec(&model)?;
    let rate = match (&a.rate, &a.layer_rates) {
        (Some(r), Some(f)) => {
            return Err(Error::invalid(format!(
                "--rate {r} and --layer-rates {} both set the pruning target: the file gives every layer its \
                 percentage, so drop --rate (or the file)",
                f.display()
            )))
        }
        (Some(r), _) => prune::rate::parse_rate(r)?,
        (None, Some(_)) => prune::rate::Rate::Percent(50.0), // unused: the file decides
        (None, None) => {
            return Err(Error::invalid("give a target with --rate (e.g. 6.6x or 85%) or --layer-rates FILE"))
        }
    };
    let method = Method::parse(&a.method)?;
    // dense training and masked retraining follow the model's recipe (for the ResNets the CIFAR
    // one, which is also the paper's retraining); quick shortens both to cosine schedules
    let recipe = TrainConfig::from_recipe(&spec.recipe);
    let (mut sas, mut retrain, dense) = match a.schedule.as_str() {
        "paper" => (SasConfig::paper(), recipe.clone(), recipe),
        "quick" => {
            let retrain =
                TrainConfig { epochs: 15, lr: recipe.lr / 2.0, schedule: LrSchedule::Cosine, ..recipe.clone() };
            let dense = TrainConfig { epochs: 30, schedule: LrSchedule::Cosine, ..recipe };
            (SasConfig::quick(), retrain, dense)
        }
        other => return Err(Error::invalid(format!("unknown --schedule '{other}': choose paper or quick"))),
    };
    macro_rules! set {
        ($target:expr, $flag:expr) => {
            if let Some(v) = $flag {
                $target = v;
            }
        };
    }
    set!(sas.beta, a.beta);
    set!(sas.rho, a.rho);
    set!(sas.lambda, a.lambda);
    set!(sas.inner, a.inner);
    set!(sas.outer, a.outer);
    set!(sas.k_avg, a.k_avg);
    set!(sas.k0, a.k0);
    set!(sas.v, a.v);
    set!(sas.q, a.q);
    set!(sas.r, a.r);
    set!(sas.s, a.s);
    set!(sas.batch, a.batch);
    sas.file_order = a.deterministic;
    retrain.deterministic = a.deterministic;
    set!(retrain.epochs, a.retrain_epochs);
    set!(retrain.lr, a.lr);
    set!(retrain.batch, a.retrain_batch);
    sas.validate()?;
    let iterations = match a.schedule.as_str() {
        "quick" => AdmmNnConfig::QUICK_ITERATIONS,
        _ => AdmmNnConfig::PAPER_ITERATIONS,
    };
    let mut admm = AdmmNnConfig::authors(&sas, a.admm_iterations.unwrap_or(iterations));
    if a.admm_iterations.is_some() && a.admm_steps.is_none() {
        // the given iterations share the budget (authors() never makes more than the gradients)
        admm.iterations = a.admm_iterations.unwrap_or(admm.iterations);
        admm.steps = sas.total_gradients().div_ceil(admm.iterations.max(1));
    }
    set!(admm.rho_growth, a.admm_rho_growth);
    set!(admm.rho_max, a.admm_rho_max);
    set!(admm.lr, a.admm_lr);
    set!(admm.weight_decay, a.admm_weight_decay);
    set!(admm.steps, a.admm_steps);
    admm.lr_drops = a.admm_lr_schedule.as_deref() != Some("constant");
    admm.train_all = a.admm_train.as_deref() != Some("weights");
    admm.reset_momentum = a.admm_reset_momentum;
    // ρ0 matched to the W-subproblems as they now are, unless given
    admm.rho = a.admm_rho.unwrap_or_else(|| admm.matched_rho());
    retrain.seed = a.seed;
    if a.subset == Some(0) || a.eval_limit == Some(0) {
        return Err(Error::invalid("--subset and --eval-limit must be at least 1"));
    }
    retrain.validate_as("--retrain-epochs", "--retrain-batch")?;
    sasprune::models::check_batch(&model, sas.batch, "--batch")?;
    sasprune::models::check_batch(&model, retrain.batch, "--retrain-batch")?;
    dense.validate()?;
    admm.validate()?;
    let rate_tag = a.rate.clone().unwrap_or_else(|| "layers".into()).replace('%', "pct");
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/{model}-{rate_tag}-{}", method.name())));
    retrain.divergence_hint = format!(
        "continue from it with a lower learning rate: `sasprune --resume {} --lr {}`",
        out.display(),
        train::lr_text(retrain.lr / 10.0)
    );
    Ok(PipelineConfig {
        model,
        rate,
        layer_rates: a.layer_rates.clone(),
        method,
        schedule: a.schedule.clone(),
        sas,
        admm,
        retrain,
        dense: TrainConfig {
            seed: a.seed,
            deterministic: a.deterministic,
            announce_eta_after: Some(20),
            // the dense phase's lr comes from --schedule, not --lr (that one is the retraining's)
            divergence_hint: "train the dense model with `sasprune train --lr ...` and pass it as --weights".into(),
            ..dense
        },
        weights: a.weights.clone(),
        preloaded: Default::default(),
        normalize: a.data.normalize()?,
        out,
        seed: a.seed,
        subset: a.subset,
        eval_limit: a.eval_limit,
        deterministic: a.deterministic,
        baseline_epochs: a.baseline_epochs,
        show_progress: true,
    })
}

/// Flags a run directory does not record: the global ones (they choose the machine, not the
/// result) and the run directory itself. All take a value.
const NOT_RECORDED: [&str; 7] =
    ["--backend", "--adapter", "--tune", "--tune-cache", "--time-limit", "--out", "--resume"];

/// The command line's tokens that describe the run: without the program name, the subcommand
/// `sub` and the flags in NOT_RECORDED (with their values).
fn recorded_args(args: &[OsString], sub: Option<&str>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut sub = sub;
    let mut skip_value = false;
    for t in args.iter().skip(1) {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        // the run record is JSON text: a token it keeps must be UTF-8 (paths travel as OsString
        // everywhere else, and --out, which is not recorded, may be any name)
        let Some(t) = t.to_str() else {
            return Err(Error::invalid(format!(
                "'{}' is not UTF-8 text, and a run records its flags as text so that --resume can replay them: \
                 rename that file or directory (only --out may have such a name)",
                t.to_string_lossy()
            )));
        };
        if sub == Some(t) {
            sub = None;
            continue;
        }
        if NOT_RECORDED.contains(&t.split('=').next().unwrap_or("")) {
            skip_value = !t.contains('=');
            continue;
        }
        out.push(t.to_string());
    }
    Ok(out)
}

/// For `--resume DIR`: the command line to parse in place of this one, made of the flags the
/// run was started with (read from DIR) and the ones given now, which must be among
/// `overridable` (where the data lies, how far to go, a lower learning rate after divergence).
/// The returned record holds the updated flags: callers save it once the resumed run is
/// validated, so the next resume continues with them.
fn resume_command_line(
    dir: &Path,
    command: &str,
    args: &[OsString],
    overridable: &[&str],
) -> Result<(Vec<OsString>, RunRecord)> {
    let sub = (command != "pipeline").then_some(command);
    let given = recorded_args(args, sub)?;
    let mut overrides = Vec::new();
    let mut extra = Vec::new();
    let mut tokens = given.iter();
    while let Some(t) = tokens.next() {
        let (name, inline) = match t.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (t.as_str(), None),
        };
        if overridable.contains(&name) {
            let value = inline.or_else(|| tokens.next().cloned()).unwrap_or_default();
            overrides.push((name.to_string(), value));
        } else {
            extra.push(t.as_str());
        }
    }
    if !extra.is_empty() {
        return Err(Error::invalid(format!(
            "--resume continues a run with the flags it started with (see {}); besides {} it takes no others \
             (got {}). To change settings, start a new run with --out",
            dir.join(run_dir::RECORD_FILE).display(),
            overridable.join(", "),
            extra.join(" ")
        )));
    }
    let mut record = RunRecord::load(dir, command)?;
    record.args = run_dir::replay(&record.args, &overrides);
    let mut line: Vec<OsString> = vec!["sasprune".into()];
    line.extend(sub.map(OsString::from));
    line.extend(record.args.iter().map(OsString::from));
    line.extend([if command == "pipeline" { "--out" } else { "--resume" }.into(), dir.as_os_str().to_owned()]);
    Ok((line, record))
}

/// Writes the record of a new run into `dir`, refusing a directory that already holds one.
fn start_run_record(dir: &Path, command: &str, args: &[OsString], data: DataRecord) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let sub = (command != "pipeline").then_some(command);
    RunRecord::new(command, recorded_args(args, sub)?, data).save(dir)
}

fn run_pipeline(args: &[OsString], a: &PruneArgs) -> Result<()> {
    // `--resume DIR` replays the flags the run was started with.
    let (a, record) = match &a.resume {
        Some(dir) => {
            let (line, record) = resume_command_line(dir, "pipeline", args, &["--data", "--lr"])?;
            let cli = Cli::try_parse_from(&line)
                .map_err(|e| Error::invalid(format!("{}: {e}", dir.join(run_dir::RECORD_FILE).display())))?;
            let mut prune = cli.prune;
            // Runs started before a rate needed its unit saved `--rate 6.6`, which meant 6.6x then.
            if let Some(r) = prune.rate.as_mut().filter(|r| r.trim().parse::<f64>().is_ok()) {
                r.push('x');
            }
            (prune, Some(record))
        }
        None => (a.clone(), None),
    };
    let cfg = pipeline_config(&a)?;
    // Validate the plan and the data before any work starts.
    let (train_set, test_set) = open_data(&cfg.model, a.data.data.as_deref())?;
    let data = DataRecord::of(train_set.as_ref(), test_set.as_ref());
    say_adapter()?;
    let mut model = Model::build(&cfg.model, train_set.classes(), cfg.seed)?;
    prune::pipeline::make_plan(&model, &cfg)?;
    let dense_done = sasprune::run_dir::RunState::load(&cfg.out)?.done("dense");
    let mut cfg = cfg;
    if let Some(w) = cfg.weights.clone().filter(|_| !dense_done) {
        // names, shapes (the class count included) and values, before any work, read once (a
        // pipe cannot be read twice) and handed to the dense phase; a run past its dense start
        // has its own copy (dense.safetensors), so a moved run needs no --weights file
        let ck = checkpoint::Checkpoint::load(&w)?;
        checkpoint::load_model_from(&mut model, &ck, &w)?;
        cfg.preloaded = checkpoint::Preloaded::new(ck);
    }
    let cfg = prune::pipeline::check_memory(&mut model, &cfg, train_set.as_ref(), test_set.as_ref())?;
    drop(model);
    let _lock = RunLock::acquire(&cfg.out)?;
    match record {
        Some(record) => {
            record.check_data(&cfg.out, &data, a.data.data.as_deref())?;
            record.save(&cfg.out)?;
        }
        None => {
            if RunRecord::exists(&cfg.out) {
                return Err(Error::invalid(format!(
                    "{} already holds a run: continue it with --resume {0} or choose another --out",
                    cfg.out.display()
                )));
            }
            start_run_record(&cfg.out, "pipeline", args, data)?;
        }
    }
    prune::pipeline::run(&cfg, train_set.as_ref(), test_set.as_ref()).map_err(|e| {
        with_resume_hint(e, &format!("sasprune --resume {}", cfg.out.display()), &saved_pipeline(&cfg.out))
    })?;
    Ok(())
}

/// A run that failed after it started (a full disk, a lost device, a diverged loss) keeps what it
/// saved: the error says what that is (`saved`, from [`saved_pipeline`] or [`saved_training`])
/// and how to continue, unless it already does.
fn with_resume_hint(e: Error, command: &str, saved: &str) -> Error {
    // a divergence message says what to change and how to go on; a resume alone would diverge again
    if matches!(e, Error::Diverged(_)) {
        return e;
    }
    if let Error::TimeLimit(msg) = e {
        return Error::TimeLimit(format!(
            "{msg}; saved: {saved}; continue with `{command}` (with --time-limit again for a limited session)"
        ));
    }
    Error::invalid(format!("{e}; saved: {saved}; continue with `{command}`"))
}

/// What a pipeline run directory holds for a resume, in words.
fn saved_pipeline(dir: &Path) -> String {
    let log = sasprune::run_dir::RunState::load(dir).unwrap_or_default();
    let mut parts: Vec<String> =
        sasprune::run_dir::RunState::PHASES.iter().filter(|p| log.done(p)).map(|p| format!("the {p} phase")).collect();
    if let Ok(ck) = checkpoint::Checkpoint::load(&dir.join("admm_state.safetensors")) {
        if let Some(k) = ck.metadata.get("k").filter(|_| !log.done("admm")) {
            parts.push(format!("the ADMM phase through outer iteration {k}"));
        }
    }
    for phase in ["dense", "baseline", "retrain"] {
        if let Some(step) = train::saved_step(&dir.join(phase)).filter(|_| !log.done(phase)) {
            parts.push(format!("{phase} training through step {step}"));
        }
    }
    if parts.is_empty() {
        "nothing yet (the run starts over from its beginning)".into()
    } else {
        parts.join(", ")
    }
}

/// What a training run directory holds for a resume, in words.
fn saved_training(dir: &Path) -> String {
    match train::saved_step(dir) {
        Some(step) => format!("the checkpoint of step {step}"),
        None => "no checkpoint yet (the run starts over from step 0)".into(),
    }
}

/// Parses `train`'s schedule flags (milestones and gamma default to the model's recipe).
fn train_schedule(a: &TrainArgs, recipe: &sasprune::models::Recipe) -> Result<LrSchedule> {
    match a.schedule.as_str() {
        "cosine" => Ok(LrSchedule::Cosine),
        "multistep" => {
            let milestones = match &a.milestones {
                None => recipe.milestones.to_vec(),
                Some(text) => text
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| Error::invalid(format!("--milestones must be epochs like 100,150, got '{text}'")))?,
            };
            Ok(LrSchedule::MultiStep { milestones, gamma: a.gamma.unwrap_or(recipe.gamma) })
        }
        other => Err(Error::invalid(format!("unknown --schedule '{other}': choose multistep or cosine"))),
    }
}

/// `sasprune train`: a new run, or `--resume DIR` alone continuing one with its saved flags.
fn run_train(a: TrainArgs, args: &[OsString], options: &gpu::GpuOptions) -> Result<()> {
    // A run directory that holds a record is resumed from its saved flags; one from a version
    // that kept none is resumed with the flags given now (seed and batch checked).
    let (a, record) = match &a.resume {
        Some(dir) if RunRecord::exists(dir) || !dir.join(train::STATE_FILE).exists() => {
            let overridable = ["--data", "--steps", "--save-every", "--lr"];
            let (line, record) = resume_command_line(dir, "train", args, &overridable)?;
            let cli = Cli::try_parse_from(&line)
                .map_err(|e| Error::invalid(format!("{}: {e}", dir.join(run_dir::RECORD_FILE).display())))?;
            let Some(Command::Train(saved)) = cli.command else {
                return Err(Error::invalid(format!("{} does not record a training run", dir.display())));
            };
            (saved, Some(record))
        }
        _ => (a, None),
    };
    let Some(model_name) = a.model.clone() else {
        return Err(Error::invalid("say which model to train with --model (e.g. resnet20), or --resume DIR"));
    };
    let dir = match (&a.resume, &a.out) {
        (Some(dir), _) => dir.clone(),
        (None, Some(out)) => out.clone(),
        (None, None) => PathBuf::from(format!("runs/{model_name}-train-seed{}", a.seed)),
    };
    if a.resume.is_none() && [train::METRICS_FILE, train::STATE_FILE].iter().any(|f| dir.join(f).exists()) {
        // A new run must not append to another run's metrics or inherit its best top-1.
        return Err(Error::invalid(format!(
            "{} already holds a training run: continue it with --resume {0}, or choose another --out",
            dir.display()
        )));
    }
    // flags not given take the model's recipe (AlexNet's is ImageNet's, not the CIFAR one)
    let recipe = sasprune::models::spec(&model_name)?.recipe;
    let lr = a.lr.unwrap_or(recipe.lr);
    let batch = a.batch.unwrap_or(recipe.batch);
    let cfg = TrainConfig {
        epochs: a.epochs.unwrap_or(recipe.epochs),
        batch,
        lr,
        momentum: a.momentum.unwrap_or(recipe.momentum),
        weight_decay: a.weight_decay.unwrap_or(recipe.weight_decay),
        nesterov: a.nesterov,
        schedule: train_schedule(&a, &recipe)?,
        seed: a.seed,
        max_steps: a.steps,
        subset: a.subset,
        deterministic: a.deterministic,
        save_every: a.save_every.max(1),
        divergence_hint: format!(
            "continue with a lower learning rate: `sasprune train --resume {} --lr {}`",
            dir.display(),
            train::lr_text(lr / 10.0)
        ),
        ..TrainConfig::cifar_default()
    };
    cfg.validate()?;
    sasprune::models::check_batch(&model_name, batch, "--batch")?;
    if let Some(c) = a.classes {
        sasprune::models::check_classes(c)?;
    }
    let flag_norm = a.data.normalize()?;
    gpu::init(options)?;
    say_adapter()?;
    let (train_set, test_set) = open_data(&model_name, a.data.data.as_deref())?;
    let classes = classes_for(a.classes, train_set.as_ref())?;
    let data = DataRecord::of(train_set.as_ref(), test_set.as_ref());
    let _lock = RunLock::acquire(&dir)?;
    let mut model = Model::build(&model_name, classes, a.seed)?;
    if let Some(record) = &record {
        record.check_data(&dir, &data, a.data.data.as_deref())?;
        record.save(&dir)?;
    }
    // A run that stopped before its first checkpoint (diverged at once, say) resumes from the start;
    // one that saved progress but lost its checkpoint would start over and overwrite that: refused.
    if a.resume.is_some() && record.is_some() && !dir.join(train::STATE_FILE).exists() {
        // metrics.csv has a row per finished epoch (a failed first save leaves none to lose)
        if let Some(f) = [train::METRICS_FILE].iter().find(|f| dir.join(f).exists()) {
            return Err(Error::invalid(format!(
                "{} holds a training run that saved progress ({f}) but its {} is missing, so it cannot continue \
                 where it stopped; resuming would start over at step 0 and overwrite it. Restore that file, or start \
                 a new run elsewhere with --out (--weights {} continues from the saved weights)",
                dir.display(),
                train::STATE_FILE,
                dir.join(train::MODEL_FILE).display()
            )));
        }
    }
    let (progress, norm) = if a.resume.is_some() && (record.is_none() || dir.join(train::STATE_FILE).exists()) {
        let (p, norm) = train::load_state(&mut model, &dir, &cfg)?;
        eprintln!("resuming {} at step {}", dir.display(), p.step);
        (p, norm)
    } else {
        let norm = match &a.weights {
            Some(w) => {
                let stored = checkpoint::load_model(&mut model, w)?;
                checkpoint::choose_normalize(flag_norm, stored, &model_name, &w.display().to_string())
            }
            None => checkpoint::normalize_for_training(flag_norm, &model_name),
        };
        (Progress::default(), norm)
    };
    let cfg = check_training_memory(&mut model, cfg, train_set.len(), test_set.len())?;
    if record.is_none() && a.resume.is_none() {
        start_run_record(&dir, "train", args, data)?;
    }
    let s = train::train(&mut model, train_set.as_ref(), test_set.as_ref(), norm, &cfg, &dir, progress, None).map_err(
        |e| with_resume_hint(e, &format!("sasprune train --resume {}", dir.display()), &saved_training(&dir)),
    )?;
    println!(
        "trained {} steps ({} epochs) in {:.1} s, {:.1} img/s in the steps; test top-1 {} (best {}); run directory {}",
        s.steps,
        s.epochs_completed,
        s.seconds,
        s.images_per_second,
        s.final_eval.map_or("-".into(), |e| format!("{:.2}%", e.top1)),
        s.best_top1.map_or("-".into(), |b| format!("{b:.2}%")),
        dir.display()
    );
    Ok(())
}

/// `train`'s memory check before the first step (see `sasprune::preflight`): a training step at
/// --batch and an evaluation pass; returns `cfg` with the evaluation batch that fits.
fn check_training_memory(
    model: &mut Model,
    cfg: TrainConfig,
    train_len: usize,
    test_len: usize,
) -> Result<TrainConfig> {
    use sasprune::preflight::{check_memory, Probe, Work};
    if !gpu::get()?.memory_can_be_checked() {
        return Ok(cfg);
    }
    let train_len = cfg.subset.unwrap_or(train_len).min(train_len);
    let probe =
        |phase, flag, batch: usize, work| Probe { phase, flag, batch: batch.max(1), work, vectors: 0, vector_len: 0 };
    let probes = [
        probe("training", "--batch", cfg.batch.min(train_len), Work::Train),
        probe("evaluation", "the evaluation batch", cfg.eval_batch.min(test_len), Work::Eval),
    ];
    let eval_batch = check_memory(model, &probes, cfg.eval_batch)?;
    Ok(TrainConfig { eval_batch, ..cfg })
}

fn run(cli: Cli, args: &[OsString]) -> Result<()> {
    if let Some(text) = &cli.time_limit {
        // counted from the command's start, as a job scheduler counts it
        let limit = sasprune::time_limit::parse(text)?;
        if matches!(cli.command, Some(Command::Devices | Command::Bench { .. } | Command::Eval(_))) {
            return Err(Error::invalid(
                "--time-limit applies to the pipeline, `train` and `compare`, which save and resume; drop it here",
            ));
        }
        sasprune::time_limit::start(limit);
    }
    let mode = cli.tune.as_deref().map(str::parse).transpose()?;
    sasprune::tune::configure(sasprune::tune::Settings { mode, cache: cli.tune_cache.clone() });
    let options = gpu::GpuOptions { backend: cli.backend.clone(), adapter: cli.adapter.clone() };
    let env = gpu::GpuOptions::from_env();
    let options =
        gpu::GpuOptions { backend: options.backend.or(env.backend), adapter: options.adapter.or(env.adapter) };
    let Some(command) = cli.command else {
        gpu::init(&options)?;
        return run_pipeline(args, &cli.prune);
    };
    match command {
        Command::Devices => {
            let list = gpu::list_adapters(options.backend.as_deref())?;
            if list.is_empty() {
                println!("no adapters found; on a machine without a GPU install a software Vulkan driver (Debian/Ubuntu: apt-get install mesa-vulkan-drivers)");
            }
            for line in list {
                println!("{line}");
            }
            Ok(())
        }
        Command::Bench { quick, filter, out } => {
            gpu::init(&options)?;
            sasprune::bench::run_and_record(&sasprune::bench::BenchConfig { quick, filter }, &out).map(drop)
        }
        Command::Compare(c) => run_compare(&c, args, &options).map_err(|e| match e {
            Error::TimeLimit(_) => with_resume_hint(e, "the same command again", "every finished run and phase"),
            e => e,
        }),
        Command::Eval(a) => {
            let flag_norm = a.data.normalize()?;
            gpu::init(&options)?;
            if !a.json {
                say_adapter()?;
            }
            let batch = match a.batch {
                Some(b) => sasprune::models::check_batch(&a.model, b, "--batch").map(|_| b)?,
                None => sasprune::models::largest_batch(&a.model)?.min(500),
            };
            let (_, test) = open_data(&a.model, a.data.data.as_deref())?;
            let classes = classes_for(a.classes, test.as_ref())?;
            let mut model = Model::build(&a.model, classes, 0)?;
            let stored = checkpoint::load_model(&mut model, &a.weights)?;
            let norm = checkpoint::choose_normalize(flag_norm, stored, &a.model, &a.weights.display().to_string());
            let r = train::evaluate(&mut model, test.as_ref(), norm, batch, !a.json)?;
            if a.json {
                let doc = serde_json::json!({
                    "model": a.model, "top1": r.top1, "top5": r.top5, "loss": r.loss, "images": r.images,
                    "seconds": r.seconds, "adapter": gpu::get()?.adapter.name,
                });
                println!("{doc}");
            } else {
                println!(
                    "{}: top-1 {:.2}% | top-5 {:.2}% | loss {:.4} | {} images in {:.1} s ({:.0} img/s)",
                    a.model,
                    r.top1,
                    r.top5,
                    r.loss,
                    r.images,
                    r.seconds,
                    r.images as f64 / r.seconds
                );
            }
            Ok(())
        }
        Command::Train(a) => run_train(a, args, &options),
    }
}

/// `sasprune compare`: every method on one model and rate, or with `--paper-table` on each of
/// the paper's rows.
fn run_compare(c: &CompareArgs, args: &[OsString], options: &gpu::GpuOptions) -> Result<()> {
    let methods = c.methods.split(',').map(|m| Method::parse(m.trim())).collect::<Result<Vec<_>>>()?;
    if c.seeds == 0 || c.seeds > 100 {
        return Err(Error::invalid(format!("--seeds must be in 1..=100, got {}", c.seeds)));
    }
    if !c.paper_table {
        let a = &c.prune;
        let cfg = pipeline_config(a)?;
        let cfg = PipelineConfig {
            out: a.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/{}-compare", cfg.model))),
            ..cfg
        };
        let (train_set, test_set) = open_data(&cfg.model, a.data.data.as_deref())?;
        gpu::init(options)?;
        say_adapter()?;
        let _lock = RunLock::acquire(&cfg.out)?;
        return prune::compare::compare(&cfg, &methods, c.seeds, train_set.as_ref(), test_set.as_ref()).map(drop);
    }
    let given = [("--model", c.prune.model.is_some()), ("--rate", c.prune.rate.is_some())]
        .into_iter()
        .chain([("--layer-rates", c.prune.layer_rates.is_some()), ("--weights", c.prune.weights.is_some())]);
    if let Some((flag, _)) = given.into_iter().find(|(_, set)| *set) {
        return Err(Error::invalid(format!(
            "--paper-table sets each row's model, rate and dense start itself: drop {flag} (choose rows with --rows, \
             dense starts with --weights-dir)"
        )));
    }
    let rows = c
        .rows
        .split(',')
        .map(|m| {
            prune::paper_table::paper_row(m.trim()).ok_or_else(|| {
                Error::invalid(format!(
                    "--rows: the paper has no CIFAR row for '{}': choose resnet32, resnet56",
                    m.trim()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let out = c.prune.out.clone().unwrap_or_else(|| PathBuf::from("runs/paper-table"));
    // every row's flags checked (and its weights found) before any work
    let mut configs = Vec::new();
    for row in &rows {
        let weights = c.weights_dir.as_ref().map(|d| d.join(format!("{}.safetensors", row.model)));
        if let Some(w) = weights.as_ref().filter(|w| !w.is_file()) {
            return Err(Error::invalid(format!(
                "--weights-dir: {} is not there; the paper table needs <model>.safetensors for each row",
                w.display()
            )));
        }
        let a = PruneArgs { model: Some(row.model.into()), rate: Some(row.rate.into()), weights, ..c.prune.clone() };
        configs.push(PipelineConfig { out: out.join(row.model), ..pipeline_config(&a)? });
    }
    let (train_set, test_set) = open_data("resnet32", c.prune.data.data.as_deref())?;
    gpu::init(options)?;
    say_adapter()?;
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let _lock = RunLock::acquire(&out)?;
    let mut results = Vec::new();
    for (row, cfg) in rows.iter().zip(&configs) {
        results.push(prune::paper_table::run_row(*row, cfg, &methods, c.seeds, train_set.as_ref(), test_set.as_ref())?);
    }
    let command: Vec<String> = std::iter::once("sasprune".into())
        .chain(args.iter().skip(1).map(|a| a.to_string_lossy().into_owned()))
        .collect();
    prune::paper_table::write(&out, &results, &command.join(" "), &gpu::get()?.adapter.to_string()).map(drop)
}

/// Parses the command line. The pipeline's flags belong to the command without a subcommand;
/// the global ones (--backend, --adapter, --tune, --tune-cache) may stand before or after a
/// subcommand.
fn parse_cli() -> Result<Cli> {
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

fn main() {
    sasprune::logging::init();
    // as OsString: a path argument may be any bytes on Linux (std::env::args would panic on one)
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    match run(cli, &args) {
        Ok(()) => {}
        Err(e @ Error::TimeLimit(_)) => {
            eprintln!("{e}");
            std::process::exit(sasprune::time_limit::EXIT_CODE);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
