//! The pruning methods: SAS-ADMM (the paper's), ADMM-NN and one-shot magnitude pruning. A method
//! is a [`PruningMethod`]: its name, whether it has an ADMM phase, what that phase costs and how
//! it runs. The pipeline, `compare`, the report and resume ask a [`Method`] these questions and
//! nothing else, so adding a method means its own file (a type implementing the trait) and one
//! entry in [`Method::ALL`] (`tests/pipeline.rs` runs a toy method of its own through the
//! pipeline that way). The command line accepts exactly the names in `ALL`: an unknown method is
//! refused by the parser, never a fallback.

use super::admm::{AdmmNnConfig, AdmmState, IterationMetrics, PhaseContext, SasConfig};
use super::rate::Plan;
use crate::Result;

/// The ADMM settings the command line gives (each method reads its own).
#[derive(Clone, Copy)]
pub struct Settings<'a> {
    pub sas: &'a SasConfig,
    pub admm: &'a AdmmNnConfig,
}

/// What the pipeline asks of a pruning method.
pub trait PruningMethod: Sync {
    /// Its `--method` value, also the name of its run directories and rows.
    fn name(&self) -> &'static str;

    /// One line for `--help`.
    fn about(&self) -> &'static str;

    /// Other names `--method` accepts for it.
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether it has an ADMM phase (without one the pipeline goes from the dense start to hard
    /// pruning).
    fn has_admm_phase(&self) -> bool;

    /// (minibatch gradients, images per minibatch) of its ADMM phase; (0, 0) without one.
    fn admm_budget(&self, settings: Settings) -> (usize, usize);

    /// Runs its ADMM phase from `state` (a fresh start or a saved one) to the end, calling
    /// `after` with each outer iteration's metrics; leaves the phase's weights in the network.
    fn run_admm_phase(
        &self,
        ctx: PhaseContext<'_>,
        settings: Settings,
        plan: &Plan,
        state: &mut AdmmState,
        after: &mut dyn FnMut(&IterationMetrics) -> Result<()>,
    ) -> Result<()>;
}

/// A pruning method, as `--method` names it.
#[derive(Clone, Copy)]
pub struct Method(&'static dyn PruningMethod);

impl Method {
    pub const SAS_ADMM: Method = Method(&super::sas_admm::SasAdmm);
    pub const ADMM: Method = Method(&super::admm_nn::AdmmNn);
    pub const MAGNITUDE: Method = Method(&Magnitude);

    /// Every method the command line offers, in `--help`'s order: one entry per method.
    pub const ALL: [Method; 3] = [Method::SAS_ADMM, Method::ADMM, Method::MAGNITUDE];

    /// A method of the caller's own (the command line offers only [`Method::ALL`]).
    pub const fn new(method: &'static dyn PruningMethod) -> Method {
        Method(method)
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    pub fn has_admm_phase(self) -> bool {
        self.0.has_admm_phase()
    }

    pub fn admm_budget(self, sas: &SasConfig, admm: &AdmmNnConfig) -> (usize, usize) {
        self.0.admm_budget(Settings { sas, admm })
    }

    /// Runs the method's ADMM phase (see [`PruningMethod::run_admm_phase`]).
    pub fn run_admm_phase(
        self,
        ctx: PhaseContext<'_>,
        (sas, admm): (&SasConfig, &AdmmNnConfig),
        plan: &Plan,
        state: &mut AdmmState,
        mut after: impl FnMut(&IterationMetrics) -> Result<()>,
    ) -> Result<()> {
        self.0.run_admm_phase(ctx, Settings { sas, admm }, plan, state, &mut after)
    }
}

impl PartialEq for Method {
    fn eq(&self, other: &Method) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Method {}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `--method` and `compare --methods` take the names (and aliases) of [`Method::ALL`].
impl clap::ValueEnum for Method {
    fn value_variants<'a>() -> &'a [Self] {
        &Method::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(
            clap::builder::PossibleValue::new(self.name())
                .help(self.0.about())
                .aliases(self.0.aliases().iter().copied()),
        )
    }
}

/// Recorded by name (run records).
impl serde::Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Method, D::Error> {
        let name = String::deserialize(d)?;
        Method::ALL.into_iter().find(|m| m.name() == name || m.0.aliases().contains(&name.as_str())).ok_or_else(|| {
            let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
            serde::de::Error::custom(format!("unknown method '{name}' (this version has {})", names.join(", ")))
        })
    }
}

/// One-shot magnitude pruning: no ADMM phase; hard pruning keeps the largest weights of the
/// dense start.
pub struct Magnitude;

impl PruningMethod for Magnitude {
    fn name(&self) -> &'static str {
        "magnitude"
    }

    fn about(&self) -> &'static str {
        "one-shot magnitude pruning (no ADMM phase)"
    }

    fn has_admm_phase(&self) -> bool {
        false
    }

    fn admm_budget(&self, _: Settings) -> (usize, usize) {
        (0, 0)
    }

    fn run_admm_phase(
        &self,
        _: PhaseContext<'_>,
        _: Settings,
        _: &Plan,
        _: &mut AdmmState,
        _: &mut dyn FnMut(&IterationMetrics) -> Result<()>,
    ) -> Result<()> {
        Ok(())
    }
}
