// Kasmina layer kernels (SPEC 5 and 7). Prepended at build time (see shaders.rs):
// one dtype file (raw_x, raw_g, ld_x, ld_g, dec, enc, st_word, EPU) and one
// reduction file (wg_reduce_mom, wg_reduce_sum). `/*SG_PARAMS*/` and
// `/*SG_INIT*/` become the subgroup built-ins in the subgroup variant.
//
// Layout: activations are row-major u32 words, EPU elements per word. A
// dispatch sees one slice of whole rows (bound at an offset), so element
// indices here are relative to the slice. A "tile" is one seed's chunk over
// `tile_rows` rows; a workgroup handles one tile: invocation `lid` owns the
// column unit `lid % ncp` (EPU adjacent columns) in rows `lane, lane + lanes, ...`.
// Statistics leave each tile as a partial (Welford in the per-seed shifted
// coordinates `x - K`) and are merged in tile order by `fwd_merge` with
// Chan's formula: no float atomics, the same bits every run.

struct Params {
    h: u32,
    s: u32,
    c: u32,
    cu: u32,
    row0: u32,
    rows: u32,
    tile_rows: u32,
    rb_base: u32,
    nrb_slice: u32,
    total_rb: u32,
    dead_eps_bits: u32,
    aligned: u32,
    nwords: u32,
    wg_x: u32,
    off_w: u32,
    off_p: u32,
    acc_off: u32,
    dw_off: u32,
    ds_off: u32,
    gc_off: u32,
    colsum_off: u32,
    part_off: u32,
    gpart_off: u32,
    colpart_off: u32,
    nelems: u32,
    tiles: u32,
    pad0: u32,
    pad1: u32,
}

// Per-tile telemetry partial: counts and Welford state of `x - K`.
struct Mom {
    n: u32,
    mean: f32,
    m2: f32,
    mn: f32,
    mx: f32,
    dead: u32,
    nf: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
// Seed table (8 words per seed), then weights [S, C], then softmax(weights) [S, C].
@group(0) @binding(1) var<storage, read> prm: array<u32>;
@group(0) @binding(2) var<storage, read> xbuf: array<u32>;
@group(0) @binding(3) var<storage, read> gbuf: array<u32>;
@group(0) @binding(4) var<storage, read_write> obuf: array<u32>;
// Accumulators (16 words per seed), gradients, column sums: kept across calls.
@group(0) @binding(5) var<storage, read_write> pers: array<u32>;
// Per-tile partials of the current call.
@group(0) @binding(6) var<storage, read_write> scr: array<u32>;

const WG: u32 = 256u;
// Rows loaded together per invocation in the aligned paths.
const UNROLL: u32 = 4u;
const ACC_WORDS: u32 = 16u;
const BIG: f32 = 3.0e38;

// Seed table fields.
const MODE_IDENTITY: u32 = 0u;
const MODE_BLEND: u32 = 1u;
const BT_RESIDUAL: u32 = 0u;
const BT_ATTENTION: u32 = 1u;
const BT_MLP: u32 = 2u;

struct Seed {
    mode: u32,
    bt: u32,
    a: f32,
    sc: f32,
    clamp: u32,
    lo: f32,
    hi: f32,
}

var<workgroup> col_red: array<f32, 1536>;
var<workgroup> fin_red: array<f32, 4>;

fn seed_of(s: u32) -> Seed {
    let b = s * 8u;
    return Seed(prm[b], prm[b + 1u], bitcast<f32>(prm[b + 2u]), bitcast<f32>(prm[b + 3u]), prm[b + 4u],
        bitcast<f32>(prm[b + 5u]), bitcast<f32>(prm[b + 6u]));
}

fn wt(s: u32, j: u32) -> f32 {
    return bitcast<f32>(prm[P.off_w + s * P.c + j]);
}

// Weight j of seed s, 0 where the chunk has fewer than j + 1 columns (CONV uses w0..w2).
fn wt_or0(s: u32, j: u32) -> f32 {
    if (j < P.c) {
        return wt(s, j);
    }
    return 0.0;
}

fn pr(s: u32, j: u32) -> f32 {
    return bitcast<f32>(prm[P.off_p + s * P.c + j]);
}

fn is_nonfinite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7F800000u) == 0x7F800000u;
}

// x at chunk column j (signed), 0 outside the chunk (CONV's causal padding).
fn x_at(base: u32, j: i32) -> f32 {
    if (j < 0 || u32(j) >= P.c) {
        return 0.0;
    }
    return ld_x(base + u32(j));
}

// The blueprint t_j (SPEC 4).
fn t_of(base: u32, s: u32, j: u32, sd: Seed) -> f32 {
    let x = ld_x(base + j);
    if (sd.bt == BT_RESIDUAL) {
        return x + wt(s, j) * sd.sc;
    }
    if (sd.bt == BT_ATTENTION) {
        return x * pr(s, j);
    }
    if (sd.bt == BT_MLP) {
        let v = x * wt(s, j);
        return select(0.0, v, v > 0.0) * sd.sc;
    }
    let ji = i32(j);
    return sd.sc * (wt(s, 0u) * x + wt_or0(s, 1u) * x_at(base, ji - 1) + wt_or0(s, 2u) * x_at(base, ji - 2));
}

// The unclamped output of a non-identity element.
fn y_raw(base: u32, s: u32, j: u32, sd: Seed) -> f32 {
    let t = t_of(base, s, j, sd);
    if (sd.mode == MODE_BLEND) {
        return (1.0 - sd.a) * ld_x(base + j) + sd.a * t;
    }
    return t;
}

// Whether strict mode clamps output column j (SPEC 5.3); false outside the chunk.
fn clamped(base: u32, s: u32, j: i32, sd: Seed) -> bool {
    if (sd.clamp == 0u || j < 0 || u32(j) >= P.c) {
        return false;
    }
    let y = y_raw(base, s, u32(j), sd);
    return y < sd.lo || y > sd.hi;
}

// Storage bits of output column j of the chunk starting at element `base`.
fn out_bits(base: u32, s: u32, j: u32, sd: Seed) -> u32 {
    if (sd.mode == MODE_IDENTITY) {
        return raw_x(base + j);
    }
    var y = y_raw(base, s, j, sd);
    if (sd.clamp != 0u) {
        // Comparisons, not min/max: a NaN stays NaN instead of snapping to a bound.
        if (y < sd.lo) {
            y = sd.lo;
        } else if (y > sd.hi) {
            y = sd.hi;
        }
    }
    return enc(y);
}

// The upstream gradient at column j with strict-mode masking, 0 outside the chunk.
fn g_eff(base: u32, s: u32, j: i32, sd: Seed) -> f32 {
    if (j < 0 || u32(j) >= P.c) {
        return 0.0;
    }
    if (clamped(base, s, j, sd)) {
        return 0.0;
    }
    return ld_g(base + u32(j));
}

// Storage bits of dx at column j (SPEC 7).
fn dx_bits(base: u32, s: u32, j: u32, sd: Seed) -> u32 {
    if (sd.mode == MODE_IDENTITY) {
        return raw_g(base + j);
    }
    let ji = i32(j);
    let g = g_eff(base, s, ji, sd);
    var inner: f32;
    if (sd.bt == BT_RESIDUAL) {
        inner = g;
    } else if (sd.bt == BT_ATTENTION) {
        inner = g * pr(s, j);
    } else if (sd.bt == BT_MLP) {
        let x = ld_x(base + j);
        let w = wt(s, j);
        inner = select(0.0, g * w * sd.sc, x * w > 0.0);
    } else {
        inner = sd.sc * (wt(s, 0u) * g + wt_or0(s, 1u) * g_eff(base, s, ji + 1, sd)
            + wt_or0(s, 2u) * g_eff(base, s, ji + 2, sd));
    }
    if (sd.mode == MODE_BLEND) {
        return enc((1.0 - sd.a) * g + sd.a * inner);
    }
    return enc(inner);
}

fn mom_empty() -> Mom {
    return Mom(0u, 0.0, 0.0, BIG, -BIG, 0u, 0u);
}

// Chan's parallel merge of (n, mean, m2) pairs; returns (mean, m2).
fn chan(na: f32, ma: f32, m2a: f32, nb: f32, mb: f32, m2b: f32) -> vec2<f32> {
    if (nb == 0.0) {
        return vec2<f32>(ma, m2a);
    }
    if (na == 0.0) {
        return vec2<f32>(mb, m2b);
    }
    let n = na + nb;
    let delta = mb - ma;
    return vec2<f32>(ma + delta * (nb / n), m2a + m2b + delta * delta * (na * (nb / n)));
}

fn mom_merge(a: Mom, b: Mom) -> Mom {
    let mm = chan(f32(a.n), a.mean, a.m2, f32(b.n), b.mean, b.m2);
    return Mom(a.n + b.n, mm.x, mm.y, min(a.mn, b.mn), max(a.mx, b.mx), a.dead + b.dead, a.nf + b.nf);
}

// Welford's update with one element, shifted by k; non-finite values only count.
fn mom_push(m: Mom, x: f32, k: f32, dead_eps: f32) -> Mom {
    var r = m;
    if (is_nonfinite(x)) {
        r.nf = r.nf + 1u;
        return r;
    }
    r.n = r.n + 1u;
    let d = x - k;
    let delta = d - r.mean;
    r.mean = r.mean + delta / f32(r.n);
    r.m2 = r.m2 + delta * (d - r.mean);
    r.mn = min(r.mn, x);
    r.mx = max(r.mx, x);
    if (abs(x) < dead_eps) {
        r.dead = r.dead + 1u;
    }
    return r;
}

// Linear workgroup index of a 2-D dispatch laid out P.wg_x workgroups per row.
fn tile_id(wid: vec3<u32>) -> u32 {
    return wid.x + wid.y * P.wg_x;
}

// Sets each seed's shift K once per accumulation period: the seed's first
// element of row 0 if finite, else 0. Bound with the first slice.
@compute @workgroup_size(256)
fn fwd_prep(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let s = tile_id(wid) * WG + lid;
    if (s >= P.s) {
        return;
    }
    let a = P.acc_off + s * ACC_WORDS;
    if (pers[a] != 0u) {
        return;
    }
    let x = ld_x(s * P.c);
    var k = 0.0;
    if (!is_nonfinite(x)) {
        k = x;
    }
    pers[a] = 1u;
    pers[a + 1u] = bitcast<u32>(k);
}

@compute @workgroup_size(256)
fn fwd_tile(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32> /*SG_PARAMS*/) {
    /*SG_INIT*/
    let tile = tile_id(wid);
    let live = tile < P.tiles;
    let s = tile % P.s;
    let rbl = tile / P.s;
    let ncp = min(P.cu, WG);
    let lanes = WG / ncp;
    let lane = lid / ncp;
    let cu_in = lid % ncp;
    let dead_eps = bitcast<f32>(P.dead_eps_bits);
    var m = mom_empty();
    if (live && lane < lanes) {
        let sd = seed_of(s);
        let k = bitcast<f32>(pers[P.acc_off + s * ACC_WORDS + 1u]);
        let r_begin = rbl * P.tile_rows;
        let r_end = min(r_begin + P.tile_rows, P.rows);
        for (var u = cu_in; u < P.cu; u = u + ncp) {
            let j0 = u * EPU;
            if (P.aligned == 1u) {
                // Chunks start on word boundaries: read whole words, UNROLL rows at a
                // time so several loads are in flight per invocation.
                for (var r = r_begin + lane; r < r_end; r = r + lanes * UNROLL) {
                    var wv: array<u32, UNROLL>;
                    for (var q = 0u; q < UNROLL; q = q + 1u) {
                        let rr = r + q * lanes;
                        if (rr < r_end) {
                            wv[q] = xbuf[(rr * P.h + s * P.c + j0) / EPU];
                        }
                    }
                    // Telemetry of the loaded words as one batch (two passes over
                    // registers, then one Chan merge): a division per batch, not per element.
                    var bn = 0u;
                    var bs = 0.0;
                    for (var q = 0u; q < UNROLL; q = q + 1u) {
                        if (r + q * lanes < r_end) {
                            for (var e = 0u; e < EPU; e = e + 1u) {
                                let v = dec_word(wv[q], e);
                                if (is_nonfinite(v)) {
                                    m.nf = m.nf + 1u;
                                } else {
                                    bn = bn + 1u;
                                    bs = bs + (v - k);
                                    m.mn = min(m.mn, v);
                                    m.mx = max(m.mx, v);
                                    if (abs(v) < dead_eps) {
                                        m.dead = m.dead + 1u;
                                    }
                                }
                            }
                        }
                    }
                    if (bn > 0u) {
                        let bmean = bs / f32(bn);
                        var bm2 = 0.0;
                        for (var q = 0u; q < UNROLL; q = q + 1u) {
                            if (r + q * lanes < r_end) {
                                for (var e = 0u; e < EPU; e = e + 1u) {
                                    let v = dec_word(wv[q], e);
                                    if (!is_nonfinite(v)) {
                                        let d = (v - k) - bmean;
                                        bm2 = bm2 + d * d;
                                    }
                                }
                            }
                        }
                        let mm = chan(f32(m.n), m.mean, m.m2, f32(bn), bmean, bm2);
                        m.n = m.n + bn;
                        m.mean = mm.x;
                        m.m2 = mm.y;
                    }
                    for (var q = 0u; q < UNROLL; q = q + 1u) {
                        let rr = r + q * lanes;
                        if (rr < r_end) {
                            let base = rr * P.h + s * P.c;
                            let w = (base + j0) / EPU;
                            if (sd.mode == MODE_IDENTITY) {
                                obuf[w] = wv[q];
                            } else {
                                let lo = out_bits(base, s, j0, sd);
                                var hi = 0u;
                                if (EPU == 2u) {
                                    hi = out_bits(base, s, j0 + 1u, sd);
                                }
                                st_word(w, lo, hi);
                            }
                        }
                    }
                }
            } else {
                // 16-bit with odd C: telemetry only, element by element (fwd_flat writes y).
                for (var r = r_begin + lane; r < r_end; r = r + lanes) {
                    let base = r * P.h + s * P.c;
                    for (var q = 0u; q < EPU; q = q + 1u) {
                        if (j0 + q < P.c) {
                            m = mom_push(m, ld_x(base + j0 + q), k, dead_eps);
                        }
                    }
                }
            }
        }
    }
    let red = wg_reduce_mom(lid, m);
    if (live && lid == 0u) {
        let o = P.part_off + ((P.rb_base + rbl) * P.s + s) * 8u;
        scr[o] = red.n;
        scr[o + 1u] = bitcast<u32>(red.mean);
        scr[o + 2u] = bitcast<u32>(red.m2);
        scr[o + 3u] = bitcast<u32>(red.mn);
        scr[o + 4u] = bitcast<u32>(red.mx);
        scr[o + 5u] = red.dead;
        scr[o + 6u] = red.nf;
        scr[o + 7u] = 0u;
    }
}

// The output element e of the slice (any row, any seed), for the flat kernels.
fn elem_base(e: u32) -> vec3<u32> {
    let r = e / P.h;
    let col = e - r * P.h;
    let s = col / P.c;
    let j = col - s * P.c;
    return vec3<u32>(r * P.h + s * P.c, s, j);
}

// Outputs word by word, for 16-bit layouts where a word can straddle two
// seeds (odd C): every word is written by exactly one invocation.
@compute @workgroup_size(256)
fn fwd_flat(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let w = tile_id(wid) * WG + lid;
    if (w >= P.nwords) {
        return;
    }
    var bits = array<u32, 2>(0u, 0u);
    for (var q = 0u; q < EPU; q = q + 1u) {
        let e = w * EPU + q;
        if (e < P.nelems) {
            let b = elem_base(e);
            bits[q] = out_bits(b.x, b.y, b.z, seed_of(b.y));
        }
    }
    st_word(w, bits[0], bits[1]);
}

// Merges this call's tile partials into the accumulators, in tile order.
@compute @workgroup_size(256)
fn fwd_merge(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let s = tile_id(wid) * WG + lid;
    if (s >= P.s) {
        return;
    }
    let a = P.acc_off + s * ACC_WORDS;
    var lo = pers[a + 2u];
    var hi = pers[a + 3u];
    var mean = bitcast<f32>(pers[a + 4u]);
    var m2 = bitcast<f32>(pers[a + 5u]);
    var mn = bitcast<f32>(pers[a + 6u]);
    var mx = bitcast<f32>(pers[a + 7u]);
    var dlo = pers[a + 8u];
    var dhi = pers[a + 9u];
    var nlo = pers[a + 10u];
    var nhi = pers[a + 11u];
    for (var rb = 0u; rb < P.total_rb; rb = rb + 1u) {
        let o = P.part_off + (rb * P.s + s) * 8u;
        let n = scr[o];
        if (n > 0u) {
            let na = f32(hi) * 4294967296.0 + f32(lo);
            let mm = chan(na, mean, m2, f32(n), bitcast<f32>(scr[o + 1u]), bitcast<f32>(scr[o + 2u]));
            mean = mm.x;
            m2 = mm.y;
            let nl = lo + n;
            hi = hi + select(0u, 1u, nl < lo);
            lo = nl;
            mn = min(mn, bitcast<f32>(scr[o + 3u]));
            mx = max(mx, bitcast<f32>(scr[o + 4u]));
        }
        let d = scr[o + 5u];
        let dl = dlo + d;
        dhi = dhi + select(0u, 1u, dl < dlo);
        dlo = dl;
        let f = scr[o + 6u];
        let fl = nlo + f;
        nhi = nhi + select(0u, 1u, fl < nlo);
        nlo = fl;
    }
    pers[a + 2u] = lo;
    pers[a + 3u] = hi;
    pers[a + 4u] = bitcast<u32>(mean);
    pers[a + 5u] = bitcast<u32>(m2);
    pers[a + 6u] = bitcast<u32>(mn);
    pers[a + 7u] = bitcast<u32>(mx);
    pers[a + 8u] = dlo;
    pers[a + 9u] = dhi;
    pers[a + 10u] = nlo;
    pers[a + 11u] = nhi;
}

// Backward per tile: dx (aligned layouts), per-column partial sums for the
// parameter gradients (3 per column, CONV uses all three) and Σ g².
@compute @workgroup_size(256)
fn bwd_tile(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32> /*SG_PARAMS*/) {
    /*SG_INIT*/
    let tile = tile_id(wid);
    let live = tile < P.tiles;
    let s = tile % P.s;
    let rbl = tile / P.s;
    let ncp = min(P.cu, WG);
    let lanes = WG / ncp;
    let lane = lid / ncp;
    let cu_in = lid % ncp;
    let r_begin = rbl * P.tile_rows;
    let r_end = min(r_begin + P.tile_rows, P.rows);
    let sd = seed_of(s);
    var gsq = 0.0;
    // Column sums of this invocation's last column unit (the only one when lanes > 1).
    var c0 = vec2<f32>(0.0, 0.0);
    var c1 = vec2<f32>(0.0, 0.0);
    var c2 = vec2<f32>(0.0, 0.0);
    for (var u = cu_in; u < P.cu; u = u + ncp) {
        let j0 = u * EPU;
        c0 = vec2<f32>(0.0, 0.0);
        c1 = vec2<f32>(0.0, 0.0);
        c2 = vec2<f32>(0.0, 0.0);
        if (live && lane < lanes) {
            if (sd.mode == MODE_IDENTITY && P.aligned == 1u) {
                // dx = g word for word; only Σ g² to accumulate.
                for (var r = r_begin + lane; r < r_end; r = r + lanes * UNROLL) {
                    var wv: array<u32, UNROLL>;
                    for (var q = 0u; q < UNROLL; q = q + 1u) {
                        let rr = r + q * lanes;
                        if (rr < r_end) {
                            wv[q] = gbuf[(rr * P.h + s * P.c + j0) / EPU];
                        }
                    }
                    for (var q = 0u; q < UNROLL; q = q + 1u) {
                        let rr = r + q * lanes;
                        if (rr < r_end) {
                            for (var e = 0u; e < EPU; e = e + 1u) {
                                let gv = dec_word(wv[q], e);
                                gsq = gsq + gv * gv;
                            }
                            obuf[(rr * P.h + s * P.c + j0) / EPU] = wv[q];
                        }
                    }
                }
            } else {
                for (var r = r_begin + lane; r < r_end; r = r + lanes) {
                    let base = r * P.h + s * P.c;
                    for (var q = 0u; q < EPU; q = q + 1u) {
                        let j = j0 + q;
                        if (j < P.c) {
                            let graw = ld_g(base + j);
                            gsq = gsq + graw * graw;
                            if (sd.mode != MODE_IDENTITY) {
                                let ji = i32(j);
                                let g = g_eff(base, s, ji, sd);
                                let x = ld_x(base + j);
                                if (sd.bt == BT_RESIDUAL) {
                                    c0[q] = c0[q] + g;
                                } else if (sd.bt == BT_ATTENTION) {
                                    c0[q] = c0[q] + g * x;
                                } else if (sd.bt == BT_MLP) {
                                    c0[q] = c0[q] + select(0.0, g * x, x * wt(s, j) > 0.0);
                                } else {
                                    c0[q] = c0[q] + g * x;
                                    c1[q] = c1[q] + g * x_at(base, ji - 1);
                                    c2[q] = c2[q] + g * x_at(base, ji - 2);
                                }
                            }
                        }
                    }
                    if (P.aligned == 1u) {
                        let lo = dx_bits(base, s, j0, sd);
                        var hi = 0u;
                        if (EPU == 2u && j0 + 1u < P.c) {
                            hi = dx_bits(base, s, j0 + 1u, sd);
                        }
                        st_word((base + j0) / EPU, lo, hi);
                    }
                }
            }
            if (lanes == 1u) {
                // One invocation per column unit: its sums are the tile's.
                write_colpart(rbl, s, j0, c0, c1, c2);
            }
        }
    }
    // Several lanes per column (C / EPU < 256, a single unit each): sum the lanes
    // in lane order through workgroup memory. Barriers stay outside the loops.
    workgroupBarrier();
    col_red[lid * 6u] = c0.x;
    col_red[lid * 6u + 1u] = c0.y;
    col_red[lid * 6u + 2u] = c1.x;
    col_red[lid * 6u + 3u] = c1.y;
    col_red[lid * 6u + 4u] = c2.x;
    col_red[lid * 6u + 5u] = c2.y;
    workgroupBarrier();
    if (live && lanes > 1u && lane == 0u && cu_in < P.cu) {
        var t0 = vec2<f32>(0.0, 0.0);
        var t1 = vec2<f32>(0.0, 0.0);
        var t2 = vec2<f32>(0.0, 0.0);
        for (var l = 0u; l < lanes; l = l + 1u) {
            let o = (l * ncp + cu_in) * 6u;
            t0 = t0 + vec2<f32>(col_red[o], col_red[o + 1u]);
            t1 = t1 + vec2<f32>(col_red[o + 2u], col_red[o + 3u]);
            t2 = t2 + vec2<f32>(col_red[o + 4u], col_red[o + 5u]);
        }
        write_colpart(rbl, s, cu_in * EPU, t0, t1, t2);
    }
    let tot = wg_reduce_sum(lid, gsq);
    if (live && lid == 0u) {
        scr[P.gpart_off + (P.rb_base + rbl) * P.s + s] = bitcast<u32>(tot);
    }
}

// dx word by word for 16-bit layouts with odd C (see fwd_flat).
@compute @workgroup_size(256)
fn bwd_flat(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let w = tile_id(wid) * WG + lid;
    if (w >= P.nwords) {
        return;
    }
    var bits = array<u32, 2>(0u, 0u);
    for (var q = 0u; q < EPU; q = q + 1u) {
        let e = w * EPU + q;
        if (e < P.nelems) {
            let b = elem_base(e);
            bits[q] = dx_bits(b.x, b.y, b.z, seed_of(b.y));
        }
    }
    st_word(w, bits[0], bits[1]);
}

// Column sums over all tiles, in tile order: colsum[k][col] for k < 3.
@compute @workgroup_size(256)
fn bwd_colmerge(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = tile_id(wid) * WG + lid;
    if (i >= 3u * P.h) {
        return;
    }
    let kk = i / P.h;
    let col = i - kk * P.h;
    var acc = 0.0;
    for (var rb = 0u; rb < P.total_rb; rb = rb + 1u) {
        acc = acc + bitcast<f32>(scr[P.colpart_off + (rb * 3u + kk) * P.h + col]);
    }
    pers[P.colsum_off + i] = bitcast<u32>(acc);
}

// The column partials of tile (rbl, s) for columns j0 .. j0 + EPU.
fn write_colpart(rbl: u32, s: u32, j0: u32, c0: vec2<f32>, c1: vec2<f32>, c2: vec2<f32>) {
    for (var q = 0u; q < EPU; q = q + 1u) {
        let j = j0 + q;
        if (j < P.c) {
            let o = P.colpart_off + (P.rb_base + rbl) * 3u * P.h + s * P.c + j;
            scr[o] = bitcast<u32>(c0[q]);
            scr[o + P.h] = bitcast<u32>(c1[q]);
            scr[o + 2u * P.h] = bitcast<u32>(c2[q]);
        }
    }
}

fn colsum(kk: u32, s: u32, j: u32) -> f32 {
    return bitcast<f32>(pers[P.colsum_off + kk * P.h + s * P.c + j]);
}

// Per seed (one workgroup each): dweights, dscales, this call's Σ g², and the
// gradient accumulator.
@compute @workgroup_size(256)
fn bwd_final(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let s = tile_id(wid);
    let live = s < P.s;
    if (live && lid == 0u) {
        let sd = seed_of(s);
        var gc = 0.0;
        for (var rb = 0u; rb < P.total_rb; rb = rb + 1u) {
            gc = gc + bitcast<f32>(scr[P.gpart_off + rb * P.s + s]);
        }
        pers[P.gc_off + s] = bitcast<u32>(gc);
        let a = P.acc_off + s * ACC_WORDS;
        pers[a + 12u] = bitcast<u32>(bitcast<f32>(pers[a + 12u]) + gc);
        var d = 0.0;
        var t0 = 0.0;
        var t1 = 0.0;
        var t2 = 0.0;
        var ds = 0.0;
        if (sd.mode != MODE_IDENTITY) {
            if (sd.bt == BT_RESIDUAL || sd.bt == BT_MLP) {
                for (var j = 0u; j < P.c; j = j + 1u) {
                    ds = ds + wt(s, j) * colsum(0u, s, j);
                }
                ds = sd.a * ds;
            } else if (sd.bt == BT_ATTENTION) {
                for (var j = 0u; j < P.c; j = j + 1u) {
                    d = d + pr(s, j) * colsum(0u, s, j);
                }
            } else {
                for (var j = 0u; j < P.c; j = j + 1u) {
                    t0 = t0 + colsum(0u, s, j);
                    t1 = t1 + colsum(1u, s, j);
                    t2 = t2 + colsum(2u, s, j);
                }
                ds = sd.a * (wt(s, 0u) * t0 + wt_or0(s, 1u) * t1 + wt_or0(s, 2u) * t2);
            }
        }
        pers[P.ds_off + s] = bitcast<u32>(ds);
        fin_red[0] = d;
        fin_red[1] = t0;
        fin_red[2] = t1;
        fin_red[3] = t2;
    }
    workgroupBarrier();
    if (live) {
        let sd = seed_of(s);
        let d = fin_red[0];
        for (var j = lid; j < P.c; j = j + WG) {
            var dw = 0.0;
            if (sd.mode != MODE_IDENTITY) {
                if (sd.bt == BT_RESIDUAL || sd.bt == BT_MLP) {
                    dw = sd.a * sd.sc * colsum(0u, s, j);
                } else if (sd.bt == BT_ATTENTION) {
                    dw = sd.a * pr(s, j) * (colsum(0u, s, j) - d);
                } else if (j < 3u) {
                    dw = sd.a * sd.sc * fin_red[1u + j];
                }
            }
            pers[P.dw_off + s * P.c + j] = bitcast<u32>(dw);
        }
    }
}
