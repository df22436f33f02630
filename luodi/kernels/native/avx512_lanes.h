// Masked 16-lane loads and stores of fp32 / bf16 / fp16 rows as fp32 vectors (AVX-512), shared by
// Luodi's native CPU kernels. Conversions to bf16 round to nearest even exactly as ATen's AVX-512
// `cvtfp32_bf16` does (vec512_bfloat16.h), so stored results are bit-identical to torch's.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cstdint>

namespace luodi {

inline __mmask16 tail_mask(int64_t remaining) {
  if (remaining >= 16) return 0xFFFF;
  if (remaining <= 0) return 0;
  return static_cast<__mmask16>((1u << remaining) - 1);
}

template <typename T>
inline __m512 load16(const T* p, __mmask16 mask);

template <>
inline __m512 load16<float>(const float* p, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, p);
}

template <>
inline __m512 load16<c10::BFloat16>(const c10::BFloat16* p, __mmask16 mask) {
  // A bf16 is the top half of an fp32: widen and shift (exact).
  __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

template <>
inline __m512 load16<c10::Half>(const c10::Half* p, __mmask16 mask) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p));
}

// fp32 -> bf16 bits, round to nearest even; NaN stays NaN. Same steps as ATen's AVX-512
// `cvtfp32_bf16` (vec512_bfloat16.h), so results are bit-identical to torch's bf16 ops.
inline __m256i to_bf16_bits(__m512 v) {
  __m512i bits = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i bias = _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, bias), 16);
  __mmask16 is_number = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
  rounded = _mm512_mask_blend_epi32(is_number, _mm512_set1_epi32(0xFFFF), rounded);
  return _mm512_cvtepi32_epi16(rounded);
}

template <typename T>
inline void store16(T* p, __m512 v, __mmask16 mask);

template <>
inline void store16<float>(float* p, __m512 v, __mmask16 mask) {
  _mm512_mask_storeu_ps(p, mask, v);
}

template <>
inline void store16<c10::BFloat16>(c10::BFloat16* p, __m512 v, __mmask16 mask) {
  _mm256_mask_storeu_epi16(p, mask, to_bf16_bits(v));
}

template <>
inline void store16<c10::Half>(c10::Half* p, __m512 v, __mmask16 mask) {
  _mm256_mask_storeu_epi16(p, mask, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

}  // namespace luodi
