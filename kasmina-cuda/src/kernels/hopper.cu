// Hopper path: persistent, warp-specialized kernels fed by TMA.
//
// This file is compiled by NVRTC for sm_90a AFTER kernels/kasmina.cu, in one source
// (the host concatenates them), so it reuses that file's device functions and structs
// (SeedConst, ColCoef, Partial, seed_out, lin_out, clamp_band, partial_merge, ...) and its
// numerics: identity seeds copy bits, blend / blueprint seeds use the portable per-column
// formulas. The partials go to the portable path's layouts, so kasmina_fwd_merge,
// kasmina_bwd_colsum and kasmina_bwd_finalize of the same module finish the call.
//
// Work: a "unit" is R rows x TW columns (row group rg, column tile t: unit = rg * n_tiles + t),
// moved as R / BR TMA boxes of [BR, TW] ("chunks"). The grid is persistent
// (#SMs x k blocks); block b takes units b, b + gridDim.x, ... Each unit writes its partials
// to the slot fixed by (rg, t), so the result does not depend on scheduling.
//
// Block: HCW consumer warps (HCT threads) + 1 producer warp. Lane 0 of the producer warp
// issues cp.async.bulk.tensor loads into an HST-stage shared-memory ring; they complete on
// the stage's "full" mbarrier (expect_tx = the box bytes). Consumers wait on "full", compute,
// write the output into the stage's staging tile, fence.proxy.async (their generic-proxy
// writes become visible to the async proxy), arrive on the stage's "empty" mbarrier (one
// arrival per consumer warp), meet at a named barrier, and consumer thread 0 issues the
// bulk tensor store of the staging tile (bulk_group; wait_group.read before the tile is
// written again, HST - 1 chunks later).
//
// Consumer thread layout in a tile: CL = TW / V column lanes x RL = HCT / CL row lanes
// (the host makes CL a power of two <= HCT). Thread (cl, rl) owns the V columns
// c0 + cl V ... and the rows rl, rl + RL, ... of each chunk.

#ifndef KASMINA_HOPPER_STAGES
#define KASMINA_HOPPER_STAGES 4
#endif
#define HST KASMINA_HOPPER_STAGES
// Rows a seed-uniform forward consumer thread loads from the stage before it processes any.
// 1 by default: with the blend math of an active seed the kernel is bound by instruction
// latency, not by shared-memory loads in flight, and 1 row lets it fit KASMINA_HOPPER_FWD_REGS
// (96) registers without spills (NVRTC 13.0 PTX, ptxas sm_90a: f32 94, f16 96, bf16 94
// registers; with 2 rows bf16 spills 72 bytes), i.e. 4 blocks per SM instead of 3 (16
// consumer warps instead of 12) where the shared memory allows (4 KiB boxes).
#ifndef KASMINA_HOPPER_UNROLL
#define KASMINA_HOPPER_UNROLL 1
#endif
#define HUR KASMINA_HOPPER_UNROLL
#define HCW 4
#define HCT (HCW * 32)
#define HBAR_CONSUMERS 1

// CUtensorMap as the driver encodes it (128 bytes, 64-byte aligned); no header needed.
struct __align__(64) KTensorMap {
    u64 opaque[16];
};

// ---------------------------------------------------------------- PTX wrappers (sm_90)

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_fence_init() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

// Waits until the phase of parity `parity` has completed (a fresh barrier counts its
// previous phase, parity 1, as completed: the producer's first pass over the ring).
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    asm volatile(
        "{\n\t.reg .pred p;\n\t"
        "HWAIT:\n\t"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n\t"
        "@!p bra HWAIT;\n\t}" ::"r"(bar),
        "r"(parity)
        : "memory");
}

__device__ __forceinline__ void tma_prefetch(const KTensorMap* m) {
    asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<u64>(m)) : "memory");
}

// Box [rows, cols] at (col, row) of the map into shared memory, completing on `bar`.
__device__ __forceinline__ void tma_load_2d(u32 dst, const KTensorMap* m, int col, int row, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
            dst),
        "l"(reinterpret_cast<u64>(m)), "r"(col), "r"(row), "r"(bar)
        : "memory");
}

// Box of shared memory to (col, row) of the map; elements outside the tensor are not written.
__device__ __forceinline__ void tma_store_2d(const KTensorMap* m, int col, int row, u32 src) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];" ::"l"(
                     reinterpret_cast<u64>(m)),
                 "r"(col), "r"(row), "r"(src)
                 : "memory");
}

__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }

// At most N of this thread's bulk groups still reading shared memory.
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }

// Generic-proxy writes to shared memory become visible to the async proxy (TMA store).
__device__ __forceinline__ void fence_proxy_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

__device__ __forceinline__ void consumers_sync() {
    asm volatile("bar.sync %0, %1;" ::"n"(HBAR_CONSUMERS), "n"(HCT) : "memory");
}

// ---------------------------------------------------------------- shared memory plan

// [barriers: 128 B][scratch: TW * 32 B][HST stages x NIN input tiles][HST output tiles],
// each tile BR * TW elements, its stride rounded up to 128 bytes. The host sizes the
// dynamic shared memory with the same formula (src/hopper.rs, `smem_bytes`) plus 128 bytes
// of slack for aligning the base.
struct HPlan {
    unsigned char* base;
    u32 tile_stride;  // bytes
    __device__ __forceinline__ u64* full(int s) const { return reinterpret_cast<u64*>(base) + s; }
    __device__ __forceinline__ u64* empty(int s) const { return reinterpret_cast<u64*>(base) + HST + s; }
    __device__ __forceinline__ unsigned char* scratch() const { return base + 128; }
};

__device__ __forceinline__ HPlan hplan(unsigned char* raw, u32 TW, u32 BR, u32 esize) {
    HPlan p;
    const u32 a = smem_addr(raw);
    p.base = raw + ((128u - (a & 127u)) & 127u);
    p.tile_stride = ((BR * TW * esize) + 127u) & ~127u;
    return p;
}

__device__ __forceinline__ unsigned char* htile(const HPlan& p, u32 TW, u32 idx) {
    return p.base + 128 + TW * 32 + (u64)idx * p.tile_stride;
}

// ---------------------------------------------------------------- forward

// Initializes the ring's barriers (thread 0: each stage's "full" barrier waits for the producer's
// one arrival and its bytes, its "empty" barrier for the HCW consumer warps), then syncs the block.
__device__ __forceinline__ void hring_init(const HPlan& pl) {
    if (threadIdx.x == 0) {
        for (int s = 0; s < HST; s++) {
            mbar_init(smem_addr(pl.full(s)), 1);
            mbar_init(smem_addr(pl.empty(s)), HCW);
        }
        mbar_fence_init();
    }
    __syncthreads();
}

// The producer (one thread of the producer warp): walks the same (unit, chunk) sequence as the
// consumers and, for each chunk of BR rows of a TW-column tile, waits until its stage s is free,
// then loads it from tensor map `a` into slot s and, when `b` is given, from `b` into slot
// HST + s, both completing on the stage's "full" barrier.
__device__ __forceinline__ void hproduce(const HPlan& pl, const KTensorMap* a, const KTensorMap* b, u64 B, u32 R,
                                         u32 BR, u32 TW, u32 esize, u32 n_tiles, u64 n_units) {
    tma_prefetch(a);
    if (b != nullptr) tma_prefetch(b);
    const u32 bytes = BR * TW * esize;
    u64 it = 0;
    for (u64 u = blockIdx.x; u < n_units; u += gridDim.x) {
        const u32 tile = (u32)(u % n_tiles);
        const u64 rg = u / n_tiles;
        const u64 r0 = rg * (u64)R;
        const u64 rend = (r0 + R < B) ? r0 + R : B;
        const u32 nch = (u32)((rend - r0 + BR - 1) / BR);
        for (u32 ch = 0; ch < nch; ch++, it++) {
            const int s = (int)(it % HST);
            const u32 ph = (u32)((it / HST) & 1);
            mbar_wait(smem_addr(pl.empty(s)), ph ^ 1u);
            const u32 fb = smem_addr(pl.full(s));
            mbar_arrive_expect_tx(fb, b != nullptr ? 2 * bytes : bytes);
            const int col = (int)(tile * TW), row = (int)(r0 + (u64)ch * BR);
            tma_load_2d(smem_addr(htile(pl, TW, s)), a, col, row, fb);
            if (b != nullptr) tma_load_2d(smem_addr(htile(pl, TW, HST + s)), b, col, row, fb);
        }
    }
}

template <class D, int V, bool ACT>
__device__ __forceinline__ void hfwd_impl(const KTensorMap* tmx, const KTensorMap* tmy, const typename D::R* __restrict__ x,
                                          u64 B, u32 H, u32 C, u32 R, u32 BR, u32 TW, float dead_eps,
                                          const SeedConst* __restrict__ sc, const ColCoef* __restrict__ colc,
                                          const float* __restrict__ coef, Partial* __restrict__ part, u32 segs,
                                          u32 n_tiles, u64 n_units) {
    typedef typename D::R RT;
    typedef Pack<D, V> P;
    extern __shared__ __align__(128) unsigned char hsm[];
    const u32 esize = (u32)sizeof(RT);
    const HPlan pl = hplan(hsm, TW, BR, esize);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    hring_init(pl);

    if (warp == HCW) {
        if (lane == 0) hproduce(pl, tmx, nullptr, B, R, BR, TW, esize, n_tiles, n_units);
        return;
    }

    // Consumers.
    const u32 ct = threadIdx.x;
    const u32 CL = TW / V;
    const u32 RL = HCT / CL;
    const u32 cl = ct % CL, rl = ct / CL;
    Partial* sh_cols = reinterpret_cast<Partial*>(pl.scratch());
    u64 it = 0;
    for (u64 u = blockIdx.x; u < n_units; u += gridDim.x) {
        const u32 tile = (u32)(u % n_tiles);
        const u64 rg = u / n_tiles;
        const u32 c0 = tile * TW;
        const u32 c = c0 + cl * V;
        const u64 r0 = rg * (u64)R;
        const u64 rend = (r0 + R < B) ? r0 + R : B;
        const u32 nrows = (u32)(rend - r0);
        const u32 nch = (nrows + BR - 1) / BR;
        const bool inrange = c < H;

        u32 fl[V];
        ColCoef kc[V];
        u32 sd[V];
        lane_setup<V>(c, H, C, sc, colc, fl, kc, sd);
        const bool uni = sd[0] == sd[V - 1];
        SeedConst q0 = sc[sd[0]];
        float K[V], S1[V], S2[V], mn[V], mx[V];
        u32 cnt[V];  // dead in the low 16 bits, non-finite in the high 16 (rows per thread < 2^16)
        bool any_active = false;
        if (inrange && rl < nrows) {
            P first;
            first.raw = *reinterpret_cast<const typename P::Raw*>(x + (r0 + rl) * (u64)H + c);
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
        u32 seen = 0;

        for (u32 ch = 0; ch < nch; ch++, it++) {
            const int s = (int)(it % HST);
            const u32 ph = (u32)((it / HST) & 1);
            const u64 rc = r0 + (u64)ch * BR;
            const u32 rows_here = (nrows - ch * BR < BR) ? nrows - ch * BR : BR;
            const RT* tin = reinterpret_cast<const RT*>(htile(pl, TW, s));
            RT* tout = reinterpret_cast<RT*>(htile(pl, TW, HST + s));
            mbar_wait(smem_addr(pl.full(s)), ph);
            for (u32 rr = rl; rr < rows_here; rr += RL) {
                P buf;
                buf.raw = *reinterpret_cast<const typename P::Raw*>(tin + rr * TW + cl * V);
                P out;
                if (inrange) {
                    seen++;
#pragma unroll
                    for (int l = 0; l < V; l++) {
                        float f = D::in(buf.e[l]);
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
                    }
                }
                out.raw = buf.raw;
                if (ACT && any_active) {
                    const u64 rowoff = (rc + rr) * (u64)H;
#pragma unroll
                    for (int l = 0; l < V; l++) {
                        const u32 f = fl[l];
                        if (f & FLAG_ACTIVE) {
                            float xv = D::in(buf.e[l]);
                            float yv;
                            if (btype(f) == TYPE_CONV || !finite_f(xv)) {
                                SeedConst q;
                                if (uni) q = q0; else q = sc[sd[l]];
                                float xm1 = 0.f, xm2 = 0.f;
                                if (btype(f) == TYPE_CONV) {
                                    // Neighbours from the tile when they are in it, else from memory.
                                    const u32 tc = cl * V + l;
                                    if (f & LANE_M1) xm1 = tc >= 1 ? D::in(tin[rr * TW + tc - 1]) : D::in(x[rowoff + c + l - 1]);
                                    if (f & LANE_M2) xm2 = tc >= 2 ? D::in(tin[rr * TW + tc - 2]) : D::in(x[rowoff + c + l - 2]);
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
                *reinterpret_cast<typename P::Raw*>(tout + rr * TW + cl * V) = out.raw;
            }
            // The input stage is free; the output tile goes to the async proxy.
            fence_proxy_async_smem();
            __syncwarp();
            if (lane == 0) mbar_arrive(smem_addr(pl.empty(s)));
            // Thread 0's store of chunk it - HST + 1 has read its tile: the tile chunk it + 1
            // writes after the barrier below is free (HST >= 2).
            if (ct == 0) bulk_wait_read<HST - 2>();
            consumers_sync();
            if (ct == 0) {
                tma_store_2d(tmy, (int)c0, (int)rc, smem_addr(tout));
                bulk_commit();
            }
        }

        // Per-column partials of this thread, merged over the row lanes in a fixed order.
        Partial p[V];
#pragma unroll
        for (int l = 0; l < V; l++) {
            p[l] = partial_empty();
            if (inrange) {
                u32 nf = cnt[l] >> 16;
                u32 n = seen - nf;
                p[l].nf = nf;
                if (n > 0) {
                    p[l].n = n;
                    p[l].dead = cnt[l] & 0xffffu;
                    p[l].K = K[l];
                    p[l].d = S1[l] / (float)n;
                    p[l].m2 = fmaxf(S2[l] - S1[l] * p[l].d, 0.f);
                    p[l].mn = mn[l];
                    p[l].mx = mx[l];
                }
            }
        }
        for (u32 r = 0; r < RL; r++) {
            consumers_sync();
            if (rl == r) {
#pragma unroll
                for (int l = 0; l < V; l++) {
                    const u32 k = cl * V + l;
                    sh_cols[k] = r == 0 ? p[l] : partial_merge(sh_cols[k], p[l]);
                }
            }
        }
        consumers_sync();
        // One warp per seed segment of the tile (as kasmina_fwd).
        const u32 cend = (c0 + TW < H) ? c0 + TW : H;
        const u32 sfirst = c0 / C;
        const u32 nseg = (cend - 1) / C - sfirst + 1;
        for (u32 k = warp; k < nseg; k += HCW) {
            const u32 seed = sfirst + k;
            const u32 lo = (seed * C > c0 ? seed * C : c0) - c0;
            const u32 hi = ((seed + 1) * C < cend ? (seed + 1) * C : cend) - c0;
            Partial acc = partial_empty();
            for (u32 cc = lo + lane; cc < hi; cc += 32) acc = partial_merge(acc, sh_cols[cc]);
            for (int off = 16; off > 0; off >>= 1) {
                Partial o = partial_shfl_down(acc, off);
                acc = partial_merge(acc, o);
            }
            if (lane == 0) part[(rg * n_tiles + tile) * (u64)segs + k] = acc;
        }
    }
    if (threadIdx.x == 0) bulk_wait_all();
}

// ---------------------------------------------------------------- backward

template <class D, int V, bool ACT>
__device__ __forceinline__ void hbwd_impl(const KTensorMap* tmx, const KTensorMap* tmg, const KTensorMap* tmdx,
                                          const typename D::R* __restrict__ x, const typename D::R* __restrict__ g,
                                          u64 B, u32 H, u32 C, u32 R, u32 BR, u32 TW,
                                          const SeedConst* __restrict__ sc, const ColCoef* __restrict__ colc,
                                          const float* __restrict__ coef, float* __restrict__ gpart,
                                          float* __restrict__ ppart, u32 segs, u32 n_tiles, u64 n_units,
                                          u32 load_x) {
    typedef typename D::R RT;
    typedef Pack<D, V> P;
    extern __shared__ __align__(128) unsigned char hsm[];
    const u32 esize = (u32)sizeof(RT);
    const HPlan pl = hplan(hsm, TW, BR, esize);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // Tiles: [0, HST) G, [HST, 2 HST) X, [2 HST, 3 HST) dX staging.
    hring_init(pl);

    if (warp == HCW) {
        if (lane == 0) hproduce(pl, tmg, load_x ? tmx : nullptr, B, R, BR, TW, esize, n_tiles, n_units);
        return;
    }

    const u32 ct = threadIdx.x;
    const u32 CL = TW / V;
    const u32 RL = HCT / CL;
    const u32 cl = ct % CL, rl = ct / CL;
    float* sh = reinterpret_cast<float*>(pl.scratch());  // TW x 4 floats: g2, p0, p1, p2
    u64 it = 0;
    for (u64 u = blockIdx.x; u < n_units; u += gridDim.x) {
        const u32 tile = (u32)(u % n_tiles);
        const u64 rg = u / n_tiles;
        const u32 c0 = tile * TW;
        const u32 c = c0 + cl * V;
        const u64 r0 = rg * (u64)R;
        const u64 rend = (r0 + R < B) ? r0 + R : B;
        const u32 nrows = (u32)(rend - r0);
        const u32 nch = (nrows + BR - 1) / BR;
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

        for (u32 ch = 0; ch < nch; ch++, it++) {
            const int s = (int)(it % HST);
            const u32 ph = (u32)((it / HST) & 1);
            const u64 rc = r0 + (u64)ch * BR;
            const u32 rows_here = (nrows - ch * BR < BR) ? nrows - ch * BR : BR;
            const RT* tg = reinterpret_cast<const RT*>(htile(pl, TW, s));
            const RT* tx = reinterpret_cast<const RT*>(htile(pl, TW, HST + s));
            RT* tout = reinterpret_cast<RT*>(htile(pl, TW, 2 * HST + s));
            mbar_wait(smem_addr(pl.full(s)), ph);
            for (u32 rr = rl; rr < rows_here; rr += RL) {
                P gb, xb;
                gb.raw = *reinterpret_cast<const typename P::Raw*>(tg + rr * TW + cl * V);
                P out;
                out.raw = gb.raw;
                if (inrange) {
#pragma unroll
                    for (int l = 0; l < V; l++) {
                        float gf = D::in(gb.e[l]);
                        G2[l] = fmaf(gf, gf, G2[l]);
                    }
                }
                if (ACT && any_active) {
                    xb.raw = *reinterpret_cast<const typename P::Raw*>(tx + rr * TW + cl * V);
                    const u64 rowoff = (rc + rr) * (u64)H;
#pragma unroll
                    for (int l = 0; l < V; l++) {
                        const u32 f = fl[l];
                        if (f & FLAG_ACTIVE) {
                            const u32 col = c + l;
                            float xf = D::in(xb.e[l]);
                            float gj = D::in(gb.e[l]);
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
                                    d = gj * (m ? fmaf(kc[l].Q, kc[l].W, kc[l].P) : kc[l].P);
                                } else {
                                    SeedConst q;
                                    if (uni) q = q0; else q = sc[sd[l]];
                                    const float cwv = coef[col];
                                    float inner = ty == TYPE_RES ? gj
                                                : ty == TYPE_ATT ? gj * cwv
                                                : (xf * cwv > 0.f ? gj * cwv * q.s : 0.f);
                                    d = (f & FLAG_BLUEPRINT) ? inner : (1.f - q.a) * gj + q.a * inner;
                                }
                                const float u0 = ty == TYPE_RES ? 1.f : ((ty == TYPE_ATT || m) ? xf : 0.f);
                                P0[l] = fmaf(gj, u0, P0[l]);
                                P1[l] = fmaf(gj, m ? v : 0.f, P1[l]);
                            }
                            out.e[l] = D::out(d);
                        }
                    }
                }
                *reinterpret_cast<typename P::Raw*>(tout + rr * TW + cl * V) = out.raw;
            }
            fence_proxy_async_smem();
            __syncwarp();
            if (lane == 0) mbar_arrive(smem_addr(pl.empty(s)));
            if (ct == 0) bulk_wait_read<HST - 2>();
            consumers_sync();
            if (ct == 0) {
                tma_store_2d(tmdx, (int)c0, (int)rc, smem_addr(tout));
                bulk_commit();
            }
        }

        // Column sums over the row lanes, in a fixed order.
        for (u32 r = 0; r < RL; r++) {
            consumers_sync();
            if (rl == r) {
#pragma unroll
                for (int l = 0; l < V; l++) {
                    const u32 k = (cl * V + l) * 4;
                    const float g2v = inrange ? G2[l] : 0.f;
                    if (r == 0) {
                        sh[k] = g2v;
                        sh[k + 1] = P0[l];
                        sh[k + 2] = P1[l];
                        sh[k + 3] = P2[l];
                    } else {
                        sh[k] += g2v;
                        sh[k + 1] += P0[l];
                        sh[k + 2] += P1[l];
                        sh[k + 3] += P2[l];
                    }
                }
            }
        }
        consumers_sync();
        // Parameter partials per active column (kasmina_bwd's layout), read by kasmina_bwd_colsum.
        if (ACT && rl == 0 && inrange) {
#pragma unroll
            for (int l = 0; l < V; l++) {
                if (fl[l] & FLAG_ACTIVE) {
                    const u32 k = (cl * V + l) * 4;
                    float* pp = ppart + (rg * H + c + l) * 3;
                    pp[0] = sh[k + 1];
                    pp[1] = sh[k + 2];
                    pp[2] = sh[k + 3];
                }
            }
        }
        const u32 cend = (c0 + TW < H) ? c0 + TW : H;
        const u32 sfirst = c0 / C;
        const u32 nseg = (cend - 1) / C - sfirst + 1;
        for (u32 k = warp; k < nseg; k += HCW) {
            const u32 seed = sfirst + k;
            const u32 lo = (seed * C > c0 ? seed * C : c0) - c0;
            const u32 hi = ((seed + 1) * C < cend ? (seed + 1) * C : cend) - c0;
            float acc = 0.f;
            for (u32 cc = lo + lane; cc < hi; cc += 32) acc += sh[cc * 4];
            for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
            if (lane == 0) gpart[(rg * n_tiles + tile) * (u64)segs + k] = acc;
        }
    }
    if (threadIdx.x == 0) bulk_wait_all();
}

// ---------------------------------------------------------------- forward, seed-uniform
//
// As hfwd_impl, for C % V == 0 (the host checks): every consumer thread's V columns lie in one
// seed, so the seed's mode, constants and coefficients are per thread (uni_setup of kasmina.cu,
// the portable kasmina_fwdu's math, including its FOR_PAIRS fast path), the statistics are per
// thread (6 scalars instead of 6 V registers; shift K from the first row of the first chunk, so
// no global load before the pipeline), computed assuming finite inputs and recomputed exactly
// from global memory by a thread that met a non-finite one (as kasmina_fwdu), and CONV takes
// its neighbours from the input tile (global memory only at a tile's left edge).
// DIRECT (identity kernels only, ACT false): the output is the input bit for bit, so consumer
// thread 0 stores the input stage itself with TMA as soon as it has landed (no staging tile, no
// shared-memory writes, no per-chunk barrier of the consumers); warp 0 releases the stage once
// that store has read it (wait_group.read 0), the other warps as soon as their statistics are done.
template <class D, int V, bool ACT, bool DIRECT = false>
__device__ __forceinline__ void hfwdu_impl(const KTensorMap* tmx, const KTensorMap* tmy,
                                           const typename D::R* __restrict__ x, u64 B, u32 H, u32 C, u32 R, u32 BR,
                                           u32 TW, float dead_eps, const SeedConst* __restrict__ sc,
                                           const ColCoef* __restrict__ colc, const float* __restrict__ coef,
                                           Partial* __restrict__ part, u32 segs, u32 n_tiles, u64 n_units) {
    static_assert(!(DIRECT && ACT), "DIRECT stores the input stage: identity kernels only");
    typedef typename D::R RT;
    typedef Pack<D, V> P;
    extern __shared__ __align__(128) unsigned char hsm[];
    const u32 esize = (u32)sizeof(RT);
    const HPlan pl = hplan(hsm, TW, BR, esize);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    hring_init(pl);

    if (warp == HCW) {
        if (lane == 0) hproduce(pl, tmx, nullptr, B, R, BR, TW, esize, n_tiles, n_units);
        return;
    }

    const u32 ct = threadIdx.x;
    const u32 CL = TW / V;
    const u32 RL = HCT / CL;
    const u32 cl = ct % CL, rl = ct / CL;
    Partial* sh_thr = reinterpret_cast<Partial*>(pl.scratch());  // one per column lane (TW * 32 B hold TW)
    u64 it = 0;
    for (u64 un = blockIdx.x; un < n_units; un += gridDim.x) {
        const u32 tile = (u32)(un % n_tiles);
        const u64 rg = un / n_tiles;
        const u32 c0 = tile * TW;
        const u32 c = c0 + cl * V;
        const u64 r0 = rg * (u64)R;
        const u64 rend = (r0 + R < B) ? r0 + R : B;
        const u32 nrows = (u32)(rend - r0);
        const u32 nch = (nrows + BR - 1) / BR;
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

        float K = 0.f, S1 = 0.f, S2 = 0.f;
        float mn = __int_as_float(0x7f800000), mx = __int_as_float(0xff800000);
        u32 mn2 = 0x7f807f80u, mx2 = 0xff80ff80u;  // bf16 pairs (+inf, +inf), (-inf, -inf)
        u32 dead = 0, nf = 0, seen = 0;

        for (u32 ch = 0; ch < nch; ch++, it++) {
            const int s = (int)(it % HST);
            const u32 ph = (u32)((it / HST) & 1);
            const u64 rc = r0 + (u64)ch * BR;
            const u32 rows_here = (nrows - ch * BR < BR) ? nrows - ch * BR : BR;
            const RT* tin = reinterpret_cast<const RT*>(htile(pl, TW, s));
            RT* tout = reinterpret_cast<RT*>(htile(pl, TW, HST + s));
            mbar_wait(smem_addr(pl.full(s)), ph);
            if (DIRECT && ct == 0) {
                fence_proxy_async_smem();
                tma_store_2d(tmy, (int)c0, (int)rc, smem_addr(tin));
                bulk_commit();
            }
            if (ch == 0 && inrange && rl < rows_here) {
                P first;
                first.raw = *reinterpret_cast<const typename P::Raw*>(tin + rl * TW + cl * V);
#pragma unroll
                for (int l = V - 1; l >= 0; l--) {
                    const float f = D::in(first.e[l]);
                    if (finite_f(f)) K = f;
                }
            }
            // HUR rows loaded before any is processed (more shared-memory loads in flight per thread).
            for (u32 rb = rl; rb < rows_here; rb += HUR * RL) {
                P buf[HUR];
#pragma unroll
                for (int u = 0; u < HUR; u++) {
                    const u32 rr = rb + u * RL;
                    if (rr < rows_here) buf[u].raw = *reinterpret_cast<const typename P::Raw*>(tin + rr * TW + cl * V);
                }
#pragma unroll
                for (int u = 0; u < HUR; u++) {
                    const u32 rr = rb + u * RL;
                    if (rr < rows_here) {
                        P out;
                        out.raw = buf[u].raw;
                        if (inrange) {
                            seen++;
                            u32 no_pairs = 0;  // (per-element dead count: PAIRS off)
                            stats_row<D, V, false>(buf[u], K, dead_eps, 0u, S1, S2, mn, mx, mn2, mx2, dead, no_pairs);
                            if (ACT && conv) {
                                // Columns c - 1, c - 2 of this row: the tile, or memory at its left edge.
                                const u32 tc = cl * V;
                                const u64 rowoff = (rc + rr) * (u64)H;
                                float m1 = 0.f, m2 = 0.f;
                                if (j0 >= 1) m1 = tc >= 1 ? D::in(tin[rr * TW + tc - 1]) : D::in(x[rowoff + c - 1]);
                                if (j0 >= 2) m2 = tc >= 2 ? D::in(tin[rr * TW + tc - 2]) : D::in(x[rowoff + c - 2]);
#pragma unroll
                                for (int l = 0; l < V; l++) {
                                    const float xv = D::in(buf[u].e[l]);
                                    const float xm1 = conv_xm1<D, V>(buf[u], l, m1);
                                    const float xm2 = conv_xm2<D, V>(buf[u], l, m1, m2);
                                    out.e[l] = D::out(clamp_band(fl, q, seed_out(fl, 0.f, q, xv, xm1, xm2)));
                                }
                            } else if (ACT && act && finite_f(S1) && !(fl & FLAG_CLAMP)) {
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
                            } else if (ACT && act) {
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
                        if (!DIRECT) *reinterpret_cast<typename P::Raw*>(tout + rr * TW + cl * V) = out.raw;
                    }
                }
            }
            if (DIRECT) {
                if (ct == 0) bulk_wait_read<0>();
                __syncwarp();
                if (lane == 0) mbar_arrive(smem_addr(pl.empty(s)));
                continue;
            }
            fence_proxy_async_smem();
            __syncwarp();
            if (lane == 0) mbar_arrive(smem_addr(pl.empty(s)));
            if (ct == 0) bulk_wait_read<HST - 2>();
            consumers_sync();
            if (ct == 0) {
                tma_store_2d(tmy, (int)c0, (int)rc, smem_addr(tout));
                bulk_commit();
            }
        }

        if (inrange) {
            if (MinMax2<D, V>::ON) {
                mn = fminf(D::in((typename D::R)(mn2 & 0xffffu)), D::in((typename D::R)(mn2 >> 16)));
                mx = fmaxf(D::in((typename D::R)(mx2 & 0xffffu)), D::in((typename D::R)(mx2 >> 16)));
            }
            if (!(finite_f(S1) && finite_f(S2))) {
                // A non-finite input (or an overflow): the exact per-element path over the same rows.
                S1 = 0.f;
                S2 = 0.f;
                mn = __int_as_float(0x7f800000);
                mx = __int_as_float(0xff800000);
                dead = 0;
                // This thread's rows: rl, rl + RL, ... of each chunk of BR rows.
                for (u32 ch = 0; ch < nch; ch++) {
                    for (u32 rr = rl; rr < BR && ch * BR + rr < nrows; rr += RL) {
                        P e;
                        e.raw = *reinterpret_cast<const typename P::Raw*>(x + (r0 + ch * BR + rr) * (u64)H + c);
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
        }
        Partial p = inrange ? partial_of(seen * V - nf, nf, dead, K, S1, S2, mn, mx) : partial_empty();
        // Merge over the row lanes in a fixed order, then one warp per seed segment of the tile.
        for (u32 r = 0; r < RL; r++) {
            consumers_sync();
            if (rl == r) sh_thr[cl] = r == 0 ? p : partial_merge(sh_thr[cl], p);
        }
        consumers_sync();
        const u32 cend = (c0 + TW < H) ? c0 + TW : H;
        const u32 sfirst = c0 / C;
        const u32 nseg = (cend - 1) / C - sfirst + 1;
        for (u32 kk = warp; kk < nseg; kk += HCW) {
            const u32 sd = sfirst + kk;
            const u32 lo = ((sd * C > c0 ? sd * C : c0) - c0) / V;
            const u32 hi = (((sd + 1) * C < cend ? (sd + 1) * C : cend) - c0) / V;
            Partial acc = partial_empty();
            for (u32 tt = lo + lane; tt < hi; tt += 32) acc = partial_merge(acc, sh_thr[tt]);
            for (int off = 16; off > 0; off >>= 1) {
                Partial o = partial_shfl_down(acc, off);
                acc = partial_merge(acc, o);
            }
            if (lane == 0) part[(rg * n_tiles + tile) * (u64)segs + kk] = acc;
        }
    }
    if (threadIdx.x == 0) bulk_wait_all();
}

// ---------------------------------------------------------------- backward, seed-uniform

// conv_geff with x and g of tile column `tc` (row `rr`) read from the stage's shared tiles
// (the same operations, so the same value); tc >= 2 where j >= 2 is needed.
template <class D>
__device__ __forceinline__ float conv_geff_tile(const typename D::R* tg, const typename D::R* tx, u32 rowbase, u32 tc,
                                                u32 j, u32 fl, const SeedConst& q) {
    float gv = D::in(tg[rowbase + tc]);
    if (fl & FLAG_CLAMP) {
        float xv = D::in(tx[rowbase + tc]);
        float xm1 = j >= 1 ? D::in(tx[rowbase + tc - 1]) : 0.f;
        float xm2 = j >= 2 ? D::in(tx[rowbase + tc - 2]) : 0.f;
        if (is_clamped(fl, q, seed_out(fl, 0.f, q, xv, xm1, xm2))) gv = 0.f;
    }
    return gv;
}

// As hbwd_impl, for C % V == 0 (the host checks): the portable kasmina_bwdu's per-thread seed
// math (one seed per thread, per-thread Σg² and P1 / P2, the seed-sum-only partials at the
// thread's first column, as kasmina_bwdu writes them), CONV neighbours from the stage's
// tiles (global memory only at a tile's edges) instead of global memory.
// DIRECT: as hfwdu_impl's (identity backward: dX is G bit for bit, stored from the G stage).
template <class D, int V, bool ACT, bool DIRECT = false>
__device__ __forceinline__ void hbwdu_impl(const KTensorMap* tmx, const KTensorMap* tmg, const KTensorMap* tmdx,
                                           const typename D::R* __restrict__ x, const typename D::R* __restrict__ g,
                                           u64 B, u32 H, u32 C, u32 R, u32 BR, u32 TW,
                                           const SeedConst* __restrict__ sc, const ColCoef* __restrict__ colc,
                                           const float* __restrict__ coef, float* __restrict__ gpart,
                                           float* __restrict__ ppart, u32 segs, u32 n_tiles, u64 n_units) {
    static_assert(!(DIRECT && ACT), "DIRECT stores the input stage: identity kernels only");
    typedef typename D::R RT;
    typedef Pack<D, V> P;
    extern __shared__ __align__(128) unsigned char hsm[];
    const u32 esize = (u32)sizeof(RT);
    const HPlan pl = hplan(hsm, TW, BR, esize);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // Tiles: [0, HST) G, [HST, 2 HST) X, [2 HST, 3 HST) dX staging.
    hring_init(pl);

    if (warp == HCW) {
        if (lane == 0) hproduce(pl, tmg, ACT ? tmx : nullptr, B, R, BR, TW, esize, n_tiles, n_units);
        return;
    }

    const u32 ct = threadIdx.x;
    const u32 CL = TW / V;
    const u32 RL = HCT / CL;
    const u32 cl = ct % CL, rl = ct / CL;
    const u32 NS = V + 3;                                // floats per column lane: G2, P0[V], P1, P2
    float* sh = reinterpret_cast<float*>(pl.scratch());  // CL * NS floats (TW * 32 B hold them)
    u64 it = 0;
    for (u64 un = blockIdx.x; un < n_units; un += gridDim.x) {
        const u32 tile = (u32)(un % n_tiles);
        const u64 rg = un / n_tiles;
        const u32 c0 = tile * TW;
        const u32 tc = cl * V;
        const u32 c = c0 + tc;
        const u64 r0 = rg * (u64)R;
        const u64 rend = (r0 + R < B) ? r0 + R : B;
        const u32 nrows = (u32)(rend - r0);
        const u32 nch = (nrows + BR - 1) / BR;
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

        float G2 = 0.f, P1 = 0.f, P2 = 0.f;
        float P0[V];
#pragma unroll
        for (int l = 0; l < V; l++) P0[l] = 0.f;

        for (u32 ch = 0; ch < nch; ch++, it++) {
            const int s = (int)(it % HST);
            const u32 ph = (u32)((it / HST) & 1);
            const u64 rc = r0 + (u64)ch * BR;
            const u32 rows_here = (nrows - ch * BR < BR) ? nrows - ch * BR : BR;
            const RT* tg = reinterpret_cast<const RT*>(htile(pl, TW, s));
            const RT* tx = reinterpret_cast<const RT*>(htile(pl, TW, HST + s));
            RT* tout = reinterpret_cast<RT*>(htile(pl, TW, 2 * HST + s));
            mbar_wait(smem_addr(pl.full(s)), ph);
            if (DIRECT && ct == 0) {
                fence_proxy_async_smem();
                tma_store_2d(tmdx, (int)c0, (int)rc, smem_addr(tg));
                bulk_commit();
            }
            for (u32 rr = rl; rr < rows_here; rr += RL) {
                const u32 rowbase = rr * TW;
                P gb, xb;
                gb.raw = *reinterpret_cast<const typename P::Raw*>(tg + rowbase + tc);
                if (ACT && act) xb.raw = *reinterpret_cast<const typename P::Raw*>(tx + rowbase + tc);
                P out;
                out.raw = gb.raw;
                if (inrange) {
#pragma unroll
                    for (int l = 0; l < V; l++) {
                        const float gf = D::in(gb.e[l]);
                        G2 = fmaf(gf, gf, G2);
                    }
                }
                if (ACT && conv) {
                    const u64 rowoff = (rc + rr) * (u64)H;
                    float m1 = 0.f, m2 = 0.f;
                    if (j0 >= 1) m1 = tc >= 1 ? D::in(tx[rowbase + tc - 1]) : D::in(x[rowoff + c - 1]);
                    if (j0 >= 2) m2 = tc >= 2 ? D::in(tx[rowbase + tc - 2]) : D::in(x[rowoff + c - 2]);
                    // The gradient reaching each column's pre-clamp output.
                    float ge[V];
#pragma unroll
                    for (int l = 0; l < V; l++) {
                        ge[l] = D::in(gb.e[l]);
                        if (fl & FLAG_CLAMP) {
                            const float xv = D::in(xb.e[l]);
                            const float xm1 = conv_xm1<D, V>(xb, l, m1);
                            const float xm2 = conv_xm2<D, V>(xb, l, m1, m2);
                            if (is_clamped(fl, q, seed_out(fl, 0.f, q, xv, xm1, xm2))) ge[l] = 0.f;
                        }
                    }
#pragma unroll
                    for (int l = 0; l < V; l++) {
                        const u32 j = j0 + l;
                        const float xv = D::in(xb.e[l]);
                        const float xm1 = conv_xm1<D, V>(xb, l, m1);
                        const float xm2 = conv_xm2<D, V>(xb, l, m1, m2);
                        float g1 = 0.f, g2 = 0.f;
                        if (j + 1 < C) {
                            if (l + 1 < V) {
                                g1 = ge[l + 1 < V ? l + 1 : 0];
                            } else if (tc + l + 1 < TW) {
                                g1 = conv_geff_tile<D>(tg, tx, rowbase, tc + l + 1, j + 1, fl, q);
                            } else {
                                g1 = conv_geff<D>(x, g, rowoff, c + l + 1, j + 1, fl, q);
                            }
                        }
                        if (j + 2 < C) {
                            if (l + 2 < V) {
                                g2 = ge[l + 2 < V ? l + 2 : 0];
                            } else if (tc + l + 2 < TW) {
                                g2 = conv_geff_tile<D>(tg, tx, rowbase, tc + l + 2, j + 2, fl, q);
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
                } else if (ACT && act) {
#pragma unroll
                    for (int l = 0; l < V; l++) {
                        const float xf = D::in(xb.e[l]);
                        float gj = D::in(gb.e[l]);
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
                if (!DIRECT) *reinterpret_cast<typename P::Raw*>(tout + rowbase + tc) = out.raw;
            }
            if (DIRECT) {
                if (ct == 0) bulk_wait_read<0>();
                __syncwarp();
                if (lane == 0) mbar_arrive(smem_addr(pl.empty(s)));
                continue;
            }
            fence_proxy_async_smem();
            __syncwarp();
            if (lane == 0) mbar_arrive(smem_addr(pl.empty(s)));
            if (ct == 0) bulk_wait_read<HST - 2>();
            consumers_sync();
            if (ct == 0) {
                tma_store_2d(tmdx, (int)c0, (int)rc, smem_addr(tout));
                bulk_commit();
            }
        }

        // Sums over the row lanes, in a fixed order.
        float* mine = sh + cl * NS;
        for (u32 r = 0; r < RL; r++) {
            consumers_sync();
            if (rl == r) {
                const float g2v = inrange ? G2 : 0.f;
                if (r == 0) {
                    mine[0] = g2v;
#pragma unroll
                    for (int l = 0; l < V; l++) mine[1 + l] = P0[l];
                    mine[V + 1] = P1;
                    mine[V + 2] = P2;
                } else {
                    mine[0] += g2v;
#pragma unroll
                    for (int l = 0; l < V; l++) mine[1 + l] += P0[l];
                    mine[V + 1] += P1;
                    mine[V + 2] += P2;
                }
            }
        }
        consumers_sync();
        // Parameter partials (kasmina_bwdu's layout): per column, the seed-sum-only ones
        // at the thread's first column.
        if (ACT && act && rl == 0) {
#pragma unroll
            for (int l = 0; l < V; l++) {
                float* pp = ppart + (rg * H + c + l) * 3;
                pp[0] = mine[1 + l];
                pp[1] = l == 0 ? mine[V + 1] : 0.f;
                pp[2] = l == 0 ? mine[V + 2] : 0.f;
            }
        }
        const u32 cend = (c0 + TW < H) ? c0 + TW : H;
        const u32 sfirst = c0 / C;
        const u32 nseg = (cend - 1) / C - sfirst + 1;
        for (u32 kk = warp; kk < nseg; kk += HCW) {
            const u32 sd = sfirst + kk;
            const u32 lo = ((sd * C > c0 ? sd * C : c0) - c0) / V;
            const u32 hi = (((sd + 1) * C < cend ? (sd + 1) * C : cend) - c0) / V;
            float acc = 0.f;
            for (u32 tt = lo + lane; tt < hi; tt += 32) acc += sh[tt * NS];
            for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
            if (lane == 0) gpart[(rg * n_tiles + tile) * (u64)segs + kk] = acc;
        }
    }
    if (threadIdx.x == 0) bulk_wait_all();
}

// ---------------------------------------------------------------- entry points

#define KASMINA_HFWD(NAME, ACT)                                                                                  \
    extern "C" __global__ void __launch_bounds__(HCT + 32, 1) NAME(                                              \
        const __grid_constant__ KTensorMap tmx, const __grid_constant__ KTensorMap tmy, const KASMINA_DT::R* x, \
        u64 B, u32 H, u32 C, u32 R, u32 BR, u32 TW, float dead_eps, const SeedConst* sc, const ColCoef* colc,  \
        const float* coef, Partial* part, u32 segs, u32 n_tiles, u64 n_units) {                                 \
        hfwd_impl<KASMINA_DT, KASMINA_V, ACT>(&tmx, &tmy, x, B, H, C, R, BR, TW, dead_eps, sc, colc, coef, part, \
                                              segs, n_tiles, n_units);                                          \
    }
KASMINA_HFWD(kasmina_hfwd, true)
KASMINA_HFWD(kasmina_hfwd_identity, false)

#define KASMINA_HBWD(NAME, ACT)                                                                                   \
    extern "C" __global__ void __launch_bounds__(HCT + 32, 1) NAME(                                               \
        const __grid_constant__ KTensorMap tmx, const __grid_constant__ KTensorMap tmg,                          \
        const __grid_constant__ KTensorMap tmdx, const KASMINA_DT::R* x, const KASMINA_DT::R* g, u64 B, u32 H,   \
        u32 C, u32 R, u32 BR, u32 TW, const SeedConst* sc, const ColCoef* colc, const float* coef, float* gpart, \
        float* ppart, u32 segs, u32 n_tiles, u64 n_units) {                                                       \
        hbwd_impl<KASMINA_DT, KASMINA_V, ACT>(&tmx, &tmg, &tmdx, x, g, B, H, C, R, BR, TW, sc, colc, coef, gpart, \
                                              ppart, segs, n_tiles, n_units, ACT ? 1u : 0u);                     \
    }
KASMINA_HBWD(kasmina_hbwd, true)
KASMINA_HBWD(kasmina_hbwd_identity, false)

// Registers per thread of the seed-uniform kernels: a block is 5 warps, spread over the SM's
// 4 schedulers (16384 registers each), so 3 blocks per SM (4 warps on one scheduler) need
// at most 16384 / (4 * 32) = 128 registers per thread (a 179-register kernel gets 1 block per
// SM by this rule, not by the 64 K total).
#ifndef KASMINA_HOPPER_REGS
#define KASMINA_HOPPER_REGS 128
#endif
#define HREGS_U KASMINA_HOPPER_REGS
// Registers of the active seed-uniform forward (kasmina_hfwdu): 5 warps per block, 4 blocks
// per SM put 5 warps on a scheduler: 16384 / (5 * 32) = 102, rounded down to the
// allocation unit of 8: 96 (see KASMINA_HOPPER_UNROLL).
#ifndef KASMINA_HOPPER_FWD_REGS
#define KASMINA_HOPPER_FWD_REGS 96
#endif
// The direct identity kernels use one tile per stage (a 8 KiB box: about 41 KiB of shared
// memory, 5 blocks per SM): 5 blocks put 7 warps on a scheduler, 16384 / (7 * 32) = 73.
#define HREGS_D 72

// Seed-uniform forward (C % V == 0), same parameters as kasmina_hfwd.
#define KASMINA_HFWDU(NAME, ACT, DIRECT, REGS)                                                                   \
    extern "C" __global__ void __maxnreg__(REGS) NAME(                                                \
        const __grid_constant__ KTensorMap tmx, const __grid_constant__ KTensorMap tmy, const KASMINA_DT::R* x, \
        u64 B, u32 H, u32 C, u32 R, u32 BR, u32 TW, float dead_eps, const SeedConst* sc, const ColCoef* colc,  \
        const float* coef, Partial* part, u32 segs, u32 n_tiles, u64 n_units) {                                 \
        hfwdu_impl<KASMINA_DT, KASMINA_V, ACT, DIRECT>(&tmx, &tmy, x, B, H, C, R, BR, TW, dead_eps, sc, colc, coef, \
                                                       part, segs, n_tiles, n_units);                           \
    }
KASMINA_HFWDU(kasmina_hfwdu, true, false, KASMINA_HOPPER_FWD_REGS)
KASMINA_HFWDU(kasmina_hfwdu_identity, false, false, HREGS_U)
KASMINA_HFWDU(kasmina_hfwdu_identity_direct, false, true, HREGS_D)

// Seed-uniform backward (C % V == 0), same parameters as kasmina_hbwd.
#define KASMINA_HBWDU(NAME, ACT, DIRECT, REGS)                                                                    \
    extern "C" __global__ void __maxnreg__(REGS) NAME(                                                 \
        const __grid_constant__ KTensorMap tmx, const __grid_constant__ KTensorMap tmg,                          \
        const __grid_constant__ KTensorMap tmdx, const KASMINA_DT::R* x, const KASMINA_DT::R* g, u64 B, u32 H,   \
        u32 C, u32 R, u32 BR, u32 TW, const SeedConst* sc, const ColCoef* colc, const float* coef, float* gpart, \
        float* ppart, u32 segs, u32 n_tiles, u64 n_units) {                                                       \
        hbwdu_impl<KASMINA_DT, KASMINA_V, ACT, DIRECT>(&tmx, &tmg, &tmdx, x, g, B, H, C, R, BR, TW, sc, colc, coef, \
                                                       gpart, ppart, segs, n_tiles, n_units);                    \
    }
KASMINA_HBWDU(kasmina_hbwdu, true, false, HREGS_U)
KASMINA_HBWDU(kasmina_hbwdu_identity, false, false, HREGS_U)
KASMINA_HBWDU(kasmina_hbwdu_identity_direct, false, true, HREGS_D)
