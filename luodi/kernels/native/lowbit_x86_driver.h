// The x86 low-bit builds' calls (lowbit.cpp, lowbit_avx2.cpp): checks of the packed weight, the
// activation quantization, and the loop of tiles over threads and passes. Each build includes this
// file inside its anonymous namespace after its own kernels, which it must name so:
//
//   QuantizedRows quantize_rows<T>(x, rows, k, kp, sum_block, ActQuant);  Pass pass_at(xq, m0);
//   template <int M, int NT, bool TwoTerm, typename T>
//   void int8_tile(w, tile_bytes, pass, kp, scales, bias, y, n, n0);       (NT tiles from w)
//   template <int M, int NT, bool Coded, typename T>
//   void int4_tile(w, tile_bytes, pass, kp, group_size, bias, y, n, n0);
//   constexpr int tile_streams(int rows);  (NT for a pass of that many rows)
//   kTile, kBlock, kInt4StepBytes, int4_group_bytes(group_size, coded)
//
// so the calls below resolve to that build's kernels.

#pragma once

// Quantizes x, then runs tile(M, NT, pass, t) for the tiles t .. t + NT - 1 of every pass of up to
// 8 rows, tiles split across torch's intra-op threads. A single pass (decode) takes its tiles
// tile_streams(M) at a time, as that many interleaved weight streams; several passes keep one tile at
// a time, each read from cache by the passes after the first.
template <typename T, typename TileFn>
void run_tiles(const Call& call, int64_t sum_block, int64_t tile_bytes, const TileFn& tile,
               ActQuant mode = ActQuant::kBlock) {
  const QuantizedRows xq = quantize_rows(call.x.data_ptr<T>(), call.rows, call.k, call.kp, sum_block, mode);
  const int64_t num_tiles = (call.n + kTile - 1) / kTile;
  const std::integral_constant<int, 1> one{};
  if (call.rows > kMaxRows) {
    at::parallel_for(0, num_tiles, tiles_per_task(tile_bytes), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        for_each_pass(call.rows, [&](auto m_rows, int64_t m0) { tile(m_rows, one, pass_at(xq, m0), t); });
      }
    });
    return;
  }
  for_each_pass(call.rows, [&](auto m_rows, int64_t) {
    const std::integral_constant<int, tile_streams(decltype(m_rows)::value)> streams{};
    const Pass pass = pass_at(xq, 0);
    at::parallel_for(0, num_tiles, tiles_per_task(tile_bytes), [&](int64_t t0, int64_t t1) {
      int64_t t = t0;
      for (; t + streams.value <= t1; t += streams.value) tile(m_rows, streams, pass, t);
      for (; t < t1; ++t) tile(m_rows, one, pass, t);
    });
  });
}

// per_row: one activation scale per row (SmoothQuant W8A8) instead of one per 32 columns.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales,
                       const std::optional<at::Tensor>& bias, int64_t n, int64_t k, int64_t kp, bool per_row) {
  const int64_t tile_bytes = kp * kTile;
  TORCH_CHECK(kp % kBlock == 0 && kp >= k && w.scalar_type() == at::kByte &&
                  w.numel() == (n + kTile - 1) / kTile * tile_bytes && scales.scalar_type() == at::kFloat &&
                  scales.numel() >= (n + kTile - 1) / kTile * kTile,
              "packed INT8 weight does not match its shape: repack it with prepack_int8");
  const Call call = prepare(x, bias, n, k, kp);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float* sp = scales.data_ptr<float>();
  const float* bp = call.bias.defined() ? call.bias.data_ptr<float>() : nullptr;
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* yp = call.y.data_ptr<T>();
    // One sum per row: the +128 offset's correction. Weight-only INT8 rounds x in two terms;
    // W8A8 keeps SmoothQuant's single per-token rounding.
    const auto run = [&](auto two_term, ActQuant mode) {
      run_tiles<T>(
          call, kp, tile_bytes,
          [&](auto m_rows, auto nt, const Pass& pass, int64_t t) {
            int8_tile<decltype(m_rows)::value, decltype(nt)::value, decltype(two_term)::value>(
                wp + t * tile_bytes, tile_bytes, pass, kp, sp, bp, yp, n, t * kTile);
          },
          mode);
    };
    if (per_row) {
      run(std::false_type{}, ActQuant::kRow);
    } else {
      run(std::true_type{}, ActQuant::kBlockTwoTerm);
    }
  });
  return call.y;
}

// coded: the tile layout with 8-bit scale and min codes (prepack_int4 with steps).
at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                       int64_t n, int64_t k, int64_t kp, int64_t group_size, bool coded) {
  const int64_t tile_bytes = (coded ? kInt4StepBytes : 0) + (kp / group_size) * int4_group_bytes(group_size, coded);
  TORCH_CHECK(group_size % kBlock == 0 && kp % group_size == 0 && kp >= k && w.scalar_type() == at::kByte &&
                  w.numel() == (n + kTile - 1) / kTile * tile_bytes,
              "packed INT4 weight does not match its shape: repack it with prepack_int4");
  const Call call = prepare(x, bias, n, k, kp);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float* bp = call.bias.defined() ? call.bias.data_ptr<float>() : nullptr;
  dispatch_dtype(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* yp = call.y.data_ptr<T>();
    const auto run = [&](auto is_coded) {
      run_tiles<T>(call, group_size, tile_bytes, [&](auto m_rows, auto nt, const Pass& pass, int64_t t) {
        int4_tile<decltype(m_rows)::value, decltype(nt)::value, decltype(is_coded)::value>(
            wp + t * tile_bytes, tile_bytes, pass, kp, group_size, bp, yp, n, t * kTile);
      });
    };
    if (coded) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  });
  return call.y;
}
