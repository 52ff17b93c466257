// Fused scaled-dot-product attention for the CUDA backend (forward only, bf16 / f16 inputs,
// f32 accumulation and softmax) on the tensor cores (mma.sync.m16n8k16, sm_80 and newer).
//
// out = softmax(scale · Q·Kᵀ, keys j < kv_len) · V, one (batch, head) pair and BQ = 16·MT·4
// queries per thread block, 4 warps of 16·MT queries each (MT = 1 or 2 m16 tiles per warp, one
// kernel each). Keys and values are walked in blocks of 64 with the online softmax (running row
// max and row sum, the partial output rescaled when the max grows), so the n × m scores never
// leave the chip: the algorithm of FlashAttention (Dao et al. 2022, arXiv 2205.14135; the
// register-resident scores and output of FlashAttention-2, Dao 2023, arXiv 2307.08691, whose
// warps own 32 query rows at d ≤ 128 as MT = 2 does here), written for this project. Each warp
// keeps its 16·MT × 64 block of scores and its 16·MT × d output in registers, and its Q fragments
// too where they fit (else it reloads them from the Q tile in shared memory for each key block):
// the scores' accumulator layout is exactly the A operand layout of the P·V product, so the
// probabilities go from one mma to the next without shared memory, and the row max / sum are
// shuffles among the 4 lanes that share a row. Only the K and V blocks go through shared memory,
// read with ldmatrix (.trans for V) straight into the mma's B fragments; each fragment read feeds
// the MT m16 tiles of the warp, so MT = 2 halves the shared-memory traffic per flop. Rows are
// padded by 8 elements (see row_stride), which keeps every ldmatrix phase conflict-free. The
// probabilities are rounded to the input type for P·V, as PyTorch's flash kernels do.
//
// Layouts are given by element strides, so Q, K, V and the output can be (b, h, n, d) or
// (b, n, h, d) views without copies; the last dim must be contiguous. The head dim d is padded
// with zeros to DP = 16·ceil(d / 16) ≤ 128. Tiles are copied 16 bytes at a time when `vec8`
// (d and every stride multiples of 8 elements, pointers 16-byte aligned), else element-wise.
//
// Pipelined variant (PIPE, kernels `..._pipe`): two K/V buffer pairs in shared memory, and the
// copy of key block i + 1 into one runs while the warps compute on block i in the other
// (FlashAttention-2's overlap of the K/V loads with the compute, arXiv 2307.08691, section 3.3,
// here as plain double buffering). The 16-byte copies are asynchronous (cp.async.cg, PTX ISA
// "cp.async", one commit group per key block, "cp.async.wait_group 1" for all but the newest);
// the zero padding (columns d..DP-1, rows beyond the valid keys) is plain stores, and without
// `vec8` the element-wise copies stay synchronous (correct, nothing overlapped). Per iteration i:
//   issue block i + 1 → buffer (i + 1) % 2; commit; wait_group 1 (block i has landed, this
//   thread's part); __syncthreads (every thread's part, for every warp); compute on buffer i % 2;
//   __syncthreads (no warp reads buffer i % 2 any more: iteration i + 1 refills it with i + 2).
// The Q tile is a group of its own before block 0's, waited for before the loop.
//
// The same file compiles on the host against cuda/emulate.hpp (PIXART_CUDA_EMULATE), which runs
// every thread of a block as a host thread and emulates mma.sync and ldmatrix with the PTX ISA's
// fragment layouts: tests/cuda_emulated.rs checks the indexing and the online softmax on the CPU
// against a double-precision reference.
#include "common.cuh"

namespace pixart_fa {

constexpr int BK = 64;    // keys per inner step
// A warp moves its rows to a new max only when one grew by more than this (base 2), see below.
constexpr float RESCALE_LOG2 = 8.0f;
constexpr int WARPS = 4;  // 16·MT queries each
constexpr int THREADS = 32 * WARPS;

// Queries per block for MT m16 tiles per warp.
__host__ __device__ constexpr int block_queries(int mt) { return 16 * mt * WARPS; }

using pixart_cuda::copy16;
using pixart_cuda::cp_async16;
using pixart_cuda::cp_async_commit;
using pixart_cuda::cp_async_wait;
using pixart_cuda::exp2_ftz;
using pixart_cuda::from_f32;
using pixart_cuda::ldmatrix_x4;
using pixart_cuda::ldmatrix_x4_trans;
using pixart_cuda::mma_16816;
using pixart_cuda::pack2;
using pixart_cuda::one_then_zeros16;
using pixart_cuda::zero16;

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
  float scale_log2;  // scale · log2(e) > 0: the softmax is taken in base 2
  int vec8;          // 16-byte copies (see above)
};

// Row stride (elements) of a tile in shared memory: DP + 8, i.e. (DP + 8) · 2 bytes, an odd
// multiple of 16 bytes (DP is a multiple of 16). An ldmatrix phase reads one 8 × 8 matrix, 8 rows
// of 16 bytes at the same column: at an odd multiple of 16 bytes apart, the 8 rows start at 8
// different 16-byte offsets modulo 128 bytes, i.e. cover the 32 banks once (no conflict). Every
// row, and each 8-element column block of it, starts 16-byte aligned, as ldmatrix needs.
__host__ __device__ constexpr int row_stride(int dp) { return dp + 8; }

// Copies `valid_rows` rows of d elements (row stride `sn`) into a ROWS × DPS tile, zero in the
// columns d..DP-1 and in the rows beyond `valid_rows`, except column `ones_col` (when ≥ 0) of the
// valid rows, which gets 1 (the V tile's row-sum column, see flash_attention). ASYNC: the 16-byte
// copies are cp.async (the caller commits and waits for them); the padding and the element-wise
// copies are plain stores. With `vec8`, thread i owns the 16-byte column piece i % V of rows
// i / V + RP·j (RP = THREADS / V rows per pass; the last THREADS − RP·V threads idle), so its
// source and destination advance by a constant each pass: a few instructions per 16 bytes, where
// a flat index i → (row, column) cost a division and a 64-bit multiply per piece.
// `padded`: the tile's padding columns are in place already (see pad_tile), and a full tile
// (valid_rows ≥ ROWS) with 16-byte copies then copies the data columns only: the common case of
// the key loop, straight-line code with no per-piece branches.
template <typename T, int DP, int ROWS, bool ASYNC = false>
__device__ __forceinline__ void load_tile(T *dst, const T *src, long long sn, int valid_rows, int d, bool vec8,
                                          int ones_col = -1, bool padded = false) {
  constexpr int DPS = row_stride(DP);
  if (vec8) {
    constexpr int V = DP / 8;        // 16-byte pieces per padded row
    constexpr int RP = THREADS / V;  // rows per pass
    constexpr int PASSES = (ROWS + RP - 1) / RP;
    const int i = threadIdx.x;
    if (i >= RP * V) return;
    const int r0 = i / V, c = (i - r0 * V) * 8;
    const bool data = c < d, ones = c == ones_col;  // ones_col is a multiple of 8 here (d is)
    const T *sp = src + r0 * sn + c;
    T *dp = dst + r0 * DPS + c;
    if (padded && valid_rows >= ROWS) {
      if (!data) return;
#pragma unroll
      for (int j = 0; j < PASSES; ++j, sp += RP * sn, dp += RP * DPS) {
        if (ROWS % RP != 0 && r0 + j * RP >= ROWS) break;
        if constexpr (ASYNC) cp_async16(dp, sp);
        else copy16(dp, sp);
      }
      return;
    }
#pragma unroll
    for (int j = 0; j < PASSES; ++j, sp += RP * sn, dp += RP * DPS) {
      const int r = r0 + j * RP;
      if (ROWS % RP != 0 && r >= ROWS) break;
      if (r < valid_rows && data) {
        if constexpr (ASYNC) cp_async16(dp, sp);
        else copy16(dp, sp);
      } else if (r < valid_rows && ones) {
        one_then_zeros16<T>(dp);
      } else {
        zero16(dp);
      }
    }
  } else {
    const T one = from_f32<T>(1.0f), zero = from_f32<T>(0.0f);
    for (int i = threadIdx.x; i < ROWS * DP; i += THREADS) {
      const int r = i / DP, c = i - r * DP;
      dst[r * DPS + c] = r < valid_rows && c < d ? src[r * sn + c] : (r < valid_rows && c == ones_col ? one : zero);
    }
  }
}

// Writes the padding columns d..DP-1 of every row of a ROWS × DPS tile: zeros, and 1 in column
// `ones_col` (when ≥ 0). Only for 16-byte copies (vec8: d is a multiple of 8); the copies into the
// tile write columns < d only, so the padding stays in place for every later key block.
template <typename T, int DP, int ROWS>
__device__ __forceinline__ void pad_tile(T *dst, int d, int ones_col) {
  constexpr int DPS = row_stride(DP), V = DP / 8;
  for (int i = threadIdx.x; i < ROWS * V; i += THREADS) {
    const int r = i / V, c = (i - r * V) * 8;
    if (c < d) continue;
    if (c == ones_col) one_then_zeros16<T>(dst + r * DPS + c);
    else zero16(dst + r * DPS + c);
  }
}

template <typename T, int DP, int MT, bool PIPE>
__device__ void flash_attention(const Params &p, unsigned char *smem) {
  constexpr int BQ = block_queries(MT);
  constexpr int DPS = row_stride(DP);
  constexpr int KT = DP / 16;  // k16 steps of Q·Kᵀ over the head dim
  constexpr int NT = DP / 8;   // n8 tiles of the output (even)
  constexpr int ST = BK / 8;   // n8 tiles of a block of scores (even)
  // The Q fragments stay in registers for the whole key loop where they fit next to the output
  // and the scores (MT·KT·4 registers); else they are read again from the Q tile per key block.
  constexpr bool Q_REGS = MT * KT <= 10;
  T *qs = reinterpret_cast<T *>(smem);  // (BQ, DPS)
  T *ks = qs + BQ * DPS;                // (BK, DPS)
  T *vs = ks + BK * DPS;                // (BK, DPS)
  // PIPE: a second K and V tile pair follows, at ks + KV_BUF and vs + KV_BUF.
  constexpr int KV_BUF = 2 * BK * DPS;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;  // the fragment layout's groupID and threadID_in_group
  const int bi = blockIdx.z, hi = blockIdx.y, q0 = blockIdx.x * BQ;
  const int kv_len = p.kv_lens ? min(p.kv_lens[bi], p.m) : p.m;
  const bool vec8 = p.vec8 != 0;
  // Where the head dim leaves a padded column (d < DP), V's column d is 1 in shared memory, so the
  // P·V product accumulates each row's sum of probabilities in output column d, on the tensor
  // cores, of exactly the rounded probabilities the numerator uses; else the sums are added up
  // in f32 per element.
  const bool sum_col = p.d < DP;
  const int ones_col = sum_col ? p.d : -1;
  const T *q = static_cast<const T *>(p.q) + bi * p.q_sb + hi * p.q_sh + q0 * p.q_sn;
  const T *k = static_cast<const T *>(p.k) + bi * p.k_sb + hi * p.k_sh;
  const T *v = static_cast<const T *>(p.v) + bi * p.v_sb + hi * p.v_sh;

  // The rows this lane hands to ldmatrix.x4 (lane 8i + r: row r of matrix i), as element offsets
  // from the top-left corner of the 16 × 16 (A) or 16-key × 16-column (B) block read:
  // - A fragments of Q (a[0..3] = rows 0-7 / 8-15 × columns 0-7, then the same × columns 8-15)
  //   and the .trans B fragments of V (b[0], b[1] of an n8 tile = keys 0-7 / 8-15, then the same
  //   for the next n8 tile): matrix i covers rows 8·(i % 2) + 0..7, columns 8·(i / 2) + 0..7.
  // - B fragments of K (b[0], b[1] of key tile j = K rows 8j + 0..7 × columns 0-7 / 8-15 of the
  //   k16 step, then the same for tile j + 1): matrix i covers rows 8·(i / 2) + 0..7, columns
  //   8·(i % 2) + 0..7.
  const int li = lane >> 3, lr = lane & 7;
  const int a_off = (8 * (li & 1) + lr) * DPS + 8 * (li >> 1);
  const int k_off = (8 * (li >> 1) + lr) * DPS + 8 * (li & 1);

  // The K and V tiles' padding columns, once (plain stores, seen by all warps after the barrier
  // before the first key block's compute).
  if (vec8) {
#pragma unroll
    for (int buf = 0; buf < (PIPE ? 2 : 1); ++buf) {
      pad_tile<T, DP, BK>(ks + buf * KV_BUF, p.d, -1);
      pad_tile<T, DP, BK>(vs + buf * KV_BUF, p.d, ones_col);
    }
  }
  if constexpr (PIPE) {
    // Group 0: the Q tile; group 1: key block 0 into buffer 0. Wait for group 0 only.
    load_tile<T, DP, BQ, true>(qs, q, p.q_sn, min(BQ, p.n - q0), p.d, vec8);
    cp_async_commit();
    const int valid = min(BK, kv_len);
    load_tile<T, DP, BK, true>(ks, k, p.k_sn, valid, p.d, vec8, -1, true);
    load_tile<T, DP, BK, true>(vs, v, p.v_sn, valid, p.d, vec8, ones_col, true);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    load_tile<T, DP, BQ>(qs, q, p.q_sn, min(BQ, p.n - q0), p.d, vec8);
  }
  __syncthreads();
  // This warp's 16·MT query rows: m16 tile mt is rows 16mt..16mt+15 of the warp's.
  const T *qw = qs + warp * 16 * MT * DPS + a_off;
  uint32_t qa[Q_REGS ? MT : 1][Q_REGS ? KT : 1][4];
  if constexpr (Q_REGS) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int kk = 0; kk < KT; ++kk) ldmatrix_x4(qa[mt][kk], qw + 16 * mt * DPS + 16 * kk);
  }

  // Output rows g and g + 8 of m16 tile mt: o[mt][j][0..1] = columns 8j + 2t, +1 of row g,
  // o[mt][j][2..3] the same of row g + 8. Row max and (this lane's part of the) row sum likewise.
  float o[MT][NT][4];
  float row_max[MT][2], row_sum[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int j = 0; j < NT; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
  }

  for (int k0 = 0; k0 < kv_len; k0 += BK) {
    const T *kc = ks, *vc = vs;  // this key block's K and V tiles
    if constexpr (PIPE) {
      // Block i = k0 / BK is in buffer i % 2. Start block i + 1 into the other buffer, which no
      // warp reads any more (the barrier at the end of iteration i - 1), then wait for block i:
      // all but the newest group (block i + 1's, empty after the last block) have landed.
      const int cur = (k0 / BK) & 1;
      kc = ks + cur * KV_BUF;
      vc = vs + cur * KV_BUF;
      const int k1 = k0 + BK;
      if (k1 < kv_len) {
        const int valid = min(BK, kv_len - k1);
        load_tile<T, DP, BK, true>(ks + (cur ^ 1) * KV_BUF, k + k1 * p.k_sn, p.k_sn, valid, p.d, vec8, -1, true);
        load_tile<T, DP, BK, true>(vs + (cur ^ 1) * KV_BUF, v + k1 * p.v_sn, p.v_sn, valid, p.d, vec8, ones_col,
                                   true);
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();  // every thread's copies of block i are visible to every warp
    } else {
      __syncthreads();  // every warp is done with the previous K and V tiles
      const int valid = min(BK, kv_len - k0);
      load_tile<T, DP, BK>(ks, k + k0 * p.k_sn, p.k_sn, valid, p.d, vec8, -1, true);
      load_tile<T, DP, BK>(vs, v + k0 * p.v_sn, p.v_sn, valid, p.d, vec8, ones_col, true);
      __syncthreads();
    }

    // S (16·MT, BK) = Q_w · K_blockᵀ; B(k, n) = K[n][k], so b[0] = K[8j + g][2t, 2t+1] of the k16
    // step: one ldmatrix.x4 gives b[0..1] of key tiles 2jp and 2jp + 1, used by the MT tiles.
    float s[MT][ST][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < ST; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      uint32_t qf[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (Q_REGS) {
#pragma unroll
          for (int e = 0; e < 4; ++e) qf[mt][e] = qa[mt][kk][e];
        } else {
          ldmatrix_x4(qf[mt], qw + 16 * mt * DPS + 16 * kk);
        }
      }
#pragma unroll
      for (int jp = 0; jp < ST / 2; ++jp) {
        uint32_t kb[4];
        ldmatrix_x4(kb, kc + k_off + 16 * jp * DPS + 16 * kk);
        const uint32_t b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<T>(s[mt][2 * jp], qf[mt], b0);
          mma_16816<T>(s[mt][2 * jp + 1], qf[mt], b1);
        }
      }
    }

    // Online softmax in base 2. Element e of tile j: row g + 8·(e / 2), key k0 + 8j + 2t + e % 2.
    // Only the last block can hold keys ≥ kv_len: the others skip the per-element mask. The row
    // max is kept in raw score units (scale_log2 > 0, so the max commutes with the scaling), and
    // each probability is one FFMA and one ex2: 2^(s·scale_log2 − max·scale_log2), the
    // subtraction folded as in FlashAttention-2's softmax (arXiv 2307.08691, section 3.1).
    // The max a row's probabilities are taken against may be stale: the warp moves its rows to
    // their new maxima (and rescales O and the sums) only when some row's max grew by more than
    // RESCALE_LOG2 in base-2 units, so a probability is at most 2^RESCALE_LOG2 = 256, which f32
    // sums and bf16/f16 probabilities hold exactly as well as values ≤ 1; the result, O / sum
    // against the same max, is unchanged. Most key blocks after the first few then skip the
    // rescaling (FlashAttention-4's conditional rescaling, Dao et al. 2025, written for this
    // project).
    const bool full = k0 + BK <= kv_len;
    float m_new[MT][2];
    bool grow = false;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float blk_max[2] = {-INFINITY, -INFINITY};
      if (full) {
#pragma unroll
        for (int j = 0; j < ST; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) blk_max[e >> 1] = fmaxf(blk_max[e >> 1], s[mt][j][e]);
      } else {
#pragma unroll
        for (int j = 0; j < ST; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const bool keep = k0 + 8 * j + 2 * t + (e & 1) < kv_len;
            s[mt][j][e] = keep ? s[mt][j][e] : -INFINITY;
            blk_max[e >> 1] = fmaxf(blk_max[e >> 1], s[mt][j][e]);
          }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        // The 4 lanes of a group hold the same two rows.
        blk_max[r] = fmaxf(blk_max[r], __shfl_xor_sync(0xffffffffu, blk_max[r], 1));
        blk_max[r] = fmaxf(blk_max[r], __shfl_xor_sync(0xffffffffu, blk_max[r], 2));
        m_new[mt][r] = fmaxf(row_max[mt][r], blk_max[r]);
        // From -inf to a finite max: +inf > threshold; -inf to -inf (no valid key yet): NaN, false.
        grow |= (m_new[mt][r] - row_max[mt][r]) * p.scale_log2 > RESCALE_LOG2;
      }
    }
    if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        float alpha[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          // A row with no valid key so far keeps factor 1 (its sums are 0).
          alpha[r] = m_new[mt][r] == -INFINITY ? 1.0f : exp2_ftz((row_max[mt][r] - m_new[mt][r]) * p.scale_log2);
          row_max[mt][r] = m_new[mt][r];
          row_sum[mt][r] *= alpha[r];
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          o[mt][j][0] *= alpha[0];
          o[mt][j][1] *= alpha[0];
          o[mt][j][2] *= alpha[1];
          o[mt][j][3] *= alpha[1];
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      // A row with no valid key so far takes exp2(-inf · scale_log2 - 0) of its scores: 0.
      const float m_sub[2] = {row_max[mt][0] == -INFINITY ? 0.0f : row_max[mt][0] * p.scale_log2,
                              row_max[mt][1] == -INFINITY ? 0.0f : row_max[mt][1] * p.scale_log2};
#pragma unroll
      for (int j = 0; j < ST; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          // Masked keys: fma(-inf, scale_log2, -m) = -inf, exp2(-inf) = 0.
          s[mt][j][e] = exp2_ftz(fmaf(s[mt][j][e], p.scale_log2, -m_sub[e >> 1]));
      if (!sum_col) {
#pragma unroll
        for (int j = 0; j < ST; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) row_sum[mt][e >> 1] += s[mt][j][e];
      }
    }

    // O += P · V_block. The scores of key tiles 2kk and 2kk + 1 are the A fragment of keys
    // 16kk..16kk+15; B(k, n) = V[16kk + k][8j + n], so b[0] = V[16kk + 2t, +1][8j + g]: the
    // transposed 8 × 8 matrix of V rows 16kk..16kk+7, columns 8j..8j+7. One ldmatrix.x4.trans
    // gives b[0..1] of output tiles 2jp and 2jp + 1, used by the MT tiles.
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = pack2(from_f32<T>(s[mt][2 * kk][0]), from_f32<T>(s[mt][2 * kk][1]));
        pa[mt][1] = pack2(from_f32<T>(s[mt][2 * kk][2]), from_f32<T>(s[mt][2 * kk][3]));
        pa[mt][2] = pack2(from_f32<T>(s[mt][2 * kk + 1][0]), from_f32<T>(s[mt][2 * kk + 1][1]));
        pa[mt][3] = pack2(from_f32<T>(s[mt][2 * kk + 1][2]), from_f32<T>(s[mt][2 * kk + 1][3]));
      }
#pragma unroll
      for (int jp = 0; jp < NT / 2; ++jp) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, vc + a_off + 16 * kk * DPS + 16 * jp);
        const uint32_t b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<T>(o[mt][2 * jp], pa[mt], b0);
          mma_16816<T>(o[mt][2 * jp + 1], pa[mt], b1);
        }
      }
    }
    // PIPE: every warp is done with buffer i % 2 before iteration i + 1 starts refilling it with
    // block i + 2 (if there is one: the condition is the same for the whole block).
    if constexpr (PIPE) {
      if (k0 + 2 * BK < kv_len) __syncthreads();
    }
  }

  // out = O / row_sum for the valid rows and the first d columns.
  T *out = static_cast<T *>(p.out) + bi * p.o_sb + hi * p.o_sh;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum;
      if (sum_col) {
        // Column d of O: tile d / 8, held by the lane of the group with t = (d % 8) / 2.
        float mine = 0.0f;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          // Values, not a choice between two array elements (that would put O in local memory).
          const float even = o[mt][j][2 * r], odd = o[mt][j][2 * r + 1];
          if (j == p.d / 8) mine = (p.d & 1) ? odd : even;
        }
        sum = __shfl_sync(0xffffffffu, mine, (lane & ~3) | ((p.d % 8) / 2));
      } else {
        sum = row_sum[mt][r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      }
      const int qi = q0 + (warp * MT + mt) * 16 + g + 8 * r;
      if (qi >= p.n) continue;
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      T *orow = out + qi * p.o_sn;
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = 8 * j + 2 * t + e;
          if (c < p.d) orow[c] = from_f32<T>(o[mt][j][2 * r + e] * inv);
        }
    }
}

// Bytes of dynamic shared memory for a padded head dim DP, an element of `elem` bytes and MT m16
// tiles per warp: the Q tile (block_queries(MT) rows) and the K and V tiles (BK rows each), two of
// each for the pipelined kernels. DP = 128, 2-byte elements: 69,632 bytes (MT = 2), pipelined
// 104,448 (MT = 2) or 87,040 (MT = 1); DP = 80: 45,056, pipelined 67,584 (MT = 2).
__host__ __device__ constexpr int smem_bytes(int dp, int elem, int mt, bool pipe = false) {
  return (block_queries(mt) + (pipe ? 4 : 2) * BK) * row_stride(dp) * elem;
}

}  // namespace pixart_fa

// Four kernels per element type and padded head dim DP (so that each gets the registers it
// needs), DP = 16 · ceil(d / 16) ≤ 128: pixart_flash_attention_<bf16|f16>_d<DP> (MT = 1, 64
// queries per block) and pixart_flash_attention_<bf16|f16>_d<DP>_q32 (MT = 2, 32 queries per warp,
// 128 per block), and each of them pipelined with the suffix _pipe (`..._d<DP>_pipe`,
// `..._d<DP>_q32_pipe`). Grid (ceil(n / block_queries(MT)), heads, batch), block 128 threads,
// dynamic shared memory smem_bytes(DP, 2, MT, pipelined).
#define PIXART_FLASH_ATTENTION_MT(SUFFIX, T, DP, MT, NAME_MT)                                         \
  extern "C" __global__ void __launch_bounds__(128)                                                  \
      pixart_flash_attention_##SUFFIX##_d##DP##NAME_MT(pixart_fa::Params p) {                        \
    PIXART_DYNAMIC_SMEM(smem);                                                                       \
    pixart_fa::flash_attention<T, DP, MT, false>(p, smem);                                           \
  }                                                                                                  \
  extern "C" __global__ void __launch_bounds__(128)                                                  \
      pixart_flash_attention_##SUFFIX##_d##DP##NAME_MT##_pipe(pixart_fa::Params p) {                 \
    PIXART_DYNAMIC_SMEM(smem);                                                                       \
    pixart_fa::flash_attention<T, DP, MT, true>(p, smem);                                            \
  }
#define PIXART_FLASH_ATTENTION(SUFFIX, T, DP)   \
  PIXART_FLASH_ATTENTION_MT(SUFFIX, T, DP, 1, ) \
  PIXART_FLASH_ATTENTION_MT(SUFFIX, T, DP, 2, _q32)
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
