//! The pruning methods, a closed set: SAS-ADMM (the paper's), ADMM-NN and one-shot magnitude
//! pruning. Everything that differs between them — whether there is an ADMM phase, what it
//! costs, how it runs — is answered here, by one match per question, so adding a method means
//! its own file and one arm in each match the compiler points to (never a silent fallback).

use super::admm::{AdmmNnConfig, AdmmState, IterationMetrics, PhaseContext, SasConfig};
use super::rate::Plan;
use crate::{Error, Result};

/// `--method` (and `compare --methods`): the names are the command line's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// SAS-ADMM, the paper's method
    #[value(name = "sas-admm")]
    SasAdmm,
    /// ADMM-NN as its authors run it
    #[value(name = "admm", alias = "admm-nn")]
    Admm,
    /// one-shot magnitude pruning (no ADMM phase)
    #[value(name = "magnitude")]
    Magnitude,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::SasAdmm, Method::Admm, Method::Magnitude];

    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "admm-nn" => Ok(Method::Admm),
            _ => Method::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                Error::invalid(format!("unknown --method '{s}': choose {}", names.join(", ")))
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::SasAdmm => "sas-admm",
            Method::Admm => "admm",
            Method::Magnitude => "magnitude",
        }
    }

    /// Whether it has an ADMM phase (magnitude pruning goes from the dense start to hard pruning).
    pub fn has_admm_phase(self) -> bool {
        match self {
            Method::SasAdmm | Method::Admm => true,
            Method::Magnitude => false,
        }
    }

    /// (minibatch gradients, images per minibatch) of its ADMM phase; (0, 0) without one.
    pub fn admm_budget(self, sas: &SasConfig, nn: &AdmmNnConfig) -> (usize, usize) {
        match self {
            Method::SasAdmm => (sas.total_gradients(), sas.batch),
            Method::Admm => (nn.iterations * nn.steps, nn.batch),
            Method::Magnitude => (0, 0),
        }
    }

    /// Runs its ADMM phase from `state` (a fresh start or a saved one) to the end, calling
    /// `after` with each outer iteration's metrics; leaves the phase's weights in the network.
    pub fn run_admm_phase(
        self,
        ctx: PhaseContext<'_>,
        (sas, nn): (&SasConfig, &AdmmNnConfig),
        plan: &Plan,
        state: &mut AdmmState,
        after: impl FnMut(&IterationMetrics) -> Result<()>,
    ) -> Result<()> {
        match self {
            Method::SasAdmm => super::sas_admm::run_sas_admm(ctx, sas, state, after),
            Method::Admm => super::admm_nn::run_admm_nn(ctx, nn, plan, state, after),
            Method::Magnitude => Ok(()),
        }
    }
}
