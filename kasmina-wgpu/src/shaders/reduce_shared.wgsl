// Workgroup reductions through workgroup memory: a binary tree over the 256
// invocations in a fixed order, so the result has the same bits every run.

var<workgroup> red_m: array<Mom, 256>;
var<workgroup> red_f: array<f32, 256>;

fn wg_reduce_mom(lid: u32, m: Mom) -> Mom {
    // The barrier first: the previous reduction's readers may still read slot 0.
    workgroupBarrier();
    red_m[lid] = m;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride >> 1u) {
        if (lid < stride) {
            red_m[lid] = mom_merge(red_m[lid], red_m[lid + stride]);
        }
        workgroupBarrier();
    }
    return red_m[0];
}

fn wg_reduce_sum(lid: u32, v: f32) -> f32 {
    workgroupBarrier();
    red_f[lid] = v;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride >> 1u) {
        if (lid < stride) {
            red_f[lid] = red_f[lid] + red_f[lid + stride];
        }
        workgroupBarrier();
    }
    return red_f[0];
}
