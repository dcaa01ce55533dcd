//! sasprune: pruning convolutional networks with SAS-ADMM on any GPU through wgpu.
//!
//! Three layers (README, "Layout"):
//! - the engine (`engine/`): `gpu` (the only module that names wgpu) → `tensor` + `autograd` →
//!   `ops` (one file per op family, each with its WGSL shader) and `tune`; it depends on nothing
//!   but `error` and `duration`, which sit below it. Its modules are re-exported here
//!   (`sasprune::gpu`, `sasprune::Tensor`).
//! - the application: `nn` (parameter arenas, layers) → `models` (one table of model specs) →
//!   `data`, `train`, `checkpoint`, `run_dir`, `preflight`, `time_limit` → `prune` (methods,
//!   pipeline, compare, reports).
//! - tools: `bench` (the cross-vendor benchmark) and `reference` (naive f64 CPU implementations
//!   the tests hold the GPU kernels to), clients of both.

// first: its outln!/errln! macros are used everywhere below
#[macro_use]
pub mod logging;

pub mod engine;
pub use engine::{autograd, gpu, ops, tensor, tune};

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod duration;
pub mod error;
pub mod export;
pub mod models;
pub mod nn;
pub mod preflight;
pub mod prune;
pub mod reference;
pub mod run_dir;
pub mod time_limit;
pub mod train;

pub use error::{Error, Result};
pub use tensor::Tensor;
