// Shared by pixart's CUDA kernels: the headers (or the host emulation), the dynamic shared
// memory declaration, f32 conversions of the element types, 32/128-bit copies and the
// mma.sync.m16n8k16 tensor-core instruction.
#pragma once
#ifdef PIXART_CUDA_EMULATE
#include "emulate.hpp"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
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

// The 16 bits of an element.
#ifdef PIXART_CUDA_EMULATE
__device__ __forceinline__ uint16_t bits(__nv_bfloat16 x) { return emu::bits_of(x); }
__device__ __forceinline__ uint16_t bits(__half x) { return emu::bits_of(x); }
#else
__device__ __forceinline__ uint16_t bits(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
__device__ __forceinline__ uint16_t bits(__half x) { return __half_as_ushort(x); }
#endif

// Two elements in one 32-bit register, `lo` in the low half (the order of mma fragments).
template <typename T>
__device__ __forceinline__ uint32_t pack2(T lo, T hi) {
  return uint32_t(bits(lo)) | (uint32_t(bits(hi)) << 16);
}

// The 32 bits at p (4-byte aligned).
__device__ __forceinline__ uint32_t load32(const void *p) {
#ifdef PIXART_CUDA_EMULATE
  emu::check_aligned<4>(p);
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
#else
  return *static_cast<const uint32_t *>(p);
#endif
}

// Copies 16 bytes (both 16-byte aligned).
__device__ __forceinline__ void copy16(void *dst, const void *src) {
#ifdef PIXART_CUDA_EMULATE
  emu::check_aligned<16>(dst);
  emu::check_aligned<16>(src);
  std::memcpy(dst, src, 16);
#else
  *static_cast<uint4 *>(dst) = *static_cast<const uint4 *>(src);
#endif
}

// d += A·B on the tensor cores for one warp (mma.sync.aligned.m16n8k16.row.col, f32
// accumulators): A 16×16 row-major in a[4], B 16×8 column-major in b[2], d 16×8, each in the
// fragment layout of the PTX ISA (groupID = lane / 4, t = lane % 4): a[0] = A[g][2t, 2t+1],
// a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9];
// b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]; d[0..1] = D[g][2t, 2t+1], d[2..3] = D[g+8][..].
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
#ifdef PIXART_CUDA_EMULATE
template <>
inline void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  emu::mma_16816<__nv_bfloat16>(d, a, b);
}
template <>
inline void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  emu::mma_16816<__half>(d, a, b);
}
#else
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

}  // namespace pixart_cuda
