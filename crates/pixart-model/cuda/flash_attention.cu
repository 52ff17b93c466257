// Fused scaled-dot-product attention for the CUDA backend (forward only, bf16 / f16 inputs,
// f32 accumulation and softmax) on the tensor cores (mma.sync.m16n8k16, sm_80 and newer).
//
// out = softmax(scale · Q·Kᵀ, keys j < kv_len) · V, one (batch, head) pair and 64 queries per
// thread block, 4 warps of 16 queries each. Keys and values are walked in blocks of 64 with the
// online softmax (running row max and row sum, the partial output rescaled when the max grows),
// so the n × m scores never leave the chip: the algorithm of FlashAttention (Dao et al. 2022,
// arXiv 2205.14135; the register-resident scores and output of FlashAttention-2, Dao 2023,
// arXiv 2307.08691), written for this project. Each warp keeps its Q fragments, its 16 × 64 block
// of scores and its 16 × d output in registers: the scores' accumulator layout is exactly the A
// operand layout of the P·V product, so the probabilities go from one mma to the next without
// shared memory, and the row max / sum are shuffles among the 4 lanes that share a row. Only the
// K and V blocks go through shared memory (rows padded by 8 elements so that the fragment loads
// of a warp hit 32 different banks). The probabilities are rounded to the input type for P·V, as
// PyTorch's flash kernels do.
//
// Layouts are given by element strides, so Q, K, V and the output can be (b, h, n, d) or
// (b, n, h, d) views without copies; the last dim must be contiguous. The head dim d is padded
// with zeros to DP = 16·ceil(d / 16) ≤ 128. Tiles are copied 16 bytes at a time when `vec8`
// (d and every stride multiples of 8 elements, pointers 16-byte aligned), else element-wise.
//
// The same file compiles on the host against cuda/emulate.hpp (PIXART_CUDA_EMULATE), which runs
// every thread of a block as a host thread and emulates mma.sync with the PTX ISA's fragment
// layouts: tests/cuda_emulated.rs checks the indexing and the online softmax on the CPU against
// a double-precision reference.
#include "common.cuh"

namespace pixart_fa {

constexpr int BQ = 64;    // queries per block
constexpr int BK = 64;    // keys per inner step
constexpr int WARPS = 4;  // 16 queries each
constexpr int THREADS = 32 * WARPS;

using pixart_cuda::copy16;
using pixart_cuda::from_f32;
using pixart_cuda::load32;
using pixart_cuda::mma_16816;
using pixart_cuda::pack2;
using pixart_cuda::to_f32;

struct Params {
  const void *q;
  const void *k;
  const void *v;
  void *out;
  const int *kv_lens;  // (b) valid keys per batch row, or null: all m
  int heads, n, m, d;
  long long q_sb, q_sh, q_sn;  // element strides (batch, head, row)
  long long k_sb, k_sh, k_sn;
  long long v_sb, v_sh, v_sn;
  long long o_sb, o_sh, o_sn;
  float scale_log2;  // scale · log2(e): the softmax is taken in base 2
  int vec8;          // 16-byte copies (see above)
};

// Row stride (elements) of a tile in shared memory.
__host__ __device__ constexpr int row_stride(int dp) { return dp + 8; }

// Copies `valid_rows` rows of d elements (row stride `sn`) into a 64 × DPS tile, zero in the
// columns d..DP-1 and in the rows beyond `valid_rows`.
template <typename T, int DP>
__device__ __forceinline__ void load_tile(T *dst, const T *src, long long sn, int valid_rows, int d, bool vec8) {
  constexpr int DPS = row_stride(DP);
  if (vec8) {
    constexpr int V = DP / 8;  // 16-byte pieces per padded row
    for (int i = threadIdx.x; i < BK * V; i += THREADS) {
      const int r = i / V, c = (i - r * V) * 8;
      if (r < valid_rows && c < d) {
        copy16(dst + r * DPS + c, src + r * sn + c);
      } else {
        const T z = from_f32<T>(0.0f);
        for (int e = 0; e < 8; ++e) dst[r * DPS + c + e] = z;
      }
    }
  } else {
    for (int i = threadIdx.x; i < BK * DP; i += THREADS) {
      const int r = i / DP, c = i - r * DP;
      dst[r * DPS + c] = r < valid_rows && c < d ? src[r * sn + c] : from_f32<T>(0.0f);
    }
  }
}

template <typename T, int DP>
__device__ void flash_attention(const Params &p, unsigned char *smem) {
  constexpr int DPS = row_stride(DP);
  constexpr int KT = DP / 16;  // k16 steps of Q·Kᵀ over the head dim
  constexpr int NT = DP / 8;   // n8 tiles of the output
  constexpr int ST = BK / 8;   // n8 tiles of a block of scores
  T *qs = reinterpret_cast<T *>(smem);  // (BQ, DPS)
  T *ks = qs + BQ * DPS;                // (BK, DPS)
  T *vs = ks + BK * DPS;                // (BK, DPS)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;  // the fragment layout's groupID and threadID_in_group
  const int bi = blockIdx.z, hi = blockIdx.y, q0 = blockIdx.x * BQ;
  const int kv_len = p.kv_lens ? min(p.kv_lens[bi], p.m) : p.m;
  const bool vec8 = p.vec8 != 0;
  const T *q = static_cast<const T *>(p.q) + bi * p.q_sb + hi * p.q_sh + q0 * p.q_sn;
  const T *k = static_cast<const T *>(p.k) + bi * p.k_sb + hi * p.k_sh;
  const T *v = static_cast<const T *>(p.v) + bi * p.v_sb + hi * p.v_sh;

  load_tile<T, DP>(qs, q, p.q_sn, min(BQ, p.n - q0), p.d, vec8);
  __syncthreads();
  // This warp's 16 query rows as A fragments, kept for the whole key loop.
  uint32_t qa[KT][4];
  const T *qw = qs + warp * 16 * DPS;
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) {
    qa[kk][0] = load32(qw + g * DPS + 16 * kk + 2 * t);
    qa[kk][1] = load32(qw + (g + 8) * DPS + 16 * kk + 2 * t);
    qa[kk][2] = load32(qw + g * DPS + 16 * kk + 8 + 2 * t);
    qa[kk][3] = load32(qw + (g + 8) * DPS + 16 * kk + 8 + 2 * t);
  }

  // Output rows g and g + 8 of this warp: o[j][0..1] = columns 8j + 2t, +1 of row g,
  // o[j][2..3] the same of row g + 8. Row max and (this lane's part of the) row sum likewise.
  float o[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

  for (int k0 = 0; k0 < kv_len; k0 += BK) {
    __syncthreads();  // every warp is done with the previous K and V tiles
    const int valid = min(BK, kv_len - k0);
    load_tile<T, DP>(ks, k + k0 * p.k_sn, p.k_sn, valid, p.d, vec8);
    load_tile<T, DP>(vs, v + k0 * p.v_sn, p.v_sn, valid, p.d, vec8);
    __syncthreads();

    // S (16, BK) = Q_w · K_blockᵀ; B(k, n) = K[n][k], so b[0] = K[8j + g][2t, 2t+1].
    float s[ST][4];
#pragma unroll
    for (int j = 0; j < ST; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
      const T *kr = ks + (8 * j + g) * DPS + 2 * t;
#pragma unroll
      for (int kk = 0; kk < KT; ++kk) {
        const uint32_t b[2] = {load32(kr + 16 * kk), load32(kr + 16 * kk + 8)};
        mma_16816<T>(s[j], qa[kk], b);
      }
    }

    // Online softmax in base 2. Element e of tile j: row g + 8·(e / 2), key k0 + 8j + 2t + e % 2.
    float blk_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < ST; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool keep = k0 + 8 * j + 2 * t + (e & 1) < kv_len;
        s[j][e] = keep ? s[j][e] * p.scale_log2 : -INFINITY;
        blk_max[e >> 1] = fmaxf(blk_max[e >> 1], s[j][e]);
      }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // The 4 lanes of a group hold the same two rows.
      blk_max[r] = fmaxf(blk_max[r], __shfl_xor_sync(0xffffffffu, blk_max[r], 1));
      blk_max[r] = fmaxf(blk_max[r], __shfl_xor_sync(0xffffffffu, blk_max[r], 2));
      const float m_new = fmaxf(row_max[r], blk_max[r]);
      // A row with no valid key so far keeps factor 1 (its sums are 0).
      alpha[r] = m_new == -INFINITY ? 1.0f : exp2f(row_max[r] - m_new);
      row_max[r] = m_new;
      row_sum[r] *= alpha[r];
    }
#pragma unroll
    for (int j = 0; j < ST; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float m = row_max[e >> 1];
        const float pr = m == -INFINITY ? 0.0f : exp2f(s[j][e] - m);  // masked keys: exp2(-inf) = 0
        s[j][e] = pr;
        row_sum[e >> 1] += pr;
      }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      o[j][0] *= alpha[0];
      o[j][1] *= alpha[0];
      o[j][2] *= alpha[1];
      o[j][3] *= alpha[1];
    }

    // O += P · V_block. The scores of key tiles 2kk and 2kk + 1 are the A fragment of keys
    // 16kk..16kk+15; B(k, n) = V[16kk + k][8j + n], so b[0] = V[16kk + 2t, +1][8j + g].
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      const uint32_t pa[4] = {
          pack2(from_f32<T>(s[2 * kk][0]), from_f32<T>(s[2 * kk][1])),
          pack2(from_f32<T>(s[2 * kk][2]), from_f32<T>(s[2 * kk][3])),
          pack2(from_f32<T>(s[2 * kk + 1][0]), from_f32<T>(s[2 * kk + 1][1])),
          pack2(from_f32<T>(s[2 * kk + 1][2]), from_f32<T>(s[2 * kk + 1][3])),
      };
      const T *vr = vs + (16 * kk + 2 * t) * DPS + g;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const uint32_t b[2] = {pack2(vr[8 * j], vr[DPS + 8 * j]), pack2(vr[8 * DPS + 8 * j], vr[9 * DPS + 8 * j])};
        mma_16816<T>(o[j], pa, b);
      }
    }
  }

  // out = O / row_sum for the valid rows and the first d columns.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
  }
  T *out = static_cast<T *>(p.out) + bi * p.o_sb + hi * p.o_sh;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int qi = q0 + warp * 16 + g + 8 * r;
    if (qi >= p.n) continue;
    const float inv = row_sum[r] > 0.0f ? 1.0f / row_sum[r] : 0.0f;
    T *orow = out + qi * p.o_sn;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = 8 * j + 2 * t + e;
        if (c < p.d) orow[c] = from_f32<T>(o[j][2 * r + e] * inv);
      }
  }
}

// Bytes of dynamic shared memory for a padded head dim DP and an element of `elem` bytes:
// the Q, K and V tiles.
__host__ __device__ constexpr int smem_bytes(int dp, int elem) { return 3 * 64 * row_stride(dp) * elem; }

}  // namespace pixart_fa

// One kernel per element type and padded head dim DP (so that each gets the registers it needs):
// pixart_flash_attention_<bf16|f16>_d<DP>, DP = 16 · ceil(d / 16) ≤ 128. Grid (ceil(n / 64),
// heads, batch), block 128 threads, dynamic shared memory smem_bytes(DP, 2).
#define PIXART_FLASH_ATTENTION(SUFFIX, T, DP)                                                        \
  extern "C" __global__ void __launch_bounds__(128) pixart_flash_attention_##SUFFIX##_d##DP(pixart_fa::Params p) { \
    PIXART_DYNAMIC_SMEM(smem);                                                                     \
    pixart_fa::flash_attention<T, DP>(p, smem);                                                    \
  }
#define PIXART_FLASH_ATTENTION_ALL_DP(SUFFIX, T) \
  PIXART_FLASH_ATTENTION(SUFFIX, T, 16)          \
  PIXART_FLASH_ATTENTION(SUFFIX, T, 32)          \
  PIXART_FLASH_ATTENTION(SUFFIX, T, 48)          \
  PIXART_FLASH_ATTENTION(SUFFIX, T, 64)          \
  PIXART_FLASH_ATTENTION(SUFFIX, T, 80)          \
  PIXART_FLASH_ATTENTION(SUFFIX, T, 96)          \
  PIXART_FLASH_ATTENTION(SUFFIX, T, 112)         \
  PIXART_FLASH_ATTENTION(SUFFIX, T, 128)
PIXART_FLASH_ATTENTION_ALL_DP(bf16, __nv_bfloat16)
PIXART_FLASH_ATTENTION_ALL_DP(f16, __half)
