//! Writing models for other tools: ONNX for deployment runtimes.

pub mod onnx;
