// Host emulation of the small part of CUDA that pixart's kernels use, so that their indexing,
// synchronisation and arithmetic can be tested on a machine with no GPU (tests/cuda_emulated.rs).
//
// Every thread of a block runs as a host thread; blocks run one after another. __syncthreads and
// __syncwarp are barriers, __shfl_xor_sync exchanges through a per-block buffer. WMMA fragments
// hold the whole 16 × 16 matrix in every lane (the real distribution over lanes is not modelled,
// so kernels must not touch fragment elements directly); loads and stores are warp-collective,
// check the alignment and leading-dimension rules of the CUDA programming guide (pointer 256-bit
// aligned, ldm a multiple of 16 bytes) and the warp's lanes meet before and after each.
// Shared memory starts filled with 0xFF bytes (NaN in f32, bf16 and f16), so a read of
// memory the kernel never wrote shows up in the results.
//
// Not a CUDA implementation: no memory model beyond the barriers, no occupancy or timing.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
// Blocks run one at a time, so a function-level static is exactly one block's shared memory.
#define __shared__ static
#define PIXART_DYNAMIC_SMEM(name) unsigned char *name = emu::dynamic_smem()

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

inline int min(int a, int b) { return a < b ? a : b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int max(int a, int b) { return a > b ? a : b; }

struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 x) {
  uint32_t u = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return {0x7fc0};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {uint16_t(u >> 16)};
}
struct __half {
  _Float16 v;
};
inline float __half2float(__half x) { return float(x.v); }
inline __half __float2half(float f) { return {_Float16(f)}; }

namespace emu {

[[noreturn]] inline void fail(const char *what) {
  std::fprintf(stderr, "emulated CUDA: %s\n", what);
  std::abort();
}

struct Block {
  std::unique_ptr<std::barrier<>> block_bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
  std::vector<float> shfl;
  unsigned char *smem = nullptr;
};
inline thread_local Block *current = nullptr;

inline unsigned char *dynamic_smem() { return current->smem; }
inline unsigned lane() { return threadIdx.x % 32; }
inline void warp_barrier() { current->warp_bars[threadIdx.x / 32]->arrive_and_wait(); }

// Runs `kernel()` for every thread of a grid of 1-D blocks of `threads` threads.
template <class F>
void launch(dim3 grid, unsigned threads, size_t smem_bytes, F kernel) {
  if (threads % 32 != 0) fail("block size must be a multiple of 32");
  size_t alloc = (smem_bytes + 127) / 128 * 128 + 128;
  unsigned char *smem = static_cast<unsigned char *>(std::aligned_alloc(128, alloc));
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        Block b;
        b.block_bar = std::make_unique<std::barrier<>>(threads);
        for (unsigned w = 0; w < threads / 32; ++w) b.warp_bars.push_back(std::make_unique<std::barrier<>>(32));
        b.shfl.assign(threads, 0.0f);
        std::memset(smem, 0xff, alloc);
        b.smem = smem;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads; ++t)
          ts.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            blockIdx = {x, y, z};
            blockDim = {threads, 1, 1};
            gridDim = grid;
            current = &b;
            kernel();
          });
        for (auto &t : ts) t.join();
      }
  std::free(smem);
}

}  // namespace emu

inline void __syncthreads() { emu::current->block_bar->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barrier(); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  auto &s = emu::current->shfl;
  s[threadIdx.x] = v;
  emu::warp_barrier();
  float r = s[(threadIdx.x & ~31u) | ((threadIdx.x & 31u) ^ unsigned(lane_mask))];
  emu::warp_barrier();
  return r;
}

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

// The logical 16 × 16 matrix, element (r, c) at x[16 r + c], in every lane.
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "only the 16x16x16 shape is emulated");
  float x[256];
};

inline float value(float v) { return v; }
inline float value(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float value(__half v) { return __half2float(v); }

template <class P>
void check(const P *p, unsigned ldm) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) emu::fail("wmma pointer not 256-bit aligned");
  if ((ldm * sizeof(P)) % 16 != 0) emu::fail("wmma ldm not a multiple of 16 bytes");
}

template <class Use, class T, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L> &f, const T *p, unsigned ldm) {
  static_assert(std::is_same_v<L, row_major> || std::is_same_v<L, col_major>, "a / b fragments need a layout");
  check(p, ldm);
  emu::warp_barrier();
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c)
      f.x[16 * r + c] = value(std::is_same_v<L, row_major> ? p[r * ldm + c] : p[c * ldm + r]);
  emu::warp_barrier();
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ldm,
                             layout_t l) {
  check(p, ldm);
  emu::warp_barrier();
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[16 * r + c] = l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  emu::warp_barrier();
}

inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm,
                              layout_t l) {
  check(p, ldm);
  emu::warp_barrier();
  if (emu::lane() == 0)
    for (int r = 0; r < 16; ++r)
      for (int c = 0; c < 16; ++c) (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[16 * r + c];
  emu::warp_barrier();
}

inline void fill_fragment(fragment<accumulator, 16, 16, 16, float> &f, float v) {
  for (float &e : f.x) e = v;
}

template <class T, class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, T, LA> &a,
              const fragment<matrix_b, 16, 16, 16, T, LB> &b, const fragment<accumulator, 16, 16, 16, float> &c) {
  emu::warp_barrier();
  float out[256];
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 16; ++n) {
      float s = c.x[16 * r + n];
      for (int k = 0; k < 16; ++k) s += a.x[16 * r + k] * b.x[16 * k + n];
      out[16 * r + n] = s;
    }
  std::memcpy(d.x, out, sizeof out);
  emu::warp_barrier();
}

}  // namespace wmma
}  // namespace nvcuda
