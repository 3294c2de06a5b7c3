// Workgroup reductions with subgroup shuffles: a shuffle-down tree inside each
// subgroup, then subgroup results merged in subgroup order through workgroup
// memory. The order is fixed for a given subgroup size, so results are
// bit-identical run to run on one device.

var<private> SG_LANE: u32;
var<private> SG_SIZE: u32;
var<private> SG_ID: u32;
var<private> SG_COUNT: u32;

var<workgroup> red_m: array<Mom, 256>;
var<workgroup> red_f: array<f32, 256>;

fn wg_reduce_mom(lid: u32, m: Mom) -> Mom {
    var r = m;
    for (var off = SG_SIZE >> 1u; off > 0u; off = off >> 1u) {
        let o = Mom(
            subgroupShuffleDown(r.n, off),
            subgroupShuffleDown(r.mean, off),
            subgroupShuffleDown(r.m2, off),
            subgroupShuffleDown(r.mn, off),
            subgroupShuffleDown(r.mx, off),
            subgroupShuffleDown(r.dead, off),
            subgroupShuffleDown(r.nf, off),
        );
        if (SG_LANE + off < SG_SIZE) {
            r = mom_merge(r, o);
        }
    }
    workgroupBarrier();
    if (SG_LANE == 0u) {
        red_m[SG_ID] = r;
    }
    workgroupBarrier();
    var acc = red_m[0];
    for (var i = 1u; i < SG_COUNT; i = i + 1u) {
        acc = mom_merge(acc, red_m[i]);
    }
    return acc;
}

fn wg_reduce_sum(lid: u32, v: f32) -> f32 {
    var r = v;
    for (var off = SG_SIZE >> 1u; off > 0u; off = off >> 1u) {
        let o = subgroupShuffleDown(r, off);
        if (SG_LANE + off < SG_SIZE) {
            r = r + o;
        }
    }
    workgroupBarrier();
    if (SG_LANE == 0u) {
        red_f[SG_ID] = r;
    }
    workgroupBarrier();
    var acc = red_f[0];
    for (var i = 1u; i < SG_COUNT; i = i + 1u) {
        acc = acc + red_f[i];
    }
    return acc;
}
