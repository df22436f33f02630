// INT8 and INT4 weight-streaming matmuls for AArch64 NEON with the dot-product extension
// (ARMv8.2-A+dotprod: Graviton 2+, Ampere Altra, Apple M1+): y[M, N] = x[M, K] @ W.T, M small per
// pass. The ARM64 build of lowbit.cpp's INT8/INT4 kernels, over the same packed layouts (built by
// luodi/kernels/lowbit.py, which documents them). Torch-free, on raw pointers and fp32 in and out,
// so that one text serves the torch binding (lowbit_neon.cpp, which threads over tiles) and the
// emulated correctness harness (tests/kernels/neon/harness.cpp, cross-compiled and run under
// qemu-user, as no aarch64 torch exists where Luodi is developed).
//
// Numerics are lowbit_avx2.cpp's, step for step, so the results match the x86 builds up to fp32
// rounding: x is rounded to int8 per block of 32 with one fp32 scale per block (ggml's Q8_0; INT8
// weight-only also rounds the residual 254x finer, W8A8 once per row), codes rounded to nearest
// even and clamped to [-127, 127]; integer dot products run in int32 (`vdotq_s32`, s8 x s8: INT8
// weights are turned back from q + 128 into signed q, INT4 codes 0..15 are non-negative s8); each
// block's sum is scaled into one fp32 chain per output, blocks front to back, then the weight scale
// (INT8) or the group mins (INT4) and the bias, with the same fused multiply-adds. So a row's
// outputs do not depend on the rows beside it (batch invariance), as on x86.
//
// Registers: a q register holds 4 output rows x 4 columns of a tile's 64-byte run, so a tile of 16
// rows is 4 quads. One sweep covers as many quads as leave room for the accumulators (all 4 for
// M <= 2, 2 for M <= 4, 1 for M <= 8: M * quads fp32 and as many int32 registers); the first sweep
// streams the tile from memory, the others read it back from cache. Where the CPU has i8mm, passes
// of an even number of rows form the same integer sums with smmla instead (the i8mm section).

#pragma once

#include <arm_neon.h>
#include <asm/hwcap.h>
#include <sys/auxv.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "lowbit_common.h"  // kMaxRows (the x86 builds' interleaving), for_each_pass

namespace luodi::neon {

constexpr int64_t kBlock = 32;   // activation quantization block (ggml QK8_0)
constexpr int64_t kTile = 16;    // output rows per tile in the shared layouts
constexpr int64_t kQuad = 4;     // output rows per q register of int32 / fp32 lanes
constexpr float kFineRatio = 254.f;  // INT8 two-term: residual steps are scale / 254
constexpr int64_t kInt4StepBytes = 2 * kTile * 4;  // coded INT4 tile header: fp32 scale and min steps

enum class ActQuant { kBlock, kBlockTwoTerm, kRow };

// -- activation quantization (layout as the x86 builds' QuantizedRows) ---------------------------
// Rows are quantized in passes of up to kMaxRows; within a pass, each run of 4 columns holds the
// pass's rows side by side ([kp/4][rows][4] bytes), so a kernel reads one pass front to back.
struct QuantizedRows {
  int64_t rows = 0, kp = 0, sum_block = 0;
  std::vector<int8_t> q, fine;  // fine: the rounded residual, two-term mode only
  std::vector<float> scale;     // per row and block of 32
  std::vector<float> sum;       // per row and block of sum_block: the sum of the rounded x
};

struct Pass {
  const int8_t* q;
  const int8_t* fine;
  const float* scale;
  const float* sum;
  int64_t m0;
};

inline Pass pass_at(const QuantizedRows& xq, int64_t m0) {
  return Pass{xq.q.data() + m0 * xq.kp, xq.fine.empty() ? nullptr : xq.fine.data() + m0 * xq.kp,
              xq.scale.data() + m0 * (xq.kp / kBlock), xq.sum.data() + m0 * (xq.kp / xq.sum_block), m0};
}

inline QuantizedRows alloc_rows(int64_t rows, int64_t kp, int64_t sum_block, ActQuant mode) {
  QuantizedRows out;
  out.rows = rows, out.kp = kp, out.sum_block = sum_block;
  out.q.assign(rows * kp, 0);
  if (mode == ActQuant::kBlockTwoTerm) out.fine.assign(rows * kp, 0);
  out.scale.assign(rows * (kp / kBlock), 0.f);
  out.sum.assign(rows * (kp / sum_block), 0.f);
  return out;
}

inline float amax32(const float* p) {
  float32x4_t m = vabsq_f32(vld1q_f32(p));
  for (int j = 1; j < 8; ++j) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(p + 4 * j)));
  return vmaxvq_f32(m);
}

// 32 int32 -> 32 int8 in order, saturated, then clamped to [-127, 127] (as the x86 builds: the dot
// bounds there assume it, and the codes must be the same here).
inline void pack_codes(const int32x4_t* v, int8_t* out) {
  for (int j = 0; j < 4; ++j) {
    const int16x8_t halves = vcombine_s16(vqmovn_s32(v[2 * j]), vqmovn_s32(v[2 * j + 1]));
    vst1_s8(out + 8 * j, vmax_s8(vqmovn_s16(halves), vdup_n_s8(-127)));
  }
}

// Stores a block's codes into row r's slots of its pass and returns their sum.
inline int64_t store_block(const int32x4_t* codes, int8_t* pass_base, int64_t k0, int64_t pass_rows, int64_t r) {
  int8_t block[kBlock];
  pack_codes(codes, block);
  for (int64_t c = 0; c < kBlock / 4; ++c) std::memcpy(pass_base + ((k0 / 4 + c) * pass_rows + r) * 4, block + c * 4, 4);
  int64_t sum = 0;
  for (int j = 0; j < kBlock; ++j) sum += block[j];  // the stored values
  return sum;
}

// Quantizes row m (k fp32 values at x_row) into its pass's interleaved slots. Rows write disjoint
// slots, so rows may be quantized in parallel.
inline void quantize_row(const float* x_row, int64_t m, int64_t k, QuantizedRows& out, ActQuant mode) {
  const bool per_row = mode == ActQuant::kRow, two_term = mode == ActQuant::kBlockTwoTerm;
  const int64_t kp = out.kp, num_blocks = kp / kBlock, num_sums = kp / out.sum_block;
  const int64_t m0 = m / kMaxRows * kMaxRows, pass_rows = std::min<int64_t>(kMaxRows, out.rows - m0), r = m - m0;
  std::vector<float> row(kp, 0.f);
  std::copy(x_row, x_row + k, row.begin());
  float row_amax = 0.f;
  if (per_row) {
    for (int64_t k0 = 0; k0 < kp; k0 += kBlock) row_amax = std::max(row_amax, amax32(row.data() + k0));
  }
  // torch: scale = max(amax / 127, smallest normal), so an all-zero row gets q = 0
  const float row_scale = std::max(row_amax / 127.f, std::numeric_limits<float>::min());
  std::vector<double> sums(num_sums, 0.0);
  for (int64_t b = 0; b < num_blocks; ++b) {
    const int64_t k0 = b * kBlock;
    float32x4_t v[8];
    int32x4_t q[8];
    for (int j = 0; j < 8; ++j) v[j] = vld1q_f32(row.data() + k0 + 4 * j);
    float d;
    if (per_row) {  // SmoothQuant's per-token rounding: divide, round half to even
      for (int j = 0; j < 8; ++j) q[j] = vcvtnq_s32_f32(vdivq_f32(v[j], vdupq_n_f32(row_scale)));
      d = row_scale;
    } else {
      const float amax = amax32(row.data() + k0);
      const float32x4_t inv = vdupq_n_f32(amax > 0.f ? 127.f / amax : 0.f);
      for (int j = 0; j < 8; ++j) q[j] = vcvtnq_s32_f32(vmulq_f32(v[j], inv));
      d = amax / 127.f;
    }
    const int64_t q_sum = store_block(q, out.q.data() + m0 * kp, k0, pass_rows, r);
    int64_t fine_sum = 0;
    if (two_term) {  // the residual x - d * q (one fused multiply-add), in steps of d / kFineRatio
      const float32x4_t dv = vdupq_n_f32(d), inv_fine = vdupq_n_f32(d > 0.f ? kFineRatio / d : 0.f);
      int32x4_t f[8];
      for (int j = 0; j < 8; ++j) f[j] = vcvtnq_s32_f32(vmulq_f32(vfmsq_f32(v[j], vcvtq_f32_s32(q[j]), dv), inv_fine));
      fine_sum = store_block(f, out.fine.data() + m0 * kp, k0, pass_rows, r);
    }
    out.scale[m0 * num_blocks + b * pass_rows + r] = d;
    sums[k0 / out.sum_block] += static_cast<double>(d) * static_cast<double>(q_sum) +
                                static_cast<double>(d / kFineRatio) * static_cast<double>(fine_sum);
  }
  for (int64_t j = 0; j < num_sums; ++j) out.sum[m0 * num_sums + j * pass_rows + r] = static_cast<float>(sums[j]);
}

// -- shared pieces of the tile kernels ------------------------------------------------------------
// Quads of output rows per sweep of a tile for M activation rows (header comment).
constexpr int quads_per_sweep(int m) { return m <= 2 ? 4 : m <= 4 ? 2 : 1; }

inline int8x16_t broadcast4(const int8_t* x) {
  int32_t v;
  std::memcpy(&v, x, 4);
  return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

inline float32x4_t load_partial(const float* p, int64_t count) {
  if (!p) return vdupq_n_f32(0.f);
  float lanes[kQuad] = {0.f, 0.f, 0.f, 0.f};
  std::copy(p, p + std::min(count, kQuad), lanes);
  return vld1q_f32(lanes);
}

inline void store_partial(float* y, float32x4_t v, int64_t count) {
  float lanes[kQuad];
  vst1q_f32(lanes, v);
  std::copy(lanes, lanes + std::min(count, kQuad), y);
}

// -- INT8 weights ---------------------------------------------------------------------------------
// One tile (16 output rows, [kp/4][16][4] bytes of q + 128 at w) x M activation rows of a pass.
// TwoTerm (weight-only): x = scale / 254 * (254 q + fine) exactly, so a block's int32 is
// 254 * (q . w) + (fine . w), the same integer the AVX2 build forms with int16 activations (at
// most 32 * 128 * 32512 < 2^31), scaled by the block's scale / 254. Otherwise (W8A8) q . w, scaled
// by the row's scale.
template <int M, bool TwoTerm>
inline void int8_tile(const uint8_t* w, const Pass& x, int64_t kp, const float* wscale, const float* bias, float* y,
                      int64_t n_out, int64_t n0) {
  constexpr int Q = quads_per_sweep(M);
  const uint8x16_t flip = vdupq_n_u8(0x80);
  for (int64_t s = 0; s < kTile / kQuad; s += Q) {
    if (n0 + s * kQuad >= n_out) break;
    float32x4_t acc[Q][M];
    for (int j = 0; j < Q; ++j)
      for (int m = 0; m < M; ++m) acc[j][m] = vdupq_n_f32(0.f);
    for (int64_t b = 0; b < kp / kBlock; ++b) {
      const uint8_t* wb = w + b * kBlock * kTile + s * 16;
      const int8_t* xb = x.q + b * kBlock * M;
      const int8_t* fb = TwoTerm ? x.fine + b * kBlock * M : nullptr;
      int32x4_t dot[Q][M], fine[Q][M];
      for (int j = 0; j < Q; ++j)
        for (int m = 0; m < M; ++m) dot[j][m] = fine[j][m] = vdupq_n_s32(0);
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) {
        int8x16_t q[Q];
        for (int j = 0; j < Q; ++j) q[j] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(wb + c * 64 + j * 16), flip));
        for (int m = 0; m < M; ++m) {
          const int8x16_t xv = broadcast4(xb + (c * M + m) * 4);
          for (int j = 0; j < Q; ++j) dot[j][m] = vdotq_s32(dot[j][m], q[j], xv);
          if constexpr (TwoTerm) {
            const int8x16_t fv = broadcast4(fb + (c * M + m) * 4);
            for (int j = 0; j < Q; ++j) fine[j][m] = vdotq_s32(fine[j][m], q[j], fv);
          }
        }
      }
      for (int m = 0; m < M; ++m) {
        const float step = TwoTerm ? x.scale[b * M + m] / kFineRatio : x.scale[b * M + m];
        for (int j = 0; j < Q; ++j) {
          const int32x4_t sum = TwoTerm ? vmlaq_n_s32(fine[j][m], dot[j][m], static_cast<int32_t>(kFineRatio))
                                        : dot[j][m];
          acc[j][m] = vfmaq_f32(acc[j][m], vcvtq_f32_s32(sum), vdupq_n_f32(step));
        }
      }
    }
    for (int j = 0; j < Q; ++j) {
      const int64_t r0 = n0 + (s + j) * kQuad, count = n_out - r0;
      if (count <= 0) break;
      const float32x4_t scale = vld1q_f32(wscale + r0);  // scales are padded to whole tiles
      const float32x4_t add = load_partial(bias ? bias + r0 : nullptr, count);
      for (int m = 0; m < M; ++m) store_partial(y + (x.m0 + m) * n_out + r0, vfmaq_f32(add, acc[j][m], scale), count);
    }
  }
}

// -- INT4 weights ---------------------------------------------------------------------------------
inline int64_t int4_group_bytes(int64_t group_size, bool coded) {
  return group_size * kTile / 2 + (coded ? 2 : 4) * kTile;
}

// Quad j's 4 scales and 4 mins of a group (grid: the bytes after its nibbles): fp16 values, or
// codes times the tile's steps.
template <bool Coded>
inline void int4_group_grid(const uint8_t* grid, int64_t j, float32x4_t scale_step, float32x4_t min_step,
                            float32x4_t& scale, float32x4_t& min) {
  if constexpr (Coded) {
    uint8_t scale_codes[8] = {}, min_codes[8] = {};
    std::memcpy(scale_codes, grid + j * kQuad, kQuad);
    std::memcpy(min_codes, grid + kTile + j * kQuad, kQuad);
    const uint32x4_t su = vmovl_u16(vget_low_u16(vmovl_u8(vld1_u8(scale_codes))));
    const int32x4_t ms = vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_u8(vld1_u8(min_codes)))));
    scale = vmulq_f32(vcvtq_f32_u32(su), scale_step);
    min = vmulq_f32(vcvtq_f32_s32(ms), min_step);
  } else {
    uint16_t halves[2][kQuad];
    std::memcpy(halves[0], grid + j * kQuad * 2, kQuad * 2);
    std::memcpy(halves[1], grid + 2 * kTile + j * kQuad * 2, kQuad * 2);
    scale = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(halves[0])));
    min = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(halves[1])));
  }
}

// One tile x M activation rows. Per group: [g/8][16][4] bytes (low nibble = column k, high = k + 4
// within each run of 8 columns), then the grid; coded tiles start with their fp32 steps.
template <int M, bool Coded>
inline void int4_tile(const uint8_t* w, const Pass& x, int64_t kp, int64_t group_size, const float* bias, float* y,
                      int64_t n_out, int64_t n0) {
  constexpr int Q = quads_per_sweep(M);
  const int64_t blocks_per_group = group_size / kBlock, group_bytes = int4_group_bytes(group_size, Coded);
  const uint8x16_t low_nibbles = vdupq_n_u8(0x0F);
  float steps[2 * kTile] = {};
  if constexpr (Coded) {
    std::memcpy(steps, w, kInt4StepBytes);
    w += kInt4StepBytes;
  }
  for (int64_t s = 0; s < kTile / kQuad; s += Q) {
    if (n0 + s * kQuad >= n_out) break;
    float32x4_t acc[Q][M];
    for (int j = 0; j < Q; ++j)
      for (int m = 0; m < M; ++m) acc[j][m] = vdupq_n_f32(0.f);
    for (int64_t g = 0; g < kp / group_size; ++g) {
      const uint8_t* wg = w + g * group_bytes;
      float32x4_t scale[Q], min[Q];
      for (int j = 0; j < Q; ++j) {
        const int64_t quad = s + j;
        int4_group_grid<Coded>(wg + group_size * kTile / 2, quad, vld1q_f32(steps + quad * kQuad),
                               vld1q_f32(steps + kTile + quad * kQuad), scale[j], min[j]);
      }
      for (int64_t bg = 0; bg < blocks_per_group; ++bg) {
        const int64_t b = g * blocks_per_group + bg;
        const int8_t* xb = x.q + b * kBlock * M;
        int32x4_t dot[Q][M];
        for (int j = 0; j < Q; ++j)
          for (int m = 0; m < M; ++m) dot[j][m] = vdupq_n_s32(0);
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          const uint8_t* wc = wg + (bg * 4 + c) * 64 + s * 16;
          int8x16_t lo[Q], hi[Q];
          for (int j = 0; j < Q; ++j) {
            const uint8x16_t packed = vld1q_u8(wc + j * 16);
            lo[j] = vreinterpretq_s8_u8(vandq_u8(packed, low_nibbles));
            hi[j] = vreinterpretq_s8_u8(vshrq_n_u8(packed, 4));
          }
          for (int m = 0; m < M; ++m) {
            const int8x16_t x_lo = broadcast4(xb + (2 * c * M + m) * 4);
            const int8x16_t x_hi = broadcast4(xb + ((2 * c + 1) * M + m) * 4);
            for (int j = 0; j < Q; ++j) dot[j][m] = vdotq_s32(vdotq_s32(dot[j][m], lo[j], x_lo), hi[j], x_hi);
          }
        }
        for (int m = 0; m < M; ++m) {
          for (int j = 0; j < Q; ++j) {
            const float32x4_t block_scale = vmulq_f32(scale[j], vdupq_n_f32(x.scale[b * M + m]));
            acc[j][m] = vfmaq_f32(acc[j][m], vcvtq_f32_s32(dot[j][m]), block_scale);
          }
        }
      }
      // w = q * scale + min: the group adds min * sum(rounded x), as on x86.
      for (int m = 0; m < M; ++m)
        for (int j = 0; j < Q; ++j) acc[j][m] = vfmaq_f32(acc[j][m], min[j], vdupq_n_f32(x.sum[g * M + m]));
    }
    for (int j = 0; j < Q; ++j) {
      const int64_t r0 = n0 + (s + j) * kQuad, count = n_out - r0;
      if (count <= 0) break;
      const float32x4_t add = load_partial(bias ? bias + r0 : nullptr, count);
      for (int m = 0; m < M; ++m) store_partial(y + (x.m0 + m) * n_out + r0, vaddq_f32(acc[j][m], add), count);
    }
  }
}

// -- i8mm (Graviton 3+, Apple M2+): the same block sums by 2 x 2 int8 matrix products -------------
// smmla multiplies a pair of activation rows by a pair of output rows over 8 columns: the tile's
// 4-column runs are zipped in pairs into 8-column operands, each product replacing 4 sdot. Integer
// sums are exact either way, so the outputs are the dot-product kernels' bit for bit; only even M
// (pairs of rows) takes this path. Compiled for +i8mm and called only where the CPU has it; kept
// apart from the kernels above, which must run on dot-product CPUs without it (the tests run those
// under an emulated Cortex-A76, which has no i8mm).
#pragma GCC push_options
#pragma GCC target("+i8mm")

// Block sums for Q quads of output rows x P pairs of activation rows. lo holds the quad's rows r0, r1
// and hi r2, r3, each as [m r0, m r1, m+1 r0, m+1 r1] (smmla's 2 x 2 layout).
template <int Q, int P>
struct PairDots {
  int32x4_t lo[Q][P], hi[Q][P];

  PairDots() {
    for (int j = 0; j < Q; ++j)
      for (int p = 0; p < P; ++p) lo[j][p] = hi[j][p] = vdupq_n_s32(0);
  }

  // Adds quads wa (4 rows x columns A) and wb (4 rows x columns B) times rows 2p, 2p + 1, whose
  // 4-byte runs of columns A and B (rows side by side) start at xa and xb.
  inline void add(const int8x16_t* wa, const int8x16_t* wb, const int8_t* xa, const int8_t* xb, int p) {
    int64_t a, b;
    std::memcpy(&a, xa, 8);
    std::memcpy(&b, xb, 8);
    const int8x16_t rows = vreinterpretq_s8_s32(
        vzip1q_s32(vreinterpretq_s32_s64(vdupq_n_s64(a)), vreinterpretq_s32_s64(vdupq_n_s64(b))));
    for (int j = 0; j < Q; ++j) {
      const int32x4_t wa32 = vreinterpretq_s32_s8(wa[j]), wb32 = vreinterpretq_s32_s8(wb[j]);
      lo[j][p] = vmmlaq_s32(lo[j][p], rows, vreinterpretq_s8_s32(vzip1q_s32(wa32, wb32)));
      hi[j][p] = vmmlaq_s32(hi[j][p], rows, vreinterpretq_s8_s32(vzip2q_s32(wa32, wb32)));
    }
  }

  // Quad j's 4 sums for activation row m of the pass.
  inline int32x4_t row(int j, int m) const {
    const int64x2_t l = vreinterpretq_s64_s32(lo[j][m / 2]), h = vreinterpretq_s64_s32(hi[j][m / 2]);
    return vreinterpretq_s32_s64(m % 2 ? vzip2q_s64(l, h) : vzip1q_s64(l, h));
  }
};

// int8_tile for even M through smmla.
template <int M, bool TwoTerm>
void int8_tile_i8mm(const uint8_t* w, const Pass& x, int64_t kp, const float* wscale, const float* bias, float* y,
                    int64_t n_out, int64_t n0) {
  static_assert(M % 2 == 0, "smmla takes activation rows in pairs");
  constexpr int Q = quads_per_sweep(M), P = M / 2;
  const uint8x16_t flip = vdupq_n_u8(0x80);
  for (int64_t s = 0; s < kTile / kQuad; s += Q) {
    if (n0 + s * kQuad >= n_out) break;
    float32x4_t acc[Q][M];
    for (int j = 0; j < Q; ++j)
      for (int m = 0; m < M; ++m) acc[j][m] = vdupq_n_f32(0.f);
    for (int64_t b = 0; b < kp / kBlock; ++b) {
      const uint8_t* wb = w + b * kBlock * kTile + s * 16;
      const int8_t* xb = x.q + b * kBlock * M;
      const int8_t* fb = TwoTerm ? x.fine + b * kBlock * M : nullptr;
      PairDots<Q, P> dot, fine;
#pragma GCC unroll 4
      for (int c = 0; c < 8; c += 2) {
        int8x16_t qa[Q], qb[Q];
        for (int j = 0; j < Q; ++j) {
          qa[j] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(wb + c * 64 + j * 16), flip));
          qb[j] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(wb + (c + 1) * 64 + j * 16), flip));
        }
        for (int p = 0; p < P; ++p) {
          dot.add(qa, qb, xb + (c * M + 2 * p) * 4, xb + ((c + 1) * M + 2 * p) * 4, p);
          if constexpr (TwoTerm) fine.add(qa, qb, fb + (c * M + 2 * p) * 4, fb + ((c + 1) * M + 2 * p) * 4, p);
        }
      }
      for (int m = 0; m < M; ++m) {
        const float step = TwoTerm ? x.scale[b * M + m] / kFineRatio : x.scale[b * M + m];
        for (int j = 0; j < Q; ++j) {
          const int32x4_t sum = TwoTerm ? vmlaq_n_s32(fine.row(j, m), dot.row(j, m), static_cast<int32_t>(kFineRatio))
                                        : dot.row(j, m);
          acc[j][m] = vfmaq_f32(acc[j][m], vcvtq_f32_s32(sum), vdupq_n_f32(step));
        }
      }
    }
    for (int j = 0; j < Q; ++j) {
      const int64_t r0 = n0 + (s + j) * kQuad, count = n_out - r0;
      if (count <= 0) break;
      const float32x4_t scale = vld1q_f32(wscale + r0);
      const float32x4_t add = load_partial(bias ? bias + r0 : nullptr, count);
      for (int m = 0; m < M; ++m) store_partial(y + (x.m0 + m) * n_out + r0, vfmaq_f32(add, acc[j][m], scale), count);
    }
  }
}

// int4_tile for even M through smmla: a run's low nibbles are columns k..k+3, its high k+4..k+7.
template <int M, bool Coded>
void int4_tile_i8mm(const uint8_t* w, const Pass& x, int64_t kp, int64_t group_size, const float* bias, float* y,
                    int64_t n_out, int64_t n0) {
  static_assert(M % 2 == 0, "smmla takes activation rows in pairs");
  constexpr int Q = quads_per_sweep(M), P = M / 2;
  const int64_t blocks_per_group = group_size / kBlock, group_bytes = int4_group_bytes(group_size, Coded);
  const uint8x16_t low_nibbles = vdupq_n_u8(0x0F);
  float steps[2 * kTile] = {};
  if constexpr (Coded) {
    std::memcpy(steps, w, kInt4StepBytes);
    w += kInt4StepBytes;
  }
  for (int64_t s = 0; s < kTile / kQuad; s += Q) {
    if (n0 + s * kQuad >= n_out) break;
    float32x4_t acc[Q][M];
    for (int j = 0; j < Q; ++j)
      for (int m = 0; m < M; ++m) acc[j][m] = vdupq_n_f32(0.f);
    for (int64_t g = 0; g < kp / group_size; ++g) {
      const uint8_t* wg = w + g * group_bytes;
      float32x4_t scale[Q], min[Q];
      for (int j = 0; j < Q; ++j) {
        const int64_t quad = s + j;
        int4_group_grid<Coded>(wg + group_size * kTile / 2, quad, vld1q_f32(steps + quad * kQuad),
                               vld1q_f32(steps + kTile + quad * kQuad), scale[j], min[j]);
      }
      for (int64_t bg = 0; bg < blocks_per_group; ++bg) {
        const int64_t b = g * blocks_per_group + bg;
        const int8_t* xb = x.q + b * kBlock * M;
        PairDots<Q, P> dot;
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          const uint8_t* wc = wg + (bg * 4 + c) * 64 + s * 16;
          int8x16_t lo[Q], hi[Q];
          for (int j = 0; j < Q; ++j) {
            const uint8x16_t packed = vld1q_u8(wc + j * 16);
            lo[j] = vreinterpretq_s8_u8(vandq_u8(packed, low_nibbles));
            hi[j] = vreinterpretq_s8_u8(vshrq_n_u8(packed, 4));
          }
          for (int p = 0; p < P; ++p) dot.add(lo, hi, xb + (2 * c * M + 2 * p) * 4, xb + ((2 * c + 1) * M + 2 * p) * 4, p);
        }
        for (int m = 0; m < M; ++m) {
          for (int j = 0; j < Q; ++j) {
            const float32x4_t block_scale = vmulq_f32(scale[j], vdupq_n_f32(x.scale[b * M + m]));
            acc[j][m] = vfmaq_f32(acc[j][m], vcvtq_f32_s32(dot.row(j, m)), block_scale);
          }
        }
      }
      for (int m = 0; m < M; ++m)
        for (int j = 0; j < Q; ++j) acc[j][m] = vfmaq_f32(acc[j][m], min[j], vdupq_n_f32(x.sum[g * M + m]));
    }
    for (int j = 0; j < Q; ++j) {
      const int64_t r0 = n0 + (s + j) * kQuad, count = n_out - r0;
      if (count <= 0) break;
      const float32x4_t add = load_partial(bias ? bias + r0 : nullptr, count);
      for (int m = 0; m < M; ++m) store_partial(y + (x.m0 + m) * n_out + r0, vaddq_f32(acc[j][m], add), count);
    }
  }
}

#pragma GCC pop_options

// Whether this CPU has the i8mm instructions (Linux: the kernel's hwcaps).
inline bool cpu_has_i8mm() { return (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0; }

// -- tile sizes -----------------------------------------------------------------------------------
inline int64_t int8_tile_bytes(int64_t kp) { return kp * kTile; }

inline int64_t int4_tile_bytes(int64_t kp, int64_t group_size, bool coded) {
  return (coded ? kInt4StepBytes : 0) + (kp / group_size) * int4_group_bytes(group_size, coded);
}

// Output tiles [t0, t1) for every row of xq (quantized with sum_block = kp): y fp32 [rows, n].
// Two-term when xq holds residuals, else W8A8. Scales: fp32, padded to whole tiles. i8mm: whether
// passes of an even number of rows may use smmla (`cpu_has_i8mm()`).
inline void int8_tiles(const uint8_t* w, const float* scales, const float* bias, const QuantizedRows& xq, float* y,
                       int64_t n, int64_t t0, int64_t t1, bool i8mm) {
  const int64_t kp = xq.kp, tile_bytes = int8_tile_bytes(kp);
  const bool two_term = !xq.fine.empty();
  for (int64_t t = t0; t < t1; ++t) {
    for_each_pass(xq.rows, [&](auto m_rows, int64_t m0) {
      constexpr int M = decltype(m_rows)::value;
      const Pass pass = pass_at(xq, m0);
      const uint8_t* wt = w + t * tile_bytes;
      if constexpr (M % 2 == 0) {
        if (i8mm) {
          return two_term ? int8_tile_i8mm<M, true>(wt, pass, kp, scales, bias, y, n, t * kTile)
                          : int8_tile_i8mm<M, false>(wt, pass, kp, scales, bias, y, n, t * kTile);
        }
      }
      if (two_term) {
        int8_tile<M, true>(wt, pass, kp, scales, bias, y, n, t * kTile);
      } else {
        int8_tile<M, false>(wt, pass, kp, scales, bias, y, n, t * kTile);
      }
    });
  }
}

// Output tiles [t0, t1) for every row of xq (quantized with sum_block = group_size): y fp32 [rows, n].
inline void int4_tiles(const uint8_t* w, const float* bias, const QuantizedRows& xq, float* y, int64_t n,
                       int64_t group_size, bool coded, int64_t t0, int64_t t1, bool i8mm) {
  const int64_t kp = xq.kp, tile_bytes = int4_tile_bytes(kp, group_size, coded);
  for (int64_t t = t0; t < t1; ++t) {
    for_each_pass(xq.rows, [&](auto m_rows, int64_t m0) {
      constexpr int M = decltype(m_rows)::value;
      const Pass pass = pass_at(xq, m0);
      const uint8_t* wt = w + t * tile_bytes;
      if constexpr (M % 2 == 0) {
        if (i8mm) {
          return coded ? int4_tile_i8mm<M, true>(wt, pass, kp, group_size, bias, y, n, t * kTile)
                       : int4_tile_i8mm<M, false>(wt, pass, kp, group_size, bias, y, n, t * kTile);
        }
      }
      if (coded) {
        int4_tile<M, true>(wt, pass, kp, group_size, bias, y, n, t * kTile);
      } else {
        int4_tile<M, false>(wt, pass, kp, group_size, bias, y, n, t * kTile);
      }
    });
  }
}

}  // namespace luodi::neon
