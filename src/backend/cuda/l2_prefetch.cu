// A weight's first bytes into L2 while a decode step's small kernels run (Backend::prefetch_weight, issue 15).
//
// Why. Between a Mamba layer's in_proj and out_proj GEMVs a decode step runs the conv, the SSD step and the gated
// norm: ~13 µs a layer on an H200 (bench/NOTES.md v41) in which HBM moves only the SSM state's 8 MB, while the GEMVs
// around them stream at ~4 TB/s. Asking L2 for the first part of out_proj's rows at the start of that window
// turns idle HBM time into weight bytes the GEMV then reads from L2. Unlike the dropped v37 attempt (every GEMV
// block prefetching its own next k-blocks before pdl_wait, which made later blocks wait on lines they had asked
// for), the bytes here are a fixed budget, asked for once, in the window, by a kernel of their own.
//
// What is asked for. The decode GEMVs walk every row from k = 0 up (gemv_mma.cu: a block's warps take
// interleaved k-blocks; fp8_gemv.cu: a warp's lanes take interleaved chunks), and out_proj's grid is one wave, so
// the first bytes of every row are what is read first: each row's first `bytes` (a multiple of 16) as one bulk
// prefetch (cp.async.bulk.prefetch.L2, sm_90: the copy engine fetches, no thread waits, no register holds it).
//
// Where it sits in the stream. Launched as a programmatic dependent after the SSD step: its blocks start when
// that step's blocks pass their pdl_wait (the conv done), so the step's own state loads, issued before its
// wait, are ahead of these in the memory queues. It triggers its dependents at once and then waits, so the
// kernel after it (the gated norm) starts as early as it did, and still sees the step's writes (it waits on
// this grid, which ends only after the step's).
#include "backend/cuda/kernels.cuh"

namespace bamba::cuda {
namespace {

// One warp a block, so that the requests leave from many SMs' copy engines (a row each, rows strided over the
// grid), not a few.
__global__ void l2_prefetch_rows_kernel(const char* base, int64_t ld_bytes, int rows, unsigned bytes) {
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += gridDim.x * blockDim.x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base + int64_t(r) * ld_bytes), "r"(bytes)
                 : "memory");
#else
    for (unsigned o = 0; o < bytes; o += 128)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(base + int64_t(r) * ld_bytes + o) : "memory");
#endif
  }
  pdl_trigger();
  pdl_wait();
}

}  // namespace

bool l2_prefetch_rows(cudaStream_t st, const void* base, int64_t ld_bytes, int64_t rows, int64_t bytes) {
  if (rows <= 0 || bytes < 16 || bytes % 16 || ld_bytes % 16 || !aligned16(base) ||
      rows > (int64_t(1) << 30) || bytes > (int64_t(1) << 30))
    return false;
  const int64_t blocks = std::min<int64_t>((rows + 31) / 32, 2 * sm_count());
  launch_pdl(l2_prefetch_rows_kernel, dim3(unsigned(blocks)), dim3(32), 0, st, static_cast<const char*>(base),
             ld_bytes, int(rows), unsigned(bytes));
  return true;
}

}  // namespace bamba::cuda
