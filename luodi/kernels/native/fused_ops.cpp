// Fused CPU ops for token generation: the work between a transformer layer's matmuls, done in one
// call each instead of the ~40 small eager ops it takes in PyTorch (each ~8 us of dispatch on a
// 2-core machine, more than the arithmetic). Owns the inner loops only: when an op applies, and
// its torch reference, live in luodi/kernels/fused.py; nothing here knows about models.
//
// Ops (x, weights and outputs in the model dtype T: fp32, bf16 or fp16):
//   add_rms_norm       normed = rms_norm(x [+ residual]) and the new residual, one pass per row;
//   gated_act          act(gate) * up over the fused [T, 2I] gate/up projection (SiLU, GELU-tanh);
//   rope_attend_decode per-head q/k norm, RoPE, store k/v in the paged fp32 cache, and attention
//                      of one query token per sequence over its cached keys (GQA, sliding window);
//   rope_attend_chunks the same for chunks of several new tokens of one sequence each (prompts).
//
// Numerics mirror the torch code they replace op by op: every intermediate that torch rounds to T
// is rounded here too (round-to-nearest-even, c10's `round_to_nearest_even` / the AVX-512
// `cvtfp32_bf16`), and the file is compiled with -ffp-contract=off so `a * b + c * d` is not fused
// into an FMA that torch does not do. What remains is summation order (norm sums of squares,
// attention dot products) and exp/tanh approximations within ~2 fp32 ulp of torch's Sleef ones:
// fp32 results agree to ~1e-6 relative, T results to one ulp of T where a rounding boundary falls
// between the two.

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <torch/extension.h>

#include "avx512_lanes.h"
#include "fused_common.h"
#include "kernel_api.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using at::Tensor;
using luodi::load16;
using luodi::store16;
using luodi::tail_mask;
using luodi::to_bf16_bits;

// Batch-invariant mode (set_batch_invariant): prompt chunks score keys with decode's dot products.
// Off by default: it measured slower here (see luodi/kernels/lowbit.py).
bool g_batch_invariant = false;

// The value torch would hold after an op that outputs T: v rounded to T, back in fp32.
template <typename T>
inline __m512 round_to(__m512 v);

template <>
inline __m512 round_to<float>(__m512 v) {
  return v;
}

template <>
inline __m512 round_to<c10::BFloat16>(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16_bits(v)), 16));
}

template <>
inline __m512 round_to<c10::Half>(__m512 v) {
  return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// -- exp and tanh ------------------------------------------------------------------------------
// exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln2 / 2, exp(r) by its degree-7 Taylor
// polynomial (Cephes `expf` reduction with a split ln 2): < 2 ulp over the fp32 range.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.72f)), _mm512_set1_ps(-103.9f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);  // exact scaling by 2^n, gradual underflow included
}

// tanh as Cephes `tanhf`: an odd polynomial for |y| < 0.625, 1 - 2 / (exp(2|y|) + 1) above (no
// cancellation left there); within ~2 ulp of tanh, like the Sleef tanhf torch uses.
inline __m512 tanh16(__m512 y) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 abs_y = _mm512_abs_ps(y);
  __m512 e = exp16(_mm512_add_ps(abs_y, abs_y));
  __m512 big = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, one)));
  __m512i sign = _mm512_and_si512(_mm512_castps_si512(y), _mm512_set1_epi32(INT32_MIN));
  big = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(big), sign));
  __m512 z = _mm512_mul_ps(y, y);
  __m512 p = _mm512_set1_ps(-5.70498872745e-3f);
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.06390887954e-2f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531e-2f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036e-1f));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422e-1f));
  __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), y, y);
  __mmask16 is_small = _mm512_cmp_ps_mask(abs_y, _mm512_set1_ps(0.625f), _CMP_LT_OQ);
  return _mm512_mask_blend_ps(is_small, big, small);
}

// -- small helpers --------------------------------------------------------------------------------
// Sum of squares of n floats of a row of T (fp32 accumulation, as torch's mean(x.float()^2)).
template <typename T>
inline float sum_squares(const T* x, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    __m512 v = load16(x + i, tail_mask(n - i));
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// HF's RMSNorm, from fp32 `v` (already in registers) to the value torch holds afterwards:
//   Llama (is_offset false): round_T(w * round_T(v * inv_rms))      (`weight * normed.to(T)`)
//   Gemma (is_offset true):  round_T(v * inv_rms * (1 + w))          (all in fp32, then to T)
template <typename T>
inline __m512 norm16(__m512 v, __m512 inv_rms, const float* w, __mmask16 mask, bool is_offset) {
  __m512 weight = _mm512_maskz_loadu_ps(mask, w);
  __m512 normed = _mm512_mul_ps(v, inv_rms);
  if (is_offset) return round_to<T>(_mm512_mul_ps(normed, _mm512_add_ps(_mm512_set1_ps(1.0f), weight)));
  return round_to<T>(_mm512_mul_ps(weight, round_to<T>(normed)));
}

// 1 / sqrt(mean + eps) as torch computes it: sum / n, + eps, sqrt, divide (each correctly rounded).
inline __m512 inv_rms(float sum_sq, int64_t n, float eps) {
  float mean = sum_sq / static_cast<float>(n);
  return _mm512_set1_ps(1.0f / std::sqrt(mean + eps));
}

// Normalize n values of `x` into `out` (both rows of T). `out` may alias `x`.
template <typename T>
void norm_row(const T* x, T* out, int64_t n, const NormSpec& spec) {
  __m512 scale = inv_rms(sum_squares(x, n), n, spec.eps);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = tail_mask(n - i);
    store16(out + i, norm16<T>(load16(x + i, m), scale, spec.weight.data() + i, m, spec.is_offset), m);
  }
}

// -- add_rms_norm ---------------------------------------------------------------------------------
// One row: y = x, or norm_x(x) when a pre-norm is given (Gemma's post-attention norm);
// r = round_T(y + residual) when there is a residual, else y; normed = norm(r).
template <typename T>
void add_rms_norm_row(const T* x, const T* residual, T* new_residual, T* normed, int64_t n,
                      const NormSpec& norm, const NormSpec* x_norm) {
  const T* r = x;
  if (x_norm != nullptr || residual != nullptr) {
    const __m512 x_scale = x_norm != nullptr ? inv_rms(sum_squares(x, n), n, x_norm->eps) : _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
      __mmask16 m = tail_mask(n - i);
      __m512 y = load16(x + i, m);
      if (x_norm != nullptr) y = norm16<T>(y, x_scale, x_norm->weight.data() + i, m, x_norm->is_offset);
      if (residual != nullptr) y = round_to<T>(_mm512_add_ps(y, load16(residual + i, m)));
      store16(new_residual + i, y, m);
    }
    r = new_residual;
  }
  norm_row(r, normed, n, norm);
}

// -- gated activation ---------------------------------------------------------------------------
// ATen's CPU kernels: silu = x / (1 + exp(-x)); gelu tanh = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
inline __m512 act16(__m512 x, Act act) {
  const __m512 one = _mm512_set1_ps(1.0f);
  if (act == Act::kSilu) {
    __m512 neg_x = _mm512_sub_ps(_mm512_setzero_ps(), x);
    return _mm512_div_ps(x, _mm512_add_ps(one, exp16(neg_x)));
  }
  const __m512 beta = _mm512_set1_ps(static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5));
  const __m512 kappa = _mm512_set1_ps(0.044715f);
  __m512 cube = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
  __m512 inner = _mm512_mul_ps(beta, _mm512_add_ps(x, _mm512_mul_ps(kappa, cube)));
  // torch's own form, 1 + tanh(y) included: for y << 0 it cancels, and matching torch there
  // needs the same cancellation rather than the better-conditioned x * sigmoid(2y).
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(one, tanh16(inner)));
}

// One row: act(gate) * up, as torch computes it (act(gate) is a T tensor, then T * T -> T).
template <typename T>
void gated_act_row(const T* gate, const T* up, T* dst, int64_t width, Act act) {
  for (int64_t i = 0; i < width; i += 16) {
    __mmask16 m = tail_mask(width - i);
    __m512 a = round_to<T>(act16(load16(gate + i, m), act));
    store16(dst + i, _mm512_mul_ps(a, load16(up + i, m)), m);
  }
}

// -- rope + cache store + decode attention ------------------------------------------------------

// One head vector of D values: optional head norm, then HF `apply_rotary_pos_emb` (rotate-half),
// each torch op's rounding to T kept: round(round(x * cos) + round(rotate_half(x) * sin)).
// Writes fp32 (the values torch would hold in T, converted exactly).
template <typename T>
void norm_rope_head(const T* x, const T* cos, const T* sin, float* out, int64_t d, const NormSpec* norm) {
  float buf[256];  // head_dim <= 256 (checked); holds the normed head in T's values
  const int64_t half = d / 2;
  if (norm != nullptr) {
    __m512 scale = inv_rms(sum_squares(x, d), d, norm->eps);
    for (int64_t i = 0; i < d; i += 16) {
      __mmask16 m = tail_mask(d - i);
      __m512 normed = norm16<T>(load16(x + i, m), scale, norm->weight.data() + i, m, norm->is_offset);
      _mm512_mask_storeu_ps(buf + i, m, normed);
    }
  } else {
    for (int64_t i = 0; i < d; i += 16) {
      __mmask16 m = tail_mask(d - i);
      _mm512_mask_storeu_ps(buf + i, m, load16(x + i, m));
    }
  }
  for (int64_t i = 0; i < half; i += 16) {
    __mmask16 m = tail_mask(half - i);
    __m512 x1 = _mm512_maskz_loadu_ps(m, buf + i), x2 = _mm512_maskz_loadu_ps(m, buf + half + i);
    __m512 c1 = load16(cos + i, m), c2 = load16(cos + half + i, m);
    __m512 s1 = load16(sin + i, m), s2 = load16(sin + half + i, m);
    __m512 neg_x2 = _mm512_sub_ps(_mm512_setzero_ps(), x2);
    __m512 lo = _mm512_add_ps(round_to<T>(_mm512_mul_ps(x1, c1)), round_to<T>(_mm512_mul_ps(neg_x2, s1)));
    __m512 hi = _mm512_add_ps(round_to<T>(_mm512_mul_ps(x2, c2)), round_to<T>(_mm512_mul_ps(x1, s2)));
    lo = round_to<T>(lo);
    hi = round_to<T>(hi);
    _mm512_mask_storeu_ps(out + i, m, lo);
    _mm512_mask_storeu_ps(out + half + i, m, hi);
  }
}

// Store the new token's k (normed, rotated) and v of every KV head into the fp32 caches.
template <typename T>
void store_kv(const DecodeArgs& a, const T* k, const T* v, const T* cos, const T* sin,
              const int64_t* slot_mapping, float* k_cache, float* v_cache) {
  const int64_t d = a.head_dim;
  for (int64_t b = 0; b < a.num_seqs; ++b) {
    const int64_t slot = slot_mapping[b];
    for (int64_t h = 0; h < a.num_kv_heads; ++h) {
      float* kdst = k_cache + (h * a.cache_slots + slot) * d;
      float* vdst = v_cache + (h * a.cache_slots + slot) * d;
      const T* rope_row_cos = cos + b * a.rope_stride;
      const T* rope_row_sin = sin + b * a.rope_stride;
      norm_rope_head(k + b * a.k_stride + h * d, rope_row_cos, rope_row_sin, kdst, d, a.k_norm);
      const T* vsrc = v + b * a.v_stride + h * d;
      for (int64_t i = 0; i < d; i += 16) {
        __mmask16 m = tail_mask(d - i);
        _mm512_mask_storeu_ps(vdst + i, m, load16(vsrc + i, m));
      }
    }
  }
}

// Sixteen vectors -> one vector of their sixteen horizontal sums (out[j] = sum of v[j]): halve
// the width four times, pairing vectors (256-bit, then 128-bit halves, then within 128-bit lanes),
// which leaves the sums in lane order kSumOrder; one permute restores key order. ~2 instructions
// per key instead of a full reduction each.
inline __m512 sum16x16(__m512 v[16]) {
  __m512 s1[8], s2[4], s3[2];
  for (int i = 0; i < 8; ++i) {
    __m512 lo = _mm512_shuffle_f32x4(v[i], v[i + 8], 0x44), hi = _mm512_shuffle_f32x4(v[i], v[i + 8], 0xEE);
    s1[i] = _mm512_add_ps(lo, hi);
  }
  for (int i = 0; i < 4; ++i) {
    __m512 even = _mm512_shuffle_f32x4(s1[i], s1[i + 4], 0x88), odd = _mm512_shuffle_f32x4(s1[i], s1[i + 4], 0xDD);
    s2[i] = _mm512_add_ps(even, odd);
  }
  for (int i = 0; i < 2; ++i) {
    s3[i] = _mm512_add_ps(_mm512_shuffle_ps(s2[i], s2[i + 2], 0x44), _mm512_shuffle_ps(s2[i], s2[i + 2], 0xEE));
  }
  __m512 r = _mm512_add_ps(_mm512_shuffle_ps(s3[0], s3[1], 0x88), _mm512_shuffle_ps(s3[0], s3[1], 0xDD));
  // lane l of r holds the sum of v[kSumOrder[l]]; the order is its own inverse
  const __m512i kSumOrder = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
  return _mm512_permutexvar_ps(kSumOrder, r);
}

// softmax(scores[0:n]) in place, as torch: exp(s - max) / sum.
inline void softmax_inplace(float* s, int64_t n) {
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; j += 16) {
    vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail_mask(n - j), s + j));
  }
  const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    __mmask16 m = tail_mask(n - j);
    __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), mx));
    vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(m, e));
    _mm512_mask_storeu_ps(s + j, m, e);
  }
  const __m512 total = _mm512_set1_ps(_mm512_reduce_add_ps(vsum));
  for (int64_t j = 0; j < n; j += 16) {
    __mmask16 m = tail_mask(n - j);
    _mm512_mask_storeu_ps(s + j, m, _mm512_div_ps(_mm512_maskz_loadu_ps(m, s + j), total));
  }
}

// scores[t] = scale * q . k[slots[t]] for t < n; q is NC 16-float chunks held in registers.
template <int NC>
void head_scores(const __m512 (&q)[NC], const float* kc, const int64_t* slots, int64_t n, float scale,
                 float* scores) {
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t t0 = 0; t0 < n; t0 += 16) {
    const int64_t count = std::min<int64_t>(16, n - t0);
    __m512 partial[16];
    for (int64_t t = 0; t < 16; ++t) {
      partial[t] = _mm512_setzero_ps();
      if (t >= count) continue;
      const float* krow = kc + slots[t0 + t] * (NC * 16);
      for (int c = 0; c < NC; ++c) {
        partial[t] = _mm512_fmadd_ps(q[c], _mm512_loadu_ps(krow + 16 * c), partial[t]);
      }
    }
    _mm512_mask_storeu_ps(scores + t0, tail_mask(count), _mm512_mul_ps(sum16x16(partial), vscale));
  }
}

// Attention of sequence b's query heads that share KV head g: q (normed, rotated) from the new
// token, keys and values gathered through kv_slots[b] from the fp32 caches (already holding this
// token). NC = head_dim / 16, fixed at compile time so q and the output stay in registers.
template <typename T, int NC>
void attend_group(const DecodeArgs& a, int64_t b, int64_t g, const T* q, const T* cos, const T* sin,
                  const float* k_cache, const float* v_cache, const int64_t* kv_slots, const int64_t* seq_lens,
                  T* out, std::vector<float>& scores) {
  constexpr int64_t d = NC * 16;
  const int64_t group = a.num_heads / a.num_kv_heads;
  const int64_t length = seq_lens[b];
  const int64_t start = a.sliding_window > 0 ? std::max<int64_t>(0, length - a.sliding_window) : 0;
  const int64_t n = length - start;
  const int64_t* slots = kv_slots + b * a.max_keys + start;
  const float* kc = k_cache + g * a.cache_slots * d;
  const float* vc = v_cache + g * a.cache_slots * d;
  scores.resize(static_cast<size_t>(n + 16));
  float qh[d];
  for (int64_t j = 0; j < group; ++j) {
    const int64_t h = g * group + j;
    const T* rope_row_cos = cos + b * a.rope_stride;
    const T* rope_row_sin = sin + b * a.rope_stride;
    norm_rope_head(q + b * a.q_stride + h * d, rope_row_cos, rope_row_sin, qh, d, a.q_norm);
    __m512 qv[NC];
    for (int c = 0; c < NC; ++c) qv[c] = _mm512_loadu_ps(qh + 16 * c);
    head_scores<NC>(qv, kc, slots, n, a.scale, scores.data());
    softmax_inplace(scores.data(), n);
    __m512 acc[NC];
    for (int c = 0; c < NC; ++c) acc[c] = _mm512_setzero_ps();
    for (int64_t t = 0; t < n; ++t) {
      const __m512 p = _mm512_set1_ps(scores[t]);
      const float* vrow = vc + slots[t] * d;
      for (int c = 0; c < NC; ++c) acc[c] = _mm512_fmadd_ps(p, _mm512_loadu_ps(vrow + 16 * c), acc[c]);
    }
    T* dst = out + b * a.num_heads * d + h * d;
    for (int c = 0; c < NC; ++c) store16(dst + 16 * c, acc[c], 0xFFFF);
  }
}

// The decode task of sequence b and KV head g, with head_dim / 16 fixed at compile time.
template <typename T>
void attend_kv_head(const DecodeArgs& a, int64_t b, int64_t g, const T* q, const T* cos, const T* sin,
                    const float* k_cache, const float* v_cache, const int64_t* kv_slots, const int64_t* seq_lens,
                    T* out, std::vector<float>& scores) {
  switch (a.head_dim / 16) {
    case 1: attend_group<T, 1>(a, b, g, q, cos, sin, k_cache, v_cache, kv_slots, seq_lens, out, scores); break;
    case 2: attend_group<T, 2>(a, b, g, q, cos, sin, k_cache, v_cache, kv_slots, seq_lens, out, scores); break;
    case 4: attend_group<T, 4>(a, b, g, q, cos, sin, k_cache, v_cache, kv_slots, seq_lens, out, scores); break;
    case 6: attend_group<T, 6>(a, b, g, q, cos, sin, k_cache, v_cache, kv_slots, seq_lens, out, scores); break;
    case 8: attend_group<T, 8>(a, b, g, q, cos, sin, k_cache, v_cache, kv_slots, seq_lens, out, scores); break;
    case 16: attend_group<T, 16>(a, b, g, q, cos, sin, k_cache, v_cache, kv_slots, seq_lens, out, scores); break;
    default: TORCH_CHECK(false, "head_dim ", a.head_dim, " has no native kernel");
  }
}

// -- rope + cache store + chunk attention ----------------------------------------------------------
// Several new tokens of one sequence (a prompt chunk) attend together. Each query vector scores its
// keys with the decode op's dot products (row_scores), and the P V sums run over keys in the same
// order as the decode op's, so a token's attention output is the same bit for bit whether it runs
// as a decode row, inside a chunk of any length, or beside other sequences (batch invariance). A
// P V tile is 6 query vectors x 64 values, reading value rows in place through the slots; softmax
// is per row over its own causal (and sliding) range. (Packing keys transposed for a 12 x 32 GEMM
// tile, as before, summed each dot product in another order than decode.)

constexpr int kScoreRows = 12;  // query vectors per task (and per GEMM score tile: x 2 key vectors)
constexpr int kValueRows = 6;   // query vectors per P V tile (x 4 value vectors: 24 accumulators)

// scores[t] = scale * q . k[slots[t]] for t < n, for one query vector q of D = 16 NC floats: exactly
// the decode op's dot products (head_scores), so a row scores its keys alike in either op.
template <int NC>
void row_scores(const float* q, const float* kc, const int64_t* slots, int64_t n, float scale, float* scores) {
  __m512 qv[NC];
  for (int c = 0; c < NC; ++c) qv[c] = _mm512_loadu_ps(q + 16 * c);
  head_scores<NC>(qv, kc, slots, n, scale, scores);
}

void row_scores_any(int64_t d, const float* q, const float* kc, const int64_t* slots, int64_t n, float scale,
                    float* scores) {
  switch (d / 16) {
    case 1: return row_scores<1>(q, kc, slots, n, scale, scores);
    case 2: return row_scores<2>(q, kc, slots, n, scale, scores);
    case 4: return row_scores<4>(q, kc, slots, n, scale, scores);
    case 6: return row_scores<6>(q, kc, slots, n, scale, scores);
    case 8: return row_scores<8>(q, kc, slots, n, scale, scores);
    case 16: return row_scores<16>(q, kc, slots, n, scale, scores);
    default: TORCH_CHECK(false, "head_dim ", d, " has no native kernel");
  }
}

// o[i][c0 : c0 + 16 NV] = sum over t in [t_begin, t_end) of p[i][t] * v[slots[t]][c0 : ...].
template <int R, int NV>
void value_slice(const float* p, int64_t lds, const float* vc, const int64_t* slots, int64_t d, int64_t c0,
                 int64_t t_begin, int64_t t_end, float* o) {
  __m512 acc[R][NV];
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < NV; ++c) acc[i][c] = _mm512_setzero_ps();
  for (int64_t t = t_begin; t < t_end; ++t) {
    const float* vrow = vc + slots[t] * d + c0;
    __m512 vv[NV];
    for (int c = 0; c < NV; ++c) vv[c] = _mm512_loadu_ps(vrow + 16 * c);
    for (int i = 0; i < R; ++i) {
      const __m512 b = _mm512_set1_ps(p[i * lds + t]);
      for (int c = 0; c < NV; ++c) acc[i][c] = _mm512_fmadd_ps(b, vv[c], acc[i][c]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < NV; ++c) _mm512_storeu_ps(o + i * d + c0 + 16 * c, acc[i][c]);
}

template <int R>
void value_tile(const float* p, int64_t lds, const float* vc, const int64_t* slots, int64_t d, int64_t t_begin,
                int64_t t_end, float* o) {
  for (int64_t c0 = 0; c0 < d; c0 += 64) {
    switch (std::min<int64_t>(4, (d - c0) / 16)) {
      case 1: value_slice<R, 1>(p, lds, vc, slots, d, c0, t_begin, t_end, o); break;
      case 2: value_slice<R, 2>(p, lds, vc, slots, d, c0, t_begin, t_end, o); break;
      case 3: value_slice<R, 3>(p, lds, vc, slots, d, c0, t_begin, t_end, o); break;
      default: value_slice<R, 4>(p, lds, vc, slots, d, c0, t_begin, t_end, o); break;
    }
  }
}

template <int R>
void value_dispatch(int rows, const float* p, int64_t lds, const float* vc, const int64_t* slots, int64_t d,
                    int64_t t_begin, int64_t t_end, float* o) {
  if constexpr (R > 1) {
    if (rows < R) return value_dispatch<R - 1>(rows, p, lds, vc, slots, d, t_begin, t_end, o);
  }
  value_tile<R>(p, lds, vc, slots, d, t_begin, t_end, o);
}

struct ChunkLayout {
  int64_t key0, n, ld;  // keys at positions [key0, key0 + n); score rows ld apart
};

// Query vectors [m0, m1) of chunk c for KV head g: vector m is row (bounds[c] + m / G), head g G + m % G.
template <typename T>
void attend_chunk_tile(const ChunkArgs& ca, const ChunkLayout& lay, int64_t c, int64_t g, int64_t m0, int64_t m1,
                       const float* qrot, const float* k_cache, const float* v_cache, const int64_t* kv_slots,
                       T* out, std::vector<float>& s, std::vector<float>& o) {
  const DecodeArgs& a = *ca.a;
  const int64_t d = a.head_dim, group = a.num_heads / a.num_kv_heads;
  const int64_t row0 = ca.bounds[c], ctx = ca.context_lens[c];
  const int64_t* slots = kv_slots + c * a.max_keys + lay.key0;
  const float* kc = k_cache + g * a.cache_slots * d;
  const float* vc = v_cache + g * a.cache_slots * d;
  const int rows = static_cast<int>(m1 - m0);
  int64_t begin[kScoreRows], end[kScoreRows];
  int64_t lo = INT64_MAX, hi = 0;
  s.resize(static_cast<size_t>(kScoreRows * lay.ld));
  o.resize(static_cast<size_t>(kValueRows * d));
  for (int i = 0; i < rows; ++i) {
    const int64_t m = m0 + i, r = m / group, h = g * group + m % group;
    std::tie(begin[i], end[i]) = visible_keys(ctx + r, a.sliding_window);
    begin[i] -= lay.key0;
    end[i] -= lay.key0;
    lo = std::min(lo, begin[i]);
    hi = std::max(hi, end[i]);
    float* row = s.data() + i * lay.ld;
    row_scores_any(d, qrot + ((row0 + r) * a.num_heads + h) * d, kc, slots + begin[i], end[i] - begin[i], a.scale,
                   row + begin[i]);
  }
  for (int i = 0; i < rows; ++i) {  // softmax over the row's own keys, zero weight elsewhere in [lo, hi)
    float* row = s.data() + i * lay.ld;
    softmax_inplace(row + begin[i], end[i] - begin[i]);
    std::fill(row + lo, row + begin[i], 0.0f);
    std::fill(row + end[i], row + hi, 0.0f);
  }
  // Keys outside a row's range add 0 * v, which leaves its sums exactly as decode's.
  for (int i0 = 0; i0 < rows; i0 += kValueRows) {
    const int n = std::min(kValueRows, rows - i0);
    value_dispatch<kValueRows>(n, s.data() + i0 * lay.ld, lay.ld, vc, slots, d, lo, hi, o.data());
    for (int i = 0; i < n; ++i) {
      const int64_t m = m0 + i0 + i, r = m / group, h = g * group + m % group;
      T* dst = out + (row0 + r) * a.num_heads * d + h * d;
      for (int64_t j = 0; j < d; j += 16) store16(dst + j, _mm512_loadu_ps(o.data() + i * d + j), 0xFFFF);
    }
  }
}

template <typename T>
void rope_attend_chunks_impl(const ChunkArgs& ca, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& cos, const Tensor& sin, Tensor& k_cache, Tensor& v_cache,
                             const Tensor& slot_mapping, const Tensor& kv_slots, Tensor& out) {
  const DecodeArgs& a = *ca.a;
  const int64_t d = a.head_dim, group = a.num_heads / a.num_kv_heads;
  const T* pcos = cos.data_ptr<T>();
  const T* psin = sin.data_ptr<T>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  const int64_t* slots = kv_slots.data_ptr<int64_t>();
  // Every write before any read: rows attend to their own chunk's new keys.
  store_kv(a, k.data_ptr<T>(), v.data_ptr<T>(), pcos, psin, slot_mapping.data_ptr<int64_t>(), kc, vc);
  std::vector<float> qrot(static_cast<size_t>(a.num_seqs * a.num_heads * d));  // normed, rotated, fp32
  const T* pq = q.data_ptr<T>();
  at::parallel_for(0, a.num_seqs, std::max<int64_t>(1, kMinTaskElements / (a.num_heads * d * 16)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t h = 0; h < a.num_heads; ++h)
        norm_rope_head(pq + r * a.q_stride + h * d, pcos + r * a.rope_stride, psin + r * a.rope_stride,
                       qrot.data() + (r * a.num_heads + h) * d, d, a.q_norm);
  });
  std::vector<ChunkLayout> layouts(static_cast<size_t>(ca.num_chunks));
  for (int64_t c = 0; c < ca.num_chunks; ++c) {
    const int64_t ctx = ca.context_lens[c], rows = ca.bounds[c + 1] - ca.bounds[c];
    const int64_t key0 = visible_keys(ctx, a.sliding_window).first, n = ctx + rows - key0;
    layouts[c] = ChunkLayout{key0, n, (n + 15) / 16 * 16};
  }
  struct Tile { int64_t c, g, m0, m1; };
  std::vector<Tile> tiles;
  for (int64_t c = 0; c < ca.num_chunks; ++c) {
    const int64_t vectors = (ca.bounds[c + 1] - ca.bounds[c]) * group;
    for (int64_t g = 0; g < a.num_kv_heads; ++g)
      for (int64_t m0 = 0; m0 < vectors; m0 += kScoreRows) tiles.push_back({c, g, m0, std::min(vectors, m0 + kScoreRows)});
  }
  T* pout = out.data_ptr<T>();
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s, o;
    for (int64_t i = begin; i < end; ++i) {
      const Tile& t = tiles[i];
      attend_chunk_tile<T>(ca, layouts[t.c], t.c, t.g, t.m0, t.m1, qrot.data(), kc, vc, slots, pout, s, o);
    }
  });
}

// -- the default chunk attention: a 12 x 32 GEMM tile over keys packed transposed, faster than
// row_scores but summing each dot product in another order than decode (not batch-invariant).
// s[i][t] = scale * q_i . k_t for the R query vectors `qs` and keys t in [t_begin, t_end) of the
// packed kt ([D, ld], key t at column t); t_begin is a multiple of 32, ld covers t_end rounded up.
template <int R>
void score_tile(const float* const* qs, const float* kt, int64_t ld, int64_t d, int64_t t_begin, int64_t t_end,
                float scale, float* s, int64_t lds) {
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t t0 = t_begin; t0 < t_end; t0 += 32) {
    __m512 acc[R][2];
    for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int64_t j = 0; j < d; ++j) {
      const float* krow = kt + j * ld + t0;
      const __m512 k0 = _mm512_loadu_ps(krow), k1 = _mm512_loadu_ps(krow + 16);  // ld covers t0 + 32
      for (int i = 0; i < R; ++i) {
        const __m512 b = _mm512_set1_ps(qs[i][j]);
        acc[i][0] = _mm512_fmadd_ps(b, k0, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(b, k1, acc[i][1]);
      }
    }
    for (int i = 0; i < R; ++i) {
      _mm512_storeu_ps(s + i * lds + t0, _mm512_mul_ps(acc[i][0], vscale));
      _mm512_storeu_ps(s + i * lds + t0 + 16, _mm512_mul_ps(acc[i][1], vscale));
    }
  }
}

template <int R>
void score_dispatch(int rows, const float* const* qs, const float* kt, int64_t ld, int64_t d, int64_t t_begin,
                    int64_t t_end, float scale, float* s, int64_t lds) {
  if constexpr (R > 1) {
    if (rows < R) return score_dispatch<R - 1>(rows, qs, kt, ld, d, t_begin, t_end, scale, s, lds);
  }
  score_tile<R>(qs, kt, ld, d, t_begin, t_end, scale, s, lds);
}

// Keys [t_begin, t_end) (positions key0 + t) of one chunk for KV head g, transposed into kt:
// kt[j * ld + t] = dim j of key t. The caller zeroes the columns past the last key.
void pack_keys(const float* k_cache, int64_t cache_slots, int64_t g, int64_t d, const int64_t* slots,
               int64_t key0, int64_t t_begin, int64_t t_end, int64_t ld, float* kt) {
  const float* kc = k_cache + g * cache_slots * d;
  for (int64_t t = t_begin; t < t_end; ++t) {
    const float* krow = kc + slots[key0 + t] * d;
    for (int64_t j = 0; j < d; ++j) kt[j * ld + t] = krow[j];
  }
}

struct GemmLayout {
  int64_t key0, n, ld;  // packed keys: positions [key0, key0 + n), row stride ld
  size_t kt_offset;     // where this (chunk, KV head)'s packed keys start in the shared buffer
};

// Query vectors [m0, m1) of chunk c for KV head g: vector m is row (bounds[c] + m / G), head g G + m % G.
template <typename T>
void attend_chunk_tile_gemm(const ChunkArgs& ca, const GemmLayout& lay, int64_t c, int64_t g, int64_t m0, int64_t m1,
                       const float* qrot, const float* kt, const float* v_cache, const int64_t* kv_slots,
                       T* out, std::vector<float>& s, std::vector<float>& o) {
  const DecodeArgs& a = *ca.a;
  const int64_t d = a.head_dim, group = a.num_heads / a.num_kv_heads;
  const int64_t row0 = ca.bounds[c], ctx = ca.context_lens[c];
  const int64_t* slots = kv_slots + c * a.max_keys;
  const float* vc = v_cache + g * a.cache_slots * d;
  const int rows = static_cast<int>(m1 - m0);
  const float* qs[kScoreRows];
  int64_t begin[kScoreRows], end[kScoreRows];
  int64_t lo = INT64_MAX, hi = 0;
  for (int i = 0; i < rows; ++i) {
    const int64_t m = m0 + i, r = m / group, h = g * group + m % group;
    qs[i] = qrot + ((row0 + r) * a.num_heads + h) * d;
    std::tie(begin[i], end[i]) = visible_keys(ctx + r, a.sliding_window);
    begin[i] -= lay.key0;
    end[i] -= lay.key0;
    lo = std::min(lo, begin[i]);
    hi = std::max(hi, end[i]);
  }
  const int64_t t_begin = lo / 32 * 32;  // score tiles cover whole 32-key blocks, inside ld
  s.resize(static_cast<size_t>(kScoreRows * lay.ld));
  o.resize(static_cast<size_t>(kValueRows * d));
  score_dispatch<kScoreRows>(rows, qs, kt, lay.ld, d, t_begin, hi, a.scale, s.data(), lay.ld);
  for (int i = 0; i < rows; ++i) {  // softmax over the row's own keys, zero weight elsewhere in [lo, hi)
    float* row = s.data() + i * lay.ld;
    softmax_inplace(row + begin[i], end[i] - begin[i]);
    std::fill(row + lo, row + begin[i], 0.0f);
    std::fill(row + end[i], row + hi, 0.0f);
  }
  for (int i0 = 0; i0 < rows; i0 += kValueRows) {
    const int n = std::min(kValueRows, rows - i0);
    value_dispatch<kValueRows>(n, s.data() + i0 * lay.ld, lay.ld, vc, slots + lay.key0, d, lo, hi, o.data());
    for (int i = 0; i < n; ++i) {
      const int64_t m = m0 + i0 + i, r = m / group, h = g * group + m % group;
      T* dst = out + (row0 + r) * a.num_heads * d + h * d;
      for (int64_t j = 0; j < d; j += 16) store16(dst + j, _mm512_loadu_ps(o.data() + i * d + j), 0xFFFF);
    }
  }
}

template <typename T>
void rope_attend_chunks_gemm(const ChunkArgs& ca, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& cos, const Tensor& sin, Tensor& k_cache, Tensor& v_cache,
                             const Tensor& slot_mapping, const Tensor& kv_slots, Tensor& out) {
  const DecodeArgs& a = *ca.a;
  const int64_t d = a.head_dim, group = a.num_heads / a.num_kv_heads;
  const T* pcos = cos.data_ptr<T>();
  const T* psin = sin.data_ptr<T>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  const int64_t* slots = kv_slots.data_ptr<int64_t>();
  // Every write before any read: rows attend to their own chunk's new keys.
  store_kv(a, k.data_ptr<T>(), v.data_ptr<T>(), pcos, psin, slot_mapping.data_ptr<int64_t>(), kc, vc);
  std::vector<float> qrot(static_cast<size_t>(a.num_seqs * a.num_heads * d));  // normed, rotated, fp32
  const T* pq = q.data_ptr<T>();
  at::parallel_for(0, a.num_seqs, std::max<int64_t>(1, kMinTaskElements / (a.num_heads * d * 16)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t h = 0; h < a.num_heads; ++h)
        norm_rope_head(pq + r * a.q_stride + h * d, pcos + r * a.rope_stride, psin + r * a.rope_stride,
                       qrot.data() + (r * a.num_heads + h) * d, d, a.q_norm);
  });
  std::vector<GemmLayout> layouts(static_cast<size_t>(ca.num_chunks));
  size_t kt_size = 0;
  for (int64_t c = 0; c < ca.num_chunks; ++c) {
    const int64_t ctx = ca.context_lens[c], rows = ca.bounds[c + 1] - ca.bounds[c];
    const int64_t key0 = visible_keys(ctx, a.sliding_window).first, n = ctx + rows - key0;
    // rows of kt are ld apart: whole 32-key blocks, plus 16 so that ld is never a power of two
    // (a power-of-two stride maps every row of a transposing store to one L1 set)
    layouts[c] = GemmLayout{key0, n, (n + 31) / 32 * 32 + 16, kt_size};
    kt_size += static_cast<size_t>(a.num_kv_heads * d * layouts[c].ld);
  }
  std::vector<float> kt(kt_size);
  // Packing tasks of 64 keys of one (chunk, KV head): a few hundred keys of three KV heads would
  // otherwise leave one of two threads idle half the time.
  constexpr int64_t kPackKeys = 64;
  struct Pack { int64_t c, g, t_begin, t_end; };
  std::vector<Pack> packs;
  for (int64_t c = 0; c < ca.num_chunks; ++c) {
    const GemmLayout& lay = layouts[c];
    for (int64_t g = 0; g < a.num_kv_heads; ++g) {
      float* dst = kt.data() + lay.kt_offset + g * d * lay.ld;
      for (int64_t j = 0; j < d; ++j) std::fill(dst + j * lay.ld + lay.n, dst + (j + 1) * lay.ld, 0.0f);
      for (int64_t t0 = 0; t0 < lay.n; t0 += kPackKeys) packs.push_back({c, g, t0, std::min(lay.n, t0 + kPackKeys)});
    }
  }
  at::parallel_for(0, static_cast<int64_t>(packs.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Pack& p = packs[i];
      const GemmLayout& lay = layouts[p.c];
      pack_keys(kc, a.cache_slots, p.g, d, slots + p.c * a.max_keys, lay.key0, p.t_begin, p.t_end, lay.ld,
                kt.data() + lay.kt_offset + p.g * d * lay.ld);
    }
  });
  struct Tile { int64_t c, g, m0, m1; };
  std::vector<Tile> tiles;
  for (int64_t c = 0; c < ca.num_chunks; ++c) {
    const int64_t vectors = (ca.bounds[c + 1] - ca.bounds[c]) * group;
    for (int64_t g = 0; g < a.num_kv_heads; ++g)
      for (int64_t m0 = 0; m0 < vectors; m0 += kScoreRows) tiles.push_back({c, g, m0, std::min(vectors, m0 + kScoreRows)});
  }
  T* pout = out.data_ptr<T>();
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s, o;
    for (int64_t i = begin; i < end; ++i) {
      const Tile& t = tiles[i];
      const GemmLayout& lay = layouts[t.c];
      attend_chunk_tile_gemm<T>(ca, lay, t.c, t.g, t.m0, t.m1, qrot.data(), kt.data() + lay.kt_offset + t.g * d * lay.ld,
                           vc, slots, pout, s, o);
    }
  });
}

// Prompt chunks: the GEMM tiles, or decode's dot products when batch invariance is on.
template <typename T>
void attend_chunks(const ChunkArgs& ca, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cos,
                   const Tensor& sin, Tensor& k_cache, Tensor& v_cache, const Tensor& slot_mapping,
                   const Tensor& kv_slots, Tensor& out) {
  (g_batch_invariant ? rope_attend_chunks_impl<T> : rope_attend_chunks_gemm<T>)(
      ca, q, k, v, cos, sin, k_cache, v_cache, slot_mapping, kv_slots, out);
}

void set_batch_invariant(bool on) { g_batch_invariant = on; }

bool cpu_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

}  // namespace

#include "fused_driver.h"
