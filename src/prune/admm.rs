//! What the ADMM phases share (src/prune/ALGORITHM.md): the variables W, Z, U, W̆, W_avg over the
//! vector W of prunable weights (the prefix of the parameter arena) and their atomic save, the
//! monitored metrics, minibatch gradients, when to save and when a `--time-limit` stops. The
//! methods themselves live in `sas_admm.rs` and `admm_nn.rs`; `method.rs` chooses between them.
//!
//! State (W, Z, U, W̆, W_avg, iteration and gradient counters) is saved atomically after outer
//! iterations, so a stopped run resumes at the last saved one. Minibatches are sampled with
//! replacement from (seed, gradient number), so a resumed run sees the same ones.

pub use super::admm_nn::run_admm_nn;
pub use super::admm_nn::AdmmNnConfig;
use super::rate::Plan;
pub use super::sas_admm::run_sas_admm;
pub use super::sas_admm::SasConfig;
use super::structure::Grouping;
use crate::checkpoint::{self, Normalize};
use crate::data::{fill_batch, BatchSpec, Dataset};
use crate::models::{key_for, stream, Model};
use crate::ops::{admm as admm_ops, elementwise, reduce, select};
use crate::train::rng_for;
use crate::{gpu, Error, Result, Tensor};
use rand::Rng;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// What an ADMM phase runs on: the network, the training images and how batches are made from
/// them, the run's seed, where its state is saved, and its progress bar.
pub struct PhaseContext<'a> {
    pub model: &'a mut Model,
    pub data: &'a dyn Dataset,
    pub spec: &'a BatchSpec,
    pub norm: Normalize,
    pub seed: u64,
    /// The run directory: `admm_state.safetensors` goes there.
    pub dir: &'a Path,
    pub bar: &'a indicatif::ProgressBar,
}

/// The ADMM variables, each a vector over the prunable prefix of the parameter arena.
pub struct AdmmState {
    pub w: Tensor,
    pub z: Tensor,
    pub u: Tensor,
    pub w_breve: Tensor,
    pub w_avg: Tensor,
    /// Outer iterations completed.
    pub k: usize,
    /// Minibatch gradients spent.
    pub gradients: usize,
}

/// What is monitored per outer iteration.
#[derive(Clone, Copy, Debug, Default)]
pub struct IterationMetrics {
    pub k: usize,
    pub gradients: usize,
    /// Mean minibatch cross-entropy of the iteration.
    pub ce: f64,
    /// CE + λ‖W_avg‖₁ (SAS-ADMM) or CE (ADMM-NN).
    pub objective: f64,
    pub dw2: f64,
    pub dz2: f64,
    pub res2: f64,
    pub seconds: f64,
    /// The penalty of the iteration: SAS-ADMM's constant ρ, ADMM-NN's ρ_k (NaN in rows written
    /// before this column existed).
    pub rho: f64,
    /// The relative primal residual ‖W − Z‖² / ‖W‖² (NaN in older rows), free of the weights'
    /// scale. Z differs by method (SAS-ADMM's soft threshold, ADMM-NN's projection).
    pub rel_res2: f64,
    /// The share of the phase's output that hard pruning would remove now, ‖X − Π(X)‖² / ‖X‖² with
    /// X the weights the phase hands to hard pruning (SAS-ADMM: W_avg; ADMM-NN: W) and Π the
    /// plan's projection: the same distance for every method, how far the phase still is from
    /// the pruned network (NaN in older rows).
    pub prune_gap: f64,
}

impl IterationMetrics {
    /// New columns go at the end, so rows of runs started by an older version stay readable
    /// (phase times sum the `seconds` column, found by its name).
    pub const CSV_HEADER: &'static str = "iteration,gradients,ce,objective,dw2,dz2,res2,seconds,rho,rel_res2,prune_gap";
    pub fn csv(&self) -> String {
        format!(
            "{},{},{:.6},{:.6},{:.6e},{:.6e},{:.6e},{:.2},{:.6e},{:.6e},{:.6e}",
            self.k,
            self.gradients,
            self.ce,
            self.objective,
            self.dw2,
            self.dz2,
            self.res2,
            self.seconds,
            self.rho,
            self.rel_res2,
            self.prune_gap
        )
    }
    pub fn from_csv(line: &str) -> Option<IterationMetrics> {
        let v: Vec<&str> = line.split(',').collect();
        let f = |i: usize| v.get(i)?.parse::<f64>().ok();
        Some(IterationMetrics {
            k: v.first()?.parse().ok()?,
            gradients: v.get(1)?.parse().ok()?,
            ce: f(2)?,
            objective: f(3)?,
            dw2: f(4)?,
            dz2: f(5)?,
            res2: f(6)?,
            seconds: f(7)?,
            rho: f(8).unwrap_or(f64::NAN),
            rel_res2: f(9).unwrap_or(f64::NAN),
            prune_gap: f(10).unwrap_or(f64::NAN),
        })
    }
}

impl IterationMetrics {
    /// Outer iteration `state.k`'s metrics in one read-back: the mean of the `steps` minibatch
    /// losses summed in `ce_sum`; ‖W_prev − W‖², ‖ΔZ‖² and ‖W − Z‖² from the scratch vectors
    /// (`w_prev` holding W_prev − W by now); ‖W‖² for the relative residual; the objective
    /// CE + λ‖W_avg‖₁ where `l1` gives (λ, W_avg) (SAS-ADMM), else CE; the prune gap of `output`
    /// (what the phase would hand to hard pruning now) under `grouping`'s projection. Uses the
    /// scratch vectors `tmp` and `mask`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn measure(
        state: &AdmmState,
        s: &Scratch,
        ce_sum: &Tensor,
        steps: usize,
        l1: Option<(f32, &Tensor)>,
        rho: f32,
        started: Instant,
        (output, grouping): (&Tensor, &Grouping),
    ) -> Result<IterationMetrics> {
        // −(the part of the output hard pruning would remove): Π(X) ⊙ X − X in `tmp`
        grouping.projection_mask(output, &s.mask)?;
        copy(output, &s.tmp)?;
        admm_ops::multiply_in_place(&s.tmp, &s.mask)?;
        elementwise::axpy(-1.0, output, &s.tmp)?;
        let squares: Vec<Tensor> = [&s.w_prev, &s.dz, &s.res, &state.w, &s.tmp, output]
            .into_iter()
            .map(reduce::sum_squares)
            .collect::<Result<_>>()?;
        let l1_sum = l1.map(|(_, w_avg)| reduce::sum_abs(w_avg)).transpose()?;
        let mut read = vec![ce_sum];
        read.extend(&squares);
        read.extend(&l1_sum);
        let v = read_scalars(&read)?;
        let ce = v[0] / steps.max(1) as f64;
        Ok(IterationMetrics {
            k: state.k,
            gradients: state.gradients,
            ce,
            objective: l1.map_or(ce, |(lambda, _)| ce + lambda as f64 * v[7]),
            dw2: v[1],
            dz2: v[2],
            res2: v[3],
            seconds: started.elapsed().as_secs_f64(),
            rho: rho as f64,
            rel_res2: v[3] / v[4].max(f64::MIN_POSITIVE),
            prune_gap: v[5] / v[6].max(f64::MIN_POSITIVE),
        })
    }
}

/// The prunable prefix of the parameter arena (the network's W as it runs).
pub fn arena_prefix(model: &Model) -> Result<Tensor> {
    let p = model.store.prunable_len();
    Tensor::view_into(model.store.params_flat()?.storage().clone(), 0, &[p])
}

pub(super) fn grads_prefix(model: &Model) -> Result<Tensor> {
    let p = model.store.prunable_len();
    Tensor::view_into(model.store.grads_flat()?.storage().clone(), 0, &[p])
}

pub(super) fn copy(src: &Tensor, dst: &Tensor) -> Result<()> {
    gpu::get()?.copy(src.view(), dst.view())
}

pub(super) fn clone_tensor(src: &Tensor) -> Result<Tensor> {
    let t = Tensor::uninit(src.shape())?;
    copy(src, &t)?;
    Ok(t)
}

impl AdmmState {
    /// Z = W, U = 0, W̆ = W, W_avg = W from the model's current weights.
    pub fn start(model: &Model) -> Result<AdmmState> {
        let w = clone_tensor(&arena_prefix(model)?)?;
        Ok(AdmmState {
            z: clone_tensor(&w)?,
            u: Tensor::zeros(w.shape())?,
            w_breve: clone_tensor(&w)?,
            w_avg: clone_tensor(&w)?,
            w,
            k: 0,
            gradients: 0,
        })
    }

    const FILE: &'static str = "admm_state.safetensors";

    /// Saves the variables with the model (batch-norm statistics move during the phase) in one
    /// atomic file.
    pub fn save(&self, model: &Model, dir: &Path, norm: Normalize, method: &str) -> Result<()> {
        let mut dict = crate::nn::StateDict::new();
        for (name, t) in
            [("W", &self.w), ("Z", &self.z), ("U", &self.u), ("W_breve", &self.w_breve), ("W_avg", &self.w_avg)]
        {
            dict.insert(name.to_string(), (t.shape().to_vec(), t.to_vec()?));
        }
        let meta = HashMap::from([
            ("k".to_string(), self.k.to_string()),
            ("gradients".to_string(), self.gradients.to_string()),
            ("method".to_string(), method.to_string()),
        ]);
        // ADMM-NN's SGD momentum carries from one iteration to the next, so a resume needs it
        let mut groups = vec![("admm.", dict)];
        if method == "admm" {
            groups.push(("momentum.", model.store.momentum_dict()?));
        }
        let started = Instant::now();
        checkpoint::save_bundle(&dir.join(Self::FILE), model, norm, &groups, meta)?;
        crate::time_limit::note_save(started.elapsed());
        Ok(())
    }

    /// Loads what `save` wrote (model included), or `None` when `dir` holds no ADMM state.
    pub fn load(model: &mut Model, dir: &Path, method: &str) -> Result<Option<AdmmState>> {
        let path = dir.join(Self::FILE);
        if !path.exists() {
            return Ok(None);
        }
        let (ck, _) = checkpoint::load_bundle(&path, model)?;
        let meta = |k: &str| ck.metadata.get(k).cloned().unwrap_or_default();
        if meta("method") != method {
            return Err(Error::invalid(format!("{} holds a {} run, not {method}", path.display(), meta("method"))));
        }
        let p = model.store.prunable_len();
        let vars = ck.with_prefix("admm.");
        let get = |name: &str| -> Result<Tensor> {
            match vars.get(name) {
                Some((shape, v)) if shape == &[p] => Tensor::from_slice(v, &[p]),
                _ => Err(Error::invalid(format!("{}: '{name}' is missing or not of length {p}", path.display()))),
            }
        };
        let parse =
            |k: &str| meta(k).parse::<usize>().map_err(|_| Error::invalid(format!("{}: bad '{k}'", path.display())));
        let momentum = ck.with_prefix("momentum.");
        if !momentum.is_empty() {
            model.store.load_momentum_dict(&momentum, &path.display().to_string())?;
        } else if method == "admm" {
            model.store.reset_momentum()?; // saved by a version that reset it every iteration
        }
        Ok(Some(AdmmState {
            w: get("W")?,
            z: get("Z")?,
            u: get("U")?,
            w_breve: get("W_breve")?,
            w_avg: get("W_avg")?,
            k: parse("k")?,
            gradients: parse("gradients")?,
        }))
    }
}

/// Draws a minibatch of `batch` indices with replacement (from gradient number `g`; or takes the
/// next `batch` images in file order when `file_order`), runs
/// forward and backward in training mode, and returns the loss (on the device). The gradient
/// lands in the gradient arena.
#[allow(clippy::too_many_arguments)]
pub(super) fn minibatch_gradient(
    model: &mut Model,
    data: &dyn Dataset,
    spec: &BatchSpec,
    batch: usize,
    file_order: bool,
    seed: u64,
    g: usize,
    buf: &mut (Vec<f32>, Vec<f32>),
) -> Result<Tensor> {
    if data.is_empty() {
        return Err(Error::invalid("the training set is empty"));
    }
    let mut rng = rng_for(seed, stream::ADMM_MINIBATCH, g as u64);
    let idx: Vec<usize> = if file_order {
        (0..batch).map(|i| (g * batch + i) % data.len()).collect()
    } else {
        (0..batch).map(|_| rng.random_range(0..data.len())).collect()
    };
    fill_batch(data, &idx, spec, &mut rng, &mut buf.0, &mut buf.1);
    let (_, h, w) = model.input;
    let x = Tensor::from_slice(&buf.0, &[batch, 3, h, w])?;
    let y = Tensor::from_slice(&buf.1, &[batch])?;
    model.gradient(&x, &y, key_for(seed, stream::ADMM_DROPOUT, g as u64))
}

/// Reads several one-element device tensors with one read-back.
fn read_scalars(values: &[&Tensor]) -> Result<Vec<f64>> {
    let packed = Tensor::uninit(&[values.len()])?;
    let g = gpu::get()?;
    for (i, v) in values.iter().enumerate() {
        g.copy(v.view(), packed.storage().view(packed.byte_offset() + 4 * i as u64, 4))?;
    }
    Ok(packed.to_vec()?.into_iter().map(f64::from).collect())
}

pub(super) fn check_finite(m: &IterationMetrics, dir: &Path) -> Result<()> {
    let what = if !m.ce.is_finite() {
        format!("the loss became {}", m.ce)
    } else if !m.res2.is_finite() {
        format!("the residual ‖W − Z‖² became {} (the loss was still {:.4})", m.res2, m.ce)
    } else {
        return Ok(());
    };
    Err(Error::Diverged(format!(
        "ADMM phase: {what} in outer iteration {}: the iterates diverged; start a new run (--out) with lower \
         --beta/--rho or a larger --v, from the dense weights this run saved: --weights {}",
        m.k,
        dir.join("dense.safetensors").display()
    )))
}

/// One session of an ADMM phase (a process's share of it): when it saves its state, and whether
/// its next outer iteration still fits a `--time-limit`.
///
/// Saves: after the first iteration the session runs, after the last one, and otherwise once the
/// time since the last save is at least 20 times what that save took, so saving costs at most
/// ~5% of the phase. On a software driver that is every iteration; on a fast GPU a small model's
/// iteration takes less time than reading back and writing its state, and AlexNet's state is
/// 1.4 GB. A resumed run repeats at most the iterations since the last save (with the same
/// minibatches, so with the same result).
///
/// Time limit: an iteration starts only when it (at this session's pace per gradient, a quarter
/// to spare) and a save fit before the limit; the first iteration of a session always runs.
pub(super) struct Session {
    last_save: Option<Instant>,
    save_cost: std::time::Duration,
    /// The last outer iteration whose state is on disk.
    saved_k: usize,
    /// Gradients and seconds of this session's iterations.
    gradients: usize,
    seconds: f64,
}

impl Session {
    /// A session continuing from `state` (fresh, or as loaded from disk).
    pub(super) fn new(state: &AdmmState) -> Session {
        Session { last_save: None, save_cost: std::time::Duration::ZERO, saved_k: state.k, gradients: 0, seconds: 0.0 }
    }

    /// Before an iteration of `gradients` minibatch gradients: when it would not end before the
    /// time limit, saves what is not on disk yet and returns the error that stops the phase.
    pub(super) fn check_time(
        &self,
        state: &AdmmState,
        gradients: usize,
        save: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        if self.gradients == 0 {
            return Ok(());
        }
        let per_gradient = self.seconds / self.gradients as f64;
        if crate::time_limit::fits(std::time::Duration::from_secs_f64(1.25 * per_gradient * gradients as f64)) {
            return Ok(());
        }
        if state.k > self.saved_k {
            save()?;
        }
        Err(crate::time_limit::reached(&format!("ADMM outer iteration {}", state.k + 1)))
    }

    /// After outer iteration `m` of `gradients` gradients (`last`: the phase's last): counts its
    /// pace and saves the state when due.
    pub(super) fn iteration_done(
        &mut self,
        m: &IterationMetrics,
        gradients: usize,
        last: bool,
        save: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        self.gradients += gradients;
        self.seconds += m.seconds;
        let due = match self.last_save {
            None => true,
            Some(at) => last || at.elapsed() >= 20 * self.save_cost,
        };
        if due {
            let start = Instant::now();
            save()?;
            self.save_cost = start.elapsed();
            self.last_save = Some(Instant::now());
            self.saved_k = m.k;
        }
        Ok(())
    }
}

/// Scratch vectors for the monitored norms.
pub(super) struct Scratch {
    pub(super) w_prev: Tensor,
    pub(super) dz: Tensor,
    pub(super) res: Tensor,
    pub(super) tmp: Tensor,
    /// A projection's 0/1 mask: ADMM-NN's Π(W + U) for its dual step, then (both methods) hard
    /// pruning's mask of the phase's output for the prune gap. Entries no layer covers (the
    /// padding between layers) stay 0; W is 0 there too.
    pub(super) mask: Tensor,
}

impl Scratch {
    pub(super) fn new(len: usize) -> Result<Scratch> {
        Ok(Scratch {
            w_prev: Tensor::zeros(&[len])?,
            dz: Tensor::zeros(&[len])?,
            res: Tensor::zeros(&[len])?,
            tmp: Tensor::zeros(&[len])?,
            mask: Tensor::zeros(&[len])?,
        })
    }
}

/// Per-layer selection table for a plan (offsets into the prunable prefix).
pub fn selection(plan: &Plan) -> Vec<select::LayerSelect> {
    plan.layers
        .iter()
        .zip(&plan.pruned)
        .map(|(l, &k)| select::LayerSelect { offset: l.offset, len: l.len, k })
        .collect()
}
