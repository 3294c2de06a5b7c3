// The parameter plan: re-derives the weight-dependent kernel constants of every seed from
// blueprint parameters that live in device memory the caller owns (a PyTorch module's
// parameters, which its optimizer updates in place), so no host round trip is needed
// between an optimizer step and the next forward. The host twin is `seed_const` in
// src/layer.rs; this kernel follows it operation for operation, in f64 where it does.
//
// The layouts it writes are the host's (src/layer.rs, checked by its tests):
//   SeedConst  = 8 words {flags, a, s, lo, hi, w0, w1, w2}: flags, a, lo and hi come from
//                the last state upload (they do not depend on the parameters) and are read;
//                s and the CONV taps w0..w2 are written;
//   ColCoef    = 4 floats {P, Q, W, R} per column;
//   SeedRecord = 28 bytes per seed with the scale at byte 24 (what the checksum covers).
// No header is included, like kasmina.cu, so NVRTC needs no toolkit include folder. The
// kernel modules of kasmina.cu are compiled with this file in front, so their fused small
// forward (`kasmina_fwd_seed_plan`) derives the constants with the same code.

typedef unsigned int u32;
typedef unsigned long long u64;

#define FLAG_ACTIVE 1u
#define TYPE_SHIFT 3u
#define TYPE_RES 0u
#define TYPE_ATT 1u
#define TYPE_MLP 2u

// Chunks up to this many columns take the softmax's reductions inside each warp.
#define PLAN_WARP_MAX_C 128u

// Block-wide reduction of one double per thread (max when `take_max`, else sum); every
// thread gets the result. Blocks are whole warps, at most 1024 threads.
__device__ double plan_reduce(double v, bool take_max, double* sh) {
    for (int off = 16; off > 0; off >>= 1) {
        const double o = __shfl_down_sync(0xffffffffu, v, off);
        v = take_max ? fmax(v, o) : v + o;
    }
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = sh[0];
        for (u32 k = 1; k < (blockDim.x >> 5); k++) t = take_max ? fmax(t, sh[k]) : t + sh[k];
        sh[32] = t;
    }
    __syncthreads();
    const double out = sh[32];
    __syncthreads();
    return out;
}

// The constants of seed `seed` (the calling block's work; every thread of the block calls it).
// `w` is [S, C] and `scales` [S], f32; `consts`, `coef` ([H]: softmax(w) for ATTENTION, w
// otherwise), `colc` ([H]), `records` and `wcopy` ([S, C], the device copy the checksum reads)
// are the layer's own buffers. When `sh_colc` is not null the block also gets the seed's C
// column coefficients there, its C coefficients in `sh_coef` and its 8 constant words in
// `sh_q` (shared memory: the fused small forward reads them after a barrier).
__device__ void plan_seed(const float* __restrict__ w, const float* __restrict__ scales, u32 C, u32 seed,
                          u32* __restrict__ consts, float* __restrict__ coef, float4* __restrict__ colc,
                          unsigned char* __restrict__ records, float* __restrict__ wcopy, double* sh,
                          float4* sh_colc, float* sh_coef, u32* sh_q) {
    const u64 base = (u64)seed * C;
    u32* sc = consts + 8ull * seed;
    const u32 flags = sc[0];
    const u32 ty = (flags >> TYPE_SHIFT) & 3u;
    const bool active = (flags & FLAG_ACTIVE) != 0;
    const double a = (double)__uint_as_float(sc[1]);
    const float s = scales[seed];
    const double s64 = (double)s;

    // softmax(w) with the maximum subtracted first (SPEC 4); fmax skips NaN like f64::max.
    // With at most one column per thread the exponential of the sum pass is reused (same value).
    const bool one = C <= blockDim.x;
    double m = -1.0 / 0.0, sum = 0.0, e_own = 0.0;
    if (ty == TYPE_ATT && C <= PLAN_WARP_MAX_C) {
        // Short chunks: every warp reduces the whole chunk itself (butterfly shuffles, so every
        // lane gets the same bits), with no barrier. Thread 32 k + lane's own column is the one
        // its warp's pass visits in step k.
        const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
        for (u32 j = lane; j < C; j += 32) m = fmax(m, (double)w[base + j]);
        for (int off = 16; off > 0; off >>= 1) m = fmax(m, __shfl_xor_sync(0xffffffffu, m, off));
        u32 k = 0;
        for (u32 j = lane; j < C; j += 32, k++) {
            const double e = exp((double)w[base + j] - m);
            sum += e;
            if (k == warp) e_own = e;
        }
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    } else if (ty == TYPE_ATT) {
        for (u32 j = threadIdx.x; j < C; j += blockDim.x) m = fmax(m, (double)w[base + j]);
        m = plan_reduce(m, true, sh);
        for (u32 j = threadIdx.x; j < C; j += blockDim.x) {
            e_own = exp((double)w[base + j] - m);
            sum += e_own;
        }
        sum = plan_reduce(sum, false, sh);
    }
    for (u32 j = threadIdx.x; j < C; j += blockDim.x) {
        const float wj = w[base + j];
        wcopy[base + j] = wj;
        const double pj = ty == TYPE_ATT ? (one ? e_own : exp((double)wj - m)) / sum : 0.0;
        const float cj = ty == TYPE_ATT ? (float)pj : wj;
        coef[base + j] = cj;
        float4 k = make_float4(1.f, 0.f, 0.f, 0.f);
        if (active) {
            if (ty == TYPE_RES) {
                k = make_float4((float)((1.0 - a) + a), 0.f, 0.f, (float)(a * (double)wj * s64));
            } else if (ty == TYPE_ATT) {
                k = make_float4((float)((1.0 - a) + a * pj), 0.f, 0.f, 0.f);
            } else if (ty == TYPE_MLP) {
                k = make_float4((float)(1.0 - a), (float)(a * s64), wj, 0.f);
            }
        }
        colc[base + j] = k;
        if (sh_colc) {
            sh_colc[j] = k;
            sh_coef[j] = cj;
        }
    }
    if (threadIdx.x == 0) {
        const u32 w0 = __float_as_uint(C > 0 ? w[base] : 0.f);
        const u32 w1 = __float_as_uint(C > 1 ? w[base + 1] : 0.f);
        const u32 w2 = __float_as_uint(C > 2 ? w[base + 2] : 0.f);
        sc[2] = __float_as_uint(s);
        sc[5] = w0;
        sc[6] = w1;
        sc[7] = w2;
        *(float*)(records + 28ull * seed + 24) = s;
        if (sh_q) {
            sh_q[0] = flags;
            sh_q[1] = sc[1];
            sh_q[2] = __float_as_uint(s);
            sh_q[3] = sc[3];
            sh_q[4] = sc[4];
            sh_q[5] = w0;
            sh_q[6] = w1;
            sh_q[7] = w2;
        }
    }
}

// One block per seed (whole warps, at most 1024 threads): the constants of every seed.
extern "C" __global__ void kasmina_plan(const float* __restrict__ w, const float* __restrict__ scales, u32 C,
                                        u32* __restrict__ consts, float* __restrict__ coef,
                                        float4* __restrict__ colc, unsigned char* __restrict__ records,
                                        float* __restrict__ wcopy) {
    __shared__ double sh[33];
    plan_seed(w, scales, C, blockIdx.x, consts, coef, colc, records, wcopy, sh, nullptr, nullptr, nullptr);
}
