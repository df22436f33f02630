// The torch binding of the AArch64 NEON low-bit kernels (lowbit_neon.h): int8_linear and
// int4_linear with the x86 builds' names, signatures and checks, so luodi/kernels/lowbit.py calls
// them unchanged. Compiled only on aarch64 (-march=armv8.2-a+dotprod). Kept thin on purpose: no
// aarch64 torch exists where Luodi is developed, so this file is compiled only on ARM machines,
// while the kernels it calls are checked there, cross-compiled, under qemu-user
// (tests/kernels/neon). All it adds is what those checks cannot see: x widened to fp32 (exact for
// bf16 / fp16), threads over output tiles (never over K, so batch invariance holds), y rounded to
// x's dtype by torch (round to nearest even, as the x86 builds' stores), and the i8mm probe.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <asm/hwcap.h>
#include <sys/auxv.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "lowbit_call.h"
#include "lowbit_neon.h"

namespace {

using namespace luodi::neon;

const bool kHasI8mm = cpu_has_i8mm();          // smmla for passes of an even number of rows

struct Call {
  at::Tensor x, bias;  // x fp32 [rows, k]; bias fp32 or undefined
  std::vector<int64_t> out_sizes;
  int64_t rows;
};

// The x86 builds' checks and messages; x widened to fp32 here (exact for bf16 / fp16).
Call prepare(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t n, int64_t k) {
  luodi::check_call_inputs(x, bias, n, k);
  Call call{x.reshape({-1, k}).to(at::kFloat).contiguous(), at::Tensor(), x.sizes().vec(), 0};
  call.rows = call.x.size(0);
  call.out_sizes.back() = n;
  if (bias.has_value()) call.bias = bias->to(at::kFloat).contiguous();
  return call;
}

// Quantizes x (rows in parallel: each writes its own slots), runs `tiles(t0, t1, y)` over output
// tiles in parallel, and returns y in x's dtype and shape.
template <typename TilesFn>
at::Tensor run(const Call& call, const at::Tensor& x, int64_t n, int64_t kp, int64_t sum_block, ActQuant mode,
               int64_t tile_bytes, const TilesFn& tiles) {
  QuantizedRows xq = alloc_rows(call.rows, kp, sum_block, mode);
  const float* xp = call.x.data_ptr<float>();
  const int64_t k = call.x.size(1);
  at::parallel_for(0, call.rows, std::max<int64_t>(1, (64 << 10) / kp), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) quantize_row(xp + m * k, m, k, xq, mode);
  });
  at::Tensor y = at::empty({call.rows, n}, x.options().dtype(at::kFloat));
  float* yp = y.data_ptr<float>();
  const float* bp = call.bias.defined() ? call.bias.data_ptr<float>() : nullptr;
  at::parallel_for(0, (n + kTile - 1) / kTile, luodi::tiles_per_task(tile_bytes),
                   [&](int64_t t0, int64_t t1) { tiles(xq, bp, yp, t0, t1); });
  return y.to(x.scalar_type()).view(call.out_sizes);
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales,
                       const std::optional<at::Tensor>& bias, int64_t n, int64_t k, int64_t kp, bool per_row) {
  const int64_t tile_bytes = int8_tile_bytes(kp);
  TORCH_CHECK(kp % kBlock == 0 && kp >= k && w.scalar_type() == at::kByte && w.is_contiguous() &&
                  w.numel() == (n + kTile - 1) / kTile * tile_bytes && scales.scalar_type() == at::kFloat &&
                  scales.is_contiguous() && scales.numel() >= (n + kTile - 1) / kTile * kTile,
              "packed INT8 weight does not match its shape: repack it with prepack_int8");
  const Call call = prepare(x, bias, n, k);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float* sp = scales.data_ptr<float>();
  const ActQuant mode = per_row ? ActQuant::kRow : ActQuant::kBlockTwoTerm;
  return run(call, x, n, kp, kp, mode, tile_bytes,
             [&](const QuantizedRows& xq, const float* bp, float* yp, int64_t t0, int64_t t1) {
               int8_tiles(wp, sp, bp, xq, yp, n, t0, t1, kHasI8mm);
             });
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                       int64_t n, int64_t k, int64_t kp, int64_t group_size, bool coded) {
  TORCH_CHECK(group_size > 0 && group_size % kBlock == 0 && kp % group_size == 0,
              "packed INT4 weight does not match its shape: repack it with prepack_int4");
  const int64_t tile_bytes = int4_tile_bytes(kp, group_size, coded);
  TORCH_CHECK(kp >= k && w.scalar_type() == at::kByte && w.is_contiguous() &&
                  w.numel() == (n + kTile - 1) / kTile * tile_bytes,
              "packed INT4 weight does not match its shape: repack it with prepack_int4");
  const Call call = prepare(x, bias, n, k);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  return run(call, x, n, kp, group_size, ActQuant::kBlock, tile_bytes,
             [&](const QuantizedRows& xq, const float* bp, float* yp, int64_t t0, int64_t t1) {
               int4_tiles(wp, bp, xq, yp, n, group_size, coded, t0, t1, kHasI8mm);
             });
}

bool cpu_supported() { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0; }

}  // namespace

constexpr auto kNoGil = py::call_guard<py::gil_scoped_release>();

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_linear", &int8_linear, kNoGil, "y = x @ W.T for a packed INT8 weight (NEON dot-product)");
  m.def("int4_linear", &int4_linear, kNoGil, "y = x @ W.T for a packed INT4 weight (NEON dot-product)");
  m.def("cpu_supported", &cpu_supported, "whether this CPU has the instructions the kernels use");
}
