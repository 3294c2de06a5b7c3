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
// Vectors (rows) one thread of the one-block-per-seed kernels loads before processing any: their
// threads hold a vector or two, so a short body (fewer instructions to fetch) serves them best.
#ifndef SEED_UNROLL
#define SEED_UNROLL 2
#endif

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

// Two outputs rounded into one 32-bit word (lo = y0, hi = y1) for 16-bit dtypes.
__device__ __forceinline__ u32 out2_bf16(float y0, float y1) {
#if __CUDA_ARCH__ >= 800
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(y1), "f"(y0));
    return r;
#else
    return (u32)DBF16::out(y0) | ((u32)DBF16::out(y1) << 16);
#endif
}

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

// Loads and stores of the seed-uniform forward's activations.
template <class R> __device__ __forceinline__ R ld_act(const R* p) { return *p; }
template <class R> __device__ __forceinline__ void st_act(R* p, const R& v) { *p = v; }

// Staged loads of the warp-per-seed forward: each thread copies its 16-byte vectors of the
// next WS_STAGES - 1 row batches into its own slots of shared memory with cp.async (sm_80 on),
// so those bytes stay in flight while it processes the current batch, without registers to
// hold them. A thread only reads slots it filled itself (after cp.async.wait_group), so no
// barrier is needed; a slot is refilled one batch after it was read (its values are then
// consumed). The host sizes the launch's shared memory for these stages (WS_LOAD_STAGES).
constexpr int WS_STAGES = 3;
template <class R> struct Stageable { static const bool ON = false; };
#if __CUDA_ARCH__ >= 800
template <> struct Stageable<Raw16> { static const bool ON = true; };
#endif
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
#if __CUDA_ARCH__ >= 800
    const u32 sa = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sa), "l"(gmem) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// Sets elements l and l + 1 (l even) of a pack from two floats.
template <class D, int V>
__device__ __forceinline__ void put2(Pack<D, V>& p, int l, float y0, float y1) {
    p.e[l] = D::out(y0);
    p.e[l + 1] = D::out(y1);
}
template <int V>
__device__ __forceinline__ void put2(Pack<DBF16, V>& p, int l, float y0, float y1) {
    reinterpret_cast<u32*>(p.e)[l / 2] = out2_bf16(y0, y1);
}

// Starts moving the line of `p` into this SM's L1 (no register, no wait): small kernels issue it
// for data they need only after a dependent step, so the later load hits L1.
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

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

// seed_out for a CONV seed (`bp`: FOSSILIZED), the same operations in the same order.
__device__ __forceinline__ float conv_y(const SeedConst& q, bool bp, float x, float xm1, float xm2) {
    const float t = q.s * (q.w0 * x + q.w1 * xm1 + q.w2 * xm2);
    if (bp) return t;
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

// The partial of one thread's (or column's) running statistics: n finite elements (nf
// non-finite ones), `dead` of them near zero, sums S1, S2 of the elements shifted by K.
__device__ __forceinline__ Partial partial_of(u32 n, u32 nf, u32 dead, float K, float S1, float S2, float mn,
                                              float mx) {
    Partial p = partial_empty();
    p.nf = nf;
    if (n > 0) {
        p.n = n;
        p.dead = dead;
        p.K = K;
        p.d = S1 / (float)n;
        p.m2 = fmaxf(S2 - S1 * p.d, 0.f);
        p.mn = mn;
        p.mx = mx;
    }
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
        // One division: fb = nb / n, and na nb / n = na fb.
        double na = (double)a.n, fb = (double)b.n / (double)r.n;
        double delta = b.mean - a.mean;
        r.mean = a.mean + delta * fb;
        r.m2 = a.m2 + b.m2 + delta * delta * (na * fb);
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
        const u32 nf = cnt[l] >> 16;
        sh_cols[threadIdx.x * V + l] =
            inrange ? partial_of(nrows - nf, nf, cnt[l] & 0xffffu, K[l], S1[l], S2[l], mn[l], mx[l]) : partial_empty();
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

// Merges statistics `m` into accumulator `a` (f64, Chan's formula).
__device__ __forceinline__ void acc_merge(Acc& a, const M64& m) {
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
}

// Adds the call's statistics `m` to the seed's accumulator.
__device__ __forceinline__ void acc_add(Acc* __restrict__ acc, u32 seed, const M64& m) {
    Acc a = acc[seed];
    acc_merge(a, m);
    acc[seed] = a;
}

// The first offset of a warp's shuffle tree when only lanes below `items` hold data: levels
// whose partners are all empty merge with m64_empty (an exact no-op for the lanes that
// reach lane 0), so skipping them gives the same bits with fewer dependent f64 merges.
__device__ __forceinline__ int tree_top(u64 items) {
    int top = 16;
    while (top > 0 && (u64)top >= items) top >>= 1;
    return top;
}

// One block per seed (blockDim.x a multiple of 32, at most 1024): each thread merges a
// strided share of the seed's partials in f64, then a fixed shuffle tree per warp and
// one over the warps' results; the same order, hence the same bits, on every run.
extern "C" __global__ void kasmina_fwd_merge(const Partial* __restrict__ part, u64 n_rg, u32 n_tiles, u32 segs,
                                             u32 TW, u32 C, u32 S, Acc* __restrict__ acc) {
    __shared__ M64 shm[32];
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    const u32 seed = blockIdx.x;
    if (seed >= S) return;
    const u64 t0 = ((u64)seed * C) / TW;
    const u64 t1 = ((u64)(seed + 1) * C - 1) / TW;
    const u64 nt = t1 - t0 + 1;
    const u64 items = n_rg * nt;
    M64 m = m64_empty();
    const u64 bd = blockDim.x;
    // Four loads in flight before their merges (same order as one at a time).
    for (u64 it0 = threadIdx.x; it0 < items; it0 += 4 * bd) {
        Partial p[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const u64 it = it0 + u * bd;
            if (it < items) {
                const u64 rg = it / nt;
                const u64 t = t0 + it % nt;
                const u64 k = seed - (t * TW) / C;
                p[u] = part[(rg * n_tiles + t) * segs + k];
            }
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            if (it0 + u * bd < items) m = m64_merge(m, m64_of(p[u]));
        }
    }
    if (items <= 32) {
        // Only warp 0's first `items` lanes hold data (one item each): the other warps and the
        // tree over the warps would only merge empties (exact no-ops), so skip them.
        if (warp != 0) return;
        for (int off = tree_top(items); off > 0; off >>= 1) {
            M64 o = m64_shfl_down(m, off);
            m = m64_merge(m, o);
        }
        if (lane == 0) acc_add(acc, seed, m);
        return;
    }
    for (int off = 16; off > 0; off >>= 1) {
        M64 o = m64_shfl_down(m, off);
        m = m64_merge(m, o);
    }
    if (lane == 0) shm[warp] = m;
    __syncthreads();
    if (warp != 0) return;
    m = lane < nw ? shm[lane] : m64_empty();
    for (int off = 16; off > 0; off >>= 1) {
        M64 o = m64_shfl_down(m, off);
        m = m64_merge(m, o);
    }
    if (lane == 0) acc_add(acc, seed, m);
}

// ---------------------------------------------------------------- small calls, one block per seed

// Statistics of a set of finite elements as sums shifted by one value K that a whole block
// shares: merging two is additions, so a block reduces them with a fixed tree of shuffles and
// no division (the latency of a small call is this tree's depth). K is an element of the seed's
// chunk, which keeps S2 - S1^2 / n accurate when |mean| / std is large (SPEC 5.2).
struct SumStats {
    u32 n;
    u32 dead;
    u32 nf;
    float mn;
    float mx;
    double s1;
    double s2;
};

__device__ __forceinline__ SumStats ss_merge(const SumStats& a, const SumStats& b) {
    SumStats r;
    r.n = a.n + b.n;
    r.dead = a.dead + b.dead;
    r.nf = a.nf + b.nf;
    r.mn = fminf(a.mn, b.mn);
    r.mx = fmaxf(a.mx, b.mx);
    r.s1 = a.s1 + b.s1;
    r.s2 = a.s2 + b.s2;
    return r;
}

__device__ __forceinline__ SumStats ss_shfl_down(const SumStats& p, int off) {
    SumStats o;
    o.n = __shfl_down_sync(0xffffffffu, p.n, off);
    o.dead = __shfl_down_sync(0xffffffffu, p.dead, off);
    o.nf = __shfl_down_sync(0xffffffffu, p.nf, off);
    o.mn = __shfl_down_sync(0xffffffffu, p.mn, off);
    o.mx = __shfl_down_sync(0xffffffffu, p.mx, off);
    o.s1 = __shfl_down_sync(0xffffffffu, p.s1, off);
    o.s2 = __shfl_down_sync(0xffffffffu, p.s2, off);
    return o;
}

// The block's sum of every thread's `m` (blockDim.x a multiple of 32), valid in thread 0: a
// shuffle tree per warp, then one over the warps' results in warp 0. Fixed order.
__device__ __forceinline__ SumStats ss_block(SumStats m, SumStats* shm) {
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    for (int off = 16; off > 0; off >>= 1) m = ss_merge(m, ss_shfl_down(m, off));
    if (nw == 1) return m;
    if (lane == 0) shm[warp] = m;
    __syncthreads();
    if (warp == 0) {
        if (lane < nw) {
            m = shm[lane];
        } else {
            m.n = m.dead = m.nf = 0;
            m.mn = __int_as_float(0x7f800000);
            m.mx = __int_as_float(0xff800000);
            m.s1 = m.s2 = 0.0;
        }
        for (int off = tree_top(nw); off > 0; off >>= 1) m = ss_merge(m, ss_shfl_down(m, off));
    }
    return m;
}

// f64 moments of shifted sums.
__device__ __forceinline__ M64 m64_of_sums(const SumStats& t, float K) {
    M64 m = m64_empty();
    m.nf = t.nf;
    if (t.n > 0) {
        const double n = (double)t.n, d = t.s1 / n;
        m.n = t.n;
        m.dead = t.dead;
        m.mean = (double)K + d;
        m.m2 = fmax(t.s2 - t.s1 * d, 0.0);
        m.mn = (double)t.mn;
        m.mx = (double)t.mx;
    }
    return m;
}

// The whole forward of one seed's chunk (all B rows, C columns) in one block: output, exact
// statistics and their merge into the seed's accumulator, in one launch with no partials in
// global memory and no second kernel. For small calls (a few KiB per seed), where launches,
// not bytes, set the time. Thread t takes the chunk's vectors t, t + T, t + 2T, ... (row-major,
// C % V == 0 so a vector never crosses a row or a seed); every thread shifts its sums by the
// first finite element of the chunk's first vector (0 when there is none), and the block adds
// them up by ss_block: the same bits on every run. Identity seeds copy bits; active ones use
// the per-column formula (lin_out, or the literal seed_out for CONV and non-finite inputs) and
// the clamp, as kasmina_fwd. `q` is the seed's constants, `colc` and `coef` its C columns'.
template <class D, int V>
__device__ __forceinline__ void fwd_seed_impl(const typename D::R* __restrict__ x, typename D::R* __restrict__ y,
                                              u64 B, u32 H, u32 C, float dead_eps, const SeedConst& q,
                                              const ColCoef* __restrict__ colc, const float* __restrict__ coef,
                                              Acc* __restrict__ acc) {
    typedef Pack<D, V> P;
    __shared__ SumStats shm[32];
    const u32 seed = blockIdx.x;
    const u32 T = blockDim.x;
    const u32 G = C / V;
    const u32 nvec = (u32)B * G;
    const u32 base = seed * C;
    const u32 fl = q.flags;
    const bool act = (fl & FLAG_ACTIVE) != 0;
    const bool conv = act && btype(fl) == TYPE_CONV;
    // The accumulator is read now so its load overlaps the work (only this block writes it).
    Acc prev;
    if (threadIdx.x == 0) prev = acc[seed];

    P kp;
    kp.raw = *reinterpret_cast<const typename P::Raw*>(x + base);
    float K = 0.f;
#pragma unroll
    for (int l = V - 1; l >= 0; l--) {
        const float f = D::in(kp.e[l]);
        if (finite_f(f)) K = f;
    }
    float S1 = 0.f, S2 = 0.f;
    float mn = __int_as_float(0x7f800000), mx = __int_as_float(0xff800000);
    u32 n = 0, dead = 0, nf = 0;
    // A chunk holds at most SEEDWISE_MAX_BYTES (far below 2^32 vectors): 32-bit row arithmetic.
    for (u32 v0 = threadIdx.x; v0 < nvec; v0 += SEED_UNROLL * T) {
        P buf[SEED_UNROLL];
        u64 off[SEED_UNROLL];
        u32 jv0[SEED_UNROLL];
        // CONV's two left neighbours of each vector, loaded with it (0 at the chunk's start).
        float nb1[SEED_UNROLL], nb2[SEED_UNROLL];
#pragma unroll
        for (int u = 0; u < SEED_UNROLL; u++) {
            const u32 v = v0 + u * T;
            if (v < nvec) {
                const u32 row = v / G;
                jv0[u] = (v - row * G) * V;
                off[u] = row * (u64)H + base + jv0[u];
                buf[u].raw = *reinterpret_cast<const typename P::Raw*>(x + off[u]);
                nb1[u] = conv && jv0[u] >= 1 ? D::in(x[off[u] - 1]) : 0.f;
                nb2[u] = conv && jv0[u] >= 2 ? D::in(x[off[u] - 2]) : 0.f;
            }
        }
#pragma unroll
        for (int u = 0; u < SEED_UNROLL; u++) {
            const u32 v = v0 + u * T;
            if (v >= nvec) continue;
            P out;
            out.raw = buf[u].raw;
            const u32 j0 = jv0[u];
#pragma unroll
            for (int l = 0; l < V; l++) {
                const float f = D::in(buf[u].e[l]);
                if (finite_f(f)) {
                    const float dd = f - K;
                    S1 += dd;
                    S2 = fmaf(dd, dd, S2);
                    mn = fminf(mn, f);
                    mx = fmaxf(mx, f);
                    dead += fabsf(f) < dead_eps ? 1u : 0u;
                    n += 1u;
                } else {
                    nf += 1u;
                }
                if (act) {
                    const u32 j = j0 + l;
                    float yv;
                    if (conv || !finite_f(f)) {
                        // Left neighbours from this vector's registers where it holds them.
                        const float xm1 = !(conv && j >= 1) ? 0.f
                                          : l >= 1 ? D::in(buf[u].e[l >= 1 ? l - 1 : 0])
                                                   : nb1[u];
                        const float xm2 = !(conv && j >= 2) ? 0.f
                                          : l >= 2 ? D::in(buf[u].e[l >= 2 ? l - 2 : 0])
                                          : l == 1 ? nb1[u]
                                                   : nb2[u];
                        yv = seed_out(fl, coef[j], q, f, xm1, xm2);
                    } else {
                        yv = lin_out(colc[j], f);
                    }
                    out.e[l] = D::out(clamp_band(fl, q, yv));
                }
            }
            *reinterpret_cast<typename P::Raw*>(y + off[u]) = out.raw;
        }
    }

    SumStats m;
    m.n = n;
    m.dead = dead;
    m.nf = nf;
    m.mn = mn;
    m.mx = mx;
    m.s1 = (double)S1;
    m.s2 = (double)S2;
    m = ss_block(m, shm);
    if (threadIdx.x == 0) {
        acc_merge(prev, m64_of_sums(m, K));
        acc[seed] = prev;
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

// The input gradient of one element of an active column (row at `rowoff`, column `col`, lane
// flags `f`, coefficients `k`, seed `sd`: its constants are `q0` when `uni`, else read) and
// its terms of the column sums P0..P2 the parameter gradients come from (SPEC 7).
template <class D>
__device__ __forceinline__ float bwd_elem(const typename D::R* __restrict__ x, const typename D::R* __restrict__ g,
                                          u64 rowoff, u32 col, u32 f, const ColCoef& k,
                                          const SeedConst* __restrict__ sc, u32 sd, bool uni, const SeedConst& q0,
                                          const float* __restrict__ coef, u32 C, float xf, float gj, float& P0,
                                          float& P1, float& P2) {
    const u32 ty = btype(f);
    float d;
    if (ty == TYPE_CONV) {
        SeedConst q;
        if (uni) q = q0; else q = sc[sd];
        float xm1 = (f & LANE_M1) ? D::in(x[rowoff + col - 1]) : 0.f;
        float xm2 = (f & LANE_M2) ? D::in(x[rowoff + col - 2]) : 0.f;
        if (is_clamped(f, q, seed_out(f, 0.f, q, xf, xm1, xm2))) gj = 0.f;
        const u32 j = col - sd * C;
        float g1 = (f & LANE_P1) ? conv_geff<D>(x, g, rowoff, col + 1, j + 1, f, q) : 0.f;
        float g2 = (f & LANE_P2) ? conv_geff<D>(x, g, rowoff, col + 2, j + 2, f, q) : 0.f;
        float inner = q.s * (q.w0 * gj + q.w1 * g1 + q.w2 * g2);
        d = (f & FLAG_BLUEPRINT) ? inner : (1.f - q.a) * gj + q.a * inner;
        P0 = fmaf(gj, xf, P0);
        P1 = fmaf(gj, xm1, P1);
        P2 = fmaf(gj, xm2, P2);
    } else {
        const bool fin = finite_f(xf) && finite_f(gj);
        if (f & FLAG_CLAMP) {
            SeedConst q;
            if (uni) q = q0; else q = sc[sd];
            float yv = finite_f(xf) ? lin_out(k, xf) : seed_out(f, coef[col], q, xf, 0.f, 0.f);
            if (is_clamped(f, q, yv)) gj = 0.f;
        }
        const float v = k.W * xf;
        const bool m = v > 0.f;
        if (fin) {
            // dx = g (P + m Q W) with m = [W x > 0] (SPEC 7's table, blended).
            d = gj * (m ? fmaf(k.Q, k.W, k.P) : k.P);
        } else {
            // Non-finite values follow SPEC 7's formula literally.
            SeedConst q;
            if (uni) q = q0; else q = sc[sd];
            const float cwv = coef[col];
            float inner = ty == TYPE_RES ? gj
                        : ty == TYPE_ATT ? gj * cwv
                        : (xf * cwv > 0.f ? gj * cwv * q.s : 0.f);
            d = (f & FLAG_BLUEPRINT) ? inner : (1.f - q.a) * gj + q.a * inner;
        }
        // RESIDUAL sums g, ATTENTION g x, MLP g x m and g relu(x w).
        const float u0 = ty == TYPE_RES ? 1.f : ((ty == TYPE_ATT || m) ? xf : 0.f);
        P0 = fmaf(gj, u0, P0);
        P1 = fmaf(gj, m ? v : 0.f, P1);
    }
    return d;
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
                                const float d = bwd_elem<D>(x, g, rowoff, c + l, f, kc[l], sc, sd[l], uni, q0, coef, C,
                                                            D::in(xb[u].e[l]), D::in(gb[u].e[l]), P0[l], P1[l],
                                                            P2[l]);
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

// Fixed-order sum over the block (blockDim.x a multiple of 32, at most 1024), returned to
// every thread: a shuffle tree per warp, then the warps' sums added in order. `sh` holds 32.
__device__ double block_sum(double v, double* sh) {
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    __syncthreads();  // every thread has read the previous call's sums
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    double t = 0.0;
    for (u32 k = 0; k < nw; k++) t += sh[k];
    return t;
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

// The parameter gradients of seed `seed` from its per-column sums `cs` (C x 3, SPEC 7), written
// to `dweights` / `dscales`; every thread of the block calls it (`sh`: 32 doubles).
__device__ __forceinline__ void seed_grads(u32 seed, u32 C, const SeedConst& q, const double* cs,
                                           const float* __restrict__ coef, float* __restrict__ dweights,
                                           float* __restrict__ dscales, double* sh) {
    const u32 T = blockDim.x;
    const u64 base = (u64)seed * C;
    float* dw = dweights + base;
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

// One block per seed: the call's Σg² (into grad_norm and the accumulator), and
// the parameter gradients from the per-column sums (SPEC 7).
extern "C" __global__ void kasmina_bwd_finalize(const float* __restrict__ gpart, const double* __restrict__ colsum,
                                                u64 n_rg, u32 n_tiles, u32 segs, u32 TW, u32 C,
                                                const SeedConst* __restrict__ sc, const float* __restrict__ coef,
                                                float* __restrict__ dweights, float* __restrict__ dscales,
                                                float* __restrict__ gnorm, double* __restrict__ acc_g2) {
    __shared__ double sh[32];
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
    seed_grads(seed, C, sc[seed], colsum + (u64)seed * C * 3, coef, dweights, dscales, sh);
}

// The two columns on each side of a CONV vector that its backward reads (0 outside the chunk),
// loaded next to the vector itself instead of one dependent load after another per column.
struct ConvEdges {
    float xl2, xl1, xr0, xr1, gr0, gr1;
};

template <class D, int V>
__device__ __forceinline__ ConvEdges conv_edges(const typename D::R* __restrict__ x,
                                                const typename D::R* __restrict__ g, u64 at, u32 j0, u32 C) {
    ConvEdges e;
    e.xl2 = j0 >= 2 ? D::in(x[at - 2]) : 0.f;
    e.xl1 = j0 >= 1 ? D::in(x[at - 1]) : 0.f;
    const bool r0 = j0 + V < C, r1 = j0 + V + 1 < C;
    e.xr0 = r0 ? D::in(x[at + V]) : 0.f;
    e.xr1 = r1 ? D::in(x[at + V + 1]) : 0.f;
    e.gr0 = r0 ? D::in(g[at + V]) : 0.f;
    e.gr1 = r1 ? D::in(g[at + V + 1]) : 0.f;
    return e;
}

// bwd_elem for the V columns of one row of an active CONV seed (chunk position `j0`), from the
// row's vectors and their edges: the same operations and values.
template <class D, int V>
__device__ __forceinline__ void bwd_conv_vec(u32 j0, u32 C, const SeedConst& q, const Pack<D, V>& xv,
                                             const Pack<D, V>& gv, const ConvEdges& ed, Pack<D, V>& out, float* P0,
                                             float* P1, float* P2) {
    const u32 f = q.flags;
    // xs[p + 2] = x at chunk position j0 + p (p = -2 .. V + 1), 0 outside the chunk; gs likewise
    // for p = 0 .. V + 1.
    float xs[V + 4], gs[V + 2];
    xs[0] = ed.xl2;
    xs[1] = ed.xl1;
#pragma unroll
    for (int l = 0; l < V; l++) {
        xs[l + 2] = D::in(xv.e[l]);
        gs[l] = D::in(gv.e[l]);
    }
    xs[V + 2] = ed.xr0;
    xs[V + 3] = ed.xr1;
    gs[V] = ed.gr0;
    gs[V + 1] = ed.gr1;
    // The gradient reaching each position's pre-clamp output (conv_geff).
    float ge[V + 2];
#pragma unroll
    for (int p = 0; p < V + 2; p++) {
        ge[p] = gs[p];
        if ((f & FLAG_CLAMP) && j0 + p < C) {
            const float xm1 = j0 + p >= 1 ? xs[p + 1] : 0.f;
            const float xm2 = j0 + p >= 2 ? xs[p] : 0.f;
            if (is_clamped(f, q, seed_out(f, 0.f, q, xs[p + 2], xm1, xm2))) ge[p] = 0.f;
        }
    }
#pragma unroll
    for (int l = 0; l < V; l++) {
        const u32 j = j0 + l;
        const float xm1 = j >= 1 ? xs[l + 1] : 0.f;
        const float xm2 = j >= 2 ? xs[l] : 0.f;
        const float gj = ge[l];
        const float g1 = j + 1 < C ? ge[l + 1] : 0.f;
        const float g2 = j + 2 < C ? ge[l + 2] : 0.f;
        const float inner = q.s * (q.w0 * gj + q.w1 * g1 + q.w2 * g2);
        out.e[l] = D::out((f & FLAG_BLUEPRINT) ? inner : (1.f - q.a) * gj + q.a * inner);
        P0[l] = fmaf(gj, xs[l + 2], P0[l]);
        P1[l] = fmaf(gj, xm1, P1[l]);
        P2[l] = fmaf(gj, xm2, P2[l]);
    }
}

struct Sum4 {
    double x, y, z, w;
};

// Four doubles summed over a block in one pass (blockDim.x a multiple of 32, at most 1024):
// a shuffle tree per warp, one barrier, then every thread adds the warps' sums in order, so
// every thread gets the same bits. `sh` holds 32 of them.
__device__ __forceinline__ Sum4 block_sum4(Sum4 v, Sum4* sh) {
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    for (int off = 16; off > 0; off >>= 1) {
        v.x += __shfl_down_sync(0xffffffffu, v.x, off);
        v.y += __shfl_down_sync(0xffffffffu, v.y, off);
        v.z += __shfl_down_sync(0xffffffffu, v.z, off);
        v.w += __shfl_down_sync(0xffffffffu, v.w, off);
    }
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    Sum4 t = sh[0];
    for (u32 k = 1; k < nw; k++) {
        const Sum4 o = sh[k];
        t.x += o.x;
        t.y += o.y;
        t.z += o.z;
        t.w += o.w;
    }
    return t;
}

// The whole backward of one seed's chunk in one block (small calls): dx, the call's Σg² (into
// grad_norm and the accumulator) and the parameter gradients (SPEC 7), with no partials in
// global memory, no second kernel and one barrier. Thread t owns vector column t % G of the
// chunk (G = C / V) and rows t / G, t / G + L, ... (L = blockDim.x / G row lanes; threads from
// L G on only join the sums). The sums over the whole chunk (Σg², and the scale's and CONV's
// sums: Σ_j coef_j P0_j for RESIDUAL and ATTENTION, Σ_j P1_j for MLP, Σ_j P0..P2_j for CONV) are
// one four-double block reduction; the per-column sums P0_j that the weights' gradients of
// RESIDUAL, ATTENTION and MLP need are each lane's f32 sums in shared memory, added over the
// lanes in f64 and in order by one thread per column. The same bits on every run. Needs
// G <= blockDim.x (a multiple of 32, at most 1024) and C * 4 * L bytes of dynamic shared memory.
template <class D, int V>
__device__ __forceinline__ void bwd_seed_impl(const typename D::R* __restrict__ x, const typename D::R* __restrict__ g,
                                              typename D::R* __restrict__ dx, u64 B, u32 H, u32 C,
                                              const SeedConst* __restrict__ sc, const ColCoef* __restrict__ colc,
                                              const float* __restrict__ coef, float* __restrict__ dweights,
                                              float* __restrict__ dscales, float* __restrict__ gnorm,
                                              double* __restrict__ acc_g2) {
    typedef Pack<D, V> P;
    extern __shared__ float pp[];
    __shared__ Sum4 red[32];
    const u32 seed = blockIdx.x;
    const u32 T = blockDim.x;
    const u32 G = C / V;
    const u32 L = T / G;
    const u32 gv = threadIdx.x % G;
    const u32 lr = threadIdx.x / G;
    const bool worker = lr < L;
    const u64 base = (u64)seed * C;
    const u32 c = seed * C + gv * V;

    // Everything this block reads is requested up front, independent of the seed's mode, so
    // the loads overlap instead of waiting on the constants: the Σg² accumulator the end reads
    // (L1 prefetch), the columns' coefficients, then X and G.
    if (threadIdx.x == 0) prefetch_l1(acc_g2 + seed);
    const SeedConst q0 = sc[seed];
    u32 fl[V];
    ColCoef kc[V];
    float cw[V];
#pragma unroll
    for (int l = 0; l < V; l++) {
        const u32 j = gv * V + l;
        kc[l] = colc[c + l];
        cw[l] = coef[c + l];
        fl[l] = q0.flags | (j >= 1 ? LANE_M1 : 0u) | (j >= 2 ? LANE_M2 : 0u) | (j + 1 < C ? LANE_P1 : 0u) |
                (j + 2 < C ? LANE_P2 : 0u);
    }
    const bool act = (q0.flags & FLAG_ACTIVE) != 0;
    const u32 ty = btype(q0.flags);
    const bool conv = act && ty == TYPE_CONV;
    float G2[V], P0[V], P1[V], P2[V];
#pragma unroll
    for (int l = 0; l < V; l++) {
        G2[l] = 0.f;
        P0[l] = 0.f;
        P1[l] = 0.f;
        P2[l] = 0.f;
    }
    if (worker) {
        for (u64 r0 = lr; r0 < B; r0 += (u64)SEED_UNROLL * L) {
            P gb[SEED_UNROLL];
            P xb[SEED_UNROLL];
            ConvEdges ed[SEED_UNROLL];
#pragma unroll
            for (int u = 0; u < SEED_UNROLL; u++) {
                const u64 r = r0 + (u64)u * L;
                if (r < B) {
                    const u64 off = r * (u64)H + c;
                    gb[u].raw = *reinterpret_cast<const typename P::Raw*>(g + off);
                    xb[u].raw = *reinterpret_cast<const typename P::Raw*>(x + off);
                    if (conv) ed[u] = conv_edges<D, V>(x, g, off, gv * V, C);
                }
            }
#pragma unroll
            for (int u = 0; u < SEED_UNROLL; u++) {
                const u64 r = r0 + (u64)u * L;
                if (r >= B) continue;
                const u64 rowoff = r * (u64)H;
                P out;
#pragma unroll
                for (int l = 0; l < V; l++) {
                    const float gf = D::in(gb[u].e[l]);
                    G2[l] = fmaf(gf, gf, G2[l]);
                    out.e[l] = gb[u].e[l];
                }
                if (conv) {
                    bwd_conv_vec<D, V>(gv * V, C, q0, xb[u], gb[u], ed[u], out, P0, P1, P2);
                } else if (act) {
#pragma unroll
                    for (int l = 0; l < V; l++) {
                        const float d = bwd_elem<D>(x, g, rowoff, c + l, fl[l], kc[l], sc, seed, true, q0, coef, C,
                                                    D::in(xb[u].e[l]), D::in(gb[u].e[l]), P0[l], P1[l], P2[l]);
                        out.e[l] = D::out(d);
                    }
                }
                *reinterpret_cast<typename P::Raw*>(dx + rowoff + c) = out.raw;
            }
        }
        if (act && !conv) {
#pragma unroll
            for (int l = 0; l < V; l++) pp[(u64)lr * C + gv * V + l] = P0[l];
        }
    }
    // This thread's terms of the chunk-wide sums (zero for threads outside the lanes).
    Sum4 t = {0.0, 0.0, 0.0, 0.0};
#pragma unroll
    for (int l = 0; l < V; l++) {
        t.x += (double)G2[l];
        if (conv) {
            t.y += (double)P0[l];
            t.z += (double)P1[l];
            t.w += (double)P2[l];
        } else if (ty == TYPE_MLP) {
            t.y += (double)P1[l];
        } else {
            t.y += (double)cw[l] * (double)P0[l];
        }
    }
    // The barrier inside also orders the lanes' column sums before the reads below.
    t = block_sum4(t, red);
    float* dw = dweights + base;
    if (threadIdx.x == 0) {
        gnorm[seed] = (float)sqrt(t.x);
        acc_g2[seed] += t.x;
    }
    const double a = q0.a, s = q0.s;
    if (!act) {
        for (u32 j = threadIdx.x; j < C; j += T) dw[j] = 0.f;
        if (threadIdx.x == 0) dscales[seed] = 0.f;
    } else if (conv) {
        for (u32 j = threadIdx.x; j < C; j += T) {
            const double tk = j == 0 ? t.y : j == 1 ? t.z : t.w;
            dw[j] = j < 3 ? (float)(a * s * tk) : 0.f;
        }
        if (threadIdx.x == 0) {
            dscales[seed] = (float)(a * ((double)q0.w0 * t.y + (double)q0.w1 * t.z + (double)q0.w2 * t.w));
        }
    } else {
        for (u32 j = threadIdx.x; j < C; j += T) {
            double cs = 0.0;
            for (u32 r = 0; r < L; r++) cs += (double)pp[(u64)r * C + j];
            dw[j] = ty == TYPE_ATT ? (float)(a * (double)coef[base + j] * (cs - t.y)) : (float)(a * s * cs);
        }
        if (threadIdx.x == 0) dscales[seed] = ty == TYPE_ATT ? 0.f : (float)(a * t.y);
    }
}

// ---------------------------------------------------------------- seed-uniform kernels
//
// Used when C % V == 0: every thread's V columns then lie in one seed, so the seed's
// mode is a per-thread value (no per-lane branches), per-thread statistics replace the
// per-column ones (a few registers instead of 6 V), a RESIDUAL / ATTENTION / MLP column
// needs one coefficient in a register (the other two are per seed), and CONV takes its
// neighbours from the thread's own registers or a warp shuffle instead of global memory.
// Loads and stores stay outside every divergent branch.

// The branch-free formula of lin_out for one seed type: `k` is R (RESIDUAL), P (ATTENTION)
// or W (MLP); Ps and Qs are the seed's uniform P and Q. Same operations as lin_out.
__device__ __forceinline__ float lin_u(u32 ty, float k, float Ps, float Qs, float x) {
    if (ty == TYPE_RES) return fmaf(Ps, x, k);
    if (ty == TYPE_ATT) return fmaf(k, x, 0.f);
    float yv = fmaf(Ps, x, 0.f);
    if (Qs != 0.f) yv = fmaf(Qs, relu_nan(k * x), yv);
    return yv;
}

// Element l of a pack as a float, bf16 pairs read as 32-bit words: the high element of a word
// is one AND (not an extract and a shift). Same values as D::in(p.e[l]).
template <class D, int V> struct PairIn {
    static const bool ON = false;
    static __device__ __forceinline__ float at(const Pack<D, V>& p, int l) { return D::in(p.e[l]); }
};
template <int V> struct PairIn<DBF16, V> {
    static const bool ON = V >= 2;
    static __device__ __forceinline__ float at(const Pack<DBF16, V>& p, int l) {
        if (V < 2) return DBF16::in(p.e[l]);
        const u32 w = reinterpret_cast<const u32*>(p.e)[l / 2];
        return __uint_as_float((l & 1) ? (w & 0xffff0000u) : (w << 16));
    }
};

template <class D>
__device__ __forceinline__ u32 raw_u32(typename D::R r) { return (u32)r; }

// The values of columns c - 1 and c - 2 of one row for a CONV thread whose first column is
// c (chunk position j0): from the lower neighbour lane's registers, else from memory.
template <class D, int V>
__device__ __forceinline__ void conv_left(const Pack<D, V>& e, const typename D::R* __restrict__ x, u64 rowoff, u32 c,
                                          u32 j0, u32 lane, u32 wmask, bool conv, float& m1, float& m2) {
    const u32 s1 = __shfl_up_sync(wmask, raw_u32<D>(e.e[V - 1]), 1);
    const u32 s2 = V >= 2 ? __shfl_up_sync(wmask, raw_u32<D>(e.e[V >= 2 ? V - 2 : 0]), 1)
                          : __shfl_up_sync(wmask, raw_u32<D>(e.e[V - 1]), 2);
    m1 = 0.f;
    m2 = 0.f;
    if (conv) {
        if (j0 >= 1) m1 = lane >= 1 ? D::in((typename D::R)s1) : D::in(x[rowoff + c - 1]);
        if (j0 >= 2) m2 = lane >= (V >= 2 ? 1u : 2u) ? D::in((typename D::R)s2) : D::in(x[rowoff + c - 2]);
    }
}

// conv_left for V >= 2 with the thread's columns c - 2 and c - 1 of the row already loaded
// (`nb`, loaded with the row by lane 0 of a CONV thread with j0 >= 2; j0 is a multiple of V):
// the same values, without a dependent global load per row.
template <class D, int V>
__device__ __forceinline__ void conv_left_pre(const Pack<D, V>& e, const Pack<D, 2>& nb, u32 j0, u32 lane, u32 wmask,
                                              bool conv, float& m1, float& m2) {
    const u32 s1 = __shfl_up_sync(wmask, raw_u32<D>(e.e[V - 1]), 1);
    const u32 s2 = __shfl_up_sync(wmask, raw_u32<D>(e.e[V >= 2 ? V - 2 : 0]), 1);
    m1 = 0.f;
    m2 = 0.f;
    if (conv) {
        if (j0 >= 1) m1 = lane >= 1 ? D::in((typename D::R)s1) : D::in(nb.e[1]);
        if (j0 >= 2) m2 = lane >= 1 ? D::in((typename D::R)s2) : D::in(nb.e[0]);
    }
}

template <class D, int V>
__device__ __forceinline__ float conv_xm1(const Pack<D, V>& e, int l, float m1) {
    return l >= 1 ? PairIn<D, V>::at(e, l >= 1 ? l - 1 : 0) : m1;
}

template <class D, int V>
__device__ __forceinline__ float conv_xm2(const Pack<D, V>& e, int l, float m1, float m2) {
    return l >= 2 ? PairIn<D, V>::at(e, l >= 2 ? l - 2 : 0) : (l == 1 ? m1 : m2);
}

// Per-thread constants of an active seed (identity threads keep the defaults).
template <int V>
__device__ __forceinline__ void uni_setup(bool act, u32 ty, u32 seed, u32 c, const SeedConst* __restrict__ sc,
                                          const ColCoef* __restrict__ colc, SeedConst& q, float* k, float& Ps,
                                          float& Qs) {
    q.flags = 0;
    q.a = 0.f;
    q.s = 0.f;
    q.lo = 0.f;
    q.hi = 0.f;
    q.w0 = 0.f;
    q.w1 = 0.f;
    q.w2 = 0.f;
    Ps = 1.f;
    Qs = 0.f;
#pragma unroll
    for (int l = 0; l < V; l++) k[l] = 0.f;
    if (act) {
        q = sc[seed];
        if (ty != TYPE_CONV) {
            Ps = colc[c].P;
            Qs = colc[c].Q;
#pragma unroll
            for (int l = 0; l < V; l++) {
                const ColCoef kk = colc[c + l];
                k[l] = ty == TYPE_RES ? kk.R : ty == TYPE_ATT ? kk.P : kk.W;
            }
        }
    }
}

// Whether every seed of a tile is G = C / V consecutive threads aligned within one warp
// (C % V == 0 is given; G a power of two up to 32 and tiles starting on a seed boundary):
// then the per-seed statistics reduce with warp shuffles alone. Uniform over the launch.
__device__ __forceinline__ bool seg_in_warp(u32 C, u32 V, u32 TW) {
    const u32 G = C / V;
    return G >= 1 && G <= 32 && (G & (G - 1)) == 0 && TW % C == 0;
}

// Min / max of bf16 pairs in one instruction each (sm_80 on): the statistics' fast path
// (all inputs finite, else recomputed) keeps running minima and maxima of packed pairs.
template <class D, int V> struct MinMax2 {
    static const bool ON = false;
    static __device__ __forceinline__ u32 min2(u32 a, u32) { return a; }
    static __device__ __forceinline__ u32 max2(u32 a, u32) { return a; }
};
#if __CUDA_ARCH__ >= 800
template <int V> struct MinMax2<DBF16, V> {
    static const bool ON = V >= 2;
    static __device__ __forceinline__ u32 min2(u32 a, u32 b) {
        u32 r;
        asm("min.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
        return r;
    }
    static __device__ __forceinline__ u32 max2(u32 a, u32 b) {
        u32 r;
        asm("max.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
        return r;
    }
};
#endif

// Dead-element test on bf16 pairs without float compares: for a bf16 h, |h| < eps exactly when
// (h & 0x7fff) < T with T = ceil(bits(eps) / 2^16) (eps > 0; no element is dead otherwise, a
// NaN eps included), so adding K2 = (0x8000 - T) per 16-bit half sets bit 15 of a half exactly
// when its element is not dead (no carry crosses halves: both terms are at most 0x8000 - 1 +
// 0x8000). `live_halves(word, K2)` returns 1 per live element in each 16-bit half.
__device__ __forceinline__ u32 bf16_dead_k2(float eps) {
    const u32 t = eps > 0.f ? min((__float_as_uint(eps) + 0xffffu) >> 16, 0x7f80u) : 0u;
    return (0x8000u - t) * 0x10001u;
}
__device__ __forceinline__ u32 live_halves(u32 word, u32 k2) { return (((word & 0x7fff7fffu) + k2) & 0x80008000u) >> 15; }

// One row of a thread's pack into its running statistics (the finite fast path of the
// seed-uniform forwards, portable and Hopper): sums shifted by K, min / max (bf16 pairs packed,
// see MinMax2) and the dead count, per element or (PAIRS) as live elements per 16-bit half of
// `live2` (see live_halves; the caller turns it into a count).
template <class D, int V, bool PAIRS>
__device__ __forceinline__ void stats_row(const Pack<D, V>& p, float K, float dead_eps, u32 k2, float& S1, float& S2,
                                          float& mn, float& mx, u32& mn2, u32& mx2, u32& dead, u32& live2) {
#pragma unroll
    for (int l = 0; l < V; l++) {
        const float f = PairIn<D, V>::at(p, l);
        const float dd = f - K;
        S1 += dd;
        S2 = fmaf(dd, dd, S2);
        if (!MinMax2<D, V>::ON) {
            mn = fminf(mn, f);
            mx = fmaxf(mx, f);
        }
        if (!PAIRS) dead += fabsf(f) < dead_eps ? 1u : 0u;
    }
    if (PAIRS) {
#pragma unroll
        for (int w = 0; w < V / 2; w++) live2 += live_halves(reinterpret_cast<const u32*>(p.e)[w], k2);
    }
    if (MinMax2<D, V>::ON) {
#pragma unroll
        for (int w = 0; w < (V >= 2 ? V / 2 : 1); w++) {
            const u32 word = reinterpret_cast<const u32*>(p.e)[w];
            mn2 = MinMax2<D, V>::min2(mn2, word);
            mx2 = MinMax2<D, V>::max2(mx2, word);
        }
    }
}

// The outputs of a row's lanes, two at a time (xa, xb: the inputs of lanes l, l + 1);
// V == 1 takes the first expression only.
#define FOR_PAIRS(YA, YB)                                                \
    do {                                                                 \
        if (V == 1) {                                                    \
            const int l = 0;                                             \
            const float xa = D::in(buf[u].e[0]);                         \
            const float xb = xa;                                         \
            (void)xb;                                                    \
            out.e[0] = D::out(YA);                                       \
        } else {                                                         \
            _Pragma("unroll") for (int l = 0; l < (V > 1 ? V : 2); l += 2) { \
                const float xa = PairIn<D, V>::at(buf[u], l);            \
                const float xb = PairIn<D, V>::at(buf[u], l + 1);        \
                put2(out, l, YA, YB);                                    \
            }                                                            \
        }                                                                \
    } while (0)

// Whether the warp-per-seed mapping applies (see fwdu_impl's WS): a seed's row is
// G = C / V threads, G a power of two below 32, so a warp holds 32 / G rows of one seed.
__device__ __forceinline__ bool ws_applies(u32 C, u32 V) {
    const u32 G = C / V;
    return C % V == 0 && G >= 1 && G < 32 && (G & (G - 1)) == 0;
}

// UR: rows loaded before any is processed (UNROLL, or 8 for more bytes in flight per thread).
// WS (warp per seed, used when ws_applies): warp w of the block takes seed tile * (T / 32) + w,
// lane l its columns (l % G) * V.. of rows r0 + l / G, + 32 / G, ... of the row group, so no warp
// mixes seeds (one blueprint branch per warp instead of one per seed it spans). The tile is
// T / 32 seeds wide and every warp writes one partial per row group.
template <class D, int V, bool ACT, int UR = UNROLL, bool WS = false>
__device__ __forceinline__ void fwdu_impl(const typename D::R* __restrict__ x, typename D::R* __restrict__ y, u64 B,
                                          u32 H, u32 C, u32 R, float dead_eps, const SeedConst* __restrict__ sc,
                                          const ColCoef* __restrict__ colc, const float* __restrict__ coef,
                                          Partial* __restrict__ part, u32 segs) {
    typedef Pack<D, V> P;
    extern __shared__ Partial sh_thr[];
    const u32 T = blockDim.x;
    const u32 lane = threadIdx.x % 32;
    const u32 TW = WS ? (T / 32) * C : T * V;
    // Tiles fastest: grid (n_tiles, row groups, row groups / 65535), so the blocks resident at
    // once cover whole rows of X and Y (faster than row groups fastest for the large mixed
    // forward). Blocks past the last row group (the z split's remainder) return at once, before
    // any barrier.
    const u32 tile = blockIdx.x, n_tiles = gridDim.x;
    const u64 rg = blockIdx.y + (u64)blockIdx.z * gridDim.y;
    const u32 c0 = tile * TW;
    // WS: G threads per row of the seed, RL rows per step (G * RL = 32); else one row per step.
    const u32 G = WS ? C / V : 1;
    const u32 RL = WS ? 32 / G : 1;
    const u32 sub = WS ? lane / G : 0;
    const u32 c = WS ? c0 + (threadIdx.x / 32) * C + (lane % G) * V : c0 + threadIdx.x * V;
    const u64 r0 = rg * (u64)R;
    if (r0 >= B) return;
    const u64 rend = (r0 + R < B) ? r0 + R : B;
    const u32 rows_blk = (u32)(rend - r0);
    // This thread's rows r0 + sub + i * RL (i < nrows); nsteps is uniform over the warp.
    const u32 nrows = WS ? (rows_blk > sub ? (rows_blk - sub + RL - 1) / RL : 0) : rows_blk;
    const u32 nsteps = WS ? (rows_blk + RL - 1) / RL : rows_blk;
    const bool inrange = c < H;
    const u32 seed = inrange ? c / C : 0;
    const u32 j0 = c - seed * C;

    u32 fl = 0;
    if (ACT && inrange) fl = sc[seed].flags;
    const bool act = ACT && (fl & FLAG_ACTIVE) != 0;
    const u32 ty = btype(fl);
    const bool conv = act && ty == TYPE_CONV;
    SeedConst q;
    float k[V];
    float Ps, Qs;
    uni_setup<V>(act, ty, seed, c, sc, colc, q, k, Ps, Qs);
    const u32 wmask = __ballot_sync(0xffffffffu, inrange);
    const bool wconv = ACT && __any_sync(0xffffffffu, conv);

    // Shift: the first finite element of the thread's first row (0 if none). It is taken from
    // the first batch of loads (below), so a block starts streaming without a load of its own.
    float K = 0.f;
    float S1 = 0.f, S2 = 0.f;
    float mn = __int_as_float(0x7f800000), mx = __int_as_float(0xff800000);
    u32 mn2 = 0x7f807f80u, mx2 = 0xff80ff80u;  // bf16 pairs (+inf, +inf), (-inf, -inf)
    u32 dead = 0, nf = 0;
    // bf16 pairs: live (not dead) elements counted per 16-bit half of a word (see live_halves;
    // a half counts at most R * V / 2 <= 16384 elements), dead = elements - live after the loop.
    constexpr bool PAIRS = PairIn<D, V>::ON && MinMax2<D, V>::ON;
    const u32 k2 = PAIRS ? bf16_dead_k2(dead_eps) : 0u;
    u32 live2 = 0;

    // A CONV thread on lane 0 reads columns c - 2 and c - 1 from memory: with the row's load.
    // (Never under WS: lane 0 holds a seed's first columns there.)
    const bool cpre = !WS && ACT && V >= 2 && conv && lane == 0 && j0 >= 2;
    typedef Pack<D, 2> P2;

    // Staged loads (see Stageable): ST slots of UR vectors per thread after the T partials.
    constexpr int NST = WS ? WS_STAGES : 0;
    constexpr int ST = (Stageable<typename P::Raw>::ON && UR == UNROLL && NST >= 2) ? NST : 1;
    typename P::Raw* stg = reinterpret_cast<typename P::Raw*>(sh_thr + T);
    // Element offset of the thread's vector in its row k (rows r0 + sub + k * RL), kept as a base
    // plus multiples of the row step (a 64-bit add per row, not a multiply). WS: a lane past its
    // last row re-reads the block's last row (its result is neither counted nor stored) so the
    // warp's shuffles stay convergent.
    const u64 rstep = (u64)RL * H;
    const u64 off0 = (r0 + sub) * (u64)H + c;
    const u64 offlast = (rend - 1) * (u64)H + c;
    auto off_at = [&](u64 base, u32 k, int u) -> u64 {
        return (WS && k + u >= nrows) ? offlast : base + (u64)u * rstep;
    };
    auto stage_batch = [&](u32 i0) {
        const u32 slot = (i0 / UR) % ST;
        const u64 base = off0 + (u64)i0 * rstep;
#pragma unroll
        for (int u = 0; u < UR; u++) {
            if (i0 + u < nsteps) cp_async16(stg + (slot * UR + u) * T + threadIdx.x, x + off_at(base, i0, u));
        }
        cp_async_commit();
    };

    if (inrange) {
        if (ST > 1) {
#pragma unroll
            for (int b = 0; b < ST - 1; b++) stage_batch(b * UR);
        }
        for (u32 i = 0; i < nsteps; i += UR) {
            P buf[UR];
            P2 nb[UR];
            const u64 ibase = off0 + (u64)i * rstep;
            if (ST > 1) {
                // Batch i / UR + ST - 1 into the slot read one batch ago, then wait for this one.
                stage_batch(i + (ST - 1) * UR);
                cp_async_wait<ST - 1>();
            }
#pragma unroll
            for (int u = 0; u < UR; u++) {
                if (i + u < nsteps) {
                    const u64 off = off_at(ibase, i, u);
                    if (ST > 1) {
                        buf[u].raw = stg[(((i / UR) % ST) * UR + u) * T + threadIdx.x];
                    } else {
                        buf[u].raw = ld_act(reinterpret_cast<const typename P::Raw*>(x + off));
                    }
                    if (cpre) nb[u].raw = *reinterpret_cast<const typename P2::Raw*>(x + off - 2);
                }
            }
            if (i == 0) {
#pragma unroll
                for (int l = V - 1; l >= 0; l--) {
                    const float f = D::in(buf[0].e[l]);
                    if (finite_f(f)) K = f;
                }
            }
#pragma unroll
            for (int u = 0; u < UR; u++) {
                if (i + u < nsteps) {
                    const bool valid = !WS || i + u < nrows;
                    const u64 off = off_at(ibase, i, u);
                    // Statistics assuming finite inputs; any non-finite input makes S1
                    // non-finite and the thread recomputes them exactly below.
                    if (valid) stats_row<D, V, PAIRS>(buf[u], K, dead_eps, k2, S1, S2, mn, mx, mn2, mx2, dead, live2);
                    P out;
                    out.raw = buf[u].raw;
                    if (ACT) {
                        float m1 = 0.f, m2 = 0.f;
                        if (wconv) {
                            if (V >= 2) {
                                conv_left_pre<D, V>(buf[u], nb[u], j0, lane, wmask, conv, m1, m2);
                            } else {
                                conv_left<D, V>(buf[u], x, off - c, c, j0, lane, wmask, conv, m1, m2);
                            }
                        }
                        if (conv && !(fl & FLAG_CLAMP)) {
                            // CONV without the clamp: seed_out's CONV operations, without its
                            // per-element type and clamp branches (same bits).
                            const bool bp = (fl & FLAG_BLUEPRINT) != 0;
#pragma unroll
                            for (int l = 0; l < V; l++) {
                                const float xv = PairIn<D, V>::at(buf[u], l);
                                const float xm1 = conv_xm1<D, V>(buf[u], l, m1);
                                const float xm2 = conv_xm2<D, V>(buf[u], l, m1, m2);
                                out.e[l] = D::out(conv_y(q, bp, xv, xm1, xm2));
                            }
                        } else if (conv) {
#pragma unroll
                            for (int l = 0; l < V; l++) {
                                const float xv = PairIn<D, V>::at(buf[u], l);
                                const float xm1 = conv_xm1<D, V>(buf[u], l, m1);
                                const float xm2 = conv_xm2<D, V>(buf[u], l, m1, m2);
                                out.e[l] = D::out(clamp_band(fl, q, seed_out(fl, 0.f, q, xv, xm1, xm2)));
                            }
                        } else if (act && finite_f(S1) && !(fl & FLAG_CLAMP)) {
                            // Every input so far is finite (S1 would not be otherwise) and
                            // nothing clamps: lin_out's operations, one type per thread.
                            if (ty == TYPE_RES) {
                                FOR_PAIRS(fmaf(Ps, xa, k[l]), fmaf(Ps, xb, k[l + 1]));
                            } else if (ty == TYPE_ATT) {
                                FOR_PAIRS(fmaf(k[l], xa, 0.f), fmaf(k[l + 1], xb, 0.f));
                            } else if (Qs != 0.f) {
                                FOR_PAIRS(fmaf(Qs, relu_nan(k[l] * xa), fmaf(Ps, xa, 0.f)),
                                          fmaf(Qs, relu_nan(k[l + 1] * xb), fmaf(Ps, xb, 0.f)));
                            } else {
                                FOR_PAIRS(fmaf(Ps, xa, 0.f), fmaf(Ps, xb, 0.f));
                            }
                        } else if (act) {
#pragma unroll
                            for (int l = 0; l < V; l++) {
                                const float xv = D::in(buf[u].e[l]);
                                float yv;
                                if (finite_f(xv)) {
                                    yv = lin_u(ty, k[l], Ps, Qs, xv);
                                } else {
                                    yv = seed_out(fl, coef[c + l], q, xv, 0.f, 0.f);
                                }
                                out.e[l] = D::out(clamp_band(fl, q, yv));
                            }
                        }
                    }
                    if (valid) st_act(reinterpret_cast<typename P::Raw*>(y + off), out.raw);
                }
            }
        }
        if (PAIRS) dead = nrows * V - ((live2 & 0xffffu) + (live2 >> 16));
        if (MinMax2<D, V>::ON) {
            mn = fminf(D::in((typename D::R)(mn2 & 0xffffu)), D::in((typename D::R)(mn2 >> 16)));
            mx = fmaxf(D::in((typename D::R)(mx2 & 0xffffu)), D::in((typename D::R)(mx2 >> 16)));
        }
        if (!(finite_f(S1) && finite_f(S2))) {
            // A non-finite input (or an overflow): the exact per-element path.
            S1 = 0.f;
            S2 = 0.f;
            mn = __int_as_float(0x7f800000);
            mx = __int_as_float(0xff800000);
            dead = 0;
            for (u32 i = 0; i < nrows; i++) {
                P e;
                e.raw = *reinterpret_cast<const typename P::Raw*>(x + off0 + (u64)i * rstep);
#pragma unroll
                for (int l = 0; l < V; l++) {
                    const float f = D::in(e.e[l]);
                    if (finite_f(f)) {
                        const float dd = f - K;
                        S1 += dd;
                        S2 = fmaf(dd, dd, S2);
                        mn = fminf(mn, f);
                        mx = fmaxf(mx, f);
                        dead += fabsf(f) < dead_eps ? 1u : 0u;
                    } else {
                        nf += 1u;
                    }
                }
            }
        }
    }

    {
        Partial p = inrange ? partial_of(nrows * V - nf, nf, dead, K, S1, S2, mn, mx) : partial_empty();
        if (WS || seg_in_warp(C, V, TW)) {
            // A seed's threads are GS = C / V aligned lanes of one warp (WS: the whole warp):
            // a shuffle tree within the group, and its first lane writes the seed's partial.
            // No shared memory and no barrier (a bf16 block moves half the bytes of an f32
            // one for the same partials, so this fixed cost counts twice there).
            const u32 GS = WS ? 32 : C / V;
            for (u32 off = GS / 2; off > 0; off >>= 1) {
                Partial o = partial_shfl_down(p, off);
                p = partial_merge(p, o);
            }
            if (inrange && lane % GS == 0) part[(rg * n_tiles + tile) * (u64)segs + (c - c0) / C] = p;
        } else {
            sh_thr[threadIdx.x] = p;
        }
    }
    if (!WS && !seg_in_warp(C, V, TW)) {
        __syncthreads();
        const u32 cend = (c0 + TW < H) ? c0 + TW : H;
        const u32 sfirst = c0 / C;
        const u32 nseg = (cend - 1) / C - sfirst + 1;
        const u32 warp = threadIdx.x / 32, nw = T / 32;
        for (u32 kk = warp; kk < nseg; kk += nw) {
            const u32 sd = sfirst + kk;
            const u32 lo = ((sd * C > c0 ? sd * C : c0) - c0) / V;
            const u32 hi = (((sd + 1) * C < cend ? (sd + 1) * C : cend) - c0) / V;
            Partial pacc = partial_empty();
            for (u32 tt = lo + lane; tt < hi; tt += 32) pacc = partial_merge(pacc, sh_thr[tt]);
            for (int off = 16; off > 0; off >>= 1) {
                Partial o = partial_shfl_down(pacc, off);
                pacc = partial_merge(pacc, o);
            }
            if (lane == 0) part[(rg * n_tiles + tile) * (u64)segs + kk] = pacc;
        }
    }
}

// Whether every element of a pack is finite.
template <class D, int V>
__device__ __forceinline__ bool pack_finite(const Pack<D, V>& p) {
    bool ok = true;
#pragma unroll
    for (int l = 0; l < V; l++) ok = ok && finite_f(D::in(p.e[l]));
    return ok;
}

// TYPED (the active kernel, kasmina_bwdu_typed): rows whose x and g are all finite, of a seed that
// does not clamp, take one branch per blueprint type with only that type's operations
// (the same operations, in the same order, as the general per-element code below, so
// the same bits); other rows take the general code.
template <class D, int V, bool ACT, bool TYPED = false>
__device__ __forceinline__ void bwdu_impl(const typename D::R* __restrict__ x, const typename D::R* __restrict__ g,
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
    const u32 seed = inrange ? c / C : 0;
    const u32 j0 = c - seed * C;
    const u32 lane = threadIdx.x % 32;

    u32 fl = 0;
    if (ACT && inrange) fl = sc[seed].flags;
    const bool act = ACT && (fl & FLAG_ACTIVE) != 0;
    const u32 ty = btype(fl);
    const bool conv = act && ty == TYPE_CONV;
    SeedConst q;
    float k[V];
    float Ps, Qs;
    uni_setup<V>(act, ty, seed, c, sc, colc, q, k, Ps, Qs);
    const u32 wmask = __ballot_sync(0xffffffffu, inrange);
    const bool wconv = ACT && __any_sync(0xffffffffu, conv);
    const u32 lastlane = 31u - __clz(wmask | 1u);

    float G2 = 0.f, P1 = 0.f, P2 = 0.f;
    float P0[V];
#pragma unroll
    for (int l = 0; l < V; l++) P0[l] = 0.f;

    if (inrange) {
        for (u32 i = 0; i < nrows; i += UNROLL) {
            P gb[UNROLL];
            P xb[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                if (i + u < nrows) {
                    const u64 off = (r0 + i + u) * (u64)H + c;
                    gb[u].raw = *reinterpret_cast<const typename P::Raw*>(g + off);
                    if (act) xb[u].raw = *reinterpret_cast<const typename P::Raw*>(x + off);
                }
            }
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                if (i + u < nrows) {
                    const u64 rowoff = (r0 + i + u) * (u64)H;
                    P out;
                    out.raw = gb[u].raw;
#pragma unroll
                    for (int l = 0; l < V; l++) {
                        const float gf = D::in(gb[u].e[l]);
                        G2 = fmaf(gf, gf, G2);
                    }
                    if (ACT) {
                        if (wconv) {
                            float m1 = 0.f, m2 = 0.f;
                            conv_left<D, V>(xb[u], x, rowoff, c, j0, lane, wmask, conv, m1, m2);
                            // The gradient reaching each column's pre-clamp output.
                            float ge[V];
#pragma unroll
                            for (int l = 0; l < V; l++) {
                                ge[l] = D::in(gb[u].e[l]);
                                if (conv && (fl & FLAG_CLAMP)) {
                                    const float xv = D::in(xb[u].e[l]);
                                    const float xm1 = conv_xm1<D, V>(xb[u], l, m1);
                                    const float xm2 = conv_xm2<D, V>(xb[u], l, m1, m2);
                                    if (is_clamped(fl, q, seed_out(fl, 0.f, q, xv, xm1, xm2))) ge[l] = 0.f;
                                }
                            }
                            // Columns c + V and c + V + 1 from the upper neighbour lane.
                            const float n0 = __shfl_down_sync(wmask, ge[0], 1);
                            const float n1 = V >= 2 ? __shfl_down_sync(wmask, ge[V >= 2 ? 1 : 0], 1)
                                                    : __shfl_down_sync(wmask, ge[0], 2);
                            if (conv) {
#pragma unroll
                                for (int l = 0; l < V; l++) {
                                    const u32 j = j0 + l;
                                    const float xv = D::in(xb[u].e[l]);
                                    const float xm1 = conv_xm1<D, V>(xb[u], l, m1);
                                    const float xm2 = conv_xm2<D, V>(xb[u], l, m1, m2);
                                    float g1 = 0.f, g2 = 0.f;
                                    if (j + 1 < C) {
                                        if (l + 1 < V) {
                                            g1 = ge[l + 1 < V ? l + 1 : 0];
                                        } else if (lane + 1 <= lastlane) {
                                            g1 = n0;
                                        } else {
                                            g1 = conv_geff<D>(x, g, rowoff, c + l + 1, j + 1, fl, q);
                                        }
                                    }
                                    if (j + 2 < C) {
                                        if (l + 2 < V) {
                                            g2 = ge[l + 2 < V ? l + 2 : 0];
                                        } else if (l + 2 == V && lane + 1 <= lastlane) {
                                            g2 = n0;
                                        } else if (l + 2 == V + 1 && V >= 2 && lane + 1 <= lastlane) {
                                            g2 = n1;
                                        } else if (V == 1 && lane + 2 <= lastlane) {
                                            g2 = n1;
                                        } else {
                                            g2 = conv_geff<D>(x, g, rowoff, c + l + 2, j + 2, fl, q);
                                        }
                                    }
                                    const float gj = ge[l];
                                    const float inner = q.s * (q.w0 * gj + q.w1 * g1 + q.w2 * g2);
                                    const float d = (fl & FLAG_BLUEPRINT) ? inner : (1.f - q.a) * gj + q.a * inner;
                                    P0[l] = fmaf(gj, xv, P0[l]);
                                    P1 = fmaf(gj, xm1, P1);
                                    P2 = fmaf(gj, xm2, P2);
                                    out.e[l] = D::out(d);
                                }
                            }
                        }
                        const bool typed = TYPED && act && !conv && !(fl & FLAG_CLAMP) &&
                                           pack_finite<D, V>(xb[u]) && pack_finite<D, V>(gb[u]);
                        if (typed) {
                            float dv[V];
                            if (ty == TYPE_RES) {
#pragma unroll
                                for (int l = 0; l < V; l++) {
                                    const float gj = D::in(gb[u].e[l]);
                                    P0[l] = fmaf(gj, 1.f, P0[l]);
                                    dv[l] = gj * Ps;
                                }
                            } else if (ty == TYPE_ATT) {
#pragma unroll
                                for (int l = 0; l < V; l++) {
                                    const float xf = D::in(xb[u].e[l]);
                                    const float gj = D::in(gb[u].e[l]);
                                    P0[l] = fmaf(gj, xf, P0[l]);
                                    dv[l] = gj * k[l];
                                }
                            } else {
#pragma unroll
                                for (int l = 0; l < V; l++) {
                                    const float xf = D::in(xb[u].e[l]);
                                    const float gj = D::in(gb[u].e[l]);
                                    const float v = k[l] * xf;
                                    const bool m = v > 0.f;
                                    P0[l] = fmaf(gj, m ? xf : 0.f, P0[l]);
                                    P1 = fmaf(gj, m ? v : 0.f, P1);
                                    dv[l] = gj * (m ? fmaf(Qs, k[l], Ps) : Ps);
                                }
                            }
                            // Packed rounding where the dtype has it (same bits as D::out).
                            if (V == 1) {
                                out.e[0] = D::out(dv[0]);
                            } else {
#pragma unroll
                                for (int l = 0; l < (V > 1 ? V : 2); l += 2) put2(out, l, dv[l], dv[l + 1]);
                            }
                        } else if (act && !conv) {
#pragma unroll
                            for (int l = 0; l < V; l++) {
                                const float xf = D::in(xb[u].e[l]);
                                float gj = D::in(gb[u].e[l]);
                                const bool fin = finite_f(xf) && finite_f(gj);
                                if (fl & FLAG_CLAMP) {
                                    float yv = finite_f(xf) ? lin_u(ty, k[l], Ps, Qs, xf)
                                                            : seed_out(fl, coef[c + l], q, xf, 0.f, 0.f);
                                    if (is_clamped(fl, q, yv)) gj = 0.f;
                                }
                                const float W = ty == TYPE_MLP ? k[l] : 0.f;
                                const float Pl = ty == TYPE_ATT ? k[l] : Ps;
                                const float v = W * xf;
                                const bool m = v > 0.f;
                                float d;
                                if (fin) {
                                    d = gj * (m ? fmaf(Qs, W, Pl) : Pl);
                                } else {
                                    const float cwv = coef[c + l];
                                    float inner = ty == TYPE_RES ? gj
                                                : ty == TYPE_ATT ? gj * cwv
                                                : (xf * cwv > 0.f ? gj * cwv * q.s : 0.f);
                                    d = (fl & FLAG_BLUEPRINT) ? inner : (1.f - q.a) * gj + q.a * inner;
                                }
                                const float u0 = ty == TYPE_RES ? 1.f : ((ty == TYPE_ATT || m) ? xf : 0.f);
                                P0[l] = fmaf(gj, u0, P0[l]);
                                if (ty == TYPE_MLP) P1 = fmaf(gj, m ? v : 0.f, P1);
                                out.e[l] = D::out(d);
                            }
                        }
                    }
                    *reinterpret_cast<typename P::Raw*>(dx + rowoff + c) = out.raw;
                }
            }
        }
    }

    const bool wseg = seg_in_warp(C, V, TW);
    if (!wseg) sh_g2[threadIdx.x] = inrange ? G2 : 0.f;
    if (act) {
        // Parameter partials per column; the ones only ever summed over a seed's columns
        // (MLP's Σ g relu(x w), CONV's shifted products) go to the thread's first column.
#pragma unroll
        for (int l = 0; l < V; l++) {
            float* pp = ppart + (rg * H + c + l) * 3;
            pp[0] = P0[l];
            pp[1] = l == 0 ? P1 : 0.f;
            pp[2] = l == 0 ? P2 : 0.f;
        }
    }
    if (wseg) {
        // The seed's G = C / V lanes sum their Σg² by shuffles (see seg_in_warp).
        const u32 G = C / V;
        float acc = inrange ? G2 : 0.f;
        for (u32 off = G / 2; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
        if (inrange && lane % G == 0) gpart[(rg * gridDim.y + tile) * (u64)segs + (c - c0) / C] = acc;
        return;
    }
    __syncthreads();

    const u32 cend = (c0 + TW < H) ? c0 + TW : H;
    const u32 sfirst = c0 / C;
    const u32 nseg = (cend - 1) / C - sfirst + 1;
    const u32 warp = threadIdx.x / 32, nw = T / 32;
    for (u32 kk = warp; kk < nseg; kk += nw) {
        const u32 sd = sfirst + kk;
        const u32 lo = ((sd * C > c0 ? sd * C : c0) - c0) / V;
        const u32 hi = (((sd + 1) * C < cend ? (sd + 1) * C : cend) - c0) / V;
        float acc = 0.f;
        for (u32 tt = lo + lane; tt < hi; tt += 32) acc += sh_g2[tt];
        for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
        if (lane == 0) gpart[(rg * gridDim.y + tile) * (u64)segs + kk] = acc;
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

// One block per seed, the whole call (C % V == 0, blockDim.x a multiple of 32, at most 1024).
extern "C" __global__ void kasmina_fwd_seed(const KASMINA_DT::R* x, KASMINA_DT::R* y, u64 B, u32 H, u32 C,
                                            float dead_eps, const SeedConst* sc, const ColCoef* colc,
                                            const float* coef, Acc* acc) {
    const u32 base = blockIdx.x * C;
    fwd_seed_impl<KASMINA_DT, KASMINA_V>(x, y, B, H, C, dead_eps, sc[blockIdx.x], colc + base, coef + base, acc);
}

// The small forward with the parameter plan first (plan.cu's plan_seed, compiled in front of this
// file): one block per seed derives its constants from the caller's parameters `w` / `scales`
// into the layer's buffers and into shared memory, then runs fwd_seed_impl on the shared copies.
// Dynamic shared memory: C * 20 bytes.
extern "C" __global__ void kasmina_fwd_seed_plan(const KASMINA_DT::R* x, KASMINA_DT::R* y, u64 B, u32 H, u32 C,
                                                 float dead_eps, const float* w, const float* scales, u32* consts,
                                                 float* coef, float4* colc, unsigned char* records, float* wcopy,
                                                 Acc* acc) {
    extern __shared__ float4 sh_plan[];
    __shared__ double red[33];
    __shared__ SeedConst q;
    float* sh_coef = reinterpret_cast<float*>(sh_plan + C);
    // X's first vectors of this thread, the accumulator and the seed's weights move into L1
    // while the constants' load runs.
    {
        const u32 G = C / KASMINA_V;
        const u32 nvec = (u32)B * G;
        for (u32 v = threadIdx.x; v < nvec && v < SEED_UNROLL * blockDim.x; v += blockDim.x) {
            const u32 row = v / G;
            prefetch_l1(x + row * (u64)H + blockIdx.x * C + (v - row * G) * KASMINA_V);
        }
        if (threadIdx.x == 0) prefetch_l1(acc + blockIdx.x);
        if (threadIdx.x < C) prefetch_l1(w + (u64)blockIdx.x * C + threadIdx.x);
    }
    plan_seed(w, scales, C, blockIdx.x, consts, coef, colc, records, wcopy, red, sh_plan, sh_coef,
              reinterpret_cast<u32*>(&q));
    __syncthreads();
    const SeedConst qs = q;
    fwd_seed_impl<KASMINA_DT, KASMINA_V>(x, y, B, H, C, dead_eps, qs, reinterpret_cast<const ColCoef*>(sh_plan),
                                         sh_coef, acc);
}

// One block per seed, the whole backward of a small call (see bwd_seed_impl).
extern "C" __global__ void kasmina_bwd_seed(const KASMINA_DT::R* x, const KASMINA_DT::R* g, KASMINA_DT::R* dx, u64 B,
                                            u32 H, u32 C, const SeedConst* sc, const ColCoef* colc, const float* coef,
                                            float* dweights, float* dscales, float* gnorm, double* acc_g2) {
    bwd_seed_impl<KASMINA_DT, KASMINA_V>(x, g, dx, B, H, C, sc, colc, coef, dweights, dscales, gnorm, acc_g2);
}

// Seed-uniform variants (C % V == 0), see fwdu_impl / bwdu_impl; kasmina_fwd_merge then adds
// their partials to the accumulators.
#define KASMINA_FWDU(NAME, BOUNDS, ACT)                                                                         \
    extern "C" __global__ void __launch_bounds__ BOUNDS NAME(                                                  \
        const KASMINA_DT::R* x, KASMINA_DT::R* y, u64 B, u32 H, u32 C, u32 R, float dead_eps,                 \
        const SeedConst* sc, const ColCoef* colc, const float* coef, Partial* part, u32 segs) {                \
        fwdu_impl<KASMINA_DT, KASMINA_V, ACT>(x, y, B, H, C, R, dead_eps, sc, colc, coef, part, segs);         \
    }
KASMINA_FWDU(kasmina_fwdu, (256, 3), true)
KASMINA_FWDU(kasmina_fwdu_identity, (256), false)

// The active seed-uniform forward with one seed per warp (fwdu_impl's WS; the host launches it
// when ws_applies(C, V), with tiles of blockDim.x / 32 seeds and that many partial segments).
#define KASMINA_FWDU_WS(NAME, BOUNDS, UR)                                                                       \
    extern "C" __global__ void __launch_bounds__ BOUNDS NAME(                                                  \
        const KASMINA_DT::R* x, KASMINA_DT::R* y, u64 B, u32 H, u32 C, u32 R, float dead_eps,                 \
        const SeedConst* sc, const ColCoef* colc, const float* coef, Partial* part, u32 segs) {                \
        fwdu_impl<KASMINA_DT, KASMINA_V, true, UR, true>(x, y, B, H, C, R, dead_eps, sc, colc, coef, part,     \
                                                         segs);                                                \
    }
KASMINA_FWDU_WS(kasmina_fwdu_ws, (256, 3), UNROLL)
KASMINA_FWDU_WS(kasmina_fwdu_u8_ws, (256, 2), 8)

// The seed-uniform forward with 8 rows in flight per thread (an autotuner candidate,
// `KernelConfig::unroll == 8`): twice the loads outstanding, so the active variant gets
// two blocks of 256 per SM worth of registers instead of three.
#define KASMINA_FWDU8(NAME, BOUNDS, ACT)                                                                        \
    extern "C" __global__ void __launch_bounds__ BOUNDS NAME(                                                  \
        const KASMINA_DT::R* x, KASMINA_DT::R* y, u64 B, u32 H, u32 C, u32 R, float dead_eps,                 \
        const SeedConst* sc, const ColCoef* colc, const float* coef, Partial* part, u32 segs) {                \
        fwdu_impl<KASMINA_DT, KASMINA_V, ACT, 8>(x, y, B, H, C, R, dead_eps, sc, colc, coef, part, segs);      \
    }
KASMINA_FWDU8(kasmina_fwdu_u8, (256, 2), true)
KASMINA_FWDU8(kasmina_fwdu_identity_u8, (256), false)

// The active seed-uniform backward: TYPED rows (see bwdu_impl).
extern "C" __global__ void __launch_bounds__(256, 2) kasmina_bwdu_typed(const KASMINA_DT::R* x,
                                                                   const KASMINA_DT::R* g, KASMINA_DT::R* dx,
                                                                   u64 B, u32 H, u32 C, u32 R,
                                                                   const SeedConst* sc, const ColCoef* colc,
                                                                   const float* coef, float* gpart, float* ppart,
                                                                   u32 segs) {
    bwdu_impl<KASMINA_DT, KASMINA_V, true, true>(x, g, dx, B, H, C, R, sc, colc, coef, gpart, ppart, segs);
}

extern "C" __global__ void __launch_bounds__(256) kasmina_bwdu_identity(const KASMINA_DT::R* x,
                                                                      const KASMINA_DT::R* g, KASMINA_DT::R* dx,
                                                                      u64 B, u32 H, u32 C, u32 R,
                                                                      const SeedConst* sc, const ColCoef* colc,
                                                                      const float* coef, float* gpart, float* ppart,
                                                                      u32 segs) {
    bwdu_impl<KASMINA_DT, KASMINA_V, false>(x, g, dx, B, H, C, R, sc, colc, coef, gpart, ppart, segs);
}
