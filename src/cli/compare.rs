//! `sasprune compare`: every method on one budget, or the paper's table.

use super::args::{CompareArgs, PruneArgs};
use super::common::{command_text, open_data, recorded_args, saved_flags, say_adapter, start_run_record};
use super::pipeline::{pipeline_config, target_rate};
use sasprune::prune::{self, pipeline::PipelineConfig};
use sasprune::run_dir::{DataRecord, RunLock, RunRecord};
use sasprune::{gpu, Error, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `sasprune compare`: every method on one model and rate, or with `--paper-table` on each of
/// the paper's rows.
pub(crate) fn run_compare(c: &CompareArgs, args: &[OsString], options: &gpu::GpuOptions) -> Result<()> {
    let methods = c.methods.clone();
    if c.seeds == 0 || c.seeds > 100 {
        return Err(Error::Usage(format!("--seeds must be in 1..=100, got {}", c.seeds)));
    }
    refuse_pipeline_only_flags(c, args)?;
    let out = c.prune.out.clone().unwrap_or_else(|| default_out(c));
    if !RunRecord::exists(&out) {
        // (a comparison already started goes on as it began)
        refuse_what_a_new_comparison_would_not_measure(c)?;
    }
    if !c.paper_table {
        let a = &c.prune;
        let cfg = PipelineConfig { out, ..pipeline_config(a).map_err(Error::as_usage)? };
        let (train_set, test_set) = open_data(&cfg.model, a.data.data.as_deref())?;
        gpu::init(options)?;
        say_adapter()?;
        let _lock = RunLock::acquire(&cfg.out)?;
        let structures = if c.structures.is_empty() { vec![cfg.structure] } else { c.structures.clone() };
        // every structure's target checked before any run (2:4 sets its own, so it ignores --rate
        // here, which the others need)
        for &structure in structures.iter().filter(|&&s| s != prune::structure::Structure::TwoFour) {
            target_rate(&PruneArgs { structure, ..a.clone() })
                .map_err(|e| Error::Usage(format!("--structures {structure}: {e}")))?;
        }
        let data = DataRecord::of(train_set.as_ref(), test_set.as_ref());
        let fresh = continue_or_record(&cfg.out, c, args, data)?;
        let variants = prune::compare::Variant::all(&methods, &structures);
        let result = prune::compare::compare(&cfg, &variants, c.seeds, train_set.as_ref(), test_set.as_ref());
        return forget_if_nothing_started(&cfg.out, fresh, result).map(drop);
    }
    if !c.structures.is_empty() || c.prune.structure != prune::structure::Structure::Weight {
        return Err(Error::Usage(
            "--paper-table is the paper's unstructured pruning: drop --structure and --structures".into(),
        ));
    }
    let given = [("--model", c.prune.model.is_some()), ("--rate", c.prune.rate.is_some())]
        .into_iter()
        .chain([("--layer-rates", c.prune.layer_rates.is_some()), ("--weights", c.prune.weights.is_some())]);
    if let Some((flag, _)) = given.into_iter().find(|(_, set)| *set) {
        return Err(Error::Usage(format!(
            "--paper-table sets each row's model, rate and dense start itself: drop {flag} (choose rows with --rows, \
             dense starts with --weights-dir)"
        )));
    }
    let rows = c
        .rows
        .split(',')
        .map(|m| {
            prune::paper_table::paper_row(m.trim()).ok_or_else(|| {
                Error::Usage(format!(
                    "--rows: the paper has no CIFAR row for '{}': choose resnet32, resnet56",
                    m.trim()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // every row's flags checked (and its weights found) before any work
    let mut configs = Vec::new();
    for row in &rows {
        let weights = c.weights_dir.as_ref().map(|d| d.join(format!("{}.safetensors", row.model)));
        if let Some(w) = weights.as_ref().filter(|w| !w.is_file()) {
            return Err(Error::Usage(format!(
                "--weights-dir: {} is not there; the paper table needs <model>.safetensors for each row",
                w.display()
            )));
        }
        let a = PruneArgs { model: Some(row.model.into()), rate: Some(row.rate.into()), weights, ..c.prune.clone() };
        configs.push(PipelineConfig { out: out.join(row.model), ..pipeline_config(&a).map_err(Error::as_usage)? });
    }
    let (train_set, test_set) = open_data("resnet32", c.prune.data.data.as_deref())?;
    gpu::init(options)?;
    say_adapter()?;
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let _lock = RunLock::acquire(&out)?;
    let fresh = continue_or_record(&out, c, args, DataRecord::of(train_set.as_ref(), test_set.as_ref()))?;
    let mut results = Vec::new();
    for (row, cfg) in rows.iter().zip(&configs) {
        let result = prune::paper_table::run_row(*row, cfg, &methods, c.seeds, train_set.as_ref(), test_set.as_ref());
        results.push(forget_if_nothing_started(&out, fresh, result)?);
    }
    prune::paper_table::write(&out, &results, &command_text(args), &gpu::get()?.adapter.to_string()).map(drop)
}

/// `--method` and `--resume` are the pipeline's: a comparison runs every method of `--methods`
/// and continues when run again with its flags, so both are refused rather than ignored.
fn refuse_pipeline_only_flags(c: &CompareArgs, args: &[OsString]) -> Result<()> {
    let given = recorded_args(args, Some("compare"))?;
    if given.iter().any(|t| t == "--method" || t.starts_with("--method=")) {
        return Err(Error::Usage(
            "compare runs every method of --methods (default sas-admm,admm,magnitude): give --methods instead of \
             --method"
                .into(),
        ));
    }
    if let Some(dir) = &c.prune.resume {
        return Err(Error::Usage(format!(
            "compare continues a comparison when run again with the same flags and --out, so it takes no --resume: \
             run `sasprune compare ... --out {}` with the flags it started with (its command.json holds them)",
            dir.display()
        )));
    }
    Ok(())
}

/// `--out`'s default: `runs/<model>-compare`, or `runs/paper-table`.
fn default_out(c: &CompareArgs) -> PathBuf {
    match (c.paper_table, &c.prune.model) {
        (false, Some(model)) => PathBuf::from(format!("runs/{model}-compare")),
        (false, None) => PathBuf::from("runs/compare"),
        (true, _) => PathBuf::from("runs/paper-table"),
    }
}

/// What a new comparison would not measure is refused rather than run: a method or structure
/// named twice (the same run directory twice, its row counted as two seeds), several seeds under
/// `--deterministic` (every seed then trains on the same images in the same order from the same
/// dense start: a ResNet's runs are identical, their spread ± 0.00), and `--admm-steps`, which
/// would give ADMM-NN another gradient budget than the comparison's.
fn refuse_what_a_new_comparison_would_not_measure(c: &CompareArgs) -> Result<()> {
    if let Some(steps) = c.prune.admm_steps {
        return Err(Error::Usage(format!(
            "compare gives every ADMM method the same minibatch gradients, so ADMM-NN takes ⌈G / --admm-iterations⌉ \
             steps per iteration (G: SAS-ADMM's budget); --admm-steps {steps} would set another budget: choose \
             --admm-iterations instead (or run the pipeline with --method admm --admm-steps {steps})"
        )));
    }
    let method_names: Vec<&str> = c.methods.iter().map(|m| m.name()).collect();
    let structure_names: Vec<&str> = c.structures.iter().map(|s| s.name()).collect();
    for (flag, names) in [("--methods", method_names), ("--structures", structure_names)] {
        if let Some(twice) = names.iter().enumerate().find(|&(i, n)| names[..i].contains(n)).map(|(_, n)| n) {
            return Err(Error::Usage(format!("{flag} names {twice} twice: give each once")));
        }
    }
    if c.prune.deterministic && c.seeds > 1 {
        return Err(Error::Usage(format!(
            "--deterministic trains every seed on the same images in the same order from the same dense start (no \
             shuffling or augmentation, ADMM minibatches in file order; only AlexNet's dropout masks would differ), \
             so --seeds {} would not measure a spread: give --seeds 1, or leave --deterministic out",
            c.seeds
        )));
    }
    Ok(())
}

/// A comparison continues when run again into the same `--out`: each of its runs picks up the
/// phases it saved. That is right only with the flags and data it started with, so the first
/// run records both (`command.json`) and a later one with other flags (or other data) is
/// refused; `--data` may name a moved copy, and `--time-limit` may differ. Returns whether the
/// record is new.
fn continue_or_record(out: &Path, c: &CompareArgs, args: &[OsString], data: DataRecord) -> Result<bool> {
    let data_dir = c.prune.data.data.clone();
    let mut flags = c.clone();
    flags.prune.data.data = None;
    flags.prune.out = None;
    if !RunRecord::exists(out) {
        start_run_record(out, "compare", args, data, &flags)?;
        return Ok(true);
    }
    let record = RunRecord::load(out, "compare")?;
    // compared as parsed flags (f32 values read back from JSON text as f32), not as JSON values
    let as_value =
        |f: &CompareArgs| serde_json::to_value(f).map_err(|e| Error::invalid(format!("compare's flags: {e}")));
    let saved = saved_flags::<CompareArgs>(out, &record)?;
    if saved.as_ref().map(as_value).transpose()? != Some(as_value(&flags)?) {
        return Err(Error::invalid(format!(
            "{} holds a comparison started with other flags (`sasprune compare {}`); its runs would continue \
             what those began: run exactly that command again to continue it (--data may name a moved copy), or \
             choose another --out",
            out.display(),
            record.args.join(" ")
        )));
    }
    record.check_data(out, &data, data_dir.as_deref())?;
    Ok(false)
}

/// A comparison refused before any of its runs started (one that does not fit the device, a
/// target a plan cannot reach) leaves no record behind, so that it can be started again with
/// other flags into the same `--out`.
fn forget_if_nothing_started<T>(out: &Path, fresh: bool, result: Result<T>) -> Result<T> {
    let started = || std::fs::read_dir(out).is_ok_and(|d| d.flatten().any(|e| e.path().is_dir()));
    if result.is_err() && fresh && !started() {
        let _ = std::fs::remove_file(out.join(sasprune::run_dir::RECORD_FILE));
    }
    result
}
