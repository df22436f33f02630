// Weight-streaming matmuls for CPU inference: y[M, N] = x[M, K] @ W.T with INT8 or INT4 weights
// (AVX-512 VNNI; M small per pass) or BF16 weights (AVX512-BF16, any M). Built twice: with
// -march=native on a BF16 CPU (the avx512bf16 level), and for AVX-512 VNNI alone (Cascade Lake,
// Ice Lake: the avx512vnni level), where everything under __AVX512BF16__ is left out. Owns the inner loops only:
// the packed weight layouts are built by luodi/kernels/lowbit.py (which documents them), and
// nothing here knows about models.
//
// Numerics follow ggml's Q8_0 dot products (ggml-quants.c, quantize_row_q8_0 and
// ggml_vec_dot_q4_1_q8_1): each activation row is quantized to int8 in blocks of 32 with one fp32
// scale per block, integer dot products run in int32 (_mm512_dpbusd_epi32: u8 x s8 -> s32), and
// each block's int32 sum is scaled into an fp32 accumulator. The weights are always the unsigned
// operand: INT4 codes are 0..15 as stored; INT8 codes are stored offset by +128 and the offset's
// contribution, 128 * sum(x_rounded), is subtracted once per output row. Sums of x that multiply
// weight terms (that offset, and the INT4 min) use the rounded x too, so every output is exactly
// x_rounded . W up to fp32 summation: the error weights are W itself, not q * scale. INT8
// weight-only adds a second term, the rounding residual rounded 254x finer (QuantizedRows::fine).
//
// Tiles: 16 output rows share one zmm (one int32 lane per row), each lane reading 4 consecutive k.
// INT8 tile: [Kp / 4][16 rows][4 k] bytes. INT4 tile, per group of g columns: [g / 8][16 rows][4]
// bytes (low nibble = k, high nibble = k + 4 within each run of 8), then 16 fp16 scales and 16
// fp16 mins; or, coded, a tile header of 16 fp32 scale steps and 16 fp32 min steps, and per group
// 16 uint8 scale codes and 16 int8 min codes (scale = code * step). A thread streams whole tiles
// front to back, so weights are read once, sequentially; at decode several tiles at a time, as that
// many interleaved streams (tile_streams, int8_tile).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <torch/csrc/utils/pybind.h>  // lighter than torch/extension.h: halves the build time

#include "avx512_lanes.h"
#include "kernel_api.h"
#include "lowbit_call.h"
#include "lowbit_common.h"

#include <algorithm>
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
using luodi::kMaxRows;
using luodi::load16;
using luodi::prepare;
using luodi::store16;
using luodi::tail_mask;
using luodi::tiles_per_task;

constexpr int64_t kBlock = 32;       // activation quantization block (ggml QK8_0)
constexpr int64_t kTile = 16;        // output rows per tile: the int32 lanes of a zmm
// Tiles a decode pass of M rows streams at once (int8_tile): as many as the accumulators allow.
constexpr int tile_streams(int rows) { return rows == 1 ? 4 : rows == 2 ? 2 : 1; }
// Software prefetch distance. The hardware prefetchers alone left INT4 (more work per byte than
// INT8) at half the single-core DRAM rate; 8-16 KB ahead brought both to it (measured, 1 thread).
constexpr int64_t kPrefetchBytes = 8 << 10;
// Batch-invariant mode (set_batch_invariant): BF16 decode sums each output in the prompt kernel's
// order. Off by default: it measured slower here (see luodi/kernels/lowbit.py).
bool g_batch_invariant = false;

inline void prefetch(const uint8_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
}

// -- activation quantization ----------------------------------------------------------------------
// x rows quantized per 32-column block and zero-padded to kp columns. Rows are handled in passes of
// up to 8; within a pass the layout interleaves the rows so that a tile loop reads all its
// activations from one pointer with constant offsets:
//   q:     [kp / 4][rows in pass][4]      int8, x ~= scale * q
//   scale: [kp / 32][rows in pass]        fp32
//   sum:   [kp / sum_block][rows in pass] sums of the rounded x (INT4: per group; INT8: per row)
//   fine:  as q, in two-term mode: the rounding residual, x - scale * q ~= (scale / kFineRatio) * fine
// Two terms (INT8 weight-only): one int8 rounding of x cost SmolLM2 0.10 pp of perplexity over
// torch's unrounded bf16 path; the residual's own rounding is kFineRatio times finer, and a second
// VNNI product per loaded weight vector is free while decode waits on memory.
constexpr float kFineRatio = 254.f;  // |residual| <= scale / 2 maps onto [-127, 127]

struct QuantizedRows {
  int64_t rows = 0, kp = 0, sum_block = 0;
  std::vector<int8_t> q, fine;
  std::vector<float> scale, sum;
};

// One pass of up to 8 rows, pointers already offset to it.
struct Pass {
  const int8_t* q;
  const int8_t* fine;  // null unless two-term
  const float* scale;
  const float* sum;
  int64_t m0;
};

inline Pass pass_at(const QuantizedRows& xq, int64_t m0) {
  return Pass{xq.q.data() + m0 * xq.kp, xq.fine.empty() ? nullptr : xq.fine.data() + m0 * xq.kp,
              xq.scale.data() + m0 * (xq.kp / kBlock), xq.sum.data() + m0 * (xq.kp / xq.sum_block), m0};
}

enum class ActQuant { kBlock, kBlockTwoTerm, kRow };

inline float block_amax(__m512 v0, __m512 v1) {
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(v0, abs_mask), _mm512_and_ps(v1, abs_mask)));
}

// Quantizes row m of x into its pass's interleaved slots (rows are independent). Each block of 32
// gets its own scale (ggml's Q8_0); with `per_row`, the whole row shares one, max|x_row| / 127, and
// q = round(x / scale) exactly as SmoothQuant's per-token quantization computes it in torch
// (luodi.quant.w8a8: divide, round half to even).
template <typename T>
void quantize_row(const T* x, int64_t m, int64_t k, QuantizedRows& out, ActQuant mode) {
  const bool per_row = mode == ActQuant::kRow, two_term = mode == ActQuant::kBlockTwoTerm;
  const int64_t kp = out.kp, num_blocks = kp / kBlock, num_sums = kp / out.sum_block;
  const int64_t m0 = m / kMaxRows * kMaxRows, pass_rows = std::min<int64_t>(kMaxRows, out.rows - m0), r = m - m0;
  const T* xr = x + m * k;
  float row_amax = 0.f;
  if (per_row) {
    for (int64_t k0 = 0; k0 < k; k0 += kBlock) {
      row_amax = std::max(row_amax, block_amax(load16(xr + k0, tail_mask(k - k0)),
                                               load16(xr + k0 + 16, tail_mask(k - k0 - 16))));
    }
  }
  // torch: scale = max(amax / 127, smallest normal), so an all-zero row gets q = 0
  const float row_scale = std::max(row_amax / 127.f, std::numeric_limits<float>::min());
  // One block of 32 rounded values into the pass's interleaved layout of `dst`; returns their sum.
  const auto store_block = [&](__m512i lo, __m512i hi, std::vector<int8_t>& dst, int64_t k0) {
    alignas(64) int8_t block[kBlock];
    _mm_store_si128(reinterpret_cast<__m128i*>(block), _mm512_cvtsepi32_epi8(lo));
    _mm_store_si128(reinterpret_cast<__m128i*>(block + 16), _mm512_cvtsepi32_epi8(hi));
    int64_t sum = 0;
    for (int64_t c = 0; c < kBlock / 4; ++c) {
      std::memcpy(dst.data() + m0 * kp + ((k0 / 4 + c) * pass_rows + r) * 4, block + c * 4, 4);
    }
    for (int j = 0; j < kBlock; ++j) sum += block[j];  // the stored (saturated) values
    return sum;
  };
  std::vector<double> sums(num_sums, 0.0);
  for (int64_t b = 0; b < num_blocks; ++b) {
    const int64_t k0 = b * kBlock;
    const __m512 v0 = load16(xr + k0, tail_mask(k - k0));
    const __m512 v1 = load16(xr + k0 + 16, tail_mask(k - k0 - 16));
    __m512i i0, i1;  // cvtps rounds to nearest even
    float d;
    if (per_row) {
      const __m512 scale = _mm512_set1_ps(row_scale);
      i0 = _mm512_cvtps_epi32(_mm512_div_ps(v0, scale));
      i1 = _mm512_cvtps_epi32(_mm512_div_ps(v1, scale));
      d = row_scale;
    } else {
      const float amax = block_amax(v0, v1);
      const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
      i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv));
      i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
      d = amax / 127.f;
    }
    const int64_t q_sum = store_block(i0, i1, out.q, k0);
    int64_t fine_sum = 0;
    if (two_term) {  // the residual x - d * q, in steps of d / kFineRatio
      const __m512 dv = _mm512_set1_ps(d);
      const __m512 inv_fine = _mm512_set1_ps(d > 0.f ? kFineRatio / d : 0.f);
      const __m512i f0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_fnmadd_ps(_mm512_cvtepi32_ps(i0), dv, v0), inv_fine));
      const __m512i f1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_fnmadd_ps(_mm512_cvtepi32_ps(i1), dv, v1), inv_fine));
      fine_sum = store_block(f0, f1, out.fine, k0);
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
  if (mode == ActQuant::kBlockTwoTerm) out.fine.assign(rows * kp, 0);
  out.scale.assign(rows * (kp / kBlock), 0.f);
  out.sum.assign(rows * (kp / sum_block), 0.f);
  // A few decode rows are quantized inline (a thread hand-off costs more); prompt batches in parallel.
  at::parallel_for(0, rows, std::max<int64_t>(1, (64 << 10) / kp), [&](int64_t m_begin, int64_t m_end) {
    for (int64_t m = m_begin; m < m_end; ++m) quantize_row(x, m, k, out, mode);
  });
  return out;
}

// acc += u8 w . s8 x per int32 lane, with the 4 int8 activations at x broadcast to all 16 lanes.
inline __m512i dot_broadcast(__m512i acc, __m512i w, const int8_t* x) {
  int32_t v;
  std::memcpy(&v, x, 4);
  return _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(v));
}

// -- INT8 weights ---------------------------------------------------------------------------------
// NT tiles of 16 output rows x M activation rows. w points at the first tile's [kp/4][16][4] bytes,
// the next tiles follow tile_bytes apart. Each tile is read as its own stream, interleaved block by
// block: one stream per thread left decode at ~75 % of the read rate that several reach (the
// DRAM pages of several streams are open at once), and each output still sums in the same order.
// TwoTerm: x also carries its rounding residual (Pass::fine), multiplied by the same weights.
template <int M, int NT, bool TwoTerm, typename T>
inline void int8_tile(const uint8_t* w, int64_t tile_bytes, const Pass& x, int64_t kp, const float* wscale,
                      const float* bias, T* y, int64_t n_out, int64_t n0) {
  const __m512 fine_ratio = _mm512_set1_ps(1.f / kFineRatio);
  __m512 acc[NT][M];
  for (int j = 0; j < NT; ++j)
    for (int m = 0; m < M; ++m) acc[j][m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < kp / kBlock; ++b) {
    const int8_t* xb = x.q + b * kBlock * M;
    const int8_t* fb = TwoTerm ? x.fine + b * kBlock * M : nullptr;
    for (int j = 0; j < NT; ++j) {
      const uint8_t* wb = w + j * tile_bytes + b * kBlock * kTile;
      __m512i dot[M], fine[M];
      for (int m = 0; m < M; ++m) dot[m] = fine[m] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) {
        const __m512i wv = _mm512_loadu_si512(wb + c * 64);
        prefetch(wb + c * 64);
        for (int m = 0; m < M; ++m) {
          dot[m] = dot_broadcast(dot[m], wv, xb + (c * M + m) * 4);
          if constexpr (TwoTerm) fine[m] = dot_broadcast(fine[m], wv, fb + (c * M + m) * 4);
        }
      }
      for (int m = 0; m < M; ++m) {
        __m512 sum = _mm512_cvtepi32_ps(dot[m]);
        if constexpr (TwoTerm) sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(fine[m]), fine_ratio, sum);
        acc[j][m] = _mm512_fmadd_ps(sum, _mm512_set1_ps(x.scale[b * M + m]), acc[j][m]);
      }
    }
  }
  for (int j = 0; j < NT; ++j) {
    const int64_t r0 = n0 + j * kTile;
    const __mmask16 mask = tail_mask(n_out - r0);
    const __m512 scale = _mm512_maskz_loadu_ps(mask, wscale + r0);
    const __m512 add = bias ? _mm512_maskz_loadu_ps(mask, bias + r0) : _mm512_setzero_ps();
    for (int m = 0; m < M; ++m) {
      // Undo the +128 weight offset: (q + 128) . x = q . x + 128 * sum(x).
      const __m512 v = _mm512_sub_ps(acc[j][m], _mm512_set1_ps(128.f * x.sum[m]));
      store16(y + (x.m0 + m) * n_out + r0, _mm512_fmadd_ps(v, scale, add), mask);
    }
  }
}

// -- INT4 weights ---------------------------------------------------------------------------------
constexpr int64_t kInt4StepBytes = 2 * kTile * 4;  // coded tile header: fp32 scale and min steps

inline int64_t int4_group_bytes(int64_t group_size, bool coded) {
  return group_size * kTile / 2 + (coded ? 2 : 4) * kTile;
}

// A group's 16 scales and 16 mins, from fp16 values or from codes times the tile's steps.
template <bool Coded>
inline void int4_group_grid(const uint8_t* p, __m512 scale_step, __m512 min_step, __m512& scale, __m512& min) {
  if constexpr (Coded) {
    const __m128i scale_codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i min_codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + kTile));
    scale = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(scale_codes)), scale_step);
    min = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(min_codes)), min_step);
  } else {
    scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    min = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * kTile)));
  }
}

// NT tiles of 16 output rows x M activation rows (streams as in int8_tile), groups of g columns,
// each followed by its grid.
template <int M, int NT, bool Coded, typename T>
inline void int4_tile(const uint8_t* w, int64_t tile_bytes, const Pass& x, int64_t kp, int64_t group_size,
                      const float* bias, T* y, int64_t n_out, int64_t n0) {
  const int64_t blocks_per_group = group_size / kBlock;
  const int64_t group_bytes = int4_group_bytes(group_size, Coded);
  const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
  __m512 scale_step[NT], min_step[NT], acc[NT][M];
  for (int j = 0; j < NT; ++j) {
    scale_step[j] = min_step[j] = _mm512_setzero_ps();
    if constexpr (Coded) {
      scale_step[j] = _mm512_loadu_ps(reinterpret_cast<const float*>(w + j * tile_bytes));
      min_step[j] = _mm512_loadu_ps(reinterpret_cast<const float*>(w + j * tile_bytes) + kTile);
    }
    for (int m = 0; m < M; ++m) acc[j][m] = _mm512_setzero_ps();
  }
  if constexpr (Coded) w += kInt4StepBytes;
  for (int64_t g = 0; g < kp / group_size; ++g) {
    for (int j = 0; j < NT; ++j) {
      const uint8_t* wg = w + j * tile_bytes + g * group_bytes;
      const uint8_t* grid = wg + group_size * kTile / 2;
      __m512 scale, min;
      int4_group_grid<Coded>(grid, scale_step[j], min_step[j], scale, min);
      prefetch(grid);
      for (int64_t bg = 0; bg < blocks_per_group; ++bg) {
        const int64_t b = g * blocks_per_group + bg;
        const int8_t* xb = x.q + b * kBlock * M;
        __m512i dot[M];
        for (int m = 0; m < M; ++m) dot[m] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          const __m512i packed = _mm512_loadu_si512(wg + (bg * 4 + c) * 64);
          prefetch(wg + (bg * 4 + c) * 64);
          const __m512i lo = _mm512_and_si512(packed, low_nibbles);
          const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low_nibbles);
          for (int m = 0; m < M; ++m) {
            dot[m] = dot_broadcast(dot[m], lo, xb + (2 * c * M + m) * 4);
            dot[m] = dot_broadcast(dot[m], hi, xb + ((2 * c + 1) * M + m) * 4);
          }
        }
        for (int m = 0; m < M; ++m) {
          const __m512 block_scale = _mm512_mul_ps(scale, _mm512_set1_ps(x.scale[b * M + m]));
          acc[j][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[m]), block_scale, acc[j][m]);
        }
      }
      // w = q * scale + min, so the group also adds min * sum(x). As in ggml_vec_dot_q4_1_q8_1 the
      // sum is of the rounded x: with the exact sum the error would weigh q * scale instead of w,
      // which measured 2.5x the RMS error on Gaussian weights (the min sits near -2.5 sigma).
      for (int m = 0; m < M; ++m) acc[j][m] = _mm512_fmadd_ps(min, _mm512_set1_ps(x.sum[g * M + m]), acc[j][m]);
    }
  }
  for (int j = 0; j < NT; ++j) {
    const int64_t r0 = n0 + j * kTile;
    const __mmask16 mask = tail_mask(n_out - r0);
    const __m512 add = bias ? _mm512_maskz_loadu_ps(mask, bias + r0) : _mm512_setzero_ps();
    for (int m = 0; m < M; ++m) store16(y + (x.m0 + m) * n_out + r0, _mm512_add_ps(acc[j][m], add), mask);
  }
}

#ifdef __AVX512BF16__  // the BF16 kernels: the avx512bf16 build only (the VNNI build has none)
// -- BF16 weights ---------------------------------------------------------------------------------
// Every output is one fp32 chain over k pairs, front to back, then + bias: the same order in the
// decode kernel and the prompt kernel below, whatever the number of rows or a row's position, so a
// row's result does not depend on its batch (batch invariance: greedy and seeded output alone equal
// output under load). _mm512_dpbf16_ps adds both products of a pair into an fp32 lane.
//
// Decode: NT tiles (16 output rows each) x M activation rows. w points at the first tile's
// [kp/2][16][2] bf16 (64 bytes per k pair), the next tiles follow tile_bytes apart; x rows are bf16,
// read in place. With few rows, NT independent tiles give the NT x M chains that hide the
// instruction's latency (one chain would bound a single-row call at about half the memory rate);
// splitting k over several accumulators would do the same but change the order with M.
template <int M, int NT, typename T>
inline void bf16_tiles(const uint8_t* w, int64_t tile_bytes, const c10::BFloat16* x, int64_t x_stride, int64_t kp,
                       const float* bias, T* y, int64_t n_out, int64_t n0) {
  __m512 acc[NT][M];
  for (int j = 0; j < NT; ++j)
    for (int m = 0; m < M; ++m) acc[j][m] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp / 2; ++p) {
    __m512bh xv[M];
    for (int m = 0; m < M; ++m) {
      int32_t pair;
      std::memcpy(&pair, x + m * x_stride + 2 * p, 4);
      xv[m] = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
    }
#pragma GCC unroll 4
    for (int j = 0; j < NT; ++j) {
      const uint8_t* wp = w + j * tile_bytes + p * 64;
      const __m512bh wv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(wp));
      prefetch(wp);
      for (int m = 0; m < M; ++m) acc[j][m] = _mm512_dpbf16_ps(acc[j][m], wv, xv[m]);
    }
  }
  for (int j = 0; j < NT; ++j) {
    const int64_t col = n0 + j * kTile;
    const __mmask16 mask = tail_mask(n_out - col);
    const __m512 add = bias ? _mm512_maskz_loadu_ps(mask, bias + col) : _mm512_setzero_ps();
    for (int m = 0; m < M; ++m) store16(y + m * n_out + col, _mm512_add_ps(acc[j][m], add), mask);
  }
}

// Tiles [t0, t1) for one pass of M rows: NT at a time where they fit, one at a time for the rest
// (the same chains either way).
template <int M, typename T>
inline void bf16_tile_range(const uint8_t* w, int64_t tile_bytes, int64_t t0, int64_t t1, const c10::BFloat16* x,
                            int64_t kp, const float* bias, T* y, int64_t n_out) {
  constexpr int NT = M <= 2 ? 4 : (M <= 4 ? 2 : 1);
  int64_t t = t0;
  for (; t + NT <= t1; t += NT) bf16_tiles<M, NT>(w + t * tile_bytes, tile_bytes, x, kp, kp, bias, y, n_out, t * kTile);
  for (; t < t1; ++t) bf16_tiles<M, 1>(w + t * tile_bytes, tile_bytes, x, kp, kp, bias, y, n_out, t * kTile);
}

// Without batch invariance (the default): one tile x M rows, w points at the tile's [kp/2][16][2] bf16 (64
// bytes per k pair); x rows are bf16, read in place. _mm512_dpbf16_ps adds both products of a pair
// into an fp32 lane. With few rows, U independent accumulators per row hide the instruction's
// latency (one chain would bound a single-row call at about half the memory rate).
template <int M, typename T>
inline void bf16_tile_split_k(const uint8_t* w, const c10::BFloat16* x, int64_t x_stride, int64_t kp,
                      const float* bias, T* y, int64_t n_out, int64_t n0) {
  constexpr int U = M <= 2 ? 4 : (M <= 4 ? 2 : 1);
  __m512 acc[U][M];
  for (int u = 0; u < U; ++u)
    for (int m = 0; m < M; ++m) acc[u][m] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp / 2; p += U) {
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const uint8_t* wp = w + (p + u) * 64;
      const __m512bh wv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(wp));
      prefetch(wp);
      for (int m = 0; m < M; ++m) {
        int32_t pair;
        std::memcpy(&pair, x + m * x_stride + 2 * (p + u), 4);
        acc[u][m] = _mm512_dpbf16_ps(acc[u][m], wv, reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair)));
      }
    }
  }
  const __mmask16 mask = tail_mask(n_out - n0);
  const __m512 add = bias ? _mm512_maskz_loadu_ps(mask, bias + n0) : _mm512_setzero_ps();
  for (int m = 0; m < M; ++m) {
    __m512 sum = acc[0][m];
    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][m]);
    store16(y + m * n_out + n0, _mm512_add_ps(sum, add), mask);
  }
}

// Prompt batches: a block of 2 tiles (32 output rows) x R <= 12 activation rows, 24 accumulators,
// so each broadcast x pair feeds 2 products and each weight vector R. The block's weight tiles stay
// in L2 while every pass of 12 rows reads them. (4 tiles x 6 rows measured the same.) At 512 rows
// this reaches ~93 % of oneDNN's prepacked bf16 GEMM, from 64 rows down it is faster.
constexpr int kBlockTiles = 2;
constexpr int64_t kBf16GemvMaxRows = 16;  // above: the block kernel (measured crossover)
constexpr int kBlockRows = 12;

template <int R, typename T>
inline void bf16_block(const uint8_t* w, int64_t tile_bytes, const c10::BFloat16* x, int64_t kp,
                       const float* bias, T* y, int64_t n_out, int64_t n0) {
  __m512 acc[R][kBlockTiles];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kBlockTiles; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp / 2; ++p) {
    __m512bh wv[kBlockTiles];
    for (int j = 0; j < kBlockTiles; ++j) {
      wv[j] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w + j * tile_bytes + p * 64));
    }
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, x + r * kp + 2 * p, 4);
      const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
      for (int j = 0; j < kBlockTiles; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wv[j], xv);
    }
  }
  for (int j = 0; j < kBlockTiles; ++j) {
    const int64_t col = n0 + j * kTile;
    const __mmask16 mask = tail_mask(n_out - col);
    if (!mask) break;
    const __m512 add = bias ? _mm512_maskz_loadu_ps(mask, bias + col) : _mm512_setzero_ps();
    for (int r = 0; r < R; ++r) store16(y + r * n_out + col, _mm512_add_ps(acc[r][j], add), mask);
  }
}

template <typename BlockFn>
inline void for_each_row_block(int64_t rows, const BlockFn& block) {
  for (int64_t m0 = 0; m0 < rows; m0 += kBlockRows) {
    switch (std::min<int64_t>(kBlockRows, rows - m0)) {
      case 1: block(std::integral_constant<int, 1>{}, m0); break;
      case 2: block(std::integral_constant<int, 2>{}, m0); break;
      case 3: block(std::integral_constant<int, 3>{}, m0); break;
      case 4: block(std::integral_constant<int, 4>{}, m0); break;
      case 5: block(std::integral_constant<int, 5>{}, m0); break;
      case 6: block(std::integral_constant<int, 6>{}, m0); break;
      case 7: block(std::integral_constant<int, 7>{}, m0); break;
      case 8: block(std::integral_constant<int, 8>{}, m0); break;
      case 9: block(std::integral_constant<int, 9>{}, m0); break;
      case 10: block(std::integral_constant<int, 10>{}, m0); break;
      case 11: block(std::integral_constant<int, 11>{}, m0); break;
      default: block(std::integral_constant<int, 12>{}, m0); break;
    }
  }
}

#endif  // __AVX512BF16__

// -- the calls ----------------------------------------------------------------------------------
#include "lowbit_x86_driver.h"

#ifdef __AVX512BF16__
// x [..., k] bf16 (any float dtype is rounded to bf16 first); w packed by prepack_bf16.
at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                       int64_t n, int64_t k, int64_t kp) {
  const int64_t tile_bytes = kp * kTile * 2;
  TORCH_CHECK(kp % kBlock == 0 && kp >= k && w.scalar_type() == at::kByte &&
                  w.numel() == (n + kBlockTiles * kTile - 1) / (kBlockTiles * kTile) * kBlockTiles * tile_bytes,
              "packed BF16 weight does not match its shape: repack it with prepack_bf16");
  Call call = prepare(x, bias, n, k, kp);
  at::Tensor xb = call.x.scalar_type() == at::kBFloat16 ? call.x : call.x.to(at::kBFloat16);
  if (kp != k) xb = at::constant_pad_nd(xb, {0, kp - k});  // zero k pairs beyond K: 0 * 0 adds nothing
  const c10::BFloat16* xp = xb.data_ptr<c10::BFloat16>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float* bp = call.bias.defined() ? call.bias.data_ptr<float>() : nullptr;
  const int64_t tiles = w.numel() / tile_bytes;  // a multiple of kBlockTiles: the packing pads N
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* yp = call.y.data_ptr<T>();
    if (call.rows <= kBf16GemvMaxRows) {  // decode: stream each tile once per pass of 8 rows
      if (!g_batch_invariant) {  // k split over U chains by row count: fastest, order depends on M
        at::parallel_for(0, tiles, tiles_per_task(tile_bytes), [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) {
            for_each_pass(call.rows, [&](auto m_rows, int64_t m0) {
              bf16_tile_split_k<decltype(m_rows)::value>(wp + t * tile_bytes, xp + m0 * kp, kp, kp, bp, yp + m0 * n, n,
                                                         t * kTile);
            });
          }
        });
        return;
      }
      // Groups of 4 tiles: every pass of 8 rows reads a group while it is still in cache.
      at::parallel_for(0, tiles, tiles_per_task(tile_bytes), [&](int64_t t0, int64_t t1) {
        for (int64_t g0 = t0; g0 < t1; g0 += 4) {
          const int64_t g1 = std::min<int64_t>(t1, g0 + 4);
          for_each_pass(call.rows, [&](auto m_rows, int64_t m0) {
            bf16_tile_range<decltype(m_rows)::value>(wp, tile_bytes, g0, g1, xp + m0 * kp, kp, bp, yp + m0 * n, n);
          });
        }
      });
      return;
    }
    at::parallel_for(0, tiles / kBlockTiles, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for_each_row_block(call.rows, [&](auto r_rows, int64_t m0) {
          bf16_block<decltype(r_rows)::value>(wp + b * kBlockTiles * tile_bytes, tile_bytes, xp + m0 * kp, kp, bp,
                                              yp + m0 * n, n, b * kBlockTiles * kTile);
        });
      }
    });
  });
  return call.y;
}
#endif  // __AVX512BF16__

// The instructions this file was compiled for, checked on the CPU it runs on.
bool cpu_supported() {
  __builtin_cpu_init();
  const bool bf16 =
#ifdef __AVX512BF16__
      __builtin_cpu_supports("avx512bf16");
#else
      true;
#endif
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") && bf16;
}

}  // namespace

// The ops touch no Python object: let other threads (the server's event loop) run meanwhile.
constexpr auto kNoGil = py::call_guard<py::gil_scoped_release>();

#ifdef __AVX512BF16__
const luodi::LowbitApi kApi{&int8_linear, &int4_linear, &bf16_linear};
#else
const luodi::LowbitApi kApi{&int8_linear, &int4_linear, nullptr};  // as the AVX2 build's: no BF16 kernel
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_linear", &int8_linear, kNoGil, "y = x @ W.T for a packed INT8 weight");
  m.def("int4_linear", &int4_linear, kNoGil, "y = x @ W.T for a packed INT4 weight");
#ifdef __AVX512BF16__
  m.def("bf16_linear", &bf16_linear, kNoGil, "y = x @ W.T for a packed BF16 weight");
#endif
  m.def("cpu_supported", &cpu_supported, "whether this CPU has the instructions the kernels use");
  m.def("set_batch_invariant", [](bool on) { g_batch_invariant = on; }, "BF16 decode in the prompt kernel's order");
  m.def("api", [] { return reinterpret_cast<uintptr_t>(&kApi); }, "the address of the LowbitApi table (kernel_api.h)");
}
