//! Weight pruning: SAS-ADMM and the baselines (ADMM-NN, one-shot magnitude pruning), hard
//! pruning to per-layer percentages, masked retraining, and the run's report.

pub mod admm;
pub mod admm_nn;
pub mod compare;
pub mod method;
pub mod paper_table;
pub mod pipeline;
pub mod rate;
pub mod report;
pub mod sas_admm;
pub mod structure;
