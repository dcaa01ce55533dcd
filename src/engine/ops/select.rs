//! Per-layer magnitude masks by GPU selection (shaders/select.wgsl): for each layer, the k
//! smallest |x| get 0 and the rest 1, exactly k zeros per layer, ties broken by position.

use super::{flat_view, kernel, launch, parts_by_piece, words};
use crate::gpu::Kernel;
use crate::{Error, Result, Tensor};

static INIT: Kernel = kernel!("select.init", "select.wgsl", "init");
static COUNT: Kernel = kernel!("select.count", "select.wgsl", "count");
static UPDATE: Kernel = kernel!("select.update", "select.wgsl", "update");
static SET_QUOTA: Kernel = kernel!("select.set_quota", "select.wgsl", "set_quota");
static MASK: Kernel = kernel!("select.write_mask", "select.wgsl", "write_mask");

/// One layer's place in the vector and how many of its elements to zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerSelect {
    pub offset: usize,
    pub len: usize,
    pub k: usize,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    layers: u32,
    /// count: 0 counts key <= mid, 1 counts key < the final key
    mode: u32,
    _pad: [u32; 2],
}

/// Writes into `mask` (same length as `x`) 0 for the `k` smallest-magnitude elements of each
/// layer's range and 1 elsewhere in that range; elements outside every range are left as they
/// are. Ranges must not overlap. A vector beyond one storage binding is read in pieces (a layer
/// may span several), with exactly the mask the whole vector would get.
pub fn magnitude_mask(x: &Tensor, layers: &[LayerSelect], mask: &Tensor) -> Result<()> {
    super::same_shape("magnitude_mask", x, mask)?;
    if layers.is_empty() {
        return Ok(());
    }
    if let Some(l) = layers.iter().find(|l| l.k > l.len || l.offset + l.len > x.numel()) {
        return Err(Error::shape("magnitude_mask", format!("layer {l:?} does not fit a vector of {}", x.numel())));
    }
    // The pieces x is bound in, each with the table of the layer parts it holds.
    let ranges: Vec<(usize, usize, u32)> = layers.iter().map(|l| (l.offset, l.len, l.k as u32)).collect();
    let pieces = parts_by_piece(x.numel(), &ranges)?;
    let table: Vec<u32> =
        layers.iter().enumerate().flat_map(|(id, l)| [l.offset as u32, l.len as u32, l.k as u32, id as u32]).collect();
    let table = words(&table)?;
    let state = Tensor::uninit(&[4 * layers.len()])?;
    let counts = Tensor::uninit(&[layers.len()])?;
    let n = layers.len() as u32;
    let p = Params { layers: n, mode: 0, _pad: [0; 2] };
    let small = [n.div_ceil(64), 1, 1];
    launch(&INIT, &p, &[&state, &counts], small)?;
    let longest = layers.iter().map(|l| l.len).max().unwrap_or(1);
    let chunks = longest.div_ceil(256 * 16).clamp(1, 1024) as u32;
    // Counts over every piece, then one update: 31 halvings take [0, 0x7f800000] to one key.
    let count_pieces = |mode: u32| -> Result<()> {
        for piece in &pieces {
            let params = Params { layers: piece.count, mode, _pad: [0; 2] };
            let bound = [&piece.table, &state, &counts, &flat_view(x, piece.start, piece.len)?];
            launch(&COUNT, &params, &bound, [chunks, piece.count, 1])?;
        }
        Ok(())
    };
    for _ in 0..31 {
        count_pieces(0)?;
        launch(&UPDATE, &p, &[&table, &state, &counts], small)?;
    }
    count_pieces(1)?;
    launch(&SET_QUOTA, &p, &[&table, &state, &counts], small)?;
    for piece in &pieces {
        let params = Params { layers: piece.count, mode: 0, _pad: [0; 2] };
        let bound =
            [&piece.table, &state, &flat_view(x, piece.start, piece.len)?, &flat_view(mask, piece.start, piece.len)?];
        launch(&MASK, &params, &bound, [piece.count.div_ceil(64), 1, 1])?;
    }
    Ok(())
}
