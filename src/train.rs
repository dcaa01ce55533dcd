//! Training and evaluation loops: epochs with progress bars, learning-rate schedules, metrics
//! files, atomic checkpoints and exact resumption.
//!
//! Randomness is derived, not carried: the shuffle of epoch e comes from (seed, e) and the
//! augmentation of global step s from (seed, s), so a run resumed from a checkpoint at any step
//! sees exactly the batches it would have seen.

use crate::autograd::no_grad;
use crate::checkpoint::{self, Normalize};
use crate::data::{fill_batch, BatchSpec, Dataset};
use crate::models::{key_for, stream, Model, Pass};
use crate::ops::{loss, reduce, sgd::SgdConfig};
use crate::{Error, Result, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Top-1 / top-5 accuracy (percent) and mean loss over a dataset.
#[derive(Clone, Copy, Debug)]
pub struct EvalResult {
    pub top1: f64,
    pub top5: f64,
    pub loss: f64,
    pub images: usize,
    pub seconds: f64,
}

pub(crate) fn rng_for(seed: u64, stream: u64, index: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(key_for(seed, stream, index))
}

/// Checks that `ds` can feed `model` (image size, classes) before any work starts.
pub fn check_dataset(model: &Model, ds: &dyn Dataset, what: &str) -> Result<()> {
    let (c, h, w) = ds.image_size();
    let (mc, mh, mw) = model.input;
    if c != mc || h < mh || w < mw {
        return Err(Error::invalid(format!(
            "{what} holds {c}x{h}x{w} images but {} takes {mc}x{mh}x{mw}: use a dataset of that size",
            model.name
        )));
    }
    if ds.classes() > model.classes {
        return Err(Error::invalid(format!(
            "{what} has {} classes but {} was built for {}",
            ds.classes(),
            model.name,
            model.classes
        )));
    }
    Ok(())
}

/// Prints a line above `bar`, or plainly when the bar is not drawn (output is not a terminal),
/// so logs keep every line.
pub(crate) fn log_line(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        outln!("{line}");
    } else {
        bar.println(line);
    }
}

pub(crate) fn progress_bar(len: u64, prefix: String) -> ProgressBar {
    // drawn through the logger's MultiProgress, so log lines print above it
    let bar = crate::logging::bars().add(ProgressBar::new(len));
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} | {elapsed_precise} ETA {eta_precise}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// Evaluates `model` (eval mode, no gradients) on all of `ds`.
pub fn evaluate(model: &mut Model, ds: &dyn Dataset, norm: Normalize, batch: usize, show: bool) -> Result<EvalResult> {
    check_dataset(model, ds, "the evaluation set")?;
    let (_, h, w) = model.input;
    let spec = BatchSpec::eval(h, w, norm.mean, norm.std);
    let start = Instant::now();
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let (mut top1, mut top5, mut loss_sum) = (0usize, 0usize, 0.0f64);
    let n = ds.len();
    if n == 0 {
        return Err(Error::invalid("the evaluation set is empty"));
    }
    // the batch changes no result: keep its largest activation within one storage binding
    let batch = batch.clamp(1, crate::models::largest_batch(&model.name)?);
    let bar = if show { progress_bar(n as u64, "eval".into()) } else { ProgressBar::hidden() };
    // unused by eval batches (no random crop or flip)
    let mut rng = rng_for(0, 0, 0);
    // Each batch's label ranks and loss are read back while the next batch runs on the device
    // (two staging buffers, alternating), so the device never waits for the host's batch
    // assembly and the host never waits for more than one batch.
    let mut reads = OverlappedReads::new(4 * (batch as u64 + 1))?; // tagged with the batch's images
    let mut tally = |bytes: Vec<u8>, images: usize| {
        let values: &[f32] = bytemuck::cast_slice(&bytes);
        for &r in &values[..images] {
            top1 += (r < 1.0) as usize;
            top5 += (r < 5.0) as usize;
        }
        loss_sum += values[images] as f64 * images as f64;
        bar.inc(images as u64);
        let done = bar.position().max(1) as f64;
        bar.set_message(format!(
            "top-1 {:.2}% | {:.0} img/s",
            100.0 * top1 as f64 / done,
            done / start.elapsed().as_secs_f64()
        ));
    };
    for begin in (0..n).step_by(batch) {
        let idx: Vec<usize> = (begin..(begin + batch).min(n)).collect();
        fill_batch(ds, &idx, &spec, &mut rng, &mut images, &mut labels);
        let x = Tensor::from_slice(&images, &[idx.len(), 3, h, w])?;
        let y = Tensor::from_slice(&labels, &[idx.len()])?;
        let (l, ranks) = no_grad(|| -> Result<(Tensor, Tensor)> {
            let logits = model.forward(&x, Pass::Eval)?;
            Ok((loss::cross_entropy(&logits, &y)?, loss::label_rank(&logits, &y)?))
        })?;
        if let Some((images, bytes)) = reads.start(&[ranks.view(), l.view()], idx.len())? {
            tally(bytes, images);
        }
    }
    if let Some((images, bytes)) = reads.settle()? {
        tally(bytes, images);
    }
    bar.finish_and_clear();
    let mean_loss = loss_sum / n as f64;
    if !mean_loss.is_finite() {
        // accuracies from non-finite logits would be an artefact of how NaN sorts; a divergence:
        // no resume of the same run helps (training turns it into its own message, with the lr)
        return Err(Error::Diverged(format!(
            "evaluation: the network's outputs are not finite (mean loss {mean_loss}): the weights hold values too \
             large or not numbers, or the input normalization is wrong; no accuracy is reported"
        )));
    }
    Ok(EvalResult {
        top1: 100.0 * top1 as f64 / n as f64,
        top5: 100.0 * top5 as f64 / n as f64,
        loss: mean_loss,
        images: n,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// How training batches are made: CIFAR's pad-4 random crop + flip when the stored images have
/// the model's input size; a random crop of that size + flip from larger stored images (packed
/// ImageNet, 224 from 256); no augmentation when `deterministic`.
pub fn train_spec(model: &Model, ds: &dyn Dataset, norm: Normalize, deterministic: bool) -> BatchSpec {
    let (_, h, w) = model.input;
    let (_, sh, sw) = ds.image_size();
    let spec = BatchSpec::cifar_train(norm.mean, norm.std);
    match (deterministic, sh == h && sw == w) {
        (true, _) => BatchSpec::eval(h, w, norm.mean, norm.std),
        (false, true) => BatchSpec { out_h: h, out_w: w, ..spec },
        (false, false) => BatchSpec { out_h: h, out_w: w, pad: 0, ..spec },
    }
}

/// Learning-rate schedule over epochs (multistep) or steps (cosine).
#[derive(Clone, Debug, PartialEq)]
pub enum LrSchedule {
    /// lr * gamma^(number of milestones <= epoch), the milestones written for a run of `of`
    /// epochs: a run of another length moves them to the same share of it
    /// ([`stretch_milestones`]), always from these, so a schedule shortened for one phase and
    /// lengthened for another rounds once.
    MultiStep { milestones: Vec<usize>, gamma: f32, of: usize },
    /// lr * (1 + cos(pi * step / total_steps)) / 2
    Cosine,
}

/// Milestones written for a run of `from` epochs, moved to a run of `to`: each m to ⌈m·to/from⌉,
/// each at least one epoch past the one before, and those at or past `to` (which would never
/// drop the rate) left out, so the drops keep their share of the run: the CIFAR recipe's 100 and
/// 150 of 200 become 25 and 38 of 50, 155 and 232 of 309 (compare's magnitude retraining at the
/// paper's budget), 1 of 2. Left as written, a 50-epoch run would never drop the learning rate
/// and a 309-epoch one would spend half its epochs at the last rate.
pub fn stretch_milestones(milestones: &[usize], from: usize, to: usize) -> impl Iterator<Item = usize> + '_ {
    let moved = milestones.iter().scan(None, move |before: &mut Option<usize>, &m| {
        let at = if from == 0 || from == to { m } else { m.saturating_mul(to).div_ceil(from) };
        let at = before.map_or(at, |b: usize| at.max(b.saturating_add(1)));
        *before = Some(at);
        Some(at)
    });
    moved.take_while(move |&at| at < to)
}

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    pub schedule: LrSchedule,
    pub seed: u64,
    /// Stop after this many steps in all (the run can be resumed to go on).
    pub max_steps: Option<usize>,
    /// Train on the first N training images only.
    pub subset: Option<usize>,
    /// No augmentation, no shuffling.
    pub deterministic: bool,
    /// Save a resumable checkpoint every this many steps (and at every epoch end).
    pub save_every: usize,
    pub eval_batch: usize,
    /// Evaluate on the test set after epochs (every `eval_every`-th one).
    pub eval_each_epoch: bool,
    /// Evaluate after every this many epochs (1: every epoch), and always after the last epoch
    /// and where a session stops: on a fast GPU the paper's 200 evaluations of 10,000 images are
    /// an eighth of the retraining's images.
    pub eval_every: usize,
    pub show_progress: bool,
    /// Where to save the weights with the best test top-1 so far (the reference code keeps
    /// that checkpoint).
    pub best_path: Option<PathBuf>,
    /// After this many steps, print how long all epochs will take at the speed so far.
    pub announce_eta_after: Option<usize>,
    /// What a diverged run's message tells the user to do (e.g. the command that continues
    /// from the last checkpoint with a lower learning rate).
    pub divergence_hint: String,
}

impl TrainConfig {
    /// The standard CIFAR recipe ([`crate::models::CIFAR_RECIPE`]: SGD lr 0.1, momentum 0.9,
    /// weight decay 1e-4, batch 128, lr / 10 at epochs 100 and 150 of 200; He et al.'s CIFAR
    /// schedule, the paper's retraining) with the other settings at their defaults.
    pub fn cifar_default() -> TrainConfig {
        TrainConfig::from_recipe(&crate::models::CIFAR_RECIPE)
    }

    /// A model's training recipe ([`crate::models::Recipe`]) with the other settings at their
    /// defaults.
    pub fn from_recipe(r: &crate::models::Recipe) -> TrainConfig {
        TrainConfig {
            epochs: r.epochs,
            batch: r.batch,
            lr: r.lr,
            momentum: r.momentum,
            weight_decay: r.weight_decay,
            nesterov: false,
            schedule: LrSchedule::MultiStep { milestones: r.milestones.to_vec(), gamma: r.gamma, of: r.epochs },
            seed: 0,
            max_steps: None,
            subset: None,
            deterministic: false,
            save_every: 500,
            eval_batch: 500,
            eval_each_epoch: true,
            eval_every: 1,
            show_progress: true,
            best_path: None,
            announce_eta_after: None,
            divergence_hint: "continue from it with a lower learning rate (--lr)".into(),
        }
    }

    /// This configuration over `epochs` epochs (a multi-step schedule's drops move with them).
    pub fn with_epochs(&self, epochs: usize) -> TrainConfig {
        TrainConfig { epochs, ..self.clone() }
    }

    /// The epochs at which a multi-step schedule drops the rate in this run (empty for cosine).
    pub fn milestones(&self) -> Vec<usize> {
        match &self.schedule {
            LrSchedule::MultiStep { milestones, of, .. } => stretch_milestones(milestones, *of, self.epochs).collect(),
            LrSchedule::Cosine => Vec::new(),
        }
    }

    /// The schedule in words, e.g. "times 0.1 at epochs 25, 38" or "cosine decay to 0".
    pub fn schedule_text(&self) -> String {
        match &self.schedule {
            LrSchedule::MultiStep { gamma, .. } => {
                let at: Vec<String> = self.milestones().iter().map(|m| m.to_string()).collect();
                match at.is_empty() {
                    true => "constant: no milestone within the run".into(),
                    false => format!("times {gamma} at epochs {}", at.join(", ")),
                }
            }
            LrSchedule::Cosine => "cosine decay to 0".into(),
        }
    }

    pub fn lr_at(&self, epoch: usize, step: usize, total_steps: usize) -> f32 {
        match &self.schedule {
            LrSchedule::MultiStep { milestones, gamma, of } => {
                let drops = stretch_milestones(milestones, *of, self.epochs).filter(|&m| m <= epoch).count();
                self.lr * gamma.powi(drops as i32)
            }
            LrSchedule::Cosine => {
                let t = step as f64 / total_steps.max(1) as f64;
                (self.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.validate_as("--epochs", "--batch")
    }

    /// [`validate`](Self::validate) naming the flags the user gave for the epochs and the batch
    /// (the pipeline's retraining: `--retrain-epochs`, `--retrain-batch`).
    pub fn validate_as(&self, epochs_flag: &str, batch_flag: &str) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if self.batch == 0 {
            return bad(format!("{batch_flag} must be at least 1"));
        }
        if self.epochs == 0 || self.epochs > 1_000_000 {
            return bad(format!("{epochs_flag} must be in 1..=1000000, got {}", self.epochs));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr must be a positive number, got {}", lr_text(self.lr)));
        }
        if let LrSchedule::MultiStep { gamma, .. } = &self.schedule {
            if !(*gamma > 0.0 && *gamma <= 1.0) {
                return bad(format!(
                    "--gamma must be in (0, 1] (it multiplies the learning rate), got {}",
                    crate::error::number_text(*gamma)
                ));
            }
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("--momentum must be in [0, 1), got {}", crate::error::number_text(self.momentum)));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!("--weight-decay must be >= 0, got {}", crate::error::number_text(self.weight_decay)));
        }
        if self.subset == Some(0) {
            return bad("--subset must be at least 1".into());
        }
        if self.eval_every == 0 {
            return bad("--eval-every must be at least 1 (epochs between evaluations)".into());
        }
        if self.save_every == 0 {
            return bad("--save-every must be at least 1 (steps between checkpoints)".into());
        }
        if self.max_steps == Some(0) {
            return bad("--steps must be at least 1 (or left out: the whole schedule)".into());
        }
        if let LrSchedule::MultiStep { milestones, .. } = &self.schedule {
            if milestones.windows(2).any(|w| w[0] >= w[1]) {
                let text: Vec<String> = milestones.iter().map(|m| m.to_string()).collect();
                return bad(format!("--milestones must be increasing epochs (e.g. 100,150), got {}", text.join(",")));
            }
        }
        Ok(())
    }
}

/// Where training stands: what a checkpoint records besides weights and momentum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Completed optimizer steps in all.
    pub step: usize,
}

/// What one training run did.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub steps: usize,
    pub epochs_completed: usize,
    pub final_eval: Option<EvalResult>,
    pub best_top1: Option<f64>,
    pub seconds: f64,
    /// Training images per second of step time (the steps' wall time, device work included;
    /// evaluation and checkpoint saves left out): the figure `sasprune bench`'s training step
    /// measures.
    pub images_per_second: f64,
    /// Evaluation images per second over this session's evaluations (None without any).
    pub eval_images_per_second: Option<f64>,
    /// Mixed precision: the loss scale at the end and the steps it skipped (over the run).
    pub loss_scale: Option<crate::ops::loss_scale::LossScaleStatus>,
}

pub const MODEL_FILE: &str = "model.safetensors";
pub const STATE_FILE: &str = "train_state.safetensors";
pub const METRICS_FILE: &str = "metrics.csv";

/// Saves weights, momentum and progress into `dir`: `train_state.safetensors` (everything a
/// resume needs, one atomic file) and `model.safetensors` (the weights alone, for users).
pub fn save_state(model: &Model, dir: &Path, norm: Normalize, progress: Progress, cfg: &TrainConfig) -> Result<()> {
    let started = Instant::now();
    checkpoint::save_model(model, &dir.join(MODEL_FILE), norm, &[])?;
    let meta = HashMap::from([
        ("step".to_string(), progress.step.to_string()),
        ("seed".to_string(), cfg.seed.to_string()),
        ("batch".to_string(), cfg.batch.to_string()),
    ]);
    checkpoint::save_bundle(&dir.join(STATE_FILE), model, norm, &[("momentum.", model.store.momentum_dict()?)], meta)?;
    crate::time_limit::note_save(started.elapsed());
    Ok(())
}

/// Loads what `save_state` wrote; returns the progress and the normalization.
pub fn load_state(model: &mut Model, dir: &Path, cfg: &TrainConfig) -> Result<(Progress, Normalize)> {
    let state_path = dir.join(STATE_FILE);
    if !state_path.exists() {
        return Err(Error::invalid(format!("{} has no {STATE_FILE}: nothing to resume there", dir.display())));
    }
    let (state, norm) = checkpoint::load_bundle(&state_path, model)?;
    let get = |k: &str| state.metadata.get(k).cloned().unwrap_or_default();
    for (key, now) in [("seed", cfg.seed.to_string()), ("batch", cfg.batch.to_string())] {
        if get(key) != now {
            return Err(Error::invalid(format!(
                "{} was run with {key} {} but this command says {now}: resume with the same settings",
                dir.display(),
                get(key)
            )));
        }
    }
    let step =
        get("step").parse().map_err(|_| Error::invalid(format!("{}: bad step in metadata", state_path.display())))?;
    model.store.load_momentum_dict(&state.with_prefix("momentum."), &state_path.display().to_string())?;
    Ok((Progress { step }, norm))
}

fn append_metrics(dir: &Path, line: &str) -> Result<()> {
    crate::run_dir::append_csv_row(&dir.join(METRICS_FILE), METRICS_HEADER, line)
}

const METRICS_HEADER: &str = "epoch,step,lr,train_loss,test_top1,test_top5,test_loss,seconds";

/// Trains `model` on `train` (evaluating on `test`), saving resumable state in `dir`.
/// `mask`, when given, is a 0/1 tensor over the parameter arena: masked weights stay exactly 0.
/// `start` is where a resumed run stands.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &mut Model,
    train: &dyn Dataset,
    test: &dyn Dataset,
    norm: Normalize,
    cfg: &TrainConfig,
    dir: &Path,
    start: Progress,
    mask: Option<&Tensor>,
) -> Result<TrainSummary> {
    cfg.validate()?;
    check_dataset(model, train, "the training set")?;
    // rows of steps after the state it resumes from (an epoch that ended but whose save did not)
    // are written again
    crate::run_dir::keep_csv_rows_through(&dir.join(METRICS_FILE), 1, start.step)?;
    check_dataset(model, test, "the test set")?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let n = cfg.subset.unwrap_or(train.len()).min(train.len());
    if n == 0 {
        return Err(Error::invalid("the training set is empty"));
    }
    let steps_per_epoch = n.div_ceil(cfg.batch);
    let total_steps = steps_per_epoch * cfg.epochs;
    let spec = train_spec(model, train, norm, cfg.deterministic);
    // the run's plan and counters, from where `start` stands
    let mut run = TrainingRun {
        spec,
        n,
        steps_per_epoch,
        total_steps,
        stop_at: cfg.max_steps.map_or(total_steps, |m| m.min(total_steps)),
        first_step: start.step,
        images: Vec::new(),
        labels: Vec::new(),
        batch: None,
        step: start.step,
        started: Instant::now(),
        trained_images: 0,
        step_seconds: 0.0,
        evaluated: (0, 0.0),
        final_eval: None,
        best_top1: read_best(dir)?,
        limit: StepClock { first_step: start.step, settled_step: start.step, ..Default::default() },
        saved_step: start.step,
        loss_reads: OverlappedReads::new(4)?,
        model,
        train,
        test,
        norm,
        cfg,
        dir,
        mask,
    };
    while run.step < run.stop_at {
        run.epoch()?;
    }
    run.summary()
}

/// A training run in progress: what [`train`] plans at its start and counts as it goes.
struct TrainingRun<'a> {
    model: &'a mut Model,
    train: &'a dyn Dataset,
    test: &'a dyn Dataset,
    norm: Normalize,
    cfg: &'a TrainConfig,
    dir: &'a Path,
    mask: Option<&'a Tensor>,
    /// Training images used (the subset), steps per epoch, steps of the whole schedule, and
    /// where this session stops (`--steps` may stop it early).
    n: usize,
    steps_per_epoch: usize,
    total_steps: usize,
    stop_at: usize,
    /// The step this session started at.
    first_step: usize,
    spec: BatchSpec,
    /// Host staging of one batch, reused every step.
    images: Vec<f32>,
    labels: Vec<f32>,
    /// The device tensors the batch is uploaded into, reused while the batch size stays (an
    /// epoch's shorter last batch gets its own).
    batch: Option<(Tensor, Tensor)>,
    step: usize,
    started: Instant,
    trained_images: usize,
    /// Step time (without evaluation and saves) and (images, seconds) evaluated, for the rates.
    step_seconds: f64,
    evaluated: (usize, f64),
    final_eval: Option<EvalResult>,
    /// A resumed run remembers the best top-1 it already reached (and saved).
    best_top1: Option<f64>,
    /// What `--time-limit` needs to know: step and evaluation times of this session.
    limit: StepClock,
    saved_step: usize,
    /// The loss of one step in ten, read while later steps run: the host then waits for a step
    /// ten back, not for the one it just recorded, so the device does not idle while the host
    /// assembles and records the next batch (about 1 ms per wait on a fast GPU, of a ~9 ms step).
    /// Tagged with the step.
    loss_reads: OverlappedReads<usize>,
}

/// Read-backs that overlap later device work: two staging buffers, alternating, so the host
/// waits only for the read before the one it starts, which the device has usually finished.
/// Each read carries a tag (what the caller needs to use its bytes).
struct OverlappedReads<T> {
    staging: [crate::gpu::ReadBack; 2],
    /// (staging slot, tag) of the read in flight.
    in_flight: Option<(usize, T)>,
}

impl<T> OverlappedReads<T> {
    /// Staging for reads of up to `bytes` each.
    fn new(bytes: u64) -> Result<Self> {
        let gpu = crate::gpu::get()?;
        Ok(OverlappedReads { staging: [gpu.read_back(bytes), gpu.read_back(bytes)], in_flight: None })
    }

    /// Starts reading `views` (packed in order); returns the tag and bytes of the read before.
    fn start(&mut self, views: &[crate::gpu::BufferView], tag: T) -> Result<Option<(T, Vec<u8>)>> {
        let slot = self.in_flight.as_ref().map_or(0, |(slot, _)| 1 - slot);
        crate::gpu::get()?.start_read(views, &mut self.staging[slot])?;
        let before = self.in_flight.replace((slot, tag));
        before.map(|(slot, tag)| self.finish(slot, tag)).transpose()
    }

    /// The tag and bytes of the read in flight, if any, once the device has them.
    fn settle(&mut self) -> Result<Option<(T, Vec<u8>)>> {
        let before = self.in_flight.take();
        before.map(|(slot, tag)| self.finish(slot, tag)).transpose()
    }

    fn finish(&mut self, slot: usize, tag: T) -> Result<(T, Vec<u8>)> {
        Ok((tag, crate::gpu::get()?.finish_read(&mut self.staging[slot])?))
    }
}

/// The first f32 of read-back bytes.
fn first_f32(bytes: &[u8]) -> f32 {
    bytemuck::cast_slice::<u8, f32>(bytes)[0]
}

/// One epoch in progress.
struct Epoch {
    index: usize,
    /// The epoch's image order (a shuffle derived from the seed and the epoch).
    order: Vec<usize>,
    /// The learning rate at its start (what the metrics file records).
    lr: f32,
    bar: ProgressBar,
    started: Instant,
    images: usize,
    /// Sum of the step losses, on the device (read back at saves and the epoch's end).
    loss_sum: Tensor,
    losses: usize,
    /// Time spent saving inside the epoch (not step time).
    saving: std::time::Duration,
}

impl<'a> TrainingRun<'a> {
    /// Runs the steps of the epoch the run stands in, then closes it.
    fn epoch(&mut self) -> Result<()> {
        let mut e = self.open_epoch()?;
        while self.step < self.stop_at && self.step / self.steps_per_epoch == e.index {
            self.stop_if_out_of_time(&e)?;
            self.train_step(&mut e)?;
        }
        self.close_epoch(e)
    }

    fn open_epoch(&self) -> Result<Epoch> {
        let (cfg, index) = (self.cfg, self.step / self.steps_per_epoch);
        let mut order: Vec<usize> = (0..self.n).collect();
        if !cfg.deterministic {
            order.shuffle(&mut rng_for(cfg.seed, stream::EPOCH_SHUFFLE, index as u64));
        }
        let bar = if cfg.show_progress {
            progress_bar(self.steps_per_epoch as u64, format!("epoch {}/{}", index + 1, cfg.epochs))
        } else {
            ProgressBar::hidden()
        };
        bar.set_position((self.step - index * self.steps_per_epoch) as u64);
        Ok(Epoch {
            index,
            order,
            lr: cfg.lr_at(index, self.step, self.total_steps),
            bar,
            started: Instant::now(),
            images: 0,
            loss_sum: Tensor::zeros(&[1])?,
            losses: 0,
            saving: std::time::Duration::ZERO,
        })
    }

    /// Under `--time-limit`: when the next step (and the epoch's evaluation, if it ends the
    /// epoch) would not fit, saves what is not saved yet and stops with the time-limit error.
    fn stop_if_out_of_time(&mut self, e: &Epoch) -> Result<()> {
        if self.limit.fits(self.step, self.evaluates_at(self.step + 1)) {
            return Ok(());
        }
        if self.step > self.saved_step {
            self.check_loss_sum(e)?;
            save_state(self.model, self.dir, self.norm, Progress { step: self.step }, self.cfg)?;
        }
        e.bar.finish_and_clear();
        Err(crate::time_limit::reached(&format!("training step {} of {}", self.step + 1, self.stop_at)))
    }

    /// The epoch's loss so far is finite (a diverged step makes it NaN): checked before saving,
    /// so weights a diverged step produced are never saved.
    fn check_loss_sum(&self, e: &Epoch) -> Result<()> {
        check_loss(reduce::sum(&e.loss_sum)?.item()?, self.step, e.index, self.dir, &self.cfg.divergence_hint)
    }

    /// The staged batch of `n` images on the device, in the tensors of the last step when it had
    /// as many (the queue orders the upload after the kernels already recorded that read them).
    fn upload_batch(&mut self, n: usize) -> Result<(Tensor, Tensor)> {
        let (_, h, w) = self.model.input;
        if self.batch.as_ref().is_none_or(|(_, y)| y.numel() != n) {
            self.batch = Some((Tensor::zeros(&[n, 3, h, w])?, Tensor::zeros(&[n])?));
        }
        let (x, y) = self.batch.clone().expect("set above");
        x.write(&self.images)?;
        y.write(&self.labels)?;
        Ok((x, y))
    }

    /// One SGD step on the next batch of the epoch's order, with its progress display and the
    /// periodic save.
    fn train_step(&mut self, e: &mut Epoch) -> Result<()> {
        let (cfg, step) = (self.cfg, self.step);
        let step_start = Instant::now();
        let i = step - e.index * self.steps_per_epoch;
        let idx = &e.order[i * cfg.batch..((i + 1) * cfg.batch).min(self.n)];
        let mut rng = rng_for(cfg.seed, stream::TRAIN_AUGMENT, step as u64);
        fill_batch(self.train, idx, &self.spec, &mut rng, &mut self.images, &mut self.labels);
        let (x, y) = self.upload_batch(idx.len())?;
        let lr = cfg.lr_at(e.index, step, self.total_steps);
        let l = self.model.gradient(&x, &y, key_for(cfg.seed, stream::TRAIN_DROPOUT, step as u64))?;
        crate::ops::elementwise::axpy(1.0, &l, &e.loss_sum)?;
        let sgd = SgdConfig { lr, momentum: cfg.momentum, weight_decay: cfg.weight_decay, nesterov: cfg.nesterov };
        self.model.store.sgd_step(&sgd, self.mask)?;
        crate::gpu::get()?.flush()?;
        self.step += 1;
        e.losses += 1;
        e.images += idx.len();
        self.trained_images += idx.len();
        e.bar.inc(1);
        let waited_for = self.show_progress(e, &l, lr)?;
        self.limit.steps += step_start.elapsed(); // with the loss read-backs that wait for the device
        if let Some(done) = waited_for {
            self.limit.settled(done);
        }
        if self.step.is_multiple_of(cfg.save_every) && !self.step.is_multiple_of(self.steps_per_epoch) {
            // (reading the loss sum waits for the steps in flight: step time, not saving)
            let t = Instant::now();
            self.check_loss_sum(e)?;
            self.limit.steps += t.elapsed();
            self.limit.settled(self.step);
            let t = Instant::now();
            save_state(self.model, self.dir, self.norm, Progress { step: self.step }, cfg)?;
            e.saving += t.elapsed();
            self.saved_step = self.step;
        }
        Ok(())
    }

    /// Every 10 steps a loss checked and shown with the rate: inside an epoch that of 10 steps
    /// back (`loss_reads`), at the epoch's or the session's end the loss `l` of this step, which
    /// waits for the device. Once, after `announce_eta_after` steps, the expected duration of
    /// the rest. Returns the step whose device work a read waited for, if one did.
    fn show_progress(&mut self, e: &Epoch, l: &Tensor, lr: f32) -> Result<Option<usize>> {
        let step = self.step;
        let last = step == self.stop_at || step.is_multiple_of(self.steps_per_epoch);
        let mut waited_for = None;
        if last || step.is_multiple_of(10) {
            let read = if last { self.loss_reads.settle()? } else { self.loss_reads.start(&[l.view()], step)? };
            let before = read.map(|(at, bytes)| (at, first_f32(&bytes)));
            let now = if last { Some((step, l.item()?)) } else { None };
            for (at, loss) in before.into_iter().chain(now) {
                check_loss(loss, at, e.index, self.dir, &self.cfg.divergence_hint)?;
                waited_for = Some(at);
            }
            if let Some((_, loss)) = now.or(before) {
                let rate = e.images as f64 / e.started.elapsed().as_secs_f64();
                e.bar.set_message(format!("loss {loss:.4} | lr {lr:.4} | {rate:.1} img/s"));
            }
        }
        if self.cfg.announce_eta_after == Some(step - self.first_step) {
            let per_step = self.started.elapsed().as_secs_f64() / (step - self.first_step) as f64;
            let hours = per_step * (self.stop_at - step) as f64 / 3600.0;
            let left = self.stop_at - step;
            log_line(&e.bar, format!("at {per_step:.2} s per step the remaining {left} steps take about {hours:.1} h"));
        }
        Ok(waited_for)
    }

    /// The epoch's end (or the session's): mean loss checked, evaluation, metrics line, the
    /// epoch's summary line, and a save.
    fn close_epoch(&mut self, e: Epoch) -> Result<()> {
        // the epoch's last step read its loss, so its device work is done
        let epoch_step_seconds = (e.started.elapsed() - e.saving).as_secs_f64();
        self.step_seconds += epoch_step_seconds;
        e.bar.finish_and_clear();
        let mean_loss = reduce::sum(&e.loss_sum)?.item()? as f64 / e.losses.max(1) as f64;
        check_loss(mean_loss as f32, self.step, e.index, self.dir, &self.cfg.divergence_hint)?;
        let eval = self.evaluate_epoch()?;
        let (step, epoch, lr) = (self.step, e.index + 1, e.lr);
        let secs = e.started.elapsed().as_secs_f64();
        let (t1, t5, tl) = eval.map_or((f64::NAN, f64::NAN, f64::NAN), |e| (e.top1, e.top5, e.loss));
        append_metrics(self.dir, &format!("{epoch},{step},{lr},{mean_loss:.6},{t1:.4},{t5:.4},{tl:.6},{secs:.2}"))?;
        if self.cfg.show_progress {
            let eval_rate = eval.map_or(String::new(), |e| format!(" ({:.0} img/s)", e.images as f64 / e.seconds));
            // mixed precision: the loss scale and the steps it skipped (one read-back per epoch)
            let scale = match self.model.store.loss_scale() {
                Some(s) => s.status().map(|st| format!(" | loss scale {} ({} skipped)", st.scale, st.skipped))?,
                None => String::new(),
            };
            outln!(
                "epoch {epoch:>3}/{} | step {step} | lr {lr:.4} | train loss {mean_loss:.4} | {:.1} img/s | test top-1 {t1:.2}%{eval_rate}{scale} | {secs:.1} s",
                self.cfg.epochs,
                e.images as f64 / epoch_step_seconds
            );
        }
        save_state(self.model, self.dir, self.norm, Progress { step }, self.cfg)?;
        self.saved_step = step;
        Ok(())
    }

    /// At an epoch's end (or where the session stops) when evaluating each epoch: the test
    /// accuracy, and the best weights saved when it is a new best.
    fn evaluate_epoch(&mut self) -> Result<Option<EvalResult>> {
        if !self.evaluates_at(self.step) {
            return Ok(None);
        }
        let evaluated = evaluate(self.model, self.test, self.norm, self.cfg.eval_batch, self.cfg.show_progress);
        // finite training losses, then non-finite outputs: the last steps diverged (the loss of a
        // step is taken before its update)
        let e = match evaluated {
            Err(Error::Diverged(_)) => {
                let epoch = self.step.saturating_sub(1) / self.steps_per_epoch.max(1);
                return Err(diverged("the test loss", f32::NAN, self.step, epoch, self.dir, &self.cfg.divergence_hint));
            }
            other => other?,
        };
        self.limit.evaluation = self.limit.evaluation.max(std::time::Duration::from_secs_f64(e.seconds));
        self.evaluated = (self.evaluated.0 + e.images, self.evaluated.1 + e.seconds);
        if self.best_top1.is_none_or(|b| e.top1 > b) {
            if let Some(path) = &self.cfg.best_path {
                checkpoint::save_model(self.model, path, self.norm, &[("top1", format!("{:.4}", e.top1))])?;
            }
        }
        self.best_top1 = Some(self.best_top1.map_or(e.top1, |b| b.max(e.top1)));
        self.final_eval = Some(e);
        Ok(Some(e))
    }

    /// Whether the run evaluates on reaching `step`: at the end of every `eval_every`-th epoch
    /// and of the last one, and where this session stops.
    fn evaluates_at(&self, step: usize) -> bool {
        if !self.cfg.eval_each_epoch {
            return false;
        }
        let epochs = step / self.steps_per_epoch;
        step == self.stop_at
            || (step.is_multiple_of(self.steps_per_epoch)
                && (epochs.is_multiple_of(self.cfg.eval_every) || epochs == self.cfg.epochs))
    }

    fn summary(&self) -> Result<TrainSummary> {
        Ok(TrainSummary {
            steps: self.step,
            epochs_completed: self.step / self.steps_per_epoch,
            final_eval: self.final_eval,
            best_top1: self.best_top1,
            seconds: self.started.elapsed().as_secs_f64(),
            images_per_second: self.trained_images as f64 / self.step_seconds.max(1e-9),
            eval_images_per_second: (self.evaluated.0 > 0)
                .then(|| self.evaluated.0 as f64 / self.evaluated.1.max(1e-9)),
            loss_scale: self.model.store.loss_scale().map(|s| s.status()).transpose()?,
        })
    }
}

/// This session's step and evaluation times, for `--time-limit`'s estimate of the next step.
#[derive(Default)]
struct StepClock {
    /// The run's step count when this session began.
    first_step: usize,
    /// Host wall time of the steps so far (batch assembly to the submit, and the read-backs that
    /// wait for the device).
    steps: std::time::Duration,
    /// The last step the device is known to have finished (a read-back waited for it), and
    /// `steps` at that moment: the device's pace. The host runs up to ~20 steps ahead of the
    /// device (the loss shown is that of 10 steps back), and a stop must wait for those too.
    settled_step: usize,
    steps_when_settled: std::time::Duration,
    /// The longest evaluation pass so far.
    evaluation: std::time::Duration,
}

impl StepClock {
    /// The device has finished step `step` (counted from the run's start) by now.
    fn settled(&mut self, step: usize) {
        self.settled_step = step;
        self.steps_when_settled = self.steps;
    }

    /// Whether the next step (and the epoch's evaluation when `evaluates`) fits before the time
    /// limit, `step` the run's step count. The first step of a session always runs.
    fn fits(&self, step: usize, evaluates: bool) -> bool {
        step == self.first_step || crate::time_limit::fits(self.next_step(step, evaluates))
    }

    /// The time until the next step (and the epoch's evaluation when `evaluates`) has ended on
    /// the device: the steps still in flight end first, and a stop must wait for them before
    /// the state can be saved. At least one step of this session is done.
    fn next_step(&self, step: usize, evaluates: bool) -> std::time::Duration {
        let (done, settled) = (step - self.first_step, self.settled_step - self.first_step);
        let (in_flight, per_step) = if settled > 0 {
            // the host's step time until the device had finished `settled` steps, per step: the
            // device's pace, or more where the host is the slower of the two
            (step - self.settled_step, self.steps_when_settled.div_f64(settled as f64))
        } else {
            // nothing waited for yet in this session (its first ~20 steps): twice the host's
            // mean step, as the device may still be working through the last few
            (1, self.steps.div_f64(done as f64))
        };
        per_step.mul_f64((in_flight + 1) as f64) + if evaluates { self.evaluation } else { Default::default() }
    }
}

/// The best test top-1 recorded in a run directory's metrics, if any.
pub fn read_best(dir: &Path) -> Result<Option<f64>> {
    let path = dir.join(METRICS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(4)?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .fold(None, |b, v| Some(b.map_or(v, |b: f64| b.max(v)))))
}

fn check_loss(loss: f32, step: usize, epoch: usize, dir: &Path, hint: &str) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    Err(diverged("the loss", loss, step, epoch, dir, hint))
}

/// The divergence error: `what` became `value` by `step` (0-based `epoch`), what `dir` holds to
/// go back to, and `hint` (how to continue with a lower learning rate).
fn diverged(what: &str, value: f32, step: usize, epoch: usize, dir: &Path, hint: &str) -> Error {
    let saved = match saved_step(dir) {
        Some(at) => format!("the last checkpoint in {} (step {at}) predates it", dir.display()),
        None => format!("no checkpoint was saved in {} yet (a resume starts from the beginning)", dir.display()),
    };
    Error::Diverged(format!(
        "{what} became {value} by step {step} (epoch {}): training diverged; {saved}; {hint}",
        epoch + 1
    ))
}

/// A learning rate as a user would type it: 0.01, or 1e-6 / 1e29 outside [1e-4, 1e4).
pub fn lr_text(lr: f32) -> String {
    if lr == 0.0 || (1e-4..1e4).contains(&lr.abs()) {
        format!("{lr}")
    } else {
        format!("{lr:e}")
    }
}

/// The step of the checkpoint in `dir`, if there is a readable one (its header alone is read).
pub fn saved_step(dir: &Path) -> Option<usize> {
    checkpoint::read_metadata(&dir.join(STATE_FILE)).ok()?.get("step")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{stretch_milestones, LrSchedule, StepClock, TrainConfig};
    use std::time::Duration;

    #[test]
    fn milestones_keep_their_share_of_a_shorter_or_longer_run() {
        let stretch = |m: &[usize], from, to| stretch_milestones(m, from, to).collect::<Vec<_>>();
        let recipe = [100, 150];
        assert_eq!(stretch(&recipe, 200, 200), [100, 150]);
        assert_eq!(stretch(&recipe, 200, 50), [25, 38]);
        // compare's magnitude retraining at the paper's budget: 21,107 gradients of 256 images are
        // 108.07 epochs of 50,000, so 200 + 109
        assert_eq!(stretch(&recipe, 200, 309), [155, 232]);
        assert_eq!(stretch(&recipe, 200, 4), [2, 3]);
        assert_eq!(stretch(&recipe, 200, 3), [2], "1.5 and 2.25: the first whole epochs past them; 3 is past the run");
        assert_eq!(stretch(&recipe, 200, 1), [] as [usize; 0], "no drop within one epoch");
        assert_eq!(stretch(&[30, 60], 90, 2), [1]);
        assert_eq!(stretch(&[5, 6, 7], 10, 10), [5, 6, 7]);
        assert_eq!(stretch(&[5, 60], 10, 10), [5], "a milestone past the run never drops the rate");
        // the learning rate of a 50-epoch run: 0.1, then 0.01 from epoch 25, 0.001 from 38
        let cfg = TrainConfig::cifar_default().with_epochs(50);
        assert_eq!((cfg.epochs, cfg.milestones()), (50, vec![25, 38]));
        assert_eq!(cfg.schedule_text(), "times 0.1 at epochs 25, 38");
        let lr: Vec<f32> = [0, 24, 25, 37, 38, 49].iter().map(|&e| cfg.lr_at(e, 0, 1)).collect();
        assert_eq!(lr, [0.1, 0.1, 0.1 * 0.1, 0.1 * 0.1, 0.1 * 0.1 * 0.1, 0.1 * 0.1 * 0.1]);
        assert!(cfg.validate().is_ok());
        // moved from the recipe every time: a run of 7 epochs made 100 long drops at 50 and 75 of
        // 100, where moving 7 epochs' drops again would round twice
        let shorter = TrainConfig::cifar_default().with_epochs(7).with_epochs(100);
        assert_eq!(shorter.milestones(), [50, 75], "7 epochs' [4, 6] stretched again would be [58, 86]");
        assert_eq!(
            TrainConfig::cifar_default().with_epochs(1).schedule_text(),
            "constant: no milestone within the run"
        );
        let cosine = TrainConfig { schedule: LrSchedule::Cosine, ..TrainConfig::cifar_default() };
        assert_eq!(cosine.with_epochs(7).schedule, LrSchedule::Cosine);
        assert!(cosine.with_epochs(7).milestones().is_empty());
    }

    #[test]
    fn the_next_steps_estimate_counts_the_steps_still_on_the_device() {
        let ms = Duration::from_millis;
        // a resumed session from step 100: 5 steps of 10 ms on the host, nothing waited for yet
        let mut clock = StepClock { first_step: 100, settled_step: 100, steps: ms(50), ..Default::default() };
        assert_eq!(clock.next_step(105, false), ms(20), "twice the host's mean step");
        // at step 120 the host waited for step 110: 2 s of step time for 10 finished steps, so
        // the device takes 200 ms a step, and steps 111..=120 are still in flight
        clock.steps = ms(2000);
        clock.settled(110);
        assert_eq!(clock.next_step(120, false), ms(2200), "10 in flight and the next at 200 ms");
        clock.steps = ms(2100);
        assert_eq!(clock.next_step(125, false), ms(3200), "15 in flight and the next");
        clock.evaluation = ms(700);
        assert_eq!(clock.next_step(125, true), ms(3900), "with the epoch's evaluation");
        // the epoch's last step read its own loss: nothing left in flight
        clock.steps = ms(3000);
        clock.settled(130);
        assert_eq!(clock.next_step(130, false), ms(100), "30 steps settled in 3 s");
    }
}
