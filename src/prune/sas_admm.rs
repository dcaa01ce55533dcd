//! SAS-ADMM, the paper's method (src/prune/ALGORITHM.md, "SAS-ADMM"): its hyperparameters and
//! its phase over the vector W of prunable weights.

use super::admm::{
    arena_prefix, check_finite, copy, grads_prefix, minibatch_gradient, AdmmState, IterationMetrics, PhaseContext,
    Scratch, Session,
};
use super::rate::Plan;
use super::structure::{Grouping, Structure};
use crate::ops::{admm, elementwise};
use crate::{gpu, Error, Result, Tensor};
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

    /// The schedule cut to (or stretched to) `outer` iterations, averaging the same share of them
    /// at the end: K_avg moves with K (the paper averages the last 20 of 190, quick the last 4 of
    /// 20; `--outer 4` alone then averages from iteration 3, where K_avg = 16 would average
    /// nothing).
    pub fn with_outer(&self, outer: usize) -> SasConfig {
        let averaged = self.outer.saturating_sub(self.k_avg) as f64 / self.outer.max(1) as f64;
        let k_avg = outer - ((averaged * outer as f64).round() as usize).min(outer);
        SasConfig { outer, k_avg, ..self.clone() }
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
        if self.k_avg > self.outer {
            return Err(Error::invalid(format!(
                "--k-avg {} is past the last outer iteration (--outer {}): no iterate would be averaged; averaging \
                 starts after iteration K_avg, so give at most --k-avg {} (K_avg = K keeps the last iterate; the \
                 paper averages the last 20 of 190)",
                self.k_avg, self.outer, self.outer
            )));
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

/// Runs SAS-ADMM outer iterations `state.k + 1 ..= cfg.outer`, calling `after` with each
/// iteration's metrics before the state is saved (a run stopped in between repeats the iteration
/// and drops its row). Leaves W_avg in the network's weights. The
/// Z-step's prox follows the plan's structure (the soft threshold under `weight`; the group soft
/// threshold or the 2:4 one otherwise: see `structure.rs`).
pub fn run_sas_admm(
    ctx: PhaseContext<'_>,
    cfg: &SasConfig,
    plan: &Plan,
    state: &mut AdmmState,
    mut after: impl FnMut(&IterationMetrics) -> Result<()>,
) -> Result<()> {
    let PhaseContext { model, data, spec, norm, seed, dir, bar } = ctx;
    cfg.validate()?;
    let p = model.store.prunable_len();
    let (w_hat, d) = (arena_prefix(model)?, grads_prefix(model)?);
    let h = Tensor::zeros(&[p])?;
    let s = Scratch::new(p)?;
    let grouping = Grouping::new(plan, p)?;
    let mut buf = (Vec::new(), Vec::new());
    let mut session = Session::new(state);
    while state.k < cfg.outer {
        let k = state.k + 1;
        let (mk, eta) = cfg.inner_schedule(k);
        session.check_time(state, mk, || state.save(model, dir, norm, "sas-admm"))?;
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
            let skip = Some(model.store.skip_flag());
            admm::sas_inner(
                &d,
                &h,
                &state.w_breve,
                &state.w,
                &w_hat,
                gamma as f32,
                cfg.rho,
                b as f32,
                b_next as f32,
                skip,
            )?;
            state.gradients += 1;
            gpu::get()?.flush()?;
            bar.set_position(state.gradients as u64);
        }
        z_step(cfg, plan, &grouping, state, &s)?;
        if k > cfg.k_avg {
            // running mean of the W iterates K_avg … k, K_avg included (W_avg held W_{K_avg})
            admm::mix(&state.w, &state.w_avg, &s.tmp, 1.0 / (k - cfg.k_avg + 1) as f32)?;
            copy(&s.tmp, &state.w_avg)?;
        } else {
            copy(&state.w, &state.w_avg)?;
        }
        elementwise::axpy(-1.0, &state.w, &s.w_prev)?; // W_prev − W
        state.k = k;
        let l1 = Some((cfg.lambda, &state.w_avg));
        let m = IterationMetrics::measure(state, &s, &ce_sum, mk, l1, cfg.rho, started, (&state.w_avg, &grouping))?;
        check_finite(&m, dir)?;
        // logged first: a run killed in between repeats the iteration and drops its row
        after(&m)?;
        session.iteration_done(&m, mk, k == cfg.outer, || state.save(model, dir, norm, "sas-admm"))?;
    }
    copy(&state.w_avg, &w_hat)
}

/// Steps 4–6 of an outer iteration: U½, the Z-step's prox at V = W − U½/β with τ = λ/β, U.
/// Under `weight` one fused kernel (the paper's); structured, the prox runs on groups between
/// two element-wise halves (V in the scratch vector `tmp`).
fn z_step(cfg: &SasConfig, plan: &Plan, grouping: &Grouping, state: &AdmmState, s: &Scratch) -> Result<()> {
    if plan.structure == Structure::Weight {
        return admm::sas_dual(&state.w, &state.z, &state.u, &s.dz, &s.res, cfg.beta, cfg.lambda, cfg.r, cfg.s);
    }
    admm::sas_split(&state.w, &state.z, &state.u, &s.tmp, &s.dz, cfg.beta, cfg.r)?;
    grouping.prox(&s.tmp, &state.z, cfg.lambda / cfg.beta)?;
    admm::sas_close(&state.w, &state.z, &state.u, &s.dz, &s.res, cfg.beta, cfg.s)
}

/// SAS-ADMM as a [`PruningMethod`](super::method::PruningMethod).
pub struct SasAdmm;

impl super::method::PruningMethod for SasAdmm {
    fn name(&self) -> &'static str {
        "sas-admm"
    }

    fn about(&self) -> &'static str {
        "SAS-ADMM, the paper's method"
    }

    fn has_admm_phase(&self) -> bool {
        true
    }

    fn admm_budget(&self, settings: super::method::Settings) -> (usize, usize) {
        (settings.sas.total_gradients(), settings.sas.batch)
    }

    fn run_admm_phase(
        &self,
        ctx: PhaseContext<'_>,
        settings: super::method::Settings,
        plan: &Plan,
        state: &mut AdmmState,
        after: &mut dyn FnMut(&IterationMetrics) -> Result<()>,
    ) -> Result<()> {
        run_sas_admm(ctx, settings.sas, plan, state, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shorter_or_longer_phase_averages_the_same_share_of_its_iterations() {
        let (paper, quick) = (SasConfig::paper(), SasConfig::quick());
        assert_eq!(paper.with_outer(190), paper);
        assert_eq!(quick.with_outer(20), quick);
        // quick averages its last 4 of 20 (K_avg = 16): 4 iterations average from 3 on
        assert_eq!(quick.with_outer(4).k_avg, 3);
        assert_eq!(quick.with_outer(40).k_avg, 32);
        // the paper's last 20 of 190: 50 iterations from 45 on; one keeps its only iterate
        assert_eq!(paper.with_outer(50).k_avg, 45);
        assert_eq!(paper.with_outer(1).k_avg, 1);
        assert!(paper.with_outer(7).validate().is_ok());
        let past = SasConfig { k_avg: 5, ..paper.with_outer(4) };
        assert!(past.validate().unwrap_err().to_string().contains("--k-avg 5 is past"));
    }
}
