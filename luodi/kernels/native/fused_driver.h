// The ISA-neutral half of the fused ops (fused_ops.cpp, fused_ops_avx2.cpp): the dtype switches,
// the row and task loops over at::parallel_for, the Python module and the FusedApi table. Each
// build includes this file last, after defining its own inner kernels in its anonymous namespace:
//
//   template <typename T> void add_rms_norm_row(const T* x, const T* residual, T* new_residual,
//                                               T* normed, int64_t n, const NormSpec&, const NormSpec* x_norm);
//   template <typename T> void gated_act_row(const T* gate, const T* up, T* dst, int64_t width, Act);
//   template <typename T> void store_kv(const DecodeArgs&, k, v, cos, sin, slot_mapping, k_cache, v_cache);
//   template <typename T> void attend_kv_head(const DecodeArgs&, int64_t b, int64_t g, q, cos, sin,
//                                             k_cache, v_cache, kv_slots, seq_lens, out, scores);
//   template <typename T> void attend_chunks(const ChunkArgs&, q, k, v, cos, sin, k_cache, v_cache,
//                                            slot_mapping, kv_slots, out);
//   bool cpu_supported();  void set_batch_invariant(bool);
//
// so the calls below resolve to that build's kernels; the argument checks are fused_common.h's.

#pragma once

namespace {

template <typename T>
void add_rms_norm_impl(const Tensor& x, const Tensor* residual, Tensor& new_residual, Tensor& normed,
                       const NormSpec& norm, const NormSpec* x_norm) {
  const int64_t n = x.size(-1), rows = x.numel() / n;
  const T* px = x.data_ptr<T>();
  const T* pres = residual != nullptr ? residual->data_ptr<T>() : nullptr;
  T* pnew = new_residual.data_ptr<T>();
  T* pout = normed.data_ptr<T>();
  // Threads only for prompt-sized inputs: a fork/join costs ~5 us on an idle 2-core machine and
  // milliseconds on a busy one, while a decode row takes well under a microsecond.
  at::parallel_for(0, rows, std::max<int64_t>(1, kMinTaskElements / n), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* res_row = pres != nullptr ? pres + row * n : nullptr;
      add_rms_norm_row(px + row * n, res_row, pnew + row * n, pout + row * n, n, norm, x_norm);
    }
  });
}

// (normed, new_residual). new_residual is `x` itself when there is neither a residual nor a pre-norm.
std::tuple<Tensor, Tensor> add_rms_norm(const Tensor& x, const c10::optional<Tensor>& residual,
                                        const Tensor& weight, double eps, bool is_offset,
                                        const c10::optional<Tensor>& x_weight, double x_eps) {
  AddNormInputs in = check_add_rms_norm_inputs(x, residual, weight, eps, is_offset, x_weight, x_eps);
  const Tensor* res = residual ? &*residual : nullptr;
  const NormSpec* pre = x_weight ? &in.pre : nullptr;
  switch (x.scalar_type()) {
    case at::kFloat: add_rms_norm_impl<float>(x, res, in.new_residual, in.normed, in.norm, pre); break;
    case at::kBFloat16: add_rms_norm_impl<c10::BFloat16>(x, res, in.new_residual, in.normed, in.norm, pre); break;
    case at::kHalf: add_rms_norm_impl<c10::Half>(x, res, in.new_residual, in.normed, in.norm, pre); break;
    default: TORCH_CHECK(false, "add_rms_norm: unsupported dtype ", x.scalar_type());
  }
  return {in.normed, in.new_residual};
}

template <typename T>
void gated_act_impl(const Tensor& gate_up, Tensor& out, Act act) {
  const int64_t width = out.size(-1), rows = out.numel() / width;
  const T* in = gate_up.data_ptr<T>();
  T* o = out.data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, kMinTaskElements / 2 / width);  // exp + divide: ~2x a norm's cost
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* gate = in + row * 2 * width;
      gated_act_row(gate, gate + width, o + row * width, width, act);
    }
  });
}

// gate_up [..., 2I] (gate first, then up) -> act(gate) * up [..., I]
Tensor gated_act(const Tensor& gate_up, int64_t act) {
  Tensor out = check_gated_act_inputs(gate_up, act);
  switch (gate_up.scalar_type()) {
    case at::kFloat: gated_act_impl<float>(gate_up, out, static_cast<Act>(act)); break;
    case at::kBFloat16: gated_act_impl<c10::BFloat16>(gate_up, out, static_cast<Act>(act)); break;
    case at::kHalf: gated_act_impl<c10::Half>(gate_up, out, static_cast<Act>(act)); break;
    default: TORCH_CHECK(false, "gated_act: unsupported dtype ", gate_up.scalar_type());
  }
  return out;
}

template <typename T>
void rope_attend_decode_impl(const DecodeArgs& a, const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& cos, const Tensor& sin, Tensor& k_cache, Tensor& v_cache,
                             const Tensor& slot_mapping, const Tensor& kv_slots, const Tensor& seq_lens,
                             Tensor& out) {
  const T* pcos = cos.data_ptr<T>();
  const T* psin = sin.data_ptr<T>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  // Every write before any read: a sequence attends to its own new token.
  store_kv(a, k.data_ptr<T>(), v.data_ptr<T>(), pcos, psin, slot_mapping.data_ptr<int64_t>(), kc, vc);
  const T* pq = q.data_ptr<T>();
  const int64_t* slots = kv_slots.data_ptr<int64_t>();
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  T* pout = out.data_ptr<T>();
  const int64_t tasks = a.num_seqs * a.num_kv_heads;
  // A task (one sequence, one KV head) costs ~4 * group * keys * D flops; hand tasks to another
  // thread only in chunks of ~1 MFLOP (tens of microseconds), well above a fork/join's cost.
  const int64_t flops_per_task = 4 * (a.num_heads / a.num_kv_heads) * a.max_keys * a.head_dim;
  const int64_t grain = std::max<int64_t>(1, kMinTaskFlops / std::max<int64_t>(1, flops_per_task));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      attend_kv_head(a, task / a.num_kv_heads, task % a.num_kv_heads, pq, pcos, psin, kc, vc, slots, lens, pout,
                     scores);
    }
  });
}

// One query row per sequence: slot_mapping [B], kv_slots [B, K], seq_lens [B] int64. Returns the
// attention output [B, H*D] in q's dtype.
Tensor rope_attend_decode(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cos, const Tensor& sin,
                          Tensor k_cache, Tensor v_cache, const Tensor& slot_mapping, const Tensor& kv_slots,
                          const Tensor& seq_lens, int64_t num_heads, int64_t num_kv_heads, double scale,
                          int64_t sliding_window, const c10::optional<Tensor>& q_norm_weight,
                          const c10::optional<Tensor>& k_norm_weight, double norm_eps, bool norm_is_offset) {
  AttendInputs in;
  check_attend_inputs(in, q, k, v, cos, sin, k_cache, v_cache, kv_slots, num_heads, num_kv_heads, scale,
                      sliding_window, q_norm_weight, k_norm_weight, norm_eps, norm_is_offset);
  const DecodeArgs& a = in.a;
  check_slots(slot_mapping, kv_slots, seq_lens, a.num_seqs, k_cache.size(1));
  Tensor out = at::empty({a.num_seqs, num_heads * a.head_dim}, q.options());
  switch (q.scalar_type()) {
    case at::kFloat: rope_attend_decode_impl<float>(a, q, k, v, cos, sin, k_cache, v_cache, slot_mapping,
                                                    kv_slots, seq_lens, out); break;
    case at::kBFloat16: rope_attend_decode_impl<c10::BFloat16>(a, q, k, v, cos, sin, k_cache, v_cache,
                                                               slot_mapping, kv_slots, seq_lens, out); break;
    case at::kHalf: rope_attend_decode_impl<c10::Half>(a, q, k, v, cos, sin, k_cache, v_cache, slot_mapping,
                                                       kv_slots, seq_lens, out); break;
    default: TORCH_CHECK(false, "rope_attend_decode: unsupported dtype ", q.scalar_type());
  }
  return out;
}

// Chunks of consecutive rows, each chunk the new tokens of one sequence: rows [bounds[c],
// bounds[c + 1]) follow context_lens[c] cached tokens and attend to kv_slots[c, :position + 1].
// slot_mapping [T], kv_slots [C, K], bounds [C + 1], context_lens [C] int64.
Tensor rope_attend_chunks(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cos, const Tensor& sin,
                          Tensor k_cache, Tensor v_cache, const Tensor& slot_mapping, const Tensor& kv_slots,
                          const Tensor& bounds, const Tensor& context_lens, int64_t num_heads, int64_t num_kv_heads,
                          double scale, int64_t sliding_window, const c10::optional<Tensor>& q_norm_weight,
                          const c10::optional<Tensor>& k_norm_weight, double norm_eps, bool norm_is_offset) {
  AttendInputs in;
  check_attend_inputs(in, q, k, v, cos, sin, k_cache, v_cache, kv_slots, num_heads, num_kv_heads, scale,
                      sliding_window, q_norm_weight, k_norm_weight, norm_eps, norm_is_offset);
  const ChunkArgs ca = check_chunk_inputs(in.a, slot_mapping, kv_slots, bounds, context_lens, k_cache);
  Tensor out = at::empty({in.a.num_seqs, num_heads * in.a.head_dim}, q.options());
  switch (q.scalar_type()) {
    case at::kFloat: attend_chunks<float>(ca, q, k, v, cos, sin, k_cache, v_cache, slot_mapping, kv_slots, out);
      break;
    case at::kBFloat16: attend_chunks<c10::BFloat16>(ca, q, k, v, cos, sin, k_cache, v_cache, slot_mapping,
                                                     kv_slots, out); break;
    case at::kHalf: attend_chunks<c10::Half>(ca, q, k, v, cos, sin, k_cache, v_cache, slot_mapping, kv_slots, out);
      break;
    default: TORCH_CHECK(false, "rope_attend_chunks: unsupported dtype ", q.scalar_type());
  }
  return out;
}

}  // namespace

// The ops touch no Python object: let other threads (the server's event loop) run meanwhile.
constexpr auto kNoGil = py::call_guard<py::gil_scoped_release>();

const luodi::FusedApi kApi{&add_rms_norm, &gated_act, &rope_attend_decode, &rope_attend_chunks};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("add_rms_norm", &add_rms_norm, kNoGil, "(rms_norm(x [+ residual]), new residual) in one pass");
  m.def("gated_act", &gated_act, kNoGil, "act(gate) * up over a fused [.., 2I] gate/up projection");
  m.def("rope_attend_decode", &rope_attend_decode, kNoGil,
        "q/k norm + RoPE, k/v into the paged cache, and one-query-per-sequence attention");
  m.def("rope_attend_chunks", &rope_attend_chunks, kNoGil,
        "q/k norm + RoPE, k/v into the paged cache, and attention of prompt chunks (rows of one sequence each)");
  m.def("is_native_head_dim", &is_native_head_dim, "whether rope_attend_decode has a kernel for this head_dim");
  m.def("cpu_supported", &cpu_supported, "whether this CPU has the instructions the kernels use");
  m.def("set_batch_invariant", &set_batch_invariant, "chunk attention in decode's order");
  m.def("api", [] { return reinterpret_cast<uintptr_t>(&kApi); }, "the address of the FusedApi table (kernel_api.h)");
}
