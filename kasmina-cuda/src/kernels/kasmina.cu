// Kasmina seed layer kernels (SPEC sections 5 and 7), compiled at run time by
// NVRTC for the device's architecture. No header is included on purpose: the
// f16/bf16 conversions are written with PTX / bit operations, so the source
// compiles wherever libnvrtc is, without the CUDA toolkit's include folder.
//
// Work split of the two fused kernels: grid.x = row groups of R rows,
// grid.y = column tiles of TW = blockDim.x * V columns. Each thread owns V
// consecutive columns for all R rows of its block, so everything that depends
// on the column (seed, blueprint constants, position in the chunk) is loaded
// once, and each row is one coalesced vector load per thread (16 bytes for
// V = 4 f32 or V = 8 f16/bf16). Statistics leave a block as one partial per
// (row group, tile, seed segment) and are merged by a second small kernel in
// a fixed order: the same bits on every run, no float atomics.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

// SeedConst.flags bits (host: src/layer.rs, `flags`).
#define FLAG_ACTIVE 1u      // blend or blueprint (not identity)
#define FLAG_BLUEPRINT 2u   // FOSSILIZED: y = t(x)
#define FLAG_CLAMP 4u       // strict mode with clamp statistics set
#define TYPE_SHIFT 3u       // 2 bits of blueprint type
#define TYPE_RES 0u
#define TYPE_ATT 1u
#define TYPE_MLP 2u
#define TYPE_CONV 3u
// Per-lane bits the kernels add (position of the column in its chunk).
#define LANE_M1 (1u << 8)   // j >= 1
#define LANE_M2 (1u << 9)   // j >= 2
#define LANE_P1 (1u << 10)  // j + 1 < C
#define LANE_P2 (1u << 11)  // j + 2 < C

// Rows loaded before any is processed, to keep several loads in flight per thread.
#define UNROLL 4

struct SeedConst {
    u32 flags;
    float a;   // clamp(alpha, 0, 1); 1 for FOSSILIZED
    float s;   // scale
    float lo;  // strict-mode clamp band
    float hi;
    float w0;  // CONV taps (0 where the chunk is shorter)
    float w1;
    float w2;
};

// Statistics of a set of finite elements, shifted: mean = K + d. Keeping the
// shift K (an element of the set) apart from the small offset d keeps f32
// variance accurate when |mean| / std is large (SPEC 5.2).
struct Partial {
    float K;
    float d;
    float m2;
    float mn;
    float mx;
    u32 n;
    u32 dead;
    u32 nf;
};

// The per-seed accumulator the device keeps between end_epochs (host: Acc in src/layer.rs).
struct Acc {
    u64 n;
    u64 dead;
    u64 nf;
    u64 pad;
    double mean;
    double m2;
    double mn;
    double mx;
};

// ---------------------------------------------------------------- dtypes

struct DF32 {
    typedef u32 R;
    static __device__ __forceinline__ float in(u32 r) { return __uint_as_float(r); }
    static __device__ __forceinline__ u32 out(float f) { return __float_as_uint(f); }
};

struct DF16 {
    typedef u16 R;
    static __device__ __forceinline__ float in(u16 r) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(r));
        return f;
    }
    static __device__ __forceinline__ u16 out(float f) {
        u16 r;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f));
        return r;
    }
};

struct DBF16 {
    typedef u16 R;
    static __device__ __forceinline__ float in(u16 r) { return __uint_as_float(((u32)r) << 16); }
    // Round to nearest even (the hardware conversion from sm_80 on), NaN stays a NaN.
    static __device__ __forceinline__ u16 out(float f) {
#if __CUDA_ARCH__ >= 800
        u16 r;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
        return r;
#else
        u32 u = __float_as_uint(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (u16)(u >> 16);
#endif
    }
};

struct alignas(16) Raw16 { u32 a, b, c, d; };
struct alignas(8) Raw8 { u32 a, b; };
template <int BYTES> struct RawOf;
template <> struct RawOf<16> { typedef Raw16 T; };
template <> struct RawOf<8> { typedef Raw8 T; };
template <> struct RawOf<4> { typedef u32 T; };
template <> struct RawOf<2> { typedef u16 T; };

// V elements moved as one load / store.
template <class D, int V> struct Pack {
    typedef typename RawOf<(int)sizeof(typename D::R) * V>::T Raw;
    union {
        Raw raw;
        typename D::R e[V];
    };
};

__device__ __forceinline__ bool finite_f(float f) { return (__float_as_uint(f) & 0x7f800000u) != 0x7f800000u; }

__device__ __forceinline__ u32 btype(u32 fl) { return (fl >> TYPE_SHIFT) & 3u; }

// ---------------------------------------------------------------- shared math

// relu that keeps NaN (as the reference does).
__device__ __forceinline__ float relu_nan(float v) { return (v > 0.f || v != v) ? v : 0.f; }

// t(x) of SPEC 4 blended as SPEC 5.1, literally (so non-finite inputs give the
// reference's NaNs), before the strict-mode clamp. `cw` is w_j, or p_j for ATTENTION.
__device__ __forceinline__ float seed_out(u32 fl, float cw, const SeedConst& q, float x, float xm1, float xm2) {
    float t;
    u32 ty = btype(fl);
    if (ty == TYPE_RES) {
        t = x + cw * q.s;
    } else if (ty == TYPE_ATT) {
        t = x * cw;
    } else if (ty == TYPE_MLP) {
        t = relu_nan(x * cw) * q.s;
    } else {
        t = q.s * (q.w0 * x + q.w1 * xm1 + q.w2 * xm2);
    }
    if (fl & FLAG_BLUEPRINT) return t;
    return (1.f - q.a) * x + q.a * t;
}

__device__ __forceinline__ float clamp_band(u32 fl, const SeedConst& q, float y) {
    if (fl & FLAG_CLAMP) {
        if (y < q.lo) return q.lo;
        if (y > q.hi) return q.hi;
    }
    return y;
}

__device__ __forceinline__ bool is_clamped(u32 fl, const SeedConst& q, float y) {
    return (fl & FLAG_CLAMP) && (y < q.lo || y > q.hi);
}

__device__ __forceinline__ Partial partial_empty() {
    Partial p;
    p.K = 0.f;
    p.d = 0.f;
    p.m2 = 0.f;
    p.mn = __int_as_float(0x7f800000);
    p.mx = __int_as_float(0xff800000);
    p.n = 0;
    p.dead = 0;
    p.nf = 0;
    return p;
}

// Chan's merge on shifted partials (f32): the result keeps a's shift.
__device__ __forceinline__ Partial partial_merge(const Partial& a, const Partial& b) {
    Partial r;
    r.n = a.n + b.n;
    r.dead = a.dead + b.dead;
    r.nf = a.nf + b.nf;
    r.mn = fminf(a.mn, b.mn);
    r.mx = fmaxf(a.mx, b.mx);
    if (a.n == 0) {
        r.K = b.K;
        r.d = b.d;
        r.m2 = b.m2;
    } else if (b.n == 0) {
        r.K = a.K;
        r.d = a.d;
        r.m2 = a.m2;
    } else {
        float fb = (float)b.n / (float)r.n;
        float delta = (b.K - a.K) + (b.d - a.d);
        r.K = a.K;
        r.d = a.d + delta * fb;
        r.m2 = a.m2 + b.m2 + delta * delta * ((float)a.n * fb);
    }
    return r;
}

__device__ __forceinline__ Partial partial_shfl_down(const Partial& p, int off) {
    Partial o;
    o.K = __shfl_down_sync(0xffffffffu, p.K, off);
    o.d = __shfl_down_sync(0xffffffffu, p.d, off);
    o.m2 = __shfl_down_sync(0xffffffffu, p.m2, off);
    o.mn = __shfl_down_sync(0xffffffffu, p.mn, off);
    o.mx = __shfl_down_sync(0xffffffffu, p.mx, off);
    o.n = __shfl_down_sync(0xffffffffu, p.n, off);
    o.dead = __shfl_down_sync(0xffffffffu, p.dead, off);
    o.nf = __shfl_down_sync(0xffffffffu, p.nf, off);
    return o;
}

// f64 moments for the final merge.
struct M64 {
    u64 n;
    u64 dead;
    u64 nf;
    double mean;
    double m2;
    double mn;
    double mx;
};

__device__ __forceinline__ M64 m64_empty() {
    M64 m;
    m.n = 0;
    m.dead = 0;
    m.nf = 0;
    m.mean = 0.0;
    m.m2 = 0.0;
    m.mn = __longlong_as_double(0x7ff0000000000000ll);
    m.mx = __longlong_as_double((long long)0xfff0000000000000ull);
    return m;
}

__device__ __forceinline__ M64 m64_merge(const M64& a, const M64& b) {
    M64 r;
    r.n = a.n + b.n;
    r.dead = a.dead + b.dead;
    r.nf = a.nf + b.nf;
    r.mn = fmin(a.mn, b.mn);
    r.mx = fmax(a.mx, b.mx);
    if (a.n == 0) {
        r.mean = b.mean;
        r.m2 = b.m2;
    } else if (b.n == 0) {
        r.mean = a.mean;
        r.m2 = a.m2;
    } else {
        double na = (double)a.n, nb = (double)b.n, nt = (double)r.n;
        double delta = b.mean - a.mean;
        r.mean = a.mean + delta * (nb / nt);
        r.m2 = a.m2 + b.m2 + delta * delta * (na * nb / nt);
    }
    return r;
}

__device__ __forceinline__ M64 m64_of(const Partial& p) {
    M64 m;
    m.n = p.n;
    m.dead = p.dead;
    m.nf = p.nf;
    m.mean = (double)p.K + (double)p.d;
    m.m2 = (double)p.m2;
    m.mn = (double)p.mn;
    m.mx = (double)p.mx;
    return m;
}

__device__ __forceinline__ M64 m64_shfl_down(const M64& p, int off) {
    M64 o;
    o.n = __shfl_down_sync(0xffffffffu, p.n, off);
    o.dead = __shfl_down_sync(0xffffffffu, p.dead, off);
    o.nf = __shfl_down_sync(0xffffffffu, p.nf, off);
    o.mean = __shfl_down_sync(0xffffffffu, p.mean, off);
    o.m2 = __shfl_down_sync(0xffffffffu, p.m2, off);
    o.mn = __shfl_down_sync(0xffffffffu, p.mn, off);
    o.mx = __shfl_down_sync(0xffffffffu, p.mx, off);
    return o;
}

// Per-column coefficients of the branch-free output formula (host: `ColCoef` in
// src/layer.rs), derived once per state change: for RESIDUAL, ATTENTION and MLP seeds
//   y = P x + Q relu(W x) + R
// is SPEC 5.1's blend (P = (1-a) + a p for ATTENTION, ...), so a warp whose columns belong
// to seeds of different types runs one instruction stream. CONV keeps its own path.
struct ColCoef {
    float P;
    float Q;
    float W;
    float R;
};

__device__ __forceinline__ float lin_out(const ColCoef& k, float x) {
    float y = k.R;
    // Only for finite x (non-finite inputs take seed_out, the literal formula).
    y = fmaf(k.P, x, y);
    if (k.Q != 0.f) y = fmaf(k.Q, relu_nan(k.W * x), y);
    return y;
}

// Per-lane constants of the V columns a thread owns.
template <int V>
__device__ __forceinline__ void lane_setup(u32 c, u32 H, u32 C, const SeedConst* __restrict__ sc,
                                           const ColCoef* __restrict__ colc, u32* fl, ColCoef* kc, u32* sd) {
#pragma unroll
    for (int l = 0; l < V; l++) {
        u32 col = c + l;
        fl[l] = 0;
        kc[l].P = 1.f;
        kc[l].Q = 0.f;
        kc[l].W = 0.f;
        kc[l].R = 0.f;
        sd[l] = 0;
        if (col < H) {
            u32 seed = col / C;
            u32 j = col - seed * C;
            sd[l] = seed;
            u32 f = sc[seed].flags;
            if (j >= 1) f |= LANE_M1;
            if (j >= 2) f |= LANE_M2;
            if (j + 1 < C) f |= LANE_P1;
            if (j + 2 < C) f |= LANE_P2;
            fl[l] = f;
            if (f & FLAG_ACTIVE) kc[l] = colc[col];
        }
    }
}

// ---------------------------------------------------------------- forward

// ACT = false compiles the identity-only variant the host uses when no seed is active:
// without the blend code the kernel needs far fewer registers (higher occupancy).
template <class D, int V, bool ACT>
__device__ __forceinline__ void fwd_impl(const typename D::R* __restrict__ x, typename D::R* __restrict__ y, u64 B,
                                         u32 H, u32 C, u32 R, float dead_eps, const SeedConst* __restrict__ sc,
                                         const ColCoef* __restrict__ colc, const float* __restrict__ coef,
                                         Partial* __restrict__ part, u32 segs) {
    typedef typename D::R RT;
    typedef Pack<D, V> P;
    extern __shared__ Partial sh_cols[];
    const u32 T = blockDim.x;
    const u32 TW = T * V;
    const u32 tile = blockIdx.y;
    const u64 rg = blockIdx.x;
    const u32 c0 = tile * TW;
    const u32 c = c0 + threadIdx.x * V;
    const u64 r0 = rg * (u64)R;
    const u64 rend = (r0 + R < B) ? r0 + R : B;
    const u32 nrows = (u32)(rend - r0);
    // H % V == 0 (the host picks V so), so a thread's V columns are all in or all out.
    const bool inrange = c < H;

    u32 fl[V];
    ColCoef kc[V];
    u32 sd[V];
    lane_setup<V>(c, H, C, sc, colc, fl, kc, sd);
    // Most threads' V columns lie in one seed: its constants then live in registers.
    const bool uni = sd[0] == sd[V - 1];
    SeedConst q0 = sc[sd[0]];
    float K[V], S1[V], S2[V], mn[V], mx[V];
    u32 cnt[V];  // dead in the low 16 bits, non-finite in the high 16 (R <= 4096)
    bool any_active = false;
    if (inrange && nrows > 0) {
        // The shift of each lane is its element of the block's first row (0 if that one is
        // not finite): close to the data, so f32 sums of (x - K) keep the variance.
        P first;
        first.raw = *reinterpret_cast<const typename P::Raw*>(x + r0 * (u64)H + c);
#pragma unroll
        for (int l = 0; l < V; l++) {
            float f = D::in(first.e[l]);
            K[l] = finite_f(f) ? f : 0.f;
        }
    } else {
#pragma unroll
        for (int l = 0; l < V; l++) K[l] = 0.f;
    }
#pragma unroll
    for (int l = 0; l < V; l++) {
        S1[l] = 0.f;
        S2[l] = 0.f;
        mn[l] = __int_as_float(0x7f800000);
        mx[l] = __int_as_float(0xff800000);
        cnt[l] = 0;
        any_active |= ACT && (fl[l] & FLAG_ACTIVE) != 0;
    }

    if (inrange) {
        for (u32 i = 0; i < nrows; i += UNROLL) {
            P buf[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                if (i + u < nrows) {
                    const u64 off = (r0 + i + u) * (u64)H + c;
                    buf[u].raw = *reinterpret_cast<const typename P::Raw*>(x + off);
                }
            }
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                if (i + u < nrows) {
                    const u64 rowoff = (r0 + i + u) * (u64)H;
                    P out;
#pragma unroll
                    for (int l = 0; l < V; l++) {
                        RT raw = buf[u].e[l];
                        float f = D::in(raw);
                        if (finite_f(f)) {
                            float dd = f - K[l];
                            S1[l] += dd;
                            S2[l] = fmaf(dd, dd, S2[l]);
                            mn[l] = fminf(mn[l], f);
                            mx[l] = fmaxf(mx[l], f);
                            if (fabsf(f) < dead_eps) cnt[l] += 1u;
                        } else {
                            cnt[l] += 1u << 16;
                        }
                        out.e[l] = raw;
                    }
                    if (ACT && any_active) {
#pragma unroll
                        for (int l = 0; l < V; l++) {
                            const u32 f = fl[l];
                            if (f & FLAG_ACTIVE) {
                                float xv = D::in(buf[u].e[l]);
                                float yv;
                                if (btype(f) == TYPE_CONV || !finite_f(xv)) {
                                    SeedConst q;
                                    if (uni) q = q0; else q = sc[sd[l]];
                                    float xm1 = 0.f, xm2 = 0.f;
                                    if (btype(f) == TYPE_CONV) {
                                        if (f & LANE_M1) xm1 = D::in(x[rowoff + c + l - 1]);
                                        if (f & LANE_M2) xm2 = D::in(x[rowoff + c + l - 2]);
                                    }
                                    yv = clamp_band(f, q, seed_out(f, coef[c + l], q, xv, xm1, xm2));
                                } else {
                                    yv = lin_out(kc[l], xv);
                                    if (f & FLAG_CLAMP) {
                                        SeedConst q;
                                        if (uni) q = q0; else q = sc[sd[l]];
                                        yv = clamp_band(f, q, yv);
                                    }
                                }
                                out.e[l] = D::out(yv);
                            }
                        }
                    }
                    *reinterpret_cast<typename P::Raw*>(y + rowoff + c) = out.raw;
                }
            }
        }
    }

#pragma unroll
    for (int l = 0; l < V; l++) {
        Partial p = partial_empty();
        if (inrange) {
            u32 nf = cnt[l] >> 16;
            u32 n = nrows - nf;
            p.nf = nf;
            if (n > 0) {
                p.n = n;
                p.dead = cnt[l] & 0xffffu;
                p.K = K[l];
                p.d = S1[l] / (float)n;
                p.m2 = fmaxf(S2[l] - S1[l] * p.d, 0.f);
                p.mn = mn[l];
                p.mx = mx[l];
            }
        }
        sh_cols[threadIdx.x * V + l] = p;
    }
    __syncthreads();

    // One warp per seed segment of this tile: lanes merge strided columns, then a fixed shuffle tree.
    const u32 cend = (c0 + TW < H) ? c0 + TW : H;
    const u32 sfirst = c0 / C;
    const u32 nseg = (cend - 1) / C - sfirst + 1;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = T / 32;
    for (u32 k = warp; k < nseg; k += nw) {
        const u32 seed = sfirst + k;
        const u32 lo = (seed * C > c0 ? seed * C : c0) - c0;
        const u32 hi = ((seed + 1) * C < cend ? (seed + 1) * C : cend) - c0;
        Partial acc = partial_empty();
        for (u32 cc = lo + lane; cc < hi; cc += 32) acc = partial_merge(acc, sh_cols[cc]);
        for (int off = 16; off > 0; off >>= 1) {
            Partial o = partial_shfl_down(acc, off);
            acc = partial_merge(acc, o);
        }
        if (lane == 0) part[(rg * gridDim.y + tile) * (u64)segs + k] = acc;
    }
}

// One warp per seed merges every partial of the call in f64 (fixed order), then adds
// the call's statistics to the seed's accumulator.
extern "C" __global__ void kasmina_fwd_merge(const Partial* __restrict__ part, u64 n_rg, u32 n_tiles, u32 segs,
                                             u32 TW, u32 C, u32 S, Acc* __restrict__ acc) {
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 seed = blockIdx.x * (blockDim.x / 32) + warp;
    if (seed >= S) return;
    const u64 t0 = ((u64)seed * C) / TW;
    const u64 t1 = ((u64)(seed + 1) * C - 1) / TW;
    const u64 nt = t1 - t0 + 1;
    const u64 items = n_rg * nt;
    M64 m = m64_empty();
    for (u64 it = lane; it < items; it += 32) {
        const u64 rg = it / nt;
        const u64 t = t0 + it % nt;
        const u64 k = seed - (t * TW) / C;
        m = m64_merge(m, m64_of(part[(rg * n_tiles + t) * segs + k]));
    }
    for (int off = 16; off > 0; off >>= 1) {
        M64 o = m64_shfl_down(m, off);
        m = m64_merge(m, o);
    }
    if (lane == 0) {
        Acc a = acc[seed];
        M64 prev;
        prev.n = a.n;
        prev.dead = a.dead;
        prev.nf = a.nf;
        prev.mean = a.mean;
        prev.m2 = a.m2;
        prev.mn = a.mn;
        prev.mx = a.mx;
        M64 r = m64_merge(prev, m);
        a.n = r.n;
        a.dead = r.dead;
        a.nf = r.nf;
        a.mean = r.mean;
        a.m2 = r.m2;
        a.mn = r.mn;
        a.mx = r.mx;
        acc[seed] = a;
    }
}

// ---------------------------------------------------------------- backward

// The gradient reaching the pre-clamp output of column (row, col): 0 where strict mode clamped it.
template <class D>
__device__ __forceinline__ float conv_geff(const typename D::R* __restrict__ x, const typename D::R* __restrict__ g,
                                           u64 rowoff, u32 col, u32 j, u32 fl, const SeedConst& q) {
    float gv = D::in(g[rowoff + col]);
    if (fl & FLAG_CLAMP) {
        float xv = D::in(x[rowoff + col]);
        float xm1 = j >= 1 ? D::in(x[rowoff + col - 1]) : 0.f;
        float xm2 = j >= 2 ? D::in(x[rowoff + col - 2]) : 0.f;
        if (is_clamped(fl, q, seed_out(fl, 0.f, q, xv, xm1, xm2))) gv = 0.f;
    }
    return gv;
}

template <class D, int V, bool ACT>
__device__ __forceinline__ void bwd_impl(const typename D::R* __restrict__ x, const typename D::R* __restrict__ g,
                                         typename D::R* __restrict__ dx, u64 B, u32 H, u32 C, u32 R,
                                         const SeedConst* __restrict__ sc, const ColCoef* __restrict__ colc,
                                         const float* __restrict__ coef, float* __restrict__ gpart,
                                         float* __restrict__ ppart, u32 segs) {
    typedef Pack<D, V> P;
    extern __shared__ float sh_g2[];
    const u32 T = blockDim.x;
    const u32 TW = T * V;
    const u32 tile = blockIdx.y;
    const u64 rg = blockIdx.x;
    const u32 c0 = tile * TW;
    const u32 c = c0 + threadIdx.x * V;
    const u64 r0 = rg * (u64)R;
    const u64 rend = (r0 + R < B) ? r0 + R : B;
    const u32 nrows = (u32)(rend - r0);
    const bool inrange = c < H;

    u32 fl[V];
    ColCoef kc[V];
    u32 sd[V];
    lane_setup<V>(c, H, C, sc, colc, fl, kc, sd);
    const bool uni = sd[0] == sd[V - 1];
    SeedConst q0 = sc[sd[0]];
    float G2[V], P0[V], P1[V], P2[V];
    bool any_active = false;
#pragma unroll
    for (int l = 0; l < V; l++) {
        G2[l] = 0.f;
        P0[l] = 0.f;
        P1[l] = 0.f;
        P2[l] = 0.f;
        any_active |= ACT && (fl[l] & FLAG_ACTIVE) != 0;
    }

    if (inrange) {
        for (u32 i = 0; i < nrows; i += UNROLL) {
            P gb[UNROLL];
            P xb[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                if (i + u < nrows) {
                    const u64 off = (r0 + i + u) * (u64)H + c;
                    gb[u].raw = *reinterpret_cast<const typename P::Raw*>(g + off);
                    if (ACT && any_active) xb[u].raw = *reinterpret_cast<const typename P::Raw*>(x + off);
                }
            }
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                if (i + u < nrows) {
                    const u64 rowoff = (r0 + i + u) * (u64)H;
                    P out;
#pragma unroll
                    for (int l = 0; l < V; l++) {
                        float gf = D::in(gb[u].e[l]);
                        G2[l] = fmaf(gf, gf, G2[l]);
                        out.e[l] = gb[u].e[l];
                    }
                    if (ACT && any_active) {
#pragma unroll
                        for (int l = 0; l < V; l++) {
                            const u32 f = fl[l];
                            if (f & FLAG_ACTIVE) {
                                const u32 col = c + l;
                                float xf = D::in(xb[u].e[l]);
                                float gj = D::in(gb[u].e[l]);
                                const u32 ty = btype(f);
                                float d;
                                if (ty == TYPE_CONV) {
                                    SeedConst q;
                                    if (uni) q = q0; else q = sc[sd[l]];
                                    float xm1 = (f & LANE_M1) ? D::in(x[rowoff + col - 1]) : 0.f;
                                    float xm2 = (f & LANE_M2) ? D::in(x[rowoff + col - 2]) : 0.f;
                                    if (is_clamped(f, q, seed_out(f, 0.f, q, xf, xm1, xm2))) gj = 0.f;
                                    const u32 j = col - sd[l] * C;
                                    float g1 = (f & LANE_P1) ? conv_geff<D>(x, g, rowoff, col + 1, j + 1, f, q) : 0.f;
                                    float g2 = (f & LANE_P2) ? conv_geff<D>(x, g, rowoff, col + 2, j + 2, f, q) : 0.f;
                                    float inner = q.s * (q.w0 * gj + q.w1 * g1 + q.w2 * g2);
                                    d = (f & FLAG_BLUEPRINT) ? inner : (1.f - q.a) * gj + q.a * inner;
                                    P0[l] = fmaf(gj, xf, P0[l]);
                                    P1[l] = fmaf(gj, xm1, P1[l]);
                                    P2[l] = fmaf(gj, xm2, P2[l]);
                                } else {
                                    const bool fin = finite_f(xf) && finite_f(gj);
                                    if (f & FLAG_CLAMP) {
                                        SeedConst q;
                                        if (uni) q = q0; else q = sc[sd[l]];
                                        float yv = finite_f(xf) ? lin_out(kc[l], xf) : seed_out(f, coef[col], q, xf, 0.f, 0.f);
                                        if (is_clamped(f, q, yv)) gj = 0.f;
                                    }
                                    const float v = kc[l].W * xf;
                                    const bool m = v > 0.f;
                                    if (fin) {
                                        // dx = g (P + m Q W) with m = [W x > 0] (SPEC 7's table, blended).
                                        d = gj * (m ? fmaf(kc[l].Q, kc[l].W, kc[l].P) : kc[l].P);
                                    } else {
                                        // Non-finite values follow SPEC 7's formula literally.
                                        SeedConst q;
                                        if (uni) q = q0; else q = sc[sd[l]];
                                        const float cwv = coef[col];
                                        float inner = ty == TYPE_RES ? gj
                                                    : ty == TYPE_ATT ? gj * cwv
                                                    : (xf * cwv > 0.f ? gj * cwv * q.s : 0.f);
                                        d = (f & FLAG_BLUEPRINT) ? inner : (1.f - q.a) * gj + q.a * inner;
                                    }
                                    // RESIDUAL sums g, ATTENTION g x, MLP g x m and g relu(x w).
                                    const float u0 = ty == TYPE_RES ? 1.f : ((ty == TYPE_ATT || m) ? xf : 0.f);
                                    P0[l] = fmaf(gj, u0, P0[l]);
                                    P1[l] = fmaf(gj, m ? v : 0.f, P1[l]);
                                }
                                out.e[l] = D::out(d);
                            }
                        }
                    }
                    *reinterpret_cast<typename P::Raw*>(dx + rowoff + c) = out.raw;
                }
            }
        }
    }

#pragma unroll
    for (int l = 0; l < V; l++) {
        sh_g2[threadIdx.x * V + l] = inrange ? G2[l] : 0.f;
        if (ACT && inrange && (fl[l] & FLAG_ACTIVE)) {
            float* pp = ppart + (rg * H + c + l) * 3;
            pp[0] = P0[l];
            pp[1] = P1[l];
            pp[2] = P2[l];
        }
    }
    __syncthreads();

    const u32 cend = (c0 + TW < H) ? c0 + TW : H;
    const u32 sfirst = c0 / C;
    const u32 nseg = (cend - 1) / C - sfirst + 1;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = T / 32;
    for (u32 k = warp; k < nseg; k += nw) {
        const u32 seed = sfirst + k;
        const u32 lo = (seed * C > c0 ? seed * C : c0) - c0;
        const u32 hi = ((seed + 1) * C < cend ? (seed + 1) * C : cend) - c0;
        float acc = 0.f;
        for (u32 cc = lo + lane; cc < hi; cc += 32) acc += sh_g2[cc];
        for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
        if (lane == 0) gpart[(rg * gridDim.y + tile) * (u64)segs + k] = acc;
    }
}

// Fixed-order tree sum over the block (blockDim.x a power of two, <= 1024).
__device__ double block_sum(double v, double* sh) {
    __syncthreads();
    sh[threadIdx.x] = v;
    __syncthreads();
    for (u32 s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    return sh[0];
}

// Sums the backward partials of every active column over the row groups, in f64 and a
// fixed order. Block (32, 8): x runs over 32 consecutive partial slots (col * 3 + i, so
// each warp reads 128 contiguous bytes per row group), y over 8 interleaved row-group strands
// that are added in order at the end.
extern "C" __global__ void kasmina_bwd_colsum(const float* __restrict__ ppart, u64 n_rg, u32 H, u32 C,
                                              const SeedConst* __restrict__ sc, double* __restrict__ colsum) {
    __shared__ double sh[8][33];
    const u64 f = (u64)blockIdx.x * 32 + threadIdx.x;
    const u64 nslots = (u64)H * 3;
    bool active = false;
    if (f < nslots) active = (sc[(u32)(f / 3) / C].flags & FLAG_ACTIVE) != 0;
    double s = 0.0;
    if (active) {
        for (u64 rg = threadIdx.y; rg < n_rg; rg += 8) s += (double)ppart[rg * nslots + f];
    }
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && f < nslots) {
        double t = 0.0;
        for (int k = 0; k < 8; k++) t += sh[k][threadIdx.x];
        colsum[f] = t;
    }
}

// One block per seed: the call's Σg² (into grad_norm and the accumulator), and
// the parameter gradients from the per-column sums (SPEC 7).
extern "C" __global__ void kasmina_bwd_finalize(const float* __restrict__ gpart, const double* __restrict__ colsum,
                                                u64 n_rg, u32 n_tiles, u32 segs, u32 TW, u32 C,
                                                const SeedConst* __restrict__ sc, const float* __restrict__ coef,
                                                float* __restrict__ dweights, float* __restrict__ dscales,
                                                float* __restrict__ gnorm, double* __restrict__ acc_g2) {
    __shared__ double sh[1024];
    const u32 seed = blockIdx.x;
    const u32 T = blockDim.x;
    const u64 t0 = ((u64)seed * C) / TW;
    const u64 t1 = ((u64)(seed + 1) * C - 1) / TW;
    const u64 nt = t1 - t0 + 1;
    const u64 items = n_rg * nt;
    double g2 = 0.0;
    for (u64 it = threadIdx.x; it < items; it += T) {
        const u64 rg = it / nt;
        const u64 t = t0 + it % nt;
        const u64 k = seed - (t * TW) / C;
        g2 += (double)gpart[(rg * n_tiles + t) * segs + k];
    }
    g2 = block_sum(g2, sh);
    if (threadIdx.x == 0) {
        gnorm[seed] = (float)sqrt(g2);
        acc_g2[seed] += g2;
    }

    const SeedConst q = sc[seed];
    const u64 base = (u64)seed * C;
    float* dw = dweights + base;
    const double* cs = colsum + base * 3;
    if (!(q.flags & FLAG_ACTIVE)) {
        for (u32 j = threadIdx.x; j < C; j += T) dw[j] = 0.f;
        if (threadIdx.x == 0) dscales[seed] = 0.f;
        return;
    }
    const double a = q.a, s = q.s;
    const u32 ty = btype(q.flags);
    if (ty == TYPE_RES || ty == TYPE_MLP) {
        double ds = 0.0;
        for (u32 j = threadIdx.x; j < C; j += T) {
            double p0 = cs[(u64)j * 3];
            dw[j] = (float)(a * s * p0);
            ds += ty == TYPE_RES ? (double)coef[base + j] * p0 : cs[(u64)j * 3 + 1];
        }
        ds = block_sum(ds, sh);
        if (threadIdx.x == 0) dscales[seed] = (float)(a * ds);
    } else if (ty == TYPE_ATT) {
        double qsum = 0.0;
        for (u32 j = threadIdx.x; j < C; j += T) qsum += (double)coef[base + j] * cs[(u64)j * 3];
        qsum = block_sum(qsum, sh);
        for (u32 j = threadIdx.x; j < C; j += T) {
            double p = coef[base + j];
            dw[j] = (float)(a * p * (cs[(u64)j * 3] - qsum));
        }
        if (threadIdx.x == 0) dscales[seed] = 0.f;
    } else {
        double tk[3];
        for (u32 k = 0; k < 3; k++) {
            double v = 0.0;
            for (u32 j = threadIdx.x; j < C; j += T) v += cs[(u64)j * 3 + k];
            tk[k] = block_sum(v, sh);
        }
        for (u32 j = threadIdx.x; j < C; j += T) dw[j] = j < 3 ? (float)(a * s * tk[j]) : 0.f;
        if (threadIdx.x == 0) {
            dscales[seed] = (float)(a * ((double)q.w0 * tk[0] + (double)q.w1 * tk[1] + (double)q.w2 * tk[2]));
        }
    }
}

// ---------------------------------------------------------------- entry points

// One module per (dtype, vector width): the host compiles only the variants it uses
// (`-DKASMINA_DT=DF32 -DKASMINA_V=4`), which keeps NVRTC and driver JIT time short.
#ifndef KASMINA_DT
#define KASMINA_DT DF32
#endif
#ifndef KASMINA_V
#define KASMINA_V 4
#endif

extern "C" __global__ void kasmina_fwd(const KASMINA_DT::R* x, KASMINA_DT::R* y, u64 B, u32 H, u32 C, u32 R,
                                       float dead_eps, const SeedConst* sc, const ColCoef* colc, const float* coef,
                                       Partial* part, u32 segs) {
    fwd_impl<KASMINA_DT, KASMINA_V, true>(x, y, B, H, C, R, dead_eps, sc, colc, coef, part, segs);
}

extern "C" __global__ void kasmina_fwd_identity(const KASMINA_DT::R* x, KASMINA_DT::R* y, u64 B, u32 H, u32 C,
                                                u32 R, float dead_eps, const SeedConst* sc, const ColCoef* colc,
                                                const float* coef, Partial* part, u32 segs) {
    fwd_impl<KASMINA_DT, KASMINA_V, false>(x, y, B, H, C, R, dead_eps, sc, colc, coef, part, segs);
}

extern "C" __global__ void kasmina_bwd(const KASMINA_DT::R* x, const KASMINA_DT::R* g, KASMINA_DT::R* dx, u64 B,
                                       u32 H, u32 C, u32 R, const SeedConst* sc, const ColCoef* colc,
                                       const float* coef, float* gpart, float* ppart, u32 segs) {
    bwd_impl<KASMINA_DT, KASMINA_V, true>(x, g, dx, B, H, C, R, sc, colc, coef, gpart, ppart, segs);
}

extern "C" __global__ void kasmina_bwd_identity(const KASMINA_DT::R* x, const KASMINA_DT::R* g, KASMINA_DT::R* dx,
                                                u64 B, u32 H, u32 C, u32 R, const SeedConst* sc,
                                                const ColCoef* colc, const float* coef, float* gpart, float* ppart,
                                                u32 segs) {
    bwd_impl<KASMINA_DT, KASMINA_V, false>(x, g, dx, B, H, C, R, sc, colc, coef, gpart, ppart, segs);
}
