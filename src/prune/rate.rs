//! Compression rates and per-layer pruning plans.
//!
//! Compression rate = prunable weights / non-zero prunable weights, counting conv + fc weights
//! (as the SAS-ADMM paper and ADMM-NN count them). A layer pruned at percentage p loses the weights below the p-th percentile
//! of its |w| (NumPy's linearly interpolated percentile), i.e. exactly ceil(p·(n − 1)) weights
//! for n distinct magnitudes.

use super::structure::{ChannelCut, Structure};
use crate::nn::{ParamStore, Role};
use crate::{Error, Result};
use std::path::Path;

/// A target rate as the user wrote it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    /// `6.6x`: total / kept.
    Times(f64),
    /// `85%`: the pruned percentage of every conv layer.
    Percent(f64),
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::Times(r) => write!(f, "{r}x"),
            Rate::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Parses `6.6x` or `85%`; a bare number is refused with a message asking for the unit.
pub fn parse_rate(text: &str) -> Result<Rate> {
    let t = text.trim();
    let bad = || {
        Error::invalid(format!("--rate '{text}' is not a rate: write it as 6.6x (compression) or 85% (pruned share)"))
    };
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| bad())?;
        if !(p > 0.0 && p < 100.0) {
            return Err(Error::invalid(format!("--rate {text}: a pruned percentage must be above 0% and below 100%")));
        }
        return Ok(Rate::Percent(p));
    }
    let Some(times) = t.strip_suffix(['x', 'X']) else {
        // A bare number means a percentage in a --layer-rates file; here it would be a rate:
        // rather than guess, ask for the unit.
        return Err(match t.parse::<f64>() {
            Ok(v) => Error::invalid(format!(
                "--rate {text} needs a unit: {v}x compresses {v}-fold, {v}% prunes {v}% of each layer's weights \
                 (in a --layer-rates file a bare number is a percentage)"
            )),
            Err(_) => bad(),
        });
    };
    let r: f64 = times.trim().parse().map_err(|_| bad())?;
    if !(r > 1.0 && r.is_finite()) {
        return Err(Error::invalid(format!("--rate {text}: a compression rate must be above 1x (1x prunes nothing)")));
    }
    Ok(Rate::Times(r))
}

/// One prunable layer: a conv or fc weight and its range in the parameter arena.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
    /// An fc weight (2-D), kept dense unless per-layer rates say otherwise.
    pub is_fc: bool,
}

/// The prunable layers of a model, in arena order.
pub fn prunable_layers(store: &ParamStore) -> Vec<Layer> {
    let mut layers: Vec<Layer> = store
        .entries()
        .iter()
        .filter(|e| e.role == Role::PrunableWeight)
        .map(|e| Layer {
            name: e.name.clone(),
            shape: e.shape.clone(),
            offset: e.offset,
            len: e.numel(),
            is_fc: e.shape.len() == 2,
        })
        .collect();
    layers.sort_by_key(|l| l.offset);
    layers
}

/// Weights that percentage `p` (a fraction in [0, 1)) prunes from a layer of `n`.
pub fn pruned_count(n: usize, p: f64) -> usize {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    ((p * (n - 1) as f64 - 1e-9).ceil().max(0.0) as usize).min(n)
}

/// Per-layer pruned fractions and what they achieve.
#[derive(Clone, Debug)]
pub struct Plan {
    pub layers: Vec<Layer>,
    /// Pruned fraction per layer.
    pub fractions: Vec<f64>,
    /// Weights pruned per layer.
    pub pruned: Vec<usize>,
    /// What is removed together (`--structure`).
    pub structure: Structure,
    /// Under `filter`: the channels each channel set loses.
    pub cuts: Vec<ChannelCut>,
}

impl Plan {
    /// An unstructured plan: each layer loses `fractions[i]` of its weights.
    pub fn new(layers: Vec<Layer>, fractions: Vec<f64>) -> Plan {
        let pruned = layers.iter().zip(&fractions).map(|(l, &p)| pruned_count(l.len, p)).collect();
        Plan { layers, fractions, pruned, structure: Structure::Weight, cuts: Vec::new() }
    }

    /// A structured plan from its per-layer counts (see `structure.rs`).
    pub fn structured(layers: Vec<Layer>, pruned: Vec<usize>, structure: Structure, cuts: Vec<ChannelCut>) -> Plan {
        let fractions = layers.iter().zip(&pruned).map(|(l, &k)| k as f64 / l.len.max(1) as f64).collect();
        Plan { layers, fractions, pruned, structure, cuts }
    }
    pub fn total(&self) -> usize {
        self.layers.iter().map(|l| l.len).sum()
    }
    pub fn kept(&self) -> usize {
        self.total() - self.pruned.iter().sum::<usize>()
    }
    pub fn rate(&self) -> f64 {
        self.total() as f64 / self.kept().max(1) as f64
    }

    /// One rule for every way of giving a target: a plan that prunes no weight at all (an empty
    /// or all-zero rates file, a percentage too small to remove one weight) is refused.
    pub fn check_prunes_something(&self, target: &str) -> Result<()> {
        if self.kept() < self.total() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "{target} prunes no weight (every layer keeps all of its weights): give a target that removes some, \
             e.g. --rate 6.6x or a percentage above 0 for some layer"
        )))
    }
}

/// The plan for a uniform percentage reaching `rate`: of every conv layer with the fc layers
/// dense when `fc_dense` (the CIFAR ResNets, as the paper counts them), else of every conv and
/// fc layer (AlexNet, whose fc layers hold 96% of its weights). For `Times(r)`, the smallest
/// percentage whose exact counts reach at least r.
pub fn plan_uniform(layers: Vec<Layer>, rate: Rate, fc_dense: bool) -> Result<Plan> {
    let with =
        |p: f64| Plan::new(layers.clone(), layers.iter().map(|l| if l.is_fc && fc_dense { 0.0 } else { p }).collect());
    match rate {
        Rate::Percent(p) => {
            let plan = with(p / 100.0);
            plan.check_prunes_something(&format!("--rate {p}%"))?;
            Ok(plan)
        }
        Rate::Times(r) => {
            let most = with(1.0 - 1e-12);
            if most.rate() < r {
                let how = if fc_dense { "by pruning the conv layers alone (fc dense)" } else { "" };
                return Err(Error::invalid(format!(
                    "--rate {r}x cannot be reached {how} (at most {:.2}x); give a lower rate or per-layer rates with \
                     --layer-rates",
                    most.rate()
                )));
            }
            Ok(with(smallest_share_reaching(r, 1.0 - 1e-12, |p| with(p).rate())))
        }
    }
}

/// The smallest share p in [0, `most`] whose plan reaches compression `r` (`rate_at(p)`, which
/// grows with p, at least r; `rate_at(most)` must reach it), by bisection to f64 precision.
pub fn smallest_share_reaching(r: f64, most: f64, rate_at: impl Fn(f64) -> f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, most);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if rate_at(mid) >= r {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// A plan from a file of `layer-name percentage` lines (`#` comments; `85` and `85%` both mean
/// 85%: one unit, percent, so `1` is 1%). A UTF-8 byte-order mark at the start is ignored.
/// Layers the file does not name stay dense; a layer named twice is refused (naming both lines),
/// and so is a file that prunes nothing.
pub fn plan_from_file(layers: Vec<Layer>, path: &Path) -> Result<Plan> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::invalid(format!(
            "--layer-rates {} is a directory: give the file of `layer-name percentage` lines",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut fractions = vec![0.0; layers.len()];
    let mut named_on: Vec<Option<usize>> = vec![None; layers.len()];
    for (no, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let where_ = format!("{} line {}", path.display(), no + 1);
        let mut parts = line.split(|c: char| c.is_whitespace() || c == ':' || c == ',').filter(|s| !s.is_empty());
        let (Some(name), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::invalid(format!("{where_}: expected 'layer-name percentage', got '{line}'")));
        };
        let name = name.strip_suffix(".weight").unwrap_or(name);
        let Some(i) = layers.iter().position(|l| l.name == format!("{name}.weight")) else {
            let known: Vec<&str> = layers.iter().map(|l| l.name.trim_end_matches(".weight")).collect();
            return Err(Error::invalid(format!(
                "{where_}: unknown layer '{name}'; this model's prunable layers are {}",
                known.join(", ")
            )));
        };
        if let Some(first) = named_on[i] {
            return Err(Error::invalid(format!(
                "{where_}: layer '{name}' is already given on line {first}: keep one line per layer"
            )));
        }
        named_on[i] = Some(no + 1);
        let v: f64 = value
            .strip_suffix('%')
            .unwrap_or(value)
            .parse()
            .map_err(|_| Error::invalid(format!("{where_}: '{value}' is not a percentage")))?;
        if !(0.0..100.0).contains(&v) {
            return Err(Error::invalid(format!(
                "{where_}: a pruned share must be at least 0% and below 100%, got {value}"
            )));
        }
        fractions[i] = v / 100.0;
    }
    let plan = Plan::new(layers, fractions);
    plan.check_prunes_something(&format!("--layer-rates {}", path.display()))?;
    Ok(plan)
}
