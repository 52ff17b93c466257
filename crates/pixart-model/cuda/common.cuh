// Shared by pixart's CUDA kernels: the headers (or the host emulation), the dynamic shared
// memory declaration and f32 conversions of the element types.
#pragma once
#ifdef PIXART_CUDA_EMULATE
#include "emulate.hpp"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#define PIXART_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

namespace pixart_cuda {

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }

}  // namespace pixart_cuda
