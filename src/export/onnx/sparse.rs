//! `--sparse`: a pruned weight stored as its non-zero values plus a bitmask of where they are,
//! and rebuilt by a few standard operators at load time (runtimes fold the decoder into a
//! constant, so inference pays nothing). ONNX's own `sparse_initializer` needs an int64 index
//! per non-zero (12 bytes per kept weight: 2.2x smaller at 6.6x pruning, and not every runtime
//! reads it); values plus one bit per weight take 4·nnz + n/8 bytes, about the pruning rate
//! smaller, in operators every runtime has (opset 13).
//!
//! Stored for weight `w` with n elements, nnz of them non-zero:
//! - `w.values`: f32 [max(nnz, 1)], the non-zeros in row-major order (one 0 when there are none,
//!   so the gather below always has something to read);
//! - `w.mask`: u8 [ceil(n / 8)], bit j (least significant first) of byte i set when element
//!   8i + j is non-zero.
//!
//! Decoded as: bits = (mask[:, None] / [1, 2, 4, ..., 128]) mod 2, flattened and cut to n;
//! position = cumsum(bits) − 1 (clamped at 0); w = where(bits, values[position], 0), reshaped.

use super::graph::{int, Data, Graph};
use super::proto::data_type;

/// Bytes a weight of `n` elements with `nonzero` non-zeros takes in the compact form.
pub(super) fn compact_bytes(n: usize, nonzero: usize) -> u64 {
    4 * nonzero.max(1) as u64 + n.div_ceil(8) as u64
}

/// Whether the compact form is smaller than the dense one (4 bytes per element).
pub(super) fn smaller(n: usize, nonzero: usize) -> bool {
    compact_bytes(n, nonzero) < 4 * n as u64
}

/// Adds `name`'s values and mask as constants of `g` and the nodes that rebuild it under its own
/// name, with shape `dims`; returns the bytes stored.
pub(super) fn encode(g: &mut Graph, name: &str, dims: &[i64], weight: &[f32]) -> u64 {
    let n = weight.len();
    let mut values: Vec<f32> = weight.iter().copied().filter(|v| *v != 0.0).collect();
    let nonzero = values.len();
    if values.is_empty() {
        values.push(0.0);
    }
    let mut mask = vec![0u8; n.div_ceil(8)];
    for (i, v) in weight.iter().enumerate() {
        if *v != 0.0 {
            mask[i / 8] |= 1 << (i % 8);
        }
    }
    let values = g.constant(&format!("{name}.values"), vec![values.len() as i64], Data::F32(values), false);
    let mask = g.constant(&format!("{name}.mask"), vec![mask.len() as i64], Data::U8(mask), false);
    decoder(g, name, dims, n, &values, &mask);
    compact_bytes(n, nonzero)
}

/// The nodes that turn `values` and `mask` back into the dense weight `name` [dims] of n
/// elements.
fn decoder(g: &mut Graph, name: &str, dims: &[i64], n: usize, values: &str, mask: &str) {
    let powers = g.constant("sparse.bit_values", vec![8], Data::I32((0..8).map(|b| 1 << b).collect()), false);
    let two = g.constant("sparse.two", vec![], Data::I32(vec![2]), false);
    let one = g.constant("sparse.one", vec![], Data::I32(vec![1]), false);
    let zero = g.constant("sparse.zero", vec![], Data::I32(vec![0]), false);
    let zero_f = g.constant("sparse.zero_f32", vec![], Data::F32(vec![0.0]), false);
    let axis = g.constant("sparse.axis", vec![], Data::I64(vec![0]), false);
    let axes_1 = g.const_i64(&[1]);
    let flat = g.const_i64(&[-1]);
    let (start, end, slice_axis) = (g.const_i64(&[0]), g.const_i64(&[n as i64]), g.const_i64(&[0]));
    let shape = g.const_i64(dims);

    let bytes = g.node("Cast", &[mask], vec![int("to", data_type::INT32 as i64)]);
    let column = g.node("Unsqueeze", &[&bytes, &axes_1], vec![]);
    let shifted = g.node("Div", &[&column, &powers], vec![]);
    let bits = g.node("Mod", &[&shifted, &two], vec![]);
    let bits = g.node("Reshape", &[&bits, &flat], vec![]);
    let bits = g.node("Slice", &[&bits, &start, &end, &slice_axis], vec![]);
    // int32 throughout (a layer has fewer than 2^31 weights): some runtimes treat int64
    // tensors as shapes during analysis, and a cumulative sum of shapes is not defined there
    let count = g.node("CumSum", &[&bits, &axis], vec![]);
    let position = g.node("Sub", &[&count, &one], vec![]);
    let position = g.node("Max", &[&position, &zero], vec![]);
    let gathered = g.node("Gather", &[values, &position], vec![int("axis", 0)]);
    let keep = g.node("Cast", &[&bits], vec![int("to", data_type::BOOL as i64)]);
    let dense = g.node("Where", &[&keep, &gathered, &zero_f], vec![]);
    let rebuilt = g.node("Reshape", &[&dense, &shape], vec![]);
    g.rename_output(&rebuilt, name);
}
