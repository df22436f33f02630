// The ops one native extension offers another, as tables of function pointers. Each extension is
// compiled on its own (their flags differ: fused_ops keeps torch's rounding with
// -ffp-contract=off), so the layer stack (layer_stack.cpp) cannot link against the kernels;
// instead each kernel module fills its table here and hands its address to Python (`api()`), and
// the stack is built with those addresses. Both sides include this header, so a signature that
// changes on one side fails to compile on the other rather than at run time.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace luodi {

using OptTensor = std::optional<at::Tensor>;

// lowbit.cpp: y = x @ W.T (+ bias) for packed weights (shapes as its pybind docs say).
struct LowbitApi {
  at::Tensor (*int8_linear)(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, const OptTensor& bias,
                            int64_t n, int64_t k, int64_t kp, bool per_row);
  at::Tensor (*int4_linear)(const at::Tensor& x, const at::Tensor& w, const OptTensor& bias, int64_t n, int64_t k,
                            int64_t kp, int64_t group_size, bool coded);
  at::Tensor (*bf16_linear)(const at::Tensor& x, const at::Tensor& w, const OptTensor& bias, int64_t n, int64_t k,
                            int64_t kp);
};

// fused_ops.cpp: the work between a layer's matmuls.
struct FusedApi {
  std::tuple<at::Tensor, at::Tensor> (*add_rms_norm)(const at::Tensor& x, const OptTensor& residual,
                                                     const at::Tensor& weight, double eps, bool is_offset,
                                                     const OptTensor& x_weight, double x_eps);
  at::Tensor (*gated_act)(const at::Tensor& gate_up, int64_t act);
  at::Tensor (*rope_attend_decode)(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& cos, const at::Tensor& sin, at::Tensor k_cache,
                                   at::Tensor v_cache, const at::Tensor& slot_mapping, const at::Tensor& kv_slots,
                                   const at::Tensor& seq_lens, int64_t num_heads, int64_t num_kv_heads,
                                   double scale, int64_t sliding_window, const OptTensor& q_norm_weight,
                                   const OptTensor& k_norm_weight, double norm_eps, bool norm_is_offset);
  at::Tensor (*rope_attend_chunks)(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& cos, const at::Tensor& sin, at::Tensor k_cache,
                                   at::Tensor v_cache, const at::Tensor& slot_mapping, const at::Tensor& kv_slots,
                                   const at::Tensor& bounds, const at::Tensor& context_lens, int64_t num_heads,
                                   int64_t num_kv_heads, double scale, int64_t sliding_window,
                                   const OptTensor& q_norm_weight, const OptTensor& k_norm_weight, double norm_eps,
                                   bool norm_is_offset);
};

}  // namespace luodi
