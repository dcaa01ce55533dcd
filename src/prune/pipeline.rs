//! The main job: dense start → ADMM phase (SAS-ADMM by default) → hard pruning → masked
//! retraining → report. Each phase records its completion in the run directory, so
//! `--resume RUN_DIR` continues from the last completed outer iteration or epoch.

use super::admm::{self, AdmmNnConfig, AdmmState, IterationMetrics, PhaseContext, SasConfig};
use super::rate::{self, Plan, Rate};
use super::report::{self, LayerRow, PhaseScores, Report};
use super::structure::{self, Grouping, Structure};
use crate::checkpoint::{self, Normalize};
use crate::data::{Dataset, First};
use crate::models::Model;
use crate::ops::admm as admm_ops;
use crate::preflight::{self, Probe, Work};
use crate::run_dir::{self, PhaseAdapters, RunState};
use crate::train::{self, progress_bar, Progress, TrainConfig};
use crate::{gpu, Error, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use super::method::Method;

/// `--schedule` of the pipeline and `compare`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// the paper's and its authors' code's defaults (K = 190, 200 retraining epochs)
    Paper,
    /// the same algorithm scaled down (K = 20, 15 retraining epochs)
    Quick,
}

impl Schedule {
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Paper => "paper",
            Schedule::Quick => "quick",
        }
    }
}

/// Everything a pruning run needs.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub model: String,
    pub rate: Rate,
    pub layer_rates: Option<PathBuf>,
    /// What is removed together (`--structure`): weights, filters or 2:4 quads.
    pub structure: Structure,
    /// How activations are stored in every phase (`--precision`).
    pub precision: crate::models::Precision,
    pub method: Method,
    pub schedule: String,
    pub sas: SasConfig,
    pub admm: AdmmNnConfig,
    /// Masked retraining (and, over `baseline_epochs`, the baseline's fine-tuning).
    pub retrain: TrainConfig,
    /// Epochs of masked retraining past `retrain`'s, its learning-rate drops stretched with them:
    /// how `compare` gives magnitude pruning the ADMM phase's gradients (the baseline keeps
    /// `retrain`'s schedule, the same for every method).
    pub extra_retrain_epochs: usize,
    /// Dense training, when no weights are given.
    pub dense: TrainConfig,
    pub weights: Option<PathBuf>,
    /// The channel-set widths of a compact (filter-pruned) start: `weights`' metadata's
    /// (`None`: the standard network).
    pub widths: Option<Vec<usize>>,
    /// `weights` already read (and checked) by the caller; the dense phase uses these instead of
    /// reading the file again (a pipe can be read once).
    pub preloaded: checkpoint::Preloaded,
    /// `--normalize`: overrides the dense weights' normalization metadata (and the model's
    /// default when a dense model is trained first).
    pub normalize: Option<Normalize>,
    pub out: PathBuf,
    pub seed: u64,
    /// Use only the first N training images in every phase.
    pub subset: Option<usize>,
    /// Evaluate on the first N test images only.
    pub eval_limit: Option<usize>,
    /// Fine-tune the dense start with the retraining recipe (no mask) for this many epochs before
    /// pruning (0: none): the report's baseline, what pruning costs is measured against.
    pub baseline_epochs: usize,
    /// No augmentation in any phase; ADMM minibatches in file order, training in file order
    /// (`--deterministic`: what an independent implementation can reproduce step by step).
    pub deterministic: bool,
    pub show_progress: bool,
}

impl PipelineConfig {
    /// Masked retraining's configuration: `retrain` with the extra epochs.
    pub fn retraining(&self) -> TrainConfig {
        self.retrain.with_epochs(self.retrain.epochs + self.extra_retrain_epochs)
    }

    /// The baseline's fine-tuning: `retrain` over `baseline_epochs`, no mask.
    pub fn baseline_training(&self) -> TrainConfig {
        TrainConfig { best_path: None, ..self.retrain.with_epochs(self.baseline_epochs) }
    }
}

/// The pruning plan a configuration asks for (checked before any work starts).
pub fn make_plan(model: &Model, cfg: &PipelineConfig) -> Result<Plan> {
    let layers = rate::prunable_layers(&model.store);
    match (cfg.structure, &cfg.layer_rates) {
        (Structure::Weight, Some(path)) => rate::plan_from_file(layers, path),
        (Structure::Weight, None) => rate::plan_uniform(layers, cfg.rate, model.spec.fc_dense),
        (s, Some(path)) => Err(Error::invalid(format!(
            "--layer-rates {} gives shares of weights, which only --structure weight prunes; with --structure {s} \
             give --rate",
            path.display()
        ))),
        (Structure::Filter, None) => structure::plan_filters(layers, &model.channel_sets(), cfg.rate, &cfg.model),
        (Structure::TwoFour, None) => structure::plan_two_four(layers, model.spec.fc_dense),
    }
}

/// Runs (or resumes) the whole pipeline in `cfg.out`: one function per phase, in the order they
/// run. Each phase that `run_state.txt` records as done reloads its result instead of running.
pub fn run(cfg: &PipelineConfig, train_set: &dyn Dataset, test_set: &dyn Dataset) -> Result<Report> {
    let total_start = Instant::now();
    let dir = cfg.out.as_path();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut model = Model::build_arch(&cfg.model, train_set.classes(), cfg.widths.as_deref(), cfg.seed)?;
    model.set_precision(cfg.precision)?;
    let plan = make_plan(&model, cfg)?;
    let mut run = Run {
        cfg,
        dir,
        started: total_start,
        log: RunState::load(dir)?,
        train: First { inner: train_set, n: cfg.subset.unwrap_or(usize::MAX) },
        test: First { inner: test_set, n: cfg.eval_limit.unwrap_or(usize::MAX) },
        seconds: Vec::new(),
        evaluation: Default::default(),
        adapters: PhaseAdapters::load(dir)?,
    };
    train::check_dataset(&model, &run.train, "the training set")?;
    run.announce(&plan);
    let norm = run.dense_start(&mut model)?;
    if cfg.baseline_epochs > 0 {
        run.baseline(&mut model, norm)?;
    }
    if cfg.method.has_admm_phase() {
        run.admm_phase(&mut model, &plan, norm)?;
    }
    let (mask, removed) = run.hard_prune(&mut model, &plan, norm)?;
    run.masked_retraining(&mut model, &plan, &mask, norm)?;
    run.report(&model, &plan, (&mask, &removed), norm)
}

/// What the phases of one run share.
struct Run<'a> {
    cfg: &'a PipelineConfig,
    dir: &'a Path,
    /// When this session started (the report's "total (this session)").
    started: Instant,
    /// Which phases are done, and their scores and times.
    log: RunState,
    /// The training images every phase uses (`--subset`) and the test images it scores on
    /// (`--eval-limit`).
    train: First<'a>,
    test: First<'a>,
    /// Each phase's time for the report, over every session of a resumed run.
    seconds: Vec<(String, f64)>,
    /// The longest evaluation of this session, seconds (`--time-limit`'s estimate of the next).
    evaluation: std::cell::Cell<f64>,
    /// Which adapter ran each phase, over every session (`adapters.json`).
    adapters: PhaseAdapters,
}

impl Run<'_> {
    fn announce(&self, plan: &Plan) {
        let cfg = self.cfg;
        let conv = match (plan.structure, &cfg.layer_rates, conv_percentage(plan)) {
            (Structure::Weight, None, Some(p)) => format!(", conv layers at {p:.2}%"),
            (Structure::Filter, ..) => {
                let removed: usize = plan.cuts.iter().map(|c| c.removed).sum();
                let channels: usize = plan.cuts.iter().map(|c| c.set.width).sum();
                format!(", filters: {removed} of {channels} channels in {} channel sets removed", plan.cuts.len())
            }
            (Structure::TwoFour, ..) => {
                let layers = plan.pruned.iter().filter(|&&k| k > 0).count();
                format!(", 2:4: 2 of every 4 weights in {layers} of {} layers", plan.layers.len())
            }
            _ => String::new(),
        };
        outln!(
            "{} → {} ({}, {:.2}x: {} of {} weights kept{conv}) in {}",
            cfg.model,
            cfg.method.name(),
            cfg.schedule,
            plan.rate(),
            plan.kept(),
            plan.total(),
            self.dir.display()
        );
        // a target so high that whole filters must go empty: legal, but rarely meant
        let starved: Vec<String> = (plan.layers.iter().zip(&plan.pruned))
            .filter(|(l, &k)| k > 0 && l.len - k < l.shape[0])
            .map(|(l, &k)| format!("{} ({} of {})", l.name, l.len - k, l.len))
            .collect();
        if !starved.is_empty() {
            errln!(
                "warning: {} layer(s) keep fewer weights than they have output channels, so some outputs are \
                 constant: {}",
                starved.len(),
                starved.join(", ")
            );
        }
    }

    fn evaluate(&self, model: &mut Model, norm: Normalize) -> Result<train::EvalResult> {
        let e = train::evaluate(model, &self.test, norm, self.cfg.retrain.eval_batch, self.cfg.show_progress)?;
        self.evaluation.set(self.evaluation.get().max(e.seconds));
        Ok(e)
    }

    /// `--time-limit`: stops before `what` (an evaluation with the work around it) when it would
    /// not end before the limit. Callers have saved what precedes it.
    fn time_for_evaluation(&self, what: &str) -> Result<()> {
        let estimate = std::time::Duration::from_secs_f64(1.25 * self.evaluation.get());
        if crate::time_limit::fits(estimate) {
            return Ok(());
        }
        Err(crate::time_limit::reached(what))
    }

    /// Records that this session's adapter works on `phase` (a run directory may move between
    /// machines; the report names phases that ran on more than one adapter).
    fn working_on(&mut self, phase: &str) -> Result<()> {
        let adapter = format!("{} | {}", gpu::get()?.adapter, crate::tune::plan_source()?);
        self.adapters.record(self.dir, phase, &adapter)
    }

    /// Records a completed phase: its top-1 / top-5 and time, then `{phase}.done` last (a run
    /// killed before it runs the phase again).
    fn complete(&mut self, phase: &str, e: &train::EvalResult, seconds: f64) -> Result<()> {
        self.log.set(self.dir, &format!("{phase}.top1"), e.top1)?;
        self.log.set(self.dir, &format!("{phase}.top5"), e.top5)?;
        self.log.set(self.dir, &format!("{phase}.seconds"), seconds)?;
        self.log.set(self.dir, &format!("{phase}.done"), 1.0)
    }

    /// Puts a phase's time (over every session) into the report's table.
    fn count_time(&mut self, label: &str, phase: &str) {
        let secs = self.log.f64(&format!("{phase}.seconds")).unwrap_or(0.0);
        self.seconds.push((label.to_string(), secs));
    }

    /// Phase 1, the dense start: `--weights`, or a dense model trained here. Returns the input
    /// normalization the whole run uses.
    fn dense_start(&mut self, model: &mut Model) -> Result<Normalize> {
        let (cfg, dir) = (self.cfg, self.dir);
        let dense_path = dir.join("dense.safetensors");
        if self.log.done("dense") {
            self.count_time("dense", "dense");
            // the run's own file: it always names the normalization the run chose at its start
            return Ok(checkpoint::load_model(model, &dense_path)?.unwrap_or(Normalize::default_for(&cfg.model)));
        }
        self.working_on("dense")?;
        let t = Instant::now();
        let norm = match &cfg.weights {
            Some(w) => {
                let stored = match cfg.preloaded.take() {
                    Some(ck) => checkpoint::load_model_from(model, &ck, w)?,
                    None => checkpoint::load_model(model, w)?,
                };
                checkpoint::choose_normalize(cfg.normalize, stored, &cfg.model, &w.display().to_string())
            }
            None => self.train_dense(model)?,
        };
        self.time_for_evaluation("the dense start's evaluation")?;
        let e = self.evaluate(model, norm)?;
        checkpoint::save_model(model, &dense_path, norm, &[])?;
        let secs = match cfg.weights {
            Some(_) => t.elapsed().as_secs_f64(),
            None => sum_seconds(&dir.join("dense").join(train::METRICS_FILE))?,
        };
        self.complete("dense", &e, secs)?;
        self.count_time("dense", "dense");
        outln!("dense: top-1 {:.2}% on {} test images ({:.1} s)", e.top1, e.images, t.elapsed().as_secs_f64());
        Ok(norm)
    }

    /// Trains the dense start when no `--weights` are given (resuming its own checkpoint).
    fn train_dense(&self, model: &mut Model) -> Result<Normalize> {
        let (cfg, d) = (self.cfg, &self.cfg.dense);
        outln!(
            "no --weights given: training a dense {} first ({} epochs of SGD at batch {}, lr {} {}, set by \
             --schedule; --lr and --retrain-epochs apply to the masked retraining); the expected duration is \
             printed after 20 steps",
            cfg.model,
            d.epochs,
            d.batch,
            d.lr,
            d.schedule_text()
        );
        let norm = checkpoint::normalize_for_training(cfg.normalize, &cfg.model);
        let dense_dir = self.dir.join("dense");
        let progress = resume_progress(model, &dense_dir, d, false)?;
        train::train(model, &self.train, &self.test, norm, d, &dense_dir, progress, None)
            .map_err(|e| in_phase("dense training", e))?;
        Ok(norm)
    }

    /// The baseline (`--baseline-epochs N`): the dense start fine-tuned for N epochs with the
    /// retraining recipe and no mask, on the same data and in the same run. Pruning then starts
    /// from it, and the report measures pruning's cost against it instead of against weights
    /// trained elsewhere (the shared CIFAR weights gain ~5 points from any training on this data).
    fn baseline(&mut self, model: &mut Model, norm: Normalize) -> Result<()> {
        let (cfg, dir) = (self.cfg, self.dir);
        let path = dir.join("baseline.safetensors");
        if self.log.done("baseline") {
            checkpoint::load_model(model, &path)?;
        } else {
            self.working_on("baseline")?;
            let run_dir = dir.join("baseline");
            let bcfg = cfg.baseline_training();
            outln!(
                "baseline: fine-tuning the dense start {} epochs of batch {}, lr {} ({})",
                bcfg.epochs,
                bcfg.batch,
                train::lr_text(bcfg.lr),
                bcfg.schedule_text()
            );
            let progress = resume_progress(model, &run_dir, &bcfg, true)?;
            train::train(model, &self.train, &self.test, norm, &bcfg, &run_dir, progress, None)
                .map_err(|e| in_phase("baseline fine-tuning", e))?;
            self.time_for_evaluation("the baseline's evaluation (its training is saved)")?;
            let e = self.evaluate(model, norm)?;
            checkpoint::save_model(model, &path, norm, &[])?;
            self.complete("baseline", &e, sum_seconds(&run_dir.join(train::METRICS_FILE))?)?;
            outln!(
                "baseline: the dense start fine-tuned {} epochs on this data: top-1 {:.2}%",
                cfg.baseline_epochs,
                e.top1
            );
        }
        self.count_time("baseline", "baseline");
        Ok(())
    }

    /// Phase 2, the ADMM phase (SAS-ADMM or ADMM-NN), resumed from its last saved outer iteration;
    /// leaves the phase's weights in the model.
    fn admm_phase(&mut self, model: &mut Model, plan: &Plan, norm: Normalize) -> Result<()> {
        let (cfg, dir) = (self.cfg, self.dir);
        let method = cfg.method.name();
        let metrics_path = dir.join(METRICS_FILE);
        let admm_path = dir.join("after_admm.safetensors");
        if self.log.done("admm") {
            checkpoint::load_model(model, &admm_path)?;
            self.count_time(method, "admm");
            return Ok(());
        }
        self.working_on("admm")?;
        let mut state = match AdmmState::load(model, dir, method)? {
            Some(s) => {
                outln!("resuming the {method} phase after outer iteration {}", s.k);
                // iterations after the saved state were logged but are run again
                run_dir::keep_csv_rows_through(&metrics_path, 0, s.k)?;
                s
            }
            None => {
                fresh_loss_scale(model)?;
                AdmmState::start(model)?
            }
        };
        let (total, batch) = cfg.method.admm_budget(&cfg.sas, &cfg.admm);
        let bar = if cfg.show_progress {
            progress_bar(total as u64, method.to_string())
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_position(state.gradients as u64);
        let phase_start = Instant::now();
        let start_gradients = state.gradients;
        let after = |m: &IterationMetrics| -> Result<()> {
            run_dir::append_csv_row(&metrics_path, IterationMetrics::CSV_HEADER, &m.csv())?;
            let rate = (m.gradients - start_gradients) as f64 * batch as f64 / phase_start.elapsed().as_secs_f64();
            bar.set_message(format!("iter {} | loss {:.4} | ‖W−Z‖² {:.3e} | {rate:.1} img/s", m.k, m.ce, m.res2));
            if cfg.show_progress {
                train::log_line(&bar, format!("iteration {:>3} | gradients {:>6} | CE {:.4} | objective {:.4} | ‖W−Z‖² {:.3e} | ‖ΔZ‖² {:.3e} | {:.1} s", m.k, m.gradients, m.ce, m.objective, m.res2, m.dz2, m.seconds));
            }
            Ok(())
        };
        let spec = train::train_spec(model, &self.train, norm, cfg.deterministic);
        let ctx =
            PhaseContext { model: &mut *model, data: &self.train, spec: &spec, norm, seed: cfg.seed, dir, bar: &bar };
        cfg.method.run_admm_phase(ctx, (&cfg.sas, &cfg.admm), plan, &mut state, after)?;
        bar.finish_and_clear();
        self.time_for_evaluation("the evaluation after the ADMM phase (its last iteration is saved)")?;
        let eval_start = Instant::now();
        let e = self.evaluate(model, norm)?;
        checkpoint::save_model(model, &admm_path, norm, &[])?;
        // every session's iterations (their steps, updates and metrics; saves not included)
        let iterations = sum_seconds(&metrics_path)?;
        let secs = iterations + eval_start.elapsed().as_secs_f64();
        self.complete("admm", &e, secs)?;
        self.count_time(method, "admm");
        outln!(
            "{method}: {} outer iterations, {} minibatch gradients, top-1 {:.2}% ({secs:.1} s; {:.1} images/s in its \
             iterations, evaluation {:.0} images/s)",
            state.k,
            state.gradients,
            e.top1,
            (state.gradients * batch) as f64 / iterations.max(1e-9),
            e.images as f64 / e.seconds.max(1e-9)
        );
        Ok(())
    }

    /// Phase 3, hard pruning: every prunable layer cut to its share by magnitude (by weights, by
    /// filter norms or 2 of every 4: the plan's structure). Returns the 0/1 mask over the whole
    /// parameter arena (under `filter` also over the removed channels' batch-norm or bias entries)
    /// and, under `filter`, each channel set's removed channels.
    fn hard_prune(&mut self, model: &mut Model, plan: &Plan, norm: Normalize) -> Result<(Tensor, Vec<Vec<usize>>)> {
        let grouping = Grouping::new(plan, model.store.prunable_len())?;
        let pruned_path = self.dir.join("after_prune.safetensors");
        let mask;
        if self.log.done("prune") {
            checkpoint::load_model(model, &pruned_path)?;
            // the pruned weights are the smallest (0) again, so the same selection finds them
            mask = grouping.arena_mask(model, &admm::arena_prefix(model)?)?;
        } else {
            self.time_for_evaluation("hard pruning and its evaluation")?;
            self.working_on("prune")?;
            let t = Instant::now();
            mask = grouping.arena_mask(model, &admm::arena_prefix(model)?)?;
            check_selected_counts(plan, &mask.0)?;
            admm_ops::multiply_in_place(&model.store.params_flat()?, &mask.0)?;
            let e = self.evaluate(model, norm)?;
            checkpoint::save_model(model, &pruned_path, norm, &[])?;
            self.complete("prune", &e, t.elapsed().as_secs_f64())?;
            outln!("hard prune to {:.2}x: top-1 {:.2}% ({:.1} s)", plan.rate(), e.top1, t.elapsed().as_secs_f64());
        }
        self.count_time("prune", "prune");
        Ok(mask)
    }

    /// Phase 4, masked retraining: pruned weights stay exactly 0. Saves `pruned.safetensors`.
    fn masked_retraining(&mut self, model: &mut Model, plan: &Plan, mask: &Tensor, norm: Normalize) -> Result<()> {
        let (cfg, dir) = (self.cfg, self.dir);
        let pruned_path = dir.join("pruned.safetensors");
        if self.log.done("retrain") {
            checkpoint::load_model(model, &pruned_path)?;
            self.count_time("retrain", "retrain");
            return Ok(());
        }
        self.working_on("retrain")?;
        let retrain_dir = dir.join("retrain");
        let rcfg = TrainConfig { best_path: Some(dir.join("retrain_best.safetensors")), ..cfg.retraining() };
        let progress = resume_progress(model, &retrain_dir, &rcfg, true)?;
        outln!(
            "masked retraining: {} epochs of batch {}, lr {} ({})",
            rcfg.epochs,
            rcfg.batch,
            train::lr_text(rcfg.lr),
            rcfg.schedule_text()
        );
        if progress.step > 0 {
            outln!("resuming masked retraining at step {}", progress.step);
        }
        let s = train::train(model, &self.train, &self.test, norm, &rcfg, &retrain_dir, progress, Some(mask))
            .map_err(|e| in_phase("masked retraining", e))?;
        let last = match s.final_eval {
            Some(e) => e,
            None => self.evaluate(model, norm)?,
        };
        let best = train::read_best(&retrain_dir)?.map_or(last.top1, |b| b.max(last.top1));
        checkpoint::save_model(model, &pruned_path, norm, &[("compression", format!("{:.4}", plan.rate()))])?;
        let secs = sum_seconds(&retrain_dir.join(train::METRICS_FILE))?;
        let log = &mut self.log;
        log.set(dir, "retrain.final5", last.top5)?;
        log.set(dir, "retrain.final", last.top1)?;
        log.set(dir, "retrain.best", best)?;
        log.set(dir, "retrain.seconds", secs)?;
        log.set(dir, "retrain.done", 1.0)?;
        self.count_time("retrain", "retrain");
        let eval_rate = s.eval_images_per_second.map_or(String::new(), |r| format!(", evaluation {r:.0} images/s"));
        outln!(
            "masked retraining: {} steps, top-1 final {:.2}% best {best:.2}% ({secs:.1} s; training {:.1} images/s{eval_rate})",
            s.steps, last.top1, s.images_per_second
        );
        Ok(())
    }

    /// Phase 5, the report, counted from the final weights themselves: report.json / .txt, the masks,
    /// the convergence plot; under `filter` also the compact model.
    fn report(
        self,
        model: &Model,
        plan: &Plan,
        (mask, removed): (&Tensor, &[Vec<usize>]),
        norm: Normalize,
    ) -> Result<Report> {
        let (cfg, dir, log) = (self.cfg, self.dir, &self.log);
        let weights = admm::arena_prefix(model)?.to_vec()?;
        let masks = prunable_prefix(model, mask)?.to_vec()?;
        let mut mask_dict = crate::nn::StateDict::new();
        let layers: Vec<LayerRow> = plan
            .layers
            .iter()
            .map(|l| {
                let (wl, ml) = (&weights[l.offset..l.offset + l.len], &masks[l.offset..l.offset + l.len]);
                mask_dict.insert(format!("{}_mask", l.name), (l.shape.clone(), ml.to_vec()));
                LayerRow {
                    name: l.name.clone(),
                    shape: l.shape.clone(),
                    weights: l.len,
                    kept: wl.iter().filter(|&&v| v != 0.0).count(),
                }
            })
            .collect();
        let structure_meta = std::collections::HashMap::from([("structure".to_string(), plan.structure.to_string())]);
        checkpoint::save(&dir.join("masks.safetensors"), &mask_dict, &[], structure_meta)?;
        let compact_widths = match plan.structure {
            Structure::Filter => Some(save_compact(model, removed, &dir.join(COMPACT_FILE), norm)?),
            _ => None,
        };
        let kept_per_layer: Vec<usize> = layers.iter().map(|l| l.kept).collect();
        let mut seconds = self.seconds;
        seconds.push(("total (this session)".into(), self.started.elapsed().as_secs_f64()));
        let kept: usize = layers.iter().map(|l| l.kept).sum();
        let scores = |suffix: &str| PhaseScores {
            dense: log.f64(&format!("dense.{suffix}")),
            baseline: log.f64(&format!("baseline.{suffix}")),
            after_admm: log.f64(&format!("admm.{suffix}")),
            after_prune: log.f64(&format!("prune.{suffix}")),
            retrain_best: None,
            retrain_final: None,
        };
        let report = Report {
            model: cfg.model.clone(),
            method: cfg.method.name().into(),
            adapter: gpu::get()?.adapter.to_string(),
            rate_target: match (&cfg.layer_rates, plan.structure) {
                (Some(p), _) => format!("per-layer rates from {}", p.display()),
                (None, Structure::TwoFour) => "2 of every 4 in each covered layer".into(),
                (None, _) => cfg.rate.to_string(),
            },
            rate_achieved: plan.total() as f64 / kept.max(1) as f64,
            conv_percentage: if cfg.layer_rates.is_none() && plan.structure == Structure::Weight {
                conv_percentage(plan)
            } else {
                None
            },
            structure: plan.structure.to_string(),
            precision: cfg.precision.to_string(),
            loss_scale: model.store.loss_scale().map(|s| s.status()).transpose()?,
            macs: structure::macs(model, &plan.layers, &kept_per_layer),
            compact_widths,
            layers,
            top1: PhaseScores {
                retrain_best: log.f64("retrain.best"),
                retrain_final: log.f64("retrain.final"),
                ..scores("top1")
            },
            top5: PhaseScores { retrain_final: log.f64("retrain.final5"), ..scores("top5") },
            seconds,
            eval_images: self.test.len(),
            schedule: cfg.schedule.clone(),
            phase_adapters: self.adapters.0.clone(),
        };
        checkpoint::write_atomic(&dir.join("report.json"), report.json().as_bytes())?;
        checkpoint::write_atomic(&dir.join("report.txt"), report.table().as_bytes())?;
        let metrics_path = dir.join(METRICS_FILE);
        if metrics_path.exists() {
            let m = report::read_metrics(&metrics_path)?;
            let svg = report::convergence_svg(&[(cfg.method.name(), &m)]);
            checkpoint::write_atomic(&dir.join("convergence.svg"), svg.as_bytes())?;
        }
        outln!("\n{}", report.table());
        Ok(report)
    }
}

/// The compact model of a filter-pruned run, in its run directory.
pub const COMPACT_FILE: &str = "compact.safetensors";

/// Saves the compact network of `model` without the `removed` channels (see
/// [`structure::compact_state`]) with its widths in the metadata; returns the widths.
pub fn save_compact(model: &Model, removed: &[Vec<usize>], path: &Path, norm: Normalize) -> Result<Vec<usize>> {
    let (dict, widths) = structure::compact_state(model, removed)?;
    let mut compact = Model::build_compact(&model.name, model.classes, &widths, 0)?;
    compact.store.load_state_dict(&dict, &path.display().to_string())?;
    compact.store.batches_tracked = model.store.batches_tracked;
    checkpoint::save_model(&compact, path, norm, &[])?;
    Ok(widths)
}

/// The ADMM phase's per-iteration metrics in a run directory.
const METRICS_FILE: &str = "admm_metrics.csv";

/// The percentage of weights a uniform rate keeps in each conv layer.
fn conv_percentage(plan: &Plan) -> Option<f64> {
    plan.layers.iter().zip(&plan.fractions).find(|(l, _)| !l.is_fc).map(|(_, &p)| 100.0 * p)
}

/// The view of an arena-sized vector (a mask) over the model's prunable weights.
fn prunable_prefix(model: &Model, arena_vector: &Tensor) -> Result<Tensor> {
    Tensor::view_into(arena_vector.storage().clone(), 0, &[model.store.prunable_len()])
}

/// Where a training phase stands: its checkpoint in `dir` if there is one, else the start
/// (momentum cleared first when `fresh_momentum`: the phase follows another that used it; the
/// loss scale back at its start in mixed precision).
fn resume_progress(model: &mut Model, dir: &Path, cfg: &TrainConfig, fresh_momentum: bool) -> Result<Progress> {
    if dir.join(train::STATE_FILE).exists() {
        return Ok(train::load_state(model, dir, cfg)?.0);
    }
    if dir.join(train::METRICS_FILE).exists() {
        // epochs ran but their state is gone (deleted, or a run of an older version)
        errln!(
            "note: {} holds no {}: this phase starts over from its first step (its metrics rows are redone)",
            dir.display(),
            train::STATE_FILE
        );
    }
    if fresh_momentum {
        model.store.reset_momentum()?;
    }
    fresh_loss_scale(model)?;
    Ok(Progress::default())
}

/// Mixed precision: each phase starts its loss scale afresh (its state files keep it from there
/// on), so a run resumed at a phase boundary scales exactly as an uninterrupted one.
fn fresh_loss_scale(model: &Model) -> Result<()> {
    model.store.loss_scale().map_or(Ok(()), |s| s.reset())
}

/// Device vectors the ADMM phase holds beside the model: W, Z, U, W̆, W_avg, SAS-ADMM's h, five
/// scratch vectors (the monitored norms, and the projection mask that ADMM-NN's dual step and
/// the prune gap share) and one for mask selection.
const ADMM_VECTORS: usize = 12;

/// Tries each phase the run in `cfg.out` has left at its largest moment on the device (see
/// [`preflight`]) and says how much the largest one holds; call it before the run is recorded, so
/// that a run which does not fit can be started again with other flags. Returns `cfg` with the
/// evaluation batch that fits (for dense training's evaluations as well). `model` keeps its weights and statistics.
pub fn check_memory(
    model: &mut Model,
    cfg: &PipelineConfig,
    train_set: &dyn Dataset,
    test_set: &dyn Dataset,
) -> Result<PipelineConfig> {
    let log = RunState::load(&cfg.out)?;
    if log.done("retrain") || !gpu::get()?.memory_can_be_checked() {
        return Ok(cfg.clone()); // only the report is left, or a software driver
    }
    let train_len = cfg.subset.map_or(train_set.len(), |n| n.min(train_set.len()));
    let test_len = cfg.eval_limit.map_or(test_set.len(), |n| n.min(test_set.len()));
    let prunable = model.store.prunable_len();
    let arena = model.store.params_flat()?.numel();
    let train_probe = |phase, flag, batch: usize, vectors, vector_len| Probe {
        phase,
        flag,
        batch: batch.min(train_len).max(1),
        work: Work::Train,
        vectors,
        vector_len,
    };
    let mut probes = Vec::new();
    if !log.done("dense") && cfg.weights.is_none() {
        let flag = "the dense training's batch (train it with `sasprune train --batch N` and pass it as --weights)";
        probes.push(train_probe("dense training", flag, cfg.dense.batch, 0, 0));
    }
    if cfg.baseline_epochs > 0 && !log.done("baseline") {
        probes.push(train_probe("baseline fine-tuning", "--retrain-batch", cfg.retrain.batch, 0, 0));
    }
    let admm_left = cfg.method.has_admm_phase() && !log.done("admm");
    if admm_left {
        let (_, batch) = cfg.method.admm_budget(&cfg.sas, &cfg.admm);
        // minibatches cycle through the data, so the batch is never cut to the data's size
        probes.push(Probe { batch, ..train_probe("the ADMM phase", "--batch", 0, ADMM_VECTORS, prunable) });
    }
    probes.push(train_probe("masked retraining", "--retrain-batch", cfg.retrain.batch, 1, arena));
    // evaluation after the ADMM phase runs beside its five state vectors; later ones beside the mask
    let (vectors, vector_len) = if admm_left { (5, prunable) } else { (1, arena) };
    probes.push(Probe {
        phase: "evaluation",
        flag: "the evaluation batch",
        batch: cfg.retrain.eval_batch.min(test_len).max(1),
        work: Work::Eval,
        vectors,
        vector_len,
    });
    let gpu = gpu::get()?;
    gpu.reset_peak_memory();
    let eval_batch = preflight::check_memory(model, &probes, cfg.retrain.eval_batch)?;
    outln!(
        "memory check: every phase fits; the largest holds {:.0} MiB on the device (weights, gradients, momentum, \
         the pruning variables and a batch's activations)",
        gpu.memory_stats().peak_in_use as f64 / 1048576.0
    );
    // dense training evaluates too, never with a larger batch than the one checked
    Ok(PipelineConfig {
        retrain: TrainConfig { eval_batch, ..cfg.retrain.clone() },
        dense: TrainConfig { eval_batch: cfg.dense.eval_batch.min(eval_batch), ..cfg.dense.clone() },
        ..cfg.clone()
    })
}

/// The sum of the `seconds` column of a metrics file (ADMM or training; 0 when the file does not
/// exist or has no such column): phase times across every session of a resumed run.
fn sum_seconds(path: &Path) -> Result<f64> {
    if !path.exists() {
        return Ok(0.0);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines();
    let Some(col) = lines.next().and_then(|h| h.split(',').position(|name| name.trim() == "seconds")) else {
        return Ok(0.0);
    };
    Ok(lines.filter_map(|l| l.split(',').nth(col)?.parse::<f64>().ok()).sum())
}

/// Names the phase a failure happened in (the messages of the training loop do not know it).
fn in_phase(phase: &str, e: Error) -> Error {
    e.within(phase)
}

/// Hard pruning's mask zeroes exactly each layer's planned count (the selection breaks ties by
/// position, so the count is exact whatever the weights): checked on the host, once, because a
/// driver that miscounts would otherwise prune silently to another rate. Mesa 22.3's lavapipe
/// (Debian 12's own) does, on layers of a few hundred thousand weights and more.
fn check_selected_counts(plan: &Plan, mask: &Tensor) -> Result<()> {
    if plan.structure != Structure::Weight {
        return Ok(());
    }
    let mask = mask.to_vec()?;
    for (layer, &k) in plan.layers.iter().zip(&plan.pruned) {
        let zeros = mask[layer.offset..layer.offset + layer.len].iter().filter(|&&m| m == 0.0).count();
        if zeros != k {
            return Err(Error::Gpu(format!(
                "hard pruning: the device's selection zeroed {zeros} weights of {} instead of {k}, so its \
                 driver ({}) computes wrongly; nothing was pruned. Update the driver (Debian 12's own lavapipe, \
                 Mesa 22.3, does this: `apt install -t bookworm-backports mesa-vulkan-drivers` gives Mesa 25) or \
                 use another adapter, then --resume the run",
                layer.name,
                gpu::get()?.adapter.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_phase_drops_the_metrics_rows_of_the_work_it_runs_again() {
        let dir = std::env::temp_dir().join(format!("sasprune-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admm_metrics.csv");
        let row = |k: usize| IterationMetrics { k, gradients: 5 * k, ce: 2.0 / k as f64, ..Default::default() }.csv();
        for k in 1..=5 {
            run_dir::append_csv_row(&path, IterationMetrics::CSV_HEADER, &row(k)).unwrap();
        }
        run_dir::keep_csv_rows_through(&path, 0, 3).unwrap();
        let want = format!("{}\n{}\n{}\n{}\n", IterationMetrics::CSV_HEADER, row(1), row(2), row(3));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
        run_dir::keep_csv_rows_through(&path, 0, 3).unwrap(); // nothing to drop: unchanged
        assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
        // a training's rows by their step (column 1): a resume from step 10 redoes the epoch that
        // ended at 15 (its row was written, its state not); one from step 0 redoes all
        let train = dir.join("metrics.csv");
        std::fs::write(&train, "epoch,step,lr\n1,5,0.1\n2,10,0.1\n3,15,0.1\n").unwrap();
        run_dir::keep_csv_rows_through(&train, 1, 10).unwrap();
        assert_eq!(std::fs::read_to_string(&train).unwrap(), "epoch,step,lr\n1,5,0.1\n2,10,0.1\n");
        run_dir::keep_csv_rows_through(&train, 1, 0).unwrap();
        assert_eq!(std::fs::read_to_string(&train).unwrap(), "epoch,step,lr\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
