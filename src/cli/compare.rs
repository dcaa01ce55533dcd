//! `sasprune compare`: every method on one budget, or the paper's table.

use super::args::{CompareArgs, PruneArgs};
use super::common::{command_text, open_data, say_adapter};
use super::pipeline::{pipeline_config, target_rate};
use sasprune::prune::{self, pipeline::PipelineConfig};
use sasprune::run_dir::RunLock;
use sasprune::{gpu, Error, Result};
use std::ffi::OsString;
use std::path::PathBuf;

/// `sasprune compare`: every method on one model and rate, or with `--paper-table` on each of
/// the paper's rows.
pub(crate) fn run_compare(c: &CompareArgs, args: &[OsString], options: &gpu::GpuOptions) -> Result<()> {
    let methods = c.methods.clone();
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
        let structures = if c.structures.is_empty() { vec![cfg.structure] } else { c.structures.clone() };
        // every structure's target checked before any run (2:4 sets its own, so it ignores --rate
        // here, which the others need)
        for &structure in structures.iter().filter(|&&s| s != prune::structure::Structure::TwoFour) {
            target_rate(&PruneArgs { structure, ..a.clone() })
                .map_err(|e| Error::invalid(format!("--structures {structure}: {e}")))?;
        }
        let variants = prune::compare::Variant::all(&methods, &structures);
        return prune::compare::compare(&cfg, &variants, c.seeds, train_set.as_ref(), test_set.as_ref()).map(drop);
    }
    if !c.structures.is_empty() || c.prune.structure != prune::structure::Structure::Weight {
        return Err(Error::invalid(
            "--paper-table is the paper's unstructured pruning: drop --structure and --structures",
        ));
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
    prune::paper_table::write(&out, &results, &command_text(args), &gpu::get()?.adapter.to_string()).map(drop)
}
