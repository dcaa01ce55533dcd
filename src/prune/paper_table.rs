//! `sasprune compare --paper-table`: the paper's CIFAR table as one command. For each of the
//! paper's rows (ResNet-32 at 6.61x, ResNet-56 at 9.93x) it runs `compare` (every method, every
//! seed, the same budget) into `OUT/<model>`, then writes `OUT/paper_table.md` and `.csv`: per
//! row and method the dense start, the same-data dense baseline (`--baseline-epochs`), the pruned
//! model's top-1 after hard pruning and after retraining (mean ± std over seeds), the drop
//! against the baseline, the rate reached, the ADMM phase's gradients (and those to the
//! comparison's common prune gap) and the time per run, beside the paper's claim.

use super::compare::{self, mean_std, over_seeds, CompareRow};
use super::pipeline::{Method, PipelineConfig};
use crate::checkpoint;
use crate::data::Dataset;
use crate::Result;
use std::fmt::Write as _;
use std::path::Path;

/// One row of the paper's CIFAR-10 results.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PaperRow {
    pub model: &'static str,
    /// The `--rate` that gives the paper's rate (the pruned share of every conv layer, fc dense).
    pub rate: &'static str,
    /// What the paper claims for it (its abstract).
    pub claim: &'static str,
}

pub const PAPER_ROWS: [PaperRow; 2] = [
    PaperRow { model: "resnet32", rate: "85%", claim: "6.61x while maintaining accuracy" },
    PaperRow { model: "resnet56", rate: "90%", claim: "9.93x while maintaining accuracy" },
];

/// The paper's row for `model`, if it has one.
pub fn paper_row(model: &str) -> Option<PaperRow> {
    PAPER_ROWS.iter().copied().find(|r| r.model == model)
}

/// One finished row: its comparison's runs and the rate they reached.
pub struct RowResult {
    pub row: PaperRow,
    pub rate_achieved: f64,
    pub runs: Vec<CompareRow>,
}

/// Runs `compare` for one row with `cfg` (its model, rate and run directory already set).
pub fn run_row(
    row: PaperRow,
    cfg: &PipelineConfig,
    methods: &[Method],
    seeds: usize,
    train_set: &dyn Dataset,
    test_set: &dyn Dataset,
) -> Result<RowResult> {
    outln!("\n##### paper table: {} at {} ({}) #####", row.model, row.rate, row.claim);
    // the paper's table is unstructured weight pruning
    let variants = compare::Variant::all(methods, &[super::structure::Structure::Weight]);
    let runs = compare::compare(cfg, &variants, seeds, train_set, test_set)?;
    let report = cfg.out.join("seed0").join(methods[0].name()).join("report.json");
    let text = std::fs::read_to_string(&report).map_err(|e| crate::Error::io(&report, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| crate::Error::invalid(format!("{}: {e}", report.display())))?;
    Ok(RowResult { row, rate_achieved: json["rate_achieved"].as_f64().unwrap_or(f64::NAN), runs })
}

/// `paper_table.md` and `paper_table.csv` in `dir`; returns the markdown.
pub fn write(dir: &Path, results: &[RowResult], command: &str, adapter: &str) -> Result<String> {
    let images = results.iter().flat_map(|r| &r.runs).map(|x| x.eval_images).max().unwrap_or(0);
    let mut md = format!(
        "# The paper's CIFAR-10 table, measured\n\nCommand: `{command}`\n\nAdapter: {adapter}\n\nTop-1 (%) on \
         {images} test images as mean ± standard deviation over seeds (the value alone for one seed). \"Drop\" is the pruned model's final top-1 minus the same-data \
         dense baseline's (the dense start fine-tuned on this data for `--baseline-epochs`; the dense start when none \
         was asked for). Gradients are the ADMM phase's minibatch gradients, and those it took to reach the row's \
         common prune gap (the share of its output hard pruning removes; compare.md); time counts the method's phases (ADMM, hard \
         pruning, retraining).\n\n| model | paper's claim | method | seeds | rate \
         | dense start | baseline | after hard prune | pruned (final) | drop | ADMM gradients | to common gap | \
         time per run |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut csv = String::from(
        "model,claim,method,seed,rate,dense_top1,baseline_top1,after_prune_top1,retrain_final_top1,drop,\
         admm_gradients,gradients_to_common_prune_gap,seconds\n",
    );
    for r in results {
        let methods: Vec<&str> = r.runs.iter().map(|x| x.method.as_str()).fold(Vec::new(), |mut v, m| {
            if !v.contains(&m) {
                v.push(m);
            }
            v
        });
        for method in methods {
            let of: Vec<&CompareRow> = r.runs.iter().filter(|x| x.method == method).collect();
            let reference = |x: &CompareRow| if x.baseline.is_finite() { x.baseline } else { x.dense };
            let col = |f: &dyn Fn(&CompareRow) -> f64| of.iter().map(|x| f(x)).collect::<Vec<f64>>();
            let to_common: Vec<String> =
                of.iter().map(|x| x.gradients_to_common.map_or("-".into(), |g| g.to_string())).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.2}x | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
                r.row.model,
                r.row.claim,
                method,
                of.len(),
                r.rate_achieved,
                over_seeds(&col(&|x| x.dense)),
                over_seeds(&col(&|x| x.baseline)),
                over_seeds(&col(&|x| x.after_prune)),
                over_seeds(&col(&|x| x.retrain_final)),
                over_seeds(&col(&|x| x.retrain_final - reference(x))),
                of.first().map_or(0, |x| x.admm_gradients),
                to_common.join(" / "),
                mean_std(&col(&|x| x.seconds)).0
            );
            for x in &of {
                let _ = writeln!(
                    csv,
                    "{},{},{},{},{:.4},{:.2},{:.2},{:.2},{:.2},{:.2},{},{},{:.1}",
                    r.row.model,
                    r.row.claim,
                    method,
                    x.seed,
                    r.rate_achieved,
                    x.dense,
                    x.baseline,
                    x.after_prune,
                    x.retrain_final,
                    x.retrain_final - reference(x),
                    x.admm_gradients,
                    x.gradients_to_common.map_or(String::new(), |g| g.to_string()),
                    x.seconds
                );
            }
        }
    }
    checkpoint::write_atomic(&dir.join("paper_table.md"), md.as_bytes())?;
    checkpoint::write_atomic(&dir.join("paper_table.csv"), csv.as_bytes())?;
    outln!("\n{md}\nwrote paper_table.md and paper_table.csv in {}", dir.display());
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: &str, seed: u64, baseline: f64, retrain_final: f64) -> CompareRow {
        CompareRow {
            method: method.into(),
            structure: "weight".into(),
            seed,
            admm_gradients: if method == "magnitude" { 0 } else { 268 },
            retrain_epochs: 3,
            dense: 82.56,
            baseline,
            after_prune: 40.0,
            retrain_final,
            retrain_best: retrain_final,
            seconds: 25.0,
            eval_images: 10_000,
            retrain_gradients: 1173,
            final_rel_res2: if method == "magnitude" { f64::NAN } else { 1e-3 },
            final_prune_gap: if method == "magnitude" { f64::NAN } else { 1e-2 },
            gradients_to_common: (method != "magnitude").then_some(200 + seed as usize),
            gaps: Vec::new(),
        }
    }

    #[test]
    fn the_table_puts_each_method_beside_the_papers_claim_with_the_drop_against_the_baseline() {
        let dir = std::env::temp_dir().join(format!("sasprune-paper-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let results = [RowResult {
            row: PAPER_ROWS[0],
            rate_achieved: 6.6149,
            runs: vec![
                run("sas-admm", 0, 88.0, 87.0),
                run("sas-admm", 1, 88.0, 86.0),
                run("magnitude", 0, 88.0, 85.0),
                run("magnitude", 1, 88.0, 84.0),
            ],
        }];
        let md = write(&dir, &results, "sasprune compare --paper-table", "test adapter").unwrap();
        // mean ± sample std over the two seeds; the drop is final minus the same-data baseline
        let sas = md.lines().find(|l| l.starts_with("| resnet32 |") && l.contains("| sas-admm |")).expect(&md);
        assert!(sas.contains("6.61x while maintaining accuracy") && sas.contains("| 6.61x |"), "{sas}");
        assert!(sas.contains("| 86.50 ± 0.71 |") && sas.contains("| -1.50 ± 0.71 |"), "{sas}");
        assert!(sas.contains("| 268 | 200 / 201 |"), "{sas}");
        assert!(md.contains("Top-1 (%) on 10000 test images"), "{md}");
        let mag = md.lines().find(|l| l.contains("| magnitude |")).expect(&md);
        assert!(mag.contains("| -3.50 ± 0.71 |") && mag.contains("| 0 | - / - |"), "{mag}");
        let csv = std::fs::read_to_string(dir.join("paper_table.csv")).unwrap();
        assert_eq!(csv.lines().count(), 5, "{csv}");
        assert!(csv.contains("resnet32,6.61x while maintaining accuracy,sas-admm,1,6.6149,82.56,88.00,40.00,86.00,-2.00,268,201,25.0"), "{csv}");
        assert_eq!(paper_row("resnet56").map(|r| r.rate), Some("90%"));
        assert!(paper_row("resnet20").is_none());
        std::fs::remove_dir_all(dir).ok();
    }
}
