// Runs the NEON low-bit kernels (luodi/kernels/native/lowbit_neon.h) on one case read from a file
// and writes their fp32 outputs: how the ARM64 path is checked on an x86 machine, cross-compiled
// and run under qemu-user (test_lowbit_neon.py writes the case and checks the result). Torch-free.
//
// Input, little-endian: 9 int64 (kind: 0 INT8 weight-only, 1 INT8 per-row (W8A8), 2 INT4 fp16
// grid, 3 INT4 coded grid; rows M, n, k, kp, group_size, has_bias, weight bytes, scale floats),
// then the packed weight bytes, the INT8 scales (fp32, padded to whole tiles), the bias (n fp32,
// if any) and x (M x k fp32). Output: M x n fp32; stdout names the kernels used, i8mm where the CPU
// has it (for passes of an even number of rows), else dotprod.
//
//   harness INPUT OUTPUT

#include <cstdint>
#include <cstdio>
#include <vector>

#include "lowbit_neon.h"

namespace {

template <typename T>
bool read(std::FILE* f, std::vector<T>& out, int64_t count) {
  out.resize(count);
  return std::fread(out.data(), sizeof(T), count, f) == static_cast<size_t>(count);
}

int fail(const char* what) {
  std::fprintf(stderr, "harness: %s\n", what);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace luodi::neon;
  if (argc != 3) return fail("usage: harness INPUT OUTPUT");
  std::FILE* in = std::fopen(argv[1], "rb");
  if (!in) return fail("cannot open the input");
  std::vector<int64_t> h;
  if (!read(in, h, 9)) return fail("short header");
  const int64_t kind = h[0], rows = h[1], n = h[2], k = h[3], kp = h[4], group_size = h[5], has_bias = h[6];
  std::vector<uint8_t> w;
  std::vector<float> scales, bias, x;
  if (!read(in, w, h[7]) || !read(in, scales, h[8]) || !read(in, bias, has_bias ? n : 0) || !read(in, x, rows * k)) {
    return fail("short input");
  }
  std::fclose(in);
  const bool is_int8 = kind <= 1;
  const int64_t tile_bytes = is_int8 ? int8_tile_bytes(kp) : int4_tile_bytes(kp, group_size, kind == 3);
  const int64_t tiles = (n + kTile - 1) / kTile;
  if (static_cast<int64_t>(w.size()) != tiles * tile_bytes) return fail("weight size does not match the shape");
  if (is_int8 && static_cast<int64_t>(scales.size()) != tiles * kTile) return fail("scales do not cover whole tiles");
  const ActQuant mode = kind == 0 ? ActQuant::kBlockTwoTerm : kind == 1 ? ActQuant::kRow : ActQuant::kBlock;
  QuantizedRows xq = alloc_rows(rows, kp, is_int8 ? kp : group_size, mode);
  for (int64_t m = 0; m < rows; ++m) quantize_row(x.data() + m * k, m, k, xq, mode);
  std::vector<float> y(rows * n);
  const float* bp = has_bias ? bias.data() : nullptr;
  const bool i8mm = cpu_has_i8mm();
  if (is_int8) {
    int8_tiles(w.data(), scales.data(), bp, xq, y.data(), n, 0, tiles, i8mm);
  } else {
    int4_tiles(w.data(), bp, xq, y.data(), n, group_size, kind == 3, 0, tiles, i8mm);
  }
  std::printf("%s\n", i8mm ? "i8mm" : "dotprod");  // which kernels ran (even M only use i8mm)
  std::FILE* out = std::fopen(argv[2], "wb");
  if (!out || std::fwrite(y.data(), sizeof(float), y.size(), out) != y.size()) return fail("cannot write the output");
  return std::fclose(out) == 0 ? 0 : fail("cannot write the output");
}
