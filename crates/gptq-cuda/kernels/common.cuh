// Shared by every kernel source (w4.cu, block.cu, gptq.cu): NVRTC is given
// this file as the in-memory header "common.cuh" (src/compile.rs), so the
// sources stay header-free otherwise and compile with the NVRTC library
// alone, without CUDA's own headers.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// f16 <-> f32 as PTX (no <cuda_fp16.h>): round to nearest even.
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// bf16 <-> f32 (sm_80+): round to nearest even; widening is exact.
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float((u32)h << 16); }

// An activation value (f16, or bf16 with BF) to and from f32.
template <bool BF>
__device__ __forceinline__ u16 f32_to_act(float f) {
    return BF ? f32_to_bf16(f) : f32_to_f16(f);
}

// Programmatic dependent launch (sm_90+; no-ops before, and when the
// kernel was launched without the attribute). A kernel the host launches
// with it (`Cuda::launch`, `pdl = true`) may start while the kernel before
// it is still running: it must call pdl_wait() before reading anything
// that kernel writes (or writing anything it reads); work on read-only
// data (weights) may come first. pdl_launch() lets the next kernel start
// as soon as every block of this one has called it.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
