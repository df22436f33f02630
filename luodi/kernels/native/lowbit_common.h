// What every low-bit build shares and torch need not know (the NEON harness includes it too): the
// number of activation rows per pass, and the dispatch that runs a tile function once per pass with
// the pass's row count as a compile-time constant (the accumulators then live in registers).

#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace luodi {

constexpr int kMaxRows = 8;                   // activation rows per pass; more rows loop over passes
constexpr int64_t kMinTaskBytes = 32 << 10;  // weight bytes below which a thread hand-off costs more than it saves

// tile(std::integral_constant<int, M>, m0) for every pass of up to kMaxRows rows, m0 its first row.
template <typename TileFn>
inline void for_each_pass(int64_t rows, const TileFn& tile) {
  for (int64_t m0 = 0; m0 < rows; m0 += kMaxRows) {
    switch (std::min<int64_t>(kMaxRows, rows - m0)) {
      case 1: tile(std::integral_constant<int, 1>{}, m0); break;
      case 2: tile(std::integral_constant<int, 2>{}, m0); break;
      case 3: tile(std::integral_constant<int, 3>{}, m0); break;
      case 4: tile(std::integral_constant<int, 4>{}, m0); break;
      case 5: tile(std::integral_constant<int, 5>{}, m0); break;
      case 6: tile(std::integral_constant<int, 6>{}, m0); break;
      case 7: tile(std::integral_constant<int, 7>{}, m0); break;
      default: tile(std::integral_constant<int, 8>{}, m0); break;
    }
  }
}

// Output tiles a thread takes at once, for tiles of `tile_bytes` weight bytes.
inline int64_t tiles_per_task(int64_t tile_bytes) { return std::max<int64_t>(1, kMinTaskBytes / tile_bytes); }

}  // namespace luodi
