// The calibration forward of a Llama-family block on the GPU (see
// src/forward.rs): the element-wise and row-wise steps between the cuBLAS
// GEMMs. Activations entering a GEMM are f16 (`u16` here), everything else
// f32. No CUDA headers, like w4.cu: f16 conversions are PTX, so NVRTC from the
// PyPI wheel compiles this without CUDA headers.
//
// Layouts (row-major):
//   x      [tokens, hidden]  f32 residual stream
//   q/k/v  [len, heads·d]    f32 GEMM outputs of one sequence
//   Qh     [heads][len][d]   f16, head-major so one GQA group's query heads
//                            form one [rep·len, d] matrix for a batched GEMM
//   S      [heads·len, len]  f32 attention scores, P the same in f16

#include "common.cuh"

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// Sum over a block of blockDim.x (a multiple of 32, at most 1024) threads;
// every thread gets the total.
template <typename T> __device__ __forceinline__ T block_sum(T v, T *shared) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0)
        shared[warp] = v;
    __syncthreads();
    int warps = blockDim.x / 32;
    T t = lane < warps ? shared[lane] : (T)0;
    for (int o = 16; o > 0; o >>= 1)
        t += __shfl_xor_sync(0xffffffffu, t, o);
    return t;
}

__device__ __forceinline__ float block_max(float v, float *shared) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0)
        shared[warp] = v;
    __syncthreads();
    int warps = blockDim.x / 32;
    float t = lane < warps ? shared[lane] : neg_inf();
    for (int o = 16; o > 0; o >>= 1)
        t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, o));
    return t;
}

// hi[i] = f16(t); with lo, also lo[i] = f16(t − hi[i]), the rounding's
// remainder (exact in f32), so hi + lo holds t to about 2^-22 of |t|. The
// calibration forward asks for it with asymmetric calibration: the cross
// term takes the difference of the two lanes' inputs, which f16 values alone
// would leave with an error of 2^-12 of each input — more than the
// difference itself where the lanes agree closely (2026-12-04-cross-term.md).
__device__ __forceinline__ void store_hilo(u16 *__restrict__ hi, u16 *__restrict__ lo, u64 i,
                                           float t) {
    u16 h = f32_to_f16(t);
    hi[i] = h;
    if (lo != nullptr) lo[i] = f32_to_f16(t - f16_to_f32(h));
}

// Norms of rows of the f32 stream x ([rows, h], one block per row) into
// f16 `out`, with weight w, the sums in f64 like the CPU's:
//   blk_rms_norm:   x / sqrt(mean(x²) + eps) · w (HF Llama). When y is not
//                   null, the f16 rows y are first added into x (the
//                   residual add before the norm, written back to x).
//   blk_layer_norm: (x − mean) / sqrt(var + eps) · w + b (OPT); with
//                   write_x the result also replaces x (post-LN blocks).
// A thread keeps its NORM_PER elements in registers (columns threadIdx.x +
// j·blockDim.x, every load issued before the first use), so a row costs
// about two memory round trips however wide it is: one-row decode steps are
// latency-bound, not bandwidth-bound. The host launches at least
// h / NORM_PER threads (`forward::norm_kernel`): up to 512 the kernels
// below, whose bound lets ptxas give a thread 90-100 registers, no spills;
// wider rows (over 8192) the `_wide` twins, up to 1024 threads, where the
// 64 registers a thread can have leave 72-144 bytes of spills (with 1024
// for every row the decoder's RMSNorm spilled, 2026-12-05-norm-spill.md).
#define NORM_PER 16
template <bool LAYER>
__device__ __forceinline__ void row_norm(float *__restrict__ x, const u16 *__restrict__ y,
                                         const float *__restrict__ w,
                                         const float *__restrict__ b, float eps, int h,
                                         u16 *__restrict__ out, u16 *__restrict__ lo,
                                         bool write_x) {
    __shared__ double red[32];
    float *xr = x + (u64)blockIdx.x * h;
    float v[NORM_PER];
#pragma unroll
    for (int j = 0; j < NORM_PER; j++) {
        int c = threadIdx.x + j * blockDim.x;
        v[j] = c < h ? xr[c] : 0.f;
    }
    if (y != nullptr) {
        const u16 *yr = y + (u64)blockIdx.x * h;
#pragma unroll
        for (int j = 0; j < NORM_PER; j++) {
            int c = threadIdx.x + j * blockDim.x;
            if (c < h) {
                v[j] += f16_to_f32(yr[c]);
                xr[c] = v[j];
            }
        }
    }
    // The weights too, before the sums: their loads overlap the first ones'
    // latency instead of adding a third round trip after the reduction.
    float wv[NORM_PER];
#pragma unroll
    for (int j = 0; j < NORM_PER; j++) {
        int c = threadIdx.x + j * blockDim.x;
        wv[j] = c < h ? w[c] : 0.f;
    }
    double mean = 0.0;
    if (LAYER) {
        double s = 0.0;
#pragma unroll
        for (int j = 0; j < NORM_PER; j++) s += (double)v[j];
        mean = block_sum(s, red) / h;
    }
    double s = 0.0;
#pragma unroll
    for (int j = 0; j < NORM_PER; j++) {
        int c = threadIdx.x + j * blockDim.x;
        double dv = c < h ? (double)v[j] - mean : 0.0;
        s += dv * dv;
    }
    s = block_sum(s, red);
    double rd = 1.0 / sqrt(s / h + (double)eps);
    float r = (float)rd;
    const u64 o = (u64)blockIdx.x * h;
#pragma unroll
    for (int j = 0; j < NORM_PER; j++) {
        int c = threadIdx.x + j * blockDim.x;
        if (c < h) {
            float t = LAYER ? (float)(((double)v[j] - mean) * rd) * wv[j] + b[c] : v[j] * r * wv[j];
            if (write_x) xr[c] = t;
            store_hilo(out, lo, o + c, t);
        }
    }
}

#define RMS_NORM_KERNEL(NAME, THREADS)                                                   \
    extern "C" __global__ void __launch_bounds__(THREADS)                                  \
        NAME(float *__restrict__ x, const u16 *__restrict__ y, const float *__restrict__ w, \
             float eps, int h, u16 *__restrict__ out, u16 *__restrict__ lo) {               \
        pdl_wait();                                                                        \
        pdl_launch();                                                                      \
        row_norm<false>(x, y, w, nullptr, eps, h, out, lo, false);                         \
    }
RMS_NORM_KERNEL(blk_rms_norm, 512)
RMS_NORM_KERNEL(blk_rms_norm_wide, 1024)

#define LAYER_NORM_KERNEL(NAME, THREADS)                                                   \
    extern "C" __global__ void __launch_bounds__(THREADS)                                  \
        NAME(float *__restrict__ x, const float *__restrict__ w, const float *__restrict__ b, \
             float eps, int h, u16 *__restrict__ out, int write_x, u16 *__restrict__ lo) {  \
        row_norm<true>(x, nullptr, w, b, eps, h, out, lo, write_x != 0);                   \
    }
LAYER_NORM_KERNEL(blk_layer_norm, 512)
LAYER_NORM_KERNEL(blk_layer_norm_wide, 1024)

// y[r, c] += b[c] for y [rows, n].
extern "C" __global__ void blk_add_bias(float *__restrict__ y, const float *__restrict__ b,
                                        u64 rows, int n) {
    u64 total = rows * (u64)n;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x)
        y[i] += b[i % n];
}

// Rotary positions, rotate-half form: the pair (a, b) of dimensions i and
// i + d/2 turned by `ang` (0 leaves it as is: v, and OPT's zero
// frequencies), written as f16.
__device__ __forceinline__ void rope_pair(float a, float b, float ang, u16 *da, u16 *db) {
    if (ang != 0.f) {
        const float c = cosf(ang), s = sinf(ang);
        const float a2 = a * c - b * s;
        b = b * c + a * s;
        a = a2;
    }
    *da = f32_to_f16(a);
    *db = f32_to_f16(b);
}

// One sequence's q, k, v (f32 [len, heads·d]) to head-major f16 with rotary
// positions (HF rotate_half: pairs (i, i + d/2), angle = inv_freq[i]·t in
// f32) on q and k. Grid (len, nh + 2·nkv), block d/2 threads.
extern "C" __global__ void blk_qkv_heads(const float *__restrict__ q, const float *__restrict__ k,
                                         const float *__restrict__ v,
                                         const float *__restrict__ inv_freq, int len, int nh,
                                         int nkv, int d, u16 *__restrict__ qh,
                                         u16 *__restrict__ kh, u16 *__restrict__ vh) {
    int t = blockIdx.x, head = blockIdx.y, i = threadIdx.x, half = d / 2;
    if (i >= half)
        return;
    const float *src;
    u16 *dst;
    bool rotate = true;
    if (head < nh) {
        src = q + (u64)t * nh * d + (u64)head * d;
        dst = qh + ((u64)head * len + t) * d;
    } else if (head < nh + nkv) {
        int hk = head - nh;
        src = k + (u64)t * nkv * d + (u64)hk * d;
        dst = kh + ((u64)hk * len + t) * d;
    } else {
        int hv = head - nh - nkv;
        src = v + (u64)t * nkv * d + (u64)hv * d;
        dst = vh + ((u64)hv * len + t) * d;
        rotate = false;
    }
    rope_pair(src[i], src[i + half], rotate ? inv_freq[i] * (float)t : 0.f, dst + i, dst + i + half);
}

// Causal softmax of one row of S (already scaled) per block: row r is
// position t = r mod len and sees keys j ≤ t (and j > t − window when
// window > 0); P gets the probabilities in f16 and zeros elsewhere.
extern "C" __global__ void blk_softmax_causal(const float *__restrict__ s, u16 *__restrict__ p,
                                              int len, int window) {
    __shared__ float red[32];
    u64 r = blockIdx.x;
    int t = (int)(r % (u64)len);
    int lo = window > 0 && t + 1 > window ? t + 1 - window : 0;
    const float *sr = s + r * len;
    u16 *pr = p + r * len;
    float m = neg_inf();
    for (int j = lo + threadIdx.x; j <= t; j += blockDim.x)
        m = fmaxf(m, sr[j]);
    m = block_max(m, red);
    float sum = 0.f;
    for (int j = lo + threadIdx.x; j <= t; j += blockDim.x)
        sum += expf(sr[j] - m);
    sum = block_sum(sum, red);
    float inv = 1.f / sum;
    for (int j = threadIdx.x; j < len; j += blockDim.x)
        pr[j] = (j >= lo && j <= t) ? f32_to_f16(expf(sr[j] - m) * inv) : (u16)0;
}

// Attention output O (f32 [nh][len][d]) to the o_proj input rows (f16
// [len, nh·d]).
extern "C" __global__ void blk_heads_to_rows(const float *__restrict__ o, int len, int nh, int d,
                                             u16 *__restrict__ out, u16 *__restrict__ lo) {
    u64 total = (u64)len * nh * d;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        int c = (int)(i % d);
        u64 ht = i / d;
        int t = (int)(ht % len);
        int h = (int)(ht / len);
        store_hilo(out, lo, ((u64)t * nh + h) * d + c, o[i]);
    }
}

// out = f16(silu(g) · u), the SwiGLU MLP's inner activation.
extern "C" __global__ void blk_silu_mul(const float *__restrict__ g, const float *__restrict__ u,
                                        u64 n, u16 *__restrict__ out, u16 *__restrict__ lo) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x) {
        float a = g[i];
        float s = a / (1.f + expf(-a));
        store_hilo(out, lo, i, s * u[i]);
    }
}

// out[i] = f16(max(g[i], 0)) (OPT's MLP activation).
extern "C" __global__ void blk_relu(const float *__restrict__ g, u64 n, u16 *__restrict__ out,
                                    u16 *__restrict__ lo) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x)
        store_hilo(out, lo, i, fmaxf(g[i], 0.f));
}

// f32 → f16 (round to nearest even).
extern "C" __global__ void blk_to_f16(const float *__restrict__ x, u64 n, u16 *__restrict__ out,
                                      u16 *__restrict__ lo) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x)
        store_hilo(out, lo, i, x[i]);
}

// A quantized layer's weight as the GEMMs see it: w[r, c] = f16(s·(q − z))
// with s = scales[g_idx[c]·rows + r] (f32, already rounded to f16 values by
// the host), z likewise — QLinear::dequantize, then one rounding to f16.
extern "C" __global__ void blk_dequant(const u8 *__restrict__ codes,
                                       const float *__restrict__ scales,
                                       const u8 *__restrict__ zeros,
                                       const u32 *__restrict__ g_idx, int rows, int cols,
                                       u16 *__restrict__ w) {
    u64 total = (u64)rows * cols;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        int c = (int)(i % cols);
        int r = (int)(i / cols);
        u64 g = (u64)g_idx[c] * rows + r;
        w[i] = f32_to_f16(scales[g] * ((float)codes[i] - (float)zeros[g]));
    }
}

// h[i, j] = h[j, i] for i > j: the lower triangle from the upper one, so a
// Hessian summed by a GEMM is exactly symmetric.
extern "C" __global__ void blk_mirror_upper(float *__restrict__ h, int n) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    int i = blockIdx.y;
    if (j < i)
        h[(u64)i * n + j] = h[(u64)j * n + i];
}

// out = f16((a + a_lo) − (b + b_lo)) of two inputs held as f16 pairs
// (store_hilo): the asymmetric calibration's x − x̃, rounded once.
extern "C" __global__ void blk_sub_hilo(const u16 *__restrict__ a, const u16 *__restrict__ a_lo,
                                        const u16 *__restrict__ b, const u16 *__restrict__ b_lo,
                                        u64 n, u16 *__restrict__ out) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)gridDim.x * blockDim.x)
        out[i] = f32_to_f16((f16_to_f32(a[i]) - f16_to_f32(b[i])) +
                            (f16_to_f32(a_lo[i]) - f16_to_f32(b_lo[i])));
}

// Negative log-likelihood of one row of logits per block (the output layer's
// f32 GEMM result): nll[r] = log Σ_c e^(l[r, c]) − l[r, target[r]], the
// exponentials shifted by the row's max and summed in f64 like the CPU's
// log_sum_exp. A target outside [0, vocab) gives NaN (the host checks ids).
extern "C" __global__ void blk_nll(const float *__restrict__ logits, int vocab,
                                   const u32 *__restrict__ target, float *__restrict__ nll) {
    __shared__ float redf[32];
    __shared__ double redd[32];
    const float *l = logits + (u64)blockIdx.x * vocab;
    float m = neg_inf();
    for (int c = threadIdx.x; c < vocab; c += blockDim.x)
        m = fmaxf(m, l[c]);
    m = block_max(m, redf);
    double s = 0.0;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x)
        s += exp((double)(l[c] - m));
    s = block_sum(s, redd);
    if (threadIdx.x == 0) {
        u32 t = target[blockIdx.x];
        nll[blockIdx.x] =
            t < (u32)vocab ? (float)(log(s) + (double)m - (double)l[t]) : __int_as_float(0x7fc00000);
    }
}

// ---------------------------------------------------------------------------
// Decoding with a KV cache (src/decode.rs): `m` new tokens of one sequence
// at positions pos0 .. pos0+m−1, where pos0 is read from device memory (so
// a captured launch sequence serves every step). The GEMM outputs are f16:
//   q      [m, nh·d]          f16, rotated in place
//   k, v   [m, nkv·d]         f16
//   kc/vc  [nkv][cap][d]      f16 cache of one layer
// ---------------------------------------------------------------------------

// Rotary positions on q (in place) and k, then k and v into the cache at
// their positions (HF rotate_half, angle = inv_freq[i]·t in f32, as
// blk_qkv_heads). Row r of q, k, v starts at r·ldq, r·ldk, r·ldv (one fused
// q/k/v GEMM output, or three). Grid (m, nh + 2·nkv), block d/2 threads.
extern "C" __global__ void dec_rope_kv(u16 *__restrict__ q, int ldq, const u16 *__restrict__ k,
                                       int ldk, const u16 *__restrict__ v, int ldv,
                                       const float *__restrict__ inv_freq,
                                       const int *__restrict__ pos0, int nh, int nkv, int d,
                                       int cap, u16 *__restrict__ kc, u16 *__restrict__ vc) {
    pdl_wait();
    pdl_launch();
    int r = blockIdx.x, head = blockIdx.y, i = threadIdx.x, half = d / 2;
    if (i >= half)
        return;
    int t = *pos0 + r;
    const u16 *src;
    u16 *dst;
    bool rotate = true;
    if (head < nh) {
        src = q + (u64)r * ldq + (u64)head * d;
        dst = q + (u64)r * ldq + (u64)head * d;
    } else if (head < nh + nkv) {
        int hk = head - nh;
        src = k + (u64)r * ldk + (u64)hk * d;
        dst = kc + ((u64)hk * cap + t) * d;
    } else {
        int hv = head - nh - nkv;
        src = v + (u64)r * ldv + (u64)hv * d;
        dst = vc + ((u64)hv * cap + t) * d;
        rotate = false;
    }
    rope_pair(f16_to_f32(src[i]), f16_to_f32(src[i + half]), rotate ? inv_freq[i] * (float)t : 0.f,
              dst + i, dst + i + half);
}

// Attention of one query row and head per block (grid (nh, m), blockDim a
// multiple of 32): the query at position t = pos0 + r sees the cached keys
// j ≤ t (and j > t − window when window > 0). q rows start at r·ldq; d is
// a multiple of 8, so key and value rows are read 16 bytes (8 values) at a
// time. Scores: one key per thread (its row's loads all issued before the
// first is used); softmax over the block; the weighted
// sum of values: thread (g, c) sums chunk c of every (blockDim/(d/8))-th
// value row from g, the groups' partial sums then added. All in f32; out is
// the o_proj input row [m, nh·d]. Dynamic shared memory:
// (d + 32 + 8·blockDim + keys) floats, keys ≤ t + 1.
__device__ __forceinline__ void unpack8(uint4 w, float *v) {
    u32 p[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        v[2 * e] = f16_to_f32((u16)(p[e] & 0xffffu));
        v[2 * e + 1] = f16_to_f32((u16)(p[e] >> 16));
    }
}

extern "C" __global__ void dec_attention(const u16 *__restrict__ q, int ldq,
                                         const u16 *__restrict__ kc,
                                         const u16 *__restrict__ vc,
                                         const int *__restrict__ pos0, int nh, int nkv, int d,
                                         int cap, int window, float scale,
                                         u16 *__restrict__ out) {
    pdl_wait();
    pdl_launch();
    extern __shared__ float sm[];
    int head = blockIdx.x, r = blockIdx.y, tid = threadIdx.x, bd = blockDim.x;
    int chunks = d / 8, groups = bd / chunks;
    float *qs = sm, *red = sm + d, *part = sm + d + 32, *s = sm + d + 32 + 8 * bd;
    int t = *pos0 + r;
    int lo = window > 0 ? max(0, t - window + 1) : 0;
    int n = t + 1 - lo;
    int kvh = head / (nh / nkv);
    const u16 *qr = q + (u64)r * ldq + (u64)head * d;
    for (int i = tid; i < d; i += bd)
        qs[i] = f16_to_f32(qr[i]) * scale;
    __syncthreads();
    const uint4 *kb = (const uint4 *)(kc + ((u64)kvh * cap + lo) * d);
    const uint4 *vb = (const uint4 *)(vc + ((u64)kvh * cap + lo) * d);
    for (int j = tid; j < n; j += bd) {
        const uint4 *kr = kb + (u64)j * chunks;
        float acc = 0.f;
        // Up to 16 chunks (a 128-wide head) loaded before the first is
        // used: one memory round trip per key, not one per chunk.
        for (int c0 = 0; c0 < chunks; c0 += 16) {
            uint4 w[16];
#pragma unroll
            for (int u = 0; u < 16; ++u)
                if (c0 + u < chunks) w[u] = kr[c0 + u];
#pragma unroll
            for (int u = 0; u < 16; ++u) {
                if (c0 + u < chunks) {
                    float v[8];
                    unpack8(w[u], v);
#pragma unroll
                    for (int e = 0; e < 8; ++e)
                        acc += qs[8 * (c0 + u) + e] * v[e];
                }
            }
        }
        s[j] = acc;
    }
    __syncthreads();
    float mx = neg_inf();
    for (int j = tid; j < n; j += bd)
        mx = fmaxf(mx, s[j]);
    mx = block_max(mx, red);
    float sum = 0.f;
    for (int j = tid; j < n; j += bd) {
        float e = expf(s[j] - mx);
        s[j] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    float inv = 1.f / sum;
    int c = tid % chunks, g = tid / chunks;
    if (g < groups) {
        float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
        for (int j = g; j < n; j += groups) {
            float v[8];
            unpack8(vb[(u64)j * chunks + c], v);
            float p = s[j];
#pragma unroll
            for (int e = 0; e < 8; ++e)
                acc[e] += p * v[e];
        }
#pragma unroll
        for (int e = 0; e < 8; ++e)
            part[g * d + 8 * c + e] = acc[e];
    }
    __syncthreads();
    u16 *o = out + ((u64)r * nh + head) * d;
    for (int i = tid; i < d; i += bd) {
        float tot = 0.f;
        for (int g2 = 0; g2 < groups; ++g2)
            tot += part[g2 * d + i];
        o[i] = f32_to_f16(tot * inv);
    }
}

// out[r][c] = f16(silu(g[r·ld + j]) · u[r·ld + j]) for m rows of n (the
// SwiGLU MLP on the gate and up outputs: two GEMM outputs, or one fused
// one), j = c, or with chunk > 0 j = (c / chunk)·2·chunk + c % chunk: gate
// and up rows interleaved in chunks (Cuda::matmul_swiglu's row order, when
// its epilogue did not run; then u = g + chunk).
extern "C" __global__ void dec_silu_mul(const u16 *__restrict__ g, const u16 *__restrict__ u,
                                        int ld, int m, int n, int chunk, u16 *__restrict__ out) {
    pdl_wait();
    pdl_launch();
    u64 total = (u64)m * n;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        u64 r = i / n, c = i % n;
        u64 j = chunk > 0 ? (c / chunk) * 2 * chunk + c % chunk : c;
        float a = f16_to_f32(g[r * ld + j]);
        out[i] = f32_to_f16(a / (1.f + expf(-a)) * f16_to_f32(u[r * ld + j]));
    }
}

// x[r] = f32(table[ids[r]]): the embedding rows of m tokens (ids checked by
// the host). Grid-stride over m·h.
extern "C" __global__ void dec_embed(const u16 *__restrict__ table, const int *__restrict__ ids,
                                     int m, int h, float *__restrict__ x) {
    u64 total = (u64)m * h;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        u64 r = i / h, c = i % h;
        x[i] = f16_to_f32(table[(u64)ids[r] * h + c]);
    }
}
