//! sasprune: pruning convolutional networks with SAS-ADMM on any GPU through wgpu.
//!
//! Layers, bottom up: `gpu` (the only module that names wgpu) → `tensor` + `autograd` → `ops`
//! (one file per op family, each with its WGSL shader) → `nn` (parameter arenas, layers) →
//! `models` → training, checkpoints, pruning. `reference` holds the naive f64 CPU
//! implementations that tests hold the GPU kernels to.

pub mod autograd;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod gpu;
pub mod models;
pub mod nn;
pub mod ops;
pub mod preflight;
pub mod prune;
pub mod reference;
pub mod run_dir;
pub mod tensor;
pub mod time_limit;
pub mod train;
pub mod tune;

pub use error::{Error, Result};
pub use tensor::Tensor;
