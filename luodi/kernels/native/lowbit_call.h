// The torch side every low-bit binding shares (lowbit.cpp, lowbit_avx2.cpp, lowbit_neon.cpp): one
// call's input checks with their messages (ValueError; luodi/kernels/lowbit.py turns them into
// Luodi's error type), and the x86 builds' flattened call and dtype dispatch.

#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <string>
#include <vector>

namespace luodi {

// x [..., k] float32 / bfloat16 / float16 on the CPU, bias none or n values on the CPU.
inline void check_call_inputs(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t n, int64_t k) {
  if (x.dim() < 1 || x.size(-1) != k) {
    throw py::value_error("input has " + std::to_string(x.dim() ? x.size(-1) : 0) + " features, the weight expects " +
                          std::to_string(k));
  }
  const auto dtype = x.scalar_type();
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf) {
    throw py::value_error("input dtype " + std::string(c10::toString(dtype)) +
                          " is not supported; use float32, bfloat16 or float16");
  }
  if (!x.device().is_cpu()) throw py::value_error("input is not on the CPU; move it there for the low-bit kernels");
  if (bias.has_value() && (bias->numel() != n || !bias->device().is_cpu())) {
    throw py::value_error("bias must be a CPU tensor of " + std::to_string(n) + " values");
  }
}

// One x86 call, checked and flattened: x [rows, k] contiguous in its dtype, y [..., n] allocated,
// bias fp32 or undefined.
struct Call {
  at::Tensor x, y, bias;
  int64_t rows, k, kp, n;
};

inline Call prepare(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t n, int64_t k, int64_t kp) {
  check_call_inputs(x, bias, n, k);
  Call call{x.reshape({-1, k}).contiguous(), at::Tensor(), at::Tensor(), 0, k, kp, n};
  call.rows = call.x.size(0);
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = n;
  call.y = at::empty(sizes, x.options());
  if (bias.has_value()) call.bias = bias->to(at::kFloat).contiguous();  // no copy when already fp32
  return call;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// fn(TypeTag<T>{}) for x's dtype T (checked by `check_call_inputs`).
template <typename Fn>
void dispatch_dtype(at::ScalarType dtype, const Fn& fn) {
  switch (dtype) {
    case at::kBFloat16: return fn(TypeTag<c10::BFloat16>{});
    case at::kHalf: return fn(TypeTag<c10::Half>{});
    default: return fn(TypeTag<float>{});
  }
}

}  // namespace luodi
