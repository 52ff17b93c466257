// Shared by pixart's CUDA kernels: the headers (or the host emulation), the dynamic shared
// memory declaration, f32 conversions of the element types, 32/128-bit copies, the asynchronous
// global → shared copies (cp.async), the mma.sync.m16n8k16 tensor-core instruction and the
// ldmatrix fragment loads.
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

// Asynchronous 16-byte copies from global to shared memory (sm_80 and newer; PTX ISA "Data
// Movement and Conversion Instructions: cp.async", "cp.async.commit_group", "cp.async.wait_group"):
// - cp_async16(dst, src) starts copying the 16 bytes at src (global, 16-byte aligned) to dst
//   (shared, 16-byte aligned): `cp.async.cg.shared.global [dst], [src], 16`, cached in L2 only.
//   Until it is waited for, dst holds undefined bytes and must be neither read nor written.
// - cp_async_commit() closes this thread's copies issued since the previous commit into a group
//   (an empty group when there were none).
// - cp_async_wait<N>() blocks until at most the N most recent groups of this thread are still
//   pending: every older group's copies are then complete and visible to this thread. Other
//   threads see them only after a barrier (__syncthreads) that follows the wait.
// Each is a compiler memory barrier ("memory" clobber), so no shared-memory access moves across it.
#ifdef PIXART_CUDA_EMULATE
inline void cp_async16(void *smem_dst, const void *gmem_src) { emu::cp_async16(smem_dst, gmem_src); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  emu::cp_async_wait(N);
}
#else
__device__ __forceinline__ void cp_async16(void *smem_dst, const void *gmem_src) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  const size_t s = __cvta_generic_to_global(gmem_src);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(s) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// 2^x in one instruction, subnormal inputs and results flushed to zero (PTX ISA
// "ex2.approx.ftz.f32", maximum relative error 2^-22). exp2f without --use_fast_math is the
// non-ftz ex2 wrapped in a range check and two predicated multiplies (4 instructions instead of
// 1, seen in the SASS); a softmax probability below 2^-126 is 0 to every consumer here.
#ifdef PIXART_CUDA_EMULATE
inline float exp2_ftz(float x) {
  const float r = std::exp2(x);
  return std::fpclassify(r) == FP_SUBNORMAL ? 0.0f : r;
}
#else
__device__ __forceinline__ float exp2_ftz(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(x));
  return r;
}
#endif

// Writes 16 zero bytes at dst (16-byte aligned, shared or global memory): one 128-bit store.
__device__ __forceinline__ void zero16(void *dst) {
#ifdef PIXART_CUDA_EMULATE
  emu::check_aligned<16>(dst);
  std::memset(dst, 0, 16);
#else
  *static_cast<uint4 *>(dst) = make_uint4(0u, 0u, 0u, 0u);
#endif
}

// Writes 1 then seven zeros of T (16 bytes, 16-byte aligned): one 128-bit store.
template <typename T>
__device__ __forceinline__ void one_then_zeros16(void *dst) {
  const uint32_t lo = pack2(from_f32<T>(1.0f), from_f32<T>(0.0f));
#ifdef PIXART_CUDA_EMULATE
  emu::check_aligned<16>(dst);
  const uint32_t w[4] = {lo, 0u, 0u, 0u};
  std::memcpy(dst, w, 16);
#else
  *static_cast<uint4 *>(dst) = make_uint4(lo, 0u, 0u, 0u);
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

// Four 8×8 matrices of 16-bit elements from shared memory into the fragment layout of the
// mma operands, for one warp (ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16, PTX ISA
// "Warp-level matrix load instruction: ldmatrix"): lanes 8i..8i+7 give the addresses of rows
// 0..7 of matrix i (`row`: this lane's row, 8 contiguous elements, 16-byte aligned); r[i] gets
// matrix i. Without .trans, lane L gets M_i[L/4][2(L%4), 2(L%4)+1] (row L/4, the low half the
// first column); with .trans, the transposed pair M_i[2(L%4)][L/4], M_i[2(L%4)+1][L/4].
#ifdef PIXART_CUDA_EMULATE
inline void ldmatrix_x4(uint32_t (&r)[4], const void *row) { emu::ldmatrix_x4<false>(r, row); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void *row) { emu::ldmatrix_x4<true>(r, row); }
#else
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *row) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *row) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
#endif

}  // namespace pixart_cuda
