// The fused CPU ops (see fused_ops.cpp) for AVX2 + FMA + F16C CPUs: Haswell and later, Zen 1-3,
// and the avx2 instruction-set level on newer ones. Same functions, signatures, checks
// (fused_common.h) and numerics: every intermediate torch rounds to T is rounded here too, the file
// is compiled with -ffp-contract=off, exp and tanh use the same polynomials (so they agree with the
// AVX-512 build's lane for lane). It differs from that build only in summation order (8 lanes
// instead of 16: norm sums of squares, attention dot products), within the same bounds of torch.
//
// A separate source, not fused_ops.cpp under #if: every inner loop differs (8 lanes, no mask
// registers for tails, no scalef, no 16-bit masked loads), as in lowbit_avx2.cpp.
//
// Batch invariance: prompt chunks always score their keys with the decode op's dot products
// (score_keys) and sum P V over keys in decode's order, so a token's attention is the same bit for
// bit as a decode row or in any chunk. There is no faster GEMM order here to switch to, so
// set_batch_invariant is accepted and changes nothing.

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <torch/extension.h>

#include "fused_common.h"
#include "kernel_api.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

namespace {

// -- 8-lane loads and stores of fp32 / bf16 / fp16 as fp32 ----------------------------------------
// Full vectors load directly; a tail (n < 8) goes through a zeroed buffer (AVX2 has no masks).
template <typename T>
inline __m256 load8_full(const T* p);

template <>
inline __m256 load8_full<float>(const float* p) {
  return _mm256_loadu_ps(p);
}

template <>
inline __m256 load8_full<c10::BFloat16>(const c10::BFloat16* p) {
  // A bf16 is the top half of an fp32: widen and shift (exact).
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

template <>
inline __m256 load8_full<c10::Half>(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <typename T>
inline __m256 load8(const T* p, int64_t n) {
  if (n >= 8) return load8_full(p);
  T buf[8] = {};
  std::memcpy(buf, p, static_cast<size_t>(std::max<int64_t>(0, n)) * sizeof(T));
  return load8_full(buf);
}

// fp32 -> bf16 bits in the top half of each lane, round to nearest even; NaN -> 0xFFFF (as the
// AVX-512 `to_bf16_bits` and ATen's `cvtfp32_bf16`).
inline __m256i bf16_high_bits(__m256 v) {
  __m256i bits = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
  rounded = _mm256_and_si256(rounded, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)));
  __m256 is_number = _mm256_cmp_ps(v, v, _CMP_ORD_Q);
  return _mm256_castps_si256(
      _mm256_blendv_ps(_mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0xFFFF0000u))),
                       _mm256_castsi256_ps(rounded), is_number));
}

template <typename T>
inline void store8_full(T* p, __m256 v);

template <>
inline void store8_full<float>(float* p, __m256 v) {
  _mm256_storeu_ps(p, v);
}

template <>
inline void store8_full<c10::BFloat16>(c10::BFloat16* p, __m256 v) {
  __m256i shifted = _mm256_srli_epi32(bf16_high_bits(v), 16);
  // packus works within 128-bit lanes: [0..3 0..3 | 4..7 4..7]; gather qwords 0 and 2.
  __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(shifted, shifted), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

template <>
inline void store8_full<c10::Half>(c10::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

template <typename T>
inline void store8(T* p, __m256 v, int64_t n) {
  if (n >= 8) return store8_full(p, v);
  T buf[8];
  store8_full(buf, v);
  std::memcpy(p, buf, static_cast<size_t>(std::max<int64_t>(0, n)) * sizeof(T));
}

// The value torch would hold after an op that outputs T: v rounded to T, back in fp32.
template <typename T>
inline __m256 round_to(__m256 v);

template <>
inline __m256 round_to<float>(__m256 v) {
  return v;
}

template <>
inline __m256 round_to<c10::BFloat16>(__m256 v) {
  return _mm256_castsi256_ps(bf16_high_bits(v));
}

template <>
inline __m256 round_to<c10::Half>(__m256 v) {
  return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

inline float reduce_add(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

inline float reduce_max(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

// -- exp and tanh: fused_ops.cpp's exp16 / tanh16 on 8 lanes -----------------------------------
// 2^n * p for integer-valued n in [-150, 128], rounded once like AVX-512's scalef: two exact
// power-of-two factors, each a normal float, so only the last multiply rounds (into subnormals).
inline __m256 scale_by_pow2(__m256 p, __m256 n) {
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i half = _mm256_srai_epi32(ni, 1);
  __m256i rest = _mm256_sub_epi32(ni, half);
  const __m256i bias = _mm256_set1_epi32(127);
  __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
  __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(rest, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
}

inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.72f)), _mm256_set1_ps(-103.9f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  return scale_by_pow2(p, n);
}

inline __m256 tanh8(__m256 y) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  __m256 abs_y = _mm256_andnot_ps(sign_bit, y);
  __m256 e = exp8(_mm256_add_ps(abs_y, abs_y));
  __m256 big = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
  big = _mm256_or_ps(big, _mm256_and_ps(y, sign_bit));
  __m256 z = _mm256_mul_ps(y, y);
  __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
  __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), y, y);
  return _mm256_blendv_ps(big, small, _mm256_cmp_ps(abs_y, _mm256_set1_ps(0.625f), _CMP_LT_OQ));
}

// -- RMSNorm ---------------------------------------------------------------------------------------
template <typename T>
inline float sum_squares(const T* x, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    __m256 v = load8(x + i, n - i);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  return reduce_add(acc);
}

// 1 / sqrt(mean + eps) as torch computes it: sum / n, + eps, sqrt, divide (each correctly rounded).
inline __m256 inv_rms(float sum_sq, int64_t n, float eps) {
  float mean = sum_sq / static_cast<float>(n);
  return _mm256_set1_ps(1.0f / std::sqrt(mean + eps));
}

// HF's RMSNorm from fp32 `v` (fused_ops.cpp's norm16): Llama round_T(w * round_T(v * inv_rms)),
// Gemma round_T(v * inv_rms * (1 + w)).
template <typename T>
inline __m256 norm8(__m256 v, __m256 inv, const float* w, int64_t n, bool is_offset) {
  __m256 weight = load8(w, n);
  __m256 normed = _mm256_mul_ps(v, inv);
  if (is_offset) return round_to<T>(_mm256_mul_ps(normed, _mm256_add_ps(_mm256_set1_ps(1.0f), weight)));
  return round_to<T>(_mm256_mul_ps(weight, round_to<T>(normed)));
}

template <typename T>
void norm_row(const T* x, T* out, int64_t n, const NormSpec& spec) {
  __m256 scale = inv_rms(sum_squares(x, n), n, spec.eps);
  for (int64_t i = 0; i < n; i += 8) {
    store8(out + i, norm8<T>(load8(x + i, n - i), scale, spec.weight.data() + i, n - i, spec.is_offset), n - i);
  }
}

template <typename T>
void add_rms_norm_row(const T* x, const T* residual, T* new_residual, T* normed, int64_t n,
                      const NormSpec& norm, const NormSpec* x_norm) {
  const T* r = x;
  if (x_norm != nullptr || residual != nullptr) {
    const __m256 x_scale = x_norm != nullptr ? inv_rms(sum_squares(x, n), n, x_norm->eps) : _mm256_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 8) {
      __m256 y = load8(x + i, n - i);
      if (x_norm != nullptr) y = norm8<T>(y, x_scale, x_norm->weight.data() + i, n - i, x_norm->is_offset);
      if (residual != nullptr) y = round_to<T>(_mm256_add_ps(y, load8(residual + i, n - i)));
      store8(new_residual + i, y, n - i);
    }
    r = new_residual;
  }
  norm_row(r, normed, n, norm);
}

// -- gated activation -------------------------------------------------------------------------------
// ATen's CPU kernels: silu = x / (1 + exp(-x)); gelu tanh = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
inline __m256 act8(__m256 x, Act act) {
  const __m256 one = _mm256_set1_ps(1.0f);
  if (act == Act::kSilu) {
    __m256 neg_x = _mm256_sub_ps(_mm256_setzero_ps(), x);
    return _mm256_div_ps(x, _mm256_add_ps(one, exp8(neg_x)));
  }
  const __m256 beta = _mm256_set1_ps(static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5));
  const __m256 kappa = _mm256_set1_ps(0.044715f);
  __m256 cube = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
  __m256 inner = _mm256_mul_ps(beta, _mm256_add_ps(x, _mm256_mul_ps(kappa, cube)));
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(one, tanh8(inner)));
}

// One row: act(gate) * up, as torch computes it (act(gate) is a T tensor, then T * T -> T).
template <typename T>
void gated_act_row(const T* gate, const T* up, T* dst, int64_t width, Act act) {
  for (int64_t i = 0; i < width; i += 8) {
    __m256 a = round_to<T>(act8(load8(gate + i, width - i), act));
    store8(dst + i, _mm256_mul_ps(a, load8(up + i, width - i)), width - i);
  }
}

// -- rope + cache store ----------------------------------------------------------------------------
// Optional head norm, then HF `apply_rotary_pos_emb` (rotate-half) with torch's roundings to T:
// round(round(x * cos) + round(rotate_half(x) * sin)). d is a multiple of 16, so no tails.
template <typename T>
void norm_rope_head(const T* x, const T* cos, const T* sin, float* out, int64_t d, const NormSpec* norm) {
  float buf[256];  // head_dim <= 256 (checked)
  const int64_t half = d / 2;
  const __m256 scale = norm != nullptr ? inv_rms(sum_squares(x, d), d, norm->eps) : _mm256_set1_ps(1.0f);
  for (int64_t i = 0; i < d; i += 8) {
    __m256 v = load8_full(x + i);
    if (norm != nullptr) v = norm8<T>(v, scale, norm->weight.data() + i, 8, norm->is_offset);
    _mm256_storeu_ps(buf + i, v);
  }
  for (int64_t i = 0; i < half; i += 8) {
    __m256 x1 = _mm256_loadu_ps(buf + i), x2 = _mm256_loadu_ps(buf + half + i);
    __m256 c1 = load8_full(cos + i), c2 = load8_full(cos + half + i);
    __m256 s1 = load8_full(sin + i), s2 = load8_full(sin + half + i);
    __m256 neg_x2 = _mm256_sub_ps(_mm256_setzero_ps(), x2);
    __m256 lo = _mm256_add_ps(round_to<T>(_mm256_mul_ps(x1, c1)), round_to<T>(_mm256_mul_ps(neg_x2, s1)));
    __m256 hi = _mm256_add_ps(round_to<T>(_mm256_mul_ps(x2, c2)), round_to<T>(_mm256_mul_ps(x1, s2)));
    _mm256_storeu_ps(out + i, round_to<T>(lo));
    _mm256_storeu_ps(out + half + i, round_to<T>(hi));
  }
}

template <typename T>
void store_kv(const DecodeArgs& a, const T* k, const T* v, const T* cos, const T* sin,
              const int64_t* slot_mapping, float* k_cache, float* v_cache) {
  const int64_t d = a.head_dim;
  for (int64_t b = 0; b < a.num_seqs; ++b) {
    const int64_t slot = slot_mapping[b];
    for (int64_t h = 0; h < a.num_kv_heads; ++h) {
      float* kdst = k_cache + (h * a.cache_slots + slot) * d;
      float* vdst = v_cache + (h * a.cache_slots + slot) * d;
      norm_rope_head(k + b * a.k_stride + h * d, cos + b * a.rope_stride, sin + b * a.rope_stride, kdst, d, a.k_norm);
      const T* vsrc = v + b * a.v_stride + h * d;
      for (int64_t i = 0; i < d; i += 8) _mm256_storeu_ps(vdst + i, load8_full(vsrc + i));
    }
  }
}

// -- attention --------------------------------------------------------------------------------------
// Eight vectors -> one vector of their eight horizontal sums (out[j] = sum of v[j]), by a fixed tree.
inline __m256 sum8x8(const __m256 v[8]) {
  __m256 s01 = _mm256_hadd_ps(v[0], v[1]), s23 = _mm256_hadd_ps(v[2], v[3]);
  __m256 s45 = _mm256_hadd_ps(v[4], v[5]), s67 = _mm256_hadd_ps(v[6], v[7]);
  __m256 t0 = _mm256_hadd_ps(s01, s23), t1 = _mm256_hadd_ps(s45, s67);  // [0 1 2 3 | 0 1 2 3] halves
  return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}

// scores[t] = scale * q . k[slots[t]] for t < n, q of D = 8 NC floats. The one dot product both
// attention ops use (batch invariance): per key, an 8-lane FMA chain over D in order, then sum8x8.
template <int NC>
void score_keys(const float* q, const float* kc, const int64_t* slots, int64_t n, float scale, float* scores) {
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int64_t t0 = 0; t0 < n; t0 += 8) {
    const int64_t count = std::min<int64_t>(8, n - t0);
    const float* krows[8];
    for (int64_t t = 0; t < 8; ++t) krows[t] = kc + slots[t0 + std::min(t, count - 1)] * (NC * 8);
    __m256 partial[8];
    for (int t = 0; t < 8; ++t) partial[t] = _mm256_setzero_ps();
    for (int c = 0; c < NC; ++c) {
      const __m256 qc = _mm256_loadu_ps(q + 8 * c);
      for (int t = 0; t < 8; ++t) partial[t] = _mm256_fmadd_ps(qc, _mm256_loadu_ps(krows[t] + 8 * c), partial[t]);
    }
    store8(scores + t0, _mm256_mul_ps(sum8x8(partial), vscale), count);
  }
}

void score_keys_any(int64_t d, const float* q, const float* kc, const int64_t* slots, int64_t n, float scale,
                    float* scores) {
  switch (d / 16) {
    case 1: return score_keys<2>(q, kc, slots, n, scale, scores);
    case 2: return score_keys<4>(q, kc, slots, n, scale, scores);
    case 4: return score_keys<8>(q, kc, slots, n, scale, scores);
    case 6: return score_keys<12>(q, kc, slots, n, scale, scores);
    case 8: return score_keys<16>(q, kc, slots, n, scale, scores);
    case 16: return score_keys<32>(q, kc, slots, n, scale, scores);
    default: TORCH_CHECK(false, "head_dim ", d, " has no native kernel");
  }
}

// softmax(scores[0:n]) in place, as torch: exp(s - max) / sum.
inline void softmax_inplace(float* s, int64_t n) {
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; j += 8) {
    __m256 v = n - j >= 8 ? _mm256_loadu_ps(s + j) : _mm256_set1_ps(-INFINITY);
    if (n - j < 8) std::memcpy(&v, s + j, static_cast<size_t>(n - j) * sizeof(float));
    vmax = _mm256_max_ps(vmax, v);
  }
  const __m256 mx = _mm256_set1_ps(reduce_max(vmax));
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; j += 8) {
    __m256 e = exp8(_mm256_sub_ps(load8(s + j, n - j), mx));
    if (n - j < 8) {  // the tail's padding lanes add nothing
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, e);
      std::fill(lanes + (n - j), lanes + 8, 0.0f);
      e = _mm256_load_ps(lanes);
    }
    vsum = _mm256_add_ps(vsum, e);
    store8(s + j, e, n - j);
  }
  const __m256 total = _mm256_set1_ps(reduce_add(vsum));
  for (int64_t j = 0; j < n; j += 8) store8(s + j, _mm256_div_ps(load8(s + j, n - j), total), n - j);
}

// o[i][c0 : c0 + 16] = sum over t in [t_begin, t_end) of p[i][t] * v[slots[t]][c0 : c0 + 16], for
// R query vectors: per output element one FMA chain over t in key order, the decode op's order.
template <int R>
void value_slice(const float* p, int64_t lds, const float* vc, const int64_t* slots, int64_t d, int64_t c0,
                 int64_t t_begin, int64_t t_end, float* o) {
  __m256 acc[R][2];
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t t = t_begin; t < t_end; ++t) {
    const float* vrow = vc + slots[t] * d + c0;
    const __m256 v0 = _mm256_loadu_ps(vrow), v1 = _mm256_loadu_ps(vrow + 8);
    for (int i = 0; i < R; ++i) {
      const __m256 b = _mm256_set1_ps(p[i * lds + t]);
      acc[i][0] = _mm256_fmadd_ps(b, v0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(b, v1, acc[i][1]);
    }
  }
  for (int i = 0; i < R; ++i) {
    _mm256_storeu_ps(o + i * d + c0, acc[i][0]);
    _mm256_storeu_ps(o + i * d + c0 + 8, acc[i][1]);
  }
}

constexpr int kValueRows = 6;  // query vectors per P V tile (x 2 value vectors: 12 accumulators)

template <int R>
void value_rows(int rows, const float* p, int64_t lds, const float* vc, const int64_t* slots, int64_t d,
                int64_t t_begin, int64_t t_end, float* o) {
  if constexpr (R > 1) {
    if (rows < R) return value_rows<R - 1>(rows, p, lds, vc, slots, d, t_begin, t_end, o);
  }
  for (int64_t c0 = 0; c0 < d; c0 += 16) value_slice<R>(p, lds, vc, slots, d, c0, t_begin, t_end, o);
}

template <typename T>
void store_row(T* dst, const float* src, int64_t d) {
  for (int64_t j = 0; j < d; j += 8) store8_full(dst + j, _mm256_loadu_ps(src + j));
}

// Decode: sequence b's query heads that share KV head g attend to kv_slots[b] (the caches already
// hold this token).
template <typename T>
void attend_kv_head(const DecodeArgs& a, int64_t b, int64_t g, const T* q, const T* cos, const T* sin,
                  const float* k_cache, const float* v_cache, const int64_t* kv_slots, const int64_t* seq_lens,
                  T* out, std::vector<float>& scores) {
  const int64_t d = a.head_dim, group = a.num_heads / a.num_kv_heads;
  const int64_t length = seq_lens[b];
  const int64_t start = a.sliding_window > 0 ? std::max<int64_t>(0, length - a.sliding_window) : 0;
  const int64_t n = length - start;
  const int64_t* slots = kv_slots + b * a.max_keys + start;
  const float* kc = k_cache + g * a.cache_slots * d;
  const float* vc = v_cache + g * a.cache_slots * d;
  scores.resize(static_cast<size_t>(n + 8));
  float qh[256], oh[256];
  for (int64_t j = 0; j < group; ++j) {
    const int64_t h = g * group + j;
    norm_rope_head(q + b * a.q_stride + h * d, cos + b * a.rope_stride, sin + b * a.rope_stride, qh, d, a.q_norm);
    score_keys_any(d, qh, kc, slots, n, a.scale, scores.data());
    softmax_inplace(scores.data(), n);
    value_rows<1>(1, scores.data(), 0, vc, slots, d, 0, n, oh);
    store_row(out + b * a.num_heads * d + h * d, oh, d);
  }
}

// -- chunk attention ---------------------------------------------------------------------------------
// Query vectors [m0, m1) of chunk c for KV head g (vector m: row bounds[c] + m / G, head g G + m % G),
// each scored with score_keys over its own causal (and sliding) range, softmaxed, and summed P V over
// the tile's key range [lo, hi) in key order: keys outside a row's range add 0 * v, which leaves its
// sums exactly as decode's.
constexpr int kTileRows = 12;

template <typename T>
void attend_chunk_tile(const ChunkArgs& ca, int64_t key0, int64_t ld, int64_t c, int64_t g, int64_t m0, int64_t m1,
                       const float* qrot, const float* k_cache, const float* v_cache, const int64_t* kv_slots,
                       T* out, std::vector<float>& s, std::vector<float>& o) {
  const DecodeArgs& a = *ca.a;
  const int64_t d = a.head_dim, group = a.num_heads / a.num_kv_heads;
  const int64_t row0 = ca.bounds[c], ctx = ca.context_lens[c];
  const int64_t* slots = kv_slots + c * a.max_keys + key0;
  const float* kc = k_cache + g * a.cache_slots * d;
  const float* vc = v_cache + g * a.cache_slots * d;
  const int rows = static_cast<int>(m1 - m0);
  int64_t begin[kTileRows], end[kTileRows];
  int64_t lo = INT64_MAX, hi = 0;
  s.resize(static_cast<size_t>(kTileRows * ld));
  o.resize(static_cast<size_t>(kValueRows * d));
  for (int i = 0; i < rows; ++i) {
    const int64_t m = m0 + i, r = m / group, h = g * group + m % group;
    std::tie(begin[i], end[i]) = visible_keys(ctx + r, a.sliding_window);
    begin[i] -= key0;
    end[i] -= key0;
    lo = std::min(lo, begin[i]);
    hi = std::max(hi, end[i]);
    float* row = s.data() + i * ld;
    score_keys_any(d, qrot + ((row0 + r) * a.num_heads + h) * d, kc, slots + begin[i], end[i] - begin[i], a.scale,
                   row + begin[i]);
    softmax_inplace(row + begin[i], end[i] - begin[i]);
  }
  for (int i = 0; i < rows; ++i) {
    float* row = s.data() + i * ld;
    std::fill(row + lo, row + begin[i], 0.0f);
    std::fill(row + end[i], row + hi, 0.0f);
  }
  for (int i0 = 0; i0 < rows; i0 += kValueRows) {
    const int n = std::min(kValueRows, rows - i0);
    value_rows<kValueRows>(n, s.data() + i0 * ld, ld, vc, slots, d, lo, hi, o.data());
    for (int i = 0; i < n; ++i) {
      const int64_t m = m0 + i0 + i, r = m / group, h = g * group + m % group;
      store_row(out + (row0 + r) * a.num_heads * d + h * d, o.data() + i * d, d);
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
  struct Tile { int64_t c, g, m0, m1, key0, ld; };
  std::vector<Tile> tiles;
  for (int64_t c = 0; c < ca.num_chunks; ++c) {
    const int64_t ctx = ca.context_lens[c], rows = ca.bounds[c + 1] - ca.bounds[c];
    const int64_t key0 = visible_keys(ctx, a.sliding_window).first, ld = (ctx + rows - key0 + 7) / 8 * 8;
    for (int64_t g = 0; g < a.num_kv_heads; ++g)
      for (int64_t m0 = 0; m0 < rows * group; m0 += kTileRows)
        tiles.push_back({c, g, m0, std::min(rows * group, m0 + kTileRows), key0, ld});
  }
  T* pout = out.data_ptr<T>();
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s, o;
    for (int64_t i = begin; i < end; ++i) {
      const Tile& t = tiles[i];
      attend_chunk_tile<T>(ca, t.key0, t.ld, t.c, t.g, t.m0, t.m1, qrot.data(), kc, vc, slots, pout, s, o);
    }
  });
}

// Prompt chunks: always decode's dot products (see the top of this file).
template <typename T>
void attend_chunks(const ChunkArgs& ca, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cos,
                   const Tensor& sin, Tensor& k_cache, Tensor& v_cache, const Tensor& slot_mapping,
                   const Tensor& kv_slots, Tensor& out) {
  rope_attend_chunks_impl<T>(ca, q, k, v, cos, sin, k_cache, v_cache, slot_mapping, kv_slots, out);
}

// Accepted for the AVX-512 build's interface: chunks always run in decode's order here.
void set_batch_invariant(bool) {}

bool cpu_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

}  // namespace

#include "fused_driver.h"
