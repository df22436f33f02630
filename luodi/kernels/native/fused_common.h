// What the AVX-512 and AVX2 builds of the fused ops share: argument checks and the plain structs
// they pass around. Nothing here depends on an instruction set (each build compiles it with its own
// flags); the kernels themselves live in fused_ops.cpp and fused_ops_avx2.cpp.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

// Internal linkage: both builds may be loaded into one process (tests force levels in turn).
namespace {

using at::Tensor;

constexpr int64_t kMinTaskElements = 1 << 17;  // per thread, for the row-wise ops
constexpr int64_t kMinTaskFlops = 1 << 20;     // per thread, for decode attention

// A weight vector as fp32 (exact for every T), without an ATen op: these run once per layer call.
template <typename W>
std::vector<float> widen(const Tensor& w) {
  const W* p = w.data_ptr<W>();
  std::vector<float> out(static_cast<size_t>(w.numel()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(p[i]);
  return out;
}

std::vector<float> to_floats(const Tensor& w) {
  TORCH_CHECK(w.device().is_cpu() && w.is_contiguous(), "norm weights must be contiguous CPU tensors");
  switch (w.scalar_type()) {
    case at::kFloat: return widen<float>(w);
    case at::kBFloat16: return widen<c10::BFloat16>(w);
    case at::kHalf: return widen<c10::Half>(w);
    default: TORCH_CHECK(false, "norm weight dtype ", w.scalar_type(), " is not fp32, bf16 or fp16");
  }
}

struct NormSpec {
  std::vector<float> weight;  // fp32 copy
  float eps;
  bool is_offset;
};

void check_rows(const Tensor& t, const char* name, const Tensor& like) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// -- add_rms_norm and gated_act arguments -------------------------------------------------------------
struct AddNormInputs {
  NormSpec norm{}, pre{};  // pre: the x norm (Gemma's post-attention norm), when x_weight is given
  Tensor new_residual, normed;  // outputs; new_residual is x itself when there is nothing to add
};

AddNormInputs check_add_rms_norm_inputs(const Tensor& x, const c10::optional<Tensor>& residual,
                                        const Tensor& weight, double eps, bool is_offset,
                                        const c10::optional<Tensor>& x_weight, double x_eps) {
  check_rows(x, "x", x);
  const int64_t n = x.size(-1);
  TORCH_CHECK(weight.numel() == n, "weight has ", weight.numel(), " elements, x rows have ", n);
  if (residual) {
    check_rows(*residual, "residual", x);
    TORCH_CHECK(residual->sizes() == x.sizes(), "residual shape ", residual->sizes(), " != x shape ", x.sizes());
  }
  AddNormInputs in;
  in.norm = NormSpec{to_floats(weight), static_cast<float>(eps), is_offset};
  if (x_weight) {
    TORCH_CHECK(x_weight->numel() == n, "x_weight has ", x_weight->numel(), " elements, x rows have ", n);
    in.pre = NormSpec{to_floats(*x_weight), static_cast<float>(x_eps), is_offset};
  }
  const bool writes_residual = residual.has_value() || x_weight.has_value();
  in.new_residual = writes_residual ? at::empty_like(x) : x;
  in.normed = at::empty_like(x);
  return in;
}

enum class Act { kSilu = 0, kGeluTanh = 1 };

// Checks gate_up [..., 2I] and act; returns the [..., I] output to fill.
Tensor check_gated_act_inputs(const Tensor& gate_up, int64_t act) {
  check_rows(gate_up, "gate_up", gate_up);
  TORCH_CHECK(gate_up.size(-1) % 2 == 0, "gate_up's last dimension must be even, got ", gate_up.size(-1));
  TORCH_CHECK(act == 0 || act == 1, "act must be 0 (silu) or 1 (gelu tanh), got ", act);
  auto sizes = gate_up.sizes().vec();
  sizes.back() /= 2;
  return at::empty(sizes, gate_up.options());
}

struct DecodeArgs {
  int64_t num_seqs, num_heads, num_kv_heads, head_dim;
  int64_t q_stride, k_stride, v_stride, rope_stride;  // row strides, in elements
  int64_t cache_slots;                                  // S of the [Hkv, S, D] caches
  int64_t max_keys;                                     // K of kv_slots [B, K]
  float scale;
  int64_t sliding_window;  // 0: none
  const NormSpec* q_norm;  // per-head norms before RoPE (Qwen3, Gemma 3), or null
  const NormSpec* k_norm;
};

struct ChunkArgs {
  const DecodeArgs* a;
  const int64_t* bounds;        // [C + 1] first row of each chunk
  const int64_t* context_lens;  // [C] cached tokens before each chunk
  int64_t num_chunks;
};

// Keys a row attends to, as [begin, end) positions in its sequence.
inline std::pair<int64_t, int64_t> visible_keys(int64_t position, int64_t window) {
  const int64_t end = position + 1;
  return {window > 0 ? std::max<int64_t>(0, end - window) : 0, end};
}

bool is_native_head_dim(int64_t head_dim) {
  const int64_t nc = head_dim / 16;
  return head_dim % 16 == 0 && (nc == 1 || nc == 2 || nc == 4 || nc == 6 || nc == 8 || nc == 16);
}

int64_t row_stride(const Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.stride(1) == 1, name, " must be 2-D with contiguous rows, got sizes ", t.sizes(),
              " strides ", t.strides());
  return t.stride(0);
}

void check_cache(const Tensor& cache, const char* name, int64_t num_kv_heads, int64_t head_dim) {
  TORCH_CHECK(cache.device().is_cpu() && cache.scalar_type() == at::kFloat && cache.is_contiguous() &&
                  cache.dim() == 3,
              name, " must be a contiguous fp32 [Hkv, S, D] CPU tensor");
  TORCH_CHECK(cache.size(0) == num_kv_heads && cache.size(2) == head_dim, name, " has shape ", cache.sizes(),
              ", expected [", num_kv_heads, ", S, ", head_dim, "]");
}

// The engine builds these indices itself, but a bad one would touch memory out of bounds: check
// them (plain loops over B and the used keys; ATen reductions would cost more than the op).
void check_slots(const Tensor& slot_mapping, const Tensor& kv_slots, const Tensor& seq_lens, int64_t num_seqs,
                 int64_t num_slots) {
  for (const Tensor* t : {&slot_mapping, &kv_slots, &seq_lens}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong && t->is_contiguous(),
                "slot_mapping, kv_slots and seq_lens must be contiguous int64 CPU tensors");
  }
  TORCH_CHECK(slot_mapping.numel() == num_seqs && seq_lens.numel() == num_seqs && kv_slots.dim() == 2 &&
                  kv_slots.size(0) == num_seqs,
              "one slot, one length and one kv_slots row per sequence are needed");
  const int64_t max_keys = kv_slots.size(1);
  const int64_t* sm = slot_mapping.data_ptr<int64_t>();
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  const int64_t* ks = kv_slots.data_ptr<int64_t>();
  for (int64_t b = 0; b < num_seqs; ++b) {
    TORCH_CHECK(sm[b] >= 0 && sm[b] < num_slots, "slot_mapping[", b, "] = ", sm[b], " is outside [0, ", num_slots,
                ")");
    TORCH_CHECK(lens[b] >= 1 && lens[b] <= max_keys, "seq_lens[", b, "] = ", lens[b], " is outside [1, ", max_keys,
                "]");
    for (int64_t j = 0; j < lens[b]; ++j) {
      const int64_t slot = ks[b * max_keys + j];
      TORCH_CHECK(slot >= 0 && slot < num_slots, "kv_slots[", b, ", ", j, "] = ", slot, " is outside [0, ",
                  num_slots, ")");
    }
  }
}

// The checked arguments of the attention ops; `a`'s norm pointers point into this object.
struct AttendInputs {
  DecodeArgs a;
  NormSpec qn, kn;
  AttendInputs() = default;
  AttendInputs(const AttendInputs&) = delete;
};

// q [B, H*D], k and v [B, Hkv*D] (rows may be strided: views into a fused qkv output);
// cos and sin [B, D] (or [B, 1, D]); caches fp32 [Hkv, S, D].
void check_attend_inputs(AttendInputs& in, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cos,
                         const Tensor& sin, const Tensor& k_cache, const Tensor& v_cache, const Tensor& kv_slots,
                         int64_t num_heads, int64_t num_kv_heads, double scale, int64_t sliding_window,
                         const c10::optional<Tensor>& q_norm_weight, const c10::optional<Tensor>& k_norm_weight,
                         double norm_eps, bool norm_is_offset) {
  TORCH_CHECK(q.dim() == 2 && k.dim() == 2 && v.dim() == 2, "q, k and v must be 2-D [B, heads * head_dim]");
  const int64_t num_rows = q.size(0);
  TORCH_CHECK(num_heads > 0 && num_kv_heads > 0 && num_heads % num_kv_heads == 0,
              "num_heads (", num_heads, ") must be a positive multiple of num_kv_heads (", num_kv_heads, ")");
  const int64_t head_dim = q.size(1) / num_heads;
  TORCH_CHECK(head_dim * num_heads == q.size(1) && is_native_head_dim(head_dim), "q's width ", q.size(1),
              " is not num_heads (", num_heads, ") x a head_dim in {16, 32, 64, 96, 128, 256}");
  TORCH_CHECK(k.size(1) == num_kv_heads * head_dim && v.size(1) == k.size(1), "k/v width must be ",
              num_kv_heads * head_dim);
  TORCH_CHECK(k.size(0) == num_rows && v.size(0) == num_rows, "q, k and v must have the same number of rows");
  for (const Tensor* t : {&q, &k, &v, &cos, &sin}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == q.scalar_type(),
                "q, k, v, cos and sin must be CPU tensors of one dtype");
  }
  // [B, D] rows, read through their data pointers (a reshape would be one more dispatched op)
  for (const Tensor* t : {&cos, &sin}) {
    TORCH_CHECK(t->is_contiguous() && t->numel() == num_rows * head_dim, "cos and sin must be contiguous with ",
                num_rows, " x ", head_dim, " elements, got shape ", t->sizes());
  }
  check_cache(k_cache, "k_cache", num_kv_heads, head_dim);
  check_cache(v_cache, "v_cache", num_kv_heads, head_dim);
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes(), "k_cache and v_cache must have the same shape");
  if (q_norm_weight) {
    TORCH_CHECK(k_norm_weight && q_norm_weight->numel() == head_dim && k_norm_weight->numel() == head_dim,
                "q and k norm weights must both be given, with head_dim (", head_dim, ") elements");
    in.qn = NormSpec{to_floats(*q_norm_weight), static_cast<float>(norm_eps), norm_is_offset};
    in.kn = NormSpec{to_floats(*k_norm_weight), static_cast<float>(norm_eps), norm_is_offset};
  }
  in.a = DecodeArgs{num_rows, num_heads, num_kv_heads, head_dim,
                    row_stride(q, "q"), row_stride(k, "k"), row_stride(v, "v"), head_dim,
                    k_cache.size(1), kv_slots.size(1), static_cast<float>(scale),
                    std::max<int64_t>(0, sliding_window),
                    q_norm_weight ? &in.qn : nullptr, q_norm_weight ? &in.kn : nullptr};
}


// The chunk op's index tensors (shapes as rope_attend_chunks says), checked like check_slots.
ChunkArgs check_chunk_inputs(const DecodeArgs& a, const Tensor& slot_mapping, const Tensor& kv_slots,
                             const Tensor& bounds, const Tensor& context_lens, const Tensor& k_cache) {
  for (const Tensor* t : {&slot_mapping, &kv_slots, &bounds, &context_lens}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong && t->is_contiguous(),
                "slot_mapping, kv_slots, bounds and context_lens must be contiguous int64 CPU tensors");
  }
  const int64_t num_chunks = context_lens.numel(), num_slots = k_cache.size(1), max_keys = kv_slots.size(1);
  TORCH_CHECK(slot_mapping.numel() == a.num_seqs && bounds.numel() == num_chunks + 1 && kv_slots.dim() == 2 &&
                  kv_slots.size(0) == num_chunks,
              "one slot per row, one kv_slots row and one context length per chunk, and C + 1 bounds are needed");
  const int64_t* b = bounds.data_ptr<int64_t>();
  const int64_t* ctx = context_lens.data_ptr<int64_t>();
  const int64_t* sm = slot_mapping.data_ptr<int64_t>();
  const int64_t* ks = kv_slots.data_ptr<int64_t>();
  TORCH_CHECK(b[0] == 0 && b[num_chunks] == a.num_seqs, "bounds must run from 0 to the number of rows");
  for (int64_t c = 0; c < num_chunks; ++c) {
    TORCH_CHECK(b[c + 1] > b[c] && ctx[c] >= 0 && ctx[c] + b[c + 1] - b[c] <= max_keys, "chunk ", c,
                ": rows [", b[c], ", ", b[c + 1], ") after ", ctx[c], " cached tokens exceed kv_slots' ", max_keys,
                " keys");
    for (int64_t j = 0; j < ctx[c] + b[c + 1] - b[c]; ++j) {
      const int64_t slot = ks[c * max_keys + j];
      TORCH_CHECK(slot >= 0 && slot < num_slots, "kv_slots[", c, ", ", j, "] = ", slot, " is outside [0, ",
                  num_slots, ")");
    }
  }
  for (int64_t r = 0; r < a.num_seqs; ++r) {
    TORCH_CHECK(sm[r] >= 0 && sm[r] < num_slots, "slot_mapping[", r, "] = ", sm[r], " is outside [0, ", num_slots,
                ")");
  }
  return ChunkArgs{&a, b, ctx, num_chunks};
}

}  // namespace
