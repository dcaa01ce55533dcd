//! Structured pruning kernels over the vector of prunable weights (shaders/group.wgsl): the
//! L2 norms of contiguous groups (a conv's output filters, an fc weight's rows), the group soft
//! threshold, and the 2:4 selection of layers. None is differentiated. Vectors beyond one
//! storage binding are bound in pieces; a group or layer may span several.

use super::{elementwise, flat_view, kernel, launch, parts_by_piece, words, PieceParts, WG};
use crate::gpu::{self, Kernel};
use crate::{Error, Result, Tensor};

static SUM_SQUARES: Kernel = kernel!("group.sum_squares", "group.wgsl", "sum_squares");
static SHRINK: Kernel = kernel!("group.shrink", "group.wgsl", "shrink");
static SCALE: Kernel = kernel!("group.scale", "group.wgsl", "scale");
static TWO_FOUR: Kernel = kernel!("group.two_four", "group.wgsl", "two_four");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    parts: u32,
    /// two_four: 0 writes the soft-thresholded kept values, 1 the 0/1 mask
    mode: u32,
    _pad: [u32; 2],
    tau: f32,
    _pad2: [f32; 3],
}

fn params(parts: u32, mode: u32, tau: f32) -> Params {
    Params { parts, mode, _pad: [0; 2], tau, _pad2: [0.0; 3] }
}

/// Checks that `ranges` (offset, len) lie inside a vector of `total` in increasing order
/// without overlapping.
fn check_ranges(what: &'static str, total: usize, ranges: &[(usize, usize)]) -> Result<()> {
    let mut end = 0;
    for &(offset, len) in ranges {
        if offset < end || offset + len > total {
            return Err(Error::shape(
                what,
                format!("range ({offset}, {len}) overlaps the one before it or leaves a vector of {total}"),
            ));
        }
        end = offset + len;
    }
    Ok(())
}

/// Contiguous groups of a vector of `total` elements: group g is `ranges[g]` = (offset, len),
/// in increasing order, not overlapping (elements outside every group are left alone).
pub struct Groups {
    total: usize,
    count: usize,
    /// Every group, offsets absolute (for the one-thread-per-group kernel).
    table: Tensor,
    pieces: Vec<PieceParts>,
}

impl Groups {
    pub fn new(total: usize, ranges: &[(usize, usize)]) -> Result<Groups> {
        check_ranges("groups", total, ranges)?;
        let rows: Vec<u32> = (ranges.iter().enumerate())
            .flat_map(|(id, &(offset, len))| [offset as u32, len as u32, 0, id as u32])
            .collect();
        let with_aux: Vec<(usize, usize, u32)> = ranges.iter().map(|&(o, l)| (o, l, 0)).collect();
        Ok(Groups {
            total,
            count: ranges.len(),
            table: words(if rows.is_empty() { &[0; 4] } else { &rows })?,
            pieces: parts_by_piece(total, &with_aux)?,
        })
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn check(&self, what: &'static str, x: &Tensor, per_group: &[&Tensor]) -> Result<()> {
        if x.numel() != self.total {
            return Err(Error::shape(what, format!("a vector of {} for groups over {}", x.numel(), self.total)));
        }
        if let Some(t) = per_group.iter().find(|t| t.numel() != self.count) {
            return Err(Error::shape(what, format!("{} values for {} groups", t.numel(), self.count)));
        }
        Ok(())
    }

    /// `out[g] = Σ x² over group g` (0 for an empty group).
    pub fn sum_squares(&self, x: &Tensor, out: &Tensor) -> Result<()> {
        self.check("group sum_squares", x, &[out])?;
        if self.count == 0 {
            return Ok(());
        }
        elementwise::fill(out, 0.0)?;
        for piece in &self.pieces {
            let bound = [&piece.table, &flat_view(x, piece.start, piece.len)?, out];
            launch(&SUM_SQUARES, &params(piece.count, 0, 0.0), &bound, gpu::grid(piece.count))?;
        }
        Ok(())
    }

    /// The group soft threshold's factors from `sumsq` (as [`Groups::sum_squares`] writes it):
    /// `factor[g] = max(0, 1 − τ·√|g| / ‖v_g‖₂)`, 0 for a zero group.
    pub fn shrink_factors(&self, sumsq: &Tensor, tau: f32, factor: &Tensor) -> Result<()> {
        if let Some(t) = [sumsq, factor].into_iter().find(|t| t.numel() != self.count) {
            return Err(Error::shape("group shrink", format!("{} values for {} groups", t.numel(), self.count)));
        }
        if self.count == 0 {
            return Ok(());
        }
        let n = self.count as u32;
        launch(&SHRINK, &params(n, 0, tau), &[&self.table, sumsq, factor], gpu::grid(n.div_ceil(WG as u32)))
    }

    /// `x *= factor[g]` over each group g, in place (elements outside every group unchanged).
    pub fn scale(&self, x: &Tensor, factor: &Tensor) -> Result<()> {
        self.check("group scale", x, &[factor])?;
        for piece in &self.pieces {
            let bound = [&piece.table, factor, &flat_view(x, piece.start, piece.len)?];
            launch(&SCALE, &params(piece.count, 0, 0.0), &bound, gpu::grid(piece.count))?;
        }
        Ok(())
    }

    /// The prox of τ·Σ_g √|g|·‖x_g‖₂ in place: every group scaled by its shrink factor.
    /// `sumsq` and `factor` are scratch vectors of one value per group.
    pub fn soft_threshold(&self, x: &Tensor, tau: f32, sumsq: &Tensor, factor: &Tensor) -> Result<()> {
        self.sum_squares(x, sumsq)?;
        self.shrink_factors(sumsq, tau, factor)?;
        self.scale(x, factor)
    }
}

/// The 2:4 layers of a vector of `total` elements: ranges (offset, len), both multiples of 4,
/// whose quads (4 consecutive elements) may keep at most 2 non-zeros.
pub struct Quads {
    total: usize,
    pieces: Vec<PieceParts>,
}

impl Quads {
    pub fn new(total: usize, layers: &[(usize, usize)]) -> Result<Quads> {
        check_ranges("2:4 layers", total, layers)?;
        if let Some(&(offset, len)) = layers.iter().find(|&&(o, l)| o % 4 != 0 || l % 4 != 0) {
            return Err(Error::shape("2:4 layers", format!("range ({offset}, {len}) is not in whole quads")));
        }
        let with_aux: Vec<(usize, usize, u32)> = layers.iter().map(|&(o, l)| (o, l, 0)).collect();
        let pieces = parts_by_piece(total, &with_aux)?;
        // pieces start at multiples of the storage alignment; a quad must not straddle two
        if pieces.iter().any(|p| p.start % 4 != 0) {
            return Err(Error::shape("2:4 layers", "this device's storage pieces split quads"));
        }
        Ok(Quads { total, pieces })
    }

    fn run(&self, x: &Tensor, out: &Tensor, mode: u32, tau: f32) -> Result<()> {
        super::same_shape("two_four", x, out)?;
        if x.numel() != self.total {
            return Err(Error::shape("two_four", format!("a vector of {} for layers over {}", x.numel(), self.total)));
        }
        for piece in &self.pieces {
            let chunks = (piece.len / 4).div_ceil(WG * 4).clamp(1, 1024) as u32;
            let bound =
                [&piece.table, &flat_view(x, piece.start, piece.len)?, &flat_view(out, piece.start, piece.len)?];
            launch(&TWO_FOUR, &params(piece.count, mode, tau), &bound, [chunks, piece.count, 1])?;
        }
        Ok(())
    }

    /// Over the layers' quads: the 2 largest |x| kept and soft-thresholded by τ, the other 2 set
    /// to 0 (SAS-ADMM's Z-step under 2:4). Elements outside the layers are left as they are.
    pub fn soft_threshold(&self, x: &Tensor, out: &Tensor, tau: f32) -> Result<()> {
        self.run(x, out, 0, tau)
    }

    /// Over the layers' quads: 1 for the 2 largest |x| (a tie goes to the lower position), 0 for
    /// the other 2. Elements outside the layers are left as they are.
    pub fn mask(&self, x: &Tensor, out: &Tensor) -> Result<()> {
        self.run(x, out, 1, 0.0)
    }
}
