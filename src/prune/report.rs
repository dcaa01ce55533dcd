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
/// residual ‖W − Z‖² (log scale, plotted as log10 with the ticks labelled in the values), one
/// polyline per named series.
pub fn convergence_svg(series: &[(&str, &[IterationMetrics])]) -> String {
    // (title, the plotted value, log scale)
    type Quantity = (&'static str, fn(&IterationMetrics) -> f64, bool);
    let quantities: [Quantity; 2] = [
        ("objective (SAS-ADMM: CE + λ‖W_avg‖₁; ADMM-NN: CE)", |m| m.objective, false),
        ("residual ‖W − Z‖² (log)", |m| m.res2, true),
    ];
    let mut svg = svg_page(2.0 * CONVERGENCE.width, CONVERGENCE.height);
    for (i, &(title, value, log)) in quantities.iter().enumerate() {
        let shown = |m: &IterationMetrics| if log { value(m).max(1e-30).log10() } else { value(m) };
        let lines: Vec<(String, Vec<(f64, f64)>)> = (series.iter())
            .map(|(name, s)| (name.to_string(), s.iter().map(|m| (m.gradients as f64, shown(m))).collect()))
            .collect();
        let tick = |v: f64| if log { format!("{:.2e}", 10f64.powf(v)) } else { format!("{v:.3}") };
        let panel = Panel::around(CONVERGENCE, i as f64 * CONVERGENCE.width, &lines, (0.0, 1.0));
        panel.draw(&mut svg, title, "minibatch gradients", tick, &lines, false);
    }
    svg.push_str("</svg>\n");
    svg
}

/// A single-panel line plot: one polyline with markers per series of (x, y) points, linear axes
/// from 0 (x) and around the data (y), a legend.
pub fn line_plot_svg(title: &str, x_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let mut svg = svg_page(LINE_PLOT.width, LINE_PLOT.height);
    let panel = Panel::around(LINE_PLOT, 0.0, series, (0.0, 100.0));
    panel.draw(&mut svg, title, x_label, |y| format!("{y:.1}"), series, true);
    svg.push_str("</svg>\n");
    svg
}

/// A panel's size in pixels, the margin its axes sit inside, and how far from its right edge
/// the legend starts (room for the longest series name).
#[derive(Clone, Copy)]
struct Frame {
    width: f64,
    height: f64,
    margin: f64,
    legend: f64,
}

const CONVERGENCE: Frame = Frame { width: 440.0, height: 300.0, margin: 55.0, legend: 150.0 };
const LINE_PLOT: Frame = Frame { width: 560.0, height: 340.0, margin: 60.0, legend: 90.0 };
const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

/// An SVG document `width` wide with a white background, `height` plus a line for the x labels.
fn svg_page(width: f64, height: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        height + 30.0
    )
}

/// One panel at `x0` on the page: x from 0 to `max_x`, y from `lo` to `hi`.
struct Panel {
    frame: Frame,
    x0: f64,
    max_x: f64,
    lo: f64,
    hi: f64,
}

impl Panel {
    /// The panel that holds every finite point of `series` (`empty`: the y range when there is
    /// none, or when all points share one y).
    fn around(frame: Frame, x0: f64, series: &[(String, Vec<(f64, f64)>)], empty: (f64, f64)) -> Panel {
        let points = series.iter().flat_map(|(_, s)| s.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
        let (max_x, lo, hi) = points.fold((0.0f64, f64::INFINITY, f64::NEG_INFINITY), |(mx, lo, hi), &(x, y)| {
            (mx.max(x), lo.min(y), hi.max(y))
        });
        let (lo, hi) = match (lo.is_finite(), hi > lo) {
            (true, true) => (lo, hi),
            // one y value: a unit-high range from it (or from 0, below or above it)
            (true, false) => (lo.min(0.0), lo.max(0.0) + 1.0),
            (false, _) => empty,
        };
        Panel { frame, x0, max_x: if max_x > 0.0 { max_x } else { 1.0 }, lo, hi }
    }

    fn px(&self, x: f64) -> f64 {
        let Frame { width, margin, .. } = self.frame;
        self.x0 + margin + (width - 1.5 * margin) * x / self.max_x
    }

    fn py(&self, y: f64) -> f64 {
        let Frame { height, margin, .. } = self.frame;
        height - margin + 20.0 - (height - 1.5 * margin) * (y - self.lo) / (self.hi - self.lo)
    }

    /// Title, axes with 5 ticks each (y labelled by `y_tick`), the x label, and one polyline
    /// (with a dot per point when `markers`) and legend entry per series.
    fn draw(
        &self,
        svg: &mut String,
        title: &str,
        x_label: &str,
        y_tick: impl Fn(f64) -> String,
        series: &[(String, Vec<(f64, f64)>)],
        markers: bool,
    ) {
        let Frame { width, height, legend, .. } = self.frame;
        let middle = self.x0 + width / 2.0;
        let _ = writeln!(svg, "<text x=\"{middle}\" y=\"18\" text-anchor=\"middle\">{title}</text>");
        let _ = writeln!(
            svg,
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"black\"/><line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{3}\" stroke=\"black\"/>",
            self.px(0.0),
            self.py(self.lo),
            self.px(self.max_x),
            self.py(self.hi)
        );
        for i in 0..=4 {
            let (x, y) = (self.max_x * i as f64 / 4.0, self.lo + (self.hi - self.lo) * i as f64 / 4.0);
            let (left, bottom) = (self.px(0.0) - 4.0, self.py(self.lo) + 16.0);
            let _ =
                writeln!(svg, "<text x=\"{left}\" y=\"{}\" text-anchor=\"end\">{}</text>", self.py(y) + 4.0, y_tick(y));
            let _ = writeln!(svg, "<text x=\"{}\" y=\"{bottom}\" text-anchor=\"middle\">{x:.0}</text>", self.px(x));
        }
        let _ = writeln!(svg, "<text x=\"{middle}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>", height + 22.0);
        for (i, (name, s)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = (s.iter())
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| (self.px(x), self.py(y)))
                .collect();
            let list: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
                list.join(" ")
            );
            for (x, y) in pts.iter().filter(|_| markers) {
                let _ = writeln!(svg, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{color}\"/>");
            }
            let (x, y) = (self.x0 + width - legend, 40.0 + 16.0 * i as f64);
            let _ = writeln!(svg, "<text x=\"{x}\" y=\"{y}\" fill=\"{color}\">{name}</text>");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (x, y) pairs of every `<circle>` (line plot markers) in an SVG.
    fn markers(svg: &str) -> Vec<(f64, f64)> {
        let attr = |line: &str, name: &str| -> f64 {
            let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            line[start..].split('"').next().unwrap().parse().unwrap()
        };
        svg.lines().filter(|l| l.starts_with("<circle")).map(|l| (attr(l, "cx"), attr(l, "cy"))).collect()
    }

    #[test]
    fn line_plot_maps_the_data_range_onto_the_axes_and_skips_points_that_are_not_finite() {
        let series = vec![
            ("a".to_string(), vec![(0.0, 80.0), (5.0, f64::NAN), (10.0, 90.0)]),
            ("b".to_string(), vec![(5.0, 85.0)]),
        ];
        let svg = line_plot_svg("accuracy", "epoch", &series);
        // x 0..10 onto 60..530 (margin 60, width 560 - 1.5 margin), y 80..90 onto 300..50
        assert_eq!(markers(&svg), vec![(60.0, 300.0), (530.0, 50.0), (295.0, 175.0)]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">80.0</text>") && svg.contains(">90.0</text>") && svg.contains(">10</text>"), "{svg}");
        assert!(svg.contains(">epoch</text>") && svg.contains(">accuracy</text>"));
        // nothing finite: the default range, no markers, still a valid page
        let svg = line_plot_svg("t", "x", &[("none".to_string(), vec![(f64::NAN, 1.0)])]);
        assert!(markers(&svg).is_empty() && svg.contains(">0.0</text>") && svg.contains(">100.0</text>"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }

    #[test]
    fn convergence_plot_labels_the_residual_panel_in_values_on_a_log_scale() {
        let row = |gradients: usize, objective: f64, res2: f64| IterationMetrics {
            gradients,
            ce: objective,
            objective,
            res2,
            ..Default::default()
        };
        let run = [row(0, 2.5, 1e2), row(50, 2.0, 1.0), row(100, 1.5, 1e-2)];
        let svg = convergence_svg(&[("sas-admm", &run), ("admm-nn", &run[..2])]);
        assert_eq!(svg.matches("<polyline").count(), 4, "two series in each of two panels");
        // log10 from -2 to 2: ticks at 1e-2, 1e-1, ... labelled in the values themselves
        for tick in [">1.00e-2<", ">1.00e0<", ">1.00e2<", ">1.500<", ">2.500<"] {
            assert!(svg.contains(tick), "no tick {tick} in {svg}");
        }
        // the residual panel starts one panel width (440) to the right: its first point, 100 at
        // 0 gradients, is the top left corner of its axes
        assert!(svg.contains("points=\"495.0,47.5 "), "{svg}");
        assert!(svg.contains("points=\"55.0,47.5 "), "the objective's first point, 2.5, at the top: {svg}");
    }
}
