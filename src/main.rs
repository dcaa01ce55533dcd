//! The `sasprune` command line: parses arguments and calls the library.

use clap::{Args, Parser, Subcommand};
use sasprune::checkpoint::{self, Normalize};
use sasprune::data::{cifar::Cifar10, packed::PackedSplit, Dataset, CIFAR_MEAN, CIFAR_STD};
use sasprune::models::Model;
use sasprune::train::{self, LrSchedule, Progress, TrainConfig};
use sasprune::{gpu, Error, Result};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "sasprune",
    version,
    about = "Prune CNN weights with SAS-ADMM on any GPU (wgpu: Vulkan, Metal, DX12, GL)"
)]
struct Cli {
    /// GPU backend: vulkan, metal, dx12, gl (default: any; env SASPRUNE_BACKEND)
    #[arg(long, global = true)]
    backend: Option<String>,
    /// Use the adapter whose name contains this text (env SASPRUNE_ADAPTER)
    #[arg(long, global = true)]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter on every backend
    Devices,
    /// Measure GEMM and conv2d kernels (GFLOP/s) on the chosen adapter
    Bench {
        /// A short run (small batch, fewer repetitions)
        #[arg(long)]
        quick: bool,
    },
    /// Evaluate a model on the test set
    Eval(EvalArgs),
    /// Train a model (dense, or resume an interrupted run)
    Train(TrainArgs),
}

#[derive(Args)]
struct DataArgs {
    /// Directory holding cifar-10-batches-bin/ (or that directory itself); for alexnet, a
    /// directory holding train.pack and val.pack. Default: data/
    #[arg(long)]
    data: Option<PathBuf>,
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
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Number of classes (default 10 for the ResNets, 1000 for alexnet)
    #[arg(long)]
    classes: Option<usize>,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TrainArgs {
    #[arg(long)]
    model: String,
    #[command(flatten)]
    data: DataArgs,
    /// Start from these weights instead of a fresh initialization
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Run directory (default: runs/<model>-train-<seed>)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in this directory
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f32,
    #[arg(long)]
    nesterov: bool,
    /// multistep or cosine
    #[arg(long, default_value = "multistep")]
    schedule: String,
    /// Epochs at which multistep divides the learning rate (comma-separated)
    #[arg(long, default_value = "100,150")]
    milestones: String,
    #[arg(long, default_value_t = 0.1)]
    gamma: f32,
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
    #[arg(long)]
    classes: Option<usize>,
}

fn default_classes(model: &str, given: Option<usize>) -> usize {
    given.unwrap_or(if model == "alexnet" { 1000 } else { 10 })
}

/// (train, test) datasets for `model`.
fn open_data(model: &str, dir: Option<&Path>) -> Result<(Box<dyn Dataset>, Box<dyn Dataset>)> {
    if model == "alexnet" {
        let dir = dir.unwrap_or(Path::new("data"));
        let open = |f: &str| PackedSplit::open(&dir.join(f)).map(|s| Box::new(s) as Box<dyn Dataset>);
        return Ok((open("train.pack")?, open("val.pack")?));
    }
    let c = Cifar10::locate(dir)?;
    Ok((Box::new(c.train), Box::new(c.test)))
}

fn cifar_normalize() -> Normalize {
    Normalize { mean: CIFAR_MEAN, std: CIFAR_STD }
}

fn say_adapter() -> Result<()> {
    eprintln!("adapter: {}", gpu::get()?.adapter);
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    let options = gpu::GpuOptions { backend: cli.backend.clone(), adapter: cli.adapter.clone() };
    let env = gpu::GpuOptions::from_env();
    let options =
        gpu::GpuOptions { backend: options.backend.or(env.backend), adapter: options.adapter.or(env.adapter) };
    match cli.command {
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
        Command::Bench { quick } => {
            gpu::init(&options)?;
            let (batch, runs) = if quick { (16, 3) } else { (128, 5) };
            let results = sasprune::bench::kernel_benchmarks(if quick { 512 } else { 1024 }, batch, runs)?;
            sasprune::bench::print_table(&results)
        }
        Command::Eval(a) => {
            gpu::init(&options)?;
            if !a.json {
                say_adapter()?;
            }
            if a.batch == 0 {
                return Err(Error::invalid("--batch must be at least 1"));
            }
            let (_, test) = open_data(&a.model, a.data.data.as_deref())?;
            let mut model = Model::build(&a.model, default_classes(&a.model, a.classes), 0)?;
            let norm = checkpoint::load_model(&mut model, &a.weights)?.unwrap_or_else(cifar_normalize);
            let r = train::evaluate(&mut model, test.as_ref(), norm, a.batch, !a.json)?;
            if a.json {
                let adapter = gpu::get()?.adapter.name.replace('"', "'");
                println!(
                    "{{\"model\":\"{}\",\"top1\":{:.4},\"top5\":{:.4},\"loss\":{:.6},\"images\":{},\"seconds\":{:.3},\"adapter\":\"{adapter}\"}}",
                    a.model, r.top1, r.top5, r.loss, r.images, r.seconds
                );
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
        Command::Train(a) => {
            gpu::init(&options)?;
            say_adapter()?;
            let schedule = match a.schedule.as_str() {
                "cosine" => LrSchedule::Cosine,
                "multistep" => {
                    let milestones = a
                        .milestones
                        .split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(|s| s.trim().parse::<usize>())
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(|_| {
                            Error::invalid(format!("--milestones must be epochs like 100,150, got '{}'", a.milestones))
                        })?;
                    LrSchedule::MultiStep { milestones, gamma: a.gamma }
                }
                other => {
                    return Err(Error::invalid(format!("unknown --schedule '{other}': choose multistep or cosine")))
                }
            };
            let cfg = TrainConfig {
                epochs: a.epochs,
                batch: a.batch,
                lr: a.lr,
                momentum: a.momentum,
                weight_decay: a.weight_decay,
                nesterov: a.nesterov,
                schedule,
                seed: a.seed,
                max_steps: a.steps,
                subset: a.subset,
                deterministic: a.deterministic,
                save_every: a.save_every.max(1),
                ..TrainConfig::cifar_default()
            };
            let (train_set, test_set) = open_data(&a.model, a.data.data.as_deref())?;
            let mut model = Model::build(&a.model, default_classes(&a.model, a.classes), a.seed)?;
            let (dir, progress, norm) = match &a.resume {
                Some(dir) => {
                    let (p, norm) = train::load_state(&mut model, dir, &cfg)?;
                    eprintln!("resuming {} at step {}", dir.display(), p.step);
                    (dir.clone(), p, norm)
                }
                None => {
                    let norm = match &a.weights {
                        Some(w) => checkpoint::load_model(&mut model, w)?.unwrap_or_else(cifar_normalize),
                        None => cifar_normalize(),
                    };
                    let dir = a
                        .out
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(format!("runs/{}-train-seed{}", a.model, a.seed)));
                    (dir, Progress::default(), norm)
                }
            };
            let s = train::train(&mut model, train_set.as_ref(), test_set.as_ref(), norm, &cfg, &dir, progress, None)?;
            println!(
                "trained {} steps ({} epochs) in {:.1} s at {:.1} img/s; test top-1 {} (best {}); run directory {}",
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
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
