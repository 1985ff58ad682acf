#!/bin/bash
# Runs the kernels of src/backend/cuda/ssd_backward_chunked.cu on the CPU, without a GPU or nvcc: every CUDA
# thread a std::thread, __syncthreads a barrier, wmma tiles done by lane 0 of each warp (include/ stands in for
# the CUDA headers), shared memory filled with NaN patterns so that a read of anything unwritten shows. The
# launcher (<<<...>>>) is cut out; the driver launches the kernels itself, finishes as ssd_backward.cu does, and
# compares with the CPU twin grad::ssd_backward on bf16-rounded inputs (odd sizes, G = 2, state0, the dt clamp,
# chunk tables of 64..256). Checks indexing, padding, masks and barriers; not speed, races or the real mma.
# Usage: tests/emu/run.sh [out-dir]   (about 30 s on two cores)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/../../src
out=${1:-/tmp/bamba-ssd-emu}
mkdir -p "$out"
awk '/^void ssd_backward_chunked\(cudaStream_t st/{skip=1} /^}  \/\/ namespace bamba::cuda/{skip=0} !skip' \
    "$src/backend/cuda/ssd_backward_chunked.cu" |
  sed 's/extern __shared__ __align__(128) unsigned char smem\[\];/unsigned char* smem = emu::dyn_smem();/;
       s/__shared__ float red\[32\];/float* red = emu::static_red();/' > "$out/kernels_emu.inc"
g++ -std=c++20 -O2 -pthread -I "$here/include" -I "$src" -I "$out" "$here/ssd_backward_chunked_emu.cpp" -o "$out/ssd_emu"
"$out/ssd_emu"
