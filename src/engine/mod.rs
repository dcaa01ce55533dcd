//! The engine: a tensor type with reverse-mode autograd whose every kernel is a WGSL compute
//! shader run through wgpu, and nothing about pruning. Bottom up: `gpu` (the only module that
//! names wgpu: adapter choice, buffer pool, kernel cache, command recorder) → `tensor` +
//! `autograd` → `ops` (one file per op family, each with its shader under `shaders/`) and `tune`
//! (the kernel tuner `ops` asks for GEMM and convolution plans). It depends on nothing above it
//! but the crate's error type; the application (`nn`, `models`, `data`, `train`, `prune`, the
//! command line) and the tools (`bench`, `reference`) build on it.

pub mod autograd;
pub mod gpu;
pub mod ops;
pub mod tensor;
pub mod tune;
