// Workgroup sums for 256-thread kernels with subgroup operations (naga accepts them without an
// `enable subgroups;` directive, which it does not parse yet; the device needs the feature):
// each subgroup adds in registers (subgroupAdd), its first lane stores the subgroup's sum, and
// every thread adds those few sums in the same order: 2 barriers instead of 8, and the same
// result on every run. Assumes full subgroups laid out in order of local index (subgroup i =
// threads i*size ..); ops check that once per device (reduce.subgroup_check) first.
// Every thread of the workgroup must call these (they contain barriers); all get the total.

var<workgroup> sum_slots: array<vec2<f32>, WG>;

fn workgroup_sum2(v: vec2<f32>, lid: u32) -> vec2<f32> {
    let size = subgroupAdd(1u);
    let s = subgroupAdd(v);
    if (lid % size == 0u) { sum_slots[lid / size] = s; }
    workgroupBarrier();
    var total = vec2<f32>(0.0);
    let subgroups = WG / size;
    for (var i = 0u; i < subgroups; i++) { total += sum_slots[i]; }
    workgroupBarrier(); // the slots may be written again right after
    return total;
}

fn workgroup_sum(v: f32, lid: u32) -> f32 {
    return workgroup_sum2(vec2<f32>(v, 0.0), lid).x;
}
