// Runs the CUDA kernels of this folder on the host (emulate.hpp) against double-precision
// references. Built and run by tests/cuda_emulated.rs; exits non-zero when a case is out of
// tolerance. An optional argument runs only the cases whose name contains it.
//
// flash_attention.cu: random Q, K, V rounded to the kernel's input type, strides for the
// (b, h, n, d) or (b, n, h, d) layout, optional per-batch valid key counts; the reference is
// softmax(scale·QKᵀ)V over the valid keys in double on the same rounded inputs. The kernel rounds
// the probabilities and the output to the input type, so the tolerance is about an ulp. Every case
// runs on the four kernels of its head dim: 16 or 32 queries per warp, each plain and pipelined
// (cp.async double buffering of K and V, whose emulation leaves the destination NaN until the
// wait: a kernel that reads a block before waiting for it, or refills a buffer that a warp still
// reads, gets NaN).
// fused_ops.cu: LayerNorm + modulation and the gated residual, with the modulation read from a
// (b, 6, c) tensor as the transformer block does; one rounding of the f32 result. The KV
// compression conv (depthwise r×r, stride r) with averaging and random weights, on grids that r
// divides and grids it crops.
#define PIXART_CUDA_EMULATE 1
#include "flash_attention.cu"
#include "fused_ops.cu"

#include <algorithm>
#include <random>
#include <string>

namespace {

struct Case {
  const char *name;
  bool f16;
  int b, h, n, m, d;
  bool q_tokens_major;  // Q and the output as (b, n, h, d) instead of (b, h, n, d)
  std::vector<int> kv_lens;
  float score_spread;  // scales Q so that the scores span about ± this
  bool scalar_copies = false;  // element-wise tile copies even where 16-byte ones would do
};

template <typename T>
T round_to(float x) {
  return pixart_cuda::from_f32<T>(x);
}

template <typename T>
float back(T x) {
  return pixart_cuda::to_f32(x);
}

// Relative precision of one rounding to T.
template <typename T>
double ulp() {
  if constexpr (std::is_same_v<T, float>) return 1.2e-7;
  else if constexpr (std::is_same_v<T, __half>) return 1.0 / 2048;
  else return 1.0 / 256;
}

// The kernel of each element type (the pointer argument only picks the overload).
#define PIXART_EMULATED_FUSED(SUFFIX, T)                                                                   \
  void ln_kernel(const pixart_ops::LnParams &p, T *) {                                                    \
    pixart_ln_modulate_##SUFFIX(static_cast<const T *>(p.x), static_cast<const T *>(p.shift),             \
                                static_cast<const T *>(p.scale), static_cast<T *>(p.out), p.mod_sb, p.c,   \
                                p.rows_per_batch, p.eps);                                                  \
  }                                                                                                        \
  void gate_kernel(const pixart_ops::GateParams &p, T *) {                                                \
    pixart_add_gated_##SUFFIX(static_cast<const T *>(p.x), static_cast<const T *>(p.y),                   \
                              static_cast<const T *>(p.gate), static_cast<T *>(p.out), p.total, p.per_batch, \
                              p.gate_sb, p.c);                                                             \
  }                                                                                                        \
  void kv_conv_kernel(const pixart_ops::KvConvParams &p, T *) {                                           \
    pixart_kv_conv_##SUFFIX(static_cast<const T *>(p.x), static_cast<const T *>(p.weight),                \
                            static_cast<const T *>(p.bias), static_cast<T *>(p.out), p.total, p.h, p.w,    \
                            p.h2, p.w2, p.c, p.r);                                                         \
  }                                                                                                        \
  void scale_rows_kernel(const pixart_ops::ScaleRowsParams &p, T *) {                                     \
    pixart_scale_rows_##SUFFIX(static_cast<const T *>(p.w), static_cast<const T *>(p.gate),               \
                               static_cast<const T *>(p.bias), static_cast<T *>(p.out), p.per_batch,       \
                               p.bias_off, p.gate_sb, p.b, p.rows, p.cols, p.vec8);                        \
  }
PIXART_EMULATED_FUSED(f32, float)
PIXART_EMULATED_FUSED(bf16, __nv_bfloat16)
PIXART_EMULATED_FUSED(f16, __half)

// LayerNorm + modulation and the gated residual on b batch rows of n tokens of c channels.
template <typename T>
bool run_fused(const char *name, int b, int n, int c, std::mt19937 &rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const long long rows = (long long)b * n, total = rows * c;
  std::vector<T> x(total), y(total), mods(size_t(b) * 6 * c), ln(total), gated(total);
  for (auto &e : x) e = round_to<T>(3.0f + 2.0f * normal(rng));  // a large mean: the two-pass statistics
  for (auto &e : y) e = round_to<T>(normal(rng));
  for (auto &e : mods) e = round_to<T>(0.5f * normal(rng));
  // shift = mods[:, 0], scale = mods[:, 1], gate = mods[:, 2], each a (b, 1, c) view of stride 6c.
  pixart_ops::LnParams lp{x.data(), mods.data(), mods.data() + c, ln.data(), 6LL * c, c, n, 1e-6f};
  emu::launch(dim3{unsigned(rows), 1, 1}, 256, 0, [&] { ln_kernel(lp, static_cast<T *>(nullptr)); });
  pixart_ops::GateParams gp{x.data(), y.data(), mods.data() + 2 * c, gated.data(), total, (long long)n * c, 6LL * c, c};
  // Fewer threads than elements: the grid-stride loop runs more than once.
  emu::launch(dim3{2, 1, 1}, 256, 0, [&] { gate_kernel(gp, static_cast<T *>(nullptr)); });

  double worst_ln = 0.0, worst_g = 0.0;
  bool finite = true;
  for (long long r = 0; r < rows; ++r) {
    const long long bi = r / n;
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < c; ++i) mean += back(x[r * c + i]);
    mean /= c;
    for (int i = 0; i < c; ++i) var += std::pow(back(x[r * c + i]) - mean, 2);
    const double rstd = 1.0 / std::sqrt(var / c + 1e-6);
    for (int i = 0; i < c; ++i) {
      const double shift = back(mods[bi * 6 * c + i]), scale = back(mods[bi * 6 * c + c + i]);
      const double gate = back(mods[bi * 6 * c + 2 * c + i]);
      const double want_ln = (back(x[r * c + i]) - mean) * rstd * (1.0 + scale) + shift;
      const double want_g = back(x[r * c + i]) + double(back(y[r * c + i])) * gate;
      const double got_ln = back(ln[r * c + i]), got_g = back(gated[r * c + i]);
      finite &= std::isfinite(got_ln) && std::isfinite(got_g);
      // One rounding (at most an ulp of T relative to the value) after f32 arithmetic.
      worst_ln = std::max(worst_ln, std::abs(got_ln - want_ln) / (ulp<T>() * std::abs(want_ln) + 1e-5));
      worst_g = std::max(worst_g, std::abs(got_g - want_g) / (ulp<T>() * std::abs(want_g) + 1e-5));
    }
  }
  const bool ok = finite && worst_ln <= 1.25 && worst_g <= 1.25;
  std::printf("%-44s %s worst error / (ulp·|ref| + 1e-5): ln_modulate %.3f, add_gated %.3f (tolerance 1.25)%s\n", name,
              ok ? "ok  " : "FAIL", worst_ln, worst_g, finite ? "" : " non-finite output");
  return ok;
}

// The per-batch scaled weights and bias of a gated output projection: w (rows, cols), gate (b, rows)
// at batch stride 6·rows (a view into the block's modulation), bias (rows); `vec8`: 8 elements per step.
template <typename T>
bool run_scale_rows(const char *name, int b, int rows, int cols, bool vec8, std::mt19937 &rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const long long per_batch = (long long)rows * cols, bias_off = (b * per_batch + 127) / 128 * 128;
  std::vector<T> w(per_batch), gate(size_t(b) * 6 * rows), bias(rows), out(bias_off + b * rows, round_to<T>(NAN));
  for (auto &e : w) e = round_to<T>(normal(rng));
  for (auto &e : gate) e = round_to<T>(0.5f * normal(rng));
  for (auto &e : bias) e = round_to<T>(normal(rng));
  pixart_ops::ScaleRowsParams p{w.data(), gate.data(), bias.data(), out.data(), per_batch, bias_off, 6LL * rows, b,
                                rows, cols, vec8 ? 1 : 0};
  // Fewer threads than pieces: the grid-stride loops run more than once.
  emu::launch(dim3{2, 1, 1}, 256, 0, [&] { scale_rows_kernel(p, static_cast<T *>(nullptr)); });
  double worst = 0.0;
  bool finite = true;
  for (int bi = 0; bi < b; ++bi)
    for (int r = 0; r < rows; ++r) {
      const double g = back(gate[size_t(bi) * 6 * rows + r]);
      for (int c = 0; c <= cols; ++c) {  // c == cols: the bias
        const double want = c < cols ? back(w[size_t(r) * cols + c]) * g : back(bias[r]) * g;
        const double got = back(c < cols ? out[bi * per_batch + size_t(r) * cols + c] : out[bias_off + bi * rows + r]);
        finite &= std::isfinite(got);
        worst = std::max(worst, std::abs(got - want) / (ulp<T>() * std::abs(want) + 1e-30));
      }
    }
  const bool ok = finite && worst <= 1.0;
  std::printf("%-44s %s worst error / ulp %.3f%s\n", name, ok ? "ok  " : "FAIL", worst, finite ? "" : " non-finite output");
  return ok;
}

// The KV compression conv on b batch rows of an (h, w) grid of c channels, ratio r; `averaging`:
// every weight 1/r² and a zero bias (the "Conv Avg Init"), else random weights and bias.
template <typename T>
bool run_kv_conv(const char *name, int b, int h, int w, int c, int r, bool averaging, std::mt19937 &rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int h2 = h / r, w2 = w / r;
  const long long total = (long long)b * h2 * w2 * c;
  std::vector<T> x(size_t(b) * h * w * c), weight(size_t(r) * r * c), bias(c), out(total, round_to<T>(NAN));
  for (auto &e : x) e = round_to<T>(1.0f + normal(rng));
  for (auto &e : weight) e = round_to<T>(averaging ? 1.0f / float(r * r) : 0.5f * normal(rng));
  for (auto &e : bias) e = round_to<T>(averaging ? 0.0f : normal(rng));
  pixart_ops::KvConvParams p{x.data(), weight.data(), bias.data(), out.data(), total, h, w, h2, w2, c, r};
  // Fewer threads than outputs: the grid-stride loop runs more than once.
  emu::launch(dim3{3, 1, 1}, 256, 0, [&] { kv_conv_kernel(p, static_cast<T *>(nullptr)); });

  double worst = 0.0;
  bool finite = true;
  for (int bi = 0; bi < b; ++bi)
    for (int i = 0; i < h2; ++i)
      for (int j = 0; j < w2; ++j)
        for (int ch = 0; ch < c; ++ch) {
          double want = back(bias[ch]), mag = std::abs(want);
          for (int ky = 0; ky < r; ++ky)
            for (int kx = 0; kx < r; ++kx) {
              const double t = double(back(weight[(size_t(ky) * r + kx) * c + ch])) *
                               back(x[((size_t(bi) * h + i * r + ky) * w + j * r + kx) * c + ch]);
              want += t;
              mag += std::abs(t);
            }
          const double got = back(out[((size_t(bi) * h2 + i) * w2 + j) * c + ch]);
          finite &= std::isfinite(got);
          // One rounding to T of the result, plus f32 accumulation (r² + 1 terms, relative to the
          // terms' magnitudes).
          const double tol = ulp<T>() * std::abs(want) + (r * r + 1) * 1.2e-7 * mag + 1e-6;
          worst = std::max(worst, std::abs(got - want) / tol);
        }
  const bool ok = finite && worst <= 1.0;
  std::printf("%-44s %s worst error / tolerance %.3f%s\n", name, ok ? "ok  " : "FAIL", worst,
              finite ? "" : " non-finite output");
  return ok;
}

// The kernel for the padded head dim, the queries per warp (16 or 32: MT = 1 or 2) and the
// pipelining, as the Rust launcher picks it.
#define PIXART_EMULATED_FA_DP(SUFFIX, DP)                                   \
  case DP:                                                                  \
    if (mt == 1 && !pipe) pixart_flash_attention_##SUFFIX##_d##DP(p);       \
    else if (mt == 1) pixart_flash_attention_##SUFFIX##_d##DP##_pipe(p);    \
    else if (!pipe) pixart_flash_attention_##SUFFIX##_d##DP##_q32(p);       \
    else pixart_flash_attention_##SUFFIX##_d##DP##_q32_pipe(p);             \
    break;
#define PIXART_EMULATED_FA(SUFFIX, T)                                       \
  void kernel(const pixart_fa::Params &p, int dp, int mt, bool pipe, T *) { \
    switch (dp) {                                                           \
      PIXART_EMULATED_FA_DP(SUFFIX, 16)                                     \
      PIXART_EMULATED_FA_DP(SUFFIX, 32)                                     \
      PIXART_EMULATED_FA_DP(SUFFIX, 48)                                     \
      PIXART_EMULATED_FA_DP(SUFFIX, 64)                                     \
      PIXART_EMULATED_FA_DP(SUFFIX, 80)                                     \
      PIXART_EMULATED_FA_DP(SUFFIX, 96)                                     \
      PIXART_EMULATED_FA_DP(SUFFIX, 112)                                    \
      PIXART_EMULATED_FA_DP(SUFFIX, 128)                                    \
      default: emu::fail("head dim out of range");                          \
    }                                                                       \
  }
PIXART_EMULATED_FA(bf16, __nv_bfloat16)
PIXART_EMULATED_FA(f16, __half)

template <typename T>
bool run(const Case &c, int mt, bool pipe, std::mt19937 &rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int b = c.b, h = c.h, n = c.n, m = c.m, d = c.d;
  std::vector<T> q(size_t(b) * h * n * d), k(size_t(b) * h * m * d), v(size_t(b) * h * m * d);
  const float qs = c.score_spread / std::sqrt(float(d));
  for (auto &x : q) x = round_to<T>(normal(rng) * qs);
  for (auto &x : k) x = round_to<T>(normal(rng));
  for (auto &x : v) x = round_to<T>(normal(rng));
  std::vector<T> out(q.size(), round_to<T>(NAN));

  // Strides in elements. K and V are always (b, h, m, d).
  long long q_sb, q_sh, q_sn;
  if (c.q_tokens_major) {
    q_sb = (long long)n * h * d, q_sh = d, q_sn = (long long)h * d;
  } else {
    q_sb = (long long)h * n * d, q_sh = (long long)n * d, q_sn = d;
  }
  auto qi = [&](int bi, int hi, int i) { return bi * q_sb + hi * q_sh + i * q_sn; };
  auto ki = [&](int bi, int hi, int j) { return ((long long)(bi * h + hi) * m + j) * d; };

  pixart_fa::Params p{};
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.out = out.data();
  p.kv_lens = c.kv_lens.empty() ? nullptr : c.kv_lens.data();
  p.heads = h, p.n = n, p.m = m, p.d = d;
  p.q_sb = q_sb, p.q_sh = q_sh, p.q_sn = q_sn;
  p.k_sb = (long long)h * m * d, p.k_sh = (long long)m * d, p.k_sn = d;
  p.v_sb = p.k_sb, p.v_sh = p.k_sh, p.v_sn = p.k_sn;
  p.o_sb = q_sb, p.o_sh = q_sh, p.o_sn = q_sn;
  const double scale = 1.0 / std::sqrt(double(d));
  p.scale_log2 = float(scale * 1.4426950408889634);
  // 16-byte copies when d and every stride are multiples of 8 (the vectors' data is 16-byte aligned).
  p.vec8 = !c.scalar_copies && d % 8 == 0 && q_sh % 8 == 0 && q_sn % 8 == 0 && q_sb % 8 == 0;

  const int dp = (d + 15) / 16 * 16, bq = pixart_fa::block_queries(mt);
  dim3 grid{unsigned((n + bq - 1) / bq), unsigned(h), unsigned(b)};
  const size_t smem = pixart_fa::smem_bytes(dp, 2, mt, pipe);
  emu::launch(grid, 128, smem, [&] { kernel(p, dp, mt, pipe, static_cast<T *>(nullptr)); });

  double max_err = 0.0, max_ref = 0.0;
  bool finite = true;
  for (int bi = 0; bi < b; ++bi) {
    const int len = c.kv_lens.empty() ? m : std::min(c.kv_lens[bi], m);
    for (int hi = 0; hi < h; ++hi)
      for (int i = 0; i < n; ++i) {
        std::vector<double> s(len);
        double mx = -1e300;
        for (int j = 0; j < len; ++j) {
          double acc = 0.0;
          for (int e = 0; e < d; ++e) acc += double(back(q[qi(bi, hi, i) + e])) * back(k[ki(bi, hi, j) + e]);
          s[j] = acc * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0.0;
        for (auto &x : s) sum += (x = std::exp(x - mx));
        for (int e = 0; e < d; ++e) {
          double r = 0.0;
          for (int j = 0; j < len; ++j) r += s[j] / sum * back(v[ki(bi, hi, j) + e]);
          double got = back(out[qi(bi, hi, i) + e]);
          if (!std::isfinite(got)) finite = false;
          max_err = std::max(max_err, std::abs(got - r));
          max_ref = std::max(max_ref, std::abs(r));
        }
      }
  }
  // The probabilities and the output are rounded to T (relative 2^-9 for bf16, 2^-12 for f16
  // each): 1.5 × 2^-8 (bf16) or 1.5 × 2^-11 (f16) of the largest output, at least of 1.
  const double tol = (c.f16 ? 7.5e-4 : 6e-3) * std::max(1.0, max_ref);
  const bool ok = finite && max_err <= tol;
  const std::string name = std::string(c.name) + (mt == 1 ? ", 16 q/warp" : ", 32 q/warp") + (pipe ? ", pipelined" : "");
  std::printf("%-64s %s max|err| %.3e (tolerance %.1e, max|ref| %.3f)%s\n", name.c_str(), ok ? "ok  " : "FAIL",
              max_err, tol, max_ref, finite ? "" : " non-finite output");
  return ok;
}

}  // namespace

int main(int argc, char **argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  std::mt19937 rng(1234);
  const std::vector<Case> cases = {
      // PixArt-Σ's head dim 72 (padded to 80); n, m not multiples of 64.
      {"bf16 d72 self-attention n=m=150", false, 1, 2, 150, 150, 72, false, {}, 4.0f},
      {"bf16 d72 element-wise tile copies", false, 1, 1, 70, 100, 72, false, {}, 4.0f, true},
      // Queries and output read in place from (b, n, h·d); per-row key counts as a caption mask.
      {"bf16 d72 tokens-major q, kv_lens 37/130", false, 2, 2, 70, 130, 72, true, {37, 130}, 4.0f},
      // Scores spanning ±40: later key blocks raise the row max (the rescaling path).
      {"bf16 d128 wide scores, 4 key blocks", false, 1, 2, 17, 250, 128, false, {}, 40.0f},
      {"f16 d16 one key block", true, 1, 2, 64, 20, 16, false, {}, 4.0f},
      {"f16 d72 kv_lens 1/64/65", true, 3, 1, 65, 65, 72, true, {1, 64, 65}, 8.0f},
      // 4, 3 and 0 key blocks (the double buffer alternates, the last block has 8 or 1 keys; no
      // key at all gives zeros).
      {"f16 d64 m=200, kv_lens 200/129/0", true, 3, 1, 70, 200, 64, false, {200, 129, 0}, 8.0f},
      // The tiny test models' head dim; a head dim that is not a multiple of 8 (element copies).
      {"bf16 d8 (padded to 16)", false, 2, 2, 33, 40, 8, false, {}, 4.0f},
      {"bf16 d20 (padded to 32)", false, 1, 2, 40, 70, 20, true, {}, 4.0f},
      // Full key blocks only (no per-element mask), Q fragments re-read from shared memory at
      // 32 queries per warp; n = 200: a second block of 128 queries, partly beyond n.
      {"f16 d96 n=200, m=128 (full key blocks)", true, 1, 1, 200, 128, 96, false, {}, 8.0f},
      // Padded to 112 with element-wise copies; fewer queries than one warp's 32.
      {"bf16 d100 (padded to 112) n=9", false, 1, 2, 9, 90, 100, false, {}, 4.0f},
  };
  bool all = true;
  // Each case at 16 and 32 queries per warp (the kernels _d<DP> and _d<DP>_q32), each plain and
  // pipelined (_pipe).
  for (const auto &c : cases)
    for (int pipe = 0; pipe <= 1; ++pipe)
      for (int mt = 1; mt <= 2; ++mt) {
        if (!only.empty() && std::string(c.name).find(only) == std::string::npos) continue;
        all &= c.f16 ? run<__half>(c, mt, pipe, rng) : run<__nv_bfloat16>(c, mt, pipe, rng);
      }
  struct Fused {
    const char *name;
    int type;  // 0 f32, 1 bf16, 2 f16
    int b, n, c;
  };
  const std::vector<Fused> fused = {
      {"fused ops f32 c=1152 (PixArt-Σ's width)", 0, 1, 2, 1152},
      {"fused ops bf16 c=200, 2 batch rows", 1, 2, 3, 200},
      {"fused ops f16 c=40 (fewer channels than threads)", 2, 2, 2, 40},
      {"fused ops bf16 c=36 (not a multiple of 8: element-wise)", 1, 2, 3, 36},
      {"fused ops f32 c=4104 (more than 16 per thread: element-wise)", 0, 1, 2, 4104},
  };
  for (const auto &f : fused) {
    if (!only.empty() && std::string(f.name).find(only) == std::string::npos) continue;
    all &= f.type == 0   ? run_fused<float>(f.name, f.b, f.n, f.c, rng)
           : f.type == 1 ? run_fused<__nv_bfloat16>(f.name, f.b, f.n, f.c, rng)
                         : run_fused<__half>(f.name, f.b, f.n, f.c, rng);
  }
  struct KvConv {
    const char *name;
    int type;  // 0 f32, 1 bf16, 2 f16
    int b, h, w, c, r;
    bool averaging;
  };
  const std::vector<KvConv> kv = {
      {"kv conv f32 r=2 8x6, c=1152, random", 0, 2, 8, 6, 1152, 2, false},
      {"kv conv f32 r=2 5x7 (cropped), averaging", 0, 2, 5, 7, 100, 2, true},
      {"kv conv bf16 r=2 5x7 (cropped), random", 1, 2, 5, 7, 300, 2, false},
      {"kv conv bf16 r=3 9x6, averaging", 1, 2, 9, 6, 72, 3, true},
      {"kv conv f16 r=3 7x8 (cropped), random", 2, 2, 7, 8, 40, 3, false},
      {"kv conv f16 r=2 4x4, averaging", 2, 2, 4, 4, 260, 2, true},
      {"kv conv f32 r=3 10x11 (cropped), random", 0, 2, 10, 11, 33, 3, false},
  };
  for (const auto &k : kv) {
    if (!only.empty() && std::string(k.name).find(only) == std::string::npos) continue;
    all &= k.type == 0   ? run_kv_conv<float>(k.name, k.b, k.h, k.w, k.c, k.r, k.averaging, rng)
           : k.type == 1 ? run_kv_conv<__nv_bfloat16>(k.name, k.b, k.h, k.w, k.c, k.r, k.averaging, rng)
                         : run_kv_conv<__half>(k.name, k.b, k.h, k.w, k.c, k.r, k.averaging, rng);
  }
  struct ScaleRows {
    const char *name;
    int type;  // 0 f32, 1 bf16, 2 f16
    int b, rows, cols;
    bool vec8;
  };
  const std::vector<ScaleRows> sr = {
      {"scale rows bf16 2x(24, 64), 8 per step", 1, 2, 24, 64, true},
      {"scale rows f16 2x(10, 40), 8 per step", 2, 2, 10, 40, true},
      {"scale rows f32 3x(7, 13), one per step", 0, 3, 7, 13, false},
  };
  for (const auto &k : sr) {
    if (!only.empty() && std::string(k.name).find(only) == std::string::npos) continue;
    all &= k.type == 0   ? run_scale_rows<float>(k.name, k.b, k.rows, k.cols, k.vec8, rng)
           : k.type == 1 ? run_scale_rows<__nv_bfloat16>(k.name, k.b, k.rows, k.cols, k.vec8, rng)
                         : run_scale_rows<__half>(k.name, k.b, k.rows, k.cols, k.vec8, rng);
  }
  std::printf(all ? "all cases passed\n" : "some cases FAILED\n");
  return all ? 0 : 1;
}
