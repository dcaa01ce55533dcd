//! What a pruning run reports: the per-layer table, `report.json`, and an SVG plot of the
//! ADMM phase's objective and residual against minibatch gradients.

use super::admm::IterationMetrics;
use crate::{Error, Result};
use std::fmt::Write as _;
use std::path::Path;

/// One row of the per-layer table.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRow {
    pub name: String,
    pub shape: Vec<usize>,
    pub weights: usize,
    pub kept: usize,
}

impl LayerRow {
    pub fn sparsity(&self) -> f64 {
        100.0 * (1.0 - self.kept as f64 / self.weights.max(1) as f64)
    }
}

/// An accuracy (%) at each phase boundary; `None` where a phase did not run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseScores {
    pub dense: Option<f64>,
    /// The dense start fine-tuned on the same data (`--baseline-epochs`): what pruning's cost is
    /// measured against.
    pub baseline: Option<f64>,
    pub after_admm: Option<f64>,
    pub after_prune: Option<f64>,
    pub retrain_best: Option<f64>,
    pub retrain_final: Option<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub model: String,
    pub method: String,
    pub adapter: String,
    pub rate_target: String,
    pub rate_achieved: f64,
    pub conv_percentage: Option<f64>,
    /// What was removed together (`--structure`).
    pub structure: String,
    /// How activations were stored (`--precision`).
    pub precision: String,
    /// Mixed precision: the loss scale at the end and the steps the last phase (retraining)
    /// skipped (each phase starts its scale afresh).
    pub loss_scale: Option<crate::ops::loss_scale::LossScaleStatus>,
    /// Multiply-adds per image of the conv and fc layers: (dense, of the kept weights), when the
    /// model gives its layers' output sizes.
    pub macs: Option<(u64, u64)>,
    /// Under `filter`: the channel sets' widths in `compact.safetensors`.
    pub compact_widths: Option<Vec<usize>>,
    pub layers: Vec<LayerRow>,
    pub top1: PhaseScores,
    /// Top-5 at each phase boundary (`retrain_best` stays `None`: "best" is by top-1).
    pub top5: PhaseScores,
    /// (phase, seconds)
    pub seconds: Vec<(String, f64)>,
    /// Test images behind each top-1 figure.
    pub eval_images: usize,
    pub schedule: String,
    /// Which adapter and kernel-plan kind ran each phase (`adapters.json`), by phase.
    pub phase_adapters: std::collections::BTreeMap<String, Vec<String>>,
}

impl Report {
    pub fn total(&self) -> usize {
        self.layers.iter().map(|l| l.weights).sum()
    }
    pub fn kept(&self) -> usize {
        self.layers.iter().map(|l| l.kept).sum()
    }

    /// The per-layer table and the summary, as printed: the layers, what the pruned network is
    /// (rate, precision, structure, compact model), how it scores, and the time.
    pub fn table(&self) -> String {
        let mut s = String::new();
        self.layer_rows(&mut s);
        self.network_lines(&mut s);
        self.score_lines(&mut s);
        self.time_lines(&mut s);
        s
    }

    /// One row per pruned layer and the total.
    fn layer_rows(&self, s: &mut String) {
        let _ = writeln!(s, "{:<24} {:>16} {:>10} {:>10} {:>9}", "layer", "shape", "weights", "kept", "sparsity");
        for l in &self.layers {
            let shape = l.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
            let _ = writeln!(s, "{:<24} {:>16} {:>10} {:>10} {:>8.2}%", l.name, shape, l.weights, l.kept, l.sparsity());
        }
        let _ = writeln!(
            s,
            "{:<24} {:>16} {:>10} {:>10} {:>8.2}%",
            "total",
            "",
            self.total(),
            self.kept(),
            100.0 * (1.0 - self.kept() as f64 / self.total().max(1) as f64)
        );
    }

    /// The compression against its target, the precision, the structure's multiply-adds and the
    /// compact model.
    fn network_lines(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "compression {:.2}x (target {}) | method {} | model {} | {}",
            self.rate_achieved, self.rate_target, self.method, self.model, self.adapter
        );
        if let Some(ls) = self.loss_scale {
            let _ = writeln!(
                s,
                "precision {}: f16 activations, f32 weights and arithmetic; loss scale {} at the end, {} steps of \
                 the last phase skipped for overflow",
                self.precision, ls.scale, ls.skipped
            );
        }
        if let Some((dense, kept)) = self.macs {
            let _ = writeln!(
                s,
                "structure {} | multiply-adds per image: dense {:.2} M, kept {:.2} M ({:.2}x fewer{})",
                self.structure,
                dense as f64 / 1e6,
                kept as f64 / 1e6,
                dense as f64 / kept.max(1) as f64,
                if self.structure == "filter" {
                    ", all of them saved by the compact model"
                } else {
                    " with sparse kernels"
                }
            );
        }
        if let Some(w) = &self.compact_widths {
            let widths: Vec<String> = w.iter().map(|x| x.to_string()).collect();
            let _ = writeln!(
                s,
                "compact model: compact.safetensors, channel-set widths {} (its speed beside the dense model's: \
                 sasprune bench --compact <run>/compact.safetensors --filter {})",
                widths.join(","),
                self.model
            );
        }
    }

    /// Top-1 at each stage (and against the fine-tuned baseline), top-5 where measured.
    fn score_lines(&self, s: &mut String) {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}%"));
        let t = &self.top1;
        let _ = writeln!(
            s,
            "top-1 ({} test images): dense {} | after ADMM {} | after hard prune {} | retrained best {} final {}",
            self.eval_images,
            f(t.dense),
            f(t.after_admm),
            f(t.after_prune),
            f(t.retrain_best),
            f(t.retrain_final)
        );
        if let (Some(b), Some(fin), Some(best)) = (t.baseline, t.retrain_final, t.retrain_best) {
            let _ = writeln!(
                s,
                "baseline (dense fine-tuned on this data) {b:.2}%: pruned final {:+.2} points, best {:+.2}",
                fin - b,
                best - b
            );
        }
        let t = &self.top5;
        if [t.dense, t.after_admm, t.after_prune, t.retrain_final].iter().any(Option::is_some) {
            let _ = writeln!(
                s,
                "top-5: dense {} | after ADMM {} | after hard prune {} | retrained final {}",
                f(t.dense),
                f(t.after_admm),
                f(t.after_prune),
                f(t.retrain_final)
            );
        }
    }

    /// The time of each phase, and a note when the run moved between adapters or plans.
    fn time_lines(&self, s: &mut String) {
        let times: Vec<String> = self.seconds.iter().map(|(p, x)| format!("{p} {x:.1} s")).collect();
        let _ = writeln!(s, "time: {}", times.join(" | "));
        let mixed = crate::run_dir::PhaseAdapters(self.phase_adapters.clone()).mixed();
        if !mixed.is_empty() {
            let _ = writeln!(
                s,
                "note: the run moved between adapters or kernel plans ({}): its numbers are valid, but rerunning it on \
                 one adapter gives different f32 roundings",
                mixed.join("; ")
            );
        }
    }

    /// `report.json`: everything above, for scripts and tests (written by serde_json, so any
    /// name or adapter text is escaped correctly).
    pub fn json(&self) -> String {
        let layers: Vec<serde_json::Value> = (self.layers.iter())
            .map(|l| {
                serde_json::json!({
                    "name": l.name, "shape": l.shape, "weights": l.weights, "kept": l.kept, "sparsity": l.sparsity(),
                })
            })
            .collect();
        let phases = |t: &PhaseScores| {
            serde_json::json!({
                "dense": t.dense,
                "baseline": t.baseline,
                "after_admm": t.after_admm,
                "after_prune": t.after_prune,
                "retrain_best": t.retrain_best,
                "retrain_final": t.retrain_final,
            })
        };
        let seconds: serde_json::Map<String, serde_json::Value> =
            self.seconds.iter().map(|(phase, x)| (phase.clone(), serde_json::json!(x))).collect();
        let doc = serde_json::json!({
            "model": self.model,
            "method": self.method,
            "adapter": self.adapter,
            "schedule": self.schedule,
            "rate_target": self.rate_target,
            "rate_achieved": self.rate_achieved,
            "conv_percentage": self.conv_percentage,
            "structure": self.structure,
            "precision": self.precision,
            "loss_scale": self.loss_scale.map(|l| l.scale),
            "loss_scale_skipped_steps": self.loss_scale.map(|l| l.skipped),
            "macs_dense": self.macs.map(|m| m.0),
            "macs_kept": self.macs.map(|m| m.1),
            "compact_widths": self.compact_widths,
            "weights": self.total(),
            "kept": self.kept(),
            "eval_images": self.eval_images,
            "top1": phases(&self.top1),
            "top5": phases(&self.top5),
            "seconds": seconds,
            "phase_adapters": self.phase_adapters,
            "layers": layers,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
    }
}

/// Reads the per-iteration metrics CSV an ADMM phase wrote.
pub fn read_metrics(path: &Path) -> Result<Vec<IterationMetrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text.lines().skip(1).filter_map(IterationMetrics::from_csv).collect())
}

/// An SVG with two panels against minibatch gradients: the objective (linear) and the primal
/// residual ‖W − Z‖² (log scale), one polyline per named series.
pub fn convergence_svg(series: &[(&str, &[IterationMetrics])]) -> String {
    const W: f64 = 440.0;
    const H: f64 = 300.0;
    const M: f64 = 55.0;
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        2.0 * W,
        H + 30.0
    );
    // (title, the plotted value, log scale)
    type Panel = (&'static str, fn(&IterationMetrics) -> f64, bool);
    let panels: [Panel; 2] = [
        ("objective (SAS-ADMM: CE + λ‖W_avg‖₁; ADMM-NN: CE)", |m| m.objective, false),
        ("residual ‖W − Z‖² (log)", |m| m.res2, true),
    ];
    let max_g = series.iter().flat_map(|(_, s)| s.iter().map(|m| m.gradients)).max().unwrap_or(1).max(1) as f64;
    for (pi, (title, value, log)) in panels.iter().enumerate() {
        let x0 = pi as f64 * W;
        let tf = |v: f64| if *log { v.max(1e-30).log10() } else { v };
        let vals: Vec<f64> =
            series.iter().flat_map(|(_, s)| s.iter().map(|m| tf(value(m)))).filter(|v| v.is_finite()).collect();
        let (lo, hi) = vals.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (lo.min(0.0), lo.max(0.0) + 1.0) };
        let px = |g: f64| x0 + M + (W - 1.5 * M) * g / max_g;
        let py = |v: f64| H - M + 20.0 - (H - 1.5 * M) * (v - lo) / (hi - lo);
        let _ = writeln!(svg, "<text x=\"{}\" y=\"18\" text-anchor=\"middle\">{title}</text>", x0 + W / 2.0);
        let _ = writeln!(
            svg,
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"black\"/><line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{3}\" stroke=\"black\"/>",
            px(0.0),
            py(lo),
            px(max_g),
            py(hi)
        );
        for i in 0..=4 {
            let v = lo + (hi - lo) * i as f64 / 4.0;
            let label = if *log { format!("{:.2e}", 10f64.powf(v)) } else { format!("{v:.3}") };
            let _ =
                writeln!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>", px(0.0) - 4.0, py(v) + 4.0);
            let g = max_g * i as f64 / 4.0;
            let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{g:.0}</text>", px(g), py(lo) + 16.0);
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">minibatch gradients</text>",
            x0 + W / 2.0,
            H + 22.0
        );
        for (si, (name, s)) in series.iter().enumerate() {
            let pts: Vec<String> = s
                .iter()
                .filter(|m| tf(value(m)).is_finite())
                .map(|m| format!("{:.1},{:.1}", px(m.gradients as f64), py(tf(value(m)))))
                .collect();
            let color = colors[si % colors.len()];
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
                pts.join(" ")
            );
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>",
                x0 + W - 150.0,
                40.0 + 16.0 * si as f64
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// A single-panel line plot: one polyline with markers per series of (x, y) points, linear axes
/// from 0 (x) and around the data (y), a legend.
pub fn line_plot_svg(title: &str, x_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    const W: f64 = 560.0;
    const H: f64 = 340.0;
    const M: f64 = 60.0;
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
    let points = series.iter().flat_map(|(_, s)| s.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (max_x, lo, hi) = points
        .fold((0.0f64, f64::INFINITY, f64::NEG_INFINITY), |(mx, lo, hi), &(x, y)| (mx.max(x), lo.min(y), hi.max(y)));
    let max_x = if max_x > 0.0 { max_x } else { 1.0 };
    let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (0.0, 100.0) };
    let px = |x: f64| M + (W - 1.5 * M) * x / max_x;
    let py = |y: f64| H - M + 20.0 - (H - 1.5 * M) * (y - lo) / (hi - lo);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\">{title}</text>\n",
        H + 30.0,
        W / 2.0
    );
    let _ = writeln!(
        svg,
        "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"black\"/><line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{3}\" stroke=\"black\"/>",
        px(0.0),
        py(lo),
        px(max_x),
        py(hi)
    );
    for i in 0..=4 {
        let (x, y) = (max_x * i as f64 / 4.0, lo + (hi - lo) * i as f64 / 4.0);
        let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{y:.1}</text>", px(0.0) - 4.0, py(y) + 4.0);
        let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x:.0}</text>", px(x), py(lo) + 16.0);
    }
    let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>", W / 2.0, H + 22.0);
    for (si, (name, s)) in series.iter().enumerate() {
        let color = colors[si % colors.len()];
        let pts: Vec<(f64, f64)> =
            s.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|&(x, y)| (px(x), py(y))).collect();
        let list: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            list.join(" ")
        );
        for (x, y) in &pts {
            let _ = writeln!(svg, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{color}\"/>");
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>",
            W - 1.5 * M,
            40.0 + 16.0 * si as f64
        );
    }
    svg.push_str("</svg>\n");
    svg
}
