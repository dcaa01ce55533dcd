//! ADMM-NN, the baseline (src/prune/ALGORITHM.md, "ADMM-NN"), as its authors run it: its
//! settings and its phase over the vector W of prunable weights.

use super::admm::{
    arena_prefix, check_finite, copy, grads_prefix, minibatch_gradient, AdmmState, IterationMetrics, PhaseContext,
    Scratch, Session,
};
use super::rate::Plan;
use super::sas_admm::SasConfig;
use super::structure::Grouping;
use crate::ops::{admm, elementwise, sgd::SgdConfig};
use crate::{gpu, Error, Result, Tensor};
use std::time::Instant;

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
        if !self.within_any_budget() {
            return Err(Error::invalid(format!(
                "--admm-iterations {} and --admm-steps {} are beyond any budget: choose smaller values",
                self.iterations, self.steps
            )));
        }
        Ok(())
    }

    /// At most 1,000,000 W-subproblems of 100,000,000 steps each (also what keeps
    /// [`pull_per_unit_gradient`](Self::pull_per_unit_gradient)'s loop short).
    pub fn within_any_budget(&self) -> bool {
        self.iterations <= 1_000_000 && self.steps <= 100_000_000
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
        // (a budget beyond any is refused by validate: no ρ0 to match, and its loop would not end)
        let rho = if cfg.within_any_budget() { cfg.matched_rho() } else { cfg.rho };
        AdmmNnConfig { rho, ..cfg }
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

/// The W-step's penalty gradient `g += ρ·(W − Z + U)`, added only on the layers Π prunes
/// (`Grouping::projected_runs`), as its authors add the ADMM loss only for the layers they prune
/// (`admm.py` `append_admm_loss` over `prune_ratios`). Elsewhere (a ResNet's dense fc layer, a
/// layer a rates file leaves out, the stem under 2:4) Π is the identity, so Z = W_{k−1} and
/// U = 0 there, and the term would be a pull toward the last iterate growing with ρ_k.
pub struct Penalty {
    /// Per run: views of W, Z, U and the gradient over it.
    runs: Vec<[Tensor; 4]>,
}

impl Penalty {
    /// Over `w`, `z`, `u`, `g` (each the prunable vector's length) where `grouping` projects.
    pub fn new(grouping: &Grouping, w: &Tensor, z: &Tensor, u: &Tensor, g: &Tensor) -> Result<Penalty> {
        let view = |t: &Tensor, (offset, len): (usize, usize)| {
            Tensor::view_into(t.storage().clone(), t.byte_offset() + 4 * offset as u64, &[len])
        };
        let runs = (grouping.projected_runs().iter())
            .map(|&run| Ok([view(w, run)?, view(z, run)?, view(u, run)?, view(g, run)?]))
            .collect::<Result<_>>()?;
        Ok(Penalty { runs })
    }

    /// `g += ρ·(W − Z + U)` on the projected runs (one launch per run).
    pub fn add(&self, rho: f32) -> Result<()> {
        self.runs.iter().try_for_each(|[w, z, u, g]| admm::admm_grad(w, z, u, g, rho))
    }
}

/// Runs ADMM-NN iterations `state.k + 1 ..= cfg.iterations`: W-steps by SGD on
/// f(W) + (ρ_k/2)‖W − Z + U‖² (every parameter, weight decay, the lr restarted and dropped per
/// iteration; the penalty on the layers Π prunes), then Z = Π(W + U) (the plan's projection:
/// per-layer top-k, filters or 2:4) and U += W − Z.
pub fn run_admm_nn(
    ctx: PhaseContext<'_>,
    cfg: &AdmmNnConfig,
    plan: &Plan,
    state: &mut AdmmState,
    mut after: impl FnMut(&IterationMetrics) -> Result<()>,
) -> Result<()> {
    let PhaseContext { model, data, spec, norm, seed, dir, bar } = ctx;
    cfg.validate()?;
    let p = model.store.prunable_len();
    let (w_net, d) = (arena_prefix(model)?, grads_prefix(model)?);
    let s = Scratch::new(p)?;
    // the projection Π onto the plan's counts, by weights, filters or 2:4 quads
    let grouping = Grouping::new(plan, p)?;
    if state.k == 0 && state.gradients == 0 {
        // Z starts as the projection of the dense weights; the W-step's momentum starts at 0
        grouping.projection_mask(&state.w, &s.mask)?;
        admm::mix(&state.w, &state.w, &state.z, 1.0)?;
        admm::multiply_in_place(&state.z, &s.mask)?;
        model.store.reset_momentum()?;
    }
    let prunable_momentum = Tensor::view_into(model.store.momentum_flat()?.storage().clone(), 0, &[p])?;
    let penalty = Penalty::new(&grouping, &w_net, &state.z, &state.u, &d)?;
    let mut buf = (Vec::new(), Vec::new());
    let mut session = Session::new(state);
    while state.k < cfg.iterations {
        session.check_time(state, cfg.steps, || state.save(model, dir, norm, "admm"))?;
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
            penalty.add(rho)?;
            let sgd = SgdConfig { lr: cfg.lr_at(t), momentum: 0.9, weight_decay: cfg.weight_decay, nesterov: false };
            if cfg.train_all {
                model.store.sgd_step(&sgd, None)?;
            } else {
                crate::ops::sgd::sgd_step(&w_net, &d, &prunable_momentum, None, &sgd, Some(model.store.skip_flag()))?;
            }
            state.gradients += 1;
            gpu::get()?.flush()?;
            bar.set_position(state.gradients as u64);
        }
        copy(&w_net, &state.w)?;
        // W + U in the scratch vector (the prune gap reuses it after the mask is taken)
        copy(&state.w, &s.tmp)?;
        elementwise::axpy(1.0, &state.u, &s.tmp)?;
        grouping.projection_mask(&s.tmp, &s.mask)?;
        admm::admm_dual(&state.w, &s.mask, &state.z, &state.u, &s.dz, &s.res)?;
        copy(&state.w, &state.w_avg)?;
        elementwise::axpy(-1.0, &state.w, &s.w_prev)?; // W_prev − W
        state.k = k;
        let m = IterationMetrics::measure(state, &s, &ce_sum, cfg.steps, None, rho, started, (&state.w, &grouping))?;
        check_finite(&m, dir)?;
        // logged first: a run killed in between repeats the iteration and drops its row
        after(&m)?;
        session.iteration_done(&m, cfg.steps, state.k == cfg.iterations, || state.save(model, dir, norm, "admm"))?;
    }
    copy(&state.w, &w_net)
}

/// ADMM-NN as a [`PruningMethod`](super::method::PruningMethod).
pub struct AdmmNn;

impl super::method::PruningMethod for AdmmNn {
    fn name(&self) -> &'static str {
        "admm"
    }

    fn about(&self) -> &'static str {
        "ADMM-NN as its authors run it"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["admm-nn"]
    }

    fn has_admm_phase(&self) -> bool {
        true
    }

    fn admm_budget(&self, settings: super::method::Settings) -> (usize, usize) {
        (settings.admm.iterations * settings.admm.steps, settings.admm.batch)
    }

    fn run_admm_phase(
        &self,
        ctx: PhaseContext<'_>,
        settings: super::method::Settings,
        plan: &Plan,
        state: &mut AdmmState,
        after: &mut dyn FnMut(&IterationMetrics) -> Result<()>,
    ) -> Result<()> {
        run_admm_nn(ctx, settings.admm, plan, state, after)
    }
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
