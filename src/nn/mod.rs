//! Parameters and layers. A model registers every parameter and buffer by its PyTorch name in
//! a [`ParamStore`]; `materialize` then lays them out in arenas (one device buffer each for
//! parameters, gradients, momentum and buffers). The prunable weights (conv and fc weights)
//! come first in the parameter arena, so pruning kernels run over one contiguous range, and the
//! optimizer is one launch over the whole arena.

mod layers;
mod store;

pub use layers::{BatchNorm2d, Conv2d, Linear, LinearInit};
pub use store::{Entry, ParamId, ParamStore, Role, StateDict};
