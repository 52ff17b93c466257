// Fused element-wise kernels of the transformer block for the CUDA backend (forward only),
// the GPU counterparts of pixart_model::ops::{layer_norm_modulate, add_gated} on the CPU:
//
//   ln_modulate: out = LayerNorm(x) · (1 + scale[b]) + shift[b]   (no affine, f32 statistics)
//   add_gated:   out = x + y · gate[b]
//
// x, y, out: (rows, c) contiguous, rows = b · rows_per_batch; shift, scale, gate: one c-vector
// per batch row at element stride `mod_sb` (views into the block's (b, 6, c) modulation).
// Arithmetic in f32, one rounding to the element type at the end. Composed from candle ops the
// layer norm alone was about ten kernels over the activations.
//
// Compiles on the host against emulate.hpp too (tests/cuda_emulated.rs).
#include "common.cuh"

namespace pixart_ops {

using pixart_cuda::from_f32;
using pixart_cuda::to_f32;

struct LnParams {
  const void *x;
  const void *shift;
  const void *scale;
  void *out;
  long long mod_sb;  // element stride between batch rows of shift and scale
  int c;
  int rows_per_batch;
  float eps;
};

struct GateParams {
  const void *x;
  const void *y;
  const void *gate;
  void *out;
  long long total;      // rows · c
  long long per_batch;  // rows_per_batch · c
  long long gate_sb;
  int c;
};

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float *red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // `red` may still be read from the previous call
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float t = 0.0f;
  for (int i = 0; i < int(blockDim.x / 32); ++i) t += red[i];
  return t;
}

// One block per row.
template <typename T>
__device__ void ln_modulate(const LnParams &p) {
  __shared__ float red[32];
  const long long row = blockIdx.x;
  const int c = p.c;
  const T *x = static_cast<const T *>(p.x) + row * c;
  const long long bi = row / p.rows_per_batch;
  const T *shift = static_cast<const T *>(p.shift) + bi * p.mod_sb;
  const T *scale = static_cast<const T *>(p.scale) + bi * p.mod_sb;
  float s = 0.0f;
  for (int i = threadIdx.x; i < c; i += blockDim.x) s += to_f32(x[i]);
  const float mean = block_sum(s, red) / float(c);
  float v = 0.0f;
  for (int i = threadIdx.x; i < c; i += blockDim.x) {
    float d = to_f32(x[i]) - mean;
    v += d * d;
  }
  const float rstd = rsqrtf(block_sum(v, red) / float(c) + p.eps);
  T *out = static_cast<T *>(p.out) + row * c;
  for (int i = threadIdx.x; i < c; i += blockDim.x)
    out[i] = from_f32<T>((to_f32(x[i]) - mean) * rstd * (1.0f + to_f32(scale[i])) + to_f32(shift[i]));
}

// Grid-stride over the elements.
template <typename T>
__device__ void add_gated(const GateParams &p) {
  const T *x = static_cast<const T *>(p.x);
  const T *y = static_cast<const T *>(p.y);
  const T *gate = static_cast<const T *>(p.gate);
  T *out = static_cast<T *>(p.out);
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.total; i += step) {
    const long long bi = i / p.per_batch;
    const int ch = int(i % p.c);
    out[i] = from_f32<T>(to_f32(x[i]) + to_f32(y[i]) * to_f32(gate[bi * p.gate_sb + ch]));
  }
}

}  // namespace pixart_ops

// ln_modulate: grid (rows), block 256. add_gated: any 1-D grid, block 256.
#define PIXART_FUSED_OPS(SUFFIX, T)                                                                     \
  extern "C" __global__ void pixart_ln_modulate_##SUFFIX(const T *x, const T *shift, const T *scale, T *out, \
                                                         long long mod_sb, int c, int rows_per_batch,       \
                                                         float eps) {                                       \
    pixart_ops::ln_modulate<T>(pixart_ops::LnParams{x, shift, scale, out, mod_sb, c, rows_per_batch, eps});  \
  }                                                                                                     \
  extern "C" __global__ void pixart_add_gated_##SUFFIX(const T *x, const T *y, const T *gate, T *out,       \
                                                       long long total, long long per_batch,               \
                                                       long long gate_sb, int c) {                         \
    pixart_ops::add_gated<T>(pixart_ops::GateParams{x, y, gate, out, total, per_batch, gate_sb, c});         \
  }
PIXART_FUSED_OPS(f32, float)
PIXART_FUSED_OPS(bf16, __nv_bfloat16)
PIXART_FUSED_OPS(f16, __half)
