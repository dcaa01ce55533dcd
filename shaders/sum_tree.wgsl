// Workgroup sums for 256-thread kernels, without subgroup operations (every adapter): halving
// in shared memory, 8 barriers. The subgroup variant (sum_subgroup.wgsl) has the same functions.
// Every thread of the workgroup must call them (they contain barriers); all get the total.

var<workgroup> sum_slots: array<vec2<f32>, WG>;

fn workgroup_sum2(v: vec2<f32>, lid: u32) -> vec2<f32> {
    sum_slots[lid] = v;
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (lid < s) { sum_slots[lid] += sum_slots[lid + s]; }
    }
    workgroupBarrier();
    let total = sum_slots[0];
    workgroupBarrier(); // the slots may be written again right after
    return total;
}

fn workgroup_sum(v: f32, lid: u32) -> f32 {
    return workgroup_sum2(vec2<f32>(v, 0.0), lid).x;
}
