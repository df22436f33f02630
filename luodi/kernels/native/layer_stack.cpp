// A forward step through the whole decoder stack in one native call. Every layer's norms,
// projections, attention and MLP run back to back here, through the kernels of lowbit.cpp and
// fused_ops.cpp (their tables in kernel_api.h), so a step pays no Python between them: for
// SmolLM2's 30 layers the Python path spent ~0.7 ms a step calling the same kernels (~8 calls and
// module lookups a layer), as long as reading 5 of its layers' weights from memory. That matters
// for every step with few new tokens: decode, and short prompt chunks after a cached prefix.
//
// The stack computes exactly what the models' Python path computes on a CPU step, kernel for
// kernel and in the same order, so the two agree bit for bit. It owns no numerics: it only
// sequences calls. Which layers it can run is decided in Python (luodi/models/native_stack.py),
// which describes each layer with the structs below.

#include <ATen/core/Tensor.h>
#include <torch/csrc/utils/pybind.h>

#include "kernel_api.h"

#include <cstdint>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace {

using at::Tensor;
using luodi::OptTensor;

enum WeightKind : int64_t { kBf16 = 0, kInt8 = 1, kInt4 = 2 };

// A packed linear layer as luodi.kernels.lowbit holds it.
struct Linear {
  int64_t kind = kBf16;
  Tensor weight;
  Tensor scales;  // INT8 only
  OptTensor bias;  // fp32
  int64_t out_features = 0, in_features = 0, padded_in_features = 0, group_size = 0;
  bool per_row = false;  // INT8: one activation scale per row (SmoothQuant W8A8), not per 32 columns
  bool coded = false;    // INT4: 8-bit scale and min codes (lowbit.cpp's coded tile layout)
};

struct Norm {
  Tensor weight;
  double eps = 1e-6;
  bool is_offset = false;  // Gemma's (1 + w)
};

// One decoder layer. Llama-style: h = x + attn(norm_in(x)); out = h + mlp(norm_mlp(h)).
// Gemma 3 adds a norm of the attention output before its add and a norm of the MLP output, both
// with pre_mlp_norm's eps and flavour (true of its checkpoints; checked in Python).
struct Layer {
  Norm input_norm, pre_mlp_norm;
  OptTensor post_attention_norm, post_mlp_norm;
  Linear qkv, o, gate_up, down;
  int64_t act = 0;  // fused_ops' gated_act code
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  double scale = 1.0;
  int64_t sliding_window = 0;  // 0: none
  int64_t rope = 0;            // which of a step's cos/sin tables this layer rotates with
  OptTensor q_norm, k_norm;    // per-head norms (Qwen3, Gemma 3), with head_norm_eps and flavour
  double head_norm_eps = 1e-6;
  bool head_norm_is_offset = false;
};

class LayerStack {
 public:
  LayerStack(uintptr_t lowbit_api, uintptr_t fused_api, std::vector<Layer> layers, Norm final_norm)
      : lowbit_(reinterpret_cast<const luodi::LowbitApi*>(lowbit_api)),
        fused_(reinterpret_cast<const luodi::FusedApi*>(fused_api)),
        layers_(std::move(layers)),
        final_norm_(std::move(final_norm)) {
    TORCH_CHECK(lowbit_ != nullptr && fused_ != nullptr, "the kernel tables must be given");
    for (const Layer& layer : layers_) {
      for (const Linear* l : {&layer.qkv, &layer.o, &layer.gate_up, &layer.down}) {
        TORCH_CHECK(l->kind == kBf16 || l->kind == kInt8 || l->kind == kInt4, "unknown weight kind ", l->kind);
        TORCH_CHECK(l->kind != kBf16 || lowbit_->bf16_linear != nullptr,
                    "a bf16 layer needs the AVX-512 BF16 low-bit kernels; this table has no bf16_linear");
      }
    }
  }

  // One new token per sequence. x [B, hidden]: the embedded tokens; cos/sin: one [B, D] table per
  // rope index; caches, slots and lengths as fused_ops' rope_attend_decode takes them, one cache
  // pair a layer. Returns the final norm of the last hidden state, [B, hidden].
  Tensor decode(const Tensor& x, const std::vector<Tensor>& cos, const std::vector<Tensor>& sin,
                const std::vector<Tensor>& k_caches, const std::vector<Tensor>& v_caches, const Tensor& slot_mapping,
                const Tensor& kv_slots, const Tensor& seq_lens) const {
    return run(x, cos, sin, k_caches, v_caches, [&](const Layer& l, const Tensor& q, const Tensor& k, const Tensor& v,
                                                    const Tensor& c, const Tensor& s, size_t i) {
      return fused_->rope_attend_decode(q, k, v, c, s, k_caches[i], v_caches[i], slot_mapping, kv_slots, seq_lens,
                                        l.num_heads, l.num_kv_heads, l.scale, l.sliding_window, l.q_norm, l.k_norm,
                                        l.head_norm_eps, l.head_norm_is_offset);
    });
  }

  // Chunks of new tokens, each of one sequence (fused_ops' rope_attend_chunks: bounds, context_lens);
  // otherwise as decode. Returns [T, hidden].
  Tensor chunks(const Tensor& x, const std::vector<Tensor>& cos, const std::vector<Tensor>& sin,
                const std::vector<Tensor>& k_caches, const std::vector<Tensor>& v_caches, const Tensor& slot_mapping,
                const Tensor& kv_slots, const Tensor& bounds, const Tensor& context_lens) const {
    return run(x, cos, sin, k_caches, v_caches, [&](const Layer& l, const Tensor& q, const Tensor& k, const Tensor& v,
                                                    const Tensor& c, const Tensor& s, size_t i) {
      return fused_->rope_attend_chunks(q, k, v, c, s, k_caches[i], v_caches[i], slot_mapping, kv_slots, bounds,
                                        context_lens, l.num_heads, l.num_kv_heads, l.scale, l.sliding_window,
                                        l.q_norm, l.k_norm, l.head_norm_eps, l.head_norm_is_offset);
    });
  }

 private:
  Tensor linear(const Linear& l, const Tensor& x) const {
    switch (l.kind) {
      case kInt8:
        return lowbit_->int8_linear(x, l.weight, l.scales, l.bias, l.out_features, l.in_features,
                                    l.padded_in_features, l.per_row);
      case kInt4:
        return lowbit_->int4_linear(x, l.weight, l.bias, l.out_features, l.in_features, l.padded_in_features,
                                    l.group_size, l.coded);
      default:
        return lowbit_->bf16_linear(x, l.weight, l.bias, l.out_features, l.in_features, l.padded_in_features);
    }
  }

  // (norm(x_norm(x) + residual), the sum): fused_ops' add_rms_norm, one eps and flavour for both.
  std::tuple<Tensor, Tensor> add_norm(const Tensor& x, const OptTensor& residual, const Norm& norm,
                                      const OptTensor& x_norm) const {
    return fused_->add_rms_norm(x, residual, norm.weight, norm.eps, norm.is_offset, x_norm, norm.eps);
  }

  // Attend(layer, q, k, v, cos, sin, layer index) -> the layer's attention output [T, H D].
  template <typename Attend>
  Tensor run(const Tensor& x, const std::vector<Tensor>& cos, const std::vector<Tensor>& sin,
             const std::vector<Tensor>& k_caches, const std::vector<Tensor>& v_caches, const Attend& attend) const {
    TORCH_CHECK(k_caches.size() == layers_.size() && v_caches.size() == layers_.size(),
                "one k and one v cache per layer (", layers_.size(), ") are needed");
    TORCH_CHECK(cos.size() == sin.size(), "cos and sin tables must pair up");
    Tensor hidden = x;
    OptTensor residual;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& layer = layers_[i];
      TORCH_CHECK(layer.rope >= 0 && static_cast<size_t>(layer.rope) < cos.size(), "layer ", i, " needs rope table ",
                  layer.rope);
      Tensor normed;
      std::tie(normed, residual) = add_norm(hidden, residual, layer.input_norm, std::nullopt);
      // q, k and v stay views into the fused projection's output, as in the Python path.
      const Tensor qkv = linear(layer.qkv, normed);
      const int64_t q_width = layer.num_heads * layer.head_dim, kv_width = layer.num_kv_heads * layer.head_dim;
      TORCH_CHECK(qkv.size(-1) == q_width + 2 * kv_width, "layer ", i, ": the qkv projection's width ",
                  qkv.size(-1), " does not match its heads");
      const Tensor attn = attend(layer, qkv.narrow(1, 0, q_width), qkv.narrow(1, q_width, kv_width),
                                 qkv.narrow(1, q_width + kv_width, kv_width), cos[layer.rope], sin[layer.rope], i);
      std::tie(normed, residual) =
          add_norm(linear(layer.o, attn), residual, layer.pre_mlp_norm, layer.post_attention_norm);
      hidden = linear(layer.down, fused_->gated_act(linear(layer.gate_up, normed), layer.act));
      if (layer.post_mlp_norm) {
        const Norm post{*layer.post_mlp_norm, layer.pre_mlp_norm.eps, layer.pre_mlp_norm.is_offset};
        hidden = std::get<0>(add_norm(hidden, std::nullopt, post, std::nullopt));
      }
    }
    return std::get<0>(add_norm(hidden, residual, final_norm_, std::nullopt));
  }

  const luodi::LowbitApi* lowbit_;
  const luodi::FusedApi* fused_;
  std::vector<Layer> layers_;
  Norm final_norm_;
};

bool cpu_supported() { return true; }  // only sequences calls: the kernels' own modules check the CPU

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<Linear>(m, "Linear")
      .def(py::init<>())
      .def_readwrite("kind", &Linear::kind)
      .def_readwrite("weight", &Linear::weight)
      .def_readwrite("scales", &Linear::scales)
      .def_readwrite("bias", &Linear::bias)
      .def_readwrite("out_features", &Linear::out_features)
      .def_readwrite("in_features", &Linear::in_features)
      .def_readwrite("padded_in_features", &Linear::padded_in_features)
      .def_readwrite("group_size", &Linear::group_size)
      .def_readwrite("per_row", &Linear::per_row)
      .def_readwrite("coded", &Linear::coded);
  py::class_<Norm>(m, "Norm")
      .def(py::init<>())
      .def_readwrite("weight", &Norm::weight)
      .def_readwrite("eps", &Norm::eps)
      .def_readwrite("is_offset", &Norm::is_offset);
  py::class_<Layer>(m, "Layer")
      .def(py::init<>())
      .def_readwrite("input_norm", &Layer::input_norm)
      .def_readwrite("pre_mlp_norm", &Layer::pre_mlp_norm)
      .def_readwrite("post_attention_norm", &Layer::post_attention_norm)
      .def_readwrite("post_mlp_norm", &Layer::post_mlp_norm)
      .def_readwrite("qkv", &Layer::qkv)
      .def_readwrite("o", &Layer::o)
      .def_readwrite("gate_up", &Layer::gate_up)
      .def_readwrite("down", &Layer::down)
      .def_readwrite("act", &Layer::act)
      .def_readwrite("num_heads", &Layer::num_heads)
      .def_readwrite("num_kv_heads", &Layer::num_kv_heads)
      .def_readwrite("head_dim", &Layer::head_dim)
      .def_readwrite("scale", &Layer::scale)
      .def_readwrite("sliding_window", &Layer::sliding_window)
      .def_readwrite("rope", &Layer::rope)
      .def_readwrite("q_norm", &Layer::q_norm)
      .def_readwrite("k_norm", &Layer::k_norm)
      .def_readwrite("head_norm_eps", &Layer::head_norm_eps)
      .def_readwrite("head_norm_is_offset", &Layer::head_norm_is_offset);
  py::class_<LayerStack>(m, "LayerStack")
      .def(py::init<uintptr_t, uintptr_t, std::vector<Layer>, Norm>())
      .def("decode", &LayerStack::decode, py::call_guard<py::gil_scoped_release>(),
           "a decode step (one new token per sequence) through every layer and the final norm")
      .def("chunks", &LayerStack::chunks, py::call_guard<py::gil_scoped_release>(),
           "a step of prompt chunks through every layer and the final norm");
  m.def("cpu_supported", &cpu_supported, "always true: the kernels' modules check the CPU");
}
