//! The ADMM phases: SAS-ADMM (the paper's method) and ADMM-NN (the baseline), run over the
//! vector W of prunable weights, which is the prefix of the parameter arena.
//!
//! State (W, Z, U, W̆, W_avg, iteration and gradient counters) is saved atomically after every
//! outer iteration, so a stopped run resumes at the last completed one. Minibatches are
//! sampled with replacement from (seed, gradient number), so a resumed run sees the same ones.

use super::rate::Plan;
use crate::checkpoint::{self, Normalize};
use crate::data::{fill_batch, BatchSpec, Dataset};
use crate::models::key_for;
use crate::models::{Model, Pass};
use crate::ops::{admm, elementwise, loss, reduce, select, sgd::SgdConfig};
use crate::train::rng_for;
use crate::{gpu, Error, Result, Tensor};
use rand::Rng;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// SAS-ADMM hyperparameters (Yuan et al. 2024, Algorithm 1; defaults are the authors' ResNet-32
/// values, listed in README under `--schedule paper`).
#[derive(Clone, Debug, PartialEq)]
pub struct SasConfig {
    pub beta: f32,
    pub rho: f32,
    pub lambda: f32,
    /// M: inner length before k0
    pub inner: usize,
    /// K: outer iterations
    pub outer: usize,
    pub k_avg: usize,
    pub k0: usize,
    pub v: f64,
    pub q: f64,
    pub r: f32,
    pub s: f32,
    pub batch: usize,
    /// Minibatch g is images g·batch … g·batch + batch − 1 in file order (cycling), instead of
    /// drawn at random with replacement (`--deterministic`, with unaugmented batches).
    pub file_order: bool,
}

impl SasConfig {
    pub fn paper() -> SasConfig {
        SasConfig {
            beta: 0.04,
            rho: 0.04,
            lambda: 1e-4,
            inner: 50,
            outer: 190,
            k_avg: 170,
            k0: 50,
            v: 25.0,
            q: 1.1,
            r: 0.9,
            s: 1.09,
            batch: 256,
            file_order: false,
        }
    }

    /// The same algorithm scaled down about 80x (our choice): K = 20, M = 10, k0 = 10, K_avg = 16.
    pub fn quick() -> SasConfig {
        SasConfig { inner: 10, outer: 20, k_avg: 16, k0: 10, ..SasConfig::paper() }
    }

    /// (M_k, η_k) of outer iteration k (1-based).
    pub fn inner_schedule(&self, k: usize) -> (usize, f64) {
        let m = self.inner as f64;
        if k < self.k0 {
            return (self.inner, 1.0 / self.v);
        }
        let c = m / (self.k0 as f64).powf(self.q);
        let mk = (c * (k as f64).powf(self.q)).ceil().max(1.0);
        (mk as usize, m * (m + 1.0) / (self.v * mk * (mk + 1.0)))
    }

    /// Minibatch gradients the whole phase takes.
    pub fn total_gradients(&self) -> usize {
        (1..=self.outer).map(|k| self.inner_schedule(k).0).sum()
    }

    // negated comparisons on purpose: `!(v > 0.0)` also refuses NaN
    #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::nonminimal_bool)]
    pub fn validate(&self) -> Result<()> {
        let positive = [("--beta", self.beta), ("--rho", self.rho), ("--r", self.r), ("--s", self.s)];
        if let Some((flag, v)) = positive.iter().find(|(_, v)| !(*v > 0.0 && v.is_finite())) {
            return Err(Error::invalid(format!("{flag} must be a positive number, got {v}")));
        }
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            return Err(Error::invalid(format!("--lambda must be >= 0, got {}", self.lambda)));
        }
        if self.inner == 0 || self.outer == 0 || self.k0 == 0 || self.batch == 0 || !(self.v > 0.0) || !(self.q > 0.0) {
            return Err(Error::invalid("--inner, --outer, --k0, --batch, --v and --q must be positive"));
        }
        let m = self.inner as f64;
        let longest = m / (self.k0 as f64).powf(self.q) * (self.outer as f64).powf(self.q);
        if !(longest < 1e7) || self.outer > 1_000_000 || self.inner > 1_000_000 {
            return Err(Error::invalid(format!(
                "--inner {}, --outer {}, --k0 {}, --q {} make inner loops of {longest:.3e} steps: choose smaller values",
                self.inner, self.outer, self.k0, self.q
            )));
        }
        Ok(())
    }
}

/// ADMM-NN baseline settings. The W-step is SGD (momentum 0.9) on f(W) + (ρ/2)‖W − Z + U‖².
#[derive(Clone, Debug, PartialEq)]
pub struct AdmmNnConfig {
    pub rho: f32,
    pub lr: f32,
    pub iterations: usize,
    /// SGD steps per ADMM iteration.
    pub steps: usize,
    pub batch: usize,
    /// Minibatches in file order (see [`SasConfig::file_order`]).
    pub file_order: bool,
}

impl AdmmNnConfig {
    // negated comparisons on purpose: `!(v > 0.0)` also refuses NaN
    #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::nonminimal_bool)]
    pub fn validate(&self) -> Result<()> {
        if !(self.rho >= 0.0 && self.rho.is_finite()) || !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::invalid(format!(
                "--admm-rho must be >= 0 and --admm-lr > 0, got {} and {}",
                self.rho, self.lr
            )));
        }
        if self.iterations == 0 || self.steps == 0 || self.batch == 0 {
            return Err(Error::invalid("--admm-iterations, --admm-steps and --batch must be at least 1"));
        }
        Ok(())
    }

    /// ρ = 1.5e-3 and 40 iterations as in ADMM-NN's AlexNet run; lr 0.01 and as many minibatch
    /// gradients in all as SAS-ADMM spends (our choices for CIFAR).
    pub fn matching(sas: &SasConfig) -> AdmmNnConfig {
        let iterations = 40.min(sas.outer);
        AdmmNnConfig {
            rho: 1.5e-3,
            lr: 0.01,
            iterations,
            steps: sas.total_gradients().div_ceil(iterations),
            batch: sas.batch,
            file_order: sas.file_order,
        }
    }
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
}

impl IterationMetrics {
    pub const CSV_HEADER: &'static str = "iteration,gradients,ce,objective,dw2,dz2,res2,seconds";
    pub fn csv(&self) -> String {
        format!(
            "{},{},{:.6},{:.6},{:.6e},{:.6e},{:.6e},{:.2}",
            self.k, self.gradients, self.ce, self.objective, self.dw2, self.dz2, self.res2, self.seconds
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
        })
    }
}

/// The prunable prefix of the parameter arena (the network's W as it runs).
pub fn arena_prefix(model: &Model) -> Result<Tensor> {
    let p = model.store.prunable_len();
    Tensor::view_into(model.store.params_flat()?.storage().clone(), 0, &[p])
}

fn grads_prefix(model: &Model) -> Result<Tensor> {
    let p = model.store.prunable_len();
    Tensor::view_into(model.store.grads_flat()?.storage().clone(), 0, &[p])
}

fn copy(src: &Tensor, dst: &Tensor) -> Result<()> {
    gpu::get()?.copy(src.view(), dst.view())
}

fn clone_tensor(src: &Tensor) -> Result<Tensor> {
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
        checkpoint::save_bundle(&dir.join(Self::FILE), model, norm, &[("admm.", dict)], meta)
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
fn minibatch_gradient(
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
    let mut rng = rng_for(seed, 3, g as u64);
    let idx: Vec<usize> = if file_order {
        (0..batch).map(|i| (g * batch + i) % data.len()).collect()
    } else {
        (0..batch).map(|_| rng.random_range(0..data.len())).collect()
    };
    fill_batch(data, &idx, spec, &mut rng, &mut buf.0, &mut buf.1);
    let (_, h, w) = model.input;
    let x = Tensor::from_slice(&buf.0, &[batch, 3, h, w])?;
    let y = Tensor::from_slice(&buf.1, &[batch])?;
    model.store.zero_grad()?;
    let pass = Pass::Train { noise: key_for(seed, 5, g as u64) };
    let l = loss::cross_entropy(&model.forward(&x, pass)?, &y)?;
    l.backward()?;
    Ok(l.detach())
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

fn check_finite(m: &IterationMetrics, dir: &Path) -> Result<()> {
    if !(m.ce.is_finite() && m.res2.is_finite()) {
        return Err(Error::Diverged(format!(
            "ADMM phase: the loss became {} in outer iteration {}: the iterates diverged; start a new run (--out) \
             with lower --beta/--rho or a larger --v, from the dense weights this run saved: --weights {}",
            m.ce,
            m.k,
            dir.join("dense.safetensors").display()
        )));
    }
    Ok(())
}

/// When the ADMM phase saves its state: after the first iteration a session runs, after the last
/// one, and otherwise once the time since the last save is at least 20 times what that save
/// took, so saving costs at most ~5% of the phase. On a software driver that is every
/// iteration; on a fast GPU a small model's iteration takes less time than reading back and
/// writing its state, and AlexNet's state is 1.4 GB. A resumed run repeats at most the iterations since the last save (with the
/// same minibatches, so with the same result).
struct SavePolicy {
    last: Option<Instant>,
    cost: std::time::Duration,
}

impl SavePolicy {
    fn new() -> SavePolicy {
        SavePolicy { last: None, cost: std::time::Duration::ZERO }
    }

    fn save_if_due(&mut self, last_iteration: bool, save: impl FnOnce() -> Result<()>) -> Result<()> {
        let due = match self.last {
            None => true,
            Some(at) => last_iteration || at.elapsed() >= 20 * self.cost,
        };
        if due {
            let start = Instant::now();
            save()?;
            self.cost = start.elapsed();
            self.last = Some(Instant::now());
        }
        Ok(())
    }
}

/// Scratch vectors for the monitored norms.
struct Scratch {
    w_prev: Tensor,
    dz: Tensor,
    res: Tensor,
    tmp: Tensor,
}

impl Scratch {
    fn new(len: usize) -> Result<Scratch> {
        Ok(Scratch {
            w_prev: Tensor::zeros(&[len])?,
            dz: Tensor::zeros(&[len])?,
            res: Tensor::zeros(&[len])?,
            tmp: Tensor::zeros(&[len])?,
        })
    }
}

/// Runs SAS-ADMM outer iterations `state.k + 1 ..= cfg.outer`, calling `after` with each
/// iteration's metrics (after the state is saved). Leaves W_avg in the network's weights.
#[allow(clippy::too_many_arguments)]
pub fn run_sas_admm(
    model: &mut Model,
    data: &dyn Dataset,
    spec: &BatchSpec,
    norm: Normalize,
    cfg: &SasConfig,
    seed: u64,
    state: &mut AdmmState,
    dir: &Path,
    bar: &indicatif::ProgressBar,
    mut after: impl FnMut(&IterationMetrics) -> Result<()>,
) -> Result<()> {
    cfg.validate()?;
    let p = model.store.prunable_len();
    let (w_hat, d) = (arena_prefix(model)?, grads_prefix(model)?);
    let h = Tensor::zeros(&[p])?;
    let s = Scratch::new(p)?;
    let mut buf = (Vec::new(), Vec::new());
    let mut saves = SavePolicy::new();
    while state.k < cfg.outer {
        let started = Instant::now();
        let k = state.k + 1;
        copy(&state.w, &s.w_prev)?;
        admm::sas_h(&state.w, &state.z, &state.u, &h, cfg.rho, cfg.beta)?;
        let (mk, eta) = cfg.inner_schedule(k);
        admm::mix(&state.w_breve, &state.w, &w_hat, 1.0)?; // Ŵ at t = 1 (b_1 = 1)
        let ce_sum = Tensor::zeros(&[1])?;
        for t in 1..=mk {
            let b = 2.0 / (t as f64 + 1.0);
            let b_next = 2.0 / (t as f64 + 2.0);
            let gamma = 2.0 / (eta * t as f64);
            let l = minibatch_gradient(model, data, spec, cfg.batch, cfg.file_order, seed, state.gradients, &mut buf)?;
            elementwise::axpy(1.0, &l, &ce_sum)?;
            admm::sas_inner(&d, &h, &state.w_breve, &state.w, &w_hat, gamma as f32, cfg.rho, b as f32, b_next as f32)?;
            state.gradients += 1;
            gpu::get()?.flush()?;
            bar.set_position(state.gradients as u64);
        }
        admm::sas_dual(&state.w, &state.z, &state.u, &s.dz, &s.res, cfg.beta, cfg.lambda, cfg.r, cfg.s)?;
        if k > cfg.k_avg {
            // running mean of the W iterates K_avg … k, K_avg included (W_avg held W_{K_avg})
            admm::mix(&state.w, &state.w_avg, &s.tmp, 1.0 / (k - cfg.k_avg + 1) as f32)?;
            copy(&s.tmp, &state.w_avg)?;
        } else {
            copy(&state.w, &state.w_avg)?;
        }
        elementwise::axpy(-1.0, &state.w, &s.w_prev)?; // W_prev − W
        state.k = k;
        let l1 = reduce::sum_abs(&state.w_avg)?;
        let v = read_scalars(&[
            &ce_sum,
            &l1,
            &reduce::sum_squares(&s.w_prev)?,
            &reduce::sum_squares(&s.dz)?,
            &reduce::sum_squares(&s.res)?,
        ])?;
        let ce = v[0] / mk as f64;
        let m = IterationMetrics {
            k,
            gradients: state.gradients,
            ce,
            objective: ce + cfg.lambda as f64 * v[1],
            dw2: v[2],
            dz2: v[3],
            res2: v[4],
            seconds: started.elapsed().as_secs_f64(),
        };
        check_finite(&m, dir)?;
        // logged first: a run killed in between repeats the iteration and drops its row
        after(&m)?;
        saves.save_if_due(k == cfg.outer, || state.save(model, dir, norm, "sas-admm"))?;
    }
    copy(&state.w_avg, &w_hat)
}

/// Per-layer selection table for a plan (offsets into the prunable prefix).
pub fn selection(plan: &Plan) -> Vec<select::LayerSelect> {
    plan.layers
        .iter()
        .zip(&plan.pruned)
        .map(|(l, &k)| select::LayerSelect { offset: l.offset, len: l.len, k })
        .collect()
}

/// Runs ADMM-NN iterations `state.k + 1 ..= cfg.iterations`: W-steps by SGD on
/// f(W) + (ρ/2)‖W − Z + U‖², then Z = Π(W + U) (per-layer top-k) and U += W − Z.
#[allow(clippy::too_many_arguments)]
pub fn run_admm_nn(
    model: &mut Model,
    data: &dyn Dataset,
    spec: &BatchSpec,
    norm: Normalize,
    cfg: &AdmmNnConfig,
    plan: &Plan,
    seed: u64,
    state: &mut AdmmState,
    dir: &Path,
    bar: &indicatif::ProgressBar,
    mut after: impl FnMut(&IterationMetrics) -> Result<()>,
) -> Result<()> {
    let p = model.store.prunable_len();
    let (w_net, d) = (arena_prefix(model)?, grads_prefix(model)?);
    let s = Scratch::new(p)?;
    let mask = Tensor::full(&[p], 1.0)?;
    let layers = selection(plan);
    if state.k == 0 && state.gradients == 0 {
        // Z starts as the projection of the dense weights
        select::magnitude_mask(&state.w, &layers, &mask)?;
        admm::mix(&state.w, &state.w, &state.z, 1.0)?;
        admm::multiply_in_place(&state.z, &mask)?;
    }
    let sgd = SgdConfig { lr: cfg.lr, momentum: 0.9, weight_decay: 0.0, nesterov: false };
    let mut buf = (Vec::new(), Vec::new());
    let mut saves = SavePolicy::new();
    while state.k < cfg.iterations {
        let started = Instant::now();
        copy(&state.w, &w_net)?;
        copy(&state.w, &s.w_prev)?;
        model.store.reset_momentum()?;
        let ce_sum = Tensor::zeros(&[1])?;
        for _ in 0..cfg.steps {
            let l = minibatch_gradient(model, data, spec, cfg.batch, cfg.file_order, seed, state.gradients, &mut buf)?;
            elementwise::axpy(1.0, &l, &ce_sum)?;
            admm::admm_grad(&w_net, &state.z, &state.u, &d, cfg.rho)?;
            // Only W moves: the step runs over the prunable prefix alone.
            let m = Tensor::view_into(model.store.momentum_flat()?.storage().clone(), 0, &[p])?;
            crate::ops::sgd::sgd_step(&w_net, &d, &m, None, &sgd)?;
            state.gradients += 1;
            gpu::get()?.flush()?;
            bar.set_position(state.gradients as u64);
        }
        copy(&w_net, &state.w)?;
        let wu = elementwise::add(&state.w, &state.u)?;
        select::magnitude_mask(&wu, &layers, &mask)?;
        admm::admm_dual(&state.w, &mask, &state.z, &state.u, &s.dz, &s.res)?;
        copy(&state.w, &state.w_avg)?;
        elementwise::axpy(-1.0, &state.w, &s.w_prev)?;
        state.k += 1;
        let v = read_scalars(&[
            &ce_sum,
            &reduce::sum_squares(&s.w_prev)?,
            &reduce::sum_squares(&s.dz)?,
            &reduce::sum_squares(&s.res)?,
        ])?;
        let ce = v[0] / cfg.steps.max(1) as f64;
        let m = IterationMetrics {
            k: state.k,
            gradients: state.gradients,
            ce,
            objective: ce,
            dw2: v[1],
            dz2: v[2],
            res2: v[3],
            seconds: started.elapsed().as_secs_f64(),
        };
        check_finite(&m, dir)?;
        // logged first: a run killed in between repeats the iteration and drops its row
        after(&m)?;
        saves.save_if_due(state.k == cfg.iterations, || state.save(model, dir, norm, "admm"))?;
    }
    copy(&state.w, &w_net)
}
