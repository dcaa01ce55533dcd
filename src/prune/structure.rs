//! Structured pruning (src/prune/ALGORITHM.md, "Structured variants"): what `--structure`
//! removes together, the plans that count it, and the GPU side every method uses for it: the
//! ADMM Z-step's prox, the per-layer projection (ADMM-NN, hard pruning) and the mask over the
//! whole parameter arena that masked retraining keeps.
//!
//! - `weight`: any weights (the paper's; unchanged).
//! - `filter`: whole channels of the model's channel sets ([`ChannelSet`]): a conv's filters
//!   (an fc layer's neurons). The ADMM groups are the producer's filter rows (group soft
//!   threshold, top-k filter norms); hard pruning removes with each filter its batch norm's
//!   scale and shift (or its bias) and the consumer's input columns, so the channel is exactly
//!   0 and the compact network ([`compact_state`]) computes the same logits.
//! - `2:4`: 2 of every 4 consecutive weights of a filter row, in every prunable layer whose rows
//!   are whole quads (the ResNets' fc stays dense as under `weight`).

use super::rate::{Layer, Plan, Rate};
use crate::models::{ChannelSet, Model};
use crate::nn::{Role, StateDict};
use crate::ops::group::{Groups, Quads};
use crate::ops::select::{self, LayerSelect};
use crate::ops::{admm as admm_ops, elementwise};
use crate::{Error, Result, Tensor};

/// What `--structure` removes together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Structure {
    /// Any weights (unstructured, the paper's)
    #[default]
    #[serde(rename = "weight")]
    Weight,
    /// Whole channels: a conv's filters or an fc layer's neurons, with their batch norm or bias
    /// and the next layer's input columns (a compact model is saved)
    #[serde(rename = "filter")]
    Filter,
    /// 2 of every 4 consecutive weights of each filter row (sparse tensor cores' pattern)
    #[value(name = "2:4")]
    #[serde(rename = "2:4")]
    TwoFour,
}

impl Structure {
    pub fn name(self) -> &'static str {
        match self {
            Structure::Weight => "weight",
            Structure::Filter => "filter",
            Structure::TwoFour => "2:4",
        }
    }
}

impl std::fmt::Display for Structure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Filter pruning's cut of one channel set: how many of its channels go.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelCut {
    pub set: ChannelSet,
    /// Its producer's and consumer's places in the plan's layers.
    pub producer: usize,
    pub consumer: usize,
    /// Channels removed (at most width − 1: every set keeps a channel).
    pub removed: usize,
}

/// The channels a fraction `p` of a set of `width` removes: ⌈p·width⌉, keeping at least one.
pub fn removed_channels(width: usize, p: f64) -> usize {
    (((p * width as f64) - 1e-9).ceil().max(0.0) as usize).min(width.saturating_sub(1))
}

/// Weights each layer loses when `cuts` are removed: a layer of `rows` output channels with rows
/// of `row` weights keeps (rows − removed outputs)·(row − removed inputs·span).
pub fn pruned_by_cuts(layers: &[Layer], cuts: &[ChannelCut]) -> Vec<usize> {
    (layers.iter().enumerate())
        .map(|(i, l)| {
            let rows = l.shape[0];
            let row = l.len / rows.max(1);
            let out: usize = cuts.iter().filter(|c| c.producer == i).map(|c| c.removed).sum();
            let inputs: usize = cuts.iter().filter(|c| c.consumer == i).map(|c| c.removed * c.set.span).sum();
            l.len - (rows - out) * (row - inputs)
        })
        .collect()
}

/// The filter-pruning plan reaching `rate` with the same share of every channel set's channels
/// (`Percent(p)`: p% of each; `Times(r)`: the smallest share whose exact counts compress the
/// prunable weights at least r-fold).
pub fn plan_filters(layers: Vec<Layer>, sets: &[ChannelSet], rate: Rate, model: &str) -> Result<Plan> {
    if sets.is_empty() {
        return Err(Error::invalid(format!(
            "{model} has no channel sets filter pruning can remove: use --structure weight or 2:4"
        )));
    }
    let place = |name: &str| {
        layers.iter().position(|l| l.name == name).ok_or_else(|| {
            Error::invalid(format!("{model}: channel set names '{name}', which is not one of its prunable layers"))
        })
    };
    let mut cuts = Vec::new();
    for set in sets {
        cuts.push(ChannelCut {
            set: set.clone(),
            producer: place(&set.producer)?,
            consumer: place(&set.consumer)?,
            removed: 0,
        });
    }
    let with = |p: f64| {
        let cuts: Vec<ChannelCut> =
            cuts.iter().map(|c| ChannelCut { removed: removed_channels(c.set.width, p), ..c.clone() }).collect();
        let pruned = pruned_by_cuts(&layers, &cuts);
        Plan::structured(layers.clone(), pruned, Structure::Filter, cuts)
    };
    let plan = match rate {
        Rate::Percent(p) => with(p / 100.0),
        Rate::Times(r) => {
            let most = with(1.0);
            if most.rate() < r {
                return Err(Error::invalid(format!(
                    "--rate {r}x cannot be reached by filter pruning {model} (at most {:.2}x, every channel set keeping \
                     one channel); give a lower rate",
                    most.rate()
                )));
            }
            with(super::rate::smallest_share_reaching(r, 1.0, |p| with(p).rate()))
        }
    };
    plan.check_prunes_something(&format!("--rate {rate} with --structure filter"))?;
    Ok(plan)
}

/// The 2:4 plan: half of every prunable layer whose rows are whole quads (the fc layers dense
/// when `fc_dense`, as under `weight`); other layers (e.g. a stem of 3x3x3 = 27 weights per row)
/// stay dense.
pub fn plan_two_four(layers: Vec<Layer>, fc_dense: bool) -> Result<Plan> {
    let pruned: Vec<usize> = (layers.iter())
        .map(|l| {
            let row = l.len / l.shape[0].max(1);
            let eligible = row % 4 == 0 && l.offset % 4 == 0 && !(l.is_fc && fc_dense);
            if eligible {
                l.len / 2
            } else {
                0
            }
        })
        .collect();
    let plan = Plan::structured(layers, pruned, Structure::TwoFour, Vec::new());
    plan.check_prunes_something("--structure 2:4 (no layer has rows in whole quads of 4)")?;
    Ok(plan)
}

/// Multiply-adds per image of the prunable layers: (dense, kept), kept counting `kept[i]`
/// weights of layer i (conv and fc only; `None` when the model does not give its output sizes).
pub fn macs(model: &Model, layers: &[Layer], kept: &[usize]) -> Option<(u64, u64)> {
    let positions = model.output_positions();
    let mut total = (0u64, 0u64);
    for (l, &k) in layers.iter().zip(kept) {
        let (_, p) = positions.iter().find(|(n, _)| *n == l.name)?;
        total.0 += (*p * l.len) as u64;
        total.1 += (*p * k) as u64;
    }
    Some(total)
}

/// A plan's structure on the GPU: the prox of the ADMM Z-step, the projection onto the plan's
/// counts, and the arena mask of hard pruning.
pub struct Grouping {
    kind: Kind,
    prunable: usize,
    /// (offset, length) runs of the prunable vector where Π can zero something: the layers the
    /// plan prunes (under `filter` the producers, whose rows are the groups), consecutive ones
    /// merged.
    projected: Vec<(usize, usize)>,
}

enum Kind {
    Weights(Vec<LayerSelect>),
    Filters {
        /// The producers' filter rows, cut by cut.
        groups: Groups,
        /// Per cut, its rows in `groups`: (first group, how many, how many go).
        selects: Vec<LayerSelect>,
        sumsq: Tensor,
        factor: Tensor,
        cuts: Vec<ChannelCut>,
        layers: Vec<Layer>,
    },
    TwoFour(Quads),
}

impl Grouping {
    /// The grouping of `plan` over a prunable vector of `prunable` elements.
    pub fn new(plan: &Plan, prunable: usize) -> Result<Grouping> {
        let kind = match plan.structure {
            Structure::Weight => Kind::Weights(super::admm::selection(plan)),
            Structure::TwoFour => {
                let layers: Vec<(usize, usize)> = (plan.layers.iter().zip(&plan.pruned))
                    .filter(|(_, &k)| k > 0)
                    .map(|(l, _)| (l.offset, l.len))
                    .collect();
                Kind::TwoFour(Quads::new(prunable, &layers)?)
            }
            Structure::Filter => {
                let (mut ranges, mut selects) = (Vec::new(), Vec::new());
                for cut in &plan.cuts {
                    let l = &plan.layers[cut.producer];
                    let row = l.len / cut.set.width;
                    selects.push(LayerSelect { offset: ranges.len(), len: cut.set.width, k: cut.removed });
                    ranges.extend((0..cut.set.width).map(|c| (l.offset + c * row, row)));
                }
                let n = ranges.len();
                Kind::Filters {
                    groups: Groups::new(prunable, &ranges)?,
                    selects,
                    sumsq: Tensor::zeros(&[n])?,
                    factor: Tensor::zeros(&[n])?,
                    cuts: plan.cuts.clone(),
                    layers: plan.layers.clone(),
                }
            }
        };
        Ok(Grouping { kind, prunable, projected: projected_runs(plan) })
    }

    /// Where Π can zero a weight: (offset, length) runs of the prunable vector, in order,
    /// consecutive layers merged (one run for a ResNet whose fc layer, last, stays dense).
    /// Elsewhere Π is the identity.
    pub fn projected_runs(&self) -> &[(usize, usize)] {
        &self.projected
    }

    /// The Z-step's prox under the structure: `z` = prox of τ·(the structure's penalty) at `v`
    /// (filter: the group soft threshold of the filter rows; 2:4: the 2 largest |v| of each quad
    /// soft-thresholded, the others 0), `z = v` where the structure prunes nothing. Under
    /// `weight` the element-wise soft threshold everywhere (SAS-ADMM runs its fused kernel instead).
    pub fn prox(&self, v: &Tensor, z: &Tensor, tau: f32) -> Result<()> {
        super::admm::copy(v, z)?;
        match &self.kind {
            Kind::Weights(_) => admm_ops::soft_threshold_in_place(z, tau),
            Kind::Filters { groups, sumsq, factor, .. } => groups.soft_threshold(z, tau, sumsq, factor),
            Kind::TwoFour(quads) => quads.soft_threshold(v, z, tau),
        }
    }

    /// Writes into `mask` (the prunable vector's length) the projection of `x` onto the plan's
    /// counts: 0 for the pruned weights (the smallest |x| per layer; the filter rows of smallest
    /// ‖x_g‖₂ per channel set; the 2 smallest of each quad), 1 elsewhere.
    pub fn projection_mask(&self, x: &Tensor, mask: &Tensor) -> Result<()> {
        match &self.kind {
            Kind::Weights(layers) => select::magnitude_mask(x, layers, mask),
            Kind::TwoFour(quads) => {
                elementwise::fill(mask, 1.0)?;
                quads.mask(x, mask)
            }
            Kind::Filters { groups, factor, .. } => {
                self.keep_filters(x)?;
                elementwise::fill(mask, 1.0)?;
                groups.scale(mask, factor)
            }
        }
    }

    /// Under `filter`: 1 (kept) or 0 in `factor` for each filter row, by the rows' ‖x_g‖₂ per
    /// channel set.
    fn keep_filters(&self, x: &Tensor) -> Result<()> {
        if let Kind::Filters { groups, selects, sumsq, factor, .. } = &self.kind {
            groups.sum_squares(x, sumsq)?;
            select::magnitude_mask(sumsq, selects, factor)?;
        }
        Ok(())
    }

    /// Hard pruning's mask over the whole parameter arena from the prunable weights `w`: the
    /// projection mask on the prunable prefix, 1 beyond it; under `filter` also 0 for each removed
    /// channel's per-channel parameters and its consumer's input columns. Returns the mask and,
    /// under `filter`, the removed channels of each cut.
    pub fn arena_mask(&self, model: &Model, w: &Tensor) -> Result<(Tensor, Vec<Vec<usize>>)> {
        let arena = model.store.params_flat()?.numel();
        let Kind::Filters { selects, factor, cuts, layers, .. } = &self.kind else {
            let mask = Tensor::full(&[arena], 1.0)?;
            self.projection_mask(w, &Tensor::view_into(mask.storage().clone(), 0, &[self.prunable])?)?;
            return Ok((mask, Vec::new()));
        };
        self.keep_filters(w)?;
        let keep = factor.to_vec()?;
        let removed: Vec<Vec<usize>> =
            (selects.iter()).map(|s| (0..s.len).filter(|&c| keep[s.offset + c] == 0.0).collect()).collect();
        let mut mask = vec![1.0f32; arena];
        for (cut, channels) in cuts.iter().zip(&removed) {
            let (p, c) = (&layers[cut.producer], &layers[cut.consumer]);
            let (row, consumer_row) = (p.len / cut.set.width, c.len / c.shape[0]);
            for &ch in channels {
                mask[p.offset + ch * row..p.offset + (ch + 1) * row].fill(0.0);
                for o in 0..c.shape[0] {
                    let start = c.offset + o * consumer_row + ch * cut.set.span;
                    mask[start..start + cut.set.span].fill(0.0);
                }
                for name in &cut.set.per_channel {
                    let e = model.store.entries().iter().find(|e| &e.name == name);
                    if let Some(e) = e.filter(|e| e.role != Role::Buffer) {
                        mask[e.offset + ch] = 0.0;
                    }
                }
            }
        }
        Ok((Tensor::from_slice(&mask, &[arena])?, removed))
    }
}

/// The layers Π acts on as (offset, length) runs of the prunable vector: under `filter` each cut's
/// producer (its consumer loses input columns only at hard pruning), otherwise each layer with a
/// count. Consecutive such layers (in arena order, as `plan.layers` is) form one run, the
/// alignment padding between them included (zeros, which the kernels leave at zero).
fn projected_runs(plan: &Plan) -> Vec<(usize, usize)> {
    let projected = |i: usize| match plan.structure {
        Structure::Filter => plan.cuts.iter().any(|c| c.producer == i),
        Structure::Weight | Structure::TwoFour => plan.pruned[i] > 0,
    };
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut extends = false;
    for (i, l) in plan.layers.iter().enumerate() {
        let now = projected(i);
        match runs.last_mut() {
            Some(run) if now && extends => run.1 = l.offset + l.len - run.0,
            _ if now => runs.push((l.offset, l.len)),
            _ => {}
        }
        extends = now;
    }
    runs
}

/// The compact network of a filter-pruned model: its state dict with each cut's `removed`
/// channels taken out (the producer's rows, the per-channel entries, the consumer's input
/// columns), and the widths that rebuild it ([`Model::build_compact`]).
pub fn compact_state(model: &Model, removed: &[Vec<usize>]) -> Result<(StateDict, Vec<usize>)> {
    let sets = model.channel_sets();
    if sets.len() != removed.len() {
        return Err(Error::invalid(format!(
            "{} channel sets, {} lists of removed channels",
            sets.len(),
            removed.len()
        )));
    }
    let mut dict = model.store.state_dict()?;
    let mut widths = Vec::new();
    for (set, gone) in sets.iter().zip(removed) {
        let keep: Vec<usize> = (0..set.width).filter(|c| !gone.contains(c)).collect();
        widths.push(keep.len());
        for name in std::iter::once(&set.producer).chain(&set.per_channel) {
            let (shape, v) = tensor_of(&mut dict, name)?;
            (*shape, *v) = keep_rows(shape, v, &keep);
        }
        let (shape, v) = tensor_of(&mut dict, &set.consumer)?;
        (*shape, *v) = keep_input_channels(shape, v, &keep, set.span);
    }
    Ok((dict, widths))
}

fn tensor_of<'a>(dict: &'a mut StateDict, name: &str) -> Result<(&'a mut Vec<usize>, &'a mut Vec<f32>)> {
    let (shape, v) = dict.get_mut(name).ok_or_else(|| Error::invalid(format!("the model has no tensor '{name}'")))?;
    Ok((shape, v))
}

/// Rows `keep` of a tensor [rows, ...] (a weight's filters, a per-channel vector's entries).
fn keep_rows(shape: &[usize], v: &[f32], keep: &[usize]) -> (Vec<usize>, Vec<f32>) {
    let row = v.len() / shape[0];
    let data = keep.iter().flat_map(|&c| &v[c * row..(c + 1) * row]).copied().collect();
    let mut s = shape.to_vec();
    s[0] = keep.len();
    (s, data)
}

/// Input channels `keep` of a weight [out, in, kh, kw] (span kh·kw), or [out, in·span] (an fc
/// layer after a conv: span columns per channel).
fn keep_input_channels(shape: &[usize], v: &[f32], keep: &[usize], span: usize) -> (Vec<usize>, Vec<f32>) {
    let row = v.len() / shape[0];
    let data = (0..shape[0])
        .flat_map(|o| keep.iter().flat_map(move |&c| &v[o * row + c * span..o * row + (c + 1) * span]))
        .copied()
        .collect();
    let mut s = shape.to_vec();
    s[1] = if s.len() == 4 { keep.len() } else { keep.len() * span };
    (s, data)
}
