//! sasprune: pruning convolutional networks with SAS-ADMM on any GPU through wgpu.
//!
//! Layers, bottom up: `gpu` (the only module that names wgpu) → `tensor` + `autograd` → `ops`
//! (one file per op family, each with its WGSL shader) → `nn`/`optim` → models, training, pruning.
//! `reference` holds the naive f64 CPU implementations that tests hold the GPU kernels to.

pub mod autograd;
pub mod bench;
pub mod error;
pub mod gpu;
pub mod ops;
pub mod reference;
pub mod tensor;

pub use error::{Error, Result};
pub use tensor::Tensor;
