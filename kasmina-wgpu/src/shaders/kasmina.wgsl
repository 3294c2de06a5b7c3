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
    // 1: the forward tiles read and write 16-byte groups (4 words) per row; see fwd_unit_vec.
    vec4: u32,
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
// Activations as 16-byte groups of words (the bindings are padded to 16
// bytes); xw / gw / ow access single words.
@group(0) @binding(2) var<storage, read> xbuf: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> gbuf: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> obuf: array<vec4<u32>>;
// Accumulators (16 words per seed), gradients, column sums: kept across calls.
@group(0) @binding(5) var<storage, read_write> pers: array<u32>;
// Per-tile partials of the current call.
@group(0) @binding(6) var<storage, read_write> scr: array<u32>;

const WG: u32 = 256u;
// Rows loaded together per invocation in the aligned paths.
const UNROLL: u32 = 8u;
const ACC_WORDS: u32 = 16u;
const BIG: f32 = 3.0e38;

// Seed table fields.
const MODE_IDENTITY: u32 = 0u;
const MODE_BLEND: u32 = 1u;
const BT_RESIDUAL: u32 = 0u;
const BT_ATTENTION: u32 = 1u;
const BT_MLP: u32 = 2u;
const BT_CONV: u32 = 3u;

struct Seed {
    mode: u32,
    bt: u32,
    a: f32,
    sc: f32,
    clamp: u32,
    lo: f32,
    hi: f32,
}

// Per-lane column sums of bwd_tile: 3 sums x 2 columns x (hi, lo) per invocation.
var<workgroup> col_red: array<f32, 3072>;
// bwd_final's three compensated sums per invocation, reduced as a tree.
var<workgroup> fin_red: array<vec2<f32>, 768>;

fn xw(w: u32) -> u32 {
    return xbuf[w >> 2u][w & 3u];
}

fn gw(w: u32) -> u32 {
    return gbuf[w >> 2u][w & 3u];
}

fn ow(w: u32, v: u32) {
    obuf[w >> 2u][w & 3u] = v;
}

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

// Weights and softmax of columns j and j + 1 (0 past the chunk), loaded once per
// column unit rather than once per row: (w_j, w_j+1, p_j, p_j+1).
fn col_params(s: u32, j: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0, 0.0, 0.0, 0.0);
    if (j < P.c) {
        r.x = wt(s, j);
        r.z = pr(s, j);
    }
    if (j + 1u < P.c) {
        r.y = wt(s, j + 1u);
        r.w = pr(s, j + 1u);
    }
    return r;
}

// The unclamped output of a RESIDUAL, ATTENTION or MLP element from its input
// `x`, weight `w` and softmax `p` (the same expressions as y_raw_v).
fn y_elem(x: f32, w: f32, p: f32, sd: Seed) -> f32 {
    var t: f32;
    if (sd.bt == BT_RESIDUAL) {
        t = x + w * sd.sc;
    } else if (sd.bt == BT_ATTENTION) {
        t = x * p;
    } else {
        let v = x * w;
        t = select(0.0, v, v > 0.0) * sd.sc;
    }
    if (sd.mode == MODE_BLEND) {
        return (1.0 - sd.a) * x + sd.a * t;
    }
    return t;
}

// The unclamped output of a CONV element from x_j, x_{j-1}, x_{j-2} (0 outside
// the chunk) and the seed's (w_0, w_1, w_2) (the same expression as t_of_v).
fn y_conv(x: f32, xm1: f32, xm2: f32, cw: vec3<f32>, sd: Seed) -> f32 {
    let t = sd.sc * (cw.x * x + cw.y * xm1 + cw.z * xm2);
    if (sd.mode == MODE_BLEND) {
        return (1.0 - sd.a) * x + sd.a * t;
    }
    return t;
}

// Strict-mode clamp and the storage encoding.
fn enc_out(v: f32, sd: Seed) -> u32 {
    return enc(clamp_out(v, sd));
}

fn is_nonfinite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7F800000u) == 0x7F800000u;
}

// NaN, told by its bits: the shaders request no float controls, so a driver may compile
// float comparisons and min/max as if NaN did not exist (NVIDIA's does); NaN handling
// never rests on them.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7FFFFFFFu) > 0x7F800000u;
}

// Whether strict mode moves output `y` to a bound: never a NaN, which stays NaN (SPEC 5.3).
fn outside_band(y: f32, sd: Seed) -> bool {
    return sd.clamp != 0u && !is_nan(y) && (y < sd.lo || y > sd.hi);
}

// The strict-mode clamp of output `y` (SPEC 5.3); NaN passes through.
fn clamp_out(y: f32, sd: Seed) -> f32 {
    if (!outside_band(y, sd)) {
        return y;
    }
    return select(sd.hi, sd.lo, y < sd.lo);
}

// x at chunk column j (signed), 0 outside the chunk (CONV's causal padding).
fn x_at(base: u32, j: i32) -> f32 {
    if (j < 0 || u32(j) >= P.c) {
        return 0.0;
    }
    return ld_x(base + u32(j));
}

// The blueprint t_j (SPEC 4) with x_j = `x` already loaded (CONV still loads
// its neighbours x_{j-1}, x_{j-2} of the row starting at element `base`).
fn t_of_v(base: u32, s: u32, j: u32, sd: Seed, x: f32) -> f32 {
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

// The unclamped output of a non-identity element whose input is `x`.
fn y_raw_v(base: u32, s: u32, j: u32, sd: Seed, x: f32) -> f32 {
    let t = t_of_v(base, s, j, sd, x);
    if (sd.mode == MODE_BLEND) {
        return (1.0 - sd.a) * x + sd.a * t;
    }
    return t;
}

// The unclamped output of a non-identity element.
fn y_raw(base: u32, s: u32, j: u32, sd: Seed) -> f32 {
    return y_raw_v(base, s, j, sd, ld_x(base + j));
}

// Whether strict mode clamps output column j (SPEC 5.3); false outside the chunk.
fn clamped(base: u32, s: u32, j: i32, sd: Seed) -> bool {
    if (sd.clamp == 0u || j < 0 || u32(j) >= P.c) {
        return false;
    }
    return outside_band(y_raw(base, s, u32(j), sd), sd);
}

// Storage bits of output column j of the chunk starting at element `base`.
fn out_bits(base: u32, s: u32, j: u32, sd: Seed) -> u32 {
    if (sd.mode == MODE_IDENTITY) {
        return raw_x(base + j);
    }
    return out_bits_v(base, s, j, sd, ld_x(base + j));
}

// Storage bits of a non-identity output element whose input is `x`.
fn out_bits_v(base: u32, s: u32, j: u32, sd: Seed, x: f32) -> u32 {
    return enc_out(y_raw_v(base, s, j, sd, x), sd);
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

// Compensated summation (Knuth's two-sum): `a = (hi, lo)` carries a sum to
// about twice f32's precision, so the parameter gradients of long reductions
// (hundreds of thousands of terms that cancel) keep f32 accuracy in the
// result. Additions and subtractions only, so FMA contraction cannot change
// the error term; the order is fixed, so the bits are the same every run.
fn acc_add(a: vec2<f32>, v: f32) -> vec2<f32> {
    let s = a.x + v;
    let bp = s - a.x;
    let err = (a.x - (s - bp)) + (v - bp);
    return vec2<f32>(s, a.y + err);
}

fn acc_merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let r = acc_add(a, b.x);
    return vec2<f32>(r.x, r.y + b.y);
}

// The value of a compensated sum; an infinite or NaN high part is the value
// (its low part is then meaningless).
fn acc_val(a: vec2<f32>) -> f32 {
    if (is_nonfinite(a.x)) {
        return a.x;
    }
    return a.x + a.y;
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

// Tile kernels come in three entry points over the same tiles: `which` = 0
// handles every seed; 1 only identity seeds and 2 only the others (each
// workgroup returns at once for the other kind). Split, the identity kernel
// carries none of the blueprint, clamp and encode code, so its register use
// (occupancy) is that of a copy with telemetry.
var<workgroup> tile_kind: u32;

// 1 when tile (live, s) belongs to the identity kernel; read as a uniform value.
fn tile_is_identity(lid: u32, live: bool, s: u32) -> bool {
    if (lid == 0u) {
        var kind = 0u;
        if (live && seed_of(s).mode == MODE_IDENTITY) {
            kind = 1u;
        }
        tile_kind = kind;
    }
    return workgroupUniformLoad(&tile_kind) == 1u;
}

@compute @workgroup_size(256)
fn fwd_tile(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32> /*SG_PARAMS*/) {
    /*SG_INIT*/
    fwd_tile_impl(lid, wid, 0u);
}

@compute @workgroup_size(256)
fn fwd_tile_id(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32> /*SG_PARAMS*/) {
    /*SG_INIT*/
    fwd_tile_impl(lid, wid, 1u);
}

@compute @workgroup_size(256)
fn fwd_tile_bp(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32> /*SG_PARAMS*/) {
    /*SG_INIT*/
    fwd_tile_impl(lid, wid, 2u);
}

fn fwd_tile_impl(lid: u32, wid: vec3<u32>, which: u32) {
    let tile = tile_id(wid);
    let live = tile < P.tiles;
    let s = tile % P.s;
    let rbl = tile / P.s;
    if (which != 0u && (which == 1u) != tile_is_identity(lid, live, s)) {
        return;
    }
    // Column units: 4-word groups in the vec4 layout, single words otherwise.
    let vec = P.vec4 == 1u;
    let units = select(P.cu, P.cu / 4u, vec);
    let ncp = min(units, WG);
    let lanes = WG / ncp;
    let lane = lid / ncp;
    let cu_in = lid % ncp;
    let dead_eps = bitcast<f32>(P.dead_eps_bits);
    var m = mom_empty();
    if (live && lane < lanes && vec) {
        let sd = seed_of(s);
        let ident = which == 1u || (which == 0u && sd.mode == MODE_IDENTITY);
        let k = bitcast<f32>(pers[P.acc_off + s * ACC_WORDS + 1u]);
        let r_begin = rbl * P.tile_rows;
        let r_end = min(r_begin + P.tile_rows, P.rows);
        for (var u = cu_in; u < units; u = u + ncp) {
            m = fwd_unit_vec(m, s, u, sd, ident, k, dead_eps, r_begin + lane, r_end, lanes);
        }
    } else if (live && lane < lanes) {
        let sd = seed_of(s);
        // Constant in the split kernels, so the other kind's code drops out there.
        let ident = which == 1u || (which == 0u && sd.mode == MODE_IDENTITY);
        let k = bitcast<f32>(pers[P.acc_off + s * ACC_WORDS + 1u]);
        let r_begin = rbl * P.tile_rows;
        let r_end = min(r_begin + P.tile_rows, P.rows);
        for (var u = cu_in; u < P.cu; u = u + ncp) {
            let j0 = u * EPU;
            let cp = col_params(s, j0);
            let cw = vec3<f32>(wt(s, 0u), wt_or0(s, 1u), wt_or0(s, 2u));
            if (P.aligned == 1u) {
                // Chunks start on word boundaries: read whole words, UNROLL rows at a
                // time so several loads are in flight per invocation.
                for (var r = r_begin + lane; r < r_end; r = r + lanes * UNROLL) {
                    var wv: array<u32, UNROLL>;
                    for (var q = 0u; q < UNROLL; q = q + 1u) {
                        let rr = r + q * lanes;
                        if (rr < r_end) {
                            wv[q] = xw((rr * P.h + s * P.c + j0) / EPU);
                        }
                    }
                    // Each word decoded once (both halves together for 16-bit layouts).
                    var dv: array<vec2<f32>, UNROLL>;
                    for (var q = 0u; q < UNROLL; q = q + 1u) {
                        dv[q] = dec2(wv[q]);
                    }
                    // Telemetry of the loaded words as one batch (two passes over
                    // registers, then one Chan merge): a division per batch, not per element.
                    var bn = 0u;
                    var bs = 0.0;
                    for (var q = 0u; q < UNROLL; q = q + 1u) {
                        if (r + q * lanes < r_end) {
                            for (var e = 0u; e < EPU; e = e + 1u) {
                                let v = dv[q][e];
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
                                    let v = dv[q][e];
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
                            if (ident) {
                                ow(w, wv[q]);
                            } else if (sd.bt <= BT_MLP) {
                                let lo = enc_out(y_elem(dv[q].x, cp.x, cp.z, sd), sd);
                                var hi = 0u;
                                if (EPU == 2u) {
                                    hi = enc_out(y_elem(dv[q].y, cp.y, cp.w, sd), sd);
                                }
                                st_word(w, lo, hi);
                            } else {
                                // CONV: x_{j0-1} and x_{j0-2} from the row's previous word(s).
                                var xm1 = 0.0;
                                var xm2 = 0.0;
                                if (EPU == 2u) {
                                    if (j0 >= 2u) {
                                        let pv = dec2(xw(w - 1u));
                                        xm1 = pv.y;
                                        xm2 = pv.x;
                                    }
                                } else {
                                    if (j0 >= 1u) {
                                        xm1 = dec2(xw(w - 1u)).x;
                                    }
                                    if (j0 >= 2u) {
                                        xm2 = dec2(xw(w - 2u)).x;
                                    }
                                }
                                let x0 = dv[q].x;
                                let lo = enc_out(y_conv(x0, xm1, xm2, cw, sd), sd);
                                var hi = 0u;
                                if (EPU == 2u) {
                                    hi = enc_out(y_conv(dv[q].y, x0, xm1, cw, sd), sd);
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

// Telemetry of one element into the batch (count `bn`, shifted sum `bs`) and
// the extrema / dead / non-finite counts of `m`.
fn tel1(m: ptr<function, Mom>, bn: ptr<function, u32>, bs: ptr<function, f32>, v: f32, k: f32, dead_eps: f32) {
    if (is_nonfinite(v)) {
        (*m).nf = (*m).nf + 1u;
        return;
    }
    *bn = *bn + 1u;
    *bs = *bs + (v - k);
    (*m).mn = min((*m).mn, v);
    (*m).mx = max((*m).mx, v);
    if (abs(v) < dead_eps) {
        (*m).dead = (*m).dead + 1u;
    }
}

// The squared deviation of one element from the batch mean (0 if non-finite).
fn tel2(v: f32, k: f32, bmean: f32) -> f32 {
    if (is_nonfinite(v)) {
        return 0.0;
    }
    let d = (v - k) - bmean;
    return d * d;
}

// One row's 4 words (4 f32 or 8 halves) of telemetry as one batch: two passes
// over registers, then one Chan merge into `m` (columns in order).
fn tel_row(m: Mom, d0: vec2<f32>, d1: vec2<f32>, d2: vec2<f32>, d3: vec2<f32>, k: f32, dead_eps: f32) -> Mom {
    var r = m;
    var bn = 0u;
    var bs = 0.0;
    tel1(&r, &bn, &bs, d0.x, k, dead_eps);
    if (EPU == 2u) {
        tel1(&r, &bn, &bs, d0.y, k, dead_eps);
    }
    tel1(&r, &bn, &bs, d1.x, k, dead_eps);
    if (EPU == 2u) {
        tel1(&r, &bn, &bs, d1.y, k, dead_eps);
    }
    tel1(&r, &bn, &bs, d2.x, k, dead_eps);
    if (EPU == 2u) {
        tel1(&r, &bn, &bs, d2.y, k, dead_eps);
    }
    tel1(&r, &bn, &bs, d3.x, k, dead_eps);
    if (EPU == 2u) {
        tel1(&r, &bn, &bs, d3.y, k, dead_eps);
    }
    if (bn > 0u) {
        let bmean = bs / f32(bn);
        var bm2 = tel2(d0.x, k, bmean) + tel2(d1.x, k, bmean) + tel2(d2.x, k, bmean) + tel2(d3.x, k, bmean);
        if (EPU == 2u) {
            bm2 = bm2 + (tel2(d0.y, k, bmean) + tel2(d1.y, k, bmean) + tel2(d2.y, k, bmean) + tel2(d3.y, k, bmean));
        }
        let mm = chan(f32(r.n), r.mean, r.m2, f32(bn), bmean, bm2);
        r.n = r.n + bn;
        r.mean = mm.x;
        r.m2 = mm.y;
    }
    return r;
}

// (x_{j-2}, x_{j-1}) for the word whose first element is x_j, from the decoded
// two words before it (`dm2`, `dm1`).
fn conv_prev(dm2: vec2<f32>, dm1: vec2<f32>) -> vec2<f32> {
    if (EPU == 2u) {
        return dm1;
    }
    return vec2<f32>(dm2.x, dm1.x);
}

// The output word of a non-identity seed from its decoded input `d`, the two
// inputs before it `pm` = (x_{j-2}, x_{j-1}) (CONV), the word's column
// parameters `cwp` = (w_j, w_j+1, p_j, p_j+1) and CONV's (w0, w1, w2).
fn out_word_v(d: vec2<f32>, pm: vec2<f32>, cwp: vec4<f32>, cw: vec3<f32>, sd: Seed) -> u32 {
    var lo: u32;
    var hi = 0u;
    if (sd.bt == BT_CONV) {
        lo = enc_out(y_conv(d.x, pm.y, pm.x, cw, sd), sd);
        if (EPU == 2u) {
            hi = enc_out(y_conv(d.y, d.x, pm.y, cw, sd), sd);
        }
    } else {
        lo = enc_out(y_elem(d.x, cwp.x, cwp.z, sd), sd);
        if (EPU == 2u) {
            hi = enc_out(y_elem(d.y, cwp.y, cwp.w, sd), sd);
        }
    }
    return pack_word(lo, hi);
}

// Telemetry and output of one row's 16-byte group `q` at vec4 index `vi`
// (column unit `u` of the seed's chunk).
fn fwd_row_vec(m: Mom, q: vec4<u32>, vi: u32, u: u32, sd: Seed, ident: bool, k: f32, dead_eps: f32, c0: vec4<f32>,
    c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>, cw: vec3<f32>) -> Mom {
    let d0 = dec2(q.x);
    let d1 = dec2(q.y);
    let d2 = dec2(q.z);
    let d3 = dec2(q.w);
    let r = tel_row(m, d0, d1, d2, d3, k, dead_eps);
    if (ident) {
        // Identity: the input bits as they are.
        obuf[vi] = q;
        return r;
    }
    // CONV's x_{j0-1}, x_{j0-2} from the row's previous word(s); 0 at the chunk start.
    var pm1 = vec2<f32>(0.0, 0.0);
    var pm2 = vec2<f32>(0.0, 0.0);
    if (sd.bt == BT_CONV && u > 0u) {
        pm1 = dec2(xw(vi * 4u - 1u));
        if (EPU == 1u) {
            pm2 = dec2(xw(vi * 4u - 2u));
        }
    }
    obuf[vi] = vec4<u32>(out_word_v(d0, conv_prev(pm2, pm1), c0, cw, sd), out_word_v(d1, conv_prev(pm1, d0), c1, cw, sd),
        out_word_v(d2, conv_prev(d0, d1), c2, cw, sd), out_word_v(d3, conv_prev(d1, d2), c3, cw, sd));
    return r;
}

// Forward of column unit `u` (4 words: 16 bytes per row) of seed `s` over rows
// r0, r0 + lanes, ... < r_end: one 16-byte load and store per row, two rows per
// step, and the next step's two rows loaded before this step's are processed
// (so memory latency overlaps the telemetry). Needs C / EPU to be a multiple of 4.
fn fwd_unit_vec(m_in: Mom, s: u32, u: u32, sd: Seed, ident: bool, k: f32, dead_eps: f32, r0: u32, r_end: u32,
    lanes: u32) -> Mom {
    var m = m_in;
    let j0 = u * 4u * EPU;
    var c0 = vec4<f32>(0.0, 0.0, 0.0, 0.0);
    var c1 = c0;
    var c2 = c0;
    var c3 = c0;
    var cw = vec3<f32>(0.0, 0.0, 0.0);
    if (!ident) {
        c0 = col_params(s, j0);
        c1 = col_params(s, j0 + EPU);
        c2 = col_params(s, j0 + 2u * EPU);
        c3 = col_params(s, j0 + 3u * EPU);
        cw = vec3<f32>(wt(s, 0u), wt_or0(s, 1u), wt_or0(s, 2u));
    }
    // Words per row, and the unit's first word within a row (both multiples of 4).
    let hw = P.h / EPU;
    let wrow = (s * P.c + j0) / EPU;
    if (r0 >= r_end) {
        return m;
    }
    let last = r_end - 1u;
    // Rows past the end load the last row again (a cache hit) and are not processed.
    var v0 = (r0 * hw + wrow) >> 2u;
    var v1 = (min(r0 + lanes, last) * hw + wrow) >> 2u;
    var q0 = xbuf[v0];
    var q1 = xbuf[v1];
    for (var r = r0; r < r_end; r = r + 2u * lanes) {
        let n0 = (min(r + 2u * lanes, last) * hw + wrow) >> 2u;
        let n1 = (min(r + 3u * lanes, last) * hw + wrow) >> 2u;
        let p0 = xbuf[n0];
        let p1 = xbuf[n1];
        m = fwd_row_vec(m, q0, v0, u, sd, ident, k, dead_eps, c0, c1, c2, c3, cw);
        if (r + lanes < r_end) {
            m = fwd_row_vec(m, q1, v1, u, sd, ident, k, dead_eps, c0, c1, c2, c3, cw);
        }
        v0 = n0;
        v1 = n1;
        q0 = p0;
        q1 = p1;
    }
    return m;
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
    bwd_tile_impl(lid, wid, 0u);
}

@compute @workgroup_size(256)
fn bwd_tile_id(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32> /*SG_PARAMS*/) {
    /*SG_INIT*/
    bwd_tile_impl(lid, wid, 1u);
}

@compute @workgroup_size(256)
fn bwd_tile_bp(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32> /*SG_PARAMS*/) {
    /*SG_INIT*/
    bwd_tile_impl(lid, wid, 2u);
}

// The backward tile kernel; `which` as for fwd_tile_impl.
fn bwd_tile_impl(lid: u32, wid: vec3<u32>, which: u32) {
    let tile = tile_id(wid);
    let live = tile < P.tiles;
    let s = tile % P.s;
    let rbl = tile / P.s;
    if (which != 0u && (which == 1u) != tile_is_identity(lid, live, s)) {
        return;
    }
    let ncp = min(P.cu, WG);
    let lanes = WG / ncp;
    let lane = lid / ncp;
    let cu_in = lid % ncp;
    let r_begin = rbl * P.tile_rows;
    let r_end = min(r_begin + P.tile_rows, P.rows);
    let sd = seed_of(s);
    let ident = which == 1u || (which == 0u && sd.mode == MODE_IDENTITY);
    var gsq = 0.0;
    // Column sums (compensated: c* the high parts, e* the low parts) of this
    // invocation's last column unit (the only one when lanes > 1), 2 columns each.
    var c0 = vec2<f32>(0.0, 0.0);
    var c1 = vec2<f32>(0.0, 0.0);
    var c2 = vec2<f32>(0.0, 0.0);
    var e0 = vec2<f32>(0.0, 0.0);
    var e1 = vec2<f32>(0.0, 0.0);
    var e2 = vec2<f32>(0.0, 0.0);
    for (var u = cu_in; u < P.cu; u = u + ncp) {
        let j0 = u * EPU;
        c0 = vec2<f32>(0.0, 0.0);
        c1 = vec2<f32>(0.0, 0.0);
        c2 = vec2<f32>(0.0, 0.0);
        e0 = vec2<f32>(0.0, 0.0);
        e1 = vec2<f32>(0.0, 0.0);
        e2 = vec2<f32>(0.0, 0.0);
        if (live && lane < lanes) {
            if (ident && P.aligned == 1u) {
                // dx = g word for word; only Σ g² to accumulate.
                for (var r = r_begin + lane; r < r_end; r = r + lanes * UNROLL) {
                    var wv: array<u32, UNROLL>;
                    for (var q = 0u; q < UNROLL; q = q + 1u) {
                        let rr = r + q * lanes;
                        if (rr < r_end) {
                            wv[q] = gw((rr * P.h + s * P.c + j0) / EPU);
                        }
                    }
                    for (var q = 0u; q < UNROLL; q = q + 1u) {
                        let rr = r + q * lanes;
                        if (rr < r_end) {
                            let gd = dec2(wv[q]);
                            for (var e = 0u; e < EPU; e = e + 1u) {
                                gsq = gsq + gd[e] * gd[e];
                            }
                            ow((rr * P.h + s * P.c + j0) / EPU, wv[q]);
                        }
                    }
                }
            } else if (P.aligned == 1u && (sd.bt != BT_CONV || sd.clamp == 0u)) {
                // Whole words of x and g, each decoded once. CONV reads its
                // neighbours g_{j+1}, g_{j+2}, x_{j-1}, x_{j-2} from the adjacent words;
                // with strict clamping (which masks those neighbours too) it takes
                // the element path below.
                let cp = col_params(s, j0);
                let cw = cp.xy;
                let cpr = cp.zw;
                let cv = vec3<f32>(wt(s, 0u), wt_or0(s, 1u), wt_or0(s, 2u));
                for (var r = r_begin + lane; r < r_end; r = r + lanes) {
                    let base = r * P.h + s * P.c;
                    let wi = (base + j0) / EPU;
                    let gv = dec2(gw(wi));
                    let xv = dec2(xw(wi));
                    // CONV only: (g_j0 .. g_j0+3) and (x_j0-2 .. x_j0+1), 0 outside the chunk.
                    var gn = vec4<f32>(gv.x, gv.y, 0.0, 0.0);
                    var xp = vec4<f32>(0.0, 0.0, xv.x, xv.y);
                    if (sd.bt == BT_CONV) {
                        if (EPU == 2u) {
                            if (j0 + 2u < P.c) {
                                let nv = dec2(gw(wi + 1u));
                                gn.z = nv.x;
                                gn.w = nv.y;
                            }
                            if (j0 >= 2u) {
                                let pv = dec2(xw(wi - 1u));
                                xp.x = pv.x;
                                xp.y = pv.y;
                            }
                        } else {
                            gn.y = 0.0;
                            xp.w = 0.0;
                            if (j0 + 1u < P.c) {
                                gn.y = dec2(gw(wi + 1u)).x;
                            }
                            if (j0 + 2u < P.c) {
                                gn.z = dec2(gw(wi + 2u)).x;
                            }
                            if (j0 >= 1u) {
                                xp.y = dec2(xw(wi - 1u)).x;
                            }
                            if (j0 >= 2u) {
                                xp.x = dec2(xw(wi - 2u)).x;
                            }
                        }
                    }
                    var outw = vec2<u32>(0u, 0u);
                    for (var q = 0u; q < EPU; q = q + 1u) {
                        let graw = gv[q];
                        let x = xv[q];
                        gsq = gsq + graw * graw;
                        if (sd.bt == BT_CONV) {
                            // No clamping here: g_eff = g everywhere.
                            let inner = sd.sc * (cv.x * gn[q] + cv.y * gn[q + 1u] + cv.z * gn[q + 2u]);
                            let r0 = acc_add(vec2<f32>(c0[q], e0[q]), graw * x);
                            c0[q] = r0.x;
                            e0[q] = r0.y;
                            let r1 = acc_add(vec2<f32>(c1[q], e1[q]), graw * xp[q + 1u]);
                            c1[q] = r1.x;
                            e1[q] = r1.y;
                            let r2 = acc_add(vec2<f32>(c2[q], e2[q]), graw * xp[q]);
                            c2[q] = r2.x;
                            e2[q] = r2.y;
                            if (sd.mode == MODE_BLEND) {
                                outw[q] = enc((1.0 - sd.a) * graw + sd.a * inner);
                            } else {
                                outw[q] = enc(inner);
                            }
                            continue;
                        }
                        var g = graw;
                        if (sd.clamp != 0u && outside_band(y_elem(x, cw[q], cpr[q], sd), sd)) {
                            g = 0.0;
                        }
                        var v0 = g * x;
                        var inner = g;
                        if (sd.bt == BT_RESIDUAL) {
                            v0 = g;
                        } else if (sd.bt == BT_ATTENTION) {
                            inner = g * cpr[q];
                        } else {
                            let w = cw[q];
                            let on = x * w > 0.0;
                            v0 = select(0.0, g * x, on);
                            inner = select(0.0, g * w * sd.sc, on);
                        }
                        let r0 = acc_add(vec2<f32>(c0[q], e0[q]), v0);
                        c0[q] = r0.x;
                        e0[q] = r0.y;
                        if (sd.mode == MODE_BLEND) {
                            outw[q] = enc((1.0 - sd.a) * g + sd.a * inner);
                        } else {
                            outw[q] = enc(inner);
                        }
                    }
                    st_word(wi, outw.x, outw.y);
                }
            } else {
                for (var r = r_begin + lane; r < r_end; r = r + lanes) {
                    let base = r * P.h + s * P.c;
                    for (var q = 0u; q < EPU; q = q + 1u) {
                        let j = j0 + q;
                        if (j < P.c) {
                            let graw = ld_g(base + j);
                            gsq = gsq + graw * graw;
                            if (!ident) {
                                let ji = i32(j);
                                let g = g_eff(base, s, ji, sd);
                                let x = ld_x(base + j);
                                var v0 = g * x;
                                if (sd.bt == BT_RESIDUAL) {
                                    v0 = g;
                                } else if (sd.bt == BT_MLP) {
                                    v0 = select(0.0, g * x, x * wt(s, j) > 0.0);
                                }
                                let r0 = acc_add(vec2<f32>(c0[q], e0[q]), v0);
                                c0[q] = r0.x;
                                e0[q] = r0.y;
                                if (sd.bt != BT_RESIDUAL && sd.bt != BT_ATTENTION && sd.bt != BT_MLP) {
                                    let r1 = acc_add(vec2<f32>(c1[q], e1[q]), g * x_at(base, ji - 1));
                                    c1[q] = r1.x;
                                    e1[q] = r1.y;
                                    let r2 = acc_add(vec2<f32>(c2[q], e2[q]), g * x_at(base, ji - 2));
                                    c2[q] = r2.x;
                                    e2[q] = r2.y;
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
                write_colpart(rbl, s, j0, c0 + e0, c1 + e1, c2 + e2);
            }
        }
    }
    // Several lanes per column (C / EPU < 256, a single unit each): sum the lanes
    // in lane order through workgroup memory. Barriers stay outside the loops.
    workgroupBarrier();
    let cr = lid * 12u;
    col_red[cr] = c0.x;
    col_red[cr + 1u] = e0.x;
    col_red[cr + 2u] = c0.y;
    col_red[cr + 3u] = e0.y;
    col_red[cr + 4u] = c1.x;
    col_red[cr + 5u] = e1.x;
    col_red[cr + 6u] = c1.y;
    col_red[cr + 7u] = e1.y;
    col_red[cr + 8u] = c2.x;
    col_red[cr + 9u] = e2.x;
    col_red[cr + 10u] = c2.y;
    col_red[cr + 11u] = e2.y;
    workgroupBarrier();
    if (live && lanes > 1u && lane == 0u && cu_in < P.cu) {
        // (sum k, column q) pairs in lane order, compensated.
        var t: array<vec2<f32>, 6>;
        for (var i = 0u; i < 6u; i = i + 1u) {
            t[i] = vec2<f32>(0.0, 0.0);
        }
        for (var l = 0u; l < lanes; l = l + 1u) {
            let o = (l * ncp + cu_in) * 12u;
            for (var i = 0u; i < 6u; i = i + 1u) {
                t[i] = acc_merge(t[i], vec2<f32>(col_red[o + 2u * i], col_red[o + 2u * i + 1u]));
            }
        }
        write_colpart(rbl, s, cu_in * EPU, vec2<f32>(acc_val(t[0]), acc_val(t[1])),
            vec2<f32>(acc_val(t[2]), acc_val(t[3])), vec2<f32>(acc_val(t[4]), acc_val(t[5])));
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

// Column sums over all tiles, in tile order and compensated: colsum[k][col]
// for k < 3, high parts then (3 H words later) low parts.
@compute @workgroup_size(256)
fn bwd_colmerge(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = tile_id(wid) * WG + lid;
    if (i >= 3u * P.h) {
        return;
    }
    let kk = i / P.h;
    let col = i - kk * P.h;
    var acc = vec2<f32>(0.0, 0.0);
    for (var rb = 0u; rb < P.total_rb; rb = rb + 1u) {
        acc = acc_add(acc, bitcast<f32>(scr[P.colpart_off + (rb * 3u + kk) * P.h + col]));
    }
    if (is_nonfinite(acc.x)) {
        acc.y = 0.0;
    }
    pers[P.colsum_off + i] = bitcast<u32>(acc.x);
    pers[P.colsum_off + 3u * P.h + i] = bitcast<u32>(acc.y);
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

// Column sum k of seed s, column j, as a compensated (hi, lo) pair.
fn colsum2(kk: u32, s: u32, j: u32) -> vec2<f32> {
    let i = P.colsum_off + kk * P.h + s * P.c + j;
    return vec2<f32>(bitcast<f32>(pers[i]), bitcast<f32>(pers[i + 3u * P.h]));
}

fn colsum(kk: u32, s: u32, j: u32) -> f32 {
    return acc_val(colsum2(kk, s, j));
}

// Adds `w * (hi, lo)` to a compensated sum.
fn acc_add_scaled(a: vec2<f32>, w: f32, v: vec2<f32>) -> vec2<f32> {
    let r = acc_add(a, w * v.x);
    return vec2<f32>(r.x, r.y + w * v.y);
}

// Per seed (one workgroup each): dweights, dscales, this call's Σ g², and the
// gradient accumulator. The sums over the chunk's columns are compensated,
// strided over the invocations and merged as a fixed tree.
@compute @workgroup_size(256)
fn bwd_final(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let s = tile_id(wid);
    let live = s < P.s;
    var q0 = vec2<f32>(0.0, 0.0);
    var q1 = vec2<f32>(0.0, 0.0);
    var q2 = vec2<f32>(0.0, 0.0);
    var sd = Seed(MODE_IDENTITY, 0u, 0.0, 0.0, 0u, 0.0, 0.0);
    if (live) {
        sd = seed_of(s);
        if (sd.mode != MODE_IDENTITY) {
            for (var j = lid; j < P.c; j = j + WG) {
                if (sd.bt == BT_RESIDUAL || sd.bt == BT_MLP) {
                    q0 = acc_add_scaled(q0, wt(s, j), colsum2(0u, s, j));
                } else if (sd.bt == BT_ATTENTION) {
                    q0 = acc_add_scaled(q0, pr(s, j), colsum2(0u, s, j));
                } else {
                    q0 = acc_merge(q0, colsum2(0u, s, j));
                    q1 = acc_merge(q1, colsum2(1u, s, j));
                    q2 = acc_merge(q2, colsum2(2u, s, j));
                }
            }
        }
    }
    workgroupBarrier();
    fin_red[lid * 3u] = q0;
    fin_red[lid * 3u + 1u] = q1;
    fin_red[lid * 3u + 2u] = q2;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride >> 1u) {
        if (lid < stride) {
            for (var k = 0u; k < 3u; k = k + 1u) {
                fin_red[lid * 3u + k] = acc_merge(fin_red[lid * 3u + k], fin_red[(lid + stride) * 3u + k]);
            }
        }
        workgroupBarrier();
    }
    let t0 = acc_val(fin_red[0]);
    let t1 = acc_val(fin_red[1]);
    let t2 = acc_val(fin_red[2]);
    if (live && lid == 0u) {
        var gc = vec2<f32>(0.0, 0.0);
        for (var rb = 0u; rb < P.total_rb; rb = rb + 1u) {
            gc = acc_add(gc, bitcast<f32>(scr[P.gpart_off + rb * P.s + s]));
        }
        let gcv = acc_val(gc);
        pers[P.gc_off + s] = bitcast<u32>(gcv);
        let a = P.acc_off + s * ACC_WORDS;
        pers[a + 12u] = bitcast<u32>(bitcast<f32>(pers[a + 12u]) + gcv);
        var ds = 0.0;
        if (sd.mode != MODE_IDENTITY) {
            if (sd.bt == BT_RESIDUAL || sd.bt == BT_MLP) {
                ds = sd.a * t0;
            } else if (sd.bt != BT_ATTENTION) {
                var cv = acc_add(vec2<f32>(wt(s, 0u) * t0, 0.0), wt_or0(s, 1u) * t1);
                cv = acc_add(cv, wt_or0(s, 2u) * t2);
                ds = sd.a * acc_val(cv);
            }
        }
        pers[P.ds_off + s] = bitcast<u32>(ds);
    }
    if (live) {
        for (var j = lid; j < P.c; j = j + WG) {
            var dw = 0.0;
            if (sd.mode != MODE_IDENTITY) {
                if (sd.bt == BT_RESIDUAL || sd.bt == BT_MLP) {
                    dw = sd.a * sd.sc * colsum(0u, s, j);
                } else if (sd.bt == BT_ATTENTION) {
                    let cs = colsum2(0u, s, j);
                    // colsum - d in the pair's precision before the product.
                    dw = sd.a * pr(s, j) * acc_val(acc_add(vec2<f32>(cs.x, cs.y), -t0));
                } else if (j == 0u) {
                    dw = sd.a * sd.sc * t0;
                } else if (j == 1u) {
                    dw = sd.a * sd.sc * t1;
                } else if (j == 2u) {
                    dw = sd.a * sd.sc * t2;
                }
            }
            pers[P.dw_off + s * P.c + j] = bitcast<u32>(dw);
        }
    }
}
