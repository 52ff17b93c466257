// Fused element-wise kernels of the transformer block for the CUDA backend (forward only),
// the GPU counterparts of pixart_model::ops::{layer_norm_modulate, add_gated} on the CPU:
//
//   ln_modulate: out = LayerNorm(x) · (1 + scale[b]) + shift[b]   (no affine, f32 statistics)
//   add_gated:   out = x + y · gate[b]
//   kv_conv:     out[b, i·w2 + j] = bias + Σ_{ky, kx < r} weight[ky, kx] · x[b, (i·r + ky)·w + j·r + kx]
//   scale_rows:  out[b, r, :] = w[r, :] · gate[b, r], then at bias_off out[b, r] = bias[r] · gate[b, r]
//
// x, y, out: (rows, c) contiguous, rows = b · rows_per_batch; shift, scale, gate: one c-vector
// per batch row at element stride `mod_sb` (views into the block's (b, 6, c) modulation).
// Arithmetic in f32, one rounding to the element type at the end. Composed from candle ops the
// layer norm alone was about ten kernels over the activations.
//
// kv_conv is the depthwise r×r, stride-r conv of PixArt-Σ's KV token compression (arXiv
// 2403.04692, "KV Token Compression"), per channel: x (b, h·w, c) tokens on an (h, w) grid,
// weight (r, r, c), bias (c), out (b, h2·w2, c) with h2 = h / r, w2 = w / r; rows and columns
// beyond h2·r, w2·r are never read (the conv's floor). Its LayerNorm + affine is ln_modulate
// with scale = norm weight − 1, shift = norm bias.
//
// scale_rows makes the per-batch weights and bias of an output projection whose gated residual
// x + gate ⊙ (y·Wᵀ + b) runs in the GEMM's epilogue (src/cuda/linear.rs): (W ⊙ gate_b)·y + gate_b ⊙ b.
//
// Compiles on the host against emulate.hpp too (tests/cuda_emulated.rs).
#include "common.cuh"

namespace pixart_ops {

using pixart_cuda::copy16;
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

struct KvConvParams {
  const void *x;
  const void *weight;
  const void *bias;
  void *out;
  long long total;  // b · h2 · w2 · c, the output's elements
  int h, w;         // x's token grid
  int h2, w2;       // the output's: h / r, w / r
  int c, r;
};

struct ScaleRowsParams {
  const void *w;     // (rows, cols)
  const void *gate;  // (b, rows) at batch stride gate_sb
  const void *bias;  // (rows)
  void *out;         // (b, rows, cols), then (b, rows) at element bias_off
  long long per_batch;  // rows · cols
  long long bias_off;
  long long gate_sb;
  int b, rows, cols;
  int vec8;  // cols a multiple of 8, w and out 16-byte aligned: 8 elements per step
};

// Grid-stride over the output's pieces of 8 elements (or single elements without vec8).
template <typename T>
__device__ void scale_rows(const ScaleRowsParams &p) {
  const T *w = static_cast<const T *>(p.w);
  const T *gate = static_cast<const T *>(p.gate);
  const T *bias = static_cast<const T *>(p.bias);
  T *out = static_cast<T *>(p.out);
  const long long step = (long long)gridDim.x * blockDim.x;
  const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const int v = p.vec8 ? 8 : 1;
  const long long pieces = p.per_batch / v;  // per batch row
  for (long long i = first; i < p.b * pieces; i += step) {
    const long long bi = i / pieces, e = (i - bi * pieces) * v;
    const float g = to_f32(gate[bi * p.gate_sb + e / p.cols]);  // one row for all v elements
    T *o = out + bi * p.per_batch + e;
    if (p.vec8) {
      alignas(16) T piece[8];
      copy16(piece, w + e);
#pragma unroll
      for (int k = 0; k < 8; ++k) piece[k] = from_f32<T>(to_f32(piece[k]) * g);
      copy16(o, piece);
    } else {
      o[0] = from_f32<T>(to_f32(w[e]) * g);
    }
  }
  for (long long i = first; i < (long long)p.b * p.rows; i += step) {
    const long long bi = i / p.rows;
    const int r = int(i - bi * p.rows);
    out[p.bias_off + i] = from_f32<T>(to_f32(bias[r]) * to_f32(gate[bi * p.gate_sb + r]));
  }
}

// Whether p is 16-byte aligned.
__device__ __forceinline__ bool aligned16(const void *p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Eight elements at p (16-byte aligned) as f32, and back: one or two 128-bit accesses.
template <typename T>
__device__ __forceinline__ void load8(float (&v)[8], const T *p) {
  constexpr int PER = 16 / int(sizeof(T));  // elements per 16 bytes
  alignas(16) T t[8];
#pragma unroll
  for (int j = 0; j < 8; j += PER) copy16(t + j, p + j);
#pragma unroll
  for (int e = 0; e < 8; ++e) v[e] = to_f32(t[e]);
}
template <typename T>
__device__ __forceinline__ void store8(T *p, const float (&v)[8]) {
  constexpr int PER = 16 / int(sizeof(T));
  alignas(16) T t[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) t[e] = from_f32<T>(v[e]);
#pragma unroll
  for (int j = 0; j < 8; j += PER) copy16(p + j, t + j);
}

// One block per row. Where c is a multiple of 8, at most 16 per thread (c ≤ 4096 with 256
// threads), and every pointer 16-byte aligned, each thread keeps its ≤ 2 pieces of 8 elements
// in registers: x is read from memory once, in 128-bit loads, and the statistics are still the
// two passes (mean, then the centred squares). Else element-wise, x read three times.
template <typename T>
__device__ void ln_modulate(const LnParams &p) {
  __shared__ float red[32];
  const long long row = blockIdx.x;
  const int c = p.c;
  const T *x = static_cast<const T *>(p.x) + row * c;
  const long long bi = row / p.rows_per_batch;
  const T *shift = static_cast<const T *>(p.shift) + bi * p.mod_sb;
  const T *scale = static_cast<const T *>(p.scale) + bi * p.mod_sb;
  T *out_row = static_cast<T *>(p.out) + row * c;
  const int pieces = c / 8;
  // The same for every thread of the block (block_sum synchronises it).
  if (c % 8 == 0 && pieces <= 2 * int(blockDim.x) && aligned16(x) && aligned16(shift) && aligned16(scale) &&
      aligned16(out_row)) {
    float v[2][8];
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < pieces) {
        load8(v[k], x + 8 * i);
#pragma unroll
        for (int e = 0; e < 8; ++e) s += v[k][e];
      }
    }
    const float mean = block_sum(s, red) / float(c);
    float q = 0.0f;
#pragma unroll
    for (int k = 0; k < 2; ++k)
      if (threadIdx.x + k * blockDim.x < pieces) {
#pragma unroll
        for (int e = 0; e < 8; ++e) q += (v[k][e] - mean) * (v[k][e] - mean);
      }
    const float rstd = rsqrtf(block_sum(q, red) / float(c) + p.eps);
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int i = threadIdx.x + k * blockDim.x;
      if (i < pieces) {
        float sh[8], sc[8];
        load8(sh, shift + 8 * i);
        load8(sc, scale + 8 * i);
#pragma unroll
        for (int e = 0; e < 8; ++e) v[k][e] = (v[k][e] - mean) * rstd * (1.0f + sc[e]) + sh[e];
        store8(out_row + 8 * i, v[k]);
      }
    }
    return;
  }
  float s = 0.0f;
  for (int i = threadIdx.x; i < c; i += blockDim.x) s += to_f32(x[i]);
  const float mean = block_sum(s, red) / float(c);
  float v = 0.0f;
  for (int i = threadIdx.x; i < c; i += blockDim.x) {
    float d = to_f32(x[i]) - mean;
    v += d * d;
  }
  const float rstd = rsqrtf(block_sum(v, red) / float(c) + p.eps);
  for (int i = threadIdx.x; i < c; i += blockDim.x)
    out_row[i] = from_f32<T>((to_f32(x[i]) - mean) * rstd * (1.0f + to_f32(scale[i])) + to_f32(shift[i]));
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

// Grid-stride over the output elements, channels fastest: a warp reads 32 consecutive channels
// of one input token per tap.
template <typename T>
__device__ void kv_conv(const KvConvParams &p) {
  const T *x = static_cast<const T *>(p.x);
  const T *weight = static_cast<const T *>(p.weight);
  const T *bias = static_cast<const T *>(p.bias);
  T *out = static_cast<T *>(p.out);
  const int c = p.c, r = p.r;
  const long long step = (long long)gridDim.x * blockDim.x;
  for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < p.total; o += step) {
    const int ch = int(o % c);
    const long long tok = o / c;  // (bi · h2 + i) · w2 + j
    const int j = int(tok % p.w2);
    const long long bi_i = tok / p.w2;  // bi · h2 + i
    const int i = int(bi_i % p.h2);
    const long long bi = bi_i / p.h2;
    // Input token (i·r, j·r) of batch row bi, the window's top left, at channel ch.
    const T *win = x + ((bi * p.h + (long long)i * r) * p.w + (long long)j * r) * c + ch;
    float acc = to_f32(bias[ch]);
    for (int ky = 0; ky < r; ++ky)
      for (int kx = 0; kx < r; ++kx)
        acc += to_f32(weight[(ky * r + kx) * c + ch]) * to_f32(win[((long long)ky * p.w + kx) * c]);
    out[o] = from_f32<T>(acc);
  }
}

}  // namespace pixart_ops

// ln_modulate: grid (rows), block 256. add_gated, kv_conv, scale_rows: any 1-D grid, block 256.
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
  }                                                                                                     \
  extern "C" __global__ void pixart_kv_conv_##SUFFIX(const T *x, const T *weight, const T *bias, T *out,    \
                                                     long long total, int h, int w, int h2, int w2, int c,  \
                                                     int r) {                                               \
    pixart_ops::kv_conv<T>(pixart_ops::KvConvParams{x, weight, bias, out, total, h, w, h2, w2, c, r});       \
  }                                                                                                     \
  extern "C" __global__ void pixart_scale_rows_##SUFFIX(const T *w, const T *gate, const T *bias, T *out,    \
                                                        long long per_batch, long long bias_off,            \
                                                        long long gate_sb, int b, int rows, int cols,       \
                                                        int vec8) {                                         \
    pixart_ops::scale_rows<T>(                                                                          \
        pixart_ops::ScaleRowsParams{w, gate, bias, out, per_batch, bias_off, gate_sb, b, rows, cols, vec8});  \
  }
PIXART_FUSED_OPS(f32, float)
PIXART_FUSED_OPS(bf16, __nv_bfloat16)
PIXART_FUSED_OPS(f16, __half)
