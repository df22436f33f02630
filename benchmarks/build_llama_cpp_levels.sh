#!/usr/bin/env bash
# Bench-only: build llama.cpp's `llama-bench` and `llama-quantize` once per x86 instruction-set
# level, from the llama.cpp sources vendored in the llama-cpp-python sdist (as
# benchmarks/build_llama_server.sh), for benchmarks/isa_speed.py. Nothing here is installed or
# committed; the binaries land in $LUODI_HOME/build/llama-cpp-<level>/bin/.
#
#   bash benchmarks/build_llama_cpp_levels.sh [LEVEL ...]     # default: avx2 avx512vnni avx512bf16
#   JOBS=2 VERSION=0.3.16 bash benchmarks/build_llama_cpp_levels.sh avx2
#   LLAMA_CPP_SOURCES=/path/to/llama.cpp bash benchmarks/build_llama_cpp_levels.sh   # other sources
#
# Each level is GGML_NATIVE=OFF with its instruction sets named, so the binary runs what a CPU of
# that level would, on any newer CPU (the levels match Luodi's LUODI_CPU_ISA ones):
#   avx2        AVX, AVX2, FMA, F16C, BMI2; no AVX-512 (Haswell .. Alder Lake, Zen 2/3)
#   avx512vnni  + AVX-512 F/CD/VL/DQ/BW and VNNI; no BF16, no VBMI (Cascade Lake)
#   avx512bf16  + AVX-512 VBMI and BF16 (Zen 4, Sapphire Rapids without AMX)
# A level already built is skipped. JOBS defaults to 1 and the compiler runs under `nice -n 15`:
# the build machine is shared and each level takes minutes.
set -euo pipefail
version="${VERSION:-0.3.16}"
home="${LUODI_HOME:-$HOME/.cache/luodi}"
sources="${LLAMA_CPP_SOURCES:-$home/build/llama-server/src-$version/vendor/llama.cpp}"
sdist="$home/build/llama-server/llama_cpp_python-$version.tar.gz"
levels=("$@")
[ ${#levels[@]} -gt 0 ] || levels=(avx2 avx512vnni avx512bf16)

need() {  # a clear message for a missing tool rather than cmake's own
  command -v "$1" > /dev/null || { echo "missing '$1': install $2 (e.g. apt-get install $2)" >&2; exit 1; }
}

avx512() {
  echo "-DGGML_AVX512=$1 -DGGML_AVX512_VBMI=$2 -DGGML_AVX512_VNNI=$3 -DGGML_AVX512_BF16=$4"
}

level_flags() {
  local x86="-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
  x86+=" -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  case "$1" in  # AVX512 / VBMI / VNNI / BF16
    avx2) echo "$x86 $(avx512 OFF OFF OFF OFF)" ;;
    avx512vnni) echo "$x86 $(avx512 ON OFF ON OFF)" ;;
    avx512bf16) echo "$x86 $(avx512 ON ON ON ON)" ;;
    *) echo "unknown level '$1' (known: avx2 avx512vnni avx512bf16)" >&2; return 1 ;;
  esac
}

ensure_sources() {
  [ -d "$sources" ] && return
  if [ ! -f "$sdist" ]; then
    echo "llama.cpp sources not found at $sources;" \
         "fetch the llama-cpp-python sdist that vendors them:" >&2
    echo "  python3 -m pip download --no-deps --no-binary :all: llama-cpp-python==$version" \
         "-d $(dirname "$sdist")" >&2
    exit 1
  fi
  mkdir -p "$home/build/llama-server/src-$version"
  tar xzf "$sdist" -C "$home/build/llama-server/src-$version" --strip-components=1
}

build_level() {
  local level="$1" root="$home/build/llama-cpp-$1" flags
  flags="$(level_flags "$level")"
  if [ -x "$root/bin/llama-bench" ] && [ -x "$root/bin/llama-quantize" ]; then
    echo "$level: already built in $root/bin" >&2
    return
  fi
  mkdir -p "$root/bin"
  echo "$level: configuring ($flags)" >&2
  # shellcheck disable=SC2086  # the flags are separate words
  cmake -S "$sources" -B "$root/cmake-$version" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF $flags \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DBUILD_SHARED_LIBS=OFF > "$root/cmake-$version.log"
  echo "$level: building llama-bench and llama-quantize with ${JOBS:-1} job(s)" >&2
  nice -n 15 cmake --build "$root/cmake-$version" --target llama-bench llama-quantize -j "${JOBS:-1}"
  cp "$root/cmake-$version/bin/llama-bench" "$root/cmake-$version/bin/llama-quantize" "$root/bin/"
  echo "$root/bin"
}

need cmake cmake
need ninja ninja-build
need c++ g++
ensure_sources
for level in "${levels[@]}"; do level_flags "$level" > /dev/null; done  # every name known before building
for level in "${levels[@]}"; do build_level "$level"; done
