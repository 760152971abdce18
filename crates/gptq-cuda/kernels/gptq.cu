// The GPTQ solver on the GPU (see src/solve.rs for the algorithm and the
// order of launches), compiled at run time by NVRTC. No CUDA headers, like w4.cu.
//
// Matrices are row-major unless a comment says otherwise. `rows` is the
// number of output rows of the weight, `n` its input columns. Arithmetic in
// the quantization loop uses the _rn intrinsics so that NVRTC's default FMA
// contraction cannot change a rounding: each operation rounds exactly as the
// CPU solver's (crates/gptq-quant/src/gptq.rs, solve_block_impl), so the two
// agree bitwise wherever their inputs agree (the trailing GEMM sums in a
// different order, which is where they part).

#include "common.cuh"
#define FULL 0xffffffffu

// Smallest normal and largest finite f32.
#define F32_MIN_NORMAL __int_as_float(0x00800000)
#define F32_MAX __int_as_float(0x7f7fffff)

// diag[i] = h[i][i]; *bad = 1 when any entry of h is not finite.
extern "C" __global__ void gptq_diag_check(const float* __restrict__ h, long long n,
                                           float* __restrict__ diag, int* __restrict__ bad) {
    long long total = n * n;
    int found = 0;
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < total;
         k += (long long)gridDim.x * blockDim.x) {
        float v = h[k];
        if (!(fabsf(v) <= F32_MAX)) found = 1;
        if (k / n == k % n) diag[k / n] = v;
    }
    if (found) atomicOr(bad, 1);
}

// A (column-major f64, n x n, symmetric) = J P^T (H + damp I) P J with the
// dead diagonal entries replaced by 1: the matrix whose lower Cholesky
// factor M gives U = J M^-1 J (src/solve.rs; crates/gptq-quant/src/hinv.rs).
extern "C" __global__ void gptq_build_damped(const float* __restrict__ h,
                                             const int* __restrict__ perm,
                                             const float* __restrict__ diag,
                                             float damp, int n, double* __restrict__ a) {
    long long i = blockIdx.y * (long long)blockDim.y + threadIdx.y;
    long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n || j >= n) return;
    int pi = perm[n - 1 - i], pj = perm[n - 1 - j];
    double v = (i == j) ? (double)__fadd_rn(diag[pi], damp) : (double)h[(long long)pi * n + pj];
    a[j * n + i] = v;
}

// U[i][j] = M^-1[n-1-i][n-1-j] for i <= j (M^-1 lower, column-major in
// `a`), 0 below the diagonal; *bad = 1 when an entry is not finite or a
// diagonal entry is not positive.
extern "C" __global__ void gptq_extract_u(const double* __restrict__ a, int n,
                                          float* __restrict__ u, int* __restrict__ bad) {
    long long i = blockIdx.y * (long long)blockDim.y + threadIdx.y;
    long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n || j >= n) return;
    float v = 0.f;
    if (i <= j) {
        v = (float)a[(n - 1 - i) + (n - 1 - j) * (long long)n];
        if (!(fabsf(v) <= F32_MAX) || (i == j && !(v > 0.f))) atomicOr(bad, 1);
    }
    u[i * n + j] = v;
}

// wp[r][p] = w[r][perm[p]], 0 for dead columns.
extern "C" __global__ void gptq_permute(const float* __restrict__ w, const int* __restrict__ perm,
                                        const u8* __restrict__ dead, int rows, int n,
                                        float* __restrict__ wp) {
    long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long r = blockIdx.y;
    if (p >= n || r >= rows) return;
    int c = perm[p];
    wp[r * n + p] = dead[c] ? 0.f : w[r * n + c];
}

// codes[r][perm[p]] = cp[r][p].
extern "C" __global__ void gptq_unpermute_codes(const u8* __restrict__ cp,
                                                const int* __restrict__ perm, int rows, int n,
                                                u8* __restrict__ codes) {
    long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long r = blockIdx.y;
    if (p >= n || r >= rows) return;
    codes[r * n + perm[p]] = cp[r * n + p];
}

// Grid parameters of a clamped range (crates/gptq-quant/src/grid.rs,
// range_params and row_params, without the MSE search).
__device__ __forceinline__ void range_params(float lo, float hi, int sym, float maxq, float* s,
                                             float* z) {
    *s = __fdiv_rn(__fsub_rn(hi, lo), maxq);
    *z = sym ? __fdiv_rn(__fadd_rn(maxq, 1.f), 2.f) : rintf(__fdiv_rn(-lo, *s));
}

// One warp per row, blockIdx.y = group offset: parameters of group
// g = g0 + blockIdx.y over columns [g*gs, min((g+1)*gs, n)) of x (row stride
// n), dead columns (when `dead` is not null) read as 0; written to
// scale[g*rows + r], zero[g*rows + r].
extern "C" __global__ void gptq_group_params(const float* __restrict__ x,
                                             const u8* __restrict__ dead, int rows, int n,
                                             int gs, int g0, int sym, float maxq,
                                             float* __restrict__ scale,
                                             float* __restrict__ zero) {
    int lane = threadIdx.x & 31;
    long long r = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    long long g = g0 + blockIdx.y;
    long long c0 = g * gs, c1 = min(c0 + gs, (long long)n);
    float lo = 0.f, hi = 0.f;
    for (long long c = c0 + lane; c < c1; c += 32) {
        float v = x[r * n + c];
        if (dead && dead[c]) v = 0.f;
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
    for (int o = 16; o > 0; o >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(FULL, lo, o));
        hi = fmaxf(hi, __shfl_xor_sync(FULL, hi, o));
    }
    if (lane != 0) return;
    if (sym) {
        hi = fmaxf(hi, fabsf(lo));
        if (lo < 0.f) lo = -hi;
    }
    if (lo == 0.f && hi == 0.f) {
        lo = -1.f;
        hi = 1.f;
    }
    float s, z;
    range_params(lo, hi, sym, maxq, &s, &z);
    if (!(s >= F32_MIN_NORMAL && s <= F32_MAX)) range_params(-1.f, 1.f, sym, maxq, &s, &z);
    scale[g * rows + r] = s;
    zero[g * rows + r] = z;
}

// One lazy batch: columns i1 .. i1+count (count <= 128) of wp, one warp per
// output row, lane l holding columns l, l+32, l+64, l+96 of the batch in
// registers. For each column i, in order: code = clamp(rint(w_i/s) + z, 0,
// maxq), q = s (code - z), e = -(w_i - q)/U_ii; then w_j += e U_ij for the
// batch's later columns j. Writes the codes (processing order) and -E
// ([rows][128]) for the trailing GEMM. U's batch block sits in shared memory.
extern "C" __global__ void __launch_bounds__(512) gptq_block(
    const float* __restrict__ wp, const float* __restrict__ u, const int* __restrict__ gsel,
    const float* __restrict__ scale, const float* __restrict__ zero, u8* __restrict__ codes,
    float* __restrict__ en, int rows, int n, int i1, int count, float maxq) {
    extern __shared__ float su[];  // [count][count]
    for (int k = threadIdx.x; k < count * count; k += blockDim.x) {
        int a = k / count, b = k - a * count;
        su[k] = u[(long long)(i1 + a) * n + i1 + b];
    }
    __syncthreads();
    int lane = threadIdx.x & 31;
    long long r = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const float* wr = wp + r * n + i1;
    float x[4], e[4], c[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        int j = lane + 32 * k;
        x[k] = j < count ? wr[j] : 0.f;
        e[k] = 0.f;
        c[k] = 0.f;
    }
    int gcur = -1;
    float s = 1.f, z = 0.f;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        for (int o = 0; o < 32; ++o) {
            int i = 32 * k + o;
            if (i >= count) break;
            float wi = __shfl_sync(FULL, x[k], o);
            int g = gsel[i1 + i];
            if (g != gcur) {
                gcur = g;
                s = scale[(long long)g * rows + r];
                z = zero[(long long)g * rows + r];
            }
            float q = fminf(fmaxf(__fadd_rn(rintf(__fdiv_rn(wi, s)), z), 0.f), maxq);
            float qv = __fmul_rn(s, __fsub_rn(q, z));
            float ei = -__fdiv_rn(__fsub_rn(wi, qv), su[i * count + i]);
            if (lane == o) {
                c[k] = q;
                e[k] = ei;
            }
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                if (kk < k) continue;
                int j = lane + 32 * kk;
                if (j > i && j < count) x[kk] = __fadd_rn(x[kk], __fmul_rn(ei, su[i * count + j]));
            }
        }
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        int j = lane + 32 * k;
        if (j < count) {
            codes[r * n + i1 + j] = (u8)c[k];
            en[r * 128 + j] = e[k];
        }
    }
}

// delta[r][c] = w[r][c] - s (code - z) with g = gidx[c] (the solver's Q).
extern "C" __global__ void gptq_delta_codes(const float* __restrict__ w, const u8* __restrict__ codes,
                                            const int* __restrict__ gidx,
                                            const float* __restrict__ scale,
                                            const float* __restrict__ zero, int rows, int n,
                                            float* __restrict__ delta) {
    long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long r = blockIdx.y;
    if (c >= n || r >= rows) return;
    long long g = gidx[c];
    float s = scale[g * rows + r], z = zero[g * rows + r];
    float qv = __fmul_rn(s, __fsub_rn((float)codes[r * n + c], z));
    delta[r * n + c] = __fsub_rn(w[r * n + c], qv);
}

// Round-to-nearest with group g = c / gs: delta = w - s (clamp(rint(w/s) + z) - z).
extern "C" __global__ void gptq_delta_rtn(const float* __restrict__ w,
                                          const float* __restrict__ scale,
                                          const float* __restrict__ zero, int rows, int n, int gs,
                                          float maxq, float* __restrict__ delta) {
    long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long r = blockIdx.y;
    if (c >= n || r >= rows) return;
    long long g = c / gs;
    float s = scale[g * rows + r], z = zero[g * rows + r];
    float x = w[r * n + c];
    float q = fminf(fmaxf(__fadd_rn(rintf(__fdiv_rn(x, s)), z), 0.f), maxq);
    delta[r * n + c] = __fsub_rn(x, __fmul_rn(s, __fsub_rn(q, z)));
}

// out[r] = sum_c a[r][c] b[r][c] in f64, one warp per row, a fixed order.
extern "C" __global__ void gptq_row_dot(const float* __restrict__ a, const float* __restrict__ b,
                                        int rows, int n, double* __restrict__ out) {
    int lane = threadIdx.x & 31;
    long long r = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    double acc = 0.0;
    for (long long c = lane; c < n; c += 32) acc += (double)a[r * n + c] * (double)b[r * n + c];
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(FULL, acc, o);
    if (lane == 0) out[r] = acc;
}

// out = a - b, elementwise over n values (the cross term's X - X~).
extern "C" __global__ void gptq_sub(const float* __restrict__ a, const float* __restrict__ b,
                                    long long n, float* __restrict__ out) {
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < n;
         k += (long long)gridDim.x * blockDim.x)
        out[k] = __fsub_rn(a[k], b[k]);
}

// w[r][perm[p]] += t[r][p]: a correction computed in the permuted column
// order added to the weight in its own order.
extern "C" __global__ void gptq_add_unpermuted(const float* __restrict__ t,
                                               const int* __restrict__ perm, int rows, int n,
                                               float* __restrict__ w) {
    long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long r = blockIdx.y;
    if (p >= n || r >= rows) return;
    long long k = r * n + perm[p];
    w[k] = __fadd_rn(w[k], t[r * n + p]);
}
