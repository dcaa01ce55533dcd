// Given to every shader (gpu::Kernel::wgsl), for kernels that fuse what an f16 store followed
// by a load would do between two ops, so that fused and separate ops give the same bits.
// v rounded to the nearest f16, as an f16 store rounds it (to nearest even, subnormals kept, as
// Mesa and NVIDIA convert; within f16's finite range, beyond which both overflow). Explicit,
// because compilers drop the round trip f32(f16(v)) (lavapipe does); quantizeToF16 alone may
// flush f16's subnormals (below 2^-14) to zero, so those are rounded here to their multiples of
// 2^-24 (round() ties to even).
fn round_to_f16(v: f32) -> f32 {
    if (abs(v) < 6.103515625e-5) { return round(v * 16777216.0) * 5.9604644775390625e-8; }
    return quantizeToF16(v);
}

// v as a store to an f16 (f16 = true) or f32 binding and a load back would give it.
fn as_stored(v: f32, f16: bool) -> f32 {
    return select(v, round_to_f16(v), f16);
}
