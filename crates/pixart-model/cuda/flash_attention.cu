// Fused scaled-dot-product attention for the CUDA backend (forward only, bf16 / f16 inputs,
// f32 accumulation and softmax), on the tensor cores through the WMMA API (sm_80 and newer).
//
// out = softmax(scale · Q·Kᵀ, keys j < kv_len) · V, one (batch, head) pair and 64 queries per
// thread block, 4 warps of 16 queries each. Keys and values are walked in blocks of 64 with the
// online softmax (running row max and row sum, the partial output rescaled when the max grows),
// so the n × m scores never leave the chip; this is the algorithm of FlashAttention (Dao et al.
// 2022, arXiv 2205.14135, Algorithm 1) written for this project. The probabilities are rounded
// to the input type for the P·V product, as PyTorch's flash kernels do.
//
// Layouts are given by element strides, so Q, K, V and the output can be (b, h, n, d)
// or (b, n, h, d) views without copies; the last dim must be contiguous. The head dim d is
// padded with zeros to DP = 16·tiles (≤ 128) in shared memory.
//
// Shared memory (dynamic, bytes): Q, K, V tiles 3 · 64 · DP · sizeof(T); per warp the scores
// 16 × 64 f32, the probabilities 16 × 64 T and the partial output 16 × DP f32.
//
// The same file compiles on the host against cuda/emulate.hpp (PIXART_CUDA_EMULATE), which runs
// every thread of a block as a host thread: tests/cuda_emulated.rs checks the indexing and the
// online softmax on the CPU against a double-precision reference.
#include "common.cuh"

namespace pixart_fa {

using namespace nvcuda;

constexpr int BQ = 64;      // queries per block
constexpr int BK = 64;      // keys per inner step
constexpr int WARPS = 4;    // 16 queries each
static_assert(BQ == BK, "load_tile copies BQ rows for both Q and the K / V blocks");
constexpr int THREADS = 32 * WARPS;

using pixart_cuda::from_f32;
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
};

// Copies a rows × d tile (row stride `sn`) into shared memory as rows × DP, zero beyond `rows`
// valid rows and d columns.
template <typename T, int DP>
__device__ __forceinline__ void load_tile(T *dst, const T *src, long long sn, int valid_rows, int d) {
  for (int i = threadIdx.x; i < BK * DP; i += THREADS) {
    int r = i / DP, c = i - r * DP;
    T x = from_f32<T>(0.0f);
    if (r < valid_rows && c < d) x = src[r * sn + c];
    dst[i] = x;
  }
}

template <typename T, int DP>
__device__ void flash_attention(const Params &p, unsigned char *smem) {
  constexpr int TILES = DP / 16;
  T *qs = reinterpret_cast<T *>(smem);                 // (BQ, DP)
  T *ks = qs + BQ * DP;                                // (BK, DP)
  T *vs = ks + BK * DP;                                // (BK, DP)
  float *ss = reinterpret_cast<float *>(vs + BK * DP); // WARPS × (16, BK)
  T *ps = reinterpret_cast<T *>(ss + WARPS * 16 * BK); // WARPS × (16, BK)
  float *os = reinterpret_cast<float *>(ps + WARPS * 16 * BK); // WARPS × (16, DP)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int bi = blockIdx.z, hi = blockIdx.y, q0 = blockIdx.x * BQ;
  const int kv_len = p.kv_lens ? min(p.kv_lens[bi], p.m) : p.m;
  const T *q = static_cast<const T *>(p.q) + bi * p.q_sb + hi * p.q_sh + q0 * p.q_sn;
  const T *k = static_cast<const T *>(p.k) + bi * p.k_sb + hi * p.k_sh;
  const T *v = static_cast<const T *>(p.v) + bi * p.v_sb + hi * p.v_sh;

  load_tile<T, DP>(qs, q, p.q_sn, min(BQ, p.n - q0), p.d);

  float *s_w = ss + warp * 16 * BK;
  T *p_w = ps + warp * 16 * BK;
  float *o_w = os + warp * 16 * DP;
  for (int i = lane; i < 16 * DP; i += 32) o_w[i] = 0.0f;

  // Lanes 2r and 2r + 1 own query row r of the warp: columns [32·half, 32·half + 32) of a key
  // block and [half·DP/2, (half+1)·DP/2) of the output. Each lane walks its columns starting at
  // its own offset so that the 16 rows (same bank at equal column) hit different banks.
  const int row = lane >> 1, half = lane & 1;
  float row_max = -INFINITY, row_sum = 0.0f;

  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bt;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;

  for (int k0 = 0; k0 < kv_len; k0 += BK) {
    __syncthreads();  // every warp is done with the previous K and V tiles
    const int valid = min(BK, kv_len - k0);
    load_tile<T, DP>(ks, k + k0 * p.k_sn, p.k_sn, valid, p.d);
    load_tile<T, DP>(vs, v + k0 * p.v_sn, p.v_sn, valid, p.d);
    __syncthreads();

    // S (16, BK) = Q_w (16, DP) · K_blockᵀ
    for (int j = 0; j < BK / 16; ++j) {
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int t = 0; t < TILES; ++t) {
        wmma::load_matrix_sync(a, qs + (warp * 16) * DP + t * 16, DP);
        wmma::load_matrix_sync(bt, ks + (j * 16) * DP + t * 16, DP);
        wmma::mma_sync(acc, a, bt, acc);
      }
      wmma::store_matrix_sync(s_w + j * 16, acc, BK, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax of this block's scores for row `row`, columns of this lane's half.
    float m_blk = -INFINITY;
    for (int t = 0; t < 32; ++t) {
      int c = half * 32 + ((t + lane) & 31);
      float s = k0 + c < kv_len ? s_w[row * BK + c] * p.scale_log2 : -INFINITY;
      m_blk = fmaxf(m_blk, s);
    }
    m_blk = fmaxf(m_blk, __shfl_xor_sync(0xffffffffu, m_blk, 1));
    const float m_new = fmaxf(row_max, m_blk);
    // A row with no valid key so far keeps factor 1 and probabilities 0.
    const float alpha = m_new == -INFINITY ? 1.0f : exp2f(row_max - m_new);
    float sum = 0.0f;
    for (int t = 0; t < 32; ++t) {
      int c = half * 32 + ((t + lane) & 31);
      float pr = 0.0f;
      if (k0 + c < kv_len && m_new != -INFINITY) pr = exp2f(s_w[row * BK + c] * p.scale_log2 - m_new);
      sum += pr;
      p_w[row * BK + c] = from_f32<T>(pr);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    row_sum = row_sum * alpha + sum;
    row_max = m_new;
    for (int t = 0; t < DP / 2; ++t) {
      int c = half * (DP / 2) + ((t + lane) % (DP / 2));
      o_w[row * DP + c] *= alpha;
    }
    __syncwarp();

    // O_w (16, DP) += P_w (16, BK) · V_block (BK, DP)
#pragma unroll
    for (int j = 0; j < TILES; ++j) {
      wmma::load_matrix_sync(acc, o_w + j * 16, DP, wmma::mem_row_major);
      for (int t = 0; t < BK / 16; ++t) {
        wmma::load_matrix_sync(a, p_w + t * 16, BK);
        wmma::load_matrix_sync(b, vs + (t * 16) * DP + j * 16, DP);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(o_w + j * 16, acc, DP, wmma::mem_row_major);
    }
    __syncwarp();
  }

  // out = O / row_sum for the valid rows and the first d columns.
  const int qi = q0 + warp * 16 + row;
  if (qi < p.n) {
    T *o = static_cast<T *>(p.out) + bi * p.o_sb + hi * p.o_sh + qi * p.o_sn;
    const float inv = row_sum > 0.0f ? 1.0f / row_sum : 0.0f;
    for (int c = half; c < p.d; c += 2) o[c] = from_f32<T>(o_w[row * DP + c] * inv);
  }
}

// Bytes of dynamic shared memory for a padded head dim DP and an element of `elem` bytes.
__host__ __device__ constexpr int smem_bytes(int dp, int elem) {
  return 3 * 64 * dp * elem + WARPS * 16 * 64 * 4 + WARPS * 16 * 64 * elem + WARPS * 16 * dp * 4;
}

template <typename T>
__device__ void dispatch(const Params &p, unsigned char *smem) {
  // DP = 16 · ceil(d / 16); the launcher checks d ≤ 128.
  switch ((p.d + 15) / 16) {
    case 1: flash_attention<T, 16>(p, smem); break;
    case 2: flash_attention<T, 32>(p, smem); break;
    case 3: flash_attention<T, 48>(p, smem); break;
    case 4: flash_attention<T, 64>(p, smem); break;
    case 5: flash_attention<T, 80>(p, smem); break;
    case 6: flash_attention<T, 96>(p, smem); break;
    case 7: flash_attention<T, 112>(p, smem); break;
    case 8: flash_attention<T, 128>(p, smem); break;
    default: break;
  }
}

}  // namespace pixart_fa

// Grid (ceil(n / 64), heads, batch), block 128 threads, dynamic shared memory
// smem_bytes(16 · ceil(d / 16), 2).
extern "C" __global__ void __launch_bounds__(128) pixart_flash_attention_bf16(pixart_fa::Params p) {
  PIXART_DYNAMIC_SMEM(smem);
  pixart_fa::dispatch<__nv_bfloat16>(p, smem);
}

extern "C" __global__ void __launch_bounds__(128) pixart_flash_attention_f16(pixart_fa::Params p) {
  PIXART_DYNAMIC_SMEM(smem);
  pixart_fa::dispatch<__half>(p, smem);
}
