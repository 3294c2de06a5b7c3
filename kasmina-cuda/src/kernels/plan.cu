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
// No header is included, like kasmina.cu, so NVRTC needs no toolkit include folder.

typedef unsigned int u32;
typedef unsigned long long u64;

#define FLAG_ACTIVE 1u
#define TYPE_SHIFT 3u
#define TYPE_RES 0u
#define TYPE_ATT 1u
#define TYPE_MLP 2u

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

// One block per seed. `w` is [S, C] and `scales` [S], f32; `consts`, `coef` ([H]: softmax(w)
// for ATTENTION, w otherwise), `colc` ([H]), `records` and `wcopy` ([S, C], the device copy
// the checksum reads) are the layer's own buffers.
extern "C" __global__ void kasmina_plan(const float* __restrict__ w, const float* __restrict__ scales, u32 C,
                                        u32* __restrict__ consts, float* __restrict__ coef,
                                        float4* __restrict__ colc, unsigned char* __restrict__ records,
                                        float* __restrict__ wcopy) {
    __shared__ double sh[33];
    const u32 seed = blockIdx.x;
    const u64 base = (u64)seed * C;
    u32* sc = consts + 8ull * seed;
    const u32 flags = sc[0];
    const u32 ty = (flags >> TYPE_SHIFT) & 3u;
    const bool active = (flags & FLAG_ACTIVE) != 0;
    const double a = (double)__uint_as_float(sc[1]);
    const float s = scales[seed];
    const double s64 = (double)s;

    // softmax(w) with the maximum subtracted first (SPEC 4); fmax skips NaN like f64::max.
    double m = -1.0 / 0.0, sum = 0.0;
    if (ty == TYPE_ATT) {
        for (u32 j = threadIdx.x; j < C; j += blockDim.x) m = fmax(m, (double)w[base + j]);
        m = plan_reduce(m, true, sh);
        for (u32 j = threadIdx.x; j < C; j += blockDim.x) sum += exp((double)w[base + j] - m);
        sum = plan_reduce(sum, false, sh);
    }
    for (u32 j = threadIdx.x; j < C; j += blockDim.x) {
        const float wj = w[base + j];
        wcopy[base + j] = wj;
        const double pj = ty == TYPE_ATT ? exp((double)wj - m) / sum : 0.0;
        coef[base + j] = ty == TYPE_ATT ? (float)pj : wj;
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
    }
    if (threadIdx.x == 0) {
        sc[2] = __float_as_uint(s);
        sc[5] = __float_as_uint(C > 0 ? w[base] : 0.f);
        sc[6] = __float_as_uint(C > 1 ? w[base + 1] : 0.f);
        sc[7] = __float_as_uint(C > 2 ? w[base + 2] : 0.f);
        *(float*)(records + 28ull * seed + 24) = s;
    }
}
