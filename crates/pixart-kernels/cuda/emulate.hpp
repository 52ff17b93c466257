// Host emulation of the small part of CUDA that pixart's kernels use, so that their indexing,
// synchronisation and arithmetic can be tested on a machine with no GPU (tests/cuda_emulated.rs).
//
// Every thread of a block runs as a host thread; blocks run one after another. __syncthreads and
// __syncwarp are barriers, __shfl_xor_sync exchanges through a per-block buffer. The tensor-core
// instruction mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16} is emulated with the fragment
// layouts of the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point type"): each
// lane hands in its registers, the lanes meet, and each computes the four accumulator elements
// the layout gives it. ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 likewise: each lane posts
// its row address, the lanes meet, and each assembles its registers from the posted rows. Shared
// memory starts filled with 0xFF bytes (NaN in f32, bf16 and f16), so a read of memory the kernel
// never wrote shows up in the results; 32- and 128-bit accesses and ldmatrix rows check their
// alignment. cp.async (16 bytes, commit_group, wait_group) is per thread, as in the PTX ISA: a copy
// may land at any time between its issue and the wait that covers it, and the emulation takes both
// extremes: the issue fills the destination with 0xFF bytes (NaN) and the wait does the copy. So a
// read of the destination before the wait and a barrier, by any thread, sees NaN, and so does a
// warp still reading a buffer that another thread has started refilling.
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
#include <deque>
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
  std::vector<uint32_t> mma_a, mma_b;  // per thread: the A (4) and B (2) registers of an mma
  std::vector<const void *> ldm_rows;  // per thread: the row address handed to an ldmatrix
  unsigned char *smem = nullptr;
};
inline thread_local Block *current = nullptr;

inline unsigned char *dynamic_smem() { return current->smem; }
inline unsigned lane() { return threadIdx.x % 32; }
inline void warp_barrier() { current->warp_bars[threadIdx.x / 32]->arrive_and_wait(); }

// This thread's cp.async copies: those issued since the last commit, and the committed groups,
// oldest first, whose copies are not done yet.
struct AsyncCopy {
  void *dst;
  const void *src;
};
struct AsyncCopies {
  std::vector<AsyncCopy> open;
  std::deque<std::vector<AsyncCopy>> groups;
};
inline thread_local AsyncCopies async_copies;

// A thread must not end with copies it never waited for (their data would never be used).
inline void cp_async_check_drained() {
  bool pending = !async_copies.open.empty();
  for (const auto &g : async_copies.groups) pending |= !g.empty();
  if (pending) fail("a thread ended with cp.async copies it never waited for");
  async_copies.groups.clear();
}

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
        b.mma_a.assign(threads * 4, 0);
        b.mma_b.assign(threads * 2, 0);
        b.ldm_rows.assign(threads, nullptr);
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
            cp_async_check_drained();
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

inline float __shfl_sync(unsigned, float v, int src_lane) {
  auto &s = emu::current->shfl;
  s[threadIdx.x] = v;
  emu::warp_barrier();
  float r = s[(threadIdx.x & ~31u) | (unsigned(src_lane) & 31u)];
  emu::warp_barrier();
  return r;
}
inline int __any_sync(unsigned, int pred) {
  auto &s = emu::current->shfl;
  s[threadIdx.x] = pred ? 1.0f : 0.0f;
  emu::warp_barrier();
  int any = 0;
  for (unsigned l = 0; l < 32; ++l) any |= s[(threadIdx.x & ~31u) | l] != 0.0f;
  emu::warp_barrier();
  return any;
}

namespace emu {

inline uint16_t bits_of(__nv_bfloat16 x) { return x.bits; }
inline uint16_t bits_of(__half x) {
  uint16_t b;
  std::memcpy(&b, &x.v, 2);
  return b;
}
template <typename T>
T from_bits(uint16_t b) {
  T x;
  std::memcpy(&x, &b, 2);
  return x;
}
inline float half_value(__nv_bfloat16 *, uint16_t b) { return __bfloat162float(from_bits<__nv_bfloat16>(b)); }
inline float half_value(__half *, uint16_t b) { return __half2float(from_bits<__half>(b)); }

// d += A·B for one warp: A 16×16 and B 16×8 of T in the lanes' registers, d 16×8 f32.
template <typename T>
void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  Block &blk = *current;
  const unsigned me = threadIdx.x, base = me & ~31u;
  for (int i = 0; i < 4; ++i) blk.mma_a[me * 4 + i] = a[i];
  for (int i = 0; i < 2; ++i) blk.mma_b[me * 2 + i] = b[i];
  warp_barrier();
  // Element (r, c) of A: lane 4·(r mod 8) + (c mod 8)/2, register (r ≥ 8) + 2·(c ≥ 8), half c mod 2.
  auto A = [&](int r, int c) {
    uint32_t reg = blk.mma_a[(base + 4 * (r % 8) + (c % 8) / 2) * 4 + (r >= 8) + 2 * (c >= 8)];
    return half_value(static_cast<T *>(nullptr), uint16_t(c % 2 ? reg >> 16 : reg & 0xffff));
  };
  // Element (k, n) of B: lane 4·n + (k mod 8)/2, register k ≥ 8, half k mod 2.
  auto B = [&](int k, int n) {
    uint32_t reg = blk.mma_b[(base + 4 * n + (k % 8) / 2) * 2 + (k >= 8)];
    return half_value(static_cast<T *>(nullptr), uint16_t(k % 2 ? reg >> 16 : reg & 0xffff));
  };
  const int g = int(me % 32) >> 2, t = int(me % 32) & 3;
  float out[4];
  for (int i = 0; i < 4; ++i) {  // c0, c1: row g; c2, c3: row g + 8; column 2t + (i mod 2)
    const int r = g + 8 * (i >= 2), c = 2 * t + (i & 1);
    float acc = d[i];
    for (int k = 0; k < 16; ++k) acc += A(r, k) * B(k, c);
    out[i] = acc;
  }
  warp_barrier();
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

template <size_t N>
void check_aligned(const void *p) {
  if (reinterpret_cast<uintptr_t>(p) % N != 0) fail("misaligned vector access");
}

// cp.async.cg.shared.global [dst], [src], 16 (both 16-byte aligned): dst is undefined (0xFF bytes)
// until a cp.async.wait_group covers the copy.
inline void cp_async16(void *dst, const void *src) {
  check_aligned<16>(dst);
  check_aligned<16>(src);
  std::memset(dst, 0xff, 16);
  async_copies.open.push_back({dst, src});
}
// cp.async.commit_group: the copies issued since the last commit form a group (maybe empty).
inline void cp_async_commit() {
  async_copies.groups.push_back(std::move(async_copies.open));
  async_copies.open.clear();
}
// cp.async.wait_group n: completes all but the n most recent groups of this thread. Copies issued
// but not committed are not waited for (as in the PTX ISA).
inline void cp_async_wait(int n) {
  auto &gs = async_copies.groups;
  while (gs.size() > size_t(n)) {
    for (const auto &c : gs.front()) std::memcpy(c.dst, c.src, 16);
    gs.pop_front();
  }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 for one warp: lane 8i + j gives the address of
// row j of matrix i (8 elements of 16 bits, 16-byte aligned). Without TRANS, lane L gets
// r[i] = M_i[L/4][2(L%4)] | M_i[L/4][2(L%4) + 1] << 16; with TRANS, M_i[2(L%4)][L/4] |
// M_i[2(L%4) + 1][L/4] << 16.
template <bool TRANS>
void ldmatrix_x4(uint32_t (&r)[4], const void *row) {
  check_aligned<16>(row);
  Block &blk = *current;
  const unsigned me = threadIdx.x, base = me & ~31u;
  const int l = int(me % 32);
  blk.ldm_rows[me] = row;
  warp_barrier();
  auto at = [&](int i, int rr, int c) {  // M_i[rr][c]
    uint16_t x;
    std::memcpy(&x, static_cast<const unsigned char *>(blk.ldm_rows[base + 8 * i + rr]) + 2 * c, 2);
    return uint32_t(x);
  };
  uint32_t out[4];
  for (int i = 0; i < 4; ++i)
    out[i] = TRANS ? at(i, 2 * (l % 4), l / 4) | at(i, 2 * (l % 4) + 1, l / 4) << 16
                   : at(i, l / 4, 2 * (l % 4)) | at(i, l / 4, 2 * (l % 4) + 1) << 16;
  warp_barrier();
  for (int i = 0; i < 4; ++i) r[i] = out[i];
}

}  // namespace emu
