//! The main job: dense start → ADMM phase (SAS-ADMM by default) → hard pruning → masked
//! retraining → report. Each phase records its completion in the run directory, so
//! `--resume RUN_DIR` continues from the last completed outer iteration or epoch.

use super::admm::{self, AdmmNnConfig, AdmmState, IterationMetrics, SasConfig};
use super::rate::{self, Plan, Rate};
use super::report::{self, LayerRow, PhaseScores, Report};
use crate::checkpoint::{self, Normalize};
use crate::data::{Dataset, First};
use crate::models::Model;
use crate::ops::{admm as admm_ops, select};
use crate::preflight::{self, Probe, Work};
use crate::train::{self, progress_bar, Progress, TrainConfig};
use crate::{gpu, Error, Result, Tensor};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    SasAdmm,
    Admm,
    Magnitude,
}

impl Method {
    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "sas-admm" => Ok(Method::SasAdmm),
            "admm" | "admm-nn" => Ok(Method::Admm),
            "magnitude" => Ok(Method::Magnitude),
            _ => Err(Error::invalid(format!("unknown --method '{s}': choose sas-admm, admm or magnitude"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Method::SasAdmm => "sas-admm",
            Method::Admm => "admm",
            Method::Magnitude => "magnitude",
        }
    }
}

/// Everything a pruning run needs.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub model: String,
    pub rate: Rate,
    pub layer_rates: Option<PathBuf>,
    pub method: Method,
    pub schedule: String,
    pub sas: SasConfig,
    pub admm: AdmmNnConfig,
    /// Masked retraining (and dense training when no weights are given).
    pub retrain: TrainConfig,
    pub dense: TrainConfig,
    pub weights: Option<PathBuf>,
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

/// The phases' results, kept in `run_state.txt` so a resumed run knows what is done.
#[derive(Default)]
struct RunLog(BTreeMap<String, String>);

impl RunLog {
    const FILE: &'static str = "run_state.txt";
    fn load(dir: &Path) -> Result<RunLog> {
        let path = dir.join(Self::FILE);
        if !path.exists() {
            return Ok(RunLog::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Ok(RunLog(
            text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ))
    }
    fn set(&mut self, dir: &Path, key: &str, value: impl ToString) -> Result<()> {
        self.0.insert(key.to_string(), value.to_string());
        let text: String = self.0.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        checkpoint::write_atomic(&dir.join(Self::FILE), text.as_bytes())
    }
    fn f64(&self, key: &str) -> Option<f64> {
        self.0.get(key)?.parse().ok()
    }
    fn done(&self, phase: &str) -> bool {
        self.0.contains_key(&format!("{phase}.done"))
    }
}

fn append_line(path: &Path, header: &str, line: &str) -> Result<()> {
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    if new {
        writeln!(f, "{header}").map_err(|e| Error::io(path, e))?;
    }
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))
}

/// Drops the rows of an ADMM metrics file after outer iteration `k` (the iterations a resumed run
/// repeats because they ran after the last saved state).
fn keep_metrics_through(path: &Path, k: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or(IterationMetrics::CSV_HEADER);
    let kept: Vec<&str> = lines.filter(|l| IterationMetrics::from_csv(l).is_some_and(|m| m.k <= k)).collect();
    if kept.len() + 1 == text.lines().count() {
        return Ok(());
    }
    let body: String = std::iter::once(header).chain(kept).map(|l| format!("{l}\n")).collect();
    checkpoint::write_atomic(path, body.as_bytes())
}

/// Whether a uniform `--rate` keeps the fc layers dense: yes for the CIFAR ResNets (the paper
/// counts their rates so), no for AlexNet (its fc layers hold 96% of the weights).
pub fn fc_dense(model: &str) -> bool {
    model != "alexnet"
}

/// The pruning plan a configuration asks for (checked before any work starts).
pub fn make_plan(model: &Model, cfg: &PipelineConfig) -> Result<Plan> {
    let layers = rate::prunable_layers(&model.store);
    match &cfg.layer_rates {
        Some(path) => rate::plan_from_file(layers, path),
        None => rate::plan_uniform(layers, cfg.rate, fc_dense(&cfg.model)),
    }
}

/// Runs (or resumes) the whole pipeline in `cfg.out`.
pub fn run(cfg: &PipelineConfig, train_set: &dyn Dataset, test_set: &dyn Dataset) -> Result<Report> {
    let total_start = Instant::now();
    let dir = cfg.out.as_path();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut model = Model::build(&cfg.model, train_set.classes(), cfg.seed)?;
    let plan = make_plan(&model, cfg)?;
    let train_sub = First { inner: train_set, n: cfg.subset.unwrap_or(usize::MAX) };
    let test_sub = First { inner: test_set, n: cfg.eval_limit.unwrap_or(usize::MAX) };
    train::check_dataset(&model, &train_sub, "the training set")?;
    let adapter = gpu::get()?.adapter.to_string();
    let mut log = RunLog::load(dir)?;
    let conv_pct = plan.layers.iter().zip(&plan.fractions).find(|(l, _)| !l.is_fc).map(|(_, &p)| 100.0 * p);
    println!(
        "{} → {} ({}, {:.2}x: {} of {} weights kept{}) in {}",
        cfg.model,
        cfg.method.name(),
        cfg.schedule,
        plan.rate(),
        plan.kept(),
        plan.total(),
        if cfg.layer_rates.is_none() {
            format!(", conv layers at {:.2}%", conv_pct.unwrap_or(0.0))
        } else {
            String::new()
        },
        dir.display()
    );
    let eval = |model: &mut Model, norm: Normalize| {
        train::evaluate(model, &test_sub, norm, cfg.retrain.eval_batch, cfg.show_progress)
    };
    let mut seconds: Vec<(String, f64)> = Vec::new();

    // 1. dense start
    let dense_path = dir.join("dense.safetensors");
    let norm = if log.done("dense") {
        // the run's own file: it always names the normalization the run chose at its start
        checkpoint::load_model(&mut model, &dense_path)?.unwrap_or(Normalize::default_for(&cfg.model))
    } else {
        let t = Instant::now();
        let norm = match &cfg.weights {
            Some(w) => {
                let stored = checkpoint::load_model(&mut model, w)?;
                checkpoint::choose_normalize(cfg.normalize, stored, &cfg.model, &w.display().to_string())
            }
            None => {
                let d = &cfg.dense;
                println!(
                    "no --weights given: training a dense {} first ({} epochs of SGD at batch {}, lr {} {}, set by \
                     --schedule; --lr and --retrain-epochs apply to the masked retraining); the expected duration is \
                     printed after 20 steps",
                    cfg.model, d.epochs, d.batch, d.lr, d.schedule
                );
                let norm = checkpoint::normalize_for_training(cfg.normalize, &cfg.model);
                let dense_dir = dir.join("dense");
                let progress = if dense_dir.join(train::STATE_FILE).exists() {
                    train::load_state(&mut model, &dense_dir, d)?.0
                } else {
                    Progress::default()
                };
                train::train(&mut model, &train_sub, &test_sub, norm, d, &dense_dir, progress, None)
                    .map_err(|e| in_phase("dense training", e))?;
                norm
            }
        };
        let e = eval(&mut model, norm)?;
        checkpoint::save_model(&model, &dense_path, norm, &[])?;
        log.set(dir, "dense.top1", e.top1)?;
        log.set(dir, "dense.top5", e.top5)?;
        let trained = sum_column(&dir.join("dense").join(train::METRICS_FILE), 7)?;
        log.set(dir, "dense.seconds", if cfg.weights.is_some() { t.elapsed().as_secs_f64() } else { trained })?;
        log.set(dir, "dense.done", 1)?;
        println!("dense: top-1 {:.2}% on {} test images ({:.1} s)", e.top1, e.images, t.elapsed().as_secs_f64());
        norm
    };
    seconds.push(("dense".into(), log.f64("dense.seconds").unwrap_or(0.0)));
    if cfg.baseline_epochs > 0 {
        baseline_phase(&mut model, cfg, &mut log, &train_sub, &test_sub, norm)?;
        seconds.push(("baseline".into(), log.f64("baseline.seconds").unwrap_or(0.0)));
    }
    let spec = train::train_spec(&model, &train_sub, norm, cfg.deterministic);

    // 2. ADMM phase
    let metrics_path = dir.join("admm_metrics.csv");
    let admm_path = dir.join("after_admm.safetensors");
    if cfg.method != Method::Magnitude {
        if log.done("admm") {
            checkpoint::load_model(&mut model, &admm_path)?;
        } else {
            let mut state = match AdmmState::load(&mut model, dir, cfg.method.name())? {
                Some(s) => {
                    println!("resuming the {} phase after outer iteration {}", cfg.method.name(), s.k);
                    // iterations after the saved state were logged but are run again
                    keep_metrics_through(&metrics_path, s.k)?;
                    s
                }
                None => AdmmState::start(&model)?,
            };
            let total = match cfg.method {
                Method::SasAdmm => cfg.sas.total_gradients(),
                _ => cfg.admm.iterations * cfg.admm.steps,
            };
            let bar = if cfg.show_progress {
                progress_bar(total as u64, cfg.method.name().to_string())
            } else {
                indicatif::ProgressBar::hidden()
            };
            bar.set_position(state.gradients as u64);
            let batch = if cfg.method == Method::SasAdmm { cfg.sas.batch } else { cfg.admm.batch };
            let phase_start = Instant::now();
            let start_gradients = state.gradients;
            let after = |m: &IterationMetrics| -> Result<()> {
                append_line(&metrics_path, IterationMetrics::CSV_HEADER, &m.csv())?;
                let rate = (m.gradients - start_gradients) as f64 * batch as f64 / phase_start.elapsed().as_secs_f64();
                bar.set_message(format!("iter {} | loss {:.4} | ‖W−Z‖² {:.3e} | {rate:.1} img/s", m.k, m.ce, m.res2));
                if !cfg.show_progress {
                    return Ok(());
                }
                train::log_line(&bar, format!("iteration {:>3} | gradients {:>6} | CE {:.4} | objective {:.4} | ‖W−Z‖² {:.3e} | ‖ΔZ‖² {:.3e} | {:.1} s", m.k, m.gradients, m.ce, m.objective, m.res2, m.dz2, m.seconds));
                Ok(())
            };
            match cfg.method {
                Method::SasAdmm => admm::run_sas_admm(
                    &mut model, &train_sub, &spec, norm, &cfg.sas, cfg.seed, &mut state, dir, &bar, after,
                )?,
                _ => admm::run_admm_nn(
                    &mut model, &train_sub, &spec, norm, &cfg.admm, &plan, cfg.seed, &mut state, dir, &bar, after,
                )?,
            }
            bar.finish_and_clear();
            let eval_start = Instant::now();
            let e = eval(&mut model, norm)?;
            checkpoint::save_model(&model, &admm_path, norm, &[])?;
            // every session's share (the per-iteration times) plus the evaluation just done
            let secs = sum_column(&metrics_path, 7)? + eval_start.elapsed().as_secs_f64();
            log.set(dir, "admm.top1", e.top1)?;
            log.set(dir, "admm.top5", e.top5)?;
            log.set(dir, "admm.seconds", secs)?;
            log.set(dir, "admm.done", 1)?;
            let batch = if cfg.method == Method::SasAdmm { cfg.sas.batch } else { cfg.admm.batch };
            println!(
                "{}: {} outer iterations, {} minibatch gradients, top-1 {:.2}% ({secs:.1} s, {:.1} images/s \
                 incl. evaluation)",
                cfg.method.name(),
                state.k,
                state.gradients,
                e.top1,
                (state.gradients * batch) as f64 / secs.max(1e-9)
            );
        }
        seconds.push((cfg.method.name().into(), log.f64("admm.seconds").unwrap_or(0.0)));
    }

    // 3. hard pruning
    let p_len = model.store.prunable_len();
    let mask = Tensor::full(&[model.store.params_flat()?.numel()], 1.0)?;
    let mask_prefix = Tensor::view_into(mask.storage().clone(), 0, &[p_len])?;
    let pruned_path = dir.join("after_prune.safetensors");
    let w_net = admm::arena_prefix(&model)?;
    if log.done("prune") {
        checkpoint::load_model(&mut model, &pruned_path)?;
        select::magnitude_mask(&admm::arena_prefix(&model)?, &admm::selection(&plan), &mask_prefix)?;
    } else {
        let t = Instant::now();
        select::magnitude_mask(&w_net, &admm::selection(&plan), &mask_prefix)?;
        admm_ops::multiply_in_place(&w_net, &mask_prefix)?;
        let e = eval(&mut model, norm)?;
        checkpoint::save_model(&model, &pruned_path, norm, &[])?;
        log.set(dir, "prune.top1", e.top1)?;
        log.set(dir, "prune.top5", e.top5)?;
        log.set(dir, "prune.seconds", t.elapsed().as_secs_f64())?;
        log.set(dir, "prune.done", 1)?;
        println!("hard prune to {:.2}x: top-1 {:.2}% ({:.1} s)", plan.rate(), e.top1, t.elapsed().as_secs_f64());
    }
    seconds.push(("prune".into(), log.f64("prune.seconds").unwrap_or(0.0)));

    // 4. masked retraining
    let retrain_dir = dir.join("retrain");
    if !log.done("retrain") {
        let mut rcfg = cfg.retrain.clone();
        rcfg.best_path = Some(dir.join("retrain_best.safetensors"));
        let progress = if retrain_dir.join(train::STATE_FILE).exists() {
            let (p, _) = train::load_state(&mut model, &retrain_dir, &rcfg)?;
            println!("resuming masked retraining at step {}", p.step);
            p
        } else {
            model.store.reset_momentum()?;
            Progress::default()
        };
        let s = train::train(&mut model, &train_sub, &test_sub, norm, &rcfg, &retrain_dir, progress, Some(&mask))
            .map_err(|e| in_phase("masked retraining", e))?;
        let fin_eval = match s.final_eval {
            Some(e) => e,
            None => eval(&mut model, norm)?,
        };
        let fin = fin_eval.top1;
        log.set(dir, "retrain.final5", fin_eval.top5)?;
        let best = train::read_best(&retrain_dir)?.map_or(fin, |b| b.max(fin));
        checkpoint::save_model(
            &model,
            &dir.join("pruned.safetensors"),
            norm,
            &[("compression", format!("{:.4}", plan.rate()))],
        )?;
        let secs = sum_column(&retrain_dir.join(train::METRICS_FILE), 7)?;
        log.set(dir, "retrain.final", fin)?;
        log.set(dir, "retrain.best", best)?;
        log.set(dir, "retrain.seconds", secs)?;
        log.set(dir, "retrain.done", 1)?;
        println!(
            "masked retraining: {} steps, top-1 final {fin:.2}% best {best:.2}% ({secs:.1} s, {:.1} images/s incl. \
             evaluation)",
            s.steps, s.images_per_second
        );
    } else {
        checkpoint::load_model(&mut model, &dir.join("pruned.safetensors"))?;
    }
    seconds.push(("retrain".into(), log.f64("retrain.seconds").unwrap_or(0.0)));

    // 5. report, counted from the final weights themselves
    let weights = admm::arena_prefix(&model)?.to_vec()?;
    let masks = mask_prefix.to_vec()?;
    let mut mask_dict = crate::nn::StateDict::new();
    let layers: Vec<LayerRow> = plan
        .layers
        .iter()
        .map(|l| {
            let wl = &weights[l.offset..l.offset + l.len];
            mask_dict.insert(format!("{}_mask", l.name), (l.shape.clone(), masks[l.offset..l.offset + l.len].to_vec()));
            LayerRow {
                name: l.name.clone(),
                shape: l.shape.clone(),
                weights: l.len,
                kept: wl.iter().filter(|&&v| v != 0.0).count(),
            }
        })
        .collect();
    checkpoint::save(&dir.join("masks.safetensors"), &mask_dict, &[], Default::default())?;
    seconds.push(("total (this session)".into(), total_start.elapsed().as_secs_f64()));
    let kept: usize = layers.iter().map(|l| l.kept).sum();
    let report = Report {
        model: cfg.model.clone(),
        method: cfg.method.name().into(),
        adapter,
        rate_target: cfg
            .layer_rates
            .as_ref()
            .map_or(cfg.rate.to_string(), |p| format!("per-layer rates from {}", p.display())),
        rate_achieved: plan.total() as f64 / kept.max(1) as f64,
        conv_percentage: if cfg.layer_rates.is_none() { conv_pct } else { None },
        layers,
        top1: PhaseScores {
            dense: log.f64("dense.top1"),
            baseline: log.f64("baseline.top1"),
            after_admm: log.f64("admm.top1"),
            after_prune: log.f64("prune.top1"),
            retrain_best: log.f64("retrain.best"),
            retrain_final: log.f64("retrain.final"),
        },
        top5: PhaseScores {
            dense: log.f64("dense.top5"),
            baseline: log.f64("baseline.top5"),
            after_admm: log.f64("admm.top5"),
            after_prune: log.f64("prune.top5"),
            retrain_best: None,
            retrain_final: log.f64("retrain.final5"),
        },
        seconds,
        eval_images: test_sub.len(),
        schedule: cfg.schedule.clone(),
    };
    checkpoint::write_atomic(&dir.join("report.json"), report.json().as_bytes())?;
    checkpoint::write_atomic(&dir.join("report.txt"), report.table().as_bytes())?;
    if metrics_path.exists() {
        let m = report::read_metrics(&metrics_path)?;
        let svg = report::convergence_svg(&[(cfg.method.name(), &m)]);
        checkpoint::write_atomic(&dir.join("convergence.svg"), svg.as_bytes())?;
    }
    println!("\n{}", report.table());
    Ok(report)
}

/// Device vectors the ADMM phase holds beside the model: W, Z, U, W̆, W_avg, h (or ADMM-NN's
/// mask), four scratch vectors for the monitored norms and one for mask selection.
const ADMM_VECTORS: usize = 11;

/// Tries each phase the run in `cfg.out` has left at its largest moment on the device (see
/// [`preflight`]) and says how much the largest one holds; call it before the run is recorded, so
/// that a run which does not fit can be started again with other flags. Returns `cfg` with the
/// evaluation batch that fits. `model` keeps its weights and statistics.
pub fn check_memory(
    model: &mut Model,
    cfg: &PipelineConfig,
    train_set: &dyn Dataset,
    test_set: &dyn Dataset,
) -> Result<PipelineConfig> {
    let log = RunLog::load(&cfg.out)?;
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
    let admm_left = cfg.method != Method::Magnitude && !log.done("admm");
    if admm_left {
        let batch = if cfg.method == Method::SasAdmm { cfg.sas.batch } else { cfg.admm.batch };
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
    println!(
        "memory check: every phase fits; the largest holds {:.0} MiB on the device (weights, gradients, momentum, \
         the pruning variables and a batch's activations)",
        gpu.memory_stats().peak_in_use as f64 / 1048576.0
    );
    Ok(PipelineConfig { retrain: TrainConfig { eval_batch, ..cfg.retrain.clone() }, ..cfg.clone() })
}

/// The sum of column `col` of a CSV file with a header (0 when the file does not exist): phase
/// times across every session of a resumed run.
fn sum_column(path: &Path, col: usize) -> Result<f64> {
    if !path.exists() {
        return Ok(0.0);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text.lines().skip(1).filter_map(|l| l.split(',').nth(col)?.parse::<f64>().ok()).sum())
}

/// The baseline phase (`--baseline-epochs N`): the dense start fine-tuned for N epochs with the
/// retraining recipe and no mask, on the same data and in the same run. Pruning then starts from
/// it, and the report measures pruning's cost against it instead of against weights trained
/// elsewhere (the shared CIFAR weights gain ~5 points from any training on this data).
fn baseline_phase(
    model: &mut Model,
    cfg: &PipelineConfig,
    log: &mut RunLog,
    train_sub: &dyn Dataset,
    test_sub: &dyn Dataset,
    norm: Normalize,
) -> Result<()> {
    let dir = cfg.out.as_path();
    let path = dir.join("baseline.safetensors");
    if log.done("baseline") {
        checkpoint::load_model(model, &path)?;
        return Ok(());
    }
    let run_dir = dir.join("baseline");
    let bcfg = TrainConfig { epochs: cfg.baseline_epochs, best_path: None, ..cfg.retrain.clone() };
    let progress = if run_dir.join(train::STATE_FILE).exists() {
        train::load_state(model, &run_dir, &bcfg)?.0
    } else {
        model.store.reset_momentum()?;
        Progress::default()
    };
    train::train(model, train_sub, test_sub, norm, &bcfg, &run_dir, progress, None)
        .map_err(|e| in_phase("baseline fine-tuning", e))?;
    let e = train::evaluate(model, test_sub, norm, cfg.retrain.eval_batch, cfg.show_progress)?;
    checkpoint::save_model(model, &path, norm, &[])?;
    log.set(dir, "baseline.top1", e.top1)?;
    log.set(dir, "baseline.top5", e.top5)?;
    log.set(dir, "baseline.seconds", sum_column(&run_dir.join(train::METRICS_FILE), 7)?)?;
    log.set(dir, "baseline.done", 1)?;
    println!("baseline: the dense start fine-tuned {} epochs on this data: top-1 {:.2}%", cfg.baseline_epochs, e.top1);
    Ok(())
}

/// Names the phase a failure happened in (the messages of the training loop do not know it).
fn in_phase(phase: &str, e: Error) -> Error {
    match e {
        Error::Diverged(msg) => Error::Diverged(format!("{phase}: {msg}")),
        e => Error::invalid(format!("{phase}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_admm_phase_drops_the_rows_of_iterations_it_runs_again() {
        let dir = std::env::temp_dir().join(format!("sasprune-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admm_metrics.csv");
        let row = |k: usize| IterationMetrics { k, gradients: 5 * k, ce: 2.0 / k as f64, ..Default::default() }.csv();
        for k in 1..=5 {
            append_line(&path, IterationMetrics::CSV_HEADER, &row(k)).unwrap();
        }
        keep_metrics_through(&path, 3).unwrap();
        let want = format!("{}\n{}\n{}\n{}\n", IterationMetrics::CSV_HEADER, row(1), row(2), row(3));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
        keep_metrics_through(&path, 3).unwrap(); // nothing to drop: unchanged
        assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
