#!/bin/bash
# Runs mma_tiles.cuh's warp products (every operand layout; mma_tiles_emu.cpp) and the kernels of
# src/backend/cuda/ssd_backward_chunked.cu, attention_backward_mma.cu, backward.cu, cross_entropy.cu, gemv_mma.cu and
# moe.cu on the CPU, without a GPU or nvcc: every CUDA thread a std::thread, __syncthreads a barrier, wmma tiles done
# by lane 0 of each warp, mma.sync and ldmatrix lane by lane from their PTX fragment layouts, cp.async held back
# until its wait (include/ stands in for the CUDA headers), shared memory filled with NaN patterns so that a read of
# anything unwritten shows. The launchers (<<<...>>>) are cut out; the drivers launch the kernels themselves, finish
# as the launchers' other kernels do, and compare with the CPU twins (grad::ssd_backward, grad::attention_backward,
# grad::conv1d_silu_backward, grad::(gated_)rmsnorm_backward; the cross-entropy rows in double; the SSD backward's
# register and wmma tile forms also against each other) on bf16-rounded inputs: odd sizes, several sequences,
# G = 2 / GQA, state0, the dt clamp, partial RoPE, chunk tables of 64..256, rows with and without 16-byte runs, both
# attention forms (mma, wmma); the decode GEMV for bf16 and FP8 weights (gemv_mma_emu.cpp); moe.cu's router, sort,
# grouped tensor-core expert GEMMs (both tile shapes, SwiGLU / relu²) and combine (moe_emu.cpp); and adamw.cu's
# one-launch update against train/adamw.cpp, with split masters (adamw_emu.cpp). Checks indexing, fragment layouts,
# padding, masks, barriers and cp.async waits; not speed, races or the real mma's rounding.
# Usage: tests/emu/run.sh [out-dir]   (about 8 min on two cores; EMU_ONLY="gemv_mma moe" runs those drivers)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/../../src
out=${1:-/tmp/bamba-ssd-emu}
mkdir -p "$out"
# the kernels without their launchers (<<<...>>>), shared memory from the emulated block
strip() {
  awk -v launcher="$2" '$0 ~ launcher {skip=1} /^}  \/\/ namespace bamba::cuda/{skip=0} !skip' "$src/backend/cuda/$1" |
    sed 's/extern __shared__ __align__(128) unsigned char smem\[\];/unsigned char* smem = emu::dyn_smem();/;
         s/__shared__ float red\[32\];/float* red = emu::static_red();/'
}
strip ssd_backward_chunked.cu '^void ssd_backward_chunked\(cudaStream_t st' > "$out/kernels_emu.inc"
strip attention_backward_mma.cu '^void attention_backward_mma\(cudaStream_t st' > "$out/attention_kernels_emu.inc"
strip gemv_mma.cu '^// ---- launchers' > "$out/gemv_mma_kernels_emu.inc"
strip fp8_gemv.cu '^// ---- launchers' > "$out/fp8_gemv_kernels_emu.inc"
strip backward.cu '^// ---- launchers' > "$out/backward_kernels_emu.inc"
strip cross_entropy.cu '^// ---- launcher' > "$out/cross_entropy_kernels_emu.inc"
# moe.cu: also without the host helpers between the forward and backward kernels (experts_mma launches)
awk '/^\/\/ The tensor-core path of moe_experts/{skip=1} /^\/\/ ---- backward/{skip=0}
     /^void moe_route\(cudaStream_t st/{skip=1} /^}  \/\/ namespace bamba::cuda/{skip=0} !skip' \
  "$src/backend/cuda/moe.cu" | sed 's/extern __shared__ __align__(16) unsigned char smem\[\];/unsigned char* smem = emu::dyn_smem();/' \
  > "$out/moe_kernels_emu.inc"
# adamw.cu: its argument structs from the real kernels.cuh (the stand-in has none), and its CPU twin linked in
strip adamw.cu '^void adamw_step\(cudaStream_t st' > "$out/adamw_kernels_emu.inc"
{ echo 'namespace bamba::cuda {'
  sed -n '/^struct AdamWArgs {/,/^};/p; /^struct AdamWTensorArgs {/,/^};/p; /^struct SumSqTensorArgs {/,/^};/p' \
    "$src/backend/cuda/kernels.cuh"
  echo '}  // namespace bamba::cuda'; } > "$out/adamw_args_emu.inc"
rc=0
# -fno-strict-aliasing: the kernels read their 16-byte loads through 16-bit views (bf16 pairs, E4M3 pairs), as CUDA
# code does; at -O2 g++ otherwise assumes those views never alias the uint4 (fp8_gemv's sums came out wrong).
for t in ${EMU_ONLY:-mma_tiles ssd_backward_chunked attention_backward_mma backward cross_entropy gemv_mma fp8_gemv moe adamw}; do
  extra=()
  [ "$t" = adamw ] && extra=("$src/train/adamw.cpp")
  g++ -std=c++20 -O2 -fno-strict-aliasing -pthread -I "$here/include" -I "$src" -I "$out" "$here/${t}_emu.cpp" "$src/core/dtype.cpp" \
    "${extra[@]}" -o "$out/$t"
  echo "== $t"
  "$out/$t" || rc=1
done
exit $rc
