//! `sasprune train`: dense training, new or resumed.

use super::args::{Cli, Command, TrainArgs, TrainSchedule};
use super::common::{
    classes_for, legacy_command_line, open_data, refuse_another_out, resume_record, saved_flags, saved_training,
    say_adapter, start_run_record, with_resume_hint,
};
use clap::Parser;
use sasprune::models::Model;
use sasprune::run_dir::{self, DataRecord, RunLock, RunRecord};
use sasprune::train::{self, LrSchedule, Progress, TrainConfig};
use sasprune::{checkpoint, gpu, Error, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Parses `train`'s schedule flags: milestones and gamma default to the model's recipe, its
/// milestones moved to `--epochs`; given milestones are the run's own. A new run is refused
/// `--milestones`/`--gamma` under cosine (which would ignore them) and a milestone at or past the
/// last epoch (which would never drop the rate); a resumed run keeps what it started with.
fn train_schedule(a: &TrainArgs, recipe: &sasprune::models::Recipe) -> Result<LrSchedule> {
    let epochs = a.epochs.unwrap_or(recipe.epochs);
    let new_run = a.resume.is_none();
    let gamma = a.gamma.unwrap_or(recipe.gamma);
    match a.schedule {
        TrainSchedule::Cosine if new_run && (a.milestones.is_some() || a.gamma.is_some()) => Err(Error::Usage(
            "--milestones and --gamma set the multistep schedule; --schedule cosine decays to 0 without them: drop \
             them, or use --schedule multistep"
                .into(),
        )),
        TrainSchedule::Cosine => Ok(LrSchedule::Cosine),
        TrainSchedule::Multistep => {
            let Some(text) = &a.milestones else {
                return Ok(LrSchedule::MultiStep { milestones: recipe.milestones.to_vec(), gamma, of: recipe.epochs });
            };
            let milestones = (text.split(','))
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse::<usize>())
                .collect::<std::result::Result<Vec<usize>, _>>()
                .map_err(|_| Error::invalid(format!("--milestones must be epochs like 100,150, got '{text}'")))?;
            // (out of order is the more basic mistake: `validate` names it)
            let ordered = milestones.windows(2).all(|w| w[0] < w[1]);
            if let Some(late) = milestones.iter().find(|&&m| m >= epochs).filter(|_| new_run && ordered) {
                return Err(Error::Usage(format!(
                    "--milestones {text}: a milestone m drops the rate after m epochs, and {late} is not below \
                     --epochs {epochs}, so that drop would never happen: give milestones below {epochs}"
                )));
            }
            Ok(LrSchedule::MultiStep { milestones, gamma, of: epochs })
        }
    }
}

/// For `train --resume DIR`: the flags the run saved (or, from an older version's record, its
/// argv parsed again) with `--data`, `--steps`, `--save-every` and `--lr` taken from `now` where
/// given; the record holds them.
fn resumed_flags(dir: &Path, args: &[OsString], now: &TrainArgs) -> Result<(RunRecord, TrainArgs)> {
    let overridable = ["--data", "--steps", "--save-every", "--lr"];
    let (mut record, given) = resume_record(dir, "train", args, &overridable)?;
    let mut saved = match saved_flags::<TrainArgs>(dir, &record)? {
        Some(saved) => saved,
        None => {
            let line = legacy_command_line(dir, "train", &record);
            let cli = Cli::try_parse_from(&line)
                .map_err(|e| Error::invalid(format!("{}: {e}", dir.join(run_dir::RECORD_FILE).display())))?;
            let Some(Command::Train(saved)) = cli.command else {
                return Err(Error::invalid(format!("{} does not record a training run", dir.display())));
            };
            saved
        }
    };
    for flag in &given {
        match flag.as_str() {
            "--data" => saved.data.data = now.data.data.clone(),
            "--steps" => saved.steps = now.steps,
            "--save-every" => saved.save_every = now.save_every,
            "--lr" => saved.lr = now.lr,
            _ => unreachable!("resume_record passes only the overridable flags"),
        }
    }
    record.flags = Some(serde_json::to_value(&saved).expect("flags serialize"));
    saved.resume = Some(dir.to_path_buf());
    Ok((record, saved))
}

/// `sasprune train`: a new run, or `--resume DIR` alone continuing one with its saved flags.
pub(crate) fn run_train(a: TrainArgs, args: &[OsString], options: &gpu::GpuOptions) -> Result<()> {
    // A run directory that holds a record is resumed from its saved flags; one from a version
    // that kept none is resumed with the flags given now (seed and batch checked).
    let (a, record) = match &a.resume {
        Some(dir) if RunRecord::exists(dir) || !dir.join(train::STATE_FILE).exists() => {
            let (record, saved) = resumed_flags(dir, args, &a)?;
            (saved, Some(record))
        }
        Some(dir) => {
            refuse_another_out(dir, args)?;
            (a, None)
        }
        None => (a, None),
    };
    let Some(model_name) = a.model.clone() else {
        return Err(Error::Usage("say which model to train with --model (e.g. resnet20), or --resume DIR".into()));
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
    let flags_checked = || -> Result<(TrainConfig, Option<checkpoint::Normalize>)> {
        let cfg = train_config(&a, &model_name, &dir)?;
        cfg.validate()?;
        sasprune::models::check_batch(&model_name, cfg.batch, "--batch")?;
        if let Some(c) = a.classes {
            sasprune::models::check_classes(c)?;
        }
        Ok((cfg, a.data.normalize()?))
    };
    let (cfg, flag_norm) = flags_checked().map_err(Error::as_usage)?;
    gpu::init(options)?;
    say_adapter()?;
    let (train_set, test_set) = open_data(&model_name, a.data.data.as_deref())?;
    let classes = classes_for(a.classes, train_set.as_ref())?;
    let data = DataRecord::of(train_set.as_ref(), test_set.as_ref());
    let _lock = RunLock::acquire(&dir)?;
    // a compact (filter-pruned) model is rebuilt at its widths: those its saved state records,
    // else those of --weights (a file; a pipe is read once, below, and holds a standard one)
    let state = dir.join(train::STATE_FILE);
    let widths_from = if state.exists() { Some(state) } else { a.weights.clone().filter(|w| w.is_file()) };
    let widths = match widths_from {
        Some(path) => sasprune::models::widths_in(&checkpoint::read_metadata(&path)?, &path)?,
        None => None,
    };
    let mut model = Model::build_arch(&model_name, classes, widths.as_deref(), a.seed)?;
    model.set_precision(a.precision)?;
    if let Some(record) = &record {
        record.check_data(&dir, &data, a.data.data.as_deref())?;
        record.save(&dir)?;
    }
    let (progress, norm) = starting_point(&a, record.is_some(), &dir, &mut model, &cfg, flag_norm)?;
    let cfg = check_training_memory(&mut model, cfg, train_set.len(), test_set.len())?;
    if record.is_none() && a.resume.is_none() {
        start_run_record(&dir, "train", args, data, &a)?;
    }
    let s = train::train(&mut model, train_set.as_ref(), test_set.as_ref(), norm, &cfg, &dir, progress, None).map_err(
        |e| with_resume_hint(e, &format!("sasprune train --resume {}", dir.display()), &saved_training(&dir)),
    )?;
    outln!(
        "trained {} steps ({} epochs) in {:.1} s, {:.1} img/s in the steps ({}); test top-1 {} (best {}); run directory {}",
        s.steps,
        s.epochs_completed,
        s.seconds,
        s.images_per_second,
        match s.loss_scale {
            Some(l) => format!("mixed precision, {} steps skipped for overflow, loss scale {}", l.skipped, l.scale),
            None => "f32".into(),
        },
        s.final_eval.map_or("-".into(), |e| format!("{:.2}%", e.top1)),
        s.best_top1.map_or("-".into(), |b| format!("{b:.2}%")),
        dir.display()
    );
    Ok(())
}

/// The training configuration the flags describe; flags not given take the model's recipe
/// (AlexNet's is ImageNet's, not the CIFAR one).
fn train_config(a: &TrainArgs, model_name: &str, dir: &Path) -> Result<TrainConfig> {
    let recipe = sasprune::models::spec(model_name)?.recipe;
    let lr = a.lr.unwrap_or(recipe.lr);
    Ok(TrainConfig {
        epochs: a.epochs.unwrap_or(recipe.epochs),
        batch: a.batch.unwrap_or(recipe.batch),
        lr,
        momentum: a.momentum.unwrap_or(recipe.momentum),
        weight_decay: a.weight_decay.unwrap_or(recipe.weight_decay),
        nesterov: a.nesterov,
        schedule: train_schedule(a, &recipe)?,
        seed: a.seed,
        max_steps: a.steps,
        subset: a.subset,
        deterministic: a.deterministic,
        save_every: a.save_every,
        eval_every: a.eval_every,
        divergence_hint: format!(
            "continue with a lower learning rate: `sasprune train --resume {} --lr {}`",
            dir.display(),
            train::lr_text(lr / 10.0)
        ),
        ..TrainConfig::cifar_default()
    })
}

/// Where training starts: a resumed run's saved step and weights, or step 0 from `--weights` or
/// a fresh initialization; with the input normalization that goes with it. `recorded`: the run
/// directory holds a record (a resume of a record-less directory is an older version's run).
fn starting_point(
    a: &TrainArgs,
    recorded: bool,
    dir: &Path,
    model: &mut Model,
    cfg: &TrainConfig,
    flag_norm: Option<checkpoint::Normalize>,
) -> Result<(Progress, checkpoint::Normalize)> {
    let model_name = model.name.clone();
    // A run that stopped before its first checkpoint (diverged at once, say) resumes from the start;
    // one that saved progress but lost its checkpoint would start over and overwrite that: refused.
    if a.resume.is_some() && recorded && !dir.join(train::STATE_FILE).exists() {
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
    Ok(if a.resume.is_some() && (!recorded || dir.join(train::STATE_FILE).exists()) {
        let (p, norm) = train::load_state(model, dir, cfg)?;
        errln!(
            "resuming {} at step {} (lr {}, {})",
            dir.display(),
            p.step,
            train::lr_text(cfg.lr),
            cfg.schedule_text()
        );
        (p, norm)
    } else {
        let norm = match &a.weights {
            Some(w) => {
                let stored = checkpoint::load_model(model, w)?;
                warn_if_pruned(model, w)?;
                checkpoint::choose_normalize(flag_norm, stored, &model_name, &w.display().to_string())
            }
            None => checkpoint::normalize_for_training(flag_norm, &model_name),
        };
        (Progress::default(), norm)
    })
}

/// `train` updates every weight: the zeros of pruned weights grow back. Trained or freshly
/// initialized dense weights hold almost no exact zeros, so weights with a tenth or more of their
/// prunable weights exactly 0 (any pruning rate from 1.1x, 2:4, filters) get a warning.
fn warn_if_pruned(model: &Model, weights: &Path) -> Result<()> {
    let dict = model.store.state_dict()?;
    let prunable = model.store.entries().iter().filter(|e| e.role == sasprune::nn::Role::PrunableWeight);
    let (zeros, total) = prunable.fold((0, 0), |(z, n), e| {
        let v = &dict[&e.name].1;
        (z + v.iter().filter(|&&x| x == 0.0).count(), n + v.len())
    });
    if 10 * zeros >= total {
        errln!(
            "warning: {zeros} of {total} prunable weights in {} are exactly 0 (a pruned model?); `train` applies no \
             mask, so they will grow back; the pipeline's masked retraining keeps them at 0",
            weights.display()
        );
    }
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
