// GPTQ kernels, compiled at run time by NVRTC for the device's own architecture.
//
// No CUDA headers on purpose (no <cuda_fp16.h>; only our common.cuh): f16
// arithmetic is written as PTX, so the source compiles with the NVRTC library
// alone (a PyPI wheel ships no CUDA headers), on a machine without a GPU too.
//
// Fused int4 kernel (w4_mma_*): Y[M,N] = X[M,K] · Ŵ[N,K]ᵀ (+ bias), with Ŵ
// dequantized in registers. The weight is the mma.sync m16n8k16 A operand
// (16 output rows), the activations are the B operand (8 batch rows), so
// batches 1..8 fill one n8 tile and a weight element is read once per
// 8·MT batch rows. Layout written by the host (see src/layout.rs):
//   qw: [NT][KC][32 lanes][4 words]; word j of lane (g = lane/4, t = lane%4)
//       of row tile nt, chunk kc holds the codes of rows nt·16+g and
//       nt·16+g+8 at the 4 input columns k0 .. k0+3, k0 = kc·64 + 16t + 4j:
//       nibble 0 = W[g][k0], 4 = W[g][k0+1], 1 = W[g+8][k0], 5 = W[g+8][k0+1],
//       2 = W[g][k0+2], 6 = W[g][k0+3], 3 = W[g+8][k0+2], 7 = W[g+8][k0+3].
//       This is the A fragment of the mma with the input columns of each
//       16-column k tile permuted (the same permutation is applied to the B
//       fragment, so the sum over k is unchanged), which makes a lane's 16 B
//       of codes and its 32 B of activations contiguous in memory.
//   sz: [NT][G][8][2] words: for lane row g, word 0 = f16 {s[g], s[g+8]},
//       word 1 = f16 {1024 + z[g], 1024 + z[g+8]}.
// Dequantization: (w >> 4s) & 0x000F000F | 0x64006400 is the f16 pair
// {1024 + q_lo, 1024 + q_hi}; subtracting 1024 + z is exact, one rounding
// comes from the multiplication by the scale.

#include "common.cuh"

__device__ __forceinline__ void ld_cached4(u32 *r, const u16 *p) {
    asm("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
        : "l"(p));
}

__device__ __forceinline__ void ld_cached2(u32 (&r)[2], const u32 *p) {
    asm("ld.global.nc.v2.u32 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "l"(p));
}

__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 r;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 r;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ void mma16816(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3,
                                         u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 smem_u32(const void *p) {
    u64 a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (u32)a;
}

__device__ __forceinline__ void cp_async16(u32 dst, const void *src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async8(u32 dst, const void *src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ void lds4(u32 (&r)[4], u32 addr) {
    asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

__device__ __forceinline__ void lds2(u32 (&r)[2], u32 addr) {
    asm volatile("ld.shared.v2.u32 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(addr) : "memory");
}

// MT: n8 tiles of batch rows per block (8·MT rows); RT: 16-row tiles per
// warp; RW: warps side by side on different row tiles (they read the same
// activations at the same time, so x is fetched from L2 once per RW·RT·16
// rows); KW: warps per block, KS = KW / RW of them splitting K (chunk kc
// goes to split kc mod KS); S: stages of each warp's cp.async ring (codes
// and scales of S chunks in flight without holding registers).
// Dynamic shared memory: max(KW·S·RT·768, KW·RT·MT·512) bytes.
// FOLD (groups of 64 columns or more, so one group per chunk and row):
// the mma multiplies the raw codes 1024 + q (exact in f16) and the
// zero point and scale are applied per chunk in f32,
//   Σ_k s·(q_k − z)·x_k = s·(Σ_k (1024 + q_k)·x_k − (1024 + z)·Σ_k x_k),
// with Σ_k x_k from one more mma against a fragment of ones. This takes the
// f16 subtract and multiply (8 of ~15 instructions per code word) out of
// the inner loop; the cancellation costs about 2^-13 of Σ|x| in f32.
// Epilogues (the kernels' `epi` argument): Y = X·Ŵᵀ (+ bias), or SwiGLU
// over interleaved gate/up rows (see the end of w4_body).
#define EPI_PLAIN 0
#define EPI_SWIGLU 1

template <int MT, int RT, int RW, int KW, int S, bool FOLD>
__device__ __forceinline__ void w4_body(const u32 *__restrict__ qw, const u32 *__restrict__ sz,
                                        const u16 *__restrict__ x, u16 *__restrict__ y,
                                        const u16 *__restrict__ bias, int M, int N, int K,
                                        int KC, int G, int gshift, int epi) {
    static_assert(KW % RW == 0, "KW must be a multiple of RW");
    constexpr int KS = KW / RW;
    extern __shared__ float red[];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int rw = warp % RW;
    const int ks = warp / RW;
    const int m0 = blockIdx.x * (8 * MT);
    const int nt0 = (blockIdx.y * RW + rw) * RT;

    float acc[RT][MT][4];
#pragma unroll
    for (int r = 0; r < RT; r++)
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[r][i][c] = 0.f;

    // This warp's ring: S·RT·512 bytes of codes, then S·RT·256 of scales.
    // Stage st of the ring holds chunk kc with kc ≡ ks + st·KS (mod S·KS):
    // the main loop below is unrolled over the S stages, so every ring
    // address, and which activation buffer is current, is a constant.
    const u32 wring = smem_u32(red) + warp * (S * RT * 768);
    const u32 sring = wring + S * RT * 512;
    const u32 *qp[RT];
    const u32 *sp[RT];
#pragma unroll
    for (int r = 0; r < RT; r++) {
        qp[r] = qw + (u64)(nt0 + r) * KC * 128 + lane * 4;
        sp[r] = sz + ((u64)(nt0 + r) * G * 8 + g) * 2;
    }
    auto issue = [&](int st, int kc) {
        if (kc < KC) {
            const int grp = (kc * 64 + 16 * t) >> gshift;
#pragma unroll
            for (int r = 0; r < RT; r++) {
                cp_async16(wring + ((st * RT + r) * 32 + lane) * 16, qp[r] + kc * 128);
                cp_async8(sring + ((st * RT + r) * 32 + lane) * 8, sp[r] + grp * 16);
            }
        }
        cp_async_commit();
    };
#pragma unroll
    for (int st = 0; st < S - 1; st++) issue(st, ks + st * KS);
    // Only the weights are read above: under programmatic dependent launch
    // they stream in while the kernel before this one finishes.
    pdl_wait();
    pdl_launch();
    // Activations of chunk kc (small, L1/L2-resident). With MT ≤ 2 they are
    // loaded one chunk ahead of their use, so their latency overlaps this
    // chunk's math (8·MT more registers; larger MT would lose warps). Rows
    // past M repeat row M-1: they only feed output columns that are never
    // written. Columns past K (the padded chunk) and chunks past KC are 0.
    auto load_x = [&](int kc, u32 (&xb)[MT][8]) {
        const int k = kc * 64 + 16 * t;
        const bool ok = kc < KC && k < K;
#pragma unroll
        for (int i = 0; i < MT; i++) {
            const int m = min(m0 + 8 * i + g, M - 1);
            if (ok) {
                const u16 *p = x + (u64)m * K + k;
                ld_cached4(&xb[i][0], p);
                ld_cached4(&xb[i][4], p + 8);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++) xb[i][e] = 0u;
            }
        }
    };
    // The products of ring stage st (one chunk of RT row tiles) with the
    // activations xb, into acc.
    auto chunk = [&](int st, const u32 (&xb)[MT][8]) {
        if (FOLD) {
            float xs[MT][4];
            const u32 one = 0x3C003C00u;
#pragma unroll
            for (int i = 0; i < MT; i++) {
#pragma unroll
                for (int c = 0; c < 4; c++) xs[i][c] = 0.f;
#pragma unroll
                for (int j = 0; j < 4; j++)
                    mma16816(xs[i], one, one, one, one, xb[i][2 * j], xb[i][2 * j + 1]);
            }
#pragma unroll
            for (int r = 0; r < RT; r++) {
                u32 w[4], s2[2];
                lds4(w, wring + ((st * RT + r) * 32 + lane) * 16);
                lds2(s2, sring + ((st * RT + r) * 32 + lane) * 8);
                float tmp[MT][4];
#pragma unroll
                for (int i = 0; i < MT; i++)
#pragma unroll
                    for (int c = 0; c < 4; c++) tmp[i][c] = 0.f;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const u32 q = w[j];
                    const u32 a0 = (q & 0x000F000Fu) | 0x64006400u;
                    const u32 a1 = ((q >> 4) & 0x000F000Fu) | 0x64006400u;
                    const u32 a2 = ((q >> 8) & 0x000F000Fu) | 0x64006400u;
                    const u32 a3 = ((q >> 12) & 0x000F000Fu) | 0x64006400u;
#pragma unroll
                    for (int i = 0; i < MT; i++)
                        mma16816(tmp[i], a0, a1, a2, a3, xb[i][2 * j], xb[i][2 * j + 1]);
                }
                const float sg = f16_to_f32((u16)(s2[0] & 0xFFFFu));
                const float sg8 = f16_to_f32((u16)(s2[0] >> 16));
                const float zg = f16_to_f32((u16)(s2[1] & 0xFFFFu));
                const float zg8 = f16_to_f32((u16)(s2[1] >> 16));
#pragma unroll
                for (int i = 0; i < MT; i++) {
                    acc[r][i][0] += sg * (tmp[i][0] - zg * xs[i][0]);
                    acc[r][i][1] += sg * (tmp[i][1] - zg * xs[i][1]);
                    acc[r][i][2] += sg8 * (tmp[i][2] - zg8 * xs[i][2]);
                    acc[r][i][3] += sg8 * (tmp[i][3] - zg8 * xs[i][3]);
                }
            }
            return;
        }
#pragma unroll
        for (int r = 0; r < RT; r++) {
            u32 w[4], s2[2];
            lds4(w, wring + ((st * RT + r) * 32 + lane) * 16);
            lds2(s2, sring + ((st * RT + r) * 32 + lane) * 8);
            const u32 s_lo = __byte_perm(s2[0], 0, 0x1010);
            const u32 s_hi = __byte_perm(s2[0], 0, 0x3232);
            const u32 z_lo = __byte_perm(s2[1], 0, 0x1010);
            // Rows g+8 (nibbles 1, 3, 5, 7) are read in place, without a
            // shift: (q & 0x00F0) | 0x6400 is 1024 + 16·q, so their zero
            // point is 1024 + 16·z = 16·(1024 + z) − 15360 (exact), and their
            // products come out 16 times too large, which the f32 epilogue
            // takes back exactly (SCALE16 below). Five integer ops a word
            // instead of seven.
            const u32 z16 = hfma2(__byte_perm(s2[1], 0, 0x3232), 0x4C004C00u, 0xF380F380u);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const u32 q = w[j];
                const u32 q8 = q >> 8;
                const u32 a0 = hmul2(hsub2((q & 0x000F000Fu) | 0x64006400u, z_lo), s_lo);
                const u32 a1 = hmul2(hsub2((q & 0x00F000F0u) | 0x64006400u, z16), s_hi);
                const u32 a2 = hmul2(hsub2((q8 & 0x000F000Fu) | 0x64006400u, z_lo), s_lo);
                const u32 a3 = hmul2(hsub2((q8 & 0x00F000F0u) | 0x64006400u, z16), s_hi);
#pragma unroll
                for (int i = 0; i < MT; i++)
                    mma16816(acc[r][i], a0, a1, a2, a3, xb[i][2 * j], xb[i][2 * j + 1]);
            }
        }
    };
    constexpr bool AHEAD = MT <= 2;
    static_assert(!AHEAD || S % 2 == 0, "loading ahead alternates two buffers over the stages");
    // xbuf[0] and xbuf[1]: the current chunk's activations and (AHEAD) the
    // next one's, swapping roles from stage to stage.
    u32 xbuf[2][MT][8];
    if (AHEAD) load_x(ks, xbuf[0]);
    for (int kc0 = ks; kc0 < KC; kc0 += S * KS) {
#pragma unroll
        for (int u = 0; u < S; u++) {
            const int kc = kc0 + u * KS;
            if (kc >= KC) break;
            issue((u + S - 1) % S, kc + (S - 1) * KS);
            const int cur = AHEAD ? (u & 1) : 0;
            load_x(AHEAD ? kc + KS : kc, xbuf[AHEAD ? cur ^ 1 : 0]);
            cp_async_wait<S - 1>();
            chunk(u, xbuf[cur]);
        }
    }
    // SCALE16: the plain path's rows g+8 (c = 2, 3) were summed 16 times too
    // large (a power of two: exact in f32).
    if (!FOLD) {
#pragma unroll
        for (int r = 0; r < RT; r++)
#pragma unroll
            for (int i = 0; i < MT; i++) {
                acc[r][i][2] *= 0.0625f;
                acc[r][i][3] *= 0.0625f;
            }
    }
    cp_async_wait<0>();

    // Output element e = (r·MT + i)·4 + c of lane l is row
    // (nt + r)·16 + l/4 (+8 for c ≥ 2), batch row m0 + 8i + 2(l%4) + (c&1).
    // EPI_SWIGLU (epi = 1): the rows were interleaved at load time, gate
    // rows 8t..8t+7 then up rows 8t..8t+7 in row tile t, so a lane holds
    // each gate output (c = 0, 1) and its up partner (c + 2):
    // Y[m][8t + l/4] = silu(gate)·up, Y is N/2 wide (N a multiple of 16).
    constexpr int E = RT * MT * 4;
    auto store = [&](int tile, int l, int c, int m, float v, float v8) {
        const int n = tile * 16 + (l >> 2) + ((c & 2) ? 8 : 0);
        if (n >= N || m >= M) return;
        if (bias) v += f16_to_f32(bias[n]);
        if (epi == EPI_SWIGLU) {
            if (bias) v8 += f16_to_f32(bias[n + 8]);
            y[(u64)m * (N / 2) + tile * 8 + (l >> 2)] = f32_to_f16(v / (1.f + expf(-v)) * v8);
        } else {
            y[(u64)m * N + n] = f32_to_f16(v);
        }
    };
    if (KS == 1) {
#pragma unroll
        for (int r = 0; r < RT; r++)
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int c = 0; c < 4; c++)
                    if (epi != EPI_SWIGLU || c < 2)
                        store(nt0 + r, lane, c, m0 + 8 * i + 2 * (lane & 3) + (c & 1),
                              acc[r][i][c], acc[r][i][c ^ 2]);
        return;
    }
    // Sum the KS partial products of each row group and write Y (f16); the
    // reduction reuses the rings, so every warp must be done with its own.
    __syncthreads();
#pragma unroll
    for (int r = 0; r < RT; r++)
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int c = 0; c < 4; c++)
                red[(warp * E + (r * MT + i) * 4 + c) * 32 + lane] = acc[r][i][c];
    __syncthreads();
    for (int idx = threadIdx.x; idx < RW * E * 32; idx += KW * 32) {
        const int g_rw = idx / (E * 32);
        const int e = (idx / 32) % E;
        const int l = idx & 31;
        const int c = e & 3;
        if (epi == EPI_SWIGLU && c >= 2) continue;
        float v = 0.f, v8 = 0.f;
#pragma unroll
        for (int s = 0; s < KS; s++) {
            v += red[((s * RW + g_rw) * E + e) * 32 + l];
            if (epi == EPI_SWIGLU) v8 += red[((s * RW + g_rw) * E + (e ^ 2)) * 32 + l];
        }
        const int i = (e >> 2) % MT;
        const int r = (e >> 2) / MT;
        store((blockIdx.y * RW + g_rw) * RT + r, l, c, m0 + 8 * i + 2 * (l & 3) + (c & 1), v, v8);
    }
}

#define W4_KERNEL_ONE(MT, RT, RW, KW, S, FOLD, SUFFIX)                                        \
    extern "C" __global__ void __launch_bounds__(KW * 32)                                     \
        w4_mma_m##MT##_r##RT##_w##RW##_k##KW##_s##S##SUFFIX(                                  \
            const u32 *__restrict__ qw, const u32 *__restrict__ sz, const u16 *__restrict__ x, \
            u16 *__restrict__ y, const u16 *__restrict__ bias, int M, int N, int K, int KC,    \
            int G, int gshift, int epi) {                                                      \
        w4_body<MT, RT, RW, KW, S, FOLD>(qw, sz, x, y, bias, M, N, K, KC, G, gshift, epi);    \
    }
// Each variant twice: plain, and _f (FOLD, for groups of 64 or more).
#define W4_KERNEL(MT, RT, RW, KW, S)                  \
    W4_KERNEL_ONE(MT, RT, RW, KW, S, false, )         \
    W4_KERNEL_ONE(MT, RT, RW, KW, S, true, _f)

// The variants the host may launch (src/kernels.rs lists the same ones).
W4_KERNEL(1, 1, 1, 4, 8)
W4_KERNEL(1, 1, 1, 8, 6)
W4_KERNEL(1, 1, 1, 8, 8)
W4_KERNEL(1, 1, 1, 16, 4)
W4_KERNEL(1, 2, 1, 8, 4)
W4_KERNEL(1, 1, 2, 8, 6)
W4_KERNEL(1, 1, 4, 8, 6)
W4_KERNEL(2, 1, 1, 8, 6)
W4_KERNEL(2, 1, 2, 8, 6)
W4_KERNEL(2, 2, 1, 8, 4)
W4_KERNEL(2, 2, 2, 8, 4)
W4_KERNEL(4, 1, 1, 8, 4)
W4_KERNEL(4, 1, 2, 8, 4)
W4_KERNEL(4, 2, 2, 8, 4)
W4_KERNEL(4, 2, 4, 8, 4)
W4_KERNEL(8, 1, 2, 8, 4)
W4_KERNEL(8, 1, 4, 8, 4)
W4_KERNEL(8, 2, 2, 8, 3)
W4_KERNEL(8, 2, 4, 4, 4)
W4_KERNEL(8, 2, 4, 8, 3)

// xp[m][p] = x[m][perm[p]]: activations in the order the act-order weights
// were repacked into.
extern "C" __global__ void gather_cols(const u16 *__restrict__ x, const int *__restrict__ perm,
                                       u16 *__restrict__ xp, int M, int K) {
    pdl_wait();
    pdl_launch();
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)M * K) return;
    const int m = (int)(idx / K);
    const int p = (int)(idx % K);
    xp[idx] = x[(u64)m * K + perm[p]];
}

// Any bit width (2, 3, 4, 8; dequant_bBITS): dequantizes into W[n][k] (f16,
// row stride ldw) for a GEMM. Codes: [KB·bits][N] words, where input block kb (32 columns)
// of output n is the little-endian bit stream of words kb·bits .. kb·bits+bits-1
// (column n); zeros are true zero points (u8), scales f16, g_idx per column.
template <int BITS>
__device__ __forceinline__ void dequant_body(const u32 *__restrict__ qw,
                                             const u16 *__restrict__ scales,
                                             const unsigned char *__restrict__ zeros,
                                             const int *__restrict__ gidx, u16 *__restrict__ w,
                                             int N, int K, int ldw, int monotone) {
    // 128 threads, one output row n each; the block's 128 × 32 values go
    // through shared memory so that the stores write whole 64-byte row
    // pieces from consecutive threads instead of 16 bytes of 32 rows each.
    __shared__ u32 tile[128][17];
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int kb = blockIdx.y;
    const bool valid = n < N;
    u32 out[16];
    if (valid) {
        u32 words[BITS + 1];
#pragma unroll
        for (int i = 0; i < BITS; i++) words[i] = qw[((u64)kb * BITS + i) * N + n];
        words[BITS] = 0;
        constexpr u32 mask = (1u << BITS) - 1u;
        // With g_idx non-decreasing, equal ends mean one group for the block.
        const int g_first = gidx[kb * 32];
        const int g_last = gidx[min(kb * 32 + 31, K - 1)];
        const bool one_group = monotone && g_first == g_last;
        const float s0 = f16_to_f32(scales[(u64)g_first * N + n]);
        const float z0 = (float)zeros[(u64)g_first * N + n];
#pragma unroll
        for (int v = 0; v < 32; v++) {
            const int bit = v * BITS;
            const int wi = bit >> 5;
            const int sh = bit & 31;
            const u64 win = (u64)words[wi] | ((u64)words[wi + 1] << 32);
            const u32 q = (u32)(win >> sh) & mask;
            const int k = kb * 32 + v;
            float val = 0.f;
            if (k < K) {
                if (one_group) {
                    val = s0 * ((float)q - z0);
                } else {
                    const int grp = gidx[k];
                    const float s = f16_to_f32(scales[(u64)grp * N + n]);
                    const float z = (float)zeros[(u64)grp * N + n];
                    val = s * ((float)q - z);
                }
            }
            const u32 h = f32_to_f16(val);
            if (v & 1)
                out[v >> 1] |= h << 16;
            else
                out[v >> 1] = h;
        }
    }
    const int left = K - kb * 32;
    if (left >= 32 && (ldw % 8) == 0) {
        if (valid) {
#pragma unroll
            for (int j = 0; j < 16; j++) tile[threadIdx.x][j] = out[j];
        }
        __syncthreads();
        // Piece c: row c / 4 of the block, 16 bytes (c % 4) of its 64.
        for (int c = threadIdx.x; c < 128 * 4; c += 128) {
            const int r = c >> 2;
            const int part = c & 3;
            const int nr = blockIdx.x * blockDim.x + r;
            if (nr < N) {
                u32 *dst = (u32 *)(w + (u64)nr * ldw + kb * 32) + 4 * part;
                asm volatile("st.global.v4.u32 [%0], {%1,%2,%3,%4};" ::"l"(dst),
                             "r"(tile[r][4 * part]), "r"(tile[r][4 * part + 1]),
                             "r"(tile[r][4 * part + 2]), "r"(tile[r][4 * part + 3])
                             : "memory");
            }
        }
    } else if (valid) {
        u16 *row = w + (u64)n * ldw + kb * 32;
#pragma unroll
        for (int v = 0; v < 32; v++)
            if (v < left) row[v] = (u16)((v & 1) ? (out[v >> 1] >> 16) : (out[v >> 1] & 0xFFFF));
    }
}

#define DEQUANT_KERNEL(BITS)                                                                   \
    extern "C" __global__ void dequant_b##BITS(                                                \
        const u32 *__restrict__ qw, const u16 *__restrict__ scales,                            \
        const unsigned char *__restrict__ zeros, const int *__restrict__ gidx,                 \
        u16 *__restrict__ w, int N, int K, int ldw, int monotone) {                            \
        dequant_body<BITS>(qw, scales, zeros, gidx, w, N, K, ldw, monotone);                   \
    }

DEQUANT_KERNEL(2)
DEQUANT_KERNEL(3)
DEQUANT_KERNEL(4)
DEQUANT_KERNEL(8)

// y[m][n] += bias[n] (the dequantize-then-GEMM path).
extern "C" __global__ void add_bias(u16 *__restrict__ y, const u16 *__restrict__ bias, int M,
                                    int N) {
    pdl_wait();
    pdl_launch();
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (u64)M * N) return;
    const int n = (int)(idx % N);
    y[idx] = f32_to_f16(f16_to_f32(y[idx]) + f16_to_f32(bias[n]));
}

// Fills a buffer of f16 with a bit pattern (poisoning outputs before a check).
extern "C" __global__ void fill_u16(u16 *__restrict__ p, u16 v, u64 n) {
    const u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < n) p[idx] = v;
}
