//! `sasprune compare`: every method through the whole pipeline from the same dense start with the
//! same budget, once per seed, and what users need to choose between them — a table of mean ±
//! standard deviation (compare.md), every run's numbers (compare.csv), the paper's convergence
//! claim measured the same way for every ADMM method (the gradients each run needed to reach a
//! common prune gap ‖X − Π(X)‖² / ‖X‖², the share of its output hard pruning removes, in
//! compare.md, and the gap against gradients, compare.svg), top-1 against training images
//! (compare_accuracy.svg) and the ADMM phases' convergence (convergence.svg).
//!
//! Budget: the ADMM methods spend the same number of minibatch gradients in their ADMM phase
//! (ADMM-NN gets ⌈G / iterations⌉ steps per iteration, so at most iterations − 1 more) and the
//! same retraining epochs; magnitude pruning, which has no ADMM phase, retrains for as many more
//! epochs as those gradients amount to, its learning-rate drops moved to the same share of the
//! longer run. Each run lives in `OUT/seed<s>/<method>` and resumes like
//! the pipeline, so running the same command again continues an interrupted comparison.

use super::admm::IterationMetrics;
use super::pipeline::{self, Method, PipelineConfig};
use super::report;
use super::structure::Structure;
use crate::checkpoint;
use crate::data::Dataset;
use crate::{Error, Result};
use std::fmt::Write as _;
use std::path::PathBuf;

/// What one pipeline of the comparison runs: a method under a structure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Variant {
    pub method: Method,
    pub structure: Structure,
}

impl Variant {
    /// Every method under each structure (structures outer).
    pub fn all(methods: &[Method], structures: &[Structure]) -> Vec<Variant> {
        (structures.iter())
            .flat_map(|&structure| methods.iter().map(move |&method| Variant { method, structure }))
            .collect()
    }

    /// Its name in tables and plots: the method's, with the structure unless `weight`.
    pub fn label(&self) -> String {
        match self.structure {
            Structure::Weight => self.method.name().to_string(),
            s => format!("{} {s}", self.method.name()),
        }
    }

    /// Its run directory under `seed<s>/`: the method's name, with the structure unless `weight`.
    pub fn dir_name(&self) -> String {
        match self.structure {
            Structure::Weight => self.method.name().to_string(),
            Structure::Filter => format!("{}-filter", self.method.name()),
            Structure::TwoFour => format!("{}-2of4", self.method.name()),
        }
    }

    fn rows<'a>(&self, rows: &'a [CompareRow]) -> Vec<&'a CompareRow> {
        rows.iter().filter(|r| r.method == self.method.name() && r.structure == self.structure.name()).collect()
    }
}

/// One run of the comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareRow {
    pub method: String,
    pub structure: String,
    pub seed: u64,
    /// Minibatch gradients of the ADMM phase (0 for magnitude pruning).
    pub admm_gradients: usize,
    pub retrain_epochs: usize,
    pub dense: f64,
    /// The dense start fine-tuned on the same data (`--baseline-epochs`; NaN without it).
    pub baseline: f64,
    pub after_prune: f64,
    pub retrain_final: f64,
    pub retrain_best: f64,
    /// Wall time of the method's phases (ADMM phase, hard pruning, retraining), seconds: the dense
    /// start and the baseline, the same for every method (and trained by the first run only),
    /// are left out.
    pub seconds: f64,
    /// Test images each evaluation used (`--eval-limit`, else the whole test set).
    pub eval_images: usize,
    /// Minibatch gradients of masked retraining.
    pub retrain_gradients: usize,
    /// The ADMM phase's last relative residual ‖W − Z‖² / ‖W‖², the paper's measure (its Z
    /// differs by method; NaN for magnitude pruning).
    pub final_rel_res2: f64,
    /// The ADMM phase's last prune gap ‖X − Π(X)‖² / ‖X‖² (the share of its output hard pruning
    /// removes; the same distance for every method; NaN for magnitude pruning).
    pub final_prune_gap: f64,
    /// Minibatch gradients the ADMM phase took to reach its structure's common prune gap (the
    /// largest final one among the ADMM runs of that structure), so every ADMM run reaches it;
    /// `None` for magnitude pruning. Filled in once every run is done.
    pub gradients_to_common: Option<usize>,
    /// (gradients, prune gap) after each outer iteration of the ADMM phase (empty for magnitude
    /// pruning).
    pub gaps: Vec<(usize, f64)>,
}

/// One run's ADMM metrics (empty for magnitude pruning).
fn run_metrics(dir: &std::path::Path, seed: u64, v: Variant) -> Vec<IterationMetrics> {
    if !v.method.has_admm_phase() {
        return Vec::new();
    }
    report::read_metrics(&dir.join(format!("seed{seed}")).join(v.dir_name()).join("admm_metrics.csv"))
        .unwrap_or_default()
}

/// Per structure (in the order of `rows`), the common prune gap: the largest final one among its
/// ADMM runs; and each ADMM run's gradients to reach its structure's: the paper's convergence
/// claim measured the same way for every method (structures apart: their projections differ).
fn gradients_to_common(rows: &mut [CompareRow]) -> Vec<(String, f64)> {
    let mut targets: Vec<(String, f64)> = Vec::new();
    for r in rows.iter().filter(|r| r.final_prune_gap.is_finite()) {
        match targets.iter_mut().find(|(s, _)| *s == r.structure) {
            Some((_, t)) => *t = t.max(r.final_prune_gap),
            None => targets.push((r.structure.clone(), r.final_prune_gap)),
        }
    }
    for r in rows.iter_mut() {
        let target = targets.iter().find(|(s, _)| *s == r.structure).map_or(f64::NAN, |&(_, t)| t);
        r.gradients_to_common = r.gaps.iter().find(|&&(_, v)| v <= target).map(|&(g, _)| g);
    }
    targets
}

/// A method without an ADMM phase retrains for that phase's gradients as extra epochs (so that
/// every method spends the same budget): refused before any run where they come to more
/// epochs than training takes (a small `--subset` under a large ADMM budget).
fn check_magnitude_epochs(
    cfg: &PipelineConfig,
    variants: &[Variant],
    admm_gradients: usize,
    images: usize,
) -> Result<()> {
    if variants.iter().all(|v| v.method.has_admm_phase()) {
        return Ok(());
    }
    let extra = admm_gradients.saturating_mul(cfg.sas.batch).div_ceil(images);
    let epochs = extra.saturating_add(cfg.retrain.epochs);
    if epochs > 1_000_000 {
        return Err(Error::Usage(format!(
            "magnitude pruning would retrain for {epochs} epochs ({extra} of them the ADMM phase's {admm_gradients} \
             gradients of {} images, over {images} training images): more than 1,000,000; use a larger --subset or a \
             smaller ADMM budget (--outer, --inner)",
            cfg.sas.batch
        )));
    }
    Ok(())
}

/// Runs `variants` × `seeds` pipelines (seeds `cfg.seed`, `cfg.seed + 1`, …) into `cfg.out`.
pub fn compare(
    cfg: &PipelineConfig,
    variants: &[Variant],
    seeds: usize,
    train_set: &dyn Dataset,
    test_set: &dyn Dataset,
) -> Result<Vec<CompareRow>> {
    if variants.is_empty() || seeds == 0 {
        return Err(Error::invalid("compare needs at least one method (--methods) and one seed (--seeds)"));
    }
    if cfg.seed.checked_add(seeds as u64 - 1).is_none() {
        return Err(Error::Usage(format!("--seed {} with --seeds {seeds} runs past the largest seed", cfg.seed)));
    }
    check_plans(cfg, variants, train_set)?;
    let images = cfg.subset.map_or(train_set.len(), |s| s.min(train_set.len())).max(1);
    let admm_gradients = cfg.sas.total_gradients();
    check_magnitude_epochs(cfg, variants, admm_gradients, images)?;
    let eval_batch = check_memory(cfg, variants, train_set, test_set)?;
    let cfg =
        &PipelineConfig { retrain: crate::train::TrainConfig { eval_batch, ..cfg.retrain.clone() }, ..cfg.clone() };
    let dir = cfg.out.clone();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut weights = cfg.weights.clone();
    let mut rows = Vec::new();
    for s in 0..seeds as u64 {
        for &v in variants {
            let (method, structure) = (v.method, v.structure);
            let out = dir.join(format!("seed{s}")).join(v.dir_name());
            let mut run =
                PipelineConfig { method, structure, seed: cfg.seed + s, out, weights: weights.clone(), ..cfg.clone() };
            run.retrain.seed = run.seed;
            run.dense.seed = run.seed;
            // a run of the comparison cannot be resumed alone with another --lr (its flags are the
            // comparison's), so the way on is a new comparison
            run.retrain.divergence_hint = format!(
                "run the comparison again with a lower learning rate (e.g. --lr {}) into a new --out; the runs \
                 finished so far stay in {}",
                crate::train::lr_text(cfg.retrain.lr / 10.0),
                dir.display()
            );
            if !method.has_admm_phase() {
                // the ADMM phase's gradients, as retraining epochs (its learning-rate drops
                // stretched with them)
                run.extra_retrain_epochs = (admm_gradients * cfg.sas.batch).div_ceil(images);
            }
            outln!("\n=== compare: {} seed {} ({}) ===", v.label(), run.seed, run.out.display());
            let r = pipeline::run(&run, train_set, test_set)?;
            // every later run starts from the dense model the first one trained
            weights.get_or_insert_with(|| run.out.join("dense.safetensors"));
            let top = |v: Option<f64>| v.unwrap_or(f64::NAN);
            let metrics = run_metrics(&dir, s, v);
            let gaps: Vec<(usize, f64)> = metrics.iter().map(|m| (m.gradients, m.prune_gap)).collect();
            rows.push(CompareRow {
                method: method.name().into(),
                structure: structure.name().into(),
                seed: run.seed,
                admm_gradients: method.admm_budget(&run.sas, &run.admm).0,
                retrain_epochs: run.retraining().epochs,
                retrain_gradients: run.retraining().epochs * images.div_ceil(run.retrain.batch),
                dense: top(r.top1.dense),
                baseline: top(r.top1.baseline),
                after_prune: top(r.top1.after_prune),
                retrain_final: top(r.top1.retrain_final),
                retrain_best: top(r.top1.retrain_best),
                seconds: (r.seconds.iter())
                    .filter(|(phase, _)| !["total", "dense", "baseline"].iter().any(|p| phase.starts_with(p)))
                    .map(|(_, x)| x)
                    .sum(),
                eval_images: r.eval_images,
                final_rel_res2: metrics.last().map_or(f64::NAN, |m| m.rel_res2),
                final_prune_gap: gaps.last().map_or(f64::NAN, |&(_, v)| v),
                gradients_to_common: None,
                gaps,
            });
        }
    }
    let targets = gradients_to_common(&mut rows);
    write_outputs(&dir, cfg, variants, &rows, &targets, images)?;
    Ok(rows)
}

/// Every structure's pruning plan, made before any run: structures run one after another, so a
/// target one of them cannot reach (a rate filter pruning cannot give, a layer-rates file under
/// 2:4) would otherwise end the comparison hours in, after the others' runs.
fn check_plans(cfg: &PipelineConfig, variants: &[Variant], train_set: &dyn Dataset) -> Result<()> {
    let model = crate::models::Model::build(&cfg.model, train_set.classes(), cfg.seed)?;
    let mut structures: Vec<Structure> = variants.iter().map(|v| v.structure).collect();
    structures.dedup();
    for structure in structures {
        pipeline::make_plan(&model, &PipelineConfig { structure, ..cfg.clone() }).map_err(Error::as_usage)?;
    }
    Ok(())
}

/// Every variant's phases tried on the device before any run starts (`pipeline::check_memory`);
/// returns the evaluation batch that fits them all.
fn check_memory(
    cfg: &PipelineConfig,
    variants: &[Variant],
    train_set: &dyn Dataset,
    test_set: &dyn Dataset,
) -> Result<usize> {
    if !crate::gpu::get()?.memory_can_be_checked() {
        return Ok(cfg.retrain.eval_batch); // a software driver: no model to build for nothing
    }
    let mut model = crate::models::Model::build(&cfg.model, train_set.classes(), cfg.seed)?;
    model.set_precision(cfg.precision)?;
    if let Some(w) = &cfg.weights {
        checkpoint::load_model(&mut model, w)?;
    }
    let mut eval_batch = cfg.retrain.eval_batch;
    for &v in variants {
        let out = cfg.out.join("seed0").join(v.dir_name());
        let run = PipelineConfig { method: v.method, structure: v.structure, out, ..cfg.clone() };
        eval_batch = eval_batch.min(pipeline::check_memory(&mut model, &run, train_set, test_set)?.retrain.eval_batch);
    }
    Ok(eval_batch)
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

fn write_outputs(
    dir: &std::path::Path,
    cfg: &PipelineConfig,
    variants: &[Variant],
    rows: &[CompareRow],
    targets: &[(String, f64)],
    images: usize,
) -> Result<()> {
    checkpoint::write_atomic(&dir.join("compare.csv"), compare_csv(rows).as_bytes())?;
    let md = compare_md(cfg, variants, rows, targets);
    checkpoint::write_atomic(&dir.join("compare.md"), md.as_bytes())?;
    write_plots(dir, variants, rows, cfg.sas.batch as f64 / images.max(1) as f64)?;
    outln!(
        "\n{md}\nwrote compare.md, compare.csv, compare.svg (prune gaps), compare_accuracy.svg and convergence.svg in {}",
        dir.display()
    );
    Ok(())
}

/// The gradients a run took to reach its structure's common prune gap ("" when it did not).
fn to_common_text(r: &CompareRow) -> String {
    r.gradients_to_common.map_or(String::new(), |g| g.to_string())
}

/// compare.csv: every run, one line each.
fn compare_csv(rows: &[CompareRow]) -> String {
    let mut csv = String::from(
        "method,seed,admm_gradients,retrain_epochs,retrain_gradients,dense_top1,baseline_top1,after_prune_top1,\
         retrain_final_top1,retrain_best_top1,seconds,final_rel_res2,final_prune_gap,gradients_to_common_prune_gap,\
         structure\n",
    );
    for r in rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{:.2},{:.2},{:.2},{:.2},{:.2},{:.1},{:.6e},{:.6e},{},{}",
            r.method,
            r.seed,
            r.admm_gradients,
            r.retrain_epochs,
            r.retrain_gradients,
            r.dense,
            r.baseline,
            r.after_prune,
            r.retrain_final,
            r.retrain_best,
            r.seconds,
            r.final_rel_res2,
            r.final_prune_gap,
            to_common_text(r),
            r.structure
        );
    }
    csv
}

/// A column's cell: mean ± sample standard deviation over the seeds, the value alone for one
/// seed (a spread of one run is not a spread), "-" where a value is missing.
pub fn over_seeds(values: &[f64]) -> String {
    let (mean, std) = mean_std(values);
    match (mean.is_finite(), values.len()) {
        (false, _) | (_, 0) => "-".into(),
        (true, 1) => format!("{mean:.2}"),
        (true, _) => format!("{mean:.2} ± {std:.2}"),
    }
}

/// compare.md: per method the mean ± std over seeds, then (when there are ADMM runs: `targets`,
/// each structure's common prune gap) the convergence table.
fn compare_md(cfg: &PipelineConfig, variants: &[Variant], rows: &[CompareRow], targets: &[(String, f64)]) -> String {
    let seeds = variants[0].rows(rows).len();
    let rate =
        cfg.layer_rates.as_ref().map_or(cfg.rate.to_string(), |p| format!("per-layer rates from {}", p.display()));
    let first = rows.first();
    let baseline = over_seeds(&variants[0].rows(rows).iter().map(|r| r.baseline).collect::<Vec<_>>());
    let start = match baseline.as_str() {
        "-" => String::new(),
        b => format!(
            "; fine-tuned on this data (--baseline-epochs {}), what pruning starts from: {b}%",
            cfg.baseline_epochs
        ),
    };
    let mut md = format!(
        "# {} at {rate}: {} seed{} per method\n\nTop-1 (%) on {} test images{}; the dense start scores {:.2}%{start}.\n\n\
         Budget: each ADMM method spends the ADMM-phase gradients below (minibatches of {} images; ADMM-NN rounds \
         its steps per iteration up, so up to iterations − 1 more), then the same retraining epochs; magnitude \
         pruning, without an ADMM phase, retrains as many more epochs as those gradients hold images. Wall time \
         counts the method's phases (ADMM, hard pruning, retraining), not the shared dense start and baseline.\n\n\
         | method | ADMM-phase gradients | retraining epochs | after hard prune | after retraining (final) | after \
         retraining (best epoch, chosen on the test set) | wall time per run |\n|---|---|---|---|---|---|---|\n",
        cfg.model,
        seeds,
        if seeds == 1 { "" } else { "s" },
        first.map_or(0, |r| r.eval_images),
        if seeds == 1 { "" } else { " as mean ± standard deviation over seeds" },
        first.map_or(f64::NAN, |r| r.dense),
        cfg.sas.batch,
    );
    for v in variants {
        let of = v.rows(rows);
        let stat = |f: fn(&CompareRow) -> f64| over_seeds(&of.iter().map(|r| f(r)).collect::<Vec<_>>());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} s |",
            v.label(),
            of.first().map_or(0, |r| r.admm_gradients),
            of.first().map_or(0, |r| r.retrain_epochs),
            stat(|r| r.after_prune),
            stat(|r| r.retrain_final),
            stat(|r| r.retrain_best),
            mean_std(&of.iter().map(|r| r.seconds).collect::<Vec<_>>()).0.round()
        );
    }
    if !targets.is_empty() {
        let common: Vec<String> = targets.iter().map(|(s, t)| format!("{t:.3e} ({s})")).collect();
        let _ = write!(
            md,
            "\n## Convergence: gradients to a common prune gap\n\nAfter each outer iteration (admm_metrics.csv), \
             every ADMM run's prune gap ‖X − Π(X)‖² / ‖X‖²: the share of the weights X the phase would hand to \
             hard pruning now (SAS-ADMM: W_avg; ADMM-NN: W) that hard pruning's projection Π removes, the same \
             distance for every method. Target: the largest final gap among the ADMM runs of a structure, which \
             each of them reaches (so the run that ends there takes its whole budget): {}. Gaps are logged once \
             per outer iteration, so each count is rounded up to an iteration's end. The final relative residual \
             ‖W − Z‖² / ‖W‖² is the paper's measure; its Z differs by method (SAS-ADMM: the soft threshold of \
             W − U/β; ADMM-NN: the projection), so it does not compare the two. Plotted in compare.svg.\n\n\
             | method | seed | ADMM-phase gradients | gradients to the common gap | final prune gap | final relative \
             residual | after hard prune |\n|---|---|---|---|---|---|---|\n",
            common.join(", ")
        );
        for r in rows.iter().filter(|r| r.final_prune_gap.is_finite()) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.3e} | {:.3e} | {:.2}% |",
                row_label(r),
                r.seed,
                r.admm_gradients,
                to_common_text(r),
                r.final_prune_gap,
                r.final_rel_res2,
                r.after_prune
            );
        }
    }
    md
}

/// A row's name in tables and plots (see [`Variant::label`]).
fn row_label(r: &CompareRow) -> String {
    match r.structure.as_str() {
        "weight" | "" => r.method.clone(),
        s => format!("{} {s}", r.method),
    }
}

/// compare_accuracy.svg, compare.svg (prune gaps) and convergence.svg. `epochs_per_gradient`: the
/// training set's share one ADMM minibatch holds.
fn write_plots(
    dir: &std::path::Path,
    variants: &[Variant],
    rows: &[CompareRow],
    epochs_per_gradient: f64,
) -> Result<()> {
    // top-1 against the training images spent (in passes over the training set, so the ADMM
    // phase's minibatches and retraining's smaller ones count alike), mean over seeds: the start
    // pruning begins from (the baseline, else the dense start) at 0, after hard pruning (the ADMM
    // phase's images), after retraining (plus retraining's epochs)
    let series: Vec<(String, Vec<(f64, f64)>)> = variants
        .iter()
        .map(|v| {
            let of = v.rows(rows);
            let mean = |f: fn(&CompareRow) -> f64| mean_std(&of.iter().map(|r| f(r)).collect::<Vec<_>>()).0;
            let admm = of.first().map_or(0, |r| r.admm_gradients) as f64 * epochs_per_gradient;
            let total = admm + of.first().map_or(0, |r| r.retrain_epochs) as f64;
            let start = mean(|r| if r.baseline.is_finite() { r.baseline } else { r.dense });
            (v.label(), vec![(0.0, start), (admm, mean(|r| r.after_prune)), (total, mean(|r| r.retrain_final))])
        })
        .collect();
    let svg = report::line_plot_svg(
        "top-1 (%) against training images: the start, after the ADMM phase + hard pruning, after retraining",
        "passes over the training images",
        &series,
    );
    checkpoint::write_atomic(&dir.join("compare_accuracy.svg"), svg.as_bytes())?;
    // the prune gap against gradients, every ADMM run (log10: it spans decades)
    let gaps: Vec<(String, Vec<(f64, f64)>)> = rows
        .iter()
        .filter(|r| r.gaps.iter().any(|(_, v)| v.is_finite()))
        .map(|r| {
            let points = r.gaps.iter().map(|&(g, v)| (g as f64, v.log10())).collect();
            (format!("{} seed {}", row_label(r), r.seed), points)
        })
        .collect();
    let svg = report::line_plot_svg(
        "log10 prune gap ‖X − Π(X)‖² / ‖X‖² against minibatch gradients",
        "minibatch gradients of the ADMM phase",
        &gaps,
    );
    checkpoint::write_atomic(&dir.join("compare.svg"), svg.as_bytes())?;
    // the ADMM phases' objective and residual, first seed
    let curves: Vec<(String, Vec<IterationMetrics>)> = variants
        .iter()
        .filter(|v| v.method.has_admm_phase())
        .filter_map(|v| {
            let path: PathBuf = dir.join("seed0").join(v.dir_name()).join("admm_metrics.csv");
            report::read_metrics(&path).ok().map(|c| (v.label(), c))
        })
        .collect();
    if !curves.is_empty() {
        let series: Vec<(&str, &[IterationMetrics])> = curves.iter().map(|(n, c)| (n.as_str(), c.as_slice())).collect();
        checkpoint::write_atomic(&dir.join("convergence.svg"), report::convergence_svg(&series).as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::over_seeds;

    #[test]
    fn a_cell_over_seeds_shows_a_spread_only_where_there_is_one() {
        assert_eq!(over_seeds(&[86.0, 87.0]), "86.50 ± 0.71", "sample standard deviation (n − 1)");
        assert_eq!(over_seeds(&[86.0]), "86.00", "one seed has no spread to show");
        assert_eq!(over_seeds(&[f64::NAN, f64::NAN]), "-");
        assert_eq!(over_seeds(&[]), "-");
    }
}
