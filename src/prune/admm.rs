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

    /// Every flag in its range before any work (README and `--help` state them): β and ρ in
    /// (0, 1e4], λ in [0, 1e3], v in (0, 1e6], q in (0, 3], the symmetric step factors (r, s)
    /// inside symmetric ADMM's convergence region, and inner loops of at most 1e7 steps.
    // negated comparisons on purpose: `!(v > 0.0)` also refuses NaN
    #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::nonminimal_bool)]
    pub fn validate(&self) -> Result<()> {
        use crate::error::number_text as text;
        // (flag, value, as given, whether 0 is allowed, upper bound, the range as written)
        let ranges: [(&str, f64, String, bool, f64, &str); 5] = [
            ("--beta", self.beta as f64, text(self.beta), false, 1e4, "(0, 1e4]"),
            ("--rho", self.rho as f64, text(self.rho), false, 1e4, "(0, 1e4]"),
            ("--v", self.v, text(self.v), false, 1e6, "(0, 1e6]"),
            ("--q", self.q, text(self.q), false, 3.0, "(0, 3]"),
            ("--lambda", self.lambda as f64, text(self.lambda), true, 1e3, "[0, 1e3]"),
        ];
        for (flag, v, given, zero_ok, hi, range) in ranges {
            if !((v > 0.0 || (zero_ok && v == 0.0)) && v <= hi) {
                return Err(Error::invalid(format!("{flag} must be in {range}, got {given}")));
            }
        }
        // He, Liu, Wang, Yuan's region for symmetric ADMM: r in (−1, 1), s in (0, (1+√5)/2),
        // r + s > 0 and |r| < 1 + s − s² (r = 0.9, s = 1.09, the paper's, lies just inside)
        let (r, s) = (self.r as f64, self.s as f64);
        if !(r > -1.0
            && r < 1.0
            && s > 0.0
            && s < (1.0 + 5f64.sqrt()) / 2.0
            && r + s > 0.0
            && r.abs() < 1.0 + s - s * s)
        {
            return Err(Error::invalid(format!(
                "--r {} and --s {} lie outside symmetric ADMM's convergence region (r in (−1, 1), s in (0, 1.618), \
                 r + s > 0, |r| < 1 + s − s²); the paper uses r = 0.9, s = 1.09",
                crate::error::number_text(self.r),
                crate::error::number_text(self.s)
            )));
        }
        if self.inner == 0 || self.outer == 0 || self.k0 == 0 || self.batch == 0 {
            return Err(Error::invalid("--inner, --outer, --k0 and --batch must be at least 1"));
        }
        let m = self.inner as f64;
        let longest = m / (self.k0 as f64).powf(self.q) * (self.outer as f64).powf(self.q);
        if !(longest < 1e7) || self.outer > 1_000_000 || self.inner > 1_000_000 {
            return Err(Error::invalid(format!(
                "--inner {}, --outer {}, --k0 {}, --q {} make inner loops of up to {} steps: choose smaller values",
                self.inner,
                self.outer,
                self.k0,
                self.q,
                crate::error::number_text(longest.ceil())
            )));
        }
        Ok(())
    }
}

/// ADMM-NN baseline settings, as its authors run it on CIFAR (yeshaokai/Robustness-Aware-Pruning-ADMM,
/// `admm/admm.py` and `ADMM_examples/cifar10/`; README's "ADMM-NN" section cites the lines).
/// Iteration k's W-step is SGD (momentum 0.9) on f(W) + (ρ_k/2)‖W − Z + U‖² with
/// ρ_k = min(ρ0·g^(k−1), ρ_max), the learning rate restarted at `lr` and divided by 10 at 1/3 and
/// 2/3 of the iteration's steps, weight decay on every parameter, and every parameter trained
/// (batch-norm scale and shift and the fc bias too); momentum carries from one iteration to the
/// next unless `reset_momentum`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdmmNnConfig {
    /// ρ0, the penalty of the first iteration.
    pub rho: f32,
    /// g: ρ is multiplied by this at every iteration (1 keeps it constant).
    pub rho_growth: f32,
    /// ρ never grows past this.
    pub rho_max: f32,
    /// The W-step's learning rate at the start of every iteration.
    pub lr: f32,
    /// Divide the learning rate by 10 at 1/3 and 2/3 of every iteration (else constant).
    pub lr_drops: bool,
    pub weight_decay: f32,
    /// Train every parameter in the W-step (else only the prunable weights W).
    pub train_all: bool,
    /// Clear the momentum at the start of every iteration (else it carries over).
    pub reset_momentum: bool,
    pub iterations: usize,
    /// SGD steps per ADMM iteration.
    pub steps: usize,
    pub batch: usize,
    /// Minibatches in file order (see [`SasConfig::file_order`]).
    pub file_order: bool,
}

impl AdmmNnConfig {
    /// ADMM iterations of the `paper` schedule (the authors' ~10 long W-subproblems) and of `quick`.
    pub const PAPER_ITERATIONS: usize = 10;
    pub const QUICK_ITERATIONS: usize = 4;

    // negated comparisons on purpose: `!(v > 0.0)` also refuses NaN
    #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::nonminimal_bool)]
    pub fn validate(&self) -> Result<()> {
        let positive = [("--admm-rho", self.rho), ("--admm-lr", self.lr), ("--admm-rho-max", self.rho_max)];
        if let Some((flag, v)) = positive.iter().find(|(_, v)| !(*v > 0.0 && v.is_finite())) {
            return Err(Error::invalid(format!(
                "{flag} must be a positive number, got {}",
                crate::error::number_text(*v)
            )));
        }
        if !(self.rho_growth >= 1.0 && self.rho_growth <= 10.0) {
            return Err(Error::invalid(format!(
                "--admm-rho-growth must be in [1, 10] (1 keeps ρ constant), got {}",
                crate::error::number_text(self.rho_growth)
            )));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay < 1.0) {
            return Err(Error::invalid(format!(
                "--admm-weight-decay must be in [0, 1), got {}",
                crate::error::number_text(self.weight_decay)
            )));
        }
        if self.iterations == 0 || self.steps == 0 || self.batch == 0 {
            return Err(Error::invalid("--admm-iterations, --admm-steps and --batch must be at least 1"));
        }
        if self.iterations > 1_000_000 || self.steps > 100_000_000 {
            return Err(Error::invalid(format!(
                "--admm-iterations {} and --admm-steps {} are beyond any budget: choose smaller values",
                self.iterations, self.steps
            )));
        }
        Ok(())
    }

    /// The authors' CIFAR run: ρ0 = 1e-3 for W-subproblems of 20 epochs at batch 128 (7,820
    /// steps) with lr 0.01 and its drops.
    pub const AUTHORS_RHO: f64 = 1e-3;
    pub const AUTHORS_STEPS: usize = 7_820;

    /// How far one W-subproblem moves a weight under a constant unit gradient: Σ_t lr_t·v_t with
    /// the momentum buffer v_t = 0.9·v_{t−1} + 1 from rest. The penalty term's pull on W in an
    /// iteration is ρ times this.
    pub fn pull_per_unit_gradient(&self) -> f64 {
        let mut v = 0.0f64;
        (0..self.steps)
            .map(|t| {
                v = 0.9 * v + 1.0;
                self.lr_at(t) as f64 * v
            })
            .sum()
    }

    /// The ρ0 that gives this schedule's W-subproblems the pull the authors' ρ0 = 1e-3 gives
    /// their 7,820-step ones (ρ0·pull is what decides how far W moves toward Z − U, and so
    /// whether the dual's growth is matched: with a smaller product the selection churns and
    /// ‖W − Z‖² grows). Their own ρ0 when the subproblems are as long as theirs.
    pub fn matched_rho(&self) -> f32 {
        let authors = AdmmNnConfig { steps: Self::AUTHORS_STEPS, lr: 0.01, lr_drops: true, ..self.clone() };
        (Self::AUTHORS_RHO * authors.pull_per_unit_gradient() / self.pull_per_unit_gradient().max(1e-12)) as f32
    }

    /// The authors' settings with `iterations` W-subproblems sharing SAS-ADMM's gradient budget
    /// (never more iterations than gradients): ρ0 matched to the subproblems' length
    /// ([`matched_rho`](Self::matched_rho)) growing x1.3 per iteration, capped at 100 (where
    /// lr·ρ stays inside SGD's stable range), lr 0.01 with drops, weight decay 1e-4, every
    /// parameter trained, momentum kept.
    pub fn authors(sas: &SasConfig, iterations: usize) -> AdmmNnConfig {
        let budget = sas.total_gradients();
        let iterations = iterations.clamp(1, budget.max(1));
        let cfg = AdmmNnConfig {
            rho: Self::AUTHORS_RHO as f32,
            rho_growth: 1.3,
            rho_max: 100.0,
            lr: 0.01,
            lr_drops: true,
            weight_decay: 1e-4,
            train_all: true,
            reset_momentum: false,
            iterations,
            steps: budget.div_ceil(iterations),
            batch: sas.batch,
            file_order: sas.file_order,
        };
        AdmmNnConfig { rho: cfg.matched_rho(), ..cfg }
    }

    /// ρ_k of iteration k (1-based).
    pub fn rho_at(&self, k: usize) -> f32 {
        let grown = self.rho as f64 * (self.rho_growth as f64).powi(k.saturating_sub(1).min(100_000) as i32);
        grown.min(self.rho_max as f64) as f32
    }

    /// The learning rate of step t (0-based) of an iteration.
    pub fn lr_at(&self, t: usize) -> f32 {
        if !self.lr_drops {
            return self.lr;
        }
        // the authors' `lr * 0.1 ** (offset // (admm_epoch / 3))` over steps instead of epochs
        let third = (3 * t / self.steps.max(1)).min(2);
        self.lr * 0.1f32.powi(third as i32)
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
    /// The penalty of the iteration: SAS-ADMM's constant ρ, ADMM-NN's ρ_k (NaN in rows written
    /// before this column existed).
    pub rho: f64,
    /// The relative primal residual ‖W − Z‖² / ‖W‖² (NaN in older rows): what compare measures
    /// every method's convergence by, free of the weights' scale.
    pub rel_res2: f64,
}

impl IterationMetrics {
    /// New columns go at the end: column 7 (seconds) is summed for phase times, and rows of runs
    /// started by an older version stay readable.
    pub const CSV_HEADER: &'static str = "iteration,gradients,ce,objective,dw2,dz2,res2,seconds,rho,rel_res2";
    pub fn csv(&self) -> String {
        format!(
            "{},{},{:.6},{:.6},{:.6e},{:.6e},{:.6e},{:.2},{:.6e},{:.6e}",
            self.k,
            self.gradients,
            self.ce,
            self.objective,
            self.dw2,
            self.dz2,
            self.res2,
            self.seconds,
            self.rho,
            self.rel_res2
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

    /// Saves when due; says whether it did.
    fn save_if_due(&mut self, last_iteration: bool, save: impl FnOnce() -> Result<()>) -> Result<bool> {
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
        Ok(due)
    }
}

/// This session's pace in the ADMM phase, for `--time-limit`: an outer iteration starts only when
/// it and a save fit before the limit. The first iteration of a session always runs.
#[derive(Default)]
struct Pace {
    gradients: usize,
    seconds: f64,
    /// The last outer iteration whose state is on disk.
    saved_k: usize,
}

impl Pace {
    fn new(saved_k: usize) -> Pace {
        Pace { saved_k, ..Pace::default() }
    }

    fn record(&mut self, m: &IterationMetrics, gradients: usize) {
        self.gradients += gradients;
        self.seconds += m.seconds;
    }

    /// Whether an iteration of `gradients` minibatch gradients fits (a quarter to spare).
    fn next_fits(&self, gradients: usize) -> bool {
        if self.gradients == 0 {
            return true;
        }
        let per_gradient = self.seconds / self.gradients as f64;
        crate::time_limit::fits(std::time::Duration::from_secs_f64(1.25 * per_gradient * gradients as f64))
    }

    /// Saves the state unless the last completed iteration is on disk already, then says why the
    /// phase stops.
    fn stop(&self, state: &AdmmState, save: impl FnOnce() -> Result<()>) -> Error {
        if state.k > self.saved_k {
            if let Err(e) = save() {
                return e;
            }
        }
        crate::time_limit::reached(&format!("ADMM outer iteration {}", state.k + 1))
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
    let mut pace = Pace::new(state.k);
    while state.k < cfg.outer {
        let k = state.k + 1;
        let (mk, eta) = cfg.inner_schedule(k);
        if !pace.next_fits(mk) {
            return Err(pace.stop(state, || state.save(model, dir, norm, "sas-admm")));
        }
        let started = Instant::now();
        copy(&state.w, &s.w_prev)?;
        admm::sas_h(&state.w, &state.z, &state.u, &h, cfg.rho, cfg.beta)?;
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
            &reduce::sum_squares(&state.w)?,
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
            rho: cfg.rho as f64,
            rel_res2: v[4] / v[5].max(f64::MIN_POSITIVE),
        };
        check_finite(&m, dir)?;
        // logged first: a run killed in between repeats the iteration and drops its row
        after(&m)?;
        pace.record(&m, mk);
        if saves.save_if_due(k == cfg.outer, || state.save(model, dir, norm, "sas-admm"))? {
            pace.saved_k = k;
        }
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
/// f(W) + (ρ_k/2)‖W − Z + U‖² (every parameter, weight decay, the lr restarted and dropped per
/// iteration), then Z = Π(W + U) (per-layer top-k) and U += W − Z.
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
    cfg.validate()?;
    let p = model.store.prunable_len();
    let (w_net, d) = (arena_prefix(model)?, grads_prefix(model)?);
    let s = Scratch::new(p)?;
    let mask = Tensor::full(&[p], 1.0)?;
    let layers = selection(plan);
    if state.k == 0 && state.gradients == 0 {
        // Z starts as the projection of the dense weights; the W-step's momentum starts at 0
        select::magnitude_mask(&state.w, &layers, &mask)?;
        admm::mix(&state.w, &state.w, &state.z, 1.0)?;
        admm::multiply_in_place(&state.z, &mask)?;
        model.store.reset_momentum()?;
    }
    let prunable_momentum = Tensor::view_into(model.store.momentum_flat()?.storage().clone(), 0, &[p])?;
    let mut buf = (Vec::new(), Vec::new());
    let mut saves = SavePolicy::new();
    let mut pace = Pace::new(state.k);
    while state.k < cfg.iterations {
        if !pace.next_fits(cfg.steps) {
            return Err(pace.stop(state, || state.save(model, dir, norm, "admm")));
        }
        let started = Instant::now();
        let k = state.k + 1;
        let rho = cfg.rho_at(k);
        copy(&state.w, &w_net)?;
        copy(&state.w, &s.w_prev)?;
        if cfg.reset_momentum {
            model.store.reset_momentum()?;
        }
        let ce_sum = Tensor::zeros(&[1])?;
        for t in 0..cfg.steps {
            let l = minibatch_gradient(model, data, spec, cfg.batch, cfg.file_order, seed, state.gradients, &mut buf)?;
            elementwise::axpy(1.0, &l, &ce_sum)?;
            admm::admm_grad(&w_net, &state.z, &state.u, &d, rho)?;
            let sgd = SgdConfig { lr: cfg.lr_at(t), momentum: 0.9, weight_decay: cfg.weight_decay, nesterov: false };
            if cfg.train_all {
                model.store.sgd_step(&sgd, None)?;
            } else {
                crate::ops::sgd::sgd_step(&w_net, &d, &prunable_momentum, None, &sgd)?;
            }
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
        state.k = k;
        let v = read_scalars(&[
            &ce_sum,
            &reduce::sum_squares(&s.w_prev)?,
            &reduce::sum_squares(&s.dz)?,
            &reduce::sum_squares(&s.res)?,
            &reduce::sum_squares(&state.w)?,
        ])?;
        let ce = v[0] / cfg.steps.max(1) as f64;
        let m = IterationMetrics {
            k,
            gradients: state.gradients,
            ce,
            objective: ce,
            dw2: v[1],
            dz2: v[2],
            res2: v[3],
            seconds: started.elapsed().as_secs_f64(),
            rho: rho as f64,
            rel_res2: v[3] / v[4].max(f64::MIN_POSITIVE),
        };
        check_finite(&m, dir)?;
        // logged first: a run killed in between repeats the iteration and drops its row
        after(&m)?;
        pace.record(&m, cfg.steps);
        if saves.save_if_due(state.k == cfg.iterations, || state.save(model, dir, norm, "admm"))? {
            pace.saved_k = k;
        }
    }
    copy(&state.w, &w_net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admm_nn_follows_its_authors_schedules() {
        let sas = SasConfig::paper();
        let cfg = AdmmNnConfig::authors(&sas, AdmmNnConfig::PAPER_ITERATIONS);
        // 21,107 gradients in 10 W-subproblems of 2,111 steps
        assert_eq!((cfg.iterations, cfg.steps), (10, 2_111));
        // ρ_k = ρ0 · 1.3^(k−1), capped
        assert!((cfg.rho_at(3) / cfg.rho_at(1) - 1.69).abs() < 1e-5);
        assert_eq!(AdmmNnConfig { rho_max: 0.002, ..cfg.clone() }.rho_at(40), 0.002);
        // lr 0.01 restarted every iteration, / 10 at 1/3 and / 100 at 2/3 of it (the authors'
        // admm_adjust_learning_rate: offsets 0-6, 7-13, 14-19 of 20 epochs)
        let twenty = AdmmNnConfig { steps: 20, ..cfg.clone() };
        let lrs: Vec<f32> = (0..20).map(|t| twenty.lr_at(t)).collect();
        assert_eq!(lrs.iter().filter(|&&l| l == 0.01).count(), 7, "{lrs:?}");
        assert_eq!(lrs.iter().filter(|&&l| (l - 0.001).abs() < 1e-9).count(), 7, "{lrs:?}");
        assert_eq!(lrs.iter().filter(|&&l| (l - 0.0001).abs() < 1e-9).count(), 6, "{lrs:?}");
        // ρ0 gives the authors' pull per subproblem: theirs at their length, more for shorter ones
        let theirs = AdmmNnConfig { steps: AdmmNnConfig::AUTHORS_STEPS, rho: 1e-3, ..cfg.clone() };
        assert!((theirs.matched_rho() - 1e-3).abs() < 1e-9);
        assert!(cfg.rho > 3.3e-3 && cfg.rho < 4.1e-3, "ρ0 {} for 2,111-step subproblems", cfg.rho);
        let product = |c: &AdmmNnConfig| c.rho as f64 * c.pull_per_unit_gradient();
        assert!((product(&cfg) / product(&theirs) - 1.0).abs() < 1e-5);
        assert!(cfg.weight_decay == 1e-4 && cfg.train_all && !cfg.reset_momentum && cfg.lr_drops);
        // never more iterations than gradients
        let tiny = SasConfig { inner: 2, outer: 1, k0: 1, k_avg: 1, ..SasConfig::paper() };
        assert_eq!(AdmmNnConfig::authors(&tiny, 10).iterations, 2);
    }
}
