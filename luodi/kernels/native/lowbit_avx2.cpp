// INT8 and INT4 weight-streaming matmuls for CPUs with AVX2 + FMA + F16C and no AVX-512:
// y[M, N] = x[M, K] @ W.T, M small per pass. The AVX2 build of lowbit.cpp's INT8/INT4 kernels, over
// the same packed layouts (built by luodi/kernels/lowbit.py, which documents them and why this is a
// separate source). Nothing here knows about models; there is no BF16 kernel (AVX2 has no bf16 dot).
//
// Numerics are lowbit.cpp's: x is rounded to int8 per block of 32 with one fp32 scale per block
// (ggml's Q8_0; INT8 weight-only also rounds the residual 254x finer), integer dot products run in
// int32, each block's sum is scaled into one fp32 chain per output, blocks front to back, then the
// weight scale and bias; so, as there, a row's outputs do not depend on the rows beside it. AVX2 has
// no u8 x s8 -> s32 dot. INT4 and W8A8 use _mm256_maddubs_epi16 (u8 x s8 -> pairs summed in s16),
// as ggml's AVX2 Q4/Q8 dots do, then _mm256_madd_epi16 against ones (-> s32): INT4 codes (0..15)
// are the unsigned operand, and a block's 8 pair sums fit s16 (8 * 2 * 15 * 127 = 30480), so they
// are widened once per block; for W8A8 the stored q + 128 is turned back into signed q (xor 0x80)
// and its sign moved onto x, |q| x sign(q) * x, each pair within s16 (2 * 128 * 127), so no +128
// correction. Weight-only INT8 multiplies int16 activations instead (int8_tile_wide). Activation
// codes are clamped to [-127, 127] for those bounds (lowbit.cpp's saturating store can give -128 in
// the rare rounding of a residual to exactly -128).
//
// Tiles are 16 output rows; a ymm holds 8, so each tile is processed as two halves of 8 rows, the
// first half streaming the tile from memory, the second reading it back from L1/L2.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <torch/csrc/utils/pybind.h>

#include "kernel_api.h"
#include "lowbit_call.h"
#include "lowbit_common.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using luodi::Call;
using luodi::dispatch_dtype;
using luodi::for_each_pass;
using luodi::kMaxRows;  // activation rows per pass (lowbit.cpp's interleaving)
using luodi::prepare;
using luodi::tiles_per_task;

constexpr int64_t kBlock = 32;     // activation quantization block (ggml QK8_0)
constexpr int64_t kTile = 16;      // output rows per tile in the shared layouts
constexpr int64_t kHalf = 8;       // output rows per ymm of int32 / fp32 lanes
// Tiles a decode pass of M rows streams at once, as in lowbit.cpp (16 ymm registers allow fewer).
constexpr int tile_streams(int rows) { return rows == 1 ? 2 : 1; }
constexpr int64_t kPrefetchBytes = 8 << 10;  // as lowbit.cpp: software prefetch distance
constexpr float kFineRatio = 254.f;  // INT8 two-term: residual steps are scale / 254

inline void prefetch(const uint8_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
}

// -- activation quantization (layout as lowbit.cpp's QuantizedRows) ------------------------------
struct QuantizedRows {
  int64_t rows = 0, kp = 0, sum_block = 0;
  std::vector<int8_t> q, fine;
  std::vector<int16_t> wide;  // two-term: 254 * q + fine, the same x in one int16 (steps of scale / 254)
  std::vector<float> scale, sum;
};

struct Pass {
  const int8_t* q;
  const int8_t* fine;
  const int16_t* wide;
  const float* scale;
  const float* sum;
  int64_t m0;
};

inline Pass pass_at(const QuantizedRows& xq, int64_t m0) {
  return Pass{xq.q.data() + m0 * xq.kp, xq.fine.empty() ? nullptr : xq.fine.data() + m0 * xq.kp,
              xq.wide.empty() ? nullptr : xq.wide.data() + m0 * xq.kp, xq.scale.data() + m0 * (xq.kp / kBlock), xq.sum.data() + m0 * (xq.kp / xq.sum_block), m0};
}

enum class ActQuant { kBlock, kBlockTwoTerm, kRow };

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline float amax32(const float* p) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m = _mm256_and_ps(_mm256_loadu_ps(p), abs_mask);
  for (int j = 1; j < 4; ++j) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(p + 8 * j), abs_mask));
  return hmax(m);
}

// 32 int32 -> 32 int8 in order, saturated, then clamped to [-127, 127] (see the header comment).
inline __m256i pack_codes(const __m256i* v) {
  const __m256i lo = _mm256_packs_epi32(v[0], v[1]);  // per 128-bit lane: v0 4, v1 4
  const __m256i hi = _mm256_packs_epi32(v[2], v[3]);
  const __m256i bytes = _mm256_packs_epi16(lo, hi);  // dwords: v0 v1 v2 v3 (first 4 each), then the last 4
  const __m256i ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  return _mm256_max_epi8(ordered, _mm256_set1_epi8(-127));
}

template <typename T>
void widen_row(const T* x, int64_t k, float* out, int64_t kp) {
  for (int64_t i = 0; i < k; ++i) out[i] = static_cast<float>(x[i]);  // exact for bf16 / fp16
  std::fill(out + k, out + kp, 0.f);
}

// Quantizes row m of x into its pass's interleaved slots, as lowbit.cpp's quantize_row does.
template <typename T>
void quantize_row(const T* x, int64_t m, int64_t k, QuantizedRows& out, ActQuant mode) {
  const bool per_row = mode == ActQuant::kRow, two_term = mode == ActQuant::kBlockTwoTerm;
  const int64_t kp = out.kp, num_blocks = kp / kBlock, num_sums = kp / out.sum_block;
  const int64_t m0 = m / kMaxRows * kMaxRows, pass_rows = std::min<int64_t>(kMaxRows, out.rows - m0), r = m - m0;
  std::vector<float> row(kp);
  widen_row(x + m * k, k, row.data(), kp);
  float row_amax = 0.f;
  if (per_row) {
    for (int64_t k0 = 0; k0 < kp; k0 += kBlock) row_amax = std::max(row_amax, amax32(row.data() + k0));
  }
  // torch: scale = max(amax / 127, smallest normal), so an all-zero row gets q = 0
  const float row_scale = std::max(row_amax / 127.f, std::numeric_limits<float>::min());
  const auto store_block = [&](const __m256i* codes, std::vector<int8_t>& dst, int64_t k0) {
    alignas(32) int8_t block[kBlock];
    _mm256_store_si256(reinterpret_cast<__m256i*>(block), pack_codes(codes));
    int64_t sum = 0;
    for (int64_t c = 0; c < kBlock / 4; ++c) {
      std::memcpy(dst.data() + m0 * kp + ((k0 / 4 + c) * pass_rows + r) * 4, block + c * 4, 4);
    }
    for (int j = 0; j < kBlock; ++j) sum += block[j];  // the stored values
    return sum;
  };
  std::vector<double> sums(num_sums, 0.0);
  for (int64_t b = 0; b < num_blocks; ++b) {
    const int64_t k0 = b * kBlock;
    __m256 v[4];
    __m256i q[4];
    for (int j = 0; j < 4; ++j) v[j] = _mm256_loadu_ps(row.data() + k0 + 8 * j);
    float d;
    if (per_row) {  // SmoothQuant's per-token rounding: divide, round half to even
      for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(_mm256_div_ps(v[j], _mm256_set1_ps(row_scale)));
      d = row_scale;
    } else {
      const float amax = amax32(row.data() + k0);
      const __m256 inv = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
      for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inv));
      d = amax / 127.f;
    }
    const int64_t q_sum = store_block(q, out.q, k0);
    int64_t fine_sum = 0;
    if (two_term) {  // the residual x - d * q, in steps of d / kFineRatio
      const __m256 dv = _mm256_set1_ps(d), inv_fine = _mm256_set1_ps(d > 0.f ? kFineRatio / d : 0.f);
      __m256i f[4];
      for (int j = 0; j < 4; ++j) {
        f[j] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_fnmadd_ps(_mm256_cvtepi32_ps(q[j]), dv, v[j]), inv_fine));
      }
      fine_sum = store_block(f, out.fine, k0);
      const int64_t at = m0 * kp + (k0 / 4 * pass_rows + r) * 4;
      for (int64_t c = 0; c < kBlock / 4; ++c) {
        for (int64_t j = 0; j < 4; ++j) {
          const int64_t i = at + c * pass_rows * 4 + j;
          out.wide[i] = static_cast<int16_t>(static_cast<int>(kFineRatio) * out.q[i] + out.fine[i]);
        }
      }
    }
    out.scale[m0 * num_blocks + b * pass_rows + r] = d;
    sums[k0 / out.sum_block] += static_cast<double>(d) * static_cast<double>(q_sum) +
                                static_cast<double>(d / kFineRatio) * static_cast<double>(fine_sum);
  }
  for (int64_t j = 0; j < num_sums; ++j) out.sum[m0 * num_sums + j * pass_rows + r] = static_cast<float>(sums[j]);
}

template <typename T>
QuantizedRows quantize_rows(const T* x, int64_t rows, int64_t k, int64_t kp, int64_t sum_block, ActQuant mode) {
  QuantizedRows out;
  out.rows = rows, out.kp = kp, out.sum_block = sum_block;
  out.q.assign(rows * kp, 0);
  if (mode == ActQuant::kBlockTwoTerm) out.fine.assign(rows * kp, 0), out.wide.assign(rows * kp, 0);
  out.scale.assign(rows * (kp / kBlock), 0.f);
  out.sum.assign(rows * (kp / sum_block), 0.f);
  at::parallel_for(0, rows, std::max<int64_t>(1, (64 << 10) / kp), [&](int64_t m_begin, int64_t m_end) {
    for (int64_t m = m_begin; m < m_end; ++m) quantize_row(x, m, k, out, mode);
  });
  return out;
}

inline __m256i broadcast4(const int8_t* x) {
  int32_t v;
  std::memcpy(&v, x, 4);
  return _mm256_set1_epi32(v);
}

// Stores 8 fp32 lanes to y[0 .. count) in T (bf16 / fp16 round to nearest even, as torch does).
template <typename T>
inline void store8(T* y, __m256 v, int64_t count) {
  alignas(32) float out[kHalf];
  _mm256_store_ps(out, v);
  for (int64_t i = 0; i < count; ++i) y[i] = static_cast<T>(out[i]);
}

inline __m256 load_bias(const float* bias, int64_t count) {
  if (!bias) return _mm256_setzero_ps();
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(bias, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), lane));
}

// -- INT8 weights ---------------------------------------------------------------------------------
// Tiles: NT tiles (each two halves of 8 output rows; interleaved streams as in lowbit.cpp) x M
// activation rows; w points at the first tile's [kp/4][16][4] bytes of q + 128 (the next follow
// tile_bytes apart), turned back into signed q (xor 0x80) as they are loaded.
//
// W8A8 (one int8 rounding of x per row): |q| (as u8) x sign(q) * x through _mm256_maddubs_epi16.
template <int M, int NT, typename T>
inline void int8_tile_row(const uint8_t* w, int64_t tile_bytes, const Pass& x, int64_t kp, const float* wscale,
                          const float* bias, T* y, int64_t n_out, int64_t n0) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  for (int64_t h = 0; h < kTile / kHalf; ++h) {
    if (n_out - n0 - h * kHalf <= 0) break;
    __m256 acc[NT][M];
    for (int j = 0; j < NT; ++j)
      for (int m = 0; m < M; ++m) acc[j][m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < kp / kBlock; ++b) {
      const int8_t* xb = x.q + b * kBlock * M;
      for (int j = 0; j < NT; ++j) {
        const uint8_t* wb = w + j * tile_bytes + b * kBlock * kTile + h * 32;
        __m256i dot[M];
        for (int m = 0; m < M; ++m) dot[m] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) {
          const __m256i q = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + c * 64)), flip);
          if (h == 0) prefetch(wb + c * 64);
          const __m256i q_abs = _mm256_abs_epi8(q);
          for (int m = 0; m < M; ++m) {
            const __m256i p = _mm256_maddubs_epi16(q_abs, _mm256_sign_epi8(broadcast4(xb + (c * M + m) * 4), q));
            dot[m] = _mm256_add_epi32(dot[m], _mm256_madd_epi16(p, ones));
          }
        }
        for (int m = 0; m < M; ++m) {
          acc[j][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[m]), _mm256_set1_ps(x.scale[b * M + m]), acc[j][m]);
        }
      }
    }
    for (int j = 0; j < NT; ++j) {
      const int64_t r0 = n0 + j * kTile + h * kHalf, count = std::min<int64_t>(kHalf, n_out - r0);
      if (count <= 0) break;
      const __m256 scale = _mm256_loadu_ps(wscale + r0);  // scales are padded to whole tiles
      const __m256 add = load_bias(bias ? bias + r0 : nullptr, count);
      for (int m = 0; m < M; ++m) store8(y + (x.m0 + m) * n_out + r0, _mm256_fmadd_ps(acc[j][m], scale, add), count);
    }
  }
}

// Weight-only INT8 (x rounded in two terms): x = scale / 254 * (254 q + fine) exactly, and
// 254 q + fine fits an int16, so the two products become one: weights widened to int16 and
// _mm256_madd_epi16 (each int32 lane sums one row's pair of k), pairs folded per block by hadd. A
// block's int32 holds at most 32 * 128 * 32512 < 2^31. Measured against two maddubs products (q,
// then fine) per weight vector: 5-8 % faster at M = 1, 13-24 % at M = 4 (1 thread, CPU time,
// 576 x 1536, 1536 x 576, 2048 x 2048).
template <int M, int NT, typename T>
inline void int8_tile_wide(const uint8_t* w, int64_t tile_bytes, const Pass& x, int64_t kp, const float* wscale,
                           const float* bias, T* y, int64_t n_out, int64_t n0) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int64_t h = 0; h < kTile / kHalf; ++h) {
    if (n_out - n0 - h * kHalf <= 0) break;
    __m256 acc[NT][M];
    for (int j = 0; j < NT; ++j)
      for (int m = 0; m < M; ++m) acc[j][m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < kp / kBlock; ++b) {
      const int16_t* xb = x.wide + b * kBlock * M;
      for (int j = 0; j < NT; ++j) {
        const uint8_t* wb = w + j * tile_bytes + b * kBlock * kTile + h * 32;
        __m256i lo[M], hi[M];  // rows 0-3 and 4-7 of the half, two int32 lanes a row
        for (int m = 0; m < M; ++m) lo[m] = hi[m] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) {
          const __m256i q = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + c * 64)), flip);
          if (h == 0) prefetch(wb + c * 64);
          const __m256i w_lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
          const __m256i w_hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1));
          for (int m = 0; m < M; ++m) {
            int64_t four;
            std::memcpy(&four, xb + (c * M + m) * 4, 8);
            const __m256i xv = _mm256_set1_epi64x(four);
            lo[m] = _mm256_add_epi32(lo[m], _mm256_madd_epi16(w_lo, xv));
            hi[m] = _mm256_add_epi32(hi[m], _mm256_madd_epi16(w_hi, xv));
          }
        }
        for (int m = 0; m < M; ++m) {
          // hadd gives rows 0 1 4 5 | 2 3 6 7; the 64-bit permute puts them in order
          const __m256i rows = _mm256_permute4x64_epi64(_mm256_hadd_epi32(lo[m], hi[m]), 0xD8);
          acc[j][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows), _mm256_set1_ps(x.scale[b * M + m] / kFineRatio),
                                      acc[j][m]);
        }
      }
    }
    for (int j = 0; j < NT; ++j) {
      const int64_t r0 = n0 + j * kTile + h * kHalf, count = std::min<int64_t>(kHalf, n_out - r0);
      if (count <= 0) break;
      const __m256 scale = _mm256_loadu_ps(wscale + r0);
      const __m256 add = load_bias(bias ? bias + r0 : nullptr, count);
      for (int m = 0; m < M; ++m) store8(y + (x.m0 + m) * n_out + r0, _mm256_fmadd_ps(acc[j][m], scale, add), count);
    }
  }
}

// The driver's INT8 tile: weight-only (two-term) x takes the widened kernel, W8A8 the per-row one.
template <int M, int NT, bool TwoTerm, typename T>
inline void int8_tile(const uint8_t* w, int64_t tile_bytes, const Pass& x, int64_t kp, const float* wscale,
                      const float* bias, T* y, int64_t n_out, int64_t n0) {
  if constexpr (TwoTerm) {
    int8_tile_wide<M, NT>(w, tile_bytes, x, kp, wscale, bias, y, n_out, n0);
  } else {
    int8_tile_row<M, NT>(w, tile_bytes, x, kp, wscale, bias, y, n_out, n0);
  }
}

// -- INT4 weights ---------------------------------------------------------------------------------
constexpr int64_t kInt4StepBytes = 2 * kTile * 4;  // coded tile header: fp32 scale and min steps

inline int64_t int4_group_bytes(int64_t group_size, bool coded) {
  return group_size * kTile / 2 + (coded ? 2 : 4) * kTile;
}

// Half h's 8 scales and 8 mins of a group: fp16 values, or codes times the tile's steps.
template <bool Coded>
inline void int4_group_grid(const uint8_t* p, int64_t h, __m256 scale_step, __m256 min_step, __m256& scale,
                            __m256& min) {
  if constexpr (Coded) {
    const __m128i scale_codes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + h * kHalf));
    const __m128i min_codes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + kTile + h * kHalf));
    scale = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(scale_codes)), scale_step);
    min = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(min_codes)), min_step);
  } else {
    scale = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + h * kHalf * 2)));
    min = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * kTile + h * kHalf * 2)));
  }
}

template <int M, int NT, bool Coded, typename T>
inline void int4_tile(const uint8_t* w, int64_t tile_bytes, const Pass& x, int64_t kp, int64_t group_size,
                      const float* bias, T* y, int64_t n_out, int64_t n0) {
  const int64_t blocks_per_group = group_size / kBlock, group_bytes = int4_group_bytes(group_size, Coded);
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const uint8_t* steps = w;
  if constexpr (Coded) w += kInt4StepBytes;
  for (int64_t h = 0; h < kTile / kHalf; ++h) {
    if (n_out - n0 - h * kHalf <= 0) break;
    __m256 scale_step[NT], min_step[NT], acc[NT][M];
    for (int j = 0; j < NT; ++j) {
      scale_step[j] = min_step[j] = _mm256_setzero_ps();
      if constexpr (Coded) {
        const float* tile_steps = reinterpret_cast<const float*>(steps + j * tile_bytes);
        scale_step[j] = _mm256_loadu_ps(tile_steps + h * kHalf);
        min_step[j] = _mm256_loadu_ps(tile_steps + kTile + h * kHalf);
      }
      for (int m = 0; m < M; ++m) acc[j][m] = _mm256_setzero_ps();
    }
    for (int64_t g = 0; g < kp / group_size; ++g) {
      for (int j = 0; j < NT; ++j) {
        const uint8_t* wg = w + j * tile_bytes + g * group_bytes;
        const uint8_t* grid = wg + group_size * kTile / 2;
        __m256 scale, min;
        int4_group_grid<Coded>(grid, h, scale_step[j], min_step[j], scale, min);
        if (h == 0) prefetch(grid);
        for (int64_t bg = 0; bg < blocks_per_group; ++bg) {
          const int64_t b = g * blocks_per_group + bg;
          const int8_t* xb = x.q + b * kBlock * M;
          __m256i dot[M];  // int16 pair sums: a block's 8 fit (header comment)
          for (int m = 0; m < M; ++m) dot[m] = _mm256_setzero_si256();
#pragma GCC unroll 4
          for (int c = 0; c < 4; ++c) {
            const uint8_t* wc = wg + (bg * 4 + c) * 64;
            const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wc + h * 32));
            if (h == 0) prefetch(wc);
            const __m256i lo = _mm256_and_si256(packed, low_nibbles);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_nibbles);
            for (int m = 0; m < M; ++m) {
              dot[m] = _mm256_add_epi16(dot[m], _mm256_maddubs_epi16(lo, broadcast4(xb + (2 * c * M + m) * 4)));
              dot[m] = _mm256_add_epi16(dot[m], _mm256_maddubs_epi16(hi, broadcast4(xb + ((2 * c + 1) * M + m) * 4)));
            }
          }
          for (int m = 0; m < M; ++m) {
            const __m256 block_scale = _mm256_mul_ps(scale, _mm256_set1_ps(x.scale[b * M + m]));
            acc[j][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(dot[m], ones)), block_scale, acc[j][m]);
          }
        }
        // w = q * scale + min: the group adds min * sum(rounded x), as in lowbit.cpp.
        for (int m = 0; m < M; ++m) acc[j][m] = _mm256_fmadd_ps(min, _mm256_set1_ps(x.sum[g * M + m]), acc[j][m]);
      }
    }
    for (int j = 0; j < NT; ++j) {
      const int64_t r0 = n0 + j * kTile + h * kHalf, count = std::min<int64_t>(kHalf, n_out - r0);
      if (count <= 0) break;
      const __m256 add = load_bias(bias ? bias + r0 : nullptr, count);
      for (int m = 0; m < M; ++m) store8(y + (x.m0 + m) * n_out + r0, _mm256_add_ps(acc[j][m], add), count);
    }
  }
}

// -- the calls ----------------------------------------------------------------------------------
#include "lowbit_x86_driver.h"

bool cpu_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

}  // namespace

constexpr auto kNoGil = py::call_guard<py::gil_scoped_release>();

// The layer stack's table (kernel_api.h). No BF16 kernel below AVX-512 BF16: bf16_linear is null, and
// the stack takes no bf16 layer with this table.
const luodi::LowbitApi kApi{&int8_linear, &int4_linear, nullptr};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_linear", &int8_linear, kNoGil, "y = x @ W.T for a packed INT8 weight (AVX2)");
  m.def("int4_linear", &int4_linear, kNoGil, "y = x @ W.T for a packed INT4 weight (AVX2)");
  m.def("cpu_supported", &cpu_supported, "whether this CPU has the instructions the kernels use");
  m.def("api", [] { return reinterpret_cast<uintptr_t>(&kApi); }, "the address of the LowbitApi table (kernel_api.h)");
}
