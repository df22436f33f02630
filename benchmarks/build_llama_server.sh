#!/usr/bin/env bash
# Bench-only: build llama.cpp's `llama-server` from the llama.cpp sources vendored in the
# llama-cpp-python sdist (the peer of benchmarks/serve_load.py). Nothing here is installed or
# committed; the binary lands in $LUODI_HOME/build/llama-server/bin/llama-server.
#
#   JOBS=2 bash benchmarks/build_llama_server.sh [VERSION]     # default 0.3.16
#
# 0.3.16: the llama.cpp that 0.3.36 vendors (its server and its Python binding alike) crashed at
# threadpool start on a 2-vCPU Zen 4 VM; 0.3.16 runs there.
set -euo pipefail
version="${1:-0.3.16}"
root="${LUODI_HOME:-$HOME/.cache/luodi}/build/llama-server"
mkdir -p "$root"
cd "$root"
sdist="llama_cpp_python-$version.tar.gz"
if [ ! -f "$sdist" ]; then
  python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d .
fi
if [ ! -d "src-$version" ]; then
  mkdir -p "src-$version"
  tar xzf "$sdist" -C "src-$version" --strip-components=1
fi
cmake -S "src-$version/vendor/llama.cpp" -B "cmake-$version" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF > "cmake-$version.log"
cmake --build "cmake-$version" --target llama-server -j "${JOBS:-$(nproc)}"
mkdir -p bin
cp "cmake-$version/bin/llama-server" bin/llama-server
echo "$root/bin/llama-server"
